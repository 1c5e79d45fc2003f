"""The web console (collector.api.console; issue 16 item 2) through the real API application:
each role gets its pages and 403 on the others (D8), the navigation names only the pages a
role opens, page contents on seeded data (presence, exceptions, timesheets, fleet rows,
alert forms), the alert forms go through collector.records.reviews (a refusal is shown on
the page, nothing recorded), a session's form POST needs its CSRF token (D7), every page
view is an access entry (D12), and no page carries a credential.

Bearer tokens authenticate the same routes as the session cookie, so most tests need no
browser; the session tests make a session in the app's own store (as tests/collector/
test_sessions.py does) instead of signing in at a provider."""

from __future__ import annotations

import json
import re
import socket
from pathlib import Path
from typing import Any

import pytest

from collector.access.oidc import OidcAuth, read_oidc_section
from collector.api import ApiSettings
from collector.api.app import ApiThread
from collector.api.config import ApiSection
from collector.api.sessions import COOKIE
from collector.api.signin import SIGNIN, SignIn, SigninConfig
from collector.ledger.base import EventFact, RejectionFact
from collector.ledger.sqlite import SQLiteStore
from collector.ledger.tables import ensure_schema
from collector.people.csv_import import import_files
from tests.collector.api_kit import ROLE_PRINCIPALS, Api, issue_tokens, requests_of, start_api
from tests.collector.ledger_kit import T0, Clock
from tests.fixtures.chromium_kit import chromium_browser, screenshot_on_failure
from tests.fixtures.oidc_kit import WEB_CLIENT, OIDCProvider
from tests.fixtures.pki import TestPKI
from tests.polling import wait_for
from wire.clock import now_us

H = 3600 * 1_000_000
NOW = T0 + 10**9                       # api_kit.FakeClock's start
ANN, BOB, CAT = "em4100:0000000001", "em4100:0000000002", "em4100:0000000003"
EMPLOYEES = """employee_id,name,department,site,timezone,manager_id
ANN,Ann Archer,Operations,hq,Europe/London,
BOB,Bob Baker,Operations,plant,Europe/London,
CAT,Cat Cooper,Operations,plant,Europe/London,
"""
BADGES = "credential,employee_id,valid_from,valid_until,status\n" + "".join(
    f"{c},{e},2025-01-01T00:00:00Z,,assigned\n" for c, e in ((ANN, "ANN"), (BOB, "BOB"),
                                                           (CAT, "CAT")))
REVIEWERS: dict[str, tuple[str, ...]] = {"reviewer": ("audit.review",),
                                         "reviewer2": ("audit.review",)}
ORIGIN = "https://collector.example:8443"

# page -> roles that open it (written out here, independent of collector.api.routes)
PAGES: dict[str, frozenset[str]] = {
    "/console/hr": frozenset({"hr.read"}),
    "/console/hr/timesheets": frozenset({"hr.read", "payroll.export"}),
    "/console/compliance": frozenset({"audit.read", "audit.review"}),
    "/console/ops": frozenset({"ops.devices"}),
}


def seed_console(store: SQLiteStore, tmp: Path, now: int = NOW) -> int:
    """Two clocks, three people: Ann in since 2 h (hq), Bob in and out (plant), Cat only an
    out yesterday (a missing-in); an alert about reviewer2's own action; one quarantined
    message. Returns the alert's idx."""
    hq, plant = Clock("clock-01", site="hq"), Clock("clock-02", site="plant")
    store.append([EventFact("device", c.enrolled_body()) for c in (hq, plant)], now_us=T0)
    store.append([hq.fact(credential=ANN, action="in", ts=now - 2 * H)], now_us=T0 + 1)
    store.append([plant.fact(credential=BOB, action="in", ts=now - 5 * H),
                  plant.fact(credential=BOB, action="out", ts=now - 4 * H),
                  plant.fact(credential=CAT, action="out", ts=now - 26 * H)], now_us=T0 + 2)
    (tmp / "e.csv").write_text(EMPLOYEES, encoding="utf-8")
    (tmp / "b.csv").write_text(BADGES, encoding="utf-8")
    import_files(store, tmp / "e.csv", tmp / "b.csv", now_us=T0 + 3)
    store.append([RejectionFact("bad-signature", "test", "timeclock/v1/clock-01/punches",
                                b"{not a punch", now - H, device="clock-01")], now_us=T0 + 4)
    body = {"alert": "grant-change", "severity": 2, "device": None, "principal": "reviewer2",
            "detail": "a grant by reviewer2", "at": now - H}
    return store.append([EventFact("alert", body)], now_us=now - H)[0].idx


