"""Tiny NitroGen configurations and deterministic inputs shared by the parity tests.

The same functions produced the golden numbers in ``tests/golden/*.json`` when they were run
against the official implementation (see ``tests/test_official_parity.py`` for the recipe), so
both sides see identical weights, images, noise and training batches without any weights being
committed. Only ``torch`` and ``numpy`` are used here, so the official environment can import it.
"""

from __future__ import annotations

import copy

import numpy as np
import torch

# SigLIP towers need >= 12 layers: the official model freezes encoder layer 11 by name.
TOWERS = {
    "tiny-siglip-32": dict(
        hidden_size=32, intermediate_size=64, num_hidden_layers=12, num_attention_heads=2,
        image_size=32, patch_size=8, num_channels=3,
    ),
    "tiny-siglip-48": dict(
        hidden_size=48, intermediate_size=96, num_hidden_layers=12, num_attention_heads=3,
        image_size=32, patch_size=8, num_channels=3,
    ),
}


def _dit(**overrides):
    cfg = dict(
        num_attention_heads=2, attention_head_dim=16, output_dim=32, num_layers=4, dropout=0.2,
        attention_bias=True, activation_fn="gelu-approximate", num_embeds_ada_norm=1000,
        upcast_attention=False, norm_type="ada_norm", norm_elementwise_affine=False, norm_eps=1e-5,
        max_num_positional_embeddings=64, compute_dtype="float32", final_dropout=True,
        positional_embeddings="sinusoidal", interleave_self_attention=True, cross_attention_dim=32,
    )
    cfg.update(overrides)
    return cfg


def _mixer(**overrides):
    cfg = dict(
        num_attention_heads=2, attention_head_dim=16, output_dim=32, num_layers=2, dropout=0.2,
        attention_bias=True, activation_fn="gelu-approximate", num_embeds_ada_norm=1000,
        upcast_attention=False, max_num_positional_embeddings=64, compute_dtype="float32",
        final_dropout=True, positional_embeddings="sinusoidal", interleave_self_attention=False,
    )
    cfg.update(overrides)
    return cfg


CASES = {
    # Interleaved DiT, sinusoidal position buffers in the DiT and the VL mixer, learned position
    # table on, and a VL sequence (20) longer than the 16 visual tokens: 4 zero padding tokens
    # on the left, which the official model attends because its mask is never applied.
    "interleaved_sinusoidal": dict(
        tower="tiny-siglip-32",
        batch=1,
        ckpt_config=dict(
            experiment_name="tiny-interleaved-sinusoidal",
            model_cfg=dict(
                add_pos_embed=True, model_dtype="float32",
                diffusion_model_cfg=_dit(),
                vl_self_attention_cfg=_mixer(),
                hidden_size=32, max_seq_len=64, action_dim=25, action_horizon=6,
                num_inference_timesteps=4, max_num_embodiments=1,
                vision_encoder_name="TOWER", vision_hidden_size=32,
            ),
            tokenizer_cfg=dict(
                training=False, num_visual_tokens_per_frame=16, max_action_dim=25,
                max_sequence_length=20, action_horizon=6, game_mapping_cfg=None, old_layout=False,
            ),
            modality_cfg=dict(
                frame_per_sample=1, action_per_chunk=6, frame_spacing=6, action_shift=3,
                action_interleaving=False,
            ),
        ),
    ),
    # Plain (cross-attention only) DiT, no sinusoidal buffers, no learned position table, the
    # old [j_left, j_right, buttons] layout, a vision width (48) different from the DiT width
    # (32), and a batch of two frames.
    "plain_old_layout": dict(
        tower="tiny-siglip-48",
        batch=2,
        ckpt_config=dict(
            experiment_name="tiny-plain-old-layout",
            model_cfg=dict(
                add_pos_embed=False, model_dtype="float32",
                diffusion_model_cfg=_dit(
                    num_attention_heads=4, attention_head_dim=8, num_layers=3,
                    positional_embeddings=None, interleave_self_attention=False,
                    cross_attention_dim=48,
                ),
                vl_self_attention_cfg=_mixer(
                    num_attention_heads=3, attention_head_dim=16, output_dim=48,
                    positional_embeddings=None,
                ),
                hidden_size=32, max_seq_len=64, action_dim=25, action_horizon=5,
                num_inference_timesteps=3, max_num_embodiments=1,
                vision_encoder_name="TOWER", vision_hidden_size=48,
            ),
            tokenizer_cfg=dict(
                training=False, num_visual_tokens_per_frame=16, max_action_dim=25,
                max_sequence_length=16, action_horizon=5, game_mapping_cfg=None, old_layout=True,
            ),
            modality_cfg=dict(
                frame_per_sample=1, action_per_chunk=5, frame_spacing=5, action_shift=3,
                action_interleaving=False,
            ),
        ),
    ),
}

