"""Frames: decode whatever the dataset stores, make them square, resize, optionally augment.

Everything here works on uint8 and runs in DataLoader workers; normalisation to the vision
tower's range happens on the training device (``ImagePreprocessor.normalize``).
"""

from __future__ import annotations

import io
import os
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Optional

import numpy as np
from PIL import Image, ImageEnhance

from ..model.vision import fit_square, rgb_image
from .errors import DataError


class ImageDecodeError(ValueError):
    """The stored value is not an image we can read; the caller adds file, row and column."""

    def __init__(self, message: str, not_an_image_type: bool = False):
        super().__init__(message)
        self.not_an_image_type = not_an_image_type  # a list or a number: no row of such a column holds a frame


COMMAND_HINT = "fix or remove the row, or pass --skip-bad-rows"  # data inspect, eval
# A run's windows are fixed: a resume refuses data that lost a row.
TRAINING_HINT = "fix the frame in place, or set data.skip_bad_rows (--skip-bad-rows) to leave it out"


def bad_image_row(err: ImageDecodeError, file: str, row: int, column: str, hint: str = COMMAND_HINT) -> DataError:
    """The one line for a frame that does not decode, wherever it is read (``data inspect``,
    training's loader, ``eval`` and training's sampled validation chunks); ``hint`` says what to do
    where the reader is (``COMMAND_HINT`` or ``TRAINING_HINT``). A value of no image type at all
    says the column holds no frames, which skipping rows would not mend."""
    if err.not_an_image_type:
        hint = "is it the frames' column? set data.image_column (--image-column) to the one that holds them"
    return DataError(str(err), file=file, row=row, column=column, hint=hint)


def decode_image(value: Any, base_dir: Optional[Path] = None) -> Image.Image:
    """An RGB PIL image from an HF Image struct ({"bytes", "path"}), raw PNG/JPEG bytes or a path.

    Relative paths are resolved against ``base_dir`` (the folder of the table that names them).
    """
    if isinstance(value, dict):
        value = value.get("bytes") or value.get("path")
    if value is None:
        raise ImageDecodeError("the image is missing (null)")
    try:
        if isinstance(value, (bytes, bytearray, memoryview)):
            image = Image.open(io.BytesIO(value))
        elif isinstance(value, str):
            path = _frame_path(value, base_dir)
            if not path.is_file() and "\\" in value and os.sep == "/":  # a table written on Windows
                path = _frame_path(value.replace("\\", "/"), base_dir)
            if not path.is_file():
                windows = "; a Windows path? write it with / (relative to the table)" if "\\" in value else ""
                raise ImageDecodeError(f"image file {_frame_path(value, base_dir)} does not exist{windows}")
            image = Image.open(path)
        else:
            raise ImageDecodeError(f"expected image bytes, a path or an Image struct, got {type(value).__name__}",
                                   not_an_image_type=True)
        image.load()
    except ImageDecodeError:
        raise
    except Exception as err:  # PIL raises many types for corrupt data
        reason = re.sub(r" <[^<>]* at 0x[0-9a-f]+>", "", str(err))[:120]  # no "<_io.BytesIO object at 0x7f...>"
        raise ImageDecodeError(f"cannot decode the image ({type(err).__name__}: {reason})") from None
    return rgb_image(image)


def _frame_path(value: str, base_dir: Optional[Path]) -> Path:
    path = Path(value)
    return base_dir / path if not path.is_absolute() and base_dir is not None else path


@dataclass(frozen=True)
class Augmentation:
    """Train-time jitter: a random crop keeping ``crop_scale`` to 1 of each side, then
    brightness, contrast and saturation each scaled by a factor in [1 - jitter, 1 + jitter]."""

    crop_scale: float = 0.9
    jitter: float = 0.1

    def __call__(self, image: Image.Image, rng: np.random.Generator) -> Image.Image:
        w, h = image.size
        scale = rng.uniform(self.crop_scale, 1.0)
        cw, ch = max(1, int(round(w * scale))), max(1, int(round(h * scale)))
        left, top = int(rng.integers(0, w - cw + 1)), int(rng.integers(0, h - ch + 1))
        image = image.crop((left, top, left + cw, top + ch))
        for enhance in (ImageEnhance.Brightness, ImageEnhance.Contrast, ImageEnhance.Color):
            image = enhance(image).enhance(float(rng.uniform(1 - self.jitter, 1 + self.jitter)))
        return image


@dataclass(frozen=True)
class FrameTransform:
    """Decoded frame -> square -> (augment) -> ``size`` x ``size`` uint8 RGB array."""

    size: int
    fit: str = "pad"
    augmentation: Optional[Augmentation] = None
    resample: int = Image.Resampling.BICUBIC

    def __call__(self, image: Image.Image, rng: Optional[np.random.Generator] = None) -> np.ndarray:
        image = fit_square(image, self.fit)
        if self.augmentation is not None and rng is not None:
            image = self.augmentation(image, rng)
        if image.size != (self.size, self.size):
            image = image.resize((self.size, self.size), resample=self.resample, reducing_gap=None)
        return np.array(image, dtype=np.uint8)  # a writable copy: collated into tensors
