"""JWT access tokens of a real OIDC provider at the real API (collector.access.oidc).

The provider is the certified ``oidc-provider`` for Node.js started by tests/fixtures/oidc_kit.py
(one per module, plus the short-lived ones a test asks for): every token here was issued by
it, and the refused ones are real tokens checked by the wrong collector, at a later time, from
another provider, or altered the way an attacker would (alg none, HS256, a changed claim or
signature). CONTROLS D7 (authentication, MFA for privileged roles), D9 (leavers), D10
(absolute token lifetime).
"""

from __future__ import annotations

import base64
import json
import re
import time
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import pytest

from collector import ConfigError
from collector.access.directory import Principals
from collector.access.oidc import (
    ACTION,
    OidcAuth,
    OidcSection,
    OidcTokenError,
    principal_name,
    read_oidc_section,
)
from collector.access.principals import ROLES
from collector.api import ApiSettings
from collector.api.keys import SETTINGS
from collector.cli.main import main as cli_main
from collector.ledger.sqlite import SQLiteStore
from collector.service.config import parse_config
from tests.collector.api_kit import Api, access_bodies, requests_of, seed, start_api
from tests.collector.ledger_kit import seeded_key
from tests.fixtures.oidc_kit import MFA_ACR, OIDCFlowError, OIDCProvider
from tests.polling import await_for
from wire.ledger import Checkpoint

MAPPING: dict[str, Any] = {
    "employee_claim": "employee_id",
    "roles": {"hr-officers": ["hr.read"], "hr-approvers": ["hr.approve"],
              "hr-editors": ["hr.correct"], "auditors": ["audit.read"]},
    "client_roles": {"payroll-app": ["payroll.export"], "audit-app": ["audit.read"]},
    "group_sites": {"hr-officers": ["hq"]},
    "mfa_roles": ["hr.approve"],
    "mfa_acr": [MFA_ACR],
    "mfa_amr": ["otp"],
}


def section(provider: OIDCProvider, **over: Any) -> OidcSection:
    problems: list[str] = []
    got = read_oidc_section({"issuer": provider.issuer, "audience": provider.audience,
                             **MAPPING, **over}, problems)
    assert problems == []
    assert got is not None
    return got


async def oidc_api(store: SQLiteStore, provider: OIDCProvider, *,
                   wall: Callable[[], float] = time.time, **over: Any) -> Api:
    auth = OidcAuth(section(provider, **over), wall=wall)
    return await start_api(store, settings=ApiSettings(oidc=auth), clocks=seed(store))


@pytest.fixture
async def api(sqlite_store: SQLiteStore, oidc_provider: OIDCProvider) -> AsyncIterator[Api]:
    a = await oidc_api(sqlite_store, oidc_provider)
    try:
        yield a
    finally:
        await a.client.close()


def bearer(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).decode().rstrip("=")


def _unb64(part: str) -> bytes:
    return base64.urlsafe_b64decode(part + "=" * (-len(part) % 4))


def parts(token: str) -> tuple[dict[str, Any], dict[str, Any], str]:
    h, p, sig = token.split(".")
    return json.loads(_unb64(h)), json.loads(_unb64(p)), sig


def forge(token: str, *, header: dict[str, Any] | None = None,
          payload: dict[str, Any] | None = None, sig: str | None = None) -> str:
    h, p, s = token.split(".")
    return ".".join((h if header is None else _b64(json.dumps(header).encode()),
                     p if payload is None else _b64(json.dumps(payload).encode()),
                     s if sig is None else sig))


def oidc_entries(api: Api) -> list[dict[str, Any]]:
    return [b for b in access_bodies(api.store) if b.get("action") == ACTION]


async def problem(resp: Any) -> str:
    body = await resp.json()
    return str(body["detail"])


# -- D7: machine clients ------------------------------------------------------------------

