"""People sign in through OIDC in a real browser (issue 13 items 1 and 2; CONTROLS D7, D9, D10).

Real parts only: the certified ``oidc-provider`` on loopback (tests/fixtures/oidc_kit.py),
the collector's API over HTTPS with our test CA's server certificate (collector.api.app's
ApiThread, as ``serve`` runs it), a SQLite ledger, and Debian's headless Chromium
(tests/fixtures/chromium_kit.py). Every step of an acceptance line leaves a screenshot in
tests/artifacts/.

Session bounds are changed on the running API's session store after the sign-in (the store
reads them at every check), so no step of a sign-in has to beat a seconds-long timeout on a
slow machine; the tests then wait until the clock has passed a bound (tests/polling.wait_for)
and check the very next request.
"""

from __future__ import annotations

import http.cookiejar
import json
import re
import secrets
import socket
import ssl
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from collector.access.directory import Principals
from collector.access.oidc import OidcAuth, OidcSection, read_oidc_section
from collector.api.app import ApiThread
from collector.api.config import ApiSection
from collector.api.sessions import COOKIE, SessionSettings
from collector.api.signin import SignIn, SigninConfig
from collector.ledger.sqlite import SQLiteStore
from tests.collector.api_kit import access_bodies
from tests.fixtures.chromium_kit import Browser, chromium_browser, screenshot_on_failure
from tests.fixtures.oidc_kit import MFA_ACR, WEB_CLIENT, OIDCProvider
from tests.fixtures.pki import TestPKI
from tests.polling import wait_for
from wire.clock import now_us

pytestmark = [pytest.mark.subprocess]

LONG = SessionSettings(idle_s=3600, max_s=8 * 3600, revalidate_s=3600)
ENTRY_WAIT_S = 60.0
GROUPS = {"ops": ["ops.devices"], "admins": ["admin"], "auditors": ["audit.read"]}
USERS: dict[str, dict[str, Any]] = {
    # no MFA; maps to ops.devices and the privileged admin
    "carol": {"sub": "u-2001", "password": "carol-pw", "groups": ["ops", "admins"],
              "employee_id": "E-2001", "mfa": False},
    # MFA: the one-time code on the provider's second page
    "dave": {"sub": "u-2002", "password": "dave-pw", "groups": ["admins"],
             "employee_id": "E-2002", "mfa": True, "otp": "135790"},
    # no MFA, nothing privileged
    "erin": {"sub": "u-2003", "password": "erin-pw", "groups": ["auditors"],
             "employee_id": "E-2003", "mfa": False},
    # disabled here (token disable) by a test: nobody else signs in as frank
    "frank": {"sub": "u-2004", "password": "frank-pw", "groups": ["ops"],
              "employee_id": "E-2004", "mfa": False},
}


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@dataclass
class Site:
    base: str
    signin: SignIn
    provider: OIDCProvider
    ledger: Path
    tls: ssl.SSLContext

    def bounds(self, **kw: int) -> None:
        """Change the running store's session bounds (read at every check)."""
        self.signin.sessions.settings = SessionSettings(
            **{"idle_s": LONG.idle_s, "max_s": LONG.max_s, "revalidate_s": LONG.revalidate_s,
               **kw})

    def sessions_events(self, principal: str) -> list[dict[str, Any]]:
        reader = SQLiteStore(self.ledger)
        try:
            return [b for b in access_bodies(reader)
                    if b.get("type") == "session" and b.get("principal") == principal]
        finally:
            reader.close()

    def requests_of(self, principal: str) -> list[dict[str, Any]]:
        reader = SQLiteStore(self.ledger)
        try:
            return [b for b in access_bodies(reader)
                    if b.get("type") == "request" and b.get("principal") == principal]
        finally:
            reader.close()

    def wait_event(self, principal: str, event: str, **match: Any) -> dict[str, Any]:
        def found() -> dict[str, Any] | None:
            for b in self.sessions_events(principal):
                if b["event"] == event and all(b.get(k) == v for k, v in match.items()):
                    return b
            return None
        got = wait_for(found, ENTRY_WAIT_S, f"a {event} entry of {principal} {match}")
        assert got is not None      # wait_for returns only a truthy value
        return got

    def call(self, method: str, path: str, *, cookie: str | None = None,
             headers: dict[str, str] | None = None, data: bytes | None = None
             ) -> tuple[int, str, dict[str, str]]:
        """One HTTPS request outside the browser (status, body, headers); no redirects."""
        h = dict(headers or {})
        if cookie is not None:
            h["Cookie"] = f"{COOKIE}={cookie}"
        opener = urllib.request.build_opener(urllib.request.HTTPSHandler(context=self.tls),
                                             _NoRedirect())
        req = urllib.request.Request(self.base + path, data=data, headers=h,  # noqa: S310 - our https base
                                     method=method)
        try:
            with opener.open(req, timeout=30) as r:
                return r.status, r.read().decode(), dict(r.headers)
        except urllib.error.HTTPError as e:
            return e.code, e.read().decode(), dict(e.headers)


