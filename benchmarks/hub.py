"""Sharing tasks on the Hub: bytes uploaded per task, and the time to pull one (CPU).

Runs against the Hub-compatible server of the test suite (``tests/hub_server.py``, started with
its context managers, on 127.0.0.1): no network is needed and nothing leaves the machine.

For each backbone (random weights; speed and size do not depend on their values) one task is
made with a realistic mask (about 10% zeros, as after piggyback training) and a 10-class head,
then:

* **upload**: ``model.push_to_hub`` into a new repository; the server counts the bytes of every
  request it receives during the push (request line, headers and body), next to the file sizes
  of the artifact and card files, and the size of a full copy of the model's weights
  (safetensors of the state dict), which is what sharing a fine-tuned model would upload;
* **pull**: ``PiggybackModel.from_pretrained(base_model_object, repo_id)`` with a warm Hub
  cache (the client still asks the server whether the files changed), the same with
  ``HF_HUB_OFFLINE=1`` (cache only), from a local artifact folder, the base fingerprint alone
  (part of every load), and one batch-1 224 px forward of the plain base, all timed interleaved
  (medians).

    python -m benchmarks.hub            # tf_efficientnet_lite0 and resnet50
    python -m benchmarks.hub --quick    # fewer repeats

Writes ``benchmarks/results/hub-cpu.json``. Uploads here go through the git-LFS protocol; the
real Hub's Xet storage can send fewer bytes for content it has seen before.
"""

from __future__ import annotations

import argparse
import contextlib
import copy
import os
import statistics
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import timm
import torch
from safetensors.torch import save_file

from benchmarks.common import write_result
from pb_adapters import PiggybackConfig, PiggybackModel, get_piggyback_model
from pb_adapters.hub import ARTIFACT_FILES, CARD_FILES

MODELS = ["tf_efficientnet_lite0", "resnet50"]
ZERO_FRACTION = 0.10
NUM_LABELS = 10


# ---------------------------------------------------------------------------- the task
def make_base(name: str, num_classes: int | None = None) -> torch.nn.Module:
    """The backbone with deterministic random weights, in eval mode."""
    torch.manual_seed(0)
    kwargs = {} if num_classes is None else {"num_classes": num_classes}
    return timm.create_model(name, pretrained=False, **kwargs).eval()


def make_task(base: torch.nn.Module) -> PiggybackModel:
    """Wrap a copy of ``base`` with one task: ~10% of the mask off, a trained-looking head."""
    model = get_piggyback_model(copy.deepcopy(base), PiggybackConfig(num_labels=NUM_LABELS))
    generator = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for _, layer in model.adapter_layers():
            scores = layer.mask_scores["default"]
            # 1e-2 keeps a weight (above the 5e-3 threshold), 0 drops it.
            drop = torch.rand(scores.shape, generator=generator) < ZERO_FRACTION
            scores.copy_(torch.where(drop, 0.0, 1e-2))
        for param in model.parameter_groups()["head"]:
            param.normal_(0.0, 0.01, generator=generator)
    return model.eval()


def safetensors_bytes(model: torch.nn.Module, folder: Path, name: str) -> int:
    """Size of ``model``'s state dict written as one safetensors file."""
    path = folder / f"{name}.safetensors"
    state = {k: v.contiguous() for k, v in model.state_dict().items()}
    save_file(state, str(path))
    return path.stat().st_size


# ---------------------------------------------------------------------------- upload bytes
@contextlib.contextmanager
def count_request_bytes() -> Iterator[dict[str, int]]:
    """Count what the local Hub server receives: requests, header bytes, body bytes.

    Wraps the server's request handler for the duration of the block (the server itself only
    logs method and path).
    """
    from tests import hub_server

    handler = hub_server._Handler
    read_body, dispatch = handler._read_body, handler._dispatch
    counts = {"requests": 0, "header_bytes": 0, "body_bytes": 0}
    lock = threading.Lock()

    def counting_read_body(self: Any) -> bytes:
        body = read_body(self)
        with lock:
            counts["body_bytes"] += len(body)
        return body

    def counting_dispatch(self: Any, method: str) -> None:
        # The request line plus CRLF, then the header block as received (ends with a blank line).
        head = len(self.requestline.encode("latin-1")) + 2 + len(self.headers.as_bytes())
        with lock:
            counts["requests"] += 1
            counts["header_bytes"] += head
        dispatch(self, method)

    handler._read_body, handler._dispatch = counting_read_body, counting_dispatch
    try:
        yield counts
    finally:
        handler._read_body, handler._dispatch = read_body, dispatch


