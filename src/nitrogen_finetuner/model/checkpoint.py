"""Reading and writing official-format NitroGen checkpoints.

The format is a ``torch.save`` dict: ``model`` (state dict), ``ckpt_config`` (plain dicts),
``step`` and ``epoch``. We read it with ``weights_only=True``; we write the same keys plus a
``nitrogen_finetuner`` entry of plain values (the action layout, the vision tower's
hyper-parameters), which the official loader ignores. Writes go to a temporary file first and are renamed into place, so an interrupted
save never leaves a broken checkpoint behind.
"""

from __future__ import annotations

import errno
import numbers
import os
import pickle
import re
import tempfile
from dataclasses import dataclass, replace
from pathlib import Path, PurePath
from typing import Any, Optional

import numpy as np
import torch
from pydantic import ValidationError

from ..files import apply_umask, no_space_left, tensor_bytes
from .configuration import CheckpointConfig
from .modeling import NitroGenModel
from .vision import (
    IMAGE_FITS,
    VISION_PREFIX,
    ImagePreprocessor,
    resolve_tower_config,
    tower_record,
)

EXTRA_KEY = "nitrogen_finetuner"


class CheckpointError(ValueError):
    """A checkpoint file that cannot be used; the message says what to do."""


def _torch_load(path: Path, weights_only: bool) -> Any:
    try:
        return torch.load(path, map_location="cpu", weights_only=weights_only, mmap=True)
    except RuntimeError as err:
        if "mmap" not in str(err):
            raise
        return torch.load(path, map_location="cpu", weights_only=weights_only)  # pre-zip format


def read_checkpoint(path: str | os.PathLike, trust_pickle: bool = False) -> dict[str, Any]:
    """Load a checkpoint dict safely; ``trust_pickle`` allows arbitrary unpickling."""
    path = Path(path)
    if path.is_dir():
        inside = path / "model.pt"
        hint = f" (the run's exported checkpoint is {inside})" if inside.is_file() else \
            f" (a run folder: `nitrogen-finetune export {path} OUT.pt` writes its model)" \
            if (path / "config.yaml").is_file() else ""
        if path.parent.name == "checkpoints" and (path / "weights.safetensors").is_file():
            hint = (f" (a training checkpoint: `nitrogen-finetune export {path.parent.parent} OUT.pt --checkpoint "
                    f"{path.name}` writes it as a checkpoint file)")
        raise CheckpointError(f"{path}: a folder, not a checkpoint file{hint}")
    if not path.is_file():
        released = " (NVIDIA's released checkpoint comes from the Hugging Face hub: hf download nvidia/NitroGen " \
                   "ng.pt)" if path.name == "ng.pt" else ""
        raise CheckpointError(f"{path}: no such checkpoint file{released}")
    with open(path, "rb") as f:
        head = f.read(9)
    # torch.save writes a zip archive (b"PK"); very old files are a bare pickle (b"\x80").
    if head[:2] != b"PK" and head[:1] != b"\x80":
        if head[8:9] == b"{":  # safetensors: an 8-byte header length, then its JSON
            raise CheckpointError(f"{path}: bare weights (safetensors), not a checkpoint: no ckpt_config says what "
                                  "model they belong to (a run's weights: `nitrogen-finetune export RUN OUT.pt` "
                                  "writes its checkpoint)")
        what = "an empty file" if not head else "neither a zip archive nor a pickle"
        raise CheckpointError(f"{path}: not a readable torch checkpoint ({what})")
    try:
        ckpt = _torch_load(path, weights_only=not trust_pickle)
    except pickle.UnpicklingError as err:
        blocked = re.search(r"Unsupported global: GLOBAL (\S+)", str(err))
        if not blocked:
            raise CheckpointError(f"{path}: not a readable torch checkpoint (corrupt pickle data)") from None
        raise CheckpointError(
            f"{path}: refused to load, it needs arbitrary unpickling (it stores an object of type {blocked.group(1)}); "
            "only if you trust where it came from: pass --trust-pickle (info, predict, eval, rollout, data "
            "inspect), or write a safe copy once with load_policy(path, trust_pickle=True).save('safe.pt')"
        ) from None
    except (AttributeError, ImportError) as err:  # trusted, but a stored object's class is not importable here
        raise CheckpointError(f"{path}: its pickle data needs code this environment lacks ({err})") from None
    except (RuntimeError, EOFError, OSError) as err:
        reason = str(err).splitlines()[0].split(". ")[0]  # torch's first sentence; the rest is for its developers
        raise CheckpointError(f"{path}: not a readable torch checkpoint, truncated or damaged ({reason}; download "
                              "or copy it again)") from None
    if not isinstance(ckpt, dict) or "model" not in ckpt or "ckpt_config" not in ckpt:
        raise CheckpointError(f"{path}: not an official-format NitroGen checkpoint ({_what_it_holds(ckpt)})")
    return ckpt


