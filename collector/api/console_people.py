"""The console's pages for people who see only some people (issue 16 item 2): a supervisor's
team and an employee's own punches.

- ``GET /console/team`` (supervisor): who of the team is in now, the team's exceptions of
  the last 14 days and the team's proposals waiting for a decision, with approve and reject
  forms (``POST /console/team/corrections/{id}/approve|reject``: views_hr.decide as the
  supervisor, so an employee's dispute and one's own proposal are refused). The team is
  collector.access.scopes' (everyone whose manager chain leads to the supervisor's employee,
  within the principal's sites), the same scope ``GET /v1/punches`` applies to a supervisor;
- ``GET /console/me`` (employee.self): one's own punches and timesheet of the last 14 days,
  one's open disputes, and a dispute form per punch;
- ``POST /console/me/disputes`` (employee.self): a dispute of one's own punch, through
  collector.api.views_hr.propose with reason ``employee-dispute`` (the rules of ``POST
  /v1/corrections``: only one's own punch; someone with hr.approve decides it).

Invariant: nothing outside the scope is read into a page: timesheets are built for the
scope's employees only, proposals are filtered by collector.api.console's ``pending_for``
(scope per punch); a principal with no linked employee sees an empty page that says so.
"""

from __future__ import annotations

import asyncio
import datetime as dt
from typing import Any

from aiohttp import web
from markupsafe import Markup

from collector import ForbiddenError
from collector.access import scopes
from collector.api import console as C
from collector.api import params as P
from collector.api import views_hr as H
from collector.api.console_cache import cached
from collector.api.console_rows import window_sheets
from collector.api.errors import NotFoundError, classify
from collector.api.keys import CLOCK, CORRECTIONS, STORE, ctx
from collector.ledger.sqlbase import PunchQuery, SQLStore
from collector.records.corrections import FIELDS, MAX_NOTE, CorrectionError
from collector.records.exports import Fixed
from collector.records.plots import svg_bars
from collector.records.timesheet_export import load
from collector.records.timesheets import Rules, TimePunch, hours, local, shift_row, zone
from wire.fields import DEVICE_ID_RE
from wire.grants import DISPUTE_REASON

SELF_DAYS = 14
US = 1_000_000
DAY_US = 86_400 * US


def _team_scope(request: web.Request) -> scopes.Scope:
    c = ctx(request)
    return scopes.scope_for(request.app[STORE], c.principal, "supervisor", ("supervisor",))


async def team(request: web.Request, *, error: str | None = None, status: int = 200
               ) -> web.StreamResponse:
    """GET /console/team: the supervisor's team (presence, exceptions, proposals with
    approve and reject forms, except for an employee's dispute, which HR decides)."""
    if error is None:
        P.check_known(request.rel_url.query, ("done",))
    app, c = request.app, ctx(request)
    now = app[CLOCK]()
    linked = c.principal is not None and c.principal.employee_id is not None
    sc = await asyncio.to_thread(_team_scope, request)
    c.record.extra["scope"] = sc.to_dict()
    members = sc.employees or frozenset()
    store, corrections = app[STORE], app[CORRECTIONS]
    view = await asyncio.to_thread(
        cached, store, "team", now, (sc.sites, members),
        lambda: C.hr_view(store, corrections.applied_complete(), now_us=now, sites=sc.sites,
                          employees=members))
    pending = await asyncio.to_thread(C.pending_for, request)
    c.record.count = (sum(len(v) for v in view.present.values()) + len(view.exceptions)
                      + len(pending))
    today = dt.datetime.fromtimestamp(now / US, dt.UTC).date()
    return C.render(request, "team.html", status=status, view=view, now=C.iso(now),
                    pending=pending, linked=linked, members=sorted(members),
                    dispute=DISPUTE_REASON, error=error,
                    flash=None if error is not None else C.flash_of(request),
                    day_plot=Markup(svg_bars(  # noqa: S704 - escaped by collector.records.plots
                        f"team punches per day, last {C.EXCEPTION_DAYS + 1} days (UTC, to "
                        f"{today.isoformat()})", view.per_day)))



