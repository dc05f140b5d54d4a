"""Record expert play as datasets in the formats users bring.

The runner is written as a raw NES log (BizHawk column names ``P1 A``, ``P1 B``, ...; its B
button jumps and maps to SOUTH); the collector in the NitroGen/BizHawk converter format (17
button booleans, ``j_left``/``j_right`` as [x, y]). Both go through the same loaders and
UniversalVectorProcessor as users' data. One parquet file per episode, frames as PNG Image
structs; frame t is what the player saw before choosing action row t (``action_shift`` 0).
"""

from __future__ import annotations

import io
import os
import shutil
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
from PIL import Image

from . import GAMES
from .base import GamepadAction

NITROGEN_BUTTONS = {
    "south": "SOUTH", "east": "EAST", "west": "WEST", "north": "NORTH", "left_shoulder": "LEFT_SHOULDER",
    "right_shoulder": "RIGHT_SHOULDER", "left_trigger": "LEFT_TRIGGER", "right_trigger": "RIGHT_TRIGGER",
    "start": "START", "back": "BACK", "guide": "GUIDE", "dpad_up": "DPAD_UP", "dpad_down": "DPAD_DOWN",
    "dpad_left": "DPAD_LEFT", "dpad_right": "DPAD_RIGHT", "left_thumb": "LEFT_THUMB", "right_thumb": "RIGHT_THUMB",
}
NES_BUTTONS = {
    "P1 A": "EAST", "P1 B": "SOUTH", "P1 Select": "BACK", "P1 Start": "START",
    "P1 Up": "DPAD_UP", "P1 Down": "DPAD_DOWN", "P1 Left": "DPAD_LEFT", "P1 Right": "DPAD_RIGHT",
}
GAME_FORMATS = {"runner": "nes", "collector": "nitrogen"}
DEMO_VERSION = "6"


def _png(frame: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(frame).save(buffer, format="PNG", compress_level=1)
    return buffer.getvalue()


def _columns(rows: list[GamepadAction], fmt: str) -> dict[str, list]:
    if fmt == "nes":
        return {column: [slot in a.buttons for a in rows] for column, slot in NES_BUTTONS.items()}
    columns = {column: [slot in a.buttons for a in rows] for column, slot in NITROGEN_BUTTONS.items()}
    columns["j_left"] = [list(a.j_left) for a in rows]
    columns["j_right"] = [list(a.j_right) for a in rows]
    return columns


def record_episode(game_name: str, seed: int, noise: float) -> tuple[list[np.ndarray], list[GamepadAction]]:
    game = GAMES[game_name]()
    frame, _ = game.reset(seed=seed)
    rng = np.random.default_rng([seed, 1])
    frames, actions = [], []
    done = False
    while not done:
        action = game.expert(rng, noise)
        frames.append(frame)
        actions.append(action)
        frame, _, terminated, truncated, _ = game.step(action)
        done = terminated or truncated
    return frames, actions


def record_game(game_name: str, folder: Path, episodes: int, seed: int = 0, noise: float = 0.1) -> list[Path]:
    folder.mkdir(parents=True, exist_ok=True)
    paths = []
    for i in range(episodes):
        frames, actions = record_episode(game_name, seed + i, noise)
        columns = {"image": [{"bytes": _png(f), "path": None} for f in frames], **_columns(actions, GAME_FORMATS[game_name])}
        path = folder / f"episode_{i:03d}.parquet"
        pq.write_table(pa.table(columns), path, row_group_size=256)
        paths.append(path)
    return paths


def demo_folder() -> Path:
    root = Path(os.environ.get("NITROGEN_FINETUNER_CACHE", Path.home() / ".cache" / "nitrogen-finetuner"))
    return root / f"demo-v{DEMO_VERSION}"


def demo_dataset(episodes_per_game: int = 24, folder: Path | None = None) -> Path:
    """The demo recordings (both games), generated once and cached."""
    folder = folder or demo_folder()
    marker = folder / f"complete-{episodes_per_game}"
    if marker.exists():
        return folder
    tmp = folder.with_name(folder.name + ".tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    for name in GAMES:
        record_game(name, tmp / name, episodes_per_game)
    (tmp / f"complete-{episodes_per_game}").touch()
    shutil.rmtree(folder, ignore_errors=True)
    tmp.rename(folder)
    return folder
