"""Score a task on a dataset: load the task, load the data, run the metric modules.

``evaluate.evaluator("image-classification")`` would do this through a transformers pipeline, but
with transformers 5 it fails before scoring anything (``module transformers has no attribute
TFPreTrainedModel``), and it needs a pipeline, which timm bases do not have. The loop here feeds
the same kind of ``evaluate`` metric modules from a ``DataLoader`` instead, for timm and
transformers bases alike.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import torch
from torch import nn
from torch.utils.data import DataLoader

from pb_adapters.errors import PbAdaptersError
from pb_adapters.hub import resolve_adapter_folder
from pb_adapters.model import PiggybackModel
from pb_adapters.serialization import read_adapter_config
from pb_adapters.training.data import (
    DataConfig,
    DatasetSplits,
    build_dataloader,
    build_transforms,
    load_datasets,
    resolve_data_config,
)
from pb_adapters.training.evaluation.modules import load_metric
from pb_adapters.training.evaluation.result import EvaluationResult

__all__ = ["SPLITS", "EvaluationError", "evaluate_adapter", "load_task"]

#: The splits a task can be scored on.
SPLITS: tuple[str, ...] = ("test", "validation", "train")


class EvaluationError(PbAdaptersError, ValueError):
    """A task cannot be scored on the given data (no such split, classes that do not match...)."""


def load_task(
    task: str | os.PathLike[str],
    *,
    base_model: nn.Module | str | None = None,
    revision: str | None = None,
    subfolder: str | None = None,
    token: str | bool | None = None,
) -> PiggybackModel:
    """A saved task (local folder or Hub repo id) on its base, ready to score.

    ``base_model`` defaults to the base the artifact records (its name, at its revision); pass the
    model itself when it cannot be rebuilt from the name (a local or randomly initialised base).
    """
    folder = resolve_adapter_folder(task, revision=revision, subfolder=subfolder, token=token)
    if base_model is None:
        base_model = read_adapter_config(folder)["base_model"].get("name_or_path")
        if not base_model:
            raise EvaluationError(
                f"{task} does not record its base model; pass the base (--base NAME, or "
                "base_model= in Python)"
            )
    return PiggybackModel.from_pretrained(base_model, folder)


def _class_map(task_labels: list[str], data_labels: dict[int, str]) -> list[int]:
    """The task's class index of each dataset class: by name, or by index when the task's
    classes have no names of their own (``LABEL_<i>``) and the counts agree."""
    by_name = {name: i for i, name in enumerate(task_labels)}
    names = [data_labels[i] for i in range(len(data_labels))]
    if all(name in by_name for name in names):
        return [by_name[name] for name in names]
    unnamed = all(label == f"LABEL_{i}" for i, label in enumerate(task_labels))
    if unnamed and len(task_labels) == len(names):
        return list(range(len(names)))
    missing = [name for name in names if name not in by_name]
    raise EvaluationError(
        f"the dataset's classes do not match the task's: {_some(missing)} are not among the "
        f"task's {len(task_labels)} classes {_some(task_labels)}; evaluate on data with the "
        "task's classes"
    )


def _some(names: list[str], shown: int = 5) -> str:
    more = f" and {len(names) - shown} more" if len(names) > shown else ""
    return f"{names[:shown]}{more}"


def _task_labels(model: PiggybackModel, width: int, data_labels: dict[int, str]) -> list[str]:
    """The active task's class names, by index (the dataset's when the task has none)."""
    info = next(a for a in model.list_adapters() if a.name == model.active_adapter)
    if info.id2label and len(info.id2label) == width:
        return [str(info.id2label[i]) for i in range(width)]
    if len(data_labels) == width:
        return [data_labels[i] for i in range(width)]
    return [f"LABEL_{i}" for i in range(width)]


def _logits(model: PiggybackModel, images: torch.Tensor) -> torch.Tensor:
    output = model(pixel_values=images) if model.family == "transformers" else model(images)
    return getattr(output, "logits", output)


@contextmanager
def _scoring(model: PiggybackModel, adapter_name: str | None) -> Iterator[None]:
    """Eval mode and the adapter to score, for the duration; the model as it was afterwards."""
    previous, training = model.active_adapter, model.training
    if adapter_name is not None:
        model.set_adapter(adapter_name)
    if model.active_adapter is None:
        raise EvaluationError("the model has no adapter to evaluate; add or load one first")
    model.eval()
    try:
        yield
    finally:
        if previous is not None and model.active_adapter != previous:
            model.set_adapter(previous)
        model.train(training)


def _data_config(
    model: PiggybackModel, splits: DatasetSplits, image_size: int | None, crop_pct: float | None
) -> DataConfig:
    """The evaluation pre-processing: the model's own data config, the built-in demo's 64 px
    uncropped input for a demo task on demo data (what ``pb-adapters train`` used for it), and
    ``image_size`` / ``crop_pct`` over both."""
    from pb_adapters.demo_base import DEMO_BASE_MODEL_ID
    from pb_adapters.training.cli import DEMO_DEFAULTS
    from pb_adapters.training.demo import DEMO_DATASET_NAME

    config = resolve_data_config(model)
    name = splits.name  # the demo digits and their variants ("mnist-5k-inverted")
    demo_data = name == DEMO_DATASET_NAME or name.startswith(f"{DEMO_DATASET_NAME}-")
    adapter = model.peft_config[model.active_adapter or ""]
    if demo_data and adapter.base_model_name_or_path == DEMO_BASE_MODEL_ID:
        config.image_size, config.crop_pct = DEMO_DEFAULTS["image_size"], DEMO_DEFAULTS["crop_pct"]
    config.image_size = image_size or config.image_size
    config.crop_pct = crop_pct or config.crop_pct
    return config


def _loader(
    model: PiggybackModel,
    splits: DatasetSplits,
    split: str,
    *,
    batch_size: int,
    num_workers: int | None,
    data_config: DataConfig,
    max_samples: int | None,
) -> DataLoader:
    _, eval_tf = build_transforms(model, data_config=data_config)
    splits.set_transforms(eval_tf, eval_tf)  # the training split too is scored unaugmented
    data = getattr(splits, split)
    if max_samples is not None and max_samples < len(data):
        data = data.select(range(max_samples))
    return build_dataloader(data, batch_size, num_workers=num_workers)


def evaluate_adapter(
    model: PiggybackModel | str | os.PathLike[str],
    dataset: str | os.PathLike[str] | DatasetSplits,
    *,
    split: str = "test",
    base_model: nn.Module | str | None = None,
    adapter_name: str | None = None,
    top_k: int = 5,
    batch_size: int = 64,
    image_size: int | None = None,
    crop_pct: float | None = None,
    max_samples: int | None = None,
    num_workers: int | None = None,
    device: str | torch.device | None = None,
    data_options: dict[str, Any] | None = None,
    hub_options: dict[str, Any] | None = None,
) -> EvaluationResult:
    """Score a task on one split of a dataset with the packaged ``evaluate`` metric modules.

    Args:
        model: a :class:`~pb_adapters.PiggybackModel` (its active adapter, or ``adapter_name``),
            or a saved task: a local artifact folder or a Hub repo id.
        dataset: anything :func:`~pb_adapters.training.load_datasets` takes (an image folder, a
            ``datasets`` name or saved folder, ``"demo"``), or loaded :class:`DatasetSplits`.
        split: ``"test"`` (default), ``"validation"`` or ``"train"``. Missing splits are carved
            out of the training data exactly as training does (same fractions and seed).
        base_model: for a saved task, the base to load it onto (default: the one it records).
        top_k: the ``k`` of top-k accuracy.
        batch_size: the ``DataLoader``'s batch size.
        num_workers: the ``DataLoader``'s workers (default as in training).
        image_size: evaluation input size (default: the model's own data config; the demo's
            64 px for a demo task on demo data).
        crop_pct: evaluation centre-crop fraction (default: the model's own data config;
            uncropped for a demo task on demo data).
        max_samples: score only the first ``max_samples`` images of the split.
        device: where to run (default: the model's device; for a saved task, CUDA when present).
        data_options: more :func:`~pb_adapters.training.load_datasets` keywords
            (``image_column``, ``label_column``, ``val_fraction``, ``test_fraction``, ``seed``).
        hub_options: ``revision``, ``subfolder`` and ``token`` of a Hub task.

    Dataset classes are matched to the task's by name, so a folder holding some of the task's
    classes is scored correctly. The model is left as it was (mode, active adapter, device).

    Raises:
        EvaluationError: unknown split, an empty split, or classes that do not match the task's.
    """
    if split not in SPLITS:
        raise EvaluationError(f"split must be one of {list(SPLITS)}, got {split!r}")
    # The data first: a wrong path fails before a base model is built or downloaded.
    if isinstance(dataset, DatasetSplits):
        splits = dataset
    else:
        splits = load_datasets(dataset, **(data_options or {}))
    if not isinstance(model, PiggybackModel):
        model = load_task(model, base_model=base_model, **(hub_options or {}))
        device = device or ("cuda" if torch.cuda.is_available() else "cpu")
        model.to(device)
    elif device is not None:
        model.to(device)
    device = next(model.parameters()).device
    with _scoring(model, adapter_name):
        data_config = _data_config(model, splits, image_size, crop_pct)
        loader = _loader(
            model,
            splits,
            split,
            batch_size=batch_size,
            num_workers=num_workers,
            data_config=data_config,
            max_samples=max_samples,
        )
        if len(loader.dataset) == 0:
            raise EvaluationError(f"the {split} split of {splits.name} holds no images")
        result = _score(model, loader, splits, split, device, top_k)
    result.image_size, result.crop_pct = data_config.image_size, data_config.crop_pct
    return result


def _score(
    model: PiggybackModel,
    loader: DataLoader,
    splits: DatasetSplits,
    split: str,
    device: torch.device,
    top_k: int,
) -> EvaluationResult:
    """Run the model over ``loader`` and feed every batch to the metric modules."""
    metrics = {name: load_metric(name) for name in ("accuracy", "f1_per_class", "confusion_matrix")}
    top_k_metric = load_metric("top_k_accuracy")
    labels: list[str] | None = None
    class_map: torch.Tensor | None = None
    with torch.inference_mode():
        for images, targets in loader:
            logits = _logits(model, images.to(device)).float()
            if labels is None:
                labels = _task_labels(model, logits.shape[1], splits.id2label)
                class_map = torch.tensor(_class_map(labels, splits.id2label))
            references = class_map[targets].numpy()
            predictions = logits.argmax(dim=1).cpu().numpy()
            for metric in metrics.values():
                metric.add_batch(predictions=predictions, references=references)
            top_k_metric.add_batch(predictions=logits.cpu().numpy(), references=references)
    assert labels is not None  # the loader is not empty
    num_classes = len(labels)
    accuracy = metrics["accuracy"].compute()
    f1 = metrics["f1_per_class"].compute(num_classes=num_classes)
    confusion = metrics["confusion_matrix"].compute(num_classes=num_classes)
    top = top_k_metric.compute(k=top_k)
    return EvaluationResult(
        dataset=splits.name,
        split=split,
        num_samples=int(sum(f1["support"])),
        labels=labels,
        accuracy=accuracy["accuracy"],
        top_k=top["k"],
        top_k_accuracy=top["top_k_accuracy"],
        f1=f1["f1"],
        precision=f1["precision"],
        recall=f1["recall"],
        support=f1["support"],
        macro_f1=f1["macro_f1"],
        confusion_matrix=confusion["confusion_matrix"],
    )
