"""Scoring a task on a dataset: the numbers against an independent computation, class matching,
saved tasks, and a model left as it was."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from torch.utils.data import DataLoader

from pb_adapters.training.data import build_transforms, load_datasets
from pb_adapters.training.evaluation import EvaluationError, EvaluationResult, evaluate_adapter
from pb_adapters.training.evaluation.result import CONFUSION_PLOT_NAME, RESULT_NAME
from pb_adapters.training.metrics import topk_correct
from tests.factories import image_folder, tiny_timm
from tests.test_hub import make_model

CLASSES = ["class-0", "class-1", "class-2"]  # the classes of make_model's task
PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


@pytest.fixture(scope="module")
def folder(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return image_folder(tmp_path_factory.mktemp("images"), CLASSES, per_class=6)


def _expected(model, folder: Path, k: int) -> dict:
    """The scores computed directly: logits over the test split, torch top-k, numpy counts."""
    splits = load_datasets(folder)
    splits.set_transforms(*build_transforms(model, image_size=32))
    logits, targets = [], []
    with torch.no_grad():
        for images, labels in DataLoader(splits.test, batch_size=5):
            logits.append(model(images))
            targets.append(labels)
    logits, targets = torch.cat(logits), torch.cat(targets)
    matrix = np.zeros((3, 3), dtype=int)
    for t, p in zip(targets.tolist(), logits.argmax(1).tolist(), strict=True):
        matrix[t, p] += 1
    hits = topk_correct(logits, targets, (1, k)).float().mean(0)
    return {"matrix": matrix, "top1": float(hits[0]), "topk": float(hits[1])}


def test_scores_match_an_independent_computation(folder: Path, tmp_path: Path) -> None:
    model = make_model(seed=3)
    expected = _expected(model, folder, k=2)
    result = evaluate_adapter(model, folder, top_k=2, image_size=32, batch_size=4, num_workers=0)
    assert isinstance(result, EvaluationResult)
    assert (result.dataset, result.split, result.labels) == (folder.name, "test", CLASSES)
    assert np.array_equal(result.confusion_matrix, expected["matrix"])
    assert result.num_samples == 18 and result.support == [6, 6, 6]
    assert result.accuracy == pytest.approx(expected["top1"])
    assert result.top_k == 2 and result.top_k_accuracy == pytest.approx(expected["topk"])
    m = expected["matrix"]
    for c in range(3):
        tp, fp, fn = m[c, c], m[:, c].sum() - m[c, c], m[c].sum() - m[c, c]
        f1 = 2 * tp / (2 * tp + fp + fn) if (2 * tp + fp + fn) else None
        assert result.f1[c] == pytest.approx(f1)
    assert result.metrics() == {
        "accuracy": result.accuracy,
        "top2_accuracy": result.top_k_accuracy,
        "macro_f1": pytest.approx(np.mean([f for f in result.f1 if f is not None])),
    }
    saved = result.save(tmp_path / "out")
    assert (saved / CONFUSION_PLOT_NAME).read_bytes().startswith(PNG_MAGIC)
    assert '"confusion_matrix"' in (saved / RESULT_NAME).read_text()


def test_classes_are_matched_by_name(tmp_path: Path) -> None:
    # the data holds two of the task's three classes, so its class 0 is the task's class 2
    data = image_folder(tmp_path / "part", ["class-2", "class-0"], per_class=3)
    result = evaluate_adapter(make_model(seed=1), data, image_size=32, num_workers=0)
    assert result.support == [3, 0, 3]
    assert sum(result.confusion_matrix[1]) == 0 and result.f1[1] in (None, 0.0)
    wrong = image_folder(tmp_path / "pets", ["cat", "dog"], per_class=2)
    with pytest.raises(EvaluationError, match=r"\['cat', 'dog'\] are not among the task's"):
        evaluate_adapter(make_model(), wrong, image_size=32, num_workers=0)


def test_model_is_left_as_it_was_and_bad_requests_refused(folder: Path) -> None:
    model = make_model(seed=2)
    model.add_adapter("other", type(model.peft_config["default"])(num_labels=3))
    model.train()
    before = [p.detach().clone() for p in model.parameters()]
    result = evaluate_adapter(model, folder, adapter_name="other", image_size=32, num_workers=0)
    assert result.labels == ["LABEL_0", "LABEL_1", "LABEL_2"] and result.num_samples == 18
    assert model.active_adapter == "default" and model.training
    assert all(torch.equal(a, b) for a, b in zip(model.parameters(), before, strict=True))
    with pytest.raises(EvaluationError, match="split must be one of"):
        evaluate_adapter(model, folder, split="dev")
    empty = image_folder(folder.parent / "no-test", CLASSES, per_class=2, splits=("train",))
    with pytest.raises(EvaluationError, match="holds no images"):
        evaluate_adapter(model, empty, image_size=32, data_options={"test_fraction": 0.0})


def test_saved_task_on_a_given_base_scores_as_the_model(folder: Path, tmp_path: Path) -> None:
    model = make_model(seed=4)
    model.save_pretrained(tmp_path / "task")
    direct = evaluate_adapter(model, folder, image_size=32, num_workers=0)
    saved = evaluate_adapter(
        str(tmp_path / "task"),
        folder,
        base_model=tiny_timm("test_resnet", seed=0),
        image_size=32,
        num_workers=0,
        device="cpu",
    )
    assert saved.confusion_matrix == direct.confusion_matrix
    assert saved.top_k_accuracy == direct.top_k_accuracy and saved.f1 == direct.f1


def test_demo_task_on_demo_data_is_scored_as_the_demo_trained_it(folder: Path) -> None:
    from pb_adapters import PiggybackConfig, get_piggyback_model
    from pb_adapters.demo_base import DEMO_BASE_MODEL_ID
    from pb_adapters.training.cli_args import DEMO_DEFAULTS

    digits = {i: str(i) for i in range(10)}
    config = PiggybackConfig(id2label=digits, base_model_name_or_path=DEMO_BASE_MODEL_ID)
    model = get_piggyback_model(tiny_timm("test_resnet"), config).eval()
    demo = evaluate_adapter(model, "demo", max_samples=12, num_workers=0)
    assert (demo.image_size, demo.crop_pct) == (DEMO_DEFAULTS["image_size"], 1.0)
    assert demo.num_samples == 12 and demo.labels == [str(i) for i in range(10)]
    other = evaluate_adapter(make_model(), folder, max_samples=3, num_workers=0)
    own = model.base_model.pretrained_cfg["input_size"][-1]
    assert other.image_size == own != DEMO_DEFAULTS["image_size"]
    sized = evaluate_adapter(model, "demo", max_samples=4, image_size=40, crop_pct=0.5)
    assert (sized.image_size, sized.crop_pct) == (40, 0.5)
