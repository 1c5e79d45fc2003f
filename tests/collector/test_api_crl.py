"""Issue 13 item 6 (controls D7, D12): an API client certificate revoked with the real CA's
CRL is refused without restarting the API: new connections fail their handshake once the
CRL file changed (collector.api.crl polls it every second and swaps in a new TLS context),
and a connection opened before the revocation gets 401 on its next request and is closed.
A CRL that cannot be loaded changes nothing."""

from __future__ import annotations

import asyncio
import logging
import secrets
import socket
import ssl
from pathlib import Path

import aiohttp
import pytest

from collector import ConfigError
from collector.access.directory import Principals
from collector.api import ApiSection, start_api
from collector.api.crl import CRL_WATCH
from collector.ledger.sqlite import SQLiteStore
from tests.collector.api_kit import requests_of, seed
from tests.fixtures.pki import ClientCert, TestPKI
from tests.polling import await_for

DEADLINE_S = 30.0       # generous: the watch polls every second


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


def _client_ctx(pki: TestPKI, cert: ClientCert) -> ssl.SSLContext:
    ctx = ssl.create_default_context(cafile=str(pki.ca_file))
    ctx.load_cert_chain(str(cert.cert_file), str(cert.key_file))
    return ctx


async def _get(reader: asyncio.StreamReader, writer: asyncio.StreamWriter,
               path: str) -> tuple[int, dict[str, str]]:
    """One HTTP/1.1 keep-alive request on an open connection: (status, headers)."""
    writer.write(f"GET {path} HTTP/1.1\r\nHost: localhost\r\n\r\n".encode())
    await writer.drain()
    head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), DEADLINE_S)
    lines = head.decode("latin-1").split("\r\n")
    headers = {k.strip().lower(): v.strip() for k, _, v in
               (line.partition(":") for line in lines[1:] if line)}
    await asyncio.wait_for(reader.readexactly(int(headers.get("content-length", "0"))),
                           DEADLINE_S)
    return int(lines[0].split()[1]), headers


async def _new_connection_status(url: str, ctx: ssl.SSLContext) -> int | str:
    """The status of a request on a fresh connection, or how the handshake failed."""
    try:
        async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(force_close=True)
                                         ) as s, s.get(f"{url}/v1/devices", ssl=ctx) as r:
            return r.status
    except (aiohttp.ClientError, ssl.SSLError, ConnectionError) as e:
        return type(e).__name__


def _fresh_api_client(pki: TestPKI, store: SQLiteStore) -> ClientCert:
    cert = pki.api_client(f"crl-{secrets.token_hex(4)}")   # revoked by this test alone
    Principals(store).register_cert(cert.name, ["ops.devices"], actor="cli:t", now_us=1)
    return cert


async def test_d7_d12_revoked_client_certificate_refused_without_restart(
        sqlite_store: SQLiteStore, pki: TestPKI) -> None:
    seed(sqlite_store)
    revoked, kept = _fresh_api_client(pki, sqlite_store), _fresh_api_client(pki, sqlite_store)
    section = ApiSection(cert=pki.server_cert_file, key=pki.server_key_file,
                         listen="127.0.0.1", port=_free_port(), client_ca=pki.ca_file,
                         crl=pki.crl_file)
    runner = await start_api(section, sqlite_store, log_keys={})
    url = f"https://127.0.0.1:{section.port}"
    watch = runner.app[CRL_WATCH]
    assert watch.poll_s <= 1.0
    try:
        reader, writer = await asyncio.open_connection(
            "127.0.0.1", section.port, ssl=_client_ctx(pki, revoked), server_hostname="localhost")
        try:
            assert (await _get(reader, writer, "/v1/devices"))[0] == 200
            assert await _new_connection_status(url, _client_ctx(pki, revoked)) == 200
            reloads = watch.reloads
            pki.revoke(revoked)                        # the real CA rewrites crl.pem
            await await_for(lambda: watch.reloads > reloads, DEADLINE_S,
                            "the API to load the new CRL")
            # (1) a new connection with the revoked certificate fails its handshake
            status = await _new_connection_status(url, _client_ctx(pki, revoked))
            assert not isinstance(status, int), status
            # (2) the connection opened before the revocation: 401, then closed
            code, headers = await _get(reader, writer, "/v1/devices")
            assert code == 401
            assert headers.get("connection", "").lower() == "close"
            assert await asyncio.wait_for(reader.read(), DEADLINE_S) == b""
        finally:
            writer.close()
        # (3) another certificate of the CA still works, and so does the API (no restart)
        assert await _new_connection_status(url, _client_ctx(pki, kept)) == 200
    finally:
        await runner.cleanup()
    refused = [r for r in requests_of(sqlite_store) if "revoked_certificate" in r.get("extra", {})]
    assert [(r["status"], r["extra"]["revoked_certificate"]) for r in refused] == [
        (401, {"cn": revoked.name, "serial": revoked.serial})]


async def test_d12_unloadable_crl_changes_nothing(
        sqlite_store: SQLiteStore, pki: TestPKI, tmp_path: Path,
        caplog: pytest.LogCaptureFixture) -> None:
    seed(sqlite_store)
    revoked, kept = _fresh_api_client(pki, sqlite_store), _fresh_api_client(pki, sqlite_store)
    pki.revoke(revoked)
    crl = tmp_path / "crl.pem"
    crl.write_bytes(pki.crl_file.read_bytes())
    section = ApiSection(cert=pki.server_cert_file, key=pki.server_key_file,
                         listen="127.0.0.1", port=_free_port(), client_ca=pki.ca_file,
                         crl=crl)
    runner = await start_api(section, sqlite_store, log_keys={})
    url = f"https://127.0.0.1:{section.port}"
    watch = runner.app[CRL_WATCH]
    try:
        assert not isinstance(await _new_connection_status(url, _client_ctx(pki, revoked)),
                              int)
        with caplog.at_level(logging.ERROR, logger="timeclock.api"):
            crl.write_bytes(b"-----BEGIN X509 CRL-----\nnot a crl\n-----END X509 CRL-----\n")
            await await_for(lambda: "was not loaded" in caplog.text, DEADLINE_S,
                            "the API to refuse the broken CRL")
        assert watch.reloads == 0
        assert str(crl) in caplog.text
        # the previous CRL stays in force: still refused, the others still served
        assert not isinstance(await _new_connection_status(url, _client_ctx(pki, revoked)),
                              int)
        assert await _new_connection_status(url, _client_ctx(pki, kept)) == 200
    finally:
        await runner.cleanup()
    # and an unloadable CRL at start is a configuration error naming the file
    with pytest.raises(ConfigError, match=r"api: .*crl.pem: cannot load CRL"):
        await start_api(section, sqlite_store, log_keys={})
