"""Sizes a config declares are checked against the weights file and a bound before anything is
allocated for them; module paths an artifact names must be layers a mask may be put on.

Each case edits only the small ``adapter_config.json`` of a real artifact (a few KB) to declare
sizes it does not hold: millions of classes, hundreds of thousands of labels, saved modules or
tasks, weights of 2^62 entries. The load must be refused with the model unchanged, and cheaply:
the Python-heap peak (tracemalloc), the largest tensor torch creates (a dispatch mode sees every
allocation) and the time are measured per case.
"""

from __future__ import annotations

import collections
import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import torch
from safetensors.torch import load as safetensors_load
from safetensors.torch import save as safetensors_save

from pb_adapters import PiggybackConfig, PiggybackModel, get_piggyback_model
from pb_adapters.config import MAX_MODULE_NAMES, MAX_NUM_LABELS
from pb_adapters.errors import PbAdaptersError, TargetingError
from pb_adapters.utils.bits import packed_size
from tests.reliability.artifacts import (
    CONFIG,
    WEIGHTS,
    artifact_files,
    measure,
    micro_base,
    model_state,
    packnet,
    rehash,
    same_state,
    trained,
    write_files,
)

OUTCOMES: collections.Counter[tuple[str, str]] = collections.Counter()
PEAKS: dict[str, tuple[int, int, float, int]] = {}  # case -> heap peak, largest tensor, s, config
SOURCES = {
    "norms": artifact_files(trained("norms"), mask_encoding="bitpack"),
    "packnet": artifact_files(packnet()),
}
LARGEST_TENSOR = 64 * 1024  # bytes: the micro model's own tensors are a few hundred


def _labels(config: dict[str, Any], count: int, *, records: bool = False) -> None:
    """Declare ``count`` classes (and, with ``records``, a head recorded at that size)."""
    config["config"].update(num_labels=count, id2label=None, label2id=None)
    config["head"]["num_labels"] = count
    config["id2label"] = config["label2id"] = None
    if records:
        for saved in config["saved_modules"]:
            if saved["kind"] == "head":
                saved["tensors"] = {k: [count, *v[1:]] for k, v in saved["tensors"].items()}


def _id2label(config: dict[str, Any], count: int) -> None:
    labels = {str(i): f"c{i}" for i in range(count)}
    config["config"].update(num_labels=count, id2label=labels, label2id=None)
    config["head"]["num_labels"] = count
    config["id2label"], config["label2id"] = labels, None


def _modules_to_save(config: dict[str, Any], names: list[str]) -> None:
    config["config"]["modules_to_save"] = names


def _tasks(config: dict[str, Any], count: int) -> None:
    first = config["tasks"][0]
    config["tasks"] = [{**first, "name": f"x{i}"} for i in range(count)]


def _module_shape(config: dict[str, Any], shape: list[int]) -> None:
    config["modules"][0].update(shape=shape, numel=int(torch.tensor(shape).prod()))


def _saved_tensor(config: dict[str, Any], shape: list[int]) -> None:
    config["saved_modules"][0]["tensors"]["weight"] = shape


# (case, source artifact, edit of the config)
CASES: list[tuple[str, str, Callable[[dict[str, Any]], None]]] = [
    ("20M classes", "norms", lambda c: _labels(c, 20_000_000)),
    ("2^62 classes", "norms", lambda c: _labels(c, 2**62)),
    ("bound+1 classes", "norms", lambda c: _labels(c, MAX_NUM_LABELS + 1)),
    ("500k classes", "norms", lambda c: _labels(c, 500_000)),
    ("bound classes, head recorded so", "norms", lambda c: _labels(c, MAX_NUM_LABELS, records=True)),
    ("300k labels (12 MB config)", "norms", lambda c: _id2label(c, 300_000)),
    ("180k labels (7 MB config)", "norms", lambda c: _id2label(c, 180_000)),
    ("label2id beyond the classes", "norms", lambda c: c.update(label2id={"a": 10**12})),
    ("200k modules_to_save", "norms", lambda c: _modules_to_save(c, ["x"] * 200_000)),
    ("bound+1 modules_to_save", "norms", lambda c: _modules_to_save(c, ["bn1"] * 4097)),
    ("4096 unknown modules_to_save", "norms", lambda c: _modules_to_save(c, [f"m{i}" for i in range(MAX_MODULE_NAMES)])),
    ("modules_to_save not recorded", "norms", lambda c: _modules_to_save(c, ["conv2"])),
    ("weights of 2^62 entries", "norms", lambda c: _module_shape(c, [2**31, 2**31])),
    ("a saved tensor of 2^40", "norms", lambda c: _saved_tensor(c, [2**40])),
    ("300 tasks", "packnet", lambda c: _tasks(c, 300)),
    ("200 tasks", "packnet", lambda c: _tasks(c, 200)),
    ("task slot 255", "packnet", lambda c: c["config"].update(task_index=255)),
]  # fmt: skip


