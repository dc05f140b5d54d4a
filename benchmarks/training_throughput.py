"""Training-step throughput, peak memory and MFU at the released size (random weights).

    python benchmarks/training_throughput.py                       # GPU: full, FSDP and LoRA, batch 32 and 64
    python benchmarks/training_throughput.py --compile --output train.json
    python benchmarks/training_throughput.py --runs full+bf16_weights:64 --compile --profile   # where the time goes
    python benchmarks/training_throughput.py --runs lora_attention+bf16_weights:64 --compile
    python benchmarks/training_throughput.py --runs lora_attention+bf16_weights:64 --compile-only --compile-mode reduce-overhead
    python benchmarks/training_throughput.py --official-src /path/to/NitroGen   # the official full and LoRA too

One step is what ``nitrogen-finetune train`` does per optimizer step: per-window flow noise,
bf16 autocast forward of the flow-matching loss, backward, gradient clipping and a fused AdamW
step, on synthetic 256x256 frames already on the device (the data loader is measured by
``loader_throughput.py``). The default LoRA setup is ``LoraConfig()``: rank 16 on the DiT
attention and feed-forward layers and the VL mixer, with the action head trained fully;
``lora_attention`` is the setup of the reference LoRA figures: rank 16 on every attention projection
(DiT, VL mixer and SigLIP tower, so the backward pass runs through the tower), action head fully.
With ``--official-src`` the official model runs the full fine-tune and, through PEFT, the
``lora_attention`` set-up (same rank, alpha, dropout and layers) in the same process.

A run ``METHOD+bf16_weights`` is that set-up with ``bf16_weights: true``: a bf16 copy of the model
computes with no autocast and AdamW updates the float32 masters (see ``training/bf16_weights.py``).
``fsdp`` is full fine-tuning with ``fsdp: true`` in one process: instead of autocast, FSDP
gathers bf16 copies of the float32 master weights and the transformers compute in bf16 end to
end (see ``training/sharding.py``). In one process that is slower than autocast: FSDP is there
for sharding across GPUs, and these rows measure its cost.
"""

from __future__ import annotations

import argparse
import contextlib
import gc
import json
import re
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from nitrogen_finetuner.model.presets import build_preset
from nitrogen_finetuner.training.activation_checkpointing import enable_activation_checkpointing
from nitrogen_finetuner.training.adapters import base_model, prepare_trainable
from nitrogen_finetuner.training.batches import window_noise
from nitrogen_finetuner.training.bf16_weights import Bf16Weights
from nitrogen_finetuner.training.compiling import compile_layers
from nitrogen_finetuner.training.config import LORA_COMPONENTS, LoraConfig
from nitrogen_finetuner.training.sharding import shard_model
from nitrogen_finetuner.training.throughput import flops_per_sample, peak_flops


EVERY_ATTENTION_PROJECTION = ["dit_attention", "vl_mixer_attention", "vision_tower_attention"]
# The benchmark's set-ups and the training method each one is.
METHODS = {"full": "full", "fsdp": "full", "lora": "lora", "lora_attention": "lora"}


def synthetic_batch(batch: int, size: int, horizon: int, dim: int, device) -> dict:
    return {
        "pixels": torch.randn(batch, 3, size, size, device=device),
        "actions": torch.rand(batch, horizon, dim, device=device),
        "mask": torch.ones(batch, horizon, dim, dtype=torch.bool, device=device),
        "episode": np.zeros(batch, np.int64),
        "frame": np.arange(batch, dtype=np.int64),
    }


