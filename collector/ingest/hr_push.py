"""Push, not only pull: recorded punches delivered to an HR system's webhook, in ledger order,
at least once, with a delivery record on the ledger (issue 16 item 1).

``timeclock-collector hr-push`` (a service of its own beside ``serve``, or a timer with
``--once``) reads the punch entries after its cursor, resolves each to the employee who held
the badge at punch time (no credential leaves), and POSTs them in batches::

    POST <url>
    Content-Type: application/json
    X-Timeclock-Timestamp: <unix seconds>
    X-Timeclock-Signature: sha256=<hex HMAC-SHA256(secret, timestamp + "." + body)>
    X-Timeclock-Delivery: <name>:<first idx>-<last idx>     (the same for every retry)

    {"v":1,"type":"punches","collector":"…","first_idx":…,"last_idx":…,"punches":[
      {"idx","entry_hash","device","site","seq","ts","time","action","employee_id",
       "badge_status"}, …]}

The signature is the one the alert webhooks use (collector.ingest.detectors_webhooks.sign).

Closed timecards (``timesheet-close``) go the same way once the punches are caught up: the
caller hands in ``timecards``, a function that says what the endpoint is still owed
(collector.records.timesheet_close.parcels: each close not yet delivered, then amendments of
delivered periods), and each parcel is one POST of ``{"v":1,"collector":…, <its body>}``
named ``X-Timeclock-Delivery: <name>:<its key>`` (``close-<idx>``,
``close-<idx>:amend-<hash>``), recorded as an ``hr-delivery`` entry with ``what`` =
``timecards`` or ``timecard-amendments``, the close idx and each employee's card digest
(docs/protocol.md §13.18.3).

Invariants:
- the cursor is the ledger itself: the last ``access`` entry of type ``hr-delivery`` of
  punches (``what`` absent or ``punches``) for the endpoint's name says which entry idx was
  delivered last; a restart resumes after it, so
  nothing is skipped, and a batch is re-sent only when its delivery record was not written
  (receivers deduplicate by ``X-Timeclock-Delivery``);
- a batch is retried ``attempts`` times with back-off doubling from ``backoff_initial_s`` up
  to ``backoff_max_s`` after an error or a non-2xx status; giving up appends an
  ``hr-delivery-failed`` entry (the endpoint's name and host, the error; never the secret or
  the full URL) and leaves the cursor where it was.
"""

from __future__ import annotations

import json
import logging
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, Protocol

from collector.ingest.detectors_webhooks import (
    Post,
    WebhookEndpoint,
    WebhookError,
    sign,
    urllib_post,
)
from collector.ledger.base import EventFact
from collector.ledger.people_tables import BadgeResolver
from collector.ledger.sqlbase import SQLStore
from wire.bodies import parse_body
from wire.canonical import canonical
from wire.clock import now_us
from wire.errors import WireError
from wire.punch import SignedPunch

log = logging.getLogger("timeclock.hr_push")

DELIVERED = "hr-delivery"
FAILED = "hr-delivery-failed"


@dataclass(frozen=True, slots=True)
class Outcome:
    delivered: int            # punches delivered in this call
    batches: int
    failed: bool              # a batch was given up (the cursor stays before it)
    parcels: int = 0          # timecard deliveries (closes and amendments)


class Parcel(Protocol):
    """One delivery other than punches (collector.records.timesheet_close.TimecardParcel)."""

    @property
    def kind(self) -> str: ...
    @property
    def key(self) -> str: ...
    @property
    def body(self) -> dict[str, Any]: ...
    @property
    def record(self) -> dict[str, Any]: ...


Parcels = Callable[[int | None], Sequence[Parcel]]
"""What the endpoint is owed besides punches; the argument: recompute only what entries from
that idx on may have changed (None: everything)."""