async def start_console(store: SQLiteStore, tmp: Path) -> tuple[Api, int]:
    alert = seed_console(store, tmp)
    (tmp / "secret").write_text("s3cret\n")
    section = read_oidc_section({
        "issuer": "http://127.0.0.1:9", "audience": "a", "client_id": "timeclock-web",
        "client_secret_file": str(tmp / "secret"),
        "redirect_uri": f"{ORIGIN}/auth/callback"}, [])
    assert section is not None
    ensure_schema(store)
    mine = issue_tokens(store, NOW, REVIEWERS)      # before api_kit's admin exists
    api = await start_api(store, settings=ApiSettings(oidc=OidcAuth(section)))
    api.tokens.update(mine)
    return api, alert


def session_cookie(api: Api, principal: str, roles: tuple[str, ...]) -> tuple[str, str]:
    """A live session of the app (no provider needed until re-validation): (cookie, csrf)."""
    app = api.client.app
    assert app is not None
    signin = app[SIGNIN]
    sid, s, _ = signin.sessions.create(
        principal=principal, subject="ab" * 16, roles=frozenset(roles), withheld=frozenset(),
        employee_id=None, sites=None, mfa=True, refresh_token=None, now_us=api.clock.now)
    return sid, s.csrf


def nav_of(html: str) -> set[str]:
    return set(re.findall(r'<a href="(/console/[^"]*)" data-page=', html))


async def test_d8_d12_each_role_gets_its_pages_and_every_view_is_an_access_entry(
        sqlite_store: SQLiteStore, tmp_path: Path) -> None:
    api, _ = await start_console(sqlite_store, tmp_path)
    try:
        sent = []
        for who, roles in {**ROLE_PRINCIPALS, **REVIEWERS}.items():
            mine = {p for p, allowed in PAGES.items() if allowed & set(roles)}
            for page in PAGES:
                resp = await api.call("GET", page, who)
                text = await resp.text()
                sent.append((who, page, resp.status))
                if page not in mine:
                    assert resp.status == 403, (who, page, text)
                    continue
                assert resp.status == 200, (who, page, text)
                assert resp.headers["Content-Type"].startswith("text/html")
                assert "script-src" not in resp.headers["Content-Security-Policy"]
                assert f'<span id="principal">{who}</span>' in text
                assert nav_of(text) == mine, (who, page)
        resp = await api.call("GET", "/console/ops")
        assert resp.status == 401                     # no credential: no page
        await api.flush()
        recorded = [(b["principal"], b["path"], b["status"]) for b in requests_of(api.store)
                    if b["path"].startswith("/console/")]
        assert sorted(recorded) == sorted(sent)
        hr = [b for b in requests_of(api.store)
              if (b["path"], b["principal"], b["status"]) == ("/console/hr", "hr-reader", 200)]
        assert [(b["role"], b["route"], b.get("accounted")) for b in hr] == [
            ("hr.read", "/console/hr", "before")]    # personal: committed before it was sent
    finally:
        await api.client.close()


