"""Streaming batches of training windows into a DataLoader.

The dataset reads the image column block by block (parquet row groups, Arrow slices), passes
lightweight candidates (the stored image value and where it belongs) through a shuffle buffer,
and decodes and resizes only the frames of the batches this worker emits. Nothing is decoded up
front, so datasets larger than memory work, and skipping batches (to resume) costs no decoding.

Two ways to split the stream over distributed ranks (``shard``):

- ``windows`` (default): every rank walks the same global stream and takes every
  ``world_size``-th window of each global batch, so a run on N processes sees exactly the batches
  of a 1-process run with the same global batch, and resume is exact. Each rank reads all image
  bytes but decodes only its own.
- ``blocks``: blocks are divided between ranks and workers, so each reads only its share (for
  datasets too big to read N times); the order then depends on the number of ranks and workers.

Batches are assigned to DataLoader workers round-robin, which is the order the DataLoader returns
them in. Everything depends only on the seed and the epoch.
"""

from __future__ import annotations

import itertools
import os
import signal
from typing import Iterator, NamedTuple, Optional, Sequence

import numpy as np
import torch
from torch.utils.data import IterableDataset, get_worker_info

from .episodes import DatasetIndex
from .images import TRAINING_HINT, FrameTransform, ImageDecodeError, bad_image_row, decode_image
from .windows import WindowSpec

SHARD_MODES = ("windows", "blocks")


class Candidate(NamedTuple):
    source: int
    row: int
    value: object  # the stored image (bytes, path or Image struct), decoded only when emitted
    episode: int
    frame: int


