"""The directory's rules, on an in-memory view of the projection (no SQL here).

:class:`State` holds the employees and the badge periods of the credentials a change touches;
``plan_employee`` / ``plan_badge`` check one change against it, return the :class:`Change`
(the entry body and the projection writes it implies) and apply it to the state, so the next
change of the same import sees it. ``None`` means the change is already recorded (a re-import
appends nothing). Refusals are DirectoryError / BadgeConflictError with the other holder's
employee id and interval in words.

Rules: a manager is in the directory when named and no employee is, through managers, their
own manager; a credential's periods never overlap (one holder at any instant); a lost or
blocked period begins where the holder's period ends; a return ends the period covering it.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from datetime import UTC, datetime
from typing import Any

from collector import BadgeConflictError, DirectoryError
from collector.ledger.people_tables import BadgePeriod, EmployeeRow
from wire.bodies_people import BadgeEvent, Employee, parse_badge, parse_employee
from wire.errors import WireError

PENDING = -1        # idx of an entry not recorded yet (filled in when it is)


def when(us: int | None) -> str:
    """A device time for messages: ISO 8601 UTC (``open`` for an open end)."""
    if us is None:
        return "open"
    secs, frac = divmod(us, 1_000_000)
    text = datetime.fromtimestamp(secs, UTC).strftime("%Y-%m-%dT%H:%M:%S")
    return text + (f".{frac:06d}Z" if frac else "Z")


def interval(start: int, until: int | None) -> str:
    return f"[{when(start)}, {when(until)})"


@dataclass
class State:
    employees: dict[str, EmployeeRow]
    periods: dict[str, list[BadgePeriod]] = field(default_factory=dict)

    def of(self, credential: str) -> list[BadgePeriod]:
        return self.periods.setdefault(credential, [])


@dataclass(frozen=True)
class Change:
    """One entry to record and what it does to the projection. ``put``: the employee row
    (created_idx/changed_idx PENDING: the entry's idx); ``end``: (credential, valid_from,
    new valid_until) of a period; ``insert``: a new period (idx PENDING)."""

    kind: str                                   # employee | badge
    body: dict[str, Any]
    summary: str                                # for dry-run output (no names)
    put: EmployeeRow | None = None
    exists: bool = False
    end: tuple[str, int, int | None] | None = None
    insert: BadgePeriod | None = None


def _parsed_employee(record: dict[str, Any]) -> Employee:
    try:
        return parse_employee(record)
    except WireError as e:
        raise DirectoryError(f"employee: {e}") from e


def _parsed_badge(body: dict[str, Any]) -> BadgeEvent:
    try:
        return parse_badge(body)
    except WireError as e:
        raise DirectoryError(f"badge: {e}") from e


def plan_employee(state: State, record: dict[str, Any]) -> Change | None:
    """The ``employee`` entry that makes the directory hold ``record`` (None: it does)."""
    e = _parsed_employee(record)
    body = e.to_dict()
    old = state.employees.get(e.employee_id)
    if old is not None and old.record() == body:
        return None
    if e.manager_id is not None:
        if e.manager_id not in state.employees:
            raise DirectoryError(f"employee {e.employee_id}: manager {e.manager_id} is not in "
                                 f"the directory (add the manager first)")
        chain = [e.employee_id, e.manager_id]
        boss = state.employees[e.manager_id].manager_id
        while boss is not None and len(chain) <= len(state.employees) + 1:
            chain.append(boss)
            if boss == e.employee_id:
                raise DirectoryError(f"employee {e.employee_id}: manager {e.manager_id} would "
                                     f"make a cycle ({' -> '.join(chain)})")
            nxt = state.employees.get(boss)
            boss = None if nxt is None else nxt.manager_id
    row = EmployeeRow(e.employee_id, e.name, e.department, e.site, e.timezone, e.manager_id,
                      e.status, e.active_from, e.left_on,
                      PENDING if old is None else old.created_idx, PENDING)
    state.employees[e.employee_id] = row
    what = "new employee" if old is None else "changed " + ", ".join(
        k for k in body if body[k] != old.record()[k])
    return Change("employee", body, f"employee {e.employee_id}: {what}", put=row,
                  exists=old is not None)


def _overlapping(ps: list[BadgePeriod], start: int, until: int | None,
                 skip: BadgePeriod | None = None) -> BadgePeriod | None:
    for p in ps:
        if p is skip:
            continue
        if (until is None or p.valid_from < until) and \
                (p.valid_until is None or start < p.valid_until):
            return p
    return None


def _conflict(credential: str, p: BadgePeriod, start: int, until: int | None) -> str:
    want = interval(start, until)
    have = interval(p.valid_from, p.valid_until)
    if p.status == "assigned":
        return (f"badge {credential} is held by employee {p.employee_id} over {have}, which "
                f"overlaps {want}: end that assignment first (badge return) or choose "
                f"another interval")
    by = f" (held by employee {p.employee_id})" if p.employee_id else ""
    return (f"badge {credential} is {p.status}{by} over {have}, which overlaps {want}: "
            f"return it first")


def _covering(ps: list[BadgePeriod], ts: int) -> BadgePeriod | None:
    return next((p for p in ps if p.covers(ts)), None)


def _set_end(state: State, credential: str, p: BadgePeriod, until: int | None) -> None:
    ps = state.of(credential)
    ps[ps.index(p)] = replace(p, valid_until=until)


def _add(state: State, p: BadgePeriod) -> None:
    ps = state.of(p.credential)
    ps.append(p)
    ps.sort(key=lambda q: q.valid_from)


def plan_badge(state: State, body: dict[str, Any]) -> Change | None:
    """The ``badge`` entry for ``body`` (None: the directory already says so)."""
    ev = _parsed_badge(body)
    ps = state.of(ev.credential)
    if ev.event == "assigned":
        return _assign(state, ev, ps)
    if ev.event == "returned":
        return _return(state, ev, ps)
    return _lose(state, ev, ps)


def _return(state: State, ev: BadgeEvent, ps: list[BadgePeriod]) -> Change:
    c, start = ev.credential, ev.from_us
    p = _covering(ps, start)
    if p is None:
        raise BadgeConflictError(f"badge {c} is not held, lost or blocked at {when(start)}: "
                                 f"nothing to return")
    if ev.employee_id is not None and p.employee_id != ev.employee_id:
        raise BadgeConflictError(f"badge {c} is {p.status} by employee {p.employee_id} "
                                 f"over {interval(p.valid_from, p.valid_until)}, not by "
                                 f"{ev.employee_id}")
    if p.valid_from == start:
        raise BadgeConflictError(f"badge {c}: a return at {when(start)}, the instant its "
                                 f"period begins, would leave an empty period")
    _set_end(state, c, p, start)
    return Change("badge", {**ev.to_dict(), "employee_id": p.employee_id},
                  f"badge {c}: returned at {when(start)}", end=(c, p.valid_from, start))


def _lose(state: State, ev: BadgeEvent, ps: list[BadgePeriod]) -> Change | None:
    """A ``lost`` or ``blocked`` event: the holder's period ends, the badge's status one
    begins."""
    c, start, until = ev.credential, ev.from_us, ev.until_us
    same = next((p for p in ps if p.valid_from == start and p.status == ev.event), None)
    if same is not None and same.valid_until == until and \
            (ev.employee_id is None or same.employee_id == ev.employee_id):
        return None
    held = _covering(ps, start)
    holder: str | None = None
    end: tuple[str, int, int | None] | None = None
    if held is not None:
        if held.status != "assigned":
            raise BadgeConflictError(f"badge {c} is already {held.status} since "
                                     f"{when(held.valid_from)}")
        if ev.employee_id is not None and held.employee_id != ev.employee_id:
            raise BadgeConflictError(f"badge {c} is held by employee {held.employee_id} at "
                                     f"{when(start)}, not by {ev.employee_id}")
        if held.valid_from == start:
            raise BadgeConflictError(f"badge {c}: {ev.event} at {when(start)}, the instant it "
                                     f"was assigned: assign it later or not at all")
        holder = held.employee_id
    elif ev.employee_id is not None:
        ended = next((p for p in ps if p.valid_until == start and p.status == "assigned"
                      and p.employee_id == ev.employee_id), None)
        if ended is None:
            raise BadgeConflictError(f"badge {c} is not held by employee {ev.employee_id} at "
                                     f"{when(start)}")
        holder = ev.employee_id
    other = _overlapping(ps, start, until, skip=held)
    if other is not None:
        raise BadgeConflictError(_conflict(c, other, start, until))
    if held is not None:
        _set_end(state, c, held, start)
        end = (c, held.valid_from, start)
    period = BadgePeriod(c, start, until, holder, ev.event, PENDING, PENDING)
    _add(state, period)
    return Change("badge", {**ev.to_dict(), "employee_id": holder},
                  f"badge {c}: {ev.event} from {when(start)}", end=end, insert=period)


def _assign(state: State, ev: BadgeEvent, ps: list[BadgePeriod]) -> Change | None:
    c, start, until, emp = ev.credential, ev.from_us, ev.until_us, ev.employee_id
    if emp is None or emp not in state.employees:
        raise DirectoryError(f"badge {c}: employee {emp} is not in the directory")
    same = next((p for p in ps if p.valid_from == start and p.status == "assigned"
                 and p.employee_id == emp), None)
    other = _overlapping(ps, start, until, skip=same)
    if other is not None:
        raise BadgeConflictError(_conflict(c, other, start, until))
    if same is not None:
        if same.valid_until == until:
            return None
        _set_end(state, c, same, until)
        return Change("badge", ev.to_dict(), f"badge {c}: assignment to {emp} from "
                      f"{when(start)} now ends {when(until)}", end=(c, start, until))
    period = BadgePeriod(c, start, until, emp, "assigned", PENDING, PENDING)
    _add(state, period)
    return Change("badge", ev.to_dict(),
                  f"badge {c}: assigned to {emp} over {interval(start, until)}",
                  insert=period)
