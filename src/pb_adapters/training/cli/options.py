"""From command-line options to what a run uses: :class:`TrainingArguments` and the adapter config.

This is the one place that reads the parsed namespace of :mod:`.parser` for settings: the demo's
defaults, the output folder, the trainer's arguments (methods with their own schedule, such as
PackNet, derive their phases from these) and the adapter config, whose options come from the
method's registry entry (:attr:`~pb_adapters.registry.MethodSpec.cli_options`).
"""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

from pb_adapters.config import AdapterConfig
from pb_adapters.demo_base import DEMO_BASE_MODEL_ID
from pb_adapters.errors import PbAdaptersError
from pb_adapters.registry import MethodSpec, get_method
from pb_adapters.training.arguments import TrainingArguments

__all__ = [
    "BASELINE_METHODS",
    "DEFAULT_METHOD",
    "DEMO_DEFAULTS",
    "DEMO_METHOD_DEFAULTS",
    "TrainOptionError",
    "adapter_config_from_args",
    "is_demo",
    "method_spec",
    "pick",
    "training_arguments_from_args",
]

#: ``--method`` values that train a plain backbone instead of an adapter (the trainer's modes).
BASELINE_METHODS: tuple[str, ...] = ("finetune", "head")
#: ``--method`` when none is given; its runs keep the plain default output folder.
DEFAULT_METHOD = "piggyback"

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
#: Per-method demo settings of the adapter config, over :data:`DEMO_DEFAULTS`. Piggyback: with
#: the demo's 550 steps the official mask learning rate 1e-4 barely switches a weight off; 3e-4
#: does, and leaving the depthwise convolutions unmasked keeps the first switches (made while the
#: head is still random) from wrecking the frozen features (chosen on validation; measured in
#: docs/methods/piggyback.md). Other methods keep their config's defaults.
DEMO_METHOD_DEFAULTS: dict[str, dict[str, Any]] = {
    "piggyback": {"mask_lr": 3e-4, "exclude_modules": ".*conv_dw"},
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


class TrainOptionError(PbAdaptersError, ValueError):
    """Training options that contradict each other, or one the chosen method does not read."""


def is_demo(ns: argparse.Namespace) -> bool:
    """Whether ``ns`` runs the built-in demo: neither ``--model`` nor ``--dataset``."""
    return ns.model is None and ns.dataset is None


def pick(ns: argparse.Namespace, name: str, demo: bool) -> Any:
    """Option ``name`` as given, else the demo's or the general default."""
    value = getattr(ns, name, None)
    if value is not None:
        return value
    return (DEMO_DEFAULTS if demo else _GENERAL_DEFAULTS)[name]


def method_spec(ns: argparse.Namespace) -> MethodSpec | None:
    """The registry entry of ``ns.method`` (``None`` for a baseline)."""
    return None if ns.method in BASELINE_METHODS else get_method(ns.method)


def _default_output_dir(ns: argparse.Namespace, demo: bool) -> str:
    output_dir = pick(ns, "output_dir", demo)
    if output_dir is None:
        model_tag = (ns.model or "demo").replace("/", "_").replace(":", "_")
        data_tag = Path(str(ns.dataset)).name if ns.dataset else "mnist-5k"
        output_dir = f"outputs/{model_tag}-{data_tag}"
    if ns.method != DEFAULT_METHOD and ns.output_dir is None:
        output_dir = f"{output_dir}-{ns.method}"
    return output_dir


def training_arguments_from_args(
    ns: argparse.Namespace, *, demo: bool | None = None, output_dir: str | None = None
) -> TrainingArguments:
    """The :class:`TrainingArguments` the options in ``ns`` describe (demo defaults applied).

    Args:
        ns: the parsed options.
        demo: whether the run uses the demo defaults (default: :func:`is_demo`).
        output_dir: the folder when ``--output-dir`` is not given (default: ``outputs/demo``
            for the demo, else ``outputs/<model>-<data>``, with ``-<method>`` appended for any
            method but the default one).

    Raises:
        ValueError: inconsistent options.
    """
    demo = is_demo(ns) if demo is None else demo
    mode = ns.method if ns.method in BASELINE_METHODS else "adapter"
    if ns.output_dir is not None or output_dir is None:
        output_dir = _default_output_dir(ns, demo)
    return TrainingArguments(
        output_dir=output_dir,
        train_mode=mode,
        num_epochs=int(pick(ns, "epochs", demo)),
        batch_size=ns.batch_size,
        eval_batch_size=ns.eval_batch_size,
        gradient_accumulation_steps=ns.grad_accum,
        mask_lr=pick(ns, "mask_lr", demo),  # also the config's, when the method has one
        head_lr=pick(ns, "head_lr", demo),
        norm_lr=getattr(ns, "norm_lr", None),
        backbone_lr=float(pick(ns, "backbone_lr", demo)),
        lr_scheduler=ns.lr_scheduler,
        max_grad_norm=ns.max_grad_norm,
        seed=ns.seed,
        deterministic=ns.deterministic,
        mixed_precision=ns.mixed_precision,
        num_workers=ns.num_workers,
        max_steps_per_epoch=ns.max_steps_per_epoch,
        steps_per_epoch=getattr(ns, "steps_per_epoch", None),
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
        mask_encoding=ns.mask_encoding or TrainingArguments.mask_encoding,
        divergence_check=not getattr(ns, "no_divergence_check", False),
    )


def adapter_config_from_args(
    ns: argparse.Namespace, id2label: dict[int, str], *, demo: bool | None = None
) -> AdapterConfig:
    """The adapter config of ``ns.method`` for a task labelled ``id2label``.

    Every field the method's registry entry exposes on the command line
    (:attr:`~pb_adapters.registry.MethodSpec.cli_options`), and ``exclude_modules``, takes the
    option's value, else the demo's default for it (``head_lr``, ``epochs``, and the method's
    own in :data:`DEMO_METHOD_DEFAULTS`) when ``demo`` (default: :func:`is_demo`), else the
    config's own default.
    """
    spec = get_method(ns.method)
    demo = is_demo(ns) if demo is None else demo
    kwargs: dict[str, Any] = {"id2label": dict(id2label), "train_norms": ns.train_norms}
    demo_values = {**DEMO_DEFAULTS, **DEMO_METHOD_DEFAULTS.get(ns.method, {})} if demo else {}
    for name in (*spec.cli_options, "exclude_modules"):
        value = getattr(ns, name, None)
        if value is None:
            value = demo_values.get(name)
        if value is not None and value != "":  # --exclude-modules '': mask every layer
            kwargs[name] = value
    kwargs["base_model_name_or_path"] = ns.model if ns.model is not None else DEMO_BASE_MODEL_ID
    return spec.config_class(**kwargs)
