"""Closing a pay period, and what an HR endpoint is owed of closed periods (issue 16 item 1:
"signed webhooks deliver new punches and closed timecards").

``timeclock-collector timesheet-close --period DATE --by P --approved-by Q`` appends ONE
``access`` entry of type ``timesheet-close`` (docs/protocol.md §13.18.2): the pay period
(first and last local day, its kind), the rules, the two principals (dual control: different
names, refused otherwise), the ledger size the timecards were computed at, and every
employee's timecard of the period with its SHA-256 (``digest``, over the card's canonical
JSON). The closed timecards are then in the ledger itself, as they were at the close.

:func:`parcels` says what one endpoint has not been sent yet, from the ledger alone (its
``hr-delivery`` entries are the record): each close not yet delivered, as the timecards it
holds; and for a period already delivered, every employee whose timecard computed now (later
corrections, late punches, a badge reassigned) differs from the version last delivered, as an
amendment naming the digest it replaces and the correction entries it rests on. A closed
timecard never changes silently: the close entry keeps the original, and each amendment is
delivered and recorded.

Invariants: a period closes once (a second close of the same days and kind is refused); a
period closes only after its last local day has ended everywhere (UTC-12); the card's
``digest`` is over the card without it.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from datetime import UTC, date, datetime, timedelta
from typing import Any

from collector import CollectorError
from collector.ledger import queries
from collector.ledger.base import EventFact
from collector.ledger.sqlbase import PunchQuery, SQLStore
from collector.records.exports import Fixed
from collector.records.timesheet_export import load
from collector.records.timesheets import Rules, Timesheet, hours, period_of, shift_row, zone
from wire.canonical import canonical

CLOSE = "timesheet-close"
DELIVERED = "hr-delivery"          # collector.ingest.hr_push writes these
TIMECARDS, AMENDMENTS = "timecards", "timecard-amendments"
US = 1_000_000
DAY_US = 86_400 * US
LATEST_OFFSET_US = 12 * 3600 * US  # UTC-12: the last place where a day ends


class TimesheetCloseError(CollectorError):
    """A pay period cannot be closed (dual control, already closed, not over yet)."""


def window(first: date, last: date) -> tuple[int, int]:
    """The device-time range that holds every shift starting on a local day of the period, in
    any time zone (UTC+14 .. UTC-12), with overnight shifts: a day either side, and one more."""
    since = _midnight(first - timedelta(days=1))
    return since, _midnight(last + timedelta(days=2))


def _midnight(d: date) -> int:
    return int(datetime(d.year, d.month, d.day, tzinfo=UTC).timestamp()) * US


def digest(card: dict[str, Any]) -> str:
    return hashlib.sha256(canonical({k: v for k, v in card.items() if k != "digest"}))\
        .hexdigest()


def timecard_body(sheet: Timesheet, first: date, last: date, rules: Rules) -> dict[str, Any]:
    """One employee's timecard of the period as JSON (the webhook's and the close entry's)."""
    tz = zone(sheet.timezone)
    shifts = [s for s in sheet.shifts if first <= s.day <= last]
    days = {d.isoformat(): hours(v) for d, v in sheet.hours_by_day().items()
            if first <= d <= last}
    total = sum(s.worked_us for s in shifts)
    card: dict[str, Any] = {
        "employee_id": sheet.employee_id, "timezone": sheet.timezone,
        "period": {"first": first.isoformat(), "last": last.isoformat(),
                   "kind": rules.period},
        "hours_by_day": days, "total_hours": hours(total),
        "shifts": [shift_row(s, tz) for s in shifts],
        "exceptions": [{"day": e.day.isoformat(), "kind": e.kind, "punch": e.punch,
                        "detail": e.detail}
                       for e in sheet.exceptions if first <= e.day <= last],
        "corrections": sorted({c for s in shifts for c in s.corrections})}
    card["digest"] = digest(card)
    return card