async def test_hr_page_shows_presence_exceptions_plots_and_timesheets(
        sqlite_store: SQLiteStore, tmp_path: Path) -> None:
    api, _ = await start_console(sqlite_store, tmp_path)
    try:
        resp = await api.call("GET", "/console/hr", "hr-reader")
        html = await resp.text()
        assert resp.status == 200, html
        present = re.findall(r'<table class="presence" data-site="([^"]+)">(.*?)</table>', html,
                             re.S)
        assert [(site, re.findall(r'data-employee="(\w+)"', rows)) for site, rows in present] \
            == [("hq", ["ANN"])]                        # Bob clocked out, Cat never in
        exceptions = re.search(r'<table id="exceptions">(.*?)</table>', html, re.S)
        assert exceptions is not None
        assert re.findall(r'data-kind="([\w-]+)"><td>[\d-]+</td><td>(\w+)</td>',
                          exceptions.group(1)) == [("missing-in", "CAT")]
        assert html.count("<svg") == 2
        assert "punches per hour today" in html
        link = re.search(r'id="timesheets-link" href="([^"]+)"', html)
        assert link is not None
        resp = await api.call("GET", link.group(1).replace("&amp;", "&"), "payroll")
        sheet = await resp.text()
        assert resp.status == 200, sheet
        assert re.findall(r'<tr data-employee="(\w+)"><td>\w+</td>', sheet) == ["ANN", "BOB",
                                                                                 "CAT"]
        assert "BOB total (Europe/London; 0 exceptions)</th><th>1.00" in sheet
        csv = re.search(r'<a id="csv" href="([^"]+)"', sheet)
        assert csv is not None
        resp = await api.call("GET", csv.group(1).replace("&amp;", "&"), "payroll")
        assert resp.status == 200
        assert resp.headers["Content-Type"].startswith("text/csv")
        assert "BOB" in await resp.text()
        for bad in ("since=2026-13-01", "since=yesterday", "since=2026-03-02&until=2026-03-01",
                    "until=2030-01-01", "employee=ANN"):
            resp = await api.call("GET", f"/console/hr/timesheets?{bad}", "hr-reader")
            assert resp.status == 400, bad
    finally:
        await api.client.close()


async def test_ops_page_lists_the_fleet_and_the_quarantine(sqlite_store: SQLiteStore,
                                                           tmp_path: Path) -> None:
    api, _ = await start_console(sqlite_store, tmp_path)
    try:
        resp = await api.call("GET", "/console/ops", "ops")
        html = await resp.text()
        assert resp.status == 200, html
        rows = dict(re.findall(r'<tr data-device="([\w-]+)"><td>[\w-]+</td><td>(\w+)</td>', html))
        assert rows == {"clock-01": "hq", "clock-02": "plant"}
        assert '<span id="quarantined">1</span>' in html
        plot = re.search(r'<figure id="plot-quarantine">(.*?)</figure>', html, re.S)
        assert plot is not None
        assert re.findall(r"<title>([\d-]+): (\d+)</title>", plot.group(1)) == [
            ("2025-11-26", "1")]                        # NOW - 1 h, the seeded rejection
        assert ANN not in html
        assert "employee" not in html.lower()           # ops sees no punch data
    finally:
        await api.client.close()


def _reviews_of(store: SQLiteStore) -> list[dict[str, Any]]:
    return [json.loads(se.body) for se in store.entries()
            if se.entry.kind == "review" and se.body is not None]


