"""Data pipeline: splits, RGB conversion, image folders with bad files, datasets, transforms."""

from __future__ import annotations

import warnings
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from pb_adapters.training.data import (
    ArrayImageDataset,
    DataConfig,
    DataError,
    DatasetSplits,
    ImageFileDataset,
    build_dataloaders,
    build_transforms,
    load_datasets,
    load_image_folder,
    register_dataset_source,
    resolve_data_config,
    scan_image_folder,
    stratified_split,
    to_rgb,
)
from tests.factories import tiny_timm, tiny_transformers

# ----------------------------------------------------------------------------- splits


def test_stratified_split_sizes_cover_and_determinism() -> None:
    labels = np.repeat(np.arange(4), [10, 20, 30, 40])
    parts = stratified_split(labels, [0.7, 0.1, 0.2], seed=3)
    assert [len(p) for p in parts] == [70, 10, 20]
    for part, frac in zip(parts, [0.7, 0.1, 0.2], strict=True):
        counts = np.bincount(labels[part], minlength=4)
        assert counts.tolist() == [round(n * frac) for n in (10, 20, 30, 40)]
    joined = np.concatenate(parts)
    assert sorted(joined.tolist()) == list(range(100))  # disjoint and complete
    again = stratified_split(labels, [0.7, 0.1, 0.2], seed=3)
    assert all(np.array_equal(a, b) for a, b in zip(parts, again, strict=True))
    other = stratified_split(labels, [0.7, 0.1, 0.2], seed=4)
    assert not np.array_equal(parts[1], other[1])


def test_stratified_split_keeps_every_class_in_train() -> None:
    labels = [0, 1, 1, 2, 2, 2]
    train, val = stratified_split(labels, [0.1, 0.9], seed=0)
    assert set(np.asarray(labels)[train].tolist()) == {0, 1, 2}
    assert len(train) + len(val) == 6


def test_stratified_split_rejects_bad_fractions() -> None:
    with pytest.raises(DataError):
        stratified_split([0, 1], [0.5, 0.6])
    with pytest.raises(DataError):
        stratified_split([0, 1], [1.2, -0.2])


# ----------------------------------------------------------------------------- RGB


@pytest.mark.parametrize("mode", ["L", "1", "CMYK", "YCbCr", "I;16", "F", "RGB", "LA", "RGBA"])
def test_to_rgb_modes(mode: str) -> None:
    image = Image.new("RGB", (6, 5), (200, 100, 50))
    # through L: Pillow 10.0 cannot convert RGB to I;16 directly
    image = image.convert("L").convert(mode) if mode == "I;16" else image.convert(mode)
    out = to_rgb(image)
    assert out.mode == "RGB" and out.size == (6, 5)


def test_to_rgb_composites_transparency_on_white() -> None:
    rgba = Image.new("RGBA", (4, 4), (255, 0, 0, 0))  # fully transparent red
    rgba.putpixel((0, 0), (0, 0, 255, 255))
    out = np.asarray(to_rgb(rgba))
    assert out[1, 1].tolist() == [255, 255, 255]
    assert out[0, 0].tolist() == [0, 0, 255]

    palette = Image.new("P", (4, 4), 0)
    palette.putpalette([0, 0, 0, 255, 0, 0] + [0] * 762)
    palette.putpixel((0, 0), 1)
    palette.info["transparency"] = 0
    out = np.asarray(to_rgb(palette))
    assert out[1, 1].tolist() == [255, 255, 255]
    assert out[0, 0].tolist() == [255, 0, 0]


def test_to_rgb_rescales_16_bit() -> None:
    arr = np.array([[0, 1000], [2000, 4000]], dtype=np.uint16)
    out = np.asarray(to_rgb(Image.fromarray(arr)))
    assert out[..., 0].tolist() == [[0, 64], [128, 255]]


# ----------------------------------------------------------------------------- image folders


