"""The clock's own TLS certificate and its TLS failures, named: what the clock says and does.

Two sources, one vocabulary of states (:data:`STATES`):

- :func:`check_certificate` reads the clock's certificate, key and the configured CA and names
  what is wrong from the clock's point of view *now* (``now=``): not yet valid (the clock is
  behind: no RTC, NTP not synced yet), expired, expiring within ``warn_days``, not issued by
  the configured CA, key not matching. The agent runs it at start and after every failed
  connection; ``timeclock-agent check-config`` runs it too.
- :func:`classify_tls_error` maps what Python/OpenSSL reported for a handshake to a state:
  an :class:`ssl.SSLCertVerificationError` (our check of the *broker's* certificate: not
  trusted, not yet valid as our clock sees it, expired) or an alert the broker sent
  (``SSLV3_ALERT_CERTIFICATE_REVOKED``, ``..._CERTIFICATE_EXPIRED``, ``TLSV1_ALERT_UNKNOWN_CA``).
  With TLS 1.3 the broker checks our certificate after our side considers the handshake done,
  so its alert arrives on the first read: :func:`probe_broker` handshakes and reads once, and
  returns the exception that ended it (or None if the broker kept the connection open).

Invariants: nothing here opens the key for anything but comparing public keys; messages name
files and states, never key material; every :class:`CertProblem` has one operator-facing line
that says what to do, and ``outcome`` is the feedback outcome it triggers (agent.feedback).
"""

from __future__ import annotations

import datetime as dt
import socket
import ssl
from dataclasses import dataclass
from pathlib import Path

from cryptography import x509
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed25519, padding, rsa
from cryptography.hazmat.primitives.asymmetric.types import PublicKeyTypes

# state -> feedback outcome (None: no signal at the clock for it)
STATES: dict[str, str | None] = {
    "ok": None,
    "expiring": None,               # a warning: still connects
    "not-yet-valid": "not-yet-valid",
    "expired": "expired",
    "revoked": "revoked",
    "unknown-ca": "unknown-ca",
    "key-mismatch": "key-mismatch",
    "broker-untrusted": "broker-untrusted",
    "unreadable": "key-mismatch",
    "tls-refused": None,            # the broker ended the handshake for another reason
}
DEFAULT_WARN_DAYS = 30


@dataclass(frozen=True, slots=True)
class CertProblem:
    """A named certificate state with its one-line message (what is wrong, what to do)."""

    state: str
    message: str

    def __post_init__(self) -> None:
        if self.state not in STATES:
            raise ValueError(f"unknown certificate state {self.state!r}")

    @property
    def outcome(self) -> str | None:
        return STATES[self.state]

    @property
    def blocking(self) -> bool:
        """The clock cannot connect in this state (everything but ok and expiring)."""
        return self.state not in ("ok", "expiring")


def _ts(t: dt.datetime) -> str:
    return t.astimezone(dt.UTC).strftime("%Y-%m-%d %H:%M:%S UTC")


def _issued_by(cert: x509.Certificate, ca: x509.Certificate) -> bool:
    if cert.issuer != ca.subject:
        return False
    key = ca.public_key()
    sig_hash = cert.signature_hash_algorithm
    try:
        if isinstance(key, ec.EllipticCurvePublicKey) and sig_hash is not None:
            key.verify(cert.signature, cert.tbs_certificate_bytes, ec.ECDSA(sig_hash))
        elif isinstance(key, rsa.RSAPublicKey) and sig_hash is not None:
            key.verify(cert.signature, cert.tbs_certificate_bytes, padding.PKCS1v15(),
                       sig_hash)
        elif isinstance(key, ed25519.Ed25519PublicKey):
            key.verify(cert.signature, cert.tbs_certificate_bytes)
        else:
            return False
    except InvalidSignature:
        return False
    return True


def _spki(pub: PublicKeyTypes) -> bytes:
    return pub.public_bytes(serialization.Encoding.DER,
                            serialization.PublicFormat.SubjectPublicKeyInfo)


def check_certificate(cert_file: Path, key_file: Path | None, ca_file: Path | None, *,
                      now: dt.datetime, warn_days: int = DEFAULT_WARN_DAYS
                      ) -> list[CertProblem]:
    """Everything wrong with the clock's certificate at ``now`` (empty: all good)."""
    try:
        cert = x509.load_pem_x509_certificate(Path(cert_file).read_bytes())
    except (OSError, ValueError) as e:
        return [CertProblem("unreadable", f"{cert_file}: cannot read the clock certificate "
                                          f"({e}): re-provision the clock")]
    problems: list[CertProblem] = []
    nb, na = cert.not_valid_before_utc, cert.not_valid_after_utc
    if now < nb:
        problems.append(CertProblem(
            "not-yet-valid",
            f"certificate NOT YET VALID: the clock's time is {_ts(now)}, the certificate is "
            f"valid from {_ts(nb)} ({(nb - now).total_seconds() / 3600:.1f} h later): the "
            "clock is probably behind (no RTC, or NTP not synced yet); check its time and "
            "network, timesyncd/chrony"))
    elif now >= na:
        problems.append(CertProblem(
            "expired", f"certificate EXPIRED on {_ts(na)} (clock time {_ts(now)}): renew "
                       "it (docs/operations.md, `device renew`) or re-provision the clock"))
    elif na - now <= dt.timedelta(days=warn_days):
        problems.append(CertProblem(
            "expiring", f"certificate expires on {_ts(na)}, in "
                        f"{(na - now).days} day(s): renew it soon (`device renew`)"))
    if ca_file is not None:
        try:
            ca = x509.load_pem_x509_certificate(Path(ca_file).read_bytes())
        except (OSError, ValueError) as e:
            problems.append(CertProblem("unreadable", f"{ca_file}: cannot read the CA "
                                                      f"certificate ({e})"))
        else:
            if not _issued_by(cert, ca):
                problems.append(CertProblem(
                    "unknown-ca", f"certificate not issued by the configured CA "
                                  f"({cert.issuer.rfc4514_string()} is not "
                                  f"{ca.subject.rfc4514_string()}): re-provision the clock "
                                  "from this site's CA"))
    if key_file is not None:
        try:
            key = serialization.load_pem_private_key(Path(key_file).read_bytes(), None)
        except (OSError, ValueError, TypeError) as e:
            problems.append(CertProblem("unreadable", f"{key_file}: cannot read the TLS key "
                                                      f"({type(e).__name__})"))
        else:
            if _spki(key.public_key()) != _spki(cert.public_key()):
                problems.append(CertProblem(
                    "key-mismatch", f"TLS key {key_file} does not match certificate "
                                    f"{cert_file}: install the certificate issued for this "
                                    "key, or re-provision the clock"))
    return problems


