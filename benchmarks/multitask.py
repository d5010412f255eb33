"""Many tasks on one base: switching, mixed-task batches, low precision, memory, operation counts.

Every ratio is measured side by side in one run (interleaved timings, medians). Weights are
random (speed does not depend on their values); each task's mask has about 10% zeros, like a
trained piggyback mask; heads have 10 classes; eval mode, 224 px.

    python -m benchmarks.multitask                          # CPU, the three models
    python -m benchmarks.multitask --device cuda            # batch 64 by default on CUDA
    python -m benchmarks.multitask --models resnet50 --quick

The ratios (the goals they are read against are in docs/multitask.md):

- switch to a held task: ``set_adapter`` + a batch-1 forward / a plain batch-1 forward;
- switch to a packed task: the same with a task that must be materialised / the physical floor,
  a plain forward plus unpacking and multiplying every masked weight with plain operations;
- a mixed batch over 8 tasks / the same batch on one task (fp32; bf16 autocast on CUDA), in the
  default mode of the device and in both modes (``model.serving.mixed_mode``: one fused pass, or
  one pass per task);
- the active task / the plain base, fp32 and bf16 autocast (and fp16 on CUDA), batch 1 and the
  large batch (the base with ``requires_grad`` on and off: autocast caches its casts of such
  leaves);
- resident memory with 1, 10 and 50 tasks loaded (fresh processes);
- tensor operations dispatched by a switch and by a mixed batch (device independent).
"""

from __future__ import annotations

import argparse
import contextlib
import gc
import json
import os
import subprocess
import sys
import tempfile
from collections import Counter
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import timm
import torch
from torch.utils._python_dispatch import TorchDispatchMode

from benchmarks.common import interleaved_medians, write_result
from pb_adapters import PiggybackConfig, PiggybackModel, get_piggyback_model
from pb_adapters.utils.bits import unpack_bits

MODELS = ["resnet50", "tf_efficientnet_lite0", "vit_base_patch16_224"]
ZERO_FRACTION = 0.10
TASKS = 8
MEMORY_COUNTS = [1, 10, 50]


def _base(name: str, device: str = "cpu") -> torch.nn.Module:
    torch.manual_seed(0)
    return timm.create_model(name, pretrained=False).eval().to(device)


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


def _load(name: str, paths: list[Path], count: int, device: str) -> PiggybackModel:
    """A fresh base with ``count`` tasks, cycling through the saved artifacts."""
    model = PiggybackModel.from_pretrained(_base(name), paths[0], adapter_name="t0")
    for index in range(1, count):
        model.load_adapter(paths[index % len(paths)], adapter_name=f"t{index}")
    return model.eval().to(device)


def _set_budget(model: PiggybackModel, tasks: int | None) -> bool:
    """Hold ``tasks`` tasks' materialised weights (None: the default); False on code without
    a serving cache (every switch then materialises)."""
    serving = getattr(model, "serving", None)
    if serving is None:
        return False
    if tasks is None:
        serving.budget_bytes = None
    else:
        model.set_adapter(model.active_adapter)  # materialised once: task_bytes is known
        serving.budget_bytes = tasks * serving.task_bytes
    return True


# -- operation counts -----------------------------------------------------------------------
class _OpCounter(TorchDispatchMode):
    def __init__(self) -> None:
        super().__init__()
        self.counts: Counter[str] = Counter()

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):  # type: ignore[no-untyped-def]
        self.counts[str(func.overloadpacket)] += 1
        return func(*args, **(kwargs or {}))


def _ops(fn: Callable[[], Any]) -> int:
    with _OpCounter() as counter:
        fn()
    return sum(counter.counts.values())


# -- the physical floor of a switch ---------------------------------------------------------
def _floor(model: PiggybackModel, task: str) -> Callable[[], Any]:
    """Unpack and multiply every masked weight of ``task`` with plain operations: one flat
    packed buffer and one flat copy of the weights (made outside the timing)."""
    layers = [layer for _, layer in model.adapter_layers()]
    packed = torch.cat([layer.state_tensors(task)[0] for layer in layers])
    weights = [layer.base_layer.weight.detach().reshape(-1) for layer in layers]
    pad = [torch.zeros(-w.numel() % 8, dtype=w.dtype, device=w.device) for w in weights]
    flat = torch.cat([t for pair in zip(weights, pad, strict=True) for t in pair])

    def unpack_and_multiply() -> Any:
        return unpack_bits(packed, flat.numel(), flat.dtype) * flat

    return unpack_and_multiply