def _write_images(folder: Path, cls: str, n: int, kind: str = "rgb") -> None:
    d = folder / cls
    d.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(abs(hash((cls, kind))) % 2**32)
    for i in range(n):
        arr = rng.integers(0, 255, (12, 10, 3), dtype=np.uint8)
        img = Image.fromarray(arr)
        if kind == "gray":
            img.convert("L").save(d / f"{kind}{i}.png")
        elif kind == "rgba":
            img.convert("RGBA").save(d / f"{kind}{i}.png")
        elif kind == "palette":
            img.convert("P").save(d / f"{kind}{i}.gif")
        elif kind == "cmyk":
            img.convert("CMYK").save(d / f"{kind}{i}.jpg")
        else:
            img.save(d / f"{kind}{i}.jpg")


@pytest.fixture
def image_folder(tmp_path: Path) -> Path:
    root = tmp_path / "shapes"
    for cls, kind in [("circle", "gray"), ("square", "rgba"), ("star", "palette"), ("tri", "cmyk")]:
        _write_images(root, cls, 10, kind)
        _write_images(root, cls, 5, "rgb")
    (root / "circle" / "broken.jpg").write_bytes(b"this is not a jpeg")
    good = root / "square" / "rgb0.jpg"
    (root / "square" / "truncated.png").write_bytes(b"\x89PNG\r\n\x1a\n" + b"\x00" * 20)
    (root / "square" / "notes.txt").write_text("ignored: not an image")
    (root / "star" / ".hidden.png").write_bytes(good.read_bytes())
    return root


def test_image_folder_skips_and_counts_unreadable_files(image_folder: Path) -> None:
    with pytest.warns(UserWarning, match="skipped 2 unreadable image"):
        splits = load_image_folder(image_folder, val_fraction=0.2, test_fraction=0.2, seed=0)
    assert splits.id2label == {0: "circle", 1: "square", 2: "star", 3: "tri"}
    assert len(splits.train) + len(splits.validation) + len(splits.test) == 60
    assert (len(splits.train), len(splits.validation), len(splits.test)) == (36, 12, 12)
    assert any("2 unreadable" in note for note in splits.notes)
    for ds in (splits.train, splits.validation, splits.test):
        assert sorted(set(ds.labels)) == [0, 1, 2, 3]
    # every mode comes out as RGB, then through the eval transform
    train_tf, eval_tf = build_transforms(data_config=DataConfig(image_size=16, crop_pct=1.0))
    splits.set_transforms(train_tf, eval_tf)
    for i in range(len(splits.test)):
        x, y = splits.test[i]
        assert x.shape == (3, 16, 16) and x.dtype == torch.float32 and 0 <= y < 4


def test_image_folder_strict_mode_raises(image_folder: Path) -> None:
    with pytest.raises(DataError, match=r"broken\.jpg|truncated\.png"):
        load_image_folder(image_folder, strict=True)


def test_image_folder_with_split_folders(tmp_path: Path) -> None:
    for split, n in [("train", 10), ("test", 3)]:
        for cls in ("a", "b"):
            _write_images(tmp_path / split, cls, n)
    _write_images(tmp_path / "test", "c", 2)  # a class only the test split has
    splits = load_image_folder(tmp_path, val_fraction=0.2, seed=0)
    assert splits.id2label == {0: "a", 1: "b", 2: "c"}
    assert (len(splits.train), len(splits.validation), len(splits.test)) == (16, 4, 8)
    assert any("validation" in note for note in splits.notes)


def test_image_folder_validation_becomes_test_when_no_test_split(tmp_path: Path) -> None:
    for split, n in [("train", 10), ("val", 4)]:
        for cls in ("a", "b"):
            _write_images(tmp_path / split, cls, n)
    splits = load_image_folder(tmp_path, val_fraction=0.1, seed=0)
    assert len(splits.test) == 8 and len(splits.validation) == 2 and len(splits.train) == 18


def test_image_folder_errors_are_actionable(tmp_path: Path) -> None:
    with pytest.raises(DataError, match="not a folder"):
        load_image_folder(tmp_path / "missing")
    (tmp_path / "flat.jpg").write_bytes(b"")
    with pytest.raises(DataError, match="no class sub-folders"):
        scan_image_folder(tmp_path)