# OpenSSL reason strings of alerts the broker sends about OUR certificate.
_ALERTS = {
    "SSLV3_ALERT_CERTIFICATE_REVOKED": CertProblem(
        "revoked", "certificate REVOKED by the site CA (the broker refused it): ask ops to "
                   "re-provision this clock"),
    "SSLV3_ALERT_CERTIFICATE_EXPIRED": CertProblem(
        "expired", "the broker says the certificate is EXPIRED: renew it or re-provision "
                   "the clock (and check the clock's time)"),
    "TLSV1_ALERT_UNKNOWN_CA": CertProblem(
        "unknown-ca", "the broker does not know the CA of this clock's certificate (unknown "
                      "CA): re-provision the clock from this site's CA"),
    "SSLV3_ALERT_BAD_CERTIFICATE": CertProblem(
        "tls-refused", "the broker refused the clock's certificate (bad certificate): check "
                       "it with `timeclock-agent check-config`"),
    "SSLV3_ALERT_UNSUPPORTED_CERTIFICATE": CertProblem(
        "tls-refused", "the broker refused the clock's certificate (unsupported): "
                       "re-provision the clock"),
    "TLSV13_ALERT_CERTIFICATE_REQUIRED": CertProblem(
        "tls-refused", "the broker requires a client certificate the clock did not send: "
                       "check keys.tls_cert / keys.tls_key"),
}


def classify_tls_error(exc: BaseException | None, *, now: dt.datetime) -> CertProblem | None:
    """The state a handshake failure names, or None (not a certificate matter: network, DNS,
    broker down)."""
    if isinstance(exc, ssl.SSLCertVerificationError):
        code = exc.verify_code
        msg = exc.verify_message
        if code == 9:      # X509_V_ERR_CERT_NOT_YET_VALID
            return CertProblem(
                "not-yet-valid",
                f"the broker's certificate is NOT YET VALID at the clock's time {_ts(now)}: "
                "the clock is probably behind (no RTC, or NTP not synced yet); check its time")
        if code == 10:     # X509_V_ERR_CERT_HAS_EXPIRED
            return CertProblem(
                "broker-untrusted", f"the broker's certificate has EXPIRED at the clock's time "
                                    f"{_ts(now)}: ops must renew the broker certificate "
                                    "(or the clock is far ahead)")
        return CertProblem("broker-untrusted",
                           f"the broker's certificate is not trusted ({msg}, code {code}): "
                           "check keys.ca_cert and the broker host name")
    if isinstance(exc, ssl.SSLError):
        reason = getattr(exc, "reason", None) or ""
        hit = _ALERTS.get(str(reason))
        if hit is not None:
            return hit
        for name, problem in _ALERTS.items():
            if name in str(exc):
                return problem
    return None


def probe_broker(host: str, port: int, context: ssl.SSLContext, *,
                 timeout_s: float = 5.0) -> BaseException | None:
    """Handshake with the broker and read once; the exception that ended it, or None.

    Sends nothing (no MQTT CONNECT, so it never takes over the clock's session): a broker that
    accepted our certificate waits for data, and the read times out (None)."""
    try:
        with socket.create_connection((host, port), timeout=timeout_s) as raw, \
                context.wrap_socket(raw, server_hostname=host) as tls:
            tls.settimeout(min(timeout_s, 2.0))
            try:
                data = tls.recv(1)
            except TimeoutError:
                return None
            if not data:
                return ConnectionResetError("the broker closed the connection after the "
                                            "handshake")
    except (ssl.SSLError, OSError) as e:
        return e
    return None


def diagnose(cert_file: Path, key_file: Path | None, ca_file: Path | None, *,
             now: dt.datetime, warn_days: int = DEFAULT_WARN_DAYS,
             error: BaseException | None = None,
             probe: tuple[str, int, ssl.SSLContext] | None = None) -> CertProblem:
    """The one state to report: a blocking local problem first, then the handshake ``error``
    seen (or one :func:`probe_broker` finds), then ``expiring``, else ``ok``."""
    local = check_certificate(cert_file, key_file, ca_file, now=now, warn_days=warn_days)
    blocking = [p for p in local if p.blocking]
    if blocking:
        return blocking[0]
    found = classify_tls_error(error, now=now)
    if found is None and probe is not None:
        found = classify_tls_error(probe_broker(*probe), now=now)
    if found is not None:
        return found
    return local[0] if local else CertProblem("ok", "certificate valid")
