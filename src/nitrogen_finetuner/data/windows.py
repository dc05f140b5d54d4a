"""Training windows: one frame and the chunk of action rows the model must predict from it.

For frame ``t`` of an episode the target chunk is action rows ``t + action_shift`` to
``t + action_shift + horizon - 1`` (the checkpoint's ``modality_cfg.action_shift`` and
``action_horizon`` unless the data config overrides them). Rows past the end of the episode are
padded with the neutral action and masked out of the loss, so short episodes still train; a frame
with no action row after it in its episode makes no window.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from ..actions.layout import ActionLayout
from .episodes import Episode


@dataclass(frozen=True)
class WindowSpec:
    horizon: int
    action_shift: int
    layout: ActionLayout

    @property
    def neutral(self) -> np.ndarray:
        """Model-space neutral action: buttons released, sticks centred (0.5)."""
        vector = np.zeros(self.layout.action_dim, np.float32)
        vector[self.layout.stick_slice] = 0.5
        return vector

    def starts(self, episode: Episode) -> np.ndarray:
        """Frame positions that make a window: at least one usable action row follows."""
        n = len(episode)
        usable = ~episode.bad
        # usable rows at or after each position, counted from the end
        after = np.concatenate([np.cumsum(usable[::-1])[::-1], [0]])
        t = np.arange(n)
        first, last = t + self.action_shift, np.minimum(t + self.action_shift + self.horizon, n)
        has_action = (first < n) & (after[np.minimum(first, n)] - after[last] > 0)
        return np.flatnonzero(has_action)

    def window(self, episode: Episode, t: int) -> tuple[np.ndarray, np.ndarray]:
        """(horizon, action_dim) targets and loss mask for the frame at position ``t``."""
        first = t + self.action_shift
        rows = np.arange(first, first + self.horizon)
        real = rows < len(episode)
        actions = np.tile(self.neutral, (self.horizon, 1))
        actions[real] = episode.actions[rows[real]]
        step_ok = real.copy()
        step_ok[real] = ~episode.bad[rows[real]]
        mask = step_ok[:, None] & episode.slot_mask[None, :]
        return actions, mask

    def summary(self, episode: Episode) -> dict[str, int]:
        """Frames that make windows, windows padded past the episode end, and frames dropped
        because no action row follows them in the episode or every row they would predict is bad."""
        n = len(episode)
        starts = self.starts(episode)
        padded = int(np.sum(starts + self.action_shift + self.horizon > n))
        at_end = min(self.action_shift, n)
        return {
            "frames": n,
            "windows": len(starts),
            "padded": padded,
            "dropped_at_end": at_end,
            "dropped_bad_actions": n - len(starts) - at_end,
        }