def test_decode_failure_after_scan_is_skipped_or_raised(tmp_path: Path) -> None:
    good = tmp_path / "good.png"
    Image.new("L", (8, 8), 7).save(good)
    bad = tmp_path / "bad.png"
    bad.write_bytes(b"garbage")
    ds = ImageFileDataset([bad, good], [0, 1])
    with pytest.warns(UserWarning, match="skipping unreadable image"):
        image, label = ds[0]
    assert label == 1 and image.mode == "RGB"
    assert ds.num_skipped == 1
    strict = ImageFileDataset([bad, good], [0, 1], strict=True)
    with pytest.raises(DataError, match=r"bad\.png"):
        strict[0]


# ----------------------------------------------------------------------------- datasets


def _hf_dataset(tmp_path: Path, image_col: str = "image", label_col: str = "label", names=None):
    import datasets

    rng = np.random.default_rng(0)
    images = [Image.fromarray(rng.integers(0, 255, (9, 9, 3), dtype=np.uint8)) for _ in range(30)]
    labels = [i % 3 for i in range(30)]
    if names is None:
        features = datasets.Features(
            {image_col: datasets.Image(), label_col: datasets.ClassLabel(names=["x", "y", "z"])}
        )
        data = {image_col: images, label_col: labels}
    else:
        features = datasets.Features(
            {image_col: datasets.Image(), label_col: datasets.Value("string")}
        )
        data = {image_col: images, label_col: [names[i] for i in labels]}
    ds = datasets.Dataset.from_dict(data, features=features)
    dd = datasets.DatasetDict({"train": ds.select(range(24)), "test": ds.select(range(24, 30))})
    path = tmp_path / "saved"
    dd.save_to_disk(str(path))
    return path


def test_saved_hf_dataset_with_classlabel(tmp_path: Path) -> None:
    splits = load_datasets(str(_hf_dataset(tmp_path)), val_fraction=0.25, seed=0)
    assert splits.id2label == {0: "x", 1: "y", 2: "z"}
    assert (len(splits.train), len(splits.validation), len(splits.test)) == (18, 6, 6)
    image, label = splits.train[0]
    assert image.mode == "RGB" and label in (0, 1, 2)


def test_saved_hf_dataset_with_named_string_labels(tmp_path: Path) -> None:
    path = _hf_dataset(tmp_path, "picture", "kind", names=["cat", "ant", "bee"])
    with pytest.raises(DataError, match="--label-column"):
        load_datasets(str(path))  # "kind" is neither a ClassLabel nor a usual label name
    with pytest.raises(DataError, match="not found"):
        load_datasets(str(path), image_column="img", label_column="kind")
    splits = load_datasets(str(path), label_column="kind")  # the Image feature is found
    assert splits.id2label == {0: "ant", 1: "bee", 2: "cat"}
    assert splits.test[0][1] == 2  # row 24 -> i % 3 == 0 -> "cat"


# ----------------------------------------------------------------------------- transforms, loaders


def test_transforms_from_timm_config_with_size_and_flip() -> None:
    model = tiny_timm("test_efficientnet")
    cfg = resolve_data_config(model)
    assert cfg.source == "timm" and len(cfg.mean) == 3
    train_tf, eval_tf = build_transforms(model, image_size=40, hflip=False)
    names = [type(t).__name__ for t in train_tf.transforms]
    assert "RandomHorizontalFlip" not in names and "RandomResizedCropAndInterpolation" in names
    flip_tf, _ = build_transforms(model, image_size=40, hflip=True)
    assert "RandomHorizontalFlip" in [type(t).__name__ for t in flip_tf.transforms]
    image = Image.new("RGB", (50, 70), (10, 20, 30))
    assert train_tf(image).shape == (3, 40, 40)
    assert eval_tf(image).shape == (3, 40, 40)
    assert [type(t).__name__ for t in eval_tf.transforms][:2] == ["Resize", "CenterCrop"]


