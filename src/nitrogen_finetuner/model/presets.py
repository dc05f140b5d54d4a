"""Named ``ckpt_config`` presets for building NitroGen models with random weights.

``released`` is the architecture of NVIDIA's ``ng.pt`` (493,631,513 parameters), for benchmarks
and for checking the arithmetic; ``tiny`` is a small model with the same structure that trains
on a laptop CPU.
"""

from __future__ import annotations

import copy

import torch

from .configuration import CheckpointConfig
from .modeling import NitroGenModel
from .vision import resolve_tower_config


def _transformer(layers: int, heads: int, head_dim: int, **extra) -> dict:
    config = dict(
        num_attention_heads=heads, attention_head_dim=head_dim, output_dim=heads * head_dim,
        num_layers=layers, dropout=0.2, attention_bias=True, activation_fn="gelu-approximate",
        positional_embeddings=None, max_num_positional_embeddings=512, final_dropout=True,
    )
    return {**config, **extra}


def _ckpt_config(name: str, tower: str, width: int, dit: dict, mixer: dict, tokens: int, horizon: int) -> dict:
    return dict(
        experiment_name=name,
        model_cfg=dict(
            add_pos_embed=True, model_dtype="float32", diffusion_model_cfg=dit, vl_self_attention_cfg=mixer,
            hidden_size=width, max_seq_len=1024, action_dim=25, action_horizon=horizon,
            num_inference_timesteps=16, max_num_embodiments=1, vision_encoder_name=tower,
            vision_hidden_size=width,
        ),
        tokenizer_cfg=dict(
            training=False, num_visual_tokens_per_frame=tokens, max_action_dim=25,
            max_sequence_length=tokens, action_horizon=horizon, game_mapping_cfg=None, old_layout=False,
        ),
        modality_cfg=dict(
            frame_per_sample=1, action_per_chunk=horizon, frame_spacing=horizon, action_shift=3,
            action_interleaving=False,
        ),
    )


PRESETS: dict[str, dict] = {
    "released": _ckpt_config(
        "nitrogen-released-architecture",
        "google/siglip2-large-patch16-256",
        width=1024,
        dit=_transformer(8, 16, 64, norm_type="ada_norm", norm_elementwise_affine=False,
                         interleave_self_attention=True, cross_attention_dim=1024),
        mixer=_transformer(4, 16, 64),
        tokens=256,
        horizon=18,
    ),
    "tiny": _ckpt_config(
        "nitrogen-tiny",
        "nitrogen-finetuner/tiny-siglip-64",
        width=64,
        # Sinusoidal positions in every DiT block: with only the learned table (initialised near
        # zero) a small model trained from scratch cannot tell the chunk's steps apart and
        # predicts the same action for all of them.
        dit=_transformer(4, 2, 32, norm_type="ada_norm", norm_elementwise_affine=False,
                         interleave_self_attention=True, cross_attention_dim=64,
                         positional_embeddings="sinusoidal"),
        mixer=_transformer(2, 2, 32),
        tokens=4,
        horizon=18,
    ),
}


def preset_config(name: str) -> dict:
    """A fresh copy of a preset's ``ckpt_config`` dict."""
    if name not in PRESETS:
        raise KeyError(f"unknown preset {name!r}; known: {', '.join(sorted(PRESETS))}")
    return copy.deepcopy(PRESETS[name])


def build_preset(name: str, device: str | torch.device = "cpu") -> tuple[NitroGenModel, dict]:
    """A randomly initialised model of a preset, and its ``ckpt_config`` dict."""
    raw = preset_config(name)
    config = CheckpointConfig.model_validate(raw)
    with torch.device(device):
        model = NitroGenModel(
            config.model_cfg,
            resolve_tower_config(config.model_cfg.vision_encoder_name),
            config.tokenizer_cfg.max_sequence_length,
        )
    return model, raw
