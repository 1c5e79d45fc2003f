"""Control D6 (corrections as amendments, segregation of duties) end to end: the original
punch stays untouched, the approved correction is a chained ``correction`` entry that the
offline verifier accepts, payroll shows the corrected value beside the original, and every
SoD violation is refused and recorded."""

from __future__ import annotations

import json
import sqlite3
import subprocess
import sys
from pathlib import Path

import pytest

from collector import SoDError
from collector.access.directory import Principals
from collector.records.corrections import CorrectionConflictError, Corrections
from collector.records.exports import export_bundle
from tests.collector.api_kit import (
    Api,
    access_bodies,
    requests_of,
)
from wire import verify_cli
from wire.keys import SigningKey
from wire.ledger import Checkpoint

PROPOSAL = {"device": "clock-00", "seq": 2, "field": "action", "after": "break-start",
            "reason": "wrong-action", "note": "pressed in instead of break"}


async def _propose(api: Api, who: str = "editor", **over: object) -> dict[str, object]:
    resp = await api.call("POST", "/v1/corrections", who, json={**PROPOSAL, **over})
    assert resp.status == 201, await resp.text()
    body: dict[str, object] = await resp.json()
    return body


@pytest.mark.subprocess
async def test_d6_correction_flow_end_to_end(api: Api, tmp_path: Path) -> None:
    before = {se.entry.idx: (se.hash, se.body) for se in api.store.entries()}
    punch_idx = api.store.punch_hash("clock-00", 2)
    assert punch_idx is not None
    proposal = await _propose(api)
    assert (proposal["before"], proposal["original_idx"]) == ("in", punch_idx[1])

    resp = await api.call("POST", f"/v1/corrections/{proposal['id']}/approve", "approver",
                          json={"note": "checked with the supervisor"})
    decided = await resp.json()
    assert resp.status == 200, decided
    cidx = decided["correction_idx"]

    # the original punch entry and every earlier entry are byte-for-byte unchanged
    after = {se.entry.idx: (se.hash, se.body) for se in api.store.entries()}
    assert {i: after[i] for i in before} == before
    # the correction is a chained entry referencing the original punch's idx
    entry = next(api.store.entries(cidx, cidx + 1))
    assert entry.entry.kind == "correction"
    assert entry.entry.prev == next(api.store.entries(cidx - 1, cidx)).hash
    body = json.loads(entry.body or b"")
    assert body == {"original_idx": punch_idx[1], "device": "clock-00", "seq": 2,
                    "field": "action", "before": "in", "after": "break-start",
                    "reason": "wrong-action", "note": "pressed in instead of break",
                    "editor": "editor", "approver": "approver", "proposal": proposal["id"],
                    "proposed_at": proposal["proposed_at"], "approved_at": decided["decided_at"]}

    # the punch view shows original and effective values with the correction's idx
    resp = await api.call("GET", "/v1/punches/clock-00/2", "hr-reader")
    detail = await resp.json()
    assert detail["punch"]["action"] == "in"
    assert detail["punch"]["effective"]["action"] == "break-start"
    assert detail["punch"]["corrections"]["action"]["correction_idx"] == cidx
    assert detail["signed"]["punch"]["action"] == "in"

    # payroll export: corrected value beside the original, with the reference
    resp = await api.call("GET", "/v1/exports/payroll?format=csv&device=clock-00", "payroll")
    lines = (await resp.text()).splitlines()
    cols = lines[1].split(",")
    row = dict(zip(cols, next(ln for ln in lines[2:] if ln.startswith("clock-00,hq,2,"))
                   .split(","), strict=True))
    assert (row["action"], row["effective_action"], row["correction_idx"],
            row["ledger_idx"]) == ("in", "break-start", str(cidx), str(punch_idx[1]))
    trailer = json.loads(lines[-1][2:])["trailer"]
    assert trailer["rows"] == 5

    # the audit bundle (collector.records.exports → wire bundle) verifies with timeclock-verify
    log_key = SigningKey.generate()
    size, head = api.store.head()
    await api.flush()
    size, head = api.store.head()
    api.store.add_checkpoint(Checkpoint(log=log_key.key_id, size=size, head=head,
                                        at=api.clock()).sign(log_key))
    export_bundle(api.store, tmp_path / "bundle", [log_key.verify_key])
    rc = verify_cli.main([str(tmp_path / "bundle"), "--collector-key",
                          log_key.verify_key.b64])
    assert rc == 0
    # and through the installed console script, as an auditor would run it
    out = subprocess.run([sys.executable, "-m", "wire.verify_cli", str(tmp_path / "bundle"),
                          "--collector-key", log_key.verify_key.b64],
                         capture_output=True, text=True, check=False)
    assert out.returncode == 0, out.stdout + out.stderr
    assert "RESULT: OK" in out.stdout


