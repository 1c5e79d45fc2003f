"""Feedback at the clock: what happened to a tap (or to the clock) said by a beeper, an LED, a
relay or a display (issue 15 item 5; docs/operations.md "Feedback at the clock").

Config (optional; without it nothing runs, outcomes are only logged and counted)::

    [feedback]
    refused_command = ["/usr/local/bin/clock-beep", "--error"]   # a tap refused (argv, no shell)
    command_timeout_s = 5.0          # every backend run is bounded by this

    [feedback.outcomes]              # a command per outcome
    recorded = ["/usr/local/bin/clock-beep", "1"]
    unknown-badge = ["/usr/local/bin/clock-beep", "3"]

    [feedback.display]               # a display hook: one JSON line on stdin per outcome
    command = ["/usr/local/bin/clock-display"]
    outcomes = ["recorded", "unknown-badge", "blocked-badge"]   # default: every outcome

    [feedback.gpio]                  # GPIO through libgpiod (agent.feedback_gpio)
    recorded = {chip = "/dev/gpiochip0", line = 17, pattern = "on:200"}
    blocked-badge = {chip = "/dev/gpiochip0", line = 27, pattern = "on:200,off:100,on:200"}

Outcomes (:data:`OUTCOMES`): ``recorded`` (the collector's signed receipt covers the punch:
late, after the round trip), ``unknown-badge`` / ``blocked-badge`` (the collector's signed
badge outcome, wire.badge_outcome: later still), ``queued-offline`` (at once: the punch is
committed on the clock while the broker is unreachable), and the certificate states of
agent.certstate (``revoked``, ``expired``, ``not-yet-valid``, ``unknown-ca``, ``key-mismatch``,
``broker-untrusted``: once when the state begins, and for every tap while the clock cannot
connect because of it, instead of ``queued-offline``).

Invariants: feedback never blocks or loses a punch. Nothing runs on the caller's thread (each
run is a short-lived daemon thread); each backend runs at most one at a time, so a burst
cannot fork a process per tap (runs refused meanwhile are counted in ``skipped``; the display
hook keeps up to 8 waiting, so it shows every outcome of a normal pace, in order); a command
or display still running after ``command_timeout_s`` is killed, a GPIO pattern is no longer
than it (checked in the config). A failing backend is logged once (WARNING; later failures at
DEBUG) and counted (``failures``; the agent metrics). A command gets a minimal environment
(``PATH`` and ``TIMECLOCK_*`` of the event: ``OUTCOME``, ``READER``, ``ACTION``, ``REASON``,
``SEQ``, ``DEVICE``), never the credential, and no stdout/stderr.
"""

from __future__ import annotations

import json
import logging
import subprocess
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from typing import TYPE_CHECKING, Any, Protocol

from wire.badge_outcome import SignedBadgeOutcome
from wire.errors import WireError

if TYPE_CHECKING:
    from agent.config import FeedbackConfig
    from wire.keys import VerifyKey

log = logging.getLogger(__name__)

_PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"


class TapInfo(Protocol):
    @property
    def reader(self) -> str: ...
    @property
    def action(self) -> str: ...


CERT_OUTCOMES = ("revoked", "expired", "not-yet-valid", "unknown-ca", "key-mismatch",
                 "broker-untrusted")
"""The outcomes of agent.certstate.STATES."""
OUTCOMES = ("recorded", "unknown-badge", "blocked-badge", "queued-offline", *CERT_OUTCOMES)
"""Outcomes with configurable feedback (``[feedback.outcomes|display|gpio]``)."""
MESSAGES = {
    "recorded": "recorded",
    "unknown-badge": "badge not known: see HR or your manager",
    "blocked-badge": "badge blocked or reported lost: see HR",
    "queued-offline": "recorded on the clock, not yet sent (offline)",
    "revoked": "clock revoked: call IT",
    "expired": "clock certificate expired: call IT",
    "not-yet-valid": "clock time wrong (behind): call IT",
    "unknown-ca": "clock not enrolled at this site: call IT",
    "key-mismatch": "clock keys damaged: call IT",
    "broker-untrusted": "server not trusted: call IT",
}
"""The one-line text a display hook gets as ``message`` (the ``outcome`` is the stable name)."""

Event = Mapping[str, str | int | None]


