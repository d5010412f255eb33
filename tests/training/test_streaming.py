"""Streamed training data: held-out splits, shards per reader, resuming the stream, real runs."""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from PIL import Image
from safetensors.torch import load_file

from pb_adapters import PiggybackConfig, get_piggyback_model
from pb_adapters.training.data import DataConfig, DataError, build_transforms
from pb_adapters.training.data.stream_loader import StreamLoader
from pb_adapters.training.data.streaming import load_streaming_datasets
from pb_adapters.training.trainer import PiggybackTrainer, TrainingArguments
from tests.factories import image_folder, tiny_timm
from tests.training.test_distributed import REPO, _free_port
from tests.training.test_distributed import _env as _distributed_env

CLASSES = ["ant", "bee", "cat"]


def _env() -> dict[str, str]:
    # this checkout's sources first: the installed package may be another checkout's
    env = _distributed_env()
    env["PYTHONPATH"] = os.pathsep.join([str(REPO / "src"), str(REPO)])
    return env


def _key(image: Image.Image) -> str:
    return hashlib.sha1(image.tobytes()).hexdigest()


def _keys_transform(image: Image.Image) -> torch.Tensor:
    """Stands for a transform: the image's hash as a tensor of bytes."""
    return torch.tensor(list(bytes.fromhex(_key(image))), dtype=torch.uint8)


def _as_keys(images: torch.Tensor) -> list[str]:
    return [bytes(row.tolist()).hex() for row in images]


@pytest.fixture(scope="module")
def parquet_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """48 distinct images of 3 classes in 4 parquet files (4 shards), no validation split."""
    import datasets

    root = image_folder(tmp_path_factory.mktemp("images"), CLASSES, per_class=16, splits=("all",))
    files = sorted((root / "all").glob("*/*.png"))
    features = datasets.Features(
        {"image": datasets.Image(), "label": datasets.ClassLabel(names=CLASSES)}
    )
    table = datasets.Dataset.from_dict(
        {"image": [str(f) for f in files], "label": [CLASSES.index(f.parent.name) for f in files]},
        features=features,
    ).shuffle(seed=0)
    out = tmp_path_factory.mktemp("parquet") / "data"
    out.mkdir()
    for i in range(4):
        table.shard(4, i, contiguous=True).to_parquet(str(out / f"train-{i}.parquet"))
    return out


def _tiny_transforms():
    cfg = DataConfig(image_size=32, crop_pct=1.0, mean=(0.5,) * 3, std=(0.5,) * 3)
    return build_transforms(data_config=cfg, hflip=True, train_scale=(0.6, 1.0))


# ---------------------------------------------------------------------------- data
def test_held_out_validation_and_test_do_not_overlap_training(parquet_dir: Path) -> None:
    for readers in (1, 2):  # one process, and two (each reader holds out its own share)
        splits = load_streaming_datasets(
            parquet_dir, val_examples=6, test_examples=4, shuffle_buffer=0
        )
        splits.set_transforms(_keys_transform, _keys_transform)
        seen: dict[str, list[str]] = {"train": [], "validation": [], "test": []}
        for rank in range(readers):
            for name in ("validation", "test"):
                loader = StreamLoader(getattr(splits, name), 8, train=False, rank=rank,
                                      world_size=readers)  # fmt: skip
                seen[name] += [k for images, _ in loader for k in _as_keys(images)]
            # one pass of training: 38 examples in batches of one
            train = StreamLoader(splits.train, 1, train=True, rank=rank, world_size=readers)
            per_rank = 38 // readers
            seen["train"] += [k for images, _ in train.epoch(per_rank) for k in _as_keys(images)]
        assert len(seen["validation"]) == 6 and len(seen["test"]) == 4
        assert len(set(seen["train"])) == len(seen["train"]) == 38
        everything = set(seen["train"]) | set(seen["validation"]) | set(seen["test"])
        assert len(everything) == 48
        assert not set(seen["validation"]) & set(seen["train"])
        assert not set(seen["test"]) & set(seen["train"])
        assert not set(seen["test"]) & set(seen["validation"])


def test_image_folder_streams_with_class_names(tmp_path: Path) -> None:
    root = image_folder(tmp_path / "folder", CLASSES, per_class=4)
    splits = load_streaming_datasets(root, shuffle_buffer=4)
    assert splits.id2label == dict(enumerate(CLASSES))
    assert splits.validation is None and splits.test is not None
    with pytest.raises(DataError, match="has a test split"):
        load_streaming_datasets(root, test_examples=2)


