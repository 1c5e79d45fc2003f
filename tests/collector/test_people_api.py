"""The people directory through the real API (tests/collector/api_kit.py over a real SQLite
ledger): who may read and write it (D6/D8 roles), and the punch rows' employee_id and
badge_status (D20: output fields)."""

from __future__ import annotations

import json
import logging
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from collector.ledger.sqlite import SQLiteStore
from collector.ledger.tables import ensure_schema
from collector.people.csv_import import import_files
from tests.collector.api_kit import (
    ROLE_PRINCIPALS,
    Api,
    access_bodies,
    issue_tokens,
    seed,
    start_api,
)
from tests.collector.ledger_kit import T0

BADGE = "em4100:0000000001"            # seed(): clock-NN punches with em4100:000000000n
EMPLOYEES = """employee_id,name,department,site,timezone,manager_id
E1,Ada Lovelace,Operations,hq,Europe/London,
"""
BADGES = f"""credential,employee_id,valid_from,valid_until,status
{BADGE},E1,2025-01-01T00:00:00Z,,assigned
em4100:0000000003,E1,2025-01-01T00:00:00Z,{T0 + 1},blocked
"""


@pytest.fixture
async def people_api(sqlite_store: SQLiteStore, tmp_path: Path) -> AsyncIterator[Api]:
    d = tmp_path
    clocks = seed(sqlite_store)
    (d / "e.csv").write_text(EMPLOYEES, encoding="utf-8")
    (d / "b.csv").write_text(BADGES, encoding="utf-8")
    import_files(sqlite_store, d / "e.csv", d / "b.csv", now_us=T0 + 2000)
    ensure_schema(sqlite_store)
    # before start_api's admin exists (then only an admin creates principals)
    mine = issue_tokens(sqlite_store, T0 + 10**9, {"hr-people": ("hr.people",)})
    a = await start_api(sqlite_store, clocks=clocks)
    a.tokens.update(mine)
    try:
        yield a
    finally:
        await a.client.close()


@pytest.mark.parametrize("principal", ["hr-reader", "payroll", "auditor", "hr-people"])
async def test_d6_people_readable_by_hr_payroll_and_auditors(people_api: Api,
                                                             principal: str) -> None:
    resp = await people_api.call("GET", "/v1/people", principal)
    assert resp.status == 200
    doc = await resp.json()
    assert [(e["employee_id"], e["timezone"]) for e in doc["items"]] == [("E1", "Europe/London")]
    one = await (await people_api.call("GET", "/v1/people/E1", principal)).json()
    assert [(b["credential"], b["status"]) for b in one["badges"]] == [
        (BADGE, "assigned"), ("em4100:0000000003", "assigned"),
        ("em4100:0000000003", "blocked")]


@pytest.mark.parametrize("principal", ["ops", "admin", "editor2"])
async def test_d6_people_not_readable_without_a_reading_role(people_api: Api,
                                                             principal: str) -> None:
    assert ROLE_PRINCIPALS[principal]
    assert (await people_api.call("GET", "/v1/people", principal)).status == 403


async def test_d6_payroll_can_read_but_not_change_the_directory(people_api: Api) -> None:
    body = {"name": "Mallory", "department": "x", "site": "hq", "timezone": "UTC"}
    resp = await people_api.call("PUT", "/v1/people/E9", "payroll", json=body)
    assert resp.status == 403
    assert "needs one of hr.people" in (await resp.json())["detail"]
    resp = await people_api.call("POST", f"/v1/badges/{BADGE}/events", "payroll",
                                 json={"event": "lost"})
    assert resp.status == 403
    assert (await people_api.call("GET", "/v1/people/E9", "hr-reader")).status == 404


