"""Property-based fuzz of the artifact loader with hostile and broken artifacts.

Valid artifacts are saved through the public API and then mutated: bytes truncated, flipped,
inserted or dropped; safetensors headers with wrong dtypes, shapes, offsets, missing and extra
tensors, lying or huge lengths; configs with wrong types and values, unknown versions and methods;
tensors with bit counts that do not fit, stray padding bits, impossible ternary planes. Every load
either succeeds or raises a :class:`~pb_adapters.errors.PbAdaptersError`; a refused load leaves the
model bit-identical, and no load allocates more than a small bound.

``PB_FUZZ_EXAMPLES`` (examples per test, default 500) runs a longer fuzz; ``PB_FUZZ_REPORT`` names
a JSON file that receives the outcome counts.
"""

from __future__ import annotations

import collections
import json
import math
import os
import shutil
import tempfile
import tracemalloc
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from safetensors.torch import load as safetensors_load
from safetensors.torch import save as safetensors_save

from pb_adapters import PiggybackModel
from pb_adapters.errors import PbAdaptersError
from tests.reliability.artifacts import (
    CONFIG,
    VARIANTS,
    WEIGHTS,
    artifact_files,
    join_safetensors,
    micro_base,
    model_state,
    rehash,
    same_state,
    split_safetensors,
    trained,
    write_files,
)

EXAMPLES = int(os.environ.get("PB_FUZZ_EXAMPLES", "500"))
FUZZ = settings(
    max_examples=EXAMPLES,
    deadline=None,
    derandomize=True,
    database=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)
#: Python-heap peak allowed for one load of a ~1 KB artifact (tensor buffers are bounded by the
#: model's own shapes, which the loader checks first).
PEAK_BYTES = 4 * 1024 * 1024
TRACE_EVERY = 4

OUTCOMES: collections.Counter[tuple[str, str]] = collections.Counter()
SOURCES = {name: artifact_files(trained(name)) for name in VARIANTS}
TENSORS = {
    name: (split_safetensors(files[WEIGHTS])[0]["__metadata__"], safetensors_load(files[WEIGHTS]))
    for name, files in SOURCES.items()
}

# safetensors' dtype names, including ones an artifact never holds.
ST_DTYPES = ["BOOL", "U8", "I8", "I16", "U16", "F16", "BF16", "I32", "U32", "F32", "F64", "I64"]
ST_DTYPES += ["U64", "F8_E4M3", "F8_E5M2", "XX", ""]
HUGE = [2**31, 2**32 + 1, 2**40, 2**62, 2**63 - 1, 2**64 - 1, -1, -(2**63)]
ints = st.one_of(st.integers(-3, 300), st.sampled_from(HUGE))
json_values = st.recursive(
    st.one_of(
        st.none(),
        st.booleans(),
        ints,
        st.floats(allow_nan=True, allow_infinity=True),
        st.text(max_size=12),
    ),
    lambda inner: st.one_of(
        st.lists(inner, max_size=4), st.dictionaries(st.text(max_size=8), inner, max_size=4)
    ),
    max_leaves=8,
)


# ------------------------------------------------------------------------------- loading
@pytest.fixture(scope="module")
def workspace(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, Any]]:
    """The folder mutated artifacts are written to, and models kept between examples."""
    # A memory file system where there is one: thousands of tiny writes, 50x faster than disk.
    shm = Path("/dev/shm")
    parent = tmp_path_factory.mktemp("fuzz")
    if shm.is_dir() and os.access(shm, os.W_OK):
        parent = Path(tempfile.mkdtemp(prefix="pb-fuzz-", dir=shm))
    yield {"folder": parent / "artifact", "models": {}, "cases": 0}
    shutil.rmtree(parent, ignore_errors=True)
    report = os.environ.get("PB_FUZZ_REPORT")
    if report:
        rows = [{"family": f, "outcome": o, "cases": n} for (f, o), n in sorted(OUTCOMES.items())]
        Path(report).write_text(json.dumps(rows, indent=2) + "\n")


