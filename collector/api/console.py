"""The web console: server-rendered pages for HR, compliance and operations (issue 16 item 2).

Pages are routes of collector.api.routes like any other, so the middleware authenticates
them (the sign-in's session cookie, or a bearer token or client certificate), rbac admits
only the roles of their ``Route``, and every page view is an access entry (a personal page
is committed before it is sent). Templates are collector/api/templates/console/*.html
(jinja2, autoescaped, undefined names an error); plots are inline SVG
(collector.records.plots); pages carry no script, and their Content-Security-Policy allows
none.

Invariants:
- the navigation of a page lists only the pages the principal's roles allow (computed from
  the route table, never a second list of roles);
- a form that changes something calls the same function as the JSON API (alert ack/resolve:
  collector.records.reviews.review_alert; corrections: collector.api.views_hr.propose and
  decide), so the rules are theirs (segregation of duties, the three-person rule, scope); a
  refusal is shown on the page with its status, and nothing is recorded but the access entry;
- a form POST with the session cookie carries the session's CSRF token in its ``csrf``
  field, besides the middleware's Origin check (collector.api.signin.check_origin); a bearer
  token or client certificate is no ambient credential and needs none;
- pages never show a badge credential, a token or the session id.
"""

from __future__ import annotations

import asyncio
import dataclasses
import datetime as dt
import hmac
import logging
import re
import urllib.parse
from collections import Counter
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import jinja2
from aiohttp import web
from markupsafe import Markup

from collector import ForbiddenError, ReviewError
from collector.api import console_sources as S
from collector.api import params as P
from collector.api import views_hr as H
from collector.api.console_cache import cached
from collector.api.console_rows import window_sheets
from collector.api.console_sources import PackInfo
from collector.api.errors import BadRequestError, NotFoundError, classify
from collector.api.keys import CLOCK, CORRECTIONS, SETTINGS, STORE, ctx, principal_name
from collector.api.signin import SESSION, CsrfError
from collector.ledger import checkpoint_tables, queries
from collector.ledger.corrections_table import Correction
from collector.ledger.sqlbase import PunchQuery, SQLStore
from collector.records import retention, reviews
from collector.records.corrections import FIELDS, MAX_NOTE, REASONS, CorrectionError
from collector.records.exports import ExportError, Fixed, parse_time
from collector.records.plots import svg_bars
from collector.records.timesheet_export import load
from collector.records.timesheets import Rules, Timesheet, hours, shift_row, zone
from wire.bodies_review import NOTE_MAX
from wire.fields import DEVICE_ID_RE
from wire.grants import DISPUTE_REASON

log = logging.getLogger("timeclock.api.console")

US = 1_000_000
DAY_US = 86_400 * US
EPOCH = dt.date(1970, 1, 1)
EXCEPTION_DAYS = 14
PLOT_DAYS = 30
TIMESHEET_MAX_DAYS = 62
SHEETS_PER_PAGE = 50          # employees per timesheets page (the page renders every shift)
FORM_MAX_BYTES = 8192
PENDING_MAX = 200
QUARANTINE_PAGES = 100
_CERTS: dict[Path | None, S.CertIndex] = {}

_TEMPLATES = jinja2.Environment(
    loader=jinja2.PackageLoader("collector.api", "templates"),
    autoescape=jinja2.select_autoescape(default=True, default_for_string=True),
    undefined=jinja2.StrictUndefined)
_HEADERS = {"Cache-Control": "no-store",
            "Content-Security-Policy": "default-src 'none'; form-action 'self'; "
                                       "frame-ancestors 'none'",
            "Referrer-Policy": "same-origin", "X-Content-Type-Options": "nosniff"}

# (route name, label) of the console's pages, in the order of the navigation
PAGES: tuple[tuple[str, str], ...] = (
    ("consoleHr", "HR"), ("consoleTimesheets", "Timesheets"),
    ("consoleTeam", "Team"), ("consoleMe", "My punches"),
    ("consoleCompliance", "Compliance"), ("consoleOps", "Operations"))