def _loader(parquet_dir: Path, buffer: int, workers: int) -> StreamLoader:
    splits = load_streaming_datasets(parquet_dir, shuffle_buffer=buffer, seed=3)
    splits.set_transforms(_keys_transform, None)
    return StreamLoader(splits.train, 2, train=True, num_workers=workers, keep=2)


@pytest.mark.parametrize("workers", [0, 2])
def test_resumed_stream_continues_exactly_without_a_shuffle_buffer(
    parquet_dir: Path, tmp_path: Path, workers: int
) -> None:
    full = _loader(parquet_dir, 0, workers)
    # two epochs of 15 batches: the second crosses from pass 0 into pass 1 (24 batches a pass)
    straight = [k for epoch in range(2) for images, _ in full.epoch(15) for k in _as_keys(images)]
    first = _loader(parquet_dir, 0, workers)
    before = [k for images, _ in first.epoch(15) for k in _as_keys(images)]
    first.save_state(tmp_path, 0, 15)
    state = json.loads((tmp_path / "stream_state_0.json").read_text())
    assert state["num_workers"] == workers and set(state["readers"]) == {
        str(i) for i in range(max(1, workers))
    }
    again = _loader(parquet_dir, 0, workers)
    again.load_state(tmp_path, 0)
    after = [k for images, _ in again.epoch(15) for k in _as_keys(images)]
    assert before + after == straight
    assert len(set(straight[:48])) == 48  # a pass holds every example once


def test_resume_with_a_shuffle_buffer_continues_the_pass(parquet_dir: Path, tmp_path: Path) -> None:
    first = _loader(parquet_dir, 8, 0)
    before = [k for images, _ in first.epoch(6) for k in _as_keys(images)]
    first.save_state(tmp_path, 0, 6)
    again = _loader(parquet_dir, 8, 0)
    again.load_state(tmp_path, 0)
    rest = [k for images, _ in again.epoch(14) for k in _as_keys(images)]  # within pass 0
    # datasets restores the position only approximately around its shuffle buffer (8 here):
    # a few examples near the checkpoint may come again, but the pass is not started over
    assert len(set(before) & set(rest)) <= 8
    assert len(set(before) | set(rest)) >= len(before) + len(rest) - 8
    wrong = _loader(parquet_dir, 8, 2)
    with pytest.raises(DataError, match="num_workers=0"):
        wrong.load_state(tmp_path, 0)


# ---------------------------------------------------------------------------- training
def _train(data: Path, out: Path, **kwargs):
    splits = load_streaming_datasets(data, val_examples=6, test_examples=6, shuffle_buffer=0)
    splits.set_transforms(*_tiny_transforms())
    torch.manual_seed(0)
    model = get_piggyback_model(tiny_timm("test_resnet"), PiggybackConfig(id2label=splits.id2label))
    args = TrainingArguments(
        output_dir=str(out), num_epochs=2, batch_size=4, steps_per_epoch=3, mask_lr=2e-3,
        head_lr=1e-2, num_workers=0, disable_progress_bar=True, report_to="none", save_steps=1,
        save_total_limit=None, **kwargs,
    )  # fmt: skip
    trainer = PiggybackTrainer(model, args, splits=splits)
    result = trainer.train()
    masks = {
        path: (layer.mask(layer.active_adapter).detach(), layer.mask_scores[layer.active_adapter])
        for path, layer in trainer.model.adapter_layers()
    }
    return result, masks


def test_streamed_run_trains_and_resumes_to_the_same_end(parquet_dir: Path, tmp_path: Path) -> None:
    result, masks = _train(parquet_dir, tmp_path / "full")
    assert [r["epoch"] for r in result.history] == [1, 2]
    assert result.validation["num_samples"] == 6 and result.test["num_samples"] == 6
    checkpoints = sorted((tmp_path / "full" / "checkpoints").glob("step-*"))
    assert [p.name for p in checkpoints][-1] == "step-00000006"
    assert all((p / "stream_state_0.json").is_file() for p in checkpoints)
    # stopped mid-way through epoch 2, then resumed
    shutil.copytree(tmp_path / "full", tmp_path / "resumed")
    for later in sorted((tmp_path / "resumed" / "checkpoints").glob("step-*"))[4:]:
        shutil.rmtree(later)
    again, masks_again = _train(parquet_dir, tmp_path / "resumed", resume_from_checkpoint="latest")
    assert masks.keys() == masks_again.keys()
    for path, (mask, scores) in masks.items():
        assert torch.equal(mask, masks_again[path][0]), path
        assert torch.equal(scores, masks_again[path][1]), path
    assert again.history == result.history or [
        {k: v for k, v in r.items() if k != "epoch_seconds"} for r in again.history
    ] == [{k: v for k, v in r.items() if k != "epoch_seconds"} for r in result.history]
    assert again.test == result.test


