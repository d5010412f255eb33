"""How the command lines talk to a console: one-line errors, help that states defaults once, and
exit statuses.

Both command lines (``pb-adapters`` and ``examples/train.py``) build their parsers from
:class:`ArgumentParser` and run their command through :func:`run_cli`, so they fail the same way:

* ``0``: success;
* ``1`` (:data:`EXIT_FAILURE`): the command was valid but failed while running: the network or
  the Hub server, the disk, memory, a run that diverged, a reloaded artifact that scores
  differently, or an unexpected error;
* ``2`` (:data:`EXIT_USAGE`): something typed or pointed at is wrong: an unknown option or value,
  a misspelt model, a missing path or repository, a malformed artifact or configuration file,
  options that contradict each other. Fix the command and run it again;
* ``130``: interrupted (Ctrl-C).

Errors are one line on stderr, ``<prog>: error: <message>``. ``--debug`` (or
``PB_ADAPTERS_DEBUG=1``) prints the traceback above that line.
"""

from __future__ import annotations

import argparse
import os
import sys
import traceback
from collections.abc import Callable
from typing import NoReturn

from ..errors import PbAdaptersError

__all__ = [
    "DEBUG_VARIABLE",
    "EXIT_FAILURE",
    "EXIT_INTERRUPTED",
    "EXIT_OK",
    "EXIT_USAGE",
    "ArgumentParser",
    "HelpFormatter",
    "add_debug_option",
    "exit_status",
    "one_line",
    "run_cli",
]

EXIT_OK = 0
EXIT_FAILURE = 1
EXIT_USAGE = 2
EXIT_INTERRUPTED = 130
#: Set to 1 to see the traceback of any error (as ``--debug`` does).
DEBUG_VARIABLE = "PB_ADAPTERS_DEBUG"

# Builtin bases that mark an error of the environment rather than of the command typed; every
# PbAdaptersError also derives from the builtin a caller would expect.
_RUNTIME_FAILURES = (OSError, RuntimeError, ArithmeticError, MemoryError)


class HelpFormatter(argparse.ArgumentDefaultsHelpFormatter):
    """States an option's default once: appended as ``(default: X)`` unless the help already
    speaks of its default, and never for defaults that say nothing (``None``, an off flag)."""

    def _get_help_string(self, action: argparse.Action) -> str:
        text = action.help or ""
        says_nothing = action.default is None or action.default is False  # 0 and 0.0 do say
        if (
            says_nothing
            or action.default is argparse.SUPPRESS
            or "default" in text.lower()
            or not action.option_strings
        ):
            return text
        return f"{text} (default: %(default)s)"


class ArgumentParser(argparse.ArgumentParser):
    """An argument parser whose usage errors are one line and exit with :data:`EXIT_USAGE`.

    argparse prints the whole usage block before the error; with many options that is dozens
    of lines burying the one that matters, so the error names ``--help`` instead.
    """

    def __init__(self, *args: object, **kwargs: object) -> None:
        kwargs.setdefault("formatter_class", HelpFormatter)
        super().__init__(*args, **kwargs)  # type: ignore[arg-type]

    def error(self, message: str) -> NoReturn:
        """Print ``<prog>: error: <message> (see <prog> --help)`` and exit with status 2."""
        self.exit(EXIT_USAGE, f"{self.prog}: error: {one_line(message)} (see {self.prog} --help)\n")


def add_debug_option(parser: argparse.ArgumentParser) -> None:
    """Add ``--debug`` (show tracebacks) to ``parser``, unless it has it.

    Its default is left out of the namespace, so a subcommand's parser does not reset the value
    the main parser read (``pb-adapters --debug info X`` and ``pb-adapters info X --debug``).
    """
    if any("--debug" in action.option_strings for action in parser._actions):
        return  # argparse has no public accessor for its actions
    parser.add_argument(
        "--debug",
        action="store_true",
        default=argparse.SUPPRESS,
        help=f"print the traceback of an error (as {DEBUG_VARIABLE}=1 does)",
    )


def one_line(err: BaseException | str) -> str:
    """The text of ``err`` on one line (its type name if it has no text)."""
    text = " ".join(part.strip() for part in str(err).splitlines() if part.strip())
    return text or type(err).__name__


def exit_status(err: BaseException) -> int:
    """:data:`EXIT_USAGE` for a pb-adapters error about what was typed or pointed at,
    :data:`EXIT_FAILURE` for one of the environment (also an ``OSError``, ``RuntimeError``,
    ``ArithmeticError``) and for any other exception."""
    if isinstance(err, PbAdaptersError) and not isinstance(err, _RUNTIME_FAILURES):
        return EXIT_USAGE
    return EXIT_FAILURE


def _debug_requested(args: argparse.Namespace) -> bool:
    return bool(getattr(args, "debug", False)) or os.environ.get(DEBUG_VARIABLE, "") not in (
        "",
        "0",
    )


def run_cli(
    command: Callable[[argparse.Namespace], int], args: argparse.Namespace, prog: str
) -> int:
    """Run ``command(args)`` and return its exit status; every error becomes one line on stderr.

    A pb-adapters error prints its message; any other exception its type and message and how to
    see the traceback. The status follows :func:`exit_status`; an ``argparse`` exit inside the
    command (a re-parse) keeps its own status, Ctrl-C gives 130. With ``--debug`` (``args.debug``)
    or ``PB_ADAPTERS_DEBUG=1`` the traceback is printed above the line.
    """
    try:
        return int(command(args))
    except SystemExit as exit_:  # argparse has printed its line already
        code = exit_.code
        return code if isinstance(code, int) else (EXIT_OK if code is None else EXIT_USAGE)
    except KeyboardInterrupt:
        print(f"{prog}: interrupted", file=sys.stderr)
        return EXIT_INTERRUPTED
    except Exception as err:
        debug = _debug_requested(args)
        if debug:
            traceback.print_exc()
        if isinstance(err, PbAdaptersError):
            message = one_line(err)
        else:  # not raised on purpose: say what it is, and how to see where
            hint = "" if debug else f" (--debug or {DEBUG_VARIABLE}=1 shows the traceback)"
            message = f"{type(err).__name__}: {one_line(err)}{hint}"
        print(f"{prog}: error: {message}", file=sys.stderr)
        return exit_status(err)
