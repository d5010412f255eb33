"""Reading images: RGB conversion, decoding files and ``datasets`` cells, quick header checks."""

from __future__ import annotations

import io
import os
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image, UnidentifiedImageError

__all__ = [
    "IMAGE_ERRORS",
    "IMAGE_EXTENSIONS",
    "check_image_file",
    "coerce_image",
    "open_image",
    "to_rgb",
]

#: File name endings recognised as images in an image folder (compared in lower case).
IMAGE_EXTENSIONS: tuple[str, ...] = (
    ".jpg",
    ".jpeg",
    ".png",
    ".bmp",
    ".gif",
    ".tif",
    ".tiff",
    ".webp",
    ".ppm",
    ".pgm",
    ".pbm",
)

# Errors PIL and the file system raise for unreadable or truncated images.
IMAGE_ERRORS = (
    OSError,
    SyntaxError,
    ValueError,
    UnidentifiedImageError,
    Image.DecompressionBombError,
)


def to_rgb(image: Image.Image, background: tuple[int, int, int] = (255, 255, 255)) -> Image.Image:
    """Return ``image`` as an 8-bit RGB image.

    Transparent images (RGBA, LA, palette with transparency) are composited onto ``background``
    instead of having their alpha dropped (which would turn transparent pixels into arbitrary
    colours, often black). 16-bit and float grayscale images are rescaled to 0-255; CMYK, YCbCr,
    1-bit and palette images go through PIL's own conversion.
    """
    mode = image.mode
    if mode == "RGB":
        return image
    if mode == "P" and "transparency" in image.info:
        image, mode = image.convert("RGBA"), "RGBA"
    if mode in ("RGBA", "LA", "PA", "RGBa", "La"):
        rgba = image.convert("RGBA")
        canvas = Image.new("RGBA", rgba.size, (*background, 255))
        canvas.alpha_composite(rgba)
        return canvas.convert("RGB")
    if mode in ("I", "I;16", "I;16B", "I;16L", "I;16N", "F"):
        arr = np.asarray(image, dtype=np.float64)
        lo, hi = float(arr.min()), float(arr.max())
        arr = (arr - lo) * (255.0 / (hi - lo)) if hi > lo else np.zeros_like(arr)
        return Image.fromarray(arr.round().astype(np.uint8), mode="L").convert("RGB")
    return image.convert("RGB")


def open_image(path: str | os.PathLike[str]) -> Image.Image:
    """Open and fully decode ``path`` (so errors surface here, not later in a transform)."""
    with Image.open(path) as img:
        img.load()
        return img.copy()


def check_image_file(path: Path) -> str | None:
    """Return ``None`` when ``path`` looks like a readable image, else the reason it is not.

    ``Image.verify`` reads the header and checks the structure (PNG chunk CRCs, for example)
    without decoding every pixel, which keeps scanning large folders fast. Files that pass but
    still fail to decode are handled when they are read (see ``ImageClassificationDataset``).
    """
    try:
        with Image.open(path) as img:
            img.verify()
    except IMAGE_ERRORS as exc:
        return f"{type(exc).__name__}: {exc}"
    return None


def coerce_image(value: Any) -> Image.Image:
    """Turn a ``datasets`` image cell into a decoded PIL image."""
    if isinstance(value, Image.Image):
        value.load()
        return value
    if isinstance(value, dict):
        if value.get("bytes") is not None:
            with Image.open(io.BytesIO(value["bytes"])) as img:
                img.load()
                return img.copy()
        if value.get("path"):
            return open_image(value["path"])
        raise ValueError("image cell has neither bytes nor path")
    if isinstance(value, (str, os.PathLike)):
        return open_image(value)
    if isinstance(value, (np.ndarray, torch.Tensor)):
        arr = np.asarray(value)
        if arr.dtype != np.uint8:
            arr = np.clip(arr, 0, 255).astype(np.uint8)
        return Image.fromarray(arr)
    raise ValueError(f"unsupported image value of type {type(value).__name__}")
