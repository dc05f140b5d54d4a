"""Small training runs for the tests: the settings that keep them fast, and what they logged."""

from __future__ import annotations

import json
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
