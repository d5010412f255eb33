"""Many tasks on one base: inference latency, switching cost, memory, mixed batches (CPU).

Every ratio is measured side by side in one run (interleaved timings, medians). Weights are
random (speed does not depend on their values); each task's mask has about 10% zeros, like a
trained piggyback mask.

    python -m benchmarks.multitask            # tf_efficientnet_lite0 and resnet50, 1/10/50 tasks
    python -m benchmarks.multitask --quick    # fewer repeats, 1/10 tasks
"""

from __future__ import annotations

import argparse
import gc
import json
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

import timm
import torch

from benchmarks.common import interleaved_medians, write_result
from pb_adapters import PiggybackConfig, PiggybackModel, get_piggyback_model

MODELS = ["tf_efficientnet_lite0", "resnet50"]
ZERO_FRACTION = 0.10


def _base(name: str) -> torch.nn.Module:
    torch.manual_seed(0)
    return timm.create_model(name, pretrained=False).eval()


def make_tasks(name: str, count: int, folder: Path, num_labels: int = 10) -> list[Path]:
    """Save ``count`` artifacts with random masks of ~10% zeros for the base ``name``."""
    model = get_piggyback_model(_base(name), PiggybackConfig(num_labels=num_labels), "t0")
    generator = torch.Generator().manual_seed(1)
    paths = []
    for index in range(count):
        task = f"t{index}"
        if index:
            model.add_adapter(task, PiggybackConfig(num_labels=num_labels))
            model.set_adapter(task)
        with torch.no_grad():
            for _, layer in model.adapter_layers():
                scores = layer.mask_scores[task]
                # 1e-2 keeps a weight, 0 drops it: ~ZERO_FRACTION zeros.
                drop = torch.rand(scores.shape, generator=generator) < ZERO_FRACTION
                scores.copy_(torch.where(drop, 0.0, 1e-2))
        path = folder / task
        model.save_pretrained(path, task, write_card=False)
        paths.append(path)
        model.delete_adapter(task)
    return paths


def _rss() -> int:
    import psutil

    gc.collect()
    return psutil.Process().memory_info().rss


def memory_child(name: str, tasks: list[str]) -> dict[str, Any]:
    """Run in a fresh process: resident memory of the base alone, then with ``tasks`` loaded."""
    torch.set_num_threads(1)
    base = _base(name)
    base_bytes = sum(t.numel() * t.element_size() for t in base.state_dict().values())
    x = torch.randn(1, 3, 224, 224)
    with torch.no_grad():
        base(x)
    rss_base = _rss()
    model = None
    for index, path in enumerate(tasks):
        if model is None:
            model = PiggybackModel.from_pretrained(base, path, adapter_name=f"t{index}")
        else:
            model.load_adapter(path, adapter_name=f"t{index}")
    model.eval()
    with torch.no_grad():
        model(x)
    rss_loaded = _rss()
    packed = sum(
        t.numel() * t.element_size()
        for _, layer in model.adapter_layers()
        for a in layer.adapter_names
        for t in layer.state_tensors(a)
    )
    heads = sum(p.numel() * p.element_size() for p in model.task_modules.parameters())
    merged = sum(
        layer.merged_weight.numel() * layer.merged_weight.element_size()
        for _, layer in model.adapter_layers()
        if layer.merged_weight is not None
    )
    return {
        "tasks": len(tasks),
        "rss_base_bytes": rss_base,
        "rss_loaded_bytes": rss_loaded,
        "rss_increase_bytes": rss_loaded - rss_base,
        "packed_mask_bytes": packed,
        "head_bytes": heads,
        "materialised_active_task_bytes": merged,
        "base_weight_bytes": base_bytes,
    }


def measure_memory(name: str, paths: list[Path], counts: list[int]) -> list[dict[str, Any]]:
    """Resident memory for each task count, each in its own process."""
    rows = []
    for count in counts:
        command = [sys.executable, "-m", "benchmarks.multitask", "--memory-child", name]
        command += [str(p) for p in paths[:count]]
        out = subprocess.run(command, check=True, capture_output=True, text=True).stdout
        rows.append(json.loads(out.strip().splitlines()[-1]))
    return rows


