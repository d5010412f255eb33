"""Accuracy against bytes stored per task, for every method, on the real backbone and data.

Every adapter method, the full fine-tuning and head-only baselines and PEFT's LoRA (ranks 1, 4
and 8) train the offline ImageNet EfficientNet-Lite0 with the same budget (epochs, images, batch
size, input size, Adam with a x0.1 step at the midpoint, best epoch on validation) on two tasks:
the demo digits, and a harder variant in which every digit is rotated by a random angle in
[-90, 90] degrees (so 6 and 9, 2 and 5 start to look alike). Each (task, method) pair runs with
several seeds; the seed sets the data split, the head's initialisation, the shuffling and the
augmentation. The project's methods run through the entry point of ``examples/train.py``
(:func:`pb_adapters.training.cli_args.run_training`); LoRA runs through PEFT
(:mod:`benchmarks.lora`), which this benchmark needs: ``pip install "pb-adapters[benchmarks]"``.

Each row reports test accuracy (mean ± sd), the bytes one task stores (the safetensors file of
its weights: masks and head, the LoRA adapter and head, the whole model for fine-tuning), those
bytes as bits per backbone weight, the fraction of mask entries switched off, and the median
training step time as a ratio to piggyback's.

python -m benchmarks.accuracy [--quick] [--seeds N]
"""

from __future__ import annotations

import argparse
import contextlib
import io
import statistics
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from benchmarks.common import write_result

RESULT_NAME = "accuracy-cpu"
ROTATED_MAX_DEGREES = 90.0
#: PackNet's pruning ratio per task, chosen on validation (``python -m benchmarks.recipes``):
#: the official 0.75 collapses the compact backbone at this budget.
PACKNET_PRUNE_RATIO: dict[str, float] = {"mnist-5k": 0.25, "rotated-digits": 0.25}
#: Training budget per run; quick mode is a smoke test of minutes.
BUDGETS: dict[bool, dict[str, int]] = {
    False: {"epochs": 3, "max_train": 640, "max_eval": 400, "image_size": 48},
    True: {"epochs": 1, "max_train": 64, "max_eval": 64, "image_size": 32},
}
BATCH_SIZE = 32
#: The demo's own budget (``python examples/train.py``): every digit, 64 px, 5 epochs, seed 0.
DEMO_BUDGET: dict[str, int] = {"epochs": 5, "max_train": 3500, "max_eval": 1000, "image_size": 64}


@dataclass(frozen=True)
class Variant:
    """One row of the table: a method (or baseline, or ``lora``) and its options."""

    name: str
    method: str
    args: tuple[str, ...] = ()
    rank: int = 0

    def argv(self, task: str) -> list[str]:
        """The method options of this variant on ``task``."""
        if self.method == "packnet":
            return ["--prune-ratio", str(PACKNET_PRUNE_RATIO.get(task, 0.25)), *self.args]
        return list(self.args)


#: Options of each adapter method's row, chosen on validation (``python -m benchmarks.recipes``).
#: Piggyback: a 3x larger mask learning rate than the official 1e-4, and the depthwise
#: convolutions left unmasked (as LoRA leaves them); KSM: a 10x larger one.
RECIPES: dict[str, tuple[str, ...]] = {
    "piggyback": ("--mask-lr", "3e-4", "--exclude-modules", ".*conv_dw"),
    "ksm": ("--mask-lr", "1e-3"),
}
#: Piggyback as the official code trains it, for comparison with the recipe.
OFFICIAL_PIGGYBACK = ("--mask-lr", "1e-4")


def variants() -> list[Variant]:
    """The rows: every registered adapter method, the baselines, LoRA at ranks 1, 4, 8."""
    from pb_adapters.methods import available_methods

    rows = [Variant(m, m, RECIPES.get(m, ())) for m in available_methods()]
    rows.insert(
        [r.name for r in rows].index("piggyback") + 1,
        Variant("piggyback (official lr)", "piggyback", OFFICIAL_PIGGYBACK),
    )
    rows += [Variant("finetune", "finetune"), Variant("head", "head")]
    rows += [Variant(f"lora r={r}", "lora", rank=r) for r in (1, 4, 8)]
    return rows


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