def _target(workspace: dict[str, Any], kind: str) -> Any:
    """A model to load onto: a wrapper with a resident adapter, or a plain base."""
    models = workspace["models"]
    if kind not in models:
        model = trained("binary", "resident", seed=7) if kind == "wrapper" else micro_base()
        models[kind] = (model, model_state(model))
    return models[kind]


def _load(target: Any, folder: Path) -> None:
    if isinstance(target, PiggybackModel):
        target.load_adapter(folder, adapter_name="probe")
    else:
        PiggybackModel.from_pretrained(target, folder, adapter_name="probe")


def check_load(workspace: dict[str, Any], family: str, files: dict[str, bytes], kind: str) -> None:
    """Load ``files``; assert the outcome is a success or a clean, harmless refusal; count it."""
    folder: Path = workspace["folder"]
    write_files(folder, files)
    model, before = _target(workspace, kind)
    workspace["cases"] += 1
    traced = workspace["cases"] % TRACE_EVERY == 0  # tracing costs 3x: sample it
    if traced:
        tracemalloc.start()
    try:
        _load(model, folder)
    except PbAdaptersError as err:
        outcome = type(err).__name__
        assert str(err), "an error without a message"
    else:
        outcome = "accepted"
        del workspace["models"][kind]  # changed on purpose: start the next example afresh
    finally:
        if traced:
            peak = tracemalloc.get_traced_memory()[1]
            tracemalloc.stop()
    assert not traced or peak < PEAK_BYTES, (
        f"a load of {sum(map(len, files.values()))} bytes allocated {peak}"
    )
    if outcome != "accepted":
        assert same_state(before, model_state(model)), f"a refused load ({outcome}) changed it"
    OUTCOMES[(family, outcome)] += 1


targets = st.sampled_from(["wrapper", "base"])
variants = st.sampled_from(sorted(VARIANTS))


# ------------------------------------------------------------------------------- raw bytes
@st.composite
def byte_mutations(draw: st.DrawFn) -> dict[str, bytes]:
    files = dict(SOURCES[draw(variants)])
    name = draw(st.sampled_from([CONFIG, WEIGHTS]))
    data = bytearray(files[name])
    op = draw(st.sampled_from(["truncate", "flip", "insert", "delete", "empty", "append", "drop"]))
    at = draw(st.integers(0, len(data)))
    if op == "truncate":
        del data[at:]
    elif op == "flip":
        for pos in draw(st.lists(st.integers(0, len(data) - 1), min_size=1, max_size=4)):
            data[pos] ^= 1 << draw(st.integers(0, 7))
    elif op == "insert":
        data[at:at] = draw(st.binary(min_size=1, max_size=16))
    elif op == "delete":
        del data[at : at + draw(st.integers(1, 16))]
    elif op == "empty":
        data = bytearray()
    elif op == "append":
        data += draw(st.binary(min_size=1, max_size=64))
    files[name] = bytes(data)
    if op == "drop":
        del files[name]
    return rehash(files) if name == WEIGHTS and draw(st.booleans()) else files


@FUZZ
@given(files=byte_mutations(), kind=targets)
def test_fuzz_raw_bytes(workspace: dict[str, Any], files: dict[str, bytes], kind: str) -> None:
    check_load(workspace, "raw bytes", files, kind)


# ------------------------------------------------------------------------------- safetensors header
@st.composite
def header_mutations(draw: st.DrawFn) -> dict[str, bytes]:
    files = dict(SOURCES[draw(variants)])
    header, data = split_safetensors(files[WEIGHTS])
    keys = sorted(k for k in header if k != "__metadata__")
    key = draw(st.sampled_from(keys))
    op = draw(
        st.sampled_from(
            ["dtype", "shape", "offsets", "drop", "extra", "rename", "metadata", "value", "size"]
        )
    )
    size = None
    if op == "dtype":
        header[key]["dtype"] = draw(st.sampled_from(ST_DTYPES))
    elif op == "shape":
        header[key]["shape"] = draw(st.lists(ints, max_size=4))
    elif op == "offsets":
        header[key]["data_offsets"] = draw(st.lists(ints, min_size=2, max_size=3))
    elif op == "drop":
        del header[key]
    elif op == "extra":
        start = len(data)
        header[draw(st.text(min_size=1, max_size=20))] = {
            "dtype": "U8",
            "shape": [4],
            "data_offsets": [start, start + 4],
        }
        data += b"\x00" * 4
    elif op == "rename":
        header[key + draw(st.sampled_from(["x", ".", "/..", "\x00"]))] = header.pop(key)
    elif op == "metadata":
        header["__metadata__"] = draw(json_values)
    elif op == "value":
        header[key] = draw(json_values)
    else:
        size = draw(st.one_of(st.integers(0, 4096), st.sampled_from(HUGE[:6])))
    files[WEIGHTS] = join_safetensors(header, data, size=size)
    return rehash(files) if draw(st.integers(0, 9)) else files