def self_view(store: SQLStore, fixed: Fixed, employee: str, *, now_us: int
              ) -> dict[str, Any]:
    """One employee's punches, shifts and exceptions of the last SELF_DAYS days."""
    since, rules = now_us - SELF_DAYS * DAY_US, Rules()
    sheets = window_sheets(store, fixed, rules, since=since, until=now_us + 1, now_us=now_us,
                           sites=None, employees=frozenset({employee}))
    if sheets is None:
        sheets = load(store, PunchQuery(since=since, until=now_us + 1), rules, fixed,
                      employee=employee).sheets
    sheet = next((s for s in sheets if s.employee_id == employee), None)
    if sheet is None:
        return {"timezone": None, "punches": [], "shifts": [], "exceptions": [],
                "total": hours(0)}
    tz = zone(sheet.timezone)
    seen: dict[tuple[str, int], TimePunch] = {}
    for s in sheet.shifts:
        for p in (s.start_punch, s.end_punch):
            if p is not None:
                seen[(p.device, p.seq)] = p
    punches = [{"device": p.device, "seq": p.seq, "ref": p.ref, "action": p.action,
                "at": local(p.ts, tz).strftime("%Y-%m-%d %H:%M"),
                "corrected": bool(p.corrections)}
               for p in sorted(seen.values(), key=lambda p: (p.ts, p.device, p.seq),
                               reverse=True)]
    return {"timezone": sheet.timezone, "punches": punches,
            "shifts": [shift_row(s, tz) for s in sheet.shifts],
            "exceptions": [{"day": e.day.isoformat(), "kind": e.kind, "punch": e.punch,
                            "detail": e.detail} for e in sheet.exceptions],
            "total": hours(sum(sheet.hours_by_day().values()))}


async def me(request: web.Request, *, error: str | None = None, status: int = 200
             ) -> web.StreamResponse:
    """GET /console/me: one's own punches, timesheet and disputes."""
    if error is None:
        P.check_known(request.rel_url.query, ("done",))
    app, c = request.app, ctx(request)
    now = app[CLOCK]()
    employee = None if c.principal is None else c.principal.employee_id
    view = None
    if employee is not None:
        store, corrections, me_ = app[STORE], app[CORRECTIONS], employee
        view = await asyncio.to_thread(
            cached, store, "me", now, me_,
            lambda: self_view(store, corrections.applied_complete(), me_, now_us=now))
    pending = await asyncio.to_thread(C.pending_for, request) if employee is not None else []
    c.record.count = 0 if view is None else len(view["punches"])
    return C.render(request, "me.html", status=status, view=view, employee=employee,
                    now=C.iso(now), pending=pending, fields=FIELDS, days=SELF_DAYS,
                    flash=None if error is not None else C.flash_of(request), error=error)


async def dispute(request: web.Request) -> web.StreamResponse:
    """POST /console/me/disputes (form: device, seq, field, after, note, csrf)."""
    form = await C.read_form(request)
    try:
        device, seq = form.get("device", ""), form.get("seq", "")
        if not DEVICE_ID_RE.fullmatch(device) or not seq.isdigit() or len(seq) > 16:
            raise CorrectionError("device and seq: the punch to dispute (from your punches)")
        field = form.get("field", "")
        cor = await H.propose(request, device=device, seq=int(seq), field=field,
                              after=C.form_value(field, form.get("after", "").strip()),
                              reason=DISPUTE_REASON, note=form.get("note", "")[:MAX_NOTE])
    except (CorrectionError, ForbiddenError) as e:
        p = classify(e)
        rec = ctx(request).record
        rec.outcome, rec.detail = p.outcome, p.detail
        return await me(request, error=p.detail, status=p.status)
    return C.see_other(f"/console/me?done=disputed-{cor.id}")


async def _team_decide(request: web.Request, approve: bool) -> web.StreamResponse:
    cid = request.match_info["id"]
    if len(cid) > 40 or not cid.startswith("cor-"):
        raise NotFoundError(f"no correction {cid[:40]!r}")
    form = await C.read_form(request)
    try:
        cor = await H.decide(request, cid, approve=approve,
                             note=form.get("note", "")[:MAX_NOTE])
    except (CorrectionError, ForbiddenError) as e:
        p = classify(e)
        rec = ctx(request).record
        rec.outcome, rec.detail = p.outcome, p.detail
        return await team(request, error=p.detail, status=p.status)
    return C.see_other(f"/console/team?done={cor.status}-{cor.id}")


async def team_approve(request: web.Request) -> web.StreamResponse:
    """POST /console/team/corrections/{id}/approve (form: note, csrf): views_hr.decide as
    the supervisor (the team's proposals only, never a dispute, never one's own)."""
    return await _team_decide(request, True)


async def team_reject(request: web.Request) -> web.StreamResponse:
    """POST /console/team/corrections/{id}/reject (form: note, csrf)."""
    return await _team_decide(request, False)
