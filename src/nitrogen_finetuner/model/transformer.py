"""Transformer blocks of the NitroGen action head, in plain PyTorch.

Module and parameter names reproduce the layout the released weights were saved with (the
official code builds these blocks from diffusers parts), so ``ng.pt`` loads with ``strict=True``:
``attn1.to_q/to_k/to_v/to_out.0``, ``ff.net.0.proj``/``ff.net.2``, ``norm1``/``norm3``,
``pos_embed.pe``, ``timestep_encoder.timestep_embedder.linear_1/linear_2``.

Cross-attention can take precomputed keys and values (``KeyValue``): the VL tokens do not change
during sampling, so the sampler projects them once per chunk instead of at every Euler step.
"""

from __future__ import annotations

import math
from typing import NamedTuple, Optional

import torch
import torch.nn.functional as F
from torch import nn

from .configuration import DiTConfig, VLMixerConfig


class KeyValue(NamedTuple):
    """Projected keys and values, (B, heads, S, head_dim) each."""

    key: torch.Tensor
    value: torch.Tensor


class Attention(nn.Module):
    """Multi-head (self or cross) attention with scaled_dot_product_attention."""

    def __init__(self, dim: int, heads: int, head_dim: int, dropout: float, bias: bool, context_dim: Optional[int]):
        super().__init__()
        inner = heads * head_dim
        self.heads = heads
        self.is_cross_attention = context_dim is not None
        self.to_q = nn.Linear(dim, inner, bias=bias)
        self.to_k = nn.Linear(context_dim or dim, inner, bias=bias)
        self.to_v = nn.Linear(context_dim or dim, inner, bias=bias)
        self.to_out = nn.ModuleList([nn.Linear(inner, dim, bias=True), nn.Dropout(dropout)])

    def _split_heads(self, x: torch.Tensor) -> torch.Tensor:
        b, n, _ = x.shape
        return x.view(b, n, self.heads, -1).transpose(1, 2)

    def project_key_value(self, context: torch.Tensor) -> KeyValue:
        return KeyValue(self._split_heads(self.to_k(context)), self._split_heads(self.to_v(context)))

    def forward(self, x: torch.Tensor, context: Optional[torch.Tensor] = None, kv: Optional[KeyValue] = None):
        if kv is None:
            kv = self.project_key_value(x if context is None else context)
        q = self._split_heads(self.to_q(x))
        if kv.key.shape[0] != q.shape[0]:
            kv = KeyValue(kv.key.expand(q.shape[0], -1, -1, -1), kv.value.expand(q.shape[0], -1, -1, -1))
        out = F.scaled_dot_product_attention(q, kv.key.to(q.dtype), kv.value.to(q.dtype))
        out = out.transpose(1, 2).flatten(2)
        return self.to_out[1](self.to_out[0](out))


class TimeConditioning(NamedTuple):
    """Per-block AdaLN modulations and the output modulation for a set of timesteps."""

    modulations: list[Optional[torch.Tensor]]
    output: torch.Tensor

    def step(self, i: int) -> "TimeConditioning":
        """The conditioning of the i-th timestep, as a batch of one."""
        return TimeConditioning([m if m is None else m[i : i + 1] for m in self.modulations], self.output[i : i + 1])


class GELUProjection(nn.Module):
    """Linear then tanh-approximated GELU (``ff.net.0``; its weights are ``proj``)."""

    def __init__(self, dim_in: int, dim_out: int, bias: bool, approximate: str):
        super().__init__()
        self.proj = nn.Linear(dim_in, dim_out, bias=bias)
        self.approximate = approximate

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.gelu(self.proj(x), approximate=self.approximate)


_ACTIVATIONS = {"gelu": "none", "gelu-approximate": "tanh"}


class FeedForward(nn.Module):
    def __init__(self, dim: int, dropout: float, activation_fn: str, final_dropout: bool, bias: bool = True):
        super().__init__()
        if activation_fn not in _ACTIVATIONS:
            raise ValueError(f"unsupported activation_fn {activation_fn!r}; supported: {sorted(_ACTIVATIONS)}")
        inner = 4 * dim
        layers = [GELUProjection(dim, inner, bias, _ACTIVATIONS[activation_fn]), nn.Dropout(dropout), nn.Linear(inner, dim, bias=bias)]
        if final_dropout:
            layers.append(nn.Dropout(dropout))
        self.net = nn.ModuleList(layers)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for layer in self.net:
            x = layer(x)
        return x


