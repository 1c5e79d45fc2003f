"""Control D8 (least privilege, per person): employee.self, supervisor and site-scoped roles
through the real API over real SQLite and PostgreSQL ledgers (tests/collector/scopes_kit.py
holds the directory and the principals), the three-person rule of corrections, disputes, and
the dual control of linking a principal to a person or to more sites — each also judged by
the verifiers' replay of the chain (wire.grants.AccessHistory)."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest

from collector.cli.main import main as cli_main
from collector.ledger import access_tables
from collector.ledger.postgres import PostgresStore
from collector.ledger.sqlite import SQLiteStore
from tests.collector.api_kit import Api, access_bodies
from tests.collector.ledger_kit import T0
from tests.collector.scopes_kit import SCOPED, SITE_OF, chain_breaches, start_scoped, visible
from tests.fixtures.postgres import PgDatabase
from wire.grants import AccessHistory, PrincipalScope, scope_of, widens_scope

NOT_FOUND = "urn:timeclock:problem:not-found"
SOD = "urn:timeclock:problem:segregation-of-duties"
EVERY = sorted((d, s) for d in SITE_OF for s in range(1, 6))


@pytest.fixture
async def scoped(sqlite_store: SQLiteStore, tmp_path: Path) -> AsyncIterator[Api]:
    api = await start_scoped(sqlite_store, tmp_path)
    try:
        yield api
    finally:
        await api.client.close()


async def problem(resp: Any) -> dict[str, Any]:
    doc: dict[str, Any] = await resp.json(content_type="application/problem+json")
    return doc


async def propose(api: Api, who: str, device: str, seq: int, *,
                  reason: str = "clock-error") -> Any:
    return await api.call("POST", "/v1/corrections", who, json={
        "device": device, "seq": seq, "field": "ts", "after": T0 + 7_000_000 + seq,
        "reason": reason})


async def listed(api: Api, who: str, path: str = "/v1/punches", limit: int = 2
                 ) -> list[dict[str, Any]]:
    """Every item of a paged list, following ``next`` (pages of ``limit``)."""
    items: list[dict[str, Any]] = []
    cursor = None
    for _ in range(50):
        sep = "&" if "?" in path else "?"
        q = f"{path}{sep}limit={limit}" + ("" if cursor is None else f"&cursor={cursor}")
        resp = await api.call("GET", q, who)
        assert resp.status == 200, await resp.text()
        page = await resp.json()
        items += page["items"]
        cursor = page["next"]
        if cursor is None:
            return items
        assert len(page["items"]) == limit     # a filtered page is full unless it is the last
    raise AssertionError("more than 50 pages")


# -- reads ----------------------------------------------------------------------------------

@pytest.mark.parametrize("who", ["ann", "boss", "hr-hq", "hr-plant"])
async def test_d8_scoped_principal_reads_only_its_punches(scoped: Api, who: str) -> None:
    want = visible(who)
    assert 0 < len(want) < len(EVERY)
    got = {(r["device"], r["seq"]) for r in await listed(scoped, who)}
    assert got == want
    resp = await scoped.call("GET", "/v1/punches?format=ndjson", who)
    assert resp.status == 200
    streamed = {(r["device"], r["seq"]) for r in map(json.loads, (await resp.text()).splitlines())}
    assert streamed == want
    missing = await scoped.call("GET", "/v1/punches/clock-00/99", who)
    assert missing.status == 404
    for device, seq in EVERY:
        resp = await scoped.call("GET", f"/v1/punches/{device}/{seq}", who)
        if (device, seq) in want:
            assert resp.status == 200, (device, seq)
            assert (await resp.json())["punch"]["seq"] == seq
        else:                       # the same answer as a punch that does not exist
            assert resp.status == 404, (device, seq)
            doc = await problem(resp)
            assert doc["type"] == NOT_FOUND
            assert doc["detail"] == f"no recorded punch {device}#{seq}"
    await scoped.flush()
    rec = [b for b in access_bodies(scoped.store) if b.get("type") == "request"
           and b["principal"] == who and b["path"] == "/v1/punches" and b["count"]]
    assert {b["count"] for b in rec} <= {2, 1, len(want)}
    assert all(b["extra"]["scope"]["sites"] == (None if SCOPED[who][2] is None
                                                else sorted(SCOPED[who][2])) for b in rec)


async def test_d8_site_scoped_proof_and_people_reads(scoped: Api) -> None:
    ok = await scoped.call("GET", "/v1/punches/clock-01/2/proof", "audit-plant")
    out = await scoped.call("GET", "/v1/punches/clock-00/2/proof", "audit-plant")
    assert out.status == 404
    assert ok.status in (200, 404)
    if ok.status == 404:            # no v2 checkpoint yet: a different reason than scope
        assert (await problem(ok))["detail"] != "no recorded punch clock-01#2"
    assert (await problem(out))["detail"] == "no recorded punch clock-00#2"
    ids = [e["employee_id"] for e in await listed(scoped, "hr-hq", "/v1/people", limit=1)]
    assert ids == ["ANN", "BOSS", "HAL"]
    ids = [e["employee_id"] for e in await listed(scoped, "boss", "/v1/people")]
    assert ids == ["ANN", "BOB"]           # the team, BOB through ANN; not BOSS itself
    for who, eid, status in (("hr-hq", "BOB", 404), ("hr-hq", "ANN", 200),
                             ("boss", "CAT", 404), ("boss", "BOB", 200)):
        resp = await scoped.call("GET", f"/v1/people/{eid}", who)
        assert resp.status == status, (who, eid)
    gone = await scoped.call("GET", "/v1/people/NOBODY", "hr-hq")
    hidden = await scoped.call("GET", "/v1/people/BOB", "hr-hq")
    assert (await problem(gone))["type"] == (await problem(hidden))["type"] == NOT_FOUND
    resp = await scoped.call("GET", "/v1/badges/em4100:0000000001", "hr-hq")   # BOB's
    assert resp.status == 404
    resp = await scoped.call("GET", "/v1/badges/em4100:0000000000", "hr-hq")   # ANN's
    assert resp.status == 200
    assert (await resp.json())["employee_id"] == "ANN"


async def test_d8_site_scoped_hr_people_keeps_only_its_sites(scoped: Api) -> None:
    rec = {"name": "X", "department": "Operations", "timezone": "Europe/London"}
    resp = await scoped.call("PUT", "/v1/people/HAL", "people-hq", json={**rec, "site": "hq"})
    assert resp.status == 200, await resp.text()
    for eid, site in (("BOB", "plant"), ("BOB", "hq"), ("NEW1", "plant"), ("HAL", "plant")):
        resp = await scoped.call("PUT", f"/v1/people/{eid}", "people-hq",
                                 json={**rec, "site": site})
        assert resp.status == 403, (eid, site)
        assert "sites hq only" in (await problem(resp))["detail"]
    resp = await scoped.call("POST", "/v1/badges/em4100:0000000001/events", "people-hq",
                             json={"event": "lost"})                  # BOB's badge
    assert resp.status == 403
    resp = await scoped.call("GET", "/v1/people/BOB", "hr-reader")
    assert (await resp.json())["site"] == "plant"                    # unchanged


async def test_d8_site_scoped_payroll_export_counts_only_its_rows(scoped: Api) -> None:
    resp = await scoped.call("GET", "/v1/exports/payroll?format=ndjson", "pay-hq")
    assert resp.status == 200, await resp.text()
    lines = [json.loads(x) for x in (await resp.text()).splitlines()]
    header, rows, trailer = lines[0]["header"], lines[1:-1], lines[-1]["trailer"]
    assert {(r["device"], r["seq"]) for r in rows} == visible("pay-hq")
    assert header["scope"] == {"sites": ["hq"], "persons": "all"}
    assert trailer["rows"] == len(rows) == 5
    assert trailer["seq_ranges"] == {"clock-00": [1, 5]}
    resp = await scoped.call("GET", "/v1/exports/payroll?format=ndjson", "payroll")
    assert len((await resp.text()).splitlines()) == 12             # unscoped: all 10
    resp = await scoped.call("GET", "/v1/exports/payroll?format=ndjson&proofs=1", "pay-hq")
    assert resp.status == 403
    assert "proofs=1" in (await problem(resp))["detail"]


# -- corrections ----------------------------------------------------------------------------

async def test_d8_corrections_are_scoped_like_their_punches(scoped: Api) -> None:
    hq = await (await propose(scoped, "editor", "clock-00", 3)).json()
    plant = await (await propose(scoped, "hr-plant", "clock-01", 3)).json()
    resp = await propose(scoped, "hr-plant", "clock-00", 3)     # out of its sites: 404
    assert resp.status == 404
    assert (await problem(resp))["detail"] == "no recorded punch clock-00#3"
    ids = {c["id"] for c in await listed(scoped, "hr-plant", "/v1/corrections", limit=1)}
    assert ids == {plant["id"]}
    ids = {c["id"] for c in await listed(scoped, "auditor", "/v1/corrections", limit=1)}
    assert ids == {hq["id"], plant["id"]}
    resp = await scoped.call("GET", f"/v1/corrections/{hq['id']}", "hr-plant")
    assert resp.status == 404
    assert (await problem(resp))["detail"] == f"no correction {hq['id']!r}"
    resp = await scoped.call("POST", f"/v1/corrections/{plant['id']}/approve", "hr-hq")
    assert resp.status == 404                                    # hr-hq: not its site
    resp = await scoped.call("POST", f"/v1/corrections/{hq['id']}/approve", "hr-hq")
    assert resp.status == 200, await resp.text()


async def test_d8_three_person_rule_refuses_and_records_nothing_else(scoped: Api) -> None:
    before = len(list(scoped.store.entries()))
    # Ann (as HR editor) may not propose a correction of her own punch
    resp = await propose(scoped, "hr-ann", "clock-00", 1)
    assert resp.status == 403
    doc = await problem(resp)
    assert doc["type"] == SOD
    assert doc["detail"].startswith("three-person rule: ANN may not propose")
    # Bob may not approve a correction of his punch
    bob = await (await propose(scoped, "editor", "clock-00", 2)).json()
    resp = await scoped.call("POST", f"/v1/corrections/{bob['id']}/approve", "approve-bob")
    assert resp.status == 403
    assert "of their own punch" in (await problem(resp))["detail"]
    # Ann proposed through one principal: her other principal may not approve it
    cat = await (await propose(scoped, "hr-ann", "clock-01", 3)).json()
    resp = await scoped.call("POST", f"/v1/corrections/{cat['id']}/reject", "approve-ann")
    assert resp.status == 403
    assert (await problem(resp))["detail"] == (
        "three-person rule: ANN proposed this correction and may not approve or reject it")
    for c in (bob, cat):
        resp = await scoped.call("GET", f"/v1/corrections/{c['id']}", "auditor")
        assert (await resp.json())["status"] == "proposed"           # nothing partial
    kinds = [se.entry.kind for se in list(scoped.store.entries())[before:]]
    assert "correction" not in kinds
    refused = [b for b in access_bodies(scoped.store) if b.get("type") == "correction"
               and b.get("outcome") == "refused"]
    assert [b["action"] for b in refused] == ["propose", "approve", "reject"]
    # three different people: recorded, with its subject
    resp = await scoped.call("POST", f"/v1/corrections/{bob['id']}/approve", "approve-ann")
    assert resp.status == 200, await resp.text()
    idx = (await resp.json())["correction_idx"]
    body = json.loads(next(iter(scoped.store.entries(idx, idx + 1))).body or b"")
    assert (body["subject"], body["editor"], body["approver"]) == ("BOB", "editor",
                                                                   "approve-ann")
    assert chain_breaches(scoped.store) == []


async def test_d8_employee_disputes_own_punch_and_hr_decides(scoped: Api) -> None:
    resp = await propose(scoped, "ann", "clock-00", 1)          # not a dispute
    assert resp.status == 403
    assert "employee-dispute" in (await problem(resp))["detail"]
    resp = await propose(scoped, "ann", "clock-00", 2, reason="employee-dispute")   # Bob's
    assert resp.status == 404
    resp = await propose(scoped, "editor", "clock-00", 2, reason="employee-dispute")
    assert resp.status == 403
    assert "only the employee whose punch it is" in (await problem(resp))["detail"]
    resp = await propose(scoped, "ann", "clock-00", 1, reason="employee-dispute")
    assert resp.status == 201, await resp.text()
    dispute = await resp.json()
    assert [c["id"] for c in await listed(scoped, "ann", "/v1/corrections")] == [dispute["id"]]
    for who, status in (("ann", 403), ("boss", 403), ("hr-plant", 403)):
        resp = await scoped.call("POST", f"/v1/corrections/{dispute['id']}/approve", who)
        assert resp.status == status, who
    resp = await scoped.call("POST", f"/v1/corrections/{dispute['id']}/approve", "boss")
    assert "HR decides disputes" in (await problem(resp))["detail"]
    resp = await scoped.call("POST", f"/v1/corrections/{dispute['id']}/approve",
                             "approve-ann")                       # Ann's other principal
    assert resp.status == 403
    resp = await scoped.call("POST", f"/v1/corrections/{dispute['id']}/approve", "hr-hq")
    assert resp.status == 200, await resp.text()
    resp = await scoped.call("GET", "/v1/punches/clock-00/1", "ann")
    assert (await resp.json())["punch"]["effective"]["device_time_us"] == T0 + 7_000_001
    assert chain_breaches(scoped.store) == []


async def test_d8_supervisor_approves_team_corrections_never_own(scoped: Api) -> None:
    team = await (await propose(scoped, "editor", "clock-01", 2)).json()    # BOB: team
    own = await (await propose(scoped, "editor", "clock-00", 4)).json()     # BOSS
    other = await (await propose(scoped, "editor", "clock-01", 3)).json()   # CAT
    for c in (own, other):
        resp = await scoped.call("POST", f"/v1/corrections/{c['id']}/approve", "boss")
        assert resp.status == 404, c
    resp = await scoped.call("POST", f"/v1/corrections/{team['id']}/approve", "boss")
    assert resp.status == 200, await resp.text()
    seen = {c["id"] for c in await listed(scoped, "boss", "/v1/corrections")}
    assert seen == {team["id"], own["id"]}         # employee.self too: its own punch
    assert chain_breaches(scoped.store) == []


# -- linking principals to people and sites ---------------------------------------------------

async def test_d8_widening_a_scope_needs_a_second_admin(scoped: Api) -> None:
    resp = await scoped.call("PUT", "/v1/principals/hr-hq/roles", "admin",
                             json={"roles": ["hr.read", "hr.approve"], "sites": None})
    assert resp.status == 202, await resp.text()
    grant = (await resp.json())["pending"]["id"]
    assert len(await listed(scoped, "hr-hq")) == 5                 # still hq only
    resp = await scoped.call("POST", f"/v1/grants/{grant}/approve", "admin")
    assert resp.status == 403                                      # its own request
    resp = await scoped.call("POST", f"/v1/grants/{grant}/approve", "admin2")
    assert resp.status == 200, await resp.text()
    assert len(await listed(scoped, "hr-hq")) == 10
    # another person for employee.self: a grant too
    resp = await scoped.call("PUT", "/v1/principals/ann/roles", "admin",
                             json={"roles": ["employee.self"], "employee": "BOB"})
    assert resp.status == 202
    # narrowing, or a person for a role without punch data: at once
    resp = await scoped.call("PUT", "/v1/principals/hr-plant/roles", "admin",
                             json={"roles": ["hr.read"], "sites": ["plant"]})
    assert resp.status == 200, await resp.text()
    resp = await scoped.call("PUT", "/v1/principals/ops/roles", "admin",
                             json={"roles": ["ops.devices"], "employee": "HAL"})
    assert (resp.status, (await resp.json())["employee"]) == (200, "HAL")
    # a person role without a person, a malformed scope: 400, nothing recorded
    for body in ({"roles": ["employee.self"], "employee": None},
                 {"roles": ["hr.read"], "sites": []},
                 {"roles": ["hr.read"], "sites": ["no place"]}):
        resp = await scoped.call("PUT", "/v1/principals/hr-plant/roles", "admin", json=body)
        assert resp.status == 400, body
    resp = await scoped.call("PUT", "/v1/principals/hr-plant/roles", "admin",
                             json={"roles": ["employee.self"], "employee": None})
    assert "--employee" in (await problem(resp))["detail"]
    assert chain_breaches(scoped.store) == []
    assert access_tables.check_projection(scoped.store) == []


def test_d8_verifier_replay_finds_scope_and_three_person_breaches() -> None:
    h = AccessHistory()
    admin = {"type": "admin", "outcome": "done", "actor": "cli:root", "at": 1}
    h.feed(1, "access", {**admin, "action": "principal.create", "principal": "dana",
                         "roles": ["hr.approve"], "bootstrap": True, "sites": ["hq"],
                         "employee": "DANA"})
    h.feed(2, "access", {**admin, "action": "principal.create", "principal": "root",
                         "roles": ["admin"], "bootstrap": True})
    assert h.breaches == []
    assert h.principals["dana"].scope == PrincipalScope("DANA", frozenset({"hq"}))
    # every site without a grant: a breach
    found = h.feed(3, "access", {**admin, "actor": "root", "action": "roles.set",
                                 "principal": "dana", "roles": ["hr.approve"],
                                 "employee": "DANA"})
    assert [b.rule for b in found] == ["D8"]
    assert "scope person DANA, every site" in found[0].message
    # employee.self without a person: a breach; a person for a role without punch data: none
    found = h.feed(4, "access", {**admin, "action": "principal.create", "principal": "fay",
                                 "roles": ["employee.self"]})
    assert found[0].message.split(": ", 1)[1] == (
        "employee.self needs the principal linked to a person of the people directory "
        "(--employee)")
    found = h.feed(4, "access", {**admin, "action": "principal.create", "principal": "eve",
                                 "roles": ["ops.devices"], "employee": "EVE"})
    assert found == []
    # a correction of Dana's own punch approved by Dana
    found = h.feed(5, "correction", {"editor": "x", "approver": "dana", "subject": "DANA",
                                     "reason": "clock-error", "proposal": "cor-1"})
    assert [b.message for b in found] == ["correction of DANA's own punch approved by dana"]
    found = h.feed(6, "correction", {"editor": "x", "approver": "dana", "subject": "EVE",
                                     "reason": "employee-dispute", "proposal": "cor-2"})
    assert [b.message for b in found] == [
        "dispute cor-2 raised by x, not by the employee whose punch it is"]
    h.feed(7, "access", {**admin, "action": "principal.create", "principal": "dan2",
                         "roles": ["ops.devices"], "employee": "DANA"})
    found = h.feed(8, "correction", {"editor": "dan2", "approver": "dana", "subject": "EVE",
                                     "reason": "clock-error", "proposal": "cor-3"})
    assert [b.message for b in found] == [
        "correction proposed by dan2 and approved by dana, both the person DANA"]
    with pytest.raises(ValueError, match="sites must be"):
        scope_of({"sites": "hq"})
    assert widens_scope(["hr.read"], PrincipalScope(None, frozenset({"a"})),
                        PrincipalScope(None, frozenset({"a", "b"})))
    assert not widens_scope(["ops.devices"], PrincipalScope(), PrincipalScope("E", None))


def test_d8_cli_links_principals_to_people_and_sites(tmp_path: Path,
                                                     capsys: pytest.CaptureFixture[str]
                                                     ) -> None:
    db = tmp_path / "l.db"
    SQLiteStore(db).close()
    url = f"sqlite://{db}"
    assert cli_main(["token", "create", "--store", url, "--principal", "carol",
                     "--role", "employee.self", "--employee", "E-7"]) == 0
    assert cli_main(["token", "create", "--store", url, "--principal", "dana",
                     "--role", "hr.read", "--sites", "plant-2,hq"]) == 0
    assert cli_main(["token", "create", "--store", url, "--principal", "erin",
                     "--role", "supervisor"]) == 2
    assert "supervisor needs the principal linked to a person" in capsys.readouterr().err
    assert cli_main(["token", "roles", "--store", url, "--principal", "dana",
                     "--role", "hr.read", "--sites", "all"]) == 0
    assert "dana: hr.read (no person, every site)" in capsys.readouterr().out
    assert cli_main(["token", "list", "--store", url, "--json"]) == 0
    items = {p["name"]: p for p in json.loads(capsys.readouterr().out)}
    assert (items["carol"]["employee"], items["carol"]["sites"]) == ("E-7", None)
    assert (items["dana"]["employee"], items["dana"]["sites"]) == (None, None)


# -- PostgreSQL -----------------------------------------------------------------------------

async def test_d8_scopes_and_three_person_rule_on_postgresql(pg_ledger: PgDatabase,
                                                             tmp_path: Path) -> None:
    assert cli_main(["migrate", "--store", pg_ledger.owner_dsn,
                     "--app-role", pg_ledger.app_role]) == 0
    store = PostgresStore(pg_ledger.app_dsn)
    api = await start_scoped(store, tmp_path)
    try:
        for who in ("ann", "boss", "hr-plant"):
            got = {(r["device"], r["seq"]) for r in await listed(api, who)}
            assert got == visible(who), who
        resp = await api.call("GET", "/v1/punches/clock-01/1", "hr-hq")
        assert resp.status == 404
        resp = await api.call("GET", "/v1/exports/payroll?format=csv", "pay-hq")
        assert resp.status == 200
        body = (await resp.text()).splitlines()
        assert len(body) == 1 + 1 + 5 + 1             # header, columns, rows, trailer
        assert '"rows": 5' in body[-1]
        resp = await propose(api, "hr-ann", "clock-00", 1)
        assert (resp.status, (await problem(resp))["type"]) == (403, SOD)
        resp = await propose(api, "ann", "clock-00", 1, reason="employee-dispute")
        assert resp.status == 201
        resp = await api.call("POST", f"/v1/corrections/{(await resp.json())['id']}/approve",
                              "hr-hq")
        assert resp.status == 200, await resp.text()
        assert chain_breaches(store) == []
    finally:
        await api.client.close()
        store.close()
