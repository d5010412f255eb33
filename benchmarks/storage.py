"""Mask storage: entropy-coded versus bit-packed masks, general-purpose compressors, load time (CPU).

On the ImageNet EfficientNet-Lite0 of the offline demo (``pb_adapters.bases``, 49 masked layers,
3.3 M masked weights), for masks with a fraction ``p`` of zeros at random positions (0.5% .. 30%,
the range learned piggyback masks fall in) and, when one is given or found in ``outputs/``, a
mask learned by ``examples/train.py``:

* **size**: every layer's order-0 entropy ``n * H(zeros / n)`` next to what each encoding stores
  for it: the artifact's ``"ans"`` coder (with its per-layer fallback to packing), 1 bit per
  weight, and zlib / bz2 / lzma (and zstd, if installed) on the packed bytes; totals and the
  worst layer's excess over its entropy;
* **speed**: encoding and decoding every plane of the model, in ns per masked weight;
* **load**: ``PiggybackModel.from_pretrained(base, folder)`` of the same task saved with
  ``mask_encoding="bitpack"`` and ``"ans"``, timed interleaved (warm file cache; a fresh copy of
  the base per load, made outside the timed region), medians and their ratio.

    python -m benchmarks.storage                      # every p, the learned mask if found
    python -m benchmarks.storage --artifact outputs/demo
    python -m benchmarks.storage --quick              # fewer repeats

Writes ``benchmarks/results/storage-cpu.json``.
"""

from __future__ import annotations

import argparse
import bz2
import copy
import importlib.util
import lzma
import os
import statistics
import tempfile
import time
import zlib
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch

from benchmarks.common import write_result
from benchmarks.hub import interleaved_fresh
from pb_adapters import PiggybackConfig, PiggybackModel, get_piggyback_model
from pb_adapters.mask_coding import (
    STREAM_HEADER_MAX_BYTES,
    binary_entropy,
    decode_bit_plane,
    encode_bit_plane,
    order0_entropy_bits,
)
from pb_adapters.serialization import read_adapter_config
from pb_adapters.training.demo import load_demo_backbone
from pb_adapters.utils.bits import count_zero_bits

ZERO_FRACTIONS = [0.005, 0.01, 0.05, 0.10, 0.20, 0.30]
LOAD_ZERO_FRACTION = 0.10
NUM_LABELS = 10
DEFAULT_ARTIFACTS = ["outputs/demo5", "outputs/demo"]


def _compressors() -> dict[str, Callable[[bytes], bytes]]:
    """General-purpose byte compressors at their strongest settings."""
    found: dict[str, Callable[[bytes], bytes]] = {
        "zlib-9": lambda data: zlib.compress(data, 9),
        "bz2-9": lambda data: bz2.compress(data, 9),
        "lzma-9e": lambda data: lzma.compress(data, preset=9 | lzma.PRESET_EXTREME),
    }
    if importlib.util.find_spec("zstandard") is not None:
        import zstandard

        found["zstd-22"] = zstandard.ZstdCompressor(level=22).compress
    return found


# ---------------------------------------------------------------------------- the masks
def random_mask_task(base: torch.nn.Module, zero_fraction: float, seed: int = 1) -> PiggybackModel:
    """A task on a copy of ``base`` whose masks have ``zero_fraction`` zeros at random positions."""
    model = get_piggyback_model(copy.deepcopy(base), PiggybackConfig(num_labels=NUM_LABELS))
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for _, layer in model.adapter_layers():
            scores = layer.mask_scores["default"]
            drop = torch.rand(scores.shape, generator=generator) < zero_fraction
            scores.copy_(torch.where(drop, 0.0, 1e-2))  # 1e-2 keeps (> 5e-3), 0 drops
        for param in model.parameter_groups()["head"]:
            param.normal_(0.0, 0.01, generator=generator)
    return model.eval()


def model_planes(model: PiggybackModel) -> list[tuple[str, torch.Tensor, int]]:
    """``(layer, packed mask, masked weights)`` of every layer of the active adapter."""
    return [
        (path, layer.export_adapter(model.active_adapter)["mask"], layer.base_layer.weight.numel())
        for path, layer in model.adapter_layers()
    ]


def artifact_planes(folder: Path) -> list[tuple[str, torch.Tensor, int]]:
    """The packed masks of a saved artifact, loaded onto the demo backbone."""
    config = read_adapter_config(folder)
    model = PiggybackModel.from_pretrained(load_demo_backbone(config["head"]["num_labels"]), folder)
    return model_planes(model)


