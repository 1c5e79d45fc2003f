"""Signed alert webhooks: every alert of the detectors (collector.ingest.alerts,
collector.ingest.detectors) POSTed to each ``[[webhooks]]`` endpoint, for sites without
Prometheus and Alertmanager (issue 14 item 4; docs/operations.md "Monitoring").

The request (docs/operations.md gives a receiver's check)::

    POST <url>
    Content-Type: application/json
    X-Timeclock-Timestamp: <unix seconds>
    X-Timeclock-Signature: sha256=<hex HMAC-SHA256(secret, timestamp + "." + body)>
    X-Timeclock-Delivery: <delivery id: collector, µs, sequence>

    {"v":1,"id":"…","collector":"collector.main","alert":"buddy-punch","severity":2,
     "device":"clock-0001","detail":"…","at":<µs>, …the alert entry's other fields}

Invariants:
- an alert is delivered at most ``attempts`` times per endpoint, with exponential back-off
  (``backoff_initial_s`` doubling up to ``backoff_max_s``) after a connection error, a
  timeout or a non-2xx status; a 2xx is delivered;
- every final outcome (delivered, with how many attempts; or given up, with the last error)
  is recorded: an ``access`` ledger entry of type ``webhook-delivery`` (the endpoint's host,
  never its secret or full URL), queued and appended like alert entries (:meth:`flush`), and
  counted in ``timeclock_webhook_deliveries_total{endpoint,outcome}``;
- the sender never blocks ingest: :meth:`WebhookSender.submit` only queues (bounded; an
  overflow is counted and logged, the alert itself stays in the ledger), one thread sends.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import logging
import queue
import re
import threading
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from prometheus_client import Counter

from collector import CollectorError
from collector.ingest import metrics
from collector.ledger.base import EventFact, Fact
from wire.clock import now_us
from wire.config import Section
from wire.errors import KeyFileError
from wire.keys import check_private_file

log = logging.getLogger("timeclock.webhooks")

WEBHOOK_DELIVERIES = Counter(
    "timeclock_webhook_deliveries", "Alert webhook deliveries by endpoint name and outcome "
    "(delivered, failed: given up after every attempt, dropped: the queue was full).",
    ["endpoint", "outcome"], registry=metrics.REGISTRY)

NAME_RE = re.compile(r"^[a-z0-9](?:[a-z0-9-]{0,61}[a-z0-9])?$")
MAX_QUEUE = 10_000


class WebhookError(CollectorError):
    """A webhook secret that cannot be used (at start), or one failed attempt (connection,
    timeout, non-2xx: the sender retries)."""


@dataclass(frozen=True, slots=True)
class WebhookEndpoint:
    """One ``[[webhooks]]`` table."""

    name: str
    url: str
    secret_file: Path
    min_severity: int = 2              # deliver alerts of this severity or more critical
    timeout_s: float = 5.0
    attempts: int = 8
    backoff_initial_s: float = 1.0
    backoff_max_s: float = 300.0

    @property
    def host(self) -> str:
        return urllib.parse.urlsplit(self.url).netloc


def parse_webhooks(raw: Any, base: Path, problems: list[str]) -> tuple[WebhookEndpoint, ...]:
    """``[[webhooks]]``: name, url (https, or http on loopback), secret_file (0600), and the
    optional min_severity, timeout_s, attempts, backoff_initial_s, backoff_max_s."""
    if raw is None:
        return ()
    if not isinstance(raw, list):
        problems.append("webhooks: expected an array of tables ([[webhooks]])")
        return ()
    out: list[WebhookEndpoint] = []
    for n, table in enumerate(raw):
        sec = Section(f"webhooks[{n}]", table, problems)
        d = WebhookEndpoint("-", "-", Path("-"))
        name = sec.string("name", required=True, pattern=NAME_RE)
        url = sec.string("url", required=True)
        secret = sec.path("secret_file", base, required=True)
        min_severity = sec.integer("min_severity", d.min_severity, lo=1, hi=3)
        timeout_s = sec.number("timeout_s", d.timeout_s, lo=0.1, hi=120.0)
        attempts = sec.integer("attempts", d.attempts, lo=1, hi=100)
        initial = sec.number("backoff_initial_s", d.backoff_initial_s, lo=0.01, hi=3600.0)
        most = sec.number("backoff_max_s", d.backoff_max_s, lo=0.01, hi=86_400.0)
        if url is not None:
            u = urllib.parse.urlsplit(url)
            loopback = u.hostname in ("127.0.0.1", "::1", "localhost")
            if u.scheme != "https" and not (u.scheme == "http" and loopback):
                sec.problem("url", "must be https:// (http:// only to a loopback receiver)")
        sec.finish()
        if name is not None and url is not None and secret is not None:
            out.append(WebhookEndpoint(name, url, secret, min_severity, timeout_s, attempts,
                                       initial, most))
    names = [e.name for e in out]
    if len(set(names)) != len(names):
        problems.append("webhooks: each endpoint needs its own name")
    return tuple(out)


def load_secret(path: Path) -> bytes:
    """The HMAC key: a 0600 file's bytes, stripped; at least 16 bytes."""
    try:
        check_private_file(path)
        secret = path.read_bytes().strip()
    except (KeyFileError, OSError) as e:
        raise WebhookError(f"webhook secret {path}: {e}") from e
    if len(secret) < 16:
        raise WebhookError(f"webhook secret {path}: at least 16 bytes, got {len(secret)}")
    return secret


