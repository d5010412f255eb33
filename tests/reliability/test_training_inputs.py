"""Bad training inputs: data, learning rates, diverging runs, and the command line's errors.

Each class is a table of cases. Data layouts that cannot be trained on (symlink loops, one file
under two classes or in two splits, empty class folders, a single class, splits left without
images, images above the pixel bound) must raise a ``DataError`` while the data is loaded and
checked as the training command line does, before a trainer exists; layouts that are only untidy (files reached twice through links) load with each
image once. Learning rates that are not finite, negative or beyond float32 are a ``ConfigError``
before the first step. A run whose loss becomes non-finite or explodes stops with a
``DivergenceError`` and saves no artifact. Through ``pb-adapters train`` and ``examples/train.py``
every one of these ends with one line on stderr, no traceback, exit status 2 (1 for a run
that failed: a diverged run, an output folder that cannot be written), and an output folder that
was not created or not changed. The counts are printed (``-s``).
"""

from __future__ import annotations

import collections
import io
import json
import os
import re
import sys
import warnings
import zlib
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from PIL import Image, ImageFile

import pb_adapters.training.trainer as trainer_module
from pb_adapters import PiggybackConfig, cli, get_piggyback_model
from pb_adapters.errors import ConfigError, PbAdaptersError
from pb_adapters.training.cli import main as train_main
from pb_adapters.training.data import (
    ArrayImageDataset,
    DataConfig,
    build_transforms,
    check_splits,
    load_hf_datasets,
    load_image_folder,
)
from pb_adapters.training.errors import DataError, DivergenceError
from pb_adapters.training.trainer import PiggybackTrainer, TrainingArguments
from tests.factories import tiny_timm

pytestmark = pytest.mark.skipif(os.name != "posix", reason="symlinks")
COUNTS: collections.Counter[tuple[str, str]] = collections.Counter()
MESSAGES: dict[str, str] = {}  # command-line case -> the line it printed


def _images(folder: Path, n: int = 5, start: int = 0, size: int = 12) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(start + len(str(folder)))
    for i in range(start, start + n):
        pixels = rng.integers(0, 255, (size, size, 3), dtype=np.uint8)
        Image.fromarray(pixels).save(folder / f"{i}.png")


def _two_classes(root: Path, n: int = 10) -> Path:
    _images(root / "a", n)
    _images(root / "b", n)
    return root