# ---------------------------------------------------------------------------- size
def measure_size(planes: list[tuple[str, torch.Tensor, int]]) -> dict[str, Any]:
    """Per-layer and total bytes of every encoding, against the order-0 entropy."""
    compressors = _compressors()
    totals = {"entropy": 0.0, "ans": 0, "bitpack": 0, **dict.fromkeys(compressors, 0)}
    layers = []
    zeros_total = weights_total = coded_layers = 0
    overheads: list[float] = []  # coded bytes minus entropy bytes, per coded layer
    large_excess: list[float] = []  # relative excess of layers with >= 1 KB of entropy
    within_bound = True
    for path, packed, numel in planes:
        zeros = count_zero_bits(packed, numel)
        entropy = order0_entropy_bits(zeros, numel) / 8
        stream = encode_bit_plane(packed)
        stored = packed.numel() if stream is None else len(stream)
        coded_layers += stream is not None
        row = {
            "layer": path,
            "weights": numel,
            "zeros": zeros,
            "entropy_bytes": entropy,
            "ans_bytes": stored,
            "bitpack_bytes": packed.numel(),
        }
        data = packed.numpy().tobytes()
        for name, compress in compressors.items():
            row[f"{name}_bytes"] = len(compress(data))
            totals[name] += row[f"{name}_bytes"]
        if stream is not None:
            overheads.append(stored - entropy)
            within_bound &= stored <= 1.05 * entropy + STREAM_HEADER_MAX_BYTES
            if entropy >= 1024:
                large_excess.append(stored / entropy - 1)
        totals["entropy"] += entropy
        totals["ans"] += stored
        totals["bitpack"] += packed.numel()
        zeros_total += zeros
        weights_total += numel
        layers.append(row)
    return {
        "masked_weights": weights_total,
        "zero_fraction": zeros_total / weights_total,
        "entropy_of_total_fraction_bits": binary_entropy(zeros_total / weights_total),
        "total_bytes": totals,
        "bits_per_masked_weight": {k: 8 * v / weights_total for k, v in totals.items()},
        "over_entropy": {
            k: v / totals["entropy"] if totals["entropy"] else None
            for k, v in totals.items()
            if k != "entropy"
        },
        "coded_layers": coded_layers,
        "layers_total": len(planes),
        # Every coded layer within 5% of its entropy plus the header allowance?
        "all_coded_layers_within_bound": within_bound,
        "max_layer_overhead_bytes": max(overheads, default=0.0),
        "max_relative_excess_layers_over_1kb_entropy": max(large_excess, default=None),
        "layers": layers,
    }


# ---------------------------------------------------------------------------- speed
def measure_speed(planes: list[tuple[str, torch.Tensor, int]], repeats: int) -> dict[str, Any]:
    """Median seconds to encode and to decode every plane of the model (one thread)."""
    streams = [(encode_bit_plane(packed), packed.numel()) for _, packed, _ in planes]
    coded = [(s, size) for s, size in streams if s is not None]
    weights = sum(numel for *_, numel in planes)

    def encode_all() -> None:
        for _, packed, _ in planes:
            encode_bit_plane(packed)

    def decode_all() -> None:
        for stream, size in coded:
            decode_bit_plane(stream, size)

    samples: dict[str, list[float]] = {"encode": [], "decode": []}
    for _ in range(repeats):
        for name, fn in (("encode", encode_all), ("decode", decode_all)):
            start = time.perf_counter()
            fn()
            samples[name].append(time.perf_counter() - start)
    medians = {name: statistics.median(values) for name, values in samples.items()}
    return {
        "median_s": medians,
        "ns_per_masked_weight": {name: 1e9 * s / weights for name, s in medians.items()},
    }


# ---------------------------------------------------------------------------- load
def measure_load(
    base: torch.nn.Module, model: PiggybackModel, folder: Path, repeats: int
) -> dict[str, Any]:
    """from_pretrained of the same task stored bit-packed and entropy-coded, interleaved."""
    paths = {}
    for encoding in ("bitpack", "ans"):
        paths[encoding] = folder / encoding
        model.save_pretrained(paths[encoding], write_card=False, mask_encoding=encoding)

    def fresh() -> torch.nn.Module:
        return copy.deepcopy(base)

    def loader(path: Path) -> Callable[[torch.nn.Module], Any]:
        return lambda fresh_base: PiggybackModel.from_pretrained(fresh_base, path)

    samples = interleaved_fresh(
        {encoding: (fresh, loader(path)) for encoding, path in paths.items()}, repeats
    )
    medians = {name: statistics.median(values) for name, values in samples.items()}
    files = {
        encoding: sum(f.stat().st_size for f in path.iterdir()) for encoding, path in paths.items()
    }
    return {
        "median_s": medians,
        "min_s": {name: min(values) for name, values in samples.items()},
        "ans_over_bitpack": medians["ans"] / medians["bitpack"],
        "artifact_bytes": files,
        "format_versions": {e: read_adapter_config(p)["format_version"] for e, p in paths.items()},
    }


