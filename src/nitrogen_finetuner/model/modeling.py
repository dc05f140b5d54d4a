"""The NitroGen model: SigLIP tower, VL mixer, DiT action head, flow-matching loss and sampler.

Parameter names equal the official implementation's (``vision_encoder.*``, ``model.*`` for the DiT,
``vl_self_attention_model.*``, ``action_encoder.*``, ``action_decoder.*``, ``position_embedding``,
``game_embedding``), so official checkpoints load strictly and ours load strictly there.

Behaviours the released weights depend on are kept on purpose:
- the VL sequence is ``max_sequence_length`` long, image tokens right-aligned after zero padding,
  and the padding is attended (the official attention mask is built but never applied);
- flow time: t = (1 - s) * noise_s with s ~ Beta(alpha, beta); discrete timestep int(t * 1000);
- Euler sampling from t = 0 to 1 in ``num_inference_timesteps`` steps of t_i = i / N.
"""

from __future__ import annotations

from typing import Optional

import torch
import torch.nn.functional as F
from torch import nn
from torch.distributions import Beta
from transformers import SiglipVisionConfig

from .action_head import ActionDecoder, ActionEncoder
from .configuration import NitroGenConfig
from .transformer import DiT, TimeConditioning, VLMixer
from .vision import build_vision_tower

# The official code always freezes these (set_trainable_parameters), whatever the tune_* switches.
ALWAYS_FROZEN_VISION_PREFIXES = ("encoder.layers.11.", "head.")


