"""The FLOP count behind the logged MFU, against PyTorch's own counter of a real training step."""

from __future__ import annotations

import pytest
import torch
from torch.utils.flop_counter import FlopCounterMode

from nitrogen_finetuner.model.presets import build_preset
from nitrogen_finetuner.training.adapters import prepare_trainable
from nitrogen_finetuner.training.config import LoraConfig, TuneConfig
from nitrogen_finetuner.training.throughput import flops_per_sample

SETUPS = {
    "full": ("full", LoraConfig(), None),
    "default LoRA": ("lora", LoraConfig(), None),
    "LoRA on every attention projection": (
        "lora", LoraConfig(targets=["dit_attention", "vl_mixer_attention", "vision_tower_attention"]), None),
    "full, frozen tower": ("full", LoraConfig(), TuneConfig(vision_tower=False)),
    "action head only": ("full", LoraConfig(), TuneConfig(vision_tower=False, vl_mixing=False, diffusion_model=False)),
}


def counted_matmul_flops(method: str, lora: LoraConfig, tune) -> tuple[float, float]:
    """(PyTorch's count of the matrix multiplications of one sample's forward and backward, ours)."""
    torch.manual_seed(0)
    model, _ = build_preset("tiny")
    cfg = model.config
    module = prepare_trainable(model, method, lora, tune)
    module.train()
    size = model.vision_encoder.config.image_size
    pixels, actions = torch.randn(1, 3, size, size), torch.rand(1, cfg.action_horizon, cfg.action_dim)
    mask, noise = torch.ones_like(actions, dtype=torch.bool), torch.randn_like(actions)
    with FlopCounterMode(display=False) as counter:
        squared, _ = module(pixels, actions, mask, noise, torch.rand(1))
        squared.backward()
    matmuls = sum(flops for op, flops in counter.get_flop_counts()["Global"].items() if "mm" in str(op))
    return matmuls, flops_per_sample(model, cfg.action_horizon)


@pytest.mark.parametrize("setup", SETUPS)
def test_flops_per_sample_counts_the_matrix_multiplications_a_step_runs(setup):
    counted, ours = counted_matmul_flops(*SETUPS[setup])
    assert ours == pytest.approx(counted, rel=0.01)


def test_frozen_weights_cost_no_weight_gradients():
    full, lora, tower_frozen = (counted_matmul_flops(*SETUPS[s])[1]
                                for s in ("full", "LoRA on every attention projection", "full, frozen tower"))
    assert tower_frozen < lora < full
