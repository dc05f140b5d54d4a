"""Streaming training windows into a DataLoader.

Blocks of rows (parquet row groups, Arrow slices) are spread over distributed ranks and
DataLoader workers; each worker streams its blocks' image column, decodes and resizes only the
frames that start a window, and mixes windows through a shuffle buffer. Nothing is decoded up
front, so datasets larger than memory work. The order depends only on the seed and the epoch.
"""

from __future__ import annotations

from typing import Iterator, Optional, Sequence

import numpy as np
import torch
from torch.utils.data import IterableDataset, get_worker_info

from .episodes import DatasetIndex
from .errors import DataError
from .images import FrameTransform, ImageDecodeError, decode_image
from .windows import WindowSpec


class WindowDataset(IterableDataset):
    """Yields dicts: ``image`` (S, S, 3) uint8, ``actions`` (horizon, action_dim) float32 in
    model space, ``actions_mask`` (horizon, action_dim) bool, ``episode`` and ``frame`` ints."""

    def __init__(
        self,
        index: DatasetIndex,
        spec: WindowSpec,
        transform: FrameTransform,
        episodes: Optional[Sequence[int]] = None,
        shuffle: bool = True,
        seed: int = 0,
        shuffle_buffer: int = 1024,
        skip_bad_rows: bool = False,
        rank: int = 0,
        world_size: int = 1,
    ):
        self.index, self.spec, self.transform = index, spec, transform
        self.episodes = list(range(len(index.episodes))) if episodes is None else list(episodes)
        self.shuffle, self.seed, self.shuffle_buffer = shuffle, seed, shuffle_buffer
        self.skip_bad_rows, self.rank, self.world_size = skip_bad_rows, rank, world_size
        self.epoch = 0
        # Per episode: True at frame positions that start a window (only for selected episodes).
        self.is_start = {}
        for e in self.episodes:
            flags = np.zeros(len(index.episodes[e]), bool)
            flags[spec.starts(index.episodes[e])] = True
            self.is_start[e] = flags
        self.blocks = [
            (s, block)
            for s, source in enumerate(index.sources)
            if any(index.episodes[e].source == s for e in self.episodes)
            for block in source.blocks()
        ]

    def __len__(self) -> int:
        """Windows per epoch over all ranks and workers."""
        return int(sum(flags.sum() for flags in self.is_start.values()))

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def _my_blocks(self) -> list[tuple[int, tuple[int, int]]]:
        info = get_worker_info()
        workers, worker = (info.num_workers, info.id) if info else (1, 0)
        shards, shard = self.world_size * workers, self.rank * workers + worker
        order = np.arange(len(self.blocks))
        if self.shuffle:
            order = np.random.default_rng([self.seed, self.epoch]).permutation(order)
        return [self.blocks[i] for i in order[shard::shards]]

    def _windows(self, rng: Optional[np.random.Generator]) -> Iterator[dict]:
        for s, block in self._my_blocks():
            source, column = self.index.sources[s], self.index.image_columns[s]
            episode_of, position_of = self.index.row_lookup[s]
            for first_row, values in source.iter_column(column, block):
                for offset, value in enumerate(values):
                    row = first_row + offset
                    e, t = int(episode_of[row]), int(position_of[row])
                    if e < 0 or e not in self.is_start or not self.is_start[e][t]:
                        continue
                    try:
                        image = decode_image(value, source.base_dir)
                    except ImageDecodeError as err:
                        if self.skip_bad_rows:
                            continue
                        raise DataError(str(err), file=source.name, row=row, column=column,
                                        hint="fix or remove the row, or set skip_bad_rows") from None
                    actions, mask = self.spec.window(self.index.episodes[e], t)
                    yield {
                        "image": self.transform(image, rng),
                        "actions": actions,
                        "actions_mask": mask,
                        "episode": e,
                        "frame": t,
                    }

    def __iter__(self) -> Iterator[dict]:
        info = get_worker_info()
        rng = np.random.default_rng([self.seed, self.epoch, self.rank, info.id if info else 0])
        windows = self._windows(rng if self.transform.augmentation else None)
        if not self.shuffle:
            yield from windows
            return
        buffer: list[dict] = []
        for window in windows:
            if len(buffer) < self.shuffle_buffer:
                buffer.append(window)
                continue
            i = int(rng.integers(len(buffer)))
            buffer[i], window = window, buffer[i]
            yield window
        for i in rng.permutation(len(buffer)):
            yield buffer[i]


def make_loader(dataset: WindowDataset, batch_size: int, num_workers: int = 0) -> torch.utils.data.DataLoader:
    """A DataLoader over windows; workers decode and resize frames on uint8."""
    return torch.utils.data.DataLoader(
        dataset,
        batch_size=batch_size,
        num_workers=num_workers,
        persistent_workers=False,
        pin_memory=torch.cuda.is_available(),
        prefetch_factor=4 if num_workers else None,
    )