def measure_speed(name: str, paths: list[Path], repeats: int) -> dict[str, Any]:
    """Eval latency, switching and mixed batches against the plain base, in one run."""
    plain = _base(name)
    model = PiggybackModel.from_pretrained(_base(name), paths[0], adapter_name="t0")
    for index in (1, 2, 3):
        model.load_adapter(paths[index], adapter_name=f"t{index}")
    model.eval()
    x1 = torch.randn(1, 3, 224, 224)
    toggle = {"next": "t1"}

    def switch_and_forward() -> None:
        model.set_adapter(toggle["next"])
        toggle["next"] = "t0" if toggle["next"] == "t1" else "t1"
        model(x1)

    def switch_only() -> None:
        model.set_adapter(toggle["next"])
        toggle["next"] = "t0" if toggle["next"] == "t1" else "t1"

    with torch.no_grad():
        model.set_adapter("t0")
        latency = interleaved_medians(
            {"plain_forward": lambda: plain(x1), "wrapped_forward": lambda: model(x1)}, repeats
        )
        switching = interleaved_medians(
            {
                "plain_forward": lambda: plain(x1),
                "switch_and_forward": switch_and_forward,
                "set_adapter": switch_only,
            },
            repeats,
        )
        model.set_adapter("t0")
        batch = 16
        xb = torch.randn(batch, 3, 224, 224)
        names = [f"t{i % 4}" for i in range(batch)]
        groups = {f"t{i}": [j for j, n in enumerate(names) if n == f"t{i}"] for i in range(4)}

        def grouped() -> None:
            for task, rows in groups.items():
                model.set_adapter(task)
                model(xb[rows])

        def one_by_one() -> None:
            for i, task in enumerate(names):
                model.set_adapter(task)
                model(xb[i : i + 1])

        mixed = interleaved_medians(
            {
                "mixed_adapter_names": lambda: model(xb, adapter_names=names),
                "grouped_by_task": grouped,
                "one_sample_at_a_time": one_by_one,
                "plain_base_same_batch": lambda: plain(xb),
            },
            max(3, repeats // 5),
            warmup=1,
        )
    return {
        "eval_latency_s": latency,
        "eval_latency_ratio": latency["wrapped_forward"] / latency["plain_forward"],
        "switching_s": switching,
        "switch_plus_forward_over_forward": switching["switch_and_forward"]
        / switching["plain_forward"],
        "set_adapter_over_forward": switching["set_adapter"] / switching["plain_forward"],
        "mixed_batch_s": mixed,
        "mixed_batch": {"batch": batch, "tasks": 4},
        "mixed_over_grouped": mixed["mixed_adapter_names"] / mixed["grouped_by_task"],
        "mixed_throughput_img_per_s": batch / mixed["mixed_adapter_names"],
        "grouped_throughput_img_per_s": batch / mixed["grouped_by_task"],
    }


def run(quick: bool = False) -> dict[str, Any]:
    """All multitask figures for every model; returns (and writes) the result dict."""
    torch.set_num_threads(min(2, torch.get_num_threads()))
    counts = [1, 10] if quick else [1, 10, 50]
    repeats = 7 if quick else 21
    results: dict[str, Any] = {"zero_fraction": ZERO_FRACTION, "models": {}}
    with tempfile.TemporaryDirectory(prefix="pb-bench-tasks-") as tmp:
        for name in MODELS:
            folder = Path(tmp) / name
            paths = make_tasks(name, max(counts), folder)
            speed = measure_speed(name, paths, repeats)
            memory = measure_memory(name, paths, counts)
            results["models"][name] = {"speed": speed, "memory": memory}
            print(
                f"{name}: {json.dumps(speed, indent=1)}\n{json.dumps(memory, indent=1)}", flush=True
            )
    write_result("multitask-cpu", results)
    return results


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--quick", action="store_true", help="fewer repeats and task counts")
    parser.add_argument(
        "--memory-child", nargs="+", metavar=("MODEL", "TASK"), help=argparse.SUPPRESS
    )
    args = parser.parse_args(argv)
    if args.memory_child:
        print(json.dumps(memory_child(args.memory_child[0], args.memory_child[1:])))
        return 0
    run(quick=args.quick)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
