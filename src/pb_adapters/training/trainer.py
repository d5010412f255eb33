"""An Accelerate-based trainer for adapters, and for the baselines they are compared against.

:class:`PiggybackTrainer` trains one task on a :class:`~pb_adapters.training.data.DatasetSplits`
and works the same on one CPU, one GPU or ``accelerate launch`` with many processes:

* ``train_mode="adapter"``: the model is a :class:`~pb_adapters.PiggybackModel` carrying an adapter
  of any method (piggyback, KSM...); Adam updates the parameter groups the model reports
  (``masks``, ``head``, ``norms``), each with its own learning rate (the adapter config's, e.g.
  official piggyback: 1e-4 for masks and head), no weight decay.
* ``train_mode="finetune"``: the plain backbone with a fresh head, every weight trained
  (the "one full model per task" baseline).
* ``train_mode="head"``: the plain backbone, frozen, with a fresh trained head (the "classifier
  only" baseline); norm layers stay in eval mode.

The learning rate decays x0.1 at the midpoint of training (step decay, as in the official
piggyback code; ``"cosine"`` and ``"constant"`` are options). After every epoch the validation
split is evaluated; the trainable state of the best epoch (top-1, then loss) is kept in memory and
restored at the end, the test split is evaluated once, metrics are appended to a JSON-lines file,
the loss and accuracy curves are drawn into ``training_curves.png`` and, in adapter mode, the
adapter artifact is saved with ``save_pretrained``.

Checkpoints (``accelerator.save_state``: model, optimiser, scheduler, RNG states, plus the
trainer's JSON state and the best epoch's trainable state as safetensors) are written to
``<output_dir>/checkpoints/step-XXXXXXXX`` every ``save_steps`` optimiser steps, after every epoch
and on ``KeyboardInterrupt``; ``resume_from_checkpoint`` continues a run from one of them, skipping
the batches the interrupted epoch had already used.
"""

from __future__ import annotations

import contextlib
import json
import logging
import math
import os
import random
import shutil
import sys
import time
from collections.abc import Iterable, Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Literal

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import DataLoader, Dataset

from pb_adapters.mask_coding import MASK_ENCODINGS
from pb_adapters.registry import get_method
from pb_adapters.training.checkpoints import (
    clear_leftovers,
    commit_folder,
    complete_checkpoints,
    remove_folder,
)
from pb_adapters.training.data import DatasetSplits, default_num_workers
from pb_adapters.training.metrics import ClassificationMetrics
from pb_adapters.training.sharding import (
    check_supported,
    full_parameters,
    is_sharded,
    keep_weights_sharded,
    local_tensor,
    reshard,
    shard_file_name,
)
from pb_adapters.utils.files import atomic_write_bytes

__all__ = [
    "CHECKPOINTS_DIR",
    "TRAIN_MODES",
    "PiggybackTrainer",
    "TrainMode",
    "TrainResult",
    "Trainer",
    "TrainingArguments",
    "latest_checkpoint",
    "prepare_baseline_model",
]

TrainMode = Literal["adapter", "finetune", "head"]
#: The supported values of ``TrainingArguments.train_mode``.
TRAIN_MODES: tuple[str, ...] = ("adapter", "finetune", "head")
#: Sub-folder of ``output_dir`` holding the training checkpoints.
CHECKPOINTS_DIR = "checkpoints"
_STATE_FILE = "trainer_state.json"
_BEST_FILE = "best_state.safetensors"