def _what_it_holds(ckpt: Any) -> str:
    if not isinstance(ckpt, dict):
        return f"expected a dict with 'model' and 'ckpt_config', found a {type(ckpt).__name__}"
    if any(isinstance(k, str) and k.startswith(VISION_PREFIX) for k in ckpt):
        return "it is a bare state dict: the 'model' entry of a checkpoint, without the 'ckpt_config' that describes it"
    keys = sorted(map(str, ckpt))
    shown = ", ".join(keys[:8]) + (f" and {len(keys) - 8} more" if len(keys) > 8 else "")
    return f"expected 'model' and 'ckpt_config', found {shown or 'an empty dict'}"


def parse_config(raw: dict, source: str = "ckpt_config") -> CheckpointConfig:
    try:
        return CheckpointConfig.model_validate(raw)
    except ValidationError as err:
        first = err.errors()[0]
        where = ".".join(str(p) for p in first["loc"])
        raise CheckpointError(f"{source}: invalid config{f' at {where}' if where else ''}: {first['msg']}") from None


@dataclass
class LoadedCheckpoint:
    model: NitroGenModel
    config: CheckpointConfig
    raw_config: dict
    preprocessor: ImagePreprocessor
    extra: dict
    step: int = 0
    epoch: int = 0


def build_model(
    config: CheckpointConfig, state_dict: Optional[dict] = None, tower: Optional[dict] = None
) -> NitroGenModel:
    """Build the architecture a config describes (the tower as ``resolve_tower_config`` finds it,
    ``tower`` being the hyper-parameters a checkpoint of ours recorded)."""
    try:
        vision_config = resolve_tower_config(config.model_cfg.vision_encoder_name, state_dict, tower)
    except ValueError as err:
        raise CheckpointError(str(err)) from None
    num_games = state_dict["game_embedding.weight"].shape[0] if state_dict and "game_embedding.weight" in state_dict else None
    return NitroGenModel(
        config.model_cfg, vision_config, config.tokenizer_cfg.max_sequence_length, num_games=num_games
    )


def _restore_nonpersistent_buffers(model: NitroGenModel) -> None:
    """Buffers outside the state dict (the tower's position ids) after building on 'meta'."""
    for module in model.modules():
        ids = getattr(module, "position_ids", None)
        if isinstance(ids, torch.Tensor):
            module.position_ids = torch.arange(ids.shape[-1]).expand(1, -1)


