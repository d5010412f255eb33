"""Training cost: step time and peak memory of mask training versus full fine-tuning.

Each configuration (method x number of processes) trains the same model (the offline ImageNet
EfficientNet-Lite0) with the same batch for the same number of steps in a fresh process group, so
that its peak memory is its own; the configurations run one after another in one command, and the
report gives each method's figures as ratios to full fine-tuning with the same processes.

A step is what the trainer does per batch: forward, cross-entropy, ``accelerator.backward``
(with the DDP all-reduce when there are two processes), and the optimiser step over the
trainer's own parameter groups. Data loading is excluded (it is the same for every method).
Peak memory is the growth of the resident set from just before the first step to its peak
(``VmHWM`` after resetting it), the largest over the ranks.

python -m benchmarks.training [--quick]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F

from benchmarks.common import write_result

RESULT_NAME = "training-cpu"
REPO = Path(__file__).resolve().parents[1]


def _status_kib(field: str) -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1])
    raise RuntimeError(f"/proc/self/status has no {field}")


def _reset_peak_rss() -> None:
    # Linux: writing 5 to clear_refs resets the peak resident set size (VmHWM) to the current one.
    Path("/proc/self/clear_refs").write_text("5")


def _build(method: str, num_labels: int) -> tuple[torch.nn.Module, Any]:
    from pb_adapters import get_piggyback_model
    from pb_adapters.methods import get_method
    from pb_adapters.training.demo import load_demo_backbone
    from pb_adapters.training.trainer import prepare_baseline_model

    base = load_demo_backbone()
    torch.manual_seed(0)
    if method in ("finetune", "head"):
        return prepare_baseline_model(base, num_labels), method
    config = get_method(method).config_class(num_labels=num_labels)
    return get_piggyback_model(base, config), "adapter"


def worker(method: str, image_size: int, batch: int, steps: int, warmup: int, out: Path) -> None:
    """One rank: time ``steps`` training steps after ``warmup`` ones; write its figures to ``out``."""
    from accelerate import Accelerator

    from pb_adapters.training.trainer import PiggybackTrainer, TrainingArguments

    acc = Accelerator(cpu=True)
    model, mode = _build(method, num_labels=10)
    args = TrainingArguments(output_dir=str(out.parent), train_mode=mode, report_to="none")
    trainer = PiggybackTrainer(model, args, train_dataset=[(0, 0)], accelerator=acc)
    optimizer = torch.optim.Adam(trainer.param_groups())
    model, optimizer = acc.prepare(model, optimizer)
    trainer._set_train_mode(model)
    generator = torch.Generator().manual_seed(acc.process_index)
    images = torch.randn(batch, 3, image_size, image_size, generator=generator)
    labels = torch.randint(0, 10, (batch,), generator=generator)

    def step() -> None:
        logits = model(images)
        logits = getattr(logits, "logits", logits)
        acc.backward(F.cross_entropy(logits.float(), labels))
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)

    rss_before = _status_kib("VmRSS")
    _reset_peak_rss()
    times = []
    for index in range(warmup + steps):
        acc.wait_for_everyone()
        start = time.perf_counter()
        step()
        if index >= warmup:
            times.append(time.perf_counter() - start)
    peak = _status_kib("VmHWM")
    trainable = sum(p.numel() for g in optimizer.param_groups for p in g["params"])
    out.with_name(f"{out.stem}-rank{acc.process_index}.json").write_text(
        json.dumps(
            {
                "step_seconds": statistics.median(times),
                "peak_growth_bytes": (peak - rss_before) * 1024,
                "peak_rss_bytes": peak * 1024,
                "trainable_parameters": trainable,
                "threads": torch.get_num_threads(),
            }
        )
    )


def _free_port() -> int:
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def measure(
    method: str, processes: int, image_size: int, batch: int, steps: int, warmup: int, tmp: Path
) -> dict[str, Any]:
    """Run one configuration in fresh processes; the median step time and peak over ranks."""
    threads = max(1, (os.cpu_count() or 1) // processes)
    env = dict(os.environ, OMP_NUM_THREADS=str(threads), PYTHONPATH=str(REPO))
    out = tmp / f"{method}-{processes}.json"
    worker_args = [
        "-m", "benchmarks.training", "--worker", method,
        "--image-size", str(image_size), "--batch", str(batch),
        "--steps", str(steps), "--warmup", str(warmup), "--out", str(out),
    ]  # fmt: skip
    if processes == 1:
        command = [sys.executable, *worker_args]
    else:
        command = [
            sys.executable, "-m", "accelerate.commands.launch", "--multi_gpu",
            "--num_processes", str(processes), "--num_machines", "1", "--mixed_precision", "no",
            "--dynamo_backend", "no", "--main_process_port", str(_free_port()), *worker_args,
        ]  # fmt: skip
    subprocess.run(command, check=True, cwd=REPO, env=env, capture_output=True, text=True)
    ranks = [
        json.loads(out.with_name(f"{out.stem}-rank{r}.json").read_text()) for r in range(processes)
    ]
    return {
        "method": method,
        "processes": processes,
        "threads_per_process": threads,
        "step_seconds": statistics.median(r["step_seconds"] for r in ranks),
        "peak_growth_bytes": max(r["peak_growth_bytes"] for r in ranks),
        "peak_rss_bytes": max(r["peak_rss_bytes"] for r in ranks),
        "trainable_parameters": ranks[0]["trainable_parameters"],
    }


def run(quick: bool = False) -> dict[str, Any]:
    """Measure every method against full fine-tuning with 1 and 2 processes; write the result."""
    import tempfile

    from pb_adapters.methods import available_methods

    # PackNet trains the weights themselves, like fine-tuning: its cost is that of "finetune"
    methods = [m for m in available_methods() if m != "packnet"] + ["finetune", "head"]
    settings = [(64, 32, 5 if quick else 20, 2)] + ([] if quick else [(224, 32, 5, 1)])
    rows = []
    with tempfile.TemporaryDirectory(prefix="pb-bench-train-") as tmp:
        for image_size, batch, steps, warmup in settings:
            for processes in (1, 2):
                for method in methods:
                    row = measure(method, processes, image_size, batch, steps, warmup, Path(tmp))
                    row.update(image_size=image_size, batch_per_process=batch, steps=steps)
                    rows.append(row)
                    print(
                        f"{image_size}px x{batch} {processes}p {method:>10}: "
                        f"{row['step_seconds'] * 1e3:7.1f} ms/step, "
                        f"peak +{row['peak_growth_bytes'] / 2**20:6.1f} MiB",
                        flush=True,
                    )
    for row in rows:
        ref = next(
            r
            for r in rows
            if r["method"] == "finetune"
            and (r["processes"], r["image_size"]) == (row["processes"], row["image_size"])
        )
        row["step_time_ratio_vs_finetune"] = row["step_seconds"] / ref["step_seconds"]
        row["peak_memory_ratio_vs_finetune"] = row["peak_growth_bytes"] / ref["peak_growth_bytes"]
    payload = {
        "model": "tf_efficientnet_lite0 (offline ImageNet weights)",
        "quick": quick,
        "rows": rows,
    }
    write_result(RESULT_NAME, payload)
    return payload


def main(argv: list[str] | None = None) -> int:
    """Command line: the whole benchmark, or (``--worker``) one rank of one configuration."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--worker", default=None, help=argparse.SUPPRESS)
    parser.add_argument("--image-size", type=int, default=64, help=argparse.SUPPRESS)
    parser.add_argument("--batch", type=int, default=32, help=argparse.SUPPRESS)
    parser.add_argument("--steps", type=int, default=10, help=argparse.SUPPRESS)
    parser.add_argument("--warmup", type=int, default=2, help=argparse.SUPPRESS)
    parser.add_argument("--out", type=Path, default=None, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.worker:
        worker(args.worker, args.image_size, args.batch, args.steps, args.warmup, args.out)
    else:
        run(quick=args.quick)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
