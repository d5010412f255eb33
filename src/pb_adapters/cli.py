"""The ``pb-adapters`` command line.

Subcommands:

* ``info REPO_OR_DIR``: what an artifact is (method, base model, labels, size, sparsity).
* ``push DIR REPO_ID``: upload an artifact folder to the Hub (a card is generated if missing).
* ``download REPO_ID``: fetch one task's files from the Hub.
* ``train [OPTIONS]``: learn a mask (or a baseline) for a task; the options of
  ``examples/train.py`` (:mod:`pb_adapters.training.cli`).
* ``evaluate TASK --dataset DATA``: score a task (folder or Hub repo) on a dataset
  (:mod:`pb_adapters.training.evaluation`).

Each subcommand is one ``add_<name>(subparsers)`` function that declares its arguments and sets
``func``; :data:`SUBCOMMANDS` lists them and is the only place to register a new one.

Every error is one line on stderr, ``pb-adapters <command>: error: <message>``; the exit status is
0 on success, 1 when a valid command failed while running (network, disk, an unexpected error), 2
for a usage error (a mistyped option, model or path, a missing repository, a malformed artifact or
config file) and 130 after Ctrl-C (:mod:`pb_adapters.utils.console`). ``--debug`` or
``PB_ADAPTERS_DEBUG=1`` adds the traceback.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable, Sequence
from typing import Any

from ._version import __version__
from .utils.console import (
    EXIT_FAILURE,
    EXIT_OK,
    EXIT_USAGE,
    ArgumentParser,
    add_debug_option,
    run_cli,
)

__all__ = ["SUBCOMMANDS", "build_parser", "main"]

SubParsers = Any  # argparse's _SubParsersAction is private; keep the annotation honest


def _add_hub_args(parser: argparse.ArgumentParser, *, token_help: str) -> None:
    parser.add_argument("--revision", help="branch, tag or commit id (default: main)")
    parser.add_argument("--subfolder", help="folder inside the repository that holds the task")
    parser.add_argument("--token", help=token_help)


# ---------------------------------------------------------------------------- info
def _fmt_int(value: int | None) -> str:
    return "unknown" if value is None else f"{value:,}"


def cmd_info(args: argparse.Namespace) -> int:
    """Print what an artifact is: method, base, labels, size, sparsity, format version."""
    from .card import summarize_adapter
    from .hub import resolve_adapter_folder
    from .serialization import ARTIFACT_WEIGHTS_NAME, read_adapter_config
    from .utils.files import folder_lock

    folder = resolve_adapter_folder(
        args.reference, revision=args.revision, subfolder=args.subfolder, token=args.token
    )
    with folder_lock(folder, shared=True):  # the config and weights of one save
        summary = summarize_adapter(read_adapter_config(folder), folder / ARTIFACT_WEIGHTS_NAME)
    bits = summary.bits_per_masked_weight
    entropy = summary.entropy_bits_per_masked_weight
    labels = summary.labels
    shown = ", ".join(labels[:10]) + (
        f", ... ({len(labels) - 10} more)" if len(labels) > 10 else ""
    )
    rows = [
        ("artifact", str(folder)),
        ("format version", str(summary.format_version)),
        ("method", summary.method),
        ("base model", summary.base_name or "unknown"),
        ("base revision", summary.base_revision or "unknown"),
        ("base library", summary.base_library or "unknown"),
        ("base architecture", summary.base_architecture or "unknown"),
        ("base fingerprint", summary.base_fingerprint or "unknown"),
        ("labels", f"{summary.num_labels or len(labels)}" + (f": {shown}" if shown else "")),
        ("masked layers", _fmt_int(summary.num_masked_modules)),
        ("masked weights", _fmt_int(summary.masked_weights)),
        ("mask bytes", _fmt_int(summary.mask_bytes)),
        ("bits per masked weight", "unknown" if bits is None else f"{bits:.3f}"),
        (
            "mask entropy (order 0)",
            "unknown" if entropy is None else f"{entropy:.3f} bits per masked weight",
        ),
        ("weights file bytes", _fmt_int(summary.weights_file_bytes)),
        (
            "sparsity",
            "unknown" if summary.sparsity is None else f"{100 * summary.sparsity:.2f}%",
        ),
    ]
    for key, value in summary.metrics.items():
        rows.append((f"metric {key}", str(value)))
    width = max(len(key) for key, _ in rows)
    for key, value in rows:
        print(f"{key:<{width}}  {value}")
    return EXIT_OK


def add_info(subparsers: SubParsers) -> None:
    """Register ``info``."""
    parser = subparsers.add_parser(
        "info",
        help="describe an adapter artifact (local folder or Hub repo)",
        description="Describe an adapter artifact: a local folder or a Hub repo id.",
    )
    parser.add_argument("reference", metavar="REPO_OR_DIR", help="artifact folder or Hub repo id")
    _add_hub_args(parser, token_help="Hub token (default: HF_TOKEN or the saved login)")
    parser.set_defaults(func=cmd_info)


# ---------------------------------------------------------------------------- push
def cmd_push(args: argparse.Namespace) -> int:
    """Upload an artifact folder; print the commit (and pull request) url."""
    from .hub import push_folder_to_hub

    info = push_folder_to_hub(
        args.folder,
        args.repo_id,
        private=True if args.private else None,
        token=args.token,
        revision=args.revision,
        commit_message=args.commit_message,
        create_pr=args.create_pr,
        subfolder=args.subfolder,
    )
    pr_url = getattr(info, "pr_url", None)
    print(pr_url if pr_url else str(info))
    return EXIT_OK


def add_push(subparsers: SubParsers) -> None:
    """Register ``push``."""
    parser = subparsers.add_parser(
        "push",
        help="upload an artifact folder to the Hub",
        description=(
            "Upload an artifact folder to a Hub repository (created if needed). Several tasks can "
            "share a repository under different --subfolder names."
        ),
    )
    parser.add_argument("folder", metavar="DIR", help="artifact folder written by save_pretrained")
    parser.add_argument("repo_id", metavar="REPO_ID", help="target repository, e.g. user/cars-mask")
    _add_hub_args(parser, token_help="Hub token with write access (default: HF_TOKEN or login)")
    parser.add_argument(
        "--private", action="store_true", help="create the repository as private (if new)"
    )
    parser.add_argument("--commit-message", help="commit message")
    parser.add_argument(
        "--create-pr", action="store_true", help="open a pull request instead of committing"
    )
    parser.set_defaults(func=cmd_push)


# ---------------------------------------------------------------------------- download
def cmd_download(args: argparse.Namespace) -> int:
    """Download one task's files; print the folder they are in."""
    from .hub import download_adapter

    folder = download_adapter(
        args.repo_id,
        revision=args.revision,
        subfolder=args.subfolder,
        local_dir=args.local_dir,
        token=args.token,
    )
    print(folder)
    return EXIT_OK


