"""Hostile and broken training checkpoints: a resume reads them without pickle, checks them, and
refuses them before it changes the model or writes anything.

A real run writes its checkpoints; one of them (mid-epoch, with a best epoch) is mutated and
resumed from (``PiggybackTrainer.setup`` with ``resume_from_checkpoint`` set to the copy). Mutation
families: raw bytes of any file (truncated, flipped, inserted, deleted, emptied, appended to,
removed, replaced by a pickle that would run code, by a folder or a link to ``/dev/zero``), the
safetensors files' contents (tensors dropped, added, renamed, retyped, reshaped, made NaN), and
the JSON files' fields (replaced by random JSON, deleted, added, a non-object root, deep
nesting). Half of the byte mutations, and all the others, also fix up the manifest's size and
hash so the parsers see them. Every case must either resume or raise a
:class:`~pb_adapters.errors.PbAdaptersError`; a refused one leaves the model bit-identical, the
output folder byte-identical, and writes no file. Nothing is ever unpickled: ``pickle`` and
``torch.load`` are replaced by functions that fail, and a planted payload would create a marker.

``PB_FUZZ_EXAMPLES`` (default 500) sets the examples per test at a fifth of that here (a resume
costs more than an artifact load); ``PB_FUZZ_REPORT`` names a JSON file for the outcome counts
(``<name>.checkpoints.json``).
"""

from __future__ import annotations

import collections
import contextlib
import json
import os
import pickle
import shutil
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from unittest import mock

import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from safetensors.torch import load as safetensors_load
from safetensors.torch import save as safetensors_save

from pb_adapters.errors import PbAdaptersError
from pb_adapters.training.checkpoint_io import sha256_file
from pb_adapters.training.checkpoints import latest_checkpoint
from pb_adapters.training.errors import CheckpointError
from pb_adapters.training.run_state import STATE_FILE
from tests.reliability import children