class _NoRedirect(urllib.request.HTTPRedirectHandler):
    def redirect_request(self, *_a: Any, **_k: Any) -> None:
        return None


def oidc_section(provider: OIDCProvider, base: str, secret_file: Path) -> OidcSection:
    """``[oidc]`` as an operator writes it (docs/operations.md), read by the real reader."""
    problems: list[str] = []
    section = read_oidc_section({
        "issuer": provider.issuer, "audience": provider.audience,
        "employee_claim": "employee_id", "mfa_acr": [MFA_ACR],
        "roles": GROUPS, "client_id": WEB_CLIENT, "client_secret_file": str(secret_file),
        "redirect_uri": f"{base}/auth/callback", "session_idle_s": LONG.idle_s,
        "session_max_s": LONG.max_s, "revalidate_s": LONG.revalidate_s}, problems)
    assert section is not None, problems
    return section


@pytest.fixture(scope="module")
def site(oidc_provider: OIDCProvider, pki: TestPKI,
         tmp_path_factory: pytest.TempPathFactory) -> Iterator[Site]:
    root = tmp_path_factory.mktemp("signin")
    port = _free_port()
    base = f"https://127.0.0.1:{port}"
    secret_file = oidc_provider.web_site(base, USERS, root)
    section = oidc_section(oidc_provider, base, secret_file)
    config = SigninConfig.load(section)
    assert config is not None
    assert (config.sessions.idle_s, config.sessions.max_s) == (LONG.idle_s, LONG.max_s)
    signin = SignIn(config, OidcAuth(section))
    ledger = root / "ledger.db"
    store = SQLiteStore(ledger)
    api = ApiThread(ApiSection(cert=pki.server_cert_file, key=pki.server_key_file,
                               listen="127.0.0.1", port=port, oidc=section), store,
                    log_keys={}, signin=signin)
    api.start()
    try:
        yield Site(base, signin, oidc_provider, ledger,
                   ssl.create_default_context(cafile=str(pki.ca_file)))
    finally:
        api.stop()
        store.close()


@pytest.fixture(scope="module")
def chromium(site: Site, pki: TestPKI, tmp_path_factory: pytest.TempPathFactory
             ) -> Iterator[Browser]:
    yield from chromium_browser([pki.server_cert_file], tmp_path_factory.mktemp("chromium"))


@pytest.fixture
def browser(request: pytest.FixtureRequest, chromium: Browser, site: Site) -> Iterator[Browser]:
    site.bounds()
    yield from screenshot_on_failure(request, chromium)
    site.bounds()


def sign_in(b: Browser, site: Site, name: str, *, otp: str | None = None,
            next_path: str = "/console/") -> None:
    """Through the provider's own login page, back to the console."""
    b.get(f"{site.base}/auth/login?next={urllib.parse.quote(next_path)}")
    b.fill("#username", name)
    b.fill("#password", USERS[name]["password"])
    b.step("provider-login")
    b.click("#submit")
    if otp is not None:
        b.wait_text("enter the one-time code")
        b.fill("#password", USERS[name]["password"])
        b.fill("#otp", otp)
        b.step("provider-one-time-code")
        b.click("#submit")
    if next_path == "/console/":
        b.wait_element("#principal")
        b.step("console")


def me(b: Browser, site: Site) -> dict[str, Any]:
    b.get(f"{site.base}/auth/me")
    body: dict[str, Any] = json.loads(b.wait_element("pre").text)
    return body


def session_cookie(b: Browser) -> dict[str, Any]:
    got = [c for c in b.cookies() if c["name"] == COOKIE]
    assert len(got) == 1, got
    return got[0]


