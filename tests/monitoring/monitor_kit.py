"""Helpers for the detector tests: an ingest pipeline over a real store with the detectors
on, fed synthetic signed punches (tests/collector/punch_kit.py) at chosen receive times."""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Any

from collector.ingest.alerts import Alerts
from collector.ingest.detectors import Detectors, DetectorSettings, IngestMonitor
from collector.ingest.pipeline import BatchResult, Inbound, Ingestor
from collector.ledger.registry import RegistrySnapshot
from collector.ledger.sqlbase import SQLStore
from tests.collector.punch_kit import T0, SimClock, enroll, envelope, new_clock
from wire.keys import SigningKey
from wire.punch import SignedPunch

S = 1_000_000   # µs per second


@dataclass
class Rig:
    """Ingestor + Detectors + an Alerts sink that records ``alert`` entries in ``store``."""

    store: SQLStore
    settings: DetectorSettings = field(default_factory=DetectorSettings)
    now: int = T0

    def __post_init__(self) -> None:
        self.sites: dict[str, str] = {}
        self.alerts = Alerts(record=True, clock=lambda: self.now)
        self.raised: list[dict[str, Any]] = []      # every alert's body, recorded or not
        self.alerts.listeners.append(self.raised.append)
        self.detectors = Detectors(self.alerts, self.settings, site_of=self.sites.get,
                                   recorded_at=self.recorded_at)
        self.ingestor = Ingestor(self.store, lambda: RegistrySnapshot.load(self.store),
                                 SigningKey.generate(), self.alerts,
                                 monitor=IngestMonitor(self.detectors))

    def recorded_at(self, idx: int) -> int | None:
        return next((e.entry.at for e in self.store.entries(idx, idx + 1)), None)

    def clock(self, site: str = "hq") -> SimClock:
        c = new_clock()
        enroll(self.store, c, site=site)
        self.sites[c.device] = site
        return c

    def send(self, clock: SimClock, items: list[SignedPunch], *, received_at: int,
             payload: bytes | None = None) -> BatchResult:
        self.now = max(self.now, received_at)
        msg = Inbound(clock.topic, payload if payload is not None else envelope(
            clock.device, items), received_at)
        return self.ingestor.process([msg], now_us=received_at)

    def tap(self, clock: SimClock, badge: str, *, ts: int, delay_s: float = 1.0) -> None:
        """One punch of ``badge`` at device time ``ts``, received ``delay_s`` later."""
        self.send(clock, [clock.punch(ts=ts, credential=badge)],
                  received_at=ts + int(delay_s * S))

    def recorded(self) -> list[dict[str, Any]]:
        """Flush the alerts into the ledger; every ``alert`` entry body in it, in order."""
        self.alerts.flush(lambda facts: self.store.append(facts, now_us=self.now))
        return [json.loads(e.body) for e in self.store.entries()
                if e.entry.kind == "alert" and e.body is not None]

    def kinds(self) -> list[str]:
        """The kinds of every alert raised so far (recorded as entries or not)."""
        return [b["alert"] for b in self.raised]
