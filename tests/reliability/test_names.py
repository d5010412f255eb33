"""Hostile adapter names, subfolders, repo ids and revisions are refused before any file is touched.

An audit hook records every file-system event (open, mkdir, rename, remove, listdir, temporary
files) while a refused call runs; none may reach the temporary folders the tests and the Hub
cache live in. Names torch's module containers reserve are refused wherever a name comes from (a
caller or an artifact), and a load that fails at any step, for any reason, leaves the model and
the caller's base exactly as they were.
"""

from __future__ import annotations

import collections
import contextlib
import json
import os
import re
import sys
import tempfile
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from torch import nn

from pb_adapters import (
    PiggybackConfig,
    PiggybackModel,
    available_methods,
    get_method,
    get_piggyback_model,
)
from pb_adapters.errors import ArtifactError, PbAdaptersError
from pb_adapters.hub import download_adapter, push_folder_to_hub, resolve_adapter_folder
from pb_adapters.methods.base import AdapterLayer, BufferDict
from pb_adapters.methods.packnet.layer import PackNetLayer
from pb_adapters.methods.piggyback.layer import PiggybackLayer
from pb_adapters.model import loading, wrapper
from pb_adapters.utils.names import RESERVED_ADAPTER_NAMES
from tests.reliability.artifacts import (
    CONFIG,
    artifact_files,
    micro_base,
    model_state,
    packnet,
    same_state,
    trained,
    write_files,
)

HOSTILE = [
    "..",
    "../evil",
    "a/../../evil",
    "/etc/evil",
    "C:\\evil",
    "a\\b",
    "évil",
    "ev\u202eil",  # right-to-left override
    "\uff45vil",  # fullwidth e
    "e\x00vil",
    "evil\n",
    " evil",
    ".hidden",
    "a//b",
    "x" * 300,
]
_FS_EVENTS = {
    "open",
    "os.mkdir",
    "os.rename",
    "os.remove",
    "os.rmdir",
    "os.listdir",
    "os.scandir",
    "os.link",
    "os.symlink",
    "os.chmod",
    "shutil.rmtree",
    "shutil.copyfile",
    "tempfile.mkstemp",
    "tempfile.mkdtemp",
}
_RECORDING: list[tuple[str, Any]] | None = None


def _hook(event: str, args: tuple[Any, ...]) -> None:
    if _RECORDING is not None and event in _FS_EVENTS:
        _RECORDING.append((event, args[0] if args else None))


sys.addaudithook(_hook)  # audit hooks cannot be removed; it records only inside _watch


@pytest.fixture
def watch() -> Iterator[Callable[[Callable[[], Any]], list[tuple[str, Any]]]]:
    """Run a call that must be refused; return the file-system events it caused in temp dirs."""
    roots = {os.path.realpath(tempfile.gettempdir()), os.path.realpath(os.environ["HF_HOME"])}

    def run(call: Callable[[], Any]) -> list[tuple[str, Any]]:
        global _RECORDING
        _RECORDING = []
        try:
            with pytest.raises(PbAdaptersError):
                call()
        finally:
            events, _RECORDING = _RECORDING, None
        touched = []
        for event, path in events:
            if event.startswith("tempfile."):
                touched.append((event, path))
            elif isinstance(path, (str, bytes, os.PathLike)):
                real = os.path.realpath(os.fsdecode(path))
                if any(real.startswith(root) for root in roots):
                    touched.append((event, real))
        return touched

    yield run


@pytest.fixture(scope="module")
def model() -> PiggybackModel:
    return trained("binary")