class SinusoidalPositions(nn.Module):
    """Fixed sin/cos table added to the normed tokens (a persistent ``pe`` buffer)."""

    def __init__(self, dim: int, max_len: int):
        super().__init__()
        position = torch.arange(max_len).unsqueeze(1)
        div_term = torch.exp(torch.arange(0, dim, 2) * (-math.log(10000.0) / dim))
        pe = torch.zeros(1, max_len, dim)
        pe[0, :, 0::2] = torch.sin(position * div_term)
        pe[0, :, 1::2] = torch.cos(position * div_term)
        self.register_buffer("pe", pe)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.pe[:, : x.shape[1]].to(x.dtype)


class AdaLayerNorm(nn.Module):
    """LayerNorm without affine weights, scaled and shifted by the timestep embedding."""

    def __init__(self, dim: int, eps: float = 1e-5):
        super().__init__()
        self.linear = nn.Linear(dim, 2 * dim)
        self.norm = nn.LayerNorm(dim, eps=eps, elementwise_affine=False)

    def modulation(self, temb: torch.Tensor) -> torch.Tensor:
        return self.linear(F.silu(temb))

    def forward(self, x: torch.Tensor, modulation: torch.Tensor) -> torch.Tensor:
        scale, shift = modulation.chunk(2, dim=-1)
        return self.norm(x) * (1 + scale[:, None]) + shift[:, None]


class TransformerBlock(nn.Module):
    """Attention then feed-forward, each pre-normed and residual.

    With ``ada_norm`` the first norm is modulated by the timestep (DiT); otherwise it is a plain
    LayerNorm (VL mixer). Sinusoidal positions, when configured, are added after the first norm.
    """

    def __init__(
        self,
        dim: int,
        heads: int,
        head_dim: int,
        dropout: float,
        bias: bool,
        activation_fn: str,
        norm_type: str,
        norm_affine: bool,
        norm_eps: float,
        final_dropout: bool,
        positional_embeddings: Optional[str],
        max_positions: int,
        context_dim: Optional[int] = None,
    ):
        super().__init__()
        if positional_embeddings not in (None, "sinusoidal"):
            raise ValueError(f"unsupported positional_embeddings {positional_embeddings!r}")
        if norm_type not in ("ada_norm", "layer_norm"):
            raise ValueError(f"unsupported norm_type {norm_type!r}; supported: ada_norm, layer_norm")
        self.uses_ada_norm = norm_type == "ada_norm"
        self.pos_embed = SinusoidalPositions(dim, max_positions) if positional_embeddings else None
        if self.uses_ada_norm:
            self.norm1 = AdaLayerNorm(dim)
        else:
            self.norm1 = nn.LayerNorm(dim, eps=norm_eps, elementwise_affine=norm_affine)
        self.attn1 = Attention(dim, heads, head_dim, dropout, bias, context_dim)
        self.norm3 = nn.LayerNorm(dim, eps=norm_eps, elementwise_affine=norm_affine)
        self.ff = FeedForward(dim, dropout, activation_fn, final_dropout)
        self.final_dropout = nn.Dropout(dropout) if final_dropout else None

    def forward(
        self,
        x: torch.Tensor,
        modulation: Optional[torch.Tensor] = None,
        context: Optional[torch.Tensor] = None,
        kv: Optional[KeyValue] = None,
    ) -> torch.Tensor:
        h = self.norm1(x, modulation) if self.uses_ada_norm else self.norm1(x)
        if self.pos_embed is not None:
            h = self.pos_embed(h)
        h = self.attn1(h, context=context, kv=kv)
        if self.final_dropout is not None:
            h = self.final_dropout(h)
        x = x + h
        return x + self.ff(self.norm3(x))


class TimestepEncoder(nn.Module):
    """Discrete timestep -> 256 sin/cos features ([cos, sin], shift 1) -> 2-layer SiLU MLP."""

    num_channels = 256

    def __init__(self, dim: int):
        super().__init__()
        self.timestep_embedder = nn.Module()
        self.timestep_embedder.linear_1 = nn.Linear(self.num_channels, dim)
        self.timestep_embedder.linear_2 = nn.Linear(dim, dim)

    def features(self, timesteps: torch.Tensor) -> torch.Tensor:
        half = self.num_channels // 2
        exponent = -math.log(10000) * torch.arange(half, dtype=torch.float32, device=timesteps.device) / (half - 1)
        angles = timesteps[:, None].float() * torch.exp(exponent)[None, :]
        return torch.cat([torch.cos(angles), torch.sin(angles)], dim=-1)

    def forward(self, timesteps: torch.Tensor) -> torch.Tensor:
        emb = self.timestep_embedder
        x = self.features(timesteps).to(emb.linear_1.weight.dtype)
        return emb.linear_2(F.silu(emb.linear_1(x)))


