"""Open-loop metrics of predicted action chunks against recorded ones.

Every function takes arrays shaped (chunks, horizon, values) plus a boolean mask of the same
shape (what the ground truth actually holds: no padding past an episode's end, no slot the
source cannot express) and returns plain numbers, so they are easy to test on hand-built cases.
A metric that is undefined (an F1 with no positives and no predictions, an R² of a constant)
is ``None``, never a made-up 0 or 1.
"""

from __future__ import annotations

from typing import Optional

import numpy as np


def _ratio(num: float, den: float) -> Optional[float]:
    return float(num / den) if den > 0 else None


def button_scores(pred: np.ndarray, true: np.ndarray, mask: np.ndarray) -> dict[str, Optional[float]]:
    """Precision, recall, F1 and press rates of one button; inputs are 0/1 arrays."""
    p, t = pred[mask] > 0.5, true[mask] > 0.5
    tp, fp, fn = float(np.sum(p & t)), float(np.sum(p & ~t)), float(np.sum(~p & t))
    precision, recall = _ratio(tp, tp + fp), _ratio(tp, tp + fn)
    return {
        "precision": precision,
        "recall": recall,
        "f1": _ratio(2 * tp, 2 * tp + fp + fn),
        "press_rate_predicted": _ratio(float(p.sum()), p.size),
        "press_rate_true": _ratio(float(t.sum()), t.size),
        "support": int(t.sum()),
    }


def button_metrics(pred: np.ndarray, true: np.ndarray, mask: np.ndarray, names: list[str]) -> dict:
    """Per-button scores and their macro F1 over buttons where F1 is defined."""
    per_button = {name: button_scores(pred[..., i], true[..., i], mask[..., i]) for i, name in enumerate(names)
                  if mask[..., i].any()}
    f1s = [s["f1"] for s in per_button.values() if s["f1"] is not None]
    return {"per_button": per_button, "macro_f1": float(np.mean(f1s)) if f1s else None}


def stick_metrics(pred: np.ndarray, true: np.ndarray, mask: np.ndarray, names: list[str]) -> dict:
    """Per-axis mean absolute error and R² (in [-1, 1] units)."""
    out = {}
    for i, name in enumerate(names):
        m = mask[..., i]
        if not m.any():
            continue
        p, t = pred[..., i][m], true[..., i][m]
        total = float(np.sum((t - t.mean()) ** 2))
        out[name] = {
            "mae": float(np.mean(np.abs(p - t))),
            "r2": 1.0 - float(np.sum((p - t) ** 2)) / total if total > 0 else None,
        }
    maes = [v["mae"] for v in out.values()]
    return {"per_axis": out, "mean_mae": float(np.mean(maes)) if maes else None}


def error_by_horizon_step(
    pred_buttons: np.ndarray, true_buttons: np.ndarray, button_mask: np.ndarray,
    pred_sticks: np.ndarray, true_sticks: np.ndarray, stick_mask: np.ndarray,
) -> dict[str, list[Optional[float]]]:
    """Button error rate and stick MAE at each step of the chunk (does error grow with distance?)."""
    horizon = pred_buttons.shape[1]
    button_error, stick_error = [], []
    for h in range(horizon):
        bm, sm = button_mask[:, h], stick_mask[:, h]
        button_error.append(_ratio(float(np.sum((pred_buttons[:, h] != true_buttons[:, h]) & bm)), float(bm.sum())))
        stick_error.append(_ratio(float(np.sum(np.abs(pred_sticks[:, h] - true_sticks[:, h]) * sm)), float(sm.sum())))
    return {"button_error_rate": button_error, "stick_mae": stick_error}


def chunk_consistency(
    buttons: np.ndarray, sticks: np.ndarray, mask_b: np.ndarray, mask_s: np.ndarray, episodes: np.ndarray
) -> dict[str, Optional[float]]:
    """How smoothly consecutive chunks of an episode join, next to how smooth each chunk is.

    Chunks are in time order with their episode ids. ``boundary``: from the last step of a chunk
    to the first step of the next chunk of the same episode; ``within``: between neighbouring steps
    inside a chunk. Buttons give flip rates, sticks the mean absolute change. Compare predicted
    with ground-truth figures: a policy whose boundary change far exceeds the recording's
    jitters between chunks.
    """
    same = np.flatnonzero(episodes[:-1] == episodes[1:])  # chunk k followed by k + 1 of its episode

    def mean_change(values, mask, first, second, flips: bool) -> Optional[float]:
        m = mask[first] & mask[second]
        delta = values[first] != values[second] if flips else np.abs(values[first] - values[second])
        return _ratio(float(np.sum(delta * m)), float(m.sum()))

    inner_a, inner_b = (slice(None), slice(0, -1)), (slice(None), slice(1, None))
    return {
        "boundary_button_flip_rate": mean_change(buttons, mask_b, (same, -1), (same + 1, 0), True),
        "within_button_flip_rate": mean_change(buttons, mask_b, inner_a, inner_b, True),
        "boundary_stick_change": mean_change(sticks, mask_s, (same, -1), (same + 1, 0), False),
        "within_stick_change": mean_change(sticks, mask_s, inner_a, inner_b, False),
    }


def slot_agreement(pred_scores: np.ndarray, labels: np.ndarray) -> dict[str, np.ndarray]:
    """Every predicted slot against every labelled button, over the frames where both exist.

    ``pred_scores`` (N, S) raw predicted button values, ``labels`` (N, L) 0/1. Returns the
    Pearson correlation (S, L) and the F1 at the best threshold (S, L). If the slot order is
    right, each labelled button agrees best with the slot of its own name.
    """
    s, l = pred_scores.shape[1], labels.shape[1]
    correlation, best_f1 = np.full((s, l), np.nan), np.full((s, l), np.nan)
    thresholds = np.linspace(0.05, 0.95, 19)
    for j in range(l):
        y = labels[:, j] > 0.5
        if y.all() or not y.any():
            continue
        for i in range(s):
            x = pred_scores[:, i]
            if x.std() > 0:
                correlation[i, j] = float(np.corrcoef(x, y.astype(float))[0, 1])
            pressed = x[:, None] > thresholds[None, :]
            tp = np.sum(pressed & y[:, None], axis=0)
            fp = np.sum(pressed & ~y[:, None], axis=0)
            fn = np.sum(~pressed & y[:, None], axis=0)
            best_f1[i, j] = float(np.max(2 * tp / np.maximum(2 * tp + fp + fn, 1)))
    return {"correlation": correlation, "best_f1": best_f1}