def _huge_png(path: Path, side: int = 13000) -> None:
    """A valid 1-bit PNG of ``side`` x ``side`` pixels (small on disk, 500 MB once RGB)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new("1", (side, side)).save(path)


# ------------------------------------------------------------------------------ data layouts
def loop_to_self(root: Path) -> Path:
    _two_classes(root)
    (root / "a" / "again").symlink_to(root / "a", target_is_directory=True)
    return root


def loop_to_grandparent(root: Path) -> Path:
    _two_classes(root)
    _images(root / "a" / "deep" / "er", 2)
    (root / "a" / "deep" / "er" / "up").symlink_to(root / "a", target_is_directory=True)
    return root


def loop_to_root(root: Path) -> Path:
    _two_classes(root)
    (root / "b" / "everything").symlink_to(root, target_is_directory=True)
    return root


def one_file_two_classes(root: Path) -> Path:
    _two_classes(root)
    (root / "b" / "stolen.png").symlink_to(root / "a" / "0.png")
    return root


def hard_link_two_classes(root: Path) -> Path:
    _two_classes(root)
    os.link(root / "a" / "1.png", root / "b" / "linked.png")  # same inode, other path
    return root


def train_file_in_test_split(root: Path) -> Path:
    _two_classes(root / "train")
    _two_classes(root / "test", 3)
    (root / "test" / "a" / "copy.png").symlink_to(root / "train" / "a" / "3.png")
    return root


def split_folder_linked_to_train(root: Path) -> Path:
    _two_classes(root / "train")
    (root / "test").symlink_to(root / "train", target_is_directory=True)
    return root


def _third_class_of(files: dict[str, bytes]) -> Callable[[Path], Path]:
    """A builder: two good classes, and a third folder holding only ``files``."""

    def build(root: Path) -> Path:
        _two_classes(root)
        (root / "c").mkdir()
        for name, content in files.items():
            (root / "c" / name).write_bytes(content)
        return root

    return build


empty_class_folder = _third_class_of({})
class_of_unreadable_files = _third_class_of({"broken.png": b"\x89PNG\r\n\x1a\n" + bytes(30)})
class_of_text_files = _third_class_of({"readme.txt": b"not an image"})


def single_class(root: Path) -> Path:
    _images(root / "only", 10)
    return root


def single_class_in_train_split(root: Path) -> Path:
    _images(root / "train" / "a", 10)
    _images(root / "test" / "a", 3)
    return root


def huge_image(root: Path) -> Path:
    _two_classes(root)
    _huge_png(root / "b" / "huge.png")
    return root


def header_claims_huge_size(root: Path) -> Path:
    _two_classes(root)

    # a PNG whose header claims 100000 x 100000 pixels, with 16 bytes of (bogus) image data
    def chunk(kind: bytes, body: bytes) -> bytes:
        crc = zlib.crc32(kind + body).to_bytes(4, "big")
        return len(body).to_bytes(4, "big") + kind + body + crc

    ihdr = (100000).to_bytes(4, "big") * 2 + bytes([8, 2, 0, 0, 0])
    png = chunk(b"IHDR", ihdr) + chunk(b"IDAT", bytes(16)) + chunk(b"IEND", b"")
    (root / "a" / "claims.png").write_bytes(b"\x89PNG\r\n\x1a\n" + png)
    return root


def duplicate_file_links(root: Path) -> Path:
    _two_classes(root)
    (root / "a" / "dup.png").symlink_to(root / "a" / "0.png")
    (root / "a" / "dup2.png").symlink_to("0.png")
    return root


def duplicate_folder_links(root: Path) -> Path:
    _two_classes(root)
    _images(root / "a" / "sub", 3, start=10)
    (root / "a" / "same").symlink_to(root / "a" / "sub", target_is_directory=True)
    return root


# (builder, load options, expected: an error message fragment, or the number of images)
DATA_CASES: list[tuple[Callable[[Path], Path], dict[str, Any], str | int]] = [
    (loop_to_self, {}, "symlink loop"),
    (loop_to_grandparent, {}, "symlink loop"),
    (loop_to_root, {}, "symlink loop"),
    (one_file_two_classes, {}, "two labels"),
    (hard_link_two_classes, {}, "two labels"),
    (train_file_in_test_split, {}, "one split only"),
    (split_folder_linked_to_train, {}, "one split only"),
    (empty_class_folder, {}, "holds no readable images"),
    (class_of_unreadable_files, {}, "holds no readable images"),
    (class_of_text_files, {}, "holds no readable images"),
    (single_class, {}, "needs at least two"),
    (single_class_in_train_split, {}, "needs at least two"),
    (_two_classes, {"val_fraction": 0.04}, "validation split .* would have no images"),
    (_two_classes, {"val_fraction": 0.1, "test_fraction": 0.04}, "test split .* no images"),
    (_two_classes, {"val_fraction": 0.6, "test_fraction": 0.6}, "fractions"),
    (huge_image, {}, "13000 x 13000"),
    (header_claims_huge_size, {}, "too large|100000 x 100000"),
    (huge_image, {"max_pixels": 1000}, "more than the bound of 1,000"),
    # accepted: each image once, and the bound can be raised
    (duplicate_file_links, {}, 20),
    (duplicate_folder_links, {}, 23),
    (huge_image, {"max_pixels": 200_000_000}, 21),
    (_two_classes, {"test_fraction": 0.0}, 20),
]


def _load_for_training(root: Path, **options: Any) -> Any:
    """Load as the training command line does: the folder, then the splits' check."""
    splits = load_image_folder(root, **options)
    fractions = {"val_fraction": 0.1, "test_fraction": 0.2}
    fractions.update({k: v for k, v in options.items() if k in fractions})
    check_splits(splits, **fractions)
    return splits


