"""A NitroGen policy: game frames in, gamepad action chunks out.

    from nitrogen_finetuner import load_policy
    policy = load_policy("ng.pt", device="cpu")
    out = policy.predict(frame)          # frame: RGB uint8 HxWx3 array or PIL image
    out["buttons"], out["j_left"], out["j_right"], out["raw"]
"""

from __future__ import annotations

import os
import sys
import warnings
from dataclasses import dataclass, field, replace
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path
from typing import Optional, Sequence

import numpy as np
import torch

from .actions import ActionLayout, UniversalVectorProcessor
from .actions.layout import LayoutError
from .data.errors import DataError
from .model.checkpoint import LoadedCheckpoint, load_checkpoint, nonfinite_tensors, save_checkpoint
from .model.configuration import CheckpointConfig
from .model.modeling import NitroGenModel
from .model.sampling import CudaGraphSampler
from .model.vision import IMAGE_FITS, ImagePreprocessor

try:
    __version__ = version("nitrogen-finetuner")
except PackageNotFoundError:  # running from a source tree
    __version__ = "unknown"


@dataclass
class NitroGenPolicy:
    """A loaded checkpoint with its preprocessing and action layout: frames in, actions out."""

    model: NitroGenModel
    config: CheckpointConfig
    raw_config: dict
    preprocessor: ImagePreprocessor
    layout: ActionLayout
    step: int = 0
    epoch: int = 0
    extra: dict = field(default_factory=dict)  # what this tool recorded in the checkpoint
    source: Optional[str] = None  # the file it was loaded from, which its errors name

    def __post_init__(self):
        self.processor = UniversalVectorProcessor(self.layout)
        self._graphs: dict[int, CudaGraphSampler] = {}
        self.use_cuda_graphs = False
        self.compile_for_graphs = False

    # --------------------------------------------------------------------------- properties
    @property
    def device(self) -> torch.device:
        return self.model.action_encoder.W1.W.device

    @property
    def horizon(self) -> int:
        return self.config.model_cfg.action_horizon

    @property
    def action_dim(self) -> int:
        return self.config.model_cfg.action_dim

    # ---------------------------------------------------------------------------- inference
    def preprocess(self, images: Sequence) -> torch.Tensor:
        """Frames -> (B, 3, S, S) float32 pixel values on the policy's device."""
        return self.preprocessor(list(images)).to(self.device)

    def sample(self, pixel_values: torch.Tensor, noise: Optional[torch.Tensor] = None) -> torch.Tensor:
        """Model-space action chunks (B, horizon, action_dim) for preprocessed frames."""
        size = self.model.vision_encoder.config.image_size
        if not isinstance(pixel_values, torch.Tensor) or not pixel_values.is_floating_point() or \
                tuple(pixel_values.shape[1:]) != (3, size, size):
            shown = tuple(pixel_values.shape) if isinstance(pixel_values, torch.Tensor) else type(pixel_values).__name__
            raise ValueError(f"pixel_values: a float tensor (B, 3, {size}, {size}) as preprocess makes it, got {shown}")
        batch = pixel_values.shape[0]
        if noise is None:
            noise = torch.randn(batch, self.horizon, self.action_dim)
        expected = (batch, self.horizon, self.action_dim)
        if tuple(noise.shape) != expected:
            raise ValueError(f"noise must have shape {expected}, got {tuple(noise.shape)}")
        if noise.is_complex() or not noise.is_floating_point() or not torch.isfinite(noise).all():
            raise ValueError("noise must hold finite real floating-point numbers")
        noise = noise.to(self.device, torch.float32)
        if self.use_cuda_graphs:
            if batch not in self._graphs:
                self._graphs[batch] = CudaGraphSampler(self.model, pixel_values, noise, compile=self.compile_for_graphs)
            return self._graphs[batch](pixel_values, noise)
        return self.model.sample_actions(pixel_values, noise)

    def predict_batch(self, images: Sequence, noise: Optional[torch.Tensor] = None) -> dict[str, np.ndarray]:
        """One action chunk per frame: ``raw`` (B, horizon, action_dim), ``j_left``/``j_right``
        (B, horizon, 2) in [-1, 1], ``buttons`` (B, horizon, n_buttons) in {0, 1}. Actions that
        are not finite numbers (broken weights) raise ``DataError`` rather than reach a game."""
        if isinstance(images, (np.ndarray, torch.Tensor, str, bytes)) or not isinstance(images, Sequence):
            raise TypeError(f"predict_batch takes a list of frames, got {type(images).__name__} "
                            "(for one frame, use predict)")
        if not images:
            raise ValueError("predict_batch needs at least one frame")
        raw = self.sample(self.preprocess(images), None if noise is None else _noise_tensor(noise)).cpu()
        require_finite_actions(raw.float().numpy(), self.source)
        decoded = self.processor.unpack(raw)
        return {"raw": raw.numpy(), **{k: v.numpy() for k, v in decoded.items()}}

    def predict(self, image, noise: Optional[torch.Tensor] = None) -> dict[str, np.ndarray]:
        """The action chunk for one frame; ``noise`` (horizon, action_dim) is the Euler start."""
        if noise is not None:
            noise = _noise_tensor(noise)
            if tuple(noise.shape) != (self.horizon, self.action_dim):
                raise ValueError(f"noise must have shape ({self.horizon}, {self.action_dim}), got {tuple(noise.shape)}")
            noise = noise.unsqueeze(0)
        out = self.predict_batch([image], noise)
        return {k: v[0] for k, v in out.items()}

    def enable_cuda_graphs(self, compile: bool = False) -> "NitroGenPolicy":
        """Replay each batch size's whole sampler as one captured CUDA graph (GPU only).

        ``compile=True`` also compiles the per-step modules with torch.compile first (about a
        minute once; the fastest path, see the README's performance table).
        """
        if self.device.type != "cuda":
            raise ValueError("CUDA graphs need the policy on a CUDA device")
        self.use_cuda_graphs = True
        self.compile_for_graphs = compile
        return self

    # ------------------------------------------------------------------------------ output
    def save(self, path: str | os.PathLike, step: Optional[int] = None, epoch: Optional[int] = None) -> Path:
        """Write an official-format checkpoint (the official loader accepts it strictly), with the
        layout and image fit this policy plays with; weights that are not finite numbers are refused."""
        broken = self.nonfinite_weights()
        if broken:
            raise DataError(f"the policy's weight {broken[0]} holds NaN or infinity: it would save a model that "
                            "predicts no numbers", file=str(path))
        lossy = sorted({str(p.dtype).removeprefix("torch.") for p in self.model.parameters()
                        if p.dtype in (torch.bfloat16, torch.float16)})
        if lossy:  # the checkpoint stores float32, but the precision lost in loading is gone for good
            warnings.warn(f"{path}: the policy plays in {', '.join(lossy)}, so the saved weights are rounded to it; "
                          "load it with dtype float32 to save it without loss", stacklevel=2)
        extra = {**self.extra, "version": __version__, "action_layout": self.layout.to_dict(),
                 "image_fit": self.preprocessor.fit}
        return save_checkpoint(
            Path(path).expanduser(), self.model, self.raw_config, extra,
            step=self.step if step is None else step, epoch=self.epoch if epoch is None else epoch,
        )

    def summary(self) -> str:
        cfg, tok, mod = self.config.model_cfg, self.config.tokenizer_cfg, self.config.modality_cfg
        tower = self.model.vision_encoder.config
        n_params = sum(p.numel() for p in self.model.parameters())
        n_visual = tok.num_visual_tokens_per_frame * mod.frame_per_sample
        n_game = 1 if self.model.num_games else 0
        padding = tok.max_sequence_length - n_visual - n_game
        # A shift of 0 cannot be written in the official config: the tool's own record holds it.
        shift = self.extra.get("data_action_shift", mod.action_shift)
        return "\n".join([
            f"NitroGen '{self.config.experiment_name}': {n_params:,} parameters",
            f"  action layout   {self.layout.describe()}",
            f"  action chunk    horizon {cfg.action_horizon}, {cfg.num_inference_timesteps} Euler steps, "
            f"action_shift {shift}",
            f"  VL sequence     max_sequence_length {tok.max_sequence_length} ("
            + ", ".join([*(["1 game token"] if n_game else []), f"{n_visual} visual tokens",
                         *([f"{padding} padding"] if padding > 0 else [])]) + ")",
            f"  vision tower    {cfg.vision_encoder_name}: {tower.num_hidden_layers} layers x {tower.hidden_size}, "
            f"{tower.image_size}px, patch {tower.patch_size}",
            *([f"  fine-tuned      {self.extra['method']} from {self.extra.get('fine_tuned_from', '?')}, "
               f"step {self.step} ({'EMA' if self.extra.get('weights') == 'ema' else 'trained, not EMA'} weights)"]
              if "method" in self.extra else []),
            *([f"  image fit       {self.preprocessor.fit}: a frame that is not square is "
               f"{'padded' if self.preprocessor.fit == 'pad' else 'cropped'} square first, as in fine-tuning (the "
               "official player stretches it)"]
              if self.preprocessor.fit != "stretch" else []),
            *([f"  weights         NOT FINITE: {len(broken)} tensor(s) hold NaN or infinity, so its actions are "
               "not numbers (use an earlier checkpoint of the run)"] if (broken := self.nonfinite_weights()) else []),
        ])

    def nonfinite_weights(self) -> list[str]:
        """The names of the weights that hold NaN or infinity (a diverged run's)."""
        return nonfinite_tensors(self.model.state_dict())


