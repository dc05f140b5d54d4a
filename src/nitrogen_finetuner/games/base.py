"""Built-in games: small gymnasium environments drawn with numpy, played with a gamepad.

Each step takes one gamepad state (``GamepadAction``: pressed button names, left and right stick
in [-1, 1], y > 0 down), which is one action row, and returns a 64x64 RGB frame. Each game has a
success measure and a scripted expert that plays from the game state. For gymnasium's tools
(``action_space.sample()``, its env checker) a step also takes the same state as a dict of the
``action_space``: ``buttons`` 0/1 in the universal button order, ``j_left`` and ``j_right``.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Optional

import gymnasium as gym
import numpy as np

from ..actions.layout import BUTTON_ORDERS, DEFAULT_BUTTON_ORDER

FRAME = 64
BUTTONS = BUTTON_ORDERS[DEFAULT_BUTTON_ORDER]  # the universal button names, in the action_space's order


@dataclass
class GamepadAction:
    """One gamepad state: the pressed buttons' names, and each stick's (x, y) in [-1, 1], y > 0 down."""

    buttons: frozenset[str] = field(default_factory=frozenset)
    j_left: tuple[float, float] = (0.0, 0.0)
    j_right: tuple[float, float] = (0.0, 0.0)

    def __post_init__(self):
        for name in ("j_left", "j_right"):
            stick = getattr(self, name)
            if len(stick) != 2 or not all(-1.0 <= float(v) <= 1.0 for v in stick):  # NaN fails too
                raise ValueError(f"{name}: (x, y) with each value in [-1, 1], got {stick!r}")


class GamepadGame(gym.Env):
    """A game whose observation is a frame and whose action is a ``GamepadAction``."""

    metadata = {"render_modes": ["rgb_array"], "render_fps": 30}
    name: str = "game"
    max_steps: int = 200
    buttons_read: frozenset[str] = frozenset()  # the universal button names the game reacts to

    def __init__(self):
        self.observation_space = gym.spaces.Box(0, 255, (FRAME, FRAME, 3), np.uint8)
        stick = gym.spaces.Box(-1.0, 1.0, (2,), np.float32)
        self.action_space = gym.spaces.Dict({"buttons": gym.spaces.MultiBinary(len(BUTTONS)), "j_left": stick,
                                             "j_right": stick})
        self.steps = 0
        self.over: Optional[bool] = None  # None until the first reset

    def reset(self, *, seed: Optional[int] = None, options: Optional[dict] = None) -> tuple[np.ndarray, dict]:
        super().reset(seed=seed)
        # A seed gives the same game every time; no seed goes on from the last one given (gymnasium's way).
        self.rng = np.random.default_rng(seed if seed is not None else self.np_random.integers(2**63))
        self.steps, self.over = 0, False
        self.start()
        return self.render(), self.info()

    def step(self, action: GamepadAction | dict) -> tuple[np.ndarray, float, bool, bool, dict[str, Any]]:
        if self.over is None:
            raise RuntimeError(f"{self.name}: call reset() before step()")
        if self.over:
            raise RuntimeError(f"{self.name}: the episode is over (terminated or truncated): call reset()")
        self.steps += 1
        reward, terminated = self.advance(gamepad_action(action))
        truncated = self.steps >= self.max_steps and not terminated
        self.over = terminated or truncated
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


def gamepad_action(action: GamepadAction | dict) -> GamepadAction:
    """A step's action as a ``GamepadAction``, from one or from a dict of the ``action_space``."""
    if isinstance(action, GamepadAction):
        return action
    if not isinstance(action, dict) or set(action) != {"buttons", "j_left", "j_right"}:
        raise TypeError(f"a step takes a GamepadAction or a dict with buttons, j_left and j_right, got "
                        f"{type(action).__name__}")
    pressed = np.asarray(action["buttons"])
    if pressed.shape != (len(BUTTONS),):
        raise ValueError(f"buttons: one 0/1 per universal button ({len(BUTTONS)}), got shape {pressed.shape}")
    return GamepadAction(buttons=frozenset(name for name, on in zip(BUTTONS, pressed) if on),
                         j_left=tuple(float(v) for v in action["j_left"]),
                         j_right=tuple(float(v) for v in action["j_right"]))


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
