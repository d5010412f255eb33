"""Public entry points raise only the pb-adapters family, and a refused save changes nothing.

Saves are run with a file-system fault (a full disk, an I/O error) injected at every OS call the
commit makes, one call per case; into targets that are files; with records an artifact cannot
hold. The command line is run on artifacts whose safetensors header is broken. Every case must
end in a success or in a :class:`~pb_adapters.errors.PbAdaptersError` that is also the builtin a
caller expects, with the folder byte-identical to before.
"""

from __future__ import annotations

import collections
import errno
import os
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings

from pb_adapters import PiggybackModel, cli
from pb_adapters.errors import (
    ArtifactError,
    ConfigError,
    HubError,
    PbAdaptersError,
    StorageError,
    TargetExistsError,
)
from pb_adapters.model import saving
from pb_adapters.utils import console
from pb_adapters.utils.files import LOCK_NAME
from tests.reliability.artifacts import CONFIG, WEIGHTS, micro_base, trained, write_files
from tests.reliability.test_loader_fuzz import EXAMPLES, FUZZ, header_mutations

OUTCOMES: collections.Counter[tuple[str, str]] = collections.Counter()
# The OS calls a commit makes, and the error each one gets when it is the faulty call.
FAULTS = {
    "open": errno.ENOSPC,
    "write": errno.ENOSPC,
    "fsync": errno.EIO,
    "link": errno.EIO,
    "replace": errno.EIO,
    "unlink": errno.EIO,
    "mkdir": errno.ENOSPC,
}


def folder_state(folder: Path) -> dict[str, bytes]:
    """Every file of ``folder`` (hidden ones included, the lock file excepted), as bytes."""
    if not folder.is_dir():
        return {}
    return {p.name: p.read_bytes() for p in folder.iterdir() if p.name != LOCK_NAME}


class FaultyOS:
    """Makes the ``at``-th call (counted over :data:`FAULTS`) raise its ``OSError``."""

    def __init__(self, at: int) -> None:
        self.at, self.calls, self.hit = at, 0, None

    def wrap(self, name: str, func: Callable[..., Any]) -> Callable[..., Any]:
        def faulty(*args: Any, **kwargs: Any) -> Any:
            self.calls += 1
            if self.calls == self.at:
                self.hit = name
                raise OSError(FAULTS[name], os.strerror(FAULTS[name]))
            return func(*args, **kwargs)

        return faulty


@pytest.fixture
def faulty_commit(monkeypatch: pytest.MonkeyPatch) -> Iterator[Callable[[int], FaultyOS]]:
    """Arm a fault at the ``at``-th OS call of the next save's commit (and only there)."""
    original = saving.commit_artifact

    def arm(at: int) -> FaultyOS:
        faults = FaultyOS(at)

        def commit(*args: Any, **kwargs: Any) -> Path:
            with pytest.MonkeyPatch.context() as patch:
                for name in FAULTS:
                    patch.setattr(os, name, faults.wrap(name, getattr(os, name)))
                return original(*args, **kwargs)

        monkeypatch.setattr(saving, "commit_artifact", commit)
        return faults

    yield arm


def restore(folder: Path, state: dict[str, bytes]) -> None:
    """Make ``folder`` hold exactly the files of ``state`` again."""
    for path in folder.iterdir():
        if path.name != LOCK_NAME and path.name not in state:
            path.unlink()
    for name, data in state.items():
        (folder / name).write_bytes(data)


@pytest.mark.parametrize("write_card", [True, False])
def test_a_fault_at_every_os_call_of_a_save(
    tmp_path: Path, faulty_commit: Callable[[int], FaultyOS], write_card: bool
) -> None:
    folder = tmp_path / "artifact"
    trained("norms", seed=1).save_pretrained(folder, metrics={"version": 1})
    before = folder_state(folder)
    new = trained("ternary", seed=2)
    at = 0
    while True:
        at += 1
        faults = faulty_commit(at)
        try:
            new.save_pretrained(folder, metrics={"version": 2}, write_card=write_card)
        except PbAdaptersError as err:
            assert isinstance(err, StorageError) and isinstance(err, OSError)
            assert err.errno == FAULTS[faults.hit], (faults.hit, err)
            assert "\n" not in str(err)
            assert folder_state(folder) == before, f"fault {at} ({faults.hit}) changed the folder"
            OUTCOMES[("save fault", f"refused ({faults.hit})")] += 1
            continue
        loaded = PiggybackModel.from_pretrained(micro_base(), folder)
        assert loaded._recorded["default"][0] == {"version": 2}
        if faults.hit is not None:  # a cleanup's call failed: its leftover goes with the next save
            OUTCOMES[("save fault", f"saved ({faults.hit} failure absorbed)")] += 1
            new.save_pretrained(folder, metrics={"version": 2}, write_card=write_card)
        leftovers = [n for n in folder_state(folder) if n.endswith((".tmp", ".bak", ".prev"))]
        assert not leftovers
        if faults.hit is None:  # past the last OS call of the commit
            break
        restore(folder, before)
    assert at > 10