def run_argv(
    method: str, dataset: str | None, seed: int, budget: dict[str, Any], out: Path
) -> list[str]:
    """Command-line options of one run: the method, the budget, the demo's transforms."""
    epochs = int(budget["epochs"])
    argv = [
        "--method", method, "--seed", str(seed), "--epochs", str(epochs),
        "--max-train-samples", str(budget["max_train"]), "--output-dir", str(out),
        "--image-size", str(budget["image_size"]), "--no-hflip", "--crop-scale", "0.6",
        "--crop-pct", "1.0", "--head-lr", "1e-3", "--batch-size", str(BATCH_SIZE),
        "--report-to", "none", "--no-progress", "--no-epoch-checkpoints", "--no-reload-check",
    ]  # fmt: skip
    if method == "packnet":  # the same epochs in all: train, prune, then retrain
        argv += ["--finetune-epochs", str(max(1, epochs // 2))]
        argv[argv.index("--epochs") + 1] = str(max(1, epochs - epochs // 2))
    if dataset is not None:
        argv += ["--dataset", dataset]
    if budget.get("max_eval"):
        argv += ["--max-eval-samples", str(budget["max_eval"])]
    return argv


def train_once(
    variant: Variant, task: str, dataset: str | None, seed: int, budget: dict[str, Any], out: Path
) -> dict[str, Any]:
    """One run of ``variant``; returns its summary with ``weights_bytes`` (stored per task)."""
    if variant.method == "lora":
        return train_lora(variant.rank, dataset, seed, budget, out)
    from pb_adapters.training.cli_args import build_train_parser, parse_train_args, run_training

    argv = [*run_argv(variant.method, dataset, seed, budget, out), *variant.argv(task)]
    ns = parse_train_args(build_train_parser(), argv)
    with contextlib.redirect_stdout(io.StringIO()):
        summary = run_training(ns, print_fn=lambda *a, **k: None)
    if "test_accuracy" not in summary and summary.get("tasks"):  # a packed network of one task
        task_result = summary["tasks"][-1]
        summary["test_accuracy"] = task_result["test"]["top1"]
        summary["validation_accuracy"] = task_result.get("validation", {}).get("top1")
        summary["pruned_fraction"] = task_result["pruned"]
        summary["train_seconds"] = task_result["train_seconds"]
    files = summary.get("artifact_files") or {}
    if "adapter_model.safetensors" in files:
        summary["weights_bytes"] = files["adapter_model.safetensors"]
    elif variant.method == "packnet":
        summary["weights_bytes"] = _packed_weights_bytes(out)
    return summary


def _packed_weights_bytes(out: Path) -> int | None:
    found = sorted(out.rglob("adapter_model.safetensors"))
    return found[0].stat().st_size if found else None


def train_lora(
    rank: int, dataset: str | None, seed: int, budget: dict[str, Any], out: Path
) -> dict[str, Any]:
    """One LoRA run on the same backbone, splits, transforms and schedule as the others."""
    from accelerate.utils import set_seed
    from torch.utils.data import DataLoader

    from benchmarks import lora
    from pb_adapters.training.cli_args import (
        build_train_parser,
        create_backbone,
        load_splits,
        parse_train_args,
        run_transforms,
    )
    from pb_adapters.training.modeling import head_modules, prepare_baseline_model

    lora.require_peft()
    ns = parse_train_args(build_train_parser(), run_argv("head", dataset, seed, budget, out))
    set_seed(seed)
    splits = load_splits(ns, ns.dataset)
    base = create_backbone(None)
    splits.set_transforms(*run_transforms(ns, base, False))
    set_seed(seed)
    model = prepare_baseline_model(base, splits.num_labels, splits.id2label)
    model = lora.wrap_lora(model, rank, head_modules(model)[0][0])
    generator = __import__("torch").Generator().manual_seed(seed)
    loaders = {
        "train": DataLoader(splits.train, BATCH_SIZE, shuffle=True, generator=generator),
        "validation": DataLoader(splits.validation, 128),
        "test": DataLoader(splits.test, 128),
    }
    summary = lora.fit(model, loaders, int(budget["epochs"]), lora.LORA_LR)
    summary["weights_bytes"] = lora.adapter_bytes(model, out / "adapter")
    return {"method": f"lora r={rank}", "epochs": int(budget["epochs"]), **summary}


def _spread(values: list[float]) -> dict[str, float]:
    return {
        "mean": statistics.fmean(values),
        "std": statistics.stdev(values) if len(values) > 1 else 0.0,
        "min": min(values),
        "max": max(values),
    }


def summarize(
    task: str, variant: Variant, runs: list[dict[str, Any]], backbone_weights: int
) -> dict[str, Any]:
    """One table row from the runs of ``variant`` on ``task``."""
    row: dict[str, Any] = {
        "task": task,
        "method": variant.name,
        "seeds": len(runs),
        "test_accuracy": _spread([r["test_accuracy"] for r in runs]),
        "train_seconds": _spread([r["train_seconds"] for r in runs]),
        "runs": runs,
    }
    vals = [r["validation_accuracy"] for r in runs if r.get("validation_accuracy") is not None]
    if vals:
        row["validation_accuracy"] = _spread(vals)
    sizes = [r["weights_bytes"] for r in runs if r.get("weights_bytes")]
    if sizes:
        row["weights_bytes"] = _spread(sizes)
        row["bits_per_backbone_weight"] = 8 * statistics.fmean(sizes) / backbone_weights
    zeros = [r["mask_zeros_fraction"] for r in runs if "mask_zeros_fraction" in r]
    if zeros:
        row["mask_zeros_fraction"] = _spread(zeros)
    pruned = [r["pruned_fraction"] for r in runs if "pruned_fraction" in r]
    if pruned:
        row["pruned_fraction"] = _spread(pruned)
    return row


def task_sources(tmp: Path, quick: bool) -> dict[str, str | None]:
    """The benchmark's tasks: name -> ``--dataset`` value."""
    rotated = write_rotated_digits(tmp / "rotated-digits")
    return {"mnist-5k": None, "rotated-digits": str(rotated)}


def run(quick: bool = False, seeds: int = 3, only: list[str] | None = None) -> dict[str, Any]:
    """Train every variant on both tasks with ``seeds`` seeds; write the result file."""
    from benchmarks.lora import require_peft
    from benchmarks.step_time import baseline_bytes, step_time_ratios

    require_peft()  # refuse before hours of training, not at the first LoRA row
    budget = BUDGETS[quick]
    chosen = [v for v in variants() if not only or v.name in only]
    sizes = baseline_bytes(num_labels=10)
    ratios = step_time_ratios(chosen, budget["image_size"], BATCH_SIZE, repeats=3 if quick else 7)
    rows: list[dict[str, Any]] = []
    with tempfile.TemporaryDirectory(prefix="pb-bench-acc-") as tmp:
        for task, dataset in task_sources(Path(tmp), quick).items():
            for variant in chosen:
                runs = []
                for seed in range(seeds):
                    out = Path(tmp) / "runs" / f"{task}-{variant.method}{variant.rank}-{seed}"
                    summary = train_once(variant, task, dataset, seed, budget, out)
                    summary.setdefault("weights_bytes", sizes.get(variant.method))
                    runs.append(summary)
                    print(
                        f"{task:>15} {variant.name:>24} seed {seed}: test top-1 "
                        f"{summary['test_accuracy']:.2%} ({summary['train_seconds']:.0f}s)",
                        flush=True,
                    )
                row = summarize(task, variant, runs, sizes["backbone_weights"])
                row["step_time_ratio"] = ratios.get(variant.name)
                rows.append(row)
    payload = {
        "model": "tf_efficientnet_lite0 (offline ImageNet weights)",
        "budget": {**budget, "batch_size": BATCH_SIZE},
        "packnet_prune_ratio": PACKNET_PRUNE_RATIO,
        "recipes": {m: list(a) for m, a in RECIPES.items()},
        "backbone_weights": sizes["backbone_weights"],
        "quick": quick,
        "rows": rows,
    }
    write_result(RESULT_NAME + ("-quick" if quick else ""), payload)
    return payload


def lora_at_demo_budget(rank: int = 4) -> dict[str, Any]:
    """LoRA of ``rank`` with the demo's data, split and budget, to compare with the demo's
    methods; writes ``lora-demo-cpu.json``."""
    with tempfile.TemporaryDirectory(prefix="pb-bench-lora-demo-") as tmp:
        summary = train_lora(rank, None, 0, DEMO_BUDGET, Path(tmp))
    payload = {"budget": {**DEMO_BUDGET, "batch_size": BATCH_SIZE, "seed": 0}, "run": summary}
    write_result("lora-demo-cpu", payload)
    return payload


def main(argv: list[str] | None = None) -> int:
    """Command line: ``python -m benchmarks.accuracy [--quick] [--seeds N] [--only NAME...]``."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="a tiny budget, a smoke test")
    parser.add_argument("--seeds", type=int, default=3)
    parser.add_argument("--only", nargs="+", help="only these rows (names as in the table)")
    parser.add_argument(
        "--lora-demo", type=int, metavar="RANK", help="instead: one LoRA run at the demo budget"
    )
    args = parser.parse_args(argv)
    if args.lora_demo:
        lora_at_demo_budget(args.lora_demo)
        return 0
    run(quick=args.quick, seeds=args.seeds, only=args.only)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