@pytest.mark.parametrize("bad", HOSTILE)
def test_hostile_adapter_names(bad: str, model: PiggybackModel, tmp_path: Path, watch) -> None:
    folder = model.save_pretrained(tmp_path / "artifact", write_card=False)
    calls = [
        lambda: model.add_adapter(bad, PiggybackConfig()),
        lambda: get_piggyback_model(micro_base(), PiggybackConfig(), adapter_name=bad),
        lambda: model.load_adapter(folder, adapter_name=bad),
        lambda: PiggybackModel.from_pretrained(micro_base(), folder, adapter_name=bad),
        lambda: model.save_pretrained(tmp_path / "out", adapter_name=bad),
        lambda: model.push_to_hub("user/task", adapter_name=bad),
    ]
    for call in calls:
        assert watch(call) == []
    assert not (tmp_path / "out").exists()
    assert model.list_adapters()[0].name == "default" and len(model.list_adapters()) == 1


@pytest.mark.parametrize("bad", HOSTILE)
def test_hostile_subfolders(bad: str, model: PiggybackModel, tmp_path: Path, watch) -> None:
    folder = model.save_pretrained(tmp_path / "artifact", write_card=False)
    calls = [
        lambda: model.load_adapter(tmp_path, adapter_name="other", subfolder=bad),
        lambda: PiggybackModel.from_pretrained(micro_base(), "user/task", subfolder=bad),
        lambda: resolve_adapter_folder("user/task", subfolder=bad),
        lambda: download_adapter("user/task", subfolder=bad, local_dir=tmp_path / "out"),
        lambda: push_folder_to_hub(folder, "user/task", subfolder=bad),
        lambda: model.push_to_hub("user/task", subfolder=bad),
    ]
    for call in calls:
        assert watch(call) == []
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize("bad", [b for b in HOSTILE if not b.startswith(("/", ".", "C:"))])
def test_hostile_repo_ids_and_revisions(
    bad: str, model: PiggybackModel, tmp_path: Path, watch
) -> None:
    folder = model.save_pretrained(tmp_path / "artifact", write_card=False)
    for repo_id in (f"user/{bad}", f"{bad}/task"):
        if "/" in bad.strip("/") or "\\" in bad:
            continue  # a path, not a repo id: read as a local folder, which is the user's call
        assert watch(lambda r=repo_id: download_adapter(r, local_dir=tmp_path / "out")) == []
        assert watch(lambda r=repo_id: push_folder_to_hub(folder, r)) == []
        assert watch(lambda r=repo_id: model.push_to_hub(r)) == []
    for call in (
        lambda: download_adapter("user/task", revision=bad, local_dir=tmp_path / "out"),
        lambda: resolve_adapter_folder("user/task", revision=bad),
        lambda: model.push_to_hub("user/task", revision=bad),
    ):
        assert watch(call) == []
    assert not (tmp_path / "out").exists()


def test_the_watch_sees_writes(model: PiggybackModel, tmp_path: Path, watch) -> None:
    def save_then_fail() -> None:
        model.save_pretrained(tmp_path / "written", write_card=False)
        raise PbAdaptersError("refused too late")

    touched = watch(save_then_fail)
    assert any(event == "tempfile.mkstemp" for event, _ in touched)
    assert any(str(tmp_path / "written") in str(path) for _, path in touched)


# ------------------------------------------------------------------------------- reserved names
def _container_attribute_names() -> set[str]:
    """Public attribute names of every dict-like container that holds adapters, found in models
    that really hold an adapter of each registered method (and in the wrapper itself)."""
    names: set[str] = set()
    for method in available_methods():
        config = get_method(method).config_class(num_labels=3)
        model = get_piggyback_model(micro_base(), config)
        for module in model.modules():
            if isinstance(module, (nn.ModuleDict, nn.ParameterDict, BufferDict)):
                # the class's attributes and the instance's own (not the keys it holds)
                names.update(dir(type(module)), vars(module))
    return {n for n in names if re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9_-]{0,63}", n)}


RESERVED = sorted(_container_attribute_names())
NAME_OUTCOMES: collections.Counter[tuple[str, str]] = collections.Counter()


def test_every_container_attribute_is_reserved() -> None:
    assert len(RESERVED) >= 60
    assert set(RESERVED) <= RESERVED_ADAPTER_NAMES