async def test_d13_alert_forms_ack_resolve_and_refusals_shown_on_the_page(
        sqlite_store: SQLiteStore, tmp_path: Path) -> None:
    api, alert = await start_console(sqlite_store, tmp_path)
    form = f"/console/compliance/alerts/{alert}"
    try:
        resp = await api.call("GET", "/console/compliance", "auditor")
        html = await resp.text()
        assert f'<tr data-idx="{alert}" data-status="open">' in html
        assert "<form" not in html.split('id="alerts"')[1].split("</table>")[0]  # no review role
        assert "<svg" in html
        assert "No legal holds." in html
        resp = await api.call("GET", "/console/compliance", "reviewer2")
        assert f'action="{form}/ack"' in await resp.text()
        resp = await api.call("POST", f"{form}/ack", "reviewer2", data={"note": "seen"},
                              allow_redirects=False)
        assert (resp.status, resp.headers["Location"]) == (
            303, f"/console/compliance?done=ack-{alert}")
        resp = await api.call("GET", resp.headers["Location"], "reviewer2")
        html = await resp.text()
        assert f'<p id="flash" role="status">Alert {alert} acknowledged.</p>' in html
        assert f'action="{form}/resolve"' in html
        # the record's rules: not one's own action (SoD), not twice, a note
        for who, path, note, status, said in (
                ("reviewer2", "resolve", "done", 403, "segregation of duties"),
                ("reviewer", "ack", "again", 409, "was acknowledged by reviewer2"),
                ("reviewer", "resolve", "  ", 409, "note: must not be empty")):
            resp = await api.call("POST", f"{form}/{path}", who, data={"note": note},
                                  allow_redirects=False)
            html = await resp.text()
            assert resp.status == status, html
            assert said in html.split('id="error"')[1].split("</p>")[0], html
        assert [(r["event"], r["by"]) for r in _reviews_of(sqlite_store)] == [
            ("ack", "reviewer2")]                       # refusals recorded nothing
        resp = await api.call("POST", f"{form}/resolve", "auditor", data={"note": "x"})
        assert resp.status == 403
        resp = await api.call("POST", f"{form}/resolve", "reviewer", data={"note": "fixed"},
                              allow_redirects=False)
        assert resp.status == 303
        assert [(r["event"], r["by"]) for r in _reviews_of(sqlite_store)] == [
            ("ack", "reviewer2"), ("resolve", "reviewer")]
        await api.flush()
        forms = [(b["principal"], b["status"], b.get("outcome"))
                 for b in requests_of(sqlite_store) if b["method"] == "POST"]
        assert forms == [("reviewer2", 303, "allowed"), ("reviewer2", 403, "denied"),
                         ("reviewer", 409, "invalid"), ("reviewer", 409, "invalid"),
                         ("auditor", 403, "denied"), ("reviewer", 303, "allowed")]
    finally:
        await api.client.close()


async def test_d7_a_sessions_form_needs_its_csrf_token(sqlite_store: SQLiteStore,
                                                     tmp_path: Path) -> None:
    api, alert = await start_console(sqlite_store, tmp_path)
    try:
        cookie, csrf = session_cookie(api, "reviewer", ("audit.review",))
        jar = {"Cookie": f"{COOKIE}={cookie}"}
        resp = await api.call("GET", "/console/compliance", headers=jar)
        html = await resp.text()
        assert resp.status == 200, html
        assert f'name="csrf" value="{csrf}"' in html
        assert cookie not in html
        path = f"/console/compliance/alerts/{alert}/ack"
        for headers, data in (({"Origin": ORIGIN}, {"note": "seen"}),            # no token
                              ({"Origin": ORIGIN}, {"note": "seen", "csrf": "x" * 32}),
                              ({"Origin": "https://evil.example"},
                               {"note": "seen", "csrf": csrf}),
                              ({}, {"note": "seen", "csrf": csrf})):   # no Origin, no header
            resp = await api.call("POST", path, headers={**jar, **headers}, data=data,
                                  allow_redirects=False)
            assert resp.status == 403, (headers, data, await resp.text())
        assert _reviews_of(sqlite_store) == []
        resp = await api.call("POST", path, headers={**jar, "Origin": ORIGIN},
                              data={"note": "seen", "csrf": csrf}, allow_redirects=False)
        assert resp.status == 303, await resp.text()
        assert [(r["event"], r["by"]) for r in _reviews_of(sqlite_store)] == [
            ("ack", "reviewer")]
    finally:
        await api.client.close()


