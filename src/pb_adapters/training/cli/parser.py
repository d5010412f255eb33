"""The training command line's options: the run's own, and those every registered method adds.

Run options (model, data, optimisation, output, checkpoints) are declared here. Method options
are generated from the registry: each method's
:attr:`~pb_adapters.registry.MethodSpec.cli_options` names config fields, which become
``--field-name`` options typed and documented from the config dataclass (one option per field
name, shared by the methods that have it; a field named like a run option, such as ``epochs`` or
``head_lr``, takes that option's value), and its
:attr:`~pb_adapters.registry.MethodSpec.schedule_options` add the options of its own training
schedule. :func:`check_train_options` refuses a method option the chosen method does not have,
and run options that do not apply to it.
"""

from __future__ import annotations

import argparse
import dataclasses
import types
import typing
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from pb_adapters.errors import ConfigError, PbAdaptersError
from pb_adapters.registry import MethodSpec, available_methods, get_method
from pb_adapters.training.cli.options import (
    BASELINE_METHODS,
    DEFAULT_METHOD,
    TrainOptionError,
    adapter_config_from_args,
    method_spec,
    training_arguments_from_args,
)
from pb_adapters.training.data.images import DEFAULT_MAX_IMAGE_PIXELS
from pb_adapters.training.tracking import resolve_report_to
from pb_adapters.utils.console import ArgumentParser, add_debug_option

__all__ = [
    "RUN_CONFIG_NAME",
    "add_train_arguments",
    "build_train_parser",
    "check_train_options",
    "load_config_file",
    "method_options",
    "parse_train_args",
    "save_run_config",
]

#: Written into ``--output-dir``: the resolved options of the run, usable again as ``--config``.
RUN_CONFIG_NAME = "run_config.yaml"
# namespace entries that are not training options (the config path itself, sub-command plumbing)
_NOT_OPTIONS = frozenset({"config", "func", "command", "argv", "help", "train_parser", "debug"})


# ---------------------------------------------------------------------------- run options
def _add_model_options(g: Any) -> None:
    g.add_argument(
        "--model",
        default=None,
        help="timm model name, registered base, or transformers model id/folder "
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
        default=DEFAULT_METHOD,
        help="an adapter method (mask + head over the frozen base), or a baseline: finetune "
        "(all weights) or head (classifier only)",
    )
    g.add_argument(
        "--train-norms", action="store_true", help="also train per-task norm layers (adapters)"
    )
    g.add_argument(
        "--exclude-modules",
        metavar="REGEX",
        help="leave the modules whose full name matches REGEX unmasked (adapters), e.g. "
        "'.*conv_dw' for the depthwise convolutions of timm's EfficientNets",
    )


def _add_data_options(g: Any) -> None:
    g.add_argument(
        "--dataset",
        default=None,
        help="image folder, saved `datasets` folder, `datasets` name, or demo "
        "(default: the demo's MNIST digits)",
    )
    g.add_argument(
        "--image-column",
        default=None,
        help="image column of a `datasets` dataset (default: guessed)",
    )
    g.add_argument(
        "--label-column",
        default=None,
        help="label column of a `datasets` dataset (default: guessed)",
    )
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
        help="smallest area fraction of the training random resized crop "
        "(default: 0.08; demo: 0.6)",
    )
    g.add_argument(
        "--crop-pct",
        type=float,
        default=None,
        help="evaluation center-crop fraction (default: the model's; demo: 1.0)",
    )
    g.add_argument(
        "--hflip",
        action=argparse.BooleanOptionalAction,
        default=None,
        help="random horizontal flips in training (default: on; off for the digit demo)",
    )
    g.add_argument("--strict-data", action="store_true", help="fail on unreadable images")
    g.add_argument(
        "--max-image-pixels",
        type=int,
        default=DEFAULT_MAX_IMAGE_PIXELS,
        help="refuse images larger than this many pixels (width x height), read from their "
        "header before decoding; 0: no bound but PIL's own",
    )
    g.add_argument(
        "--max-train-samples", type=int, default=None, help="train on at most N images (a subset)"
    )
    g.add_argument(
        "--max-eval-samples",
        type=int,
        default=None,
        help="validate and test on at most N images each",
    )
    g.add_argument(
        "--num-workers",
        type=int,
        default=None,
        help="data loader workers per process (default: CPUs - 1, at most 8)",
    )
    _add_streaming_options(g)


