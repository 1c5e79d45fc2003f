"""``simulated``: a real reader plugin with no hardware, for demos, benches and tests.

It "reads" a badge from ``credentials`` every ``interval_s`` (± uniform ``jitter_s``), up to
``count`` reads (0 = forever), then stays open and idle until stopped. The pick is random
among the credentials, never the same one twice in a row when there are several (so the
debounce does not swallow a demo's taps).

Invariants: with ``seed`` set the sequence of (delay, credential) is fully deterministic
(:func:`schedule` is the pure generator); reads go through the same debounce and emit path as
every other kind; ``count`` counts reads generated, before the debounce.
"""

from __future__ import annotations

import random
import threading
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from typing import Any

from agent.readers.base import POLL_S, CommonOptions, Read, Reader, Session, mono_us
from agent.readers.options import FORMAT_RE, ID_RE, SectionParser


def schedule(credentials: Sequence[str], *, interval_s: float, jitter_s: float = 0.0,
             count: int = 0, seed: int | None = None) -> Iterator[tuple[float, str]]:
    """Yield ``(delay_s, credential)``: wait ``delay_s`` after the previous read, then read."""
    rng = random.Random(seed)  # noqa: S311 - demo data, not security
    previous: str | None = None
    n = 0
    while count == 0 or n < count:
        delay = interval_s + (rng.uniform(-jitter_s, jitter_s) if jitter_s else 0.0)
        choices = [c for c in credentials if c != previous] or list(credentials)
        previous = rng.choice(choices)
        n += 1
        yield max(0.0, delay), previous


class SimulatedSession(Session):
    def __init__(self, reads: Iterator[tuple[float, str]]) -> None:
        self._reads = reads
        self._next: tuple[float, str] | None = None
        self._due = time.monotonic()
        self._advance()

    def _advance(self) -> None:
        self._next = next(self._reads, None)
        if self._next is not None:
            self._due += self._next[0]

    def poll(self, stop: threading.Event) -> list[Read]:
        if self._next is None:  # count reached: idle until stopped
            stop.wait(POLL_S)
            return []
        wait = self._due - time.monotonic()
        if wait > 0:
            stop.wait(min(wait, POLL_S))
            if time.monotonic() < self._due:
                return []
        cred = self._next[1]
        self._advance()
        return [Read(cred, mono_us())]

    def close(self) -> None:
        pass


class SimulatedReader(Reader):
    """Config: ``credentials`` (list of ids, required), ``interval_s`` (5.0), ``count`` (0),
    ``format`` ("sim"), ``jitter_s`` (0.0), ``seed`` (none: random)."""

    kind = "simulated"

    def __init__(self, name: str, common: CommonOptions, *, credentials: Sequence[str],
                 interval_s: float = 5.0, count: int = 0, fmt: str = "sim",
                 jitter_s: float = 0.0, seed: int | None = None) -> None:
        super().__init__(name, common)
        if not credentials:
            raise ValueError("simulated reader needs at least one credential")
        self.credentials = [f"{fmt}:{c}" for c in credentials]
        self.interval_s = interval_s
        self.count = count
        self.jitter_s = jitter_s
        self.seed = seed

    @classmethod
    def from_config(cls, name: str, section: Mapping[str, Any]) -> SimulatedReader:
        p = SectionParser(name, section)
        common = p.common(cls.kind)
        credentials = p.string_list("credentials", pattern=ID_RE)
        interval_s = p.number("interval_s", 5.0, minimum=0.001, maximum=86400.0)
        count = p.integer("count", 0, minimum=0)
        fmt = p.string("format", "sim", pattern=FORMAT_RE)
        jitter_s = p.number("jitter_s", 0.0, minimum=0.0, maximum=86400.0)
        if jitter_s > interval_s:
            p.problem("jitter_s", f"must be ≤ interval_s ({interval_s:g})")
        seed = p.integer("seed", 0) if p.has("seed") else None
        p.finish()
        return cls(name, common, credentials=credentials, interval_s=interval_s, count=count,
                   fmt=fmt, jitter_s=jitter_s, seed=seed)

    def describe(self) -> str:
        return f"simulated badges every {self.interval_s:g}s"

    def _open(self, on_error: Callable[[str], None]) -> Session:
        return SimulatedSession(schedule(self.credentials, interval_s=self.interval_s,
                                         jitter_s=self.jitter_s, count=self.count,
                                         seed=self.seed))
