"""Action-chunk latency of the NitroGen policy, at the released size with random weights.

    python benchmarks/inference_latency.py                     # CPU, and the GPU when there is one
    python benchmarks/inference_latency.py --devices cuda --compile --output latency.json
    python benchmarks/inference_latency.py --official-src /path/to/NitroGen   # time the official code too

Variants (each is checked against the plain path of the same dtype, max abs difference):
- ``naive``: the official sampling loop, recomputing the VL mixer and the cross-attention keys
  and values at each Euler step (the reference the cached sampler must equal);
- ``cached``: ``sample_actions`` (vision, VL mixer, K/V and timestep conditioning once per chunk);
- ``bf16``: cached with bfloat16 weights (GPU);
- ``bf16+graph``: the whole chunk replayed as one CUDA graph (GPU);
- ``bf16+compile+graph``: the DiT and action MLPs compiled by torch.compile, then graphed (GPU);
- ``official``: the official ``get_action`` with the same weights (fp32 on CPU; bf16 autocast on
  GPU, as the official server runs it), when ``--official-src`` points at its source.
"""

from __future__ import annotations

import argparse
import copy
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch

from nitrogen_finetuner.model.modeling import NitroGenModel
from nitrogen_finetuner.model.presets import build_preset
from nitrogen_finetuner.model.sampling import CudaGraphSampler


def naive_sample(model: NitroGenModel, pixel_values: torch.Tensor, noise: torch.Tensor) -> torch.Tensor:
    """The official loop: the VL mixer and full cross-attention recomputed at every step."""
    cfg = model.config
    vision = model.encode_images(pixel_values)
    batch, n_vision, width = vision.shape
    pad = vision.new_zeros(batch, model.max_sequence_length - n_vision, width)
    category = torch.zeros(batch, dtype=torch.long, device=pixel_values.device)
    actions = noise.float()
    steps = cfg.num_inference_timesteps
    for i in range(steps):
        t = int(i / float(steps) * cfg.num_timestep_buckets)
        vl = model.vl_self_attention_model(torch.cat([pad, vision], dim=1))
        timesteps = torch.full((batch,), t, dtype=torch.long, device=pixel_values.device)
        v = model.velocity(actions.to(vision.dtype), timesteps, category, vl_tokens=vl)
        actions = actions + (1.0 / steps) * v.float()
    return actions


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize()


def time_fn(fn, device: torch.device, warmup: int, iters: int) -> tuple[list[float], torch.Tensor]:
    with torch.no_grad():
        for _ in range(warmup):
            out = fn()
        sync(device)
        times = []
        for _ in range(iters):
            start = time.perf_counter()
            out = fn()
            sync(device)
            times.append((time.perf_counter() - start) * 1000)
    return times, out


def official_runner(src: Path, model: NitroGenModel, raw_config: dict, device: torch.device):
    """Build the official NitroGen with our weights; return get_action(pixels, seed)."""
    sys.path.insert(0, str(src))
    from nitrogen.flow_matching_transformer.nitrogen import NitroGen, NitroGen_Config  # noqa: PLC0415
    from transformers import SiglipVisionModel  # noqa: PLC0415

    tower_dir = Path(tempfile.mkdtemp()) / "siglip-tower"  # the official code looks for "siglip"
    SiglipVisionModel(model.vision_encoder.config).save_pretrained(tower_dir)
    model_cfg = dict(raw_config["model_cfg"], vision_encoder_name=str(tower_dir))
    official = NitroGen(config=NitroGen_Config.model_validate(model_cfg))
    official.load_state_dict({k: v.float() for k, v in model.state_dict().items()}, strict=True)
    official.to(device).eval()
    horizon = model.config.action_horizon
    length = model.max_sequence_length

    def get_action(pixel_values: torch.Tensor, autocast: bool) -> torch.Tensor:
        batch = pixel_values.shape[0]
        n_vision = model.vision_encoder.embeddings.num_patches
        vl_ids = torch.zeros(batch, length, dtype=torch.long, device=device)
        vl_ids[:, length - n_vision :] = 1
        data = {
            "images": pixel_values.float().unsqueeze(1),
            "vl_token_ids": vl_ids,
            "sa_token_ids": torch.full((batch, horizon), 4, dtype=torch.long, device=device),
            "vl_attn_mask": vl_ids.bool(),
            "dropped_images": torch.zeros(batch, 1, dtype=torch.bool, device=device),
            "embodiment_id": torch.zeros(batch, dtype=torch.long, device=device),
            "game_ids": torch.zeros(batch, dtype=torch.long, device=device),
        }
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=autocast):
            return official.get_action(data)["action_tensor"].float()

    return get_action