@pytest.mark.parametrize("case, source, edit", CASES, ids=[c[0] for c in CASES])
@pytest.mark.parametrize("kind", ["wrapper", "base"])
def test_declared_sizes_are_refused_cheaply(
    case: str, source: str, edit: Callable[[dict[str, Any]], None], kind: str, tmp_path: Path
) -> None:
    config = json.loads(SOURCES[source][CONFIG])
    edit(config)
    text = json.dumps(config).encode()
    write_files(tmp_path, {**SOURCES[source], CONFIG: text})
    target = trained("binary", "resident") if kind == "wrapper" else micro_base()
    before = model_state(target)
    if kind == "wrapper":
        error, peak, largest, seconds = measure(lambda: target.load_adapter(tmp_path, "probe"))
    else:
        error, peak, largest, seconds = measure(
            lambda: PiggybackModel.from_pretrained(target, tmp_path)
        )
    assert isinstance(error, PbAdaptersError), f"{case}: {error!r}"
    assert same_state(before, model_state(target))
    # JSON costs up to ~30x its size to parse; nothing else may grow with what is declared
    assert peak < 4 * 1024 * 1024 + 40 * len(text), f"{case}: heap peak {peak}"
    assert largest < LARGEST_TENSOR, f"{case}: a tensor of {largest} bytes"
    assert seconds < 10, f"{case}: {seconds:.1f} s"
    OUTCOMES[("declared size", "refused")] += 1
    old = PEAKS.get(case, (0, 0, 0.0, 0))
    PEAKS[case] = (max(peak, old[0]), max(largest, old[1]), max(seconds, old[2]), len(text))


def test_a_2kb_config_declaring_millions_of_classes(tmp_path: Path) -> None:
    config = json.loads(SOURCES["norms"][CONFIG])
    _labels(config, 5_000_000, records=True)
    text = json.dumps(config).encode()
    assert len(text) < 4096
    write_files(tmp_path, {**SOURCES["norms"], CONFIG: text})
    base = micro_base()
    error, peak, largest, _ = measure(lambda: PiggybackModel.from_pretrained(base, tmp_path))
    assert isinstance(error, PbAdaptersError)
    assert peak < 1024 * 1024 and largest < LARGEST_TENSOR  # 5M x 5 floats would be 100 MB


def test_a_config_too_large_to_read_is_never_written(tmp_path: Path) -> None:
    model = get_piggyback_model(micro_base(), PiggybackConfig(num_labels=200_000))
    with pytest.raises(PbAdaptersError, match="more than"):
        model.save_pretrained(tmp_path / "out", write_card=False)  # 200k labels: > 8 MiB
    assert not (tmp_path / "out").exists()


# ------------------------------------------------------------------------------- module paths
def _mask_tensors(shape: list[int]) -> dict[str, torch.Tensor]:
    numel = int(torch.tensor(shape).prod())
    return {"mask": torch.zeros(packed_size(numel), dtype=torch.uint8)}


