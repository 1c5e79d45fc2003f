"""The running collector's monitoring: detectors wired to the service, its scrape-time gauges
and the ``/metrics`` listener (collector.ingest.metrics, collector.ingest.detectors).

Wiring only. :class:`ServiceMonitor` is created by collector.service.runner with the service;
the writer thread calls :meth:`ServiceMonitor.tick` (alert entries and webhook delivery
records flushed into the ledger,
offline check, the ledger's checkpoint figures cached), the MQTT thread
:meth:`ServiceMonitor.status`, and a scrape reads :meth:`ServiceMonitor.gauges` — which
never touches the store (the writer thread caches what needs SQL), so a scrape neither
waits for a batch nor delays one.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from collector import LedgerUnavailableError
from collector.ingest.alerts import Alerts
from collector.ingest.detectors import Detectors, IngestMonitor
from collector.ingest.detectors_webhooks import WebhookSender
from collector.ingest.metrics import (
    CertCache,
    Gauge,
    MetricsServer,
    StateCollector,
    register_state,
    unregister_state,
)
from collector.ingest.statuses import StatusRow, StatusTable
from collector.ledger import checkpoint_tables
from collector.ledger.sqlbase import SQLStore

if TYPE_CHECKING:
    from collector.service.config import CollectorConfig

log = logging.getLogger("timeclock.collector")

TICK_S = 1.0          # offline checks at most this often
LEDGER_EVERY_S = 5.0  # the registry and the ledger's figures (a few queries) this often
_US = 1_000_000


@dataclass(frozen=True, slots=True)
class _Ledger:
    size: int
    checkpoint_size: int | None
    checkpoint_made_at: int | None
    cosignatures: int
    cosigned_size: int | None
    cosigned_made_at: int | None


def cert_files(cfg: CollectorConfig) -> dict[str, Path]:
    """The certificate and CRL files the collector, its API and its broker load."""
    files: dict[str, Path] = {"mqtt-ca": cfg.mqtt.ca_cert, "mqtt-client": cfg.mqtt.cert}
    if cfg.api is not None:
        files["api-server"] = cfg.api.cert
        if cfg.api.client_ca is not None:
            files["api-client-ca"] = cfg.api.client_ca
        if cfg.api.crl is not None:
            files["crl-api"] = cfg.api.crl
    if cfg.broker.dir is not None:
        files["broker-server"] = cfg.broker.dir / "server.crt"
        files["crl-broker"] = cfg.broker.dir / "crl.pem"
    return files


class ServiceMonitor:
    """Detectors, gauges and the listener of one :class:`CollectorService`."""

    def __init__(self, cfg: CollectorConfig, alerts: Alerts, statuses: StatusTable, *,
                 clock: Callable[[], int], pending: Callable[[], int],
                 state: Callable[[], dict[str, object]]) -> None:
        self.cfg = cfg
        self.alerts = alerts
        self.statuses = statuses
        self.clock = clock
        self.pending = pending
        self.state = state
        self._sites: dict[str, str] = {}
        self._active: list[str] = []
        self._store: SQLStore | None = None      # the writer's store, from its first tick
        self.detectors = Detectors(alerts, cfg.detectors, site_of=self._sites.get,
                                   recorded_at=self._recorded_at)
        self.ingest = IngestMonitor(self.detectors)
        self.certs = CertCache(cert_files(cfg))
        self.started_us = clock()
        self._ticked_us: int | None = None
        self._read_us: int | None = None
        self._ledger: _Ledger | None = None
        self._collector: StateCollector | None = None
        self.server: MetricsServer | None = None
        self.webhooks: WebhookSender | None = None
        if cfg.webhooks:
            self.webhooks = WebhookSender(cfg.webhooks, cfg.collector.identity, clock=clock)
            alerts.listeners.append(self.webhooks.submit)

    def start(self) -> None:
        self._collector = register_state(self.gauges)
        if self.webhooks is not None:
            self.webhooks.start()
        m = self.cfg.metrics
        if m is not None:
            self.server = MetricsServer(m.listen, m.port)

    def stop(self) -> None:
        if self.webhooks is not None:
            self.webhooks.stop()
        if self.server is not None:
            self.server.stop()
            self.server = None
        if self._collector is not None:
            unregister_state(self._collector)
            self._collector = None

    # -- threads of the service -----------------------------------------------------------
    def status(self, row: StatusRow | None) -> None:
        """A device status message (MQTT thread)."""
        if row is not None:
            self.detectors.observe_status(row.device, row.status, row.received_at)

    def tick(self, store: SQLStore, now: int) -> None:
        """Writer thread: record queued alerts, check for offline clocks, cache figures."""
        self._store = store
        if self.alerts.unrecorded():
            self.alerts.flush(lambda facts: store.append(facts, now_us=self.clock()))
        if self.webhooks is not None and self.webhooks.unrecorded():
            self.webhooks.flush(lambda facts: store.append(facts, now_us=self.clock()))
        if self._ticked_us is not None and now - self._ticked_us < TICK_S * _US:
            return
        self._ticked_us = now
        if self._read_us is None or now - self._read_us >= LEDGER_EVERY_S * _US:
            try:
                devices = store.devices()
                self._ledger = self._read_ledger(store)
                self.detectors.badge_scans.refresh(store)    # only when a badge changed
                self.detectors.access.tick(store, now)       # the access entries since
            except LedgerUnavailableError:
                return
            self._read_us = now
            self._sites.clear()
            self._sites.update({d.device: d.site for d in devices})
            self._active = [d.device for d in devices if d.status == "active"]
        self.detectors.check(self._active, now_us=now, started_us=self.started_us)

    def _recorded_at(self, idx: int) -> int | None:
        """When entry ``idx`` was recorded (the replay detector; writer thread, after a
        commit, so on the writer's own store)."""
        store = self._store
        if store is None:
            return None
        try:
            for e in store.entries(idx, idx + 1):
                return e.entry.at
        except LedgerUnavailableError:
            return None
        return None

    @staticmethod
    def _read_ledger(store: SQLStore) -> _Ledger:
        size, _ = store.head()
        newest = checkpoint_tables.newest(store)
        cosigned = checkpoint_tables.covering(store, 0, cosigned=True) \
            if newest is not None else None
        if cosigned is not None and cosigned.cosignatures == 0:
            cosigned = None
        return _Ledger(size, newest.size if newest else None,
                       newest.made_at if newest else None,
                       newest.cosignatures if newest else 0,
                       cosigned.size if cosigned else None,
                       cosigned.made_at if cosigned else None)

    # -- a scrape ------------------------------------------------------------------------
    def gauges(self) -> Iterator[Gauge]:
        now = self.clock()
        st = self.state()
        yield Gauge("ingest_pending_messages", "Messages received and not yet committed and "
                    "acknowledged (inbox and the batch in flight).", float(self.pending()))
        yield Gauge("ingest_up", "1 while the ingest loop runs and the ledger is available.",
                    1.0 if st.get("state") == "ingesting" else 0.0)
        yield Gauge("alerts_unrecorded", "Alerts raised and not yet recorded as ledger "
                    "entries (recorded on the writer's next tick).",
                    float(self.alerts.unrecorded()))
        yield Gauge("devices_active", "Active devices in the registry.",
                    float(len(self._active)))
        lg = self._ledger
        if lg is not None:
            yield Gauge("ledger_size_entries", "Entries in the ledger.", float(lg.size))
            if lg.checkpoint_size is not None and lg.checkpoint_made_at is not None:
                yield Gauge("checkpoint_size_entries", "Size of the newest v2 checkpoint.",
                            float(lg.checkpoint_size))
                yield Gauge("checkpoint_age_seconds", "Time since the newest v2 checkpoint "
                            "was made.", max(now - lg.checkpoint_made_at, 0) / _US)
                yield Gauge("checkpoint_cosignatures", "Cosignatures the newest v2 "
                            "checkpoint carries.", float(lg.cosignatures))
                yield Gauge("cosignature_lag_entries", "Entries in the newest checkpoint "
                            "beyond the newest cosigned one (all of it if none is).",
                            float(lg.checkpoint_size - (lg.cosigned_size or 0)))
            if lg.cosigned_made_at is not None:
                yield Gauge("cosigned_checkpoint_age_seconds", "Time since the newest "
                            "cosigned checkpoint was made.",
                            max(now - lg.cosigned_made_at, 0) / _US)
        yield from self.detectors.gauges(now_us=now)
        for device, row in sorted(self.statuses.snapshot().items()):
            s = row.status
            if s is None or s.state != "online":
                continue
            lab = {"device": device}
            if s.queue is not None:
                yield Gauge("device_queue_depth", "Punches queued on a clock, not yet "
                            "receipted (its last status).", float(s.queue.depth), lab)
                if s.queue.oldest_unacked_us is not None and s.at is not None:
                    yield Gauge("device_oldest_unacked_age_seconds", "Age of a clock's oldest "
                                "unreceipted punch when it last reported.",
                                max(s.at - s.queue.oldest_unacked_us, 0) / _US, lab)
            if s.clock is not None:
                yield Gauge("device_clock_synced", "1 if a clock's kernel says its time is "
                            "synchronised (adjtimex), else 0.",
                            1.0 if s.clock == "synced" else 0.0, lab)
        yield from self.certs.gauges()
