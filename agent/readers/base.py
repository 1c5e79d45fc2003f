"""The badge-reader plugin contract: taps, reader state, debounce, and the reopen loop.

Role: every reader kind subclasses :class:`Reader` and implements ``from_config`` (validate its
own config section) and ``_open`` (open the device and return a :class:`Session`). The base
class owns everything that must behave the same for every kind: the debounce, the exponential
reopen backoff, the counters and the observable :class:`ReaderState`.

Invariants:
- A :class:`Tap` that exists is valid: reader name, credential and action match the wire
  contract (DESIGN.md §3), so a tap can always become a punch.
- ``emit`` is called only for taps the :class:`Debouncer` accepted, one at a time, from the
  thread that runs :meth:`Reader.run`.
- ``run`` never raises for device errors (missing device, unplug, bad frames, missing hardware
  library): it records why in ``state`` and retries with backoff until ``stop`` is set, then
  returns within about one poll interval (:data:`POLL_S`).
- Credentials are never logged: log lines name the reader and the reason only.
"""

from __future__ import annotations

import dataclasses
import logging
import threading
import time
from abc import ABC, abstractmethod
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any, ClassVar

from agent.errors import ReaderError, TapRefusedError
from wire.clock import to_us
from wire.fields import CREDENTIAL_RE, DEVICE_ID_RE
from wire.punch import ACTIONS

log = logging.getLogger("agent.readers")

#: Sessions return from :meth:`Session.poll` at least this often, so ``stop`` is seen promptly.
POLL_S = 0.1

STATUSES = frozenset({"opening", "open", "reopening", "closed", "error"})


def mono_us() -> int:
    """CLOCK_MONOTONIC in microseconds: the clock of :attr:`Tap.mono_us` and punch ``mono``."""
    return time.monotonic_ns() // 1000


@dataclass(frozen=True, slots=True)
class Tap:
    """One badge read that completed on a reader."""

    reader: str       # reader name from the config (pattern of wire.fields.DEVICE_ID_RE)
    credential: str = field(repr=False)   # "<format>:<id>" (CREDENTIAL_RE); never in a repr
    action: str       # "in", "out", "break-start", "break-end" or "punch"
    mono_us: int      # time.monotonic_ns() // 1000 when the read completed

    def __post_init__(self) -> None:
        if not DEVICE_ID_RE.fullmatch(self.reader):
            raise ValueError(f"tap: reader name {self.reader!r} does not match "
                             f"{DEVICE_ID_RE.pattern}")
        if not CREDENTIAL_RE.fullmatch(self.credential):
            # The value itself is not echoed: it may be a badge id.
            raise ValueError(f"tap: credential does not match {CREDENTIAL_RE.pattern}")
        if self.action not in ACTIONS:
            raise ValueError(f"tap: action {self.action!r} is not one of {sorted(ACTIONS)}")
        if isinstance(self.mono_us, bool) or not isinstance(self.mono_us, int) or self.mono_us < 0:
            raise ValueError("tap: mono_us must be a non-negative integer")


Emit = Callable[[Tap], None]
"""Thread-safe; blocks until the punch is durably committed; raises if it could not be."""


@dataclass(frozen=True, slots=True)
class ReaderState:
    """What an operator (and the status topic) sees of one reader."""

    status: str        # "opening" | "open" | "reopening" | "closed" | "error"
    detail: str        # human text, e.g. "/dev/ttyAMA0 vanished: [Errno 5] ...; retry in 4s"
    taps: int          # taps emitted (accepted by the debounce and committed by emit)
    read_errors: int   # bad frames/checksums/partial reads
    reopens: int       # successful opens after the first one


@dataclass(frozen=True, slots=True)
class Read:
    """An id read by a session, before the reader adds its format prefix and debounce."""

    credential: str   # full "<format>:<id>"
    mono_us: int


class Debouncer:
    """Same credential on the same reader within ``window_s`` is one punch.

    The window slides: it is measured from the last time the credential was *seen*, accepted
    or not. A card left lying on a reader that repeats its frame (the RDM6300 does, several
    times a second) is therefore one punch, not one per window. ``window_s = 0`` disables it.
    """

    def __init__(self, window_s: float = 3.0) -> None:
        if window_s < 0:
            raise ValueError("debounce window must be ≥ 0")
        self.window_us = to_us(window_s)
        self._last_seen: dict[tuple[str, str], int] = {}
        self._lock = threading.Lock()

    def accept(self, tap: Tap) -> bool:
        """True if ``tap`` is a new punch; False if it repeats one within the window."""
        key = (tap.reader, tap.credential)
        with self._lock:
            last = self._last_seen.get(key)
            self._last_seen[key] = tap.mono_us if last is None else max(last, tap.mono_us)
            if len(self._last_seen) > 1024:
                self._prune(tap.mono_us)
            return last is None or self.window_us == 0 or tap.mono_us - last > self.window_us

    def _prune(self, now_us: int) -> None:
        stale = [k for k, t in self._last_seen.items() if now_us - t > self.window_us]
        for k in stale:
            del self._last_seen[k]


class Session(ABC):
    """An open device. Created by :meth:`Reader._open`, closed by the reopen loop."""

    @abstractmethod
    def poll(self, stop: threading.Event) -> list[Read]:
        """Return the reads completed since the last call, within about :data:`POLL_S`.

        Raise :class:`ReaderError` or :class:`OSError` when the device is gone.
        """

    @abstractmethod
    def close(self) -> None:
        """Release the device; never raises."""


@dataclass(frozen=True, slots=True)
class CommonOptions:
    """Config keys every reader kind accepts (validated in :mod:`agent.readers.options`)."""

    action: str = "punch"
    debounce_s: float = 3.0
    reopen_min_s: float = 1.0
    reopen_max_s: float = 30.0


