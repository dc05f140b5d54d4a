"""Collector: a top-down game. Steer with the left stick onto the yellow targets.

The camera follows the player (the white square stays in the middle of the frame), so where the
target sits in the frame is where the stick should point. A new target appears at a random
bearing as soon as one is reached. An episode lasts 200 steps whatever happens (every recording
holds 200 frames); success is at least ``GOAL`` targets in that time. The expert points the
stick at the target; its noise turns the stick by a random angle.
"""

from __future__ import annotations

import numpy as np

from .base import FRAME, GamepadAction, GamepadGame, canvas, fill

SPEED, REACH, SIZE, TARGET_SIZE, GOAL = 1.5, 6.0, 8, 16, 5
SPAWN = (14.0, 26.0)  # distance of a new target: always on screen


class Collector(GamepadGame):
    name = "collector"

    def start(self) -> None:
        self.position = np.zeros(2)
        self.collected = 0
        self.target = self._new_target()

    def _new_target(self) -> np.ndarray:
        angle, distance = self.rng.uniform(0, 2 * np.pi), self.rng.uniform(*SPAWN)
        return self.position + distance * np.array([np.cos(angle), np.sin(angle)])

    def advance(self, action: GamepadAction) -> tuple[float, bool]:
        self.position = self.position + SPEED * np.clip(np.asarray(action.j_left, float), -1, 1)
        if np.linalg.norm(self.target - self.position) < REACH:
            self.collected += 1
            self.target = self._new_target()
            return 1.0, False
        return 0.0, False

    def success(self) -> bool:
        return self.collected >= GOAL

    def render(self) -> np.ndarray:
        frame = canvas((24, 96, 40))
        centre = np.full(2, FRAME / 2)
        for point, size, colour in ((self.target - self.position + centre, TARGET_SIZE, (250, 220, 30)),
                                    (centre, SIZE, (250, 250, 250))):
            fill(frame, point[0] - size / 2, point[1] - size / 2, point[0] + size / 2, point[1] + size / 2, colour)
        return frame

    def expert(self, rng: np.random.Generator, noise: float) -> GamepadAction:
        delta = self.target - self.position
        angle = np.arctan2(delta[1], delta[0]) + rng.normal(0, 0.6 * noise)
        return GamepadAction(j_left=(float(np.cos(angle)), float(np.sin(angle))))
