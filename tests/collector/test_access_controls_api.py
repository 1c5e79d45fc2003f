"""Break-glass, access reviews and policy acknowledgements as the running collector serves
them (issue 13 items 7-9; CONTROLS.md D8, D11, D13): through the real API application (an
injected clock) and the service's writer tick, with their configuration read strictly —
a break-glass's roles refused at request time once it expired, its overdue review alerted
once; an access-review revocation stops the token at once and a missed review alerts once;
a punch-data request refused until the current policy version is acknowledged."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest

from collector import ConfigError
from collector.access import access_reviews as AR
from collector.access import policy_docs as PD
from collector.access.breakglass import (
    OPEN_ALERT,
    OVERDUE_ALERT,
    BreakGlass,
    BreakGlassSettings,
)
from collector.access.gates import GateSettings
from collector.access.principals import get_principal
from collector.api.keys import ApiSettings
from collector.ledger import checkpoint_tables
from collector.ledger.sqlbase import SQLStore
from collector.ledger.sqlite import SQLiteStore
from collector.ledger.tables import ensure_schema
from collector.service.config import load_config
from collector.service.runner import CollectorService
from tests.collector.access_kit import bodies
from tests.collector.api_kit import Api, issue_tokens, requests_of, seed, start_api
from tests.collector.ledger_kit import T0
from tests.collector.test_reviews import CONFIG

ROOT = Path(__file__).resolve().parents[2]
POLICY = ROOT / "docs" / "policies" / "access-control.md"
S = 1_000_000
DAY = 86_400 * S
PEOPLE = {"carol": ("audit.review",), "dave": ("audit.review",), "alice": ("hr.read",),
          "mallory": ("hr.read", "hr.correct")}


def _principals(store: SQLStore) -> None:
    ensure_schema(store)
    issue_tokens(store, T0, {"oncall": ("ops.devices",), "bob": ("audit.review",),
                             "carol": ("audit.read",)})


@pytest.fixture
async def bg_api(sqlite_store: SQLiteStore) -> AsyncIterator[Api]:
    ensure_schema(sqlite_store)
    clocks = seed(sqlite_store)
    mine = issue_tokens(sqlite_store, T0 + 10**9, {"reviewer": ("audit.review",)})
    settings = ApiSettings(gates=GateSettings(
        breakglass=BreakGlassSettings(max_duration_s=600)))
    a = await start_api(sqlite_store, settings=settings, clocks=clocks)
    a.tokens.update(mine)
    try:
        yield a
    finally:
        await a.client.close()


async def test_d11_breakglass_expiry_is_refused_at_request_time(bg_api: Api) -> None:
    api = bg_api
    # "ops" holds ops.devices; its sealed break-glass adds audit.read for at most 600 s
    issued = BreakGlass(api.store, BreakGlassSettings(max_duration_s=600)).seal(
        "ops", ["audit.read"], by="cli:test", now_us=api.clock.now)
    resp = await api.call("GET", "/v1/quarantine", "ops")
    assert resp.status == 403                                     # sealed: inactive
    for body in ({"id": issued.id, "secret": issued.secret, "reason": "r"},   # no case
                 {"id": issued.id, "secret": issued.secret, "reason": "", "case": "INC-9"},
                 {"id": "bg-zz", "secret": "s", "reason": "r", "case": "INC-9"}):
        resp = await api.call("POST", "/v1/breakglass/open", "ops", json=body)
        assert resp.status == 400, body
    resp = await api.call("POST", "/v1/breakglass/open", "auditor", json={
        "id": issued.id, "secret": issued.secret, "reason": "r", "case": "INC-9"})
    assert resp.status == 403                                     # sealed for ops only
    resp = await api.call("POST", "/v1/breakglass/open", "ops", json={
        "id": issued.id, "secret": issued.secret, "reason": "auditor away, CRL check",
        "case": "INC-9"})
    assert resp.status == 201, await resp.text()
    opened = (await resp.json())["opened"]
    assert opened["until"] - opened["from"] == 600 * S
    assert [b["alert"] for b in bodies(api.store, "alert")] == [OPEN_ALERT]
    resp = await api.call("GET", "/v1/quarantine", "ops")
    assert resp.status == 200                                     # open: its roles apply
    api.clock.advance(601)
    resp = await api.call("GET", "/v1/quarantine", "ops")
    assert resp.status == 403
    detail = (await resp.json())["detail"]
    assert f"break-glass {issued.id} of ops expired" in detail
    resp = await api.call("GET", "/v1/devices", "ops")            # its own role still works
    assert resp.status == 200
    resp = await api.call("GET", "/v1/breakglass", "auditor")
    [row] = (await resp.json())["items"]
    assert row["status"] == "overdue-review"
    resp = await api.call("POST", f"/v1/breakglass/{issued.id}/review", "reviewer",
                          json={"note": "checked the window's access entries"})
    assert resp.status == 200
    assert (await resp.json())["status"] == "reviewed"
    await api.flush()
    used = [b for b in requests_of(api.store) if b["path"] == "/v1/quarantine"
            and b["status"] == 200]
    assert [(b["principal"], b["role"]) for b in used] == [("ops", "audit.read")]


def _tick_config(tmp_path: Path, extra: str) -> Path:
    path = tmp_path / "collector.toml"
    path.write_text(CONFIG + extra)
    return path


def test_d11_breakglass_config_is_read_strictly(tmp_path: Path) -> None:
    assert load_config(_tick_config(tmp_path, "")).breakglass == BreakGlassSettings()
    with pytest.raises(ConfigError, match="breakglass.max_duration_s") as e:
        load_config(_tick_config(tmp_path, "\n[breakglass]\nmax_duration_s = 20000\n"
                                           "bogus = 1\n"))
    assert "breakglass.bogus" in str(e.value)


def test_d11_breakglass_overdue_review_alerts_exactly_once(
        sqlite_store: SQLStore, tmp_path: Path) -> None:
    _principals(sqlite_store)
    checkpoint_tables.ensure_schema(sqlite_store)
    bg = BreakGlass(sqlite_store, BreakGlassSettings(max_duration_s=600))
    issued = bg.seal("oncall", ["audit.read"], by="cli:test", now_us=T0)
    oncall = get_principal(sqlite_store, "oncall")
    assert oncall is not None
    bg.open(issued.id, issued.secret, principal=oncall, by="oncall", reason="r",
            case="INC-1", now_us=T0 + S)
    cfg = load_config(_tick_config(tmp_path, "\n[breakglass]\nreview_grace_s = 3600\n"))
    due = T0 + S + 600 * S + 3600 * S

    def overdue() -> list[dict[str, Any]]:
        return [b for b in bodies(sqlite_store, "alert") if b["alert"] == OVERDUE_ALERT]

    now = [due - 120 * S]
    for _ in range(2):                                            # before the grace ends
        CollectorService(cfg, store=sqlite_store, clock=lambda: now[0])._tick(now[0], 0)
        now[0] += 61 * S
    assert overdue() == []
    now[0] = due
    svc = CollectorService(cfg, store=sqlite_store, clock=lambda: now[0])
    for _ in range(5):
        svc._tick(now[0], 0)                                      # the writer's tick
        now[0] += 61 * S
    restarted = CollectorService(cfg, store=sqlite_store, clock=lambda: now[0])
    restarted._tick(now[0], 0)                                    # found in the ledger
    [alert] = overdue()
    assert (alert["break_glass"], alert["severity"], alert["principal"]) == (
        issued.id, 2, "oncall")


def test_d13_access_review_overdue_alerts_once(sqlite_store: SQLStore, tmp_path: Path
                                               ) -> None:
    ensure_schema(sqlite_store)
    checkpoint_tables.ensure_schema(sqlite_store)
    issue_tokens(sqlite_store, T0, PEOPLE)                        # the ledger starts at T0
    path = tmp_path / "collector.toml"
    path.write_text(CONFIG + "\n[reviews]\naccess_review_days = 30\n"
                    "access_review_grace_s = 86400\n")
    cfg = load_config(path)
    assert cfg.reviews is not None
    assert (cfg.reviews.access_review_days, cfg.reviews.access_review_grace_s) == (30, 86_400)

    def overdue() -> list[dict[str, Any]]:
        return [b for b in bodies(sqlite_store, "alert") if b["alert"] == AR.OVERDUE_ALERT]

    now = [T0 + 31 * DAY - 60 * S]                                # due, not overdue yet
    CollectorService(cfg, store=sqlite_store, clock=lambda: now[0])._tick(now[0], 0)
    assert overdue() == []
    now[0] = T0 + 31 * DAY + S
    svc = CollectorService(cfg, store=sqlite_store, clock=lambda: now[0])
    for _ in range(5):
        svc._tick(now[0], 0)
        now[0] += 61 * S
    CollectorService(cfg, store=sqlite_store, clock=lambda: now[0])._tick(now[0], 0)
    assert [(b["severity"], b["due_at"]) for b in overdue()] == [(2, T0 + 30 * DAY)]
    # a review signed off now moves the next due date 30 days on: nothing more to alert
    rid = AR.start(sqlite_store, reviewer="carol", by="cli:test", now_us=now[0]).started.review
    for who in ("alice", "dave", "mallory"):
        AR.decide(sqlite_store, rid, who, "keep", by="carol", now_us=now[0])
    AR.decide(sqlite_store, rid, "carol", "keep", by="dave", now_us=now[0])
    AR.sign_off(sqlite_store, rid, by="carol", note="all kept", now_us=now[0])
    now[0] += 10 * DAY
    svc._tick(now[0], 0)
    assert len(overdue()) == 1


@pytest.fixture
async def review_api(sqlite_store: SQLiteStore) -> AsyncIterator[Api]:
    ensure_schema(sqlite_store)
    mine = issue_tokens(sqlite_store, T0 + 10**9, {"reviewer": ("audit.review",)})
    a = await start_api(sqlite_store)
    a.tokens.update(mine)
    try:
        yield a
    finally:
        await a.client.close()


async def test_d8_access_review_api_revocation_stops_the_token(review_api: Api) -> None:
    api = review_api
    resp = await api.call("GET", "/v1/exports/payroll", "payroll")
    assert resp.status == 200
    await resp.read()
    resp = await api.call("POST", "/v1/access-reviews", "hr-reader", json={"reviewer": "x"})
    assert resp.status == 403
    resp = await api.call("POST", "/v1/access-reviews", "admin", json={"reviewer": "reviewer"})
    assert resp.status == 201, await resp.text()
    st = await resp.json()
    rid = st["review"]
    assert "payroll" in [g["principal"] for g in st["grants"]]
    resp = await api.call("POST", f"/v1/access-reviews/{rid}/decisions", "reviewer",
                          json={"principal": "reviewer", "decision": "keep"})
    assert resp.status == 403
    assert (await resp.json())["type"].endswith("segregation-of-duties")
    resp = await api.call("POST", f"/v1/access-reviews/{rid}/decisions", "reviewer",
                          json={"principal": "payroll", "decision": "maybe"})
    assert resp.status == 400
    resp = await api.call("POST", f"/v1/access-reviews/{rid}/decisions", "reviewer",
                          json={"principal": "payroll", "decision": "revoke",
                                "note": "integration retired"})
    assert resp.status == 200, await resp.text()
    resp = await api.call("GET", "/v1/exports/payroll", "payroll")
    assert resp.status == 403                                     # carried out at once
    resp = await api.call("GET", "/v1/access-reviews", "auditor")
    [got] = (await resp.json())["items"]
    assert {g["principal"]: g["decision"]["decision"] for g in got["grants"]
            if g["decision"] is not None} == {"payroll": "revoke"}


def test_d8_acknowledgement_policies_config_is_read_strictly(tmp_path: Path) -> None:
    path = tmp_path / "collector.toml"
    path.write_text(CONFIG)
    assert load_config(path).policies == PD.PolicySettings()      # on; every published doc
    path.write_text(CONFIG + "\n[policies]\nrequired = [\"Access Control\"]\n"
                             "max_ack_age_days = 0\nbogus = true\n")
    with pytest.raises(ConfigError, match=r"policies\.required\[0\]") as e:
        load_config(path)
    assert "policies.max_ack_age_days" in str(e.value)
    assert "policies.bogus" in str(e.value)
    path.write_text(CONFIG + "\n[policies]\nenforce = false\nrequired = []\n")
    assert load_config(path).policies == PD.PolicySettings(enforce=False, required=())


@pytest.fixture
async def ack_api(sqlite_store: SQLiteStore) -> AsyncIterator[Api]:
    ensure_schema(sqlite_store)
    clocks = seed(sqlite_store)
    settings = ApiSettings(gates=GateSettings(policies=PD.PolicySettings(max_ack_age_days=7)))
    a = await start_api(sqlite_store, settings=settings, clocks=clocks)
    try:
        yield a
    finally:
        await a.client.close()


async def test_d8_acknowledgement_stale_or_missing_refused_with_the_document_name(
        ack_api: Api, tmp_path: Path) -> None:
    api = ack_api
    resp = await api.call("GET", "/v1/punches", "hr-reader")
    assert resp.status == 200                                     # nothing published yet
    v1 = PD.publish(api.store, POLICY, by="cli:test", now_us=api.clock.now)
    resp = await api.call("GET", "/v1/punches", "hr-reader")
    assert resp.status == 403
    detail = (await resp.json())["detail"]
    assert f"must acknowledge policy document access-control v1 (sha256 {v1.doc.sha256})" \
        in detail
    assert "never acknowledged" in detail
    resp = await api.call("GET", "/v1/verification", "auditor")   # not a punch-data role
    assert resp.status == 200
    resp = await api.call("GET", "/v1/policy-docs", "hr-reader")  # never blocked
    assert [d["name"] for d in (await resp.json())["items"]] == ["access-control"]
    for body in ({}, {"name": "Bad Name"}, {"name": "access-control", "sha256": "00"}):
        resp = await api.call("POST", "/v1/acknowledgements", "hr-reader", json=body)
        assert resp.status == 400, body
    resp = await api.call("POST", "/v1/acknowledgements", "hr-reader",
                          json={"name": "access-control", "sha256": v1.doc.sha256})
    assert resp.status == 201, await resp.text()
    assert (await resp.json())["version"] == 1
    resp = await api.call("GET", "/v1/punches", "hr-reader")
    assert resp.status == 200
    edited = tmp_path / "access-control.md"
    edited.write_bytes(POLICY.read_bytes() + b"\nv2\n")
    PD.publish(api.store, edited, by="cli:test", now_us=api.clock.now)
    resp = await api.call("GET", "/v1/punches", "hr-reader")      # a new version: again
    assert resp.status == 403
    assert "acknowledged access-control v1, not the current v2" in (await resp.json())["detail"]
    resp = await api.call("POST", "/v1/acknowledgements", "hr-reader",
                          json={"name": "access-control"})
    assert resp.status == 201
    resp = await api.call("GET", "/v1/punches", "hr-reader")
    assert resp.status == 200
    api.clock.advance(8 * 86_400)                                 # older than 7 days
    resp = await api.call("GET", "/v1/punches", "hr-reader")
    assert resp.status == 403
    assert "older than 7 days" in (await resp.json())["detail"]
    resp = await api.call("GET", "/v1/policy-docs/due", "auditor")
    due = (await resp.json())["items"]
    assert {(d["principal"], d["document"]) for d in due} >= {
        ("hr-reader", "access-control"), ("payroll", "access-control")}
