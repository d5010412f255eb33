"""An Accelerate-based trainer for adapters, and for the baselines they are compared against.

:class:`PiggybackTrainer` trains one task on a :class:`~pb_adapters.training.data.DatasetSplits`
and works the same on one CPU, one GPU or ``accelerate launch`` with many processes:

* ``train_mode="piggyback"``: the model is a :class:`~pb_adapters.PiggybackModel`; Adam updates
  the parameter groups the model reports (``masks``, ``head``, ``norms``), each with its own
  learning rate (official piggyback defaults: 1e-4 for masks and head), no weight decay.
* ``train_mode="finetune"``: the plain backbone with a fresh head, every weight trained
  (the "one full model per task" baseline).
* ``train_mode="head"``: the plain backbone, frozen, with a fresh trained head (the "classifier
  only" baseline); norm layers stay in eval mode.

The learning rate decays x0.1 at the midpoint of training (step decay, as in the official
piggyback code; ``"cosine"`` and ``"constant"`` are options). After every epoch the validation
split is evaluated; the trainable state of the best epoch (top-1, then loss) is kept in memory and
restored at the end, the test split is evaluated once, metrics are appended to a JSON-lines file
and, in piggyback mode, the adapter artifact is saved with ``save_pretrained``.
"""

from __future__ import annotations

import json
import math
import sys
import time
from collections.abc import Iterable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Literal

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import DataLoader, Dataset

from pb_adapters.training.data import DatasetSplits, default_num_workers
from pb_adapters.training.metrics import ClassificationMetrics

__all__ = [
    "TRAIN_MODES",
    "PiggybackTrainer",
    "TrainMode",
    "TrainResult",
    "Trainer",
    "TrainingArguments",
    "prepare_baseline_model",
]

TrainMode = Literal["piggyback", "finetune", "head"]
#: The supported values of ``TrainingArguments.train_mode``.
TRAIN_MODES: tuple[str, ...] = ("piggyback", "finetune", "head")


@dataclass
class TrainingArguments:
    """Everything that controls a training run.

    Attributes:
        output_dir: where metrics, results and the artifact are written.
        train_mode: ``"piggyback"`` (masks + head), ``"finetune"`` (all weights) or ``"head"``.
        num_epochs: passes over the training split (official piggyback: 30).
        batch_size: per-process training batch size (official: 32).
        eval_batch_size: per-process evaluation batch size (default: max(batch_size, 64)).
        gradient_accumulation_steps: batches per optimiser step.
        mask_lr / head_lr / norm_lr: learning rates of the parameter groups; ``None`` takes the
            adapter config's values (piggyback defaults 1e-4) or 1e-4 for baselines.
        backbone_lr: learning rate of the backbone weights in ``finetune`` mode.
        weight_decay: Adam weight decay (official: none).
        lr_scheduler: ``"step"`` (x ``decay_factor`` at ``decay_epoch``), ``"cosine"`` or
            ``"constant"``.
        decay_epoch: when the step decay happens, in (fractional) epochs; default: the midpoint.
        decay_factor: the step decay's factor.
        max_grad_norm: clip the gradient norm to this value (``None``: no clipping).
        seed: seeds Python, NumPy and torch (model init, shuffling, augmentation).
        mixed_precision: ``"no"``, ``"fp16"``, ``"bf16"`` or ``"fp8"``, handed to Accelerate.
        num_workers: data loader workers per process (default: CPUs - 1, at most 8).
        max_steps_per_epoch: stop each epoch after this many batches (quick runs, tests).
        save_artifact: save the adapter with ``save_pretrained`` at the end (piggyback mode).
        metrics_file: JSON-lines file (inside ``output_dir``) receiving one line per epoch and
            one for the test result.
        disable_progress_bar: no tqdm bar (the per-epoch summary lines are still printed).
        cpu: force CPU even when an accelerator is available.
    """

    output_dir: str = "outputs/run"
    train_mode: TrainMode = "piggyback"
    num_epochs: int = 30
    batch_size: int = 32
    eval_batch_size: int | None = None
    gradient_accumulation_steps: int = 1
    mask_lr: float | None = None
    head_lr: float | None = None
    norm_lr: float | None = None
    backbone_lr: float = 1e-4
    weight_decay: float = 0.0
    lr_scheduler: Literal["step", "cosine", "constant"] = "step"
    decay_epoch: float | None = None
    decay_factor: float = 0.1
    max_grad_norm: float | None = None
    seed: int = 0
    mixed_precision: str = "no"
    num_workers: int | None = None
    max_steps_per_epoch: int | None = None
    save_artifact: bool = True
    metrics_file: str = "metrics.jsonl"
    disable_progress_bar: bool = False
    cpu: bool = False

    def __post_init__(self) -> None:
        if self.train_mode not in TRAIN_MODES:
            raise ValueError(f"train_mode must be one of {TRAIN_MODES}, got {self.train_mode!r}")
        if self.lr_scheduler not in ("step", "cosine", "constant"):
            raise ValueError(
                f"lr_scheduler must be step, cosine or constant, got {self.lr_scheduler!r}"
            )
        for name in ("num_epochs", "batch_size", "gradient_accumulation_steps"):
            if int(getattr(self, name)) < 1:
                raise ValueError(f"{name} must be >= 1, got {getattr(self, name)!r}")
        if self.max_steps_per_epoch is not None and self.max_steps_per_epoch < 1:
            raise ValueError("max_steps_per_epoch must be >= 1 or None")

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
        artifact_dir: the saved adapter folder (piggyback mode with ``save_artifact``), else None.
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


