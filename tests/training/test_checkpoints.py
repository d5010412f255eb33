"""Checkpoints: save_steps / epoch checkpoints, rotation, bit-exact resume, Ctrl-C saving."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import pytest
import torch

import pb_adapters.training.trainer as trainer_module
from pb_adapters import PiggybackConfig, get_piggyback_model
from pb_adapters.training.data import DataConfig, build_transforms
from pb_adapters.training.demo import load_demo_dataset
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
    with pytest.raises(FileNotFoundError, match="no checkpoint"):
        _trainer(splits, tmp_path / "a", resume_from_checkpoint="latest").train()
    (tmp_path / "half").mkdir()
    with pytest.raises(FileNotFoundError, match="not a complete checkpoint"):
        _trainer(splits, tmp_path / "a", resume_from_checkpoint=str(tmp_path / "half")).train()
    with pytest.raises(ValueError, match="save_steps"):
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