@pytest.mark.subprocess      # the provider is a node process
async def test_d7_payroll_client_with_a_jwt_exports_payroll(
        api: Api, oidc_provider: OIDCProvider) -> None:
    token = oidc_provider.machine_token("payroll-app")
    resp = await api.client.get("/v1/exports/payroll?format=csv&device=clock-00",
                                headers=bearer(token))
    assert resp.status == 200, await resp.text()
    lines = (await resp.text()).splitlines()
    assert json.loads(lines[-1][2:])["trailer"]["rows"] == 5
    again = await api.client.get("/v1/exports/payroll?format=ndjson", headers=bearer(token))
    assert again.status == 200
    assert json.loads((await again.text()).splitlines()[-1])["trailer"]["rows"] == 10
    await api.flush()
    # The access entries name the principal of the JWT, authenticated by OIDC.
    exports = [r for r in requests_of(api.store) if r["route"] == "/v1/exports/payroll"]
    assert [(r["principal"], r["auth"], r["role"], r["status"]) for r in exports] == [
        ("payroll-app", "oidc", "payroll.export", 200)] * 2
    # First seen: one oidc-roles entry, not one per request.
    [entry] = oidc_entries(api)
    assert (entry["principal"], entry["kind"], entry["roles"], entry["client"]) == (
        "payroll-app", "oidc", ["payroll.export"], "payroll-app")
    assert "previous" not in entry
    # The machine's role set is exactly its client_roles: nothing else.
    other = await api.client.get("/v1/punches", headers=bearer(token))
    assert other.status == 403
    assert "needs one of" in await problem(other)


REFUSALS: list[tuple[str, str]] = [
    ("wrong-audience", r"audience 'https://collector\.timeclock\.test/api' is not "
                       r"'https://another-api\.test/'"),
    ("expired", r"expired at .* s ago"),
    ("other-issuer", r"issued by 'http://127\.0\.0\.1:\d+', not the configured issuer"),
    ("unknown-kid", r"unknown signing key kid="),
    ("alg-none", r"alg none: unsigned tokens are never accepted"),
    ("hs256", r"alg HS256: symmetric \(HMAC\) tokens are never accepted"),
    ("tampered-claims", r"bad signature"),
    ("tampered-signature", r"bad signature"),
    ("id-token", r"typ 'JWT' is not at\+jwt"),
]


