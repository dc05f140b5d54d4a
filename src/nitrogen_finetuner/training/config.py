"""The training configuration: defaults < YAML file < command line.

``batch_size`` is the global batch the optimizer sees. Each process runs micro-batches of
``micro_batch_size`` and accumulates gradients, so the same config trains the same model on one
CPU or on eight GPUs.
"""

from __future__ import annotations

import collections.abc
import json
import os
from pathlib import Path
from typing import Any, Iterator, Literal, Optional

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from ..data.config import (DataConfig, WrittenFloat, WrittenInt, auto_means_null, numbers_are_not_true_or_false,
                           text_as_written)
from ..data.errors import DataError, first_complaint, invalid_setting, user_message
from ..model.presets import PRESETS
from .checkpoints import STEP_DIR, checkpoint_dirs

LORA_COMPONENTS = {
    # DiT attention projections (self- and cross-attention blocks).
    "dit_attention": r"model\.transformer_blocks\.\d+\.attn1\.(to_q|to_k|to_v|to_out\.0)",
    "dit_feedforward": r"model\.transformer_blocks\.\d+\.ff\.net\.(0\.proj|2)",
    # The timestep modulation of each DiT block.
    "dit_adaln": r"model\.transformer_blocks\.\d+\.norm1\.linear",
    "vl_mixer": r"vl_self_attention_model\.transformer_blocks\.\d+\.(attn1\.(to_q|to_k|to_v|to_out\.0)|ff\.net\.(0\.proj|2))",
    "vl_mixer_attention": r"vl_self_attention_model\.transformer_blocks\.\d+\.attn1\.(to_q|to_k|to_v|to_out\.0)",
    # SigLIP layers, except layer 11, which the released model keeps frozen.
    "vision_tower": r"vision_encoder\.encoder\.layers\.(?!11\.)\d+\.(self_attn\.(q_proj|k_proj|v_proj|out_proj)|mlp\.(fc1|fc2))",
    "vision_tower_attention": r"vision_encoder\.encoder\.layers\.(?!11\.)\d+\.self_attn\.(q_proj|k_proj|v_proj|out_proj)",
}


class _Section(BaseModel):
    # `--set output=2024` is a name; inf and nan are no setting's value
    model_config = ConfigDict(extra="forbid", coerce_numbers_to_str=True, allow_inf_nan=False)

    _auto = model_validator(mode="before")(classmethod(auto_means_null))
    _numbers = field_validator("*", mode="before")(classmethod(numbers_are_not_true_or_false))
    _text = field_validator("*", mode="before")(classmethod(text_as_written))


class LoraConfig(_Section):
    rank: int = Field(16, ge=1, le=1024)
    alpha: float = Field(32.0, gt=0)
    dropout: float = Field(0.05, ge=0.0, lt=1.0)
    targets: list[str] = Field(
        default_factory=lambda: ["dit_attention", "dit_feedforward", "vl_mixer"],
        description=f"components with LoRA adapters: {', '.join(LORA_COMPONENTS)}",
    )
    train_fully: list[str] = Field(
        default_factory=lambda: ["action_encoder", "action_decoder", "position_embedding", "game_embedding"],
        description="modules trained in full next to the adapters (those the model lacks are skipped)",
    )


class TuneConfig(_Section):
    """This run's ``tune_*`` switches, over the checkpoint's (null keeps the checkpoint's). The
    exported checkpoint keeps the base's switches."""

    vision_tower: Optional[bool] = Field(None, description="the SigLIP tower (layer 11 and the pooling head stay frozen)")
    vl_mixing: Optional[bool] = Field(None, description="the VL mixer")
    diffusion_model: Optional[bool] = Field(None, description="the DiT")
    multi_projector: Optional[bool] = Field(None, description="the action encoder, decoder and position embedding")

    def switches(self) -> dict[str, bool]:
        """The overridden switches under the checkpoint's names (``tune_vision_tower``, ...)."""
        return {f"tune_{name}": value for name, value in self.model_dump().items() if value is not None}