def load_checkpoint(path: str | os.PathLike, trust_pickle: bool = False) -> LoadedCheckpoint:
    """Read, validate and build the model of an official-format checkpoint (on CPU)."""
    ckpt = read_checkpoint(path, trust_pickle)
    config = parse_config(ckpt["ckpt_config"], f"{path}: ckpt_config")
    state_dict, extra, step, epoch = _entries(ckpt, path)
    if not any(k.startswith(VISION_PREFIX) for k in state_dict):
        raise CheckpointError(f"{path}: the state dict holds no vision_encoder.* weights")
    tokenizer = config.tokenizer_cfg
    if "game_embedding.weight" in state_dict and tokenizer.num_visual_tokens_per_frame >= tokenizer.max_sequence_length:
        raise CheckpointError(f"{path}: its game token and {tokenizer.num_visual_tokens_per_frame} visual tokens "
                              f"exceed max_sequence_length {tokenizer.max_sequence_length}")
    try:
        with torch.device("meta"):
            model = build_model(config, state_dict, extra.get("vision_tower"))
    except (ValueError, TypeError, KeyError) as err:  # a vision_tower record that does not fit the weights
        raise CheckpointError(f"{path}: its {EXTRA_KEY} record does not fit its weights ({err})") from None
    expected = model.state_dict()
    shapes = {name: tuple(t.shape) for name, t in expected.items()}
    wrong = next((k for k, v in state_dict.items() if k in shapes and tuple(v.shape) != shapes[k]), None)
    if wrong is not None:
        raise CheckpointError(f"{path}: weights do not match the architecture in its ckpt_config ({wrong} is "
                              f"{tuple(state_dict[wrong].shape)}, the config makes it {shapes[wrong]})")
    wrong = next((k for k, v in state_dict.items()
                  if k in expected and expected[k].is_floating_point() and not v.is_floating_point()), None)
    if wrong is not None:
        raise CheckpointError(f"{path}: weight {wrong} holds {state_dict[wrong].dtype} numbers, not floating point")
    # The format holds float32; a copy saved in half precision is read as the official loader reads
    # it, into float32 weights (assign would keep its dtype, and training would then update fp16 or
    # bf16 weights with no float32 master).
    state_dict = {k: v.to(expected[k].dtype) if k in expected and v.is_floating_point() else v
                  for k, v in state_dict.items()}
    result = model.load_state_dict(state_dict, strict=False, assign=True)
    if result.missing_keys or result.unexpected_keys:
        raise CheckpointError(
            f"{path}: weights do not match the architecture in its ckpt_config "
            f"(missing {result.missing_keys[:5]}, unexpected {result.unexpected_keys[:5]})"
        )
    _restore_nonpersistent_buffers(model)
    model.apply_tune_switches()
    tower = config.model_cfg.vision_encoder_name
    return LoadedCheckpoint(
        model=model.eval(),
        config=config,
        raw_config=ckpt["ckpt_config"],
        # Frames are fitted square as the model was fine-tuned (the official player stretches them).
        preprocessor=replace(ImagePreprocessor.for_tower(tower, model.vision_encoder.config),
                             fit=extra.get("image_fit", "stretch")),
        extra=extra,
        step=step,
        epoch=epoch,
    )


def read_record(path: str | os.PathLike) -> dict:
    """The ``nitrogen_finetuner`` record of a checkpoint file, read without loading its weights
    (they are memory-mapped, not read); empty for a file without one or that does not load here
    (loading it in full names the problem)."""
    try:
        ckpt = torch.load(path, map_location="cpu", weights_only=True, mmap=True)
    except (RuntimeError, OSError, EOFError, ValueError, pickle.UnpicklingError):
        return {}
    record = ckpt.get(EXTRA_KEY) if isinstance(ckpt, dict) else None
    return record if isinstance(record, dict) else {}


def _entries(ckpt: dict, path) -> tuple[dict, dict, int, int]:
    """The state dict, our record, step and epoch, each checked for the type the official code
    and this tool write (a file written by another tool may hold anything there)."""
    state_dict, extra = ckpt["model"], ckpt.get(EXTRA_KEY) or {}
    if not isinstance(state_dict, dict) or not all(
            isinstance(k, str) and isinstance(v, torch.Tensor) for k, v in state_dict.items()):
        raise CheckpointError(f"{path}: its 'model' entry is not a state dict of parameter names and tensors")
    layout = extra.get("action_layout") if isinstance(extra, dict) else None
    fit = extra.get("image_fit", "stretch") if isinstance(extra, dict) else None
    if not isinstance(extra, dict) or fit not in IMAGE_FITS or layout is not None and not (
            isinstance(layout, dict) and isinstance(layout.get("buttons"), (list, tuple))):
        raise CheckpointError(f"{path}: its '{EXTRA_KEY}' entry is not one this tool writes (export the run again, "
                              f"or delete the entry to load the weights with the default layout)")
    counts = []
    for key in ("step", "epoch"):
        value = ckpt.get(key, 0)
        count = 0 if value is None or isinstance(value, (bool, float)) and not value else whole_number(value)
        if count is None:
            raise CheckpointError(f"{path}: its '{key}' entry is {value!r}, not a whole number")
        counts.append(count)
    return state_dict, extra, *counts