@contextlib.contextmanager
def _autocast(device: str, dtype: torch.dtype = torch.bfloat16) -> Iterator[None]:
    with torch.autocast(device, dtype=dtype):
        yield


def _set_mode(model: PiggybackModel, mode: str) -> Callable[[], Any]:
    """A callable that sets ``model``'s mixed-batch mode (nothing on code without one)."""
    serving = getattr(model, "serving", None)

    def apply() -> None:
        if serving is not None and hasattr(serving, "mixed_mode"):
            serving.mixed_mode = mode

    return apply


def _toggle(model: PiggybackModel, tasks: list[str], x: torch.Tensor | None) -> Callable[[], Any]:
    state = {"next": 0}

    def step() -> Any:
        state["next"] = (state["next"] + 1) % len(tasks)
        model.set_adapter(tasks[state["next"]])
        return None if x is None else model(x)

    return step


def measure_speed(
    name: str, paths: list[Path], device: str, batch: int, repeats: int, large_repeats: int
) -> dict[str, Any]:
    """Every speed ratio of one model, and the operation counts."""
    plain = _base(name, device)
    plain.requires_grad_(False)
    packed = _load(name, paths, TASKS, device)  # default budget: the active task only
    cached = _load(name, paths, TASKS, device)
    cache_supported = _set_budget(cached, TASKS)
    x1 = torch.randn(1, 3, 224, 224, device=device)
    xb = torch.randn(batch, 3, 224, 224, device=device)
    order = torch.randperm(batch, generator=torch.Generator().manual_seed(0)) % TASKS
    names = [f"t{int(i)}" for i in order]
    out: dict[str, Any] = {"cache_supported": cache_supported, "batch": batch, "tasks": TASKS}
    with torch.no_grad():
        for model in (packed, cached):
            for index in range(TASKS):
                model.set_adapter(f"t{index}")
        out.update(_switching(plain, packed, cached, x1, repeats))
        cached.set_adapter("t0")
        packed.set_adapter("t0")
        out.update(_mixed(device, packed, cached, xb, names, large_repeats))
        out["precision"] = {
            str(size): _precision(device, plain, cached, x, reps)
            for size, x, reps in ((1, x1, repeats), (batch, xb, large_repeats))
        }
        out["ops"] = _operations(plain, packed, cached, x1, xb, names)
    return out


def _switching(
    plain: torch.nn.Module,
    packed: PiggybackModel,
    cached: PiggybackModel,
    x1: torch.Tensor,
    repeats: int,
) -> dict[str, Any]:
    """Switching to a held and to a packed task, against a plain forward and the floor."""
    switching = interleaved_medians(
        {
            "plain_forward": lambda: plain(x1),
            "switch_held_and_forward": _toggle(cached, ["t0", "t1"], x1),
            "switch_packed_and_forward": _toggle(packed, ["t0", "t1"], x1),
            "unpack_and_multiply": _floor(packed, "t1"),
            "set_adapter_held": _toggle(cached, ["t2", "t3"], None),
            "set_adapter_packed": _toggle(packed, ["t2", "t3"], None),
        },
        repeats,
    )
    floor = switching["plain_forward"] + switching["unpack_and_multiply"]
    forward = switching["plain_forward"]
    return {
        "switching_s": switching,
        "switch_held_over_forward": switching["switch_held_and_forward"] / forward,
        "switch_packed_over_floor": switching["switch_packed_and_forward"] / floor,
        "switch_packed_over_forward": switching["switch_packed_and_forward"] / forward,
    }


