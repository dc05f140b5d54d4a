"""Training windows per second through the DataLoader, on 256x256 PNG frames.

    python benchmarks/loader_throughput.py [--frames 2048] [--workers 0,1,2] [--batch-size 32]
    python benchmarks/loader_throughput.py --keep DIR --workers ""   # only write the dataset, to train on
    python benchmarks/loader_throughput.py --frames 512 --batch-size 16 --workers 2 --step-ms 100

Writes a NitroGen-format parquet dataset of game-like frames (flat colours, shapes, a HUD bar:
PNG-compressible like real console frames) to a temporary folder, then times full passes of the
loader at each worker count: decode, pad/resize to 256, window actions, collate. Target: at
least 400 windows/s per CPU core.

With ``--step-ms``, the trainer's batches (``micro_batches``) instead, over three epochs, each
batch taken after a pause standing in for a training step of that many milliseconds: how long
the step waits for its batch at the start of each epoch, when that epoch's workers start, and
over the rest of it.
"""

from __future__ import annotations

import argparse
import contextlib
import io
import os
import tempfile
import time
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
from PIL import Image, ImageDraw

from nitrogen_finetuner.data.config import DataConfig
from nitrogen_finetuner.data.loader import make_loader
from nitrogen_finetuner.data.pipeline import ModelInputs, prepare_data
from nitrogen_finetuner.training.batches import micro_batches
from nitrogen_finetuner.training.checkpoints import Progress

BUTTONS = ("south", "east", "west", "north", "left_shoulder", "right_shoulder", "left_trigger", "right_trigger",
           "start", "back", "guide", "dpad_up", "dpad_down", "dpad_left", "dpad_right", "left_thumb", "right_thumb")


def game_frame(rng: np.random.Generator, size: int = 256) -> bytes:
    image = Image.new("RGB", (size, size), tuple(int(v) for v in rng.integers(0, 120, 3)))
    draw = ImageDraw.Draw(image)
    for _ in range(12):
        x, y = rng.integers(0, size, 2)
        w, h = rng.integers(8, 64, 2)
        colour = tuple(int(v) for v in rng.integers(0, 256, 3))
        (draw.ellipse if rng.random() < 0.5 else draw.rectangle)([int(x), int(y), int(x + w), int(y + h)], fill=colour)
    draw.rectangle([0, 0, size, 16], fill=(20, 20, 20))
    draw.text((4, 2), f"SCORE {int(rng.integers(0, 99999)):05d}", fill=(255, 255, 0))
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    return buffer.getvalue()


def write_dataset(folder: Path, frames: int, files: int = 4, seed: int = 0) -> None:
    rng = np.random.default_rng(seed)
    per_file = frames // files
    for f in range(files):
        columns = {"image": [{"bytes": game_frame(rng), "path": None} for _ in range(per_file)]}
        for name in BUTTONS:
            columns[name] = (rng.random(per_file) < 0.1).tolist()
        columns["j_left"] = rng.uniform(-1, 1, (per_file, 2)).tolist()
        columns["j_right"] = rng.uniform(-1, 1, (per_file, 2)).tolist()
        pq.write_table(pa.table(columns), folder / f"episode_{f:03d}.parquet", row_group_size=64)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--frames", type=int, default=2048)
    parser.add_argument("--workers", default="0,1,2", type=lambda s: [int(x) for x in s.split(",") if x])
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--keep", type=Path, help="write the dataset into this folder and keep it (a new folder)")
    parser.add_argument("--step-ms", type=float, help="time the waits of a training loop with steps this long")
    args = parser.parse_args()

    with tempfile.TemporaryDirectory() if args.keep is None else contextlib.nullcontext(args.keep) as tmp:
        if args.keep is not None:
            args.keep.mkdir(parents=True)
        start = time.perf_counter()
        write_dataset(Path(tmp), args.frames)
        print(f"wrote {args.frames} 256x256 PNG frames in {time.perf_counter() - start:.1f} s")
        if not args.workers:
            return
        data = prepare_data(DataConfig(dataset_name=str(tmp)), ModelInputs.of_checkpoint(None))
        dataset = data.dataset(batch_size=args.batch_size, seed=0)
        print(f"{dataset.num_windows} windows of {data.spec.horizon} actions; {os.cpu_count()} CPU cores")
        if args.step_ms is not None:
            print("| workers | epoch | wait for its first 4 batches, ms | for the other batches, ms |")
            print("|---|---|---|---|")
            for workers in args.workers:
                for epoch, waits in epoch_waits(dataset, workers, args.step_ms / 1000).items():
                    print(f"| {workers} | {epoch} | {sum(waits[:4]) * 1000:.0f} | {sum(waits[4:]) * 1000:.0f} |",
                          flush=True)
            return
        print("| workers | windows/s | windows/s per busy core |")
        print("|---|---|---|")
        for workers in args.workers:
            loader = make_loader(dataset, num_workers=workers)
            start, count = time.perf_counter(), 0
            for batch in loader:
                count += len(batch["actions"])
            rate = count / (time.perf_counter() - start)
            print(f"| {workers} | {rate:.0f} | {rate / max(1, workers):.0f} |", flush=True)


def epoch_waits(dataset, workers: int, step_s: float, epochs: int = 3) -> dict[int, list[float]]:
    """Seconds the training loop waited for each batch, by epoch."""
    waits: dict[int, list[float]] = {}
    batches = micro_batches(dataset, Progress(), workers)
    for _ in range(epochs * dataset.batches_per_epoch()):
        start = time.perf_counter()
        epoch, _, _ = next(batches)
        waits.setdefault(epoch, []).append(time.perf_counter() - start)
        time.sleep(step_s)
    return waits


if __name__ == "__main__":
    main()