def sign(secret: bytes, timestamp: int, body: bytes) -> str:
    """The ``X-Timeclock-Signature`` value for ``body`` sent at ``timestamp``."""
    mac = hmac.new(secret, str(timestamp).encode() + b"." + body, hashlib.sha256)
    return "sha256=" + mac.hexdigest()


def verify(secret: bytes, timestamp: str, body: bytes, signature: str) -> bool:
    """A receiver's check (constant time); the receiver also bounds the timestamp's age."""
    if not timestamp.isdigit():
        return False
    return hmac.compare_digest(sign(secret, int(timestamp), body), signature)


Post = Callable[[WebhookEndpoint, bytes, Mapping[str, str]], int]


def urllib_post(ep: WebhookEndpoint, body: bytes, headers: Mapping[str, str]) -> int:
    req = urllib.request.Request(ep.url, data=body, method="POST",  # noqa: S310 - https or loopback (parse_webhooks)
                                 headers={"Content-Type": "application/json", **headers})
    try:
        with urllib.request.urlopen(req, timeout=ep.timeout_s) as r:  # noqa: S310 - see above
            return int(r.status)
    except urllib.error.HTTPError as e:
        return int(e.code)
    except (OSError, ValueError) as e:
        raise WebhookError(f"{type(e).__name__}: {e}") from e


@dataclass
class _Job:
    endpoint: WebhookEndpoint
    secret: bytes
    body: bytes
    delivery: str
    attempt: int = 0
    due: float = 0.0
    last_error: str = ""


