"""The console's pages for a supervisor, an employee, ops and compliance beyond the first
slice (collector.api.console, console_people, console_sources; issue 16 item 2), through the
real API application with bearer tokens (the browser flow is test_console_browser.py):

- the supervisor's team page shows the team of collector.access.scopes only (D8);
- an employee's page shows their own punches and timesheet, and its dispute form raises an
  ``employee-dispute`` proposal of their own punch only (D6, D8);
- the ops page shows online, queue depth, clock sync and certificate expiry from the
  service's device statuses and the CA index, "unknown" only where the collector has none;
- the compliance page lists the access reviews and the evidence packs, and a pack downloads
  byte for byte as ``timeclock-collector evidence`` wrote it (D12: an access entry);
- a refused console page asked for by a browser is an HTML page with the status, never the
  page's data; an API client still gets the problem document.
"""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import pytest
from aiohttp.test_utils import TestClient, TestServer

from collector.api import ApiSettings, make_app
from collector.ledger.sqlite import SQLiteStore
from collector.ledger.tables import ensure_schema
from tests.collector import console_kit as K
from tests.collector.api_kit import Api, issue_tokens, requests_of, start_api
from tests.collector.ledger_kit import T0, Clock
from wire.grants import PrincipalScope

NOW = T0 + 10**9                     # api_kit.FakeClock's start
PEOPLE: dict[str, tuple[tuple[str, ...], str | None]] = {
    "sue": (("supervisor",), "SUE"), "ann": (("employee.self",), "ANN"),
    "cora": (("audit.read", "audit.review"), None), "otto": (("ops.devices",), None),
    "hana": (("hr.read", "hr.approve"), None), "cleo": (("hr.read", "hr.correct"), None)}
HTML = {"Accept": "text/html,application/xhtml+xml"}


@pytest.fixture(scope="module")
def pack(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, str]:
    evidence, name, _ = K.make_pack(tmp_path_factory.mktemp("pack"))
    return evidence, name


async def start(store: SQLiteStore, tmp: Path, **settings: Any) -> Api:
    K.seed_site(store, tmp, NOW)
    ensure_schema(store)
    mine: dict[str, str] = {}
    from collector.access.directory import Principals  # noqa: PLC0415 - scope tokens

    for name, (roles, employee) in PEOPLE.items():
        mine[name] = Principals(store).create_token(
            name, list(roles), expires_days=30, actor="cli:test", now_us=NOW,
            scope=PrincipalScope(employee=employee, sites=None)).token
    mine.update(issue_tokens(store, NOW, {"reviewer": ("audit.review",)}))
    api = await start_api(store, settings=ApiSettings(**settings))
    api.tokens.update(mine)
    return api


def rows_of(html: str, table: str, attr: str) -> list[str]:
    m = re.search(rf'<table id="{table}">(.*?)</table>', html, re.S)
    return [] if m is None else re.findall(rf'<tr {attr}="([^"]+)"', m.group(1))


async def test_d8_team_page_shows_the_supervisors_team_only(sqlite_store: SQLiteStore,
                                                           tmp_path: Path) -> None:
    api = await start(sqlite_store, tmp_path)
    try:
        resp = await api.call("GET", "/console/team", "sue")
        html = await resp.text()
        assert resp.status == 200, html
        assert '<span id="team-size">3</span>' in html          # ANN, BOB, DAN
        present = re.findall(r'<table class="presence" data-site="(\w+)">.*?'
                             r'data-employee="(\w+)"', html, re.S)
        assert present == [("hq", "ANN")]                     # SUE herself is not her team
        assert re.findall(r'data-kind="missing-in"><td>[\d-]+</td><td>(\w+)</td>', html) == [
            "DAN", "DAN"]                                     # CAT's is not the team's
        assert "CAT" not in html
        assert "SUE</td>" not in html
        for who in ("ann", "hana", "otto"):
            assert (await api.call("GET", "/console/team", who)).status == 403
        await api.flush()
        [entry] = [b for b in requests_of(api.store)
                   if b["path"] == "/console/team" and b["principal"] == "sue"]
        assert (entry["role"], entry["extra"]["scope"]) == ("supervisor",
                                                   {"sites": None, "persons": "supervisor"})
    finally:
        await api.client.close()


