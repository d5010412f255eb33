"""Image classification data for training adapters.

Three sources give the same result, a :class:`DatasetSplits` with ``train``, ``validation`` and
``test`` datasets that yield ``(image_tensor, label)`` pairs:

* an image folder: ``root/<class>/<image>`` or ``root/<split>/<class>/<image>`` with split folders
  named ``train``, ``val``/``valid``/``validation`` and ``test``;
* a Hugging Face ``datasets`` name or a folder written by ``Dataset(Dict).save_to_disk``;
* the offline demo data (``"demo"``): 5,000 MNIST digits, see :mod:`pb_adapters.training.demo`.

Missing splits are carved out of the training data with a deterministic stratified split. Every
image is converted to RGB first (grayscale, RGBA, palette, CMYK, 16-bit ...). Unreadable files are
counted and skipped with a warning, or raise :class:`DataError` in strict mode.

Transforms come from the model's own data configuration (timm's ``pretrained_cfg``, or a
transformers image processor): random resized crop (+ optional horizontal flip) for training,
resize + center crop for evaluation, at a configurable image size.
"""

from __future__ import annotations

import logging
import math
import os
import warnings
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image, UnidentifiedImageError
from torch.utils.data import DataLoader, Dataset

from pb_adapters.errors import PbAdaptersError

logger = logging.getLogger(__name__)

