"""Hugging Face ``datasets``: a Hub name, a local dataset folder or a ``save_to_disk`` folder."""

from __future__ import annotations

import warnings
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from pb_adapters.training.data.datasets import DataError, HFImageDataset
from pb_adapters.training.data.splits import DatasetSplits, complete_splits

__all__ = ["is_saved_hf_dataset", "load_hf_datasets", "named_splits"]

_HF_SPLIT_NAMES = {
    "train": ("train", "training"),
    "validation": ("validation", "valid", "val", "dev"),
    "test": ("test", "testing"),
}
_IMAGE_COLUMN_GUESSES = ("image", "img", "images", "pixel_values", "picture", "file", "path")
_LABEL_COLUMN_GUESSES = ("label", "labels", "fine_label", "class", "target", "category")


def is_saved_hf_dataset(path: Path) -> bool:
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


def _read_splits(name_or_path: str, config_name: str | None, **load_kwargs: Any) -> dict[str, Any]:
    """Our split name -> the ``datasets.Dataset`` of that split (``train`` always there)."""
    import datasets

    path = Path(name_or_path)
    if path.is_dir() and is_saved_hf_dataset(path):
        loaded = datasets.load_from_disk(str(path))
    else:
        loaded = datasets.load_dataset(name_or_path, config_name, **load_kwargs)
    if isinstance(loaded, datasets.Dataset):
        loaded = datasets.DatasetDict({"train": loaded})
    return named_splits(loaded, name_or_path)


def named_splits(loaded: Any, source: str) -> dict[str, Any]:
    """Our split name -> the split of ``loaded`` (a dict of splits) that it names; ``train``
    must be there."""
    splits: dict[str, Any] = {}
    for ours, theirs in _HF_SPLIT_NAMES.items():
        for t in theirs:
            if t in loaded:
                splits[ours] = loaded[t]
                break
    if "train" not in splits:
        raise DataError(f"{source} has splits {list(loaded)} but none named 'train'")
    return splits


def _check_columns(splits: dict[str, Any], image_col: str, label_col: str) -> None:
    """Every split has both columns and labels its rows the way the train split does."""
    label_feature = splits["train"].features[label_col]
    for split, ds in splits.items():
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


def _label_names(splits: dict[str, Any], label_col: str) -> tuple[list[str], dict[Any, int]]:
    """Class names, and label value -> class index: a ``ClassLabel``'s own names, else every
    usable value of any split in sorted order."""
    import datasets

    label_feature = splits["train"].features[label_col]
    if isinstance(label_feature, datasets.ClassLabel):
        names = list(label_feature.names)
        return names, {i: i for i in range(len(names))}
    values = sorted(
        {v for ds in splits.values() for v in ds[label_col] if _usable_label(v)},
        key=lambda v: (str(type(v)), v),
    )
    return [str(v) for v in values], {v: i for i, v in enumerate(values)}


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
    splits = _read_splits(name_or_path, config_name, **load_kwargs)
    features = splits["train"].features
    image_col = _find_column(features, image_column, "image")
    label_col = _find_column(features, label_column, "label")
    _check_columns(splits, image_col, label_col)
    names, lookup = _label_names(splits, label_col)
    wrapped = {}
    for split, ds in splits.items():
        rows, labels = _labelled_rows(ds[label_col], lookup, f"{split} split", strict)
        subset = ds if len(rows) == len(ds) else ds.select(rows)
        wrapped[split] = HFImageDataset(subset, image_col, labels, strict=strict)
    notes: list[str] = []
    train, validation, test = complete_splits(
        wrapped, val_fraction=val_fraction, test_fraction=test_fraction, seed=seed, notes=notes
    )
    path = Path(name_or_path)
    name = path.name if path.is_dir() else name_or_path
    return DatasetSplits(train, validation, test, dict(enumerate(names)), name=name, notes=notes)
