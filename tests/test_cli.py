"""The ``pb-adapters`` command line, in process and as the installed console script."""

from __future__ import annotations

import argparse
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from pb_adapters import __version__, cli
from pb_adapters.card import summarize_adapter
from pb_adapters.errors import HubError
from pb_adapters.hub import ARTIFACT_FILES
from pb_adapters.serialization import ARTIFACT_WEIGHTS_NAME, read_adapter_config
from tests.devices import child_env
from tests.hub_server import LocalHub
from tests.test_hub import make_artifact


@pytest.fixture(scope="module")
def artifact(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """One artifact folder for the module (read-only)."""
    return make_artifact(tmp_path_factory.mktemp("cli-artifact"), metrics={"test_accuracy": 0.9})


def _bytes(folder: Path) -> dict[str, bytes]:
    return {name: (folder / name).read_bytes() for name in ARTIFACT_FILES}


def test_info_on_a_local_folder(artifact: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert cli.main(["info", str(artifact)]) == 0
    out = capsys.readouterr().out
    config = read_adapter_config(artifact)
    summary = summarize_adapter(config, artifact / ARTIFACT_WEIGHTS_NAME)
    lines = dict(_split(line) for line in out.splitlines())
    assert lines["method"] == "piggyback"
    assert lines["format version"] == "2"
    assert lines["base fingerprint"] == config["base_model"]["fingerprint"]
    assert lines["labels"].startswith("3: class-0, class-1, class-2")
    assert lines["mask bytes"] == f"{summary.mask_bytes:,}"
    assert lines["bits per masked weight"] == f"{summary.bits_per_masked_weight:.3f}"
    entropy = summary.entropy_bits_per_masked_weight
    assert lines["mask entropy (order 0)"] == f"{entropy:.3f} bits per masked weight"
    assert lines["sparsity"] == f"{100 * summary.sparsity:.2f}%"
    assert lines["weights file bytes"] == f"{(artifact / ARTIFACT_WEIGHTS_NAME).stat().st_size:,}"
    assert lines["metric test_accuracy"] == "0.9"


def _split(line: str) -> tuple[str, str]:
    key, _, value = line.partition("  ")
    return key.strip(), value.strip()


def test_push_info_and_download_through_the_hub(
    hub: LocalHub, artifact: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    repo_id = hub.new_repo_id("cli")
    argv = ["push", str(artifact), repo_id, "--token", hub.token, "--subfolder", "digits"]
    assert (
        cli.main([*argv, "--private", "--revision", "dev", "--commit-message", "add digits"]) == 0
    )
    commit_url = capsys.readouterr().out.strip()
    assert commit_url.startswith(f"{hub.endpoint}/{repo_id}/commit/")
    common = ["--token", hub.token, "--subfolder", "digits", "--revision", "dev"]

    assert cli.main(["info", repo_id, *common]) == 0
    assert _split(capsys.readouterr().out.splitlines()[2]) == ("method", "piggyback")

    out_dir = tmp_path / "out"
    assert cli.main(["download", repo_id, *common, "--local-dir", str(out_dir)]) == 0
    folder = Path(capsys.readouterr().out.strip())
    assert folder == out_dir / "digits"
    assert _bytes(folder) == _bytes(artifact)
    assert (folder / "README.md").is_file()

    assert cli.main(["push", str(artifact), repo_id, "--token", hub.token, "--create-pr"]) == 0
    assert capsys.readouterr().out.strip().endswith("/discussions/1")


@pytest.mark.parametrize(
    ("argv", "needle"),
    [
        (["info", "/definitely/not/here"], "not a folder"),
        (["info", "someone/absent"], "HF_HUB_OFFLINE"),
        (["info", "someone/absent", "--subfolder", "../../etc"], "subfolder"),
        (["download", "not a repo id"], "repo id"),
        (["push", ".", "someone/x", "--revision", "../x"], "revision"),
    ],
)
def test_errors_are_one_line_with_status_2(
    argv: list[str], needle: str, capsys: pytest.CaptureFixture[str]
) -> None:
    assert cli.main(argv) == 2
    captured = capsys.readouterr()
    assert captured.out == ""
    assert len(captured.err.strip().splitlines()) == 1
    assert needle in captured.err and "Traceback" not in captured.err
    assert captured.err.startswith(f"pb-adapters {argv[0]}: error: ")


def test_hub_errors_from_the_server_are_one_line(
    hub: LocalHub, capsys: pytest.CaptureFixture[str]
) -> None:
    assert cli.main(["info", hub.new_repo_id("absent")]) == 2
    err = capsys.readouterr().err
    assert len(err.strip().splitlines()) == 1 and "not found" in err


def test_usage_errors_help_and_version(capsys: pytest.CaptureFixture[str]) -> None:
    assert cli.main([]) == 2
    assert cli.main(["frobnicate"]) == 2
    assert cli.main(["push", "only-one-arg"]) == 2
    capsys.readouterr()
    assert cli.main(["--version"]) == 0
    assert __version__ in capsys.readouterr().out
    assert cli.main(["--help"]) == 0
    out = capsys.readouterr().out
    assert all(name in out for name in ("info", "push", "download", "train"))


def test_train_subcommand(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert cli.main(["train", "--help"]) == 0
    out = capsys.readouterr().out
    for option in ("--model", "--dataset", "--method", "--mask-lr", "--config", "--resume"):
        assert option in out
    config = tmp_path / "run.yaml"
    config.write_text("model: test_resnet\ndataset: demo\nbatch_size: 4\nepochs: 3\n")
    out_dir = tmp_path / "run"
    argv = ["train", "--config", str(config), "--epochs", "1", "--max-steps-per-epoch", "2"]
    argv += ["--max-train-samples", "40", "--max-eval-samples", "20", "--image-size", "32"]
    argv += ["--num-workers", "0", "--no-progress", "--output-dir", str(out_dir)]
    assert cli.main(argv) == 0
    assert (out_dir / "adapter_model.safetensors").is_file()
    assert (out_dir / "training_curves.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert "reloaded onto a fresh backbone" in capsys.readouterr().out
    saved = (out_dir / "run_config.yaml").read_text()
    assert "epochs: 1\n" in saved and "batch_size: 4\n" in saved  # typed > file > default
    assert (out_dir / "checkpoints" / "step-00000002" / "trainer_state.json").is_file()


def test_a_new_subcommand_needs_one_registration(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    def run(args: argparse.Namespace) -> int:
        if args.fail:
            raise HubError("it failed\nacross lines")
        print("trained", args.epochs)
        return 0

    def add_fit(subparsers: cli.SubParsers) -> None:
        parser = subparsers.add_parser("fit", help="fit a task")
        parser.add_argument("--epochs", type=int, default=1)
        parser.add_argument("--fail", action="store_true")
        parser.set_defaults(func=run)

    monkeypatch.setattr(cli, "SUBCOMMANDS", [*cli.SUBCOMMANDS, add_fit])
    assert cli.main(["fit", "--epochs", "3"]) == 0
    assert capsys.readouterr().out == "trained 3\n"
    assert cli.main(["fit", "--fail"]) == 2
    assert capsys.readouterr().err == "pb-adapters fit: error: it failed across lines\n"


def _console_script() -> str:
    found = Path(sys.executable).parent / "pb-adapters"
    return str(found) if found.exists() else (shutil.which("pb-adapters") or "")


@pytest.mark.skipif(not _console_script(), reason="pb-adapters console script not installed")
def test_console_script_against_the_hub_via_environment(
    hub: LocalHub, artifact: Path, tmp_path: Path
) -> None:
    # A fresh process reads HF_ENDPOINT etc. at import, so the environment alone is enough there
    # (the hub fixture mirrors its settings into os.environ).
    repo_id = hub.new_repo_id("script")
    env = child_env(HF_TOKEN=hub.token)  # the script imports the pb_adapters under test
    run = subprocess.run(
        [_console_script(), "push", str(artifact), repo_id],
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert run.returncode == 0, run.stderr
    run = subprocess.run(
        [_console_script(), "download", repo_id, "--local-dir", str(tmp_path / "dl")],
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert run.returncode == 0, run.stderr
    assert _bytes(Path(run.stdout.strip())) == _bytes(artifact)
    offline = {**env, "HF_HUB_OFFLINE": "1", "HF_HUB_CACHE": str(tmp_path / "empty-cache")}
    run = subprocess.run(
        [_console_script(), "info", repo_id],
        env=offline,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert run.returncode == 2
    assert "HF_HUB_OFFLINE" in run.stderr and "Traceback" not in run.stderr


def _all_parsers() -> list[tuple[str, argparse.ArgumentParser]]:
    """``pb-adapters``, each of its subcommands, and examples/train.py's parser."""
    from pb_adapters.training.cli import build_train_parser

    parser = cli.build_parser()
    commands = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
    named = [(f"pb-adapters {name}", sub) for name, sub in commands.choices.items()]
    return [("pb-adapters", parser), *named, ("train.py", build_train_parser("train.py"))]


def test_every_option_has_help_that_states_its_default_once() -> None:
    parsers = _all_parsers()
    assert [name for name, _ in parsers[1:-1]] == [
        f"pb-adapters {name}" for name in ("info", "push", "download", "train", "evaluate")
    ]
    checked = 0
    for name, parser in parsers:
        formatter = parser._get_formatter()  # argparse has no public way to render one option
        for action in parser._actions:
            if isinstance(action, argparse._SubParsersAction):
                assert all(choice.help for choice in action._choices_actions), name
                continue
            shown = formatter._expand_help(action)
            where = f"{name} {'/'.join(action.option_strings) or action.dest}"
            assert shown.strip(), f"{where} has no help"
            assert shown.lower().count("default") <= 1, f"{where}: {shown}"
            assert "(default: None)" not in shown and "(default: False)" not in shown, where
            checked += 1
        text = parser.format_help()
        assert "(default: None)" not in text and "(default: False)" not in text
    assert checked > 100  # every option of train, twice, and the others
    train = " ".join(parsers[-1][1].format_help().split())
    assert "training images per step and process (default: 32)" in train
    assert (
        "seed of the data splits, initialisation, shuffling and augmentation (default: 0)" in train
    )
    assert "demo backbone) --pretrained" in train  # once, where "(default: None)" followed