@pytest.mark.subprocess      # the provider is a node process
@pytest.mark.parametrize(("case", "reason"), REFUSALS, ids=[c for c, _ in REFUSALS])
async def test_d7_refused_jwt_is_401_with_its_reason(
        case: str, reason: str, sqlite_store: SQLiteStore, oidc_provider: OIDCProvider,
        oidc_provider_factory: Callable[..., OIDCProvider]) -> None:
    over: dict[str, Any] = {}
    wall: Callable[[], float] = time.time
    good = oidc_provider.machine_token("audit-app")        # audit.read: /v1/verification
    token = good
    h, p, sig = parts(good)
    if case == "wrong-audience":
        over["audience"] = "https://another-api.test/"      # the token is for another API
    elif case == "expired":
        wall = lambda: time.time() + 3600                   # noqa: E731 - the same token, later
    elif case in ("other-issuer", "unknown-kid"):
        # unknown-kid: a rogue provider that claims our issuer but signs with its own key
        other = oidc_provider_factory(**({"issuer": oidc_provider.issuer}
                                         if case == "unknown-kid" else {}))
        token = other.machine_token("audit-app")
        assert parts(token)[0]["kid"] != h["kid"]
    elif case == "alg-none":
        token = forge(good, header={**h, "alg": "none"}, sig="")
    elif case == "hs256":
        token = forge(good, header={**h, "alg": "HS256"})
    elif case == "tampered-claims":
        token = forge(good, payload={**p, "sub": "payroll-app", "client_id": "payroll-app"})
    elif case == "tampered-signature":
        raw = bytearray(_unb64(sig))
        raw[len(raw) // 2] ^= 0x01
        token = forge(good, sig=_b64(bytes(raw)))
    elif case == "id-token":
        token = str(oidc_provider.user_tokens("audrey")["id_token"])
    a = await oidc_api(sqlite_store, oidc_provider, wall=wall, **over)
    try:
        resp = await a.client.get("/v1/verification", headers=bearer(token))
        assert resp.status == 401, await resp.text()
        assert resp.headers["WWW-Authenticate"] == 'Bearer realm="timeclock"'
        detail = await problem(resp)
        assert detail.startswith("invalid token (")
        assert re.search(reason, detail), detail
        # The genuine token at a collector configured alike passes (the case is the cause).
        if case not in ("wrong-audience", "expired"):
            ok = await a.client.get("/v1/verification", headers=bearer(good))
            assert ok.status == 200, await ok.text()
        await a.flush()
        assert [e["principal"] for e in oidc_entries(a)] == (
            [] if case in ("wrong-audience", "expired") else ["audit-app"])
    finally:
        await a.client.close()


@pytest.mark.subprocess      # the provider is a node process
async def test_d7_keys_are_cached_and_unknown_kids_refetch_at_most_once_per_interval(
        sqlite_store: SQLiteStore, oidc_provider: OIDCProvider,
        oidc_provider_factory: Callable[..., OIDCProvider]) -> None:
    a = await oidc_api(sqlite_store, oidc_provider, jwks_refresh_min_s=3600)
    try:
        auth = a.client.server.app[SETTINGS].oidc
        assert auth is not None
        verifier = auth.verifier
        token = oidc_provider.machine_token("audit-app")
        for _ in range(5):
            resp = await a.client.get("/v1/verification", headers=bearer(token))
            assert resp.status == 200
        assert verifier.fetches == 1                  # one JWKS fetch for five requests
        rogue = oidc_provider_factory(issuer=oidc_provider.issuer)
        for _ in range(5):                            # five made-up kids: one refetch
            bad = rogue.machine_token("audit-app")
            resp = await a.client.get("/v1/verification", headers=bearer(bad))
            assert resp.status == 401
        assert verifier.fetches == 2
        assert verifier.allowed_algs() == frozenset({"RS256"})
    finally:
        await a.client.close()


@pytest.mark.subprocess      # the provider is a node process
async def test_d7_an_oidc_name_never_takes_over_a_token_principal(
        api: Api, oidc_provider: OIDCProvider) -> None:
    # api_kit's token principal "auditor" exists; a provider user with that username is
    # refused rather than merged into it.
    oidc_provider.set_user("u-auditor", username="auditor", groups=["auditors"])
    token = oidc_provider.user_tokens("auditor")["access_token"]
    resp = await api.client.get("/v1/verification", headers=bearer(token))
    assert resp.status == 401
    assert "principal name 'auditor' is a token principal" in await problem(resp)
    assert oidc_entries(api) == []


# -- D7: people, groups → roles -------------------------------------------------------------

@pytest.mark.subprocess      # the provider is a node process
async def test_d7_group_mapping_gives_exactly_the_mapped_roles(
        api: Api, oidc_provider: OIDCProvider) -> None:
    alice = oidc_provider.user_tokens("alice")["access_token"]     # hr-officers
    audrey = oidc_provider.user_tokens("audrey")["access_token"]   # auditors
    assert (await api.client.get("/v1/punches", headers=bearer(alice))).status == 200
    assert (await api.client.get("/v1/verification", headers=bearer(alice))).status == 403
    assert (await api.client.get("/v1/verification", headers=bearer(audrey))).status == 200
    assert (await api.client.get("/v1/punches", headers=bearer(audrey))).status == 403
    entries = {e["principal"]: e for e in oidc_entries(api)}
    assert {n: (e["roles"], e.get("employee"), e.get("sites"), e["mfa"])
            for n, e in entries.items()} == {
        "alice": (["hr.read"], "E-1001", ["hq"], False),
        "audrey": (["audit.read"], "E-1003", None, False)}
    assert entries["alice"]["groups"] == ["hr-officers"]
    # A role change at the provider is a new entry naming the previous set; the same set
    # again is none.
    oidc_provider.set_user("u-1030", username="gina", groups=["auditors"])
    gina = oidc_provider.user_tokens("gina")["access_token"]
    assert (await api.client.get("/v1/punches", headers=bearer(gina))).status == 403
    oidc_provider.set_user("u-1030", groups=["auditors", "hr-officers"])
    gina2 = oidc_provider.user_tokens("gina")["access_token"]
    assert (await api.client.get("/v1/punches", headers=bearer(gina2))).status == 200
    assert (await api.client.get("/v1/punches", headers=bearer(gina2))).status == 200
    changes = [e for e in oidc_entries(api) if e["principal"] == "gina"]
    assert [(e["roles"], e.get("previous")) for e in changes] == [
        (["audit.read"], None), (["audit.read", "hr.read"], ["audit.read"])]
    rows = api.store.query("SELECT principal, role FROM tc_roles WHERE principal IN "
                           "('alice', 'gina') ORDER BY principal, role")
    assert rows == [("alice", "hr.read"), ("gina", "audit.read"), ("gina", "hr.read")]


@pytest.mark.subprocess      # the provider is a node process
async def test_d7_d8_groups_that_together_break_segregation_of_duties_sign_nobody_in(
        api: Api, oidc_provider: OIDCProvider) -> None:
    oidc_provider.set_user("u-1040", username="eve", groups=["hr-editors", "hr-approvers"],
                           mfa=True, otp="135790")
    token = oidc_provider.user_tokens("eve")["access_token"]
    resp = await api.client.get("/v1/corrections", headers=bearer(token))
    assert resp.status == 403
    assert "segregation of duties: no principal may hold both hr.correct and hr.approve" \
        in await problem(resp)
    assert oidc_entries(api) == []
    assert api.store.query("SELECT name FROM tc_principals WHERE name = 'eve'") == []


@pytest.mark.subprocess      # the provider is a node process
async def test_d7_d9_oidc_roles_replay_a_local_disable_refuses_and_verify_full_passes(
        api: Api, oidc_provider: OIDCProvider, sqlite_path: Path, tmp_path: Path,
        capsys: pytest.CaptureFixture[str]) -> None:
    oidc_provider.set_user("u-1010", username="vera", groups=["auditors"])
    payroll = oidc_provider.machine_token("payroll-app")
    vera = oidc_provider.user_tokens("vera")["access_token"]
    assert (await api.client.get("/v1/access-log", headers=bearer(payroll))).status == 403
    assert (await api.client.get("/v1/access-log", headers=bearer(vera))).status == 200
    oidc_provider.set_user("u-1010", groups=["auditors", "hr-officers"])
    vera = oidc_provider.user_tokens("vera")["access_token"]
    assert (await api.client.get("/v1/punches", headers=bearer(vera))).status == 200
    assert [e["principal"] for e in oidc_entries(api)] == ["payroll-app", "vera", "vera"]
    # A leaver here: disabled by the host operator, refused at once, whatever its token says.
    Principals(api.store).disable("vera", actor="cli:test", now_us=api.clock())
    resp = await api.client.get("/v1/punches", headers=bearer(vera))
    assert resp.status == 401
    assert "principal vera is disabled" in await problem(resp)
    await api.flush()
    log_key = seeded_key("log-key")
    size, head = api.store.head()
    api.store.add_checkpoint(Checkpoint(log=log_key.key_id, size=size, head=head,
                                        at=api.clock()).sign(log_key))
    capsys.readouterr()
    assert cli_main(["verify", "--store", str(sqlite_path), "--log-key-pub",
                     log_key.verify_key.b64, "--full", "--state", str(tmp_path / "vs")]) == 0
    out = capsys.readouterr().out
    assert out.startswith(f"OK: idx 0..{size - 1} verified"), out
    assert "DRIFT" not in out


# -- D7: MFA for privileged roles ------------------------------------------------------------

@pytest.mark.subprocess      # the provider is a node process
async def test_d7_privileged_role_without_mfa_is_refused_and_with_mfa_granted(
        api: Api, oidc_provider: OIDCProvider) -> None:
    oidc_provider.set_user("u-1020", username="carol", groups=["hr-approvers"], mfa=False,
                           employee_id="E-1020")
    carol = oidc_provider.user_tokens("carol")["access_token"]
    resp = await api.client.get("/v1/corrections", headers=bearer(carol))
    assert resp.status == 403
    detail = await problem(resp)
    assert "carol: role hr.approve needs multi-factor authentication (MFA)" in detail
    assert f"acr {MFA_ACR} or amr with otp" in detail
    bob = oidc_provider.user_tokens("bob")["access_token"]        # hr-approvers, MFA
    assert parts(bob)[1]["amr"] == ["pwd", "otp"]
    resp = await api.client.get("/v1/corrections", headers=bearer(bob))
    assert resp.status == 200, await resp.text()
    entries = {e["principal"]: e for e in oidc_entries(api)}
    assert (entries["carol"]["roles"], entries["carol"]["withheld"],
            entries["carol"]["mfa"]) == ([], ["hr.approve"], False)
    assert (entries["bob"]["roles"], entries["bob"]["mfa"]) == (["hr.approve"], True)
    assert "withheld" not in entries["bob"]
    await api.flush()
    refused = [r for r in requests_of(api.store) if r["principal"] == "carol"]
    assert [(r["status"], r["outcome"]) for r in refused] == [(403, "denied")]


# -- D9: leavers, D10: the token lifetime -----------------------------------------------

@pytest.mark.subprocess      # the provider is a node process
async def test_d9_d10_disabled_client_and_user_are_refused_within_the_token_lifetime(
        sqlite_store: SQLiteStore,
        oidc_provider_factory: Callable[..., OIDCProvider]) -> None:
    ttl = 5
    provider = oidc_provider_factory(ttl_s=ttl)
    a = await oidc_api(sqlite_store, provider, leeway_s=0)
    try:
        machine = provider.machine_token("payroll-app")
        person = provider.user_tokens("alice")
        for token in (machine, person["access_token"]):
            resp = await a.client.get("/v1/exports/payroll?format=ndjson"
                                      if token == machine else "/v1/punches",
                                      headers=bearer(token))
            assert resp.status == 200
            assert await resp.read()                  # the whole answer (a stream)
        provider.disable("payroll-app")
        provider.disable("alice")
        disabled_at = time.time()
        # No new token for either: the client cannot authenticate, the user cannot refresh.
        with pytest.raises(OIDCFlowError, match="invalid_client"):
            provider.machine_token("payroll-app")
        status, body = provider.refresh(person["refresh_token"])
        assert (status, body["error"]) == (400, "invalid_grant")
        with pytest.raises(OIDCFlowError, match="this account is disabled"):
            provider.user_tokens("alice")
        # Their last tokens are JWTs, checked without asking the provider: they stop working
        # when they expire, within the token lifetime (leeway 0 here).
        exp = max(parts(machine)[1]["exp"], parts(person["access_token"])[1]["exp"])
        await await_for(lambda: time.time() > exp, ttl + 30, "the last tokens' expiry",
                        poll_s=0.1)
        for path, token in (("/v1/exports/payroll?format=ndjson", machine),
                            ("/v1/punches", person["access_token"])):
            r = await a.client.get(path, headers=bearer(token))
            assert r.status == 401
            assert "expired at" in await problem(r)
        assert time.time() - disabled_at < ttl + 30
    finally:
        await a.client.close()


# -- config ----------------------------------------------------------------------------------

def test_d7_oidc_section_reports_every_problem_with_its_key_path() -> None:
    problems: list[str] = []
    got = read_oidc_section({
        "issuer": "http://idp.example.com", "audience": "x", "leeway_s": 900,
        "roles": {"hr": ["hr.correct", "hr.approve"], "ops": ["no.such"]},
        "client_roles": {"payroll-app": "payroll.export"},
        "mfa_roles": ["nobody"], "colour": "blue"}, problems)
    assert got is None
    assert problems == [
        "oidc.issuer: 'http://idp.example.com' must be an https:// URL (http only on "
        "loopback)",
        "oidc.leeway_s: must be between 0 and 300, got 900",
        "oidc.roles.hr: group 'hr': segregation of duties: no principal may hold both "
        "hr.correct and hr.approve (whoever proposes a correction must not approve it)",
        f"oidc.roles.ops: unknown role(s) no.such; roles are {', '.join(ROLES)}",
        "oidc.client_roles.payroll-app: expected a non-empty list of strings",
        "oidc.mfa_roles: unknown role(s) nobody",
        problems[-1],
    ]
    assert problems[-1].startswith("oidc.colour: unknown key (allowed: audience, ")
    assert "client_roles, " in problems[-1]


def test_d7_oidc_needs_api_and_check_config_reads_it(tmp_path: Path) -> None:
    base: dict[str, Any] = {
        "collector": {"name": "a", "store": "sqlite:///l.db", "log_key": "log.key"},
        "mqtt": {"host": "127.0.0.1", "port": 8883, "ca_cert": "ca.pem", "cert": "c.pem",
                 "key": "c.key"},
        "oidc": {"issuer": "https://idp.example.com", "audience": "https://api.example/",
                 "client_roles": {"payroll-app": ["payroll.export"]}}}
    with pytest.raises(ConfigError, match=r"oidc: needs an \[api\] section"):
        parse_config(base, base=tmp_path)
    cfg = parse_config({**base, "api": {"cert": "api.pem", "key": "api.key"}}, base=tmp_path)
    assert cfg.api is not None
    assert cfg.api.oidc is not None
    assert cfg.api.oidc.client_roles == {"payroll-app": frozenset({"payroll.export"})}
    assert cfg.api.settings({}).oidc is not None


def test_d7_principal_names_are_safe_and_stable() -> None:
    iss = "https://idp.example.com"
    assert principal_name("payroll-app", iss, "payroll-app") == "payroll-app"
    odd = principal_name("Jane Doe", iss, "00u1")
    assert odd == principal_name(None, iss, "00u1") == principal_name("anonymous", iss, "00u1")
    assert odd.startswith("oidc-")
    assert len(odd) == 21
    assert principal_name("Jane Doe", iss, "00u2") != odd
    with pytest.raises(OidcTokenError, match="not a well-formed JWT"):
        OidcAuth(OidcSection(issuer=iss, audience="a")).verifier.verify("a.b.c", now_s=0)


def test_d7_d8_the_replay_applies_oidc_roles_and_reports_takeover_and_sod() -> None:
    from wire.grants import AccessHistory  # noqa: PLC0415 - only here

    def entry(roles: list[str], subject: str = "s1", **more: Any) -> dict[str, Any]:
        return {"type": "admin", "outcome": "done", "actor": "oidc:https://idp", "at": 1,
                "action": ACTION, "principal": "vera", "kind": "oidc", "roles": roles,
                "subject": subject, **more}

    h = AccessHistory()
    h.feed_access(1, {"type": "admin", "outcome": "done", "actor": "cli:root", "at": 0,
                      "action": "principal.create", "principal": "ops", "kind": "token",
                      "roles": ["ops.devices"], "bootstrap": True})
    h.feed_access(2, entry(["hr.read"]))
    assert (h.roles_at("vera"), h.principals["vera"].kind, h.breaches) == (
        frozenset({"hr.read"}), "oidc", [])
    h.feed_access(3, entry(["hr.read", "audit.read"], previous=["hr.read"]))
    assert (h.roles_at("vera"), h.principals["vera"].roles_idx) == (
        frozenset({"hr.read", "audit.read"}), 3)
    h.feed_access(4, entry(["admin"], subject="s2"))          # another subject, same name
    h.feed_access(5, {**entry(["audit.read"]), "principal": "ops"})  # a token principal's
    h.feed_access(6, entry(["hr.correct", "hr.approve"]))
    assert [(b.idx, b.rule) for b in h.breaches] == [(4, "D7"), (5, "D7"), (6, "D8")]
    assert h.roles_at("ops") == frozenset({"ops.devices"})