def test_transforms_for_transformers_model_and_processor() -> None:
    model = tiny_transformers("vit")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        cfg = resolve_data_config(model)
    assert cfg.image_size == 32

    class Processor:  # the attributes transformers image processors carry
        image_mean = [0.5, 0.5, 0.5]
        image_std = [0.5, 0.5, 0.5]
        size = {"shortest_edge": 40}
        crop_size = {"height": 32, "width": 32}
        do_center_crop = True
        resample = 3

    cfg = resolve_data_config(model, Processor())
    assert (cfg.image_size, cfg.crop_pct, cfg.interpolation) == (32, 0.8, "bicubic")


def test_dataloaders_are_seeded() -> None:
    images = np.zeros((20, 4, 4), dtype=np.uint8)
    images[:, 0, 0] = np.arange(20)
    full = ArrayImageDataset(images, [i % 2 for i in range(20)])
    splits = DatasetSplits(full, full.select(range(4)), full.select(range(4)), {0: "a", 1: "b"})
    plain = DataConfig(image_size=4, crop_pct=1.0, mean=(0.5, 0.5, 0.5), std=(0.5, 0.5, 0.5))
    _, eval_tf = build_transforms(data_config=plain)
    splits.set_transforms(eval_tf, eval_tf)

    def order(seed: int) -> list[int]:
        train, _, _ = build_dataloaders(splits, batch_size=5, num_workers=0, seed=seed)
        return [round(float(v)) for x, _ in train for v in (x[:, 0, 0, 0] * 0.5 + 0.5) * 255]

    assert order(1) == order(1)
    assert order(1) != order(2)
    assert sorted(order(1)) == list(range(20))
    # the training loader reshuffles on every pass, and use_epoch replays an epoch
    train, _, _ = build_dataloaders(splits, batch_size=5, num_workers=0, seed=1)

    def one_pass() -> list[int]:
        return [round(float(v)) for x, _ in train for v in (x[:, 0, 0, 0] * 0.5 + 0.5) * 255]

    first, second = one_pass(), one_pass()
    assert first == order(1) and second != first and sorted(second) == list(range(20))
    train.sampler.use_epoch(1)
    assert one_pass() == second


