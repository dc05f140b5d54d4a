"""FSDP on CPU in one process: what computes in bf16, what stays float32, and the config's limits."""

from __future__ import annotations

import pytest
import torch
import torch.distributed as dist
from torch.distributed.tensor import DTensor

from nitrogen_finetuner.data.errors import DataError
from nitrogen_finetuner.model.presets import build_preset
from nitrogen_finetuner.training.config import resolve_config
from nitrogen_finetuner.training.sharding import full_tensors, shard_like, shard_model


@pytest.fixture
def process_group():
    """shard_model starts a one-process group; end it so later tests start without one."""
    yield
    if dist.is_initialized():
        dist.destroy_process_group()


def tiny_batch(model):
    cfg, size = model.config, model.vision_encoder.config.image_size
    shape = (2, cfg.action_horizon, cfg.action_dim)
    generator = torch.Generator().manual_seed(0)
    return (torch.randn(2, 3, size, size, generator=generator), torch.rand(shape, generator=generator),
            torch.ones(shape, dtype=torch.bool), torch.randn(shape, generator=generator),
            torch.rand(2, generator=generator))


def test_bf16_fsdp_runs_the_transformers_in_bf16_on_float32_master_weights(process_group):
    torch.manual_seed(0)
    model, _ = build_preset("tiny")
    seen: dict[str, tuple[torch.dtype, torch.dtype]] = {}

    def record(name):
        def hook(module, args, out):
            seen[name] = (args[0].dtype, out.dtype)
        return hook

    watched = {
        "patch embedding": model.vision_encoder.embeddings,
        "vision layer norm": model.vision_encoder.encoder.layers[1].layer_norm1,
        "vision post-norm": model.vision_encoder.post_layernorm,
        "VL mixer feed-forward": model.vl_self_attention_model.transformer_blocks[0].ff,
        "DiT layer norm": model.model.transformer_blocks[-1].norm3,
        "action decoder": model.action_decoder,
    }
    for name, module in watched.items():
        module.register_forward_hook(record(name))
    shard_model(model, torch.device("cpu"), "bf16")
    squared, _ = model(*tiny_batch(model))
    squared.backward()

    bf16, fp32 = (torch.bfloat16,) * 2, (torch.float32,) * 2
    assert seen == {"patch embedding": fp32, "vision layer norm": bf16, "vision post-norm": fp32,
                    "VL mixer feed-forward": bf16, "DiT layer norm": bf16, "action decoder": fp32}
    trained = [p for p in model.parameters() if p.requires_grad]
    assert all(isinstance(p, DTensor) and p.dtype == torch.float32 and p.grad.dtype == torch.float32 for p in trained)


def test_full_tensors_and_shard_like_round_trip(process_group):
    torch.manual_seed(0)
    model, _ = build_preset("tiny")
    plain = {k: v.clone() for k, v in model.state_dict().items()}
    shard_model(model, torch.device("cpu"), "no")
    params = dict(model.named_parameters())
    gathered = full_tensors(params)
    assert all(torch.equal(gathered[k], plain[k]) and not isinstance(gathered[k], DTensor) for k in params)
    assert full_tensors(params, keep=False) == {}
    name = "model.proj_out_2.weight"
    resharded = shard_like(params[name], gathered[name] + 1)
    assert isinstance(resharded, DTensor) and torch.equal(resharded.full_tensor(), plain[name] + 1)


def test_a_loaded_tensor_lands_on_the_device_and_dtype_of_an_unsharded_parameter():
    """Checkpoints load onto the CPU: EMA weights resumed on a GPU must move there ("meta" stands in)."""
    reference = torch.empty(3, device="meta", dtype=torch.bfloat16)
    placed = shard_like(reference, torch.ones(3))
    assert placed.device.type == "meta" and placed.dtype == torch.bfloat16


@pytest.mark.parametrize("settings, message", [
    ({"fsdp": True}, "fsdp shards full fine-tuning: set method to full"),
    ({"fsdp": True, "method": "full", "mixed_precision": "fp16"}, "fsdp computes in bf16 or fp32"),
])
def test_fsdp_settings_it_cannot_honour_are_clear_errors(tmp_path, settings, message):
    with pytest.raises(DataError, match=message):
        resolve_config(None, {"data.dataset_name": str(tmp_path), **settings})
