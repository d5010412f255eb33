"""Ordinary mistakes on the command lines: one line on stderr, no traceback, the right exit status.

The table runs each mistake through ``pb-adapters`` (:func:`pb_adapters.cli.main`) in process;
the training ones through ``examples/train.py``'s entry point too, and one through the script
itself. Exit status 2 is a usage error (fix the command), 1 a valid command that failed while
running (:mod:`pb_adapters.utils.console`).
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from pb_adapters import cli
from pb_adapters.training.cli import main as train_main
from pb_adapters.utils.console import (
    EXIT_FAILURE,
    EXIT_USAGE,
)
from tests.factories import image_folder
from tests.hub_server import LocalHub
from tests.test_hub import _free_port, _point_at, make_artifact

REPO = Path(__file__).resolve().parents[1]
USAGE, FAILURE = EXIT_USAGE, EXIT_FAILURE
COMMANDS = ("info", "push", "download", "train", "evaluate")


@pytest.fixture(scope="module")
def places(tmp_path_factory: pytest.TempPathFactory) -> dict[str, str]:
    """Paths the mistakes point at: an artifact, a broken one, a file, folders, bad config files."""
    root = tmp_path_factory.mktemp("mistakes")
    good = make_artifact(root / "good")
    bad_json = make_artifact(root / "bad-json")
    (bad_json / "adapter_config.json").write_text("{not json", encoding="utf-8")
    (root / "empty").mkdir()
    images = image_folder(root / "images", ["a", "b"], per_class=2)
    (root / "a-file").write_text("x", encoding="utf-8")
    files = {
        "bad-yaml.yaml": "model: [resnet18\n",
        "list.yaml": "- model\n- resnet18\n",
        "unknown.yaml": "learning_rate: 0.1\n",
        "type.yaml": "batch_size: many\n",
        "type-list.yaml": "batch_size: [8]\n",
        "choice.yaml": "method: lora\n",
        "flag.yaml": "pretrained: 3\n",
    }
    for name, text in files.items():
        (root / name).write_text(text, encoding="utf-8")
    return {
        "good": str(good),
        "bad-json": str(bad_json),
        "empty": str(root / "empty"),
        "file": str(root / "a-file"),
        "root": str(root),
        "images": str(images),
    }


# (argv with {placeholders}, exit status, text the one line must contain)
MISTAKES: list[tuple[list[str], int, str]] = [
    # top level
    ([], USAGE, "required: COMMAND"),
    (["frobnicate"], USAGE, "invalid choice: 'frobnicate'"),
    (["--verbose", "info", "x"], USAGE, "unrecognized arguments: --verbose"),
    # info
    (["info"], USAGE, "required: REPO_OR_DIR"),
    (["info", "/no/such/folder"], USAGE, "not a folder"),
    (["info", "{file}"], USAGE, "not a folder"),
    (["info", "{empty}"], USAGE, "no adapter_config.json"),
    (["info", "{bad-json}"], USAGE, "not valid JSON"),
    (["info", "someone/absent"], USAGE, "not in the local Hub cache"),
    (["info", "a/b/c"], USAGE, "a/b/c is not a folder"),
    (["info", "someone/x", "--subfolder", "../up"], USAGE, "subfolder"),
    # push (offline in the tests: an upload needs the Hub)
    (["push", "{good}"], USAGE, "required: REPO_ID"),
    (["push", "{empty}", "someone/x"], USAGE, "not a complete pb-adapters artifact"),
    (["push", "{good}", "not a repo"], USAGE, "valid Hub repo id"),
    (["push", "{good}", "someone/x", "--revision", "../x"], USAGE, "revision"),
    (["push", "{good}", "someone/x"], USAGE, "cannot upload to someone/x"),
    # download
    (["download"], USAGE, "required: REPO_ID"),
    (["download", "someone/absent"], USAGE, "not in the local Hub cache"),
    (["download", "not a repo"], USAGE, "valid Hub repo id"),
    # train: options, models, data, config files
    (["train", "--batch-size", "many"], USAGE, "--batch-size: invalid int value: 'many'"),
    (["train", "--seed", "1.5"], USAGE, "--seed: invalid int value"),
    (["train", "--method", "lora"], USAGE, "--method: invalid choice: 'lora'"),
    (["train", "--lr-scheduler", "linear"], USAGE, "invalid choice: 'linear'"),
    (["train", "--epochs", "0"], USAGE, "num_epochs must be >= 1"),
    (["train", "--val-fraction", "2"], USAGE, "split fractions"),
    (["train", "--mask-lr", "-1"], USAGE, "mask_lr must be a finite number >= 0"),
    (["train", "--method", "ksm", "--mask-type", "ternary"], USAGE, "does not apply"),
    (["train", "--push-to-hub", "not a repo"], USAGE, "valid Hub repo id"),
    (["train", "--model", "resnet99"], USAGE, "did you mean resnet50"),
    (["train", "--model", "resnt18", "--library", "timm"], USAGE, "not a timm model"),
    (["train", "--model", "resnet50.a1_in2k"], USAGE, "did you mean resnet50.a1_in1k"),
    (["train", "--dataset", "/no/such/images"], USAGE, "--dataset /no/such/images: no such"),
    (["train", "--dataset", "./no-such-images"], USAGE, "no such folder"),
    (["train", "--dataset", "{file}"], USAGE, "is a file"),
    (["train", "--config", "/no/such.yaml"], USAGE, "No such file or directory"),
    (["train", "--config", "{root}/bad-yaml.yaml"], USAGE, "not valid YAML"),
    (["train", "--config", "{root}/list.yaml"], USAGE, "a YAML mapping"),
    (["train", "--config", "{root}/unknown.yaml"], USAGE, "unknown option(s) learning_rate"),
    (["train", "--config", "{root}/type.yaml"], USAGE, "batch_size must be int, got 'many'"),
    (["train", "--config", "{root}/type-list.yaml"], USAGE, "batch_size must be int, got [8]"),
    (["train", "--config", "{root}/choice.yaml"], USAGE, "method must be one of"),
    (["train", "--config", "{root}/flag.yaml"], USAGE, "pretrained must be bool, got 3"),
    # evaluate
    (["evaluate", "{good}"], USAGE, "required: --dataset"),
    (["evaluate", "{good}", "--dataset", "demo", "--split", "dev"], USAGE, "invalid choice"),
    (["evaluate", "{good}", "--dataset", "demo", "--top-k", "x"], USAGE, "invalid int"),
    (["evaluate", "{good}", "--dataset", "/no/such/images"], USAGE, "no such folder"),
    (["evaluate", "{good}", "--dataset", "demo", "--base", "resnt18"], USAGE, "resnet18"),
    (["evaluate", "{good}", "--dataset", "{empty}"], USAGE, "no class sub-folders"),
    (["evaluate", "{bad-json}", "--dataset", "{images}"], USAGE, "not valid JSON"),
]


def _id(mistake: tuple[list[str], int, str]) -> str:
    return " ".join(mistake[0]) or "(nothing)"


def _argv(template: list[str], places: dict[str, str]) -> list[str]:
    return [part.format(**places) for part in template]


def _one_error_line(err: str, prog: str) -> str:
    lines = err.strip().splitlines()
    assert len(lines) == 1, err
    assert "Traceback" not in err
    assert lines[0].startswith(f"{prog}: error: "), lines[0]
    return lines[0]


@pytest.mark.parametrize(("argv", "status", "needle"), MISTAKES, ids=[_id(m) for m in MISTAKES])
def test_pb_adapters_mistakes(
    argv: list[str],
    status: int,
    needle: str,
    places: dict[str, str],
    capsys: pytest.CaptureFixture[str],
) -> None:
    argv = _argv(argv, places)
    assert cli.main(argv) == status
    captured = capsys.readouterr()
    assert captured.out == ""
    prog = f"pb-adapters {argv[0]}" if argv and argv[0] in COMMANDS else "pb-adapters"
    assert needle in _one_error_line(captured.err, prog)


TRAIN_MISTAKES = [
    (argv[1:], code, needle) for argv, code, needle in MISTAKES if argv[:1] == ["train"]
]


@pytest.mark.parametrize(
    ("argv", "status", "needle"), TRAIN_MISTAKES, ids=[_id(m) for m in TRAIN_MISTAKES]
)
def test_train_script_mistakes(
    argv: list[str],
    status: int,
    needle: str,
    places: dict[str, str],
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(sys, "argv", ["train.py"])  # the script's program name
    assert train_main(_argv(argv, places)) == status
    captured = capsys.readouterr()
    assert needle in _one_error_line(captured.err, "train.py")


def test_the_training_script_itself() -> None:
    """The script, as a user runs it: a misspelt model costs one line and status 2."""
    proc = subprocess.run(
        [sys.executable, str(REPO / "examples" / "train.py"), "--model", "resnet99"],
        capture_output=True,
        text=True,
        timeout=300,
        cwd=REPO,
    )
    assert proc.returncode == USAGE
    line = _one_error_line(proc.stderr, "train.py")
    assert "did you mean resnet50" in line and proc.stdout == ""


def test_a_network_failure_while_pushing_is_a_runtime_failure(
    hub: LocalHub,
    places: dict[str, str],
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    import huggingface_hub.utils._http as hf_http

    _point_at(monkeypatch, f"http://127.0.0.1:{_free_port()}")
    monkeypatch.setattr(hf_http.time, "sleep", lambda seconds: None)  # skip the client's backoff
    assert cli.main(["push", places["good"], "someone/x", "--token", hub.token]) == FAILURE
    line = _one_error_line(capsys.readouterr().err, "pb-adapters push")
    assert "could not reach the Hub" in line and "to upload to someone/x" in line
    assert "cache" not in line and "download" not in line


@pytest.mark.parametrize("how", ["option", "option after the command", "environment"])
def test_debug_shows_the_traceback(
    how: str, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    argv = ["train", "--model", "resnet99"]
    if how == "option":
        argv = ["--debug", *argv]
    elif how == "option after the command":
        argv = [*argv, "--debug"]
    else:
        monkeypatch.setenv("PB_ADAPTERS_DEBUG", "1")
    assert cli.main(argv) == USAGE
    err = capsys.readouterr().err
    assert err.startswith("Traceback (most recent call last):")
    assert "ConfigError" in err
    assert err.strip().splitlines()[-1].startswith("pb-adapters train: error: --model resnet99")
    monkeypatch.setenv("PB_ADAPTERS_DEBUG", "0")  # 0 means off
    assert cli.main(["train", "--model", "resnet99"]) == USAGE
    assert "Traceback" not in capsys.readouterr().err
