"""The route table: every endpoint with its handler, the roles that may call it, its query
parameters and the shapes the OpenAPI document states. rbac, the middleware, the router and
collector.api.openapi all read this one table."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from dataclasses import dataclass

from aiohttp import web

from collector.access.principals import ROLES
from collector.api import console as CO
from collector.api import console_people as CP
from collector.api import views_access as AC
from collector.api import views_admin as A
from collector.api import views_audit as U
from collector.api import views_hr as H
from collector.api import views_people as PP
from collector.api import views_reviews as RV
from collector.api import views_signin as SI
from collector.api import views_timesheets as TS

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


@dataclass(frozen=True)
class Route:
    method: str
    path: str
    name: str                       # operationId
    handler: Handler
    roles: tuple[str, ...] | None   # None: public (no authentication)
    summary: str
    params: tuple[str, ...] = ()
    body: str | None = None         # components/schemas name of the JSON request body
    response: str = "Object"        # components/schemas name of the 2xx body
    status: int = 200
    streams: bool = False           # also NDJSON/CSV
    personal: bool = False          # answers personal data: accounted before it is sent


ROUTES: tuple[Route, ...] = (
    Route("GET", "/healthz", "healthz", A.healthz, None, "Liveness (no auth)",
          response="Health"),
    Route("GET", "/v1/openapi.json", "openapi", A.openapi, None, "This OpenAPI document"),
    Route("GET", "/auth/login", "signIn", SI.login, None, "Sign in at the OIDC provider "
          "(302; ?next= a local path)"),
    Route("GET", "/auth/callback", "signInCallback", SI.callback, None, "The provider's "
          "redirect: code exchange, ID token, session cookie (HTML)"),
    Route("POST", "/auth/logout", "signOut", SI.logout, None, "End the session (HTML; CSRF: "
          "Origin or the session's csrf field)"),
    Route("GET", "/auth/me", "me", SI.me, None, "The signed-in person: roles, employee, "
          "sites, session expiry (session cookie)"),
    Route("GET", "/console/", "console", SI.console, None, "Who is signed in, with which "
          "roles (HTML; session cookie)"),
    # the web console (collector.api.console): HTML pages, each an access entry
    Route("GET", "/console/hr", "consoleHr", CO.hr, ("hr.read",), "Console: who is in "
          "now per site, exceptions of the last 14 days, proposals to decide, punch plots "
          "(HTML)", ("done",), personal=True),
    Route("POST", "/console/hr/corrections", "consoleProposeCorrection",
          CO.propose_correction, ("hr.correct",), "Console form: propose a correction "
          "(303; form device, seq, field, after, reason, note, csrf)", status=303),
    Route("POST", "/console/hr/corrections/{id}/approve", "consoleApproveCorrection",
          CO.approve_correction, ("hr.approve",), "Console form: approve another person's "
          "proposal (303; form note, csrf)", status=303),
    Route("POST", "/console/hr/corrections/{id}/reject", "consoleRejectCorrection",
          CO.reject_correction, ("hr.approve",), "Console form: reject a proposal (303; "
          "form note, csrf)", status=303),
    Route("GET", "/console/hr/timesheets", "consoleTimesheets", CO.timesheets,
          ("hr.read", "payroll.export"), "Console: timesheets of a date range, CSV link "
          "(HTML; 50 employees a page)", ("since", "until", "page"), personal=True),
    Route("GET", "/console/compliance", "consoleCompliance", CO.compliance,
          ("audit.read", "audit.review"), "Console: ledger and cosignatures, open alerts, "
          "legal holds, retention plan, plots (HTML)", ("done",)),
    Route("POST", "/console/compliance/alerts/{idx}/ack", "consoleAckAlert", CO.ack_alert,
          ("audit.review",), "Console form: acknowledge an alert (303; form note, csrf)",
          status=303),
    Route("POST", "/console/compliance/alerts/{idx}/resolve", "consoleResolveAlert",
          CO.resolve_alert, ("audit.review",), "Console form: resolve an acknowledged "
          "alert (303; form note, csrf)", status=303),
    Route("GET", "/console/ops", "consoleOps", CO.ops, ("ops.devices",), "Console: the "
          "fleet (online, queue, clock sync, certificate expiry) and the quarantine (HTML)"),
    Route("GET", "/console/compliance/evidence/{name}", "consoleEvidencePack",
          CO.evidence_pack, ("audit.read", "audit.review"), "Console: download an evidence "
          "pack made by `timeclock-collector evidence` in [api] evidence_dir (tar.gz; its "
          "bundle carries the punch bodies)", personal=True),
    Route("GET", "/console/team", "consoleTeam", CP.team, ("supervisor",), "Console: the "
          "supervisor's team: who is in now, exceptions, proposals (HTML)", ("done",),
          personal=True),
    Route("POST", "/console/team/corrections/{id}/approve", "consoleTeamApprove",
          CP.team_approve, ("supervisor",), "Console form: approve a team member's "
          "correction (303; form note, csrf; never a dispute)", status=303),
    Route("POST", "/console/team/corrections/{id}/reject", "consoleTeamReject",
          CP.team_reject, ("supervisor",), "Console form: reject a team member's "
          "correction (303; form note, csrf; never a dispute)", status=303),
    Route("GET", "/console/me", "consoleMe", CP.me, ("employee.self",), "Console: one's own "
          "punches, timesheet and disputes (HTML)", ("done",), personal=True),
    Route("POST", "/console/me/disputes", "consoleDispute", CP.dispute, ("employee.self",),
          "Console form: dispute one's own punch (303; form device, seq, field, after, "
          "note, csrf)", status=303),
    Route("GET", "/v1/punches", "listPunches", H.list_punches, H.PUNCH_READ_ROLES,
          "Punches by device time, filtered; JSON pages with a cursor, or NDJSON/CSV streamed",
          H.PUNCH_PARAMS, response="PunchPage", streams=True,
          personal=True),
    Route("GET", "/v1/punches/{device}/{seq}", "getPunch", H.get_punch, H.PUNCH_READ_ROLES,
          "One punch with its ledger entry, signature, key, covering checkpoint, corrections",
          response="PunchDetail",
          personal=True),
    Route("GET", "/v1/punches/{device}/{seq}/proof", "getPunchProof", H.punch_proof,
          ("hr.read", "audit.read"),
          "A punch's ledger entry, leaf index and inclusion proof to the newest (cosigned) v2 "
          "checkpoint covering it, or to the one of ?size= (note with every cosignature)",
          ("size",), response="PunchProof"),
    Route("GET", "/v1/exports/payroll", "payrollExport", H.payroll_export,
          ("payroll.export",), "Payroll extract with header, trailer and corrected values",
          H.PAYROLL_PARAMS, response="PayrollStream", streams=True,
          personal=True),
    Route("GET", "/v1/timesheets", "getTimesheets", TS.timesheets,
          ("hr.read", "payroll.export"),
          "Timesheets: shifts per employee and local day, hours per day, week and pay "
          "period, exceptions; JSON with the ledger snapshot (sidecar), or plain CSV/NDJSON "
          "with it in X-Timeclock-Sidecar", TS.PARAMS, streams=True, personal=True),
    Route("GET", "/v1/corrections", "listCorrections", H.list_corrections,
          H.CORRECTION_READ_ROLES, "Corrections (proposals and decisions)",
          ("status", "device", "cursor", "limit"), response="CorrectionPage",
          personal=True),
    Route("POST", "/v1/corrections", "proposeCorrection", H.propose_correction,
          ("hr.correct", "employee.self"), "Propose a correction of a punch's action or "
          "time (employee.self: a dispute of one's own punch, reason employee-dispute)",
          body="CorrectionProposal", response="Correction", status=201),
    Route("GET", "/v1/corrections/{id}", "getCorrection", H.get_correction,
          H.CORRECTION_READ_ROLES, "One correction",
          response="Correction",
          personal=True),
    Route("POST", "/v1/corrections/{id}/approve", "approveCorrection",
          H.approve_correction, ("hr.approve", "supervisor"),
          "Approve (another person's) proposal: appends a correction ledger entry "
          "(supervisor: of their team, never a dispute)",
          body="Decision", response="Correction"),
    Route("POST", "/v1/corrections/{id}/reject", "rejectCorrection", H.reject_correction,
          ("hr.approve", "supervisor"), "Reject (another person's) proposal", body="Decision",
          response="Correction"),
    Route("GET", "/v1/people", "listPeople", PP.list_people, PP.LIST_ROLES,
          "Employees of the people directory by id, filtered, in pages", PP.PEOPLE_PARAMS,
          response="EmployeePage",
          personal=True),
    Route("GET", "/v1/people/{employee_id}", "getPerson", PP.get_person, PP.LIST_ROLES,
          "One employee with every badge period", response="Employee",
          personal=True),
    Route("PUT", "/v1/people/{employee_id}", "putPerson", PP.put_person, ("hr.people",),
          "Create or change an employee (an employee ledger entry when it changes)",
          body="EmployeeRecord", response="Employee"),
    Route("GET", "/v1/badges/{credential}", "getBadge", PP.get_badge, PP.READ_ROLES,
          "A badge's periods and who held it at ?at= (default now)", ("at",),
          response="Badge",
          personal=True),
    Route("POST", "/v1/badges/{credential}/events", "badgeEvent", PP.badge_event,
          ("hr.people",), "Assign a badge, or report it lost, blocked or returned (a badge "
          "ledger entry; 200 and no entry when already so)", body="BadgeEventRequest",
          response="Badge", status=201),
    Route("GET", "/v1/checkpoints", "listCheckpoints", U.checkpoints, ("audit.read",),
          "Signed checkpoints of the ledger", response="ItemList"),
    Route("GET", "/v1/log/checkpoint", "getLogCheckpoint", U.log_checkpoint,
          ("hr.read", "payroll.export", "audit.read"),
          "The newest v2 checkpoint (C2SP signed note with every cosignature)",
          response="CheckpointNote"),
    Route("GET", "/v1/log/consistency", "getLogConsistency", U.log_consistency,
          ("audit.read",), "RFC 9162 consistency proof between two tree sizes",
          ("from", "to"), response="ConsistencyProof"),
    Route("GET", "/v1/verification", "verification", U.verification, ("audit.read",),
          "Verify the ledger now (incrementally) and report", response="Verification"),
    Route("GET", "/v1/access-log", "accessLog", U.access_log, ("audit.read",),
          "Access ledger entries: every API request and every access change",
          ("after", "limit"), response="EntryPage"),
    Route("GET", "/v1/quarantine", "quarantine", U.quarantine, ("audit.read",),
          "Quarantined input (metadata; raw bytes stay in the store)", ("after", "limit"),
          response="EntryPage"),
    Route("GET", "/v1/device-events", "deviceEvents", U.device_events, ("audit.read",),
          "Device ledger entries (enrolled, rotated, revoked)", ("after", "limit"),
          response="EntryPage"),
    Route("GET", "/v1/alerts", "listAlerts", RV.list_alerts, ("audit.read", "audit.review"),
          "Alert ledger entries with their review state (acknowledged, resolved, by whom)",
          RV.ALERT_PARAMS, response="AlertList"),
    Route("POST", "/v1/alerts/{idx}/ack", "ackAlert", RV.ack_alert, ("audit.review",),
          "Acknowledge the alert entry idx as the calling principal (a review entry)",
          body="ReviewNote", response="Alert"),
    Route("POST", "/v1/alerts/{idx}/resolve", "resolveAlert", RV.resolve_alert,
          ("audit.review",), "Resolve an acknowledged alert (a review entry; never one "
          "about the caller's own action)", body="ReviewNote", response="Alert"),
    Route("GET", "/v1/reviews/due", "listDueReviews", RV.due_reviews,
          ("audit.read", "audit.review"), "Periods of the scheduled reviews ([reviews]) that "
          "ended and are not signed off: due, or overdue after their grace",
          response="DueReviewList"),
    Route("POST", "/v1/reviews/{kind}/sign-off", "signOffReview", RV.sign_off,
          ("audit.review",), "Sign off one period of a scheduled review (daily-alerts, "
          "access-sample) as the calling principal: a review entry (default: the oldest due)",
          body="SignOffRequest", response="SignOff", status=201),
    Route("GET", "/v1/devices", "listDevices", U.devices, ("ops.devices", "audit.read"),
          "Device registry and keys (no punch data)", response="ItemList"),
    Route("GET", "/v1/principals", "listPrincipals", A.list_principals,
          ("admin", "audit.read"), "Principals, roles and token metadata (never tokens)",
          response="ItemList"),
    Route("GET", "/v1/access-review", "accessReview", A.access_review,
          ("admin", "audit.read"), "Access review: roles, last use, unused access flagged",
          ("unused_days",), response="AccessReview"),
    Route("POST", "/v1/tokens", "createToken", A.create_token, tuple(ROLES),
          "Issue a token (shown once) for the calling principal itself, never for another",
          body="TokenRequest", response="IssuedToken", status=201),
    Route("POST", "/v1/principals", "createPrincipal", A.create_principal, ("admin",),
          "Create a principal without a credential; punch-data roles wait for a second "
          "admin's approval (pending grant)", body="PrincipalRequest", response="Object",
          status=201),
    Route("GET", "/v1/grants", "listGrants", A.list_grants, ("admin", "audit.read"),
          "Role grants that need a second admin (pending, approved, rejected)",
          response="ItemList"),
    Route("POST", "/v1/grants/{id}/approve", "approveGrant", A.approve_grant, ("admin",),
          "Approve a pending grant requested by another principal (dual control)",
          response="Object"),
    Route("POST", "/v1/grants/{id}/reject", "rejectGrant", A.reject_grant, ("admin",),
          "Reject (or, as its requester, withdraw) a pending grant", response="Object"),
    Route("POST", "/v1/tokens/{id}/revoke", "revokeToken", A.revoke_token, ("admin",),
          "Revoke a token", response="Object"),
    Route("PUT", "/v1/principals/{name}/roles", "setRoles", A.set_roles, ("admin",),
          "Replace a principal's roles (segregation of duties enforced; 202 with a pending "
          "grant when it adds a punch-data role)", body="Roles", response="Object"),
    # break-glass, access reviews, policy acknowledgements (collector.api.views_access)
    Route("GET", "/v1/breakglass", "listBreakGlass", AC.list_break_glass,
          ("audit.read", "audit.review", "admin"),
          "Sealed break-glass grants with their opening and post-use review", response="ItemList"),
    Route("POST", "/v1/breakglass/open", "openBreakGlass", AC.open_break_glass, tuple(ROLES),
          "Open a break-glass grant sealed for the caller (secret, reason, case): its roles "
          "for at most [breakglass] max_duration_s, a severity-1 alert at once",
          body="Object", response="Object", status=201),
    Route("POST", "/v1/breakglass/{id}/review", "reviewBreakGlass", AC.review_break_glass,
          ("audit.review",), "Post-use review of a break-glass opening (never by its user "
          "or opener)", body="ReviewNote", response="Object"),
    Route("GET", "/v1/access-reviews", "listAccessReviews", AC.list_access_reviews,
          ("admin", "audit.read", "audit.review"),
          "Access reviews: grants listed, keep/revoke decisions, sign-off", response="ItemList"),
    Route("POST", "/v1/access-reviews", "startAccessReview", AC.start_access_review,
          ("admin", "audit.review"), "Start an access review of every grant for a named "
          "reviewer", body="Object", response="Object", status=201),
    Route("POST", "/v1/access-reviews/{id}/decisions", "decideAccessReview",
          AC.decide_access_review, ("admin", "audit.review"),
          "Keep or revoke one grant as the review's reviewer (a revoke is applied at once; "
          "never one's own grant)", body="Object", response="Object"),
    Route("POST", "/v1/access-reviews/{id}/sign-off", "signOffAccessReview",
          AC.sign_off_access_review, ("admin", "audit.review"),
          "Sign off an access review whose grants are all decided", body="ReviewNote",
          response="Object"),
    Route("GET", "/v1/policy-docs", "listPolicyDocs", AC.list_policy_docs, tuple(ROLES),
          "Current policy documents (name, version, SHA-256)", response="ItemList"),
    Route("GET", "/v1/policy-docs/due", "policyDocsDue", AC.policy_docs_due,
          ("admin", "audit.read"), "Principals with punch-data roles that must (re-)"
          "acknowledge a required policy document", response="ItemList"),
    Route("POST", "/v1/acknowledgements", "acknowledge", AC.acknowledge, tuple(ROLES),
          "Acknowledge the current version of a policy document as the caller",
          body="Object", response="Object", status=201),
)

BY_NAME: dict[str, Route] = {r.name: r for r in ROUTES}


def add_routes(app: web.Application) -> None:
    for r in ROUTES:
        app.router.add_route(r.method, r.path, r.handler, name=r.name)


def route_of(request: web.Request) -> Route | None:
    """The Route a request matched, or None (no route: 404/405)."""
    if request.match_info.http_exception is not None:
        return None
    name = request.match_info.route.name
    return BY_NAME.get(name) if name is not None else None