EXAMPLES = max(20, int(os.environ.get("PB_FUZZ_EXAMPLES", "500")) // 5)
# derandomized: every run tries the same cases
FUZZ = settings(max_examples=EXAMPLES, deadline=None, derandomize=True, database=None)
FUZZ = settings(FUZZ, suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
OUTCOMES: collections.Counter[tuple[str, str]] = collections.Counter()

TENSOR_FILES = [
    "model.safetensors",
    "optimizer.safetensors",
    "best_state.safetensors",
    "rng_state_0.safetensors",
]
JSON_FILES = ["optimizer.json", "scheduler.json", STATE_FILE]
FILES = TENSOR_FILES + JSON_FILES
#: The pickle files Accelerate's ``save_state`` writes (and ``load_state`` would unpickle).
ACCELERATE_PICKLES = [
    "optimizer.bin",
    "scheduler.bin",
    "random_states_0.pkl",
    "custom_checkpoint_0.pkl",
    "scaler.pt",
    "sampler.bin",
    "pytorch_model.bin",
]


class _Payload:
    """Unpickling this creates ``marker``: proof that a pickle ran code."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self) -> tuple[Any, ...]:
        return (open, (str(self.marker), "w"))


def payload(marker: Path) -> bytes:
    """A pickle that creates ``marker`` when loaded."""
    return pickle.dumps(_Payload(marker))


# ------------------------------------------------------------------------------ watching
_WRITES: list[str] | None = None


def _audit(event: str, args: tuple[Any, ...]) -> None:
    """Record file writes and pickle look-ups while a resume runs (hooks cannot be removed)."""
    if _WRITES is None:
        return
    if event == "pickle.find_class":
        _WRITES.append(f"unpickled {args}")
    elif event == "open" and args and isinstance(args[0], (str, bytes, os.PathLike)):
        mode, flags = (args[1] or ""), (args[2] if len(args) > 2 else 0) or 0
        writing = any(c in str(mode) for c in "wax+") or flags & (os.O_WRONLY | os.O_RDWR)
        if writing:
            _WRITES.append(os.fsdecode(args[0]))
    elif event in ("os.rename", "os.replace", "os.remove", "os.mkdir", "os.rmdir"):
        _WRITES.append(f"{event} {args[0]!r}")


sys.addaudithook(_audit)


def _refuse_unpickling(*args: Any, **kwargs: Any) -> Any:
    raise AssertionError("a checkpoint resume tried to unpickle something")


@contextlib.contextmanager
def no_unpickling() -> Iterator[list[str]]:
    """Make every unpickling entry point fail and record the files written meanwhile."""
    global _WRITES
    _WRITES = []
    patches = [
        mock.patch("pickle.load", _refuse_unpickling),
        mock.patch("pickle.loads", _refuse_unpickling),
        mock.patch("pickle.Unpickler", _refuse_unpickling),
        mock.patch("torch.load", _refuse_unpickling),
    ]
    try:
        with contextlib.ExitStack() as stack:
            for patch in patches:
                stack.enter_context(patch)
            yield _WRITES
    finally:
        _WRITES = None


# ------------------------------------------------------------------------------ the bench
def _tree(folder: Path) -> dict[str, bytes]:
    return {
        str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()
    }


def _model_state(trainer: Any) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in trainer.model.state_dict().items()}


def _same(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> bool:
    return a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


@pytest.fixture(scope="module")
def bench(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, Any]]:
    """A finished run's mid-epoch checkpoint, and a trainer that resumes from mutated copies."""
    root = tmp_path_factory.mktemp("checkpoint-fuzz")
    data = str(children.write_image_folder(root / "data"))
    source = children.make_trainer(data, str(root / "ref"), save_total_limit=None)
    source.train()
    checkpoint = root / "ref" / "checkpoints" / "step-00000006"  # epoch 2, batch 2
    assert sorted(p.name for p in checkpoint.iterdir()) == sorted(FILES)
    out = root / "out"
    out.mkdir()
    (out / "metrics.jsonl").write_text('{"epoch": 1, "note": "an earlier run"}\n')
    (out / "results.json").write_text("{}\n")
    case = root / "case"
    probe = children.make_trainer(data, str(out), str(case))
    yield {
        "pristine": {name: (checkpoint / name).read_bytes() for name in FILES},
        "case": case,
        "out": out,
        "outputs": _tree(out),
        "trainer": probe,
        "model": _model_state(probe),
        "marker": root / "marker",
    }
    report = os.environ.get("PB_FUZZ_REPORT")
    if report:
        rows = [{"family": f, "outcome": o, "cases": n} for (f, o), n in sorted(OUTCOMES.items())]
        Path(report).with_suffix(".checkpoints.json").write_text(json.dumps(rows, indent=2) + "\n")


def _write_case(bench: dict[str, Any], files: dict[str, Any], rehash: set[str]) -> None:
    """Write the case folder: ``files`` (bytes, ``None`` for absent, ``"dir"``, ``"zero"``),
    with the manifest entries of ``rehash`` updated to the files as written."""
    case: Path = bench["case"]
    shutil.rmtree(case, ignore_errors=True)
    case.mkdir()
    for name, content in files.items():
        if content is None or name == STATE_FILE:
            continue
        if content == "dir":
            (case / name).mkdir()
        elif content == "zero":
            (case / name).symlink_to("/dev/zero")
        else:
            (case / name).write_bytes(content)
    state = files.get(STATE_FILE)
    rehash = rehash - {STATE_FILE}  # the state holds the manifest; nothing records its hash
    if isinstance(state, bytes) and rehash:
        data = json.loads(state)
        for name in rehash:
            if (case / name).is_file() and isinstance(data.get("files"), dict):
                size, digest = (case / name).stat().st_size, sha256_file(case / name)
                data["files"][name] = {"bytes": size, "sha256": digest}
        state = json.dumps(data).encode()
    if isinstance(state, bytes):
        (case / STATE_FILE).write_bytes(state)
    elif state is not None:
        (case / STATE_FILE).mkdir()


def resume(bench: dict[str, Any], family: str) -> str:
    """Resume from the case folder; check the invariants; return and count the outcome."""
    trainer = bench["trainer"]
    try:
        with no_unpickling() as writes:
            trainer.setup()
    except PbAdaptersError as err:
        outcome = f"refused: {type(err).__name__}"
        assert _same(_model_state(trainer), bench["model"]), "a refused resume changed the model"
        assert _tree(bench["out"]) == bench["outputs"], "a refused resume changed the outputs"
        assert not writes, f"a refused resume wrote {writes[:3]}"
    else:
        outcome = "accepted"
        assert not [w for w in writes if w.startswith("unpickled")]
        trainer._run = None  # undo the accepted resume for the next case
        with torch.no_grad():
            for key, value in trainer.model.state_dict().items():
                value.copy_(bench["model"][key])
        for name, content in bench["outputs"].items():
            (bench["out"] / name).write_bytes(content)
    assert not bench["marker"].exists(), "a planted pickle ran"
    OUTCOMES[(family, outcome)] += 1
    return outcome


# ------------------------------------------------------------------------------ controls
def test_the_planted_payload_is_live_and_the_pristine_checkpoint_resumes(
    bench: dict[str, Any], tmp_path: Path
) -> None:
    marker = tmp_path / "control"
    pickle.loads(payload(marker))
    assert marker.exists()  # the payload really runs code when unpickled
    _write_case(bench, dict(bench["pristine"]), set())
    assert resume(bench, "unmutated") == "accepted"


def test_planted_accelerate_pickles_are_never_opened(bench: dict[str, Any]) -> None:
    files: dict[str, Any] = dict(bench["pristine"])
    for name in ACCELERATE_PICKLES:
        files[name] = payload(bench["marker"])
    _write_case(bench, files, set())
    for name in ACCELERATE_PICKLES:
        assert (bench["case"] / name).is_file()
    assert resume(bench, "planted pickles") == "accepted"  # ignored: not in the manifest
    # a checkpoint of the earlier, pickle-based format: refused, its pickles left alone
    legacy = json.loads(files[STATE_FILE])
    del legacy["files"]
    files[STATE_FILE] = json.dumps(legacy).encode()
    _write_case(bench, files, set())
    never_loaded = "pickle files; those are never loaded"
    with pytest.raises(CheckpointError, match=never_loaded), no_unpickling():
        bench["trainer"].setup()
    assert resume(bench, "planted pickles") == "refused: CheckpointError"
    # the payload under one of the checkpoint's own names, hash fixed up: refused by the parser
    for name in FILES:
        files = {**bench["pristine"], name: payload(bench["marker"])}
        _write_case(bench, files, {name})
        assert resume(bench, "planted pickles") == "refused: CheckpointError"


def test_no_checkpoint_and_a_missing_path_are_checkpoint_errors(bench: dict[str, Any]) -> None:
    trainer = bench["trainer"]
    shutil.rmtree(bench["case"], ignore_errors=True)
    with pytest.raises(CheckpointError, match="not a complete checkpoint"):
        trainer.setup()
    trainer.args.resume_from_checkpoint = "latest"  # out/ has no checkpoints folder
    try:
        with pytest.raises(CheckpointError, match="no checkpoint to resume from"):
            trainer.setup()
    finally:
        trainer.args.resume_from_checkpoint = str(bench["case"])
    assert _tree(bench["out"]) == bench["outputs"]


# ------------------------------------------------------------------------------ raw bytes
def _mutate_bytes(data: bytes, op: str, draw: Any) -> Any:
    n = len(data)
    if op == "truncate":
        return data[: draw(st.integers(0, max(0, n - 1)))]
    if op == "flip":
        out = bytearray(data)
        pos = draw(st.integers(0, n - 1))
        out[pos] ^= 1 << draw(st.integers(0, 7))
        return bytes(out)
    if op == "insert":
        pos = draw(st.integers(0, n))
        return data[:pos] + draw(st.binary(min_size=1, max_size=16)) + data[pos:]
    if op == "delete":
        pos = draw(st.integers(0, n - 1))
        return data[:pos] + data[pos + draw(st.integers(1, 16)) :]
    if op == "append":
        return data + draw(st.binary(min_size=1, max_size=64))
    return {"empty": b"", "remove": None, "dir": "dir", "zero": "zero"}[op]


@FUZZ
@given(data=st.data())
def test_raw_byte_mutations(bench: dict[str, Any], data: st.DataObject) -> None:
    name = data.draw(st.sampled_from(FILES))
    ops = ["truncate", "flip", "insert", "delete", "append", "empty", "remove", "dir", "zero"]
    op = data.draw(st.sampled_from(ops))
    files: dict[str, Any] = dict(bench["pristine"])
    files[name] = _mutate_bytes(files[name], op, data.draw)
    rehash = {name} if data.draw(st.booleans()) else set()
    _write_case(bench, files, rehash)
    resume(bench, "raw bytes")


# ------------------------------------------------------------------------------ tensors
def _mutate_tensors(tensors: dict[str, torch.Tensor], draw: Any) -> dict[str, torch.Tensor]:
    keys = sorted(tensors)
    key = draw(st.sampled_from(keys))
    ops = ["drop", "add", "rename", "dtype", "shape", "nan", "inf", "zero", "negative"]
    op = draw(st.sampled_from(ops))
    out = dict(tensors)
    value = out[key]
    if op == "drop":
        del out[key]
    elif op == "add":
        out[key + draw(st.sampled_from([".extra", "/extra", "x"]))] = torch.zeros(3)
    elif op == "rename":
        out[key + "_renamed"] = out.pop(key)
    elif op == "dtype":
        dtype = draw(st.sampled_from([torch.float16, torch.float64, torch.int64, torch.uint8]))
        out[key] = value.to(dtype)
    elif op == "shape":
        flat = value.reshape(-1)
        out[key] = draw(
            st.sampled_from([flat, torch.cat([flat, flat[:1]]) if flat.numel() else flat, flat[:0]])
        )
    elif value.is_floating_point():
        fill = {"nan": float("nan"), "inf": float("inf"), "zero": 0.0, "negative": -1.0}[op]
        out[key] = torch.full_like(value, fill)
    return out


@FUZZ
@given(data=st.data())
def test_tensor_mutations(bench: dict[str, Any], data: st.DataObject) -> None:
    name = data.draw(st.sampled_from(TENSOR_FILES))
    raw = bench["pristine"][name]
    tensors = _mutate_tensors(safetensors_load(raw), data.draw)
    header = json.loads(raw[8 : 8 + int.from_bytes(raw[:8], "little")])
    metadata = header.get("__metadata__")  # the random states' scalars live there
    files = {**bench["pristine"], name: safetensors_save(tensors, metadata=metadata)}
    _write_case(bench, files, {name})
    resume(bench, "tensors")


# ------------------------------------------------------------------------------ JSON
json_values = st.recursive(
    st.one_of(
        st.none(),
        st.booleans(),
        st.integers(-3, 10**6) | st.sampled_from([2**63, -(2**63), 10**400]),
        st.floats(allow_nan=True, allow_infinity=True),
        st.text(max_size=8),
    ),
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=6), inner),
    max_leaves=6,
)