class NitroGenModel(nn.Module):
    # PEFT looks this up on the root module when it wraps transformers parts (transformers 5).
    base_model_prefix = "nitrogen"

    def __init__(
        self,
        config: NitroGenConfig,
        vision_config: SiglipVisionConfig,
        max_sequence_length: int,
        num_games: Optional[int] = None,
    ):
        super().__init__()
        self.config = config
        self.max_sequence_length = max_sequence_length
        if vision_config.hidden_size != config.vision_hidden_size:
            raise ValueError(
                f"vision tower width {vision_config.hidden_size} != vision_hidden_size {config.vision_hidden_size}"
            )
        self.vision_encoder = build_vision_tower(vision_config)
        self.model = DiT(config.diffusion_model_cfg)
        self.vl_self_attention_model = VLMixer(config.vl_self_attention_cfg)
        self.action_encoder = ActionEncoder(config.action_dim, config.hidden_size, config.max_num_embodiments)
        self.action_decoder = ActionDecoder(config.max_num_embodiments, config.hidden_size, config.action_dim)
        if config.add_pos_embed:
            self.position_embedding = nn.Embedding(config.max_seq_len, config.hidden_size)
            nn.init.normal_(self.position_embedding.weight, mean=0.0, std=0.02)
        if num_games:
            # Row 0 is the unconditional game.
            self.game_embedding = nn.Embedding(num_games, config.vision_hidden_size, padding_idx=0)
        self.num_games = num_games
        self.apply_tune_switches()

    @property
    def max_horizon(self) -> Optional[int]:
        """The most action steps the position tables cover (None: no table bounds them)."""
        tables = [self.position_embedding.num_embeddings] if self.config.add_pos_embed else []
        tables += [block.pos_embed.pe.shape[1] for block in self.model.transformer_blocks if block.pos_embed is not None]
        return min(tables, default=None)

    def transformer_layers(self) -> list[nn.Module]:
        """Every layer of the vision tower, the VL mixer and the DiT: where nearly all the compute
        is, and the units that activation checkpointing recomputes and ``compile`` compiles."""
        return [*self.vision_encoder.encoder.layers, *self.vl_self_attention_model.transformer_blocks,
                *self.model.transformer_blocks]

    # ----------------------------------------------------------------------------- training setup
    def apply_tune_switches(self) -> None:
        """``requires_grad`` as the checkpoint's ``tune_*`` switches and the released model say."""
        cfg = self.config
        self.requires_grad_(True)
        for name, param in self.vision_encoder.named_parameters():
            if name.startswith(ALWAYS_FROZEN_VISION_PREFIXES):
                param.requires_grad_(False)
        if not cfg.tune_multi_projector:
            self.action_encoder.requires_grad_(False)
            self.action_decoder.requires_grad_(False)
            if cfg.add_pos_embed:
                self.position_embedding.requires_grad_(False)
        if not cfg.tune_diffusion_model:
            self.model.requires_grad_(False)
        if not cfg.tune_vision_tower:
            self.vision_encoder.requires_grad_(False)
        if not cfg.tune_vl_mixing:
            self.vl_self_attention_model.requires_grad_(False)

    # ------------------------------------------------------------------------------ the pieces
    def encode_images(self, pixel_values: torch.Tensor) -> torch.Tensor:
        """(B, 3, S, S) or (B, frames, 3, S, S) pixel values -> (B, frames * tokens, D) features.

        Runs embeddings, encoder and post-norm only: the pooling head's output is never used.
        """
        batch = pixel_values.shape[0]
        pixels = pixel_values.reshape(-1, *pixel_values.shape[-3:])
        tower = self.vision_encoder
        hidden = tower.embeddings(pixels.to(tower.embeddings.patch_embedding.weight.dtype))
        hidden = tower.encoder(inputs_embeds=hidden).last_hidden_state
        hidden = tower.post_layernorm(hidden)
        return hidden.reshape(batch, -1, hidden.shape[-1])

    def vl_tokens(self, pixel_values: torch.Tensor, game_ids: Optional[torch.Tensor] = None) -> torch.Tensor:
        """The mixed vision-language tokens (B, max_sequence_length, D) the DiT attends to."""
        vision = self.encode_images(pixel_values)
        batch, n_vision, width = vision.shape
        n_game = 1 if self.num_games else 0
        n_pad = self.max_sequence_length - n_vision - n_game
        if n_pad < 0:
            raise ValueError(f"{n_vision + n_game} VL tokens exceed max_sequence_length {self.max_sequence_length}")
        parts = [vision.new_zeros(batch, n_pad, width)]
        if n_game:
            if game_ids is None:
                game_ids = torch.zeros(batch, dtype=torch.long, device=vision.device)
            parts.append(self.game_embedding(game_ids).to(vision.dtype).unsqueeze(1))
        parts.append(vision)
        return self.vl_self_attention_model(torch.cat(parts, dim=1))

    def velocity(
        self,
        actions: torch.Tensor,
        timesteps: torch.Tensor,
        category: torch.Tensor,
        vl_tokens: Optional[torch.Tensor] = None,
        vl_kv: Optional[list] = None,
        conditioning: Optional[TimeConditioning] = None,
    ) -> torch.Tensor:
        """Predicted flow velocity (B, horizon, action_dim) at discrete ``timesteps`` (B,).

        The VL tokens come as ``vl_tokens`` or as their projected ``vl_kv``; ``conditioning``
        is the DiT's precomputed timestep conditioning, when the caller has it.
        """
        x = self.action_encoder(actions, timesteps, category)
        if self.config.add_pos_embed:
            x = x + self.position_embedding.weight[: x.shape[1]].to(x.dtype)
        x = self.model(x, timesteps, context=vl_tokens, context_kv=vl_kv, conditioning=conditioning)
        return self.action_decoder(x, category)[:, -actions.shape[1] :]

    # ----------------------------------------------------------------------------------- loss
    def sample_flow_time(self, batch: int, device: torch.device) -> torch.Tensor:
        beta = Beta(self.config.noise_beta_alpha, self.config.noise_beta_beta)
        return (1 - beta.sample([batch]).to(device)) * self.config.noise_s

    def forward(
        self,
        pixel_values: torch.Tensor,
        actions: torch.Tensor,
        actions_mask: Optional[torch.Tensor],
        noise: torch.Tensor,
        flow_time: torch.Tensor,
        category: Optional[torch.Tensor] = None,
        game_ids: Optional[torch.Tensor] = None,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Flow-matching terms: (sum of masked squared velocity errors, number of masked-in values).

        Returning the two parts lets a trainer normalise by the count over a whole global batch
        (all micro-batches and ranks), so sharding never changes the loss.
        """
        batch = actions.shape[0]
        actions = actions.float()
        if category is None:
            category = torch.zeros(batch, dtype=torch.long, device=actions.device)
        t = flow_time.to(actions.dtype)[:, None, None]
        noisy = (1 - t) * noise + t * actions
        target = actions - noise
        timesteps = (flow_time * self.config.num_timestep_buckets).long()
        vl = self.vl_tokens(pixel_values, game_ids)
        pred = self.velocity(noisy.to(self.action_encoder.W1.W.dtype), timesteps, category, vl_tokens=vl).float()
        mask = torch.ones_like(actions) if actions_mask is None else actions_mask.to(actions.dtype)
        return (F.mse_loss(pred, target, reduction="none") * mask).sum(), mask.sum()

    def compute_loss(
        self,
        pixel_values: torch.Tensor,
        actions: torch.Tensor,
        actions_mask: Optional[torch.Tensor] = None,
        has_real_action: Optional[torch.Tensor] = None,
        noise: Optional[torch.Tensor] = None,
        flow_time: Optional[torch.Tensor] = None,
        category: Optional[torch.Tensor] = None,
        game_ids: Optional[torch.Tensor] = None,
    ) -> torch.Tensor:
        """Masked flow-matching MSE between predicted and true velocity (actions - noise).

        ``actions`` are in model space (B, horizon, action_dim). Noise, then flow time, are drawn
        from the global RNG in that order, as the official ``forward`` does, unless given.
        """
        if noise is None:
            noise = torch.randn_like(actions.float())
        if flow_time is None:
            flow_time = self.sample_flow_time(actions.shape[0], actions.device)
        mask = torch.ones_like(actions, dtype=torch.bool) if actions_mask is None else actions_mask.bool()
        if has_real_action is not None:
            mask = mask & has_real_action.bool()[:, None, None]
        squared, count = self(pixel_values, actions, mask, noise, flow_time, category, game_ids)
        return squared / (count + 1e-6)

    # ------------------------------------------------------------------------------- sampling
    @torch.no_grad()
    def sample_actions(
        self,
        pixel_values: torch.Tensor,
        noise: Optional[torch.Tensor] = None,
        category: Optional[torch.Tensor] = None,
        game_ids: Optional[torch.Tensor] = None,
    ) -> torch.Tensor:
        """Euler-integrate the flow from noise to an action chunk (B, horizon, action_dim), float32.

        The vision tower, the VL mixer, the cross-attention keys/values of the VL tokens and the
        timestep conditioning of all steps are computed once per chunk; only the action tokens go
        through the DiT at each step. The Euler state stays float32 whatever the weights' dtype.
        """
        cfg = self.config
        batch = pixel_values.shape[0]
        device = pixel_values.device
        if noise is None:
            noise = torch.randn(batch, cfg.action_horizon, cfg.action_dim, device=device)
        if category is None:
            category = torch.zeros(batch, dtype=torch.long, device=device)
        vl_kv = self.model.context_key_values(self.vl_tokens(pixel_values, game_ids))
        steps = cfg.num_inference_timesteps
        step_times = [int(i / float(steps) * cfg.num_timestep_buckets) for i in range(steps)]
        # Built with fill kernels, not a host copy, so the sampler can be captured in a CUDA graph.
        all_steps = torch.cat([torch.full((1,), t, dtype=torch.long, device=device) for t in step_times])
        conditioning = self.model.conditioning(all_steps)
        dtype = self.action_encoder.W1.W.dtype
        actions = noise.to(device=device, dtype=torch.float32)
        for i, t in enumerate(step_times):
            timesteps = torch.full((batch,), t, dtype=torch.long, device=device)
            v = self.velocity(actions.to(dtype), timesteps, category, vl_kv=vl_kv, conditioning=conditioning.step(i))
            actions = actions + (1.0 / steps) * v.float()
        return actions