class TrainConfig(_Section):
    base: str = Field("tiny", description="official-format checkpoint, or a preset name for random weights")
    data: DataConfig
    output: str = Field("runs/nitrogen", description="the run folder")
    method: Literal["lora", "full"] = "lora"
    seed: int = Field(0, ge=0, lt=2**63)
    max_steps: int = Field(200, ge=1)
    batch_size: int = Field(16, ge=1, description="global batch per optimizer step")
    micro_batch_size: Optional[int] = Field(None, ge=1, description="per process and forward pass")
    learning_rate: float = Field(1e-4, gt=0, le=1)
    weight_decay: float = Field(0.0, ge=0)
    warmup_steps: int = Field(10, ge=0)
    min_learning_rate_ratio: float = Field(0.1, ge=0, le=1)
    max_grad_norm: Optional[float] = Field(1.0, gt=0)
    mixed_precision: Literal["auto", "no", "bf16", "fp16"] = "auto"
    bf16_weights: bool = Field(
        False, description="compute on a bf16 copy of the model, no autocast, while AdamW updates float32 master "
        "weights (one H100, eager: full fine-tuning 1.14x bf16 autocast's speed, LoRA on every attention projection "
        "1.30x)"
    )
    activation_checkpointing: bool = Field(
        False, description="recompute each transformer layer in backward: far less activation memory, more compute"
    )
    fsdp: bool = Field(False, description="shard weights, gradients and optimizer state across processes "
                       "(PyTorch FSDP2; full fine-tuning, bf16 or fp32; slower in one process)")
    compile: bool = Field(False, description="torch.compile each transformer layer (one H100, bf16_weights: full "
                          "fine-tuning 1.13x eager's speed, LoRA on every attention projection 1.19x)")
    cuda_graphs: bool = Field(False, description="with compile, replay each compiled layer as a CUDA graph "
                              "(torch.compile's reduce-overhead mode), so the CPU no longer holds the GPU up: one GPU, "
                              "one process, no gradient accumulation")
    deterministic: Optional[bool] = Field(
        None, description="deterministic kernels (default: on CPU, where they cost little; off on GPU)"
    )
    ema_decay: Optional[float] = Field(None, gt=0, lt=1)
    dropout: Optional[float] = Field(None, ge=0, lt=1, description="override the checkpoint's dropout")
    val_fraction: float = Field(0.1, ge=0, lt=1, description="share of recordings held out for validation")
    val_every: int = Field(100, ge=0)
    val_batches: Optional[int] = Field(None, ge=1)
    val_chunks: int = Field(32, ge=0, description="chunks sampled per validation for button F1 and stick MAE")
    checkpoint_every: int = Field(100, ge=0)
    keep_last: int = Field(3, description="checkpoints kept (the newest at least)")
    keep_best: bool = Field(False, description="also keep the checkpoint with the lowest validation loss "
                            "(of the steps that both validate and checkpoint)")
    log_every: int = Field(10, ge=1)
    num_workers: int = Field(2, ge=0, le=256)
    export_at_end: bool = True
    wandb: bool = False
    wandb_project: str = "nitrogen-finetuner"
    tune: TuneConfig = Field(default_factory=TuneConfig)
    lora: LoraConfig = Field(default_factory=LoraConfig)

    @field_validator("output")
    @classmethod
    def _named(cls, value: str) -> str:
        if not value.strip():
            raise ValueError("the run folder name is empty: give the folder to train into")
        return value

    @field_validator("keep_last")
    @classmethod
    def _keeps_one(cls, value: int) -> int:
        if value < 1:
            raise ValueError(f"{value} would keep no checkpoint to resume or export from: keep 1 or more "
                             "(checkpoint_every 0 writes only the final one)")
        return value

    @field_validator("mixed_precision", mode="before")
    @classmethod
    def _yaml_no(cls, value):
        return "no" if value is False else value  # YAML reads a bare `no` as false

    @model_validator(mode="after")
    def _check(self) -> "TrainConfig":
        if self.method == "lora" and not self.lora.targets:
            raise ValueError(f"lora.targets is empty: LoRA needs a component to adapt ({', '.join(LORA_COMPONENTS)}); "
                             "method full trains them all")
        unknown = [t for t in self.lora.targets if t not in LORA_COMPONENTS]
        if unknown:
            raise ValueError(f"unknown LoRA target {unknown[0]!r}; targets are: {', '.join(LORA_COMPONENTS)}")
        if self.keep_best and not self.val_fraction:
            raise ValueError("keep_best keeps the checkpoint of the lowest validation loss, and val_fraction 0 "
                             "holds out nothing to validate on: set val_fraction above 0, or keep_best to false")
        if self.fsdp and self.method != "full":
            raise ValueError("fsdp shards full fine-tuning: set method to full "
                             "(LoRA trains few enough weights for DDP)")
        if self.bf16_weights and self.fsdp:
            raise ValueError("bf16_weights is for runs without fsdp (fsdp computes on bf16 weights by itself): "
                             "set one of them to false")
        if self.bf16_weights and self.mixed_precision not in ("auto", "bf16"):
            raise ValueError("bf16_weights computes in bf16: set mixed_precision to bf16 or auto")
        if self.cuda_graphs:
            self._check_cuda_graphs()
        if self.fsdp and self.mixed_precision == "fp16":
            raise ValueError("fsdp computes in bf16 or fp32: set mixed_precision to bf16 or no")
        return self

    def _check_cuda_graphs(self) -> None:
        """CUDA graphs replay each layer's recorded kernels on fixed memory, so the settings that
        run a layer's graph more than once before the step's end, or hook into its gradients, are
        refused (PyTorch's graphs overwrite a layer's outputs and gradients on the next replay)."""
        if not self.compile:
            raise ValueError("cuda_graphs replays the compiled layers: set compile to true as well")
        if self.fsdp or self.activation_checkpointing:
            raise ValueError(f"cuda_graphs does not run with {'fsdp' if self.fsdp else 'activation_checkpointing'}: "
                             "set one of them to false")
        if self.micro_batch_size is not None and self.micro_batch_size < self.batch_size:
            raise ValueError(f"cuda_graphs needs the whole batch in one forward pass, and micro_batch_size "
                             f"{self.micro_batch_size} accumulates gradients over {self.batch_size} windows: "
                             "set micro_batch_size to null, or cuda_graphs to false")


