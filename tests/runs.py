"""Small training runs for the tests: the settings that keep them fast, and what they logged."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import torch
from safetensors.torch import load_file

from nitrogen_finetuner.training.checkpoints import checkpoint_dirs
from nitrogen_finetuner.training.config import TrainConfig, resolve_config

SMALL = {"num_workers": 0, "log_every": 1, "val_every": 0, "checkpoint_every": 2, "export_at_end": False,
         "batch_size": 4, "warmup_steps": 1}


def config(data: Path, output: Path, **overrides) -> TrainConfig:
    return resolve_config(None, {"data.dataset_name": str(data), "output": str(output), **SMALL, **overrides})


def logged(run_dir: Path, name: str) -> list[float]:
    """Every value of one metric in the run's metrics.jsonl, in order."""
    rows = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    return [row[name] for row in rows if name in row]


def final_weights(run_dir: Path) -> dict[str, torch.Tensor]:
    return load_file(str(checkpoint_dirs(run_dir)[-1] / "weights.safetensors"))


def train_in_a_process(*argv: str, env: dict, launcher: tuple[str, ...] = ()) -> None:
    """``nitrogen-finetune train ARGV`` in a process of its own (under ``launcher``, e.g. torchrun's);
    a failure shows the end of what the run printed, not only its exit status."""
    done = subprocess.run([sys.executable, *launcher, "-m", "nitrogen_finetuner.cli", "train", *argv], env=env,
                          capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
