"""Bodies of the people directory's ledger entries, ``employee`` and ``badge`` (docs/
protocol.md §7.2), parsed strictly in the manner of wire.bodies (which dispatches to them).

An ``employee`` body is the whole record of one employee as of that entry (a change appends
a new full record; the latest one for an id is the current one). A ``badge`` body is one event
of one badge credential: ``assigned`` (the credential belongs to ``employee_id`` over
``[from, until)``), ``lost`` / ``blocked`` (from ``from`` on, until ``until`` or for good, a
punch with the credential belongs to nobody and says so) and ``returned`` (the holder gave
it back at ``from``; later punches with it are ``unknown``). Times are µs since the epoch in
device time, the clock a punch's ``ts`` uses.

Checked here is what a body says on its own: types, patterns, a real IANA time zone (zoneinfo),
calendar dates in order, ``until`` after ``from``, a manager who is not the employee. What
needs the rest of the ledger (the manager exists, no management cycle, one holder per
credential at any instant) is checked by the collector's directory (collector.people) against
its projection before it appends.

Invariant: as in wire.bodies, the required fields are present with these types; more fields
are informational and never change the meaning of the required ones.
"""

from __future__ import annotations

import re
import zoneinfo
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import date
from typing import Any

from wire.errors import DecodeError
from wire.fields import CREDENTIAL_RE, get_choice, get_int, get_str, require_fields

EMPLOYEE_ID_RE = re.compile(r"^[A-Za-z0-9](?:[A-Za-z0-9._-]{0,62}[A-Za-z0-9])?$")
TIMEZONE_RE = re.compile(r"^[A-Za-z][A-Za-z0-9_+-]{0,30}(?:/[A-Za-z0-9_+-]{1,30}){0,2}$")
DATE_RE = re.compile(r"^[0-9]{4}-[0-9]{2}-[0-9]{2}$")
EMPLOYEE_STATUSES = frozenset({"active", "left"})
BADGE_EVENTS = frozenset({"assigned", "lost", "blocked", "returned"})
NAME_MAX = 200
TEXT_MAX = 128
_CONTROL = re.compile(r"[\x00-\x1f\x7f]")

EMPLOYEE_FIELDS = ("employee_id", "name", "department", "site", "timezone", "manager_id",
                   "status", "active_from", "left_on")
BADGE_FIELDS = ("event", "credential", "employee_id", "from", "until")


@dataclass(frozen=True, slots=True)
class Employee:
    """An ``employee`` body: the full record of ``employee_id`` as of its entry."""

    employee_id: str
    name: str
    department: str
    site: str
    timezone: str
    manager_id: str | None
    status: str                # active | left
    active_from: str           # YYYY-MM-DD
    left_on: str | None        # YYYY-MM-DD, present exactly when status is "left"

    def to_dict(self) -> dict[str, Any]:
        return employee_record(self)


def employee_record(source: Any) -> dict[str, Any]:
    """The record an ``employee`` body holds (:data:`EMPLOYEE_FIELDS`, in that order), read
    from the attributes of those names of ``source``: an :class:`Employee`, or the row a
    store keeps of one (collector.ledger.people_tables.EmployeeRow)."""
    return {name: getattr(source, name) for name in EMPLOYEE_FIELDS}


@dataclass(frozen=True, slots=True)
class BadgeEvent:
    """A ``badge`` body: one event of ``credential`` at device time ``from_us``."""

    event: str                 # assigned | lost | blocked | returned
    credential: str
    employee_id: str | None
    from_us: int
    until_us: int | None       # exclusive; None: open-ended (always None for returned)

    def to_dict(self) -> dict[str, Any]:
        return {"event": self.event, "credential": self.credential,
                "employee_id": self.employee_id, "from": self.from_us,
                "until": self.until_us}