class WebhookSender:
    """One thread delivering alerts to every endpoint; see the module doc."""

    def __init__(self, endpoints: Sequence[WebhookEndpoint], identity: str, *,
                 post: Post = urllib_post, clock: Callable[[], int] | None = None) -> None:
        self.identity = identity
        self.post = post
        self.clock = clock or now_us
        self.endpoints = [(ep, load_secret(ep.secret_file)) for ep in endpoints]
        self._queue: queue.Queue[_Job] = queue.Queue(maxsize=MAX_QUEUE)
        self._waiting: list[_Job] = []
        self._lock = threading.Lock()
        self._records: list[dict[str, Any]] = []
        self._seq = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="alert-webhooks", daemon=True)

    def start(self) -> None:
        if self.endpoints:
            self._thread.start()

    def stop(self, timeout_s: float = 5.0) -> None:
        self._stop.set()
        if self._thread.is_alive():
            self._thread.join(timeout_s)

    # -- the Alerts listener ----------------------------------------------------------------
    def submit(self, body: Mapping[str, Any]) -> None:
        """Queue one alert (its ledger entry body) for every endpoint it is severe enough for."""
        for ep, secret in self.endpoints:
            if int(body.get("severity", 3)) > ep.min_severity:
                continue
            with self._lock:
                self._seq += 1
                delivery = f"{self.identity}:{self.clock()}:{self._seq}"
            payload = json.dumps({**body, "v": 1, "id": delivery, "collector": self.identity},
                                 sort_keys=True, separators=(",", ":")).encode()
            try:
                self._queue.put_nowait(_Job(ep, secret, payload, delivery))
            except queue.Full:
                WEBHOOK_DELIVERIES.labels(ep.name, "dropped").inc()
                log.error("webhook %s: the delivery queue is full; alert %s not sent (it "
                          "is recorded in the ledger)", ep.name, body.get("alert"))

    # -- the sender thread ------------------------------------------------------------------
    def _run(self) -> None:
        while not self._stop.is_set():
            try:
                self._step()
            except Exception:  # top of the long-running loop
                log.exception("webhook sender step failed")
                self._stop.wait(1.0)

    def _step(self) -> None:
        now = time.monotonic()
        due = [j for j in self._waiting if j.due <= now]
        self._waiting = [j for j in self._waiting if j.due > now]
        if not due:
            wait = min((j.due for j in self._waiting), default=now + 0.5) - now
            try:
                due = [self._queue.get(timeout=max(0.01, min(wait, 0.5)))]
            except queue.Empty:
                return
        for job in due:
            self._attempt(job)

    def _attempt(self, job: _Job) -> None:
        ep = job.endpoint
        job.attempt += 1
        ts = self.clock() // 1_000_000
        headers = {"X-Timeclock-Timestamp": str(ts),
                   "X-Timeclock-Signature": sign(job.secret, ts, job.body),
                   "X-Timeclock-Delivery": job.delivery}
        try:
            status = self.post(ep, job.body, headers)
            if not 200 <= status < 300:
                raise WebhookError(f"HTTP {status}")
        except WebhookError as e:
            job.last_error = str(e)[:300]
            if job.attempt >= ep.attempts:
                self._done(job, "failed")
                return
            delay = min(ep.backoff_initial_s * 2 ** (job.attempt - 1), ep.backoff_max_s)
            job.due = time.monotonic() + delay
            self._waiting.append(job)
            log.warning("webhook %s: attempt %d of %d failed (%s); retrying in %.1f s",
                        ep.name, job.attempt, ep.attempts, job.last_error, delay)
            return
        self._done(job, "delivered")

    def _done(self, job: _Job, outcome: str) -> None:
        ep = job.endpoint
        WEBHOOK_DELIVERIES.labels(ep.name, outcome).inc()
        rec: dict[str, Any] = {"type": "webhook-delivery", "endpoint": ep.name,
                               "host": ep.host, "delivery": job.delivery, "outcome": outcome,
                               "attempts": job.attempt, "at": self.clock()}
        if outcome != "delivered":
            rec["error"] = job.last_error
            log.error("webhook %s: alert delivery %s given up after %d attempts (%s)",
                      ep.name, job.delivery, job.attempt, job.last_error)
        with self._lock:
            self._records.append(rec)
            del self._records[:-MAX_QUEUE]

    # -- recording ----------------------------------------------------------------------------
    def unrecorded(self) -> int:
        with self._lock:
            return len(self._records)

    def flush(self, append: Callable[[Sequence[Fact]], object]) -> int:
        """Append the delivery records as ``access`` entries (one transaction); on an error
        they stay queued and the error propagates."""
        with self._lock:
            todo, self._records = self._records, []
        if not todo:
            return 0
        try:
            append([EventFact("access", r) for r in todo])
        except BaseException:
            with self._lock:
                self._records[:0] = todo
            raise
        return len(todo)