class Backend:
    """One way of signalling (a command, a display hook, a GPIO line), at most one run at a
    time, each run on its own daemon thread; subclasses implement :meth:`_do`."""

    kind = "backend"
    queue_max = 0       # events kept while a run goes on (0: skipped at once)

    def __init__(self, name: str, *, timeout_s: float) -> None:
        self.name = name
        self.timeout_s = timeout_s
        self._cond = threading.Condition()
        self._busy = False
        self._warned = False
        self._queued: list[Event] = []
        self.runs = 0          # runs started
        self.failures = 0      # could not start, failed, or killed at the timeout
        self.skipped = 0       # not signalled because a run was still going

    def run(self, event: Event) -> bool:
        """Start a run for ``event``; False if one still runs (then the event waits, up to
        ``queue_max`` of them, else it is counted in ``skipped``)."""
        with self._cond:
            if self._busy:
                if len(self._queued) < self.queue_max:
                    self._queued.append(dict(event))
                    return True
                self.skipped += 1
                return False
            self._busy = True
            self.runs += 1
        threading.Thread(target=self._guarded, args=(dict(event),), name=f"feedback-{self.kind}",
                         daemon=True).start()
        return True

    def _guarded(self, event: Event) -> None:
        while True:
            ok = False
            try:
                ok = self._do(event)
            except Exception as e:  # top of the run's thread: a backend bug costs a beep only
                self.failed(f"failed: {type(e).__name__}: {e}")
            with self._cond:
                if not ok:
                    self.failures += 1
                if not self._queued:
                    self._busy = False
                    self._cond.notify_all()
                    return
                event = self._queued.pop(0)
                self.runs += 1

    def failed(self, what: str) -> None:
        """Log a failure: the first at WARNING, the rest at DEBUG (they are counted)."""
        level = logging.DEBUG if self._warned else logging.WARNING
        self._warned = True
        log.log(level, "feedback %s %s %s", self.kind, self.name, what)

    def _do(self, event: Event) -> bool:
        raise NotImplementedError

    @property
    def busy(self) -> bool:
        """A run is going (or waiting)."""
        with self._cond:
            return self._busy

    def wait_idle(self, timeout_s: float) -> bool:
        """Block until no run is going (or ``timeout_s`` passes); True if idle."""
        with self._cond:
            return self._cond.wait_for(lambda: not self._busy, timeout_s)


def _env(event: Event) -> dict[str, str]:
    env = {"PATH": _PATH}
    for k in ("outcome", "reader", "action", "reason", "seq", "device"):
        v = event.get(k)
        if v is not None:
            env[f"TIMECLOCK_{k.upper()}"] = str(v)
    return env


class CommandFeedback(Backend):
    """Runs ``argv`` (no shell); also an ``on_refused`` hook (agent.punches.RefusedHook)."""

    kind = "command"
    stdin_line = False

    def __init__(self, argv: Sequence[str], *, timeout_s: float = 5.0) -> None:
        if not argv:
            raise ValueError("feedback command needs at least the program path")
        super().__init__(argv[0], timeout_s=timeout_s)
        self.argv = tuple(argv)

    def __call__(self, tap: TapInfo, reason: str) -> None:
        self.run({"reader": tap.reader, "action": tap.action, "reason": reason})

    def _do(self, event: Event) -> bool:
        line = (json.dumps(dict(event), sort_keys=True, separators=(",", ":")) + "\n").encode()
        try:
            proc = subprocess.Popen(self.argv, env=_env(event),  # noqa: S603 -- the operator's configured argv, no shell
                                    stdin=subprocess.PIPE if self.stdin_line
                                    else subprocess.DEVNULL,
                                    stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                                    start_new_session=True)
        except OSError as e:
            self.failed(f"cannot run: {e}")
            return False
        try:
            if self.stdin_line and proc.stdin is not None:
                try:
                    proc.stdin.write(line)      # < 1 KiB: fits the pipe, never blocks
                    proc.stdin.close()
                except OSError:
                    pass                        # it exited without reading: its status says
            rc = proc.wait(self.timeout_s)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
            self.failed(f"still running after {self.timeout_s:g}s: killed")
            return False
        if rc != 0:
            self.failed(f"exited with status {rc}")
            return False
        return True


class DisplayFeedback(CommandFeedback):
    """A display hook: runs ``argv`` with one JSON line on stdin per outcome
    (``{"at_us","device","message","outcome","reader","seq"}``, sorted keys; absent values
    null), the same environment as a command, bounded by the same timeout."""

    kind = "display"
    stdin_line = True
    queue_max = 8       # a display shows every outcome, in order (a few may wait)


