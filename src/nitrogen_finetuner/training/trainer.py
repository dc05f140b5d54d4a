"""The fine-tuning recipe, top to bottom: set up, then one clear update step in a loop.

    from nitrogen_finetuner.training.config import resolve_config
    from nitrogen_finetuner.training.trainer import train
    train(resolve_config("my_run.yaml"))

Runs on HF Accelerate, so the same code trains on a CPU, one GPU or many (``accelerate launch``
or ``torchrun``; DDP, or FSDP with ``fsdp: true``): fp32 / bf16 / fp16 (or bf16 weights with
float32 masters), gradient accumulation, clipping, fused AdamW, cosine schedule with warmup,
optional EMA, validation on held-out episodes, atomic checkpoints and exact resume.
"""

from __future__ import annotations

import contextlib
import importlib.util
import json
import math
import os
import shlex
import shutil
import signal
import sys
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Optional

import torch
from accelerate import Accelerator
from accelerate.state import AcceleratorState
from accelerate.utils import DistributedType, parse_flag_from_env
from safetensors import SafetensorError
from safetensors.torch import save_file
from tqdm.auto import tqdm

from ..data.config import DataConfig
from ..data.errors import DamagedFileError, DataError, user_message
from ..data.episodes import HELD_OUT_FILE, read_held_out, recording_key, split_episodes
from ..data.pipeline import prepare_data
from ..evaluation.open_loop import predict_chunks, score_chunks
from ..files import apply_umask, no_space_left, tensor_bytes, write_fix, write_text_atomic
from ..model.checkpoint import CheckpointError
from ..model.presets import PRESETS
from ..policy import NitroGenPolicy
from .activation_checkpointing import enable_activation_checkpointing
from .adapters import base_model, load_trainable_state, prepare_trainable, trainable_state
from .base import load_base, record_base, set_dropout
from .batches import continue_data_position, micro_batches, one_pass, padding_window, window_noise
from .bf16_weights import Bf16Weights
from .checkpoints import (CheckpointWriter, Progress, checkpoint_dir, checkpoint_dirs, damaged_hint, load_progress,
                          load_training_state, run_folder_deleted, set_rng_state)
from .compiling import compile_layers, eager
from .config import (LoraConfig, TrainConfig, changed_kept_setting, changed_settings, dump_config, resolve_config,
                     trained_config_file, with_absolute_paths)
from .run_lock import RunFolderLock, check_shared
from .sharding import (full_optimizer_state, full_tensor, full_tensors, gathered, local_tensor, shard_like,
                       shard_model, shard_optimizer_state)
from .stop_signals import AnotherProcessStopped, StopRequest, TrainingStopped, resume_command
from .throughput import flops_per_sample, peak_flops


# What a run writes when it ends: a new run never overwrites them.
FINISHED_RUN_FILES = ("model.pt", "summary.json", "adapter", "weights.safetensors")


@dataclass
class TrainResult:
    run_dir: Path
    step: int
    losses: list[float]  # training loss of every step of this session
    val_loss: Optional[float]
    exported: Optional[Path]


def lr_schedule(config: TrainConfig):
    """Linear warmup, then cosine decay to ``min_learning_rate_ratio`` of the peak."""

    def factor(step: int) -> float:
        if step < config.warmup_steps:
            return (step + 1) / config.warmup_steps
        span = max(1, config.max_steps - config.warmup_steps)
        progress = min(1.0, (step - config.warmup_steps) / span)
        floor = config.min_learning_rate_ratio
        return floor + (1 - floor) * 0.5 * (1 + math.cos(math.pi * progress))

    return factor


def follow_schedule(optimizer, scheduler, config: TrainConfig, step: int) -> None:
    """After loading a checkpoint's optimizer and scheduler: the learning rate and weight decay
    this config asks for, from ``step`` on (the same numbers as the checkpoint's when nothing
    changed, as LambdaLR computes them)."""
    scheduler.base_lrs = [config.learning_rate] * len(optimizer.param_groups)
    for group in optimizer.param_groups:
        group["initial_lr"], group["weight_decay"] = config.learning_rate, config.weight_decay
        group["lr"] = config.learning_rate * lr_schedule(config)(step)


def require_same_data(saved: Progress, windows: int, recorded: Optional[list[str]], held_out: list[str],
                      data: DataConfig) -> None:
    """A resume reads the data its run trained on: the same number of training windows, and the
    same recordings held out (``recorded``, None for a run from before the record), by their names
    within the data, which stay when the data moves (also into a folder of its own)."""
    hint = "resume on the data the run trained on (it may have moved: --data gives its path); start a new run " \
           "for other data"
    if saved.train_windows not in (None, windows):  # None: a checkpoint from before the count
        raise DataError(f"the data makes {windows} training windows now, but the run trained on "
                        f"{saved.train_windows}", file=data.dataset_name, hint=hint)

    def found(name: str) -> bool:
        return any(name == key or key.endswith("/" + name) or name.endswith("/" + key) for key in held_out)

    if recorded is not None and (len(recorded) != len(held_out) or not all(map(found, recorded))):
        def shown(names: list[str]) -> str:
            return ", ".join(repr(n) for n in names[:2]) + (f" and {len(names) - 2} more" if len(names) > 2 else "") \
                if names else "none"
        raise DataError(f"the run held out {shown(recorded)} for validation, and this data holds out "
                        f"{shown(held_out)}: it is not the data the run trained on", file=data.dataset_name, hint=hint)


def _mixed_precision(choice: str, on_gpu: bool) -> str:
    if choice != "auto":
        return choice
    return "bf16" if on_gpu and torch.cuda.is_bf16_supported() else "no"


def diverged(what: str, step: int, run_dir: Path, processes: int) -> DataError:
    """The one line for a loss or weights that became NaN or infinite: the run stops rather than
    save and export weights that are no longer numbers, and says where to go on from."""
    saved = checkpoint_dirs(run_dir)
    resume = resume_command(run_dir, processes, "--set learning_rate=...")
    hint = (f"its checkpoint {saved[-1].name} is the last saved: go on from it with a lower learning rate "
            f"({resume}); if that diverges at once too, the checkpoint is past saving: start again in another "
            "--output" if saved
            else "train again with a lower learning_rate or more warmup_steps")
    return DataError(f"{what} at step {step}: training diverged, and stops without saving this step",
                     file=str(run_dir), hint=hint)


