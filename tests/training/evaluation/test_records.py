"""Evaluation results in the artifact, the model card and its model-index."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from huggingface_hub import ModelCard

from pb_adapters import PiggybackModel
from pb_adapters.errors import ArtifactError
from pb_adapters.serialization import ARTIFACT_CONFIG_NAME
from pb_adapters.training.evaluation import EvaluationError, EvaluationResult, write_evaluation
from tests.factories import tiny_timm
from tests.test_hub import make_model


def _result(dataset: str = "flowers", split: str = "test", accuracy: float = 0.75):
    return EvaluationResult(
        dataset=dataset,
        split=split,
        num_samples=8,
        labels=["a", "b"],
        accuracy=accuracy,
        top_k=5,
        top_k_accuracy=1.0,
        f1=[0.8, None],
        precision=[1.0, None],
        recall=[0.5, None],
        support=[8, 0],
        macro_f1=0.8,
        confusion_matrix=[[4, 4], [0, 0]],
    )


def _model_index(folder: Path) -> dict[tuple[str, str, str], float]:
    data = ModelCard.load(folder / "README.md").data
    return {
        (r.dataset_name, r.dataset_split, r.metric_type): r.metric_value for r in data.eval_results
    }


def test_results_reach_the_model_index_and_replace_training_numbers(tmp_path: Path) -> None:
    folder = tmp_path / "task"
    metrics = {"test_accuracy": 0.5, "validation_accuracy": 0.6}
    make_model().save_pretrained(folder, metrics=metrics, datasets=["flowers"])
    before = json.loads((folder / ARTIFACT_CONFIG_NAME).read_text())

    card = write_evaluation(folder, _result())
    index = _model_index(folder)
    assert index[("flowers", "test", "accuracy")] == 0.75  # training's 0.5 is replaced
    assert index[("flowers", "test", "top5_accuracy")] == 1.0
    assert index[("flowers", "test", "macro_f1")] == 0.8
    assert index[("flowers", "validation", "accuracy")] == 0.6  # training's, kept
    assert "| flowers | test | 8 | 0.7500 | 0.8000 | 1.0000 |" in card.read_text()
    after = json.loads((folder / ARTIFACT_CONFIG_NAME).read_text())
    assert {k: v for k, v in after.items() if k != "metrics"} == {
        k: v for k, v in before.items() if k != "metrics"
    }

    write_evaluation(folder, _result(accuracy=0.9))  # the same dataset and split: replaced
    write_evaluation(folder, _result("flowers-night", "validation", 0.4))  # another: added
    entries = json.loads((folder / ARTIFACT_CONFIG_NAME).read_text())["metrics"]["evaluations"]
    assert [(e["dataset"], e["split"], e["metrics"]["accuracy"]) for e in entries] == [
        ("flowers", "test", 0.9),
        ("flowers-night", "validation", 0.4),
    ]
    index = _model_index(folder)
    assert index[("flowers", "test", "accuracy")] == 0.9
    assert index[("flowers-night", "validation", "accuracy")] == 0.4


def test_results_survive_loading_and_saving_the_task(tmp_path: Path) -> None:
    make_model().save_pretrained(tmp_path / "task", datasets=["flowers"])
    write_evaluation(tmp_path / "task", _result())
    reloaded = PiggybackModel.from_pretrained(tiny_timm("test_resnet", seed=0), tmp_path / "task")
    reloaded.save_pretrained(tmp_path / "again")
    assert _model_index(tmp_path / "again")[("flowers", "test", "accuracy")] == 0.75


def test_only_a_local_artifact_folder_is_updated(tmp_path: Path) -> None:
    with pytest.raises(EvaluationError, match="not a local task folder"):
        write_evaluation("user/task", _result())
    (tmp_path / "empty").mkdir()
    with pytest.raises(ArtifactError, match=r"adapter_config\.json"):
        write_evaluation(tmp_path / "empty", _result())
