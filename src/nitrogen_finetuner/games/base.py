"""Built-in games: small gymnasium environments drawn with numpy, played with a gamepad.

Each step takes one gamepad state (``GamepadAction``: pressed button names, left and right stick
in [-1, 1], y > 0 down), which is one action row, and returns a 64x64 RGB frame. Each game has a
success measure and a scripted expert that plays from the game state.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Optional

import gymnasium as gym
import numpy as np

FRAME = 64


@dataclass
class GamepadAction:
    buttons: frozenset[str] = field(default_factory=frozenset)
    j_left: tuple[float, float] = (0.0, 0.0)
    j_right: tuple[float, float] = (0.0, 0.0)


class GamepadGame(gym.Env):
    """A game whose observation is a frame and whose action is a ``GamepadAction``."""

    metadata = {"render_modes": ["rgb_array"], "render_fps": 30}
    name: str = "game"
    max_steps: int = 200
    buttons_read: frozenset[str] = frozenset()  # the universal button names the game reacts to

    def __init__(self):
        self.observation_space = gym.spaces.Box(0, 255, (FRAME, FRAME, 3), np.uint8)
        self.rng = np.random.default_rng()
        self.steps = 0

    def reset(self, *, seed: Optional[int] = None, options: Optional[dict] = None) -> tuple[np.ndarray, dict]:
        super().reset(seed=seed)
        self.rng = np.random.default_rng(seed)
        self.steps = 0
        self.start()
        return self.render(), self.info()

    def step(self, action: GamepadAction) -> tuple[np.ndarray, float, bool, bool, dict[str, Any]]:
        self.steps += 1
        reward, terminated = self.advance(action)
        truncated = self.steps >= self.max_steps and not terminated
        return self.render(), reward, terminated, truncated, self.info()

    # games implement these
    def start(self) -> None:
        raise NotImplementedError

    def advance(self, action: GamepadAction) -> tuple[float, bool]:
        raise NotImplementedError

    def render(self) -> np.ndarray:
        raise NotImplementedError

    def success(self) -> bool:
        raise NotImplementedError

    def expert(self, rng: np.random.Generator, noise: float) -> GamepadAction:
        """What a good player does now; ``noise`` in [0, 1] makes it imperfect."""
        raise NotImplementedError

    def info(self) -> dict[str, Any]:
        return {"success": self.success(), "steps": self.steps}


def canvas(colour: tuple[int, int, int]) -> np.ndarray:
    frame = np.empty((FRAME, FRAME, 3), np.uint8)
    frame[:] = colour
    return frame


def fill(frame: np.ndarray, x0: float, y0: float, x1: float, y1: float, colour) -> None:
    """Paint the pixels of the rectangle [x0, x1) x [y0, y1), clipped to the frame."""
    xa, xb = int(max(0, round(x0))), int(min(FRAME, round(x1)))
    ya, yb = int(max(0, round(y0))), int(min(FRAME, round(y1)))
    if xa < xb and ya < yb:
        frame[ya:yb, xa:xb] = colour
