"""Labelled image datasets: files on disk, arrays in memory, a ``datasets`` split."""

from __future__ import annotations

import os
import warnings
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np
from PIL import Image
from torch.utils.data import Dataset

from pb_adapters.errors import PbAdaptersError
from pb_adapters.training.data.images import IMAGE_ERRORS, coerce_image, open_image, to_rgb

__all__ = [
    "ArrayImageDataset",
    "DataError",
    "HFImageDataset",
    "ImageClassificationDataset",
    "ImageFileDataset",
]


class DataError(PbAdaptersError, ValueError):
    """A data set could not be read or does not have the expected layout."""


def _check_labels(labels: Sequence[Any]) -> list[int]:
    """Labels as Python ints; refuse anything but non-negative integers (1.5, -1, None, "3")."""
    out: list[int] = []
    for i, x in enumerate(labels):
        if isinstance(x, bool) or not isinstance(x, int | np.integer) or x < 0:
            raise DataError(f"label {i} is {x!r}; labels must be class indices 0, 1, 2, ...")
        out.append(int(x))
    return out


class ImageClassificationDataset(Dataset):
    """Base class: a list of labelled images that yields ``(transform(rgb_image), label)``.

    Subclasses implement :meth:`load_image` and :meth:`select`. Without a transform the RGB PIL
    image itself is returned. When an image cannot be decoded, a strict dataset raises
    :class:`DataError`; otherwise the image is counted in :attr:`num_skipped`, a warning is issued
    and the next readable image is returned in its place (so batches keep their size).
    """

    def __init__(
        self,
        labels: Sequence[int],
        transform: Callable[[Image.Image], Any] | None = None,
        strict: bool = False,
    ) -> None:
        self.labels: list[int] = _check_labels(labels)
        self.transform = transform
        self.strict = strict
        self.num_skipped = 0
        self._bad: set[int] = set()

    def __len__(self) -> int:
        return len(self.labels)

    def load_image(self, index: int) -> Image.Image:
        """Return image ``index`` as a PIL image (any mode)."""
        raise NotImplementedError

    def describe(self, index: int) -> str:
        """A short human-readable reference to item ``index`` (used in warnings)."""
        return f"item {index}"

    def select(self, indices: Sequence[int]) -> ImageClassificationDataset:
        """Return a new dataset with the items at ``indices`` (same transform and strictness)."""
        raise NotImplementedError

    def __getitem__(self, index: int) -> tuple[Any, int]:
        n = len(self)
        if index < 0:
            index += n
        for attempt in range(n):
            i = (index + attempt) % n
            if i in self._bad:
                continue
            try:
                image = to_rgb(self.load_image(i))
            except IMAGE_ERRORS as exc:
                if self.strict:
                    raise DataError(f"cannot read {self.describe(i)}: {exc}") from exc
                self._bad.add(i)
                self.num_skipped += 1
                warnings.warn(
                    f"skipping unreadable image {self.describe(i)} ({type(exc).__name__}: {exc})",
                    stacklevel=2,
                )
                continue
            out = self.transform(image) if self.transform is not None else image
            return out, self.labels[i]
        raise DataError("no readable image left in the dataset")

    def class_counts(self, num_classes: int | None = None) -> np.ndarray:
        """Number of items per label."""
        return np.bincount(np.asarray(self.labels, dtype=np.int64), minlength=num_classes or 0)


class ImageFileDataset(ImageClassificationDataset):
    """Images stored as files on disk."""

    def __init__(
        self,
        paths: Sequence[str | os.PathLike[str]],
        labels: Sequence[int],
        transform: Callable[[Image.Image], Any] | None = None,
        strict: bool = False,
    ) -> None:
        if len(paths) != len(labels):
            raise DataError(f"{len(paths)} paths but {len(labels)} labels")
        super().__init__(labels, transform, strict)
        self.paths = [str(p) for p in paths]

    def load_image(self, index: int) -> Image.Image:
        """Open and decode the file at ``self.paths[index]``."""
        return open_image(self.paths[index])

    def describe(self, index: int) -> str:
        """The file path of item ``index``."""
        return self.paths[index]

    def select(self, indices: Sequence[int]) -> ImageFileDataset:
        """Return the subset at ``indices``."""
        return ImageFileDataset(
            [self.paths[i] for i in indices],
            [self.labels[i] for i in indices],
            self.transform,
            self.strict,
        )


class ArrayImageDataset(ImageClassificationDataset):
    """Images held in memory as a uint8 array ``[N, H, W]`` (grayscale) or ``[N, H, W, C]``."""

    def __init__(
        self,
        images: np.ndarray,
        labels: Sequence[int],
        transform: Callable[[Image.Image], Any] | None = None,
        strict: bool = False,
    ) -> None:
        if images.dtype != np.uint8 or images.ndim not in (3, 4):
            raise DataError(
                f"expected uint8 [N,H,W] or [N,H,W,C] images, got {images.dtype} {images.shape}"
            )
        if len(images) != len(labels):
            raise DataError(f"{len(images)} images but {len(labels)} labels")
        super().__init__(labels, transform, strict)
        self.images = images

    def load_image(self, index: int) -> Image.Image:
        """Wrap row ``index`` of the array as a PIL image."""
        arr = self.images[index]
        if arr.ndim == 3 and arr.shape[-1] == 1:
            arr = arr[..., 0]
        return Image.fromarray(np.ascontiguousarray(arr))

    def select(self, indices: Sequence[int]) -> ArrayImageDataset:
        """Return the subset at ``indices``."""
        idx = np.asarray(indices, dtype=np.int64)
        return ArrayImageDataset(
            self.images[idx], [self.labels[i] for i in idx], self.transform, self.strict
        )


class HFImageDataset(ImageClassificationDataset):
    """A split of a Hugging Face ``datasets.Dataset`` with an image column and integer labels.

    The image column may hold decoded PIL images, ``{"bytes", "path"}`` dicts, file paths or
    arrays; ``labels`` are the already-mapped integer labels.
    """

    def __init__(
        self,
        hf_dataset: Any,
        image_column: str,
        labels: Sequence[int],
        transform: Callable[[Image.Image], Any] | None = None,
        strict: bool = False,
    ) -> None:
        if len(hf_dataset) != len(labels):
            raise DataError(f"{len(hf_dataset)} rows but {len(labels)} labels")
        super().__init__(labels, transform, strict)
        self.hf_dataset = hf_dataset.select_columns([image_column])
        self.image_column = image_column

    def load_image(self, index: int) -> Image.Image:
        """Decode the image in row ``index``."""
        value = self.hf_dataset[int(index)][self.image_column]
        return coerce_image(value)

    def describe(self, index: int) -> str:
        """The row number (and file path when the dataset stores one)."""
        return f"row {index} of column {self.image_column!r}"

    def select(self, indices: Sequence[int]) -> HFImageDataset:
        """Return the subset at ``indices``."""
        idx = [int(i) for i in indices]
        return HFImageDataset(
            self.hf_dataset.select(idx),
            self.image_column,
            [self.labels[i] for i in idx],
            self.transform,
            self.strict,
        )
