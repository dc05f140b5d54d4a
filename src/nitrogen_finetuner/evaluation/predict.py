"""``nitrogen-finetune predict``: actions for frames and videos, as JSONL (and an overlay MP4).

Images give one line each. Videos are queried once per chunk, as the official player does (every
``horizon`` frames); each line holds the frame number, its time and the chunk of actions, buttons
by name. Start noise is seeded per (seed, file contents, frame), so reruns give the same output,
however the file's path is spelled. Both outputs are written to temporary files and renamed into
place when all went well, so a failed predict never leaves a partial file or loses an earlier one.
"""

from __future__ import annotations

import json
import os
import re
import zlib
from contextlib import contextmanager, nullcontext
from fractions import Fraction
from pathlib import Path
from typing import Iterator, Optional, TextIO

import numpy as np
import torch
from PIL import Image, ImageDraw, ImageSequence

from ..data.errors import DataError
from ..data.images import ImageDecodeError, decode_image
from ..files import refuse_existing, replaced_when_done
from ..policy import NitroGenPolicy

OVERLAY_SUFFIXES = {".mp4", ".mkv", ".avi", ".mov", ".webm"}  # the containers an H.264 overlay is written in
VIDEO_SUFFIXES = OVERLAY_SUFFIXES | {".gif"}  # read frame by frame (rollout writes GIFs)


def chunk_records(policy: NitroGenPolicy, out: dict) -> list[dict]:
    """One dict per step: pressed buttons by name and both sticks."""
    names = policy.layout.buttons
    return [
        {
            "buttons": [names[i] for i in np.flatnonzero(out["buttons"][h] > 0.5)],
            "j_left": [round(float(v), 4) for v in out["j_left"][h]],
            "j_right": [round(float(v), 4) for v in out["j_right"][h]],
        }
        for h in range(len(out["buttons"]))
    ]


def _actions(policy: NitroGenPolicy, frame: np.ndarray, noise: torch.Tensor) -> list[dict]:
    """The frame's chunk as records (NaN or infinite actions stop in ``predict``: JSON has no such numbers)."""
    return chunk_records(policy, policy.predict(frame, noise=noise))


def _noise(policy: NitroGenPolicy, seed: int, contents: int, frame: int) -> torch.Tensor:
    rng = np.random.default_rng([seed, contents, frame])
    return torch.from_numpy(rng.standard_normal((policy.horizon, policy.action_dim)).astype(np.float32))


def _contents(path: Path) -> int:
    """A checksum of the file's bytes: the noise key that does not depend on the path's spelling."""
    checksum = 0
    with open(path, "rb") as f:
        while block := f.read(1 << 20):
            checksum = zlib.crc32(block, checksum)
    return checksum


def _video_frames(path: Path) -> Iterator[tuple[int, float, np.ndarray]]:
    if path.suffix.lower() == ".gif":  # Pillow reads GIFs: no PyAV needed
        yield from _gif_frames(path)
        return
    try:
        import av  # noqa: PLC0415 - optional: pip install ".[video]"
    except ImportError:
        raise DataError("reading videos needs PyAV", file=str(path), hint='pip install "nitrogen-finetuner[video]"') from None
    try:
        with av.open(str(path)) as container:
            if not container.streams.video:
                raise DataError("the file holds no video stream (sound only?)", file=str(path),
                                hint="give image or video files")
            stream = container.streams.video[0]
            for i, frame in enumerate(container.decode(stream)):
                yield i, float(frame.time or 0.0), frame.to_ndarray(format="rgb24")
    except av.error.FFmpegError as err:
        raise DataError(f"cannot read the video ({err})", file=str(path)) from None


def _gif_frames(path: Path) -> Iterator[tuple[int, float, np.ndarray]]:
    """A GIF's frames, each as many times as it lasts frame times: a GIF writer (Pillow, for
    ``rollout``) merges a frame that repeats the one before into a longer one, and the frame
    numbers stay those of the game's steps. The frame time is the one the GIF's comment states
    (``rollout`` writes "30 ms per step"), else the shortest duration. A frame up to 1.75 frame
    times long counts once: GIF keeps time in 10 ms, so 40 fps alternates 20 and 30 ms."""
    try:  # a first pass reads every frame's duration: a damaged file stops before any work
        with Image.open(path) as gif:
            stated = re.fullmatch(rb"(\d+) ms per step", gif.info.get("comment", b""))
            durations = [frame.info.get("duration", 0) for frame in ImageSequence.Iterator(gif)]
            shortest = min((duration for duration in durations if duration > 0), default=None)
            tick = int(stated[1]) if stated else shortest
            time_s, i = 0.0, 0
            for frame, duration in zip(ImageSequence.Iterator(gif), durations):
                pixels = np.asarray(frame.convert("RGB"))
                repeats = max(1, int(duration / tick + 0.25)) if tick else 1
                for _ in range(repeats):
                    yield i, time_s, pixels
                    time_s, i = time_s + duration / repeats / 1000, i + 1
    except Exception as err:  # Pillow raises many types for a damaged file
        raise DataError(f"cannot read the GIF ({err or type(err).__name__})", file=str(path),
                        hint="give image or video files") from None


def _frame_rate(path: Path) -> Fraction:
    import av  # noqa: PLC0415

    with av.open(str(path)) as container:
        return container.streams.video[0].average_rate or Fraction(60)


