"""Control D8 (least privilege): every role against every endpoint, each request found
afterwards as an ``access`` ledger entry with principal, role, route, status and outcome;
then the person roles (employee.self, supervisor) and site-scoped principals of
tests/collector/scopes_kit.py against the same endpoints: 2xx, 403, or 404 where the row
is outside their scope."""

from __future__ import annotations

import itertools
from pathlib import Path
from typing import Any

from collector.ledger.sqlite import SQLiteStore
from tests.collector.api_kit import ROLE_PRINCIPALS, Api, access_bodies, requests_of
from tests.collector.scopes_kit import SCOPED, start_scoped, visible

_n = itertools.count()

# endpoint -> roles that may call it (written out here, independent of collector.api.routes)
PERSON = frozenset({"employee.self", "supervisor"})
MATRIX: dict[tuple[str, str], frozenset[str]] = {
    ("GET", "/v1/punches"): frozenset({"hr.read", *PERSON}),
    ("GET", "/v1/punches/clock-00/1"): frozenset({"hr.read", *PERSON}),
    ("GET", "/v1/punches/clock-00/1/proof"): frozenset({"hr.read", "audit.read"}),
    ("GET", "/v1/exports/payroll"): frozenset({"payroll.export"}),
    ("GET", "/v1/corrections"): frozenset({"hr.correct", "hr.approve", "audit.read",
                                           *PERSON}),
    ("POST", "/v1/corrections"): frozenset({"hr.correct", "employee.self"}),
    ("GET", "/v1/corrections/cor-0000"): frozenset({"hr.correct", "hr.approve", "audit.read",
                                                    *PERSON}),
    ("POST", "/v1/corrections/cor-0000/approve"): frozenset({"hr.approve", "supervisor"}),
    ("POST", "/v1/corrections/cor-0000/reject"): frozenset({"hr.approve", "supervisor"}),
    ("GET", "/v1/people"): frozenset({"hr.read", "payroll.export", "audit.read", "hr.people",
                                      "supervisor"}),
    ("GET", "/v1/people/ANN"): frozenset({"hr.read", "payroll.export", "audit.read",
                                          "hr.people", "supervisor"}),
    ("PUT", "/v1/people/ANN"): frozenset({"hr.people"}),
    ("GET", "/v1/badges/em4100:0000000000"): frozenset({"hr.read", "payroll.export",
                                                        "audit.read", "hr.people"}),
    ("POST", "/v1/badges/em4100:0000000000/events"): frozenset({"hr.people"}),
    ("GET", "/v1/checkpoints"): frozenset({"audit.read"}),
    ("GET", "/v1/log/checkpoint"): frozenset({"hr.read", "payroll.export", "audit.read"}),
    ("GET", "/v1/log/consistency"): frozenset({"audit.read"}),
    ("GET", "/v1/verification"): frozenset({"audit.read"}),
    ("GET", "/v1/access-log"): frozenset({"audit.read"}),
    ("GET", "/v1/quarantine"): frozenset({"audit.read"}),
    ("GET", "/v1/device-events"): frozenset({"audit.read"}),
    ("GET", "/v1/devices"): frozenset({"ops.devices", "audit.read"}),
    ("GET", "/v1/alerts"): frozenset({"audit.read", "audit.review"}),
    ("POST", "/v1/alerts/0/ack"): frozenset({"audit.review"}),
    ("POST", "/v1/alerts/0/resolve"): frozenset({"audit.review"}),
    ("GET", "/v1/reviews/due"): frozenset({"audit.read", "audit.review"}),
    ("POST", "/v1/reviews/daily-alerts/sign-off"): frozenset({"audit.review"}),
    ("GET", "/v1/principals"): frozenset({"admin", "audit.read"}),
    ("GET", "/v1/access-review"): frozenset({"admin", "audit.read"}),
    ("POST", "/v1/tokens"): frozenset({"hr.read", "payroll.export", "hr.correct", "hr.approve",
                                       "audit.read", "ops.devices", "admin", "hr.people",
                                       "audit.review", *PERSON}),
    ("POST", "/v1/principals"): frozenset({"admin"}),
    ("GET", "/v1/grants"): frozenset({"admin", "audit.read"}),
    ("POST", "/v1/grants/grt-000000000000/approve"): frozenset({"admin"}),
    ("POST", "/v1/grants/grt-000000000000/reject"): frozenset({"admin"}),
    ("POST", "/v1/tokens/tok-000000000000/revoke"): frozenset({"admin"}),
    ("PUT", "/v1/principals/ops/roles"): frozenset({"admin"}),
}
PUBLIC = (("GET", "/healthz"), ("GET", "/v1/openapi.json"))


def body_for(method: str, path: str, who: str | None = None) -> Any:
    if path == "/v1/corrections" and method == "POST":
        person = who is not None and "employee.self" in SCOPED.get(who, ((),))[0]
        return {"device": "clock-00", "seq": 1 + next(_n) % 5, "field": "ts",
                "after": 1_764_140_400_000_000 + next(_n),
                "reason": "employee-dispute" if person else "clock-error"}
    if path == "/v1/tokens":           # a token for the caller itself
        return {"expires_days": 7} if who is None else {"principal": who, "expires_days": 7}
    if path == "/v1/principals":
        return {"principal": f"svc-{next(_n)}", "roles": ["ops.devices"]}
    if path.endswith("/roles"):
        return {"roles": ["ops.devices"]}
    if method == "POST":
        return {}
    return None


