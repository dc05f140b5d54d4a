"""The SigLIP vision tower, built offline from a checkpoint's own tensors.

The released checkpoint names its tower (``google/siglip2-large-patch16-256``) but carries all of
its weights, so nothing needs downloading: widths, depth, patch and image size are read off the
tensors, and the few numbers tensors cannot show (head count, norm epsilon) come from a table of
known SigLIP/SigLIP2 towers. A ``vision_encoder_name`` that is a local folder holding a
transformers ``config.json`` is read from there instead (how small test towers are made).
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from torch import nn
from transformers import SiglipVisionConfig, SiglipVisionModel

VISION_PREFIX = "vision_encoder."
IMAGE_FITS = ("pad", "crop", "stretch")  # how a frame is made square; see fit_square

# The one number a state dict cannot show is the head count. Known SigLIP/SigLIP2 towers by name;
# any other tower falls back to 64-wide heads.
KNOWN_TOWER_HEADS = {
    f"google/{family}-{size}-patch{patch}": heads
    for family in ("siglip", "siglip2")
    for size, heads in (("base", 12), ("large", 16), ("so400m", 16), ("giant-opt", 16))
    for patch in ("14-224", "14-384", "16-224", "16-256", "16-384", "16-512")
}
SIGLIP_LAYER_NORM_EPS = 1e-6
SIGLIP_HIDDEN_ACT = "gelu_pytorch_tanh"

# Whole tower configs by name, so a model can be built with no weights at hand (random-weight
# benchmarks, presets). The first is the released NitroGen tower.
TOWER_CONFIGS = {
    "google/siglip2-large-patch16-256": dict(
        hidden_size=1024, intermediate_size=4096, num_hidden_layers=24, num_attention_heads=16,
        image_size=256, patch_size=16, num_channels=3, layer_norm_eps=SIGLIP_LAYER_NORM_EPS,
        hidden_act=SIGLIP_HIDDEN_ACT,
    ),
    # A 12-layer (the official code freezes layer 11 by index) 64-wide tower for CPU presets.
    # Four 32-pixel patches: each quarter of a small frame is one token, so what a token shows
    # says where it is, and a model trained from scratch in minutes can read positions.
    "nitrogen-finetuner/tiny-siglip-64": dict(
        hidden_size=64, intermediate_size=128, num_hidden_layers=12, num_attention_heads=2,
        image_size=64, patch_size=32, num_channels=3, layer_norm_eps=SIGLIP_LAYER_NORM_EPS,
        hidden_act=SIGLIP_HIDDEN_ACT,
    ),
}


def tower_config_from_state_dict(name: str, state_dict: dict[str, torch.Tensor]) -> SiglipVisionConfig:
    """Reconstruct the tower's config from its tensors (``vision_encoder.*``) and its name."""
    patch = state_dict[VISION_PREFIX + "embeddings.patch_embedding.weight"]
    width, channels, patch_size, _ = patch.shape
    num_positions = state_dict[VISION_PREFIX + "embeddings.position_embedding.weight"].shape[0]
    side = int(round(num_positions**0.5))
    layer_ids = {
        int(m.group(1))
        for key in state_dict
        if (m := re.match(re.escape(VISION_PREFIX) + r"encoder\.layers\.(\d+)\.", key))
    }
    fc1 = state_dict[VISION_PREFIX + "encoder.layers.0.mlp.fc1.weight"]
    return SiglipVisionConfig(
        hidden_size=width,
        intermediate_size=fc1.shape[0],
        num_hidden_layers=len(layer_ids),
        num_attention_heads=KNOWN_TOWER_HEADS.get(name, max(1, width // 64)),
        num_channels=channels,
        image_size=side * patch_size,
        patch_size=patch_size,
        vision_use_head=any(k.startswith(VISION_PREFIX + "head.") for k in state_dict),
        layer_norm_eps=SIGLIP_LAYER_NORM_EPS,
        hidden_act=SIGLIP_HIDDEN_ACT,
    )


def _local_tower_config(name: str) -> SiglipVisionConfig | None:
    config_file = Path(name) / "config.json"
    if not config_file.is_file():
        return None
    raw = json.loads(config_file.read_text())
    if raw.get("model_type") == "siglip" and "vision_config" in raw:
        raw = raw["vision_config"]
    skip = {"model_type", "architectures", "transformers_version", "torch_dtype", "dtype"}
    return SiglipVisionConfig(**{k: v for k, v in raw.items() if not k.startswith("_") and k not in skip})


TOWER_FIELDS = (
    "hidden_size", "intermediate_size", "num_hidden_layers", "num_attention_heads", "num_channels",
    "image_size", "patch_size", "layer_norm_eps", "hidden_act",
)


def tower_record(config: SiglipVisionConfig) -> dict:
    """The tower's hyper-parameters as plain values, stored in the checkpoints we write."""
    return {field: getattr(config, field) for field in TOWER_FIELDS}


def resolve_tower_config(
    name: str, state_dict: dict[str, torch.Tensor] | None = None, recorded: dict | None = None
) -> SiglipVisionConfig:
    """The tower config, never from the network: a local transformers folder, else the record a
    checkpoint of ours carries, else the table of whole configs, else the checkpoint's tensors."""
    config = _local_tower_config(name)
    if config is not None:
        return config
    if recorded:
        return SiglipVisionConfig(**recorded)
    if name in TOWER_CONFIGS:
        return SiglipVisionConfig(**TOWER_CONFIGS[name])
    if state_dict is not None:
        return tower_config_from_state_dict(name, state_dict)
    raise ValueError(
        f"vision tower {name!r}: not a local folder with a config.json, not a known tower "
        f"({', '.join(sorted(TOWER_CONFIGS))}), and no weights to read its shape from"
    )


def build_vision_tower(config: SiglipVisionConfig) -> nn.Module:
    """A randomly initialised SigLIP tower whose parameter names match the official model.

    transformers 4.x nests the transformer under ``SiglipVisionModel.vision_model``; 5.x puts the
    parts on the model itself. Either way the returned module has ``embeddings``, ``encoder``,
    ``post_layernorm`` and ``head`` at its top level, as the official ``vision_encoder`` does.
    """
    config._attn_implementation = "sdpa"
    model = SiglipVisionModel(config)
    return getattr(model, "vision_model", model)


@dataclass(frozen=True)
class ImagePreprocessor:
    """The SigLIP image processor: stretch to ``size`` x ``size`` (bicubic), scale to [-1, 1].

    Matches ``SiglipImageProcessor`` (the processor the official player uses) to float rounding,
    without its per-call overhead. ``fit`` other than ``stretch`` first pads or crops a frame that
    is not square, as a model fine-tuned with that ``data.image_fit`` saw its frames.
    """

    size: int
    mean: tuple[float, float, float] = (0.5, 0.5, 0.5)
    std: tuple[float, float, float] = (0.5, 0.5, 0.5)
    resample: int = Image.Resampling.BICUBIC
    fit: str = "stretch"

    @classmethod
    def for_tower(cls, name: str, config: SiglipVisionConfig) -> "ImagePreprocessor":
        """Read a local ``preprocessor_config.json`` when there is one, else SigLIP defaults."""
        processor_file = Path(name) / "preprocessor_config.json"
        if processor_file.is_file():
            raw = json.loads(processor_file.read_text())
            size = raw.get("size", {}).get("height", config.image_size)
            return cls(
                size=size,
                mean=tuple(raw.get("image_mean", cls.mean)),
                std=tuple(raw.get("image_std", cls.std)),
                resample=raw.get("resample", cls.resample),
            )
        return cls(size=config.image_size)

    def resize(self, image: np.ndarray | Image.Image) -> np.ndarray:
        """A uint8 array (HxWx3 RGB; HxW or HxWx1 grey, HxWx4 RGBA as PIL reads them) or a PIL
        image to a ``size`` x ``size`` x 3 RGB uint8 array."""
        if isinstance(image, np.ndarray):
            channels = image.shape[2] if image.ndim == 3 else 1 if image.ndim == 2 else 0
            if image.dtype != np.uint8 or channels not in (1, 3, 4):
                raise ValueError(f"expected an RGB uint8 HxWx3 image (or HxW grey, HxWx4 RGBA), got {image.dtype} "
                                 f"array of shape {image.shape}")
            image = Image.fromarray(image.reshape(image.shape[:2]) if channels == 1 else image)
        elif not isinstance(image, Image.Image):
            raise TypeError(f"expected an RGB uint8 HxWx3 numpy array or a PIL image, got {type(image).__name__}")
        if 0 in image.size:
            raise ValueError(f"the image is empty ({image.size[0]}x{image.size[1]})")
        image = fit_square(rgb_image(image), self.fit)
        if image.size != (self.size, self.size):
            image = image.resize((self.size, self.size), resample=self.resample, reducing_gap=None)
        return np.asarray(image)

    def normalize(self, images: torch.Tensor) -> torch.Tensor:
        """(B, size, size, 3) uint8 to (B, 3, size, size) float32 pixel values."""
        x = images.permute(0, 3, 1, 2).float() * (1.0 / 255.0)
        # A non-blocking copy: a blocking one would wait for the GPU to finish all earlier work.
        mean = torch.tensor(self.mean, dtype=x.dtype).view(1, 3, 1, 1).to(x.device, non_blocking=True)
        std = torch.tensor(self.std, dtype=x.dtype).view(1, 3, 1, 1).to(x.device, non_blocking=True)
        return (x - mean) / std

    def __call__(self, images: list) -> torch.Tensor:
        """A list of frames to (B, 3, size, size) float32 pixel values."""
        return self.normalize(torch.from_numpy(np.stack([self.resize(im) for im in images])))


def fit_square(image: Image.Image, fit: str) -> Image.Image:
    """Make a frame square: ``pad`` (centred, black borders: how the BizHawk converter stores
    frames), ``crop`` (centre crop) or ``stretch`` (left to the resize, as the official player)."""
    w, h = image.size
    if w == h or fit == "stretch":
        return image
    side = max(w, h) if fit == "pad" else min(w, h)
    if fit == "pad":
        canvas = Image.new("RGB", (side, side))
        canvas.paste(image, ((side - w) // 2, (side - h) // 2))
        return canvas
    if fit == "crop":
        left, top = (w - side) // 2, (h - side) // 2
        return image.crop((left, top, left + side, top + side))
    raise ValueError(f"image_fit must be one of {IMAGE_FITS}, got {fit!r}")


def rgb_image(image: Image.Image) -> Image.Image:
    """Any PIL image as RGB. 16-bit grey (PNGs from capture tools) is scaled to 8 bits, where
    PIL's own conversion would clip it to white."""
    if image.mode in ("I", "I;16", "I;16B", "I;16L"):
        image = Image.fromarray((np.asarray(image, dtype=np.float64) * (255 / 65535)).round().astype(np.uint8))
    return image if image.mode == "RGB" else image.convert("RGB")