def _block(cfg, dim: int, norm_type: str, norm_affine: bool, norm_eps: float, context_dim: Optional[int]):
    return TransformerBlock(
        dim,
        cfg.num_attention_heads,
        cfg.attention_head_dim,
        dropout=cfg.dropout,
        bias=cfg.attention_bias,
        activation_fn=cfg.activation_fn,
        norm_type=norm_type,
        norm_affine=norm_affine,
        norm_eps=norm_eps,
        final_dropout=cfg.final_dropout,
        positional_embeddings=cfg.positional_embeddings,
        max_positions=cfg.max_num_positional_embeddings,
        context_dim=context_dim,
    )


class VLMixer(nn.Module):
    """Self-attention over the vision-language tokens before the DiT reads them."""

    def __init__(self, cfg: VLMixerConfig):
        super().__init__()
        self.transformer_blocks = nn.ModuleList(
            _block(cfg, cfg.inner_dim, "layer_norm", True, 1e-5, None) for _ in range(cfg.num_layers)
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for block in self.transformer_blocks:
            x = block(x)
        return x


class DiT(nn.Module):
    """Diffusion Transformer over the action tokens, conditioned on the timestep and VL tokens.

    With ``interleave_self_attention`` even blocks cross-attend to the VL tokens and odd blocks
    self-attend; otherwise every block cross-attends.
    """

    def __init__(self, cfg: DiTConfig):
        super().__init__()
        dim = cfg.inner_dim
        self.cross_attends = [
            not (cfg.interleave_self_attention and idx % 2 == 1) for idx in range(cfg.num_layers)
        ]
        self.timestep_encoder = TimestepEncoder(dim)
        self.transformer_blocks = nn.ModuleList(
            _block(
                cfg, dim, cfg.norm_type, cfg.norm_elementwise_affine, cfg.norm_eps,
                cfg.cross_attention_dim if cross else None,
            )
            for cross in self.cross_attends
        )
        self.norm_out = nn.LayerNorm(dim, elementwise_affine=False, eps=1e-6)
        self.proj_out_1 = nn.Linear(dim, 2 * dim)
        self.proj_out_2 = nn.Linear(dim, cfg.output_dim)

    def context_key_values(self, context: torch.Tensor) -> list[Optional[KeyValue]]:
        """Keys and values of the VL tokens for each cross-attending block (None elsewhere)."""
        return [
            block.attn1.project_key_value(context) if cross else None
            for block, cross in zip(self.transformer_blocks, self.cross_attends)
        ]

    def conditioning(self, timesteps: torch.Tensor) -> TimeConditioning:
        """Everything the DiT derives from the timestep alone, for (N,) discrete timesteps."""
        temb = self.timestep_encoder(timesteps)
        modulations = [block.norm1.modulation(temb) if block.uses_ada_norm else None for block in self.transformer_blocks]
        return TimeConditioning(modulations, self.proj_out_1(F.silu(temb)))

    def forward(
        self,
        x: torch.Tensor,
        timesteps: Optional[torch.Tensor] = None,
        context: Optional[torch.Tensor] = None,
        context_kv: Optional[list[Optional[KeyValue]]] = None,
        conditioning: Optional[TimeConditioning] = None,
    ) -> torch.Tensor:
        """x (B, T, dim); timesteps (B,) discrete, or their precomputed ``conditioning``
        (batch 1 broadcasts); the VL tokens as ``context`` or as ``context_kv``."""
        if conditioning is None:
            conditioning = self.conditioning(timesteps)
        blocks = zip(self.transformer_blocks, self.cross_attends, conditioning.modulations)
        for idx, (block, cross, modulation) in enumerate(blocks):
            if not cross:
                x = block(x, modulation)
            elif context_kv is not None:
                x = block(x, modulation, kv=context_kv[idx])
            else:
                x = block(x, modulation, context=context)
        shift, scale = conditioning.output.chunk(2, dim=-1)
        x = self.norm_out(x) * (1 + scale[:, None]) + shift[:, None]
        return self.proj_out_2(x)