__all__ = [
    "DEMO_DATASET_NAMES",
    "IMAGE_EXTENSIONS",
    "ArrayImageDataset",
    "DataConfig",
    "DataError",
    "DatasetSplits",
    "HFImageDataset",
    "ImageClassificationDataset",
    "ImageFileDataset",
    "build_dataloaders",
    "build_transforms",
    "default_num_workers",
    "load_datasets",
    "load_hf_datasets",
    "load_image_folder",
    "resolve_data_config",
    "scan_image_folder",
    "stratified_split",
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

#: Names accepted by :func:`load_datasets` for the built-in offline demo data.
DEMO_DATASET_NAMES: tuple[str, ...] = ("demo", "mnist-5k", "mnist_5k")

# Folder names recognised as splits in an image folder, mapped to our split names.
_SPLIT_DIR_NAMES = {
    "train": "train",
    "training": "train",
    "val": "validation",
    "valid": "validation",
    "validation": "validation",
    "dev": "validation",
    "test": "test",
    "testing": "test",
}
_HF_SPLIT_NAMES = {
    "train": ("train", "training"),
    "validation": ("validation", "valid", "val", "dev"),
    "test": ("test", "testing"),
}
_IMAGE_COLUMN_GUESSES = ("image", "img", "images", "pixel_values", "picture", "file", "path")
_LABEL_COLUMN_GUESSES = ("label", "labels", "fine_label", "class", "target", "category")

# Errors PIL and the file system raise for unreadable or truncated images.
_IMAGE_ERRORS = (
    OSError,
    SyntaxError,
    ValueError,
    UnidentifiedImageError,
    Image.DecompressionBombError,
)


class DataError(PbAdaptersError, ValueError):
    """A data set could not be read or does not have the expected layout."""


# --------------------------------------------------------------------------------------------
# Images
# --------------------------------------------------------------------------------------------


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


def _open_image(path: str | os.PathLike[str]) -> Image.Image:
    """Open and fully decode ``path`` (so errors surface here, not later in a transform)."""
    with Image.open(path) as img:
        img.load()
        return img.copy()


def _check_image_file(path: Path) -> str | None:
    """Return ``None`` when ``path`` looks like a readable image, else the reason it is not.

    ``Image.verify`` reads the header and checks the structure (PNG chunk CRCs, for example)
    without decoding every pixel, which keeps scanning large folders fast. Files that pass but
    still fail to decode are handled when they are read (see ``ImageClassificationDataset``).
    """
    try:
        with Image.open(path) as img:
            img.verify()
    except _IMAGE_ERRORS as exc:
        return f"{type(exc).__name__}: {exc}"
    return None


# --------------------------------------------------------------------------------------------
# Datasets
# --------------------------------------------------------------------------------------------


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
            except _IMAGE_ERRORS as exc:
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
        return _open_image(self.paths[index])

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
        return _coerce_image(value)

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


def _coerce_image(value: Any) -> Image.Image:
    """Turn a ``datasets`` image cell into a decoded PIL image."""
    if isinstance(value, Image.Image):
        value.load()
        return value
    if isinstance(value, dict):
        if value.get("bytes") is not None:
            import io

            with Image.open(io.BytesIO(value["bytes"])) as img:
                img.load()
                return img.copy()
        if value.get("path"):
            return _open_image(value["path"])
        raise ValueError("image cell has neither bytes nor path")
    if isinstance(value, (str, os.PathLike)):
        return _open_image(value)
    if isinstance(value, (np.ndarray, torch.Tensor)):
        arr = np.asarray(value)
        if arr.dtype != np.uint8:
            arr = np.clip(arr, 0, 255).astype(np.uint8)
        return Image.fromarray(arr)
    raise ValueError(f"unsupported image value of type {type(value).__name__}")


# --------------------------------------------------------------------------------------------
# Splits
# --------------------------------------------------------------------------------------------


def stratified_split(
    labels: Sequence[int], fractions: Sequence[float], seed: int = 0
) -> list[np.ndarray]:
    """Split item indices into ``len(fractions)`` parts, class by class, deterministically.

    Each class's indices are shuffled with ``numpy.random.default_rng(seed)`` (classes in
    ascending order, so the result depends only on labels, fractions and seed) and cut by the
    fractions, rounding per class; the first part receives the remainder. Every class keeps at
    least one item in the first part. Returned index arrays are sorted.
    """
    fractions = [float(f) for f in fractions]
    if any(f < 0 for f in fractions) or not math.isclose(sum(fractions), 1.0, abs_tol=1e-6):
        raise DataError(f"split fractions must be >= 0 and sum to 1, got {fractions}")
    labels_arr = np.asarray(labels, dtype=np.int64)
    rng = np.random.default_rng(seed)
    parts: list[list[np.ndarray]] = [[] for _ in fractions]
    for cls in np.unique(labels_arr):
        idx = np.flatnonzero(labels_arr == cls)
        idx = idx[rng.permutation(len(idx))]
        n = len(idx)
        sizes = [round(n * f) for f in fractions[1:]]
        # Keep at least one item of every class in the first (training) part.
        while sum(sizes) > n - 1 and any(sizes):
            j = int(np.argmax(sizes))
            sizes[j] -= 1
        sizes = [n - sum(sizes), *sizes]
        start = 0
        for p, size in enumerate(sizes):
            parts[p].append(idx[start : start + size])
            start += size
    return [np.sort(np.concatenate(p)) if p else np.zeros(0, dtype=np.int64) for p in parts]


@dataclass
class DatasetSplits:
    """Train, validation and test datasets of one classification task.

    Attributes:
        train / validation / test: the datasets; each yields ``(image, label)``.
        id2label: label names by class index (keys are ``int``).
        name: a short name for the data (recorded in the adapter's artifact).
        notes: how the splits were obtained (e.g. "validation carved from train").
    """

    train: ImageClassificationDataset
    validation: ImageClassificationDataset
    test: ImageClassificationDataset
    id2label: dict[int, str]
    name: str = "dataset"
    notes: list[str] = field(default_factory=list)

    @property
    def num_labels(self) -> int:
        """Number of classes."""
        return len(self.id2label)

    @property
    def label2id(self) -> dict[str, int]:
        """Class index by label name."""
        return {v: k for k, v in self.id2label.items()}

    def set_transforms(
        self,
        train_transform: Callable[[Image.Image], Any] | None,
        eval_transform: Callable[[Image.Image], Any] | None,
    ) -> DatasetSplits:
        """Use ``train_transform`` for the training split and ``eval_transform`` for the others."""
        self.train.transform = train_transform
        self.validation.transform = eval_transform
        self.test.transform = eval_transform
        return self

    def limit(
        self,
        max_train: int | None = None,
        max_eval: int | None = None,
        seed: int = 0,
    ) -> DatasetSplits:
        """Keep at most ``max_train`` training and ``max_eval`` validation and test items.

        The kept items are a stratified, seeded sample (handy for quick runs and tests).
        """

        def cut(ds: ImageClassificationDataset, n: int | None) -> ImageClassificationDataset:
            if n is None or n >= len(ds):
                return ds
            frac = n / len(ds)
            keep = stratified_split(ds.labels, [frac, 1 - frac], seed=seed)[0]
            return ds.select(keep[:n])

        self.train = cut(self.train, max_train)
        self.validation = cut(self.validation, max_eval)
        self.test = cut(self.test, max_eval)
        return self

    def summary(self) -> str:
        """One line: name, classes and split sizes."""
        return (
            f"{self.name}: {self.num_labels} classes, train {len(self.train)}, "
            f"validation {len(self.validation)}, test {len(self.test)}"
        )


def _complete_splits(
    splits: dict[str, ImageClassificationDataset],
    *,
    val_fraction: float,
    test_fraction: float,
    seed: int,
    notes: list[str],
) -> tuple[ImageClassificationDataset, ImageClassificationDataset, ImageClassificationDataset]:
    """Fill in missing splits (``"validation"``, ``"test"``) by carving them out of ``"train"``."""
    full, validation, test = splits["train"], splits.get("validation"), splits.get("test")
    if test is None and validation is not None:
        # A dataset with a validation but no test split: its validation split serves as the
        # held-out test set, and model selection uses a fresh split of the training data.
        test, validation = validation, None
        notes.append("test = the dataset's validation split")
    if validation is None and test is None:
        tr, va, te = stratified_split(
            full.labels, [1 - val_fraction - test_fraction, val_fraction, test_fraction], seed
        )
        notes.append(
            f"validation ({val_fraction:.0%}) and test ({test_fraction:.0%}) "
            f"carved from train, seed {seed}"
        )
        return full.select(tr), full.select(va), full.select(te)
    if validation is None:
        tr, va = stratified_split(full.labels, [1 - val_fraction, val_fraction], seed)
        notes.append(f"validation ({val_fraction:.0%}) carved from train, seed {seed}")
        return full.select(tr), full.select(va), test  # type: ignore[return-value]
    return full, validation, test  # type: ignore[return-value]


# --------------------------------------------------------------------------------------------
# Image folders
# --------------------------------------------------------------------------------------------


def scan_image_folder(
    root: str | os.PathLike[str],
    classes: Sequence[str] | None = None,
    *,
    strict: bool = False,
    verify: bool = True,
) -> tuple[list[str], list[int], list[str], int]:
    """List the images under ``root/<class>/...``.

    Args:
        root: folder whose sub-folders are the classes (nested folders inside a class are read).
        classes: the class names to use, in label order; default: the sorted sub-folder names.
        strict: raise :class:`DataError` on the first unreadable image instead of skipping it.
        verify: check every image's header/structure while scanning.

    Returns:
        ``(paths, labels, classes, num_skipped)``.
    """
    root = Path(root)
    if not root.is_dir():
        raise DataError(f"{root} is not a folder")
    found = sorted(d.name for d in root.iterdir() if d.is_dir() and not d.name.startswith("."))
    if classes is None:
        classes = found
    if not classes:
        raise DataError(
            f"{root} has no class sub-folders; expected root/<class>/<image> "
            f"(or root/train/<class>/<image>)"
        )
    class_index = {c: i for i, c in enumerate(classes)}
    paths: list[str] = []
    labels: list[int] = []
    bad: list[tuple[Path, str]] = []
    for cls in found:
        if cls not in class_index:
            raise DataError(f"{root / cls} is not one of the known classes {list(classes)}")
        for dirpath, dirnames, filenames in os.walk(root / cls, followlinks=True):
            dirnames[:] = sorted(d for d in dirnames if not d.startswith("."))
            for fname in sorted(filenames):
                if fname.startswith(".") or not fname.lower().endswith(IMAGE_EXTENSIONS):
                    continue
                path = Path(dirpath) / fname
                reason = _check_image_file(path) if verify else None
                if reason is not None:
                    if strict:
                        raise DataError(f"cannot read image {path}: {reason}")
                    bad.append((path, reason))
                    continue
                paths.append(str(path))
                labels.append(class_index[cls])
    if bad:
        shown = "; ".join(f"{p} ({r})" for p, r in bad[:3])
        more = f" and {len(bad) - 3} more" if len(bad) > 3 else ""
        warnings.warn(
            f"skipped {len(bad)} unreadable image(s) under {root}: {shown}{more}", stacklevel=2
        )
    if not paths:
        raise DataError(f"no readable images ({', '.join(IMAGE_EXTENSIONS)}) found under {root}")
    return paths, labels, list(classes), len(bad)


def load_image_folder(
    root: str | os.PathLike[str],
    *,
    val_fraction: float = 0.1,
    test_fraction: float = 0.2,
    seed: int = 0,
    strict: bool = False,
    verify: bool = True,
) -> DatasetSplits:
    """Load an image folder as :class:`DatasetSplits`.

    ``root`` is either ``root/<class>/<image>`` (validation and test are carved out with
    :func:`stratified_split`) or has split sub-folders ``train``, ``val``/``valid``/``validation``
    and/or ``test``, each laid out as ``<split>/<class>/<image>``. Class indices follow the sorted
    union of class folder names across splits.
    """
    root = Path(root)
    if not root.is_dir():
        raise DataError(f"{root} is not a folder")
    split_dirs: dict[str, Path] = {}
    for d in sorted(root.iterdir()):
        if d.is_dir() and d.name.lower() in _SPLIT_DIR_NAMES:
            split_dirs.setdefault(_SPLIT_DIR_NAMES[d.name.lower()], d)
    notes: list[str] = []
    if not split_dirs:
        paths, labels, classes, n_bad = scan_image_folder(root, strict=strict, verify=verify)
        full = ImageFileDataset(paths, labels, strict=strict)
        train, validation, test = _complete_splits(
            {"train": full},
            val_fraction=val_fraction,
            test_fraction=test_fraction,
            seed=seed,
            notes=notes,
        )
    else:
        if "train" not in split_dirs:
            raise DataError(f"{root} has split folders {sorted(split_dirs)} but no 'train' folder")
        classes = sorted(
            {
                c.name
                for d in split_dirs.values()
                for c in d.iterdir()
                if c.is_dir() and not c.name.startswith(".")
            }
        )
        loaded: dict[str, ImageFileDataset] = {}
        n_bad = 0
        for split, d in split_dirs.items():
            paths, labels, _, bad = scan_image_folder(d, classes, strict=strict, verify=verify)
            loaded[split] = ImageFileDataset(paths, labels, strict=strict)
            n_bad += bad
        train, validation, test = _complete_splits(
            loaded, val_fraction=val_fraction, test_fraction=test_fraction, seed=seed, notes=notes
        )
    if n_bad:
        notes.append(f"{n_bad} unreadable image(s) skipped")
    return DatasetSplits(
        train, validation, test, dict(enumerate(classes)), name=root.name or str(root), notes=notes
    )


# --------------------------------------------------------------------------------------------
# Hugging Face datasets
# --------------------------------------------------------------------------------------------


def _is_saved_hf_dataset(path: Path) -> bool:
    return (path / "dataset_dict.json").is_file() or (path / "state.json").is_file()


def _find_column(features: Any, wanted: str | None, kind: str) -> str:
    names = list(features)
    if wanted is not None:
        if wanted not in names:
            raise DataError(f"{kind} column {wanted!r} not found; columns are {names}")
        return wanted
    import datasets

    feature_type = datasets.Image if kind == "image" else datasets.ClassLabel
    typed = [n for n in names if isinstance(features[n], feature_type)]
    if typed:
        return typed[0]
    guesses = _IMAGE_COLUMN_GUESSES if kind == "image" else _LABEL_COLUMN_GUESSES
    for g in guesses:
        if g in names:
            return g
    option = "--image-column" if kind == "image" else "--label-column"
    raise DataError(f"cannot tell which column holds the {kind}s among {names}; pass {option}")


def _usable_label(value: Any) -> bool:
    """Whether a label cell can name a class: not missing, not a list, not NaN."""
    if value is None or isinstance(value, list | dict) or value != value:
        return False
    return not (isinstance(value, int) and value < 0)  # ClassLabel writes -1 for "no label"


def _labelled_rows(
    values: Sequence[Any], lookup: dict[Any, int], where: str, strict: bool
) -> tuple[list[int], list[int]]:
    """Rows whose label names a class, and those labels; others are skipped (or raise if strict)."""
    rows: list[int] = []
    labels: list[int] = []
    bad: list[int] = []
    for row, value in enumerate(values):
        index = lookup.get(value) if _usable_label(value) else None
        if index is None:
            if strict:
                raise DataError(f"row {row} of the {where} has label {value!r}, which is no class")
            bad.append(row)
            continue
        rows.append(row)
        labels.append(index)
    if bad:
        warnings.warn(
            f"skipped {len(bad)} row(s) of the {where} without a usable label (rows {bad[:5]}"
            f"{' ...' if len(bad) > 5 else ''}); pass strict=True to make this an error",
            stacklevel=3,
        )
    return rows, labels


def load_hf_datasets(
    name_or_path: str,
    *,
    image_column: str | None = None,
    label_column: str | None = None,
    config_name: str | None = None,
    val_fraction: float = 0.1,
    test_fraction: float = 0.2,
    seed: int = 0,
    strict: bool = False,
    **load_kwargs: Any,
) -> DatasetSplits:
    """Load a Hugging Face dataset (Hub name, local script/data folder, or ``save_to_disk`` folder).

    Splits named ``train``, ``validation`` (``valid``, ``val``, ``dev``) and ``test`` are used;
    missing ones are carved from ``train``. The image column defaults to the first
    ``datasets.Image`` feature and the label column to the first ``ClassLabel`` (then common names
    like ``image``/``label``). ``ClassLabel`` names become ``id2label``; other label values
    (strings or integers) are mapped in sorted order.
    """
    import datasets

    path = Path(name_or_path)
    if path.is_dir() and _is_saved_hf_dataset(path):
        loaded = datasets.load_from_disk(str(path))
    else:
        loaded = datasets.load_dataset(name_or_path, config_name, **load_kwargs)
    if isinstance(loaded, datasets.Dataset):
        loaded = datasets.DatasetDict({"train": loaded})
    splits: dict[str, Any] = {}
    for ours, theirs in _HF_SPLIT_NAMES.items():
        for t in theirs:
            if t in loaded:
                splits[ours] = loaded[t]
                break
    if "train" not in splits:
        raise DataError(f"{name_or_path} has splits {list(loaded)} but none named 'train'")
    features = splits["train"].features
    image_col = _find_column(features, image_column, "image")
    label_col = _find_column(features, label_column, "label")
    label_feature = features[label_col]
    for split, ds in splits.items():  # every split must label its rows the same way
        if image_col not in ds.features or label_col not in ds.features:
            raise DataError(
                f"the {split} split has no {image_col!r} or {label_col!r} column; its columns "
                f"are {list(ds.features)}"
            )
        if ds.features[label_col] != label_feature:
            raise DataError(
                f"the {split} split's {label_col!r} column ({ds.features[label_col]}) does not "
                f"match the train split's ({label_feature}): class indices would mean other classes"
            )
    if isinstance(label_feature, datasets.ClassLabel):
        names = list(label_feature.names)
        lookup: dict[Any, int] = {i: i for i in range(len(names))}
    else:
        values = sorted(
            {v for ds in splits.values() for v in ds[label_col] if _usable_label(v)},
            key=lambda v: (str(type(v)), v),
        )
        names = [str(v) for v in values]
        lookup = {v: i for i, v in enumerate(values)}
    wrapped = {}
    for split, ds in splits.items():
        rows, labels = _labelled_rows(ds[label_col], lookup, f"{split} split", strict)
        subset = ds if len(rows) == len(ds) else ds.select(rows)
        wrapped[split] = HFImageDataset(subset, image_col, labels, strict=strict)
    notes: list[str] = []
    train, validation, test = _complete_splits(
        wrapped, val_fraction=val_fraction, test_fraction=test_fraction, seed=seed, notes=notes
    )
    name = path.name if path.is_dir() else name_or_path
    return DatasetSplits(train, validation, test, dict(enumerate(names)), name=name, notes=notes)


def load_datasets(
    source: str | os.PathLike[str] | None = None,
    *,
    image_column: str | None = None,
    label_column: str | None = None,
    val_fraction: float = 0.1,
    test_fraction: float = 0.2,
    seed: int = 0,
    strict: bool = False,
) -> DatasetSplits:
    """Load train/validation/test splits from any supported source.

    Args:
        source: ``None`` or ``"demo"`` for the built-in MNIST digits (``"demo-inverted"``,
            ``"demo-rotated"``: the same digits changed, as extra tasks); a folder of images; a folder
            written by ``datasets``' ``save_to_disk``; or a ``datasets`` name.
        image_column / label_column: column names for ``datasets`` sources (guessed by default).
        val_fraction / test_fraction: fractions carved out of train for missing splits.
        seed: seed of the deterministic stratified split.
        strict: raise on unreadable images instead of skipping them.
    """
    name = str(source).lower()
    if name.startswith("demo-") and not Path(str(source)).exists():
        from pb_adapters.training.demo import DEMO_VARIANTS, load_demo_variant

        if name[len("demo-") :] in DEMO_VARIANTS:
            return load_demo_variant(
                name[len("demo-") :],
                val_fraction=val_fraction,
                test_fraction=test_fraction,
                seed=seed,
            )
    if source is None or str(source).lower() in DEMO_DATASET_NAMES:
        from pb_adapters.training.demo import load_demo_dataset

        return load_demo_dataset(val_fraction=val_fraction, test_fraction=test_fraction, seed=seed)
    path = Path(source)
    if path.is_dir():
        if _is_saved_hf_dataset(path):
            return load_hf_datasets(
                str(path),
                image_column=image_column,
                label_column=label_column,
                val_fraction=val_fraction,
                test_fraction=test_fraction,
                seed=seed,
                strict=strict,
            )
        return load_image_folder(
            path, val_fraction=val_fraction, test_fraction=test_fraction, seed=seed, strict=strict
        )
    if path.suffix and path.exists():
        raise DataError(
            f"{source} is a file; pass an image folder, a saved dataset folder or a dataset name"
        )
    return load_hf_datasets(
        str(source),
        image_column=image_column,
        label_column=label_column,
        val_fraction=val_fraction,
        test_fraction=test_fraction,
        seed=seed,
        strict=strict,
    )


# --------------------------------------------------------------------------------------------
# Transforms
# --------------------------------------------------------------------------------------------


@dataclass
class DataConfig:
    """Pre-processing a model expects: input size, normalisation, resize interpolation, crop."""

    image_size: int = 224
    mean: tuple[float, float, float] = (0.485, 0.456, 0.406)
    std: tuple[float, float, float] = (0.229, 0.224, 0.225)
    interpolation: str = "bilinear"
    crop_pct: float = 0.875
    source: str = "default"


def _unwrap(model: torch.nn.Module) -> torch.nn.Module:
    """The timm / transformers model under wrappers (DDP, ``torch.compile``, PiggybackModel)."""
    from pb_adapters.model import PiggybackModel

    for _ in range(8):
        if isinstance(model, PiggybackModel):
            model = model.base_model
        elif isinstance(getattr(model, "_orig_mod", None), torch.nn.Module):
            model = model._orig_mod
        elif isinstance(model, torch.nn.parallel.DistributedDataParallel) or type(
            model
        ).__name__ in ("DistributedDataParallel", "DataParallel", "FullyShardedDataParallel"):
            model = model.module
        else:
            break
    return model


def _is_transformers_model(model: torch.nn.Module) -> bool:
    try:
        from transformers import PreTrainedModel
    except ImportError:  # pragma: no cover - transformers is a dependency
        return False
    return isinstance(model, PreTrainedModel)


def _processor_config(processor: Any, model: torch.nn.Module) -> DataConfig:
    """Read size/mean/std/crop from a transformers image processor."""
    mean = tuple(getattr(processor, "image_mean", None) or (0.485, 0.456, 0.406))
    std = tuple(getattr(processor, "image_std", None) or (0.229, 0.224, 0.225))
    size = getattr(processor, "size", None)
    crop = (
        getattr(processor, "crop_size", None)
        if getattr(processor, "do_center_crop", False)
        else None
    )

    def edge(s: Any) -> int | None:
        if s is None:
            return None
        if isinstance(s, int):
            return s
        s = dict(s)
        for key in ("shortest_edge", "height", "width", "longest_edge"):
            if s.get(key):
                return int(s[key])
        return None

    crop_edge, size_edge = edge(crop), edge(size)
    image_size = (
        crop_edge or size_edge or getattr(getattr(model, "config", None), "image_size", 224)
    )
    crop_pct = getattr(processor, "crop_pct", None)
    if crop_pct is None:
        crop_pct = (
            crop_edge / size_edge if crop_edge and size_edge and size_edge >= crop_edge else 1.0
        )
    resample = getattr(processor, "resample", None)
    interp = {0: "nearest", 2: "bilinear", 3: "bicubic"}.get(
        int(resample) if resample is not None else 2, "bilinear"
    )
    return DataConfig(int(image_size), mean, std, interp, float(crop_pct), source="image_processor")  # type: ignore[arg-type]


def resolve_data_config(model: torch.nn.Module, image_processor: Any = None) -> DataConfig:
    """Find the pre-processing ``model`` was trained with.

    timm models: ``timm.data.resolve_data_config`` on the model's ``pretrained_cfg``.
    transformers models: ``image_processor`` when given, else ``AutoImageProcessor`` from the
    model's ``name_or_path`` (local files only when ``HF_HUB_OFFLINE`` is set), else the config's
    ``image_size`` with ImageNet statistics (a warning says so).
    """
    inner = _unwrap(model)
    if image_processor is not None:
        return _processor_config(image_processor, inner)
    if _is_transformers_model(inner):
        name = getattr(inner, "name_or_path", "") or getattr(inner.config, "_name_or_path", "")
        if name:
            try:
                from transformers import AutoImageProcessor

                offline = os.environ.get("HF_HUB_OFFLINE", "0").lower() in ("1", "true", "yes")
                proc = AutoImageProcessor.from_pretrained(name, local_files_only=offline)
                return _processor_config(proc, inner)
            except Exception as exc:
                logger.info("no image processor for %s (%s); using defaults", name, exc)
        size = int(getattr(inner.config, "image_size", 224) or 224)
        warnings.warn(
            "no image processor found for this transformers model; using ImageNet mean/std at "
            f"{size}px (pass image_processor= to use the model's own pre-processing)",
            stacklevel=2,
        )
        return DataConfig(image_size=size, crop_pct=1.0, source="transformers-default")
    from timm.data import resolve_data_config as timm_resolve

    cfg = timm_resolve({}, model=inner)
    return DataConfig(
        image_size=int(cfg["input_size"][-1]),
        mean=tuple(cfg["mean"]),  # type: ignore[arg-type]
        std=tuple(cfg["std"]),  # type: ignore[arg-type]
        interpolation=str(cfg.get("interpolation", "bilinear")),
        crop_pct=float(cfg.get("crop_pct", 0.875)),
        source="timm",
    )


def build_transforms(
    model: torch.nn.Module | None = None,
    *,
    data_config: DataConfig | None = None,
    image_size: int | None = None,
    hflip: bool = True,
    train_scale: tuple[float, float] = (0.08, 1.0),
    crop_pct: float | None = None,
    image_processor: Any = None,
) -> tuple[Callable[[Image.Image], torch.Tensor], Callable[[Image.Image], torch.Tensor]]:
    """Training and evaluation transforms for ``model``.

    Training: random resized crop (area fraction ``train_scale``) to ``image_size``, horizontal
    flip with probability 0.5 when ``hflip`` (turn it off for data such as digits or text), tensor,
    normalise. Evaluation: resize to ``image_size / crop_pct``, center crop, tensor, normalise.
    Sizes and statistics come from ``data_config`` or :func:`resolve_data_config`; ``image_size``
    and ``crop_pct`` override them.
    """
    from timm.data import create_transform

    if data_config is None:
        data_config = (
            resolve_data_config(model, image_processor) if model is not None else DataConfig()
        )
    size = int(image_size or data_config.image_size)
    pct = float(crop_pct if crop_pct is not None else data_config.crop_pct)
    common = {
        "interpolation": data_config.interpolation,
        "mean": tuple(data_config.mean),
        "std": tuple(data_config.std),
    }
    train_tf = create_transform(
        size,
        is_training=True,
        scale=tuple(train_scale),
        hflip=0.5 if hflip else 0.0,
        color_jitter=None,
        **common,
    )
    eval_tf = create_transform(size, is_training=False, crop_pct=pct, **common)
    return train_tf, eval_tf


# --------------------------------------------------------------------------------------------
# Loaders
# --------------------------------------------------------------------------------------------


def default_num_workers() -> int:
    """Loader workers to use by default: 0 on machines with 2 CPUs or fewer, else CPUs - 1 (max 8).

    On a 2-core machine a worker process competes with torch's two compute threads, and torch's
    OpenMP threads then spend their time waiting for each other (a CPU step can get several times
    slower); decoding in the main process between steps is faster there.
    """
    try:
        cpus = len(os.sched_getaffinity(0))
    except AttributeError:  # pragma: no cover - not on Linux
        cpus = os.cpu_count() or 1
    return 0 if cpus <= 2 else min(8, cpus - 1)


def build_dataloaders(
    splits: DatasetSplits,
    batch_size: int = 32,
    *,
    eval_batch_size: int | None = None,
    num_workers: int | None = None,
    seed: int = 0,
    pin_memory: bool = False,
    drop_last: bool = False,
) -> tuple[DataLoader, DataLoader, DataLoader]:
    """``(train, validation, test)`` loaders; the training one shuffles with a seeded generator."""
    if num_workers is None:
        num_workers = default_num_workers()
    eval_bs = eval_batch_size or max(batch_size, 64)
    extra: dict[str, Any] = {"num_workers": num_workers, "pin_memory": pin_memory}
    if num_workers > 0:
        extra["persistent_workers"] = True
    gen = torch.Generator()
    gen.manual_seed(seed)
    train = DataLoader(
        splits.train,
        batch_size=batch_size,
        shuffle=True,
        generator=gen,
        drop_last=drop_last,
        **extra,
    )
    val = DataLoader(splits.validation, batch_size=eval_bs, shuffle=False, **extra)
    test = DataLoader(splits.test, batch_size=eval_bs, shuffle=False, **extra)
    return train, val, test
