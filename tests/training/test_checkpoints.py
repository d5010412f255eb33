"""Checkpoints: save_steps / epoch checkpoints, rotation, bit-exact resume, Ctrl-C saving."""

from __future__ import annotations

import json
import shutil
from collections.abc import Iterator
from pathlib import Path

import pytest
import torch

import pb_adapters.training.trainer as trainer_module
from pb_adapters import PiggybackConfig, get_piggyback_model
from pb_adapters.errors import ConfigError
from pb_adapters.training.data import DataConfig, build_transforms
from pb_adapters.training.demo import load_demo_dataset
from pb_adapters.training.errors import CheckpointError
from pb_adapters.training.trainer import PiggybackTrainer, TrainingArguments, latest_checkpoint
from tests.devices import cpu_copy, exactly, same_tensors
from tests.factories import tiny_timm


@pytest.fixture(scope="module")
def splits():
    data = load_demo_dataset(seed=0).limit(48, 16, seed=0)
    cfg = DataConfig(image_size=32, crop_pct=1.0, mean=(0.5,) * 3, std=(0.5,) * 3)
    # random crops: the data augmentation's RNG must be restored for an exact resume
    return data.set_transforms(
        *build_transforms(data_config=cfg, hflip=True, train_scale=(0.6, 1.0))
    )


def _trainer(splits, out: Path, **kwargs) -> PiggybackTrainer:
    model = get_piggyback_model(tiny_timm("test_resnet"), PiggybackConfig(id2label=splits.id2label))
    args = TrainingArguments(
        output_dir=str(out),
        num_epochs=2,
        batch_size=16,
        max_steps_per_epoch=3,
        mask_lr=1e-2,
        head_lr=1e-2,
        num_workers=0,
        disable_progress_bar=True,
        save_artifact=False,
        report_to="none",
        **kwargs,
    )
    return PiggybackTrainer(model, args, splits=splits)


def _trained(trainer: PiggybackTrainer) -> dict[str, torch.Tensor]:
    """CPU copies of the masks' scores and the head (trained ones may live on CUDA)."""
    groups = trainer.model.parameter_groups()
    names = {id(p): n for n, p in trainer.model.named_parameters()}
    return cpu_copy({names[id(p)]: p for g in ("masks", "head") for p in groups[g]})


def _curve(result) -> list[tuple[float, float, float]]:
    return [(h["train_loss"], h["train_top1"], h["val_loss"]) for h in result.history]


@pytest.fixture
def exact(device: torch.device) -> Iterator[None]:
    """Bit-exact runs: on CUDA with deterministic algorithms, on the CPU as they are."""
    with exactly(device):
        yield


