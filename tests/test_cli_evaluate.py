"""``pb-adapters evaluate``: a saved task on the base it records, its files, card and exit codes."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from huggingface_hub import ModelCard

from pb_adapters import PiggybackConfig, cli, get_piggyback_model
from pb_adapters.training.evaluation import evaluate_adapter
from pb_adapters.training.evaluation.result import CONFUSION_PLOT_NAME, RESULT_NAME
from tests.factories import image_folder, tiny_transformers, train_steps

CLASSES = ["ant", "bee", "cat"]


@pytest.fixture(scope="module")
def task(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """A task saved from a transformers base that is re-created from its recorded folder, and an
    image folder with the task's classes."""
    from transformers import ViTForImageClassification, ViTImageProcessor

    root = tmp_path_factory.mktemp("cli-evaluate")
    tiny_transformers("vit", num_labels=3).save_pretrained(root / "base")
    ViTImageProcessor(size={"height": 32, "width": 32}).save_pretrained(root / "base")
    base = ViTForImageClassification.from_pretrained(root / "base").eval()
    config = PiggybackConfig(num_labels=3, id2label=dict(enumerate(CLASSES)))
    model = get_piggyback_model(base, config)
    x, y = torch.randn(6, 3, 32, 32), torch.arange(6) % 3
    train_steps(model, x, y)
    model.save_pretrained(root / "task", datasets=["insects"])
    return root / "task", image_folder(root / "insects", CLASSES, per_class=4)


def test_evaluate_prints_saves_and_writes_the_card(
    task: tuple[Path, Path], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    folder, data = task
    argv = ["evaluate", str(folder), "--dataset", str(data), "--top-k", "2", "--num-workers", "0"]
    out_dir = tmp_path / "out"
    assert cli.main([*argv, "--output-dir", str(out_dir), "--write-card"]) == 0
    printed = capsys.readouterr().out
    saved = json.loads((out_dir / RESULT_NAME).read_text())
    assert (out_dir / CONFUSION_PLOT_NAME).read_bytes().startswith(b"\x89PNG")
    assert f"insects (test): {saved['num_samples']} images" in printed
    assert f"accuracy         {saved['accuracy']:.4f}" in printed
    assert all(f"  {name}  " in printed for name in CLASSES)  # the per-class F1 rows
    again = evaluate_adapter(str(folder), data, top_k=2, num_workers=0)  # the recorded base
    assert saved == json.loads(json.dumps(again.to_dict()))
    index = {
        (r.dataset_name, r.dataset_split, r.metric_type): r.metric_value
        for r in ModelCard.load(folder / "README.md").data.eval_results
    }
    assert index == {
        ("insects", "test", "accuracy"): saved["accuracy"],
        ("insects", "test", "top2_accuracy"): saved["top_k_accuracy"],
        ("insects", "test", "macro_f1"): saved["macro_f1"],
    }


def test_ordinary_mistakes_exit_2_with_one_line(
    task: tuple[Path, Path], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    folder, data = task
    assert cli.main(["evaluate", str(folder)]) == 2  # --dataset is required
    assert cli.main(["evaluate", str(folder), "--dataset", str(data), "--split", "dev"]) == 2
    capsys.readouterr()
    pets = image_folder(tmp_path / "pets", ["dog", "emu"], per_class=2)
    assert cli.main(["evaluate", str(folder), "--dataset", str(pets), "--num-workers", "0"]) == 2
    stderr = capsys.readouterr().err
    err = stderr.strip().splitlines()[-1]  # after transformers' progress bar
    assert err.startswith("pb-adapters evaluate: error:") and "not among the task's" in err
    assert "Traceback" not in stderr
    assert cli.main(["evaluate", str(tmp_path / "no-task"), "--dataset", str(data)]) == 2
    assert "no-task" in capsys.readouterr().err
