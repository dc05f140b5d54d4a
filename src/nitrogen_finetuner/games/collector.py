"""Collector: a top-down game. Steer with the left stick onto the yellow targets.

Success: three targets within 200 steps. The expert points the stick at the target; its noise
turns the stick by a random angle.
"""

from __future__ import annotations

import numpy as np

from .base import FRAME, GamepadAction, GamepadGame, canvas, fill

SPEED, REACH, SIZE, GOAL = 2.5, 6.0, 8, 3


class Collector(GamepadGame):
    name = "collector"

    def start(self) -> None:
        self.position = np.array([FRAME / 2, FRAME / 2])
        self.collected = 0
        self.target = self._new_target()

    def _new_target(self) -> np.ndarray:
        while True:
            target = self.rng.uniform(SIZE, FRAME - SIZE, size=2)
            if np.linalg.norm(target - self.position) > 16:
                return target

    def advance(self, action: GamepadAction) -> tuple[float, bool]:
        stick = np.clip(np.asarray(action.j_left, float), -1, 1)
        self.position = np.clip(self.position + SPEED * stick, SIZE / 2, FRAME - SIZE / 2)
        if np.linalg.norm(self.target - self.position) < REACH:
            self.collected += 1
            self.target = self._new_target()
            return 1.0, self.collected >= GOAL
        return 0.0, False

    def success(self) -> bool:
        return self.collected >= GOAL

    def render(self) -> np.ndarray:
        frame = canvas((24, 96, 40))
        for point, colour in ((self.target, (250, 220, 30)), (self.position, (250, 250, 250))):
            fill(frame, point[0] - SIZE / 2, point[1] - SIZE / 2, point[0] + SIZE / 2, point[1] + SIZE / 2, colour)
        return frame

    def expert(self, rng: np.random.Generator, noise: float) -> GamepadAction:
        delta = self.target - self.position
        angle = np.arctan2(delta[1], delta[0]) + rng.normal(0, 0.6 * noise)
        return GamepadAction(j_left=(float(np.cos(angle)), float(np.sin(angle))))