def sync(device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def peak_memory_gib(device) -> float | None:
    return round(torch.cuda.max_memory_allocated(device) / 2**30, 2) if device.type == "cuda" else None


def reset_memory(device) -> None:
    gc.collect()
    if device.type == "cuda":
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats(device)


def kernel_time_by_kind(step, steps: int = 3) -> dict:
    """GPU kernel milliseconds per step, by kind of kernel and for the slowest kernels, from the
    PyTorch profiler. Kernel time well below the step's wall time means the GPU waits on the CPU."""
    # Attention first: cuDNN's attention kernels carry "sm90" in their names, as matmuls do.
    kinds = {"attention": ("flash", "fmha", "attention", "sdpa"),
             "convolution": ("conv", "wgrad", "dgrad", "implicit_gemm"),
             "matmul": ("gemm", "nvjet", "cutlass", "xmma", "sm90", "cublas", "matmul", "scaled_mm"),
             "optimizer and clipping": ("adam", "multi_tensor", "foreach", "norm_kernel"),
             "fused (triton)": ("triton",)}
    with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CUDA]) as profiler:
        for i in range(steps):
            step(1000 + i)
        torch.cuda.synchronize()
    totals: dict[str, float] = {}
    per_kernel: dict[str, float] = {}
    for event in profiler.key_averages():
        if event.self_device_time_total <= 0 or str(event.device_type).endswith("CPU"):
            continue
        name = event.key.lower()
        kind = next((k for k, marks in kinds.items() if any(m in name for m in marks)), "other element-wise")
        ms = event.self_device_time_total / 1000 / steps
        totals[kind] = totals.get(kind, 0.0) + ms
        per_kernel[event.key[:120]] = ms
    slowest = sorted(per_kernel.items(), key=lambda kv: -kv[1])[:12]
    return {"kernel_ms": round(sum(totals.values()), 1),
            **{k: round(v, 1) for k, v in sorted(totals.items(), key=lambda kv: -kv[1])},
            "slowest_kernels_ms": {name: round(ms, 2) for name, ms in slowest}}


def compiled_label(mode: str | None) -> str:
    return "" if mode is None else " (compiled)" if mode == "default" else f" (compiled, {mode})"


class TrainingStep:
    """One optimizer step of a method, as the trainer runs it, on synthetic data on the device."""

    def __init__(self, preset: str, method: str, batch_size: int, lora_dropout: float, compile_mode: str | None,
                 recompute: bool, device):
        torch.manual_seed(0)
        model, _ = build_preset(preset, device=device)
        self.config, self.device = model.config, device
        method, _, option = method.partition("+")
        if method not in METHODS or option not in ("", "bf16_weights"):
            raise ValueError(f"unknown run {method}{'+' if option else ''}{option}: methods are {', '.join(METHODS)}, "
                             "each optionally with +bf16_weights")
        self.sharded = method == "fsdp"
        lora = LoraConfig(dropout=lora_dropout)
        if method == "lora_attention":
            lora = LoraConfig(targets=EVERY_ATTENTION_PROJECTION, dropout=lora_dropout)
        self.master = prepare_trainable(model, METHODS[method], lora)
        self.master.train()
        self.bf16_weights = Bf16Weights(self.master) if option == "bf16_weights" else None
        self.module = self.bf16_weights.module if self.bf16_weights else self.master
        if recompute:
            enable_activation_checkpointing(base_model(self.module))
        if compile_mode is not None:
            compile_layers(base_model(self.module), compile_mode)
        if self.sharded:
            shard_model(self.module, device, "bf16")
        self.params = [p for p in self.master.parameters() if p.requires_grad]
        self.optimizer = torch.optim.AdamW(self.params, lr=1e-5, fused=device.type == "cuda")
        cfg = self.config
        self.data = synthetic_batch(batch_size, model.vision_encoder.config.image_size, cfg.action_horizon,
                                    cfg.action_dim, device)
        self.noise_args = (cfg.action_horizon, cfg.action_dim, cfg.noise_beta_alpha, cfg.noise_beta_beta, cfg.noise_s)
        self.cuda_graphs = compile_mode == "reduce-overhead"  # the trainer's cuda_graphs: true

    def __call__(self, i: int) -> None:
        if self.cuda_graphs:
            torch.compiler.cudagraph_mark_step_begin()
        noise, flow_time = window_noise(self.data, 0, i, *self.noise_args)
        bf16_end_to_end = self.sharded or self.bf16_weights
        autocast = contextlib.nullcontext() if bf16_end_to_end else torch.autocast(self.device.type, dtype=torch.bfloat16)
        data = self.data
        with autocast:
            squared, count = self.module(data["pixels"], data["actions"], data["mask"],
                                         noise.to(self.device, non_blocking=True),
                                         flow_time.to(self.device, non_blocking=True))
        (squared / count).backward()
        if self.bf16_weights:
            self.bf16_weights.gradients_to_master()
        torch.nn.utils.clip_grad_norm_(self.params, 1.0)
        self.optimizer.step()
        self.optimizer.zero_grad(set_to_none=True)
        if self.bf16_weights:
            self.bf16_weights.weights_from_master()


