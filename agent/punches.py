"""Badge tap → committed, signed punch (DESIGN.md §3, §5).

:class:`PunchMaker` is the ``Emit`` callback the readers call. Invariants: a punch is reported
("recorded seq=N" log line, ``on_recorded`` hook for a buzzer/LED or the publisher) only after
:meth:`agent.queue.Outbox.record` has committed it; one lock serialises punches so seq and prev
come from one chain; the credential never appears in a log line or an error message.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable
from typing import Protocol

from agent.clock import ClockSource, SystemClock
from agent.errors import ReaderError
from agent.queue import Outbox
from wire.errors import WireError
from wire.keys import SigningKey
from wire.punch import Punch, SignedPunch

log = logging.getLogger(__name__)


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


class PunchMaker:
    """Turns taps into signed punches committed to the outbox. Thread-safe."""

    def __init__(self, outbox: Outbox, signing_key: SigningKey, *,
                 clock: ClockSource | None = None,
                 on_recorded: Callable[[SignedPunch], None] | None = None) -> None:
        self.outbox = outbox
        self.device = outbox.device
        self._key = signing_key
        self._clock = clock if clock is not None else SystemClock()
        self._lock = threading.Lock()
        self._hooks: list[Callable[[SignedPunch], None]] = []
        if on_recorded is not None:
            self._hooks.append(on_recorded)
        self.recorded = 0
        self.last_recorded: SignedPunch | None = None

    def add_hook(self, hook: Callable[[SignedPunch], None]) -> None:
        """Call ``hook(signed_punch)`` after each commit (e.g. wake the publisher)."""
        self._hooks.append(hook)

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
        with self._lock:
            signed = self.outbox.record(lambda seq, prev: self.make(tap, seq, prev))
            self.recorded += 1
            self.last_recorded = signed
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

    __call__ = record
