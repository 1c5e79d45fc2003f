"""Timesheets (the pure engine, shared by the collector and ``timeclock-verify --timesheet``):
punches paired into shifts per employee and local day, with hours per day, week
and pay period, and the exceptions HR resolves (missing punches, duplicates, open breaks).

The engine is pure (no store): :func:`build` takes one employee's punches — already resolved to
the employee who held the badge at punch time and with approved corrections applied — and the
employee's IANA time zone, and returns :class:`Shift` rows and :class:`Exception_` rows.

Rules (:class:`Rules`), chosen to be what an HR officer expects and nothing cleverer:

- Pairing follows the punches in device-time order. ``in`` opens a shift, ``out`` closes it;
  ``break-start``/``break-end`` inside a shift mark unpaid breaks; ``punch`` (a reader with no
  in/out keys) toggles. A shift belongs to the local day of its start, so an overnight shift
  is one row on the evening it began.
- Durations are differences of UTC instants, never of wall-clock times: a night shift across a
  DST change is 7 h or 9 h of work, as it was lived.
- The same action again within ``duplicate_s`` (a double tap) is a ``duplicate`` exception and
  is otherwise ignored; an ``in`` while a shift is open longer ago than that, or a shift open
  longer than ``max_shift_h``, closes nothing and is a ``missing-out``; an ``out`` with no open
  shift is a ``missing-in``. A shift with a missing punch counts no hours until corrected.
- Rounding (``round_minutes`` > 0) is applied to each shift's start and end in local wall-clock
  minutes (``nearest``, ``down`` or ``up``); ``grace_minutes`` forgives a start up to that
  many minutes after a boundary (rounded down to it) and an end up to that many minutes before
  one (rounded up to it), whatever the rounding mode. Breaks are not rounded.
- Weeks start on ``week_start`` (0 = Monday); pay periods are ``weekly``, ``biweekly`` (from
  ``period_anchor``, a date in the first period), ``semimonthly`` (1st–15th, 16th–end) or
  ``monthly``, all in local dates of the shift's day.

Every shift keeps its provenance: the (device, seq) of the punches it was built from and the
``correction`` entry indexes whose approved values it used.
"""

from __future__ import annotations

import csv
import io
import json
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from datetime import UTC, date, datetime, timedelta
from typing import Any, TypeVar
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from wire.errors import WireError

K = TypeVar("K")
US = 1_000_000
MINUTE_US = 60 * US
ROUNDINGS = ("nearest", "down", "up")
PERIODS = ("weekly", "biweekly", "semimonthly", "monthly")


class TimesheetError(WireError):
    """Timesheet rules or inputs that cannot be used (unknown time zone, bad rule value)."""


@dataclass(frozen=True, slots=True)
class TimePunch:
    """One punch of one employee, with approved corrections applied (``correction_idx``: the
    correction entries whose values ``action``/``ts`` carry, empty when none)."""

    ts: int                          # device time, UTC microseconds
    action: str                      # in | out | break-start | break-end | punch
    device: str
    seq: int
    corrections: tuple[int, ...] = ()

    @property
    def ref(self) -> str:
        return f"{self.device}/{self.seq}"


@dataclass(frozen=True, slots=True)
class Rules:
    round_minutes: int = 0
    rounding: str = "nearest"
    grace_minutes: int = 0
    duplicate_s: int = 120
    max_shift_h: int = 16
    week_start: int = 0              # 0 = Monday … 6 = Sunday
    period: str = "weekly"
    period_anchor: date = date(2026, 1, 5)   # biweekly: a date inside a first period (a Monday)

    def __post_init__(self) -> None:
        problems = []
        if not 0 <= self.round_minutes <= 60:
            problems.append(f"round_minutes {self.round_minutes} must be 0..60")
        if self.rounding not in ROUNDINGS:
            problems.append(f"rounding {self.rounding!r} must be one of {', '.join(ROUNDINGS)}")
        if not 0 <= self.grace_minutes <= 60:
            problems.append(f"grace_minutes {self.grace_minutes} must be 0..60")
        if not 0 <= self.duplicate_s <= 3600:
            problems.append(f"duplicate_s {self.duplicate_s} must be 0..3600")
        if not 1 <= self.max_shift_h <= 48:
            problems.append(f"max_shift_h {self.max_shift_h} must be 1..48")
        if not 0 <= self.week_start <= 6:
            problems.append(f"week_start {self.week_start} must be 0 (Monday)..6 (Sunday)")
        if self.period not in PERIODS:
            problems.append(f"period {self.period!r} must be one of {', '.join(PERIODS)}")
        if problems:
            raise TimesheetError("timesheet rules: " + "; ".join(problems))

    def to_dict(self) -> dict[str, Any]:
        """The rules as the sidecar and a period close record them (JSON, no floats)."""
        return {"round_minutes": self.round_minutes, "rounding": self.rounding,
                "grace_minutes": self.grace_minutes, "duplicate_s": self.duplicate_s,
                "max_shift_h": self.max_shift_h, "week_start": self.week_start,
                "period": self.period, "period_anchor": self.period_anchor.isoformat()}

    @classmethod
    def from_dict(cls, value: Any) -> Rules:
        """Strictly: exactly the members of :meth:`to_dict`, each of its type."""
        keys = set(cls().to_dict())
        if not isinstance(value, dict) or set(value) != keys:
            raise TimesheetError(f"timesheet rules must be an object with exactly "
                                 f"{', '.join(sorted(keys))}")
        ints = ("round_minutes", "grace_minutes", "duplicate_s", "max_shift_h", "week_start")
        if any(not isinstance(value[k], int) or isinstance(value[k], bool) for k in ints) \
                or not all(isinstance(value[k], str)
                           for k in ("rounding", "period", "period_anchor")):
            raise TimesheetError("timesheet rules: integers and strings of the wrong type")
        try:
            anchor = date.fromisoformat(value["period_anchor"])
        except ValueError as e:
            raise TimesheetError(f"timesheet rules: period_anchor "
                                 f"{value['period_anchor'][:20]!r} is not YYYY-MM-DD") from e
        return cls(**{**{k: value[k] for k in keys}, "period_anchor": anchor})


