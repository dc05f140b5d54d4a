"""FLOPs per training sample and device peaks, for the MFU figure in the logs (nanoGPT style).

The count covers the matrix multiplications, which dominate (attention scores and the patch
embedding are left out): per weight matrix, 2 FLOPs per weight per token it sees in the forward
pass, as many again in backward for the gradient of its input where a gradient flows through it,
and as many again for its own gradient where it trains. So a frozen vision tower (the default
LoRA) runs forward only, a LoRA-adapted tower passes gradients through but computes none for its
frozen weights, and full fine-tuning costs the familiar 6 FLOPs per weight per token. The tests
check the count against ``torch.utils.flop_counter``.
"""

from __future__ import annotations

from typing import Optional

import torch

from ..model.modeling import NitroGenModel

# Dense bf16 tensor-core peaks (FLOP/s) of common training GPUs.
PEAK_BF16 = {"H100": 989e12, "H200": 989e12, "A100": 312e12, "L40S": 362e12, "A10G": 125e12, "RTX 4090": 165e12}


def _trains(module: torch.nn.Module) -> bool:
    return any(p.requires_grad for p in module.parameters())


def _matrix_flops(module: torch.nn.Module, tokens: int, gradient_flows: bool, skip: frozenset = frozenset()) -> int:
    """Forward and backward FLOPs of the weight matrices of ``module`` (but those in ``skip``)."""
    total = 0
    for name, p in module.named_parameters():
        if p.ndim < 2 or "embedding" in name or id(p) in skip:
            continue
        total += 2 * p.numel() * tokens * (1 + gradient_flows + p.requires_grad)
    return total


def flops_per_sample(model: NitroGenModel, horizon: int) -> float:
    """For the model as prepared for training (``requires_grad`` set, adapters in place)."""
    patches, vl_tokens = model.vision_encoder.embeddings.num_patches, model.max_sequence_length
    vision_trains = _trains(model.vision_encoder)
    mixer_flows = vision_trains or _trains(model.vl_self_attention_model)
    dit = model.model
    # The DiT runs on the action tokens, except the keys and values of the VL tokens (cross-attention)
    # and the timestep conditioning, which it computes once per sample.
    context = [m for m in dit.modules() if getattr(m, "is_cross_attention", False)]
    context = [proj for attention in context for proj in (attention.to_k, attention.to_v)]
    per_sample = [dit.timestep_encoder, dit.proj_out_1, *(getattr(block.norm1, "linear", None)
                                                          for block in dit.transformer_blocks)]
    per_sample = [m for m in per_sample if m is not None]
    conditioning_flows = any(_trains(m) for m in per_sample)
    elsewhere = frozenset(id(p) for m in context + per_sample for p in m.parameters())
    return (
        _matrix_flops(model.vision_encoder.encoder, patches, vision_trains)
        + _matrix_flops(model.vl_self_attention_model, vl_tokens, mixer_flows)
        + sum(_matrix_flops(m, vl_tokens, mixer_flows) for m in context)
        + sum(_matrix_flops(m, 1, conditioning_flows) for m in per_sample)
        + _matrix_flops(dit, horizon, True, skip=elsewhere)
        + _matrix_flops(model.action_encoder, horizon, _trains(model.action_encoder))
        + _matrix_flops(model.action_decoder, horizon, True)
    )


def peak_flops(device: torch.device) -> Optional[float]:
    if device.type != "cuda":
        return None
    name = torch.cuda.get_device_name(device)
    return next((peak for key, peak in PEAK_BF16.items() if key in name), None)