def test_d7_signin_without_mfa_grants_exactly_the_non_privileged_roles(browser: Browser,
                                                                       site: Site) -> None:
    sign_in(browser, site, "carol")
    page = browser.text()
    assert "Signed in as carol" in page
    assert "MFA required" in page
    assert "admin" in page
    info = me(browser, site)
    browser.step("auth-me")
    assert info["principal"] == "carol"
    assert info["roles"] == ["ops.devices"]
    assert info["mfa_required_for"] == ["admin"]
    assert (info["mfa"], info["employee_id"], info["sites"]) == (False, "E-2001", None)
    s = info["session"]
    assert s["absolute_expires_at"] - s["created_at"] == LONG.max_s * 1_000_000
    cookie = session_cookie(browser)
    assert (cookie["httpOnly"], cookie["secure"], cookie["sameSite"], cookie["path"]) == \
        (True, True, "Strict", "/")
    # the privileged endpoint: refused, and the refusal says why
    browser.get(f"{site.base}/v1/principals")
    browser.step("privileged-endpoint-refused")
    problem = json.loads(browser.wait_element("pre").text)
    assert (problem["status"], problem["title"]) == (403, "MFA required")
    assert "MFA required" in problem["detail"]
    assert "admin" in problem["detail"]
    browser.get(f"{site.base}/v1/devices")          # the granted role works
    assert "items" in json.loads(browser.wait_element("pre").text)
    signed = site.wait_event("carol", "sign-in")
    assert (signed["roles"], signed["withheld"], signed["mfa"]) == (["ops.devices"],
                                                                    ["admin"], False)
    assert COOKIE not in json.dumps(signed)
    assert "refresh" not in json.dumps(signed)

    def recorded() -> list[tuple[str, int, str, str]]:
        return [(r["path"], r["status"], r["auth"], r["outcome"])
                for r in site.requests_of("carol") if r["path"].startswith("/v1/")]
    got = wait_for(lambda: len(recorded()) >= 2 and recorded(), ENTRY_WAIT_S,
                   "carol's two API requests on the ledger")
    assert got == [("/v1/principals", 403, "session", "denied"),
                   ("/v1/devices", 200, "session", "allowed")]


def test_d7_mfa_user_enters_the_code_and_is_granted_the_privileged_role(browser: Browser,
                                                                        site: Site) -> None:
    sign_in(browser, site, "dave", otp=USERS["dave"]["otp"])
    assert "MFA required" not in browser.text()
    info = me(browser, site)
    browser.step("auth-me")
    assert (info["principal"], info["roles"], info["mfa_required_for"], info["mfa"]) == \
        ("dave", ["admin"], [], True)
    browser.get(f"{site.base}/v1/principals")
    browser.step("privileged-endpoint-allowed")
    assert "items" in json.loads(browser.wait_element("pre").text)
    assert site.wait_event("dave", "sign-in")["roles"] == ["admin"]


def test_d10_idle_timeout_ends_the_session(browser: Browser, site: Site) -> None:
    sign_in(browser, site, "erin")
    info = me(browser, site)
    cookie = session_cookie(browser)["value"]
    site.bounds(idle_s=2)
    last_use = info["session"]["idle_expires_at"] - LONG.idle_s * 1_000_000
    wait_for(lambda: now_us() >= last_use + 2_000_000, 60, "the idle bound to pass")
    status, body, _ = site.call("GET", "/auth/me", cookie=cookie)
    assert status == 401, body
    assert re.search(r"session ended \(idle timeout\)|no such session", body), body
    ended = site.wait_event("erin", "expired", reason="idle", session=info["session"]["ref"])
    assert ended["at"] >= ended["last_seen_at"] + 2_000_000
    status, _, headers = site.call("GET", "/console/", cookie=cookie)
    assert (status, headers["Location"]) == (302, "/auth/login?next=/console/")
    browser.get(f"{site.base}/auth/me")
    browser.step("after-idle-timeout")
    assert json.loads(browser.wait_element("pre").text)["status"] == 401


def test_d10_absolute_lifetime_ends_a_session_in_use(browser: Browser, site: Site) -> None:
    sign_in(browser, site, "erin")
    info = me(browser, site)
    cookie = session_cookie(browser)["value"]
    site.bounds(max_s=3)
    end = info["session"]["created_at"] + 3_000_000
    wait_for(lambda: now_us() >= end, 60, "the absolute bound to pass")
    status, body, _ = site.call("GET", "/auth/me", cookie=cookie)
    assert status == 401, body
    assert re.search(r"session ended \(absolute lifetime\)|no such session", body), body
    ended = site.wait_event("erin", "expired", reason="absolute",
                            session=info["session"]["ref"])
    assert ended["at"] >= ended["created_at"] + 3_000_000
    assert ended["last_seen_at"] > ended["created_at"]     # it was in use: idle is not why
    browser.get(f"{site.base}/auth/me")
    browser.step("after-absolute-lifetime")
    assert json.loads(browser.wait_element("pre").text)["status"] == 401


