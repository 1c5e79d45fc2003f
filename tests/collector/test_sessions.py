"""Sign-in sessions without a browser (collector.api.sessions, collector.api.signin; D7, D10):
the session store's bounds on an injected clock, single-use login states, the ``next`` rule,
the ``[oidc]`` sign-in keys and the application's wiring. The browser tests are
tests/collector/test_signin_browser.py."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from collector import ConfigError
from collector.access.oidc import OidcAuth, read_oidc_section
from collector.api import ApiSettings
from collector.api.errors import BadRequestError
from collector.api.sessions import (
    COOKIE,
    LoginState,
    LoginStates,
    SessionSettings,
    SessionStore,
)
from collector.api.signin import SIGNIN, SigninConfig
from collector.api.views_signin import local_next
from collector.ledger.sqlite import SQLiteStore
from tests.collector.api_kit import access_bodies, start_api
from tests.polling import await_for

S = 1_000_000
T0 = 1_764_000_000 * S


def new_session(store: SessionStore, now: int = T0, **kw: Any) -> tuple[str, Any]:
    args: dict[str, Any] = {"principal": "carol", "subject": "ab" * 16,
                            "roles": frozenset({"ops.devices"}),
                            "withheld": frozenset({"admin"}), "employee_id": "E-1",
                            "sites": None, "mfa": False, "refresh_token": "rt-1", **kw}
    sid, s, ended = store.create(now_us=now, **args)
    assert ended == []
    return sid, s


def test_d10_idle_timeout_moves_with_use_the_absolute_lifetime_never() -> None:
    store = SessionStore(SessionSettings(idle_s=60, max_s=150, revalidate_s=30))
    sid, s = new_session(store)
    assert store.get(sid, T0 + 59 * S)[0] is not None
    store.touch(sid, T0 + 59 * S)
    got, ended = store.get(sid, T0 + 118 * S)          # idle ends 60 s after the last use
    assert (got is not None, ended) == (True, None)
    store.touch(sid, T0 + 118 * S)
    got, ended = store.get(sid, T0 + 150 * S)          # in use, yet the absolute end holds
    assert got is None
    assert ended is not None
    assert ended.reason == "absolute"
    assert store.get(sid, T0 + 151 * S) == (None, None)     # removed with its end


def test_d10_idle_session_ends_and_the_sweep_reports_it_once() -> None:
    store = SessionStore(SessionSettings(idle_s=60, max_s=3600, revalidate_s=30))
    sid, s = new_session(store)
    other, _ = new_session(store, now=T0 + 30 * S)
    assert store.sweep(T0 + 59 * S) == []
    ended = store.sweep(T0 + 60 * S)
    assert [(e.session.ref, e.reason) for e in ended] == [(s.ref, "idle")]
    assert store.sweep(T0 + 61 * S) == []
    assert store.get(sid, T0 + 61 * S) == (None, None)
    assert store.get(other, T0 + 61 * S)[0] is not None


def test_d7_session_ids_are_random_never_kept_and_capacity_ends_the_oldest() -> None:
    store = SessionStore(SessionSettings(sessions_max=2))
    a, sa = new_session(store)
    b, _ = new_session(store)
    assert len({a, b}) == 2
    assert len(a) >= 43
    assert a not in repr(vars(store))
    assert sa.ref not in a
    _, _, ended = store.create(principal="x", subject="y", roles=frozenset(),
                               withheld=frozenset(), employee_id=None, sites=None, mfa=False,
                               refresh_token=None, now_us=T0 + 1)
    assert [(e.session.ref, e.reason) for e in ended] == [(sa.ref, "capacity")]
    assert store.get(a, T0 + 2) == (None, None)


def test_d9_revalidation_only_narrows_roles_and_keeps_the_refresh_token() -> None:
    store = SessionStore(SessionSettings(revalidate_s=30))
    sid, s = new_session(store, roles=frozenset({"ops.devices", "audit.read"}))
    assert not s.revalidation_due(store.settings, T0 + 29 * S)
    assert s.revalidation_due(store.settings, T0 + 30 * S)
    s2 = store.revalidated(sid, T0 + 30 * S, roles=frozenset({"audit.read", "admin"}),
                           refresh_token=None)
    assert s2 is not None
    assert (s2.roles, s2.revalidated_at, s2.refresh_token) == (
        frozenset({"audit.read"}), T0 + 30 * S, "rt-1")
    assert store.end(sid) is not None
    assert store.end(sid) is None


def test_d7_login_state_is_single_use_expires_and_is_bounded() -> None:
    states = LoginStates(max_pending=3, ttl_s=600)
    a = states.start("/console/", T0)
    assert states.take("forged", T0) is None
    assert states.take(a.state, T0 + S) == a
    assert states.take(a.state, T0 + S) is None                 # replayed callback
    b = states.start("/x", T0)
    assert states.take(b.state, T0 + 600 * S) is None           # expired
    first = [states.start("/", T0 + 601 * S + i) for i in range(4)]
    assert len(states) == 3
    assert states.take(first[0].state, T0 + 602 * S) is None
    assert len({a.state, a.nonce, a.verifier}) == 3
    assert 43 <= len(a.verifier) <= 128


def test_d7_pkce_challenge_is_rfc7636_s256() -> None:
    ls = LoginState(state="s", nonce="n", verifier="dBjftJeZ4CVP-mB92K27uhbUJU1p1r_wW1gFWFOEjXk",
                    next_path="/", created_at=0)
    assert ls.challenge == "E9Melhoa2OwvFrEMTJguCHaoeK1t8URWbuGJSstw-cM"   # RFC 7636 App. B


@pytest.mark.parametrize(("value", "expect"), [
    (None, "/console/"), ("", "/console/"), ("/console/", "/console/"),
    ("/v1/punches?limit=5", "/v1/punches?limit=5"),
    ("https://evil.example/", None), ("//evil.example/x", None), ("/\\evil.example", None),
    ("evil.example", None), ("/a\nb", None), ("/" + "a" * 600, None),
    ("javascript:alert(1)", None),
])
def test_d7_next_is_a_local_path_only(value: str | None, expect: str | None) -> None:
    if expect is None:
        with pytest.raises(BadRequestError, match="next must be a local path"):
            local_next(value)
    else:
        assert local_next(value) == expect


BASE = {"issuer": "https://idp.example", "audience": "https://api.example"}
SIGNIN_KEYS = {"client_id": "timeclock-web", "client_secret_file": "/etc/timeclock/web-secret",
               "redirect_uri": "https://collector.example:8443/auth/callback"}


@pytest.mark.parametrize(("extra", "problems"), [
    ({"client_id": "timeclock-web"},
     ["oidc.client_secret_file: required (sign-in needs client_id, client_secret_file and "
      "redirect_uri)", "oidc.redirect_uri: required (sign-in needs client_id, "
      "client_secret_file and redirect_uri)"]),
    ({**SIGNIN_KEYS, "client_secret_file": "web-secret"},
     ["oidc.client_secret_file: must be an absolute path, got 'web-secret'"]),
    ({**SIGNIN_KEYS, "redirect_uri": "http://collector.example/auth/callback"},
     ["oidc.redirect_uri: must be https://<the API's host[:port]>/auth/callback, got "
      "'http://collector.example/auth/callback'"]),
    ({**SIGNIN_KEYS, "session_idle_s": 7200, "session_max_s": 3600},
     ["oidc.session_idle_s: must not exceed session_max_s"]),
    ({**SIGNIN_KEYS, "revalidate_s": 0, "client_secret": "oops"},
     ["oidc.revalidate_s: must be between 1 and 86400, got 0",
      "oidc.client_secret: unknown key"]),
])
def test_d7_d10_signin_keys_are_read_strictly(extra: dict[str, Any], problems: list[str]
                                              ) -> None:
    got: list[str] = []
    assert read_oidc_section({**BASE, **extra}, got) is None
    assert [p.split(" (allowed:")[0] for p in got] == problems


def test_d10_signin_keys_defaults_and_the_secret_file(tmp_path: Path) -> None:
    got: list[str] = []
    section = read_oidc_section({**BASE, **SIGNIN_KEYS,
                                 "client_secret_file": str(tmp_path / "secret")}, got)
    assert section is not None, got
    assert (section.session_idle_s, section.session_max_s, section.revalidate_s) == (
        900, 28_800, 60)
    assert SigninConfig.load(read_oidc_section(BASE, [])) is None      # type: ignore[arg-type]
    with pytest.raises(ConfigError, match="oidc.client_secret_file: cannot read"):
        SigninConfig.load(section)
    (tmp_path / "secret").write_text("two\nlines\n")
    with pytest.raises(ConfigError, match="must hold the client secret on one line"):
        SigninConfig.load(section)
    (tmp_path / "secret").write_text("s3cret\n")
    config = SigninConfig.load(section)
    assert config is not None
    assert config.client_secret == "s3cret"  # noqa: S105 - the test's own file
    assert "s3cret" not in repr(config)
    assert config.origin == "https://collector.example:8443"


async def test_d7_app_wires_signin_from_oidc_and_refuses_dead_cookies(tmp_path: Path,
                                                                      sqlite_store: SQLiteStore
                                                                      ) -> None:
    (tmp_path / "secret").write_text("s3cret\n")
    # a provider nobody serves: sign-in is configured, the provider unreachable
    section = read_oidc_section({"issuer": "http://127.0.0.1:9", "audience": "a",
                                 **SIGNIN_KEYS, "client_secret_file": str(tmp_path / "secret"),
                                 "http_timeout_s": 1}, [])
    assert section is not None
    api = await start_api(sqlite_store, settings=ApiSettings(oidc=OidcAuth(section)))
    try:
        assert SIGNIN in api.client.server.app
        resp = await api.call("GET", "/auth/login")
        assert resp.status == 503
        assert "cannot be reached" in await resp.text()
        for method, path in (("GET", "/auth/me"), ("POST", "/v1/tokens")):
            resp = await api.call(method, path, headers={"Cookie": f"{COOKIE}=made-up"},
                                  json={})
            assert resp.status == 401, path
            assert "no such session" in await resp.text()
        resp = await api.call("GET", "/console/", allow_redirects=False)
        assert (resp.status, resp.headers["Location"]) == (302, "/auth/login?next=/console/")
    finally:
        await api.client.close()
    plain = await start_api(SQLiteStore(tmp_path / "other.db"))
    try:
        assert SIGNIN not in plain.client.server.app
        for method, path in (("GET", "/auth/login"), ("GET", "/auth/me"),
                             ("GET", "/console/"), ("POST", "/auth/logout")):
            resp = await plain.call(method, path)
            assert resp.status == 404, path
            assert "sign-in is not configured" in await resp.text()
    finally:
        await plain.client.close()


async def test_d10_the_sweep_records_a_session_that_ran_out_unused(tmp_path: Path,
                                                                   sqlite_store: SQLiteStore
                                                                   ) -> None:
    (tmp_path / "secret").write_text("s3cret\n")
    section = read_oidc_section({"issuer": "http://127.0.0.1:9", "audience": "a",
                                 **SIGNIN_KEYS, "client_secret_file": str(tmp_path / "secret"),
                                 "session_idle_s": 1, "session_max_s": 60}, [])
    assert section is not None
    api = await start_api(sqlite_store, settings=ApiSettings(oidc=OidcAuth(section)))
    try:
        signin = api.client.server.app[SIGNIN]
        _, s = new_session(signin.sessions, now=api.clock.now)
        api.clock.advance(2)          # idle for longer than session_idle_s, no request

        reader = SQLiteStore(tmp_path / "ledger.db")      # sqlite_store's file, own handle

        def expired() -> list[dict[str, Any]]:
            return [b for b in access_bodies(reader)
                    if b.get("type") == "session" and b.get("session") == s.ref]
        try:
            got = await await_for(expired, 60, "the sweep's expired entry")
        finally:
            reader.close()
        assert [(b["event"], b["reason"], b["principal"]) for b in got] == [
            ("expired", "idle", "carol")]
        assert len(signin.sessions) == 0
    finally:
        await api.client.close()