async def test_no_credential_in_any_page(sqlite_store: SQLiteStore, tmp_path: Path) -> None:
    api, _ = await start_console(sqlite_store, tmp_path)
    try:
        cookie, csrf = session_cookie(api, "hr-person", ("hr.read",))
        secrets = [*api.tokens.values(), cookie, "s3cret", ANN, BOB, CAT]
        bodies = []
        for who, page in (("hr-reader", "/console/hr"), ("payroll", "/console/hr/timesheets"),
                          ("auditor", "/console/compliance"), ("reviewer", "/console/compliance"),
                          ("ops", "/console/ops")):
            resp = await api.call("GET", page, who)
            assert resp.status == 200
            bodies.append(await resp.read())
        resp = await api.call("GET", "/console/hr", headers={"Cookie": f"{COOKIE}={cookie}"})
        assert resp.status == 200
        bodies.append(await resp.read())
        for body in bodies:
            for secret in secrets:
                assert secret.encode() not in body
                assert secret.split(":")[-1].encode() not in body
        assert csrf.encode() in bodies[-1]          # the form token, only in its own session
        assert all(csrf.encode() not in b for b in bodies[:-1])
    finally:
        await api.client.close()


async def test_d6_correction_forms_propose_and_approve_as_two_people(
        sqlite_store: SQLiteStore, tmp_path: Path) -> None:
    api, _ = await start_console(sqlite_store, tmp_path)
    try:
        resp = await api.call("GET", "/console/hr", "hr-reader")
        html = await resp.text()
        assert 'class="propose"' not in html            # hr.read alone proposes nothing
        resp = await api.call("GET", "/console/hr", "editor")
        html = await resp.text()
        assert html.count('<form class="propose"') == 1
        assert '<input type="hidden" name="device" value="clock-02"><input type="hidden" ' \
               'name="seq" value="3">' in html          # Cat's out without an in
        propose = {"device": "clock-02", "seq": "3", "field": "action", "after": "in",
                   "reason": "wrong-action", "note": "Cat pressed out for in"}
        for bad, status, said in (({"after": "sideways"}, 400, "after: action must be one of"),
                                  ({"seq": "99"}, 404, "no recorded punch clock-02#99"),
                                  ({"field": "ts", "after": "tomorrow"}, 400, "after:")):
            resp = await api.call("POST", "/console/hr/corrections", "editor",
                                  data={**propose, **bad}, allow_redirects=False)
            html = await resp.text()
            assert resp.status == status, html
            assert said in html.split('id="error"')[1], html
        # hr.correct without hr.read: the refusal as a problem document, not the HR page
        resp = await api.call("POST", "/console/hr/corrections", "editor2",
                              data={**propose, "seq": "99"}, allow_redirects=False)
        assert (resp.status, resp.headers["Content-Type"]) == (
            404, "application/problem+json; charset=utf-8")
        assert "ANN" not in await resp.text()
        resp = await api.call("POST", "/console/hr/corrections", "editor", data=propose,
                              allow_redirects=False)
        assert resp.status == 303, await resp.text()
        where = resp.headers["Location"]
        cid = where.split("done=proposed-")[1]
        resp = await api.call("GET", where, "approver")
        html = await resp.text()
        assert f"Correction {cid} proposed" in html
        assert f'action="/console/hr/corrections/{cid}/approve"' in html
        assert (await api.call("POST", f"/console/hr/corrections/{cid}/approve", "editor",
                               data={"note": "mine"})).status == 403     # no hr.approve
        resp = await api.call("POST", f"/console/hr/corrections/{cid}/approve", "approver",
                              data={"note": "checked the camera"}, allow_redirects=False)
        assert (resp.status, resp.headers["Location"]) == (
            303, f"/console/hr?done=approved-{cid}")
        resp = await api.call("POST", f"/console/hr/corrections/{cid}/reject", "approver",
                              data={}, allow_redirects=False)
        html = await resp.text()
        assert resp.status == 409, html                 # decided once: refused on the page
        assert cid in html.split('id="error"')[1]
        corrections = [json.loads(se.body) for se in sqlite_store.entries()
                       if se.entry.kind == "correction" and se.body is not None]
        assert [(c["device"], c["seq"], c["field"], c["after"]) for c in corrections] == [
            ("clock-02", 3, "action", "in")]
        resp = await api.call("GET", "/console/hr", "hr-reader")
        html = await resp.text()
        exceptions = re.search(r'<table id="exceptions">(.*?)</table>', html, re.S)
        assert exceptions is not None                   # corrected to an in, left open
        assert re.findall(r'data-kind="([\w-]+)"><td>[\d-]+</td><td>(\w+)</td>',
                          exceptions.group(1)) == [("missing-out", "CAT")]
    finally:
        await api.client.close()


