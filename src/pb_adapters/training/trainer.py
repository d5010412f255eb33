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

Checkpoints (model, optimiser, schedule and random states as safetensors + JSON, the trainer's
JSON state and the best epoch's trainable state; never a pickle, see
:mod:`pb_adapters.training.checkpoints`) are written to ``<output_dir>/checkpoints/step-XXXXXXXX``
every ``save_steps`` optimiser steps, after every epoch and on ``KeyboardInterrupt``;
``resume_from_checkpoint`` continues a run from one of them, skipping the batches the
interrupted epoch had already used. The checkpoint is checked against the run before anything
is loaded or any output is written; with ``"latest"``, an unusable checkpoint is reported and
the next older one is used.

Before training, the data is checked (a training split with images of at least two classes;
empty validation or test splits count as absent) and so are the learning rates. During training,
a loss that becomes non-finite or explodes stops the run with a
:class:`~pb_adapters.training.errors.DivergenceError` and no artifact (``divergence_check``).
"""

from __future__ import annotations

import json
import math
import os
import shutil
import sys
import time
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import DataLoader, Dataset

from pb_adapters.errors import ConfigError
from pb_adapters.registry import get_method
from pb_adapters.training.arguments import (
    TRAIN_MODES,
    TrainingArguments,
    TrainMode,
    TrainResult,
    check_rate,
)
from pb_adapters.training.checkpoints import (
    CHECKPOINTS_DIR,
    Checkpoint,
    first_usable_checkpoint,
    latest_checkpoint,
    resolve_checkpoint,
    resume_candidates,
    save_checkpoint,
)
from pb_adapters.training.data import (
    DataError,
    DatasetSplits,
    build_dataloader,
    default_eval_batch_size,
)
from pb_adapters.training.data.loaders import EpochSampler, default_num_workers
from pb_adapters.training.data.stream_loader import (
    StreamLoader,
    evaluate_stream,
    stream_batches_per_epoch,
    stream_state_file,
)
from pb_adapters.training.data.streaming import is_streamed
from pb_adapters.training.determinism import deterministic
from pb_adapters.training.errors import CheckpointError, DivergenceError, OutputError
from pb_adapters.training.metrics import ClassificationMetrics
from pb_adapters.training.modeling import (
    forward_logits,
    head_modules,
    prepare_baseline_model,
    set_head_only_train_mode,
    uses_pixel_values,
)
from pb_adapters.training.run_state import (
    RunState,
    restore_trainable_state,
    rng_state,
    set_rng_state,
    trainable_state,
)
from pb_adapters.training.sharding import (
    check_supported,
    full_parameters,
    keep_weights_sharded,
    reshard,
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
    "forward_logits",
    "latest_checkpoint",
    "make_accelerator",
    "prepare_baseline_model",
]


def _tracker_values(record: dict[str, Any]) -> dict[str, float]:
    """A metrics-file record as tracker scalars: ``val_top1`` -> ``val/top1``."""
    values: dict[str, float] = {}
    for key, value in record.items():
        if not isinstance(value, (int, float)) or isinstance(value, bool):
            continue
        split, _, metric = key.partition("_")
        values[f"{split}/{metric}" if metric and split in ("train", "val", "test") else key] = value
    return values


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


class TrainerSetupError(ConfigError, TypeError):
    """The model does not fit the training mode (a plain backbone for ``"adapter"``...)."""


def _has_items(dataset: Any) -> bool:
    return dataset is not None and (not hasattr(dataset, "__len__") or len(dataset) > 0)


def _check_training_data(dataset: Any) -> None:
    """Refuse a training split that is empty or holds a single class (nothing to learn)."""
    if hasattr(dataset, "__len__") and len(dataset) == 0:
        raise DataError("the training split has no images")
    classes = set(getattr(dataset, "labels", None) or ())
    if len(classes) == 1:
        raise DataError(
            f"the training split holds a single class (class {classes.pop()}): a classifier "
            "needs images of at least two"
        )


def _raw_optimizer(optimizer: Any) -> torch.optim.Optimizer:
    """The torch optimiser under Accelerate's wrapper."""
    return optimizer.optimizer if hasattr(optimizer, "optimizer") else optimizer


