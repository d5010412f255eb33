"""How the command lines (``pb-adapters``, ``examples/train.py``) report errors: one line on
stderr, no traceback, and an exit status."""

from __future__ import annotations

import sys
from collections.abc import Callable

from pb_adapters.errors import PbAdaptersError

__all__ = ["EXIT_ERROR", "EXIT_INTERRUPTED", "one_line", "run_reporting_errors"]

#: Exit status of a usage error or an error of the :class:`~pb_adapters.PbAdaptersError` family
#: (argparse's status for usage errors).
EXIT_ERROR = 2
#: Exit status after Ctrl-C (128 + SIGINT).
EXIT_INTERRUPTED = 130


def one_line(err: BaseException) -> str:
    """``err``'s message on one line (its class name when it has none)."""
    text = " ".join(part.strip() for part in str(err).splitlines() if part.strip())
    return text or type(err).__name__


def run_reporting_errors(prog: str, call: Callable[[], int]) -> int:
    """``call()``'s exit status; an error of the family is printed as ``<prog>: error: ...`` on
    one line and gives :data:`EXIT_ERROR`, Ctrl-C gives :data:`EXIT_INTERRUPTED`."""
    try:
        return call()
    except PbAdaptersError as err:
        print(f"{prog}: error: {one_line(err)}", file=sys.stderr)
        return EXIT_ERROR
    except KeyboardInterrupt:
        print(f"{prog}: interrupted", file=sys.stderr)
        return EXIT_INTERRUPTED