DONE = {"ack": "Alert {ref} acknowledged.", "resolve": "Alert {ref} resolved.",
        "proposed": "Correction {ref} proposed: another person approves it.",
        "approved": "Correction {ref} approved: a correction entry is on the ledger.",
        "rejected": "Correction {ref} rejected.",
        "disputed": "Dispute {ref} raised: HR (hr.approve) decides it."}


@dataclass(frozen=True, slots=True)
class NavLink:
    name: str
    label: str
    path: str
    current: bool


def nav(request: web.Request) -> list[NavLink]:
    """The console pages the principal's roles open, from the route table."""
    from collector.api.routes import BY_NAME  # noqa: PLC0415 - routes imports this module

    p = ctx(request).principal
    held = set() if p is None else set(p.roles)
    here = request.match_info.route.name
    out = []
    for name, label in PAGES:
        r = BY_NAME[name]
        if r.roles is not None and held & set(r.roles):
            out.append(NavLink(name, label, r.path, name == here))
    return out


def iso(us: int | None) -> str:
    if us is None:
        return "–"
    return dt.datetime.fromtimestamp(us / US, dt.UTC).strftime("%Y-%m-%d %H:%M:%S")


def render(request: web.Request, template: str, *, status: int = 200, **values: Any
           ) -> web.Response:
    """A console page: the signed-in principal, the navigation, the page's values."""
    c = ctx(request)
    session = request.get(SESSION)
    values = {"flash": None, "error": None, **values}
    html = _TEMPLATES.get_template(f"console/{template}").render(
        principal=principal_name(request), role=c.role, nav=nav(request),
        csrf="" if session is None else session.csrf, iso=iso, **values)
    return web.Response(status=status, text=html, content_type="text/html",
                        headers=_HEADERS)


DONE_RE = re.compile(P.PARAMS["done"][0]["pattern"])      # the OpenAPI document's pattern


def flash_of(request: web.Request) -> str | None:
    """The message of ``?done=<event>-<idx>`` (the redirect after a form); only these."""
    done = P.string(request.rel_url.query, "done", DONE_RE)
    m = None if done is None else DONE_RE.fullmatch(done)
    if m is None:
        return None
    return DONE[m.group(1)].format(ref=m.group(2))


# ---- HR ---------------------------------------------------------------------------------

def _site_of(store: SQLStore) -> dict[str, str]:
    return {d.device: d.site for d in store.devices()}


@dataclass(frozen=True, slots=True)
class HrView:
    present: dict[str, list[dict[str, str]]]      # site -> who is in, since when
    exceptions: list[dict[str, str]]
    per_hour: dict[str, int]
    per_day: dict[str, int]