@dataclass
class _Run:
    """One :meth:`PiggybackTrainer.train` call: its prepared objects and where it stands."""

    model: nn.Module  # as prepared by Accelerate (DDP in several processes)
    unwrapped: nn.Module
    optimizer: Any  # Accelerate's wrapper
    scheduler: Any
    train_loader: DataLoader | StreamLoader
    sampler: EpochSampler | None  # None for a streamed training split
    val_loader: DataLoader | None
    test_loader: DataLoader | None
    groups: list[dict[str, Any]]
    batches: int  # per epoch, after max_steps_per_epoch
    steps_per_epoch: int
    total_steps: int
    state: RunState = field(default_factory=RunState)
    tracking: bool = False
    bar: Any = None
    # the epoch in progress: running training metrics, learning rates at its start, when it
    # began, and the random states right after the last optimiser step (for Ctrl-C)
    train_metrics: ClassificationMetrics = field(
        default_factory=lambda: ClassificationMetrics((1,))
    )
    epoch_lrs: dict[str, float] = field(default_factory=dict)
    epoch_start: float = 0.0
    rng_at_step: dict[str, Any] = field(default_factory=dict)


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
            raise ConfigError("a training dataset (or splits=) is required")
        if args.train_mode == "adapter" and not hasattr(model, "parameter_groups"):
            raise TrainerSetupError(
                "train_mode='adapter' needs a PiggybackModel (get_piggyback_model(base, config)); "
                "for a plain backbone use train_mode='finetune' or 'head'"
            )
        if args.train_mode != "adapter" and hasattr(model, "parameter_groups"):
            raise TrainerSetupError(
                f"train_mode={args.train_mode!r} trains a plain backbone, not a PiggybackModel"
            )
        _check_training_data(train_dataset)
        self.args = args
        self.model = model
        self.train_dataset = train_dataset
        # an empty validation or test split is no split: nothing is reported on zero images
        self.eval_dataset = eval_dataset if _has_items(eval_dataset) else None
        self.test_dataset = test_dataset if _has_items(test_dataset) else None
        self.dataset_name = dataset_name
        self.accelerator = accelerator or make_accelerator(args)
        self.transformers_api = uses_pixel_values(model)
        self.output_dir = Path(args.output_dir)
        self._head_names: list[str] = []
        self._run: _Run | None = None
        self._stream: StreamLoader | None = None  # the training stream of a streamed run

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
                    lr = check_rate(f"the learning rate of {name}", self._lr(name))
                    groups.append({"name": name, "params": params, "lr": lr})
        else:
            heads = head_modules(model)
            self._head_names = [n for n, _ in heads]
            head_ids = {id(p) for _, m in heads for p in m.parameters()}
            head_params = [p for _, m in heads for p in m.parameters()]
            for p in model.parameters():
                p.requires_grad_(mode == "finetune" or id(p) in head_ids)
            if mode == "finetune":
                backbone = [p for p in model.parameters() if id(p) not in head_ids]
                groups.append({"name": "backbone", "params": backbone, "lr": self.args.backbone_lr})
            groups.append({"name": "head", "params": head_params, "lr": self._lr("head")})
            for g in groups:
                check_rate(f"the learning rate of {g['name']}", g["lr"])
        if not groups:
            raise ConfigError("the model has no trainable parameters for this mode")
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

    # ---------------------------------------------------------------- evaluation
    def _set_train_mode(self, model: nn.Module) -> None:
        if self.args.train_mode == "head":
            set_head_only_train_mode(self.accelerator.unwrap_model(model), self._head_names)
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
        model = model if model is not None else self.model
        if is_streamed(loader):  # each process reads its own part of a streamed split
            stream = loader if isinstance(loader, StreamLoader) else self._loader(loader, False)
            return evaluate_stream(stream, model, acc, self._set_train_mode)  # type: ignore[arg-type]
        if not isinstance(loader, DataLoader):
            loader = acc.prepare_data_loader(self._loader(loader, train=False))
        was_training = model.training
        model.eval()
        metrics = ClassificationMetrics(ks=(1, 5))
        transformers_api = uses_pixel_values(model)
        for images, labels in loader:
            with acc.autocast():
                logits = forward_logits(model, images, transformers_api)
            metrics.update(logits, labels, accelerator=acc)
        if was_training:
            self._set_train_mode(model)
        return metrics.compute()

    @staticmethod
    def _snapshot(model: nn.Module) -> dict[str, torch.Tensor]:
        reshard(model)  # FSDP: this process's slices, not the outer unit's gathered weights
        return trainable_state(model)

    @staticmethod
    def _restore(model: nn.Module, state: dict[str, torch.Tensor]) -> None:
        reshard(model)
        restore_trainable_state(model, state)

    def _log(self, record: dict[str, Any]) -> None:
        if self.accelerator.is_main_process:
            with open(self.output_dir / self.args.metrics_file, "a", encoding="utf-8") as fh:
                fh.write(json.dumps(record) + "\n")

    # ---------------------------------------------------------------- checkpoints
    def resolve_checkpoint(self, reference: str | os.PathLike[str]) -> Path:
        """The checkpoint folder ``reference`` names: a path, or ``"latest"`` under ``output_dir``."""
        return resolve_checkpoint(self.output_dir, reference)

    def _save_checkpoint(self, run: _Run, state: RunState) -> Path:
        stream, index = self._stream, self.accelerator.process_index
        return save_checkpoint(
            self.accelerator,
            self.output_dir,
            state,
            args=self.args.to_dict(),
            save_total_limit=self.args.save_total_limit,
            model=run.unwrapped,
            optimizer=_raw_optimizer(run.optimizer),
            scheduler=run.scheduler,
            write_extra=None
            if stream is None
            else lambda folder: stream.save_state(folder, index, state.batches_in_epoch),
        )

    def _checkpoint_state(self, run: _Run, batches: int, *, unfinished: bool) -> RunState:
        """The run's state as a checkpoint records it: ``batches`` of the epoch done, and the
        epoch's running metrics when its record is not in the history yet."""
        partial = {**run.train_metrics.state_dict(), "lrs": run.epoch_lrs} if unfinished else None
        return replace(
            run.state,
            batches_in_epoch=batches,
            accelerate_step=self.accelerator.step,
            partial=partial,
        )

    # ---------------------------------------------------------------- training
    def setup(self) -> None:
        """Prepare the run: optimiser, loaders, schedule, the checkpoint to resume from (checked
        against the run, then loaded) and the output folder.

        :meth:`train` calls it when it has not been called. Nothing under ``output_dir`` is
        written before the checkpoint was checked, so a refused resume leaves every output as
        it was.

        Raises:
            CheckpointError: no usable checkpoint to resume from.
            OutputError: the output folder cannot be written.
        """
        from accelerate.utils import set_seed

        if self._run is not None:
            return
        args = self.args
        check_supported(self.accelerator)
        set_seed(args.seed)
        candidates = (
            resume_candidates(self.output_dir, args.resume_from_checkpoint)
            if args.resume_from_checkpoint
            else []
        )
        run = self._prepare()
        if candidates:
            checkpoint = first_usable_checkpoint(
                self.accelerator,
                candidates,
                model=run.unwrapped,
                optimizer=_raw_optimizer(run.optimizer),
                scheduler=run.scheduler,
                also=self._check_stream_position,
            )
            run.state = checkpoint.apply()
            self._resumed(checkpoint)
        self._init_outputs(run.state)
        self._run = run

    def train(self) -> TrainResult:
        """Run the training loop, restore the best epoch, test it, save the artifact.

        With ``args.resume_from_checkpoint`` the run continues from that checkpoint. On
        ``KeyboardInterrupt`` a checkpoint is saved, then the exception propagates; on
        divergence (:class:`~pb_adapters.training.errors.DivergenceError`) nothing more is
        saved. With ``args.deterministic`` the whole run, set-up included, uses deterministic
        algorithms only (:mod:`pb_adapters.training.determinism`).
        """
        with deterministic(self.args.deterministic):
            return self._train()

    def _train(self) -> TrainResult:
        self.setup()
        run, acc = self._run, self.accelerator
        assert run is not None
        self._start(run)
        start = time.perf_counter()
        run.rng_at_step = rng_state()
        try:
            self._train_epochs(run)
        except BaseException as stop:  # Ctrl-C, divergence, a failed checkpoint save...
            run.bar.close()
            if isinstance(stop, KeyboardInterrupt):
                self._save_interrupted(run)
            if run.tracking:
                acc.end_training()
            raise
        finally:
            self._run = None
        run.bar.close()
        return self._finish(run, start)

    def _check_stream_position(self, checkpoint: Checkpoint) -> None:
        """A streamed run continues where the checkpoint left its stream (each process reads
        its own position, checked against the checkpoint's manifest like its other files; a
        position that does not fit makes the checkpoint unusable)."""
        if self._stream is None:
            return
        name = stream_state_file(checkpoint.folder, self.accelerator.process_index).name
        if not checkpoint.reader.has(name):
            raise CheckpointError(
                f"{checkpoint.folder} holds no stream position for process "
                f"{self.accelerator.process_index} ({name}); it was not written by a streamed "
                "run with this many processes"
            )
        saved = checkpoint.reader.json(name, "stream position")
        try:
            self._stream.restore_state(saved, checkpoint.folder / name)
        except (DataError, ValueError, KeyError, TypeError) as err:
            raise CheckpointError(f"{checkpoint.folder}: {err}") from err

    def _resumed(self, checkpoint: Checkpoint) -> None:
        """Take the loaded checkpoint's counters on, and say where the run stands."""
        state = checkpoint.run_state
        self.accelerator.step = state.accelerate_step
        if state.partial is None:  # the checkpoint was taken after the epoch's validation
            state.epoch, state.batches_in_epoch = state.epoch + 1, 0
        self.accelerator.print(
            f"resumed from {checkpoint.folder} (epoch {state.epoch}, batch "
            f"{state.batches_in_epoch})"
        )

    def _init_outputs(self, state: RunState) -> None:
        """Create the output folder; the metrics file holds exactly ``state``'s history.

        The main process writes; every process learns whether it could, so that all of them
        stop together instead of the others waiting for it at the next collective call.
        """
        acc = self.accelerator
        problem: OSError | None = None
        if acc.is_main_process:
            text = "".join(json.dumps(r) + "\n" for r in state.history)
            try:
                self.output_dir.mkdir(parents=True, exist_ok=True)
                atomic_write_bytes(self.output_dir / self.args.metrics_file, text.encode())
            except OSError as err:
                problem = err
        failed = acc.gather(torch.tensor([int(problem is not None)], device=acc.device))
        if problem is not None:
            raise OutputError(
                f"cannot write to the output folder {self.output_dir}: {problem}"
            ) from problem
        if bool(failed.any()):
            raise OutputError(
                f"the main process cannot write to the output folder {self.output_dir} (its "
                "error says why)"
            )

    def _loader(self, dataset: Dataset | None, train: bool) -> DataLoader | None:
        if dataset is None:
            return None
        args = self.args
        batch_size = args.batch_size
        if not train:
            batch_size = args.eval_batch_size or default_eval_batch_size(args.batch_size)
        if is_streamed(dataset):  # read by this process alone: Accelerate does not shard it
            acc = self.accelerator
            workers = default_num_workers() if args.num_workers is None else args.num_workers
            return StreamLoader(
                dataset, batch_size, train=train, rank=acc.process_index,
                world_size=acc.num_processes, num_workers=workers, device=acc.device,
                keep=args.gradient_accumulation_steps + 1,
            )  # type: ignore[return-value]  # fmt: skip
        return build_dataloader(
            dataset, batch_size, train=train, seed=args.seed, num_workers=args.num_workers
        )

    def _prepare(self) -> _Run:
        """Optimiser, loaders and schedule, prepared by Accelerate."""
        args, acc = self.args, self.accelerator
        groups = self.param_groups()
        if args.optimizer == "sgd":
            optimizer = torch.optim.SGD(
                groups, momentum=args.momentum, weight_decay=args.weight_decay
            )
        else:
            optimizer = torch.optim.Adam(groups, weight_decay=args.weight_decay)
        train_loader = self._loader(self.train_dataset, train=True)
        val_loader = self._loader(self.eval_dataset, train=False)
        test_loader = self._loader(self.test_dataset, train=False)
        # train mode first: eval-cached weights are buffers that DDP would record and broadcast
        self._set_train_mode(self.model)
        if isinstance(train_loader, StreamLoader):  # streamed: a fixed number of batches
            sampler, self._stream = None, train_loader
            model, optimizer = acc.prepare(self.model, optimizer)
            batches = stream_batches_per_epoch(
                train_loader, steps_per_epoch=args.steps_per_epoch,
                accumulation=args.gradient_accumulation_steps, max_batches=args.max_steps_per_epoch,
            )  # fmt: skip
        else:
            if args.steps_per_epoch is not None:
                raise ConfigError("steps_per_epoch applies to a streamed training split")
            # an epoch's order depends only on (seed, epoch): a resumed run shuffles the same way
            sampler = train_loader.sampler
            model, optimizer, train_loader = acc.prepare(self.model, optimizer, train_loader)
            batches = len(train_loader)
            if args.max_steps_per_epoch is not None:
                batches = min(batches, args.max_steps_per_epoch)
        keep_weights_sharded(acc.unwrap_model(model))
        val_loader, test_loader = (
            acc.prepare_data_loader(x) if isinstance(x, DataLoader) else x
            for x in (val_loader, test_loader)
        )
        steps_per_epoch = max(1, math.ceil(batches / args.gradient_accumulation_steps))
        total_steps = steps_per_epoch * args.num_epochs
        # The scheduler is stepped by hand once per optimiser step (not prepared: Accelerate would
        # step it once per process); checkpoints save it beside the optimiser.
        scheduler = torch.optim.lr_scheduler.LambdaLR(
            _raw_optimizer(optimizer), self._lr_lambda(total_steps, steps_per_epoch)
        )
        return _Run(
            model, acc.unwrap_model(model), optimizer, scheduler, train_loader, sampler,
            val_loader, test_loader, groups, batches, steps_per_epoch, total_steps,
        )  # fmt: skip

    def _start(self, run: _Run) -> None:
        """Say what is trained, start the trackers and the progress bar."""
        from tqdm.auto import tqdm

        args, acc = self.args, self.accelerator
        acc.print(
            f"training ({self.run_label}): {args.num_epochs} epoch(s) x {run.steps_per_epoch} "
            f"step(s), batch {args.batch_size} x {acc.num_processes} process(es) x "
            f"{args.gradient_accumulation_steps} accumulation; lr "
            + ", ".join(f"{g['name']} {g['lr']:g}" for g in run.groups)
        )
        run.tracking = bool(acc.log_with)
        if run.tracking:
            from pb_adapters.training.tracking import tracker_config

            acc.init_trackers(self.run_label, config=tracker_config(args.to_dict()))
        run.bar = tqdm(
            total=run.total_steps,
            initial=run.state.global_step,
            desc=self.run_label,
            disable=args.disable_progress_bar or not acc.is_local_main_process,
            dynamic_ncols=True,
            mininterval=0.2 if sys.stderr.isatty() else 15.0,
        )

    def _train_epochs(self, run: _Run) -> None:
        """Every epoch left, from the batch the run stands at."""
        state, first = run.state, run.state.epoch
        for epoch in range(first, self.args.num_epochs + 1):
            skip = state.batches_in_epoch if epoch == first else 0
            state.epoch = epoch
            for images, labels in self._begin_epoch(run, epoch, skip):
                if state.batches_in_epoch >= run.batches:
                    break
                self._train_batch(run, images, labels)
            self._end_epoch(run, epoch)

    def _begin_epoch(self, run: _Run, epoch: int, skip: int) -> Any:
        """Reset the epoch's running metrics (or take the interrupted epoch's), return its
        batches from ``skip`` on."""
        self._set_train_mode(run.model)
        run.epoch_lrs = {
            g.get("name", str(i)): g["lr"] for i, g in enumerate(run.optimizer.param_groups)
        }
        run.train_metrics = ClassificationMetrics(ks=(1,))
        if run.state.partial is not None:  # metrics of the batches seen before the interruption
            run.train_metrics.load_state_dict(run.state.partial)
            run.epoch_lrs = run.state.partial["lrs"]
        run.state.partial = None
        # No partial accumulation carried over from the previous epoch (or from before a
        # resume). The raw optimiser: Accelerate's wrapper only zeroes on a sync step.
        _raw_optimizer(run.optimizer).zero_grad(set_to_none=True)
        run.epoch_start = time.perf_counter()
        acc = self.accelerator
        if isinstance(run.train_loader, StreamLoader):  # the stream goes on where it stands
            loader = run.train_loader.epoch(run.batches, done=skip)
        else:
            run.sampler.use_epoch(epoch - 1)  # type: ignore[union-attr]
            loader = acc.skip_first_batches(run.train_loader, skip) if skip else run.train_loader
        run.state.batches_in_epoch = skip
        run.rng_at_step = rng_state()
        return loader

    def _train_batch(self, run: _Run, images: torch.Tensor, labels: torch.Tensor) -> None:
        """Forward and backward one batch; an optimiser step when the accumulation is full."""
        args, acc, state = self.args, self.accelerator, run.state
        with acc.accumulate(run.model):
            with acc.autocast():
                logits = forward_logits(run.model, images, self.transformers_api)
            loss = F.cross_entropy(logits.float(), labels)
            # gathered: every rank holds (and checkpoints) the totals over all ranks, and takes
            # the same decision on divergence before anything is updated
            seen = (run.train_metrics.loss_sum, run.train_metrics.count)
            run.train_metrics.update(logits, labels, accelerator=acc)
            if args.divergence_check:
                batch = run.train_metrics.loss_sum - seen[0]
                count = max(1, run.train_metrics.count - seen[1])
                self._check_divergence(run, batch / count, logits.shape[-1])
            acc.backward(loss)
            if acc.sync_gradients and args.max_grad_norm:
                acc.clip_grad_norm_(run.model.parameters(), args.max_grad_norm)
            run.optimizer.step()
            run.optimizer.zero_grad(set_to_none=True)
        value = float(loss.detach())
        state.ema = value if state.ema is None else 0.9 * state.ema + 0.1 * value
        state.batches_in_epoch += 1
        if acc.sync_gradients:
            self._after_step(run)

    def _check_divergence(self, run: _Run, batch_loss: float, num_classes: int) -> None:
        """Stop when the batch's mean loss (over all processes) is not finite, or exceeds
        ``divergence_factor`` times the reference: the first epoch's mean (the first batch's
        until that epoch ends), and at least the loss of a uniform guess."""
        state, args = run.state, self.args
        where = f"epoch {state.epoch}, batch {state.batches_in_epoch + 1}"
        advice = (
            "lower the learning rates or clip gradients (--max-grad-norm), or turn the check "
            "off (divergence_check=False, --no-divergence-check); no artifact was saved"
        )
        if not math.isfinite(batch_loss):
            raise DivergenceError(f"the training loss became {batch_loss} at {where}: {advice}")
        if state.loss_reference is None:
            state.loss_reference = batch_loss
            return
        floor = math.log(max(2, num_classes))
        limit = args.divergence_factor * max(state.loss_reference, floor)
        if batch_loss > limit:
            raise DivergenceError(
                f"the training loss exploded to {batch_loss:.4g} at {where}, more than "
                f"{args.divergence_factor:g}x the loss it started from "
                f"({state.loss_reference:.4g}): {advice}"
            )

    def _after_step(self, run: _Run) -> None:
        """Schedule, progress, tracker logging and step checkpoints after an optimiser step."""
        args, acc, state = self.args, self.accelerator, run.state
        run.scheduler.step()
        state.global_step += 1
        lrs = run.optimizer.param_groups
        run.bar.update(1)
        run.bar.set_postfix(
            epoch=state.epoch, loss=f"{state.ema:.4f}", lr=f"{lrs[0]['lr']:.1e}", refresh=False
        )
        run.rng_at_step = rng_state()
        if run.tracking and state.global_step % args.logging_steps == 0:
            logged = {f"lr/{g.get('name', i)}": g["lr"] for i, g in enumerate(lrs)}
            acc.log({"train/loss_ema": state.ema, **logged}, step=state.global_step)
        done = state.batches_in_epoch
        if args.save_steps and state.global_step % args.save_steps == 0 and done < run.batches:
            self._save_checkpoint(run, self._checkpoint_state(run, done, unfinished=True))

    def _end_epoch(self, run: _Run, epoch: int) -> None:
        """Validate, keep the best epoch, record the epoch and checkpoint it."""
        args, acc, state = self.args, self.accelerator, run.state
        train = run.train_metrics.compute()
        if epoch == 1 and run.train_metrics.count:  # the divergence check's reference
            state.loss_reference = train["loss"]
        record: dict[str, Any] = {
            "epoch": epoch,
            "train_loss": train["loss"],
            "train_top1": train["top1"],
            "lr": run.epoch_lrs,  # at the start of the epoch
        }
        line = (
            f"epoch {epoch}/{args.num_epochs}: train loss {train['loss']:.4f} "
            f"top-1 {train['top1']:.2%}"
        )
        if run.val_loader is not None:
            val = self.evaluate(run.val_loader, run.model)
            record.update({f"val_{k}": v for k, v in val.items()})
            improved = state.consider(epoch, val)
            if improved:
                state.best_state = self._snapshot(run.unwrapped)
            line += (
                f" | val loss {val['loss']:.4f} top-1 {val['top1']:.2%} "
                f"top-5 {val['top5']:.2%}" + (" *" if improved else "")
            )
        else:
            state.best_epoch = epoch
        record["epoch_seconds"] = time.perf_counter() - run.epoch_start
        line += f" ({record['epoch_seconds']:.0f}s)"
        state.history.append(record)
        self._log(record)
        if run.tracking:
            acc.log(_tracker_values(record), step=state.global_step)
        if acc.is_main_process and run.bar.disable:
            print(line, flush=True)
        elif acc.is_main_process:
            run.bar.write(line)
        if args.save_epoch_checkpoints:
            self._save_checkpoint(run, self._checkpoint_state(run, run.batches, unfinished=False))

    def _save_interrupted(self, run: _Run) -> None:
        """Checkpoint the state as of the last optimiser step (Ctrl-C).

        Model and optimiser have not changed since, and the random states are rewound to that
        point, so resuming continues the same run.
        """
        state, accumulation = run.state, self.args.gradient_accumulation_steps
        done = state.batches_in_epoch
        committed = done - done % accumulation if done < run.batches else done
        finished = len(state.history) >= state.epoch
        set_rng_state(run.rng_at_step)
        ckpt = self._save_checkpoint(
            run, self._checkpoint_state(run, committed, unfinished=not finished)
        )
        self.accelerator.print(f"interrupted: checkpoint saved to {ckpt}; resume with --resume")

    def _finish(self, run: _Run, start: float) -> TrainResult:
        """Restore the best epoch, test it, write the results, save (and push) the artifact."""
        args, acc, state = self.args, self.accelerator, run.state
        if state.best_state is not None and state.best_epoch != args.num_epochs:
            self._restore(run.unwrapped, state.best_state)
            acc.print(
                f"restored the best epoch ({state.best_epoch}, validation top-1 "
                f"{state.best_val['top1']:.2%})"
            )
        test = self._test(run)
        if run.tracking:
            acc.end_training()
        train_seconds = time.perf_counter() - start  # evaluation included, saving excluded
        run.model.eval()
        self.model = run.unwrapped
        result = TrainResult(state.best_epoch, state.best_val, test, state.history, train_seconds)
        if acc.is_main_process:
            self._write_results(result)
        if args.train_mode == "adapter" and args.save_artifact:
            result.artifact_dir = self.save_artifact(result)
            if args.push_to_hub:
                self.push_artifact(result.artifact_dir)
        acc.wait_for_everyone()
        return result

    def _test(self, run: _Run) -> dict[str, float]:
        """Evaluate the test split once (empty without one) and record it."""
        if run.test_loader is None:
            return {}
        acc = self.accelerator
        test = self.evaluate(run.test_loader, run.model)
        acc.print(
            f"test: loss {test['loss']:.4f} top-1 {test['top1']:.2%} top-5 {test['top5']:.2%} "
            f"({int(test['num_samples'])} images)"
        )
        record = {
            "split": "test",
            "best_epoch": run.state.best_epoch,
            **{f"test_{k}": v for k, v in test.items()},
        }
        self._log(record)
        if run.tracking:
            acc.log(_tracker_values(record), step=run.state.global_step)
        return test

    def _write_results(self, result: TrainResult) -> None:
        """``results.json`` and the training curves (main process)."""
        payload = {
            "train_mode": self.args.train_mode,
            "method": self.run_label,
            "dataset": self.dataset_name,
            **result.to_dict(),
        }
        payload["args"] = self.args.to_dict()
        text = json.dumps(payload, indent=2) + "\n"
        atomic_write_bytes(self.output_dir / "results.json", text.encode())
        if result.history:
            from pb_adapters.training.curves import CURVES_FILE_NAME, plot_training_curves

            title = self.run_label + (f" on {self.dataset_name}" if self.dataset_name else "")
            plot_training_curves(result.history, self.output_dir / CURVES_FILE_NAME, title=title)

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
