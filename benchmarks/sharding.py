"""Memory per process of mask training sharded with FSDP2 versus replicated with DDP.

Two processes (gloo on CPU) train a piggyback adapter on ViT-B/16 (``vit_base_patch16_224``,
random weights: the sizes are what matter) for a few steps, once with DDP and once with FSDP2
through Accelerate (:func:`~pb_adapters.training.sharding.cpu_fsdp_accelerator`, one FSDP unit
per transformer block). Each process reports:

* the bytes of the tensors it holds: parameters (frozen weights, float32 scores, head), the
  gradients after a backward, and Adam's state after a step; under FSDP, its own slices;
* its resident set size after ``accelerator.prepare`` and its peak during the steps (``VmHWM``,
  reset just before the first step): the tensors plus activations, temporary all-gathered
  weights under FSDP, and the Python/torch runtime.

python -m benchmarks.sharding [--quick]
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F

from benchmarks.common import write_result
from benchmarks.training import _free_port, _reset_peak_rss, _status_kib

RESULT_NAME = "sharding-cpu"
REPO = Path(__file__).resolve().parents[1]
MODEL = "vit_base_patch16_224"


def _bytes(tensors: Any) -> int:
    from pb_adapters.training.sharding import local_tensor

    return sum(local_tensor(t).numel() * t.element_size() for t in tensors if t is not None)


def worker(mode: str, image_size: int, batch: int, steps: int, out: Path) -> None:
    """One rank: prepare, train ``steps`` steps, write this rank's figures to ``out``."""
    import timm
    from accelerate import Accelerator
    from accelerate.utils import FullyShardedDataParallelPlugin

    from pb_adapters import PiggybackConfig, get_piggyback_model
    from pb_adapters.training.sharding import cpu_fsdp_accelerator, keep_weights_sharded, reshard
    from pb_adapters.training.trainer import PiggybackTrainer, TrainingArguments

    if mode == "fsdp":
        plugin = FullyShardedDataParallelPlugin(
            fsdp_version=2,
            auto_wrap_policy="transformer_based_wrap",
            transformer_cls_names_to_wrap=["Block"],
        )
        acc = cpu_fsdp_accelerator(plugin)
    else:
        acc = Accelerator(cpu=True)
    torch.manual_seed(0)
    base = timm.create_model(MODEL, pretrained=False, num_classes=10, img_size=image_size)
    model = get_piggyback_model(base, PiggybackConfig(num_labels=10))
    args = TrainingArguments(output_dir=str(out.parent), report_to="none")
    trainer = PiggybackTrainer(model, args, train_dataset=[(0, 0)], accelerator=acc)
    optimizer = torch.optim.Adam(trainer.param_groups())
    model.train()
    model, optimizer = acc.prepare(model, optimizer)
    keep_weights_sharded(acc.unwrap_model(model))
    rss_prepared = _status_kib("VmRSS")
    generator = torch.Generator().manual_seed(acc.process_index)
    images = torch.randn(batch, 3, image_size, image_size, generator=generator)
    labels = torch.randint(0, 10, (batch,), generator=generator)
    _reset_peak_rss()
    figures: dict[str, Any] = {}
    for _ in range(steps):
        acc.backward(F.cross_entropy(model(images).float(), labels))
        trainable = [p for g in optimizer.param_groups for p in g["params"]]
        figures["gradient_bytes"] = _bytes(p.grad for p in trainable)
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
    reshard(model)
    figures.update(
        parameter_bytes=_bytes(model.parameters()),
        optimizer_bytes=_bytes(
            v for state in optimizer.optimizer.state.values() for v in state.values() if v.dim()
        ),
        rss_after_prepare_bytes=rss_prepared * 1024,
        peak_rss_bytes=_status_kib("VmHWM") * 1024,
    )
    out.with_name(f"{out.stem}-rank{acc.process_index}.json").write_text(json.dumps(figures))


def measure(mode: str, image_size: int, batch: int, steps: int, tmp: Path) -> list[dict]:
    """Run one mode in two fresh processes; every rank's figures."""
    out = tmp / f"{mode}.json"
    command = [
        sys.executable, "-m", "accelerate.commands.launch", "--multi_gpu",
        "--num_processes", "2", "--num_machines", "1", "--mixed_precision", "no",
        "--dynamo_backend", "no", "--main_process_port", str(_free_port()),
        "-m", "benchmarks.sharding", "--worker", mode, "--image-size", str(image_size),
        "--batch", str(batch), "--steps", str(steps), "--out", str(out),
    ]  # fmt: skip
    path = [str(REPO), *filter(None, [os.environ.get("PYTHONPATH")])]
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONPATH=os.pathsep.join(path))
    subprocess.run(command, check=True, cwd=REPO, env=env, capture_output=True, text=True)
    return [json.loads(out.with_name(f"{out.stem}-rank{r}.json").read_text()) for r in (0, 1)]


def run(quick: bool = False) -> dict[str, Any]:
    """Measure DDP and FSDP2 with two processes; write the result."""
    image_size, batch, steps = (64, 2, 2) if quick else (224, 4, 3)
    rows = []
    with tempfile.TemporaryDirectory(prefix="pb-bench-shard-") as tmp:
        for mode in ("ddp", "fsdp"):
            for rank, figures in enumerate(measure(mode, image_size, batch, steps, Path(tmp))):
                rows.append({"mode": mode, "rank": rank, **figures})
                print(
                    mode,
                    rank,
                    {k: f"{v / 2**20:.1f} MiB" for k, v in figures.items()},
                    flush=True,
                )
    payload = {
        "model": f"{MODEL} (random weights), piggyback on every default target",
        "processes": 2,
        "image_size": image_size,
        "batch_per_process": batch,
        "steps": steps,
        "quick": quick,
        "rows": rows,
    }
    write_result(RESULT_NAME, payload)
    return payload


def main(argv: list[str] | None = None) -> int:
    """Command line: the whole measurement, or (``--worker``) one rank of one mode."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--worker", choices=["ddp", "fsdp"], help=argparse.SUPPRESS)
    parser.add_argument("--image-size", type=int, default=224, help=argparse.SUPPRESS)
    parser.add_argument("--batch", type=int, default=4, help=argparse.SUPPRESS)
    parser.add_argument("--steps", type=int, default=3, help=argparse.SUPPRESS)
    parser.add_argument("--out", type=Path, default=None, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.worker:
        worker(args.worker, args.image_size, args.batch, args.steps, args.out)
    else:
        run(quick=args.quick)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
