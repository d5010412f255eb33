"""The PackNet schedule from the command line: several tasks packed, then one more added."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from pb_adapters import PiggybackModel
from pb_adapters.serialization import ARTIFACT_CONFIG_NAME
from pb_adapters.training.cli_args import build_train_parser, load_base_model, run_training
from pb_adapters.training.demo import load_demo_variant, read_demo_mnist
from pb_adapters.training.trainer import TrainingArguments

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
        [*QUICK, "--tasks", "demo", "demo-inverted", "--output-dir", str(out)]
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
    grown = PiggybackModel.from_pretrained(load_base_model("test_resnet"), more)
    first = PiggybackModel.from_pretrained(load_base_model("test_resnet"), out)
    x = torch.randn(2, 3, 32, 32)
    grown.eval()
    first.eval()
    for name in ("mnist-5k", "mnist-5k-inverted"):
        grown.set_adapter(name)
        first.set_adapter(name)
        with torch.no_grad():
            assert torch.equal(grown(x), first(x))
    assert grown.mask_stats("mnist-5k-rotated").zeros == 0  # took every weight left


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
