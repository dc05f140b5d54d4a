"""Runner: a side-scroller. Blocks slide in from the right; SOUTH jumps over them.

Success: 200 steps without touching a block. The expert holds SOUTH for a few frames when the
next block is at the right distance; its noise moves that moment by a frame or two.
"""

from __future__ import annotations

import numpy as np

from .base import FRAME, GamepadAction, GamepadGame, canvas, fill

GROUND = 52
PLAYER_X, PLAYER_SIZE = 10, 6
BLOCK_W, BLOCK_H = 4, 8
SPEED, JUMP_VELOCITY, GRAVITY = 2.0, 3.5, 0.5
JUMP_AT = (6.0, 10.0)  # block distance at which the expert jumps
GAP = (40, 56)  # pixels between blocks: room to land and jump again
HOLD = 6  # frames the expert keeps SOUTH pressed


class Runner(GamepadGame):
    name = "runner"
    buttons_read = frozenset({"SOUTH"})

    def start(self) -> None:
        self.height, self.velocity = 0.0, 0.0
        self.blocks = [float(FRAME + self.rng.integers(0, 20))]
        self.crashed = False
        self.holding = 0

    def _distance(self) -> float:
        ahead = [b - (PLAYER_X + PLAYER_SIZE) for b in self.blocks if b + BLOCK_W > PLAYER_X]
        return min(ahead) if ahead else float("inf")

    def advance(self, action: GamepadAction) -> tuple[float, bool]:
        if "SOUTH" in action.buttons and self.height == 0.0:
            self.velocity = JUMP_VELOCITY
        self.height = max(0.0, self.height + self.velocity)
        self.velocity = self.velocity - GRAVITY if self.height > 0 else 0.0
        self.blocks = [b - SPEED for b in self.blocks if b - SPEED + BLOCK_W > 0]
        if self.blocks[-1] < FRAME - 8:
            self.blocks.append(self.blocks[-1] + float(self.rng.integers(*GAP)))
        for b in self.blocks:
            overlaps_x = b < PLAYER_X + PLAYER_SIZE and b + BLOCK_W > PLAYER_X
            if overlaps_x and self.height < BLOCK_H:
                self.crashed = True
        return (0.0 if self.crashed else 1.0), self.crashed

    def success(self) -> bool:
        return not self.crashed and self.steps >= self.max_steps

    def render(self) -> np.ndarray:
        frame = canvas((92, 148, 252))
        fill(frame, 0, GROUND, FRAME, FRAME, (120, 72, 0))
        for b in self.blocks:
            fill(frame, b, GROUND - BLOCK_H, b + BLOCK_W, GROUND, (30, 30, 30))
        top = GROUND - PLAYER_SIZE - self.height
        fill(frame, PLAYER_X, top, PLAYER_X + PLAYER_SIZE, top + PLAYER_SIZE, (240, 40, 40))
        return frame

    def expert(self, rng: np.random.Generator, noise: float) -> GamepadAction:
        if self.holding == 0 and self.height == 0.0:
            jitter = rng.choice([-2.0, 0.0, 2.0]) if rng.random() < noise else 0.0
            low, high = JUMP_AT
            if low + jitter <= self._distance() < high + jitter:
                self.holding = HOLD
        if self.holding:
            self.holding -= 1
            return GamepadAction(buttons=frozenset({"SOUTH"}))
        return GamepadAction()