def _add_streaming_options(g: Any) -> None:
    g.add_argument(
        "--streaming",
        action="store_true",
        help="read --dataset as a stream (datasets' streaming=True): Hub name, image folder or "
        "data files; needs --steps-per-epoch unless the dataset knows its size",
    )
    g.add_argument(
        "--steps-per-epoch",
        type=int,
        default=None,
        help="optimiser steps per epoch of a streamed dataset (default: its size, if known)",
    )
    g.add_argument(
        "--shuffle-buffer",
        type=int,
        default=1000,
        help="examples in the shuffle buffer of a streamed training split (0: no buffer)",
    )
    g.add_argument(
        "--val-examples",
        type=int,
        default=None,
        help="streaming: hold out the first N training examples for validation "
        "(default: the dataset's validation split, else none)",
    )
    g.add_argument(
        "--test-examples",
        type=int,
        default=None,
        help="streaming: hold out the next N training examples for testing "
        "(default: the dataset's test split, else none)",
    )


def _add_learning_rate_options(g: Any) -> None:
    g.add_argument(
        "--head-lr",
        type=float,
        default=None,
        help="learning rate of the head (default: the method's; baselines: 1e-4; demo: 1e-3)",
    )
    g.add_argument(
        "--backbone-lr",
        type=float,
        default=None,
        help="learning rate of the backbone's weights, --method finetune only (default: 1e-4)",
    )
    g.add_argument(
        "--lr-scheduler",
        choices=("step", "cosine", "constant"),
        default="step",
        help="learning-rate schedule: step (x0.1 at the midpoint), cosine or constant",
    )
    g.add_argument(
        "--max-grad-norm",
        type=float,
        default=None,
        help="clip the gradient norm to this value (default: no clipping)",
    )


def _add_optimisation_options(g: Any) -> None:
    g.add_argument(
        "--epochs", type=int, default=None, help="training epochs (default: 30; demo: 5)"
    )
    g.add_argument(
        "--batch-size", type=int, default=32, help="training images per step and process"
    )
    g.add_argument(
        "--eval-batch-size",
        type=int,
        default=None,
        help="images per evaluation batch (default: the larger of --batch-size and 64)",
    )
    g.add_argument(
        "--grad-accum", type=int, default=1, help="batches accumulated into one optimiser step"
    )
    _add_learning_rate_options(g)
    g.add_argument(
        "--max-steps-per-epoch",
        type=int,
        default=None,
        help="end each epoch after N batches (quick trials)",
    )
    g.add_argument(
        "--mixed-precision",
        choices=("no", "fp16", "bf16", "fp8"),
        default=None,
        help="mixed precision (default: Accelerate's configuration, else no)",
    )
    g.add_argument(
        "--seed",
        type=int,
        default=0,
        help="seed of the data splits, initialisation, shuffling and augmentation",
    )
    g.add_argument(
        "--deterministic",
        action="store_true",
        help="deterministic algorithms only: a resumed CUDA run ends bit-identical (slower on CUDA)",
    )
    g.add_argument("--cpu", action="store_true", help="train on the CPU even if a GPU is present")
    g.add_argument(
        "--no-divergence-check",
        action="store_true",
        help="keep training when the loss becomes non-finite or rises 10,000x above the first "
        "epoch's (by default the run stops without saving an artifact)",
    )


def _add_output_options(g: Any) -> None:
    g.add_argument(
        "--output-dir",
        default=None,
        help="where the artifact, checkpoints and curves go (default: outputs/<model>-<data>, "
        "with -<method> for another method than piggyback; demo: outputs/demo)",
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
        "tensorboard,wandb (default: auto)",
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
        default=None,
        help="store masks entropy-coded (ans, the default) or bit-packed for older readers "
        "(methods whose artifact stores masks)",
    )


def _add_checkpoint_options(g: Any) -> None:
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


def _add_run_options(parser: argparse.ArgumentParser) -> Any:
    """Add every run option; return the (still empty) group for the method options."""
    parser.add_argument(
        "--config",
        default=None,
        metavar="YAML",
        help="read options from a YAML mapping whose keys are option names (mask_lr or "
        "mask-lr); options given on the command line override it",
    )
    _add_model_options(parser.add_argument_group("model"))
    methods = parser.add_argument_group(
        "method options", "options of the adapter methods, each refused with any other --method"
    )
    _add_data_options(parser.add_argument_group("data"))
    _add_optimisation_options(parser.add_argument_group("optimisation"))
    _add_output_options(parser.add_argument_group("output"))
    _add_checkpoint_options(parser.add_argument_group("checkpoints"))
    return methods


def _actions(parser: argparse.ArgumentParser) -> dict[str, argparse.Action]:
    return {
        a.dest: a
        for a in parser._actions  # argparse has no public accessor for its actions
        if a.dest != argparse.SUPPRESS
    }


