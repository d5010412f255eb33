"""The PackNet schedule from the command line: several tasks packed, then one more added."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from pb_adapters import PiggybackModel
from pb_adapters.methods.packnet import PackNetConfig
from pb_adapters.serialization import ARTIFACT_CONFIG_NAME
from pb_adapters.training.cli import (
    build_train_parser,
    create_backbone,
    parse_train_args,
    run_training,
)
from pb_adapters.training.demo import load_demo_variant, read_demo_mnist
from pb_adapters.training.trainer import PiggybackTrainer, TrainingArguments
from tests.factories import tiny_timm
from tests.training.test_trainer import _args, _digits

# fmt: off
QUICK = [
    "--model", "test_resnet", "--method", "packnet",
    "--epochs", "1", "--finetune-epochs", "1", "--max-steps-per-epoch", "2",
    "--max-train-samples", "40", "--max-eval-samples", "30", "--image-size", "32",
    "--batch-size", "16", "--num-workers", "0", "--no-progress",
]
# fmt: on


def test_tasks_are_packed_in_order_then_one_more_is_added(tmp_path: Path) -> None:
    out = tmp_path / "packed"
    lines: list[str] = []
    ns = build_train_parser().parse_args(
        [
            *QUICK,
            "--tasks",
            "demo",
            "demo-inverted",
            "--output-dir",
            str(out),
            "--report-to",
            "none",
        ]
    )
    summary = run_training(ns, print_fn=lambda *a: lines.append(" ".join(map(str, a))))
    assert [t["name"] for t in summary["tasks"]] == ["mnist-5k", "mnist-5k-inverted"]
    assert all(t["pruned"] == pytest.approx(0.75, abs=0.01) for t in summary["tasks"])
    assert summary["reload_matches"] is True
    for task in ("mnist-5k", "mnist-5k-inverted"):
        for phase in ("train", "retrain"):
            assert (out / task / phase / "metrics.jsonl").is_file()
    data = json.loads((out / ARTIFACT_CONFIG_NAME).read_text())
    assert data["task_name"] == "mnist-5k-inverted" and data["tasks"][0]["name"] == "mnist-5k"
    assert data["tasks"][0]["metrics"]["test_accuracy"] == summary["tasks"][0]["test"]["top1"]
    assert "## Tasks" in (out / "README.md").read_text()
    assert any("released" in line for line in lines)
    # the phases ran with the config's rates: weight_lr (and head_lr), then finetune_lr
    train_lr = json.loads((out / "mnist-5k" / "train" / "metrics.jsonl").read_text().split("\n")[0])
    retrain_lr = json.loads(
        (out / "mnist-5k" / "retrain" / "metrics.jsonl").read_text().split("\n")[0]
    )
    assert train_lr["lr"] == {"weights": 1e-3, "head": 1e-3}
    assert retrain_lr["lr"] == {"weights": 1e-4, "head": 1e-4}
    assert not list(out.rglob("events.out.tfevents.*"))  # --report-to none: no tracker logs

    # one more task on the saved network; the last one kept unpruned
    more = tmp_path / "more"
    ns = build_train_parser().parse_args(
        [
            *QUICK,
            "--tasks",
            "demo-rotated",
            "--resume-packed",
            str(out),
            "--keep-last-unpruned",
            "--output-dir",
            str(more),
            "--no-reload-check",
        ]
    )
    summary = run_training(ns, print_fn=lambda *a: None)
    assert summary["all_tasks"] == ["mnist-5k", "mnist-5k-inverted", "mnist-5k-rotated"]
    assert summary["tasks"][0]["pruned"] == 0.0
    grown = PiggybackModel.from_pretrained(create_backbone("test_resnet"), more)
    first = PiggybackModel.from_pretrained(create_backbone("test_resnet"), out)
    x = torch.randn(2, 3, 32, 32)
    grown.eval()
    first.eval()
    for name in ("mnist-5k", "mnist-5k-inverted"):
        grown.set_adapter(name)
        first.set_adapter(name)
        with torch.no_grad():
            assert torch.equal(grown(x), first(x))
    assert grown.mask_stats("mnist-5k-rotated").zeros == 0  # took every weight left


def test_weight_lr_drives_packnet_weights_in_the_generic_trainer(tmp_path: Path) -> None:
    splits = _digits(32, max_train=32, max_eval=16)

    def first_epoch_lrs(config: PackNetConfig, **kwargs) -> dict[str, float]:
        model = PiggybackModel(tiny_timm("test_resnet"))
        model.add_adapter("task", config)
        model.set_adapter("task")
        args = _args(tmp_path, max_steps_per_epoch=1, save_artifact=False, **kwargs)
        return PiggybackTrainer(model, args, splits=splits).train().history[0]["lr"]

    # the optimiser's parameter groups, as the trainer recorded them (it used 1e-4 for the
    # weights whatever weight_lr said)
    assert first_epoch_lrs(PackNetConfig(id2label=splits.id2label)) == {
        "weights": 1e-3,
        "head": 1e-3,
    }
    config = PackNetConfig(id2label=splits.id2label, weight_lr=0.02, head_lr=0.03)
    assert first_epoch_lrs(config) == {"weights": 0.02, "head": 0.03}
    # TrainingArguments.mask_lr overrides the method's own group, as for masks
    assert first_epoch_lrs(config, mask_lr=5e-3) == {"weights": 5e-3, "head": 0.03}


def test_packnet_honours_trackers_step_checkpoints_schedule_and_push(hub, tmp_path: Path) -> None:
    from huggingface_hub import HfApi
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    out = tmp_path / "packed"
    repo_id = hub.new_repo_id("packed")
    argv = [*QUICK, "--tasks", "demo", "--epochs", "2", "--output-dir", str(out)]
    argv += ["--lr-scheduler", "cosine", "--save-steps", "1", "--save-total-limit", "1"]
    argv += ["--report-to", "tensorboard", "--logging-steps", "1", "--no-reload-check"]
    argv += ["--push-to-hub", repo_id, "--hub-private"]
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("HF_TOKEN", hub.token)
        summary = run_training(parse_train_args(build_train_parser(), argv), print_fn=print)
    task = out / "mnist-5k"
    # trackers and logging steps: every optimiser step of each phase, in the phase's folder
    events = EventAccumulator(str(next((task / "train").rglob("events.out.tfevents.*")).parent))
    events.Reload()
    assert [e.step for e in events.Scalars("train/loss_ema")] == [1, 2, 3, 4]
    assert list((task / "retrain").rglob("events.out.tfevents.*"))
    # step checkpoints per phase (2 steps per epoch; the newest one kept)
    assert [p.name for p in (task / "train" / "checkpoints").iterdir()] == ["step-00000003"]
    assert [p.name for p in (task / "retrain" / "checkpoints").iterdir()] == ["step-00000001"]
    # the learning-rate schedule of the training phase (cosine over its 4 steps)
    lines = [json.loads(x) for x in (task / "train" / "metrics.jsonl").read_text().splitlines()]
    assert [line["lr"]["weights"] for line in lines[:2]] == pytest.approx([1e-3, 0.5e-3])
    # the packed network and its card, pushed to a private repository
    api = HfApi()
    files = set(api.list_repo_files(repo_id, token=hub.token))
    assert {"adapter_config.json", "adapter_model.safetensors", "README.md"} <= files
    assert api.model_info(repo_id, token=hub.token).private is True
    pulled = PiggybackModel.from_pretrained(
        create_backbone("test_resnet"), repo_id, token=hub.token
    )
    assert list(pulled.peft_config) == ["mnist-5k"] and summary["pushed"]


def test_packnet_options_are_refused_for_other_methods() -> None:
    ns = build_train_parser().parse_args(["--tasks", "demo", "demo-rotated"])
    with pytest.raises(ValueError, match="packnet"):
        run_training(ns, print_fn=lambda *a: None)


def test_demo_variants_are_the_same_digits_changed() -> None:
    images, _ = read_demo_mnist()
    inverted = load_demo_variant("inverted")
    rotated = load_demo_variant("rotated")
    assert inverted.name == "mnist-5k-inverted" and rotated.name == "mnist-5k-rotated"
    assert int(inverted.train.images.max()) == 255 and inverted.train.images.mean() > 128
    assert rotated.train.images.shape[1:] == (28, 28)
    assert len(rotated.test) == len(inverted.test) == 1000
    assert images.shape == (5000, 28, 28)


def test_sgd_option() -> None:
    assert TrainingArguments(optimizer="sgd", momentum=0.9).optimizer == "sgd"
    with pytest.raises(ValueError, match="optimizer"):
        TrainingArguments(optimizer="rmsprop")


def test_demo_tasks_prune_less_unless_told() -> None:
    from pb_adapters.training.packnet import DEMO_PRUNE_RATIO, prune_ratio_for

    parser = build_train_parser()
    assert (
        prune_ratio_for(parser.parse_args(["--method", "packnet"]), demo=True) == DEMO_PRUNE_RATIO
    )
    assert prune_ratio_for(parser.parse_args(["--method", "packnet"]), demo=False) is None
    told = parser.parse_args(["--method", "packnet", "--prune-ratio", "0.75"])
    assert prune_ratio_for(told, demo=True) == 0.75