async def test_d6_employee_sees_own_punches_and_disputes_only_their_own(
        sqlite_store: SQLiteStore, tmp_path: Path) -> None:
    api = await start(sqlite_store, tmp_path)
    try:
        resp = await api.call("GET", "/console/me", "ann")
        html = await resp.text()
        assert resp.status == 200, html
        assert rows_of(html, "punches", "data-punch") == ["clock-01/1"]
        assert '<code id="employee">ANN</code>' in html
        for other in ("DAN", "BOB", "CAT", "SUE"):
            assert other not in html
        form = {"device": "clock-01", "seq": "1", "field": "action", "after": "out",
                "note": "I was leaving"}
        resp = await api.call("POST", "/console/me/disputes", "ann",
                              data={**form, "seq": "3"}, allow_redirects=False)
        html = await resp.text()
        assert resp.status == 404, html                    # DAN's punch: not hers
        assert "no recorded punch clock-01#3" in html.split('id="error"')[1]
        resp = await api.call("POST", "/console/me/disputes", "ann", data=form,
                              allow_redirects=False)
        assert resp.status == 303, await resp.text()
        where = resp.headers["Location"]
        cid = where.split("done=disputed-")[1]
        html = await (await api.call("GET", where, "ann")).text()
        assert f"Dispute {cid} raised" in html
        assert rows_of(html, "disputes", "data-proposal") == [cid]
        got = await api.call("GET", f"/v1/corrections/{cid}", "hana")
        body = await got.json()
        assert (body["reason"], body["editor"], body["status"]) == (
            "employee-dispute", "ann", "proposed")
    finally:
        await api.client.close()


async def test_ops_page_shows_status_queue_sync_and_certificate_expiry(
        sqlite_store: SQLiteStore, tmp_path: Path) -> None:
    table = K.status_table(NOW)
    ca = K.ca_with_device_cert(tmp_path, NOW)
    api = await start(sqlite_store, tmp_path, statuses=table.snapshot, ca_dir=ca)
    try:
        resp = await api.call("GET", "/console/ops", "otto")
        html = await resp.text()
        assert resp.status == 200, html
        cells = {d: dict(re.findall(r'<td class="(\w+)">([^<]*)</td>', row)) for d, row in
                 re.findall(r'<tr data-device="([\w-]+)">(.*?)</tr>', html, re.S)}
        one, two = cells["clock-01"], cells["clock-02"]
        assert re.fullmatch(r"online \(status \d+ s ago\)", one["online"]), one
        assert (one["queue"], one["sync"]) == ("3", "synced (offset -1.5 s at receipt)")
        assert re.fullmatch(r"20\d\d-\d\d-\d\d", one["cert"]), one
        assert (two["online"], two["queue"], two["sync"], two["cert"]) == (
            "unknown", "unknown", "unknown", "unknown")      # it never reported; no cert
        assert 'id="source-problems"' not in html
        # without the sources, every one of those columns says unknown, and the page why
        bare: TestClient[Any, Any] = TestClient(TestServer(make_app(
            sqlite_store, settings=ApiSettings(), clock=api.clock)))
        await bare.start_server()
        try:
            html = await (await bare.get("/console/ops", headers=api.auth("otto"))).text()
            assert "[api] ca_dir is not set" in html
            assert "without the ingest service" in html
            assert html.count(">unknown<") == 2 * 4
        finally:
            await bare.close()
    finally:
        await api.client.close()


async def test_d12_compliance_lists_access_reviews_and_serves_evidence_packs(
        sqlite_store: SQLiteStore, tmp_path: Path, pack: tuple[Path, str]) -> None:
    evidence, name = pack
    api = await start(sqlite_store, tmp_path, evidence_dir=evidence)
    try:
        review = K.start_access_review(sqlite_store, "reviewer", NOW)
        resp = await api.call("GET", "/console/compliance", "cora")
        html = await resp.text()
        assert resp.status == 200, html
        assert rows_of(html, "access-reviews", "data-review") == [review]
        assert f'data-review="{review}" data-status="open"' in html
        assert rows_of(html, "evidence-packs", "data-pack") == [name]
        assert f'href="/console/compliance/evidence/{name}"' in html
        resp = await api.call("GET", f"/console/compliance/evidence/{name}", "cora")
        assert resp.status == 200
        assert resp.headers["Content-Disposition"] == f'attachment; filename="{name}"'
        assert await resp.read() == (evidence / name).read_bytes()
        for bad, status in (("../pack-ledger.db", 404), ("pack-2025-11", 404),
                            ("nope.tar.gz", 404), ("..%2Fx.tar.gz", 404)):
            resp = await api.call("GET", f"/console/compliance/evidence/{bad}", "cora")
            assert resp.status == status, bad
        assert (await api.call("GET", f"/console/compliance/evidence/{name}", "otto")
                ).status == 403
        await api.flush()
        got = [b for b in requests_of(api.store) if b.get("route") ==
               "/console/compliance/evidence/{name}" and b["status"] == 200]
        assert [(b["principal"], b["extra"]["evidence_pack"]) for b in got] == [("cora", name)]
    finally:
        await api.client.close()