NUMBER_TAGS = ("tag:yaml.org,2002:int", "tag:yaml.org,2002:float")


class ConfigYamlLoader(yaml.SafeLoader):
    """YAML without its date type (`output: 2024-01-05` is a folder name, not a date), with numbers
    that keep their text (`output: 2024.10` is a folder name too, see ``text_as_written``) and
    without repeated keys, which plain YAML resolves silently by keeping the last one."""

    def construct_written_int(self, node):
        number = WrittenInt(self.construct_yaml_int(node))
        number.written = node.value
        return number

    def construct_written_float(self, node):
        number = WrittenFloat(self.construct_yaml_float(node))
        number.written = node.value
        return number

    def construct_mapping(self, node, deep=False):
        seen = set()
        for key_node, _ in node.value:
            if key_node.tag == "tag:yaml.org,2002:merge":  # `<<: *anchor`, whose keys the mapping may override
                continue
            if key_node.tag in NUMBER_TAGS:  # a column named 0x1F is not the column 31
                key_node.tag = "tag:yaml.org,2002:str"
            key = self.construct_object(key_node, deep=True)
            if not isinstance(key, collections.abc.Hashable):
                break  # the mapping's own construction says "found unhashable key", with its place
            if key in seen:
                raise yaml.constructor.ConstructorError(None, None, f"the key {key!r} is given twice",
                                                        key_node.start_mark)
            seen.add(key)
        return super().construct_mapping(node, deep)


ConfigYamlLoader.add_constructor("tag:yaml.org,2002:int", ConfigYamlLoader.construct_written_int)
ConfigYamlLoader.add_constructor("tag:yaml.org,2002:float", ConfigYamlLoader.construct_written_float)
ConfigYamlLoader.yaml_implicit_resolvers = {
    first: [(tag, pattern) for tag, pattern in resolvers if tag != "tag:yaml.org,2002:timestamp"]
    for first, resolvers in yaml.SafeLoader.yaml_implicit_resolvers.items()
}


def _set_dotted(tree: dict, key: str, value: Any, file: Optional[Path]) -> None:
    node = tree
    *parents, leaf = key.split(".")
    for depth, part in enumerate(parents):
        child = node.get(part)
        if child is None:  # absent, or an empty section (`data:`)
            child = node[part] = {}
        if not isinstance(child, dict):
            section = ".".join(parents[: depth + 1])
            raise DataError(f"{section} is {child!r}, not a section of keys, so {key} cannot be set",
                            file=str(file) if file else None, hint=f"write {section} as a mapping, or leave it out")
        node = child
    node[leaf] = value