def checkpoint_layout(
    config: CheckpointConfig,
    extra: dict,
    button_order: Optional[str] = None,
    buttons: Optional[Sequence[str]] = None,
) -> ActionLayout:
    """The action layout of a checkpoint: the one this tool recorded in it, else its
    ``action_dim`` and ``old_layout`` with the default button order; arguments override."""
    if buttons is not None and button_order is not None:
        raise LayoutError("give buttons (names in slot order) or button_order (a named order), not both")
    recorded = extra.get("action_layout")
    if recorded and buttons is None and button_order is None:
        buttons, button_order = recorded["buttons"], recorded.get("button_order")
    return ActionLayout.resolve(config.model_cfg.action_dim, config.tokenizer_cfg.old_layout, button_order, buttons)


def require_finite_actions(raw: np.ndarray, checkpoint: Optional[str]) -> None:
    """NaN or infinite actions mean broken weights: one line naming the checkpoint, rather than
    JSON that is not JSON, NaN scores or a game played with them."""
    if not np.isfinite(raw).all():
        raise DataError("the model's actions are not finite numbers (its weights hold NaN or infinity)",
                        file=checkpoint, hint="use an earlier checkpoint of the run, or export it again")


DTYPE_NAMES = {"fp32": "float32", "fp16": "float16", "bf16": "bfloat16"}