async def test_a_refused_page_is_html_for_a_browser_and_a_problem_for_a_client(
        sqlite_store: SQLiteStore, tmp_path: Path) -> None:
    api = await start(sqlite_store, tmp_path)
    try:
        resp = await api.call("GET", "/console/hr", "otto", headers=HTML)
        html = await resp.text()
        assert (resp.status, resp.headers["Content-Type"]) == (403, "text/html; charset=utf-8")
        assert '<h1 id="refused" data-status="403">403 Forbidden</h1>' in html
        assert re.findall(r'data-page="(\w+)"', html) == ["consoleOps"]   # its own pages
        assert "DAN" not in html
        assert "ANN" not in html
        assert "Traceback" not in html
        resp = await api.call("GET", "/console/hr", "otto")
        assert resp.headers["Content-Type"].startswith("application/problem+json")
        resp = await api.call("GET", "/console/hr", headers=HTML)     # no credential
        assert (resp.status, resp.headers["Content-Type"].split(";")[0]) == (
            401, "application/problem+json")
    finally:
        await api.client.close()


async def test_a_cached_view_never_outlives_a_new_punch_and_timesheets_page(
        sqlite_store: SQLiteStore, tmp_path: Path) -> None:
    api = await start(sqlite_store, tmp_path)
    try:
        html = await (await api.call("GET", "/console/hr", "hana")).text()
        assert 'data-employee="CAT"' not in html.split('id="exceptions"')[0]
        again = await (await api.call("GET", "/console/hr", "hana")).text()
        assert again.split("<h2>Who is in now</h2>")[1] == html.split(
            "<h2>Who is in now</h2>")[1]                    # the same view, reused
        last = sqlite_store.punch_hash("clock-02", 3)
        assert last is not None
        plant = Clock("clock-02", site="plant", seq=3, prev=last[0])
        sqlite_store.append([plant.fact(credential=K.CREDENTIALS["CAT"], action="in",
                                        ts=api.clock.now - 60 * 10**6)], now_us=api.clock.now)
        html = await (await api.call("GET", "/console/hr", "hana")).text()
        present = html.split('id="exceptions"')[0]
        assert 'data-site="plant"' in present
        assert 'data-employee="CAT"' in present           # the new punch, at once
        for q, status in (("page=1", 200), ("page=2", 404), ("page=0", 400),
                          ("page=x", 400)):
            resp = await api.call("GET", f"/console/hr/timesheets?{q}", "hana")
            assert resp.status == status, q
    finally:
        await api.client.close()


async def test_d6_d8_a_supervisor_decides_the_teams_corrections_never_a_dispute(
        sqlite_store: SQLiteStore, tmp_path: Path) -> None:
    api = await start(sqlite_store, tmp_path)
    try:
        device, seq = K.DAN_WRONG
        resp = await api.call("POST", "/v1/corrections", "cleo", json={
            "device": device, "seq": seq, "field": "action", "after": "in",
            "reason": "wrong-action", "note": "Dan pressed out for in"})
        assert resp.status == 201, await resp.text()
        fix = (await resp.json())["id"]
        resp = await api.call("POST", "/console/me/disputes", "ann", allow_redirects=False,
                              data={"device": "clock-01", "seq": "1", "field": "action",
                                    "after": "out", "note": "I was leaving"})
        dispute = resp.headers["Location"].split("done=disputed-")[1]
        html = await (await api.call("GET", "/console/team", "sue")).text()
        assert sorted(rows_of(html, "proposals", "data-proposal")) == sorted([fix, dispute])
        assert f'action="/console/team/corrections/{fix}/approve"' in html
        assert f"/console/team/corrections/{dispute}/" not in html    # HR decides it
        resp = await api.call("POST", f"/console/team/corrections/{dispute}/approve", "sue",
                              data={"note": "fine"}, allow_redirects=False)
        html = await resp.text()
        assert resp.status == 403, html
        assert "HR decides disputes" in html.split('id="error"')[1]
        assert (await api.call("POST", f"/console/team/corrections/{fix}/approve", "hana",
                               data={})).status == 403                 # not a supervisor
        resp = await api.call("POST", f"/console/team/corrections/{fix}/approve", "sue",
                              data={"note": "checked the rota"}, allow_redirects=False)
        assert (resp.status, resp.headers["Location"]) == (
            303, f"/console/team?done=approved-{fix}")
        html = await (await api.call("GET", resp.headers["Location"], "sue")).text()
        assert f"Correction {fix} approved" in html
        assert rows_of(html, "proposals", "data-proposal") == [dispute]
        corrections = [json.loads(se.body) for se in sqlite_store.entries()
                       if se.entry.kind == "correction" and se.body is not None]
        assert [(c["device"], c["seq"], c["after"]) for c in corrections] == [
            (device, seq, "in")]
    finally:
        await api.client.close()
