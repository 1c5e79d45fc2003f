"""wire.tls: each TLS context function, tested by real handshakes over a local socket pair."""

from __future__ import annotations

import os
import socket
import ssl
import threading
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from tests.fixtures.pki import TestPKI
from wire.errors import DecodeError, KeyFileError
from wire.tls import (
    TLSConfigError,
    client_context,
    https_client_context,
    make_tls_key_and_csr,
    server_context,
)


def handshake(server_ctx: ssl.SSLContext, client_ctx: ssl.SSLContext,
              server_hostname: str = "localhost") -> tuple[bytes, list[BaseException], dict]:
    """Run one TLS session over a socket pair: the server sends b"ok" after its handshake.

    Returns what the client read, the server-side errors, and the peer cert the server saw.
    """
    a, b = socket.socketpair()
    a.settimeout(30)
    b.settimeout(30)
    errors: list[BaseException] = []
    seen: dict = {}

    def serve() -> None:
        try:
            with server_ctx.wrap_socket(a, server_side=True) as s:
                seen.update(s.getpeercert() or {})
                s.sendall(b"ok")
        except (ssl.SSLError, OSError) as e:
            errors.append(e)
            a.close()

    t = threading.Thread(target=serve)
    t.start()
    try:
        with client_ctx.wrap_socket(b, server_hostname=server_hostname) as c:
            got = c.recv(2)
    except (ssl.SSLError, OSError) as e:
        got = f"client error: {e}".encode()
    finally:
        b.close()
        t.join(5)
    return got, errors, seen


def server_ctx(pki: TestPKI, *, require: bool = True, crl: bool = False) -> ssl.SSLContext:
    return server_context(pki.ca_file, pki.server_cert_file, pki.server_key_file,
                          require_client_cert=require, crl_file=pki.crl_file if crl else None)


def test_client_context_settings(pki: TestPKI) -> None:
    ctx = pki.device("tls-dev").context()
    assert ctx.minimum_version == ssl.TLSVersion.TLSv1_2
    assert ctx.verify_mode == ssl.CERT_REQUIRED
    assert ctx.check_hostname is True


def test_mutual_tls_handshake_names_the_device(pki: TestPKI) -> None:
    got, errors, peer = handshake(server_ctx(pki), pki.device("tls-dev").context())
    assert (got, errors) == (b"ok", [])
    assert peer["subject"] == ((("commonName", "tls-dev"),),)


def test_client_refuses_server_cert_for_another_host_name(pki: TestPKI) -> None:
    got, _errors, _ = handshake(server_ctx(pki), pki.device("tls-dev").context(),
                                server_hostname="mqtt.elsewhere.example")
    assert b"Hostname mismatch" in got or b"doesn't match" in got


def test_client_refuses_server_from_foreign_ca(pki: TestPKI) -> None:
    cert = pki.device("tls-dev")
    ctx = client_context(pki.foreign_ca_file, cert.cert_file, cert.key_file)
    got, _errors, _ = handshake(server_ctx(pki), ctx)
    assert b"certificate verify failed" in got


@pytest.mark.parametrize("mode", [0o644, 0o640, 0o604])
def test_client_context_refuses_key_readable_by_others(pki: TestPKI, tmp_path: Path,
                                                       mode: int) -> None:
    cert = pki.device("tls-dev")
    key = tmp_path / "copy.key"
    key.write_bytes(cert.key_file.read_bytes())
    os.chmod(key, mode)
    with pytest.raises(KeyFileError, match="chmod 600"):
        client_context(pki.ca_file, cert.cert_file, key)


def test_client_context_wrong_key_for_cert(pki: TestPKI) -> None:
    a, b = pki.device("tls-dev"), pki.device("tls-other")
    with pytest.raises(TLSConfigError, match="cannot load certificate"):
        client_context(pki.ca_file, a.cert_file, b.key_file)


def test_client_context_missing_ca(pki: TestPKI, tmp_path: Path) -> None:
    cert = pki.device("tls-dev")
    with pytest.raises(TLSConfigError, match="cannot load CA"):
        client_context(tmp_path / "nope.crt", cert.cert_file, cert.key_file)


