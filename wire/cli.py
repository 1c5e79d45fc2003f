"""The one error path of every command-line entry point (timeclock-agent, -collector, -verify).

``run_command`` calls a command and turns what can go wrong into an exit status with one line
on stderr, never a traceback for an operator's mistake:

- a domain error (the package's base error, and any :class:`~wire.errors.WireError`) prints
  ``PROG: error: MESSAGE`` and exits 2;
- Ctrl-C exits 130 quietly;
- a closed pipe (``timeclock-collector ca list | head -1``) ends quietly with 141, like a Unix
  filter killed by SIGPIPE: stdout is pointed at /dev/null so the interpreter's final flush
  cannot raise a second time;
- an optional dependency missing on an install without the program's extra (``pip install
  timeclock`` then ``timeclock-collector``) prints which extra to install and exits 2
  (:func:`missing_extra`).

Anything else is a bug and keeps its traceback.
"""

from __future__ import annotations

import json
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


# Import names of the optional dependencies (pyproject.toml [project.optional-dependencies]).
# Only these are an operator's missing extra; any other missing module is a bug and keeps its
# traceback.
OPTIONAL_MODULES = frozenset(
    {"aiohttp", "paho", "psycopg", "sqlite_utils", "prometheus_client", "serial", "evdev",
     "jwt", "jinja2", "markupsafe", "pkcs11", "gpiod"})


def missing_extra(prog: str, extra: str, error: ModuleNotFoundError) -> int:
    """Print the one line that names the extra to install, and return the exit status; re-raise
    ``error`` when the missing module is not an optional dependency."""
    name = (error.name or "").partition(".")[0]
    if name not in OPTIONAL_MODULES:
        raise error
    print(f"{prog}: this command needs the '{extra}' extra: pip install 'timeclock[{extra}]' "
          f"(no module named {name!r})", file=sys.stderr)
    return EXIT_ERROR


def setup_logging(*, verbose: bool, json_logs: bool | None = None) -> None:
    """Log to stderr; without timestamps under systemd (``$JOURNAL_STREAM``); one JSON object
    per line with journald's field names when ``json_logs`` (default: ``$TIMECLOCK_LOG_FORMAT``
    is ``json``), see :class:`JsonFormatter`."""
    if json_logs is None:
        json_logs = os.environ.get(LOG_FORMAT_ENV, "").strip().lower() == "json"
    level = logging.DEBUG if verbose else logging.INFO
    if not json_logs:
        fmt = JOURNAL_LOG_FORMAT if os.environ.get("JOURNAL_STREAM") else LOG_FORMAT
        logging.basicConfig(level=level, format=fmt)
        return
    handler = logging.StreamHandler()
    handler.setFormatter(JsonFormatter())
    logging.basicConfig(level=level, handlers=[handler])


LOG_FORMAT_ENV = "TIMECLOCK_LOG_FORMAT"
# syslog priorities (journald's PRIORITY) of Python's levels
_PRIORITY = {logging.CRITICAL: 2, logging.ERROR: 3, logging.WARNING: 4, logging.INFO: 6,
             logging.DEBUG: 7}
_RECORD_ATTRS = frozenset(vars(logging.makeLogRecord({}))) | {"message", "asctime"}


class JsonFormatter(logging.Formatter):
    """One JSON object per record, with journald's field names (systemd.journal-fields(7)):
    ``MESSAGE``, ``PRIORITY`` (syslog level), ``SYSLOG_IDENTIFIER`` (the logger), ``CODE_FILE``,
    ``CODE_LINE``, ``CODE_FUNC``, ``THREAD_NAME``, ``TIMESTAMP_US`` (µs since the
    epoch) and ``EXCEPTION`` (a traceback, if any); a record's ``extra`` fields are added with
    upper-case names (``ALERT_KIND``, ``DEVICE``), so a shipper maps them one to one and
    ``journalctl -o json`` style queries work on them."""

    def format(self, record: logging.LogRecord) -> str:
        out: dict[str, object] = {
            "MESSAGE": record.getMessage(),
            "PRIORITY": _PRIORITY.get(record.levelno, 6),
            "SYSLOG_IDENTIFIER": record.name,
            "CODE_FILE": record.pathname, "CODE_LINE": record.lineno,
            "CODE_FUNC": record.funcName, "THREAD_NAME": record.threadName,
            "TIMESTAMP_US": int(record.created * 1_000_000),
        }
        for key, value in vars(record).items():
            if key not in _RECORD_ATTRS and not key.startswith("_"):
                out[key.upper()] = value if isinstance(value, (str, int, float, bool)) \
                    or value is None else str(value)
        if record.exc_info:
            out["EXCEPTION"] = self.formatException(record.exc_info)
        return json.dumps(out, ensure_ascii=False, sort_keys=True)


def run_command(prog: str, command: Callable[[], int],
                errors: tuple[type[Exception], ...] = (), *, extra: str | None = None) -> int:
    """Run ``command`` and return its exit status, mapping errors as the module doc says;
    ``extra`` names the program's extra for :func:`missing_extra` (None: none is optional)."""
    handled: tuple[type[Exception], ...] = (*errors, WireError)
    try:
        rc = command()
        sys.stdout.flush()   # a pipe closed early raises here, inside the handler below
    except ModuleNotFoundError as e:
        if extra is None:
            raise
        return missing_extra(prog, extra, e)
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