def test_named_sources_come_before_folders_and_datasets(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from pb_adapters.training.data import sources

    images = np.zeros((12, 4, 4), dtype=np.uint8)
    full = ArrayImageDataset(images, [i % 2 for i in range(12)])

    def toy(*, val_fraction: float, test_fraction: float, seed: int) -> DatasetSplits:
        return DatasetSplits(full, full, full, {0: "a", 1: "b"}, name=f"toy-{seed}")

    monkeypatch.setattr(sources, "_SOURCES", list(sources._SOURCES))
    register_dataset_source(lambda source: toy if source == "toy" else None)
    assert load_datasets("toy", seed=3).name == "toy-3"
    assert load_datasets(None).name == "mnist-5k"  # the demo's source answers for "no source"
    monkeypatch.setattr(sources, "_SOURCES", [])
    with pytest.raises(DataError, match="no data source given"):
        load_datasets(None)


# ----------------------------------------------------------------------------- bad data


def _odd_folder(root: Path) -> Path:
    """One class of odd modes (LA, P, I;16, CMYK, RGBA), one of broken files."""
    rng = np.random.default_rng(1)
    pixels = rng.integers(0, 255, (12, 10, 3), dtype=np.uint8)
    odd, bad = root / "odd", root / "bad"
    odd.mkdir(parents=True)
    bad.mkdir()
    rgb = Image.fromarray(pixels)
    rgb.convert("LA").save(odd / "la.png")
    rgb.convert("P").save(odd / "p.png")
    Image.fromarray(pixels[..., 0].astype(np.uint16) * 257).save(odd / "i16.png")
    rgb.convert("CMYK").save(odd / "cmyk.jpg")
    rgb.convert("RGBA").save(odd / "rgba.png")
    rgb.save(bad / "good.jpg")
    whole = (bad / "good.jpg").read_bytes()
    (bad / "zero.png").write_bytes(b"")
    (bad / "truncated.jpg").write_bytes(whole[: len(whole) // 2])
    flipped = bytearray(whole)
    flipped[len(flipped) // 3 : len(flipped) // 3 + 40] = b"\xff" * 40
    (bad / "corrupt.jpg").write_bytes(bytes(flipped))
    return root


def test_odd_modes_and_broken_files_skip_or_raise(tmp_path: Path) -> None:
    root = _odd_folder(tmp_path / "data")
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        paths, labels, _, skipped = scan_image_folder(root)
    assert skipped >= 2 and any("zero.png" in str(w.message) for w in caught)
    dataset = ImageFileDataset(paths, labels)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # decode failures the scan could not see are skipped
        items = [dataset[i] for i in range(len(dataset))]
    assert all(image.mode == "RGB" and image.size == (10, 12) for image, _ in items)
    assert {Path(p).name for p in paths} >= {"la.png", "p.png", "i16.png", "cmyk.jpg", "rgba.png"}
    for name in ("zero.png", "truncated.jpg"):  # in strict mode each broken file is an error
        strict = ImageFileDataset(
            [root / "bad" / name, root / "bad" / "good.jpg"], [0, 0], strict=True
        )
        with pytest.raises(DataError, match=name.replace(".", r"\.")):
            strict[0]
    with pytest.raises(DataError, match=r"zero\.png|truncated\.jpg|corrupt\.jpg"):
        scan_image_folder(root, strict=True)


@pytest.mark.parametrize("bad", [-1, 1.5, None, "3", True])
def test_labels_must_be_class_indices(bad) -> None:
    images = np.zeros((2, 4, 4), dtype=np.uint8)
    with pytest.raises(DataError, match="class indices"):
        ArrayImageDataset(images, [0, bad])
    with pytest.raises(DataError, match="class indices"):
        ImageFileDataset(["a.png", "b.png"], [bad, 0])


def _saved(tmp_path: Path, train_labels, test_labels, train_feature, test_feature) -> Path:
    import datasets

    image = Image.new("RGB", (6, 6), (10, 20, 30))
    dd = datasets.DatasetDict(
        {
            split: datasets.Dataset.from_dict(
                {"image": [image] * len(labels), "label": labels},
                features=datasets.Features({"image": datasets.Image(), "label": feature}),
            )
            for split, labels, feature in (
                ("train", train_labels, train_feature),
                ("test", test_labels, test_feature),
            )
        }
    )
    dd.save_to_disk(str(tmp_path / "saved"))
    return tmp_path / "saved"


def test_label_columns_that_do_not_match(tmp_path: Path) -> None:
    import datasets

    ab, ba = datasets.ClassLabel(names=["a", "b"]), datasets.ClassLabel(names=["b", "a"])
    path = _saved(tmp_path / "1", [0, 1] * 5, [0, 1], ab, ba)
    with pytest.raises(DataError, match="does not match the train split"):
        load_datasets(str(path))

    # -1 is ClassLabel's "no label": such rows are skipped, or refused in strict mode
    path = _saved(tmp_path / "2", [0, 1, -1] * 4, [0, -1], ab, ab)
    with pytest.warns(UserWarning, match="without a usable label"):
        splits = load_datasets(str(path), val_fraction=0.25)
    assert len(splits.train) + len(splits.validation) == 8 and len(splits.test) == 1
    with pytest.raises(DataError, match="which is no class"):
        load_datasets(str(path), strict=True)

    # string labels with missing values: the same
    text = datasets.Value("string")
    path = _saved(tmp_path / "3", ["x", "y", None] * 4, ["y", None], text, text)
    with pytest.warns(UserWarning, match="without a usable label"):
        splits = load_datasets(str(path), val_fraction=0.25)
    assert splits.id2label == {0: "x", 1: "y"} and splits.test.labels == [1]
    with pytest.raises(DataError, match="which is no class"):
        load_datasets(str(path), strict=True)