class Reader(ABC):
    """A badge reader. ``run`` is the thread body; ``state`` may be read from any thread."""

    kind: ClassVar[str]

    def __init__(self, name: str, common: CommonOptions) -> None:
        if not DEVICE_ID_RE.fullmatch(name):
            raise ValueError(f"reader name {name!r} does not match {DEVICE_ID_RE.pattern}")
        self.name = name
        self.action = common.action
        self.debounce_s = common.debounce_s
        self.reopen_min_s = common.reopen_min_s
        self.reopen_max_s = common.reopen_max_s
        self._cond = threading.Condition()
        self._state = ReaderState("closed", "not started", 0, 0, 0)

    # ---- plugin hooks -------------------------------------------------------------------

    @classmethod
    @abstractmethod
    def from_config(cls, name: str, section: Mapping[str, Any]) -> Reader:
        """Validate this reader's own section; raise agent.errors.ConfigError listing EVERY
        problem, each prefixed with its key path readers.<name>.<key>. Unknown keys are errors."""

    @abstractmethod
    def describe(self) -> str:
        """The device this reader uses, for state details and logs (e.g. the port path)."""

    @abstractmethod
    def _open(self, on_error: Callable[[str], None]) -> Session:
        """Open the device. Raise ReaderError/OSError/ImportError if it cannot be opened.

        ``on_error(reason)`` counts and logs one read error (bad frame, partial read); the
        reason must not contain the credential.
        """

    # ---- observation ----------------------------------------------------------------------

    @property
    def state(self) -> ReaderState:
        with self._cond:
            return self._state

    def wait_for(self, predicate: Callable[[ReaderState], bool], timeout_s: float) -> bool:
        """Block until ``predicate(state)`` holds or ``timeout_s`` passes; True if it held."""
        with self._cond:
            return self._cond.wait_for(lambda: predicate(self._state), timeout_s)

    def _update(self, **changes: Any) -> None:
        with self._cond:
            self._state = dataclasses.replace(self._state, **changes)
            self._cond.notify_all()

    def _read_error(self, reason: str) -> None:
        with self._cond:  # an RLock: _update nests
            n = self._state.read_errors + 1
            self._update(read_errors=n)
        # A noisy line could produce thousands of these: log the first few, then a sample.
        if n <= 10 or n % 100 == 0:
            log.warning("reader %s: read error #%d: %s", self.name, n, reason)

    # ---- the thread body ------------------------------------------------------------------

    def run(self, emit: Emit, stop: threading.Event) -> None:
        """Blocking: open, read taps, call emit(tap) (debounced), reopen with exponential
        backoff when the device disappears, return promptly after stop is set. Never raises
        for device errors; an exception from ``emit`` is logged and shown in ``state``."""
        debouncer = Debouncer(self.debounce_s)
        delay = self.reopen_min_s
        opened_before = False
        self._update(status="opening", detail=f"opening {self.describe()}")
        while not stop.is_set():
            try:
                session = self._open(self._read_error)
            except (ReaderError, OSError) as e:
                why = f"cannot open {self.describe()}: {e}"
                status = "reopening"
            except ImportError as e:
                why = f"hardware library missing: {e}"
                status = "error"
            except Exception as e:  # a plugin bug must not kill the thread; retry
                log.exception("reader %s: unexpected error while opening", self.name)
                why = f"unexpected error while opening {self.describe()}: {e!r}"
                status = "error"
            else:
                if opened_before:
                    self._update(reopens=self.state.reopens + 1)
                opened_before = True
                delay = self.reopen_min_s
                self._update(status="open", detail=f"reading {self.describe()}")
                log.info("reader %s: opened %s", self.name, self.describe())
                try:
                    self._pump(session, emit, stop, debouncer)
                    continue  # stop was set
                except (ReaderError, OSError) as e:
                    why = f"{self.describe()} vanished: {e}"
                    status = "reopening"
                except Exception as e:  # top of a long-running loop: log with traceback
                    log.exception("reader %s: unexpected error while reading", self.name)
                    why = f"unexpected error while reading {self.describe()}: {e!r}"
                    status = "error"
                finally:
                    session.close()
            log.warning("reader %s: %s; retry in %gs", self.name, why, delay)
            self._update(status=status, detail=f"{why}; retry in {delay:g}s")
            stop.wait(delay)
            delay = min(delay * 2, self.reopen_max_s)
        self._update(status="closed", detail="stopped")

    def _pump(self, session: Session, emit: Emit, stop: threading.Event,
              debouncer: Debouncer) -> None:
        while not stop.is_set():
            for read in session.poll(stop):
                tap = Tap(self.name, read.credential, self.action, read.mono_us)
                if not debouncer.accept(tap):
                    log.debug("reader %s: repeat within %gs debounced", self.name,
                              self.debounce_s)
                    continue
                self._deliver(emit, tap)

    def _deliver(self, emit: Emit, tap: Tap) -> None:
        try:
            emit(tap)
        except TapRefusedError as e:
            # Refused (a full disk): emit has logged it, rate-limited; no traceback per tap.
            self._update(status="error", detail=f"last tap refused: {e}")
            return
        except Exception as e:
            # Not a device error: the punch was not recorded. Keep reading (the next tap may
            # succeed) and make the failure visible in the state until one does.
            log.exception("reader %s: a tap was read but could not be recorded", self.name)
            self._update(status="error", detail=f"last tap not recorded: {e}")
            return
        s = self.state
        if s.status == "error":
            self._update(taps=s.taps + 1, status="open", detail=f"reading {self.describe()}")
        else:
            self._update(taps=s.taps + 1)