async def test_d6_self_approval_refused_and_recorded(api: Api) -> None:
    proposal = await _propose(api, "editor2", seq=2, field="ts",
                              after=1_764_140_500_000_000, reason="clock-error")
    # editor2 moves to an approver role (admin; SoD allows it since hr.correct goes away)
    resp = await api.call("PUT", "/v1/principals/editor2/roles", "admin",
                          json={"roles": ["hr.approve"]})
    assert resp.status == 202      # a punch-data role: pending until a second admin (D8)
    Principals(api.store).decide_grant((await resp.json())["pending"]["id"], approve=True,
                                       actor="cli:second-admin", now_us=api.clock())
    resp = await api.call("POST", f"/v1/corrections/{proposal['id']}/approve", "editor2",
                          json={})
    problem = await resp.json(content_type="application/problem+json")
    assert resp.status == 403
    assert problem["type"] == "urn:timeclock:problem:segregation-of-duties"
    assert "may not approve" in problem["detail"]
    await api.flush()
    refused = [b for b in access_bodies(api.store) if b.get("type") == "correction"
               and b.get("outcome") == "refused"]
    assert [(b["actor"], b["proposal"]) for b in refused] == [("editor2", proposal["id"])]
    req = [b for b in requests_of(api.store) if b["path"].endswith("/approve")]
    assert [(b["principal"], b["status"], b["outcome"]) for b in req] == [
        ("editor2", 403, "denied")]
    assert Corrections(api.store).get(str(proposal["id"])).status == "proposed"


def test_d6_self_approval_refused_in_the_library(api: Api) -> None:
    corr = Corrections(api.store)
    c = corr.propose(device="clock-01", seq=1, field="action", after="in",
                     reason="wrong-action", editor="carol", now_us=api.clock())
    with pytest.raises(SoDError, match="carol proposed correction .* may not approve"):
        corr.decide(c.id, approve=True, approver="carol", now_us=api.clock())


@pytest.mark.parametrize(("roles", "match"), [
    (["hr.correct", "hr.approve"], "both hr.correct and hr.approve"),
    (["admin", "hr.read"], "admin may not also hold hr.read"),
    (["admin", "payroll.export"], "admin may not also hold payroll.export"),
])
async def test_d6_conflicting_role_grants_refused_and_recorded(api: Api, roles: list[str],
                                                               match: str) -> None:
    resp = await api.call("PUT", "/v1/principals/ops/roles", "admin", json={"roles": roles})
    problem = await resp.json(content_type="application/problem+json")
    assert resp.status == 403
    assert problem["type"] == "urn:timeclock:problem:segregation-of-duties"
    assert match in problem["detail"]
    with pytest.raises(SoDError, match=match):
        Principals(api.store).create_token("newbie", roles, expires_days=1, actor="cli:t",
                                           now_us=api.clock())
    await api.flush()
    refused = [b for b in access_bodies(api.store) if b.get("outcome") == "refused"]
    assert [(b["actor"], b["action"], b["principal"]) for b in refused] == [
        ("admin", "roles.set", "ops"), ("cli:t", "token.create", "newbie")]
    assert Principals(api.store).get("ops").roles == {"ops.devices"}  # type: ignore[union-attr]
    assert Principals(api.store).get("newbie") is None


