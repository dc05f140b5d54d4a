"""The model a run starts from: an official-format checkpoint, or a preset with random weights.

A preset base is saved into the run folder (``base.pt``) so that resuming and exporting rebuild
exactly the same starting weights; every base's fingerprint is recorded there (``base.json``).
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Optional

import torch

from ..actions.layout import ActionLayout
from ..data.errors import DataError
from ..data.pipeline import ModelInputs
from ..files import write_text_atomic
from ..model.checkpoint import CheckpointError, load_checkpoint, nonfinite_tensors, parse_config, save_checkpoint
from ..model.configuration import CheckpointConfig
from ..model.modeling import NitroGenModel
from ..model.presets import PRESETS, build_preset
from ..model.vision import ImagePreprocessor
from ..policy import checkpoint_layout

BASE_FILE = "base.pt"
BASE_RECORD = "base.json"


@dataclass
class BaseCheckpoint:
    model: NitroGenModel
    raw_config: dict
    config: CheckpointConfig
    layout: ActionLayout
    preprocessor: ImagePreprocessor
    source: str
    extra: dict
    fingerprint: str = ""  # of the weights as loaded, before any adapter is added

    def model_inputs(self, horizon: Optional[int] = None) -> ModelInputs:
        limit = self.model.max_horizon
        if horizon and limit and horizon > limit:
            raise DataError(f"prediction_horizon {horizon} is more action steps than the base model's position "
                            f"tables hold ({limit})", file=self.source,
                            hint=f"set data.prediction_horizon to at most {limit}")
        inputs = ModelInputs.of_config(self.config, self.extra, self.layout, self.preprocessor.size)
        return replace(inputs, horizon=horizon or inputs.horizon)


def _assemble(model: NitroGenModel, raw: dict, extra: dict, source: str) -> BaseCheckpoint:
    config = parse_config(raw, f"{source}: ckpt_config")
    preprocessor = ImagePreprocessor.for_tower(config.model_cfg.vision_encoder_name, model.vision_encoder.config)
    return BaseCheckpoint(model, raw, config, checkpoint_layout(config, extra), preprocessor, source, extra)


def load_base(spec: str, run_dir: Path, seed: int, new_run: bool) -> BaseCheckpoint:
    """The run's own ``base.pt`` when it resumes and has one, else a preset (random, seeded) or a
    checkpoint.

    A new run records the base's fingerprint (``record_base``); resuming and exporting refuse a
    base whose weights differ from it, which would otherwise put the trained weights on top of
    another model without a word.
    """
    saved, record = run_dir / BASE_FILE, run_dir / BASE_RECORD
    trained_from = read_base_record(record) if not new_run and record.is_file() else None
    # A new run never inherits a base.pt left in its folder; a resume naming another base loads
    # that one, and the fingerprint below decides whether it is the same model.
    own_base = not new_run and saved.exists() and (trained_from is None or trained_from["base"] == spec)
    # Everything random after this (a preset's weights, LoRA's initial adapters, dropout) follows the
    # run's seed, alike in every process: torch itself starts from a random seed.
    torch.manual_seed(seed)
    if not own_base and spec in PRESETS:
        model, raw = build_preset(spec)
        base = _assemble(model, raw, {}, spec)
    else:
        path = saved if own_base else Path(spec)
        if not path.is_file() and not new_run:
            raise CheckpointError(
                f"{path}: no such checkpoint file; resuming and exporting need the base this run was trained "
                f"from: put it back, or give its new path (--base, or `base` in {run_dir / 'config.yaml'})")
        try:
            loaded = load_checkpoint(path)
        except CheckpointError as err:
            if not own_base:
                raise
            raise CheckpointError(f"{err}; delete it: the run rebuilds its {spec} base from its seed and checks "
                                  f"the weights against {record}") from None
        broken = nonfinite_tensors(loaded.model.state_dict())
        if broken:  # found now, not as a NaN loss at step 1 that blames the learning rate
            raise CheckpointError(f"{path}: its weights hold NaN or infinity ({', '.join(broken[:3])}"
                                  f"{', ...' if len(broken) > 3 else ''}): a base must be a working model; "
                                  "download or export it again")
        base = _assemble(loaded.model, loaded.raw_config, loaded.extra, str(path))
    base.fingerprint = fingerprint(base.model)
    if trained_from is not None:
        if base.fingerprint != trained_from["fingerprint"]:
            raise CheckpointError(
                f"{base.source}: not the base this run was trained from (its weights differ from those of "
                f"{trained_from['base']}, recorded in {record}); resuming and exporting need that base")
        changed = first_difference(trained_from.get("description"), description(base))  # absent in older runs
        if changed:
            raise CheckpointError(
                f"{base.source}: not the base this run was trained from ({changed}, recorded in {record}): the "
                f"same weights would decode actions otherwise; resuming and exporting need that base")
    return base


def description(base: BaseCheckpoint) -> dict:
    """What a base's weights are read with: its ckpt_config and action layout."""
    return json.loads(json.dumps({"ckpt_config": base.raw_config, "action_layout": base.layout.to_dict()}, default=str))


