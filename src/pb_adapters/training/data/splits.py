"""Train / validation / test splits: the stratified split and the :class:`DatasetSplits` holder."""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
from PIL import Image

from pb_adapters.training.data.datasets import DataError, ImageClassificationDataset

__all__ = ["DatasetSplits", "complete_splits", "stratified_split"]


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


def complete_splits(
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
