"""``nitrogen-finetune export``: a run folder to an official-format checkpoint.

Rebuilds the run's base model, puts back the trained weights of a checkpoint (EMA weights when
the run kept them), merges LoRA into the base weights and writes the official format: exactly the
official parameter names (no PEFT or LoRA keys), so the official loader and ``scripts/serve.py``
load it strictly, and so does ``load_policy``.
"""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Optional

from peft import PeftModel

from ..data.episodes import read_held_out
from ..data.errors import DataError
from ..files import output_file, refuse_existing
from ..model.checkpoint import nonfinite_tensors, save_checkpoint
from ..model.presets import PRESETS
from ..policy import __version__
from .adapters import load_trainable_state, prepare_trainable
from .base import load_base
from .checkpoints import checkpoint_dir, checkpoint_dirs, load_progress, load_weights
from .config import resolve_config, run_config_file
from .run_lock import training_now


def export_run(
    run_dir: str | Path, out: str | Path, checkpoint: Optional[str | Path] = None, use_ema: Optional[bool] = None,
    best: bool = False, base_file: Optional[str] = None, force: bool = False,
) -> Path:
    """Merge a run's trained weights into its base and write ``out``; returns the path. The newest
    checkpoint by default, or ``checkpoint``, or with ``best`` the one keep_best kept.
    ``base_file`` stands for the run's base when that file has moved (its weights must be the same).
    An existing ``out`` is replaced only with ``force``, and never when it is the run's base or a
    file the run needs to be exported or resumed again; nothing is written in its checkpoint folders."""
    config = resolve_config(run_config_file(run_dir))
    run_dir = Path(run_dir)
    if base_file is not None:
        config = config.model_copy(update={"base": base_file})
    _check_output(out, run_dir, config.base, force)
    found = checkpoint_dirs(run_dir)
    if checkpoint is None and not found and training_now(run_dir):
        raise DataError("the run is training and has written no checkpoint yet", file=str(run_dir),
                        hint="export once it has written one (checkpoint_every) or has ended")
    if checkpoint is None and not found and (run_dir / "summary.json").is_file():
        model = run_dir / "model.pt"
        raise DataError("the run finished, and its checkpoints, which export reads, were deleted", file=str(run_dir),
                        hint=f"its model is {model}" if model.is_file() else
                        "its trained weights are in adapter/ (LoRA) or weights.safetensors (full)")
    if checkpoint is None and not found:
        raise DataError("the run has no checkpoint to export", file=str(run_dir),
                        hint="it stopped before its first checkpoint: train it again, or with --resume once it has one")
    path = run_checkpoint(run_dir, checkpoint, found) if checkpoint else found[-1]
    if best:
        best_step = load_progress(found[-1]).best_step if found else None
        if best_step is None and not config.keep_best:
            raise DataError("the run kept no best checkpoint", file=str(run_dir),
                            hint="train with keep_best: true and a validation set (val_fraction > 0)")
        if best_step is None:  # keep_best, and no step both validated and checkpointed
            raise DataError("the run kept no best checkpoint: none of its checkpoints had a validation loss",
                            file=str(run_dir), hint="it had no held-out recording (its data holds one), or val_every "
                                                    "and checkpoint_every share no step; export without --checkpoint "
                                                    "best for its newest")
        path = checkpoint_dir(run_dir, best_step)
        if not path.is_dir():
            raise DataError(f"the run's best checkpoint, {path.name}, was deleted", file=str(run_dir),
                            hint=f"export another: --checkpoint {found[-1].name} is its newest")
    state = load_weights(path)
    if use_ema and state.ema is None:
        raise DataError("this checkpoint has no EMA weights (ema_decay was off when it was saved)", file=str(path))
    weights = state.ema if (use_ema is not False and state.ema is not None) else state.weights
    broken = next(iter(nonfinite_tensors(weights)), None)
    if broken is not None:  # a checkpoint saved before the trainer refused such weights
        names = [d.name for d in found]
        earlier = names[:names.index(path.name)] if path.name in names else []
        raise DataError(f"checkpoint {path.name} holds weights that are not finite numbers ({broken}): the run had "
                        "diverged", file=str(run_dir),
                        hint=f"export an earlier checkpoint: --checkpoint {earlier[-1]}" if earlier else
                        "the run has no earlier checkpoint: train again with a lower learning_rate")

    base = load_base(config.base, run_dir, config.seed, new_run=False)
    module = prepare_trainable(base.model, config.method, config.lora, config.tune)
    load_trainable_state(module, weights)
    model = module.merge_and_unload() if isinstance(module, PeftModel) else module

    raw = copy.deepcopy(base.raw_config)
    # The data alignment the model was fine-tuned with is the one it must be played with.
    horizon, shift = config.data.prediction_horizon, config.data.action_shift
    if horizon and horizon != base.config.model_cfg.action_horizon:
        raw["model_cfg"]["action_horizon"] = horizon
        raw["tokenizer_cfg"]["action_horizon"] = horizon
        modality = raw["modality_cfg"]  # the official inference reads neither; a reader of the file may
        if modality.get("frame_spacing") is not None and modality["frame_spacing"] == modality.get("action_per_chunk"):
            modality["frame_spacing"] = horizon  # it follows the chunk (it defaults to action_per_chunk)
        modality["action_per_chunk"] = horizon
    if shift is not None and shift >= 1:  # the official config requires >= 1; 0 is kept in `extra`
        raw["modality_cfg"]["action_shift"] = shift
    extra = {
        "version": __version__,
        "action_layout": base.layout.to_dict(),
        # A preset's name, not the run's copy of it; a file's path from anywhere.
        "fine_tuned_from": config.base if config.base in PRESETS else str(Path(base.source).resolve()),
        "method": config.method,
        "weights": "ema" if weights is state.ema else "final",
        "data_action_shift": shift if shift is not None else base.model_inputs().action_shift,
        "image_fit": config.data.image_fit,  # how frames were made square: the policy plays with the same
        # The episodes the run held out, for `eval --episodes val` on a copy far from the run folder.
        "held_out": {"val_fraction": config.val_fraction, "seed": config.seed, "data": config.data.dataset_name,
                     **({"recordings": held_out} if (held_out := read_held_out(run_dir)) is not None else {})},
    }
    return save_checkpoint(out, model.eval(), raw, extra, step=state.progress.step, epoch=state.progress.epoch)