class HrPush:
    """Deliver the ledger's punches after the cursor to one endpoint."""

    def __init__(self, store: SQLStore, endpoint: WebhookEndpoint, secret: bytes,
                 identity: str, *, batch: int = 500, post: Post = urllib_post,
                 sleep: Callable[[float], None] = time.sleep,
                 clock: Callable[[], int] = now_us, timecards: Parcels | None = None) -> None:
        self.store, self.endpoint, self.secret, self.identity = store, endpoint, secret, identity
        self.batch, self.post, self.sleep, self.clock = batch, post, sleep, clock
        self.timecards = timecards
        self.checked: int | None = None     # ledger size up to which parcels are all sent
        self.stopping = threading.Event()

    # -- the cursor ----------------------------------------------------------------------------
    def cursor(self) -> int:
        """The first entry idx not yet delivered: after the newest delivery record's
        ``last_idx`` for this endpoint (0 when there is none)."""
        rows = self.store.query("SELECT idx FROM entries WHERE kind = 'access' "
                                "ORDER BY idx DESC")
        for (idx,) in rows:
            body = self._body(int(idx))
            if body is not None and body.get("type") == DELIVERED \
                    and body.get("endpoint") == self.endpoint.name \
                    and body.get("what", "punches") == "punches":
                return int(body["last_idx"]) + 1
        return 0

    def _body(self, idx: int) -> dict[str, Any] | None:
        se = next(self.store.entries(idx, idx + 1), None)
        if se is None or se.body is None:
            return None
        try:
            b = json.loads(se.body)
        except ValueError:
            return None
        return b if isinstance(b, dict) else None

    # -- one batch -----------------------------------------------------------------------------
    def _items(self, start: int) -> list[dict[str, Any]]:
        rows = self.store.query("SELECT idx FROM entries WHERE kind = 'punch' AND idx >= ? "
                                "ORDER BY idx LIMIT ?", (start, self.batch))
        if not rows:
            return []
        first, last = int(rows[0][0]), int(rows[-1][0])
        holders = BadgeResolver.load(self.store)
        sites = {str(d): str(s) for d, s in self.store.query("SELECT device, site FROM devices")}
        items = []
        for se in self.store.entries(first, last + 1):
            if se.entry.kind != "punch" or se.body is None:
                continue
            try:
                sp = parse_body("punch", json.loads(se.body), idx=se.entry.idx)
            except (ValueError, WireError) as e:
                # The verifier reports a bad body; the feed states the gap instead of stopping.
                log.error("entry %d: punch body unreadable (%s); not delivered", se.entry.idx, e)
                continue
            if not isinstance(sp, SignedPunch):
                continue
            p = sp.punch
            employee, status = holders.resolve(p.credential, p.ts)
            items.append({"idx": se.entry.idx, "entry_hash": se.hash, "device": p.device,
                          "site": sites.get(p.device, ""), "seq": p.seq, "ts": p.ts,
                          "time": datetime.fromtimestamp(p.ts / 1e6, UTC).isoformat(),
                          "action": p.action, "employee_id": employee,
                          "badge_status": status})
        return items

    def deliver_once(self) -> tuple[int, bool]:
        """Deliver the next batch: (punches delivered, False) or (0, True) when given up;
        (0, False) when there is nothing new."""
        start = self.cursor()
        items = self._items(start)
        if not items:
            return 0, False
        first, last = items[0]["idx"], items[-1]["idx"]
        body = canonical({"v": 1, "type": "punches", "collector": self.identity,
                          "first_idx": first, "last_idx": last, "punches": items})
        delivery = f"{self.endpoint.name}:{first}-{last}"
        ok = self._send(body, delivery, {"what": "punches", "first_idx": first,
                                         "last_idx": last, "punches": len(items)})
        return (len(items), False) if ok else (0, True)

    def deliver_parcel(self) -> tuple[int, bool]:
        """Deliver the next timecard parcel: (1, False), (0, True) when given up, (0, False)
        when the endpoint is owed nothing."""
        if self.timecards is None:
            return 0, False
        size = self.store.head()[0]
        owed = self.timecards(self.checked)
        if not owed:
            self.checked = size
            return 0, False
        p = owed[0]
        body = canonical({"v": 1, "collector": self.identity, **p.body})
        ok = self._send(body, f"{self.endpoint.name}:{p.key}", dict(p.record))
        return (1, False) if ok else (0, True)

    def _send(self, body: bytes, delivery: str, record: dict[str, Any]) -> bool:
        """POST ``body`` with retries and back-off; record the outcome. True: delivered."""
        ep = self.endpoint
        delay, error = ep.backoff_initial_s, ""
        for attempt in range(1, ep.attempts + 1):
            ts = self.clock() // 1_000_000
            headers: Mapping[str, str] = {"X-Timeclock-Timestamp": str(ts),
                                          "X-Timeclock-Signature": sign(self.secret, ts, body),
                                          "X-Timeclock-Delivery": delivery}
            try:
                status = self.post(ep, body, headers)
                if 200 <= status < 300:
                    self._record(DELIVERED, **record, attempts=attempt, delivery=delivery)
                    log.info("hr-push %s: delivered %s (attempt %d)", ep.name, delivery,
                             attempt)
                    return True
                error = f"HTTP {status}"
            except WebhookError as e:
                error = str(e)
            log.warning("hr-push %s: %s attempt %d of %d: %s", ep.name, delivery, attempt,
                        ep.attempts, error)
            if attempt < ep.attempts:
                if self.stopping.wait(0) or self._pause(delay):
                    return False
                delay = min(delay * 2, ep.backoff_max_s)
        self._record(FAILED, **record, attempts=ep.attempts, delivery=delivery,
                     error=error[:300])
        log.error("hr-push %s: gave up on %s after %d attempts: %s", ep.name, delivery,
                  ep.attempts, error)
        return False

    def _pause(self, seconds: float) -> bool:
        """Back-off; True when asked to stop meanwhile."""
        if self.sleep is time.sleep:
            return self.stopping.wait(seconds)
        self.sleep(seconds)
        return self.stopping.is_set()

    def _record(self, kind: str, **what: Any) -> None:
        body = {"type": kind, "endpoint": self.endpoint.name, "host": self.endpoint.host,
                **what}
        self.store.append([EventFact("access", body)], now_us=self.clock())

    def run(self, *, once: bool, interval_s: float) -> Outcome:
        """Deliver until caught up (``once``) or until :attr:`stopping` is set: punches
        first, then what is owed of closed periods."""
        delivered = batches = parcels = 0
        while not self.stopping.is_set():
            n, failed = self.deliver_once()
            if not n and not failed:
                sent, failed = self.deliver_parcel()
                parcels += sent
                if sent:
                    continue
            if failed:
                if once:
                    return Outcome(delivered, batches, failed=True, parcels=parcels)
                self.stopping.wait(interval_s)
                continue
            if n:
                delivered, batches = delivered + n, batches + 1
                continue
            if once:
                break
            self.stopping.wait(interval_s)
        return Outcome(delivered, batches, failed=False, parcels=parcels)
