"""Badge tap → committed, signed punch (DESIGN.md §3, §5).

:class:`PunchMaker` is the ``Emit`` callback the readers call. Invariants: a punch is reported
("recorded seq=N" log line, ``on_recorded`` hook for a buzzer/LED or the publisher) only after
:meth:`agent.queue.Outbox.record` has committed it; one lock serialises punches so seq and prev
come from one chain; the credential never appears in a log line or an error message.

A tap that cannot be committed is *refused*: no seq is used, the ``on_refused`` hooks run (a
buzzer or LED at the reader, see :mod:`agent.feedback`), and the error goes back to the reader.
A refusal for lack of space is counted (``refused``), logged with one clear line per tap (after
:data:`REFUSAL_LOG_BURST` lines, one line per :data:`REFUSAL_LOG_EVERY_S` with the count
of those not logged) and raised as :class:`agent.errors.TapRefusedError`. So is a refusal
because the clock's sequence is refusing (its queue is behind its sequence mark, see
:mod:`agent.seqmark`): reason :data:`REFUSED_SEQUENCE`, counted in ``refused_sequence``.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from typing import Protocol

from agent.clock import ClockSource, SystemClock
from agent.errors import QueueFullError, ReaderError, SequenceRefusedError, TapRefusedError
from agent.queue import Outbox
from wire.errors import WireError
from wire.keys import SigningKey
from wire.punch import Punch, SignedPunch

log = logging.getLogger(__name__)

REFUSAL_LOG_BURST = 10
REFUSAL_LOG_EVERY_S = 60.0
REFUSED_FULL = "storage-full"      # reasons given to on_refused hooks
REFUSED_ERROR = "error"
REFUSED_SEQUENCE = "sequence"    # the queue is behind its sequence mark: resume needed


class TapLike(Protocol):
    """What a reader hands over (``agent.readers.base.Tap``)."""

    @property
    def reader(self) -> str: ...
    @property
    def credential(self) -> str: ...
    @property
    def action(self) -> str: ...
    @property
    def mono_us(self) -> int: ...


RefusedHook = Callable[[TapLike, str], None]
"""``hook(tap, reason)`` after a tap was refused; ``reason`` is :data:`REFUSED_FULL`,
:data:`REFUSED_SEQUENCE` or :data:`REFUSED_ERROR`. Never given the credential to log: hooks
must not log ``tap``."""


class _RefusalLog:
    """Lets the first :data:`REFUSAL_LOG_BURST` refusals through, then one per interval."""

    def __init__(self, monotonic: Callable[[], float]) -> None:
        self._mono = monotonic
        self._logged = 0
        self._next = 0.0
        self.suppressed = 0

    def allow(self) -> bool:
        now = self._mono()
        if self._logged < REFUSAL_LOG_BURST or now >= self._next:
            self._logged += 1
            self._next = now + REFUSAL_LOG_EVERY_S
            return True
        self.suppressed += 1
        return False


class PunchMaker:
    """Turns taps into signed punches committed to the outbox. Thread-safe."""

    def __init__(self, outbox: Outbox, signing_key: SigningKey, *,
                 clock: ClockSource | None = None,
                 on_recorded: Callable[[SignedPunch], None] | None = None,
                 on_refused: RefusedHook | None = None,
                 monotonic: Callable[[], float] = time.monotonic) -> None:
        self.outbox = outbox
        self.device = outbox.device
        self._key = signing_key
        self._clock = clock if clock is not None else SystemClock()
        self._lock = threading.Lock()
        self._hooks: list[Callable[[SignedPunch], None]] = []
        if on_recorded is not None:
            self._hooks.append(on_recorded)
        self._refused_hooks: list[RefusedHook] = []
        if on_refused is not None:
            self._refused_hooks.append(on_refused)
        self._refusal_log = _RefusalLog(monotonic)
        self.recorded = 0
        self.refused = 0                 # taps refused because the queue's disk is full
        self.refused_sequence = 0        # taps refused because the sequence is refusing
        self.last_recorded: SignedPunch | None = None

    def add_hook(self, hook: Callable[[SignedPunch], None]) -> None:
        """Call ``hook(signed_punch)`` after each commit (e.g. wake the publisher)."""
        self._hooks.append(hook)

    def add_refused_hook(self, hook: RefusedHook) -> None:
        """Call ``hook(tap, reason)`` after each refused tap (e.g. a buzzer at the reader)."""
        self._refused_hooks.append(hook)

    def make(self, tap: TapLike, seq: int, prev: str) -> SignedPunch:
        """Build and sign the punch for ``tap`` at ``seq``/``prev`` (no I/O besides clocks)."""
        s = self._clock.sample()
        # ts and mono name the instant of the tap, not of the commit: a reader thread may wait
        # behind another punch, and both clocks must describe the same moment.
        lag = max(0, s.mono_us - tap.mono_us) if tap.mono_us > 0 else 0
        mono = tap.mono_us if tap.mono_us > 0 else s.mono_us
        try:
            punch = Punch(device=self.device, seq=seq, prev=prev, ts=max(0, s.ts_us - lag),
                          clock=s.clock, boot=s.boot, mono=mono, reader=tap.reader,
                          credential=tap.credential, action=tap.action, key=self._key.key_id)
        except WireError as e:
            # The wire message quotes the offending value, which may be the credential.
            raise ReaderError(f"reader {tap.reader!r}: tap rejected: field "
                              f"{e.field or '?'} is invalid") from None
        return punch.sign(self._key)

    def record(self, tap: TapLike) -> SignedPunch:
        """Commit one punch for ``tap``; return after the commit (the readers' ``Emit``)."""
        try:
            with self._lock:
                signed = self.outbox.record(lambda seq, prev: self.make(tap, seq, prev))
                self.recorded += 1
                self.last_recorded = signed
        except QueueFullError as e:
            with self._lock:
                self.refused += 1
                n = self.refused
            if self._refusal_log.allow():
                skipped, self._refusal_log.suppressed = self._refusal_log.suppressed, 0
                log.error("tap REFUSED on reader %s (action %s): %s; the punch was not "
                          "recorded, tap again once space is freed (%d refused since start%s)",
                          tap.reader, tap.action, e, n,
                          f", {skipped} not logged" if skipped else "")
            self._refused_hook(tap, REFUSED_FULL)
            raise TapRefusedError(f"storage full, the punch was not recorded ({e})") from e
        except SequenceRefusedError as e:
            with self._lock:
                self.refused_sequence += 1
                n = self.refused_sequence
            if self._refusal_log.allow():
                skipped, self._refusal_log.suppressed = self._refusal_log.suppressed, 0
                log.error("tap REFUSED on reader %s (action %s): %s; the punch was not "
                          "recorded: this clock needs `timeclock-agent resume` (%d refused "
                          "since start%s)", tap.reader, tap.action, e, n,
                          f", {skipped} not logged" if skipped else "")
            self._refused_hook(tap, REFUSED_SEQUENCE)
            raise TapRefusedError(f"sequence refusing, the punch was not recorded ({e})") from e
        except Exception:
            self._refused_hook(tap, REFUSED_ERROR)
            raise
        p = signed.punch
        log.info("recorded seq=%d reader=%s action=%s clock=%s", p.seq, p.reader, p.action,
                 p.clock)
        for hook in self._hooks:
            try:
                hook(signed)
            except Exception:
                # A broken buzzer must not turn a committed punch into a reader error.
                log.exception("on_recorded hook failed for seq=%d", p.seq)
        return signed

    def _refused_hook(self, tap: TapLike, reason: str) -> None:
        for hook in self._refused_hooks:
            try:
                hook(tap, reason)
            except Exception:
                log.exception("on_refused hook failed on reader %s", tap.reader)

    __call__ = record