# ---- one headless Chromium test: an HR officer signs in and opens /console/hr ------------

HR_USER: dict[str, Any] = {"sub": "u-3001", "username": "hana", "password": "hana-pw",
                           "groups": ["hr"], "employee_id": "E-3001", "mfa": False}


@pytest.mark.subprocess
def test_d7_browser_hr_officer_signs_in_and_sees_presence(
        oidc_provider: OIDCProvider, pki: TestPKI, tmp_path: Path,
        request: pytest.FixtureRequest) -> None:
    port = _free_port()
    base = f"https://127.0.0.1:{port}"
    oidc_provider.set_client(WEB_CLIENT, redirect_uris=[f"{base}/auth/callback"])
    oidc_provider.set_user(HR_USER["sub"], **{k: v for k, v in HR_USER.items() if k != "sub"})
    secret_file = tmp_path / "client-secret"
    secret_file.write_text(oidc_provider.secret(WEB_CLIENT) + "\n")
    secret_file.chmod(0o600)
    problems: list[str] = []
    section = read_oidc_section({
        "issuer": oidc_provider.issuer, "audience": oidc_provider.audience,
        "employee_claim": "employee_id", "roles": {"hr": ["hr.read"]},
        "client_id": WEB_CLIENT, "client_secret_file": str(secret_file),
        "redirect_uri": f"{base}/auth/callback"}, problems)
    assert section is not None, problems
    config = SigninConfig.load(section)
    assert config is not None
    store = SQLiteStore(tmp_path / "ledger.db")
    seed_console(store, tmp_path, now=now_us())
    api = ApiThread(ApiSection(cert=pki.server_cert_file, key=pki.server_key_file,
                               listen="127.0.0.1", port=port, oidc=section), store,
                    log_keys={}, signin=SignIn(config, OidcAuth(section)))
    api.start()
    try:
        for b in chromium_browser([pki.server_cert_file], tmp_path / "chromium"):
            for browser in screenshot_on_failure(request, b):
                browser.get(f"{base}/auth/login?next=/console/hr")
                browser.fill("#username", "hana")
                browser.fill("#password", "hana-pw")
                browser.click("#submit")
                browser.wait_element("table.presence")
                page = browser.text()
                assert "Signed in as hana" in page
                assert "ANN" in page
                assert "missing-in" in page
                assert "Timesheets" in page
                assert "Operations" not in page        # ops.devices is not hana's
                browser.step("console-hr")

        def viewed() -> list[dict[str, Any]]:
            reader = SQLiteStore(tmp_path / "ledger.db")
            try:
                return [b for b in requests_of(reader) if b["principal"] == "hana"
                        and b["path"] == "/console/hr" and b["status"] == 200]
            finally:
                reader.close()
        [entry] = wait_for(viewed, 60, "the access entry of hana's page view")
        assert (entry["auth"], entry["role"]) == ("session", "hr.read")
    finally:
        api.stop()
        store.close()


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])