# --------------------------------------------------------------------------------------------
# The trainer
# --------------------------------------------------------------------------------------------


class PiggybackTrainer:
    """Train one task with Accelerate: a piggyback adapter, or a fine-tuning / head-only baseline.

    Args:
        model: a :class:`~pb_adapters.PiggybackModel` (``train_mode="piggyback"``) or a plain timm
            / transformers classifier already sized for the task (baselines; see
            :func:`prepare_baseline_model`).
        args: the :class:`TrainingArguments`.
        train_dataset / eval_dataset / test_dataset: datasets yielding ``(image_tensor, label)``;
            or pass ``splits=`` instead.
        splits: a :class:`~pb_adapters.training.data.DatasetSplits` (its transforms must be set).
        dataset_name: recorded in the artifact and metrics (default: ``splits.name``).
        accelerator: an existing ``accelerate.Accelerator``; one is created from ``args`` if None.
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
        from accelerate import Accelerator

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
        self.accelerator = accelerator or Accelerator(
            mixed_precision=args.mixed_precision,
            gradient_accumulation_steps=args.gradient_accumulation_steps,
            cpu=args.cpu,
        )
        self.transformers_api = _is_transformers(model)
        if args.train_mode == "piggyback" and not hasattr(model, "parameter_groups"):
            raise TypeError(
                "train_mode='piggyback' needs a PiggybackModel (get_piggyback_model(base, config)); "
                "for a plain backbone use train_mode='finetune' or 'head'"
            )
        if args.train_mode != "piggyback" and hasattr(model, "parameter_groups"):
            raise TypeError(
                f"train_mode={args.train_mode!r} trains a plain backbone, not a PiggybackModel"
            )
        self.output_dir = Path(args.output_dir)
        self._head_names: list[str] = []

    # ---------------------------------------------------------------- optimiser
    def _adapter_config(self) -> Any:
        cfg = getattr(self.model, "peft_config", None)
        active = getattr(self.model, "active_adapter", None)
        if isinstance(cfg, dict) and active in cfg:
            return cfg[active]
        return None

    # parameter group of the model -> the learning-rate field that drives it
    _GROUP_LR_FIELD: dict[str, str] = {
        "masks": "mask_lr",
        "head": "head_lr",
        "norms": "norm_lr",
        "modules": "head_lr",
    }

    def _lr(self, group: str) -> float:
        """Learning rate of a parameter group: the argument, else the adapter config, else 1e-4."""
        field_name = self._GROUP_LR_FIELD.get(group, "head_lr")
        value = getattr(self.args, field_name, None)
        if value is not None:
            return float(value)
        config = self._adapter_config()
        return float(getattr(config, field_name, 1e-4) if config is not None else 1e-4)

    def param_groups(self) -> list[dict[str, Any]]:
        """The optimiser's parameter groups for the current mode (also sets ``requires_grad``)."""
        model, mode = self.model, self.args.train_mode
        groups: list[dict[str, Any]] = []
        if mode == "piggyback":
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
            gen = torch.Generator()
            gen.manual_seed(self.args.seed)
            return DataLoader(
                dataset, batch_size=self.args.batch_size, shuffle=True, generator=gen, **extra
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
        state = {n: p.detach().clone() for n, p in model.named_parameters() if p.requires_grad}
        for n, b in model.named_buffers():
            if b.is_floating_point() or n.endswith("num_batches_tracked"):
                state["buffer:" + n] = b.detach().clone()
        return state

    @staticmethod
    def _restore(model: nn.Module, state: dict[str, torch.Tensor]) -> None:
        params = dict(model.named_parameters())
        buffers = dict(model.named_buffers())
        with torch.no_grad():
            for key, value in state.items():
                target = buffers[key[7:]] if key.startswith("buffer:") else params[key]
                target.copy_(value)

    def _log(self, record: dict[str, Any]) -> None:
        if self.accelerator.is_main_process:
            with open(self.output_dir / self.args.metrics_file, "a", encoding="utf-8") as fh:
                fh.write(json.dumps(record) + "\n")

    def train(self) -> TrainResult:
        """Run the training loop, restore the best epoch, test it, save the artifact."""
        from accelerate.utils import set_seed
        from tqdm.auto import tqdm

        args, acc = self.args, self.accelerator
        set_seed(args.seed)
        if acc.is_main_process:
            self.output_dir.mkdir(parents=True, exist_ok=True)
            (self.output_dir / args.metrics_file).write_text("", encoding="utf-8")
        groups = self.param_groups()
        optimizer = torch.optim.Adam(groups, weight_decay=args.weight_decay)
        train_loader = self._loader(self.train_dataset, train=True)
        val_loader = self._loader(self.eval_dataset, train=False)
        test_loader = self._loader(self.test_dataset, train=False)
        model, optimizer, train_loader = acc.prepare(self.model, optimizer, train_loader)
        val_loader = acc.prepare_data_loader(val_loader) if val_loader is not None else None
        test_loader = acc.prepare_data_loader(test_loader) if test_loader is not None else None
        unwrapped = acc.unwrap_model(model)

        batches = len(train_loader)
        if args.max_steps_per_epoch is not None:
            batches = min(batches, args.max_steps_per_epoch)
        steps_per_epoch = max(1, math.ceil(batches / args.gradient_accumulation_steps))
        total_steps = steps_per_epoch * args.num_epochs
        # The scheduler is stepped by hand once per optimiser step (not prepared: Accelerate would
        # step it once per process).
        scheduler = torch.optim.lr_scheduler.LambdaLR(
            optimizer.optimizer if hasattr(optimizer, "optimizer") else optimizer,
            self._lr_lambda(total_steps, steps_per_epoch),
        )
        acc.print(
            f"training ({args.train_mode}): {args.num_epochs} epoch(s) x {steps_per_epoch} step(s), "
            f"batch {args.batch_size} x {acc.num_processes} process(es) x "
            f"{args.gradient_accumulation_steps} accumulation; lr "
            + ", ".join(f"{g['name']} {g['lr']:g}" for g in groups)
        )
        interactive = sys.stderr.isatty()
        bar = tqdm(
            total=total_steps,
            desc=f"{args.train_mode}",
            disable=args.disable_progress_bar or not acc.is_local_main_process,
            dynamic_ncols=True,
            mininterval=0.2 if interactive else 15.0,
        )
        history: list[dict[str, Any]] = []
        best: tuple[float, float] | None = None
        best_state: dict[str, torch.Tensor] | None = None
        best_epoch, best_val = 0, {}
        ema: float | None = None
        start = time.perf_counter()
        for epoch in range(1, args.num_epochs + 1):
            self._set_train_mode(model)
            epoch_lrs = {
                g.get("name", str(i)): g["lr"] for i, g in enumerate(optimizer.param_groups)
            }
            train_metrics = ClassificationMetrics(ks=(1,))
            optimizer.zero_grad(set_to_none=True)  # no partial accumulation carried over
            epoch_start = time.perf_counter()
            for step, (images, labels) in enumerate(train_loader):
                if step >= batches:
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
                train_metrics.update(logits, labels)
                value = float(loss.detach())
                ema = value if ema is None else 0.9 * ema + 0.1 * value
                if acc.sync_gradients:
                    scheduler.step()
                    bar.update(1)
                    bar.set_postfix(
                        epoch=epoch,
                        loss=f"{ema:.4f}",
                        lr=f"{optimizer.param_groups[0]['lr']:.1e}",
                        refresh=False,
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
            if acc.is_main_process:
                if bar.disable:
                    print(summary, flush=True)
                else:
                    bar.write(summary)
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
            self._log(
                {
                    "split": "test",
                    "best_epoch": best_epoch,
                    **{f"test_{k}": v for k, v in test.items()},
                }
            )
        train_seconds = time.perf_counter() - start
        model.eval()
        self.model = unwrapped
        result = TrainResult(best_epoch, best_val, test, history, train_seconds)
        if args.train_mode == "piggyback" and args.save_artifact:
            result.artifact_dir = self.save_artifact(result)
        if acc.is_main_process:
            payload = {
                "train_mode": args.train_mode,
                "dataset": self.dataset_name,
                **result.to_dict(),
            }
            payload["args"] = args.to_dict()
            (self.output_dir / "results.json").write_text(json.dumps(payload, indent=2) + "\n")
        acc.wait_for_everyone()
        return result

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
        if acc.is_main_process:
            model = acc.unwrap_model(self.model)
            datasets = [self.dataset_name] if self.dataset_name else None
            folder = Path(
                model.save_pretrained(
                    self.output_dir, metrics=self.artifact_metrics(result), datasets=datasets
                )
                or self.output_dir
            )
        acc.wait_for_everyone()
        return folder or self.output_dir


#: Alias: the trainer trains baselines too.
Trainer = PiggybackTrainer