def draw_overlay(frame: np.ndarray, step: dict) -> np.ndarray:
    """The frame with both sticks and the pressed buttons drawn in its top-left corner."""
    image = Image.fromarray(frame)
    draw = ImageDraw.Draw(image)
    size = max(24, min(image.size) // 8)
    for k, key in enumerate(("j_left", "j_right")):
        cx, cy = 8 + size // 2 + k * (size + 8), 8 + size // 2
        draw.ellipse([cx - size // 2, cy - size // 2, cx + size // 2, cy + size // 2], outline="white", width=2)
        x, y = step[key]
        dx, dy = cx + x * size / 2, cy + y * size / 2
        draw.ellipse([dx - 4, dy - 4, dx + 4, dy + 4], fill="yellow")
    draw.text((8, 16 + size), " ".join(step["buttons"]) or "-", fill="yellow")
    return np.asarray(image)


def check_inputs(paths: list[str], overlay: Optional[Path]) -> None:
    """Every input is a file, and an overlay has exactly one video to draw on, before any work."""
    for name in paths:
        if not Path(name).is_file():
            raise DataError("a folder, not a file" if Path(name).is_dir() else "no such file", file=name,
                            hint="give image or video files")
    if overlay is None:
        return
    videos = [name for name in paths if Path(name).suffix.lower() in VIDEO_SUFFIXES]
    if len(videos) != 1:
        raise DataError(f"--overlay draws on one video, and {len(videos)} of the inputs are videos", file=str(overlay),
                        hint="give one video per predict command when asking for an overlay")
    if overlay.suffix.lower() not in OVERLAY_SUFFIXES:
        raise DataError("an overlay is a video file", file=str(overlay),
                        hint=f"end its name in one of {', '.join(sorted(OVERLAY_SUFFIXES))}")


def _same_file(a: Path, b: Path) -> bool:
    """Whether two names are one file, however spelled (./x, links) and whether or not it exists yet."""
    return a.resolve() == b.resolve() or (a.exists() and b.exists() and os.path.samefile(a, b))


def check_outputs(inputs: list[str], checkpoint: str, output: Optional[Path], overlay: Optional[Path],
                  force: bool) -> None:
    """Before any work: no output is an input, the checkpoint or the other output (not even with
    ``--force``: writing it would destroy what predict reads), and none replaces a file unforced."""
    named = [(flag, path) for flag, path in (("--output", output), ("--overlay", overlay)) if path is not None]
    for flag, path in named:
        for what, name in [("the checkpoint", checkpoint), *(("an input", name) for name in inputs)]:
            if _same_file(path, Path(name)):
                raise DataError(f"{flag} is {what}, which writing it would destroy", file=str(path),
                                hint="choose another file name")
    if len(named) == 2 and _same_file(output, overlay):
        raise DataError("--output and --overlay name the same file", file=str(overlay),
                        hint="give the overlay video a name of its own")
    for _, path in named:
        refuse_existing(path, force)


def predict_files(policy: NitroGenPolicy, paths: list[str], sink: TextIO, seed: int = 0,
                  overlay: Optional[Path] = None) -> int:
    """Write one JSON line per image or per video chunk; returns the number of lines. The overlay
    replaces its file only once every input went well."""
    check_inputs(paths, overlay)
    lines = 0
    with replaced_when_done(overlay) if overlay is not None else nullcontext() as drawn:
        for name in paths:
            path = Path(name)
            if path.suffix.lower() in VIDEO_SUFFIXES:
                lines += _predict_video(policy, path, sink, seed, drawn, overlay)
                continue
            try:
                frame = np.asarray(decode_image(str(path)))
            except ImageDecodeError as err:
                raise DataError(str(err), file=name, hint="give image or video files") from None
            actions = _actions(policy, frame, _noise(policy, seed, _contents(path), 0))
            sink.write(json.dumps({"source": name, "frame": 0, "actions": actions}) + "\n")
            lines += 1
    return lines


def _predict_video(policy: NitroGenPolicy, path: Path, sink: TextIO, seed: int,
                   drawn: Optional[Path], overlay: Optional[Path]) -> int:
    """The video's chunks as lines, and its frames with their actions drawn into ``drawn``."""
    writer, lines, steps, contents = None, 0, [], _contents(path)
    try:
        for i, time_s, frame in _video_frames(path):
            if i % policy.horizon == 0:
                steps = _actions(policy, frame, _noise(policy, seed, contents, i))
                sink.write(json.dumps({"source": str(path), "frame": i, "time_s": round(time_s, 4),
                                       "actions": steps}) + "\n")
                lines += 1
            if drawn is not None:
                if writer is None:
                    writer = _VideoWriter(drawn, overlay, frame.shape, _frame_rate(path))
                writer.write(draw_overlay(frame, steps[i % policy.horizon]))
    finally:
        if writer is not None:
            writer.close()
    return lines


class _VideoWriter:
    """An H.264 video written to ``path`` (the overlay's temporary file); its errors name ``name``."""

    def __init__(self, path: Path, name: Path, shape: tuple[int, ...], fps: Fraction):
        import av  # noqa: PLC0415

        self.av, self.name = av, name
        with self._errors():
            self.container = av.open(str(path), mode="w")
            self.stream = self.container.add_stream("libx264", rate=fps)
            self.stream.height, self.stream.width = shape[0] - shape[0] % 2, shape[1] - shape[1] % 2
            self.stream.pix_fmt = "yuv420p"

    @contextmanager
    def _errors(self) -> Iterator[None]:
        try:
            yield
        except self.av.error.FFmpegError as err:
            raise DataError(f"cannot write the overlay video ({err.strerror})", file=str(self.name)) from None

    def write(self, frame: np.ndarray) -> None:
        frame = frame[: self.stream.height, : self.stream.width]
        with self._errors():
            for packet in self.stream.encode(self.av.VideoFrame.from_ndarray(np.ascontiguousarray(frame),
                                                                             format="rgb24")):
                self.container.mux(packet)

    def close(self) -> None:
        with self._errors():
            for packet in self.stream.encode():
                self.container.mux(packet)
            self.container.close()
