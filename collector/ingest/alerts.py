"""Alerts and the ingest-side detectors that raise them (CONTROLS.md §5, D2, D5, D13).

An alert is one structured log line (logger ``timeclock.alerts``; with JSON logs its kind,
severity and device are fields of their own), a counter that ``counts()`` exposes (tests,
``device list``), the ``timeclock_alerts_total{kind,severity}`` metric, and under ``serve`` an
``alert`` ledger entry (:class:`Alerts` with ``record``). Alerts never delete or block
anything: detection is separate from recording. The other detectors are in
collector.ingest.detectors.

Detectors here keep only bounded in-memory state:
- :class:`GapTracker`: a gap in a device's seq sequence (DESIGN.md §6) that stays open longer
  than ``report_after_s`` is reported once (log + ``gap-open`` counter). Gaps come from the
  store's :meth:`~collector.ledger.base.LedgerStore.progress`, which is authoritative across
  collectors sharing one ledger; before reporting, the tracker re-reads progress, so a gap
  that another collector filled is not reported.
- :class:`ChainWatch`: a recorded punch whose ``prev`` is not the hash of the recorded punch
  seq-1 (or whose successor does not link to it) is a chain break: severity-1 alert
  (cloned key, restored or re-imaged device). Only neighbours this collector has seen
  recently are compared; the offline auditor (``verify``) checks the whole chain.
"""

from __future__ import annotations

import logging
import threading
from collections import Counter, OrderedDict
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from collector.ingest import metrics
from collector.ledger.base import EventFact, Fact
from wire.clock import now_us, to_us

log = logging.getLogger("timeclock.alerts")

SEVERITY_CRITICAL = 1   # possible tampering: cloned key, chain break, conflict
SEVERITY_WARNING = 2    # verification failures, lasting gaps
SEVERITY_INFO = 3


@dataclass(frozen=True, slots=True)
class Alert:
    kind: str
    severity: int
    device: str | None
    detail: str


# Alert kinds that are NOT written as ``alert`` entries (they still log, count and go to the
# listeners and metrics), for two reasons:
# - the ledger already holds their evidence as an entry of its own: a verification failure,
#   a conflict, a fork and a clock's loss report are each a ``rejection`` entry with its
#   reason (and the raw bytes in quarantine); a second entry would say the same;
# - they are about the ledger's checkpoints: a witness refusing to cosign says the ledger may
#   have been truncated or rewritten. Appending to that ledger is no place for the evidence
#   against it, and each such entry would grow the log, make a new checkpoint, get it
#   refused and raise the next alert: a loop. The refusal stays in the log line, the metric,
#   Prometheus and the webhooks, the clock's signed refusal and its status, and `device list`.
NOT_RECORDED = frozenset({"verification-failure", "conflict", "fork", "seq-loss",
                          "witness-refusal", "witness-error"})


class Alerts:
    """Alert sink: a structured log line, a counter per kind, the ``timeclock_alerts_total``
    metric and, with ``record``, an ``alert`` ledger entry. Thread-safe.

    With ``record`` every alert but those of :data:`NOT_RECORDED` kinds is queued as an
    ``alert`` entry body (protocol §7.2) and
    :meth:`flush` appends the queue in one transaction (``serve`` flushes on the writer's
    tick, so the detectors never write to the store themselves and never wait for it). A
    flush that fails keeps the queue for the next one; the queue holds at most
    ``max_unrecorded`` bodies (the oldest are dropped with an ERROR that says how many: the
    log line and the metric of each alert remain).
    """

    def __init__(self, logger: logging.Logger | None = None, *, record: bool = False,
                 max_unrecorded: int = 10_000, clock: Callable[[], int] = now_us) -> None:
        self._log = logger or log
        self._lock = threading.Lock()
        self._counts: Counter[str] = Counter()
        self._recent: list[Alert] = []
        self.record = record
        self.max_unrecorded = max_unrecorded
        self.clock = clock
        self._unrecorded: list[dict[str, Any]] = []
        self._dropped = 0
        # Called with each alert's entry body (e.g. the signed webhooks of
        # collector.ingest.detectors_webhooks); must be quick and must not raise.
        self.listeners: list[Callable[[dict[str, Any]], None]] = []

    def alert(self, kind: str, *, severity: int, device: str | None, detail: str,
              fields: Mapping[str, Any] | None = None) -> Alert:
        """Raise one alert; ``fields`` are informational extras of its ledger entry (JSON
        without floats: integers in µs) and log record; no credential, no person's name:
        device ids, idx, counts, reasons."""
        a = Alert(kind, severity, device, detail)
        body: dict[str, Any] = {**(fields or {}), "alert": kind, "severity": severity,
                                "device": device, "detail": detail[:1000], "at": self.clock()}
        with self._lock:
            self._counts[f"alert:{kind}"] += 1
            self._recent.append(a)
            del self._recent[:-1000]
            if self.record and kind not in NOT_RECORDED:
                self._unrecorded.append(body)
                if len(self._unrecorded) > self.max_unrecorded:
                    self._dropped += len(self._unrecorded) - self.max_unrecorded
                    del self._unrecorded[:-self.max_unrecorded]
        metrics.ALERTS.labels(kind, str(severity)).inc()
        for listener in self.listeners:
            try:
                listener(body)
            except Exception:  # an alert is never lost to a listener's bug
                log.exception("an alert listener failed")
        level = logging.ERROR if severity <= SEVERITY_CRITICAL else logging.WARNING
        self._log.log(level, "ALERT sev=%d kind=%s device=%s: %s", severity, kind,
                      device or "-", detail,
                      extra={"alert_kind": kind, "alert_severity": severity,
                             "device": device or ""})
        return a

    def unrecorded(self) -> int:
        with self._lock:
            return len(self._unrecorded)

    def flush(self, append: Callable[[Sequence[Fact]], object]) -> int:
        """Append the queued ``alert`` bodies with ``append`` (one transaction); returns how
        many. On any error the bodies stay queued and the error propagates."""
        with self._lock:
            todo, self._unrecorded = self._unrecorded, []
            dropped, self._dropped = self._dropped, 0
        if dropped:
            log.error("%d alert entries were not recorded in the ledger (the store was away "
                      "and the queue is bounded); their log lines and metrics remain", dropped)
        if not todo:
            return 0
        try:
            append([EventFact("alert", b) for b in todo])
        except BaseException:
            with self._lock:
                self._unrecorded[:0] = todo
                del self._unrecorded[:-self.max_unrecorded]
            raise
        return len(todo)

    def count(self, name: str, n: int = 1) -> None:
        with self._lock:
            self._counts[name] += n

    def counts(self) -> dict[str, int]:
        with self._lock:
            return dict(self._counts)

    def recent(self, kind: str | None = None) -> list[Alert]:
        """The last (≤ 1000) alerts, oldest first; optionally only one kind."""
        with self._lock:
            return [a for a in self._recent if kind is None or a.kind == kind]