@dataclass
class TrainingArguments:
    """Everything that controls a training run.

    Attributes:
        output_dir: where metrics, results and the artifact are written.
        train_mode: ``"adapter"`` (the model's adapter: masks + head), ``"finetune"`` (all
            weights) or ``"head"``.
        num_epochs: passes over the training split (official piggyback: 30).
        batch_size: per-process training batch size (official: 32).
        eval_batch_size: per-process evaluation batch size (default: max(batch_size, 64)).
        gradient_accumulation_steps: batches per optimiser step.
        mask_lr / head_lr / norm_lr: learning rates of the parameter groups; ``None`` takes the
            adapter config's values (piggyback defaults 1e-4) or 1e-4 for baselines.
        backbone_lr: learning rate of the backbone weights in ``finetune`` mode.
        weight_decay: weight decay of the optimiser (official piggyback: none).
        optimizer: ``"adam"`` (piggyback's) or ``"sgd"`` (with ``momentum``; PackNet's).
        momentum: SGD momentum (``optimizer="sgd"`` only).
        lr_scheduler: ``"step"`` (x ``decay_factor`` at ``decay_epoch``), ``"cosine"`` or
            ``"constant"``.
        decay_epoch: when the step decay happens, in (fractional) epochs; default: the midpoint.
        decay_factor: the step decay's factor.
        max_grad_norm: clip the gradient norm to this value (``None``: no clipping).
        seed: seeds Python, NumPy and torch (model init, shuffling, augmentation).
        mixed_precision: ``"no"``, ``"fp16"``, ``"bf16"`` or ``"fp8"``, handed to Accelerate;
            ``None`` takes Accelerate's configuration (``accelerate config`` or ``accelerate
            launch --mixed_precision``), else ``"no"``. Mask scores stay float32 either way.
        num_workers: data loader workers per process (default: CPUs - 1, at most 8).
        max_steps_per_epoch: stop each epoch after this many batches (quick runs, tests).
        save_artifact: save the adapter with ``save_pretrained`` at the end (adapter mode).
        mask_encoding: how the artifact stores masks: ``"ans"`` (entropy-coded, format 2) or
            ``"bitpack"`` (1 bit per weight, format 1, readable by older releases).
        metrics_file: JSON-lines file (inside ``output_dir``) receiving one line per epoch and
            one for the test result.
        disable_progress_bar: no tqdm bar (the per-epoch summary lines are still printed).
        cpu: force CPU even when an accelerator is available.
        save_steps: also write a checkpoint every this many optimiser steps (``None``: only at
            the end of each epoch and on ``KeyboardInterrupt``).
        save_epoch_checkpoints: write a checkpoint at the end of every epoch.
        save_total_limit: keep only this many most recent checkpoints (``None``: keep all).
        resume_from_checkpoint: a checkpoint folder, or ``"latest"`` for the newest one under
            ``<output_dir>/checkpoints``, to continue training from.
        report_to: experiment trackers to log to through Accelerate: ``"auto"`` (TensorBoard when
            installed, hosted trackers when their environment is configured), ``"all"``,
            ``"none"``, or tracker names (see :mod:`pb_adapters.training.tracking`). TensorBoard
            logs go to ``<output_dir>/<method>``.
        logging_steps: log the running training loss and learning rates to the trackers every
            this many optimiser steps (epoch metrics are logged at the end of every epoch).
        push_to_hub: a Hub repository id (``user/my-task``) to upload the artifact, its model
            card and the training curves to at the end (adapter mode; the token comes from
            ``huggingface-cli login`` or ``HF_TOKEN``).
        hub_private: create the repository private (only used when it does not exist yet).
    """

    output_dir: str = "outputs/run"
    train_mode: TrainMode = "adapter"
    num_epochs: int = 30
    batch_size: int = 32
    eval_batch_size: int | None = None
    gradient_accumulation_steps: int = 1
    mask_lr: float | None = None
    head_lr: float | None = None
    norm_lr: float | None = None
    backbone_lr: float = 1e-4
    weight_decay: float = 0.0
    optimizer: Literal["adam", "sgd"] = "adam"
    momentum: float = 0.9
    lr_scheduler: Literal["step", "cosine", "constant"] = "step"
    decay_epoch: float | None = None
    decay_factor: float = 0.1
    max_grad_norm: float | None = None
    seed: int = 0
    mixed_precision: str | None = None
    num_workers: int | None = None
    max_steps_per_epoch: int | None = None
    save_artifact: bool = True
    mask_encoding: str = "ans"
    metrics_file: str = "metrics.jsonl"
    disable_progress_bar: bool = False
    cpu: bool = False
    save_steps: int | None = None
    save_epoch_checkpoints: bool = True
    save_total_limit: int | None = 2
    resume_from_checkpoint: str | None = None
    report_to: str | list[str] = "auto"
    logging_steps: int = 10
    push_to_hub: str | None = None
    hub_private: bool | None = None

    def __post_init__(self) -> None:
        if self.train_mode not in TRAIN_MODES:
            raise ValueError(f"train_mode must be one of {TRAIN_MODES}, got {self.train_mode!r}")
        if self.mask_encoding not in MASK_ENCODINGS:
            raise ValueError(f"mask_encoding must be one of {MASK_ENCODINGS}")
        if self.optimizer not in ("adam", "sgd"):
            raise ValueError(f"optimizer must be adam or sgd, got {self.optimizer!r}")
        if self.lr_scheduler not in ("step", "cosine", "constant"):
            raise ValueError(
                f"lr_scheduler must be step, cosine or constant, got {self.lr_scheduler!r}"
            )
        for name in ("num_epochs", "batch_size", "gradient_accumulation_steps"):
            if int(getattr(self, name)) < 1:
                raise ValueError(f"{name} must be >= 1, got {getattr(self, name)!r}")
        if self.max_steps_per_epoch is not None and self.max_steps_per_epoch < 1:
            raise ValueError("max_steps_per_epoch must be >= 1 or None")
        if int(self.logging_steps) < 1:
            raise ValueError(f"logging_steps must be >= 1, got {self.logging_steps!r}")
        if self.push_to_hub is not None and self.train_mode != "adapter":
            raise ValueError(
                "push_to_hub uploads an adapter artifact: it needs train_mode='adapter'"
            )
        for name in ("save_steps", "save_total_limit"):
            value = getattr(self, name)
            if value is not None and int(value) < 1:
                raise ValueError(f"{name} must be >= 1 or None, got {value!r}")

    def to_dict(self) -> dict[str, Any]:
        """The arguments as a JSON-ready dict."""
        return asdict(self)