def _mixed(
    device: str,
    packed: PiggybackModel,
    cached: PiggybackModel,
    xb: torch.Tensor,
    names: list[str],
    repeats: int,
) -> dict[str, Any]:
    """A mixed batch over the tasks against the same batch on one task: in the device's
    default mode, in each mode, and with the default budget."""
    auto, fused, per_task = (_set_mode(cached, m) for m in ("auto", "fused", "per_task"))

    def mixed_in(mode: Callable[[], Any], model: PiggybackModel = cached) -> Callable[[], Any]:
        def call() -> Any:
            mode()
            return model(xb, adapter_names=names)

        return call

    candidates: dict[str, Callable[[], Any]] = {
        "mixed_held": mixed_in(auto),
        "mixed_default_budget": mixed_in(_set_mode(packed, "auto"), packed),
        "one_task": lambda: cached(xb),
    }
    if hasattr(getattr(cached, "serving", None), "mixed_mode"):
        candidates["mixed_fused"] = mixed_in(fused)
        candidates["mixed_per_task"] = mixed_in(per_task)
    if device != "cpu":
        candidates["mixed_held_bf16"] = lambda: _amp(device, cached, xb, names)
        candidates["one_task_bf16"] = lambda: _amp(device, cached, xb, None)
    mixed = interleaved_medians(candidates, repeats, warmup=1)
    auto()
    one = mixed["one_task"]
    out: dict[str, Any] = {"mixed_s": mixed}
    for key in ("held", "default_budget", "fused", "per_task"):
        if f"mixed_{key}" in mixed:
            label = "mixed_over_one_task" if key == "held" else f"mixed_{key}_over_one_task"
            out[label] = mixed[f"mixed_{key}"] / one
    if device != "cpu":
        out["mixed_over_one_task_bf16"] = mixed["mixed_held_bf16"] / mixed["one_task_bf16"]
    return out


def _precision(
    device: str, plain: torch.nn.Module, cached: PiggybackModel, x: torch.Tensor, repeats: int
) -> dict[str, Any]:
    """The active task against the plain base in fp32 and under autocast."""
    candidates: dict[str, Callable[[], Any]] = {
        "base_fp32": lambda: plain(x),
        "active_fp32": lambda: cached(x),
        "base_bf16": lambda: _amp(device, plain, x, None),
        "base_bf16_requires_grad": lambda: _amp(device, plain, x, None, True),
        "active_bf16": lambda: _amp(device, cached, x, None),
    }
    if device != "cpu":  # CPU autocast has few float16 kernels: not a serving setup there
        candidates["base_fp16"] = lambda: _amp(device, plain, x, None, dtype=torch.float16)
        candidates["active_fp16"] = lambda: _amp(device, cached, x, None, dtype=torch.float16)
    times = interleaved_medians(candidates, repeats, warmup=1)
    out = {
        "seconds": times,
        "fp32": times["active_fp32"] / times["base_fp32"],
        "bf16": times["active_bf16"] / times["base_bf16"],
        "bf16_vs_base_requires_grad": times["active_bf16"] / times["base_bf16_requires_grad"],
    }
    if "active_fp16" in times:
        out["fp16"] = times["active_fp16"] / times["base_fp16"]
    return out


def _operations(
    plain: torch.nn.Module,
    packed: PiggybackModel,
    cached: PiggybackModel,
    x1: torch.Tensor,
    xb: torch.Tensor,
    names: list[str],
) -> dict[str, Any]:
    """Tensor operations dispatched by switches and by a mixed batch (fused, and per task)."""
    packed.set_adapter("t0")
    cached.set_adapter("t0")
    ops = {
        "plain_forward": _ops(lambda: plain(x1)),
        "switch_packed": _ops(lambda: packed.set_adapter("t1")),
        "switch_held": _ops(lambda: cached.set_adapter("t1")),
        "masked_layers": len(list(cached.adapter_layers())),
        "one_task_batch": _ops(lambda: cached(xb)),
    }
    _set_mode(cached, "fused")()
    ops["mixed_batch"] = _ops(lambda: cached(xb, adapter_names=names))
    if hasattr(getattr(cached, "serving", None), "mixed_mode"):
        _set_mode(cached, "per_task")()
        ops["mixed_batch_per_task"] = _ops(lambda: cached(xb, adapter_names=names))
    _set_mode(cached, "auto")()
    ops["mixed_over_one_task"] = ops["mixed_batch"] / ops["one_task_batch"]
    return ops


def _amp(
    device: str,
    model: torch.nn.Module,
    x: torch.Tensor,
    names: list[str] | None,
    requires_grad: bool = False,
    dtype: torch.dtype = torch.bfloat16,
) -> Any:
    if requires_grad:
        model.requires_grad_(True)
    try:
        with _autocast(device, dtype):
            return model(x) if names is None else model(x, adapter_names=names)
    finally:
        if requires_grad:
            model.requires_grad_(False)


# -- memory ----------------------------------------------------------------------------------
def _rss() -> int:
    import psutil

    gc.collect()
    return psutil.Process().memory_info().rss