def _refused_cleanly(model: nn.Module, call: Callable[[], Any], family: str) -> None:
    before = model_state(model)
    with pytest.raises(PbAdaptersError) as err:
        call()
    assert isinstance(err.value, ValueError) and "reserved" in str(err.value)
    assert same_state(before, model_state(model)), f"{family}: a refused call changed the model"
    NAME_OUTCOMES[(family, "refused")] += 1


@pytest.mark.parametrize("name", RESERVED)
def test_reserved_names_are_refused_before_anything_changes(name: str, tmp_path: Path) -> None:
    model = trained("binary").train()  # training mode: norm layers' modes are part of the state
    folder = model.save_pretrained(tmp_path / "artifact", write_card=False)
    base = micro_base().train()
    base.fc.weight.requires_grad_(False)  # the caller's own flags must survive a refused load
    _refused_cleanly(model, lambda: model.add_adapter(name, PiggybackConfig()), "add_adapter")
    _refused_cleanly(
        base, lambda: get_piggyback_model(base, PiggybackConfig(), name), "get_piggyback_model"
    )
    _refused_cleanly(model, lambda: model.load_adapter(folder, name), "load_adapter")
    _refused_cleanly(
        base, lambda: PiggybackModel.from_pretrained(base, folder, name), "from_pretrained"
    )


@pytest.mark.parametrize("name", [*RESERVED[::8], "training", "keys", "../t", "t" * 65, 7])
@pytest.mark.parametrize("field", ["task_name", "tasks"])
def test_names_an_artifact_chooses_are_checked(name: Any, field: str, tmp_path: Path) -> None:
    files = artifact_files(packnet())
    config = json.loads(files[CONFIG])
    if field == "task_name":
        config["task_name"] = name
    else:
        config["tasks"][0]["name"] = name
    write_files(tmp_path, {**files, CONFIG: json.dumps(config).encode()})
    base = micro_base().train()
    before = model_state(base)
    with pytest.raises(ArtifactError):
        PiggybackModel.from_pretrained(base, tmp_path)
    assert same_state(before, model_state(base))
    NAME_OUTCOMES[(f"artifact {field}", "refused")] += 1


name_texts = st.one_of(
    st.from_regex(r"[A-Za-z0-9][A-Za-z0-9_-]{0,70}", fullmatch=True),
    st.sampled_from(RESERVED),
    st.text(max_size=8),
)


@settings(max_examples=int(os.environ.get("PB_FUZZ_EXAMPLES", "500")) // 5, deadline=None,
          derandomize=True, database=None)  # fmt: skip
@given(name=name_texts)
def test_fuzz_adapter_names(name: str) -> None:
    """Any name: refused with the model unchanged, or usable through a save and a load."""
    model = trained("binary", "resident")
    before = model_state(model)
    try:
        model.add_adapter(name, PiggybackConfig(num_labels=2))
    except PbAdaptersError:
        assert same_state(before, model_state(model))
        NAME_OUTCOMES[("fuzzed name", "refused")] += 1
        return
    with tempfile.TemporaryDirectory() as tmp:
        model.save_pretrained(tmp, name, write_card=False)
        other = trained("binary", "resident")
        other.load_adapter(tmp, name)
        assert other.peft_config[name].num_labels == 2
    model.delete_adapter(name)
    assert same_state(before, model_state(model))
    NAME_OUTCOMES[("fuzzed name", "accepted")] += 1


# ------------------------------------------------------------------------------- failed loads
# Steps of a load (planning and installing) or of add_adapter that get a fault, one per case.
LOAD_STEPS = [
    (PiggybackModel, "set_adapter"),
    (PiggybackModel, "_register_task_modules"),
    (PiggybackModel, "_wrap_targets"),
    (PiggybackModel, "_install"),
    (PiggybackModel, "_update_trainable"),
    (AdapterLayer, "set_adapter"),
    (PiggybackLayer, "import_adapter"),
    (PiggybackLayer, "add_adapter"),
    (PackNetLayer, "import_adapter"),
    (nn.ModuleDict, "__setitem__"),
    (loading, "new_task_modules"),
    (loading, "_fill_task_modules"),
    (wrapper, "set_submodule"),
    (wrapper, "set_label_state"),
]