class OutcomeFeedback:
    """Per outcome: a command, the display hook and a GPIO pattern, each if configured."""

    def __init__(self, commands: Mapping[str, Sequence[str]], *, timeout_s: float = 5.0,
                 display: DisplayFeedback | None = None,
                 display_outcomes: Sequence[str] = OUTCOMES,
                 gpio: Mapping[str, Backend] | None = None, device: str | None = None) -> None:
        unknown = sorted((set(commands) | set(gpio or {}) | set(display_outcomes))
                         - set(OUTCOMES))
        if unknown:
            raise ValueError(f"unknown feedback outcome(s): {', '.join(unknown)}")
        self.device = device
        self.commands = {name: CommandFeedback(argv, timeout_s=timeout_s)
                         for name, argv in commands.items()}
        self.display = display
        self.display_outcomes = frozenset(display_outcomes)
        self.gpio = dict(gpio or {})
        self.signalled: list[str] = []     # outcomes signalled, in order (tests); last 100
        self.counts: dict[str, int] = dict.fromkeys(OUTCOMES, 0)
        self._lock = threading.Lock()

    @classmethod
    def from_config(cls, fb: FeedbackConfig, *, device: str | None = None) -> OutcomeFeedback:
        """The backends ``[feedback]`` configures (GPIO lines are requested per run)."""
        gpio: dict[str, Backend] = {}
        if fb.gpio:
            from agent.feedback_gpio import GpioFeedback  # noqa: PLC0415 -- gpiod only if used

            gpio = {name: GpioFeedback(spec) for name, spec in fb.gpio.items()}
        display = (DisplayFeedback(fb.display_command, timeout_s=fb.command_timeout_s)
                   if fb.display_command else None)
        return cls(fb.outcomes, timeout_s=fb.command_timeout_s, display=display,
                   display_outcomes=fb.display_outcomes, gpio=gpio, device=device)

    def backends(self, outcome: str) -> list[Backend]:
        found: list[Backend] = []
        if (cmd := self.commands.get(outcome)) is not None:
            found.append(cmd)
        if self.display is not None and outcome in self.display_outcomes:
            found.append(self.display)
        if (g := self.gpio.get(outcome)) is not None:
            found.append(g)
        return found

    def signal(self, outcome: str, *, reader: str | None = None, seq: int | None = None,
               at_us: int | None = None) -> bool:
        """Run ``outcome``'s backends (never waits for them); True if any started."""
        if outcome not in OUTCOMES:
            raise ValueError(f"unknown feedback outcome {outcome!r}")
        with self._lock:
            self.signalled.append(outcome)
            del self.signalled[:-100]
            self.counts[outcome] += 1
        event: dict[str, Any] = {"outcome": outcome, "message": MESSAGES[outcome],
                                 "device": self.device, "reader": reader, "seq": seq,
                                 "at_us": at_us}
        started = False
        for b in self.backends(outcome):
            started = b.run(event) or started
        if started:
            log.info("feedback: signalling %s%s", outcome, "" if seq is None else f" (seq {seq})")
        return started

    def wait_idle(self, timeout_s: float) -> bool:
        """Every backend idle (tests, shutdown)."""
        every = [*self.commands.values(), *self.gpio.values(),
                 *([self.display] if self.display else [])]
        return all(b.wait_idle(timeout_s) for b in every)

    def stats(self) -> dict[str, Any]:
        """For the status snapshot and the metrics: signals per outcome, backend figures."""
        with self._lock:
            signals = {k: v for k, v in self.counts.items() if v}
        backends = []
        for outcome, b in ([(o, c) for o, c in self.commands.items()]
                           + [(o, g) for o, g in self.gpio.items()]):
            backends.append({"outcome": outcome, "kind": b.kind, "runs": b.runs,
                             "failures": b.failures, "skipped": b.skipped, "busy": b.busy})
        if self.display is not None:
            d = self.display
            backends.append({"outcome": "*", "kind": d.kind, "runs": d.runs,
                             "failures": d.failures, "skipped": d.skipped, "busy": d.busy})
        return {"signals": signals, "backends": backends}