Gaps = tuple[tuple[int, int], ...]


@dataclass(slots=True)
class _OpenGap:
    first: int
    last: int
    since_us: int
    reported: bool


class GapTracker:
    """Remembers when each open gap of each device was first seen; reports lasting ones once."""

    def __init__(self, report_after_s: float, alerts: Alerts) -> None:
        self.report_after_us = to_us(report_after_s)
        self.alerts = alerts
        self._open: dict[str, list[_OpenGap]] = {}

    def observe(self, device: str, gaps: Gaps, *, now_us: int) -> None:
        """Replace what is known about ``device`` by its current gaps (from the store).

        A gap that overlaps one seen before keeps the older ``since`` (a partly filled gap
        is the same outage) and its reported flag.
        """
        old = self._open.get(device, [])
        new: list[_OpenGap] = []
        for first, last in gaps:
            overlapping = [g for g in old if g.first <= last and first <= g.last]
            since = min((g.since_us for g in overlapping), default=now_us)
            reported = any(g.reported for g in overlapping)
            new.append(_OpenGap(first, last, since, reported))
        if new:
            self._open[device] = new
        else:
            self._open.pop(device, None)

    def open_gaps(self, device: str) -> Gaps:
        return tuple((g.first, g.last) for g in self._open.get(device, []))

    def report_due(self, *, now_us: int,
                   refresh: Callable[[str], Gaps] | None = None) -> list[Alert]:
        """Alert once for every gap open ≥ ``report_after_s``; ``refresh`` re-reads a device."""
        due = [d for d, gs in self._open.items()
               if any(not g.reported and now_us - g.since_us >= self.report_after_us
                      for g in gs)]
        out: list[Alert] = []
        for device in due:
            if refresh is not None:
                self.observe(device, refresh(device), now_us=now_us)
            for g in self._open.get(device, []):
                if g.reported or now_us - g.since_us < self.report_after_us:
                    continue
                g.reported = True
                self.alerts.count("gap-open")
                out.append(self.alerts.alert(
                    "gap", severity=SEVERITY_WARNING, device=device,
                    detail=f"seq {g.first}-{g.last} missing for "
                           f"{(now_us - g.since_us) // 1_000_000} s"))
        return out


class ChainWatch:
    """Checks ``prev`` links between recorded punches this collector has seen recently.

    ``lookup(device, seq) -> hash | None`` may consult the store for neighbours recorded
    by another collector or before a restart.
    """

    def __init__(self, alerts: Alerts, *, per_device: int = 4096,
                 lookup: Callable[[str, int], str | None] | None = None) -> None:
        self.alerts = alerts
        self.per_device = per_device
        self.lookup = lookup
        self._seen: dict[str, OrderedDict[int, tuple[str, str]]] = {}

    def _get(self, device: str, seq: int) -> tuple[str, str] | None:
        d = self._seen.get(device)
        return d.get(seq) if d is not None else None

    def _hash_of(self, device: str, seq: int) -> str | None:
        known = self._get(device, seq)
        if known is not None:
            return known[0]
        return self.lookup(device, seq) if self.lookup is not None else None

    def observe(self, device: str, seq: int, punch_hash: str, prev: str) -> list[Alert]:
        """Record one appended punch; alert on a broken link with either neighbour."""
        out: list[Alert] = []
        before = self._hash_of(device, seq - 1) if seq > 1 else None
        if before is not None and before != prev:
            out.append(self._break(device, seq, f"seq {seq} prev {prev[:16]}… does not link "
                                                f"to recorded seq {seq - 1} {before[:16]}…"))
        after = self._get(device, seq + 1)
        if after is not None and after[1] != punch_hash:
            out.append(self._break(device, seq + 1,
                                   f"recorded seq {seq + 1} prev {after[1][:16]}… does not "
                                   f"link to seq {seq} {punch_hash[:16]}…"))
        d = self._seen.setdefault(device, OrderedDict())
        d[seq] = (punch_hash, prev)
        d.move_to_end(seq)
        while len(d) > self.per_device:
            d.popitem(last=False)
        return out

    def _break(self, device: str, seq: int, detail: str) -> Alert:
        self.alerts.count("chain-break")
        return self.alerts.alert("chain-break", severity=SEVERITY_CRITICAL, device=device,
                                 detail=detail)


def summarize(alerts: Sequence[Alert]) -> str:
    return ", ".join(f"{a.kind}@{a.device or '-'}" for a in alerts) or "none"
