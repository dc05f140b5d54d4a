"""Open-loop evaluation: query a policy once per chunk along recorded episodes, as a player would.

For each episode the policy sees frames 0, H, 2H, ... (H = its horizon) and predicts a chunk for
each; the recording's action rows that chunk stands for are the ground truth (aligned and masked
exactly as in training). Start noise is drawn per (seed, episode, frame), so reruns give the same
numbers and several checkpoints see the same noise. A queried frame that does not decode stops with
one line naming file, row and column, or, with the data's ``skip_bad_rows``, leaves its chunk out
(counted in ``Chunks.skipped``).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Optional, Sequence

import numpy as np
import torch

from ..data.images import TRAINING_HINT, FrameTransform, ImageDecodeError, bad_image_row, decode_image
from ..data.pipeline import PreparedData
from ..policy import NitroGenPolicy
from .metrics import button_metrics, chunk_consistency, error_by_horizon_step, stick_metrics

STICK_NAMES = ["LEFT_X", "LEFT_Y", "RIGHT_X", "RIGHT_Y"]


@dataclass
class Chunks:
    """Predicted and recorded chunks in model space, (K, horizon, action_dim), in time order."""

    episodes: np.ndarray
    frames: np.ndarray
    predicted: np.ndarray
    true: np.ndarray
    mask: np.ndarray
    skipped: list[str] = field(default_factory=list)  # "file row R: reason" of each chunk left out: its frame is bad


def query_frames(data: PreparedData, episodes: Sequence[int], limit: Optional[int] = None) -> list[tuple[int, int]]:
    """(episode, frame) pairs a player would query: every horizon-th frame that has a window."""
    spec, out = data.spec, []
    for e in episodes:
        starts = set(spec.starts(data.index.episodes[e]).tolist())
        out += [(e, t) for t in range(0, len(data.index.episodes[e]), spec.horizon) if t in starts]
    return out[:limit] if limit else out


def load_frames(
    data: PreparedData, queries: list[tuple[int, int]], hint: str = TRAINING_HINT,
) -> tuple[list[Optional[np.ndarray]], dict[int, str]]:
    """The frames of the queries, decoded and fitted as in training, reading each block once.

    A frame that does not decode raises the one-line DataError with ``hint``,
    or, with the data's ``skip_bad_rows``, is None; the second value then says why, per query.
    """
    index, transform = data.index, FrameTransform(data.transform.size, data.transform.fit)
    wanted: dict[tuple[int, int], int] = {}
    for k, (e, t) in enumerate(queries):
        episode = index.episodes[e]
        wanted[(episode.source, int(episode.rows[t]))] = k
    frames: list[Optional[np.ndarray]] = [None] * len(queries)
    bad: dict[int, str] = {}
    for s, source in enumerate(index.sources):
        rows = {row for (src, row) in wanted if src == s}
        column = index.image_columns[s]
        for block in source.blocks():
            if not any(block[0] <= r < block[1] for r in rows):
                continue
            for first, values in source.iter_column(column, block):
                for offset, value in enumerate(values):
                    k = wanted.get((s, first + offset))
                    if k is None:
                        continue
                    try:
                        frames[k] = transform(decode_image(value, source.base_dir))
                    except ImageDecodeError as err:
                        if not data.config.skip_bad_rows:
                            raise bad_image_row(err, source.name, first + offset, column, hint) from None
                        bad[k] = f"{source.name} row {first + offset}: {err}"
    return frames, bad


def predict_chunks(
    policy: NitroGenPolicy, data: PreparedData, episodes: Sequence[int], seed: int = 0,
    batch_size: int = 16, limit: Optional[int] = None, hint: str = TRAINING_HINT,
) -> Chunks:
    """A chunk per queried frame (at most ``limit`` queries); with the data's ``skip_bad_rows``
    the queries whose frame does not decode are left out and listed in ``skipped``."""
    queries = query_frames(data, episodes, limit)
    frames, bad = load_frames(data, queries, hint)
    skipped = [bad[k] for k in sorted(bad)]
    queries = [q for k, q in enumerate(queries) if k not in bad]
    frames = [f for k, f in enumerate(frames) if k not in bad]
    horizon, dim = policy.horizon, policy.action_dim
    predicted = np.zeros((len(queries), horizon, dim), np.float32)
    for start in range(0, len(queries), batch_size):
        part = queries[start : start + batch_size]
        noise = np.stack([np.random.default_rng([seed, e, t]).standard_normal((horizon, dim)) for e, t in part])
        with torch.no_grad():
            raw = policy.sample(policy.preprocess(frames[start : start + len(part)]),
                                torch.from_numpy(noise.astype(np.float32)))
        predicted[start : start + len(part)] = raw.float().cpu().numpy()
    windows = [data.spec.window(data.index.episodes[e], t) for e, t in queries]
    return Chunks(
        episodes=np.array([e for e, _ in queries], np.int64),
        frames=np.array([t for _, t in queries], np.int64),
        predicted=predicted,
        true=np.stack([w[0] for w in windows]) if windows else np.zeros((0, horizon, dim), np.float32),
        mask=np.stack([w[1] for w in windows]) if windows else np.zeros((0, horizon, dim), bool),
        skipped=skipped,
    )


def score_chunks(chunks: Chunks, policy: NitroGenPolicy) -> dict:
    """Every metric of the report for one policy."""
    layout, unpack = policy.layout, policy.processor.unpack
    pred, true = unpack(chunks.predicted), unpack(chunks.true)
    pred_sticks = np.concatenate([pred["j_left"], pred["j_right"]], axis=-1)
    true_sticks = np.concatenate([true["j_left"], true["j_right"]], axis=-1)
    mask_b, mask_s = chunks.mask[..., layout.button_slice], chunks.mask[..., layout.stick_slice]
    return {
        "chunks": int(len(chunks.episodes)),
        "skipped_bad_frames": len(chunks.skipped),
        "buttons": button_metrics(pred["buttons"], true["buttons"], mask_b, list(layout.buttons)),
        "sticks": stick_metrics(pred_sticks, true_sticks, mask_s, STICK_NAMES),
        "by_horizon_step": error_by_horizon_step(pred["buttons"], true["buttons"], mask_b,
                                                 pred_sticks, true_sticks, mask_s),
        "consistency": {
            "predicted": chunk_consistency(pred["buttons"], pred_sticks, mask_b, mask_s, chunks.episodes),
            "true": chunk_consistency(true["buttons"], true_sticks, mask_b, mask_s, chunks.episodes),
        },
    }