@pytest.mark.usefixtures("exact")
def test_resume_is_bit_exact(splits, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    # the reference: one uninterrupted run, checkpoints every 2 steps and after every epoch
    ref = _trainer(splits, tmp_path / "ref", save_steps=2)
    ref_result = ref.train()
    expected = _trained(ref)
    initial = _trained(_trainer(splits, tmp_path / "unused"))
    assert not same_tensors(expected, initial)  # the run really changed masks and head
    assert (tmp_path / "ref" / "training_curves.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    ckpts = tmp_path / "ref" / "checkpoints"
    # steps 2 (save_steps), 3 (epoch 1), 4 (save_steps), 6 (epoch 2): only the last two remain
    assert sorted(p.name for p in ckpts.iterdir()) == ["step-00000004", "step-00000006"]
    assert latest_checkpoint(tmp_path / "ref") == ckpts / "step-00000006"
    state = json.loads((ckpts / "step-00000004" / "trainer_state.json").read_text())
    assert (state["epoch"], state["batches_in_epoch"], state["global_step"]) == (2, 1, 4)
    assert state["best_epoch"] == 1 and len(state["history"]) == 1
    assert (ckpts / "step-00000004" / "best_state.safetensors").is_file()

    # resuming from the mid-epoch step checkpoint into another folder ends identically
    resumed = _trainer(
        splits, tmp_path / "other", resume_from_checkpoint=str(ckpts / "step-00000004")
    )
    result = resumed.train()
    assert same_tensors(_trained(resumed), expected)
    assert _curve(result) == _curve(ref_result) and result.best_epoch == ref_result.best_epoch
    lines = (tmp_path / "other" / "metrics.jsonl").read_text().splitlines()
    assert [json.loads(x).get("epoch") for x in lines] == [1, 2, None]

    # Ctrl-C in the 5th training batch: a checkpoint of the 4 finished steps is saved first
    calls = {"n": 0}
    original = trainer_module.forward_logits

    def interrupting(model, images, transformers_api):
        if model.training:
            calls["n"] += 1
            if calls["n"] == 5:
                raise KeyboardInterrupt
        return original(model, images, transformers_api)

    monkeypatch.setattr(trainer_module, "forward_logits", interrupting)
    with pytest.raises(KeyboardInterrupt):
        _trainer(splits, tmp_path / "cut").train()
    monkeypatch.setattr(trainer_module, "forward_logits", original)
    saved = latest_checkpoint(tmp_path / "cut")
    assert saved is not None and saved.name == "step-00000004"
    assert not list((tmp_path / "cut" / "checkpoints").glob(".tmp-*"))
    again = _trainer(splits, tmp_path / "cut", resume_from_checkpoint="latest")
    result = again.train()
    assert same_tensors(_trained(again), expected)
    assert _curve(result) == _curve(ref_result)


def test_resume_errors(splits, tmp_path: Path) -> None:
    with pytest.raises(CheckpointError, match="no checkpoint"):
        _trainer(splits, tmp_path / "a", resume_from_checkpoint="latest").train()
    (tmp_path / "half").mkdir()
    with pytest.raises(CheckpointError, match="not a complete checkpoint"):
        _trainer(splits, tmp_path / "a", resume_from_checkpoint=str(tmp_path / "half")).train()
    assert not (tmp_path / "a").exists()  # a refused resume writes nothing
    with pytest.raises(ConfigError, match="save_steps"):
        TrainingArguments(save_steps=0)


@pytest.mark.usefixtures("exact")
def test_resume_with_gradient_accumulation(splits, tmp_path: Path) -> None:
    # 3 batches per epoch, 2 per step: the odd batch at an epoch's end must not leak into the
    # next epoch's first step, in the uninterrupted run as in a resumed one
    kwargs = {"gradient_accumulation_steps": 2, "save_steps": 1, "save_total_limit": None}
    ref = _trainer(splits, tmp_path / "ref", **kwargs)
    ref.args.batch_size = 8
    ref.train()
    expected = _trained(ref)
    names = sorted(p.name for p in (tmp_path / "ref" / "checkpoints").iterdir())
    assert names == ["step-00000001", "step-00000002", "step-00000003"]
    for name in names[:2]:  # the end of epoch 1, and one step into epoch 2
        ckpt = tmp_path / "ref" / "checkpoints" / name
        resumed = _trainer(splits, tmp_path / name, resume_from_checkpoint=str(ckpt), **kwargs)
        resumed.args.batch_size = 8
        resumed.train()
        assert same_tensors(_trained(resumed), expected), name


def _files(folder: Path) -> dict[str, bytes]:
    return {str(p.relative_to(folder)): p.read_bytes() for p in folder.rglob("*") if p.is_file()}


@pytest.mark.usefixtures("exact")
def test_resume_falls_back_past_a_corrupt_or_incomplete_newest_checkpoint(
    splits, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    kwargs = {"save_steps": 1, "save_total_limit": None}
    ref = _trainer(splits, tmp_path / "ref", **kwargs)
    ref.train()
    expected = _trained(ref)
    capsys.readouterr()

    def damaged(name: str, damage) -> Path:
        """The reference's folder as a run killed after step 5 left it, step 5 damaged."""
        out = tmp_path / name
        shutil.copytree(tmp_path / "ref", out)
        shutil.rmtree(out / "checkpoints" / "step-00000006")
        damage(out / "checkpoints" / "step-00000005")
        return out

    def flip_a_byte(folder: Path) -> None:
        data = bytearray((folder / "model.safetensors").read_bytes())
        data[len(data) // 2] ^= 0x10
        (folder / "model.safetensors").write_bytes(bytes(data))

    cases = {
        "corrupt": (flip_a_byte, "does not match its recorded hash"),
        "missing": (lambda f: (f / "optimizer.safetensors").unlink(), "is missing"),
    }
    for name, (damage, reason) in cases.items():
        out = damaged(name, damage)
        resumed = _trainer(splits, out, resume_from_checkpoint="latest", **kwargs)
        resumed.train()
        said = capsys.readouterr().out
        assert "step-00000005" in said and reason in said, said
        assert f"falling back to the previous complete checkpoint, {out}" in said
        assert "step-00000004" in said and "resumed from" in said
        assert same_tensors(_trained(resumed), expected), name  # as if never interrupted

    # no usable checkpoint at all: refused, and the run's files are left as they were
    out = damaged("none usable", flip_a_byte)
    for folder in (out / "checkpoints").glob("step-*"):
        (folder / "scheduler.json").write_text("{}")
    before = _files(out)
    with pytest.raises(CheckpointError, match="no usable checkpoint to resume from"):
        _trainer(splits, out, resume_from_checkpoint="latest", **kwargs).train()
    assert _files(out) == before
    # an explicit path gets no fallback
    with pytest.raises(CheckpointError, match="recorded hash"):
        path = out / "checkpoints" / "step-00000005"
        _trainer(splits, out, resume_from_checkpoint=str(path), **kwargs).train()
    assert _files(out) == before


def test_checkpoints_hold_only_safetensors_and_json(splits, tmp_path: Path) -> None:
    _trainer(splits, tmp_path / "run").train()
    folder = latest_checkpoint(tmp_path / "run")
    names = sorted(p.name for p in folder.iterdir())
    assert names == [
        "best_state.safetensors",
        "model.safetensors",
        "optimizer.json",
        "optimizer.safetensors",
        "rng_state_0.safetensors",
        "scheduler.json",
        "trainer_state.json",
    ]
    for name in names:  # no pickle stream (protocol 2+ starts with 0x80) and no zip archive
        head = (folder / name).read_bytes()[:4]
        assert head[:1] != b"\x80" and head != b"PK\x03\x04", name
    state = json.loads((folder / "trainer_state.json").read_text())
    assert sorted(state["files"]) == [n for n in names if n != "trainer_state.json"]
    index = json.loads((folder / "optimizer.json").read_text())
    assert index["class"] == "Adam"
    assert [g["hyperparameters"]["name"] for g in index["param_groups"]] == ["masks", "head"]
    some = next(iter(index["state"]))
    assert index["state"][some] == ["exp_avg", "exp_avg_sq", "step"]
    assert some in index["param_groups"][0]["params"] + index["param_groups"][1]["params"]


def test_a_full_disk_while_checkpointing_is_a_checkpoint_error(
    splits, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import errno

    import pb_adapters.training.checkpoints as checkpoints_module

    original = checkpoints_module.write_training_state
    calls = {"n": 0}

    def filling(folder, *args, **kwargs):
        calls["n"] += 1
        if calls["n"] == 3:
            (folder / "model.safetensors").write_bytes(b"partial")
            raise OSError(errno.ENOSPC, "No space left on device")
        return original(folder, *args, **kwargs)

    monkeypatch.setattr(checkpoints_module, "write_training_state", filling)
    out = tmp_path / "run"
    with pytest.raises(CheckpointError, match="No space left on device"):
        _trainer(splits, out, save_steps=1, save_total_limit=None).train()
    root = out / "checkpoints"
    assert sorted(p.name for p in root.iterdir()) == ["step-00000001", "step-00000002"]
    monkeypatch.setattr(checkpoints_module, "write_training_state", original)
    resumed = _trainer(splits, out, resume_from_checkpoint="latest")
    resumed.setup()  # the checkpoints before the failed save are whole
    assert resumed._run is not None and resumed._run.state.global_step == 2
