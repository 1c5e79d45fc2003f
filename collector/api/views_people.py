"""People directory views: employees and badges (collector.people), read by HR, payroll and
auditors, changed only by ``hr.people``.

Every change is a ledger entry (collector.people.directory) and, like every request, an
``access`` entry; the access record names employee ids and credentials, never a name (a
name travels only in a PUT body, which access records never hold).

Scope (collector.access.scopes): a principal limited to sites sees and keeps only employees
of those sites, a supervisor only their team; an out-of-scope employee or badge is the same
404 as a missing one.
"""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime
from typing import Any

from aiohttp import web

from collector import DirectoryNotFoundError, ForbiddenError
from collector.access import scopes
from collector.access.scopes import Scope
from collector.api import params as P
from collector.api.errors import BadRequestError, NotFoundError
from collector.api.keys import CLOCK, SETTINGS, STORE, ctx, principal_name
from collector.api.views_hr import scope
from collector.ledger import people_tables
from collector.people import directory
from collector.records.exports import ExportError, parse_time
from wire.bodies_people import BADGE_EVENTS, EMPLOYEE_FIELDS, EMPLOYEE_ID_RE
from wire.fields import CREDENTIAL_RE

PEOPLE_PARAMS = ("site", "department", "manager", "cursor", "limit")
READ_ROLES = ("hr.read", "payroll.export", "audit.read", "hr.people")
LIST_ROLES = (*READ_ROLES, "supervisor")       # a supervisor reads their team's records
_RECORD = tuple(f for f in EMPLOYEE_FIELDS if f != "employee_id")


def _employee_id(request: web.Request) -> str:
    eid = request.match_info["employee_id"]
    if not EMPLOYEE_ID_RE.fullmatch(eid):
        raise NotFoundError(f"no employee {eid[:64]!r}")
    return eid


def _credential(request: web.Request) -> str:
    c = request.match_info["credential"]
    if not CREDENTIAL_RE.fullmatch(c):
        raise NotFoundError(f"no badge {c[:80]!r}")
    return c


async def list_people(request: web.Request) -> web.Response:
    """GET /v1/people: employees by id, filtered, in pages (``next``: the cursor)."""
    q = request.rel_url.query
    site = P.string(q, "site", P.SITE_RE)
    department = P.string(q, "department")
    manager = P.string(q, "manager", EMPLOYEE_ID_RE)
    cursor = P.string(q, "cursor", EMPLOYEE_ID_RE)
    limit = P.integer(q, "limit", lo=1, hi=request.app[SETTINGS].page_max, default=100) or 100
    store = request.app[STORE]

    def load() -> list[people_tables.EmployeeRow]:
        people_tables.ensure_schema(store)
        sc = scope(request)
        if sc.unrestricted:
            return people_tables.employees(store, after=cursor, limit=limit, site=site,
                                           department=department, manager_id=manager)
        return scopes.page(
            lambda n, after: people_tables.employees(store, after=after, limit=n, site=site,
                                                     department=department,
                                                     manager_id=manager),
            sc.employee_ok, limit=limit, after=cursor, cursor_of=lambda e: e.employee_id)

    rows = await asyncio.to_thread(load)
    ctx(request).record.count = len(rows)
    return web.json_response({"items": [directory.employee_dict(e) for e in rows],
                              "next": rows[-1].employee_id if len(rows) == limit else None})


async def get_person(request: web.Request) -> web.Response:
    """GET /v1/people/{employee_id}: the record and every badge period of the employee."""
    eid, store = _employee_id(request), request.app[STORE]

    def load() -> dict[str, Any]:
        e = directory.employee(store, eid)
        if not scope(request).employee_ok(e):
            raise DirectoryNotFoundError(f"no employee {eid[:64]} in the directory")
        return directory.employee_dict(e, directory.badges_of(store, eid))

    doc = await asyncio.to_thread(load)
    ctx(request).record.count = 1
    return web.json_response(doc)


async def put_person(request: web.Request) -> web.Response:
    """PUT /v1/people/{employee_id}: the whole record (an ``employee`` entry if it changes)."""
    eid = _employee_id(request)
    body = await P.json_body(request, required=("name", "department", "site", "timezone"),
                             optional=("manager_id", "status", "active_from", "left_on"),
                             max_bytes=request.app[SETTINGS].body_max_bytes)
    for k in _RECORD:          # text only (no lone surrogates); the record's rules follow
        if body.get(k) is not None:
            P.field_str(body, k, max_len=200)
    store, now = request.app[STORE], request.app[CLOCK]()

    def save() -> tuple[int | None, dict[str, Any]]:
        people_tables.ensure_schema(store)
        old = people_tables.employee(store, eid)
        sc = scope(request)
        if (old is not None and not sc.employee_ok(old)) or not sc.site_ok(
                str(body.get("site"))):
            raise _outside(request, sc)
        base: dict[str, Any] = old.record() if old is not None else {
            "manager_id": None, "status": "active", "left_on": None,
            "active_from": _today(now)}
        record = {**base, **{k: body[k] for k in _RECORD if k in body}, "employee_id": eid}
        if body.get("status") == "active" and "left_on" not in body:
            record["left_on"] = None
        done = directory.set_employee(store, record, now_us=now)
        e = directory.employee(store, eid)
        return (None if done is None else done.idx), directory.employee_dict(
            e, directory.badges_of(store, eid))

    idx, doc = await asyncio.to_thread(save)
    rec = ctx(request).record
    rec.count, rec.extra = 1, {"employee_id": eid, "idx": idx}
    return web.json_response({**doc, "recorded_idx": idx})