def timecards(store: SQLStore, first: date, last: date, rules: Rules, corrections: Fixed,
              *, size: int | None = None) -> list[dict[str, Any]]:
    """Every employee's timecard of the period (those with a shift or an exception in it)."""
    since, until = window(first, last)
    sheets = load(store, PunchQuery(since=since, until=until), rules, corrections, size=size)
    cards = [timecard_body(sh, first, last, rules) for sh in sheets.sheets]
    return [c for c in cards if c["shifts"] or c["exceptions"]]


@dataclass(frozen=True, slots=True)
class Close:
    idx: int
    first: date
    last: date
    rules: Rules
    cards: tuple[dict[str, Any], ...]

    @property
    def period(self) -> dict[str, str]:
        return {"first": self.first.isoformat(), "last": self.last.isoformat(),
                "kind": self.rules.period}


def _access_bodies(store: SQLStore) -> Iterable[tuple[int, dict[str, Any]]]:
    for idx, raw in queries.bodies_of_kind(store, "access", queries.idxs_of_kind(store,
                                                                                  "access")):
        try:
            b = json.loads(raw)
        except ValueError:
            continue
        if isinstance(b, dict):
            yield idx, b


def closes(store: SQLStore) -> list[Close]:
    """Every ``timesheet-close`` entry, in ledger order."""
    out = []
    for idx, b in _access_bodies(store):
        if b.get("type") != CLOSE:
            continue
        try:
            p = b["period"]
            out.append(Close(idx, date.fromisoformat(p["first"]), date.fromisoformat(p["last"]),
                             Rules.from_dict(b["rules"]), tuple(b["timecards"])))
        except (KeyError, TypeError, ValueError) as e:
            raise TimesheetCloseError(f"ledger idx {idx}: a timesheet-close entry this "
                                      f"collector cannot read ({e})") from e
    return out


def close_period(store: SQLStore, *, day: date, rules: Rules, corrections: Fixed, by: str,
                 approved_by: str, reason: str, now_us: int) -> tuple[int, dict[str, Any]]:
    """Close the pay period of ``rules`` that holds local day ``day``: (entry idx, body)."""
    if by == approved_by:
        raise TimesheetCloseError(f"dual control: {by} asked to close the period and cannot "
                                  f"approve it too (--approved-by names a second principal)")
    first, last = period_of(day, rules)
    ends = _midnight(last + timedelta(days=1)) + LATEST_OFFSET_US
    if now_us < ends:
        raise TimesheetCloseError(
            f"the pay period {first} – {last} has not ended everywhere yet (its last day ends "
            f"at {datetime.fromtimestamp(ends / US, UTC).isoformat()} in UTC-12): close it "
            f"after that")
    for c in closes(store):
        if (c.first, c.last, c.rules.period) == (first, last, rules.period):
            raise TimesheetCloseError(f"the pay period {first} – {last} ({rules.period}) was "
                                      f"closed already (ledger idx {c.idx}); a later change "
                                      f"is delivered as an amendment, not a second close")
    size = store.head()[0]
    cards = timecards(store, first, last, rules, corrections, size=size)
    body = {"type": CLOSE, "period": {"first": first.isoformat(), "last": last.isoformat(),
                                      "kind": rules.period},
            "rules": rules.to_dict(), "by": by, "approved_by": approved_by,
            "reason": reason, "ledger_size": size, "timecards": cards,
            "digests": {c["employee_id"]: c["digest"] for c in cards}}
    [res] = store.append([EventFact("access", body)], now_us=now_us)
    return res.idx, body


# -- what an endpoint is owed ---------------------------------------------------------------

@dataclass(frozen=True, slots=True)
class TimecardParcel:
    """One POST for collector.ingest.hr_push: ``body`` (without ``v`` and ``collector``),
    ``key`` (the idempotency key's suffix, the same on every retry) and ``record`` (what the
    ``hr-delivery`` entry says of it)."""

    kind: str
    key: str
    body: dict[str, Any]
    record: dict[str, Any]


