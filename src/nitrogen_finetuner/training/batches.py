"""What one optimizer step consumes: micro-batches from the loader and the flow-matching noise.

Noise and flow time are drawn per window from a generator keyed by (seed, step, episode, frame),
so they do not depend on how windows are grouped into micro-batches, processes or workers: one
process and N processes with the same global batch compute the same loss.
"""

from __future__ import annotations

from pathlib import Path
from typing import Iterator

import numpy as np
import torch

from ..data.errors import DataError
from ..data.loader import PREFETCH_BATCHES, WindowDataset, make_loader
from .checkpoints import Progress

_TRAIN, _VALIDATION = 1, 2


def micro_batches(dataset: WindowDataset, progress: Progress, num_workers: int) -> Iterator[tuple[int, int, dict]]:
    """Endless (epoch, batches consumed in that epoch, batch), starting at the saved position.

    With workers, the next epoch's loader starts as soon as this epoch's last batches are asked
    of its workers (the last ``num_workers x PREFETCH_BATCHES``), so that its workers start and
    decode their first batches while this epoch's last ones train. Started at the epoch's end,
    they held its first steps up: about half a second on an H100 with 8 workers, batch 64. An
    epoch shorter than that starts the next one's loader at its first batch, so two sets of
    workers run throughout."""
    def started(epoch: int, skip: int = 0) -> Iterator[dict]:  # workers, if any, start and copy the dataset
        dataset.set_epoch(epoch, skip)
        return iter(make_loader(dataset, num_workers))

    epoch, skip = progress.epoch, progress.batches_in_epoch
    loader = started(epoch, skip)
    while True:
        upcoming = None
        start_next_at = dataset.batches_per_epoch() - num_workers * PREFETCH_BATCHES
        for consumed, batch in enumerate(loader, start=skip + 1):
            if num_workers and upcoming is None and consumed >= start_next_at:
                upcoming = started(epoch + 1)  # this epoch's workers hold their own copies
            yield epoch, consumed, batch
        epoch, skip = epoch + 1, 0
        loader = started(epoch) if upcoming is None else upcoming


def continue_data_position(progress: Progress, windows_per_batch: int, run_dir: Path) -> None:
    """Count the epoch's consumed micro-batches in this run's micro-batch size: a resume with
    another batch_size, micro_batch_size or number of processes goes on from the same window."""
    saved = progress.windows_per_batch or windows_per_batch  # checkpoints before this count: unchanged
    windows = progress.batches_in_epoch * saved
    if windows % windows_per_batch:
        raise DataError(f"the run stopped {windows} windows into its epoch, which micro-batches of "
                        f"{windows_per_batch} windows (over all processes) do not divide", file=str(run_dir),
                        hint=f"resume with micro-batches that divide {windows} (micro_batch_size x processes)")
    progress.batches_in_epoch, progress.windows_per_batch = windows // windows_per_batch, windows_per_batch


def one_pass(dataset: WindowDataset, num_workers: int) -> Iterator[dict]:
    """The batches of one epoch in order (validation)."""
    dataset.set_epoch(0)
    yield from make_loader(dataset, num_workers)


def padding_window(batch: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """One blank window, masked out everywhere, shaped like ``batch`` (which may be empty). It adds
    nothing to a loss; under FSDP a process with no window of its own runs it, because every
    process must run every forward pass."""
    return {key: value.new_zeros((1, *value.shape[1:])) for key, value in batch.items()}


def window_noise(
    batch: dict, seed: int, step: int, horizon: int, action_dim: int, alpha: float, beta: float, noise_s: float,
    validation: bool = False,
) -> tuple[torch.Tensor, torch.Tensor]:
    """(B, horizon, action_dim) start noise and (B,) flow times t = (1 - s) * noise_s, s ~ Beta."""
    size = len(batch["episode"])
    noise = np.empty((size, horizon, action_dim), np.float32)
    flow_time = np.empty(size, np.float32)
    for i, (episode, frame) in enumerate(zip(batch["episode"].tolist(), batch["frame"].tolist())):
        key = [seed, _VALIDATION, episode, frame] if validation else [seed, _TRAIN, step, episode, frame]
        rng = np.random.default_rng(key)
        noise[i] = rng.standard_normal((horizon, action_dim))
        flow_time[i] = (1.0 - rng.beta(alpha, beta)) * noise_s
    return torch.from_numpy(noise), torch.from_numpy(flow_time)