class WindowDataset(IterableDataset):
    """Yields batches: ``image`` (B, S, S, 3) uint8, ``actions`` (B, horizon, action_dim) float32
    in model space, ``actions_mask`` (B, horizon, action_dim) bool, ``episode``, ``frame`` (B,)."""

    def __init__(
        self,
        index: DatasetIndex,
        spec: WindowSpec,
        transform: FrameTransform,
        batch_size: int,
        episodes: Optional[Sequence[int]] = None,
        shuffle: bool = True,
        seed: int = 0,
        shuffle_buffer: int = 512,
        skip_bad_rows: bool = False,
        rank: int = 0,
        world_size: int = 1,
        shard: str = "windows",
        drop_last: bool = True,
        step_windows: Optional[int] = None,
    ):
        if shard not in SHARD_MODES:
            raise ValueError(f"shard must be one of {SHARD_MODES}, got {shard!r}")
        self.index, self.spec, self.transform, self.batch_size = index, spec, transform, batch_size
        self.episodes = list(range(len(index.episodes))) if episodes is None else list(episodes)
        self.shuffle, self.seed, self.shuffle_buffer = shuffle, seed, shuffle_buffer
        self.skip_bad_rows, self.rank, self.world_size = skip_bad_rows, rank, world_size
        # Windows one optimizer step takes over all processes (batch_size): a training epoch of
        # whole steps ends at the same window whatever the micro-batch size or process count.
        self.shard, self.drop_last, self.step_windows = shard, drop_last, step_windows
        self.epoch, self.skip_batches = 0, 0
        self.is_start = {}  # per selected episode: True at frame positions that start a window
        for e in self.episodes:
            flags = np.zeros(len(index.episodes[e]), bool)
            flags[spec.starts(index.episodes[e])] = True
            self.is_start[e] = flags
        used = {index.episodes[e].source for e in self.episodes}
        self.blocks = [(s, block) for s, source in enumerate(index.sources) if s in used for block in source.blocks()]

    @property
    def num_windows(self) -> int:
        """Windows per epoch over all ranks."""
        return int(sum(flags.sum() for flags in self.is_start.values()))

    def batches_per_epoch(self) -> int:
        """Batches each rank yields per epoch (``windows`` mode; an estimate for ``blocks``)."""
        whole_steps = self._whole_step_batches()
        if whole_steps is not None:
            return whole_steps
        per_rank = self.num_windows / self.world_size
        return int(per_rank // self.batch_size) if self.drop_last else int(np.ceil(per_rank / self.batch_size))

    def _whole_step_batches(self) -> Optional[int]:
        """The global batches of an epoch that ends with a whole step (``windows`` mode, training)."""
        if self.shard != "windows" or not self.drop_last or not self.step_windows:
            return None
        return self.num_windows // self.step_windows * (self.step_windows // (self.batch_size * self.world_size))

    def set_epoch(self, epoch: int, skip_batches: int = 0) -> None:
        """Select the epoch's order; skip its first batches (already trained on, when resuming)."""
        self.epoch, self.skip_batches = epoch, skip_batches

    # ----------------------------------------------------------------------------- streaming
    def _block_order(self) -> list[tuple[int, tuple[int, int]]]:
        order = np.arange(len(self.blocks))
        if self.shuffle:
            order = np.random.default_rng([self.seed, self.epoch]).permutation(order)
        return [self.blocks[i] for i in order]

    def _candidates(self, blocks, rng: np.random.Generator) -> Iterator[Candidate]:
        stream = self._scan(blocks)
        if not self.shuffle:
            yield from stream
            return
        buffer: list[Candidate] = []
        for candidate in stream:
            if len(buffer) < self.shuffle_buffer:
                buffer.append(candidate)
                continue
            i = int(rng.integers(len(buffer)))
            buffer[i], candidate = candidate, buffer[i]
            yield candidate
        for i in rng.permutation(len(buffer)):
            yield buffer[i]

    def _scan(self, blocks) -> Iterator[Candidate]:
        for s, block in blocks:
            source, column = self.index.sources[s], self.index.image_columns[s]
            episode_of, position_of = self.index.row_lookup[s]
            for first_row, values in source.iter_column(column, block):
                for offset, value in enumerate(values):
                    row = first_row + offset
                    e, t = int(episode_of[row]), int(position_of[row])
                    if e >= 0 and e in self.is_start and self.is_start[e][t]:
                        yield Candidate(s, row, value, e, t)

    def _batches(self, candidates: Iterator[Candidate], size: int) -> Iterator[list[Candidate]]:
        batch: list[Candidate] = []
        for candidate in candidates:
            batch.append(candidate)
            if len(batch) == size:
                yield batch
                batch = []
        if batch and not self.drop_last:
            yield batch

    def __iter__(self) -> Iterator[dict]:
        info = get_worker_info()
        workers, position = (info.num_workers, info.id) if info else (1, 0)
        # The DataLoader takes one batch from each worker in turn, worker 0 first. After a resume
        # that skipped some batches, worker 0 must give the batch that comes next: each worker
        # plays the part of the worker that gave this turn's batch in the uninterrupted epoch.
        worker = (position + self.skip_batches) % workers
        if self.shard == "windows":
            rng = np.random.default_rng([self.seed, self.epoch])
            stream = self._candidates(self._block_order(), rng)
            global_batches = self._batches(stream, self.batch_size * self.world_size)
            for k, global_batch in enumerate(itertools.islice(global_batches, self._whole_step_batches())):
                if k >= self.skip_batches and k % workers == worker:
                    yield self._materialize(global_batch[self.rank :: self.world_size])
            return
        shards = self.world_size * workers
        blocks = self._block_order()[self.rank * workers + worker :: shards]
        rng = np.random.default_rng([self.seed, self.epoch, self.rank, worker])
        skip = len(range(worker, self.skip_batches, workers))  # this worker's share of the skipped batches
        for k, batch in enumerate(self._batches(self._candidates(blocks, rng), self.batch_size)):
            if k >= skip:
                yield self._materialize(batch)

    # ------------------------------------------------------------------------------- decoding
    def _materialize(self, batch: list[Candidate]) -> dict:
        images, actions, masks, kept = [], [], [], []
        for c in batch:
            source = self.index.sources[c.source]
            try:
                image = decode_image(c.value, source.base_dir)
            except ImageDecodeError as err:
                if self.skip_bad_rows:
                    continue
                raise bad_image_row(err, source.name, c.row, self.index.image_columns[c.source],
                                    TRAINING_HINT) from None
            # Per-window augmentation stream: the same window is augmented the same way whatever
            # the batch order, the number of workers or a resume.
            rng = np.random.default_rng([self.seed, self.epoch, c.episode, c.frame])
            images.append(self.transform(image, rng if self.transform.augmentation else None))
            window_actions, mask = self.spec.window(self.index.episodes[c.episode], c.frame)
            actions.append(window_actions)
            masks.append(mask)
            kept.append(c)
        size, dim = self.transform.size, self.spec.layout.action_dim
        return {
            "image": np.stack(images) if images else np.zeros((0, size, size, 3), np.uint8),
            "actions": np.stack(actions) if actions else np.zeros((0, self.spec.horizon, dim), np.float32),
            "actions_mask": np.stack(masks) if masks else np.zeros((0, self.spec.horizon, dim), bool),
            "episode": np.array([c.episode for c in kept], np.int64),
            "frame": np.array([c.frame for c in kept], np.int64),
            "skipped_bad_frames": np.array(len(batch) - len(kept), np.int64),  # left out by skip_bad_rows
        }


PREFETCH_BATCHES = 4  # batches each worker decodes ahead


def make_loader(dataset: WindowDataset, num_workers: int = 0) -> torch.utils.data.DataLoader:
    """A DataLoader over the dataset's batches; workers decode and resize frames on uint8.

    It gets its own generator: a DataLoader otherwise draws its worker seed from the global RNG,
    which would shift dropout randomness depending on when the loader starts (breaking exact
    resume). The dataset's order comes from its own seed, not from torch's RNG.
    """
    return torch.utils.data.DataLoader(
        dataset,
        batch_size=None,
        num_workers=num_workers,
        pin_memory=torch.cuda.is_available(),
        prefetch_factor=PREFETCH_BATCHES if num_workers else None,
        generator=torch.Generator().manual_seed(dataset.seed),
        worker_init_fn=_leave_ctrl_c_to_the_main_process,
    )


def _leave_ctrl_c_to_the_main_process(_worker_id: int) -> None:
    """Ctrl-C reaches every process of the terminal's group, and torchrun or a cluster sends SIGTERM
    to the whole group; a worker that died of either would fail the main process's next batch,
    where training wants to finish its step and save a checkpoint. So the worker leaves the group:
    the main process ends it (with SIGTERM, which must still work), and it ends by itself when the
    main process dies."""
    os.setpgrp()
    signal.signal(signal.SIGINT, signal.SIG_IGN)
