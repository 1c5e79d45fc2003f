"""GET /v1/timesheets: punches paired into shifts with hours per day, week and pay period
(collector.records.timesheets), as JSON, plain CSV or NDJSON; the ledger snapshot the answer
was made from is in the JSON ``sidecar`` (CSV/NDJSON: the ``X-Timeclock-Sidecar`` header,
base64 of the same JSON). A site-scoped principal sees only its sites' punches."""

from __future__ import annotations

import asyncio
import base64
import json
import re
from datetime import date
from typing import Any

from aiohttp import web

from collector.api import params as P
from collector.api.errors import BadRequestError
from collector.api.keys import CLOCK, CORRECTIONS, CTX, STORE
from collector.api.views_hr import negotiate
from collector.ledger.sqlbase import PunchQuery
from collector.records.timesheet_export import load, sidecar
from collector.records.timesheets import (
    PERIODS,
    ROUNDINGS,
    Rules,
    TimesheetError,
    csv_text,
    hours,
    ndjson_items,
    shift_row,
    zone,
)

PARAMS = ("since", "until", "employee", "site", "format", "round_minutes", "rounding",
          "grace_minutes", "period", "week_start", "period_anchor")
EMPLOYEE_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$")
MAX_SPAN_US = 400 * 86_400 * 1_000_000        # one request: at most ~13 months


def _int(q: Any, name: str, hi: int, default: int) -> int:
    v = P.integer(q, name, lo=0, hi=hi, default=default)
    return default if v is None else v


def _rules(q: Any) -> Rules:
    d = Rules()
    anchor = P.string(q, "period_anchor", re.compile(r"^\d{4}-\d{2}-\d{2}$"))
    try:
        return Rules(round_minutes=_int(q, "round_minutes", 60, d.round_minutes),
                     rounding=P.choice(q, "rounding", ROUNDINGS) or d.rounding,
                     grace_minutes=_int(q, "grace_minutes", 60, d.grace_minutes),
                     period=P.choice(q, "period", PERIODS) or d.period,
                     week_start=_int(q, "week_start", 6, d.week_start),
                     period_anchor=date.fromisoformat(anchor) if anchor else d.period_anchor)
    except (TimesheetError, ValueError) as e:
        raise BadRequestError(str(e)) from e


async def timesheets(request: web.Request) -> web.StreamResponse:
    store, corr, clock = request.app[STORE], request.app[CORRECTIONS], request.app[CLOCK]
    q = request.rel_url.query
    P.check_known(q, PARAMS)
    fmt = negotiate(q, request.headers.get("Accept", ""), allowed=("json", "csv", "ndjson"),
                    default="json")
    since, until = P.time(q, "since"), P.time(q, "until")
    if since is None or until is None:
        raise BadRequestError("since and until are required (ISO 8601 with a UTC offset)")
    if not 0 < until - since <= MAX_SPAN_US:
        raise BadRequestError("until must be after since, at most 400 days later")
    rules = _rules(q)
    site = P.string(q, "site", P.SITE_RE)
    principal = request[CTX].principal
    sites = principal.sites if principal is not None else None
    if site is not None and sites is not None and site not in sites:
        sites = frozenset()
    query = PunchQuery(since=since, until=until, site=site)
    employee = P.string(q, "employee", EMPLOYEE_RE)

    def build() -> tuple[bytes, dict[str, Any], int]:
        sheets = load(store, query, rules, corr.applied_complete(), employee=employee,
                      sites=sites)
        if fmt == "csv":
            text = csv_text(sheets.sheets)
            rows = max(0, text.count("\r\n") - 1)
        elif fmt == "ndjson":
            items = list(ndjson_items(sheets.sheets))
            text, rows = "".join(json.dumps(i, sort_keys=True) + "\n" for i in items), len(items)
        else:
            out = []
            for sh in sheets.sheets:
                tz = zone(sh.timezone)
                out.append({
                    "employee_id": sh.employee_id, "timezone": sh.timezone,
                    "shifts": [shift_row(s, tz) for s in sh.shifts],
                    "exceptions": [{"day": e.day.isoformat(), "kind": e.kind,
                                    "punch": e.punch, "detail": e.detail}
                                   for e in sh.exceptions],
                    "hours_by_day": {d.isoformat(): hours(v)
                                     for d, v in sh.hours_by_day().items()},
                    "hours_by_week": {d.isoformat(): hours(v)
                                      for d, v in sh.hours_by_week(rules).items()},
                    "hours_by_period": {f"{a.isoformat()}/{b.isoformat()}": hours(v)
                                        for (a, b), v in sh.hours_by_period(rules).items()}})
            rows = sum(len(o["shifts"]) for o in out)
            text = json.dumps({"employees": out}, sort_keys=True)
        data = text.encode()
        meta = sidecar(sheets, csv_bytes=data, rows=rows, rules=rules, generated_at=clock(),
                       fmt=fmt)
        return data, meta, rows

    data, meta, rows = await asyncio.to_thread(build)
    request[CTX].record.count = rows
    if fmt == "json":
        body = json.loads(data)
        body["sidecar"] = meta
        return web.json_response(body)
    types = {"csv": "text/csv; charset=utf-8", "ndjson": "application/x-ndjson"}
    side = base64.b64encode(json.dumps(meta, sort_keys=True).encode()).decode()
    return web.Response(body=data, headers={
        "Content-Type": types[fmt], "X-Timeclock-Sidecar": side,
        "Content-Disposition": f"attachment; filename=timesheet.{fmt}"})
