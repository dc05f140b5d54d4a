"""Shared fixtures: tiny SigLIP tower folders and tiny official-format checkpoints."""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path

import pytest
import torch
from transformers import SiglipVisionConfig

sys.path.insert(0, str(Path(__file__).parent))

from golden.cases import CASES, TOWERS, ckpt_config, seeded_state_dict  # noqa: E402
from recordings import write_nitrogen_parquet  # noqa: E402
from nitrogen_finetuner.model.checkpoint import build_model, parse_config, save_checkpoint  # noqa: E402

GOLDEN_DIR = Path(__file__).parent / "golden"

# The training tests check CPU properties (bit-exact resume, 2 gloo processes equal 1), so they
# train on the CPU even where CUDA is present; ACCELERATE_USE_CPU=false runs them on the GPU.
os.environ.setdefault("ACCELERATE_USE_CPU", "true")


def golden(case: str) -> dict:
    return json.loads((GOLDEN_DIR / f"{case}.json").read_text())


def make_tower_folder(root: Path, tower: str) -> Path:
    """A local transformers folder holding only the tower's config.json (no weights)."""
    folder = root / tower
    if not (folder / "config.json").exists():
        SiglipVisionConfig(**TOWERS[tower]).save_pretrained(folder)
    return folder


def write_case_checkpoint(case: str, root: Path) -> Path:
    """An official-format checkpoint of a golden case with the deterministic golden weights."""
    raw = ckpt_config(case, str(make_tower_folder(root, CASES[case]["tower"])))
    model = build_model(parse_config(raw))
    model.load_state_dict(seeded_state_dict(model.state_dict()), strict=True)
    return save_checkpoint(root / f"{case}.pt", model, raw)


@pytest.fixture(scope="session")
def case_checkpoints(tmp_path_factory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("cases")
    return {case: write_case_checkpoint(case, root) for case in CASES}


@pytest.fixture(scope="module")
def recordings(tmp_path_factory) -> Path:
    """Three short NitroGen-format episodes to train on."""
    root = tmp_path_factory.mktemp("recordings")
    for i in range(3):
        write_nitrogen_parquet(root / f"episode_{i}.parquet", n=24, start=10 * i)
    return root


@pytest.fixture(autouse=True)
def _deterministic_threads():
    torch.set_num_threads(min(2, torch.get_num_threads()))
