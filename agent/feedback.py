"""Feedback at the reader when a tap is refused: run a configured command (beeper, LED, relay).

Config (optional; without it a refused tap is only logged and counted)::

    [feedback]
    refused_command = ["/usr/local/bin/clock-beep", "--error"]   # argv, no shell
    command_timeout_s = 5.0

Invariants: the reader thread never waits for the command (it runs from a short-lived thread);
at most one runs at a time, so a burst of refused taps cannot fork a process per tap (taps
refused while one runs are counted in ``skipped``); a command still running after
``command_timeout_s`` is killed. The command gets a minimal environment: ``PATH``,
``TIMECLOCK_READER``, ``TIMECLOCK_ACTION`` and ``TIMECLOCK_REASON`` (``storage-full`` or
``error``), never the credential, and no stdin/stdout/stderr.
"""

from __future__ import annotations

import logging
import subprocess
import threading
from collections.abc import Sequence
from typing import Protocol

log = logging.getLogger(__name__)

_PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"


class TapInfo(Protocol):
    @property
    def reader(self) -> str: ...
    @property
    def action(self) -> str: ...


class CommandFeedback:
    """An ``on_refused`` hook (:data:`agent.punches.RefusedHook`) that runs ``argv``."""

    def __init__(self, argv: Sequence[str], *, timeout_s: float = 5.0) -> None:
        if not argv:
            raise ValueError("feedback command needs at least the program path")
        self.argv = tuple(argv)
        self.timeout_s = timeout_s
        self._cond = threading.Condition()
        self._busy = False
        self.runs = 0          # commands started
        self.failures = 0      # could not start, non-zero exit or killed at the timeout
        self.skipped = 0       # refusals not signalled because a command was still running

    def __call__(self, tap: TapInfo, reason: str) -> None:
        with self._cond:
            if self._busy:
                self.skipped += 1
                return
            self._busy = True
            self.runs += 1
        env = {"PATH": _PATH, "TIMECLOCK_READER": tap.reader, "TIMECLOCK_ACTION": tap.action,
               "TIMECLOCK_REASON": reason}
        threading.Thread(target=self._run, args=(env,), name="feedback", daemon=True).start()

    def _run(self, env: dict[str, str]) -> None:
        ok = False
        try:
            proc = subprocess.Popen(self.argv, env=env, stdin=subprocess.DEVNULL,  # noqa: S603 -- the operator's configured argv, no shell
                                    stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                                    start_new_session=True)
            try:
                rc = proc.wait(self.timeout_s)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
                log.warning("feedback command %s still running after %gs: killed",
                            self.argv[0], self.timeout_s)
            else:
                ok = rc == 0
                if not ok:
                    log.warning("feedback command %s exited with status %d", self.argv[0], rc)
        except OSError as e:
            log.warning("feedback command %s cannot run: %s", self.argv[0], e)
        finally:
            with self._cond:
                self._busy = False
                if not ok:
                    self.failures += 1
                self._cond.notify_all()

    def wait_idle(self, timeout_s: float) -> bool:
        """Block until no command runs (or ``timeout_s`` passes); True if idle."""
        with self._cond:
            return self._cond.wait_for(lambda: not self._busy, timeout_s)