def resolve_config(file: Optional[str | Path] = None, overrides: Optional[dict[str, Any]] = None) -> TrainConfig:
    """Defaults, then the YAML file, then dotted overrides (``lora.rank``, ``data.dataset_name``)."""
    if file is not None and not isinstance(file, (str, os.PathLike)):
        raise TypeError(f"file: the path of a YAML config, got {type(file).__name__} (settings go in overrides)")
    if overrides is not None and not (isinstance(overrides, dict) and all(isinstance(k, str) for k in overrides)):
        raise TypeError("overrides: a dict of dotted keys to values, e.g. {'lora.rank': 8, 'data.dataset_name': "
                        "'recordings/'}")
    tree: dict = {}
    if file is not None:
        path = Path(file)
        if path.is_dir():
            raise DataError("a folder, not a config file", file=str(path), hint="give a YAML config file")
        if not path.is_file():
            raise DataError("no such config file", file=str(path))
        try:
            tree = yaml.load(path.read_text(encoding="utf-8"), Loader=ConfigYamlLoader) or {}
        except UnicodeDecodeError:
            raise DataError("not a UTF-8 text file", file=str(path), hint="give a YAML config file") from None
        except yaml.YAMLError as err:
            raise DataError(f"not valid YAML ({yaml_problem(err)})", file=str(path)) from None
        if not isinstance(tree, dict):
            raise DataError("the config must be a mapping of keys to values", file=str(path))
        unnamed = [key for key in _all_keys(tree) if not isinstance(key, str)]
        if unnamed:
            raise DataError(f"the key {unnamed[0]!r} is not a name", file=str(path),
                            hint="write the setting's name, e.g. batch_size: 32; train --print-config lists them")
    for key, value in (overrides or {}).items():
        value = os.fspath(value) if isinstance(value, os.PathLike) else value  # a notebook's pathlib.Path
        _set_dotted(tree, key, value, Path(file) if file else None)
    try:
        return TrainConfig.model_validate(tree)
    except ValidationError as err:
        key = ".".join(map(str, first_complaint(err)["loc"]))
        from_command_line = key and any(f"{key}.".startswith(f"{given}.") for given in overrides or {})
        raise invalid_setting(err, file=str(file) if file and not from_command_line else None,
                              model=TrainConfig) from None


def _all_keys(tree: dict) -> Iterator:
    """Every key of a nested mapping (a YAML ``null:`` or ``1:`` key is not a string)."""
    for key, value in tree.items():
        yield key
        if isinstance(value, dict):
            yield from _all_keys(value)


def with_absolute_paths(config: TrainConfig) -> TrainConfig:
    """The config with its local data and base as absolute paths, so that the run folder's
    config.yaml still finds them when the run is resumed or exported from another folder."""
    data, base = Path(config.data.dataset_name).expanduser(), Path(config.base).expanduser()
    updates = {"output": os.path.expanduser(config.output)}  # a config file's ~/runs/x, which no shell expands
    if data.exists():
        updates["data"] = config.data.model_copy(update={"dataset_name": str(data.resolve())})
    if config.base not in PRESETS and base.exists():
        updates["base"] = str(base.resolve())
    return config.model_copy(update=updates)


def run_config_file(run_dir: str | Path) -> Path:
    """A run folder's ``config.yaml``: the fully resolved config its training wrote (or, when it
    was deleted, the copy in the newest checkpoint)."""
    if not str(run_dir).strip():
        raise DataError("the run folder name is empty", hint="give the --output folder of a training run")
    if Path(run_dir).parent.name == "checkpoints" and STEP_DIR.fullmatch(Path(run_dir).name):
        raise DataError("a checkpoint folder, not a run folder", file=str(run_dir),
                        hint=f"give the run folder, {Path(run_dir).parent.parent}: --resume goes on from its newest "
                             f"checkpoint, and export --checkpoint {Path(run_dir).name} takes this one")
    path = Path(run_dir) / "config.yaml"
    copies = _config_copies(checkpoint_dirs(Path(run_dir)))
    if path.is_file():
        try:
            resolve_config(path)
        except DataError as err:  # emptied or cut short: a checkpoint's copy can stand in
            if not copies:
                raise
            raise DataError(f"{user_message(err)}; the run's config.yaml does not hold a whole config",
                            hint=f"delete it, and the copy in checkpoints/{copies[-1].parent.name} stands in") from None
        return path
    if not Path(run_dir).is_dir():
        raise DataError("no such folder", file=str(run_dir), hint="give the --output folder of a training run")
    if not copies:
        raise DataError("not a run folder: it holds no config.yaml", file=str(run_dir),
                        hint="give the --output folder of a training run")
    return copies[-1]


def trained_config_file(run_dir: Path) -> Path:
    """The config the newest checkpoint trained with: its own copy, which an edit of the run's
    config.yaml leaves alone (the run's config file where the checkpoint has none)."""
    own = _config_copies(checkpoint_dirs(run_dir)[-1:])
    return own[0] if own else run_config_file(run_dir)


