"""The clock's Prometheus metrics: read at scrape time from the running agent's status
snapshot (agent.service.AgentService.snapshot) and its certificate files, served by
prometheus-client on ``127.0.0.1`` only (``[metrics] port``; docs/operations.md
"Monitoring").

Loopback only, by design: a clock has no business answering the network. A site scrapes it
through what already runs on the clock (node_exporter's proxy, an SSH tunnel, or a local
Prometheus agent with remote-write); the collector's ``timeclock_device_*`` metrics (from the
clocks' status messages) already cover the fleet from one place.

Invariants: nothing is counted on the punch path (the scrape reads the status snapshot the
service already maintains: queue figures from the outbox, publisher counters, reader
states); no label holds a credential (labels: device id, reader name, certificate role); a
reading that fails costs its gauges in that scrape, never the scrape.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterator, Mapping
from pathlib import Path
from typing import Any

from prometheus_client import CollectorRegistry, ProcessCollector, start_http_server
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from agent.config import AgentConfig
from agent.errors import AgentError

log = logging.getLogger(__name__)

LOOPBACK = ("127.0.0.1", "::1")
DEFAULT_PORT = 9465


def _gauge(name: str, doc: str, value: float, labels: Mapping[str, str] | None = None
           ) -> GaugeMetricFamily:
    g = GaugeMetricFamily(f"timeclock_agent_{name}", doc, labels=sorted(labels or {}))
    g.add_metric([str((labels or {})[k]) for k in sorted(labels or {})], value)
    return g


def _counter(name: str, doc: str, value: float) -> CounterMetricFamily:
    return CounterMetricFamily(f"timeclock_agent_{name}", doc, value=value)


def _expiry(path: Path | None) -> float | None:
    if path is None:
        return None
    from cryptography import x509  # noqa: PLC0415 - only on a scrape

    try:
        return x509.load_pem_x509_certificate(path.read_bytes()).not_valid_after_utc.timestamp()
    except (OSError, ValueError):
        return None


class AgentCollector(Collector):
    """Gauges and counters of one agent from ``snapshot()`` (the status dict)."""

    def __init__(self, snapshot: Callable[[], Mapping[str, Any]],
                 certificates: Mapping[str, Path | None],
                 now_us: Callable[[], int]) -> None:
        self.snapshot = snapshot
        self.certificates = dict(certificates)
        self.now_us = now_us

    def collect(self) -> Iterator[Metric]:
        try:
            snap = self.snapshot()
        except Exception:  # a scrape must not fail because one reading did
            log.exception("reading the agent's status for a metrics scrape failed")
            return
        now = self.now_us()
        yield _gauge("up", "1 while the agent runs and records.",
                     1.0 if snap.get("state") == "running" else 0.0)
        q = snap.get("queue") or {}
        if isinstance(q.get("depth"), int):
            yield _gauge("queue_depth", "Punches committed on the clock and not yet "
                         "receipted by the collector.", float(q["depth"]))
            oldest = q.get("oldest_created_us")
            yield _gauge("oldest_unacked_age_seconds", "Age of the oldest punch without a "
                         "receipt (0 when the queue is empty).",
                         max(now - oldest, 0) / 1e6 if isinstance(oldest, int) else 0.0)
            yield _gauge("last_seq", "The clock's last recorded sequence number.",
                         float(q.get("last_seq") or 0))
        yield _gauge("clock_synced", "1 if the kernel says the clock is synchronised "
                     "(adjtimex), else 0.", 1.0 if snap.get("clock") == "synced" else 0.0)
        pub = snap.get("publisher") or {}
        yield _gauge("broker_connected", "1 while connected to the broker.",
                     1.0 if pub.get("status") == "connected" else 0.0)
        if isinstance(pub.get("last_receipt_us"), int):
            yield _gauge("last_receipt_timestamp_seconds", "When the last valid receipt "
                         "arrived.", pub["last_receipt_us"] / 1e6)
        for key, name, doc in (
                ("receipted", "punches_receipted", "Punches receipted by the collector "
                                                   "since start."),
                ("resent_punches", "punches_resent", "Punches published again after no "
                                                     "receipt came in time, since start."),
                ("bad_receipts", "bad_receipts", "Receipts that failed verification, since "
                                                 "start.")):
            if isinstance(pub.get(key), int):
                yield _counter(name, doc, float(pub[key]))
        yield _counter("punches_recorded", "Punches recorded since the agent started.",
                       float(snap.get("recorded_since_start") or 0))
        storage = snap.get("storage") or {}
        if isinstance(storage, dict):
            yield _gauge("storage_full", "1 while the disk is full and taps are refused.",
                         1.0 if storage.get("state") == "full" else 0.0)
            if isinstance(storage.get("refused_taps"), int):
                yield _counter("taps_refused", "Taps refused since start (storage full).",
                               float(storage["refused_taps"]))
        yield from _feedback(snap.get("feedback"))
        readers = snap.get("readers") or {}
        fam = GaugeMetricFamily("timeclock_agent_reader_open", "1 while a reader's device is "
                                "open.", labels=["reader"])
        for name, r in sorted(readers.items()):
            fam.add_metric([str(name)], 1.0 if (r or {}).get("status") == "open" else 0.0)
        yield fam
        certs = GaugeMetricFamily("timeclock_agent_certificate_expiry_timestamp_seconds",
                                  "When a certificate the agent loads expires (notAfter).",
                                  labels=["certificate"])
        for role, path in sorted(self.certificates.items()):
            when = _expiry(path)
            if when is not None:
                certs.add_metric([role], when)
        yield certs


def _feedback(fb: Any) -> Iterator[Metric]:
    """Feedback at the clock (agent.feedback): signals per outcome, failed and skipped runs
    per outcome and backend, badge outcome messages ignored."""
    if not isinstance(fb, dict):
        return
    sig = CounterMetricFamily("timeclock_agent_feedback_signals", "Outcomes signalled at the "
                              "clock since start.", labels=["outcome"])
    for outcome, n in sorted((fb.get("signals") or {}).items()):
        sig.add_metric([str(outcome)], float(n))
    yield sig
    fail = CounterMetricFamily("timeclock_agent_feedback_failures", "Feedback runs that "
                               "could not start, failed or were killed at the timeout.",
                               labels=["outcome", "backend"])
    skip = CounterMetricFamily("timeclock_agent_feedback_skipped", "Feedback not run because "
                               "the backend's previous run still went on.",
                               labels=["outcome", "backend"])
    for b in fb.get("backends") or []:
        labels = [str(b.get("outcome")), str(b.get("kind"))]
        fail.add_metric(labels, float(b.get("failures") or 0))
        skip.add_metric(labels, float(b.get("skipped") or 0))
    yield fail
    yield skip
    yield _counter("badge_outcomes_ignored", "Badge outcome messages ignored (malformed, not "
                   "signed by the log key, or not about a recent punch of this clock).",
                   float(fb.get("badge_messages_ignored") or 0))


class AgentMetrics:
    """The loopback listener of one agent; ``stop()`` closes it."""

    def __init__(self, port: int, collector: AgentCollector, *, host: str = "127.0.0.1"
                 ) -> None:
        if host not in LOOPBACK:
            raise AgentError(f"metrics: {host} is not a loopback address; the agent serves "
                             f"metrics on 127.0.0.1 or ::1 only")
        self.registry = CollectorRegistry(auto_describe=False)
        ProcessCollector(registry=self.registry)
        self.registry.register(collector)
        try:
            self._server, self._thread = start_http_server(port, addr=host,
                                                           registry=self.registry)
        except OSError as e:
            raise AgentError(f"metrics: cannot listen on {host}:{port}: {e.strerror}; "
                             f"choose another [metrics] port") from e
        self.port = int(self._server.server_address[1])
        log.info("metrics on http://%s:%d/metrics", host, self.port)

    def stop(self) -> None:
        self._server.shutdown()
        self._server.server_close()
        self._thread.join(5)


def start_for(config: AgentConfig, snapshot: Callable[[], Mapping[str, Any]], *,
              now_us: Callable[[], int]) -> AgentMetrics | None:
    """The listener ``[metrics]`` asks for (None when ``port = 0``, the default)."""
    m = config.metrics
    if not m.port:
        return None
    certs = {"client": config.keys.tls_cert, "ca": config.keys.ca_cert}
    return AgentMetrics(m.port, AgentCollector(snapshot, certs, now_us), host=m.listen)
