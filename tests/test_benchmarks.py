"""The benchmark scripts run end to end (tiny preset, CPU, one repetition), so a GPU session spends
its minutes measuring rather than finding a broken script. Nothing here is timed."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

BENCHMARKS = Path(__file__).parent.parent / "benchmarks"


def run(script: str, *args: str) -> str:
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    done = subprocess.run([sys.executable, str(BENCHMARKS / script), *args], env=env, capture_output=True,
                          text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    return done.stdout


def test_training_throughput_times_every_method(tmp_path):
    out = tmp_path / "train.json"
    run("training_throughput.py", "--preset", "tiny", "--device", "cpu",
        "--runs", "full:2,full+bf16_weights:2,fsdp:2,lora:2,lora_attention:2,lora_attention+bf16_weights:2,"
        "lora+bf16:2", "--steps", "1", "--warmup", "1", "--output", str(out))
    rows = {row["method"]: row for row in json.loads(out.read_text())}
    assert rows.pop("lora+bf16")["error"].startswith("ValueError: unknown run lora+bf16")
    assert set(rows) == {"full", "full+bf16_weights", "fsdp", "lora", "lora_attention", "lora_attention+bf16_weights"}
    assert all(row["samples_per_s"] > 0 and row["first_step_s"] > 0 and row["ms_per_step_back_to_back"] > 0
               for row in rows.values())
    trainable = {method: row["trainable"] for method, row in rows.items()}
    assert trainable["fsdp"] == trainable["full+bf16_weights"] == trainable["full"] > trainable["lora_attention"]
    assert trainable["lora_attention+bf16_weights"] == trainable["lora_attention"]
    assert trainable["full"] > trainable["lora"]


def test_inference_latency_compares_the_cached_sampler_with_the_naive_loop(tmp_path):
    out = tmp_path / "latency.json"
    run("inference_latency.py", "--preset", "tiny", "--devices", "cpu", "--batch-sizes", "1", "--cpu-iters", "1",
        "--output", str(out))
    rows = {row["variant"]: row for row in json.loads(out.read_text())}
    assert {"naive", "cached"} <= set(rows) and rows["cached"]["max_abs_diff"] <= 1e-5


def test_loader_throughput_reads_windows():
    printed = run("loader_throughput.py", "--frames", "64", "--workers", "0", "--batch-size", "8")
    row = re.search(r"^\| 0 \| (\d+) \|", printed, re.MULTILINE)
    assert row and int(row.group(1)) > 0, printed
