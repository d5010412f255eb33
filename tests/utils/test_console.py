"""The console conventions of the command lines: one-line errors, exit statuses, help defaults."""

from __future__ import annotations

import argparse

import pytest

from pb_adapters.errors import ArtifactError, HubConnectionError, PbAdaptersError
from pb_adapters.utils.console import (
    EXIT_FAILURE,
    EXIT_INTERRUPTED,
    EXIT_USAGE,
    ArgumentParser,
    exit_status,
    run_cli,
)

USAGE, FAILURE = EXIT_USAGE, EXIT_FAILURE


def _one_error_line(err: str, prog: str) -> str:
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith(f"{prog}: error: "), err
    return lines[0]


def _failing(err: BaseException):
    def command(args: argparse.Namespace) -> int:
        raise err

    return command


@pytest.mark.parametrize(
    ("err", "status", "line"),
    [
        (
            ArtifactError("the artifact is broken\nsecond line"),
            USAGE,
            "the artifact is broken second line",
        ),
        (HubConnectionError("the Hub is down"), FAILURE, "the Hub is down"),
        (type("DiskFull", (PbAdaptersError, OSError), {})("disk full"), FAILURE, "disk full"),
        (ValueError("a bug"), FAILURE, "ValueError: a bug (--debug or PB_ADAPTERS_DEBUG=1 shows"),
        (RuntimeError("out of memory"), FAILURE, "RuntimeError: out of memory"),
    ],
)
def test_run_cli_maps_errors_to_one_line_and_a_status(
    err: BaseException, status: int, line: str, capsys: pytest.CaptureFixture[str]
) -> None:
    assert exit_status(err) == status
    assert run_cli(_failing(err), argparse.Namespace(), "tool") == status
    assert line in _one_error_line(capsys.readouterr().err, "tool")


def test_run_cli_statuses_of_exits_and_interrupts(capsys: pytest.CaptureFixture[str]) -> None:
    assert run_cli(lambda args: 0, argparse.Namespace(), "tool") == 0
    assert run_cli(_failing(SystemExit(2)), argparse.Namespace(), "tool") == USAGE
    assert run_cli(_failing(SystemExit(None)), argparse.Namespace(), "tool") == 0
    assert run_cli(_failing(KeyboardInterrupt()), argparse.Namespace(), "tool") == EXIT_INTERRUPTED
    assert capsys.readouterr().err == "tool: interrupted\n"


def test_usage_errors_are_one_line(capsys: pytest.CaptureFixture[str]) -> None:
    parser = ArgumentParser(prog="tool")
    parser.add_argument("--size", type=int, default=3, help="a size")
    with pytest.raises(SystemExit) as exit_info:
        parser.parse_args(["--size", "big"])
    assert exit_info.value.code == USAGE
    assert capsys.readouterr().err == (
        "tool: error: argument --size: invalid int value: 'big' (see tool --help)\n"
    )


def test_help_states_each_default_once() -> None:
    parser = ArgumentParser(prog="tool")
    parser.add_argument("--size", type=int, default=3, help="a size")
    parser.add_argument("--seed", type=int, default=0, help="a seed")
    parser.add_argument("--name", default=None, help="a name (default: the model's)")
    parser.add_argument("--rate", type=float, default=0.5, help="a rate (default: 0.5; demo: 1)")
    parser.add_argument("--fast", action="store_true", help="go fast")
    parser.add_argument("--flip", action=argparse.BooleanOptionalAction, help="flip")
    text = " ".join(parser.format_help().split())
    assert "a size (default: 3)" in text and "a seed (default: 0)" in text
    assert "a name (default: the model's)" in text and "(default: None)" not in text
    assert "a rate (default: 0.5; demo: 1) --fast" in text and "(default: False)" not in text