def test_cli_trains_from_a_streamed_image_folder(tmp_path: Path) -> None:
    root = image_folder(tmp_path / "folder", CLASSES, per_class=6, splits=("train",))
    out = tmp_path / "out"
    proc = subprocess.run(
        [sys.executable, "examples/train.py", "--model", "test_resnet", "--dataset", str(root),
         "--streaming", "--steps-per-epoch", "2", "--batch-size", "4", "--epochs", "2",
         "--val-examples", "3", "--test-examples", "3", "--image-size", "32", "--shuffle-buffer",
         "8", "--output-dir", str(out), "--report-to", "none", "--num-workers", "0"],
        cwd=REPO, env=_env(), capture_output=True, text=True, timeout=600,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert "2 epoch(s) x 2 step(s)" in proc.stdout
    assert "4/4" in proc.stderr  # the progress bar knows the number of steps
    summary = json.loads((out / "summary.json").read_text())
    assert summary["splits"] == {"train": None, "validation": None, "test": None}
    assert summary["reload_matches"] is True
    bad = subprocess.run(
        [sys.executable, "examples/train.py", "--steps-per-epoch", "2"],
        cwd=REPO, env=_env(), capture_output=True, text=True, timeout=600,
    )  # fmt: skip
    assert bad.returncode != 0 and "--steps-per-epoch applies to --streaming" in bad.stderr


def test_unknown_size_needs_steps_per_epoch(parquet_dir: Path, tmp_path: Path) -> None:
    splits = load_streaming_datasets(parquet_dir)
    splits.set_transforms(*_tiny_transforms())
    model = get_piggyback_model(tiny_timm("test_resnet"), PiggybackConfig(id2label=splits.id2label))
    args = TrainingArguments(output_dir=str(tmp_path), num_workers=0, report_to="none")
    with pytest.raises(DataError, match="--steps-per-epoch"):
        PiggybackTrainer(model, args, splits=splits).train()


# ---------------------------------------------------------------------------- two processes
def test_two_processes_read_disjoint_shards(parquet_dir: Path, tmp_path: Path) -> None:
    cmd = [
        sys.executable, "-m", "accelerate.commands.launch",
        "--multi_gpu", "--num_processes", "2", "--num_machines", "1",
        "--mixed_precision", "no", "--dynamo_backend", "no",
        "--main_process_port", str(_free_port()),
        str(Path(__file__).with_name("streaming_worker.py")), str(parquet_dir), str(tmp_path),
    ]  # fmt: skip
    proc = subprocess.run(cmd, cwd=REPO, env=_env(), capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    ranks = [json.loads((tmp_path / f"rank-{r}.json").read_text()) for r in (0, 1)]
    assert [r["num_processes"] for r in ranks] == [2, 2]
    seen = [r["seen"] for r in ranks]
    assert len(seen[0]) == len(seen[1]) == 2 * 2 * 4  # epochs x steps x batch
    assert not set(seen[0]) & set(seen[1])
    m0, m1 = (load_file(tmp_path / f"rank-{r}.safetensors") for r in (0, 1))
    assert m0.keys() == m1.keys() and all(torch.equal(m0[k], m1[k]) for k in m0)


def test_a_tampered_stream_position_is_refused_and_the_run_falls_back(
    parquet_dir: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    result, masks = _train(parquet_dir, tmp_path / "full")
    shutil.copytree(tmp_path / "full", tmp_path / "resumed")
    kept = sorted((tmp_path / "resumed" / "checkpoints").glob("step-*"))
    for later in kept[4:]:
        shutil.rmtree(later)
    # Valid JSON with a moved position: only the checkpoint's manifest can tell.
    state_file = kept[3] / "stream_state_0.json"
    state = json.loads(state_file.read_text())
    state["next_reader"] = int(state["next_reader"]) + 1
    state_file.write_text(json.dumps(state) + "\n")
    capsys.readouterr()
    again, masks_again = _train(parquet_dir, tmp_path / "resumed", resume_from_checkpoint="latest")
    out = capsys.readouterr().out
    assert "skipped unusable checkpoint" in out and "does not match its recorded hash" in out
    assert f"falling back to the previous complete checkpoint, {kept[2]}" in out
    for path, (mask, scores) in masks.items():
        assert torch.equal(mask, masks_again[path][0]), path
        assert torch.equal(scores, masks_again[path][1]), path
    assert again.test == result.test