def memory_child(name: str, count: int, device: str, paths: list[str]) -> dict[str, Any]:
    """Run in a fresh process: memory of the base alone, then with ``count`` tasks loaded."""
    torch.set_num_threads(1)
    base = _base(name, device)
    base_bytes = sum(t.numel() * t.element_size() for t in base.state_dict().values())
    x = torch.randn(1, 3, 224, 224, device=device)
    with torch.no_grad():
        base(x)
    rss_base = _rss()
    cuda_base = torch.cuda.memory_allocated() if device == "cuda" else 0
    model = PiggybackModel.from_pretrained(base, paths[0], adapter_name="t0")
    for index in range(1, count):
        model.load_adapter(paths[index % len(paths)], adapter_name=f"t{index}")
    model.eval().to(device)
    with torch.no_grad():
        model(x)
    layers = [layer for _, layer in model.adapter_layers()]
    packed = sum(
        t.numel() * t.element_size()
        for layer in layers
        for a in layer.adapter_names
        for t in layer.state_tensors(a)
    )
    heads = sum(p.numel() * p.element_size() for p in model.task_modules.parameters())
    serving = getattr(model, "serving", None)
    if serving is not None:
        materialised = serving.bank_bytes
    else:  # one weight-sized buffer per masked layer
        materialised = sum(
            layer.merged_weight.numel() * layer.merged_weight.element_size()
            for layer in layers
            if layer.merged_weight is not None
        )
    rss_loaded = _rss()
    return {
        "tasks": count,
        "rss_increase_bytes": rss_loaded - rss_base,
        "cuda_increase_bytes": (torch.cuda.memory_allocated() - cuda_base) if cuda_base else 0,
        "packed_mask_bytes": packed,
        "head_bytes": heads,
        "materialised_bytes": materialised,
        "base_weight_bytes": base_bytes,
    }


def measure_memory(name: str, paths: list[Path], counts: list[int], device: str) -> list[Any]:
    """Memory for each task count, each in its own process."""
    rows = []
    for count in counts:
        command = [sys.executable, "-m", "benchmarks.multitask", "--memory-child", name, str(count)]
        command += ["--device", device, *[str(p) for p in paths]]
        out = subprocess.run(command, check=True, capture_output=True, text=True).stdout
        rows.append(json.loads(out.strip().splitlines()[-1]))
    return rows


def run(args: argparse.Namespace) -> dict[str, Any]:
    """All multitask figures for every model; returns (and writes) the result dict."""
    device = args.device
    batch = args.batch or (64 if device != "cpu" else 32)
    repeats, large = (3, 1) if args.quick else (args.repeats, args.large_repeats)
    counts = [] if args.no_memory else [1, 10] if args.quick else MEMORY_COUNTS
    results: dict[str, Any] = {
        "zero_fraction": ZERO_FRACTION,
        "repeats": repeats,
        "large_repeats": large,
        "load_average_start": os.getloadavg(),
        "models": {},
    }
    with tempfile.TemporaryDirectory(prefix="pb-bench-tasks-") as tmp:
        for name in args.models:
            paths = make_tasks(name, TASKS, Path(tmp) / name)
            speed = measure_speed(name, paths, device, batch, repeats, large)
            memory = measure_memory(name, paths, counts, device)
            results["models"][name] = {"speed": speed, "memory": memory}
            print(f"{name}: {json.dumps(speed, indent=1)}\n{json.dumps(memory)}", flush=True)
    results["load_average_end"] = os.getloadavg()
    write_result(args.result_name or f"multitask-{device}", results)
    return results


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--device", default="cpu", help="cpu or cuda (default: cpu)")
    parser.add_argument("--models", nargs="+", default=MODELS, help="timm model names")
    parser.add_argument("--batch", type=int, help="large batch (default: 64 on CUDA, 32 on CPU)")
    parser.add_argument("--repeats", type=int, default=7, help="timed repeats at batch 1")
    parser.add_argument("--large-repeats", type=int, default=3, help="repeats at the large batch")
    parser.add_argument("--quick", action="store_true", help="fewer repeats, 1 and 10 tasks")
    parser.add_argument("--no-memory", action="store_true", help="speed and operations only")
    parser.add_argument("--result-name", help="results file name (default: multitask-DEVICE)")
    parser.add_argument(
        "--memory-child", nargs=2, metavar=("MODEL", "COUNT"), help=argparse.SUPPRESS
    )
    parser.add_argument("paths", nargs="*", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    torch.set_num_threads(max(1, int(os.environ.get("OMP_NUM_THREADS", torch.get_num_threads()))))
    if args.memory_child:
        name, count = args.memory_child
        print(json.dumps(memory_child(name, int(count), args.device, args.paths)))
        return 0
    run(args)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