NAMES_ONLY = {"ckpt_config.experiment_name"}  # a base renamed still reads its weights the same way


def first_difference(recorded, now, path: str = "") -> Optional[str]:
    """The first setting of ``now`` that differs from ``recorded``, as one phrase (None: the same,
    or nothing recorded)."""
    if recorded is None or recorded == now or path in NAMES_ONLY:
        return None
    if isinstance(recorded, dict) and isinstance(now, dict):
        for key in sorted(set(recorded) | set(now)):
            found = first_difference(recorded.get(key), now.get(key), f"{path}.{key}" if path else key)
            if found:
                return found
        return None
    return f"its {path} is {json.dumps(now)}, the run's was {json.dumps(recorded)}"


def read_base_record(record: Path) -> dict:
    try:
        trained_from = json.loads(record.read_text())
    except ValueError:
        trained_from = None
    if not isinstance(trained_from, dict) or not {"base", "fingerprint"} <= set(trained_from):
        raise CheckpointError(f"{record}: the run's record of its base is damaged; put back a copy, or delete it "
                              "and the base is no longer checked")
    return trained_from


def record_base(base: BaseCheckpoint, spec: str, seed: int, run_dir: Path) -> None:
    """A new run's record of its base (main process, once the run has everything it needs to
    start, adapters included): the fingerprint in ``base.json``, and a preset's weights in
    ``base.pt``, built again from the seed (the model in hand may carry adapters by now)."""
    saved = run_dir / BASE_FILE
    if spec in PRESETS:
        with torch.random.fork_rng(devices=[]):  # the run's own random stream goes on untouched
            torch.manual_seed(seed)
            model, raw = build_preset(spec)
        if fingerprint(model) != base.fingerprint:
            raise RuntimeError(f"the {spec} preset built from seed {seed} is not the run's base")
        save_checkpoint(saved, model, raw)
    else:
        saved.unlink(missing_ok=True)  # an earlier run's; resuming this one would pick it up
    record = {"base": spec, "fingerprint": base.fingerprint, "description": description(base)}
    write_text_atomic(run_dir / BASE_RECORD, json.dumps(record, indent=2))


def fingerprint(model: NitroGenModel) -> str:
    """SHA-256 of every tensor's name and bytes (about a second for the released model)."""
    digest = hashlib.sha256()
    for name, tensor in sorted(model.state_dict().items()):
        digest.update(name.encode())
        digest.update(memoryview(tensor.detach().contiguous().reshape(-1).view(torch.uint8).numpy()))
    return digest.hexdigest()


def set_dropout(model: NitroGenModel, p: float) -> None:
    """Override the checkpoint's dropout in the DiT and the VL mixer (e.g. 0 for exact tests)."""
    for part in (model.model, model.vl_self_attention_model):
        for module in part.modules():
            if isinstance(module, torch.nn.Dropout):
                module.p = p