def add_download(subparsers: SubParsers) -> None:
    """Register ``download``."""
    parser = subparsers.add_parser(
        "download",
        help="download a task from the Hub",
        description="Download one task (artifact and card files) from a Hub repository.",
    )
    parser.add_argument("repo_id", metavar="REPO_ID", help="Hub repository, e.g. user/cars-mask")
    _add_hub_args(parser, token_help="Hub token (default: HF_TOKEN or the saved login)")
    parser.add_argument(
        "--local-dir", help="write the files here instead of only into the Hub cache"
    )
    parser.set_defaults(func=cmd_download)


# ---------------------------------------------------------------------------- train
def cmd_train(args: argparse.Namespace) -> int:
    """Train as ``examples/train.py`` does; 1 if the reloaded artifact scores differently."""
    from .training.cli import parse_train_args, run_training

    if args.config is not None:
        # the command line must override the file only for options actually typed: re-parse the
        # sub-command's own tokens with the file's values pre-loaded
        argv = list(args.argv)
        args = parse_train_args(args.train_parser, argv[argv.index("train") + 1 :], check=False)
    # run_training refuses options the method does not read: a one-line error, status 2
    summary = run_training(args)
    return EXIT_OK if summary.get("reload_matches", True) else EXIT_FAILURE


def add_train(subparsers: SubParsers) -> None:
    """Register ``train``."""
    from .training.cli import add_train_arguments

    parser = subparsers.add_parser(
        "train",
        help="learn a piggyback mask (or a baseline) for an image classification task",
        description=(
            "Learn a piggyback mask (or a fine-tuning / head-only baseline) for an image "
            "classification task; without --model and --dataset, the offline demo. Same options "
            "as examples/train.py."
        ),
    )
    add_train_arguments(parser)
    parser.set_defaults(func=cmd_train, train_parser=parser)


# ---------------------------------------------------------------------------- evaluate
def cmd_evaluate(args: argparse.Namespace) -> int:
    """Score a task on a dataset; print the scores, optionally save them and update the card."""
    from .hub import resolve_adapter_folder
    from .training.cli.inputs import check_dataset_source, check_model_name
    from .training.evaluation import evaluate_adapter, write_evaluation

    check_model_name(args.base, option="--base")  # before the data loads
    check_dataset_source(args.dataset)
    hub = {"revision": args.revision, "subfolder": args.subfolder, "token": args.token}
    data = {
        key: getattr(args, key)
        for key in ("image_column", "label_column", "val_fraction", "test_fraction", "seed")
    }
    result = evaluate_adapter(
        args.task,
        args.dataset,
        split=args.split,
        base_model=args.base,
        top_k=args.top_k,
        batch_size=args.batch_size,
        image_size=args.image_size,
        crop_pct=args.crop_pct,
        max_samples=args.max_samples,
        num_workers=args.num_workers,
        device=args.device,
        data_options=data,
        hub_options=hub,
    )
    print(f"{result.dataset} ({result.split}): {result.num_samples:,} images")
    for key, value in result.metrics().items():
        print(f"  {key:<16} {value:.4f}")
    width = max(len("class"), *(len(label) for label in result.labels))
    print(f"  {'class':<{width}}  {'f1':>6}  {'support':>7}")
    for label, f1, support in zip(result.labels, result.f1, result.support, strict=True):
        print(f"  {label:<{width}}  {'-' if f1 is None else f'{f1:.4f}':>6}  {support:>7,}")
    if args.output_dir is not None:
        print(f"results and confusion matrix: {result.save(args.output_dir)}")
    if args.write_card:
        folder = resolve_adapter_folder(args.task, subfolder=args.subfolder)
        print(f"card updated: {write_evaluation(folder, result)}")
    return EXIT_OK