# ---------------------------------------------------------------------------- driver
def _find_artifact(explicit: str | None) -> Path | None:
    candidates = [explicit] if explicit else DEFAULT_ARTIFACTS
    for candidate in candidates:
        if candidate and (Path(candidate) / "adapter_config.json").is_file():
            return Path(candidate)
    if explicit:
        raise SystemExit(f"no artifact in {explicit}")
    return None


def print_table(results: dict[str, Any]) -> None:
    """A short human-readable summary."""
    print("\nbits per masked weight (tf_efficientnet_lite0, 3.3 M masked weights)")
    names = list(next(iter(results["masks"].values()))["size"]["bits_per_masked_weight"])
    print(f"{'mask':>14} " + " ".join(f"{n:>9}" for n in names) + "  max overhead  in bound")
    for label, row in results["masks"].items():
        size = row["size"]
        bits = size["bits_per_masked_weight"]
        print(
            f"{label:>14} "
            + " ".join(f"{bits[n]:9.4f}" for n in names)
            + f" {size['max_layer_overhead_bytes']:10.1f} B  {size['all_coded_layers_within_bound']}"
        )
    print("\nencode / decode, ns per masked weight")
    for label, row in results["masks"].items():
        ns = row["speed"]["ns_per_masked_weight"]
        print(f"{label:>14} {ns['encode']:7.2f} {ns['decode']:7.2f}")
    for label, load in results["load"].items():
        med = load["median_s"]
        print(
            f"\nfrom_pretrained ({label}): bitpack {1e3 * med['bitpack']:.1f} ms, ans "
            f"{1e3 * med['ans']:.1f} ms, ratio {load['ans_over_bitpack']:.3f}"
        )


def run(quick: bool = False, artifact: str | None = None) -> dict[str, Any]:
    """Every figure; returns (and writes) the result dict."""
    torch.set_num_threads(1)  # coding is single-threaded; keep the loads comparable
    repeats = 5 if quick else 15
    base = load_demo_backbone(NUM_LABELS)
    results: dict[str, Any] = {
        "base": "tf_efficientnet_lite0, ImageNet weights of the demo package",
        "repeats": repeats,
        "torch_threads_used": 1,
        "header_allowance_bytes": STREAM_HEADER_MAX_BYTES,
        "load_average_at_start": os.getloadavg(),
        "masks": {},
        "load": {},
    }
    with tempfile.TemporaryDirectory(prefix="pb-bench-storage-") as tmp:
        for zero_fraction in ZERO_FRACTIONS:
            model = random_mask_task(base, zero_fraction)
            planes = model_planes(model)
            label = f"random {zero_fraction:.1%}"
            results["masks"][label] = {
                "size": measure_size(planes),
                "speed": measure_speed(planes, repeats),
            }
            if zero_fraction == LOAD_ZERO_FRACTION:
                results["load"][label] = measure_load(base, model, Path(tmp) / "random", repeats)
            print(f"{label}: done", flush=True)
        found = _find_artifact(artifact)
        if found is not None:
            config = read_adapter_config(found)
            planes = artifact_planes(found)
            label = "learned (demo)"
            results["learned_artifact"] = {
                "folder": str(found),
                "metrics": config.get("metrics"),
                "format_version_read": config["format_version"],
            }
            results["masks"][label] = {
                "size": measure_size(planes),
                "speed": measure_speed(planes, repeats),
            }
            learned = PiggybackModel.from_pretrained(
                load_demo_backbone(config["head"]["num_labels"]), found
            )
            results["load"][label] = measure_load(
                load_demo_backbone(config["head"]["num_labels"]),
                learned,
                Path(tmp) / "learned",
                repeats,
            )
            print(f"{label}: done", flush=True)
    results["load_average_at_end"] = os.getloadavg()
    path = write_result("storage-cpu", results)
    print_table(results)
    print(f"\nwrote {path}")
    return results


def main(argv: list[str] | None = None) -> int:
    """Command line entry point."""
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--quick", action="store_true", help="fewer repeats")
    parser.add_argument("--artifact", help="a learned artifact folder (default: outputs/demo*)")
    args = parser.parse_args(argv)
    run(quick=args.quick, artifact=args.artifact)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
