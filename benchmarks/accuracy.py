"""Accuracy of every method on the real backbone and real data, over several seeds.

Each method (every registered adapter method, plus the full fine-tuning and head-only
baselines) trains the offline ImageNet EfficientNet-Lite0 with the same budget (epochs, images,
batch size, input size) on two tasks: the demo digits, and a harder variant built from them in
which every digit is rotated by a random angle in [-90, 90] degrees (so 6 and 9, 2 and 5 start
to look alike). Each (task, method) pair runs with several seeds; the seed sets the data split,
the head's initialisation, the shuffling and the augmentation. Runs go through the same entry
point as ``examples/train.py`` (:func:`pb_adapters.training.cli_args.run_training`).

python -m benchmarks.accuracy [--quick]
"""

from __future__ import annotations

import argparse
import contextlib
import io
import math
import statistics
import tempfile
from pathlib import Path
from typing import Any

import numpy as np

from benchmarks.common import write_result

RESULT_NAME = "accuracy-cpu"
ROTATED_MAX_DEGREES = 90.0
#: PackNet's pruning ratio here: the official default, on every task alike (the demo command
#: prunes less by default; see docs/methods/packnet.md).
PACKNET_PRUNE_RATIO = 0.75
#: Training budget per run: (epochs, training images); quick mode trades accuracy for minutes.
BUDGETS: dict[bool, dict[str, int | None]] = {
    False: {"epochs": 2, "max_train": 800, "max_eval": 500},
    True: {"epochs": 2, "max_train": 300, "max_eval": 200},
}


def write_rotated_digits(root: Path, seed: int = 0) -> Path:
    """Write the demo digits, each rotated by a seeded random angle, as an image folder."""
    from PIL import Image

    from pb_adapters.training.demo import read_demo_mnist

    images, labels = read_demo_mnist()
    rng = np.random.default_rng(seed)
    angles = rng.uniform(-ROTATED_MAX_DEGREES, ROTATED_MAX_DEGREES, size=len(labels))
    for index, (pixels, label, angle) in enumerate(zip(images, labels, angles, strict=True)):
        folder = root / str(int(label))
        folder.mkdir(parents=True, exist_ok=True)
        image = Image.fromarray(np.asarray(pixels, dtype=np.uint8).reshape(28, 28))
        image.rotate(float(angle), resample=Image.BILINEAR).save(folder / f"{index:05d}.png")
    return root


def methods() -> list[str]:
    """Every registered adapter method, then the two baselines."""
    from pb_adapters.methods import available_methods

    return [*available_methods(), "finetune", "head"]


def train_once(
    method: str, dataset: str | None, seed: int, budget: dict[str, Any], out: Path
) -> dict[str, Any]:
    """One run through the command-line entry point; returns its summary."""
    from pb_adapters.training.cli_args import build_train_parser, parse_train_args, run_training

    epochs = int(budget["epochs"])
    if method == "packnet":  # the same epochs in all: train, prune, then retrain
        train_epochs = max(1, math.ceil(epochs / 2))
        epoch_args = [
            "--epochs",
            str(train_epochs),
            "--finetune-epochs",
            str(epochs - train_epochs),
            "--prune-ratio",
            str(PACKNET_PRUNE_RATIO),
        ]
    else:
        epoch_args = ["--epochs", str(epochs)]
    argv = [
        "--method", method, "--seed", str(seed), *epoch_args,
        "--max-train-samples", str(budget["max_train"]), "--output-dir", str(out),
        "--image-size", "64", "--no-hflip", "--crop-scale", "0.6", "--crop-pct", "1.0",
        "--head-lr", "1e-3", "--report-to", "none", "--no-progress", "--no-epoch-checkpoints",
        "--no-reload-check",
    ]  # fmt: skip
    if dataset is not None:
        argv += ["--dataset", dataset]
    if budget.get("max_eval"):
        argv += ["--max-eval-samples", str(budget["max_eval"])]
    ns = parse_train_args(build_train_parser(), argv)
    with contextlib.redirect_stdout(io.StringIO()):
        summary = run_training(ns, print_fn=lambda *a, **k: None)
    if "test_accuracy" not in summary and summary.get("tasks"):  # a packed network of one task
        task = summary["tasks"][-1]
        summary["test_accuracy"] = task["test"]["top1"]
        summary["pruned_fraction"] = task["pruned"]
    return summary


def _spread(values: list[float]) -> dict[str, float]:
    return {
        "mean": statistics.fmean(values),
        "std": statistics.stdev(values) if len(values) > 1 else 0.0,
        "min": min(values),
        "max": max(values),
    }


def run(quick: bool = False, seeds: int = 3) -> dict[str, Any]:
    """Train every method on both tasks with ``seeds`` seeds; write the result file."""
    from pb_adapters.mask_coding import binary_entropy

    budget = BUDGETS[quick]
    rows: list[dict[str, Any]] = []
    with tempfile.TemporaryDirectory(prefix="pb-bench-acc-") as tmp:
        rotated = write_rotated_digits(Path(tmp) / "rotated-digits")
        tasks = {"mnist-5k": None, "rotated-digits": str(rotated)}
        for task, dataset in tasks.items():
            for method in methods():
                runs = []
                for seed in range(seeds):
                    summary = train_once(
                        method,
                        dataset,
                        seed,
                        budget,
                        Path(tmp) / "runs" / f"{task}-{method}-{seed}",
                    )
                    runs.append(summary)
                    print(
                        f"{task:>15} {method:>10} seed {seed}: test top-1 "
                        f"{summary['test_accuracy']:.2%} ({summary['train_seconds']:.0f}s)",
                        flush=True,
                    )
                row: dict[str, Any] = {
                    "task": task,
                    "method": method,
                    "seeds": seeds,
                    "test_accuracy": _spread([r["test_accuracy"] for r in runs]),
                    "train_seconds": _spread([r["train_seconds"] for r in runs]),
                    "runs": runs,
                }
                zeros = [r["mask_zeros_fraction"] for r in runs if "mask_zeros_fraction" in r]
                if zeros:
                    row["mask_zeros_fraction"] = _spread(zeros)
                    row["mask_entropy_bits"] = _spread([binary_entropy(z) for z in zeros])
                rows.append(row)
    payload = {
        "model": "tf_efficientnet_lite0 (offline ImageNet weights)",
        "budget": {**budget, "batch_size": 32, "image_size": 64},
        "quick": quick,
        "rows": rows,
    }
    write_result(RESULT_NAME, payload)
    return payload


def main(argv: list[str] | None = None) -> int:
    """Command line: ``python -m benchmarks.accuracy [--quick] [--seeds N]``."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="a smaller budget, for minutes")
    parser.add_argument("--seeds", type=int, default=3)
    args = parser.parse_args(argv)
    run(quick=args.quick, seeds=args.seeds)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