def _path_artifact(new_path: str, source_path: str | None) -> dict[str, bytes]:
    """The norms artifact with the mask of ``source_path`` moved to ``new_path`` (tensors
    renamed), or, without a source, a mask added at ``new_path`` shaped like that module."""
    files = SOURCES["norms"]
    config = json.loads(files[CONFIG])
    tensors = safetensors_load(files[WEIGHTS])
    if source_path is None:
        shape = list(micro_base().get_submodule(new_path.split(".base_layer")[0]).weight.shape)
        config["modules"].append(
            {"name": new_path, "type": "Linear", "shape": shape, "numel": 0, "encoding": "bitpack"}
        )
        config["modules"][-1]["numel"] = int(torch.tensor(shape).prod())
        tensors.update({f"layers.{new_path}.{k}": v for k, v in _mask_tensors(shape).items()})
    else:
        record = next(r for r in config["modules"] if r["name"] == source_path)
        record["name"] = new_path
        prefix = f"layers.{source_path}."
        tensors = {
            (f"layers.{new_path}." + k[len(prefix) :] if k.startswith(prefix) else k): v
            for k, v in tensors.items()
        }
    weights = safetensors_save(tensors, metadata={"pb_adapters": "{}"})
    return rehash({CONFIG: json.dumps(config).encode(), WEIGHTS: weights})


PATHS = [
    ("conv1.base_layer", "conv1"),  # into an adapter layer: would nest adapter layers
    ("hidden.base_layer", "hidden"),
    ("conv1.base_layer.base_layer", "conv1"),
    ("fc", None),  # the head: the mask would be dropped whenever the task is active
    ("fc.base_layer", None),
    ("bn1", None),
    ("", "conv1"),
    ("conv1.", "conv1"),
    (".conv1", "conv1"),
    ("conv1.weight", "conv1"),
    ("conv1..x", "conv1"),
    ("base_model.conv1", "conv1"),
    ("task_modules", "conv1"),
]


@pytest.mark.parametrize("path, source_path", PATHS, ids=[p or "<root>" for p, _ in PATHS])
@pytest.mark.parametrize("kind", ["wrapper", "base"])
def test_module_paths_outside_the_injectable_set(
    path: str, source_path: str | None, kind: str, tmp_path: Path
) -> None:
    if path == "fc.base_layer" and kind == "base":
        path = "fc"  # the plain base has no adapter layer at the head either way
    write_files(tmp_path / "bad", _path_artifact(path, source_path))
    target = trained("binary", "resident") if kind == "wrapper" else micro_base()
    before = model_state(target)
    with pytest.raises(PbAdaptersError):
        if kind == "wrapper":
            target.load_adapter(tmp_path / "bad", "probe")
        else:
            PiggybackModel.from_pretrained(target, tmp_path / "bad")
    assert same_state(before, model_state(target))
    OUTCOMES[("module path", "refused")] += 1
    # every later legitimate load still works, and so does a save of what it loaded
    write_files(tmp_path / "good", SOURCES["norms"])
    if kind == "base":
        target = PiggybackModel.from_pretrained(target, tmp_path / "good", "probe")
    else:
        target.load_adapter(tmp_path / "good", "probe")
    target.save_pretrained(tmp_path / "again", "probe", write_card=False)
    PiggybackModel.from_pretrained(micro_base(), tmp_path / "again")
    assert not any(
        type(m.base_layer).__name__.endswith("Layer") for _, m in target.adapter_layers()
    )


@pytest.mark.parametrize("targets", [["conv1.base_layer"], ["fc"], ".*base_layer", ["bn1"]])
def test_target_modules_outside_the_injectable_set(targets: Any) -> None:
    model = trained("binary", "resident")
    before = model_state(model)
    with pytest.raises(TargetingError):
        model.add_adapter("probe", PiggybackConfig(target_modules=targets))
    assert same_state(before, model_state(model))
    OUTCOMES[("target_modules path", "refused")] += 1


def test_report() -> None:
    """Print the cases of this module and what each refusal cost (run with ``-s``)."""
    print(dict(sorted(OUTCOMES.items())))
    for case, (peak, largest, seconds, size) in PEAKS.items():
        print(f"{case}: config {size:,} B, heap peak {peak:,} B, largest tensor {largest:,} B, "
              f"{seconds * 1000:.0f} ms")  # fmt: skip