def add_evaluate(subparsers: SubParsers) -> None:
    """Register ``evaluate``."""
    from .training.evaluation import SPLITS

    parser = subparsers.add_parser(
        "evaluate",
        help="score a task on a dataset (accuracy, top-k, per-class F1, confusion matrix)",
        description=(
            "Score a task (a local artifact folder or a Hub repo id) on one split of a dataset "
            "with the evaluate metric modules shipped in pb-adapters (offline): accuracy, top-k "
            "accuracy, per-class F1 and a confusion matrix."
        ),
    )
    parser.add_argument("task", metavar="TASK", help="artifact folder or Hub repo id")
    parser.add_argument(
        "--dataset",
        required=True,
        help="image folder, datasets name or saved folder, or 'demo' (as for train)",
    )
    parser.add_argument(
        "--split", choices=SPLITS, default="test", help="split to score (default: test)"
    )
    parser.add_argument(
        "--base", help="base model to load the task onto (default: the one the task records)"
    )
    _add_hub_args(parser, token_help="Hub token (default: HF_TOKEN or the saved login)")
    parser.add_argument(
        "--image-column", help="image column of a datasets source (default: guessed)"
    )
    parser.add_argument(
        "--label-column", help="label column of a datasets source (default: guessed)"
    )
    parser.add_argument(
        "--val-fraction",
        type=float,
        default=0.1,
        help="share of train carved out as validation when the data has none (default: 0.1, as train)",
    )
    parser.add_argument(
        "--test-fraction",
        type=float,
        default=0.2,
        help="share of train carved out as test when the data has none (default: 0.2, as train)",
    )
    parser.add_argument(
        "--seed", type=int, default=0, help="seed of those carved splits (default: 0, as train)"
    )
    parser.add_argument("--top-k", type=int, default=5, help="k of top-k accuracy (default: 5)")
    parser.add_argument("--batch-size", type=int, default=64, help="images per batch (default: 64)")
    parser.add_argument(
        "--image-size", type=int, help="input size (default: the model's data config)"
    )
    parser.add_argument(
        "--crop-pct", type=float, help="center-crop fraction (default: the model's data config)"
    )
    parser.add_argument(
        "--max-samples", type=int, help="score only the first N images of the split"
    )
    parser.add_argument(
        "--num-workers", type=int, help="data loader workers (default: as for train)"
    )
    parser.add_argument("--device", help="cpu, cuda, cuda:1... (default: cuda when available)")
    parser.add_argument(
        "--output-dir", help="write evaluation.json and confusion_matrix.png into this folder"
    )
    parser.add_argument(
        "--write-card",
        action="store_true",
        help="record the results in the task folder's metrics, model card and model-index",
    )
    parser.set_defaults(func=cmd_evaluate)


# ---------------------------------------------------------------------------- entry point
SUBCOMMANDS: list[Callable[[SubParsers], None]] = [
    add_info,
    add_push,
    add_download,
    add_train,
    add_evaluate,
]
"""Registration functions, one per subcommand, in the order ``--help`` lists them."""


def build_parser() -> argparse.ArgumentParser:
    """The argument parser with every registered subcommand."""
    parser = ArgumentParser(
        prog="pb-adapters",
        description="Piggyback task adapters for timm and transformers vision models.",
        epilog="Exit status: 0 success, 1 a valid command failed while running, 2 a usage error.",
    )
    parser.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    add_debug_option(parser)
    subparsers = parser.add_subparsers(dest="command", metavar="COMMAND")
    subparsers.required = True
    for register in SUBCOMMANDS:
        register(subparsers)
    for subparser in subparsers.choices.values():  # the same one-line errors and --debug
        add_debug_option(subparser)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Run the command line; return the exit status (0 ok, 1 failed while running, 2 usage error,
    130 interrupted), every error as one line (:func:`pb_adapters.utils.console.run_cli`)."""
    parser = build_parser()
    argv = list(sys.argv[1:] if argv is None else argv)
    try:
        args = parser.parse_args(argv)
    except SystemExit as exit_:  # --help, --version, or a usage error already printed
        return exit_.code if isinstance(exit_.code, int) else EXIT_USAGE
    args.argv = argv  # the raw tokens, for sub-commands that re-parse (train --config)
    return run_cli(args.func, args, f"pb-adapters {args.command}")


if __name__ == "__main__":
    sys.exit(main())