def precision_label(precision: str, fsdp: bool, bf16_weights: bool) -> str:
    if bf16_weights:
        return "bf16 weights, float32 master weights"
    if precision == "no":
        return "fp32, FSDP" if fsdp else "fp32"
    return f"{precision} FSDP units, float32 master weights" if fsdp else f"{precision} autocast"


class StepReadout:
    """Each step's loss and stop votes on their way back to the CPU. Reading a GPU value makes the
    CPU wait until the GPU has run everything queued before it, so a step's values are read one
    step later, with the next step queued and the GPU busy, or at once where a log line,
    validation or a checkpoint needs them. On the CPU they are simply there."""

    def __init__(self, step: int):
        self.step, self.pending = step, []

    def push(self, values: torch.Tensor) -> None:
        self.step += 1
        event = None
        host = values.detach().to("cpu", non_blocking=True)  # into pinned memory, behind the step's kernels
        if values.is_cuda:
            event = torch.cuda.Event()
            event.record()
        self.pending.append((self.step, host, event))

    def take(self, everything: bool) -> list[tuple[int, list[float]]]:
        """(step, values) of every pending step, oldest first, or of all but the newest."""
        ready, self.pending = (self.pending, []) if everything else (self.pending[:-1], self.pending[-1:])
        for _, _, event in ready:
            if event is not None:
                event.synchronize()
        return [(step, host.tolist()) for step, host, _ in ready]


class EMA:
    """Exponential moving average of the trainable weights, kept in float32."""

    def __init__(self, module: torch.nn.Module, decay: float):
        self.decay = decay
        self.shadow = {k: v.detach().float().clone() for k, v in trainable_state(module).items()}

    @torch.no_grad()
    def update(self, module: torch.nn.Module) -> None:
        for name, value in trainable_state(module).items():
            self.shadow[name].lerp_(value.float(), 1 - self.decay)


def train(config: TrainConfig, resume: bool = False, stop: Optional[StopRequest] = None) -> TrainResult:
    """Run (or with ``resume``, continue) the training a config describes. When ``stop`` catches a
    signal, the step running finishes, its checkpoint is written and ``TrainingStopped`` is raised.

    The run folder is locked while it trains: a second training into it would mix the two runs'
    checkpoints, base and logs without a word."""
    if not isinstance(config, TrainConfig):
        raise TypeError(f"train takes a TrainConfig (from resolve_config), got {type(config).__name__}")
    config = with_absolute_paths(config)
    data_dir = Path(config.data.dataset_name)
    if data_dir.is_dir() and Path(config.output).resolve().is_relative_to(data_dir.resolve()):
        raise DataError("the run folder is inside the data folder, whose files are all read as recordings (the run's "
                        "metrics.jsonl among them)", file=config.output, hint=f"give --output a folder outside {data_dir}")
    threads, deterministic = torch.get_num_threads(), torch.are_deterministic_algorithms_enabled()
    warn_only = torch.is_deterministic_algorithms_warn_only_enabled()
    try:
        with RunFolderLock(Path(config.output), int(os.environ.get("RANK", "0")) == 0), tensorboard_thread_quiet():
            return _train(config, resume, stop)
    except RuntimeError as err:
        if not AnotherProcessStopped.caused(err):
            raise
        raise AnotherProcessStopped(Path(config.output), err, torch.distributed.get_world_size()) from err
    finally:  # the caller's process (a notebook) gets its settings back
        if torch.get_num_threads() != threads:  # resizing the pool once hung a torchrun process at exit
            torch.set_num_threads(threads)
        torch.use_deterministic_algorithms(deterministic, warn_only=warn_only)


@contextlib.contextmanager
def tensorboard_thread_quiet():
    """TensorBoard writes from a thread of its own, which prints a traceback when a write fails (a
    full disk); the run's next log call raises the same error, and the run reports it in one line."""
    before = threading.excepthook

    def hook(args):
        if type(args.thread).__name__ != "_AsyncWriterThread":
            before(args)

    threading.excepthook = hook
    try:
        yield
    finally:
        threading.excepthook = before


def cpu_threads(num_workers: int) -> Optional[int]:
    """Compute threads for a run on the CPU that leave a core to each data worker, unless
    ``OMP_NUM_THREADS`` says how many: threads that outnumber the free cores wait on each other
    (on 2 busy cores, default threads made a small model's steps many times slower)."""
    if "OMP_NUM_THREADS" in os.environ:
        return None
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1
    return max(1, cores - num_workers)