async def test_d6_hr_people_writes_and_conflicts_name_the_holder(people_api: Api) -> None:
    body = {"name": "Grace Hopper", "department": "Ops", "site": "hq",
            "timezone": "America/New_York"}
    resp = await people_api.call("PUT", "/v1/people/E2", "hr-people", json=body)
    assert resp.status == 200
    doc = await resp.json()
    assert (doc["employee_id"], doc["status"], doc["recorded_idx"] is not None) == \
        ("E2", "active", True)
    again = await (await people_api.call("PUT", "/v1/people/E2", "hr-people",
                                         json=body)).json()
    assert again["recorded_idx"] is None                     # unchanged: nothing recorded
    bad = await people_api.call("PUT", "/v1/people/E2", "hr-people",
                                json={**body, "timezone": "Mars/Olympus"})
    assert bad.status == 400
    assert "not an IANA time zone" in (await bad.json())["detail"]
    resp = await people_api.call("POST", f"/v1/badges/{BADGE}/events", "hr-people",
                                 json={"event": "assigned", "employee_id": "E2",
                                       "from": "2025-06-01T00:00:00Z"})
    assert resp.status == 409
    assert "held by employee E1 over [2025-01-01T00:00:00Z, open)" in \
        (await resp.json())["detail"]
    resp = await people_api.call("POST", f"/v1/badges/{BADGE}/events", "hr-people",
                                 json={"event": "lost", "from": T0 + 3_000_000})
    assert resp.status == 201
    badge = await (await people_api.call("GET", f"/v1/badges/{BADGE}?at={T0 + 3_000_000}",
                                         "hr-reader")).json()
    assert (badge["employee_id"], badge["badge_status"]) == (None, "lost")


async def test_d20_punch_rows_carry_employee_id_and_badge_status(people_api: Api) -> None:
    page = await (await people_api.call("GET", "/v1/punches?device=clock-00",
                                        "hr-reader")).json()
    # seed(): seq n + 1 read badge em4100:000000000n; BADGE (n = 1) is E1's, badge 3 is
    # blocked from T0 + 1 µs on; the default (payroll) rows show no credential (D20)
    assert all("credential" not in p for p in page["items"])
    got = {(p["seq"], p["employee_id"], p["badge_status"]) for p in page["items"]}
    assert got == {(1, None, "unknown"), (2, "E1", "assigned"), (3, None, "unknown"),
                   (4, None, "blocked"), (5, None, "unknown")}
    resp = await people_api.call("GET", "/v1/exports/payroll?format=csv&device=clock-00",
                                 "payroll")
    lines = (await resp.text()).splitlines()
    header = json.loads(lines[0][2:])["header"]
    assert header["columns"][-2:] == ["employee_id", "badge_status"]
    cols = lines[1].split(",")
    rows = [dict(zip(cols, line.split(","), strict=True)) for line in lines[2:-1]]
    assert "credential" not in cols
    assert {(int(r["seq"]), r["employee_id"], r["badge_status"]) for r in rows} == {
        (n, e or "", s) for n, e, s in got}
    stream = await people_api.call("GET", "/v1/punches?device=clock-00&format=ndjson",
                                   "hr-reader")
    items = [json.loads(x) for x in (await stream.text()).splitlines()]
    assert {(p["seq"], p["employee_id"], p["badge_status"]) for p in items} == got
    one = await (await people_api.call("GET", "/v1/punches/clock-00/2", "hr-reader")).json()
    assert (one["punch"]["credential"], one["punch"]["employee_id"]) == (BADGE, "E1")


async def test_d20_names_never_reach_a_log_line_or_an_access_entry(
        people_api: Api, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.DEBUG)
    body = {"name": "Hedy Lamarr", "department": "Research", "site": "hq", "timezone": "UTC"}
    assert (await people_api.call("PUT", "/v1/people/E7", "hr-people", json=body)).status == 200
    bad = await people_api.call("PUT", "/v1/people/E8", "hr-people",
                                json={**body, "timezone": "Nowhere/Land"})
    assert bad.status == 400
    for path in ("/v1/people", "/v1/people/E7", "/v1/punches", "/v1/exports/payroll"):
        who = "payroll" if "exports" in path else "hr-reader"
        assert (await people_api.call("GET", path, who)).status == 200
    await people_api.flush()
    assert "Hedy Lamarr" not in caplog.text
    assert "Ada Lovelace" not in caplog.text
    access = json.dumps(access_bodies(people_api.store))
    assert "Hedy Lamarr" not in access
    assert "Ada Lovelace" not in access
