"""Closed-loop evaluation: a policy plays a built-in game, querying once per action chunk.

As the official player does, the policy sees a frame, predicts a chunk, and the chunk's actions
are played one per step before the next query.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Optional, Sequence

import numpy as np
import torch
from PIL import Image

from ..files import replaced_when_done
from ..policy import NitroGenPolicy
from . import GAMES
from .base import GamepadAction

Player = Callable[[np.ndarray, int], GamepadAction]  # (frame, step) -> action


def policy_player(policy: NitroGenPolicy, seed: int, replan_every: Optional[int] = None) -> Player:
    """Queries the policy every ``replan_every`` steps (default: the whole chunk, as the official
    player does) and plays the chunk's actions in between; noise is seeded per (seed, step)."""
    every = replan_every or policy.horizon
    if not 1 <= every <= policy.horizon:
        raise ValueError(f"replan_every must be between 1 and the horizon {policy.horizon}, got {every}")
    chunk: list[GamepadAction] = []

    def play(frame: np.ndarray, step: int) -> GamepadAction:
        if step % every == 0:
            noise = torch.from_numpy(np.random.default_rng([seed, step]).standard_normal(
                (policy.horizon, policy.action_dim)).astype(np.float32))
            out = policy.predict(frame, noise=noise)
            chunk[:] = [
                GamepadAction(
                    buttons=frozenset(policy.layout.buttons[i] for i in np.flatnonzero(out["buttons"][h] > 0.5)),
                    j_left=tuple(float(v) for v in out["j_left"][h]),
                    j_right=tuple(float(v) for v in out["j_right"][h]),
                )
                for h in range(every)  # only the actions played before the next query
            ]
        return chunk[step % every]

    return play


def random_player(seed: int, buttons: Sequence[str], press_rate: float = 0.1) -> Player:
    """Presses each button with ``press_rate`` and moves both sticks uniformly at random."""
    rng = np.random.default_rng(seed)

    def play(frame: np.ndarray, step: int) -> GamepadAction:
        pressed = frozenset(b for b in buttons if rng.random() < press_rate)
        return GamepadAction(pressed, tuple(rng.uniform(-1, 1, 2)), tuple(rng.uniform(-1, 1, 2)))

    return play


@dataclass
class RolloutResult:
    game: str
    episodes: int
    success_rate: float
    mean_return: float
    returns: list[float] = field(default_factory=list)

    def as_dict(self) -> dict:
        return {"game": self.game, "episodes": self.episodes, "success_rate": self.success_rate,
                "mean_return": self.mean_return, "returns": self.returns}


def rollout(game_name: str, make_player: Callable[[int], Player], seeds: Sequence[int],
            gif: Optional[Path] = None) -> RolloutResult:
    """Play one episode per seed; optionally save the first as an animated GIF."""
    successes, returns = [], []
    for k, seed in enumerate(seeds):
        game = GAMES[game_name]()
        frame, info = game.reset(seed=seed)
        player, total, frames, done = make_player(seed), 0.0, [frame], False
        while not done:
            frame, reward, terminated, truncated, info = game.step(player(frame, game.steps))
            total += reward
            done = terminated or truncated
            if gif is not None and k == 0:
                frames.append(frame)
        successes.append(bool(info["success"]))
        returns.append(total)
        if gif is not None and k == 0:
            save_gif(frames, gif)
    return RolloutResult(game_name, len(seeds), float(np.mean(successes)), float(np.mean(returns)), returns)


GIF_STEP_MS = 30


def save_gif(frames: list[np.ndarray], path: Path, scale: int = 4) -> Path:
    """The frames as a looping GIF, written whole or not at all. A step lasts 30 ms (GIF counts in
    10 ms: a little faster than the games' 30 frames/s), and the GIF's comment says so. Pillow
    merges a frame that repeats the one before into one longer frame; with the step time stated
    and a whole number of 10 ms, ``predict`` counts such a frame back as its steps."""
    images = [Image.fromarray(f).resize((f.shape[1] * scale, f.shape[0] * scale), Image.NEAREST) for f in frames]
    with replaced_when_done(path) as partial:
        images[0].save(partial, format="GIF", save_all=True, append_images=images[1:], duration=GIF_STEP_MS, loop=0,
                       comment=f"{GIF_STEP_MS} ms per step".encode())
    return path