def _paths(value: Any, prefix: tuple[Any, ...] = ()) -> list[tuple[Any, ...]]:
    """Every path to a value inside a JSON document."""
    found = [prefix] if prefix else []
    if isinstance(value, dict):
        for k, v in value.items():
            found += _paths(v, (*prefix, k))
    elif isinstance(value, list):
        for i, v in enumerate(value[:4]):
            found += _paths(v, (*prefix, i))
    return found


def _mutate_json(document: Any, draw: Any) -> Any:
    op = draw(st.sampled_from(["replace", "replace", "delete", "add", "root", "nest"]))
    if op == "root":
        return draw(json_values)
    if op == "nest":
        depth = draw(st.sampled_from([50, 5000, 100000]))
        return "[" * depth + "]" * depth
    path = draw(st.sampled_from(_paths(document)))
    parent = document
    for step in path[:-1]:
        parent = parent[step]
    last = path[-1]
    if op == "replace":
        parent[last] = draw(json_values)
    elif op == "delete":
        del parent[last]
    elif isinstance(parent, dict):
        parent[draw(st.text(min_size=1, max_size=6))] = draw(json_values)
    else:
        parent.append(draw(json_values))
    return document


@FUZZ
@given(data=st.data())
def test_json_mutations(bench: dict[str, Any], data: st.DataObject) -> None:
    name = data.draw(st.sampled_from(JSON_FILES))
    mutated = _mutate_json(json.loads(bench["pristine"][name]), data.draw)
    text = mutated if isinstance(mutated, str) else json.dumps(mutated)
    files = {**bench["pristine"], name: text.encode()}
    _write_case(bench, files, {name})
    resume(bench, "json")


def test_report(bench: dict[str, Any]) -> None:
    """Print the outcome counts (``-s``); every family ran and some cases were refused."""
    by_family: dict[str, collections.Counter[str]] = collections.defaultdict(collections.Counter)
    for (family, outcome), count in OUTCOMES.items():
        by_family[family][outcome] += count
    for family, outcomes in sorted(by_family.items()):
        print(f"checkpoint fuzz {family}: {sum(outcomes.values())} cases, {dict(outcomes)}")
    for family in ("raw bytes", "tensors", "json"):
        refused = sum(n for o, n in by_family[family].items() if o.startswith("refused"))
        assert refused > 0, family
    assert latest_checkpoint(bench["out"]) is None  # no case ever wrote a checkpoint
