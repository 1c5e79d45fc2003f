"""Controls D12/D13 for the API: every request is an access entry (batched, never lost on a
clean shutdown, never holding a credential), failed authentication is throttled per
address with an injected clock, problem documents, the OpenAPI document, and HTTPS with
TLS ≥ 1.2 and client certificates of our CA."""

from __future__ import annotations

import json
import socket
import ssl
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from aiohttp.test_utils import TestClient, TestServer

from collector import ConfigError
from collector.access.directory import Principals
from collector.api import (
    ApiSection,
    ApiSettings,
    make_app,
    parse_api_section,
    start_api,
    tls_context,
)
from collector.api.openapi import render
from collector.ledger.sqlite import SQLiteStore
from tests.collector.api_kit import (
    Api,
    FakeClock,
    access_bodies,
    requests_of,
    seed,
)
from tests.collector.api_kit import start_api as start
from tests.fixtures.pki import TestPKI

ROOT = Path(__file__).resolve().parents[2]


async def test_openapi_served_equals_docs_file(api: Api) -> None:
    resp = await api.call("GET", "/v1/openapi.json")
    served = await resp.json()
    on_disk = json.loads((ROOT / "docs" / "openapi.json").read_text())
    assert served == on_disk
    assert (ROOT / "docs" / "openapi.json").read_text() == render()
    assert served["openapi"] == "3.1.0"


async def test_d13_failed_authentication_throttled_per_address_and_credential(
        sqlite_store: SQLiteStore) -> None:
    api = await start(sqlite_store, settings=ApiSettings(auth_failures_max=3,
                                                         auth_failures_window_s=60))
    try:
        bad = {"Authorization": "Bearer tct_" + "A" * 43}
        other = {"Authorization": "Bearer tct_" + "B" * 43}
        statuses = [(await api.client.get("/v1/punches", headers=bad)).status
                    for _ in range(4)]
        assert statuses == [401, 401, 401, 429]            # the same bad token: slowed
        resp = await api.client.get("/v1/punches", headers=other)
        assert resp.status == 429                           # the address is throttled too
        assert resp.headers["Retry-After"] == "60"
        resp = await api.call("GET", "/v1/punches", "hr-reader")   # valid token, same address
        assert resp.status == 200                           # never throttled by others
        assert (await api.client.get("/healthz")).status == 200     # liveness unaffected
        api.clock.advance(61)
        assert (await api.client.get("/v1/punches", headers=bad)).status == 401
        await api.flush()
        await api.client.close()                            # closes the open minute's tally
        outcomes = [b["outcome"] for b in requests_of(sqlite_store)
                    if b["path"] == "/v1/punches"]
        assert outcomes == ["allowed"]                      # one entry per principal request
        tallies = [b for b in access_bodies(sqlite_store) if b["type"] == "unauthenticated"]
        assert [(t["client"], t["count"], t["outcomes"], t["routes"]) for t in tallies] == [
            ("127.0.0.1", 5, {"throttled": 2, "unauthenticated": 3}, {"/v1/punches": 5}),
            ("127.0.0.1", 1, {"unauthenticated": 1}, {"/v1/punches": 1})]
    finally:
        await api.client.close()


async def test_d12_access_entries_batched_and_flushed_on_shutdown(sqlite_store: SQLiteStore
                                                                 ) -> None:
    seed(sqlite_store)
    clock = FakeClock()
    token = Principals(sqlite_store).create_token("reader", ["audit.read"], expires_days=1,
                                                  actor="cli:t", now_us=clock.now).token
    # a flush interval far beyond the test: only batch size and shutdown can flush (a read of
    # personal data is committed before its answer: tests/collector/test_access_durable.py)
    app = make_app(sqlite_store, settings=ApiSettings(access_flush_ms=10_000,
                                                      access_batch_max=1000), clock=clock)
    client: TestClient[Any, Any] = TestClient(TestServer(app))
    await client.start_server()
    size_before, _ = sqlite_store.head()
    for i in range(25):
        resp = await client.get(f"/v1/access-log?limit={i + 1}",
                                headers={"Authorization": f"Bearer {token}"})
        assert resp.status == 200
    assert sqlite_store.head()[0] == size_before      # still buffered
    await client.close()                              # clean shutdown flushes
    recs = requests_of(sqlite_store)
    assert [r["query"]["limit"] for r in recs] == [str(i + 1) for i in range(25)]
    assert all(token not in json.dumps(b) for b in access_bodies(sqlite_store))


