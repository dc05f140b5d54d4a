"""The model a run starts from: an official-format checkpoint, or a preset with random weights.

A preset base is saved into the run folder (``base.pt``) so that resuming and exporting rebuild
exactly the same starting weights.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from pathlib import Path
from typing import Optional

import torch

from ..actions.layout import ActionLayout
from ..data.pipeline import ModelInputs
from ..model.checkpoint import CheckpointError, load_checkpoint, parse_config, save_checkpoint
from ..model.configuration import CheckpointConfig
from ..model.modeling import NitroGenModel
from ..model.presets import PRESETS, build_preset
from ..model.vision import ImagePreprocessor
from ..policy import checkpoint_layout

BASE_FILE = "base.pt"


@dataclass
class BaseCheckpoint:
    model: NitroGenModel
    raw_config: dict
    config: CheckpointConfig
    layout: ActionLayout
    preprocessor: ImagePreprocessor
    source: str
    extra: dict

    def model_inputs(self, horizon: Optional[int] = None) -> ModelInputs:
        inputs = ModelInputs.of_config(self.config, self.extra, self.layout, self.preprocessor.size)
        return replace(inputs, horizon=horizon or inputs.horizon)


def _assemble(model: NitroGenModel, raw: dict, extra: dict, source: str) -> BaseCheckpoint:
    config = parse_config(raw, f"{source}: ckpt_config")
    preprocessor = ImagePreprocessor.for_tower(config.model_cfg.vision_encoder_name, model.vision_encoder.config)
    return BaseCheckpoint(model, raw, config, checkpoint_layout(config, extra), preprocessor, source, extra)


def load_base(spec: str, run_dir: Path, seed: int, is_main: bool) -> BaseCheckpoint:
    """The run's own ``base.pt`` if it has one, else a preset (random, seeded) or a checkpoint."""
    saved = run_dir / BASE_FILE
    if not saved.exists() and spec in PRESETS:
        torch.manual_seed(seed)
        model, raw = build_preset(spec)
        if is_main:
            save_checkpoint(saved, model, raw)
        return _assemble(model, raw, {}, spec)
    path = saved if saved.exists() else Path(spec)
    run_config = run_dir / "config.yaml"
    if not path.is_file() and any(run_dir.glob("checkpoints/step_*")):
        raise CheckpointError(
            f"{path}: no such checkpoint file; it is the base this run was trained from (`base` in {run_config}): "
            "put it back there, or set `base` in that file to where it is now")
    loaded = load_checkpoint(path)
    return _assemble(loaded.model, loaded.raw_config, loaded.extra, str(path))


def set_dropout(model: NitroGenModel, p: float) -> None:
    """Override the checkpoint's dropout in the DiT and the VL mixer (e.g. 0 for exact tests)."""
    for part in (model.model, model.vl_self_attention_model):
        for module in part.modules():
            if isinstance(module, torch.nn.Dropout):
                module.p = p