async def test_d6_roles_tampered_in_the_database_are_refused(api: Api) -> None:
    # someone with database access grants hr.approve behind the API's back
    with api.store._lock:
        api.store._conn.execute("INSERT INTO tc_roles VALUES ('editor', 'hr.approve', 0, 'x')")
    resp = await api.call("GET", "/v1/punches", "editor")
    assert resp.status == 403
    assert "segregation of duties" in (await resp.json(
        content_type="application/problem+json"))["detail"]


async def test_d6_stale_proposal_conflicts_and_reject_flow(api: Api) -> None:
    first = await _propose(api)
    second = await _propose(api, after="out", reason="employee-request")
    resp = await api.call("POST", f"/v1/corrections/{first['id']}/approve", "approver")
    assert resp.status == 200
    resp = await api.call("POST", f"/v1/corrections/{second['id']}/approve", "approver")
    assert resp.status == 409
    assert "reject it and propose again" in (await resp.json(
        content_type="application/problem+json"))["detail"]
    resp = await api.call("POST", f"/v1/corrections/{second['id']}/reject", "approver",
                          json={"note": "stale"})
    assert (resp.status, (await resp.json())["status"]) == (200, "rejected")
    resp = await api.call("POST", f"/v1/corrections/{second['id']}/reject", "approver")
    assert resp.status == 409
    with pytest.raises(CorrectionConflictError, match="already rejected"):
        Corrections(api.store).decide(str(second["id"]), approve=True, approver="zed",
                                      now_us=api.clock())
    resp = await api.call("GET", "/v1/corrections?status=rejected", "auditor")
    assert [c["id"] for c in (await resp.json())["items"]] == [second["id"]]


@pytest.mark.parametrize(("over", "status", "match"), [
    ({"device": "clock-00", "seq": 99}, 404, "no recorded punch clock-00#99"),
    ({"after": "sideways"}, 400, "action must be one of"),
    ({"field": "credential"}, 400, "field: one of action, ts"),
    ({"reason": "because"}, 400, "reason must be one of"),
    ({"after": "in"}, 400, "action is already 'in'"),
    ({"before": "out"}, 409, "current action is 'in', not 'out'"),
    ({"field": "ts", "after": 1.5}, 400, "ts must be an integer"),
])
async def test_d6_invalid_proposals(api: Api, over: dict[str, object], status: int,
                                    match: str) -> None:
    resp = await api.call("POST", "/v1/corrections", "editor", json={**PROPOSAL, **over})
    assert resp.status == status
    assert match in (await resp.json(content_type="application/problem+json"))["detail"]


async def test_d6_payroll_refuses_when_the_corrections_table_lost_a_row(api: Api,
                                                                        tmp_path: Path) -> None:
    proposal = await _propose(api)
    resp = await api.call("POST", f"/v1/corrections/{proposal['id']}/approve", "approver")
    assert resp.status == 200, await resp.text()
    raw = sqlite3.connect(tmp_path / "ledger.db")
    raw.execute("DELETE FROM tc_corrections WHERE id = ?", (proposal["id"],))
    raw.commit()
    raw.close()
    resp = await api.call("GET", "/v1/exports/payroll?format=ndjson", "payroll")
    problem = await resp.json(content_type=None)
    assert (resp.status, problem["type"]) == (500, "urn:timeclock:problem:integrity")
    assert "has no approved row in the corrections table" in problem["detail"]
    await api.flush()
    assert [(r["route"], r["status"]) for r in requests_of(api.store)][-1] == (
        "/v1/exports/payroll", 500)