def timed(step, steps: int, warmup: int, device) -> tuple[float, float, float]:
    """Seconds of the first step (which compiles, when compiled), the median of ``steps`` timed
    steps after ``warmup`` untimed ones, each waited for, and a step's time run back to back, as
    the trainer runs (the CPU may then queue a step while the GPU runs the last one; the gap
    between the two says how long a step leaves the GPU idle). Back to back, ``2 x steps`` steps
    and ``steps`` steps, each with one wait at the end, differ by ``steps`` steps: the first
    step's start on an idle GPU and the last one's wait cancel out. (Timed over 10 steps alone,
    a LoRA step on an H100 took 98.0 ms where the trainer's took 92.4.) Peak memory counts from
    the first timed step."""
    start = time.perf_counter()
    step(0)
    sync(device)
    first_step = time.perf_counter() - start
    for i in range(1, warmup):
        step(i)
    sync(device)
    reset_memory(device)
    times = []
    for i in range(steps):
        start = time.perf_counter()
        step(warmup + i)
        sync(device)
        times.append(time.perf_counter() - start)

    def run_back_to_back(count: int, first: int) -> float:
        start = time.perf_counter()
        for i in range(count):
            step(first + i)
        sync(device)
        return time.perf_counter() - start

    once = run_back_to_back(steps, warmup + steps)
    twice = run_back_to_back(2 * steps, warmup + 2 * steps)
    return first_step, statistics.median(times), (twice - once) / steps


def dropout_label(method: str, lora_dropout: float) -> str:
    return "" if "lora" not in method or lora_dropout == LoraConfig().dropout else f" (lora dropout {lora_dropout})"


def bench(preset: str, method: str, batch_size: int, lora_dropout: float, steps: int, warmup: int,
          compile_mode: str | None, recompute: bool, device) -> dict:
    step = TrainingStep(preset, method, batch_size, lora_dropout, compile_mode, recompute, device)
    first_step, seconds, back_to_back = timed(step, steps, warmup, device)
    samples_per_s = batch_size / seconds
    peak = peak_flops(device)
    return {
        "method": method + dropout_label(method, lora_dropout) + compiled_label(compile_mode)
        + (" +AC" if recompute else ""),
        "batch": batch_size,
        "samples_per_s": round(samples_per_s, 1),
        "ms_per_step": round(seconds * 1000, 1),
        "ms_per_step_back_to_back": round(back_to_back * 1000, 1),
        "peak_gib": peak_memory_gib(device),
        "trainable": sum(p.numel() for p in step.params),
        "first_step_s": round(first_step, 3),
        "mfu": round(samples_per_s * flops_per_sample(base_model(step.master), step.config.action_horizon) / peak, 3)
        if peak else None,
    }


def profile(preset: str, method: str, batch_size: int, lora_dropout: float, warmup: int, compile_mode: str | None,
            recompute: bool, device) -> dict | str:
    """GPU kernel time of the same step, built afresh. Profiles run after every timing: a compiled
    step timed after a profile once waited on the CPU for a third of its time, cause unknown."""
    try:
        step = TrainingStep(preset, method, batch_size, lora_dropout, compile_mode, recompute, device)
        for i in range(warmup):
            step(i)
        return kernel_time_by_kind(step)
    except Exception as err:  # keep the timings
        return f"{type(err).__name__}: {str(err)[:200]}"


def official_lora(official: torch.nn.Module, dropout: float) -> torch.nn.Module:
    """The official model with ``lora_attention``'s adapters: the default rank, alpha and dropout
    on every attention projection (with ``dropout``), and the action encoder, decoder and position
    embedding in full."""
    from peft import LoraConfig as PeftLoraConfig  # noqa: PLC0415
    from peft import get_peft_model  # noqa: PLC0415

    pattern = "|".join(f"({LORA_COMPONENTS[component]})" for component in EVERY_ATTENTION_PROJECTION)
    targets = [name for name, module in official.named_modules()
               if isinstance(module, torch.nn.Linear) and re.fullmatch(pattern, name)]
    lora = LoraConfig()
    wrapped = get_peft_model(official, PeftLoraConfig(r=lora.rank, lora_alpha=lora.alpha, lora_dropout=dropout,
                                                      target_modules=targets))
    for name in ("action_encoder", "action_decoder", "position_embedding"):
        getattr(official, name).requires_grad_(True)
    return wrapped