def _run_option_names() -> set[str]:
    parser = argparse.ArgumentParser(add_help=False)
    _add_run_options(parser)
    return set(_actions(parser))


# ---------------------------------------------------------------------------- method options
@dataclass
class MethodOption:
    """A command-line option that only some methods read.

    Attributes:
        name: the option's ``dest`` (``prune_ratio`` for ``--prune-ratio``).
        kwargs: ``add_argument`` keywords but the help (type, choices or action, nargs...).
        help: what the option does (from the first method that has it).
        owners: the methods that read it, each with its default (``None``: no default to show).
        absent: values that mean "not given" (``None``; ``False`` too for a flag).
    """

    name: str
    kwargs: dict[str, Any]
    help: str
    owners: dict[str, str | None] = field(default_factory=dict)
    absent: tuple[Any, ...] = (None,)

    @property
    def flag(self) -> str:
        """``--prune-ratio``."""
        return "--" + self.name.replace("_", "-")

    def help_text(self) -> str:
        """The help with the methods that read the option and their defaults."""
        owners = ", ".join(m if d is None else f"{m} {d}" for m, d in self.owners.items())
        return f"{self.help} [--method {owners}]"


def _dest(flag: str) -> str:
    """``--resume-packed`` -> ``resume_packed``."""
    return flag.lstrip("-").replace("-", "_")


def _field_kwargs(spec: MethodSpec, name: str) -> dict[str, Any]:
    """``add_argument`` keywords for config field ``name``, from its type annotation."""
    config_class = spec.config_class
    if name not in {f.name for f in dataclasses.fields(config_class)}:
        raise ConfigError(
            f"method {spec.name!r}: cli_options names {name!r}, which "
            f"{config_class.__name__} does not have"
        )
    hint = typing.get_type_hints(config_class)[name]
    if typing.get_origin(hint) in (typing.Union, types.UnionType):
        kept = [a for a in typing.get_args(hint) if a is not type(None)]
        hint = kept[0] if len(kept) == 1 else hint
    if typing.get_origin(hint) is Literal:
        values = typing.get_args(hint)
        return {"type": type(values[0]), "choices": values}
    if hint is bool:
        return {"action": argparse.BooleanOptionalAction}
    if hint in (int, float, str):
        return {"type": hint}
    raise ConfigError(
        f"method {spec.name!r}: the command line cannot take {config_class.__name__}.{name} "
        f"({hint}); leave it out of cli_options"
    )


def _field_default(spec: MethodSpec, name: str) -> str:
    default = next(f.default for f in dataclasses.fields(spec.config_class) if f.name == name)
    return "none" if default is dataclasses.MISSING else str(default)


def _add_field_owner(options: dict[str, MethodOption], spec: MethodSpec, name: str) -> None:
    kwargs = _field_kwargs(spec, name)
    help_text = spec.cli_options[name].replace("%", "%%")
    option = options.setdefault(name, MethodOption(name, kwargs, help_text))
    if option.kwargs != kwargs:
        raise ConfigError(
            f"methods {next(iter(option.owners))!r} and {spec.name!r} both expose "
            f"{option.flag} with different types; one option serves every method with the field"
        )
    option.owners[spec.name] = _field_default(spec, name)


def _add_schedule_owner(options: dict[str, MethodOption], spec: MethodSpec, flag: str) -> None:
    name = _dest(flag)
    kwargs = dict(spec.schedule_options[flag])
    help_text = str(kwargs.pop("help", "")).replace("%", "%%")
    option = options.setdefault(name, MethodOption(name, kwargs, help_text))
    if kwargs.get("action") == "store_true":
        option.absent = (None, False)
    option.owners[spec.name] = None


def method_options(taken: set[str] | None = None) -> dict[str, MethodOption]:
    """Every option some registered method adds (``dest`` -> option), method by method.

    Config fields named like a run option (``taken``: default, every run option) are left out:
    that option serves them.
    """
    taken = _run_option_names() if taken is None else taken
    options: dict[str, MethodOption] = {}
    for method in available_methods():
        spec = get_method(method)
        for name in spec.cli_options:
            if name not in taken:
                _add_field_owner(options, spec, name)
        for flag in spec.schedule_options:
            if _dest(flag) not in taken:
                _add_schedule_owner(options, spec, flag)
    return options