@dataclass
class TrainResult:
    """What :meth:`PiggybackTrainer.train` returns.

    Attributes:
        best_epoch: the epoch (1-based) whose state was restored.
        validation: validation metrics of the best epoch (``loss``, ``top1``, ``top5``, ...).
        test: test metrics of the restored model (empty without a test split).
        history: one dict per epoch (train loss/accuracy, validation metrics, lr, time).
        train_seconds: wall time of the training loop (evaluation included, saving excluded).
        artifact_dir: the saved adapter folder (adapter mode with ``save_artifact``), else None.
    """

    best_epoch: int
    validation: dict[str, float]
    test: dict[str, float]
    history: list[dict[str, Any]] = field(default_factory=list)
    train_seconds: float = 0.0
    artifact_dir: Path | None = None

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready form."""
        out = asdict(self)
        out["artifact_dir"] = str(self.artifact_dir) if self.artifact_dir else None
        return out


# --------------------------------------------------------------------------------------------
# Model helpers
# --------------------------------------------------------------------------------------------


def _tracker_values(record: dict[str, Any]) -> dict[str, float]:
    """A metrics-file record as tracker scalars: ``val_top1`` -> ``val/top1``."""
    values: dict[str, float] = {}
    for key, value in record.items():
        if not isinstance(value, (int, float)) or isinstance(value, bool):
            continue
        split, _, metric = key.partition("_")
        values[f"{split}/{metric}" if metric and split in ("train", "val", "test") else key] = value
    return values


def _inner_model(model: nn.Module) -> nn.Module:
    """The timm / transformers model under DDP, ``torch.compile`` and PiggybackModel wrappers."""
    from pb_adapters.training.data import _unwrap

    return _unwrap(model)


def _is_transformers(model: nn.Module) -> bool:
    from pb_adapters.targeting import model_family

    return model_family(_inner_model(model)) == "transformers"


def forward_logits(model: nn.Module, images: torch.Tensor, transformers_api: bool) -> torch.Tensor:
    """Class scores of ``model`` for ``images``: ``model(x)`` for timm/torch models,
    ``model(pixel_values=x).logits`` for transformers models."""
    out = model(pixel_values=images) if transformers_api else model(images)
    logits = getattr(out, "logits", out)
    if isinstance(logits, (tuple, list)):  # e.g. distilled timm models in train mode
        logits = logits[0]
    return logits


def _head_modules(model: nn.Module) -> list[tuple[str, nn.Module]]:
    from pb_adapters.targeting import find_head_paths

    paths = find_head_paths(model)
    if not paths:
        raise ValueError(
            f"cannot find the classifier head of {type(model).__name__}; baselines need a timm "
            "model (pretrained_cfg['classifier']) or a transformers *ForImageClassification model"
        )
    return [(p, model.get_submodule(p)) for p in paths]


def prepare_baseline_model(
    model: nn.Module, num_labels: int, id2label: dict[int, str] | None = None
) -> nn.Module:
    """Give a plain timm / transformers model a fresh head of ``num_labels`` classes, in place.

    Used for the ``finetune`` and ``head`` baselines. The label metadata (timm ``num_classes``,
    transformers ``num_labels``/``id2label``/``label2id``) is updated to match.
    """
    from pb_adapters.heads import LabelState, create_task_head, set_label_state

    for path, _ in _head_modules(model):
        model.set_submodule(path, create_task_head(model, path, num_labels))
    id2label = dict(id2label) if id2label else {i: str(i) for i in range(num_labels)}
    set_label_state(model, LabelState(num_labels, id2label, {v: k for k, v in id2label.items()}))
    if isinstance(getattr(model, "pretrained_cfg", None), dict):
        model.pretrained_cfg = {**model.pretrained_cfg, "num_classes": num_labels}
    return model


def _set_head_only_train_mode(model: nn.Module, head_names: Iterable[str]) -> None:
    """Everything in eval mode (frozen norms, no dropout/drop-path in the frozen backbone) except
    the head modules."""
    model.eval()
    model.training = True  # timm applies head dropout depending on the model's own flag
    for name in head_names:
        model.get_submodule(name).train()


def _rng_state() -> dict[str, Any]:
    """The global RNG states (Python, NumPy, torch, CUDA) at this moment."""
    state: dict[str, Any] = {
        "python": random.getstate(),
        "numpy": np.random.get_state(),
        "torch": torch.get_rng_state(),
    }
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def _set_rng_state(state: dict[str, Any]) -> None:
    random.setstate(state["python"])
    np.random.set_state(state["numpy"])
    torch.set_rng_state(state["torch"])
    if "cuda" in state:
        torch.cuda.set_rng_state_all(state["cuda"])


class _EpochSampler(torch.utils.data.Sampler[int]):
    """Shuffles with a generator seeded by ``(seed, epoch)`` and yields ``epoch * n + index``.

    The epoch travels inside the index (decoded by :class:`_SeededItems`) so that persistent
    worker processes, which never see attribute changes made here, still know it.
    """

    def __init__(self, size: int, seed: int) -> None:
        self.size, self.seed, self.epoch = size, seed, 0

    def use_epoch(self, epoch: int) -> None:
        """Shuffle for ``epoch`` (0-based) on the next iteration."""
        self.epoch = epoch

    def __len__(self) -> int:
        return self.size

    def __iter__(self):
        gen = torch.Generator()
        gen.manual_seed(self.seed * 1_000_003 + self.epoch)
        offset = self.epoch * self.size
        return iter((offset + torch.randperm(self.size, generator=gen)).tolist())


class _SeededItems(Dataset):
    """Gives every training item its own RNG seed, ``f(seed, epoch, index)``.

    Random augmentation then does not depend on the global RNG's history, which Accelerate's
    prefetching loader interleaves with the model's own random draws: this is what makes a
    resumed run (and one with any number of workers) see exactly the same augmented images.
    """

    def __init__(self, dataset: Dataset, seed: int) -> None:
        self.dataset, self.seed = dataset, seed

    def __len__(self) -> int:
        return len(self.dataset)  # type: ignore[arg-type]

    def __getitem__(self, token: int) -> Any:
        size = len(self.dataset)  # type: ignore[arg-type]
        epoch, index = divmod(int(token), size)
        item_seed = (self.seed * 1_000_003 + epoch) * 100_000_007 + index
        py_state = random.getstate()
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(item_seed)
            random.seed(item_seed)
            try:
                return self.dataset[index]
            finally:
                random.setstate(py_state)


class _SharedTaskModuleFilter(logging.Filter):
    """Drops Accelerate's notice about the task head being registered under two names.

    The active task's head (and norms) live both in the base model and in the wrapper's
    ``task_modules``; Accelerate saves the tensor once and says so. That is expected here.
    """

    def filter(self, record: logging.LogRecord) -> bool:
        message = record.getMessage()
        return not ("Removed shared tensor" in message and "task_modules." in message)


@contextlib.contextmanager
def _quiet_shared_tensor_notice() -> Iterator[None]:
    log = logging.getLogger("accelerate.utils.other")
    notice_filter = _SharedTaskModuleFilter()
    log.addFilter(notice_filter)
    try:
        yield
    finally:
        log.removeFilter(notice_filter)


def _save_rng_state(path: Path) -> None:
    """Write the global RNG states as safetensors (tensors + string metadata, no pickle).

    Accelerate's own RNG file is a pickle that recent torch refuses to load with
    ``weights_only=True`` (it then silently skips it), so the trainer keeps its own copy.
    """
    from safetensors.torch import save_file

    state = _rng_state()
    version, keys, gauss = state["python"]
    np_name, np_keys, np_pos, np_has_gauss, np_gauss = state["numpy"]
    tensors = {
        "torch": state["torch"],
        "python": torch.tensor(keys, dtype=torch.int64),
        "numpy": torch.from_numpy(np.asarray(np_keys, dtype=np.int64)),
    }
    for i, cuda_state in enumerate(state.get("cuda", [])):
        tensors[f"cuda_{i}"] = cuda_state
    meta = {
        "python_version": str(version),
        "python_gauss": json.dumps(gauss),
        "numpy": json.dumps([np_name, int(np_pos), int(np_has_gauss), float(np_gauss)]),
    }
    save_file(tensors, path, metadata=meta)


def _load_rng_state(path: Path) -> None:
    """Restore the RNG states written by :func:`_save_rng_state`."""
    from safetensors import safe_open

    with safe_open(path, framework="pt") as fh:
        meta = fh.metadata()
        tensors = {k: fh.get_tensor(k) for k in fh.keys()}  # noqa: SIM118 (not a dict)
    np_name, np_pos, np_has_gauss, np_gauss = json.loads(meta["numpy"])
    state: dict[str, Any] = {
        "python": (
            int(meta["python_version"]),
            tuple(int(v) for v in tensors["python"].tolist()),
            json.loads(meta["python_gauss"]),
        ),
        "numpy": (
            np_name,
            tensors["numpy"].numpy().astype(np.uint32),
            np_pos,
            np_has_gauss,
            np_gauss,
        ),
        "torch": tensors["torch"],
    }
    cuda = [tensors[f"cuda_{i}"] for i in range(len(tensors)) if f"cuda_{i}" in tensors]
    if cuda and torch.cuda.is_available() and len(cuda) == torch.cuda.device_count():
        state["cuda"] = cuda
    _set_rng_state(state)


def latest_checkpoint(output_dir: str | os.PathLike[str]) -> Path | None:
    """The newest complete checkpoint under ``<output_dir>/checkpoints`` (None if there is none).

    Folders still being written or deleted (``.tmp-*``, ``.old-*``) or missing the trainer's
    JSON state are ignored.
    """
    done = complete_checkpoints(Path(output_dir) / CHECKPOINTS_DIR, _STATE_FILE)
    return done[-1] if done else None


# --------------------------------------------------------------------------------------------
# The trainer
# --------------------------------------------------------------------------------------------


def make_accelerator(args: TrainingArguments) -> Any:
    """The ``accelerate.Accelerator`` a run with ``args`` uses: precision, accumulation, device
    and trackers (logging under ``args.output_dir``)."""
    from accelerate import Accelerator

    from pb_adapters.training.tracking import resolve_report_to

    trackers = resolve_report_to(args.report_to)
    return Accelerator(
        mixed_precision=args.mixed_precision,
        gradient_accumulation_steps=args.gradient_accumulation_steps,
        cpu=args.cpu,
        log_with=trackers or None,
        project_dir=args.output_dir if trackers else None,
    )


class PiggybackTrainer:
    """Train one task with Accelerate: a piggyback adapter, or a fine-tuning / head-only baseline.

    Args:
        model: a :class:`~pb_adapters.PiggybackModel` (``train_mode="adapter"``) or a plain timm
            / transformers classifier already sized for the task (baselines; see
            :func:`prepare_baseline_model`).
        args: the :class:`TrainingArguments`.
        train_dataset / eval_dataset / test_dataset: datasets yielding ``(image_tensor, label)``;
            or pass ``splits=`` instead.
        splits: a :class:`~pb_adapters.training.data.DatasetSplits` (its transforms must be set).
        dataset_name: recorded in the artifact and metrics (default: ``splits.name``).
        accelerator: an existing ``accelerate.Accelerator`` (its trackers are used); one is
            created by :func:`make_accelerator` if None.
    """

    def __init__(
        self,
        model: nn.Module,
        args: TrainingArguments,
        train_dataset: Dataset | None = None,
        eval_dataset: Dataset | None = None,
        test_dataset: Dataset | None = None,
        *,
        splits: DatasetSplits | None = None,
        dataset_name: str | None = None,
        accelerator: Any = None,
    ) -> None:

        if splits is not None:
            train_dataset = train_dataset or splits.train
            eval_dataset = eval_dataset or splits.validation
            test_dataset = test_dataset or splits.test
            dataset_name = dataset_name or splits.name
        if train_dataset is None:
            raise ValueError("a training dataset (or splits=) is required")
        self.args = args
        self.model = model
        self.train_dataset = train_dataset
        self.eval_dataset = eval_dataset
        self.test_dataset = test_dataset
        self.dataset_name = dataset_name
        self.accelerator = accelerator or make_accelerator(args)
        self.transformers_api = _is_transformers(model)
        if args.train_mode == "adapter" and not hasattr(model, "parameter_groups"):
            raise TypeError(
                "train_mode='adapter' needs a PiggybackModel (get_piggyback_model(base, config)); "
                "for a plain backbone use train_mode='finetune' or 'head'"
            )
        if args.train_mode != "adapter" and hasattr(model, "parameter_groups"):
            raise TypeError(
                f"train_mode={args.train_mode!r} trains a plain backbone, not a PiggybackModel"
            )
        self.output_dir = Path(args.output_dir)
        self._head_names: list[str] = []

    @property
    def run_label(self) -> str:
        """What is trained, for progress bars and plots: the adapter's method, or the mode."""
        config = self._adapter_config()
        return str(getattr(config, "method", None) or self.args.train_mode)

    # ---------------------------------------------------------------- optimiser
    def _adapter_config(self) -> Any:
        cfg = getattr(self.model, "peft_config", None)
        active = getattr(self.model, "active_adapter", None)
        if isinstance(cfg, dict) and active in cfg:
            return cfg[active]
        return None

    # TrainingArguments field that overrides a parameter group's learning rate; the method's
    # own layer group (masks, PackNet's weights) is overridden by ``mask_lr``.
    _GROUP_ARG_FIELD: dict[str, str] = {"head": "head_lr", "norms": "norm_lr", "modules": "head_lr"}

    def _lr(self, group: str) -> float:
        """Learning rate of a parameter group: the argument, else the adapter config, else 1e-4.

        Which config field holds a group's rate is the method's knowledge
        (:attr:`~pb_adapters.registry.MethodSpec.lr_fields`).
        """
        config = self._adapter_config()
        spec = get_method(config.method) if config is not None else None
        own_group = spec is not None and group == spec.layer_group
        value = getattr(
            self.args, "mask_lr" if own_group else self._GROUP_ARG_FIELD.get(group, "head_lr")
        )
        if value is not None:
            return float(value)
        if spec is None:
            return 1e-4
        return float(getattr(config, spec.lr_field(group), 1e-4))

    def param_groups(self) -> list[dict[str, Any]]:
        """The optimiser's parameter groups for the current mode (also sets ``requires_grad``)."""
        model, mode = self.model, self.args.train_mode
        groups: list[dict[str, Any]] = []
        if mode == "adapter":
            for name, params in model.parameter_groups().items():
                params = [p for p in params if p.requires_grad]
                if params:
                    groups.append({"name": name, "params": params, "lr": self._lr(name)})
        else:
            heads = _head_modules(model)
            self._head_names = [n for n, _ in heads]
            head_ids = {id(p) for _, m in heads for p in m.parameters()}
            head_params = [p for _, m in heads for p in m.parameters()]
            for p in model.parameters():
                p.requires_grad_(mode == "finetune" or id(p) in head_ids)
            if mode == "finetune":
                backbone = [p for p in model.parameters() if id(p) not in head_ids]
                groups.append({"name": "backbone", "params": backbone, "lr": self.args.backbone_lr})
            groups.append({"name": "head", "params": head_params, "lr": self._lr("head")})
        if not groups:
            raise ValueError("the model has no trainable parameters for this mode")
        for g in groups:
            g["initial_lr"] = g["lr"]
        return groups

    def _lr_lambda(self, total_steps: int, steps_per_epoch: int):
        args = self.args
        if args.lr_scheduler == "constant":
            return lambda step: 1.0
        if args.lr_scheduler == "cosine":
            return lambda step: (
                0.5 * (1.0 + math.cos(math.pi * min(step, total_steps) / total_steps))
            )
        decay_epoch = args.decay_epoch if args.decay_epoch is not None else args.num_epochs / 2
        milestone = max(1, round(decay_epoch * steps_per_epoch))
        return lambda step: args.decay_factor if step >= milestone else 1.0

    # ---------------------------------------------------------------- loops
    def _loader(self, dataset: Dataset | None, train: bool) -> DataLoader | None:
        if dataset is None:
            return None
        workers = (
            self.args.num_workers if self.args.num_workers is not None else default_num_workers()
        )
        extra: dict[str, Any] = {"num_workers": workers}
        if workers > 0:
            extra["persistent_workers"] = True
        if train:
            sampler = _EpochSampler(len(dataset), self.args.seed)  # type: ignore[arg-type]
            return DataLoader(
                _SeededItems(dataset, self.args.seed),
                batch_size=self.args.batch_size,
                sampler=sampler,
                **extra,
            )
        bs = self.args.eval_batch_size or max(self.args.batch_size, 64)
        return DataLoader(dataset, batch_size=bs, shuffle=False, **extra)

    def _set_train_mode(self, model: nn.Module) -> None:
        if self.args.train_mode == "head":
            _set_head_only_train_mode(self.accelerator.unwrap_model(model), self._head_names)
        else:
            model.train()  # PiggybackModel keeps frozen norm layers in eval mode itself

    @torch.no_grad()
    def evaluate(
        self, loader: DataLoader | Dataset, model: nn.Module | None = None
    ) -> dict[str, float]:
        """Loss, top-1 and top-5 of ``model`` (default: the trainer's) over ``loader``.

        A dataset is wrapped in a loader first. Results are gathered over all processes.
        """
        acc = self.accelerator
        if not isinstance(loader, DataLoader):
            loader = acc.prepare_data_loader(self._loader(loader, train=False))
        model = model if model is not None else self.model
        was_training = model.training
        model.eval()
        metrics = ClassificationMetrics(ks=(1, 5))
        transformers_api = _is_transformers(model)
        for images, labels in loader:
            with acc.autocast():
                logits = forward_logits(model, images, transformers_api)
            metrics.update(logits, labels, accelerator=acc)
        if was_training:
            self._set_train_mode(model)
        return metrics.compute()

    def _snapshot(self, model: nn.Module) -> dict[str, torch.Tensor]:
        reshard(model)  # FSDP: this process's slices, not the outer unit's gathered weights
        state = {n: p.detach().clone() for n, p in model.named_parameters() if p.requires_grad}
        for n, b in model.named_buffers():
            if b.is_floating_point() or n.endswith("num_batches_tracked"):
                state["buffer:" + n] = b.detach().clone()
        return state

    @staticmethod
    def _restore(model: nn.Module, state: dict[str, torch.Tensor]) -> None:
        reshard(model)
        params = dict(model.named_parameters())
        buffers = dict(model.named_buffers())
        with torch.no_grad():
            for key, value in state.items():
                target = buffers[key[7:]] if key.startswith("buffer:") else params[key]
                local_tensor(target).copy_(local_tensor(value))  # FSDP: this process's slice

    def _log(self, record: dict[str, Any]) -> None:
        if self.accelerator.is_main_process:
            with open(self.output_dir / self.args.metrics_file, "a", encoding="utf-8") as fh:
                fh.write(json.dumps(record) + "\n")

    # ---------------------------------------------------------------- checkpoints
    def resolve_checkpoint(self, reference: str | os.PathLike[str]) -> Path:
        """The checkpoint folder ``reference`` names: a path, or ``"latest"`` under ``output_dir``."""
        if str(reference) == "latest":
            found = latest_checkpoint(self.output_dir)
            if found is None:
                raise FileNotFoundError(
                    f"no checkpoint to resume from in {self.output_dir / CHECKPOINTS_DIR}; "
                    "train without resume_from_checkpoint first"
                )
            return found
        path = Path(reference)
        if not (path / _STATE_FILE).is_file():
            raise FileNotFoundError(
                f"{path} is not a complete checkpoint (no {_STATE_FILE}); pass a "
                f"{CHECKPOINTS_DIR}/step-XXXXXXXX folder or 'latest'"
            )
        return path

    def _save_checkpoint(
        self, state: dict[str, Any], best_state: dict[str, torch.Tensor] | None
    ) -> Path:
        """Write a checkpoint under a temporary name, then rename it: a crash mid-save never
        leaves a half-written folder that ``latest`` would pick."""
        from safetensors.torch import save_file

        acc = self.accelerator
        root = self.output_dir / CHECKPOINTS_DIR
        name = f"step-{state['global_step']:08d}"
        tmp = root / f".tmp-{name}"
        if acc.is_main_process:
            clear_leftovers(root)  # folders of a killed save, never complete checkpoints
            tmp.mkdir(parents=True)
        acc.wait_for_everyone()
        with _quiet_shared_tensor_notice():
            acc.save_state(str(tmp))
        _save_rng_state(tmp / f"rng_state_{acc.process_index}.safetensors")
        if best_state is not None and (acc.is_main_process or is_sharded(self.model)):
            tensors = {k: local_tensor(v).contiguous().cpu() for k, v in best_state.items()}
            save_file(tensors, tmp / self._best_file())
        acc.wait_for_everyone()  # every process's files are in the folder before it is renamed
        if acc.is_main_process:
            # the JSON state is written last: its presence marks a complete checkpoint
            (tmp / _STATE_FILE).write_text(json.dumps(state, indent=2) + "\n", encoding="utf-8")
            commit_folder(tmp, root / name)
            limit = self.args.save_total_limit
            done = complete_checkpoints(root, _STATE_FILE)
            if limit is not None:
                for old in done[: max(0, len(done) - limit)]:
                    remove_folder(old)
        acc.wait_for_everyone()
        return root / name

    def _best_file(self) -> str:
        """This process's file of the best epoch's state in a checkpoint (its slice under FSDP)."""
        if is_sharded(self.model):
            return shard_file_name(_BEST_FILE, self.accelerator.process_index)
        return _BEST_FILE

    # ---------------------------------------------------------------- training
    def train(self) -> TrainResult:
        """Run the training loop, restore the best epoch, test it, save the artifact.

        With ``args.resume_from_checkpoint`` the run continues from that checkpoint. On
        ``KeyboardInterrupt`` a checkpoint is saved, then the exception propagates.
        """
        from accelerate.utils import set_seed
        from tqdm.auto import tqdm

        args, acc = self.args, self.accelerator
        check_supported(acc)
        set_seed(args.seed)
        resume = (
            self.resolve_checkpoint(args.resume_from_checkpoint)
            if args.resume_from_checkpoint
            else None
        )
        if acc.is_main_process:
            self.output_dir.mkdir(parents=True, exist_ok=True)
            (self.output_dir / args.metrics_file).write_text("", encoding="utf-8")
        groups = self.param_groups()
        if args.optimizer == "sgd":
            optimizer = torch.optim.SGD(
                groups, momentum=args.momentum, weight_decay=args.weight_decay
            )
        else:
            optimizer = torch.optim.Adam(groups, weight_decay=args.weight_decay)
        train_loader = self._loader(self.train_dataset, train=True)
        # an epoch's order depends only on (seed, epoch): a resumed run shuffles the same way
        sampler = train_loader.sampler
        val_loader = self._loader(self.eval_dataset, train=False)
        test_loader = self._loader(self.test_dataset, train=False)
        # train mode first: eval-cached weights are buffers that DDP would record and broadcast
        self._set_train_mode(self.model)
        model, optimizer, train_loader = acc.prepare(self.model, optimizer, train_loader)
        val_loader = acc.prepare_data_loader(val_loader) if val_loader is not None else None
        test_loader = acc.prepare_data_loader(test_loader) if test_loader is not None else None
        unwrapped = acc.unwrap_model(model)
        keep_weights_sharded(unwrapped)

        batches = len(train_loader)
        if args.max_steps_per_epoch is not None:
            batches = min(batches, args.max_steps_per_epoch)
        steps_per_epoch = max(1, math.ceil(batches / args.gradient_accumulation_steps))
        total_steps = steps_per_epoch * args.num_epochs
        # The scheduler is stepped by hand once per optimiser step (not prepared: Accelerate would
        # step it once per process); registered so that save_state / load_state include it.
        scheduler = torch.optim.lr_scheduler.LambdaLR(
            optimizer.optimizer if hasattr(optimizer, "optimizer") else optimizer,
            self._lr_lambda(total_steps, steps_per_epoch),
        )
        acc.register_for_checkpointing(scheduler)
        raw_optimizer = optimizer.optimizer if hasattr(optimizer, "optimizer") else optimizer

        history: list[dict[str, Any]] = []
        best: tuple[float, float] | None = None
        best_state: dict[str, torch.Tensor] | None = None
        best_epoch, best_val = 0, {}
        ema: float | None = None
        start_epoch, skip, global_step = 1, 0, 0
        partial: dict[str, Any] | None = None
        if resume is not None:
            from safetensors.torch import load_file

            acc.load_state(str(resume))
            rng_file = resume / f"rng_state_{acc.process_index}.safetensors"
            if rng_file.is_file():
                _load_rng_state(rng_file)
            saved = json.loads((resume / _STATE_FILE).read_text(encoding="utf-8"))
            start_epoch, skip = saved["epoch"], saved["batches_in_epoch"]
            acc.step = saved.get("accelerate_step", 0)
            global_step, ema, history = saved["global_step"], saved["ema"], saved["history"]
            best = tuple(saved["best_key"]) if saved["best_key"] is not None else None
            best_epoch, best_val, partial = saved["best_epoch"], saved["best_val"], saved["partial"]
            if (resume / self._best_file()).is_file():
                best_state = load_file(resume / self._best_file())
            if partial is None:  # the checkpoint was taken after the epoch's validation
                start_epoch, skip, partial = start_epoch + 1, 0, None
            if acc.is_main_process:  # the metrics file holds exactly the checkpoint's history
                text = "".join(json.dumps(r) + "\n" for r in history)
                atomic_write_bytes(self.output_dir / args.metrics_file, text.encode())
            acc.print(f"resumed from {resume} (epoch {start_epoch}, batch {skip})")

        acc.print(
            f"training ({self.run_label}): {args.num_epochs} epoch(s) x {steps_per_epoch} step(s), "
            f"batch {args.batch_size} x {acc.num_processes} process(es) x "
            f"{args.gradient_accumulation_steps} accumulation; lr "
            + ", ".join(f"{g['name']} {g['lr']:g}" for g in groups)
        )
        tracking = bool(acc.log_with)
        if tracking:
            from pb_adapters.training.tracking import tracker_config

            acc.init_trackers(self.run_label, config=tracker_config(args.to_dict()))
        interactive = sys.stderr.isatty()
        bar = tqdm(
            total=total_steps,
            initial=global_step,
            desc=self.run_label,
            disable=args.disable_progress_bar or not acc.is_local_main_process,
            dynamic_ncols=True,
            mininterval=0.2 if interactive else 15.0,
        )

        def state(
            epoch: int, done: int, metrics: ClassificationMetrics | None, lrs: dict[str, float]
        ) -> dict[str, Any]:
            # ``partial`` is None once the epoch's record (validation included) is in ``history``
            return {
                "epoch": epoch,
                "batches_in_epoch": done,
                "global_step": global_step,
                # Accelerate's micro-batch counter decides when accumulation syncs; its own copy
                # lives in a pickle that recent torch will not load
                "accelerate_step": acc.step,
                "ema": ema,
                "best_key": list(best) if best is not None else None,
                "best_epoch": best_epoch,
                "best_val": best_val,
                "history": history,
                "partial": None
                if metrics is None
                else {
                    "loss_sum": metrics.loss_sum,
                    "hits": metrics.hits,
                    "count": metrics.count,
                    "lrs": lrs,
                },
                "args": args.to_dict(),
            }

        start = time.perf_counter()
        epoch, done = start_epoch, skip
        epoch_lrs: dict[str, float] = {}
        train_metrics = ClassificationMetrics(ks=(1,))
        rng_at_step = _rng_state()
        try:
            for epoch in range(start_epoch, args.num_epochs + 1):
                self._set_train_mode(model)
                epoch_lrs = {
                    g.get("name", str(i)): g["lr"] for i, g in enumerate(optimizer.param_groups)
                }
                train_metrics = ClassificationMetrics(ks=(1,))
                if partial is not None:  # metrics of the batches seen before the interruption
                    train_metrics.loss_sum = partial["loss_sum"]
                    train_metrics.hits = list(partial["hits"])
                    train_metrics.count = partial["count"]
                    epoch_lrs = partial["lrs"]
                partial = None
                # No partial accumulation carried over from the previous epoch (or from before a
                # resume). The raw optimiser: Accelerate's wrapper only zeroes on a sync step.
                raw_optimizer.zero_grad(set_to_none=True)
                epoch_start = time.perf_counter()
                sampler.use_epoch(epoch - 1)
                loader = acc.skip_first_batches(train_loader, skip) if skip else train_loader
                done, skip = skip, 0
                rng_at_step = _rng_state()
                for images, labels in loader:
                    if done >= batches:
                        break
                    with acc.accumulate(model):
                        with acc.autocast():
                            logits = forward_logits(model, images, self.transformers_api)
                        loss = F.cross_entropy(logits.float(), labels)
                        acc.backward(loss)
                        if acc.sync_gradients and args.max_grad_norm:
                            acc.clip_grad_norm_(model.parameters(), args.max_grad_norm)
                        optimizer.step()
                        optimizer.zero_grad(set_to_none=True)
                    # gathered: every rank holds (and checkpoints) the totals over all ranks
                    train_metrics.update(logits, labels, accelerator=acc)
                    value = float(loss.detach())
                    ema = value if ema is None else 0.9 * ema + 0.1 * value
                    done += 1
                    if acc.sync_gradients:
                        scheduler.step()
                        global_step += 1
                        bar.update(1)
                        bar.set_postfix(
                            epoch=epoch,
                            loss=f"{ema:.4f}",
                            lr=f"{optimizer.param_groups[0]['lr']:.1e}",
                            refresh=False,
                        )
                        rng_at_step = _rng_state()
                        if tracking and global_step % args.logging_steps == 0:
                            acc.log(
                                {
                                    "train/loss_ema": ema,
                                    **{
                                        f"lr/{g.get('name', i)}": g["lr"]
                                        for i, g in enumerate(optimizer.param_groups)
                                    },
                                },
                                step=global_step,
                            )
                        if (
                            args.save_steps
                            and global_step % args.save_steps == 0
                            and done < batches
                        ):
                            self._save_checkpoint(
                                state(epoch, done, train_metrics, epoch_lrs), best_state
                            )
                train = train_metrics.compute()
                record: dict[str, Any] = {
                    "epoch": epoch,
                    "train_loss": train["loss"],
                    "train_top1": train["top1"],
                    "lr": epoch_lrs,  # at the start of the epoch
                }
                if val_loader is not None:
                    val = self.evaluate(val_loader, model)
                    record.update({f"val_{k}": v for k, v in val.items()})
                    key = (val["top1"], -val["loss"])
                    improved = best is None or key > best
                    if improved:
                        best, best_epoch, best_val = key, epoch, val
                        best_state = self._snapshot(unwrapped)
                    summary = (
                        f"epoch {epoch}/{args.num_epochs}: train loss {train['loss']:.4f} "
                        f"top-1 {train['top1']:.2%} | val loss {val['loss']:.4f} top-1 {val['top1']:.2%} "
                        f"top-5 {val['top5']:.2%}" + (" *" if improved else "")
                    )
                else:
                    best_epoch = epoch
                    summary = f"epoch {epoch}/{args.num_epochs}: train loss {train['loss']:.4f} top-1 {train['top1']:.2%}"
                record["epoch_seconds"] = time.perf_counter() - epoch_start
                summary += f" ({record['epoch_seconds']:.0f}s)"
                history.append(record)
                self._log(record)
                if tracking:
                    acc.log(_tracker_values(record), step=global_step)
                if acc.is_main_process:
                    if bar.disable:
                        print(summary, flush=True)
                    else:
                        bar.write(summary)
                if args.save_epoch_checkpoints:
                    self._save_checkpoint(state(epoch, batches, None, epoch_lrs), best_state)
        except KeyboardInterrupt:
            bar.close()
            # Save the state as of the last optimiser step: model and optimiser have not changed
            # since, and the RNG is rewound to that point, so resuming continues the same run.
            committed = done - done % args.gradient_accumulation_steps if done < batches else done
            finished = len(history) >= epoch
            _set_rng_state(rng_at_step)
            ckpt = self._save_checkpoint(
                state(epoch, committed, None if finished else train_metrics, epoch_lrs), best_state
            )
            acc.print(f"interrupted: checkpoint saved to {ckpt}; resume with --resume")
            if tracking:
                acc.end_training()
            raise
        bar.close()
        if best_state is not None and best_epoch != args.num_epochs:
            self._restore(unwrapped, best_state)
            acc.print(
                f"restored the best epoch ({best_epoch}, validation top-1 {best_val['top1']:.2%})"
            )
        test: dict[str, float] = {}
        if test_loader is not None:
            test = self.evaluate(test_loader, model)
            acc.print(
                f"test: loss {test['loss']:.4f} top-1 {test['top1']:.2%} top-5 {test['top5']:.2%} "
                f"({int(test['num_samples'])} images)"
            )
            record = {
                "split": "test",
                "best_epoch": best_epoch,
                **{f"test_{k}": v for k, v in test.items()},
            }
            self._log(record)
            if tracking:
                acc.log(_tracker_values(record), step=global_step)
        if tracking:
            acc.end_training()
        train_seconds = time.perf_counter() - start
        model.eval()
        self.model = unwrapped
        result = TrainResult(best_epoch, best_val, test, history, train_seconds)
        if acc.is_main_process:
            payload = {
                "train_mode": args.train_mode,
                "method": self.run_label,
                "dataset": self.dataset_name,
                **result.to_dict(),
            }
            payload["args"] = args.to_dict()
            text = json.dumps(payload, indent=2) + "\n"
            atomic_write_bytes(self.output_dir / "results.json", text.encode())
            if history:
                from pb_adapters.training.curves import CURVES_FILE_NAME, plot_training_curves

                title = self.run_label + (f" on {self.dataset_name}" if self.dataset_name else "")
                plot_training_curves(history, self.output_dir / CURVES_FILE_NAME, title=title)
        if args.train_mode == "adapter" and args.save_artifact:
            result.artifact_dir = self.save_artifact(result)
            if args.push_to_hub:
                self.push_artifact(result.artifact_dir)
        acc.wait_for_everyone()
        return result

    def push_artifact(self, folder: Path) -> str | None:
        """Upload the artifact in ``folder``, its card and the training curves to
        ``args.push_to_hub`` (main process only); return the commit url there."""
        acc, args = self.accelerator, self.args
        url: str | None = None
        if acc.is_main_process:
            from pb_adapters.hub import ARTIFACT_FILES, CARD_FILES, push_folder_to_hub
            from pb_adapters.training.curves import CURVES_FILE_NAME

            curves = self.output_dir / CURVES_FILE_NAME
            if curves.is_file() and not (folder / CURVES_FILE_NAME).is_file():
                shutil.copyfile(curves, folder / CURVES_FILE_NAME)
            url = push_folder_to_hub(
                folder,
                str(args.push_to_hub),
                private=args.hub_private,
                commit_message=f"Upload {self.run_label} adapter trained on "
                + (self.dataset_name or "a custom dataset"),
                allow_patterns=[*ARTIFACT_FILES, *CARD_FILES, CURVES_FILE_NAME],
            )
            acc.print(f"pushed to https://huggingface.co/{args.push_to_hub} ({url})")
        acc.wait_for_everyone()
        return url

    def artifact_metrics(self, result: TrainResult) -> dict[str, Any]:
        """The metrics recorded in the artifact and its model card (named ``<split>_<metric>``)."""
        metrics: dict[str, Any] = {}
        if result.test:
            metrics["test_accuracy"] = result.test["top1"]
            metrics["test_top5_accuracy"] = result.test["top5"]
        if result.validation:
            metrics["validation_accuracy"] = result.validation["top1"]
        return metrics

    def save_artifact(self, result: TrainResult) -> Path | None:
        """Save the adapter into ``output_dir`` (main process only); return the folder."""
        acc = self.accelerator
        folder: Path | None = None
        model = acc.unwrap_model(self.model)
        with full_parameters(model, acc.is_main_process):  # FSDP: gathered on the main process
            if acc.is_main_process:
                datasets = [self.dataset_name] if self.dataset_name else None
                folder = Path(
                    model.save_pretrained(
                        self.output_dir,
                        metrics=self.artifact_metrics(result),
                        datasets=datasets,
                        mask_encoding=self.args.mask_encoding,
                    )
                    or self.output_dir
                )
        acc.wait_for_everyone()
        return folder or self.output_dir


#: Alias: the trainer trains baselines too.
Trainer = PiggybackTrainer