def _config_copies(checkpoints: list[Path]) -> list[Path]:
    """The config copies these checkpoint folders hold, in their order."""
    return [c / "config.yaml" for c in checkpoints if (c / "config.yaml").is_file()]


# What a resumed run keeps, and why: what it trains, and which windows it trains and holds out, in
# which order. The data may move to another path (``data.dataset_name``), and a run that met a bad
# frame may go on skipping such rows (``data.skip_bad_rows``); the checkpoint's window count checks
# that it is still the same data.
KEPT_ON_RESUME = {
    "method": "what it trains", "lora": "what it trains", "tune": "what it trains",
    "seed": "the episodes it holds out and the order it reads the data in",
    "val_fraction": "the episodes it holds out",
    "data": "the windows it reads and their order",
}
MOVABLE_ON_RESUME = {"data.dataset_name", "data.skip_bad_rows"}  # a bad frame met mid-run: skip it and go on


def changed_kept_setting(saved: TrainConfig, config: TrainConfig) -> Optional[tuple[str, Any, Any, str]]:
    """The first setting a resumed run keeps (``KEPT_ON_RESUME``) that differs between the two
    configs, as (dotted key, saved value, new value, what it decides); None when they agree."""
    old, new = saved.model_dump(mode="json"), config.model_dump(mode="json")
    for key, decides in KEPT_ON_RESUME.items():
        if isinstance(old[key], dict):
            for sub in old[key]:
                if f"{key}.{sub}" not in MOVABLE_ON_RESUME and not _same(old[key][sub], new[key].get(sub)):
                    return f"{key}.{sub}", old[key][sub], new[key][sub], decides
        elif old[key] != new[key]:
            return key, old[key], new[key], decides
    if config.data.shard == "blocks" and saved.num_workers != config.num_workers:
        return ("num_workers", saved.num_workers, config.num_workers,
                "the order it reads the data in, which with data.shard blocks depends on the workers")
    return None


def changed_settings(saved: TrainConfig, config: TrainConfig) -> list[str]:
    """The settings a resume changes, as "key value (was value)": a data or base that moved too
    (the run folder is the one resumed)."""
    old, new = _dotted(saved.model_dump(mode="json")), _dotted(config.model_dump(mode="json"))
    return [f"{key} {json.dumps(value)} (was {json.dumps(old.get(key))})" for key, value in new.items()
            if key != "output" and not _same(value, old.get(key))]


def _same(before: Any, now: Any) -> bool:
    """Equal settings; a list's order aside (``lora.targets``: the same layers adapt in any order)."""
    if isinstance(before, list) and isinstance(now, list):
        return sorted(map(json.dumps, before)) == sorted(map(json.dumps, now))
    return before == now


def _dotted(tree: dict, prefix: str = "") -> dict[str, Any]:
    flat = {}
    for key, value in tree.items():
        if isinstance(value, dict) and key != "mapping":
            flat.update(_dotted(value, f"{prefix}{key}."))
        else:
            flat[f"{prefix}{key}"] = value
    return flat


def parse_override(text: str) -> tuple[str, Any]:
    """``key=value`` with the value read as YAML (numbers, booleans, lists, null)."""
    key, sep, value = text.partition("=")
    if not sep or not key:
        raise DataError(f"overrides look like key=value (e.g. lora.rank=8), got '{text}'")
    try:
        return key.strip(), yaml.load(value, Loader=ConfigYamlLoader)
    except yaml.constructor.ConstructorError as err:  # a repeated or unhashable key: the text parsed
        raise DataError(f"--set {key.strip()}: {value!r} is not a valid YAML value ({yaml_problem(err)})") from None
    except yaml.YAMLError as err:
        raise DataError(f"--set {key.strip()}: {value!r} is not a valid YAML value ({yaml_problem(err)})",
                        hint="quote text that holds YAML's special characters, e.g. --set 'output=\"@x\"'") from None


def yaml_problem(err: yaml.YAMLError) -> str:
    """PyYAML's complaint in one line, with the line and column it points at."""
    problem = getattr(err, "problem", None) or str(err).splitlines()[0]
    context = getattr(err, "context", None)
    if context and problem.startswith("but "):  # "expected a single document in the stream, but found another"
        problem = f"{context}, {problem}"
    mark = getattr(err, "problem_mark", None)
    return f"{problem} at line {mark.line + 1}, column {mark.column + 1}" if mark else problem


def dump_config(config: TrainConfig) -> str:
    return yaml.safe_dump(config.model_dump(mode="json"), sort_keys=False)