def _check_output(name: str | Path, run_dir: Path, base: str, force: bool) -> None:
    out = output_file(name)
    target, run_dir = out.resolve(), run_dir.resolve()
    if (run_dir / "checkpoints") in target.parents:
        raise DataError("checkpoint folders are the run's, and rotation deletes them", file=str(out),
                        hint="write the export to another file")
    if not out.exists():
        return
    # In the run folder only exports (model.pt, other .pt files) may be replaced: the rest is what
    # the run needs to be exported or resumed again (its base, config, record, checkpoints).
    an_export = target.suffix == ".pt" and target.parent == run_dir and target.name != "base.pt"
    if target == Path(base).resolve() or (run_dir in target.parents and not an_export):
        raise DataError("this file is the run's base or one the run needs to be exported or resumed again",
                        file=str(out), hint="write the export to another file")
    refuse_existing(out, force)


def run_checkpoint(run_dir: Path, checkpoint: str | Path, found: list[Path]) -> Path:
    """One of the run's own checkpoints, given as its folder or its name (``step_000120``): the
    weights of another run's checkpoint would land on this run's base without a word."""
    path = Path(checkpoint)
    if not path.exists() and len(path.parts) == 1:
        path = run_dir / "checkpoints" / path
    if path.resolve() not in {p.resolve() for p in found}:
        names = ", ".join(p.name for p in found) or "none yet"
        what = "not a checkpoint of this run" if path.is_dir() else "no such checkpoint"
        raise DataError(f"{checkpoint}: {what}", file=str(run_dir),
                        hint=f"its checkpoints: {names}; or best (keep_best)")
    return path
