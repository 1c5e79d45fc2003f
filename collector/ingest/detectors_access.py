"""Detectors over the access ledger (issue 14 item 2; CONTROLS.md D13, D8): what people do with
punch data and with access itself, judged from the ``access`` entries the API and the access
commands record (docs/api.md "What is recorded"), on the service's ledger read (every 5 s).

- ``grant-change`` (sev 3, info): a principal was created or disabled, a certificate
  registered, roles set, a grant requested or approved (wire.grants' role actions; refused
  attempts excepted, the refusal is its own entry). Each is already an entry; the alert puts
  it in front of the daily alert review (D8: access changes are reviewed). The alert names
  the actor as ``principal``, so the actor cannot resolve the alert about their own change
  (collector.records.reviews, segregation of duties). ``grant_changes = false`` turns it off.
- ``export-volume`` (sev 2): one principal received more than ``export_rows_max`` rows of
  punch or people data (the ``count`` of their successful GET requests on the personal-data
  routes: punches, payroll exports, corrections, people, badges) within ``export_window_s``.
  Default 100,000 rows an hour: a month of punches of a thousand employees, above any one
  payroll run of a mid-sized site; set it to about twice your largest legitimate run (0:
  off). Once per principal per window.
- ``after-hours-read`` (sev 2): a successful read of personal data at a local time outside
  ``business_hours`` (``"HH:MM-HH:MM"``, in ``business_timezone``) or on a day outside
  ``business_days`` (``"mon-fri"``). Off by default (``business_hours = ""``): working hours
  are the site's. Once per principal per local day.

Only entries recorded after ``serve`` started are judged (history is not re-alerted after a
restart); a body that is not JSON is skipped (``verify`` names it). State is bounded: one
window per principal, LRU of ``principals_max``.
"""

from __future__ import annotations

import datetime as dt
import json
import re
from collections import OrderedDict
from dataclasses import dataclass
from typing import Any
from zoneinfo import ZoneInfo

from collector.ingest.alerts import SEVERITY_INFO, SEVERITY_WARNING, Alert, Alerts
from collector.ledger import review_rows
from collector.ledger.sqlbase import SQLStore
from wire.grants import ROLE_ACTIONS

GRANT_ACTIONS = (ROLE_ACTIONS - {"token.create"}) | {"grant.request", "grant.reject"}
PERSONAL_PREFIXES = ("/v1/punches", "/v1/exports/", "/v1/corrections", "/v1/people",
                     "/v1/badges")
DAYS = ("mon", "tue", "wed", "thu", "fri", "sat", "sun")
HOURS_RE = re.compile(r"^([01][0-9]|2[0-3]):([0-5][0-9])-([01][0-9]|2[0-4]):([0-5][0-9])$")
DAYS_RE = re.compile(r"^(mon|tue|wed|thu|fri|sat|sun)-(mon|tue|wed|thu|fri|sat|sun)$")
_US = 1_000_000
_SLACK_US = 60 * _US       # entries are read by their recording time, minus this


@dataclass(frozen=True, slots=True)
class AccessSettings:
    """The ``[detectors]`` keys of this module (DetectorSettings carries them)."""

    grant_changes: bool = True
    export_rows_max: int = 100_000
    export_window_s: int = 3600
    business_hours: str = ""                 # "06:00-20:00"; "": after-hours reads off
    business_days: str = "mon-sun"
    business_timezone: str = "UTC"
    principals_max: int = 10_000


def hours_of(text: str) -> tuple[int, int] | None:
    """(start, end) minutes of the day of ``"HH:MM-HH:MM"``; None when malformed."""
    m = HOURS_RE.fullmatch(text)
    if m is None:
        return None
    start, end = int(m[1]) * 60 + int(m[2]), int(m[3]) * 60 + int(m[4])
    return (start, end) if start < end <= 24 * 60 else None


def days_of(text: str) -> frozenset[int] | None:
    """The weekdays (0 = Monday) of ``"mon-fri"``; None when malformed."""
    m = DAYS_RE.fullmatch(text)
    if m is None:
        return None
    a, b = DAYS.index(m[1]), DAYS.index(m[2])
    return frozenset(range(a, b + 1)) if a <= b else frozenset([*range(a, 7), *range(b + 1)])