def test_targets_that_are_files(tmp_path: Path) -> None:
    model = trained("binary")
    blocker = tmp_path / "blocker"
    blocker.write_bytes(b"not a folder")
    for target in (blocker, blocker / "below"):
        with pytest.raises(TargetExistsError) as err:
            model.save_pretrained(target)
        assert isinstance(err.value, FileExistsError) and "\n" not in str(err.value)
        OUTCOMES[("save target", "refused")] += 1
    assert blocker.read_bytes() == b"not a folder"


def _nested(depth: int) -> list[Any]:
    value: list[Any] = []
    for _ in range(depth):
        value = [value]
    return value


RECORDS = [
    ({"acc": 10**400}, None, None),  # a float() overflow in the card before
    ({"acc": float("nan"), "loss": float("inf")}, ["d"], None),
    ({1: 0.5}, None, ConfigError),
    ({"acc": object()}, None, ConfigError),
    ({"acc": {1j: 2}}, None, ConfigError),
    ({"deep": _nested(5000)}, None, ConfigError),
    ("accuracy", None, ConfigError),
    ({"big": "x" * (9 * 1024 * 1024)}, None, ArtifactError),
    (None, "cars", ConfigError),
    (None, [1, 2], ConfigError),
]


@pytest.mark.parametrize("metrics, datasets, error", RECORDS)
def test_records_an_artifact_cannot_hold(tmp_path: Path, metrics, datasets, error) -> None:
    folder = tmp_path / "artifact"
    model = trained("binary")
    model.save_pretrained(folder)
    before = folder_state(folder)
    if error is None:
        model.save_pretrained(folder, metrics=metrics, datasets=datasets)
        assert PiggybackModel.from_pretrained(micro_base(), folder).active_adapter == "default"
        OUTCOMES[("save records", "accepted")] += 1
        return
    with pytest.raises(error):
        model.save_pretrained(folder, metrics=metrics, datasets=datasets)
    with pytest.raises(error):
        model.save_pretrained(tmp_path / "new", metrics=metrics, datasets=datasets)
    assert folder_state(folder) == before and not (tmp_path / "new").exists()
    OUTCOMES[("save records", "refused")] += 1


# ------------------------------------------------------------------------------- command line
def run_cli(argv: list[str], capsys: pytest.CaptureFixture[str]) -> tuple[int, str]:
    code = cli.main(argv)
    err = capsys.readouterr().err
    assert "Traceback" not in err and len(err.strip().splitlines()) <= 1, err
    return code, err


CLI_FUZZ = settings(FUZZ, max_examples=max(EXAMPLES // 5, 20))
CLI_FUZZ = settings(
    CLI_FUZZ,
    suppress_health_check=[*FUZZ.suppress_health_check, HealthCheck.function_scoped_fixture],
)


def _reached_the_hub(*args: Any, **kwargs: Any) -> Any:
    raise HubError("reached the Hub")


@CLI_FUZZ
@given(files=header_mutations())
def test_fuzz_info_and_push_on_broken_headers(
    tmp_path_factory: pytest.TempPathFactory,
    capsys: pytest.CaptureFixture[str],
    files: dict[str, bytes],
) -> None:
    folder = tmp_path_factory.getbasetemp() / "cli-header"
    write_files(folder, files)
    code, err = run_cli(["info", str(folder)], capsys)
    assert code in (0, 2)
    OUTCOMES[("cli info", "described" if code == 0 else "refused")] += 1
    with pytest.MonkeyPatch.context() as patch:  # a push that gets past the checks stops here
        patch.setattr("huggingface_hub.HfApi.create_repo", _reached_the_hub)
        code, err = run_cli(["push", str(folder), "user/task"], capsys)
    assert code == 2
    OUTCOMES[("cli push", "uploaded" if "reached the Hub" in err else "refused")] += 1


def test_cli_on_hostile_folders(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    (tmp_path / "file").write_bytes(b"x")
    for argv in (
        ["info", str(tmp_path / "file")],
        ["info", str(tmp_path / "missing") + "/"],
        ["info", str(tmp_path)],
        ["push", str(tmp_path / "file"), "user/x"],
        ["download", "user/x", "--subfolder", "../x"],
    ):
        code, _ = run_cli(argv, capsys)
        assert code == 2
        OUTCOMES[("cli hostile folder", "refused")] += 1


def test_cli_prints_one_line_for_a_bug(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    write_files(tmp_path, {CONFIG: b"{}", WEIGHTS: b""})

    def broken(*args: Any, **kwargs: Any) -> Any:
        raise RuntimeError("a bug\nover two lines")

    monkeypatch.setattr("pb_adapters.serialization.read_adapter_config", broken)
    code, err = run_cli(["info", str(tmp_path)], capsys)
    assert code == console.EXIT_FAILURE and "RuntimeError: a bug over two lines" in err
    assert len(err.strip().splitlines()) == 1
    monkeypatch.setenv(console.DEBUG_VARIABLE, "1")
    assert cli.main(["info", str(tmp_path)]) == console.EXIT_FAILURE
    err = capsys.readouterr().err
    assert "Traceback" in err and "RuntimeError: a bug" in err


def test_report() -> None:
    """Print the cases of this module (run with ``-s``)."""
    print(dict(sorted(OUTCOMES.items())))