async def test_d8_role_endpoint_matrix_every_request_recorded(api: Api) -> None:
    sent: list[tuple[str, str, str, int]] = []
    for (method, path), allowed in MATRIX.items():
        for principal, roles in [*ROLE_PRINCIPALS.items(), ("anonymous", ())]:
            who = None if principal == "anonymous" else principal
            resp = await api.call(method, path, who, json=body_for(method, path, who))
            text = await resp.text()
            if who is None:
                expect_ok = False
                assert resp.status == 401, (principal, method, path, text)
            elif allowed & set(roles):
                expect_ok = True
                assert resp.status not in (401, 403), (principal, method, path, text)
                assert resp.status < 500, (principal, method, path, text)
            else:
                expect_ok = False
                assert resp.status == 403, (principal, method, path, text)
                assert resp.headers["Content-Type"].startswith("application/problem+json")
            del expect_ok
            sent.append((principal, method, path, resp.status))
    for method, path in PUBLIC:
        resp = await api.call(method, path)
        assert resp.status == 200
        sent.append(("anonymous", method, path, resp.status))
    api.clock.advance(60)                   # the minute is over: its tallies are due
    await api.flush()
    recorded = [(b["principal"], b["method"], b["path"], b["status"])
                for b in requests_of(api.store)]
    assert sorted(recorded) == sorted(s for s in sent if s[0] != "anonymous")
    # without a principal: tallied per source and minute (D12); /healthz never recorded
    anonymous = [s for s in sent if s[0] == "anonymous" and s[2] != "/healthz"]
    tallies = [b for b in access_bodies(api.store) if b["type"] == "unauthenticated"]
    assert sum(t["count"] for t in tallies) == len(anonymous)
    assert sum(t["outcomes"].get("unauthenticated", 0) for t in tallies) == len(anonymous) - 1
    by_key = {(b["principal"], b["method"], b["path"]): b for b in requests_of(api.store)}
    denied = by_key[("admin", "GET", "/v1/punches")]
    assert denied["outcome"] == "denied"
    assert "admins manage access" in denied["detail"]
    allowed = by_key[("hr-reader", "GET", "/v1/punches")]
    assert (allowed["role"], allowed["route"], allowed["count"]) == ("hr.read", "/v1/punches",
                                                                     10)


async def test_d8_admin_cannot_read_correct_or_approve(api: Api) -> None:
    for method, path in (("GET", "/v1/punches"), ("GET", "/v1/exports/payroll"),
                         ("POST", "/v1/corrections"),
                         ("POST", "/v1/corrections/cor-1/approve")):
        resp = await api.call(method, path, "admin", json=body_for(method, path))
        problem = await resp.json(content_type="application/problem+json")
        assert resp.status == 403
        assert problem["type"] == "urn:timeclock:problem:forbidden"
        assert problem["detail"].startswith("admin (admin) may not")


# Where a scoped principal's allowed call must be a 404 (the row is outside its scope), by
# hand: clock-00 is at site hq, its seq 1 is ANN's punch (tests/collector/scopes_kit.py).
SCOPED_404: dict[tuple[str, str], frozenset[str]] = {
    ("GET", "/v1/punches/clock-00/1"): frozenset(p for p in SCOPED
                                                 if ("clock-00", 1) not in visible(p)
                                                 and p not in ("approve-ann", "approve-bob",
                                                               "pay-hq", "people-hq",
                                                               "audit-plant")),
    ("GET", "/v1/punches/clock-00/1/proof"): frozenset({"audit-plant", "hr-plant"}),
    ("GET", "/v1/people/ANN"): frozenset({"audit-plant", "hr-plant"}),
    ("GET", "/v1/badges/em4100:0000000000"): frozenset({"audit-plant", "hr-plant"}),
}
EXACT = {("GET", "/v1/punches/clock-00/1"), ("GET", "/v1/people/ANN"),
         ("GET", "/v1/badges/em4100:0000000000")}     # in scope: 200, nothing else


async def test_d8_person_and_site_scoped_roles_endpoint_matrix(sqlite_store: SQLiteStore,
                                                               tmp_path: Path) -> None:
    api = await start_scoped(sqlite_store, tmp_path)
    try:
        for (method, path), allowed in MATRIX.items():
            for principal, (roles, _, _) in SCOPED.items():
                resp = await api.call(method, path, principal,
                                      json=body_for(method, path, principal))
                text = await resp.text()
                where = (principal, method, path, text)
                if not allowed & set(roles):
                    assert resp.status == 403, where
                elif principal in SCOPED_404.get((method, path), ()):
                    assert resp.status == 404, where
                elif (method, path) in EXACT:
                    assert resp.status == 200, where
                else:
                    assert resp.status not in (401, 403), where
                    assert resp.status < 500, where
        # the hand-written 404 table says what it should: hr-plant is outside hq
        assert "hr-plant" in SCOPED_404[("GET", "/v1/punches/clock-00/1")]
        assert "ann" not in SCOPED_404[("GET", "/v1/punches/clock-00/1")]
        await api.flush()
        got = {(b["principal"], b["path"]): b for b in requests_of(api.store)}
        assert got[("ann", "/v1/punches")]["role"] == "employee.self"
        assert got[("boss", "/v1/corrections/cor-0000/approve")]["role"] == "supervisor"
    finally:
        await api.client.close()