def test_server_requires_client_certificate(pki: TestPKI) -> None:
    anon = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    anon.load_verify_locations(cafile=str(pki.ca_file))
    got, errors, _ = handshake(server_ctx(pki), anon)
    assert got != b"ok"
    assert any("certificate" in str(e) for e in errors), errors


def test_server_without_client_certs_accepts_anonymous(pki: TestPKI) -> None:
    ctx = server_ctx(pki, require=False)
    assert ctx.verify_mode == ssl.CERT_NONE
    anon = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    anon.load_verify_locations(cafile=str(pki.ca_file))
    got, errors, _ = handshake(ctx, anon)
    assert (got, errors) == (b"ok", [])


def test_server_with_crl_refuses_revoked_client(pki: TestPKI) -> None:
    revoked, fine = pki.fresh_device("tlsrev"), pki.fresh_device("tlsok")
    pki.revoke(revoked)
    ctx = server_ctx(pki, crl=True)
    assert handshake(ctx, fine.context())[:2] == (b"ok", [])
    got, errors, _ = handshake(ctx, revoked.context())
    assert got != b"ok"
    assert any("revoked" in str(e) for e in errors), errors


def test_server_crl_needs_client_certs(pki: TestPKI) -> None:
    with pytest.raises(TLSConfigError, match="needs require_client_cert"):
        server_context(pki.ca_file, pki.server_cert_file, pki.server_key_file,
                       require_client_cert=False, crl_file=pki.crl_file)


def test_server_minimum_is_tls_1_2_and_1_2_still_works(pki: TestPKI) -> None:
    ctx = server_ctx(pki)
    assert ctx.minimum_version == ssl.TLSVersion.TLSv1_2
    capped = pki.device("tls-dev").context()
    capped.maximum_version = ssl.TLSVersion.TLSv1_2
    assert handshake(ctx, capped)[:2] == (b"ok", [])


def test_make_tls_key_and_csr_is_p256_with_cn() -> None:
    key_pem, csr_pem = make_tls_key_and_csr("clock-17")
    key = serialization.load_pem_private_key(key_pem, password=None)
    assert isinstance(key, ec.EllipticCurvePrivateKey)
    assert key.curve.name == "secp256r1"
    csr = x509.load_pem_x509_csr(csr_pem)
    assert csr.is_signature_valid is True
    assert csr.subject.get_attributes_for_oid(NameOID.COMMON_NAME)[0].value == "clock-17"
    assert csr.public_key() == key.public_key()
    assert make_tls_key_and_csr("collector.main")[1].startswith(b"-----BEGIN CERTIFICATE REQUEST")


@pytest.mark.parametrize("cn", ["Clock-17", "clock.17", "collector.", "-a", "a" * 64, "",
                                "dev/a", "dev+", "collector.Main"])
def test_make_tls_key_and_csr_rejects_bad_common_names(cn: str) -> None:
    with pytest.raises(DecodeError, match="neither a device id"):
        make_tls_key_and_csr(cn)


def test_https_client_checks_the_server_only(pki: TestPKI) -> None:
    ctx = https_client_context(pki.ca_file)
    assert (ctx.verify_mode, ctx.check_hostname) == (ssl.CERT_REQUIRED, True)
    assert ctx.minimum_version == ssl.TLSVersion.TLSv1_2
    assert handshake(server_ctx(pki, require=False), ctx) == (b"ok", [], {})
    got, _, _ = handshake(server_ctx(pki, require=False), ctx, server_hostname="elsewhere")
    assert got.startswith(b"client error:")
    got, _, _ = handshake(server_ctx(pki, require=False),
                          https_client_context(pki.foreign_ca_file))
    assert b"certificate verify failed" in got


def test_https_client_context_missing_ca(tmp_path: Path) -> None:
    with pytest.raises(TLSConfigError, match="cannot load CA"):
        https_client_context(tmp_path / "nope.crt")
