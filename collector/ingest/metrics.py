"""The collector's Prometheus metrics (prometheus-client) and their exposition.

One registry per process (:data:`REGISTRY`), shared by the layers that count: ingest (this
package: messages, outcomes, rejections, latency, store latency, alerts), the API
(collector.api.middlewares: requests by route and status, authentication failures) and the
service (collector.service.runner: a scrape-time collector of gauges read from the running
service). It lives in collector.ingest, the lowest layer that counts, so every layer above
imports it without breaking the layering (cli > service > api > … | ingest | … > ledger).

Invariants:
- names follow Prometheus conventions (``timeclock_`` prefix, base units in the name,
  ``_total`` counters, ``_seconds`` and ``_timestamp_seconds``);
- no label holds a credential or a person's name: labels are device ids, reasons, outcomes,
  alert kinds, severities, route templates (``/v1/punches/{idx}``, never the path with
  values), HTTP methods and statuses, and certificate roles;
- the hot path only increments counters and observes histograms (no I/O, no locks beyond
  prometheus-client's own); gauges that need reading state are computed at scrape time.

Exposition: :func:`serve_metrics` starts prometheus-client's HTTP server on its own
listener (``[metrics] listen``/``port``, default ``127.0.0.1:9464``; docs/operations.md
"Monitoring"): plain HTTP without authentication, so by default on loopback only, for a
local Prometheus or a reverse proxy. It is not the API's port on purpose: a scrape must work
when ``[api]`` is off, and metrics must not need an API token.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import logging
import re
import threading
from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path

from prometheus_client import (
    CollectorRegistry,
    Counter,
    Histogram,
    PlatformCollector,
    ProcessCollector,
    start_http_server,
)
from prometheus_client.core import GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from collector import CollectorError
from wire.config import Section

log = logging.getLogger("timeclock.metrics")

REGISTRY = CollectorRegistry(auto_describe=False)
ProcessCollector(registry=REGISTRY)
PlatformCollector(registry=REGISTRY)

_LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0,
                    60.0, 300.0, 3600.0)
_STORE_BUCKETS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0,
                  2.5, 10.0)

INGEST_MESSAGES = Counter(
    "timeclock_ingest_messages", "MQTT punch messages whose facts were committed (PUBACKed).",
    registry=REGISTRY)
INGEST_PUNCHES = Counter(
    "timeclock_ingest_punches", "Punches by what the ledger did with them.", ["outcome"],
    registry=REGISTRY)
INGEST_REJECTIONS = Counter(
    "timeclock_ingest_rejections", "Messages or punches quarantined, by reason.", ["reason"],
    registry=REGISTRY)
INGEST_REPEATS = Counter(
    "timeclock_ingest_rejection_repeats",
    "Rejections already recorded (a clock resending the same rejected bytes), by reason.",
    ["reason"], registry=REGISTRY)
INGEST_LATENCY = Histogram(
    "timeclock_ingest_latency_seconds",
    "From a message's arrival at the collector to the commit of its facts.",
    buckets=_LATENCY_BUCKETS, registry=REGISTRY)
STORE_APPEND = Histogram(
    "timeclock_store_append_seconds", "Duration of one ledger append transaction.",
    buckets=_STORE_BUCKETS, registry=REGISTRY)
ALERTS = Counter(
    "timeclock_alerts", "Alerts raised, by kind and severity (1 critical, 2 warning, 3 info).",
    ["kind", "severity"], registry=REGISTRY)
# Alert kinds the collector raises, with their severity: their series exist from the start at
# 0, so a rule's increase() sees the first alert of a kind (a counter born at 1 would not).
KNOWN_ALERTS = {"chain-break": 1, "conflict": 1, "fork": 1, "replay-burst": 1,
                "witness-refusal": 1, "gap": 2, "witness-error": 2, "clock-offline": 2,
                "clock-skew": 2, "implausible-time": 2, "buddy-punch": 2, "buddy-pair": 2,
                "verification-failure": 2, "auth-failure-burst": 2, "queue-age": 2,
                "api-unauthenticated-burst": 2, "review-overdue": 2, "badge-blocked": 2,
                "badge-unknown": 3, "grant-change": 3, "export-volume": 2,
                "after-hours-read": 2,
                "seq-loss": 2, "break-glass-open": 1, "break-glass-review-overdue": 2,
                "access-review-overdue": 2}
for _kind, _severity in KNOWN_ALERTS.items():
    ALERTS.labels(_kind, str(_severity))
API_REQUESTS = Counter(
    "timeclock_api_requests", "API requests by route template, method and status.",
    ["route", "method", "status"], registry=REGISTRY)
API_LATENCY = Histogram(
    "timeclock_api_request_duration_seconds", "API request duration by route template.",
    ["route"], buckets=_STORE_BUCKETS, registry=REGISTRY)
API_AUTH_FAILURES = Counter(
    "timeclock_api_auth_failures", "Failed API authentications, by method (token or cert).",
    ["method"], registry=REGISTRY)


def observe_api(route: str | None, method: str, status: int, duration_s: float) -> None:
    """One API request (route template, or ``unmatched``: never the raw path)."""
    r = route or "unmatched"
    API_REQUESTS.labels(r, method if method in _METHODS else "other", str(status)).inc()
    API_LATENCY.labels(r).observe(max(duration_s, 0.0))


_METHODS = frozenset({"GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS"})


# -- [metrics] ---------------------------------------------------------------------------------

DEFAULT_PORT = 9464


@dataclass(frozen=True, slots=True)
class MetricsSection:
    """``[metrics]``: where ``serve`` exposes ``/metrics`` (``port = 0``: off)."""

    listen: str = "127.0.0.1"
    port: int = DEFAULT_PORT


def read_metrics_section(sec: Section, host_re: re.Pattern[str]) -> MetricsSection | None:
    """``[metrics]`` if the config has one (absent: no listener, as before)."""
    d = MetricsSection()
    listen = sec.string("listen", d.listen, pattern=host_re)
    port = sec.integer("port", d.port, lo=0, hi=65535)
    sec.finish()
    return MetricsSection(listen, port) if port else None


# -- scrape-time gauges ---------------------------------------------------------------------

@dataclass(frozen=True, slots=True)
class Gauge:
    """One gauge sample for :class:`StateCollector`: name (without prefix), help, labels."""

    name: str
    help: str
    value: float
    labels: Mapping[str, str] | None = None


class StateCollector(Collector):
    """Gauges read from the running service at scrape time: ``source()`` yields
    :class:`Gauge` samples; samples of one name are grouped into one metric family. A source
    that raises costs that scrape its gauges (logged), never the scrape itself."""

    def __init__(self, source: Callable[[], Iterable[Gauge]]) -> None:
        self.source = source

    def collect(self) -> Iterator[Metric]:
        try:
            samples = list(self.source())
        except Exception:  # a scrape must not fail because one reading did
            log.exception("reading the collector's state for a metrics scrape failed")
            return
        families: dict[str, GaugeMetricFamily] = {}
        for g in samples:
            labels = dict(g.labels or {})
            fam = families.get(g.name)
            if fam is None:
                fam = families[g.name] = GaugeMetricFamily(
                    f"timeclock_{g.name}", g.help, labels=sorted(labels))
            fam.add_metric([labels[k] for k in sorted(labels)], g.value)
        yield from families.values()


def register_state(source: Callable[[], Iterable[Gauge]]) -> StateCollector:
    """Add a service's gauges to :data:`REGISTRY`; :func:`unregister_state` at stop."""
    c = StateCollector(source)
    REGISTRY.register(c)
    return c