def _text(obj: Mapping[str, Any], key: str, *, maximum: int, empty: bool) -> str:
    v = get_str(obj, key)
    if not empty and not v.strip():
        raise DecodeError(f"{key}: must not be empty", field=key)
    if len(v) > maximum:
        raise DecodeError(f"{key}: at most {maximum} characters, got {len(v)}", field=key)
    if _CONTROL.search(v):
        raise DecodeError(f"{key}: control characters are not allowed", field=key)
    return v


def _date(obj: Mapping[str, Any], key: str) -> str:
    v = get_str(obj, key, DATE_RE)
    try:
        date.fromisoformat(v)
    except ValueError as e:
        raise DecodeError(f"{key}: {v!r} is not a calendar date (YYYY-MM-DD)", field=key) from e
    return v


def check_timezone(name: str, field: str = "timezone") -> str:
    """``name`` if it is an IANA time zone this machine's zoneinfo knows; else DecodeError."""
    if not TIMEZONE_RE.fullmatch(name):
        raise DecodeError(f"{field}: {name[:40]!r} is not an IANA time zone name "
                          f"(like Europe/Berlin)", field=field)
    try:
        zoneinfo.ZoneInfo(name)
    except (zoneinfo.ZoneInfoNotFoundError, ValueError) as e:
        raise DecodeError(f"{field}: {name!r} is not an IANA time zone known to zoneinfo "
                          f"(like Europe/Berlin)", field=field) from e
    return name


def _optional_id(obj: Mapping[str, Any], key: str) -> str | None:
    return None if obj[key] is None else get_str(obj, key, EMPLOYEE_ID_RE)


def parse_employee(value: Any) -> Employee:
    obj = require_fields(value, "employee body", EMPLOYEE_FIELDS)
    eid = get_str(obj, "employee_id", EMPLOYEE_ID_RE)
    manager = _optional_id(obj, "manager_id")
    if manager == eid:
        raise DecodeError(f"manager_id: {eid} cannot be their own manager", field="manager_id")
    status = get_choice(obj, "status", EMPLOYEE_STATUSES)
    active_from = _date(obj, "active_from")
    left_on = None if obj["left_on"] is None else _date(obj, "left_on")
    if (status == "left") != (left_on is not None):
        raise DecodeError("left_on: a date exactly when status is \"left\" (null while "
                          "active)", field="left_on")
    if left_on is not None and left_on < active_from:
        raise DecodeError(f"left_on: {left_on} is before active_from {active_from}",
                          field="left_on")
    return Employee(eid, _text(obj, "name", maximum=NAME_MAX, empty=False),
                    _text(obj, "department", maximum=TEXT_MAX, empty=True),
                    _text(obj, "site", maximum=TEXT_MAX, empty=True),
                    check_timezone(get_str(obj, "timezone")), manager, status, active_from,
                    left_on)


def parse_badge(value: Any) -> BadgeEvent:
    obj = require_fields(value, "badge body", BADGE_FIELDS)
    event = get_choice(obj, "event", BADGE_EVENTS)
    credential = get_str(obj, "credential", CREDENTIAL_RE)
    employee = _optional_id(obj, "employee_id")
    start = get_int(obj, "from", minimum=0)
    until = None if obj["until"] is None else get_int(obj, "until", minimum=0)
    if event == "assigned" and employee is None:
        raise DecodeError("employee_id: an assigned badge needs its holder",
                          field="employee_id")
    if event == "returned" and until is not None:
        raise DecodeError("until: a return is an instant (until is null)", field="until")
    if until is not None and until <= start:
        raise DecodeError(f"until: {until} is not after from {start} (the interval is "
                          f"[from, until))", field="until")
    return BadgeEvent(event, credential, employee, start, until)


PEOPLE_KINDS = frozenset({"employee", "badge"})


def parse_people(kind: str, value: Any) -> Employee | BadgeEvent:
    """The body of an ``employee`` or ``badge`` entry (wire.bodies.parse_body's dispatch)."""
    return parse_employee(value) if kind == "employee" else parse_badge(value)