def _device(device) -> torch.device:
    """A device this machine has, named in one line otherwise (before a long load)."""
    try:
        device = torch.device(device.lower() if isinstance(device, str) else device)
    except (RuntimeError, TypeError):
        raise ValueError(f"device {device!r}: not a device name (cpu, cuda, cuda:N or mps)") from None
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ValueError(f"device {str(device)!r}: PyTorch sees no CUDA GPU on this machine (use device='cpu')")
    if device.type == "mps" and not torch.backends.mps.is_available():
        raise ValueError(f"device {str(device)!r}: PyTorch sees no Apple GPU on this machine (use device='cpu')")
    if device.type not in ("cpu", "cuda", "mps"):
        raise ValueError(f"device {str(device)!r}: the policy runs on cpu, cuda or mps")
    return device


def _noise_tensor(noise) -> torch.Tensor:
    """A tensor of the noise the caller gave (a tensor, an array, nested lists), or one ValueError."""
    try:
        return torch.as_tensor(noise)
    except (TypeError, ValueError, RuntimeError):
        raise ValueError(f"noise: a tensor or array of numbers, got {type(noise).__name__}") from None


def _dtype(dtype) -> torch.dtype:
    if isinstance(dtype, str):  # "bfloat16", "torch.bfloat16" or "bf16", as configs and command lines write it
        name = dtype.lower().removeprefix("torch.")
        dtype = getattr(torch, DTYPE_NAMES.get(name, name), None)
    if dtype not in (torch.float32, torch.float16, torch.bfloat16, torch.float64):  # float8 has no convolution
        raise ValueError("dtype: torch.float32, torch.bfloat16, torch.float16 or torch.float64 (or its name: "
                         "float32, bfloat16, bf16, ...)")
    return dtype


def load_policy(
    path: str | os.PathLike,
    device: str | torch.device = "cpu",
    dtype: torch.dtype = torch.float32,
    button_order: Optional[str] = None,
    buttons: Optional[Sequence[str]] = None,
    trust_pickle: bool = False,
    verbose: bool = True,
    image_fit: Optional[str] = None,
) -> NitroGenPolicy:
    """Load an official-format checkpoint (``ng.pt`` or one we wrote) as a policy.

    The action layout comes from the checkpoint: the layout recorded by this tool when present,
    else the checkpoint's ``action_dim`` and ``old_layout`` with the default button order;
    ``button_order`` (a name in ``BUTTON_ORDERS``) or ``buttons`` (names in slot order) override it.
    ``image_fit`` (pad, crop or stretch) overrides how frames that are not square are made square
    (the fit the checkpoint was fine-tuned with; stretch, as the official player, for others).
    """
    device = _device(device)
    dtype = _dtype(dtype)
    if image_fit is not None and image_fit not in IMAGE_FITS:
        raise ValueError(f"image_fit {image_fit!r}: one of {', '.join(IMAGE_FITS)}")
    path = Path(path).expanduser()
    loaded: LoadedCheckpoint = load_checkpoint(path, trust_pickle=trust_pickle)
    cfg = loaded.config
    try:
        layout = checkpoint_layout(cfg, loaded.extra, button_order, buttons)
    except LayoutError as err:
        raise LayoutError(f"{path}: {err}") from None
    loaded.model.to(device=device, dtype=dtype)
    preprocessor = loaded.preprocessor if image_fit is None else replace(loaded.preprocessor, fit=image_fit)
    policy = NitroGenPolicy(
        model=loaded.model, config=cfg, raw_config=loaded.raw_config, preprocessor=preprocessor,
        layout=layout, step=loaded.step, epoch=loaded.epoch, extra=loaded.extra, source=str(path),
    )
    if verbose:
        print(f"Loaded {path}\n{policy.summary()}", file=sys.stderr)
    return policy