def _outside(request: web.Request, sc: Scope) -> ForbiddenError:
    return ForbiddenError(f"{principal_name(request)} keeps employees of sites "
                          f"{', '.join(sorted(sc.sites or ()))} only (its site scope)")


def _today(now_us: int) -> str:
    return datetime.fromtimestamp(now_us / 1e6, UTC).date().isoformat()


async def get_badge(request: web.Request) -> web.Response:
    """GET /v1/badges/{credential}: its periods and who held it at ``?at=`` (default now)."""
    credential, store = _credential(request), request.app[STORE]
    at_text = P.string(request.rel_url.query, "at")
    at = request.app[CLOCK]() if at_text is None else _time("at", at_text)

    def load() -> dict[str, Any]:
        periods = directory.badge_periods(store, credential)
        sc = scope(request)
        if not sc.unrestricted:         # only periods of employees in scope; none: no badge
            periods = [p for p in periods if _employee_in(store, sc, p.employee_id)]
            if not periods:
                raise DirectoryNotFoundError(f"no badge {credential[:80]!r}")
        emp, status = people_tables.BadgeResolver({credential: periods} if periods else {}
                                                  ).resolve(credential, at)
        return {"credential": credential, "at": at, "employee_id": emp,
                "badge_status": status,
                "periods": [directory.period_dict(p) for p in periods]}

    doc = await asyncio.to_thread(load)
    ctx(request).record.count = 1
    return web.json_response(doc)


def _time(name: str, text: Any) -> int:
    if isinstance(text, int) and not isinstance(text, bool) and 0 <= text < 2**62:
        return text
    if not isinstance(text, str) or len(text) > 40:
        raise BadRequestError(f"{name}: {P.TIME_DESC}")
    try:
        us = parse_time(text)
    except ExportError as e:
        raise BadRequestError(f"{name}: {e}") from e
    if not 0 <= us < 2**62:
        raise BadRequestError(f"{name}: {P.TIME_DESC}")
    return us


def _employee_in(store: Any, sc: Scope, employee_id: str | None) -> bool:
    e = None if employee_id is None else people_tables.employee(store, employee_id)
    return e is not None and sc.employee_ok(e)


async def badge_event(request: web.Request) -> web.Response:
    """POST /v1/badges/{credential}/events: assigned / lost / blocked / returned."""
    credential = _credential(request)
    body = await P.json_body(request, required=("event",),
                             optional=("employee_id", "from", "until"),
                             max_bytes=request.app[SETTINGS].body_max_bytes)
    event = P.field_str(body, "event", max_len=10)
    if event not in BADGE_EVENTS:
        raise BadRequestError(f"event: one of {', '.join(sorted(BADGE_EVENTS))}")
    employee = body.get("employee_id")
    if employee is not None:
        employee = P.field_str(body, "employee_id", max_len=64, pattern=EMPLOYEE_ID_RE)
    now = request.app[CLOCK]()
    start = now if body.get("from") is None else _time("from", body["from"])
    until = None if body.get("until") is None else _time("until", body["until"])
    store = request.app[STORE]

    def save() -> tuple[int | None, list[dict[str, Any]]]:
        sc = scope(request)
        if not sc.unrestricted and (
                (employee is not None and not _employee_in(store, sc, employee))
                or not all(_employee_in(store, sc, p.employee_id)
                           for p in directory.badge_periods(store, credential))):
            raise _outside(request, sc)
        done = directory.badge_event(store, event, credential, start_us=start,
                                     until_us=until, employee_id=employee, now_us=now)
        return (None if done is None else done.idx), [
            directory.period_dict(p) for p in directory.badge_periods(store, credential)]

    idx, periods = await asyncio.to_thread(save)
    rec = ctx(request).record
    rec.count, rec.extra = 1, {"credential": credential, "event": event, "idx": idx}
    return web.json_response({"credential": credential, "recorded_idx": idx,
                              "periods": periods}, status=201 if idx is not None else 200)