@pytest.mark.parametrize(("build", "options", "expected"), DATA_CASES)
def test_data_problems_are_refused_while_loading(
    build: Callable[[Path], Path],
    options: dict[str, Any],
    expected: str | int,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    root = build(tmp_path / "data") or tmp_path / "data"
    decoded: list[str] = []
    original_load = ImageFile.ImageFile.load

    def recording_load(image: Any) -> Any:
        decoded.append(image.size)
        return original_load(image)

    monkeypatch.setattr(ImageFile.ImageFile, "load", recording_load)
    before = sorted(str(p) for p in tmp_path.rglob("*"))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        if isinstance(expected, str):
            with pytest.raises(DataError, match=expected):
                _load_for_training(root, **options)
            COUNTS[("data", "refused: DataError")] += 1
        else:
            splits = _load_for_training(root, **options)
            total = len(splits.train) + len(splits.validation) + len(splits.test)
            assert total == expected
            held = [os.stat(p).st_ino for s in (splits.train, splits.validation, splits.test)
                    for p in s.paths]  # fmt: skip
            assert len(held) == len(set(held))  # no image twice, in no two splits
            COUNTS[("data", "accepted")] += 1
    assert sorted(str(p) for p in tmp_path.rglob("*")) == before  # nothing written
    assert not [size for size in decoded if size[0] * size[1] > 10**6]  # nothing large decoded


def _hf_rows(images: list[bytes], labels: list[int]) -> Any:
    import datasets

    features = datasets.Features(
        {"image": datasets.Image(), "label": datasets.ClassLabel(names=["a", "b"])}
    )
    rows = {"image": [{"bytes": b, "path": None} for b in images], "label": labels}
    return datasets.Dataset.from_dict(rows, features=features)


def _png(side: int, mode: str = "RGB") -> bytes:
    buffer = io.BytesIO()
    Image.new(mode, (side, side)).save(buffer, format="PNG")
    return buffer.getvalue()


def test_hub_style_datasets_are_checked_too(tmp_path: Path) -> None:
    small = _png(8)
    huge = _png(13000, "1")
    _hf_rows([small] * 10, [0] * 10).save_to_disk(str(tmp_path / "one"))
    one = load_hf_datasets(str(tmp_path / "one"))  # evaluating one class is fine; training not
    with pytest.raises(DataError, match="at least two"):
        check_splits(one, val_fraction=0.1, test_fraction=0.2)
    _hf_rows([small] * 19 + [huge], [0, 1] * 10).save_to_disk(str(tmp_path / "big"))
    splits = load_hf_datasets(str(tmp_path / "big"), val_fraction=0.0, test_fraction=0.0)
    with pytest.raises(DataError, match="13000 x 13000"):  # refused when read, not skipped
        splits.train[len(splits.train) - 1]
    with pytest.raises(DataError, match="cannot load the data set"):
        load_hf_datasets(str(tmp_path / "no-such-dataset-here"))
    COUNTS[("data", "refused: DataError")] += 3


# ------------------------------------------------------------------------------ the trainer
def _digits_like(n: int = 24, classes: int = 3) -> ArrayImageDataset:
    rng = np.random.default_rng(0)
    images = rng.integers(0, 255, (n, 16, 16, 3), dtype=np.uint8)
    labels = [i % classes for i in range(n)]
    tf, _ = build_transforms(data_config=DataConfig(image_size=16, crop_pct=1.0), hflip=False)
    return ArrayImageDataset(images, labels, transform=tf)


def _model(classes: int = 3) -> Any:
    labels = {i: str(i) for i in range(classes)}
    return get_piggyback_model(tiny_timm("test_resnet"), PiggybackConfig(id2label=labels))


def _args(out: Path, **kwargs: Any) -> TrainingArguments:
    values = {
        "output_dir": str(out),
        "num_epochs": 2,
        "batch_size": 8,
        "num_workers": 0,
        "disable_progress_bar": True,
        "report_to": "none",
        "save_steps": 1,
        **kwargs,
    }
    return TrainingArguments(**values)


def test_trainer_refuses_data_it_cannot_learn_from(tmp_path: Path) -> None:
    empty = ArrayImageDataset(np.zeros((0, 8, 8), dtype=np.uint8), [])
    one = ArrayImageDataset(np.zeros((6, 8, 8), dtype=np.uint8), [2] * 6)
    for dataset, message in ((empty, "no images"), (one, "single class")):
        with pytest.raises(DataError, match=message):
            PiggybackTrainer(_model(), _args(tmp_path / "out"), train_dataset=dataset)
        COUNTS[("data", "refused: DataError")] += 1
    assert not (tmp_path / "out").exists()
    # an empty test split is no test split: nothing is reported on zero images
    none = ArrayImageDataset(np.zeros((0, 16, 16, 3), dtype=np.uint8), [])
    trainer = PiggybackTrainer(
        _model(),
        _args(tmp_path / "run", num_epochs=1, max_steps_per_epoch=1, save_artifact=False),
        train_dataset=_digits_like(),
        eval_dataset=none,
        test_dataset=none,
    )
    result = trainer.train()
    assert result.test == {} and result.validation == {}
    lines = (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()
    assert [json.loads(line).get("split") for line in lines] == [None]  # no test record
    COUNTS[("data", "accepted")] += 1


BAD_RATES = [float("inf"), float("-inf"), float("nan"), -1e-4, 1e39, "0.1", True]


@pytest.mark.parametrize("field", ["mask_lr", "head_lr", "norm_lr", "backbone_lr"])
@pytest.mark.parametrize("value", BAD_RATES)
def test_learning_rates_that_cannot_train_are_config_errors(field: str, value: Any) -> None:
    with pytest.raises(ConfigError, match=field):
        TrainingArguments(**{field: value})
    COUNTS[("learning rates", "refused: ConfigError")] += 1


@pytest.mark.parametrize("value", [float("inf"), float("nan"), -1.0, 1e39])
def test_config_learning_rates_are_checked_before_training(value: float, tmp_path: Path) -> None:
    labels = {0: "a", 1: "b", 2: "c"}
    try:  # the config may refuse the value itself; else the trainer must, before any output
        config = PiggybackConfig(id2label=labels, mask_lr=value)
        model = get_piggyback_model(tiny_timm("test_resnet"), config)
        trainer = PiggybackTrainer(model, _args(tmp_path / "out"), train_dataset=_digits_like())
        trainer.train()
    except PbAdaptersError as err:
        COUNTS[("learning rates", f"refused: {type(err).__name__}")] += 1
    else:
        pytest.fail(f"mask_lr={value} was accepted")
    assert not (tmp_path / "out").exists()


# ------------------------------------------------------------------------------ divergence
def _scaled_logits(factor: float, from_call: int) -> Callable[..., Any]:
    calls = {"n": 0}
    original = trainer_module.forward_logits

    def forward(model: Any, images: Any, transformers_api: bool) -> Any:
        logits = original(model, images, transformers_api)
        if model.training:
            calls["n"] += 1
            if calls["n"] >= from_call:
                return logits * factor if factor == factor else logits * float("nan")
        return logits

    return forward


DIVERGENCE_CASES = [
    ("loss exploded", 1e7, 3, "exploded"),
    ("nan logits", float("nan"), 2, "became nan"),
    ("inf logits", float("inf"), 4, "became (nan|inf)"),
]


@pytest.mark.parametrize(("name", "factor", "call", "message"), DIVERGENCE_CASES)
def test_a_diverging_run_stops_without_an_artifact(
    name: str, factor: float, call: int, message: str, tmp_path: Path, monkeypatch
) -> None:
    monkeypatch.setattr(trainer_module, "forward_logits", _scaled_logits(factor, call))
    out = tmp_path / "run"
    trainer = PiggybackTrainer(_model(), _args(out), train_dataset=_digits_like())
    with pytest.raises(DivergenceError, match=message):
        trainer.train()
    assert not (out / "adapter_model.safetensors").exists() and not (out / "results.json").exists()
    steps = sorted(p.name for p in (out / "checkpoints").glob("step-*"))
    assert steps == [f"step-{s:08d}" for s in range(1, call)][-2:]  # all before the blow-up
    COUNTS[("divergence", "stopped: DivergenceError")] += 1


def test_a_real_learning_rate_blow_up_is_caught(tmp_path: Path) -> None:
    trainer = PiggybackTrainer(
        _model(), _args(tmp_path / "run", head_lr=1e30, mask_lr=1e30), train_dataset=_digits_like()
    )
    with pytest.raises(DivergenceError):
        trainer.train()
    assert not (tmp_path / "run" / "adapter_model.safetensors").exists()
    COUNTS[("divergence", "stopped: DivergenceError")] += 1


def test_the_check_can_be_turned_off(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(trainer_module, "forward_logits", _scaled_logits(1e7, 3))
    args = _args(tmp_path / "run", divergence_check=False, save_artifact=False)
    result = PiggybackTrainer(_model(), args, train_dataset=_digits_like()).train()
    assert len(result.history) == 2
    COUNTS[("divergence", "accepted (check off)")] += 1


# ------------------------------------------------------------------------------ command line
def _cli_folder(root: Path, build: Callable[[Path], Path] = _two_classes) -> str:
    return str(build(root) or root)


def _cli_cases(tmp: Path) -> list[tuple[str, list[str], str]]:
    good = _cli_folder(tmp / "good")
    a_file = tmp / "a-file"
    a_file.write_text("not a folder")
    bad_yaml = tmp / "bad.yaml"
    bad_yaml.write_text("epochs: [1, 2\n")
    return [
        ("missing data", ["--dataset", str(tmp / "no-such-folder")], "no such folder|cannot load"),
        ("one class", ["--dataset", _cli_folder(tmp / "one", single_class)], "at least two"),
        ("empty class", ["--dataset", _cli_folder(tmp / "e", empty_class_folder)], "no readable"),
        ("symlink loop", ["--dataset", _cli_folder(tmp / "l", loop_to_self)], "symlink loop"),
        ("huge image", ["--dataset", _cli_folder(tmp / "h", huge_image)], "13000 x 13000"),
        ("empty split", ["--dataset", good, "--val-fraction", "0.04"], "no images"),
        ("resume, none", ["--dataset", good, "--resume"], "no checkpoint to resume from"),
        ("resume, path", ["--dataset", good, "--resume", str(tmp)], "not a complete checkpoint"),
        ("lr inf", ["--dataset", good, "--head-lr", "inf"], "head_lr"),
        ("lr nan", ["--dataset", good, "--head-lr", "nan"], "head_lr"),
        ("lr negative", ["--dataset", good, "--mask-lr", "-1"], "mask_lr"),
        ("lr overflow", ["--dataset", good, "--mask-lr", "1e39"], "mask_lr"),
        ("pixel bound", ["--dataset", good, "--max-image-pixels", "-1"], "max-image-pixels"),
        ("unknown model", ["--dataset", good, "--model", "no-such-org/no-model"], "the model"),
        ("output is a file", ["--dataset", good, "--output-dir", str(a_file)], "output folder"),
        ("bad yaml", ["--dataset", good, "--config", str(bad_yaml)], "not valid YAML"),
        (
            "diverges",
            ["--dataset", good, "--head-lr", "1e30", "--mask-lr", "1e30"],
            "training loss",
        ),
    ]


#: Cases where the command was valid but the run failed (the environment, a diverged run): exit
#: status 1; every other case is a usage error (status 2).
RUN_FAILURES = {"output is a file", "diverges"}
_COMMON = ["--model", "test_resnet", "--image-size", "16", "--epochs", "1", "--batch-size", "4"]
_COMMON += ["--num-workers", "0", "--no-progress", "--report-to", "none", "--cpu"]


@pytest.mark.parametrize("entry", ["pb-adapters train", "examples/train.py"])
def test_every_user_error_is_one_line_with_its_status(
    entry: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    outcomes = []
    for name, argv, message in _cli_cases(tmp_path):
        out = tmp_path / f"out-{len(outcomes)}"
        has_out = "--output-dir" in argv
        full = [*_COMMON, *argv] + ([] if has_out else ["--output-dir", str(out)])
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            try:
                code = cli.main(["train", *full]) if entry.startswith("pb") else train_main(full)
            except SystemExit as exit_:  # argparse's own usage errors
                code = exit_.code
        err = capsys.readouterr().err.strip().splitlines()
        assert code == (1 if name in RUN_FAILURES else 2), (name, code, err)
        assert len(err) == 1 and "Traceback" not in err[0], (name, err)
        assert re.search(message, err[0]), (name, err[0])
        MESSAGES[name] = err[0]
        if not has_out:
            made = sorted(p.name for p in out.rglob("*")) if out.exists() else []
            assert not made or name == "diverges", (name, made)  # a refused run writes nothing
        outcomes.append(name)
    COUNTS[(f"command line ({entry})", "refused: one line, status 1 or 2")] += len(outcomes)


def test_the_example_script_exits_2_with_one_line(tmp_path: Path) -> None:
    """The real ``examples/train.py`` process, for the wiring of its exit status."""
    import subprocess

    repo = Path(__file__).resolve().parents[2]
    argv = [*_COMMON, "--dataset", _cli_folder(tmp_path / "d"), "--resume"]
    argv += ["--output-dir", str(tmp_path / "out")]
    env = {**os.environ, "PYTHONWARNINGS": "ignore"}
    proc = subprocess.run(
        [sys.executable, str(repo / "examples" / "train.py"), *argv],
        capture_output=True,
        text=True,
        timeout=300,
        cwd=repo,
        env=env,
    )
    lines = proc.stderr.strip().splitlines()
    assert proc.returncode == 2 and len(lines) == 1, proc.stderr[-2000:]
    assert "no checkpoint to resume from" in lines[0] and "Traceback" not in proc.stderr
    assert not (tmp_path / "out").exists()
    COUNTS[("command line (process)", "refused: one line, status 2")] += 1


def test_report() -> None:
    """Print the counts (``-s``)."""
    for (family, outcome), count in sorted(COUNTS.items()):
        print(f"training inputs {family}: {outcome}: {count}", file=sys.stderr)
    for name, line in MESSAGES.items():
        print(f"  {name}: {line}", file=sys.stderr)
    assert sum(COUNTS.values()) > 0
    torch.manual_seed(0)
