"""Experiment trackers through Accelerate, and pushing the trained artifact to the Hub."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from huggingface_hub import HfApi

from pb_adapters import PiggybackConfig, PiggybackModel, get_piggyback_model
from pb_adapters.training import tracking
from pb_adapters.training.tracking import resolve_report_to, tracker_config
from pb_adapters.training.trainer import PiggybackTrainer, TrainingArguments
from tests.factories import tiny_timm
from tests.training.test_trainer import _args, _digits


def test_report_to_names(monkeypatch: pytest.MonkeyPatch) -> None:
    installed = {"tensorboard", "wandb"}
    monkeypatch.setattr(tracking, "_installed", lambda name: name in installed)
    for key in ("WANDB_API_KEY", "WANDB_MODE", "MLFLOW_TRACKING_URI", "COMET_API_KEY"):
        monkeypatch.delenv(key, raising=False)
    assert resolve_report_to("none") == resolve_report_to(None) == resolve_report_to([]) == []
    # auto: TensorBoard when installed; a hosted tracker only once its environment is set up
    assert resolve_report_to("auto") == ["tensorboard"]
    monkeypatch.setenv("WANDB_MODE", "offline")
    assert resolve_report_to("auto") == ["tensorboard", "wandb"]
    assert resolve_report_to("all") == ["tensorboard", "wandb"]
    assert resolve_report_to("wandb, tensorboard") == ["wandb", "tensorboard"]
    assert resolve_report_to(["tensorboard", "tensorboard"]) == ["tensorboard"]
    with pytest.raises(ValueError, match=r"unknown tracker.*tensorbored"):
        resolve_report_to("tensorbored")
    with pytest.raises(ValueError, match="mlflow, which is not installed"):
        resolve_report_to("mlflow")
    installed.clear()
    assert resolve_report_to("auto") == []


def test_tracker_config_keeps_scalars() -> None:
    values = {"lr": 1e-4, "name": "x", "flag": True, "none": None, "ks": [1, 5], "d": {"a": 1}}
    assert tracker_config(values) == {"lr": 1e-4, "name": "x", "flag": True, "ks": "1,5"}


def test_training_logs_to_tensorboard(tmp_path: Path) -> None:
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    splits = _digits(32, 48, 16)
    model = get_piggyback_model(tiny_timm("test_resnet"), PiggybackConfig(id2label=splits.id2label))
    args = _args(
        tmp_path, num_epochs=2, max_steps_per_epoch=2, report_to="tensorboard", logging_steps=1
    )
    PiggybackTrainer(model, args, splits=splits).train()
    runs = list((tmp_path / "run" / "piggyback").rglob("events.out.tfevents.*"))
    assert runs, "no TensorBoard event file"
    events = EventAccumulator(str(runs[0].parent))
    events.Reload()
    tags = set(events.Tags()["scalars"])
    assert {"train/loss", "train/top1", "val/loss", "val/top1", "val/top5", "test/top1"} <= tags
    assert {"train/loss_ema", "lr/masks", "lr/head"} <= tags
    assert [e.step for e in events.Scalars("val/top1")] == [2, 4]
    assert [e.step for e in events.Scalars("train/loss_ema")] == [1, 2, 3, 4]


def test_no_tracker_writes_no_logs(tmp_path: Path) -> None:
    splits = _digits(32, 32, 16)
    model = get_piggyback_model(tiny_timm("test_resnet"), PiggybackConfig(id2label=splits.id2label))
    PiggybackTrainer(model, _args(tmp_path, max_steps_per_epoch=1), splits=splits).train()
    assert not list((tmp_path / "run").rglob("events.out.tfevents.*"))


def test_push_to_hub_uploads_artifact_card_and_curves(hub, tmp_path: Path) -> None:
    splits = _digits(32, 48, 16)
    model = get_piggyback_model(tiny_timm("test_resnet"), PiggybackConfig(id2label=splits.id2label))
    repo_id = hub.new_repo_id("digits")  # created by the push
    args = _args(tmp_path, num_epochs=1, max_steps_per_epoch=2, push_to_hub=repo_id)
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("HF_TOKEN", hub.token)
        result = PiggybackTrainer(model, args, splits=splits).train()
    files = set(HfApi().list_repo_files(repo_id, token=hub.token))
    assert {
        "adapter_config.json",
        "adapter_model.safetensors",
        "README.md",
        "training_curves.png",
    } <= files
    assert not {"metrics.jsonl", "results.json", "run_config.yaml"} & files
    assert not any(f.startswith("checkpoints/") for f in files)
    pulled = PiggybackModel.from_pretrained(tiny_timm("test_resnet"), repo_id, token=hub.token)
    local = PiggybackModel.from_pretrained(tiny_timm("test_resnet"), result.artifact_dir)
    x = torch.randn(2, 3, 32, 32)
    assert torch.equal(pulled(x), local(x))


def test_push_to_hub_needs_an_adapter() -> None:
    with pytest.raises(ValueError, match="push_to_hub"):
        TrainingArguments(train_mode="finetune", push_to_hub="me/x")
