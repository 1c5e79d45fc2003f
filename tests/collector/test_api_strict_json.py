"""Issue 13 item 10 (controls D12, D13): API request bodies are parsed as strictly as the
wire (a key twice is refused with a 400 naming it, never "last wins", and nothing changes),
and no response names the server software's version, not even aiohttp's own answer to a
request it cannot parse."""

from __future__ import annotations

import asyncio
import json

import pytest

from collector.access.directory import Principals
from tests.collector.api_kit import Api, requests_of

PROPOSAL = ('{"device":"clock-00","seq":2,"field":"action","after":"break-start",'
            '"reason":"wrong-action"')


def _roles(principals: Principals, name: str) -> frozenset[str] | None:
    p = principals.get(name)
    return None if p is None else p.roles


@pytest.mark.parametrize("case", [
    # the last "after" would be the one applied by a last-wins parser
    ("editor", "POST", "/v1/corrections", PROPOSAL + ',"after":"out"}', "after"),
    # an admin's role change whose second "roles" would make ops an admin
    ("admin", "PUT", "/v1/principals/ops/roles",
     '{"roles":["ops.devices"],"roles":["admin"]}', "roles"),
    # nested: a duplicate inside a value is refused as well
    ("editor", "POST", "/v1/corrections", PROPOSAL + ',"note":{"a":1,"a":2}}', "a"),
    ("ops", "POST", "/v1/tokens", '{"expires_days":7,"expires_days":365}', "expires_days"),
])
async def test_d13_duplicate_keys_refused_naming_the_key_and_nothing_changes(
        api: Api, case: tuple[str, str, str, str, str]) -> None:
    principal, method, path, raw, key = case
    principals = Principals(api.store)
    before = (api.store.head(), _roles(principals, "ops"),
              len(list(principals.tokens("ops"))))
    resp = await api.call(method, path, principal, data=raw.encode(),
                          headers={"Content-Type": "application/json"})
    problem = await resp.json(content_type="application/problem+json")
    assert resp.status == 400, problem
    assert problem["type"] == "urn:timeclock:problem:bad-request"
    assert f"duplicate key {key!r}" in problem["detail"]
    after = (api.store.head(), _roles(principals, "ops"),
             len(list(principals.tokens("ops"))))
    assert after == before                       # no correction, role or token: no entry
    resp = await api.call("GET", "/v1/corrections", "editor")
    assert (await resp.json())["items"] == []
    await api.flush()
    assert [(r["principal"], r["path"], r["status"]) for r in requests_of(api.store)
            if r["method"] == method][0] == (
        principal, path, 400)                    # the refusal itself is on the ledger


async def test_d13_same_body_without_the_duplicate_is_accepted(api: Api) -> None:
    resp = await api.call("POST", "/v1/corrections", "editor", data=(PROPOSAL + "}").encode(),
                          headers={"Content-Type": "application/json"})
    assert resp.status == 201, await resp.text()
    assert (await resp.json())["after"] == "break-start"


async def _raw_exchange(api: Api, request: bytes) -> bytes:
    host, port = api.client.server.host, api.client.server.port
    assert isinstance(port, int)
    reader, writer = await asyncio.open_connection(host, port)
    try:
        writer.write(request)
        await writer.drain()
        return await asyncio.wait_for(reader.read(), 30)   # the server closes after it
    finally:
        writer.close()


def _server_headers(raw: bytes) -> list[str]:
    head = raw.split(b"\r\n\r\n", 1)[0].decode("latin-1").split("\r\n")
    return [line.split(":", 1)[1].strip() for line in head[1:]
            if line.lower().startswith("server:")]


async def test_d13_server_header_never_names_a_version(api: Api) -> None:
    responses = [
        await api.call("GET", "/healthz"),
        await api.call("GET", "/v1/openapi.json"),
        await api.call("GET", "/v1/punches", "hr-reader"),
        await api.call("GET", "/v1/punches?format=ndjson", "hr-reader"),   # streamed
        await api.call("GET", "/v1/punches"),                               # 401 problem
        await api.call("GET", "/nowhere"),                                  # 404 unmatched
        await api.call("DELETE", "/v1/punches", "hr-reader"),               # 405
        await api.call("POST", "/v1/corrections", "editor", data=b"{",
                       headers={"Content-Type": "application/json"}),       # 400
    ]
    assert [r.status for r in responses] == [200, 200, 200, 200, 401, 404, 405, 400]
    assert {r.headers.getall("Server")[0] for r in responses} == {"timeclock"}
    assert all(len(r.headers.getall("Server")) == 1 for r in responses)
    # requests aiohttp answers itself, before the application sees them
    for bad in (b"GARBAGE\x01 / HTTP/1.1\r\n\r\n",
                b"GET /healthz HTTP/1.1\r\nHost: x\r\nContent-Length: zz\r\n\r\n"):
        raw = await _raw_exchange(api, bad)
        assert raw.split(b"\r\n", 1)[0].split(b" ")[1] == b"400", raw[:200]
        assert _server_headers(raw) == ["timeclock"], raw[:400]
    ok = await _raw_exchange(api, b"GET /healthz HTTP/1.1\r\nHost: x\r\nConnection: close"
                                  b"\r\n\r\n")
    assert _server_headers(ok) == ["timeclock"]
    assert json.loads(ok.split(b"\r\n\r\n", 1)[1]) == {"status": "ok"}
