"""Bodies of ``review`` ledger entries (docs/protocol.md §7.2 "review"; CONTROLS.md D13),
parsed strictly in the manner of wire.bodies (which dispatches to them).

A ``review`` body is one act of a named reviewer:

- ``ack`` / ``resolve`` of the ``alert`` entry at ``alert_idx`` (an earlier entry), with a
  note: an alert is open until it is resolved; resolving needs an earlier ``ack``;
- ``sign-off`` of one period of a scheduled review (``daily-alerts``: the alerts of one UTC
  day; ``access-sample``: a sample of the access entries of one ISO week), with the period's
  bounds ``[from, until)`` in µs since the epoch and, for the access sample, the idx of every
  access entry drawn (``sampled``, ascending) out of ``population`` access entries of the
  period, so an auditor can re-perform the review from the entry alone.

Checked here is what a body says on its own (types, patterns, idx below its own, a period
label matching its bounds). What needs the rest of the ledger (``alert_idx`` is an ``alert``
entry, an ``ack`` before the ``resolve``, the reviewer not the principal the alert names, the
sampled idx being access entries of the period) is checked by the collector
(collector.records.reviews) before it appends.

Invariant: as in wire.bodies, the required fields are present with these types; more fields
are informational and never change the meaning of the required ones.
"""

from __future__ import annotations

import datetime as dt
import re
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from wire.errors import DecodeError
from wire.fields import get_choice, get_int, get_str, require_fields
from wire.key_changes import parse_principal

REVIEW_EVENTS = frozenset({"ack", "resolve", "sign-off"})
REVIEW_KINDS = frozenset({"daily-alerts", "access-sample"})
NOTE_MAX = 1000
SAMPLE_MAX = 1000
DAY_US = 86_400 * 1_000_000
WEEK_US = 7 * DAY_US
_CONTROL = re.compile(r"[\x00-\x08\x0b-\x1f\x7f]")
_DAY_RE = re.compile(r"^[0-9]{4}-[0-9]{2}-[0-9]{2}$")
_WEEK_RE = re.compile(r"^[0-9]{4}-W[0-9]{2}$")
_EPOCH = dt.datetime(1970, 1, 1, tzinfo=dt.UTC)


@dataclass(frozen=True, slots=True)
class AlertReview:
    """An ``ack`` or ``resolve`` of the alert entry at ``alert_idx`` by ``by``."""

    event: str                 # ack | resolve
    alert_idx: int
    by: str
    note: str


@dataclass(frozen=True, slots=True)
class SignOff:
    """A ``sign-off`` of one ``period`` of the scheduled review ``review``."""

    review: str                # daily-alerts | access-sample
    period: str                # YYYY-MM-DD (daily-alerts) | YYYY-Www (access-sample)
    from_us: int
    until_us: int
    by: str
    note: str
    sampled: tuple[int, ...] = ()
    population: int | None = None


def period_bounds(review: str, period: str) -> tuple[int, int]:
    """``[from, until)`` in µs of ``period`` (a UTC day or an ISO week); else DecodeError."""
    try:
        if review == "daily-alerts":
            if not _DAY_RE.fullmatch(period):
                raise ValueError(period)
            start = dt.datetime.combine(dt.date.fromisoformat(period), dt.time(), dt.UTC)
            length = DAY_US
        else:
            if not _WEEK_RE.fullmatch(period):
                raise ValueError(period)
            year, week = int(period[:4]), int(period[6:])
            start = dt.datetime.combine(dt.date.fromisocalendar(year, week, 1), dt.time(),
                                        dt.UTC)
            length = WEEK_US
    except ValueError as e:
        want = "YYYY-MM-DD" if review == "daily-alerts" else "YYYY-Www (ISO week)"
        raise DecodeError(f"period: {period[:20]!r} is not a {want}", field="period") from e
    first = (start - _EPOCH) // dt.timedelta(microseconds=1)
    return first, first + length


def period_of(review: str, at_us: int) -> str:
    """The period label of ``review`` that holds instant ``at_us`` (UTC)."""
    day = (_EPOCH + dt.timedelta(microseconds=at_us)).date()
    if review == "daily-alerts":
        return day.isoformat()
    year, week, _ = day.isocalendar()
    return f"{year:04d}-W{week:02d}"


def _note(obj: Mapping[str, Any]) -> str:
    v = get_str(obj, "note")
    if not v.strip():
        raise DecodeError("note: must not be empty (say what was checked)", field="note")
    if len(v) > NOTE_MAX:
        raise DecodeError(f"note: at most {NOTE_MAX} characters, got {len(v)}", field="note")
    if _CONTROL.search(v):
        raise DecodeError("note: control characters other than newline and tab are not "
                          "allowed", field="note")
    return v


def parse_review(value: Any, idx: int) -> AlertReview | SignOff:
    """The ``review`` body of the entry at ``idx``, parsed strictly; else DecodeError."""
    obj = require_fields(value, "review body", ("event", "by", "note"))
    event = get_choice(obj, "event", REVIEW_EVENTS)
    by = parse_principal(obj, "by")
    note = _note(obj)
    if event != "sign-off":
        require_fields(obj, f"{event} review body", ("alert_idx",))
        alert_idx = get_int(obj, "alert_idx", minimum=0)
        if alert_idx >= idx:
            raise DecodeError(f"alert_idx {alert_idx} is not an earlier entry",
                              field="alert_idx")
        return AlertReview(event, alert_idx, by, note)
    require_fields(obj, "sign-off review body", ("review", "period", "from", "until"))
    review = get_choice(obj, "review", REVIEW_KINDS)
    period = get_str(obj, "period")
    first, until = period_bounds(review, period)
    if (get_int(obj, "from", minimum=0), get_int(obj, "until", minimum=0)) != (first, until):
        raise DecodeError(f"from/until: period {period} is [{first}, {until})", field="from")
    if review == "daily-alerts":
        return SignOff(review, period, first, until, by, note)
    require_fields(obj, "access-sample sign-off body", ("sampled", "population"))
    population = get_int(obj, "population", minimum=0)
    raw = obj["sampled"]
    if (not isinstance(raw, list) or len(raw) > SAMPLE_MAX
            or any(not isinstance(x, int) or isinstance(x, bool) for x in raw)):
        raise DecodeError(f"sampled: expected an array of at most {SAMPLE_MAX} entry idx",
                          field="sampled")
    sampled = tuple(raw)
    if any(b <= a for a, b in zip(sampled, sampled[1:], strict=False)):
        raise DecodeError("sampled: idx must be ascending and distinct", field="sampled")
    if sampled and (sampled[0] < 0 or sampled[-1] >= idx):
        raise DecodeError("sampled: every idx is an earlier entry", field="sampled")
    if len(sampled) > population:
        raise DecodeError(f"sampled: {len(sampled)} idx drawn from a population of "
                          f"{population}", field="sampled")
    return SignOff(review, period, first, until, by, note, sampled, population)