class Injected(Exception):
    """The fault a test puts into a load (not a pb-adapters error: it stands for a bug)."""


def _restoring(step: str, args: tuple[Any, ...]) -> bool:
    """Whether a call of ``step`` puts the model back: inside the rollback of a failed load, or
    the re-install of the active adapter's modules after a look at the base's. The test faults
    the steps of the load, not its repair (a repair that fails cannot repair)."""
    frame = sys._getframe(2)  # the caller of the faulty step
    if step == "_install" and args[1] is not None and frame.f_code.co_name == "_base_installed":
        return True
    while frame is not None:
        name = frame.f_code.co_name
        if name == "_take_back":
            return True
        if name == "_install" and frame.f_locals.get("name") is not None:
            parent = frame.f_back
            while parent is not None and parent.f_code.co_name == "faulty":
                parent = parent.f_back  # the step's own fault wrapper
            if parent is not None and parent.f_code.co_name == "_base_installed":
                return True
        frame = frame.f_back
    return False


@contextlib.contextmanager
def fault_at(at: int) -> Iterator[list[str]]:
    """Raise :class:`Injected` at the ``at``-th call of any of :data:`LOAD_STEPS`."""
    calls, hit = [0], []

    def wrap(name: str, func: Callable[..., Any]) -> Callable[..., Any]:
        def faulty(*args: Any, **kwargs: Any) -> Any:
            if _restoring(name, args):
                return func(*args, **kwargs)
            calls[0] += 1
            if calls[0] == at:
                hit.append(name)
                raise Injected(name)
            return func(*args, **kwargs)

        return faulty

    with pytest.MonkeyPatch.context() as patch:
        for owner, attr in LOAD_STEPS:
            patch.setattr(owner, attr, wrap(attr, getattr(owner, attr)))
        yield hit


KINDS = ["from_pretrained", "load_adapter", "packnet", "get_piggyback_model", "add_adapter"]


def _run(kind: str, target: nn.Module, folder: Path) -> None:
    if kind == "load_adapter":
        target.load_adapter(folder, "probe")
    elif kind == "add_adapter":
        target.add_adapter("probe", PiggybackConfig(num_labels=4, train_norms=True))
    elif kind == "get_piggyback_model":
        get_piggyback_model(target, PiggybackConfig(num_labels=4, train_norms=True))
    else:
        PiggybackModel.from_pretrained(target, folder)


@pytest.mark.parametrize("kind", KINDS)
def test_a_load_or_add_failing_at_any_step_changes_nothing(kind: str, tmp_path: Path) -> None:
    source = packnet() if kind == "packnet" else trained("norms")
    folder = source.save_pretrained(tmp_path / "artifact", write_card=False)
    at = 0
    while True:
        at += 1
        on_wrapper = kind in ("load_adapter", "add_adapter")
        target = trained("binary", "resident") if on_wrapper else micro_base()
        target.train()
        if not on_wrapper:
            target.hidden.weight.requires_grad_(False)
        before = model_state(target)
        with fault_at(at) as hit:
            try:
                _run(kind, target, folder)
            except Injected:
                assert same_state(before, model_state(target)), f"fault {at} in {hit[0]}"
                NAME_OUTCOMES[(f"failed {kind}", "rolled back")] += 1
                continue
        assert not hit  # past the last step: the load is complete
        break
    assert at > 5


def test_report() -> None:
    """Print the cases of this module (run with ``-s``)."""
    print(dict(sorted(NAME_OUTCOMES.items())))