def delivered(store: SQLStore, endpoint: str) -> dict[int, dict[str, str]]:
    """close idx -> employee -> digest of the version last delivered to ``endpoint``."""
    out: dict[int, dict[str, str]] = {}
    for _, b in _access_bodies(store):
        if b.get("type") != DELIVERED or b.get("endpoint") != endpoint \
                or b.get("what") not in (TIMECARDS, AMENDMENTS):
            continue
        close_idx, digests = b.get("close_idx"), b.get("digests")
        if isinstance(close_idx, int) and isinstance(digests, dict):
            out.setdefault(close_idx, {}).update(digests)
    return out


def touched(store: SQLStore, since_idx: int) -> tuple[bool, list[int]]:
    """What entries from ``since_idx`` on may change a closed timecard: (every period — a
    directory or badge change; the device times of new and corrected punches)."""
    kinds = store.query("SELECT kind, idx FROM entries WHERE idx >= ? AND kind IN "
                        "('employee', 'badge', 'correction')", (since_idx,))
    if any(k in ("employee", "badge") for k, _ in kinds):
        return True, []
    times = [int(t) for (t,) in store.query("SELECT ts FROM punches WHERE idx >= ?",
                                            (since_idx,))]
    fixed = [int(i) for k, i in kinds if k == "correction"]
    for _, raw in queries.bodies_of_kind(store, "correction", fixed):
        original = json.loads(raw).get("original_idx")
        times += [int(t) for (t,) in store.query("SELECT ts FROM punches WHERE idx = ?",
                                                 (original,))]
        after = json.loads(raw).get("after")
        if isinstance(after, int):
            times.append(after)
    return False, times


def parcels(store: SQLStore, endpoint: str, corrections: Callable[[], Fixed], *,
            since_idx: int | None = None) -> list[TimecardParcel]:
    """What ``endpoint`` is owed of closed periods, oldest close first (module doc).
    ``corrections``: the approved corrections, asked for only when a period is recomputed;
    ``since_idx``: only periods that entries from that idx on may have changed are recomputed
    for amendments (None: every closed period)."""
    sent = delivered(store, endpoint)
    everything, times = (True, []) if since_idx is None else touched(store, since_idx)
    out = []
    for c in closes(store):
        if c.idx not in sent:
            out.append(TimecardParcel(
                TIMECARDS, f"close-{c.idx}",
                {"type": TIMECARDS, "close_idx": c.idx, "period": c.period,
                 "timecards": list(c.cards)},
                {"what": TIMECARDS, "close_idx": c.idx, "period": c.period,
                 "digests": {k["employee_id"]: k["digest"] for k in c.cards}}))
            continue
        since, until = window(c.first, c.last)
        if not everything and not any(since <= t < until for t in times):
            continue
        amendments = _amendments(store, c, sent[c.idx], corrections())
        if amendments:
            key = hashlib.sha256(canonical(amendments)).hexdigest()[:16]
            out.append(TimecardParcel(
                AMENDMENTS, f"close-{c.idx}:amend-{key}",
                {"type": AMENDMENTS, "close_idx": c.idx, "period": c.period,
                 "amendments": amendments},
                {"what": AMENDMENTS, "close_idx": c.idx, "period": c.period,
                 "digests": {a["employee_id"]: a["timecard"]["digest"] for a in amendments},
                 "amends": {a["employee_id"]: a["amends"] for a in amendments}}))
    return out


def _amendments(store: SQLStore, c: Close, sent: dict[str, str], corrections: Fixed
                ) -> list[dict[str, Any]]:
    now = {k["employee_id"]: k for k in timecards(store, c.first, c.last, c.rules,
                                                  corrections)}
    out = []
    for emp in sorted(set(now) | set(sent)):
        card = now.get(emp) or timecard_body(Timesheet(emp, _tz(c.cards, emp)), c.first,
                                             c.last, c.rules)
        if card["digest"] != sent.get(emp):
            out.append({"employee_id": emp, "amends": sent.get(emp), "timecard": card,
                        "corrections": card["corrections"]})
    return out


def _tz(cards: Sequence[dict[str, Any]], emp: str) -> str:
    return next((str(k["timezone"]) for k in cards if k["employee_id"] == emp), "UTC")
