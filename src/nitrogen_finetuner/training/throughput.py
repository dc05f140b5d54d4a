"""FLOPs per training sample and device peaks, for the MFU figure in the logs (nanoGPT style).

The count covers the matrix multiplications, which dominate: 2 FLOPs per weight per token in
the forward pass; the backward pass costs twice that where gradients flow: a frozen vision tower
(as with the default LoRA) runs forward only, as does a frozen VL mixer above it, for nothing
upstream of them trains.
"""

from __future__ import annotations

from typing import Optional

import torch

from ..model.modeling import NitroGenModel

# Dense bf16 tensor-core peaks (FLOP/s) of common training GPUs.
PEAK_BF16 = {"H100": 989e12, "H200": 989e12, "A100": 312e12, "L40S": 362e12, "A10G": 125e12, "RTX 4090": 165e12}


def _weights(module: torch.nn.Module) -> int:
    return sum(p.numel() for n, p in module.named_parameters() if p.ndim >= 2 and "embedding" not in n)


def _trains(module: torch.nn.Module) -> bool:
    return any(p.requires_grad for p in module.parameters())


def flops_per_sample(model: NitroGenModel, horizon: int) -> float:
    """For the model as prepared for training (``requires_grad`` set, adapters in place)."""
    tokens = model.vision_encoder.embeddings.num_patches
    vision = 2 * _weights(model.vision_encoder.encoder) * tokens
    mixer = 2 * _weights(model.vl_self_attention_model) * model.max_sequence_length
    head = 2 * (_weights(model.model) + _weights(model.action_encoder) + _weights(model.action_decoder)) * horizon
    vision_backward = _trains(model.vision_encoder)
    mixer_backward = vision_backward or _trains(model.vl_self_attention_model)
    return vision * (3 if vision_backward else 1) + mixer * (3 if mixer_backward else 1) + head * 3


def peak_flops(device: torch.device) -> Optional[float]:
    if device.type != "cuda":
        return None
    name = torch.cuda.get_device_name(device)
    return next((peak for key, peak in PEAK_BF16.items() if key in name), None)