def measure_upload(model: PiggybackModel, repo_id: str, token: str, folder: Path) -> dict[str, Any]:
    """Push the task and report request bytes and file sizes."""
    with count_request_bytes() as counts:
        model.push_to_hub(repo_id, token=token)
    local = model.save_pretrained(folder / "artifact", repo_id=repo_id)
    files = {
        name: (local / name).stat().st_size
        for name in ARTIFACT_FILES + CARD_FILES
        if (local / name).is_file()
    }
    artifact = sum(files[name] for name in ARTIFACT_FILES)
    return {
        "requests": counts["requests"],
        "request_header_bytes": counts["header_bytes"],
        "request_body_bytes": counts["body_bytes"],
        "request_total_bytes": counts["header_bytes"] + counts["body_bytes"],
        "file_bytes": files,
        "artifact_file_bytes": artifact,
        "artifact_and_card_file_bytes": sum(files.values()),
        "adapter_size": model.adapter_size(),
    }


# ---------------------------------------------------------------------------- pull time
def interleaved_fresh(
    candidates: dict[str, tuple[Callable[[], Any], Callable[[Any], Any]]],
    repeats: int,
    warmup: int = 1,
) -> dict[str, list[float]]:
    """Time ``run(prepare())`` per candidate, in alternation; ``prepare`` is not timed.

    Loading an adapter wraps the base model it is given, so every load needs a fresh copy of
    the base: ``prepare`` makes it outside the timed region.
    """
    samples: dict[str, list[float]] = {name: [] for name in candidates}
    for index in range(warmup + repeats):
        for name, (prepare, run) in candidates.items():
            state = prepare()
            start = time.perf_counter()
            run(state)
            elapsed = time.perf_counter() - start
            if index >= warmup:
                samples[name].append(elapsed)
    return samples


@contextlib.contextmanager
def hub_offline() -> Iterator[None]:
    """``HF_HUB_OFFLINE=1`` for ``huggingface_hub`` inside the block (cache only)."""
    from huggingface_hub import constants

    previous = constants.HF_HUB_OFFLINE
    constants.HF_HUB_OFFLINE = True
    try:
        yield
    finally:
        constants.HF_HUB_OFFLINE = previous


def measure_pull(base: torch.nn.Module, repo_id: str, local: Path, repeats: int) -> dict[str, Any]:
    """Median seconds of a warm-cache Hub pull, an offline pull, a local load, a forward."""
    x = torch.randn(1, 3, 224, 224)

    def fresh() -> torch.nn.Module:
        return copy.deepcopy(base)

    def pull_hub(model: torch.nn.Module) -> None:
        PiggybackModel.from_pretrained(model, repo_id, token=False)

    def pull_offline(model: torch.nn.Module) -> None:
        with hub_offline():
            PiggybackModel.from_pretrained(model, repo_id, token=False)

    def load_local(model: torch.nn.Module) -> None:
        PiggybackModel.from_pretrained(model, local)

    def fingerprint(model: torch.nn.Module) -> None:
        PiggybackModel(model).base_fingerprint()

    def forward(model: torch.nn.Module) -> None:
        with torch.no_grad():
            model(x)

    threads = torch.get_num_threads()

    def one_thread() -> torch.nn.Module:
        torch.set_num_threads(1)
        return base

    def forward_one_thread(model: torch.nn.Module) -> None:
        forward(model)
        torch.set_num_threads(threads)

    pull_hub(fresh())  # fill the Hub cache: every timed pull below is a warm-cache pull
    with count_request_bytes() as warm_requests:
        pull_hub(fresh())
    samples = interleaved_fresh(
        {
            "hub_pull_warm_cache": (fresh, pull_hub),
            "hub_pull_offline_cache": (fresh, pull_offline),
            "local_folder_load": (fresh, load_local),
            "base_fingerprint": (fresh, fingerprint),
            "forward_batch1_224px": (lambda: base, forward),
            # Two threads on two busy cores can wait on each other; one thread cannot.
            "forward_batch1_224px_1_thread": (one_thread, forward_one_thread),
        },
        repeats,
    )
    medians = {name: statistics.median(values) for name, values in samples.items()}
    forward_s = medians["forward_batch1_224px"]
    return {
        "warm_pull_requests": warm_requests["requests"],
        "warm_pull_request_bytes": warm_requests["header_bytes"] + warm_requests["body_bytes"],
        "median_s": medians,
        # On a shared machine the minimum is the figure least disturbed by other processes.
        "min_s": {name: min(values) for name, values in samples.items()},
        "samples_s": samples,
        "hub_pull_over_local_load": medians["hub_pull_warm_cache"] / medians["local_folder_load"],
        "hub_pull_over_forward": medians["hub_pull_warm_cache"] / forward_s,
        "local_load_over_forward": medians["local_folder_load"] / forward_s,
        "hub_pull_over_forward_1_thread": medians["hub_pull_warm_cache"]
        / medians["forward_batch1_224px_1_thread"],
    }