@dataclass(slots=True)
class Shift:
    employee_id: str
    day: date                        # local date of the start
    start: int                       # rounded start, UTC µs
    end: int | None                  # rounded end; None: missing out
    start_punch: TimePunch | None    # None: missing in (the shift is only an out)
    end_punch: TimePunch | None
    breaks_us: int = 0
    open_break: bool = False
    corrections: tuple[int, ...] = ()

    @property
    def complete(self) -> bool:
        return self.start_punch is not None and self.end_punch is not None

    @property
    def worked_us(self) -> int:
        """Hours that count: none until both punches exist (a missing punch is corrected)."""
        if not self.complete or self.end is None:
            return 0
        return max(0, self.end - self.start - self.breaks_us)


@dataclass(frozen=True, slots=True)
class Exception_:
    employee_id: str
    day: date
    kind: str                        # missing-in | missing-out | duplicate | unmatched-break
    punch: str                       # device/seq of the punch concerned
    detail: str


@dataclass(slots=True)
class Timesheet:
    employee_id: str
    timezone: str
    shifts: list[Shift] = field(default_factory=list)
    exceptions: list[Exception_] = field(default_factory=list)

    def hours_by_day(self) -> dict[date, int]:
        return _sum_by(self.shifts, lambda s: s.day)

    def hours_by_week(self, rules: Rules) -> dict[date, int]:
        return _sum_by(self.shifts, lambda s: week_of(s.day, rules))

    def hours_by_period(self, rules: Rules) -> dict[tuple[date, date], int]:
        return _sum_by(self.shifts, lambda s: period_of(s.day, rules))


def _sum_by(shifts: Iterable[Shift], key: Callable[[Shift], K]) -> dict[K, int]:
    out: dict[K, int] = {}
    for s in shifts:
        k = key(s)
        out[k] = out.get(k, 0) + s.worked_us
    return {k: out[k] for k in sorted(out)}  # type: ignore[type-var]  # dates and date pairs


def zone(name: str) -> ZoneInfo:
    try:
        return ZoneInfo(name)
    except (ZoneInfoNotFoundError, ValueError) as e:
        raise TimesheetError(f"unknown time zone {name[:64]!r} (an IANA name such as "
                             "Europe/Berlin or America/New_York)") from e


def local(ts: int, tz: ZoneInfo) -> datetime:
    return datetime.fromtimestamp(ts / US, UTC).astimezone(tz)


def week_of(day: date, rules: Rules) -> date:
    return day - timedelta(days=(day.weekday() - rules.week_start) % 7)


