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

Per-outcome commands (:class:`OutcomeFeedback`): the clock's certificate states of
agent.certstate signal once, when the state begins (not at every retry)::

    [feedback.outcomes]                    # default: nothing runs for any outcome
    revoked = ["/usr/local/bin/clock-beep", "3"]
    expired = ["/usr/local/bin/clock-led", "red"]

Outcomes: :data:`OUTCOMES`. The command gets ``PATH`` and ``TIMECLOCK_OUTCOME``.
"""

from __future__ import annotations

import logging
import subprocess
import threading
from collections.abc import Mapping, Sequence
from typing import Protocol

log = logging.getLogger(__name__)

_PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"


class TapInfo(Protocol):
    @property
    def reader(self) -> str: ...
    @property
    def action(self) -> str: ...


OUTCOMES = ("revoked", "expired", "not-yet-valid", "unknown-ca", "key-mismatch",
            "broker-untrusted")
"""Outcomes with a configurable command (``[feedback.outcomes]``): agent.certstate.STATES."""


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
        self.run({"TIMECLOCK_READER": tap.reader, "TIMECLOCK_ACTION": tap.action,
                  "TIMECLOCK_REASON": reason})

    def run(self, extra_env: dict[str, str]) -> bool:
        """Start the command with ``PATH`` plus ``extra_env``; False if one still runs."""
        with self._cond:
            if self._busy:
                self.skipped += 1
                return False
            self._busy = True
            self.runs += 1
        env = {"PATH": _PATH, **extra_env}
        threading.Thread(target=self._run, args=(env,), name="feedback", daemon=True).start()
        return True

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


class OutcomeFeedback:
    """``[feedback.outcomes]``: one :class:`CommandFeedback` per configured outcome."""

    def __init__(self, commands: Mapping[str, Sequence[str]], *, timeout_s: float = 5.0) -> None:
        unknown = sorted(set(commands) - set(OUTCOMES))
        if unknown:
            raise ValueError(f"unknown feedback outcome(s): {', '.join(unknown)}")
        self.commands = {name: CommandFeedback(argv, timeout_s=timeout_s)
                         for name, argv in commands.items()}
        self.signalled: list[str] = []     # outcomes signalled, in order (status, tests)

    def signal(self, outcome: str) -> bool:
        """Run ``outcome``'s command, if one is configured; True if it started."""
        if outcome not in OUTCOMES:
            raise ValueError(f"unknown feedback outcome {outcome!r}")
        self.signalled.append(outcome)
        cmd = self.commands.get(outcome)
        if cmd is None:
            return False
        log.info("feedback: signalling %s", outcome)
        return cmd.run({"TIMECLOCK_OUTCOME": outcome})