def bench_device(args, device: torch.device) -> list[dict]:
    torch.manual_seed(0)
    model, raw = build_preset(args.preset, device=device)
    model.eval()
    size = model.vision_encoder.config.image_size
    cfg = model.config
    is_cuda = device.type == "cuda"
    warmup, iters = (5, args.iters) if is_cuda else (1, args.cpu_iters)
    official = official_runner(Path(args.official_src), model, raw, device) if args.official_src else None
    name = torch.cuda.get_device_name(device) if is_cuda else f"CPU ({torch.get_num_threads()} threads)"
    inputs, outputs, rows = {}, {}, []
    model_bf16 = copy.deepcopy(model).to(torch.bfloat16) if is_cuda else None

    def run(batch, variant, fn, reference):
        times, out = time_fn(fn, device, warmup, iters)
        outputs[batch, variant] = out
        diff = float((out.float() - outputs[batch, reference].float()).abs().max())
        rows.append({
            "device": name, "batch": batch, "variant": variant, "median_ms": round(statistics.median(times), 2),
            "min_ms": round(min(times), 2), "iters": len(times), "reference": reference, "max_abs_diff": diff,
        })
        print(f"  {name} batch {batch} {variant}: {statistics.median(times):.1f} ms (vs {reference}: {diff:.1e})", flush=True)

    for batch in args.batch_sizes:
        pixels = torch.randn(batch, 3, size, size, device=device)
        torch.manual_seed(1)
        noise = torch.randn(batch, cfg.action_horizon, cfg.action_dim, device=device)
        inputs[batch] = pixels, noise
        run(batch, "naive", lambda: naive_sample(model, pixels, noise), "naive")
        run(batch, "cached", lambda: model.sample_actions(pixels, noise), "naive")
        if official is not None:
            def official_fp32():
                torch.manual_seed(1)
                return official(pixels, autocast=False)
            run(batch, "official fp32", official_fp32, "naive")
            if is_cuda:
                def official_bf16():
                    torch.manual_seed(1)
                    return official(pixels, autocast=True)
                run(batch, "official bf16", official_bf16, "naive")
        if is_cuda:
            run(batch, "bf16", lambda: model_bf16.sample_actions(pixels, noise), "naive")
            graph = CudaGraphSampler(model_bf16, pixels, noise)
            run(batch, "bf16+graph", lambda: graph(pixels, noise), "bf16")
            del graph
    if is_cuda and args.compile:
        # Last, because compiling changes the modules in place for the rest of the process.
        for batch in args.batch_sizes:
            pixels, noise = inputs[batch]
            try:
                start = time.perf_counter()
                compiled = CudaGraphSampler(model_bf16, pixels, noise, compile=True)
                print(f"  compiled and captured in {time.perf_counter() - start:.0f} s", flush=True)
                run(batch, "bf16+compile+graph", lambda: compiled(pixels, noise), "bf16")
            except Exception as err:  # report and go on: the other rows are still valid
                print(f"  torch.compile variant failed: {type(err).__name__}: {str(err)[:300]}")
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--preset", default="released")
    parser.add_argument("--devices", default="cpu,cuda", help="comma list; cuda is skipped when absent")
    parser.add_argument("--batch-sizes", default="1,8", type=lambda s: [int(x) for x in s.split(",")])
    parser.add_argument("--iters", type=int, default=50, help="timed repetitions on the GPU")
    parser.add_argument("--cpu-iters", type=int, default=3, help="timed repetitions on the CPU")
    parser.add_argument("--compile", action="store_true", help="also time torch.compile + CUDA graph")
    parser.add_argument("--official-src", help="a checkout of github.com/MineDojo/NitroGen to time as well")
    parser.add_argument("--output", help="write the rows as JSON here")
    args = parser.parse_args()

    rows = []
    for name in args.devices.split(","):
        if name == "cuda" and not torch.cuda.is_available():
            print("no CUDA device: skipping the GPU")
            continue
        rows += bench_device(args, torch.device(name))
    print(f"\n{args.preset} preset, random weights, torch {torch.__version__}")
    print("| device | batch | variant | median ms | min ms | vs | max abs diff |")
    print("|---|---|---|---|---|---|---|")
    for r in rows:
        print(f"| {r['device']} | {r['batch']} | {r['variant']} | {r['median_ms']} | {r['min_ms']} | "
              f"{r['reference']} | {r['max_abs_diff']:.2e} |")
    if args.output:
        Path(args.output).write_text(json.dumps(rows, indent=2))


if __name__ == "__main__":
    main()