# ---------------------------------------------------------------------------- driver
def run_model(name: str, hub: Any, folder: Path, repeats: int) -> dict[str, Any]:
    """Upload and pull figures for one backbone."""
    base = make_base(name)
    model = make_task(base)
    repo_id = hub.new_repo_id(f"{name}-task")
    upload = measure_upload(model, repo_id, hub.token, folder)
    base_bytes = safetensors_bytes(base, folder, f"{name}-base")
    full_bytes = safetensors_bytes(make_base(name, NUM_LABELS), folder, f"{name}-full")
    upload["base_model_weight_bytes"] = base_bytes
    upload["full_task_model_weight_bytes"] = full_bytes
    upload["full_model_over_upload"] = full_bytes / upload["request_total_bytes"]
    upload["full_model_over_artifact"] = full_bytes / upload["artifact_file_bytes"]
    pull = measure_pull(base, repo_id, folder / "artifact", repeats)
    mask_stats = model.mask_stats()
    return {
        "zero_fraction_measured": mask_stats.total,
        "masked_weights": mask_stats.num_masked,
        "upload": upload,
        "pull": pull,
    }


def _mb(n: float) -> str:
    return f"{n / 1e6:8.2f} MB"


def print_table(results: dict[str, Any]) -> None:
    """A short human-readable summary of the figures."""
    print("\nupload of one task (push_to_hub, artifact + card) vs a full copy of the weights")
    print(
        f"{'model':24} {'sent':>11} {'artifact':>11} {'+card':>11} {'full model':>11} {'ratio':>7}"
    )
    for name, row in results["models"].items():
        up = row["upload"]
        print(
            f"{name:24} {_mb(up['request_total_bytes'])} {_mb(up['artifact_file_bytes'])} "
            f"{_mb(up['artifact_and_card_file_bytes'])} {_mb(up['full_task_model_weight_bytes'])} "
            f"{up['full_model_over_upload']:6.1f}x"
        )
    print("\npull of one task onto a base object, ms: median (min)")
    keys = [
        "hub_pull_warm_cache",
        "hub_pull_offline_cache",
        "local_folder_load",
        "base_fingerprint",
        "forward_batch1_224px",
        "forward_batch1_224px_1_thread",
    ]
    labels = ["hub warm", "hub offline", "local", "fingerprint", "forward", "fwd 1 thread"]
    print(f"{'model':24} " + " ".join(f"{label:>15}" for label in labels))
    for name, row in results["models"].items():
        med, low = row["pull"]["median_s"], row["pull"]["min_s"]
        cells = [f"{1e3 * med[k]:.0f} ({1e3 * low[k]:.0f})" for k in keys]
        print(f"{name:24} " + " ".join(f"{cell:>15}" for cell in cells))


def run(quick: bool = False) -> dict[str, Any]:
    """Every figure for every model; returns (and writes) the result dict."""
    from tests.hub_server import LocalHub, point_client_at

    torch.set_num_threads(min(2, torch.get_num_threads()))
    repeats = 5 if quick else 11
    results: dict[str, Any] = {
        "zero_fraction": ZERO_FRACTION,
        "num_labels": NUM_LABELS,
        "repeats": repeats,
        "server": "tests/hub_server.py LocalHub on 127.0.0.1 (git-LFS uploads, no Xet)",
        "load_average_at_start": os.getloadavg(),
        "models": {},
    }
    with tempfile.TemporaryDirectory(prefix="pb-bench-hub-") as tmp:
        root = Path(tmp)
        with LocalHub() as hub, point_client_at(hub.endpoint, root / "hf-cache"):
            for name in MODELS:
                folder = root / name
                folder.mkdir()
                results["models"][name] = run_model(name, hub, folder, repeats)
                print(f"{name}: done", flush=True)
    results["load_average_at_end"] = os.getloadavg()
    path = write_result("hub-cpu", results)
    print_table(results)
    print(f"\nwrote {path}")
    return results


def main(argv: list[str] | None = None) -> int:
    """Command line entry point."""
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--quick", action="store_true", help="fewer repeats")
    args = parser.parse_args(argv)
    run(quick=args.quick)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
