"""Hostile adapter names, subfolders, repo ids and revisions are refused before any file is touched.

An audit hook records every file-system event (open, mkdir, rename, remove, listdir, temporary
files) while a refused call runs; none may reach the temporary folders the tests and the Hub
cache live in.
"""

from __future__ import annotations

import os
import sys
import tempfile
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from pb_adapters import PiggybackConfig, PiggybackModel, get_piggyback_model
from pb_adapters.errors import PbAdaptersError
from pb_adapters.hub import download_adapter, push_folder_to_hub, resolve_adapter_folder
from tests.reliability.artifacts import micro_base, trained

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
