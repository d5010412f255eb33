"""Where a task's data comes from: named sources (the demo digits), image folders, ``datasets``.

:func:`load_datasets` asks the registered named sources first, then reads a folder (image folder
or ``save_to_disk`` folder), else loads a ``datasets`` name. A named source is a function that
recognises a source string (``None`` for "no source given") and returns a loader for it; the
offline demo registers its digits this way (:mod:`pb_adapters.training.demo`), so this module
does not depend on it.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path

from pb_adapters.training.data.datasets import DataError
from pb_adapters.training.data.folders import load_image_folder
from pb_adapters.training.data.hf import is_saved_hf_dataset, load_hf_datasets
from pb_adapters.training.data.splits import DatasetSplits

__all__ = ["SourceLoader", "load_datasets", "register_dataset_source"]

#: A named source's loader: called with ``val_fraction``, ``test_fraction`` and ``seed``.
SourceLoader = Callable[..., DatasetSplits]

_SOURCES: list[Callable[[str | None], SourceLoader | None]] = []


def register_dataset_source(resolve: Callable[[str | None], SourceLoader | None]) -> None:
    """Let :func:`load_datasets` read named sources: ``resolve(source)`` returns a loader for the
    sources it knows (``None`` means no ``--dataset`` was given) and ``None`` for the others."""
    if resolve not in _SOURCES:
        _SOURCES.append(resolve)


def _named_source(source: str | None) -> SourceLoader | None:
    for resolve in _SOURCES:
        loader = resolve(source)
        if loader is not None:
            return loader
    return None


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
    named = _named_source(None if source is None else str(source))
    if named is not None:
        return named(val_fraction=val_fraction, test_fraction=test_fraction, seed=seed)
    if source is None:
        raise DataError("no data source given: pass an image folder or a `datasets` name")
    hf_options = {"image_column": image_column, "label_column": label_column, "strict": strict}
    splits_options = {"val_fraction": val_fraction, "test_fraction": test_fraction, "seed": seed}
    path = Path(source)
    if path.is_dir():
        if is_saved_hf_dataset(path):
            return load_hf_datasets(str(path), **hf_options, **splits_options)
        return load_image_folder(path, strict=strict, **splits_options)
    if path.suffix and path.exists():
        raise DataError(
            f"{source} is a file; pass an image folder, a saved dataset folder or a dataset name"
        )
    return load_hf_datasets(str(source), **hf_options, **splits_options)