def test_d9_user_disabled_at_the_provider_loses_the_session_within_the_revalidation_bound(
        browser: Browser, site: Site) -> None:
    sign_in(browser, site, "erin")
    ref = me(browser, site)["session"]["ref"]
    cookie = session_cookie(browser)["value"]
    site.bounds(revalidate_s=1)
    # an enabled user passes the re-validation (a real refresh-token grant)
    t0 = now_us()
    wait_for(lambda: now_us() >= t0 + 1_000_000, 60, "the re-validation bound to pass")
    status, body, _ = site.call("GET", "/auth/me", cookie=cookie)
    assert status == 200, body
    assert json.loads(body)["session"]["revalidated_at"] >= t0 + 1_000_000
    site.provider.disable("erin")
    try:
        disabled_at = now_us()
        wait_for(lambda: now_us() >= disabled_at + 1_000_000, 60,
                 "the re-validation bound to pass after the disable")
        status, body, _ = site.call("GET", "/auth/me", cookie=cookie)
        assert status == 401, body
        assert "no longer confirms this session" in body
        refused = site.wait_event("erin", "revalidation-refused", session=ref)
        assert refused["reason"].startswith("invalid_grant")
        status, body, _ = site.call("GET", "/auth/me", cookie=cookie)
        assert (status, "no such session" in body) == (401, True)
        browser.get(f"{site.base}/auth/me")
        browser.step("after-disable")
    finally:
        site.provider.disable("erin", disabled=False)


def test_d9_groups_removed_or_principal_disabled_end_the_session_at_revalidation(
        browser: Browser, site: Site) -> None:
    # (a) erin leaves the auditors group at the provider: the next re-validation finds the
    # claims map to none of the session's roles
    sign_in(browser, site, "erin")
    ref = me(browser, site)["session"]["ref"]
    cookie = session_cookie(browser)["value"]
    site.bounds(revalidate_s=1)
    site.provider.set_user(USERS["erin"]["sub"], groups=[])
    try:
        changed_at = now_us()
        wait_for(lambda: now_us() >= changed_at + 1_000_000, 60, "the re-validation bound")
        status, body, _ = site.call("GET", "/auth/me", cookie=cookie)
        assert status == 401, body
        refused = site.wait_event("erin", "revalidation-refused", session=ref)
        assert "none of the session's roles" in refused["reason"]
    finally:
        site.provider.set_user(USERS["erin"]["sub"], groups=USERS["erin"]["groups"])
    # (b) the collector's own switch: token disable refuses the principal at the next one
    site.bounds()
    browser.clear_cookies()
    sign_in(browser, site, "frank")
    ref = me(browser, site)["session"]["ref"]
    cookie = session_cookie(browser)["value"]
    site.bounds(revalidate_s=1)
    writer = SQLiteStore(site.ledger)
    try:
        Principals(writer).disable("frank", actor="cli:test", now_us=now_us())
    finally:
        writer.close()
    disabled_at = now_us()
    wait_for(lambda: now_us() >= disabled_at + 1_000_000, 60, "the re-validation bound")
    status, body, _ = site.call("GET", "/auth/me", cookie=cookie)
    assert status == 401, body
    refused = site.wait_event("frank", "revalidation-refused", session=ref)
    assert refused["reason"] == "principal frank is disabled"
    # and a new sign-in of the disabled principal is refused, on the ledger too
    browser.clear_cookies()
    sign_in(browser, site, "frank", next_path="/auth/me")
    browser.wait_text("frank cannot sign in: principal frank is disabled")
    browser.step("disabled-principal-refused")
    assert site.wait_event("frank", "sign-in-refused")["reason"] == \
        "principal frank is disabled"


def test_d7_d10_logout_ends_the_session(browser: Browser, site: Site) -> None:
    sign_in(browser, site, "erin")
    first = me(browser, site)["session"]["ref"]
    first_cookie = session_cookie(browser)["value"]
    # signing in again in the same browser (the provider's session still open: no form)
    # replaces the browser's session
    browser.get(f"{site.base}/auth/login")
    browser.wait_element("#principal")
    ref = me(browser, site)["session"]["ref"]
    assert ref != first
    assert site.wait_event("erin", "ended", session=first)["reason"] == "replaced"
    assert site.call("GET", "/auth/me", cookie=first_cookie)[0] == 401
    browser.back()
    cookie = session_cookie(browser)["value"]
    browser.click("#logout")
    browser.wait_text("You are signed out")
    browser.step("signed-out")
    assert [c for c in browser.cookies() if c["name"] == COOKIE] == []
    status, body, _ = site.call("GET", "/auth/me", cookie=cookie)    # the old cookie: dead
    assert (status, "no such session" in body) == (401, True)
    site.wait_event("erin", "sign-in", session=ref)
    assert site.wait_event("erin", "sign-out", session=ref)["roles"] == ["audit.read"]


