"""What controls a training run (:class:`TrainingArguments`) and what it returns (:class:`TrainResult`)."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Literal

from pb_adapters.hub import validate_hub_target
from pb_adapters.mask_coding import MASK_ENCODINGS

__all__ = ["TRAIN_MODES", "TrainMode", "TrainResult", "TrainingArguments"]

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
        if self.steps_per_epoch is not None and self.steps_per_epoch < 1:
            raise ValueError("steps_per_epoch must be >= 1 or None")
        if int(self.logging_steps) < 1:
            raise ValueError(f"logging_steps must be >= 1, got {self.logging_steps!r}")
        if self.push_to_hub is not None and self.train_mode != "adapter":
            raise ValueError(
                "push_to_hub uploads an adapter artifact: it needs train_mode='adapter'"
            )
        if self.push_to_hub is not None:  # a typo must not wait for the end of training
            validate_hub_target(self.push_to_hub)
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