@FUZZ
@given(files=header_mutations(), kind=targets)
def test_fuzz_safetensors_header(
    workspace: dict[str, Any], files: dict[str, bytes], kind: str
) -> None:
    check_load(workspace, "safetensors header", files, kind)


# ------------------------------------------------------------------------------- config JSON
def _paths(node: Any, prefix: tuple = ()) -> list[tuple]:
    """Every path into a JSON tree (the root excluded)."""
    found = []
    children = (
        node.items()
        if isinstance(node, dict)
        else enumerate(node)
        if isinstance(node, list)
        else []
    )
    for key, child in children:
        found.append((*prefix, key))
        found.extend(_paths(child, (*prefix, key)))
    return found


@st.composite
def config_mutations(draw: st.DrawFn) -> dict[str, bytes]:
    files = dict(SOURCES[draw(variants)])
    config = json.loads(files[CONFIG])
    op = draw(st.sampled_from(["replace", "delete", "add", "version", "method", "root", "deep"]))
    if op in ("replace", "delete", "add"):
        path = draw(st.sampled_from(_paths(config)))
        parent = config
        for part in path[:-1]:
            parent = parent[part]
        if op == "replace":
            parent[path[-1]] = draw(json_values)
        elif op == "delete":
            del parent[path[-1]]
        elif isinstance(parent, dict):
            parent[draw(st.text(max_size=10))] = draw(json_values)
        else:
            parent.append(draw(json_values))
    elif op == "version":
        config["format_version"] = draw(ints)
    elif op == "method":
        value = draw(
            st.one_of(st.text(max_size=12), st.sampled_from(["ksm", "packnet", "Piggyback"]))
        )
        config["method"] = value
        if draw(st.booleans()):
            config["config"]["method"] = value
    elif op == "root":
        config = draw(json_values)
    text = json.dumps(config).encode()
    if op == "deep":
        depth = draw(st.integers(50, 100_000))
        text = b"[" * depth + b"]" * depth
    files[CONFIG] = text
    return files


@FUZZ
@given(files=config_mutations(), kind=targets)
def test_fuzz_config_json(workspace: dict[str, Any], files: dict[str, bytes], kind: str) -> None:
    check_load(workspace, "config JSON", files, kind)


