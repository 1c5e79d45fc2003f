"""The one error path of every command-line entry point (timeclock-agent, -collector, -verify).

``run_command`` calls a command and turns what can go wrong into an exit status with one line
on stderr, never a traceback for an operator's mistake:

- a domain error (the package's base error, and any :class:`~wire.errors.WireError`) prints
  ``PROG: error: MESSAGE`` and exits 2;
- Ctrl-C exits 130 quietly;
- a closed pipe (``timeclock-collector ca list | head -1``) ends quietly with 141, like a Unix
  filter killed by SIGPIPE: stdout is pointed at /dev/null so the interpreter's final flush
  cannot raise a second time.

Anything else is a bug and keeps its traceback.
"""

from __future__ import annotations

import logging
import os
import sys
from collections.abc import Callable

from wire.errors import WireError

EXIT_ERROR = 2
EXIT_INTERRUPTED = 130
EXIT_BROKEN_PIPE = 141   # 128 + SIGPIPE, what a shell reports for `yes | head -1`

LOG_FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"
JOURNAL_LOG_FORMAT = "%(levelname)s %(name)s: %(message)s"   # journald stamps lines itself


def setup_logging(*, verbose: bool) -> None:
    """Log to stderr; without timestamps under systemd (``$JOURNAL_STREAM``)."""
    fmt = JOURNAL_LOG_FORMAT if os.environ.get("JOURNAL_STREAM") else LOG_FORMAT
    logging.basicConfig(level=logging.DEBUG if verbose else logging.INFO, format=fmt)


def run_command(prog: str, command: Callable[[], int],
                errors: tuple[type[Exception], ...] = ()) -> int:
    """Run ``command`` and return its exit status, mapping errors as the module doc says."""
    handled: tuple[type[Exception], ...] = (*errors, WireError)
    try:
        rc = command()
        sys.stdout.flush()   # a pipe closed early raises here, inside the handler below
    except handled as e:
        print(f"{prog}: error: {e}", file=sys.stderr)
        return EXIT_ERROR
    except KeyboardInterrupt:
        return EXIT_INTERRUPTED
    except BrokenPipeError:
        _silence_stdout()
        return EXIT_BROKEN_PIPE
    return rc


def _silence_stdout() -> None:
    try:
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        os.close(devnull)
    except (OSError, ValueError):   # stdout already closed or not a real file
        pass
