"""What trains: LoRA adapters through PEFT, or the whole model, within the checkpoint's switches.

LoRA goes on the chosen components; the action encoder and decoder (and the position and game
embeddings) train in full next to it, because a new game brings new action statistics that a
frozen encoder cannot absorb. The checkpoint's ``tune_*`` switches (which a run's ``tune`` section
may override) and the released model's freeze of vision layer 11 and the pooling head hold in both
methods.
"""

from __future__ import annotations

import re
from typing import Optional

import torch
from peft import LoraConfig as PeftLoraConfig
from peft import PeftModel, get_peft_model

from ..data.errors import DataError
from ..model.modeling import NitroGenModel
from .config import LORA_COMPONENTS, LoraConfig, TuneConfig
from .sharding import shard_like

# Which tune_* switch of the checkpoint governs each LoRA component and fully-trained module.
_SWITCH_OF_COMPONENT = {
    "dit_attention": "tune_diffusion_model",
    "dit_feedforward": "tune_diffusion_model",
    "dit_adaln": "tune_diffusion_model",
    "vl_mixer": "tune_vl_mixing",
    "vl_mixer_attention": "tune_vl_mixing",
    "vision_tower": "tune_vision_tower",
    "vision_tower_attention": "tune_vision_tower",
}
_SWITCH_OF_MODULE = {
    "action_encoder": "tune_multi_projector",
    "action_decoder": "tune_multi_projector",
    "position_embedding": "tune_multi_projector",
}


def lora_target_modules(model: NitroGenModel, targets: list[str]) -> list[str]:
    """Module names the chosen components cover; a component that matches nothing is an error."""
    linear_names = [name for name, module in model.named_modules() if isinstance(module, torch.nn.Linear)]
    chosen: list[str] = []
    for target in targets:
        if target not in LORA_COMPONENTS:
            raise DataError(f"unknown LoRA target '{target}'", hint=f"targets are: {', '.join(LORA_COMPONENTS)}")
        switch = _SWITCH_OF_COMPONENT[target]
        if not getattr(model.config, switch):
            raise DataError(f"LoRA target '{target}' is frozen ({switch}: false)",
                            hint=f"remove it from lora.targets, or set tune.{switch.removeprefix('tune_')}: true")
        matched = [n for n in linear_names if re.fullmatch(LORA_COMPONENTS[target], n)]
        if not matched:
            raise DataError(f"LoRA target '{target}' matches no layer of this model",
                            hint=f"pattern {LORA_COMPONENTS[target]}")
        chosen += [n for n in matched if n not in chosen]  # components may overlap (vl_mixer, vl_mixer_attention)
    return chosen


def apply_lora(model: NitroGenModel, settings: LoraConfig) -> PeftModel:
    """Wrap the model with LoRA adapters; only adapters and ``train_fully`` modules train."""
    targets = lora_target_modules(model, settings.targets)
    unknown = [name for name in settings.train_fully if name not in _SWITCH_OF_MODULE and name != "game_embedding"]
    if unknown:
        raise DataError(f"lora.train_fully names an unknown module '{unknown[0]}'",
                        hint=f"modules: {', '.join([*_SWITCH_OF_MODULE, 'game_embedding'])}")
    fully = [
        name for name in settings.train_fully
        if hasattr(model, name) and getattr(model.config, _SWITCH_OF_MODULE.get(name, "tune_multi_projector"))
    ]
    config = PeftLoraConfig(r=settings.rank, lora_alpha=settings.alpha, lora_dropout=settings.dropout,
                            target_modules=targets)
    wrapped = get_peft_model(model, config)
    # Unfrozen in place rather than through PEFT's modules_to_save, which matches names by suffix
    # (it would also catch the vision tower's own position_embedding) and renames the weights.
    for name in fully:
        getattr(model, name).requires_grad_(True)
    return wrapped


def prepare_trainable(model: NitroGenModel, method: str, lora: LoraConfig,
                      tune: Optional[TuneConfig] = None) -> torch.nn.Module:
    """The module to optimise: the full model or its LoRA wrapper, with the checkpoint's tune
    switches as ``tune`` overrides them."""
    if tune is not None:
        model.config = model.config.model_copy(update=tune.switches())
    model.apply_tune_switches()
    module = model if method == "full" else apply_lora(model, lora)
    if not any(p.requires_grad for p in module.parameters()):
        raise DataError(f"nothing to train: the tune switches freeze every part that {method} fine-tuning trains",
                        hint="set one of tune.vision_tower, tune.vl_mixing, tune.diffusion_model, "
                             "tune.multi_projector to true")
    return module


def base_model(module: torch.nn.Module) -> NitroGenModel:
    """The NitroGenModel inside a PEFT wrapper (its layers carry the adapters)."""
    return module.get_base_model() if isinstance(module, PeftModel) else module


def trainable_state(module: torch.nn.Module) -> dict[str, torch.Tensor]:
    return {name: p.detach() for name, p in module.named_parameters() if p.requires_grad}


def load_trainable_state(module: torch.nn.Module, state: dict[str, torch.Tensor]) -> None:
    """Put saved trainable tensors back; names must match exactly (same method and targets)."""
    expected = set(trainable_state(module))
    if set(state) != expected:
        missing, unexpected = sorted(expected - set(state)), sorted(set(state) - expected)
        raise DataError(f"the saved weights do not fit this run's trainable parameters "
                        f"(missing {missing[:3]}, unexpected {unexpected[:3]})",
                        hint="resume with the run's own config")
    params = dict(module.named_parameters())
    wrong = [name for name, value in state.items() if tuple(value.shape) != tuple(params[name].shape)]
    if wrong:
        raise DataError(f"the saved weights do not fit this run's model: {wrong[0]} is "
                        f"{tuple(state[wrong[0]].shape)} saved, {tuple(params[wrong[0]].shape)} here",
                        hint="resume from the base checkpoint the run started from")
    with torch.no_grad():
        for name, value in state.items():
            params[name].copy_(shard_like(params[name], value))
