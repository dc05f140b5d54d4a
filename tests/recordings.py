"""Small recordings written on the fly, in every source format the data pipeline reads.

Frame ``t`` is a solid colour whose red channel is ``t`` (so a test can tell which frame it got);
action row ``t`` presses SOUTH on even rows and holds the left stick at x = t / 100.
"""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
from PIL import Image

NITROGEN_BUTTONS = (
    "south", "east", "west", "north", "left_shoulder", "right_shoulder", "left_trigger", "right_trigger",
    "start", "back", "guide", "dpad_up", "dpad_down", "dpad_left", "dpad_right", "left_thumb", "right_thumb",
)


def frame(t: int, size: tuple[int, int] = (40, 30)) -> Image.Image:
    return Image.new("RGB", size, (t % 256, 100, 200))


def png_bytes(image: Image.Image) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    return buffer.getvalue()


def frame_index(image: np.ndarray) -> int:
    """The ``t`` of a frame made by ``frame`` (read at the centre, which padding never covers)."""
    h, w, _ = image.shape
    return int(image[h // 2, w // 2, 0])


def nitrogen_rows(n: int, start: int = 0) -> dict[str, list]:
    """Action columns of the NitroGen/BizHawk format for rows start..start+n-1."""
    rows = {name: [False] * n for name in NITROGEN_BUTTONS}
    rows["south"] = [(start + i) % 2 == 0 for i in range(n)]
    rows["j_left"] = [[(start + i) / 100.0, 0.0] for i in range(n)]
    rows["j_right"] = [[0.0, 0.0] for _ in range(n)]
    return rows


def image_structs(n: int, start: int = 0, size=(40, 30)) -> list[dict]:
    return [{"bytes": png_bytes(frame(start + i, size)), "path": None} for i in range(n)]


def write_nitrogen_parquet(path: Path, n: int, start: int = 0, row_group_size: int = 8, extra: dict | None = None) -> Path:
    """A BizHawk/NitroGen-style parquet file: HF Image structs plus the 17 buttons and 2 sticks."""
    columns = {"image": image_structs(n, start), **nitrogen_rows(n, start), **(extra or {})}
    path.parent.mkdir(parents=True, exist_ok=True)
    pq.write_table(pa.table(columns), path, row_group_size=row_group_size)
    return path


def write_frames_folder(folder: Path, n: int, table_format: str = "csv") -> Path:
    """Frames as PNG files plus an actions table whose ``image`` column holds relative paths."""
    (folder / "frames").mkdir(parents=True, exist_ok=True)
    for t in range(n):
        frame(t).save(folder / "frames" / f"{t:05d}.png")
    rows = {name: [int(v) for v in values] for name, values in nitrogen_rows(n).items() if name in NITROGEN_BUTTONS}
    rows["image"] = [f"frames/{t:05d}.png" for t in range(n)]
    if table_format == "csv":
        # sticks as separate columns through a user mapping would also work; here: generic names
        lines = [",".join(["image", *NITROGEN_BUTTONS, "left_x", "left_y"])]
        for t in range(n):
            values = [rows["image"][t], *(str(rows[b][t]) for b in NITROGEN_BUTTONS), str(t / 100.0), "0.0"]
            lines.append(",".join(values))
        (folder / "actions.csv").write_text("\n".join(lines) + "\n")
    else:
        import json

        with open(folder / "actions.jsonl", "w") as f:
            for t in range(n):
                record = {b: bool(rows[b][t]) for b in NITROGEN_BUTTONS}
                record.update(image=rows["image"][t], j_left=[t / 100.0, 0.0], j_right=[0.0, 0.0])
                f.write(json.dumps(record) + "\n")
    return folder