class AccessWatch:
    """``tick(store, now_us)`` on the service's ledger read: judge the access entries
    recorded since the last tick."""

    def __init__(self, alerts: Alerts, s: AccessSettings, *, enabled: bool = True) -> None:
        self.alerts = alerts
        self.s = s
        self.enabled = enabled
        self._hours = hours_of(s.business_hours) if s.business_hours else None
        self._days = days_of(s.business_days) or frozenset(range(7))
        self._tz = ZoneInfo(s.business_timezone)
        self._last_idx: int | None = None
        self._since_at = 0
        # principal → (window start at, rows in it, alerted in it)
        self._rows: OrderedDict[str, tuple[int, int, bool]] = OrderedDict()
        self._after: OrderedDict[tuple[str, str], None] = OrderedDict()   # (principal, day)

    def tick(self, store: SQLStore, now_us: int) -> list[Alert]:
        if not self.enabled:
            return []
        if self._last_idx is None:          # the first tick: judge only what comes next
            self._last_idx = store.head()[0] - 1
            self._since_at = now_us - _SLACK_US
            return []
        out: list[Alert] = []
        for r in review_rows.of_kind(store.query, "access", since_at=self._since_at):
            if r.idx <= self._last_idx:
                continue
            self._last_idx = r.idx
            self._since_at = max(self._since_at, r.at - _SLACK_US)
            body = _json(r.body)
            if body is not None:
                out.extend(self.judge(r.idx, body))
        return out

    def judge(self, idx: int, body: dict[str, Any]) -> list[Alert]:
        """The alerts one access entry ``idx`` raises."""
        kind = body.get("type")
        if kind == "admin":
            return self._grant(idx, body)
        if kind != "request" or body.get("method") != "GET":
            return []
        route, status, at = body.get("route"), body.get("status"), body.get("at")
        who = body.get("principal")
        if not (isinstance(route, str) and route.startswith(PERSONAL_PREFIXES)
                and isinstance(status, int) and 200 <= status < 300
                and isinstance(at, int) and isinstance(who, str)):
            return []
        count = body.get("count")
        rows = count if isinstance(count, int) and count > 0 else 0
        return [*self._volume(idx, who, route, at, rows), *self._after_hours(idx, who, route, at)]

    def _grant(self, idx: int, body: dict[str, Any]) -> list[Alert]:
        action, actor = body.get("action"), body.get("actor")
        if not self.s.grant_changes or action not in GRANT_ACTIONS \
                or body.get("outcome") == "refused" or not isinstance(actor, str):
            return []
        target = body.get("principal")
        what = f" of {target}" if isinstance(target, str) and target != actor else ""
        return [self.alerts.alert(
            "grant-change", severity=SEVERITY_INFO, device=None,
            detail=f"{action}{what} by {actor} (access entry {idx}): review the change",
            fields={"principal": actor, "action": action, "access_idx": idx})]

    def _volume(self, idx: int, who: str, route: str, at: int, rows: int) -> list[Alert]:
        limit = self.s.export_rows_max
        if not limit or not rows:
            return []
        window = self.s.export_window_s * _US
        start, n, alerted = self._rows.pop(who, (at, 0, False))
        if at - start >= window:
            start, n, alerted = at, 0, False
        n += rows
        fire = n > limit and not alerted
        self._rows[who] = (start, n, alerted or fire)
        while len(self._rows) > self.s.principals_max:
            self._rows.popitem(last=False)
        if not fire:
            return []
        return [self.alerts.alert(
            "export-volume", severity=SEVERITY_WARNING, device=None,
            detail=f"{who} received {n} rows of punch or people data within "
                   f"{self.s.export_window_s} s (limit {limit}; last: {route}, access entry "
                   f"{idx})",
            fields={"principal": who, "rows": n, "access_idx": idx})]

    def _after_hours(self, idx: int, who: str, route: str, at: int) -> list[Alert]:
        if self._hours is None:
            return []
        local = dt.datetime.fromtimestamp(at / _US, self._tz)
        minute = local.hour * 60 + local.minute
        start, end = self._hours
        if local.weekday() in self._days and start <= minute < end:
            return []
        key = (who, local.date().isoformat())
        if key in self._after:
            return []
        self._after[key] = None
        while len(self._after) > self.s.principals_max:
            self._after.popitem(last=False)
        return [self.alerts.alert(
            "after-hours-read", severity=SEVERITY_WARNING, device=None,
            detail=f"{who} read personal data ({route}, access entry {idx}) at "
                   f"{local.strftime('%a %H:%M')} {self.s.business_timezone}, outside "
                   f"{self.s.business_days} {self.s.business_hours}",
            fields={"principal": who, "access_idx": idx})]


def _json(raw: bytes | None) -> dict[str, Any] | None:
    if raw is None:
        return None
    try:
        value = json.loads(raw)
    except ValueError:
        return None
    return value if isinstance(value, dict) else None

