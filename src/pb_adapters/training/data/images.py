"""Reading images: RGB conversion, decoding files and ``datasets`` cells, quick header checks.

Every image is checked against a pixel bound (:data:`DEFAULT_MAX_IMAGE_PIXELS`, configurable)
from its header, before it is decoded: a 13000 x 13000 image would take half a gigabyte once
decoded, so it is refused with a :class:`~pb_adapters.training.errors.DataError` instead.
PIL's own decompression-bomb check (``PIL.Image.MAX_IMAGE_PIXELS``; twice that is an error)
still applies beyond it.
"""

from __future__ import annotations

import contextlib
import io
import os
import warnings
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image, UnidentifiedImageError

from pb_adapters.training.errors import DataError

__all__ = [
    "DEFAULT_MAX_IMAGE_PIXELS",
    "IMAGE_ERRORS",
    "IMAGE_EXTENSIONS",
    "check_image_file",
    "check_image_size",
    "coerce_image",
    "open_image",
    "to_rgb",
]

#: The largest image (width x height) read by default: 8192 x 8192, 192 MiB once decoded as RGB.
DEFAULT_MAX_IMAGE_PIXELS = 8192 * 8192

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


def check_image_size(size: tuple[int, int], max_pixels: int | None, where: str) -> None:
    """Refuse an image of ``size`` (width, height) above ``max_pixels`` (``None``: no bound).

    Raises:
        DataError: naming ``where`` and the bound.
    """
    width, height = size
    if max_pixels is not None and width * height > max_pixels:
        raise DataError(
            f"{where} is {width} x {height} = {width * height:,} pixels, more than the bound of "
            f"{max_pixels:,} (raise it with max_image_pixels / --max-image-pixels, or shrink "
            "the image)"
        )


@contextlib.contextmanager
def _opened(source: Any, max_pixels: int | None, where: str) -> Iterator[Image.Image]:
    """``Image.open(source)`` (header only) checked against the pixel bound; PIL's own bomb
    error counts as too large as well."""
    try:
        with warnings.catch_warnings():
            # the bound is checked below; PIL's warning about large images would only repeat it
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            handle = Image.open(source)
    except Image.DecompressionBombError as exc:
        raise DataError(f"{where} is too large to decode: {exc}") from None
    with handle as img:
        check_image_size(img.size, max_pixels, where)
        yield img


def open_image(
    path: str | os.PathLike[str], max_pixels: int | None = DEFAULT_MAX_IMAGE_PIXELS
) -> Image.Image:
    """Open and fully decode ``path`` (so errors surface here, not later in a transform), after
    checking its header's size against ``max_pixels``."""
    with _opened(path, max_pixels, str(path)) as img:
        img.load()
        return img.copy()


def check_image_file(path: Path, max_pixels: int | None = DEFAULT_MAX_IMAGE_PIXELS) -> str | None:
    """Return ``None`` when ``path`` looks like a readable image, else the reason it is not.

    ``Image.verify`` reads the header and checks the structure (PNG chunk CRCs, for example)
    without decoding every pixel, which keeps scanning large folders fast. Files that pass but
    still fail to decode are handled when they are read (see ``ImageClassificationDataset``).

    Raises:
        DataError: the image is larger than ``max_pixels`` (not unreadable: too large to read).
    """
    try:
        with _opened(path, max_pixels, str(path)) as img:
            img.verify()
    except DataError:
        raise  # a ValueError, but not an unreadable file
    except IMAGE_ERRORS as exc:
        return f"{type(exc).__name__}: {exc}"
    return None


def coerce_image(
    value: Any, max_pixels: int | None = DEFAULT_MAX_IMAGE_PIXELS, where: str = "image"
) -> Image.Image:
    """Turn a ``datasets`` image cell into a decoded PIL image (at most ``max_pixels``)."""
    if isinstance(value, Image.Image):
        check_image_size(value.size, max_pixels, where)
        value.load()
        return value
    if isinstance(value, dict):
        if value.get("bytes") is not None:
            with _opened(io.BytesIO(value["bytes"]), max_pixels, where) as img:
                img.load()
                return img.copy()
        if value.get("path"):
            return open_image(value["path"], max_pixels)
        raise ValueError("image cell has neither bytes nor path")
    if isinstance(value, (str, os.PathLike)):
        return open_image(value, max_pixels)
    if isinstance(value, (np.ndarray, torch.Tensor)):
        arr = np.asarray(value)
        if arr.ndim >= 2:
            check_image_size((arr.shape[1], arr.shape[0]), max_pixels, where)
        if arr.dtype != np.uint8:
            arr = np.clip(arr, 0, 255).astype(np.uint8)
        return Image.fromarray(arr)
    raise ValueError(f"unsupported image value of type {type(value).__name__}")