def whole_number(value: Any) -> Optional[int]:
    """A step or epoch count as an int (from a Python or numpy integer, or a 0-d integer tensor);
    None for anything else, bools included."""
    if isinstance(value, torch.Tensor) and value.ndim == 0 and not (
            value.is_floating_point() or value.is_complex() or value.dtype == torch.bool):
        value = value.item()
    return int(value) if isinstance(value, numbers.Integral) and not isinstance(value, bool) else None


def plain_values(value: Any, where: str = "ckpt_config") -> Any:
    """A config as the types every loader reads safely: numpy numbers and paths, which a file
    loaded with trust_pickle may hold, become numbers and text, so a saved copy loads with
    ``weights_only`` (anything else such a file holds is refused, by where it is)."""
    if isinstance(value, dict):
        if not all(type(key) is str for key in value):
            raise CheckpointError(f"{where}: its keys are not all text")
        return {key: plain_values(item, f"{where}.{key}") for key, item in value.items()}
    if isinstance(value, (list, tuple)):
        items = (plain_values(item, f"{where}[{i}]") for i, item in enumerate(value))
        return list(items) if isinstance(value, list) else tuple(items)
    if value is None or type(value) in (bool, int, float, str):
        return value
    if isinstance(value, np.generic) and isinstance(value.item(), (bool, int, float, str)):
        return value.item()
    if isinstance(value, PurePath):
        return str(value)
    raise CheckpointError(f"{where}: a {type(value).__name__}, which only an unpickler reads: a checkpoint "
                          "config holds numbers, text, lists and dicts")


def nonfinite_tensors(tensors: dict[str, torch.Tensor]) -> list[str]:
    """The names of the floating-point tensors that hold NaN or infinity (a diverged run's weights)."""
    return [name for name, t in tensors.items() if t.is_floating_point() and not torch.isfinite(t).all()]


def official_state_dict(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    """Contiguous float32 CPU copies of exactly the tensors the official model class holds."""
    return {k: v.detach().to("cpu", torch.float32 if v.is_floating_point() else v.dtype).contiguous()
            for k, v in model.state_dict().items()}


def save_checkpoint(
    path: str | os.PathLike,
    model: NitroGenModel,
    ckpt_config: dict,
    extra: Optional[dict] = None,
    step: int = 0,
    epoch: int = 0,
) -> Path:
    """Write an official-format checkpoint atomically (temporary file, fsync, rename)."""
    path = Path(path)
    if path.suffix.lower() == ".safetensors":  # torch.load reads such a name as safetensors, and fails
        raise CheckpointError(f"{path}: an official-format checkpoint is a torch.save file, which the official "
                              "loader and torch.load read by its name: name it .pt")
    given = {"step": step, "epoch": epoch}
    counts = {key: whole_number(value) for key, value in given.items()}
    wrong = next((key for key, count in counts.items() if count is None or count < 0), None)
    if wrong is not None:
        raise ValueError(f"{wrong}: a whole number >= 0, got {given[wrong]!r}")
    path.parent.mkdir(parents=True, exist_ok=True)
    payload = {
        "model": official_state_dict(model),
        "ckpt_config": plain_values(ckpt_config),
        **counts,
        EXTRA_KEY: {**(extra or {}), "vision_tower": tower_record(model.vision_encoder.config)},
    }
    if path.is_dir():
        raise IsADirectoryError(errno.EISDIR, os.strerror(errno.EISDIR), str(path))
    try:
        fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    except OSError as err:  # name the folder, not the temporary file's random name
        raise type(err)(err.errno, err.strerror, str(path.parent)) from None
    try:
        with os.fdopen(fd, "wb") as f:
            torch.save(payload, f)
            f.flush()
            os.fsync(f.fileno())
        apply_umask(tmp)
        os.replace(tmp, path)
    except BaseException as err:
        Path(tmp).unlink(missing_ok=True)
        if isinstance(err.__context__, KeyboardInterrupt):  # torch's zip writer fails on its way out of Ctrl-C
            raise KeyboardInterrupt from None
        full = no_space_left(path.parent, tensor_bytes(payload)) if isinstance(err, Exception) else None
        if full:
            raise CheckpointError(f"{path}: {full}") from err
        raise
    return path
