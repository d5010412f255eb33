"""How the command lines (``pb-adapters``, ``examples/train.py``) report errors: one line on
stderr, no traceback, and an exit status."""

from __future__ import annotations

import os
import sys
from collections.abc import Callable

from pb_adapters.errors import PbAdaptersError

__all__ = [
    "DEBUG_VARIABLE",
    "EXIT_ERROR",
    "EXIT_INTERNAL",
    "EXIT_INTERRUPTED",
    "one_line",
    "run_reporting_errors",
]

#: Exit status of a usage error or an error of the :class:`~pb_adapters.PbAdaptersError` family
#: (argparse's status for usage errors).
EXIT_ERROR = 2
#: Exit status of an unexpected error (a bug).
EXIT_INTERNAL = 3
#: Exit status after Ctrl-C (128 + SIGINT).
EXIT_INTERRUPTED = 130
#: Set to show the traceback of an unexpected error instead of one line.
DEBUG_VARIABLE = "PB_ADAPTERS_DEBUG"


def one_line(err: BaseException) -> str:
    """``err``'s message on one line (its class name when it has none)."""
    text = " ".join(part.strip() for part in str(err).splitlines() if part.strip())
    return text or type(err).__name__


def run_reporting_errors(prog: str, call: Callable[[], int]) -> int:
    """``call()``'s exit status. An error of the family is printed as ``<prog>: error: ...`` on
    one line and gives :data:`EXIT_ERROR`; Ctrl-C gives :data:`EXIT_INTERRUPTED`; any other
    exception (a bug) is one line too and gives :data:`EXIT_INTERNAL`, or propagates with its
    traceback when :data:`DEBUG_VARIABLE` is set."""
    try:
        return call()
    except PbAdaptersError as err:
        print(f"{prog}: error: {one_line(err)}", file=sys.stderr)
        return EXIT_ERROR
    except KeyboardInterrupt:
        print(f"{prog}: interrupted", file=sys.stderr)
        return EXIT_INTERRUPTED
    except Exception as err:  # a bug: still one line, the traceback only on request
        if os.environ.get(DEBUG_VARIABLE):
            raise
        print(
            f"{prog}: internal error: {type(err).__name__}: {one_line(err)} "
            f"(set {DEBUG_VARIABLE}=1 for the traceback)",
            file=sys.stderr,
        )
        return EXIT_INTERNAL