WEIGHT_SEED = 1234
NOISE_SEED = 7
LOSS_SEED = 11


def ckpt_config(case: str, tower_path: str) -> dict:
    """The case's checkpoint config with ``vision_encoder_name`` pointing at a local tower."""
    cfg = copy.deepcopy(CASES[case]["ckpt_config"])
    cfg["model_cfg"]["vision_encoder_name"] = tower_path
    return cfg


def seeded_state_dict(template: dict[str, torch.Tensor], seed: int = WEIGHT_SEED) -> dict:
    """Deterministic weights for every floating tensor of ``template``, visited in sorted order.

    Norm weights are drawn around 1 and everything else around 0; the sinusoidal ``pe`` buffers
    and integer buffers are kept as they are, because both implementations compute them.
    """
    g = torch.Generator().manual_seed(seed)
    out = {}
    for name in sorted(template):
        t = template[name]
        if not t.is_floating_point() or name.endswith("pos_embed.pe"):
            out[name] = t.clone()
        elif t.ndim == 1 and "norm" in name and name.endswith(".weight"):
            out[name] = 1.0 + 0.1 * torch.randn(t.shape, generator=g)
        else:
            out[name] = 0.05 * torch.randn(t.shape, generator=g)
    return out


def make_images(case: str, seed: int = 3) -> list[np.ndarray]:
    """Non-square RGB uint8 frames (45x60), one per batch element."""
    rng = np.random.RandomState(seed)
    return [rng.randint(0, 256, size=(45, 60, 3), dtype=np.uint8) for _ in range(CASES[case]["batch"])]


def make_noise(case: str, seed: int = NOISE_SEED) -> torch.Tensor:
    """Start noise exactly as the official ``get_action`` draws it after ``manual_seed(seed)``."""
    mc = CASES[case]["ckpt_config"]["model_cfg"]
    torch.manual_seed(seed)
    return torch.randn(CASES[case]["batch"], mc["action_horizon"], mc["action_dim"])


def make_training_batch(case: str, seed: int = 5) -> dict[str, torch.Tensor]:
    """Model-space targets with masks for the loss parity check.

    ``actions`` is (B, horizon, action_dim) in model space (buttons 0/1, sticks in [0, 1]);
    ``actions_mask`` hides the last two steps of the last sample; ``has_real_action`` is all true.
    """
    mc = CASES[case]["ckpt_config"]["model_cfg"]
    b, h, d = CASES[case]["batch"], mc["action_horizon"], mc["action_dim"]
    g = torch.Generator().manual_seed(seed)
    actions = (torch.rand(b, h, d, generator=g) > 0.7).float()
    actions[..., -4:] = torch.rand(b, h, 4, generator=g)
    mask = torch.ones(b, h, d, dtype=torch.bool)
    mask[-1, -2:] = False
    return {"actions": actions, "actions_mask": mask, "has_real_action": torch.ones(b, dtype=torch.bool)}