def test_d7_cross_site_requests_with_the_session_cookie_are_refused(browser: Browser,
                                                                    site: Site) -> None:
    sign_in(browser, site, "carol")
    cookie = session_cookie(browser)["value"]
    status, body, _ = site.call("POST", "/auth/logout", cookie=cookie,
                                headers={"Origin": "https://evil.example"})
    assert status == 403, body
    assert "is not this API's" in body
    status, body, _ = site.call("POST", "/v1/tokens", cookie=cookie, data=b"{}",
                                headers={"Content-Type": "application/json"})
    assert status == 403, body
    assert "needs Origin" in body
    status, body, _ = site.call("GET", "/auth/me", cookie=cookie)     # still signed in
    assert status == 200, body


def test_d7_replayed_or_forged_callback_and_injected_code_are_refused(browser: Browser,
                                                                      site: Site) -> None:
    sign_in(browser, site, "erin")
    callbacks = [u for u in browser.requested_urls()
                 if u.startswith(f"{site.base}/auth/callback?")]
    assert len(callbacks) == 1, callbacks
    browser.get(callbacks[0])                       # (2) the state was used: replay refused
    browser.step("replayed-callback")
    assert "unknown, already used or expired sign-in state" in browser.text()
    browser.get(f"{site.base}/auth/callback?code=made-up&state={secrets.token_urlsafe(24)}")
    assert "unknown, already used or expired sign-in state" in browser.text()
    # (3) a code issued to another sign-in (its PKCE verifier) pasted under this one's state
    code, _ = provider_code(site, "erin")
    state_a = start_login(site)
    status, body, _ = site.call(
        "GET", f"/auth/callback?{urllib.parse.urlencode({'code': code, 'state': state_a})}")
    assert status == 400, body
    assert "refused the code" in body
    # local paths only
    for bad in ("https://evil.example/", "//evil.example/x", "/\\evil.example"):
        status, body, _ = site.call("GET", f"/auth/login?next={urllib.parse.quote(bad)}")
        assert status == 400, (bad, body)
        assert "next must be a local path" in body
    # the authorization code never reaches the ledger
    assert code not in json.dumps(site.requests_of("anonymous"))
    reader = SQLiteStore(site.ledger)
    try:
        assert all(code not in json.dumps(b) for b in access_bodies(reader))
    finally:
        reader.close()


def start_login(site: Site) -> str:
    """GET /auth/login: the state of the sign-in it started (from the redirect)."""
    status, body, headers = site.call("GET", "/auth/login")
    assert status == 302, body
    query = dict(urllib.parse.parse_qsl(urllib.parse.urlsplit(headers["Location"]).query))
    return query["state"]


def provider_code(site: Site, name: str) -> tuple[str, str]:
    """A sign-in started at the API and completed at the provider without a browser: the
    (code, state) the provider sends back, not given to the API."""
    _, _, headers = site.call("GET", "/auth/login")
    jar = http.cookiejar.CookieJar()
    landed: list[str] = []

    class Stop(urllib.request.HTTPRedirectHandler):
        def redirect_request(self, req: Any, fp: Any, code: int, msg: str, hdrs: Any,  # noqa: PLR0917 - urllib's signature
                             newurl: str) -> urllib.request.Request | None:
            if newurl.startswith(site.base):
                landed.append(newurl)
                return None
            return super().redirect_request(req, fp, code, msg, hdrs, newurl)

    opener = urllib.request.build_opener(urllib.request.HTTPCookieProcessor(jar), Stop())

    def fetch(url: str, data: dict[str, str] | None = None) -> str:
        body = None if data is None else urllib.parse.urlencode(data).encode()
        try:
            req = urllib.request.Request(url, data=body)  # noqa: S310 - the loopback provider
            with opener.open(req, timeout=30) as r:
                return str(r.read().decode())
        except urllib.error.HTTPError as e:
            if landed:
                return ""
            raise AssertionError(f"the provider answered {e.code}: {e.read()[:300]!r}") from e

    page = fetch(headers["Location"])
    action = re.search(r'action="([^"]+)"', page)
    assert action is not None, page
    fetch(urllib.parse.urljoin(site.provider.issuer + "/", action.group(1)),
          {"username": name, "password": USERS[name]["password"]})
    assert landed, "the provider did not come back to the API"
    q = dict(urllib.parse.parse_qsl(urllib.parse.urlsplit(landed[0]).query))
    return q["code"], q["state"]
