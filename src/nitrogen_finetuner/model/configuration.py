"""Typed views of the ``ckpt_config`` dictionary stored in every NitroGen checkpoint.

Field names and defaults follow the released checkpoint format, so a ``ckpt_config`` written by
the official code validates here and the dictionary we write back validates there. Unknown keys
are kept (``extra="allow"``) so a round trip never drops information.
"""

from __future__ import annotations

from typing import Literal, Optional

from pydantic import BaseModel, ConfigDict, Field, model_validator


class _Config(BaseModel):
    model_config = ConfigDict(extra="allow", protected_namespaces=())

    def to_dict(self) -> dict:
        """A plain dict, as PEFT and transformers expect of a ``model.config``."""
        return self.model_dump()


class TransformerConfig(_Config):
    """Fields shared by the DiT and the VL mixer configs."""

    num_attention_heads: int = 8
    attention_head_dim: int = 64
    output_dim: int = 26
    num_layers: int = 12
    dropout: float = 0.1
    attention_bias: bool = True
    activation_fn: str = "gelu-approximate"
    num_embeds_ada_norm: Optional[int] = 1000
    upcast_attention: bool = False
    max_num_positional_embeddings: int = 512
    compute_dtype: str = "float32"
    final_dropout: bool = True
    positional_embeddings: Optional[str] = "sinusoidal"
    interleave_self_attention: bool = False

    @property
    def inner_dim(self) -> int:
        return self.num_attention_heads * self.attention_head_dim


class DiTConfig(TransformerConfig):
    """The flow-matching Diffusion Transformer (``model.*`` in the state dict)."""

    norm_type: str = "ada_norm"
    norm_elementwise_affine: bool = False
    norm_eps: float = 1e-5
    cross_attention_dim: Optional[int] = None


class VLMixerConfig(TransformerConfig):
    """The self-attention stack over the vision tokens (``vl_self_attention_model.*``)."""


class NitroGenConfig(_Config):
    """``ckpt_config["model_cfg"]``: the architecture and its training switches."""

    model_type: str = "nitrogen"
    add_pos_embed: bool = False
    model_dtype: str = "float32"
    diffusion_model_cfg: DiTConfig
    vl_self_attention_cfg: VLMixerConfig
    hidden_size: int = 1024
    max_seq_len: int = 1024
    action_dim: int = Field(ge=1)
    action_horizon: int = Field(ge=1)
    noise_beta_alpha: float = 1.5
    noise_beta_beta: float = 1.0
    noise_s: float = 0.999
    num_timestep_buckets: int = 1000
    num_inference_timesteps: int = Field(ge=1)
    max_num_embodiments: int = 1
    vision_encoder_name: str = "google/siglip-large-patch16-256"
    vision_hidden_size: int = 768
    add_view_embed: bool = False
    tune_vision_tower: bool = True
    tune_mm_projector: bool = True
    tune_diffusion_model: bool = True
    tune_multi_projector: bool = True
    tune_vl_mixing: bool = True

    @model_validator(mode="after")
    def _check_widths(self) -> "NitroGenConfig":
        dit, mixer = self.diffusion_model_cfg, self.vl_self_attention_cfg
        problems = []
        if dit.inner_dim != self.hidden_size:
            problems.append(f"DiT heads x head_dim = {dit.inner_dim} but hidden_size = {self.hidden_size}")
        if dit.output_dim != self.hidden_size:
            problems.append(f"DiT output_dim = {dit.output_dim} but hidden_size = {self.hidden_size}")
        if mixer.inner_dim != self.vision_hidden_size:
            problems.append(
                f"VL mixer heads x head_dim = {mixer.inner_dim} but vision_hidden_size = {self.vision_hidden_size}"
            )
        if dit.cross_attention_dim not in (None, self.vision_hidden_size):
            problems.append(
                f"DiT cross_attention_dim = {dit.cross_attention_dim} but vision_hidden_size = {self.vision_hidden_size}"
            )
        if problems:
            raise ValueError("inconsistent model_cfg: " + "; ".join(problems))
        return self


class GameMappingConfig(_Config):
    src_files: list[str] = Field(default_factory=list)


class TokenizerConfig(_Config):
    """``ckpt_config["tokenizer_cfg"]``: how frames and actions become token sequences."""

    tokenizer_id: Literal["nitrogen"] = "nitrogen"  # the official config allows no other
    training: bool = True
    num_visual_tokens_per_frame: int = 256
    max_action_dim: int = 25
    max_sequence_length: int = 300
    action_horizon: int = 16
    game_mapping_cfg: Optional[GameMappingConfig] = None
    old_layout: bool = False


class ModalityConfig(_Config):
    """``ckpt_config["modality_cfg"]``: how frames and action rows line up in the data."""

    frame_per_sample: int = 1
    frame_spacing: Optional[int] = None
    action_per_chunk: int = 8
    action_shift: int = 1
    action_interleaving: bool = False
    token_set: str = "new"

    @model_validator(mode="after")
    def _defaults(self) -> "ModalityConfig":
        if self.frame_spacing is None:
            self.frame_spacing = self.action_per_chunk
        if self.action_shift < 1:
            raise ValueError("action_shift must be at least 1")
        if self.frame_per_sample != 1:  # the released model's; a frame history is not implemented
            raise ValueError(f"frame_per_sample is {self.frame_per_sample}: this tool runs single-frame models "
                             "(frame_per_sample 1, as released)")
        return self


class CheckpointConfig(_Config):
    """The whole ``ckpt_config`` of an official-format checkpoint."""

    experiment_name: str
    model_cfg: NitroGenConfig
    tokenizer_cfg: TokenizerConfig
    modality_cfg: ModalityConfig

    @model_validator(mode="after")
    def _check_sequence(self) -> "CheckpointConfig":
        tok = self.tokenizer_cfg
        if tok.num_visual_tokens_per_frame * self.modality_cfg.frame_per_sample > tok.max_sequence_length:
            raise ValueError(
                f"{tok.num_visual_tokens_per_frame} visual tokens per frame x "
                f"{self.modality_cfg.frame_per_sample} frames exceed max_sequence_length {tok.max_sequence_length}"
            )
        return self
