"""What controls a training run (:class:`TrainingArguments`) and what it returns (:class:`TrainResult`)."""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Literal

import torch

from pb_adapters.errors import ConfigError
from pb_adapters.hub import validate_hub_target
from pb_adapters.mask_coding import MASK_ENCODINGS

__all__ = ["TRAIN_MODES", "TrainMode", "TrainResult", "TrainingArguments", "check_rate"]

TrainMode = Literal["adapter", "finetune", "head"]
#: The supported values of ``TrainingArguments.train_mode``.
TRAIN_MODES: tuple[str, ...] = ("adapter", "finetune", "head")


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
        deterministic: use deterministic algorithms only (``torch.use_deterministic_algorithms``,
            the cuBLAS workspace setting, cuDNN without benchmarking; see
            :mod:`pb_adapters.training.determinism`), so that an interrupted and resumed CUDA run
            ends bit-identical to an uninterrupted one, as a CPU run does anyway. Slower on CUDA.
        mixed_precision: ``"no"``, ``"fp16"``, ``"bf16"`` or ``"fp8"``, handed to Accelerate;
            ``None`` takes Accelerate's configuration (``accelerate config`` or ``accelerate
            launch --mixed_precision``), else ``"no"``. Mask scores stay float32 either way.
        num_workers: data loader workers per process (default: CPUs - 1, at most 8).
        max_steps_per_epoch: stop each epoch after this many batches (quick runs, tests).
        steps_per_epoch: optimiser steps per epoch of a streamed training split (required
            unless the stream knows its size; see :mod:`pb_adapters.training.data.streaming`).
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
            ``huggingface-cli login`` or ``HF_TOKEN``); the id is checked when the arguments are
            created, not after training.
        hub_private: create the repository private (only used when it does not exist yet).
        divergence_check: stop the run with a
            :class:`~pb_adapters.training.errors.DivergenceError` (and save no artifact) when
            the training loss becomes non-finite or exceeds ``divergence_factor`` times the
            first epoch's mean (at least the loss of guessing uniformly, ``ln(classes)``).
        divergence_factor: how far the loss may rise above that reference.

    Raises:
        ConfigError: a value out of range (learning rates must be finite, not negative and
            representable in float32).
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
    deterministic: bool = False
    mixed_precision: str | None = None
    num_workers: int | None = None
    max_steps_per_epoch: int | None = None
    steps_per_epoch: int | None = None
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
    divergence_check: bool = True
    divergence_factor: float = 1e4

    def __post_init__(self) -> None:
        if self.train_mode not in TRAIN_MODES:
            raise ConfigError(f"train_mode must be one of {TRAIN_MODES}, got {self.train_mode!r}")
        if self.mask_encoding not in MASK_ENCODINGS:
            raise ConfigError(f"mask_encoding must be one of {MASK_ENCODINGS}")
        if self.optimizer not in ("adam", "sgd"):
            raise ConfigError(f"optimizer must be adam or sgd, got {self.optimizer!r}")
        if self.lr_scheduler not in ("step", "cosine", "constant"):
            raise ConfigError(
                f"lr_scheduler must be step, cosine or constant, got {self.lr_scheduler!r}"
            )
        for name in ("num_epochs", "batch_size", "gradient_accumulation_steps", "logging_steps"):
            _check_count(name, getattr(self, name))
        for name in ("max_steps_per_epoch", "steps_per_epoch", "save_steps", "save_total_limit"):
            if getattr(self, name) is not None:
                _check_count(name, getattr(self, name), "or None")
        if self.push_to_hub is not None and self.train_mode != "adapter":
            raise ConfigError(
                "push_to_hub uploads an adapter artifact: it needs train_mode='adapter'"
            )
        if self.push_to_hub is not None:  # a typo must not wait for the end of training
            validate_hub_target(self.push_to_hub)
        for name in _RATES:
            if getattr(self, name) is not None:
                check_rate(name, getattr(self, name))
        if not self.divergence_factor > 1:
            raise ConfigError(f"divergence_factor must be > 1, got {self.divergence_factor!r}")

    def to_dict(self) -> dict[str, Any]:
        """The arguments as a JSON-ready dict."""
        return asdict(self)


# Fields holding rates and factors: finite, not negative, representable in float32.
_RATES = (
    "mask_lr",
    "head_lr",
    "norm_lr",
    "backbone_lr",
    "weight_decay",
    "momentum",
    "decay_epoch",
    "decay_factor",
    "max_grad_norm",
    "divergence_factor",
)
_FLOAT32_MAX = float(torch.finfo(torch.float32).max)


def _check_count(name: str, value: Any, extra: str = "") -> None:
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ConfigError(
            f"{name} must be >= 1{' ' + extra if extra else ''}, got {value!r} (an integer)"
        )


def check_rate(name: str, value: Any) -> float:
    """``value`` as a float after checking it is a finite, non-negative number that float32
    parameters can hold (a larger learning rate overflows in the first step).

    Raises:
        ConfigError: it is not.
    """
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise ConfigError(f"{name} must be a number, got {value!r}")
    value = float(value)
    if not math.isfinite(value) or value < 0 or value > _FLOAT32_MAX:
        raise ConfigError(
            f"{name} must be a finite number >= 0 that float32 can hold, got {value!r}"
        )
    return value


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