def unregister_state(c: StateCollector) -> None:
    with contextlib.suppress(KeyError):
        REGISTRY.unregister(c)


# -- certificates -----------------------------------------------------------------------------

class CertCache:
    """Expiry of the certificate and CRL files the service loads, re-read when a file
    changes (mtime, size), so a renewal shows on the next scrape without a restart."""

    def __init__(self, files: Mapping[str, Path]) -> None:
        self.files = dict(files)
        self._lock = threading.Lock()
        self._seen: dict[str, tuple[tuple[int, int], float | None]] = {}

    def gauges(self) -> list[Gauge]:
        out: list[Gauge] = []
        for role, path in sorted(self.files.items()):
            when = self._expiry(role, path)
            if when is None:
                continue
            if role.startswith("crl"):
                out.append(Gauge("crl_next_update_timestamp_seconds",
                                 "When a CRL the collector or its broker loads must be "
                                 "reissued (nextUpdate).", when, {"crl": role}))
            else:
                out.append(Gauge("certificate_expiry_timestamp_seconds",
                                 "When a certificate the collector or its broker loads "
                                 "expires (notAfter).", when, {"certificate": role}))
        return out

    def _expiry(self, role: str, path: Path) -> float | None:
        try:
            st = path.stat()
        except OSError:
            return None
        key = (st.st_mtime_ns, st.st_size)
        with self._lock:
            seen = self._seen.get(role)
            if seen is not None and seen[0] == key:
                return seen[1]
        when = file_expiry(path, crl=role.startswith("crl"))
        with self._lock:
            self._seen[role] = (key, when)
        return when


def file_expiry(path: Path, *, crl: bool) -> float | None:
    """notAfter of the first certificate in a PEM file, or a CRL's nextUpdate; None if the
    file cannot be read or parsed (the gauge is then absent, which a rule can alert on)."""
    from cryptography import x509  # noqa: PLC0415 - only on a scrape, and cached

    try:
        data = path.read_bytes()
        if crl:
            c = x509.load_pem_x509_crl(data)
            nu: dt.datetime | None = c.next_update_utc
            return nu.timestamp() if nu is not None else None
        return x509.load_pem_x509_certificate(data).not_valid_after_utc.timestamp()
    except (OSError, ValueError) as e:
        log.warning("metrics: cannot read the expiry of %s: %s", path, e)
        return None


# -- exposition -------------------------------------------------------------------------------

class MetricsServer:
    """prometheus-client's HTTP server on ``host:port`` in a daemon thread."""

    def __init__(self, host: str, port: int, registry: CollectorRegistry = REGISTRY) -> None:
        try:
            self._server, self._thread = start_http_server(port, addr=host, registry=registry)
        except OSError as e:
            raise CollectorError(f"metrics: cannot listen on {host}:{port}: {e.strerror}; "
                                 f"choose another [metrics] port or stop what uses it") from e
        self.host = host
        self.port = int(self._server.server_address[1])
        log.info("metrics on http://%s:%d/metrics", host, self.port)

    def stop(self) -> None:
        self._server.shutdown()
        self._server.server_close()
        self._thread.join(5)


def sample_value(name: str, labels: Mapping[str, str] | None = None) -> float | None:
    """A sample's current value in :data:`REGISTRY` (tests and ``bench``)."""
    return REGISTRY.get_sample_value(name, dict(labels or {}))
