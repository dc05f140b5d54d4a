"""PNG figures of an evaluation (matplotlib, no display needed)."""

from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402

from .open_loop import STICK_NAMES, Chunks  # noqa: E402


def trace_line(rows: np.ndarray, values: np.ndarray, shown: np.ndarray, horizon: int) -> tuple[np.ndarray, np.ndarray]:
    """x (action rows) and y of chunked values, broken after every chunk (the next may start
    later: a chunk left out) and where a row is masked out (past the episode's end)."""
    y = np.where(shown, values, np.nan).astype(float).reshape(-1, horizon)
    x = rows.reshape(-1, horizon).astype(float)
    gap = np.full((len(x), 1), np.nan)
    return np.hstack([x, gap]).reshape(-1), np.hstack([y, gap]).reshape(-1)


def traces(chunks: Chunks, policy, path: Path, title: str, action_shift: int) -> Path:
    """Recorded vs predicted values of every slot along the first evaluated episode, against the
    action row each value stands for (a chunk queried at frame t predicts rows t + action_shift
    on); rows past the episode's end, and chunks left out, are gaps."""
    first = chunks.episodes[0]
    pick = chunks.episodes == first
    layout = policy.layout
    horizon = chunks.predicted.shape[1]
    pred = policy.processor.unpack(chunks.predicted[pick].reshape(-1, layout.action_dim))
    true = policy.processor.unpack(chunks.true[pick].reshape(-1, layout.action_dim))
    mask = chunks.mask[pick].reshape(-1, layout.action_dim)
    rows = (chunks.frames[pick][:, None] + action_shift + np.arange(horizon)).reshape(-1)

    def line(values: np.ndarray, shown: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        return trace_line(rows, values, shown, horizon)

    button_mask = mask[:, layout.button_slice]
    active = [i for i, _ in enumerate(layout.buttons)
              if button_mask[:, i].any() and (true["buttons"][:, i].any() or pred["buttons"][:, i].any())]
    fig, axes = plt.subplots(4 + len(active), 1, figsize=(10, 1.3 * (4 + len(active)) + 1), sharex=True)
    sticks_pred = np.concatenate([pred["j_left"], pred["j_right"]], axis=1)
    sticks_true = np.concatenate([true["j_left"], true["j_right"]], axis=1)
    for i, name in enumerate(STICK_NAMES):
        m = mask[:, layout.stick_slice][:, i]
        axes[i].plot(*line(sticks_true[:, i], m), label="recorded", color="black", lw=1)
        axes[i].plot(*line(sticks_pred[:, i], m), label="predicted", color="tab:orange", lw=1)
        axes[i].set_ylim(-1.1, 1.1)
        axes[i].set_ylabel(name, rotation=0, ha="right", fontsize=8)
    for k, i in enumerate(active):
        ax = axes[4 + k]
        ax.step(*line(true["buttons"][:, i], button_mask[:, i]), color="black", lw=1, where="post")
        ax.step(*line(pred["buttons"][:, i] * 0.9, button_mask[:, i]), color="tab:orange", lw=1, where="post")
        ax.set_ylim(-0.1, 1.1)
        ax.set_ylabel(layout.buttons[i], rotation=0, ha="right", fontsize=8)
    for boundary in rows[::horizon]:
        for ax in axes:
            ax.axvline(boundary, color="lightgray", lw=0.5)
    axes[0].legend(loc="upper right", fontsize=7)
    axes[-1].set_xlabel(f"action row of the recording (chunk starts in grey: query frame + action_shift {action_shift})")
    fig.suptitle(f"{title}: episode {first}")
    fig.tight_layout()
    fig.savefig(path, dpi=90)
    plt.close(fig)
    return path


def f1_bars(reports: dict[str, dict], path: Path) -> Path:
    """Per-button F1 of each checkpoint, side by side."""
    names = sorted({b for r in reports.values() for b in r["buttons"]["per_button"]})
    fig, ax = plt.subplots(figsize=(max(6, 0.5 * len(names) * len(reports)), 4))
    width = 0.8 / max(1, len(reports))
    for k, (label, report) in enumerate(reports.items()):
        values = [report["buttons"]["per_button"].get(n, {}).get("f1") or 0.0 for n in names]
        ax.bar(np.arange(len(names)) + k * width, values, width, label=label)
    ax.set_xticks(np.arange(len(names)) + 0.4 - width / 2, names, rotation=45, ha="right", fontsize=8)
    ax.set_ylim(0, 1)
    ax.set_ylabel("F1")
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=90)
    plt.close(fig)
    return path


def horizon_errors(reports: dict[str, dict], path: Path) -> Path:
    fig, (left, right) = plt.subplots(1, 2, figsize=(10, 3.5))
    for label, report in reports.items():
        steps = report["by_horizon_step"]
        left.plot([v if v is not None else np.nan for v in steps["button_error_rate"]], marker=".", label=label)
        right.plot([v if v is not None else np.nan for v in steps["stick_mae"]], marker=".", label=label)
    left.set(title="button error rate", xlabel="step in chunk")
    right.set(title="stick MAE", xlabel="step in chunk")
    left.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=90)
    plt.close(fig)
    return path


def agreement_heatmap(matrix: np.ndarray, slots: list[str], labels: list[str], path: Path, title: str) -> Path:
    fig, ax = plt.subplots(figsize=(1 + 0.45 * len(labels), 1 + 0.35 * len(slots)))
    image = ax.imshow(matrix, cmap="viridis", vmin=-1 if (matrix[np.isfinite(matrix)] < 0).any() else 0, vmax=1,
                      aspect="auto")
    ax.set_xticks(range(len(labels)), labels, rotation=60, ha="right", fontsize=7)
    ax.set_yticks(range(len(slots)), slots, fontsize=7)
    ax.set_xlabel("labelled button")
    ax.set_ylabel("predicted slot (assumed name)")
    ax.set_title(title, fontsize=9)
    fig.colorbar(image)
    fig.tight_layout()
    fig.savefig(path, dpi=90)
    plt.close(fig)
    return path