def _note_shared_fields(actions: dict[str, argparse.Action]) -> None:
    """Append to a run option's help the methods whose config field it also sets."""
    shared: dict[str, list[str]] = {}
    for method in available_methods():
        spec = get_method(method)
        for name in spec.cli_options:
            if name in actions:
                shared.setdefault(name, []).append(f"{method} {_field_default(spec, name)}")
    for name, owners in shared.items():
        action = actions[name]
        action.help = f"{action.help or ''} [--method {', '.join(owners)}]".lstrip()


def add_train_arguments(parser: argparse.ArgumentParser) -> argparse.ArgumentParser:
    """Add the training options (run options and every method's) to ``parser`` and return it."""
    group = _add_run_options(parser)
    actions = _actions(parser)
    _note_shared_fields(actions)
    for option in method_options(set(actions)).values():
        kwargs = {"default": None, **option.kwargs, "help": option.help_text()}
        group.add_argument(option.flag, dest=option.name, **kwargs)
    return parser


def build_train_parser(prog: str | None = None) -> argparse.ArgumentParser:
    """A stand-alone parser with every training option (and ``--debug``), whose usage errors are
    one line (:class:`pb_adapters.utils.console.ArgumentParser`)."""
    parser = ArgumentParser(
        prog=prog,
        description="Learn a piggyback mask (or a baseline) for an image classification task.",
    )
    add_debug_option(parser)
    return add_train_arguments(parser)


# ---------------------------------------------------------------------------- checks
def _check_run_options(ns: argparse.Namespace, spec: MethodSpec | None) -> None:
    """Refuse run options that the chosen method would not read."""
    method = ns.method
    if ns.backbone_lr is not None and method != "finetune":
        raise TrainOptionError(f"--backbone-lr applies to --method finetune, not {method}")
    if ns.hub_private and not ns.push_to_hub:
        raise TrainOptionError("--hub-private applies to the repository of --push-to-hub")
    if ns.train_norms and spec is None:
        raise TrainOptionError(f"--train-norms applies to adapter methods, not to {method}")
    if getattr(ns, "exclude_modules", None) and spec is None:
        raise TrainOptionError(f"--exclude-modules applies to adapter methods, not to {method}")
    if ns.mask_encoding is not None and (spec is None or not spec.layer_class.bit_plane_keys):
        what = "saves no adapter artifact" if spec is None else "stores no masks to encode"
        raise TrainOptionError(f"--mask-encoding does not apply to --method {method}: it {what}")
    if getattr(ns, "max_image_pixels", None) is not None and ns.max_image_pixels < 0:
        raise TrainOptionError("--max-image-pixels must be >= 0 (0: no bound but PIL's own)")
    _check_streaming_options(ns, spec)
    if ns.resume and spec is not None and spec.training_schedule is not None:
        raise TrainOptionError(
            f"--resume continues one training run; --method {method} trains in phases of its "
            "own schedule and cannot continue from a step checkpoint"
        )


def _check_streaming_options(ns: argparse.Namespace, spec: MethodSpec | None) -> None:
    """Streaming options only with ``--streaming``, and ``--streaming`` only where it works."""
    streaming = getattr(ns, "streaming", False)
    if not streaming:
        for flag in ("steps_per_epoch", "val_examples", "test_examples"):
            if getattr(ns, flag, None) is not None:
                raise TrainOptionError(f"--{flag.replace('_', '-')} applies to --streaming")
        return
    if ns.dataset is None:
        raise TrainOptionError(
            "--streaming reads --dataset: a Hub name, image folder or data files"
        )
    if spec is not None and spec.training_schedule is not None:
        raise TrainOptionError(f"--method {ns.method} trains in phases; it cannot stream its data")


def check_train_options(ns: argparse.Namespace) -> None:
    """Refuse options the chosen method does not read and options that contradict each other.

    Raises:
        TrainOptionError: the first such option, in one line.
    """
    spec = method_spec(ns)
    for option in method_options().values():
        given = getattr(ns, option.name, None) not in option.absent
        if given and ns.method not in option.owners:
            raise TrainOptionError(
                f"{option.flag} does not apply to --method {ns.method} "
                f"(it is an option of {', '.join(option.owners)})"
            )
    _check_run_options(ns, spec)
    try:
        args = training_arguments_from_args(ns)
        resolve_report_to(args.report_to)
        if spec is not None:
            adapter_config_from_args(ns, {0: "0"})
    except TrainOptionError:
        raise
    except (ValueError, PbAdaptersError) as err:
        raise TrainOptionError(str(err)) from err


