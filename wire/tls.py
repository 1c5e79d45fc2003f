"""TLS contexts and TLS key/CSR generation (DESIGN.md §1, §4): one function per context kind.

Pure: stdlib ``ssl`` and ``cryptography`` only; no sockets are opened here.

Invariants:
- every context refuses anything older than TLS 1.2 (OpenSSL negotiates 1.3 when both can);
- a client context always verifies the server certificate against our CA and its host name;
- a private key file that group or others can read is refused before it is loaded, because
  a TLS key that others can read no longer proves which device or collector is connecting;
- TLS keys are EC P-256, generated where they are used; only the CSR leaves the machine.
"""

from __future__ import annotations

import ssl
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from wire.errors import DecodeError, WireError
from wire.fields import COLLECTOR_ID_RE, DEVICE_ID_RE
from wire.keys import check_private_file


class TLSConfigError(WireError):
    """A CA, certificate or key file that cannot be used to build a TLS context."""

    reason = "tls-config"


def _base_context(protocol: int, ca_file: Path | None) -> ssl.SSLContext:
    ctx = ssl.SSLContext(protocol)
    ctx.minimum_version = ssl.TLSVersion.TLSv1_2
    if ca_file is not None:
        try:
            ctx.load_verify_locations(cafile=str(ca_file))
        except (OSError, ssl.SSLError) as e:
            raise TLSConfigError(f"{ca_file}: cannot load CA certificate(s): {e}") from e
    return ctx


def _load_chain(ctx: ssl.SSLContext, cert_file: Path, key_file: Path) -> None:
    check_private_file(Path(key_file))
    try:
        ctx.load_cert_chain(certfile=str(cert_file), keyfile=str(key_file))
    except (OSError, ssl.SSLError) as e:
        # The message names files, never key material.
        raise TLSConfigError(
            f"cannot load certificate {cert_file} with key {key_file}: {e}") from e


def client_context(ca_file: Path, cert_file: Path, key_file: Path) -> ssl.SSLContext:
    """Context for an mTLS client (agent → broker, collector → broker).

    TLS ≥ 1.2; the server must present a certificate from ``ca_file`` that names the host
    we connect to (SAN DNS name or IP); we present ``cert_file``/``key_file``.
    """
    ctx = _base_context(ssl.PROTOCOL_TLS_CLIENT, Path(ca_file))
    # PROTOCOL_TLS_CLIENT already sets both; stated so that a refactor cannot drop them.
    ctx.verify_mode = ssl.CERT_REQUIRED
    ctx.check_hostname = True
    _load_chain(ctx, Path(cert_file), Path(key_file))
    return ctx


def https_client_context(ca_file: Path | None) -> ssl.SSLContext:
    """Context for a client that authenticates only the server (the collector → an external
    witness over HTTPS): TLS ≥ 1.2, certificate and host name checked against ``ca_file``, or
    the system's trust store when None."""
    ctx = _base_context(ssl.PROTOCOL_TLS_CLIENT, Path(ca_file) if ca_file is not None else None)
    if ca_file is None:
        ctx.load_default_certs(ssl.Purpose.SERVER_AUTH)
    ctx.verify_mode = ssl.CERT_REQUIRED
    ctx.check_hostname = True
    return ctx


def server_context(ca_file: Path, cert_file: Path, key_file: Path, *,
                   require_client_cert: bool, crl_file: Path | None = None) -> ssl.SSLContext:
    """Context for a TLS server (the HTTPS API).

    With ``require_client_cert`` the peer must present a certificate from ``ca_file``;
    ``crl_file`` (PEM, from the same CA) then makes a revoked client certificate fail.
    """
    ctx = _base_context(ssl.PROTOCOL_TLS_SERVER, Path(ca_file) if require_client_cert else None)
    ctx.verify_mode = ssl.CERT_REQUIRED if require_client_cert else ssl.CERT_NONE
    if crl_file is not None:
        if not require_client_cert:
            raise TLSConfigError("a CRL needs require_client_cert=True (nothing to check)")
        try:
            ctx.load_verify_locations(cafile=str(crl_file))
        except (OSError, ssl.SSLError) as e:
            raise TLSConfigError(f"{crl_file}: cannot load CRL: {e}") from e
        ctx.verify_flags |= ssl.VERIFY_CRL_CHECK_LEAF
    _load_chain(ctx, Path(cert_file), Path(key_file))
    return ctx


def make_tls_key_and_csr(common_name: str) -> tuple[bytes, bytes]:
    """Generate an EC P-256 TLS key and a CSR for ``common_name``.

    ``common_name`` is a device id or ``collector.<name>`` (DESIGN.md §1). Returns
    ``(key_pem, csr_pem)``: the key is unencrypted PKCS#8 PEM, to be written with
    :func:`wire.keys.write_private_file` (0600); the CSR goes to the CA.
    """
    if not (DEVICE_ID_RE.fullmatch(common_name) or COLLECTOR_ID_RE.fullmatch(common_name)):
        raise DecodeError(
            f"common name {common_name[:80]!r} is neither a device id "
            f"({DEVICE_ID_RE.pattern}) nor a collector id ({COLLECTOR_ID_RE.pattern})",
            field="common_name")
    key = ec.generate_private_key(ec.SECP256R1())
    csr = (x509.CertificateSigningRequestBuilder()
           .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common_name)]))
           .sign(key, hashes.SHA256()))
    key_pem = key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                serialization.NoEncryption())
    return key_pem, csr.public_bytes(serialization.Encoding.PEM)