class PunchOutcomes:
    """The clock's side of the outcomes of its own punches (wired by agent.service):

    - :meth:`recorded` (after each commit, reader thread): ``queued-offline`` at once while the
      publisher is not connected (the certificate's outcome instead while a blocking
      certificate state is the reason), and the punch is remembered (seq → hash, the newest
      :data:`RECENT_MAX`) for what the collector says of it later;
    - :meth:`receipted` (a verified receipt deleted these rows): ``recorded``, once per receipt,
      for punches recorded online by this process (a backlog drained after an outage, or from
      before a restart, makes no sound);
    - :meth:`badge_message` (a message on the device's ``badge-outcome`` topic):
      ``unknown-badge`` or ``blocked-badge`` only if it parses strictly, the clock's log key
      signed it for this clock, and it names a remembered punch (seq and hash) not yet told
      about; anything else is ignored, counted (``ignored``) and logged (at most once a minute
      per reason). Nothing here can make the clock say ``recorded``.
    """

    RECENT_MAX = 4096
    LOG_EVERY_S = 60.0

    def __init__(self, feedback: OutcomeFeedback, device: str, log_key: VerifyKey | None, *,
                 connection: Callable[[], tuple[bool, str | None]] | None = None,
                 monotonic: Callable[[], float] = time.monotonic) -> None:
        self.feedback = feedback
        self.device = device
        self.log_key = log_key            # None: every badge message is ignored
        self.connection = connection      # () -> (connected, certificate outcome or None)
        self._mono = monotonic
        self._lock = threading.Lock()
        self._recent: dict[int, list[Any]] = {}   # seq -> [hash, reader, offline, told]
        self._logged: dict[str, float] = {}
        self.ignored = 0
        self.accepted = 0

    def recorded(self, seq: int, punch_hash: str, reader: str) -> None:
        connected, cert_outcome = (True, None) if self.connection is None else self.connection()
        with self._lock:
            self._recent[seq] = [punch_hash, reader, not connected, False]
            while len(self._recent) > self.RECENT_MAX:
                del self._recent[next(iter(self._recent))]
        if not connected:
            self.feedback.signal(cert_outcome or "queued-offline", reader=reader, seq=seq)

    def receipted(self, seqs: Sequence[int]) -> None:
        with self._lock:
            online = [s for s in seqs if (r := self._recent.get(s)) is not None and not r[2]]
            reader = self._recent[max(online)][1] if online else None
        if online:
            self.feedback.signal("recorded", reader=reader, seq=max(online))

    def badge_message(self, payload: bytes) -> None:
        if self.log_key is None:
            self._ignore("no-log-key", "no [keys] log_public_key to verify it with")
            return
        try:
            o = SignedBadgeOutcome.from_bytes(payload).verify(self.log_key, self.device)
        except WireError as e:
            self._ignore(type(e).__name__, str(e)[:200])
            return
        reader: str | None = None
        with self._lock:
            r = self._recent.get(o.seq)
            ok = r is not None and r[0] == o.hash and not r[3]
            if ok and r is not None:
                r[3] = True
                reader = r[1]
        if not ok:
            self._ignore("not-ours", f"seq {o.seq} is not a punch this clock recorded "
                                     "recently and was not told about yet (a replay?)")
            return
        with self._lock:
            self.accepted += 1
        log.warning("the collector says punch seq %d was of a badge %s", o.seq, o.badge)
        self.feedback.signal("unknown-badge" if o.badge == "unknown" else "blocked-badge",
                             reader=reader, seq=o.seq)

    def _ignore(self, reason: str, detail: str) -> None:
        now = self._mono()
        with self._lock:
            self.ignored += 1
            due = now >= self._logged.get(reason, float("-inf")) + self.LOG_EVERY_S
            if due:
                self._logged[reason] = now
        if due:
            log.warning("ignored a badge outcome message (%s): %s", reason, detail)

    def stats(self) -> dict[str, Any]:
        with self._lock:
            return {**self.feedback.stats(), "badge_messages": self.accepted,
                    "badge_messages_ignored": self.ignored}


def feedback_problems(fb: FeedbackConfig) -> list[str]:
    """What ``check-config`` finds wrong with ``[feedback]`` on this machine, one line each
    with its key path: a program that does not exist or is not executable, a GPIO chip or line
    that is missing (agent.feedback_gpio.check_line)."""
    import os  # noqa: PLC0415 -- check-config only

    problems: list[str] = []
    commands = [("feedback.refused_command", fb.refused_command),
                ("feedback.display.command", fb.display_command),
                *((f"feedback.outcomes.{k}", v) for k, v in fb.outcomes.items())]
    for key, argv in commands:
        if argv and not os.access(argv[0], os.X_OK):
            problems.append(f"{key}: {argv[0]} does not exist or is not executable")
    if fb.gpio:
        from agent.feedback_gpio import check_line  # noqa: PLC0415 -- gpiod only if used

        for name, spec in fb.gpio.items():
            if (bad := check_line(spec)) is not None:
                problems.append(f"feedback.gpio.{name}: {bad}")
    return problems