# ------------------------------------------------------------------------------- tensor values
@st.composite
def tensor_mutations(draw: st.DrawFn) -> dict[str, bytes]:
    variant = draw(variants)
    files = dict(SOURCES[variant])
    metadata, tensors = dict(TENSORS[variant][0]), dict(TENSORS[variant][1])
    key = draw(st.sampled_from(sorted(tensors)))
    tensor = tensors[key]
    op = draw(
        st.sampled_from(["byte", "padding", "sign", "dtype", "longer", "shorter", "nan", "drop"])
    )
    if op == "byte" and tensor.numel():
        flat = tensor.reshape(-1).view(torch.uint8).clone()
        flat[draw(st.integers(0, flat.numel() - 1))] ^= 1 << draw(st.integers(0, 7))
        tensors[key] = flat.view(tensor.dtype).reshape(tensor.shape)
    elif op == "padding":
        masks = sorted(k for k in tensors if k.endswith((".mask", ".sign")))
        key = draw(st.sampled_from(masks))
        tensors[key] = tensors[key].clone()
        tensors[key][-1] |= draw(st.integers(1, 255))
    elif op == "sign":
        signs = sorted(k for k in tensors if k.endswith(".sign")) or sorted(tensors)
        key = draw(st.sampled_from(signs))
        tensors[key] = torch.full_like(tensors[key], 255)
    elif op == "dtype":
        tensors[key] = tensor.to(
            draw(
                st.sampled_from(
                    [torch.float32, torch.int64, torch.uint8, torch.float64, torch.bool]
                )
            )
        )
    elif op == "longer":
        tensors[key] = torch.cat([tensor.reshape(-1), tensor.reshape(-1)[:1]])
    elif op == "shorter":
        tensors[key] = tensor.reshape(-1)[:-1].clone()
    elif op == "nan" and tensor.is_floating_point():
        tensors[key] = torch.full_like(tensor, float("nan"))
    elif op == "drop":
        del tensors[key]
    files[WEIGHTS] = safetensors_save(tensors, metadata=metadata)
    return rehash(files)


@FUZZ
@given(files=tensor_mutations(), kind=targets)
def test_fuzz_tensor_values(workspace: dict[str, Any], files: dict[str, bytes], kind: str) -> None:
    check_load(workspace, "tensor values", files, kind)


@FUZZ
@given(config_from=variants, weights_from=variants, fix=st.booleans(), kind=targets)
def test_fuzz_mixed_pairs(
    workspace: dict[str, Any], config_from: str, weights_from: str, fix: bool, kind: str
) -> None:
    files = {CONFIG: SOURCES[config_from][CONFIG], WEIGHTS: SOURCES[weights_from][WEIGHTS]}
    check_load(workspace, "mixed pairs", rehash(files) if fix else files, kind)


# ------------------------------------------------------------------------------- targeted cases
def test_unmutated_artifacts_load(workspace: dict[str, Any]) -> None:
    for name, files in SOURCES.items():
        check_load(workspace, "unmutated", files, "wrapper")
        assert OUTCOMES[("unmutated", "accepted")] >= 1, name


def test_oversized_weights_are_refused_unread(tmp_path: Path) -> None:
    files = dict(SOURCES["binary"])
    header, data = split_safetensors(files[WEIGHTS])
    files[WEIGHTS] = join_safetensors(header, data) + b"\x00" * (64 * 1024 * 1024)
    write_files(tmp_path, rehash(files))
    model = trained("binary", "resident")
    before = model_state(model)
    tracemalloc.start()
    with pytest.raises(PbAdaptersError, match=r"more than the \d+ bytes"):
        model.load_adapter(tmp_path, adapter_name="probe")
    peak = tracemalloc.get_traced_memory()[1]
    tracemalloc.stop()
    assert peak < 1024 * 1024  # the 64 MiB file was never read
    assert same_state(before, model_state(model))


@pytest.mark.parametrize("size", [2**40, 2**64 - 1, 100 * 1024 * 1024])
def test_header_claiming_terabytes_is_refused(tmp_path: Path, size: int) -> None:
    files = dict(SOURCES["ternary"])
    header, data = split_safetensors(files[WEIGHTS])
    files[WEIGHTS] = join_safetensors(header, data, size=size)
    write_files(tmp_path, rehash(files))
    with pytest.raises(PbAdaptersError, match="not a valid safetensors"):
        PiggybackModel.from_pretrained(micro_base(), tmp_path)


def test_nothing_is_unpickled(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import pickle

    def refuse(*args: Any, **kwargs: Any) -> Any:
        raise AssertionError("the loader unpickled something")

    monkeypatch.setattr(pickle, "load", refuse)
    monkeypatch.setattr(pickle, "loads", refuse)
    monkeypatch.setattr(torch, "load", refuse)
    write_files(tmp_path, SOURCES["norms"])
    model = PiggybackModel.from_pretrained(micro_base(), tmp_path)
    assert model.active_adapter == "default"
    assert math.isfinite(float(model(torch.zeros(1, 3, 8, 8)).sum()))