def period_of(day: date, rules: Rules) -> tuple[date, date]:
    """The pay period (first day, last day) containing ``day``."""
    if rules.period == "weekly":
        first = week_of(day, rules)
        return first, first + timedelta(days=6)
    if rules.period == "biweekly":
        first = rules.period_anchor + timedelta(
            days=14 * ((day - rules.period_anchor).days // 14))
        return first, first + timedelta(days=13)
    month_end = (day.replace(day=28) + timedelta(days=4)).replace(day=1) - timedelta(days=1)
    if rules.period == "semimonthly":
        if day.day <= 15:
            return day.replace(day=1), day.replace(day=15)
        return day.replace(day=16), month_end
    return day.replace(day=1), month_end


def _round(ts: int, tz: ZoneInfo, rules: Rules, *, is_start: bool) -> int:
    if rules.round_minutes == 0:
        return ts
    offset = int(local(ts, tz).utcoffset().total_seconds()) * US  # type: ignore[union-attr]
    wall = ts + offset
    step = rules.round_minutes * MINUTE_US
    below = wall - wall % step
    above = below if below == wall else below + step
    grace = rules.grace_minutes * MINUTE_US
    if is_start and grace and wall - below <= grace:
        chosen = below
    elif not is_start and grace and above - wall <= grace:
        chosen = above
    elif rules.rounding == "down":
        chosen = below
    elif rules.rounding == "up":
        chosen = above
    else:
        chosen = below if wall - below < above - wall else above
    return chosen - offset


def build(employee_id: str, timezone: str, punches: Iterable[TimePunch],
          rules: Rules) -> Timesheet:
    """One employee's timesheet from their punches (any order)."""
    pairer = _Pairer(Timesheet(employee_id, timezone), zone(timezone), rules)
    for p in sorted(punches, key=lambda p: (p.ts, p.device, p.seq)):
        pairer.take(p)
    return pairer.finish()


class _Pairer:
    """The pairing state machine of :func:`build` (one employee, punches in time order)."""

    def __init__(self, sheet: Timesheet, tz: ZoneInfo, rules: Rules) -> None:
        self.sheet, self.tz, self.rules = sheet, tz, rules
        self.dup_us = rules.duplicate_s * US
        self.max_us = rules.max_shift_h * 3600 * US
        self.open: Shift | None = None
        self.break_start: TimePunch | None = None
        self.last: TimePunch | None = None

    def day(self, ts: int) -> date:
        return local(ts, self.tz).date()

    def exc(self, kind: str, p: TimePunch, detail: str) -> None:
        self.sheet.exceptions.append(Exception_(self.sheet.employee_id, self.day(p.ts), kind,
                                                p.ref, detail))

    def take(self, p: TimePunch) -> None:
        last = self.last
        if last is not None and p.action == last.action and p.ts - last.ts <= self.dup_us:
            self.exc("duplicate", p, f"{p.action} again {(p.ts - last.ts) // US} s after "
                     f"{last.ref}: ignored")
            return
        self.last = p
        if self.open is not None and p.ts - self.open.start > self.max_us:
            self.close_missing_out()
        action = p.action
        if action == "punch":
            action = "out" if self.open is not None else "in"
        {"in": self.punch_in, "out": self.punch_out, "break-start": self.break_begin,
         "break-end": self.break_end}[action](p)

    def close_missing_out(self) -> None:
        s, self.open, self.break_start = self.open, None, None
        if s is not None and s.start_punch is not None:
            self.sheet.shifts.append(s)
            self.exc("missing-out", s.start_punch, "shift started here has no out punch")

    def punch_in(self, p: TimePunch) -> None:
        self.close_missing_out()
        self.open = Shift(self.sheet.employee_id, self.day(p.ts),
                          _round(p.ts, self.tz, self.rules, is_start=True), None, p, None,
                          corrections=p.corrections)

    def punch_out(self, p: TimePunch) -> None:
        end = _round(p.ts, self.tz, self.rules, is_start=False)
        s = self.open
        if s is None:
            self.sheet.shifts.append(Shift(self.sheet.employee_id, self.day(p.ts), end, end,
                                           None, p, corrections=p.corrections))
            self.exc("missing-in", p, "out punch with no shift open")
            return
        s.end, s.end_punch = max(s.start, end), p
        s.corrections = (*s.corrections, *p.corrections)
        if self.break_start is not None:
            s.open_break = True
            self.exc("unmatched-break", self.break_start, "break started here never ended; "
                     "the shift's end closes it unpaid")
            s.breaks_us += p.ts - self.break_start.ts
        self.sheet.shifts.append(s)
        self.open, self.break_start = None, None

    def break_begin(self, p: TimePunch) -> None:
        if self.open is None or self.break_start is not None:
            self.exc("unmatched-break", p, "break-start outside a shift or during a break")
            return
        self.break_start = p

    def break_end(self, p: TimePunch) -> None:
        s, b = self.open, self.break_start
        if s is None or b is None:
            self.exc("unmatched-break", p, "break-end with no break started")
            return
        s.breaks_us += p.ts - b.ts
        s.corrections = (*s.corrections, *b.corrections, *p.corrections)
        self.break_start = None

    def finish(self) -> Timesheet:
        self.close_missing_out()
        self.sheet.shifts.sort(key=lambda s: s.start)
        self.sheet.exceptions.sort(key=lambda e: (e.day, e.punch))
        return self.sheet


# -- output ----------------------------------------------------------------------------------

CSV_FIELDS = ("employee_id", "day", "start", "end", "worked_hours", "break_minutes",
              "status", "start_punch", "end_punch", "corrections")


def _iso(ts: int | None, tz: ZoneInfo) -> str:
    return "" if ts is None else local(ts, tz).isoformat(timespec="seconds")


def hours(us: int) -> str:
    """Decimal hours with two places: whole minutes (half up), then hundredths of an hour (half
    up): 7 h 55 min is 7.92."""
    minutes = (us + MINUTE_US // 2) // MINUTE_US
    hundredths = (minutes * 100 + 30) // 60
    return f"{hundredths // 100}.{hundredths % 100:02d}"


def shift_row(s: Shift, tz: ZoneInfo) -> dict[str, str]:
    status = "ok" if s.complete else ("missing-in" if s.start_punch is None else "missing-out")
    return {"employee_id": s.employee_id, "day": s.day.isoformat(),
            "start": "" if s.start_punch is None else _iso(s.start, tz),
            "end": _iso(s.end if s.end_punch is not None else None, tz),
            "worked_hours": hours(s.worked_us),
            "break_minutes": str(s.breaks_us // MINUTE_US),
            "status": status,
            "start_punch": s.start_punch.ref if s.start_punch else "",
            "end_punch": s.end_punch.ref if s.end_punch else "",
            "corrections": " ".join(str(i) for i in sorted(set(s.corrections)))}


def csv_text(sheets: Iterable[Timesheet]) -> str:
    """Plain CSV (RFC 4180, one header row, no comment lines: any importer reads it)."""
    buf = io.StringIO()
    w = csv.DictWriter(buf, fieldnames=CSV_FIELDS, lineterminator="\r\n")
    w.writeheader()
    for sheet in sheets:
        tz = zone(sheet.timezone)
        for s in sheet.shifts:
            w.writerow(shift_row(s, tz))
    return buf.getvalue()


def ndjson_items(sheets: Iterable[Timesheet]) -> Iterator[dict[str, Any]]:
    for sheet in sheets:
        tz = zone(sheet.timezone)
        for s in sheet.shifts:
            yield {"type": "shift", **shift_row(s, tz)}
        for e in sheet.exceptions:
            yield {"type": "exception", "employee_id": e.employee_id, "day": e.day.isoformat(),
                   "kind": e.kind, "punch": e.punch, "detail": e.detail}


def timecard(sheet: Timesheet, period: tuple[date, date], rules: Rules) -> str:
    """One employee's pay-period timecard as text: each day's shifts, the week and period
    totals, and the exceptions still open."""
    tz = zone(sheet.timezone)
    first, last = period
    lines = [f"Timecard {sheet.employee_id}  {first.isoformat()} – {last.isoformat()}  "
             f"({sheet.timezone})", ""]
    days = sheet.hours_by_day()
    for s in sheet.shifts:
        if not first <= s.day <= last:
            continue
        row = shift_row(s, tz)
        lines.append(f"{row['day']}  {row['start'][11:16] or '--:--'}–"
                     f"{row['end'][11:16] or '--:--'}  {row['worked_hours']:>6} h  "
                     f"break {row['break_minutes']} min  {row['status']}")
    lines.append("")
    for week in sheet.hours_by_week(rules):
        if first <= week + timedelta(days=6) and week <= last:
            in_period = sum(v for d, v in days.items()
                            if week <= d <= week + timedelta(days=6) and first <= d <= last)
            lines.append(f"week of {week.isoformat()}: {hours(in_period)} h")
    total = sum(v for d, v in days.items() if first <= d <= last)
    lines.append(f"period total: {hours(total)} h")
    open_ = [e for e in sheet.exceptions if first <= e.day <= last]
    if open_:
        lines.append("")
        lines.append("exceptions to resolve:")
        lines.extend(f"  {e.day.isoformat()} {e.kind} at {e.punch}: {e.detail}" for e in open_)
    return "\n".join(lines) + "\n"


def render(sheets: Iterable[Timesheet], fmt: str) -> tuple[str, int]:
    """The text of a ``csv`` or ``ndjson`` timesheet and its row count, byte for byte what
    ``timeclock-collector timesheet`` writes (``timeclock-verify --timesheet`` recomputes it)."""
    if fmt == "csv":
        text = csv_text(sheets)
        return text, max(0, text.count("\r\n") - 1)
    if fmt == "ndjson":
        items = list(ndjson_items(sheets))
        return "".join(json.dumps(i, sort_keys=True) + "\n" for i in items), len(items)
    raise TimesheetError(f"format {fmt[:20]!r}: csv or ndjson")