async def test_d12_access_log_endpoint_and_problem_documents(api: Api) -> None:
    resp = await api.call("GET", "/v1/punches?bogus=1&since=yesterday", "hr-reader")
    problem = await resp.json(content_type="application/problem+json")
    assert resp.status == 400
    assert problem["type"] == "urn:timeclock:problem:bad-request"
    assert problem["instance"] == "/v1/punches"
    resp = await api.call("DELETE", "/v1/punches", "hr-reader")
    assert resp.status == 405
    assert resp.headers["Content-Type"].startswith("application/problem+json")
    resp = await api.call("GET", "/v1/punches", headers={"Authorization": "Basic abc"})
    assert resp.status == 401
    assert resp.headers["WWW-Authenticate"].startswith("Bearer")
    api.clock.advance(60)                   # the minute is over: its tallies are due
    await api.flush()
    resp = await api.call("GET", "/v1/access-log?limit=1000", "auditor")
    items = (await resp.json())["items"]
    reqs = [i["body"] for i in items if i["body"]["type"] == "request"]
    assert [(r["method"], r["status"]) for r in reqs][-1:] == [("GET", 400)]
    # no authenticated principal (405 before routing, 401): tallied per source and minute
    tallies = [i["body"] for i in items if i["body"]["type"] == "unauthenticated"]
    assert [(t["count"], t["statuses"]) for t in tallies] == [(2, {"401": 1, "405": 1})]
    admin_changes = [i["body"] for i in items if i["body"]["type"] == "admin"]
    assert {c["action"] for c in admin_changes} == {"token.create"}


async def test_expired_and_revoked_tokens_refused(api: Api) -> None:
    principals = Principals(api.store)
    tid = next(t.id for t in principals.tokens("ops"))
    resp = await api.call("POST", f"/v1/tokens/{tid}/revoke", "admin")
    assert resp.status == 200
    assert (await api.call("GET", "/v1/devices", "ops")).status == 401
    api.clock.advance(31 * 86_400)
    resp = await api.call("GET", "/v1/devices", "auditor")
    assert resp.status == 401
    assert "revoked or expired" in (await resp.json(
        content_type="application/problem+json"))["detail"]


def test_api_section_reports_every_problem(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=r"api.key: required(.|\n)*api.port: must be between 1 "
                                          r"and 65535, got 0(.|\n)*api.crl: needs "
                                          r"api.client_ca"):
        parse_api_section({"cert": "c.pem", "port": 0, "crl": "x.pem"}, tmp_path)
    sec = parse_api_section({"cert": "c.pem", "key": "/k.pem", "port": 9443}, tmp_path)
    assert (sec.cert, sec.key, sec.port) == (tmp_path / "c.pem", Path("/k.pem"), 9443)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


async def test_https_tls12_minimum_and_client_certificate_principal(
        sqlite_store: SQLiteStore, pki: TestPKI) -> None:
    seed(sqlite_store)
    Principals(sqlite_store).register_cert("api.payroll-system", ["payroll.export"],
                                           actor="cli:t", now_us=1)
    section = ApiSection(cert=pki.server_cert_file, key=pki.server_key_file,
                         listen="127.0.0.1", port=_free_port(), client_ca=pki.ca_file,
                         crl=pki.crl_file)
    runner = await start_api(section, sqlite_store, log_keys={})
    try:
        url = f"https://127.0.0.1:{section.port}"
        sys_cert = pki.api_client("payroll-system")   # CN = api.payroll-system, our CA
        ctx = ssl.create_default_context(cafile=str(pki.ca_file))
        ctx.load_cert_chain(str(sys_cert.cert_file), str(sys_cert.key_file))
        async with aiohttp.ClientSession() as s:
            async with s.get(f"{url}/v1/exports/payroll", ssl=ctx) as r:
                text = await r.text()
                assert r.status == 200, text
                assert text.count("\n") == 12           # header + 10 rows + trailer
            # a device certificate of our CA that is not a registered principal
            dev = pki.device("clock-77")
            ctx2 = ssl.create_default_context(cafile=str(pki.ca_file))
            ctx2.load_cert_chain(str(dev.cert_file), str(dev.key_file))
            async with s.get(f"{url}/v1/devices", ssl=ctx2) as r:
                assert r.status == 401
            # no client certificate at all: tokens remain the way in
            plain = ssl.create_default_context(cafile=str(pki.ca_file))
            async with s.get(f"{url}/healthz", ssl=plain) as r:
                assert r.status == 200
            # the server refuses anything below TLS 1.2 (its context says so; a TLS 1.1
            # client cannot be built with this OpenSSL to prove it on the wire)
            server_ctx = tls_context(section)
            assert server_ctx.minimum_version == ssl.TLSVersion.TLSv1_2
            assert server_ctx.verify_mode == ssl.CERT_OPTIONAL
    finally:
        await runner.cleanup()
    recs = requests_of(sqlite_store)
    assert [(r["principal"], r["auth"], r["status"]) for r in recs] == [
        ("api.payroll-system", "cert", 200)]
    # the device certificate's 401 is tallied; /healthz is never recorded
    tallies = [b for b in access_bodies(sqlite_store) if b["type"] == "unauthenticated"]
    assert [(t["count"], t["auth"], t["statuses"]) for t in tallies] == [
        (1, {"cert": 1}, {"401": 1})]
