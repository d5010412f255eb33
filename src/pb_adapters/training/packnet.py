"""The PackNet schedule: tasks trained one after another, each pruned, retrained and packed.

For every task, in order: add the task (its free weights start from the pretrained base), train
them with SGD (momentum, step decay), prune the configured fraction of them per layer by
magnitude, retrain what is left at the lower learning rate, and pack them for good. Each phase is
an ordinary :class:`~pb_adapters.training.trainer.PiggybackTrainer` run (progress bar, per-epoch
validation, best epoch kept, test, metrics, curves, trackers, step checkpoints), in
``<output_dir>/<task>/{train,retrain}``, with the run's
:class:`~pb_adapters.training.trainer.TrainingArguments` and the optimiser settings of the task's
config. The packed network (every task, stored once) is saved to ``output_dir`` at the end, with
each task's test accuracy in its model card, and pushed to the Hub with ``--push-to-hub``.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from torch import nn

from pb_adapters.methods.packnet import PackNetConfig, finalize_task, prune_task
from pb_adapters.model import PiggybackModel
from pb_adapters.training.cli.options import adapter_config_from_args, training_arguments_from_args
from pb_adapters.training.cli.parser import save_run_config
from pb_adapters.training.cli.run import create_backbone, load_splits, run_transforms
from pb_adapters.training.data import DatasetSplits
from pb_adapters.training.trainer import PiggybackTrainer, TrainingArguments, make_accelerator

__all__ = ["PackNetTaskResult", "run_packnet_training", "train_packnet_task"]


#: Pruning ratio of the demo tasks when ``--prune-ratio`` is not given. The official 0.75 is
#: made for VGG/ResNet retrained for 10 epochs; on the compact EfficientNet-Lite0 with the demo's
#: short schedule it collapses every task to chance, while 0.25 keeps the accuracy (measured on
#: the digits, 800 images, 1 + 1 epochs: 76.4% before pruning; 73.2% at 0.25, 33.4% at 0.5,
#: 10.0% at 0.75).
DEMO_PRUNE_RATIO = 0.25


def prune_ratio_for(ns: argparse.Namespace, demo: bool) -> float | None:
    """``--prune-ratio``, else :data:`DEMO_PRUNE_RATIO` for the demo tasks, else ``None`` (the
    config's official 0.75)."""
    if ns.prune_ratio is not None:
        return float(ns.prune_ratio)
    return DEMO_PRUNE_RATIO if demo else None


@dataclasses.dataclass
class PackNetTaskResult:
    """One packed task: its test metrics, pruning and time.

    Attributes:
        name: the adapter name of the task.
        dataset: the data it was trained on.
        test: test metrics of the packed task (``top1``, ``top5``, ``loss``...).
        pruned: mean fraction of its trained weights released for later tasks (0 if unpruned).
        train_seconds: time of both phases (training loops and evaluation).
        validation: validation metrics of the restored epoch of the last phase (what a pruning
            ratio is chosen on; empty without a validation split).
    """

    name: str
    dataset: str | None
    test: dict[str, float]
    pruned: float
    train_seconds: float
    validation: dict[str, float] = dataclasses.field(default_factory=dict)


def _phase_args(base: TrainingArguments, config: PackNetConfig, phase: str) -> TrainingArguments:
    """The trainer's arguments for one phase: SGD with momentum, the config's rates and epochs.

    Everything else comes from ``base`` (the run's arguments): batch sizes, precision, workers,
    trackers and their logging steps, step checkpoints; the training phase keeps its learning
    rate schedule (step decay after ``lr_decay_every`` epochs by default), retraining is
    constant. The packed network is saved (and pushed) once, after the last task.
    """
    training = phase == "train"
    lr = None if training else config.finetune_lr
    return dataclasses.replace(
        base,
        output_dir=str(Path(base.output_dir) / phase),
        optimizer="sgd",
        momentum=config.momentum,
        weight_decay=config.weight_decay,
        # mask_lr overrides the method's own parameter group: PackNet's free weights
        mask_lr=config.weight_lr if training else lr,
        head_lr=config.head_lr if training else lr,
        norm_lr=config.norm_lr if training else lr,
        num_epochs=config.epochs if training else config.finetune_epochs,
        lr_scheduler=base.lr_scheduler if training else "constant",
        decay_epoch=float(config.lr_decay_every),
        save_artifact=False,
        save_epoch_checkpoints=False,
        resume_from_checkpoint=None,
        push_to_hub=None,
    )


def train_packnet_task(
    model: nn.Module,
    name: str,
    config: PackNetConfig,
    splits: DatasetSplits,
    args: TrainingArguments,
    *,
    prune: bool = True,
) -> PackNetTaskResult:
    """Add task ``name`` to ``model`` (a :class:`~pb_adapters.PiggybackModel`) and pack it.

    ``args`` gives everything but the optimiser settings, which come from ``config`` (SGD
    momentum, ``weight_lr``/``head_lr`` for ``epochs``, then ``finetune_lr`` for
    ``finetune_epochs`` after pruning); phase outputs go under ``args.output_dir``. Each phase
    gets its own ``Accelerator`` (built from ``args``), so the data loaders and worker processes
    of a finished phase are released.
    """
    start = time.perf_counter()
    model.add_adapter(name, config)
    model.set_adapter(name)
    trainer = PiggybackTrainer(model, _phase_args(args, config, "train"), splits=splits)
    result = trainer.train()
    pruned = 0.0
    if prune and config.prune_ratio > 0:
        history = prune_task(model, name)
        pruned = sum(history.values()) / max(len(history), 1)
        if config.finetune_epochs > 0:
            trainer = PiggybackTrainer(model, _phase_args(args, config, "retrain"), splits=splits)
            result = trainer.train()
        elif splits.test is not None:
            result.test = trainer.evaluate(splits.test)
    finalize_task(model, name)
    seconds = time.perf_counter() - start
    metrics = {
        "test_accuracy": result.test.get("top1"),
        "test_top5_accuracy": result.test.get("top5"),
    }
    model.record_metrics(name, {k: v for k, v in metrics.items() if v is not None}, [splits.name])
    return PackNetTaskResult(
        name, splits.name, dict(result.test), pruned, seconds, dict(result.validation)
    )


def _task_name(source: str | None, taken: set[str]) -> str:
    stem = Path(str(source or "demo")).name.replace(".", "-").replace("_", "-") or "task"
    stem = "".join(c for c in stem if c.isalnum() or c == "-")[:48] or "task"
    name, number = stem, 2
    while name in taken:
        name, number = f"{stem}-{number}", number + 1
    return name


def _task_config(ns: argparse.Namespace, splits: DatasetSplits, demo: bool) -> PackNetConfig:
    """The task's config: the options, the demo's pruning ratio, retraining for half as long as
    training when only ``--epochs`` is given (the official 20 + 10 epochs' ratio)."""
    config = adapter_config_from_args(ns, splits.id2label, demo=demo)
    overrides: dict[str, Any] = {"prune_ratio": prune_ratio_for(ns, demo)}
    if ns.finetune_epochs is None and (ns.epochs is not None or demo):
        overrides["finetune_epochs"] = max(1, config.epochs // 2)
    return dataclasses.replace(config, **{k: v for k, v in overrides.items() if v is not None})


def _pack_tasks(
    ns: argparse.Namespace,
    model: PiggybackModel,
    sources: list[str | None],
    transforms: tuple[Any, Any],
    args: TrainingArguments,
    demo: bool,
    say: Callable[..., None],
) -> tuple[list[PackNetTaskResult], dict[str, DatasetSplits]]:
    """Train, prune and pack every task of ``sources`` in order."""
    from accelerate.utils import set_seed

    results: list[PackNetTaskResult] = []
    task_splits: dict[str, DatasetSplits] = {}
    for position, source in enumerate(sources):
        splits = load_splits(ns, source)
        splits.set_transforms(*transforms)
        name = _task_name(splits.name or source, set(model.peft_config))
        config = _task_config(ns, splits, demo)
        last = position == len(sources) - 1
        say(f"task {name} ({splits.summary()}): slot {len(model.peft_config) + 1}")
        set_seed(ns.seed)
        result = train_packnet_task(
            model,
            name,
            config,
            splits,
            dataclasses.replace(args, output_dir=str(Path(args.output_dir) / name)),
            prune=not (last and ns.keep_last_unpruned),
        )
        results.append(result)
        task_splits[name] = splits
        say(
            f"task {name}: test top-1 {result.test.get('top1', float('nan')):.2%}, "
            f"{result.pruned:.0%} of its weights released, {result.train_seconds:.0f}s"
        )
    return results, task_splits


def run_packnet_training(
    ns: argparse.Namespace, print_fn: Callable[..., None] | None = None
) -> dict[str, Any]:
    """``--method packnet``: pack the datasets of ``--tasks`` (or ``--dataset``) in order.

    With ``--resume-packed FOLDER`` the tasks are added to a saved packed network. Every task is
    pruned unless ``--keep-last-unpruned`` (the official code's choice, which leaves no room for
    later tasks). Returns the summary also written to ``summary.json``.
    """
    from accelerate.utils import set_seed

    sources = list(ns.tasks or [ns.dataset])
    demo = ns.model is None and all(s is None or str(s).startswith("demo") for s in sources)
    args = training_arguments_from_args(
        ns, demo=demo, output_dir="outputs/demo-packnet" if demo else "outputs/packnet"
    )
    acc = make_accelerator(args)
    say = print_fn or acc.print
    t0 = time.perf_counter()
    set_seed(ns.seed)
    base = create_backbone(ns.model, pretrained=ns.pretrained, library=ns.library, seed=ns.seed)
    transforms = run_transforms(ns, base, demo)
    if ns.resume_packed:
        model = PiggybackModel.from_pretrained(base, ns.resume_packed)
        say(f"resumed the packed network {ns.resume_packed}: tasks {list(model.peft_config)}")
    else:
        model = PiggybackModel(base)
    output_dir = Path(args.output_dir)
    if acc.is_main_process:
        save_run_config(ns, output_dir)
    results, task_splits = _pack_tasks(ns, model, sources, transforms, args, demo, say)
    folder = None
    if acc.is_main_process:
        folder = model.save_pretrained(
            output_dir, results[-1].name, mask_encoding=args.mask_encoding
        )
    summary: dict[str, Any] = {
        "method": "packnet",
        "tasks": [dataclasses.asdict(r) for r in results],
        "all_tasks": list(model.peft_config),
        "train_seconds": round(sum(r.train_seconds for r in results), 1),
        "output_dir": str(output_dir),
    }
    if folder is not None:
        _report_packed(ns, model, folder, results, task_splits, args, acc, summary, say)
    summary["total_seconds"] = round(time.perf_counter() - t0, 1)
    if acc.is_main_process:
        (output_dir / "summary.json").write_text(json.dumps(summary, indent=2) + "\n")
    return summary


def _report_packed(
    ns: argparse.Namespace,
    model: PiggybackModel,
    folder: Path,
    results: list[PackNetTaskResult],
    task_splits: dict[str, DatasetSplits],
    args: TrainingArguments,
    acc: Any,
    summary: dict[str, Any],
    say: Callable[..., None],
) -> None:
    """Size and use of the packed network, the reload check, and the push (main process)."""
    summary["artifact_bytes"] = sum(p.stat().st_size for p in folder.glob("adapter_*"))
    for name, stats in ((n, model.mask_stats(n)) for n in model.peft_config):
        say(f"{name}: uses {1 - stats.total:.1%} of the {stats.num_masked:,} packed weights")
    if not ns.no_reload_check:
        fresh = create_backbone(
            ns.model, pretrained=ns.pretrained, library=ns.library, seed=ns.seed
        )
        reloaded = PiggybackModel.from_pretrained(fresh, folder).to(acc.device)
        checks = {}
        for result in results:
            reloaded.set_adapter(result.name)
            splits = task_splits[result.name]
            evaluator = PiggybackTrainer(reloaded, args, splits=splits, accelerator=acc)
            again = evaluator.evaluate(splits.test)["top1"]
            checks[result.name] = abs(again - result.test.get("top1", -1.0)) < 1e-12
        summary["reload_matches"] = all(checks.values())
        say(
            "reloaded onto a fresh backbone: every task scores the same"
            if summary["reload_matches"]
            else f"reloaded onto a fresh backbone: DIFFERENT for {checks}"
        )
    say(f"packed network: {folder} ({summary['artifact_bytes']:,} bytes)")
    if args.push_to_hub:
        summary["pushed"] = _push_packed(folder, args, [r.name for r in results], say)


def _push_packed(
    folder: Path, args: TrainingArguments, tasks: list[str], say: Callable[..., None]
) -> str:
    """Upload the packed network and its card to ``args.push_to_hub``; return the commit url."""
    from pb_adapters.hub import ARTIFACT_FILES, CARD_FILES, push_folder_to_hub

    url = push_folder_to_hub(
        folder,
        str(args.push_to_hub),
        private=args.hub_private,
        commit_message=f"Upload a PackNet network with tasks {', '.join(tasks)}",
        allow_patterns=[*ARTIFACT_FILES, *CARD_FILES],
    )
    say(f"pushed to https://huggingface.co/{args.push_to_hub} ({url})")
    return str(url)
