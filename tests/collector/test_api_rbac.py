"""Control D8 (least privilege): every role against every endpoint, each request found
afterwards as an ``access`` ledger entry with principal, role, route, status and outcome."""

from __future__ import annotations

import itertools
from typing import Any

from tests.collector.api_kit import ROLE_PRINCIPALS, Api, access_bodies, requests_of

_n = itertools.count()

# endpoint -> roles that may call it (written out here, independent of collector.api.routes)
MATRIX: dict[tuple[str, str], frozenset[str]] = {
    ("GET", "/v1/punches"): frozenset({"hr.read"}),
    ("GET", "/v1/punches/clock-00/1"): frozenset({"hr.read"}),
    ("GET", "/v1/punches/clock-00/1/proof"): frozenset({"hr.read", "audit.read"}),
    ("GET", "/v1/exports/payroll"): frozenset({"payroll.export"}),
    ("GET", "/v1/corrections"): frozenset({"hr.correct", "hr.approve", "audit.read"}),
    ("POST", "/v1/corrections"): frozenset({"hr.correct"}),
    ("GET", "/v1/corrections/cor-0000"): frozenset({"hr.correct", "hr.approve", "audit.read"}),
    ("POST", "/v1/corrections/cor-0000/approve"): frozenset({"hr.approve"}),
    ("POST", "/v1/corrections/cor-0000/reject"): frozenset({"hr.approve"}),
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
    ("GET", "/v1/principals"): frozenset({"admin", "audit.read"}),
    ("GET", "/v1/access-review"): frozenset({"admin", "audit.read"}),
    ("POST", "/v1/tokens"): frozenset({"hr.read", "payroll.export", "hr.correct", "hr.approve",
                                       "audit.read", "ops.devices", "admin"}),
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
        return {"device": "clock-00", "seq": 1 + next(_n) % 5, "field": "ts",
                "after": 1_764_140_400_000_000 + next(_n), "reason": "clock-error"}
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
