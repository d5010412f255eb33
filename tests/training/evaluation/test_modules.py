"""The packaged ``evaluate`` metric modules: offline loading, hand-checked values, edge cases."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from pb_adapters.errors import ConfigError
from pb_adapters.training.evaluation.modules import (
    METRIC_NAMES,
    METRICS_DIR,
    load_metric,
    metric_path,
)

REPO = Path(__file__).resolve().parents[3]


def test_every_metric_script_ships_with_the_package() -> None:
    tomllib = pytest.importorskip("tomllib")  # Python 3.11+ reads pyproject.toml
    pyproject = tomllib.loads((REPO / "pyproject.toml").read_text())
    patterns = pyproject["tool"]["setuptools"]["package-data"]["pb_adapters.training.evaluation"]
    package = METRICS_DIR.parent
    shipped = {p.relative_to(package) for pattern in patterns for p in package.glob(pattern)}
    for name in METRIC_NAMES:
        assert metric_path(name) == METRICS_DIR / name
        assert Path("metrics", name, f"{name}.py") in shipped
    with pytest.raises(ConfigError, match="packaged metrics"):
        metric_path("bleu")


def test_accuracy_and_batches_add_up() -> None:
    metric = load_metric("accuracy")  # HF_HUB_OFFLINE=1: the script comes from the package
    metric.add_batch(predictions=[0, 1, 2], references=[0, 1, 1])
    metric.add_batch(predictions=[2], references=[2])
    assert metric.compute() == {"accuracy": 0.75}


def test_top_k_accuracy_ranks_ties_by_class_index() -> None:
    metric = load_metric("top_k_accuracy")
    scores = [[0.1, 0.5, 0.4], [0.8, 0.1, 0.1], [0.2, 0.2, 0.2]]
    # sample 1: classes 1 and 2 tie, class 1 ranks first; sample 2: 0, 1, 2 in that order
    assert metric.compute(predictions=scores, references=[2, 2, 1], k=2)["top_k_accuracy"] == (
        pytest.approx(2 / 3)
    )
    top1 = metric.compute(predictions=scores, references=[1, 0, 0], k=1)
    assert top1 == {"top_k_accuracy": 1.0, "k": 1}  # argmax picks the first of equal scores
    everything = metric.compute(predictions=scores, references=[2, 2, 2], k=7)
    assert everything["top_k_accuracy"] == 1.0
    with pytest.raises(ValueError, match="k must be"):
        metric.compute(predictions=scores, references=[0, 0, 0], k=0)


def test_f1_per_class_by_hand_and_undefined_classes() -> None:
    metric = load_metric("f1_per_class")
    out = metric.compute(predictions=[0, 0, 1, 1, 1], references=[0, 1, 1, 1, 0], num_classes=3)
    # class 0: TP 1, FP 1, FN 1 -> 0.5; class 1: TP 2, FP 1, FN 1 -> 4/6; class 2: never seen
    assert out["f1"] == pytest.approx([0.5, 4 / 6, None])
    assert out["precision"] == pytest.approx([0.5, 2 / 3, None])
    assert out["recall"] == pytest.approx([0.5, 2 / 3, None])
    assert out["support"] == [2, 3, 0]
    assert out["macro_f1"] == pytest.approx((0.5 + 4 / 6) / 2)
    predicted_only = metric.compute(predictions=[2], references=[0], num_classes=3)
    assert predicted_only["f1"] == [0.0, None, 0.0] and predicted_only["recall"][2] is None
    with pytest.raises(ValueError, match="out of range"):
        metric.compute(predictions=[3], references=[0], num_classes=3)


def test_confusion_matrix_rows_are_references() -> None:
    metric = load_metric("confusion_matrix")
    rng = np.random.default_rng(0)
    predictions, references = rng.integers(0, 4, 50), rng.integers(0, 4, 50)
    matrix = np.array(
        metric.compute(predictions=predictions, references=references, num_classes=5)[
            "confusion_matrix"
        ]
    )
    expected = np.zeros((5, 5), dtype=int)
    for r, p in zip(references, predictions, strict=True):
        expected[r, p] += 1
    assert (matrix == expected).all() and matrix.shape == (5, 5)
    assert metric.compute(predictions=[0, 1, 1], references=[0, 1, 0]) == {
        "confusion_matrix": [[1, 1], [0, 1]]
    }