# ---------------------------------------------------------------------------- config files
def load_config_file(path: str | Path, parser: argparse.ArgumentParser) -> dict[str, Any]:
    """Read a YAML run configuration: a mapping of option (dest) names to values.

    Keys may use ``-`` or ``_``; string values of typed options (``1e-4`` is a string to YAML)
    go through the option's type; text that is not YAML, unknown keys, values of the wrong type
    and invalid choices raise :class:`TrainOptionError` (a ``ValueError``; in one line, naming
    the file).
    """
    import yaml

    text = Path(path).read_text(encoding="utf-8")
    try:
        data = yaml.safe_load(text) or {}
    except yaml.YAMLError as err:
        raise TrainOptionError(f"{path}: not valid YAML: {_yaml_problem(err)}") from None
    if not isinstance(data, dict):
        raise TrainOptionError(f"{path}: a YAML mapping of option names to values is expected")
    actions = {k: a for k, a in _actions(parser).items() if k not in _NOT_OPTIONS}
    values = {str(k).replace("-", "_"): v for k, v in data.items()}
    unknown = sorted(k for k in values if k not in actions)
    if unknown:
        raise TrainOptionError(
            f"{path}: unknown option(s) {', '.join(unknown)}; valid keys are the option names "
            "of --help (e.g. mask_lr, method)"
        )
    for key, value in values.items():
        values[key] = _config_value(path, key, actions[key], value)
    return values


def _yaml_problem(err: Exception) -> str:
    """``could not find expected ':' (line 3, column 1)``: PyYAML's message is several lines."""
    mark = getattr(err, "problem_mark", None)
    where = f" (line {mark.line + 1}, column {mark.column + 1})" if mark is not None else ""
    return f"{getattr(err, 'problem', None) or type(err).__name__}{where}"


def _config_value(path: str | Path, key: str, action: argparse.Action, value: Any) -> Any:
    """``value`` of option ``key`` from a config file, typed and checked as the command line does."""
    if value is None:
        return None
    nargs = action.nargs
    if nargs in ("+", "*") or (isinstance(nargs, int) and nargs > 1):
        items = value if isinstance(value, list) else [value]
        return [_config_item(path, key, action, item) for item in items]
    return _config_item(path, key, action, value)


def _config_item(path: str | Path, key: str, action: argparse.Action, value: Any) -> Any:
    kind = action.type if callable(action.type) else None
    if isinstance(value, str) and kind is not None:
        try:
            value = kind(value)
        except (TypeError, ValueError):
            raise TrainOptionError(
                f"{path}: {key} must be {getattr(kind, '__name__', 'valid')}, got {value!r}"
            ) from None
    expected = _CONFIG_TYPES.get(kind) if kind is not None else None
    if kind is None and action.nargs == 0:  # a flag: store_true, --x/--no-x
        expected = (bool,)
    if expected is not None and not _is_a(value, expected):
        names = " or ".join(t.__name__ for t in expected)
        raise TrainOptionError(f"{path}: {key} must be {names}, got {value!r}")
    if kind is float:
        value = float(value)
    if action.choices is not None and value not in action.choices:
        raise TrainOptionError(
            f"{path}: {key} must be one of {list(action.choices)}, got {value!r}"
        )
    return value


# The YAML values an option of each type accepts (an int is a valid float; a bool is no number).
_CONFIG_TYPES: dict[Any, tuple[type, ...]] = {int: (int,), float: (float, int)}


def _is_a(value: Any, expected: tuple[type, ...]) -> bool:
    return isinstance(value, expected) and not (isinstance(value, bool) and bool not in expected)


def parse_train_args(
    parser: argparse.ArgumentParser, argv: Sequence[str] | None = None, *, check: bool = True
) -> argparse.Namespace:
    """Parse ``argv`` with ``parser``, reading ``--config`` first when given.

    The command line wins over the file, but only for options actually typed: argparse fills in
    defaults only for names not already in the namespace, so the file's values are pre-loaded
    into it. With ``check``, options the method does not read or that contradict each other
    (:func:`check_train_options`) end the program with status 2 and a one-line message.
    """
    ns = parser.parse_args(argv)
    if getattr(ns, "config", None) is not None:
        try:
            values = load_config_file(ns.config, parser)
        except OSError as err:
            parser.exit(2, f"{parser.prog}: error: --config {ns.config}: {err.strerror or err}\n")
        except ValueError as err:
            parser.exit(2, f"{parser.prog}: error: {err}\n")
        ns = parser.parse_args(argv, namespace=argparse.Namespace(**values))
    if check:
        try:  # refuse inconsistent options now, not after loading data and model
            check_train_options(ns)
        except TrainOptionError as err:
            parser.exit(2, f"{parser.prog}: error: {err}\n")
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