def hr_view(store: SQLStore, fixed: Fixed, *, now_us: int, sites: frozenset[str] | None,
            employees: frozenset[str] | None = None) -> HrView:
    """Presence now and the exceptions of the last 14 days, from the employees' timesheets
    of the last 15 days (collector.records.timesheets pairs them), punches per hour today,
    and per day: of the last 30 days from the punches' ts index (every punch of the sites),
    or, with ``employees`` (a supervisor's team: only these people's), of their
    timesheets."""
    rules = Rules()
    since = now_us - (EXCEPTION_DAYS + 1) * DAY_US
    sheets = window_sheets(store, fixed, rules, since=since, until=now_us + 1, now_us=now_us,
                           sites=sites, employees=employees)
    if sheets is None:
        sheets = load(store, PunchQuery(since=since, until=now_us + 1), rules, fixed,
                      sites=sites, employees=employees).sheets
    site_of = _site_of(store)
    today = dt.datetime.fromtimestamp(now_us / US, dt.UTC).date()
    today_n = now_us // DAY_US           # UTC day numbers: integers, not datetimes per punch
    hours_today = [0] * 24
    days_n: Counter[int] = Counter()
    present: dict[str, list[dict[str, str]]] = {}
    exceptions: list[dict[str, str]] = []
    open_after = now_us - rules.max_shift_h * 3600 * US
    for sh in sheets:
        if employees is not None and sh.employee_id not in employees:
            continue
        tz = zone(sh.timezone)
        for s in sh.shifts:
            for p in (s.start_punch, s.end_punch):
                if p is None:
                    continue
                n = p.ts // DAY_US
                days_n[n] += 1
                if n == today_n:
                    hours_today[p.ts % DAY_US // (3600 * US)] += 1
        last = max(sh.shifts, key=lambda s: s.start, default=None)
        in_now = None
        if (last is not None and last.end is None and last.start_punch is not None
                and last.start >= open_after):
            in_now = last.start_punch.ref      # a shift in progress: not a missing out yet
            site = site_of.get(last.start_punch.device, "?")
            present.setdefault(site, []).append(
                {"employee_id": sh.employee_id, "since": shift_row(last, tz)["start"],
                 "device": last.start_punch.device})
        oldest = today - dt.timedelta(days=EXCEPTION_DAYS)
        exceptions.extend({"employee_id": sh.employee_id, "day": e.day.isoformat(),
                           "kind": e.kind, "punch": e.punch, "detail": e.detail}
                          for e in sh.exceptions if e.day >= oldest
                          and not (e.kind == "missing-out" and e.punch == in_now))
    exceptions.sort(key=lambda e: (e["day"], e["employee_id"]), reverse=True)
    if employees is None:
        days_n = Counter(queries.punch_days(store, now_us - PLOT_DAYS * DAY_US, now_us + 1,
                                            sites))
    per_hour = {f"{h:02d}": n for h, n in enumerate(hours_today)}
    per_day = {(EPOCH + dt.timedelta(days=n)).isoformat(): c for n, c in days_n.items()}
    return HrView(dict(sorted(present.items())), exceptions, per_hour, per_day)


def pending_for(request: web.Request) -> list[Correction]:
    """Proposals waiting for a decision whose punch is in the caller's scope
    (collector.access.scopes through views_hr.scope)."""
    store, sc = request.app[STORE], H.scope(request)
    found = request.app[CORRECTIONS].find(status="proposed", limit=PENDING_MAX)
    if sc.unrestricted:
        return found
    return [c for c in found if (r := queries.punch_row(store, c.device, c.seq)) is not None
            and sc.row_ok(store, r)]


async def hr(request: web.Request, *, error: str | None = None, status: int = 200
             ) -> web.StreamResponse:
    """GET /console/hr: who is in now per site, exceptions to resolve (a correction form
    for hr.correct), proposals to decide (forms for hr.approve), punch plots."""
    if error is None:
        P.check_known(request.rel_url.query, ("done",))
    app, c = request.app, ctx(request)
    now = app[CLOCK]()
    sites = c.principal.sites if c.principal is not None else None
    store, corrections = app[STORE], app[CORRECTIONS]
    view = await asyncio.to_thread(
        cached, store, "hr", now, sites,
        lambda: hr_view(store, corrections.applied_complete(), now_us=now, sites=sites))
    can_read = _allowed(request, "listCorrections")
    pending = await asyncio.to_thread(pending_for, request) if can_read else []
    c.record.count = (sum(len(v) for v in view.present.values()) + len(view.exceptions)
                      + len(pending))
    today = dt.datetime.fromtimestamp(now / US, dt.UTC).date()
    return render(request, "hr.html", status=status, view=view, now=iso(now),
                  flash=None if error is not None else flash_of(request), error=error,
                  pending=pending, can_propose=_allowed(request, "consoleProposeCorrection"),
                  can_decide=_allowed(request, "consoleApproveCorrection"),
                  reasons=[r for r in REASONS if r != DISPUTE_REASON], fields=FIELDS,
                  since=(today - dt.timedelta(days=7)).isoformat(),
                  until=(today + dt.timedelta(days=1)).isoformat(),
                  hour_plot=Markup(svg_bars(  # noqa: S704 - escaped by collector.records.plots
                      f"punches per hour today ({today.isoformat()}, UTC)", view.per_hour,
                      keep_order=True)),
                  day_plot=Markup(svg_bars(  # noqa: S704 - escaped by collector.records.plots
                      f"punches per day, last {PLOT_DAYS} days (UTC)", view.per_day)))


def _day(q: Mapping[str, str], name: str, default: dt.date) -> dt.date:
    raw = q.get(name)
    if raw is None or raw == "":
        return default
    try:
        if len(raw) != 10:
            raise ValueError(raw)
        return dt.date.fromisoformat(raw)
    except ValueError as e:
        raise BadRequestError(f"{name}: a date YYYY-MM-DD, got {raw[:40]!r}") from e


async def timesheets(request: web.Request) -> web.StreamResponse:
    """GET /console/hr/timesheets?since=YYYY-MM-DD&until=YYYY-MM-DD&page=N (until
    exclusive; SHEETS_PER_PAGE employees a page, by employee id)."""
    q = request.rel_url.query
    P.check_known(q, ("since", "until", "page"))
    page = P.integer(q, "page", lo=1, hi=10_000, default=1) or 1
    app, c = request.app, ctx(request)
    today = dt.datetime.fromtimestamp(app[CLOCK]() / US, dt.UTC).date()
    since = _day(q, "since", today - dt.timedelta(days=7))
    until = _day(q, "until", today + dt.timedelta(days=1))
    if not 0 < (until - since).days <= TIMESHEET_MAX_DAYS:
        raise BadRequestError(f"until must be after since, at most {TIMESHEET_MAX_DAYS} days "
                              f"later")
    start = int(dt.datetime.combine(since, dt.time(), dt.UTC).timestamp()) * US
    end = int(dt.datetime.combine(until, dt.time(), dt.UTC).timestamp()) * US
    sites = c.principal.sites if c.principal is not None else None

    def build() -> list[Timesheet]:
        store, fixed, rules = app[STORE], app[CORRECTIONS].applied_complete(), Rules()
        sheets = window_sheets(store, fixed, rules, since=start, until=end,
                               now_us=app[CLOCK](), sites=sites)
        if sheets is None:          # a range before the window: from the store
            sheets = load(store, PunchQuery(since=start, until=end), rules, fixed,
                          sites=sites).sheets
        return sheets

    every = await asyncio.to_thread(cached, app[STORE], "timesheets", app[CLOCK](),
                                    (start, end, sites), build)
    pages = max(1, -(-len(every) // SHEETS_PER_PAGE))
    if page > pages:
        raise NotFoundError(f"page {page}: this range has {pages} page(s) of timesheets")
    rows = [_sheet_row(sh) for sh in every[(page - 1) * SHEETS_PER_PAGE:page * SHEETS_PER_PAGE]]
    c.record.count = sum(len(r["shifts"]) for r in rows)
    span = {"since": f"{since.isoformat()}T00:00:00Z", "until": f"{until.isoformat()}T00:00:00Z"}
    csv_link = "/v1/timesheets?" + urllib.parse.urlencode({**span, "format": "csv"})
    here = {"since": since.isoformat(), "until": until.isoformat()}
    links = {n: "/console/hr/timesheets?" + urllib.parse.urlencode({**here, "page": n})
             for n in (page - 1, page + 1) if 1 <= n <= pages}
    return render(request, "timesheets.html", rows=rows, since=since.isoformat(),
                  until=until.isoformat(), csv_link=csv_link,
                  csv_allowed=_allowed(request, "getTimesheets"), page=page, pages=pages,
                  employees=len(every), prev_link=links.get(page - 1),
                  next_link=links.get(page + 1))


def _sheet_row(sh: Timesheet) -> dict[str, Any]:
    """One employee of the timesheets page (only the page's employees are rendered)."""
    tz = zone(sh.timezone)
    return {"employee_id": sh.employee_id, "timezone": sh.timezone,
            "shifts": [shift_row(s, tz) for s in sh.shifts], "exceptions": len(sh.exceptions),
            "total": hours(sum(sh.hours_by_day().values()))}


def _allowed(request: web.Request, route_name: str) -> bool:
    from collector.api.routes import BY_NAME  # noqa: PLC0415 - routes imports this module

    p, roles = ctx(request).principal, BY_NAME[route_name].roles
    return p is not None and roles is not None and bool(set(p.roles) & set(roles))


# ---- compliance -------------------------------------------------------------------------

@dataclass(frozen=True, slots=True)
class ComplianceView:
    verification: dict[str, Any]
    alerts: list[dict[str, Any]]
    plan: dict[str, Any]
    holds: list[dict[str, Any]]
    alerts_per_day: dict[str, int]
    quarantine_per_day: dict[str, int]
    packs: list[PackInfo]
    access_reviews: list[dict[str, Any]]


def _checkpoint(store: SQLStore) -> dict[str, Any]:
    """The ledger's size and head, and the newest v2 checkpoint: its tree size and the
    names of its signers (the log, then each witness's cosignature)."""
    size, head = store.head()
    cp = checkpoint_tables.newest(store)
    if cp is None:
        return {"size": size, "head": head, "checkpoint": None, "signers": []}
    text, _, sigs = cp.note.partition("\n\n")
    lines = text.split("\n")
    signers = [ln[2:].split(" ", 1)[0] for ln in sigs.split("\n") if ln.startswith("\u2014 ")]
    return {"size": size, "head": head, "signers": signers,
            "checkpoint": {"origin": lines[0], "size": lines[1] if len(lines) > 1 else "?"}}


def compliance_view(store: SQLStore, *, now_us: int, evidence_dir: Path | None = None
                    ) -> ComplianceView:
    states = reviews.alerts(store)
    since = now_us - PLOT_DAYS * DAY_US
    per_day: Counter[str] = Counter(
        dt.datetime.fromtimestamp(a.at / US, dt.UTC).date().isoformat()
        for a in states if a.at >= since)
    _, quarantine = _quarantined(store, since)
    plan = retention.plan(store, now_us)
    return ComplianceView(
        verification=_checkpoint(store),
        alerts=[a.to_dict() for a in sorted(states, key=lambda a: a.idx, reverse=True)
                if a.status != "resolved"],
        plan=plan.to_dict(), holds=[h.to_dict() for h in plan.holds],
        alerts_per_day=dict(per_day), quarantine_per_day=dict(quarantine),
        packs=S.packs(evidence_dir), access_reviews=S.access_review_rows(store))


def _with_packs(view: ComplianceView, packs: list[PackInfo]) -> ComplianceView:
    return dataclasses.replace(view, packs=packs)


async def compliance(request: web.Request, *, error: str | None = None, status: int = 200
                     ) -> web.StreamResponse:
    """GET /console/compliance: ledger and checkpoint status, open alerts (forms for
    audit.review), legal holds, the retention plan, plots."""
    if error is None:
        P.check_known(request.rel_url.query, ("done",))
    app, c = request.app, ctx(request)
    now = app[CLOCK]()
    store, evidence_dir = app[STORE], app[SETTINGS].evidence_dir
    view = await asyncio.to_thread(cached, store, "compliance", now, None,
                                   lambda: compliance_view(store, now_us=now))
    packs = await asyncio.to_thread(S.packs, evidence_dir)      # the folder: every view
    c.record.count = len(view.alerts)
    return render(
        request, "compliance.html", status=status, view=_with_packs(view, packs), now=iso(now),
        flash=None if error is not None else flash_of(request), error=error,
        can_review=_allowed(request, "consoleAckAlert"), iso_day=S.iso_day,
        evidence_configured=app[SETTINGS].evidence_dir is not None,
        alert_plot=Markup(svg_bars(  # noqa: S704 - escaped by collector.records.plots
            f"alerts per day, last {PLOT_DAYS} days", view.alerts_per_day)),
        quarantine_plot=Markup(svg_bars(  # noqa: S704 - escaped by collector.records.plots
            f"quarantined messages per day, last {PLOT_DAYS} days", view.quarantine_per_day)))


async def read_form(request: web.Request) -> dict[str, str]:
    """The form fields; with a session, its CSRF token must be in ``csrf``."""
    if request.content_type != "application/x-www-form-urlencoded":
        raise BadRequestError("a console form is sent as application/x-www-form-urlencoded")
    if (request.content_length or 0) > FORM_MAX_BYTES:
        raise BadRequestError(f"the form is larger than {FORM_MAX_BYTES} bytes")
    raw = await request.post()
    form = {k: v for k, v in raw.items() if isinstance(v, str)}
    session = request.get(SESSION)
    if session is not None:
        token = form.get("csrf", "")
        if not hmac.compare_digest(token.encode("utf-8", "replace"), session.csrf.encode()):
            raise CsrfError("the form does not carry this session's CSRF token (reload the "
                            "page and send it again)")
    return form


async def _review(request: web.Request, event: str) -> web.StreamResponse:
    raw = request.match_info["idx"]
    if not raw.isdigit() or len(raw) > 16:
        raise NotFoundError(f"no alert {raw[:20]!r}")
    idx = int(raw)
    rec = ctx(request).record
    rec.extra = {"alert_idx": idx, "console": True}
    form = await read_form(request)
    note = form.get("note", "").strip()
    try:
        if not note:
            raise ReviewError("note: must not be empty (say what was checked)")
        if len(note) > NOTE_MAX:
            raise ReviewError(f"note: at most {NOTE_MAX} characters")
        review_idx, _ = await asyncio.to_thread(
            reviews.review_alert, request.app[STORE], event, idx, by=principal_name(request),
            note=note, now_us=request.app[CLOCK]())
    except (ReviewError, ForbiddenError) as e:
        p = classify(e)
        rec.outcome, rec.detail = p.outcome, p.detail
        return await compliance(request, error=p.detail, status=p.status)
    rec.count = 1
    rec.extra["review_idx"] = review_idx
    return see_other(f"/console/compliance?done={event}-{idx}")


async def ack_alert(request: web.Request) -> web.StreamResponse:
    """POST /console/compliance/alerts/{idx}/ack (form: note, csrf)."""
    return await _review(request, "ack")


async def resolve_alert(request: web.Request) -> web.StreamResponse:
    """POST /console/compliance/alerts/{idx}/resolve (form: note, csrf)."""
    return await _review(request, "resolve")


async def _hr_refusal(request: web.Request, e: Exception) -> web.StreamResponse:
    """The HR page with the refusal, to a caller whose roles open it; anyone else (e.g.
    hr.correct without hr.read) gets the problem document, never the page's data."""
    if not _allowed(request, "consoleHr"):
        raise e
    p = classify(e)
    rec = ctx(request).record
    rec.outcome, rec.detail = p.outcome, p.detail
    return await hr(request, error=p.detail, status=p.status)


def see_other(location: str) -> web.Response:
    # 303: the browser GETs the page again (a reload never re-sends the form)
    return web.Response(status=303, headers={"Location": location, **_HEADERS})


def form_value(field: str, raw: str) -> Any:
    """The form's new value: an action, or a time (ISO 8601 with a UTC offset)."""
    if field != "ts":
        return raw
    try:
        return parse_time(raw)
    except ExportError as e:
        raise CorrectionError(f"after: {e}") from e


async def propose_correction(request: web.Request) -> web.StreamResponse:
    """POST /console/hr/corrections (form: device, seq, field, after, reason, note, csrf):
    views_hr.propose, the rules of ``POST /v1/corrections``."""
    form = await read_form(request)
    try:
        device, seq = form.get("device", ""), form.get("seq", "")
        if not DEVICE_ID_RE.fullmatch(device) or not seq.isdigit() or len(seq) > 16:
            raise CorrectionError("device and seq: the punch to correct (from the exceptions)")
        field = form.get("field", "")
        c = await H.propose(request, device=device, seq=int(seq), field=field,
                            after=form_value(field, form.get("after", "").strip()),
                            reason=form.get("reason", ""),
                            note=form.get("note", "")[:MAX_NOTE])
    except (CorrectionError, ForbiddenError) as e:
        return await _hr_refusal(request, e)
    return see_other(f"/console/hr?done=proposed-{c.id}")


async def _decide(request: web.Request, approve: bool) -> web.StreamResponse:
    cid = request.match_info["id"]
    if len(cid) > 40 or not cid.startswith("cor-"):
        raise NotFoundError(f"no correction {cid[:40]!r}")
    form = await read_form(request)
    try:
        c = await H.decide(request, cid, approve=approve, note=form.get("note", "")[:MAX_NOTE])
    except (CorrectionError, ForbiddenError) as e:
        return await _hr_refusal(request, e)
    return see_other(f"/console/hr?done={c.status}-{c.id}")


async def approve_correction(request: web.Request) -> web.StreamResponse:
    """POST /console/hr/corrections/{id}/approve (form: note, csrf)."""
    return await _decide(request, True)


async def reject_correction(request: web.Request) -> web.StreamResponse:
    """POST /console/hr/corrections/{id}/reject (form: note, csrf)."""
    return await _decide(request, False)


# ---- operations -------------------------------------------------------------------------

def _quarantined(store: SQLStore, since_us: int) -> tuple[int, Counter[str]]:
    """Quarantined messages held, and those received since ``since_us`` per UTC day (read
    in pages; at most QUARANTINE_PAGES of 1000)."""
    held, per_day, after = 0, Counter[str](), 0
    for _ in range(QUARANTINE_PAGES):
        page = store.quarantine(limit=1000, after_id=after)
        held += len(page)
        per_day.update(dt.datetime.fromtimestamp(r.received_at / US, dt.UTC).date()
                       .isoformat() for r in page if r.received_at >= since_us)
        if len(page) < 1000:
            break
        after = page[-1].id
    return held, per_day


def _ops_rows(request: web.Request, now_us: int
             ) -> tuple[list[S.FleetLine], list[str], int, Counter[str]]:
    app = request.app
    held, per_day = _quarantined(app[STORE], now_us - PLOT_DAYS * DAY_US)
    ca_dir = app[SETTINGS].ca_dir
    certs = _CERTS.get(ca_dir)
    if certs is None:       # one cache per CA directory (its mtime check is per view)
        certs = _CERTS.setdefault(ca_dir, S.CertIndex(ca_dir))
    lines, problems = S.fleet_lines(app[STORE], now_us=now_us, certs=certs,
                                    statuses=app[SETTINGS].statuses)
    return lines, problems, held, per_day


async def ops(request: web.Request) -> web.StreamResponse:
    """GET /console/ops: the fleet (online and its last status, queue depth and age, clock
    sync and offset, certificate expiry; collector.api.console_sources), the quarantine
    count and its plot."""
    P.check_known(request.rel_url.query, ())
    app, c = request.app, ctx(request)
    now = app[CLOCK]()
    lines, problems, quarantined, per_day = await asyncio.to_thread(_ops_rows, request, now)
    c.record.count = len(lines)
    return render(request, "ops.html", lines=lines, problems=problems,
                  quarantined=quarantined, now=iso(now),
                  quarantine_plot=Markup(svg_bars(  # noqa: S704 - escaped by records.plots
                      f"quarantined messages per day, last {PLOT_DAYS} days",
                      dict(per_day))))


# ---- evidence packs and refusals --------------------------------------------------------

async def evidence_pack(request: web.Request) -> web.StreamResponse:
    """GET /console/compliance/evidence/{name}: a pack made by ``timeclock-collector
    evidence`` in ``[api] evidence_dir``, as it was written (its manifest is signed by the
    log key; ``timeclock-verify --evidence`` checks it)."""
    P.check_known(request.rel_url.query, ())
    name = request.match_info["name"]
    path = await asyncio.to_thread(S.pack_file, request.app[SETTINGS].evidence_dir, name)
    if path is None:
        raise NotFoundError(f"no evidence pack {name[:60]!r}")
    rec = ctx(request).record
    rec.count, rec.extra = 1, {"evidence_pack": name}
    # streamed from the file: a pack holds the audit bundle of the whole ledger
    return web.FileResponse(path, headers={
        **_HEADERS, "Content-Type": "application/gzip",
        "Content-Disposition": f'attachment; filename="{name}"'})


def refusal_page(request: web.Request, status: int, title: str, detail: str
                 ) -> web.Response | None:
    """The HTML page of a refused console request from a browser (its Accept names
    text/html): the status, the reason and the pages the principal may open; None for any
    other request (the problem document). Never the data of the page refused."""
    if not request.path.startswith("/console/") or ctx(request).principal is None or \
            "text/html" not in request.headers.get("Accept", ""):
        return None
    try:
        return render(request, "refused.html", status=status, code=status, title=title,
                      detail=detail)
    except jinja2.TemplateError:
        # a refusal must not fail for want of its page: the problem document instead
        log.exception("the console's refusal page did not render; sending the problem")
        return None