def bench_official(src: Path, preset: str, method: str, batch_size: int, lora_dropout: float, steps: int, warmup: int,
                   device) -> dict:
    """The official NitroGen forward/backward (full fine-tune, or ``lora_attention``'s LoRA set-up
    through PEFT) with the same optimizer step."""
    sys.path.insert(0, str(src))
    from nitrogen.flow_matching_transformer.nitrogen import NitroGen, NitroGen_Config  # noqa: PLC0415
    from transformers import SiglipVisionModel  # noqa: PLC0415

    from nitrogen_finetuner.model.presets import preset_config  # noqa: PLC0415
    from nitrogen_finetuner.model.vision import TOWER_CONFIGS  # noqa: PLC0415
    from transformers import SiglipVisionConfig  # noqa: PLC0415

    raw = preset_config(preset)
    tower_dir = Path(tempfile.mkdtemp()) / "siglip-tower"
    SiglipVisionModel(SiglipVisionConfig(**TOWER_CONFIGS[raw["model_cfg"]["vision_encoder_name"]])).save_pretrained(tower_dir)
    official = NitroGen(config=NitroGen_Config.model_validate(dict(raw["model_cfg"], vision_encoder_name=str(tower_dir))))
    if method == "lora_attention":
        official = official_lora(official, lora_dropout)
    official.to(device).train()
    params = [p for p in official.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(params, lr=1e-5, fused=device.type == "cuda")
    mc, tc = raw["model_cfg"], raw["tokenizer_cfg"]
    horizon, dim, length = mc["action_horizon"], mc["action_dim"], tc["max_sequence_length"]
    size = TOWER_CONFIGS[mc["vision_encoder_name"]]["image_size"]
    data = {
        "images": torch.randn(batch_size, 1, 3, size, size, device=device),
        "actions": torch.rand(batch_size, horizon, dim, device=device),
        "actions_mask": torch.ones(batch_size, horizon, dim, dtype=torch.bool, device=device),
        "has_real_action": torch.ones(batch_size, dtype=torch.bool, device=device),
        "embodiment_id": torch.zeros(batch_size, dtype=torch.long, device=device),
        "vl_token_ids": torch.ones(batch_size, length, dtype=torch.long, device=device),
        "sa_token_ids": torch.full((batch_size, horizon), 4, dtype=torch.long, device=device),
        "vl_attn_mask": torch.ones(batch_size, length, dtype=torch.bool, device=device),
        "dropped_images": torch.zeros(batch_size, 1, dtype=torch.bool, device=device),
    }

    def step(_: int) -> None:
        with torch.autocast(device.type, dtype=torch.bfloat16):
            loss = official(data)["loss"]
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)

    _, seconds, back_to_back = timed(step, steps, warmup, device)
    row = {"method": f"official {method}{dropout_label(method, lora_dropout)}", "batch": batch_size,
           "samples_per_s": round(batch_size / seconds, 1),
           "ms_per_step": round(seconds * 1000, 1), "ms_per_step_back_to_back": round(back_to_back * 1000, 1),
           "peak_gib": peak_memory_gib(device),
           "trainable": sum(p.numel() for p in params), "mfu": None}
    return row


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--preset", default="released")
    parser.add_argument("--device", default="cuda", help="cuda; cpu only as a dry run of the script")
    parser.add_argument("--runs", default="full:32,full:64,fsdp:32,fsdp:64,lora:16,lora:32,lora:64,"
                        "lora_attention:32,lora_attention:64",
                        help="method:batch pairs; methods: full, fsdp, lora, lora_attention; "
                             "METHOD+bf16_weights computes on bf16 weights (not with fsdp)")
    parser.add_argument("--steps", type=int, default=10)
    parser.add_argument("--warmup", type=int, default=3, help="untimed steps, at least 1 (the first one compiles; "
                        "its time is reported as first_step_s)")
    parser.add_argument("--compile", action="store_true", help="also time each run with torch.compile")
    parser.add_argument("--compile-only", action="store_true", help="time each run with torch.compile alone")
    parser.add_argument("--compile-mode", default="default",
                        help="torch.compile's mode for --compile: default, reduce-overhead (CUDA graphs: the trainer's cuda_graphs), "
                             "max-autotune-no-cudagraphs, max-autotune")
    parser.add_argument("--activation-checkpointing", action="store_true", help="recompute layers in backward")
    parser.add_argument("--lora-dropout", type=float, default=LoraConfig().dropout,
                        help="lora.dropout of the LoRA runs, ours and the official one (default: the config's)")
    parser.add_argument("--profile", action="store_true", help="also GPU kernel time per step, by kind of kernel, and the slowest kernels")
    parser.add_argument("--official-src", help="a checkout of github.com/MineDojo/NitroGen: also time its full "
                        "fine-tune and its lora_attention LoRA set-up, batch 64")
    parser.add_argument("--official-runs", default="full,lora_attention",
                        help="which official set-ups --official-src times: full, lora_attention or both")
    parser.add_argument("--output")
    args = parser.parse_args()
    if args.warmup < 1:
        parser.error("--warmup must be at least 1")
    official_runs = [name for name in args.official_runs.split(",") if name]
    if set(official_runs) - {"full", "lora_attention"}:
        parser.error(f"--official-runs takes full and lora_attention, not {args.official_runs!r}")
    device = torch.device(args.device)
    if device.type == "cuda" and not torch.cuda.is_available():
        print("no CUDA device: this benchmark measures GPU training (the CPU path is exercised by the tests)")
        return
    torch.backends.cuda.matmul.allow_tf32 = True
    rows, ours = [], []
    for run in filter(None, args.runs.split(",")):
        method, batch = run.split(":")
        modes = (args.compile_mode,) if args.compile_only else (None, args.compile_mode) if args.compile else (None,)
        for compile_mode in modes:
            setup = (args.preset, method, int(batch), args.lora_dropout)
            try:
                rows.append(bench(*setup, args.steps, args.warmup, compile_mode, args.activation_checkpointing, device))
                ours.append((rows[-1], setup, compile_mode))
            except Exception as err:  # report (e.g. out of memory) and go on
                rows.append({"method": method, "batch": int(batch), "error": f"{type(err).__name__}: {str(err)[:200]}"})
            reset_memory(device)  # the run's model and optimizer went out of scope with it
            print(json.dumps(rows[-1]), flush=True)
    for method in official_runs if args.official_src else ():
        rows.append(bench_official(Path(args.official_src), args.preset, method, 64, args.lora_dropout, args.steps,
                                   args.warmup, device))
        print(json.dumps(rows[-1]), flush=True)
        reset_memory(device)
    for row, setup, compile_mode in ours if args.profile and device.type == "cuda" else ():
        row["profile"] = profile(*setup, args.warmup, compile_mode, args.activation_checkpointing, device)
        reset_memory(device)
        print(json.dumps({"method": row["method"], "batch": row["batch"], "profile": row["profile"]}), flush=True)
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else "CPU"
    print(f"\n{args.preset} NitroGen, random weights, bf16 (autocast; +bf16_weights and fsdp rows: "
          f"bf16 weights, float32 masters), {name}")
    print("| method | batch | samples/s | ms/step | ms/step back to back | peak GiB | MFU | first step s |")
    print("|---|---|---|---|---|---|---|---|")
    for r in rows:
        if "error" in r:
            print(f"| {r['method']} | {r['batch']} | {r['error']} | | | | | |")
        else:
            print(f"| {r['method']} | {r['batch']} | {r['samples_per_s']} | {r['ms_per_step']} | "
                  f"{r['ms_per_step_back_to_back']} | {r['peak_gib']} | {r['mfu']} | {r.get('first_step_s', '')} |")
    if args.output:
        Path(args.output).write_text(json.dumps(rows, indent=2))


if __name__ == "__main__":
    main()