def _train(config: TrainConfig, resume: bool, stop: Optional[StopRequest]) -> TrainResult:
    # ------------------------------------------------------------------------------- set up
    # cpu=True on machines without CUDA (or with ACCELERATE_USE_CPU, as `accelerate launch --cpu`
    # sets it): it is what makes torchrun / accelerate launch use gloo.
    on_gpu = torch.cuda.is_available() and not parse_flag_from_env("ACCELERATE_USE_CPU")
    precision = _mixed_precision(config.mixed_precision, on_gpu)
    if precision == "fp16" and not on_gpu:
        raise DataError("mixed_precision fp16 needs a GPU: on the CPU it would silently train in fp32",
                        hint="set mixed_precision to bf16 or no")
    if config.wandb and importlib.util.find_spec("wandb") is None:  # found out now, not after the run
        raise DataError("wandb is true, and the wandb package is not installed",
                        hint='pip install wandb (or ".[wandb]" in the project), or set wandb to false')
    if config.cuda_graphs and not on_gpu:
        raise DataError("cuda_graphs needs a GPU: CUDA graphs replay GPU kernels", hint="set cuda_graphs to false")
    # Accelerate keeps the first precision of a process and refuses another: forget it, so one
    # process (the Python API, a notebook) can train again with another precision.
    AcceleratorState._reset_state()
    # bf16 weights compute in bf16 without autocast, which Accelerate would wrap the model in.
    accelerator = Accelerator(mixed_precision="no" if config.bf16_weights else precision, cpu=not on_gpu)
    if accelerator.distributed_type == DistributedType.FSDP:
        raise DataError("accelerate's own FSDP wrapping is not used here",
                        hint="launch without it (accelerate launch --multi_gpu, or torchrun) and set fsdp: true")
    world, rank, device = accelerator.num_processes, accelerator.process_index, accelerator.device
    threads = cpu_threads(config.num_workers) if not on_gpu else None
    if threads:
        torch.set_num_threads(threads)
    # Gradients of the per-embodiment gathers accumulate in parallel; deterministic kernels make
    # the same seed give the same weights bit for bit (and exact resume possible).
    torch.use_deterministic_algorithms(
        device.type == "cpu" if config.deterministic is None else config.deterministic, warn_only=True
    )
    run_dir = Path(config.output)
    if checkpoint_dirs(run_dir) and not resume:  # every process: they all stop alike
        raise DataError("the run folder already holds checkpoints", file=str(run_dir),
                        hint="resume it with --resume, or choose another --output")
    finished = [name for name in FINISHED_RUN_FILES if (run_dir / name).exists()]
    if finished and not resume:  # a finished run whose checkpoints were deleted to free the disk
        raise DataError(f"the run folder holds a finished run ({', '.join(finished)})", file=str(run_dir),
                        hint="choose another --output")
    resume_changes = []
    if resume:  # every process: they all stop alike
        saved_file = trained_config_file(run_dir)
        try:
            saved = resolve_config(saved_file)
        except DataError as err:  # a checkpoint's own copy, which nobody edits, is damaged
            if saved_file.parent == run_dir:
                raise
            raise DataError(user_message(err), hint=f"it is damaged: {damaged_hint(saved_file.parent)}") from None
        changed = changed_kept_setting(saved, config)
        if changed:
            key, before, now, decides = changed
            raise DataError(f"{key} is {json.dumps(now)} now, but the run trained with {json.dumps(before)}",
                            file=str(run_dir / "config.yaml"),
                            hint=f"a run resumes with {decides}; start a new run to change it")
        resume_changes = changed_settings(saved, config)
    accelerator.wait_for_everyone()

    micro = config.micro_batch_size or max(1, config.batch_size // world)
    if config.batch_size % (micro * world) and config.micro_batch_size is None:
        raise DataError(f"batch_size {config.batch_size} does not split evenly over {world} processes",
                        hint=f"set batch_size to a multiple of {world}")
    if config.batch_size % (micro * world):
        raise DataError(f"batch_size {config.batch_size} is not a multiple of micro_batch_size {micro} "
                        f"x {world} processes", hint="set micro_batch_size (--set micro_batch_size=N) so that N x "
                        f"{world} divides {config.batch_size}, or null to split batch_size by itself")
    accumulation = config.batch_size // (micro * world)
    if config.cuda_graphs and world > 1:
        raise DataError(f"cuda_graphs runs in one process, and this run has {world}",
                        hint="set cuda_graphs to false to train on several GPUs")

    check_shared(run_dir, accelerator)  # before anything is written into it
    base = load_base(config.base, run_dir, config.seed, new_run=not resume)
    model_cfg = base.model.config
    data = prepare_data(config.data, base.model_inputs(config.data.prediction_horizon))
    train_episodes, val_episodes = split_episodes(data.index.recordings, config.val_fraction, config.seed)
    train_set = data.dataset(micro, train_episodes, seed=config.seed, rank=rank, world_size=world,
                             step_windows=config.batch_size)
    val_set = data.dataset(micro, val_episodes, shuffle=False, rank=rank, world_size=world, train=False,
                           drop_last=False) if val_episodes else None
    if train_set.num_windows == 0:
        held_out = f"; {len(val_episodes)} of {len(data.index.episodes)} episodes are held out for validation" \
            if val_episodes else ""
        gaps = data.index.gaps_note()
        raise DataError(f"the training episodes make no window: a frame needs an action row "
                        f"{data.spec.action_shift} rows after it (action_shift){held_out}{gaps}",
                        file=config.data.dataset_name,
                        hint="record longer episodes" + (", or set val_fraction lower" if val_episodes else "")
                        + (" (data.frame_column: none reads the rows in file order)" if gaps else ""))
    # What eval --episodes val scores, even once recordings are added to the data.
    held_out = sorted({recording_key(data.index.episodes[e].recording, config.data.dataset_name) for e in val_episodes})
    if resume and checkpoint_dirs(run_dir):  # other data is named as such, not as too little data for the batch
        require_same_data(load_progress(checkpoint_dirs(run_dir)[-1]), train_set.num_windows, read_held_out(run_dir),
                          held_out, config.data)
    if train_set.num_windows < config.batch_size or train_set.batches_per_epoch() < 1:
        raise DataError(f"the training episodes hold {train_set.num_windows} windows, fewer than one batch of "
                        f"{config.batch_size}", file=config.data.dataset_name, hint="lower batch_size")
    readers = world * max(1, config.num_workers)
    if config.data.shard == "blocks" and len(train_set.blocks) < readers:  # one would read nothing, and wait
        raise DataError(f"data.shard blocks gives each of the {readers} readers (processes x workers) blocks of its "
                        f"own, and the data has {len(train_set.blocks)}", file=config.data.dataset_name,
                        hint="use data.shard windows (the default), or fewer processes or num_workers")

    if config.dropout is not None:
        set_dropout(base.model, config.dropout)
    # master: the float32 weights that the optimizer updates, EMA follows and checkpoints save;
    # module: what runs forward and backward (the master itself, or its bf16 copy).
    master = prepare_trainable(base.model, config.method, config.lora, config.tune)
    if rank:  # every process built the same adapters from the seed; each draws dropout masks of its own
        torch.manual_seed(config.seed + rank)
    bf16_weights = Bf16Weights(master.to(device)) if config.bf16_weights else None
    module = bf16_weights.module if bf16_weights else master
    if config.activation_checkpointing:
        enable_activation_checkpointing(base_model(module))
    if not resume and accelerator.is_main_process:  # only now: a run that cannot start leaves no base behind
        record_base(base, config.base, config.seed, run_dir)
    if config.compile:
        compile_layers(base_model(module), "reduce-overhead" if config.cuda_graphs else None)
    if config.fsdp:
        shard_model(module, device, precision)
    params = [p for p in master.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(params, lr=config.learning_rate, weight_decay=config.weight_decay,
                                  fused=device.type == "cuda")
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lr_schedule(config))
    if config.fsdp:
        optimizer = accelerator.prepare(optimizer)
    else:
        module, optimizer = accelerator.prepare(module, optimizer)
    ema = EMA(master, config.ema_decay) if config.ema_decay else None

    progress = Progress(windows_per_batch=micro * world, train_windows=train_set.num_windows, processes=world)
    if resume:
        latest = checkpoint_dirs(run_dir)
        if not latest:
            raise DataError("no checkpoint to resume from", file=str(run_dir),
                            hint="it has none (it stopped before its first one, or they were deleted): start it "
                                 "again without --resume")
        state = load_training_state(latest[-1], rank)
        load_trainable_state(master, state.weights)
        if bf16_weights:
            bf16_weights.weights_from_master()
        optimizer.load_state_dict(shard_optimizer_state(state.optimizer, optimizer))
        scheduler.load_state_dict(state.scheduler)
        follow_schedule(optimizer, scheduler, config, state.progress.step)
        if accelerator.scaler is not None and state.scaler is not None:
            accelerator.scaler.load_state_dict(state.scaler)
        if ema is not None and state.ema is not None:
            ema.shadow = {k: shard_like(ema.shadow[k], v.float()) for k, v in state.ema.items()}
        if state.rng is not None:
            set_rng_state(state.rng)
        else:  # a process the run did not have
            print(f"note        checkpoint {latest[-1].name} holds no random state for process {rank}: its dropout "
                  "draws start afresh, so with dropout on this resume is not bit for bit")
        progress = state.progress
        continue_data_position(progress, micro * world, run_dir)
        if config.data.shard == "blocks" and progress.processes not in (None, world):
            raise DataError(f"the run trained with {progress.processes} process(es), and this resume has {world}: with "
                            "data.shard blocks the order it reads the data in depends on them", file=str(run_dir),
                            hint=f"resume with {progress.processes} process(es)")
        progress.train_windows = train_set.num_windows  # counted from now on in a run older than the count
        if progress.processes not in (None, world):
            resume_changes.append(f"{world} process(es) (was {progress.processes})")
        progress.processes = world
        # A run that trained all its steps but did not finish (its final validation met a bad frame,
        # say) resumes to finish: validation, weights and model.
        ended = (run_dir / "summary.json").is_file()
        if progress.step > config.max_steps or progress.step == config.max_steps and ended:
            raise DataError(f"the run has trained {progress.step} steps and max_steps is {config.max_steps}: "
                            "nothing to train", file=str(run_dir),
                            hint=f"raise --max-steps to train on; `nitrogen-finetune export {run_dir} OUT.pt` "
                                 "writes its model")
    if accelerator.is_main_process:  # only now: a resume that fails to start leaves the run's config as it was
        write_text_atomic(run_dir / "config.yaml", dump_config(config))
        if not resume or not (run_dir / HELD_OUT_FILE).exists():  # a resume has checked the data is the run's
            write_text_atomic(run_dir / HELD_OUT_FILE, json.dumps({"recordings": held_out}, indent=2))

    writer = CheckpointWriter(run_dir, config.keep_last, rank, accelerator.wait_for_everyone)
    logger = RunLogger(run_dir, config, accelerator.is_main_process, resumed_at=progress.step if resume else None,
                       processes=world)
    batches = micro_batches(train_set, progress, config.num_workers)
    preprocessor, noise_args = base.preprocessor, (
        data.spec.horizon, model_cfg.action_dim, model_cfg.noise_beta_alpha, model_cfg.noise_beta_beta,
        model_cfg.noise_s,
    )
    sample_flops = flops_per_sample(base_model(master), data.spec.horizon)
    peak = peak_flops(device)
    logger.start(base, config.method, data, train_set, val_set, accumulation, micro, world,
                 precision_label(precision, config.fsdp, config.bf16_weights))
    if config.base in PRESETS:
        logger.note(f"base {config.base}: random weights, not NitroGen's (--base ng.pt fine-tunes the released model)")
    if config.warmup_steps > config.max_steps:
        logger.note(f"warmup_steps {config.warmup_steps} > max_steps {config.max_steps}: the learning rate never "
                    f"reaches learning_rate {config.learning_rate:g}")
    if config.method == "full" and config.lora != LoraConfig():
        logger.note("the lora settings are not used: method is full")
    frame_size = data.frame_size()
    if frame_size and frame_size[0] != frame_size[1] and config.data.image_fit != "stretch":
        logger.note(f"frames are {frame_size[0]}x{frame_size[1]}: image_fit {config.data.image_fit} makes them square, "
                    "and the exported model records it for predict and rollout; the official player stretches the "
                    "screen instead (data.image_fit: stretch trains on frames as it shows them)")
    if config.val_fraction and not val_episodes:
        logger.note("no validation: it holds out whole recordings, and the data is one recording "
                    f"({len(data.index.episodes)} episode(s))")
    if config.keep_best and not val_episodes:
        logger.note("keep_best keeps no best checkpoint: no validation loss tells which step is best "
                    "(summary.json's best_checkpoint stays null, and export takes the last)")
    if resume:
        logger.note(f"resumed from {checkpoint_dirs(run_dir)[-1].relative_to(run_dir)} (step {progress.step})"
                    + (f" with {', '.join(resume_changes)}" if resume_changes else ""))
    if config.compile:
        logger.note("compile: the first step compiles each kind of transformer layer (a minute or so)")
    if threads and config.num_workers:
        cores = cpu_threads(0)  # a core for each worker, but one compute thread at least
        workers = f", leaving {config.num_workers} core(s) to the data workers" if threads + config.num_workers \
            == cores else f" and {config.num_workers} data workers share its {cores} core(s)"
        logger.note(f"{threads} compute thread(s) on the CPU{workers} (OMP_NUM_THREADS sets the count)")
    if config.fsdp and world == 1:
        logger.note("fsdp in one process shards nothing and trains slower than without it (one H100: "
                    "0.84x eager, 0.54x compiled); it is for several GPUs")

    # Under FSDP the sharded layers compute in bf16 by themselves, as bf16 weights do; autocast
    # would bring back the float32 residual stream.
    training_autocast = contextlib.nullcontext if config.fsdp or bf16_weights else accelerator.autocast

    def forward_terms(batch: dict, step: int, validation: bool = False):
        # Copies that do not wait for the GPU to finish the step before (see StepReadout).
        pixels = preprocessor.normalize(batch["image"].to(device, non_blocking=True))
        noise, flow_time = window_noise(batch, config.seed, step, *noise_args, validation=validation)
        with training_autocast():
            return module(pixels, *(t.to(device, non_blocking=True) for t in
                                    (batch["actions"], batch["actions_mask"], noise, flow_time)))

    def validate() -> Optional[float]:
        if val_set is None:
            return None
        module.eval()
        totals = torch.zeros(2, device=device)
        with torch.no_grad(), eager():
            for i, batch in enumerate(one_pass(val_set, config.num_workers)):
                if config.val_batches and i >= config.val_batches:
                    break
                if not len(batch["episode"]):  # every process runs every forward (FSDP gathers, DDP syncs)
                    batch = padding_window(batch)
                squared, count = forward_terms(batch, 0, validation=True)
                totals += torch.stack([squared.float(), count.float()])
        module.train()
        totals = accelerator.reduce(totals, "sum")
        return float(totals[0] / totals[1]) if totals[1] else None  # skip_bad_rows may leave out every frame

    def sampled_metrics() -> dict[str, float]:
        """Button F1 and stick MAE of chunks sampled as a player would (the main process; under
        FSDP every process samples the same chunks, as the weights are gathered together)."""
        wanted = (accelerator.is_main_process or config.fsdp) and val_episodes and config.val_chunks
        if not wanted or data.spec.horizon != model_cfg.action_horizon:  # chunks must match the model's
            return {}
        model = base_model(accelerator.unwrap_model(module))  # with bf16 weights, the bf16 copy
        policy = NitroGenPolicy(model, base.config, base.raw_config, base.preprocessor, base.layout)
        model.eval()
        # Autocast under FSDP too: the sampler calls DiT methods other than forward, whose inputs
        # FSDP does not cast.
        with accelerator.autocast(), gathered(model), eager():
            chunks = predict_chunks(policy, data, val_episodes, seed=config.seed, limit=config.val_chunks)
        model.train()
        if not len(chunks.episodes):
            return {}
        scores = score_chunks(chunks, policy)
        found = {"val/button_f1": scores["buttons"]["macro_f1"], "val/stick_mae": scores["sticks"]["mean_mae"]}
        return {k: v for k, v in found.items() if v is not None}

    def note_best(val_loss: Optional[float]) -> None:
        """With keep_best, remember this step if its validation loss is the lowest so far and a
        checkpoint is written at this step (the checkpoints carry it; rotation spares it)."""
        if not config.keep_best or val_loss is None:
            return
        checkpointed = (config.checkpoint_every and progress.step % config.checkpoint_every == 0
                        or progress.step == config.max_steps)
        if checkpointed and (progress.best_val_loss is None or val_loss < progress.best_val_loss):
            progress.best_step, progress.best_val_loss = progress.step, val_loss

    def validate_and_log() -> Optional[float]:
        nonlocal validated_step
        try:  # a bad frame: the steps done are saved first
            val_loss = validate()
            metrics = sampled_metrics() if val_loss is not None else {}
        except DataError as err:
            raise saved_before(err) from err
        if val_loss is not None:
            logger.scalars(progress.step, {"val/loss": val_loss, **metrics})
        note_best(val_loss)
        validated_step = progress.step
        return val_loss

    def gradient_sync(last_micro_batch: bool):
        """Gradients are averaged across processes once per step, after the last micro-batch."""
        if config.fsdp:
            module.set_requires_gradient_sync(last_micro_batch)
            return contextlib.nullcontext()
        return contextlib.nullcontext() if last_micro_batch else accelerator.no_sync(module)

    def save_checkpoint() -> None:
        """A checkpoint of this step, unless an update made a weight NaN or infinite, or a step's
        gradients were (the loss, computed before the update, may not show it yet; AdamW's state
        keeps them): such weights are never saved or exported."""
        weights_finite = torch.stack([torch.isfinite(local_tensor(p)).all() for p in params]).all()
        broken = accelerator.reduce(torch.stack([~weights_finite, nonfinite_gradients > 0]).float(), "sum")
        if broken.any():
            end_early()
            what = "the trained weights are no longer finite numbers" if broken[0] else \
                "a step's gradient norm was not a finite number"
            raise diverged(what, progress.step, run_dir, world)
        save(writer, progress, master, optimizer, scheduler, ema, config, accelerator.scaler)

    def save_unless_saved() -> None:
        if checkpoint_dirs(run_dir)[-1:] != [checkpoint_dir(run_dir, progress.step)]:
            save_checkpoint()

    def end_early() -> None:
        """Close the logs and the processes' group before the run stops with an error or a signal."""
        logger.close()
        accelerator.end_training()

    def saved_before(err: DataError) -> DataError:
        """A bad row met while training (frames are decoded as they are read): one process saves
        the steps done, so fixing the row costs none of them. Several processes stop as they are:
        the others wait in a collective that a save would need too."""
        if progress.step == 0:
            return err
        resume = resume_command(run_dir, world)
        # Removing the row would change the run's windows, which a resume refuses.
        fixed = "with the file restored" if isinstance(err, DamagedFileError) else \
            "with the frame fixed in place, or with --skip-bad-rows"
        if world > 1:
            saved = checkpoint_dirs(run_dir)
            kept = f"the newest checkpoint is {saved[-1].name}" if saved else "no checkpoint was saved yet"
            return DataError(f"{user_message(err)}; several processes stop without saving the steps since their last "
                             f"checkpoint: {kept}" + (f"; {fixed}, continue with  {resume}" if saved else ""))
        read_steps(everything=True)  # a loss that is not a number still stops without saving
        save_unless_saved()
        end_early()
        go_on = f"{fixed}, continue with  {resume}" if progress.step < config.max_steps else \
            f"{fixed}, finish the run with  {resume}  (or export its model now)"
        return DataError(f"{user_message(err)}; the checkpoint of step {progress.step} is saved: {go_on}")

    def read_steps(everything: bool) -> float:
        """Take the losses and stop votes that the GPU has sent back (all of them, or all but the
        newest step's); a loss that is not a number stops the run before anything saves it."""
        votes = 0.0
        for step, (loss, step_votes, counted, skipped) in readout.take(everything):
            progress.skipped_bad_frames += int(skipped)
            if not counted:
                end_early()
                raise DataError(f"step {step} had no window to train on: skip_bad_rows left out every frame of its "
                                "batch", hint=f"check the frames: nitrogen-finetune data inspect "
                                f"{shlex.quote(config.data.dataset_name)} --skip-bad-rows")
            losses.append(loss)
            votes += step_votes
            if not math.isfinite(loss) and accelerator.scaler is None:  # fp16's scaler skips such steps itself
                end_early()
                raise diverged(f"the training loss is {loss}", step, run_dir, world)
        return votes

    # ------------------------------------------------------------------------- the update step
    module.train()
    losses, val_loss = [], None
    nonfinite_gradients = torch.zeros((), dtype=torch.int64, device=device)
    validated_step: Optional[int] = None
    readout = StepReadout(progress.step)
    interactive = sys.stderr.isatty()  # in logs and CI, a line every 30 s instead of every step
    bar = tqdm(total=config.max_steps, initial=progress.step, disable=not accelerator.is_main_process,
               dynamic_ncols=True, desc="train", mininterval=0.1 if interactive else 30)
    stopped = False
    # Speed is averaged over the steps since the last log line (validation and checkpoints left
    # out): one step's figure swings with every data-loading stall.
    timed_steps, timed_seconds = 0, 0.0
    with bar:  # closed on the way out, so an error message starts its own line
        while progress.step < config.max_steps:
            started = time.perf_counter()
            step_batches, position = [], (progress.epoch, progress.batches_in_epoch)
            try:
                for _ in range(accumulation):
                    progress.epoch, progress.batches_in_epoch, batch = next(batches)
                    step_batches.append(batch)
            except DataError as err:
                progress.epoch, progress.batches_in_epoch = position  # where this step's batches begin
                raise saved_before(err) from err
            # Normalise by the masked-in values of the whole global batch (all micro-batches, all
            # processes): the loss of a step is the same however the batch is split.
            local_count = sum(float(b["actions_mask"].sum()) for b in step_batches)
            counted = accelerator.reduce(torch.full((), local_count, device=device), "sum")
            total = counted.clamp(min=1.0)
            step_squared = torch.zeros((), device=device)
            for i, batch in enumerate(step_batches):
                if not len(batch["episode"]):  # skip_bad_rows left it no window; every process runs every pass
                    batch = padding_window(batch)
                with gradient_sync(i == accumulation - 1):
                    if config.cuda_graphs:  # the last step's graph outputs and gradients are spent
                        torch.compiler.cudagraph_mark_step_begin()
                    squared, _ = forward_terms(batch, progress.step)
                    accelerator.backward(squared * world / total)
                step_squared += squared.detach().float()
            if bf16_weights:
                bf16_weights.gradients_to_master()
            grad_norm = accelerator.clip_grad_norm_(params, config.max_grad_norm) if config.max_grad_norm else None
            if grad_norm is not None and accelerator.scaler is None:  # fp16's scaler skips such steps itself
                nonfinite_gradients += ~torch.isfinite(local_tensor(grad_norm))  # read at the next checkpoint
            learning_rate = optimizer.param_groups[0]["lr"]  # this step's; the scheduler then sets the next's
            optimizer.step()
            scheduler.step()
            optimizer.zero_grad(set_to_none=True)
            if bf16_weights:
                bf16_weights.weights_from_master()
            if ema is not None:
                ema.update(master)
            progress.step += 1

            # Summing each process's stop vote with the loss costs no extra collective.
            vote = torch.full((), float(stop is not None and stop.requested), device=device)
            skipped = torch.full((), float(sum(int(b["skipped_bad_frames"]) for b in step_batches)), device=device)
            summed = accelerator.reduce(torch.stack([step_squared, vote, skipped]), "sum")
            readout.push(torch.stack([summed[0] / total, summed[1], counted, summed[2]]))
            logs = progress.step % config.log_every == 0 or progress.step == config.max_steps
            validates = config.val_every and progress.step % config.val_every == 0
            saves = config.checkpoint_every and progress.step % config.checkpoint_every == 0
            stop_votes = read_steps(everything=logs or validates or saves)
            timed_steps, timed_seconds = timed_steps + 1, timed_seconds + time.perf_counter() - started
            seconds = timed_seconds / timed_steps
            samples_per_s = config.batch_size / seconds
            if losses:
                bar.set_postfix(loss=f"{losses[-1]:.4f}", lr=f"{learning_rate:.2e}",
                                samples_s=f"{samples_per_s:.3g}", refresh=False)
            bar.update(1)
            if logs:
                scalars = {"train/loss": losses[-1], "train/lr": learning_rate,
                           "train/samples_per_s": samples_per_s, "train/ms_per_step": seconds * 1000}
                if peak:
                    scalars["train/mfu"] = samples_per_s * sample_flops / (peak * world)
                if progress.skipped_bad_frames:
                    scalars["train/skipped_bad_frames"] = progress.skipped_bad_frames
                if grad_norm is not None:  # before clipping; under FSDP, the whole model's
                    scalars["train/grad_norm"] = float(full_tensor(grad_norm))
                logger.scalars(progress.step, scalars)
                timed_steps, timed_seconds = 0, 0.0
            if validates:
                val_loss = validate_and_log()
            if saves:
                save_checkpoint()
            # Every process agrees: the votes were summed with the loss. One process needs no vote.
            # A request during the last step lets the run finish: only its ending is left.
            requested = stop_votes > 0 or (world == 1 and stop is not None and stop.requested)
            if requested and progress.step < config.max_steps:
                stopped = True
                break
    if stopped:
        read_steps(everything=True)
        save_unless_saved()
        end_early()
        # A process stopped by another's vote reports SIGTERM, what launchers send to stop workers.
        raise TrainingStopped(run_dir, progress.step, stop.signal_number or signal.SIGTERM, world)

    # ----------------------------------------------------------------------------- finish
    if stop is not None:
        stop.steps_done()
    # Saved before the final validation, a bad frame met there costs no step, even with several
    # processes (which cannot save once one has stopped); keep_best saves after it, to record it.
    if not config.keep_best:
        save_unless_saved()
    best_before = progress.best_step
    if val_set is not None and validated_step != progress.step:  # unless the last step validated
        val_loss = validate_and_log()
    if progress.best_step != best_before and checkpoint_dirs(run_dir)[-1:] == [checkpoint_dir(run_dir, progress.step)]:
        writer.record_progress(progress)  # saved in the loop, or before a resume that only finishes the run
    save_unless_saved()
    exported = None
    save_trained_weights(master, run_dir, accelerator.is_main_process)
    if accelerator.is_main_process and config.export_at_end:
        from .export import export_run  # noqa: PLC0415

        try:
            # A resume that turned EMA off exports the trained weights even from a checkpoint with EMA.
            exported = export_run(run_dir, run_dir / "model.pt", force=True, use_ema=None if config.ema_decay else False)
        except CheckpointError as err:
            raise final_output_error(str(err), None, run_dir) from err
    logger.finish(progress, losses, val_loss, exported)
    accelerator.wait_for_everyone()
    accelerator.end_training()
    return TrainResult(run_dir, progress.step, losses, val_loss, exported)


def save(writer: CheckpointWriter, progress: Progress, master, optimizer, scheduler, ema, config, scaler) -> Path:
    """Every process calls it: sharded tensors are gathered whole, then the main one writes."""
    main = writer.rank == 0
    return writer.save(progress, full_tensors(trainable_state(master), main),
                       full_optimizer_state(optimizer.state_dict(), main), scheduler.state_dict(),
                       full_tensors(ema.shadow, main) if ema else None, dump_config(config),
                       scaler.state_dict() if scaler is not None else None)


def save_trained_weights(master: torch.nn.Module, run_dir: Path, is_main: bool) -> None:
    """The LoRA adapter in PEFT's format plus the fully trained modules under their official
    names (``adapter/``), or all trained weights (``weights.safetensors``), as safetensors.
    Every process calls it (sharded weights are gathered); the main one writes."""
    model = base_model(master)
    trained = full_tensors({n: p for n, p in model.named_parameters() if p.requires_grad and "lora_" not in n}, is_main)
    if not is_main:
        return
    trained = {n: t.contiguous() for n, t in trained.items()}
    target = run_dir / ("adapter" if hasattr(master, "save_pretrained") else "weights.safetensors")
    try:
        if target.name == "adapter":
            master.save_pretrained(str(target), safe_serialization=True)
            save_file(trained, str(target / "fully_trained.safetensors"))
        else:
            save_file(trained, str(target))
    except (OSError, SafetensorError) as err:
        if target.is_dir():
            shutil.rmtree(target, ignore_errors=True)
        else:
            target.unlink(missing_ok=True)
        reason = no_space_left(run_dir, tensor_bytes(trained)) or getattr(err, "strerror", None) or user_message(err)
        raise final_output_error(f"cannot be written ({reason})", target, run_dir) from err
    apply_umask(target)


def final_output_error(message: str, file: Optional[Path], run_dir: Path) -> DataError:
    """A file written after the last checkpoint failed: the checkpoint is complete, and ``export``
    writes the model from it once the cause is fixed."""
    return DataError(f"{message}; the run's last checkpoint is complete", file=str(file) if file else None,
                     hint=f"then `nitrogen-finetune export {run_dir} {run_dir / 'model.pt'}` writes the model from it")


def logged_rows(metrics_file: Path, last_step: int, validates_last_step: bool = False) -> list[str]:
    """The rows of metrics.jsonl up to ``last_step`` (the resumed run logs the later ones again,
    and with ``validates_last_step`` that step's validation), leaving out any row cut short when
    the disk filled up or the machine lost power."""
    rows = []
    for row in metrics_file.read_text(errors="replace").splitlines():
        try:
            values = json.loads(row)
            if values["step"] < last_step or values["step"] == last_step and not (
                    validates_last_step and "val/loss" in values):
                rows.append(row)
        except (ValueError, TypeError, KeyError):
            continue
    return rows


class RunLogger:
    """metrics.jsonl and TensorBoard always; Weights & Biases when asked for."""

    def __init__(self, run_dir: Path, config: TrainConfig, enabled: bool, resumed_at: Optional[int],
                 processes: int = 1):
        """A new run starts the logs afresh (an earlier attempt in the folder left no checkpoint);
        a resumed run drops what was logged after its checkpoint, which it logs again (a resume
        with no step left to train validates its last step again)."""
        self.enabled, self.run_dir, self.wandb, self.processes = enabled, run_dir, None, processes
        if not enabled:
            return
        from torch.utils.tensorboard import SummaryWriter  # noqa: PLC0415

        metrics_file = run_dir / "metrics.jsonl"
        finishing = resumed_at == config.max_steps  # validates its last step again
        kept = []
        if resumed_at is None:
            shutil.rmtree(run_dir / "tensorboard", ignore_errors=True)
            metrics_file.unlink(missing_ok=True)
        elif metrics_file.is_file():
            kept = logged_rows(metrics_file, resumed_at, validates_last_step=finishing)
            write_text_atomic(metrics_file, "".join(row + "\n" for row in kept))
        # TensorBoard hides what earlier files logged from purge_step on. A finishing resume purges
        # its last step, whose validation it logs again, and puts back that step's other values.
        self.tensorboard = SummaryWriter(str(run_dir / "tensorboard"), purge_step=None if resumed_at is None
                                         else resumed_at if finishing else resumed_at + 1)
        for row in map(json.loads, kept if finishing else []):
            for name, value in row.items():
                if row["step"] == resumed_at and name != "step" and value is not None:
                    self.tensorboard.add_scalar(name, value, resumed_at)
        self.metrics = open(metrics_file, "a")
        # A resume that only finishes the run trains no step: its final loss is the one logged last.
        self.logged_loss = next((row["train/loss"] for row in map(json.loads, reversed(kept)) if "train/loss" in row),
                                None)
        if config.wandb:  # installed: checked before the run started
            import wandb  # noqa: PLC0415

            self.wandb = wandb.init(project=config.wandb_project, config=config.model_dump(mode="json"),
                                    dir=str(run_dir))

    def start(self, base, method, data, train_set, val_set, accumulation, micro, world, precision) -> None:
        if not self.enabled:
            return
        params = dict(base.model.named_parameters())  # LoRA's adapters are in the model by now
        total = sum(p.numel() for name, p in params.items() if "lora_" not in name)
        trained = sum(p.numel() for p in params.values() if p.requires_grad)
        print(f"base        {base.source} ({total:,} parameters)")
        print(f"method      {method}: {trained:,} parameters trained")
        index = data.index
        print(f"data        {data.config.dataset_name}: {len(index.episodes)} episode(s), "
              f"{train_set.num_windows} training windows" + (f", {val_set.num_windows} validation" if val_set else "")
              + (f"; {index.bad_action_rows} bad rows left out (skip_bad_rows)" if index.bad_action_rows else "")
              + index.gaps_note())
        print(f"profile     {index.profiles_note()}")
        differing = index.differing_column_note()
        if differing:
            print(f"note        {differing}")
        unused = index.all_unused_columns
        if unused:  # most often a wrong data.profile: say so before hours of training on a few slots
            print(f"unused      {', '.join(unused)}: no profile entry or mapping reads these columns "
                  "(check data.profile; `nitrogen-finetune data inspect` shows the mapping)")
        print(f"batch       {micro} per forward x {accumulation} accumulation x {world} process(es); "
              f"precision {precision}")

    def note(self, text: str) -> None:
        if self.enabled:
            print(f"note        {text}")

    def scalars(self, step: int, values: dict[str, float]) -> None:
        if not self.enabled:
            return
        # JSON has no NaN: a value that is not a finite number (a gradient norm) is written as null.
        row = {"step": step, **{k: v if math.isfinite(v) else None for k, v in values.items()}}
        try:  # TensorBoard's writer thread fails first; the next add_scalar raises its error here
            for name, value in values.items():
                self.tensorboard.add_scalar(name, value, step)
            self.metrics.write(json.dumps(row) + "\n")
            self.metrics.flush()
        except OSError as err:
            raise self.unwritable(err) from None
        if self.wandb is not None:
            self.wandb.log(values, step=step)

    def unwritable(self, err: OSError) -> DataError:
        """A log write that failed mid-run (a full disk, a deleted run folder): what is kept, and
        how to go on."""
        for log in (self.metrics, self.tensorboard):  # their unwritten lines would fail again
            with contextlib.suppress(OSError):
                log.close()
        if not self.run_dir.is_dir():
            return run_folder_deleted(self.run_dir)
        saved = checkpoint_dirs(self.run_dir)
        kept = f"the steps since its newest checkpoint, {saved[-1].name}, are lost" if saved else \
            "it has no checkpoint yet"
        fix = write_fix(err)
        failed = os.fsdecode(err.filename) if err.filename else str(self.run_dir / "metrics.jsonl")  # TensorBoard's
        return DataError(f"the run's log cannot be written ({err.strerror or err}): {kept}", file=failed,
                         hint=f"{fix}, then continue with  {resume_command(self.run_dir, self.processes)}" if saved
                         else f"{fix}, then start the run again")

    def finish(self, progress: Progress, losses: list[float], val_loss: Optional[float],
               exported: Optional[Path]) -> None:
        if not self.enabled:
            return
        best = progress.best_step
        summary = {"step": progress.step, "final_train_loss": losses[-1] if losses else self.logged_loss,
                   "val_loss": val_loss,
                   "exported": str(exported) if exported else None,
                   "best_checkpoint": str(checkpoint_dir(self.run_dir, best)) if best else None,
                   "best_val_loss": progress.best_val_loss, "skipped_bad_frames": progress.skipped_bad_frames}
        write_text_atomic(self.run_dir / "summary.json", json.dumps(summary, indent=2))
        if exported is None and (self.run_dir / "model.pt").is_file():  # a resume with export_at_end turned off
            self.note(f"model.pt is an earlier export, not step {progress.step}'s (export_at_end is false): "
                      f"nitrogen-finetune export {shlex.quote(str(self.run_dir))} "
                      f"{shlex.quote(str(self.run_dir / 'model.pt'))} --force  writes this step's")
        if progress.skipped_bad_frames:
            self.note(f"bad frames left out of training {progress.skipped_bad_frames} time(s) (skip_bad_rows; a bad frame "
                      "counts once in each epoch that reads it)")
        self.close()

    def close(self) -> None:
        if not self.enabled:
            return
        self.tensorboard.close()
        self.metrics.close()
        if self.wandb is not None:
            self.wandb.finish()
