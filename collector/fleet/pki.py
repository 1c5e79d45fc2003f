"""The site CA (DESIGN.md §1, §4): issues broker, device, collector and API-client TLS
certificates, revokes them and publishes the CRL that the broker checks. ``cryptography``
only; never shells out.

CA directory (documented in certs/README.md)::

    ca.key            EC P-256 CA key, PKCS#8 PEM, mode 0600, optionally passphrase-encrypted
    ca.crt            self-signed CA certificate
    index.json        every certificate issued: serial, CN, kind, validity, revoked_at, reason
    crl.pem           the current CRL (rewritten by every revoke and by ``ca crl``)
    issued/<serial>.crt   a copy of every certificate issued
    server/<name>.key, server/<name>.crt   broker server key (0600) and certificate

Invariants:
- a key or certificate is never overwritten; key files are created 0600 and a key file that
  group/others can read is refused before use;
- a device certificate's CN matches the device-id pattern, a collector's is ``collector.<name>``
  (the dot keeps the two disjoint, so an ACL ``%u`` of a collector never names a device topic),
  an API integration's (kind ``api-client``) is ``api.<name>``: the three shapes are disjoint,
  so the CN alone says what a certificate is for (:func:`client_kind`). The broker refuses
  every access of an ``api.`` identity (timeclock_acl) and the API accepts no other kind;
  client certificates carry EKU clientAuth only, the broker's serverAuth only;
- every issued certificate is in the index before the call returns, so it can be revoked;
- every time comes from a ``now=`` parameter.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import fcntl
import ipaddress
import json
import os
import re
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, Literal

from cryptography import x509
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from collector import PKIError
from wire.errors import KeyFileError, WireError
from wire.fields import COLLECTOR_ID_RE, DEVICE_ID_RE
from wire.keys import check_private_file, write_private_file, write_public_file
from wire.tls import make_tls_key_and_csr

Kind = Literal["device", "collector", "api-client", "server"]
CLIENT_KINDS: tuple[str, ...] = ("device", "collector", "api-client")
API_CLIENT_ID_RE = re.compile(r"^api\.[a-z0-9](?:[a-z0-9-]{0,61}[a-z0-9])?$")

CA_KEY = "ca.key"
CA_CERT = "ca.crt"
INDEX = "index.json"
CRL = "crl.pem"
ISSUED_DIR = "issued"
SERVER_DIR = "server"

DEFAULT_CA_DAYS = 3650
DEFAULT_LEAF_DAYS = 397  # the CA/Browser Forum ceiling; short enough to force a rotation path
DEFAULT_CRL_DAYS = 30    # an expired CRL makes OpenSSL refuse *every* client: renew well before
MAX_LEAF_DAYS = 3650
# Certificates start 5 minutes in the past: a broker whose clock is a little behind the CA's
# must not refuse a certificate issued a second ago.
BACKDATE = dt.timedelta(minutes=5)

# RFC 5280 reasons an operator may give (certificateHold is left out: revocation is final here).
REASONS: dict[str, x509.ReasonFlags] = {
    "unspecified": x509.ReasonFlags.unspecified,
    "key-compromise": x509.ReasonFlags.key_compromise,
    "ca-compromise": x509.ReasonFlags.ca_compromise,
    "affiliation-changed": x509.ReasonFlags.affiliation_changed,
    "superseded": x509.ReasonFlags.superseded,
    "cessation-of-operation": x509.ReasonFlags.cessation_of_operation,
    "privilege-withdrawn": x509.ReasonFlags.privilege_withdrawn,
}

_DNS_RE = re.compile(r"^(?=.{1,253}$)(?:[a-zA-Z0-9](?:[a-zA-Z0-9-]{0,61}[a-zA-Z0-9])?\.)*"
                     r"[a-zA-Z0-9](?:[a-zA-Z0-9-]{0,61}[a-zA-Z0-9])?$")
_NAME_RE = re.compile(r"^[a-z0-9](?:[a-z0-9-]{0,61}[a-z0-9])?$")


def client_kind(cn: str) -> str | None:
    """The client-certificate kind a CN of this CA has (``device``, ``collector``,
    ``api-client``), or None: :meth:`CertificateAuthority.sign_csr` issues no other shape."""
    if DEVICE_ID_RE.fullmatch(cn):
        return "device"
    if COLLECTOR_ID_RE.fullmatch(cn):
        return "collector"
    if API_CLIENT_ID_RE.fullmatch(cn):
        return "api-client"
    return None


def _api_client_key_and_csr(cn: str) -> tuple[bytes, bytes]:
    """wire.tls.make_tls_key_and_csr for an ``api.<name>`` CN (wire knows only the two MQTT
    kinds): an EC P-256 key (PKCS#8 PEM) and its CSR."""
    if not API_CLIENT_ID_RE.fullmatch(cn):
        raise PKIError(f"api-client CN {cn[:80]!r} must be api.<name> "
                       f"(match {API_CLIENT_ID_RE.pattern})")
    key = ec.generate_private_key(ec.SECP256R1())
    csr = (x509.CertificateSigningRequestBuilder()
           .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, cn)]))
           .sign(key, hashes.SHA256()))
    return (key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                              serialization.NoEncryption()),
            csr.public_bytes(serialization.Encoding.PEM))


def _iso(t: dt.datetime) -> str:
    return t.astimezone(dt.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def _parse_iso(s: str) -> dt.datetime:
    return dt.datetime.strptime(s, "%Y-%m-%dT%H:%M:%SZ").replace(tzinfo=dt.UTC)


def _check_now(now: dt.datetime) -> dt.datetime:
    if now.tzinfo is None:
        raise PKIError("now= must be timezone-aware (UTC)")
    return now.astimezone(dt.UTC).replace(microsecond=0)


def parse_serial(text: str) -> int:
    """A serial as printed by ``ca list`` (hex), also accepting ``0x`` and colons."""
    s = text.strip().lower().removeprefix("0x").replace(":", "")
    try:
        value = int(s, 16)
    except ValueError as e:
        raise PKIError(f"serial {text[:80]!r} is not a hexadecimal number") from e
    if value <= 0:
        raise PKIError(f"serial {text[:80]!r} must be positive")
    return value


def format_serial(serial: int) -> str:
    return f"{serial:x}"


@dataclass(frozen=True, slots=True)
class IndexEntry:
    """One issued certificate as recorded in ``index.json``."""

    serial: str
    cn: str
    kind: str
    not_before: dt.datetime
    not_after: dt.datetime
    revoked_at: dt.datetime | None = None
    reason: str | None = None

    def to_dict(self) -> dict[str, Any]:
        return {"serial": self.serial, "cn": self.cn, "kind": self.kind,
                "not_before": _iso(self.not_before), "not_after": _iso(self.not_after),
                "revoked_at": None if self.revoked_at is None else _iso(self.revoked_at),
                "reason": self.reason}

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> IndexEntry:
        return cls(serial=str(d["serial"]), cn=str(d["cn"]), kind=str(d["kind"]),
                   not_before=_parse_iso(d["not_before"]), not_after=_parse_iso(d["not_after"]),
                   revoked_at=None if d["revoked_at"] is None else _parse_iso(d["revoked_at"]),
                   reason=d["reason"])

    def status(self, now: dt.datetime) -> str:
        if self.revoked_at is not None:
            return "revoked"
        return "expired" if now >= self.not_after else "valid"


@dataclass(frozen=True, slots=True)
class IssuedCert:
    """A certificate just issued: its index entry and PEM bytes."""

    entry: IndexEntry
    cert_pem: bytes


@dataclass(frozen=True, slots=True)
class ServerFiles:
    key_file: Path
    cert_file: Path
    entry: IndexEntry


def _write_new_public(path: Path, data: bytes) -> None:
    """Create a public file (0644); refuse to overwrite."""
    path.parent.mkdir(parents=True, exist_ok=True)
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
    except FileExistsError as e:
        raise PKIError(f"{path}: exists; refusing to overwrite a certificate") from e
    with os.fdopen(fd, "wb") as f:
        f.write(data)
        f.flush()
        os.fsync(f.fileno())


def _write_private(path: Path, data: bytes) -> None:
    try:
        write_private_file(path, data)
    except KeyFileError as e:
        raise PKIError(str(e)) from e


def _subject_cn(name: x509.Name) -> str:
    attrs = name.get_attributes_for_oid(NameOID.COMMON_NAME)
    if len(attrs) != 1:
        raise PKIError(f"expected exactly one common name (CN), found {len(attrs)}")
    value = attrs[0].value
    return value if isinstance(value, str) else value.decode("utf-8", "replace")


def _check_public_key(key: Any) -> None:
    if isinstance(key, ec.EllipticCurvePublicKey):
        if key.curve.name not in ("secp256r1", "secp384r1"):
            raise PKIError(f"EC curve {key.curve.name} is not accepted (use P-256)")
        return
    if isinstance(key, rsa.RSAPublicKey):
        if key.key_size < 2048:
            raise PKIError(f"RSA key of {key.key_size} bits is too small (minimum 2048)")
        return
    raise PKIError(f"{type(key).__name__} keys are not accepted (use EC P-256)")


def _check_days(days: int) -> None:
    if not 1 <= days <= MAX_LEAF_DAYS:
        raise PKIError(f"validity of {days} days is outside 1..{MAX_LEAF_DAYS}")


class CertificateAuthority:
    """A CA directory. Create one with :meth:`init`, open an existing one with :meth:`open`."""

    def __init__(self, directory: Path, cert: x509.Certificate, passphrase: bytes | None) -> None:
        self.directory = directory
        self.cert = cert
        self._passphrase = passphrase

    # -- paths --------------------------------------------------------------------------
    @property
    def key_file(self) -> Path:
        return self.directory / CA_KEY

    @property
    def cert_file(self) -> Path:
        return self.directory / CA_CERT

    @property
    def index_file(self) -> Path:
        return self.directory / INDEX

    @property
    def crl_file(self) -> Path:
        return self.directory / CRL

    def server_files(self, name: str = "broker") -> tuple[Path, Path]:
        """(key, cert) paths of a server certificate issued by :meth:`issue_server`."""
        return (self.directory / SERVER_DIR / f"{name}.key",
                self.directory / SERVER_DIR / f"{name}.crt")

    # -- lifecycle ----------------------------------------------------------------------
    @classmethod
    def init(cls, directory: Path, *, now: dt.datetime, passphrase: bytes | None = None,
             common_name: str = "timeclock CA", days: int = DEFAULT_CA_DAYS
             ) -> CertificateAuthority:
        """Create a new CA in ``directory`` (which may exist but must hold no CA yet)."""
        now = _check_now(now)
        directory = Path(directory)
        for name in (CA_KEY, CA_CERT, INDEX):
            if (directory / name).exists():
                raise PKIError(f"{directory / name}: exists; refusing to overwrite a CA")
        if passphrase is not None and len(passphrase) < 8:
            raise PKIError("the CA passphrase must be at least 8 bytes long")
        directory.mkdir(parents=True, exist_ok=True, mode=0o700)
        key = ec.generate_private_key(ec.SECP256R1())
        enc: serialization.KeySerializationEncryption = (
            serialization.BestAvailableEncryption(passphrase) if passphrase
            else serialization.NoEncryption())
        subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common_name)])
        ski = x509.SubjectKeyIdentifier.from_public_key(key.public_key())
        cert = (x509.CertificateBuilder()
                .subject_name(subject).issuer_name(subject)
                .public_key(key.public_key())
                .serial_number(x509.random_serial_number())
                .not_valid_before(now - BACKDATE)
                .not_valid_after(now + dt.timedelta(days=days))
                .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
                .add_extension(x509.KeyUsage(
                    digital_signature=False, content_commitment=False, key_encipherment=False,
                    data_encipherment=False, key_agreement=False, key_cert_sign=True,
                    crl_sign=True, encipher_only=False, decipher_only=False), critical=True)
                .add_extension(ski, critical=False)
                .add_extension(x509.AuthorityKeyIdentifier.from_issuer_subject_key_identifier(ski),
                               critical=False)
                .sign(key, hashes.SHA256()))
        _write_private(directory / CA_KEY,
                       key.private_bytes(serialization.Encoding.PEM,
                                         serialization.PrivateFormat.PKCS8, enc))
        _write_new_public(directory / CA_CERT, cert.public_bytes(serialization.Encoding.PEM))
        ca = cls(directory, cert, passphrase)
        ca._save_index({"v": 1, "crl_number": 0, "certs": []})
        ca.write_crl(now=now)
        return ca

    @classmethod
    def open(cls, directory: Path, *, passphrase: bytes | None = None) -> CertificateAuthority:
        """Open an existing CA directory (the key is loaded only when something is signed)."""
        directory = Path(directory)
        cert_file = directory / CA_CERT
        try:
            cert = x509.load_pem_x509_certificate(cert_file.read_bytes())
        except FileNotFoundError as e:
            raise PKIError(f"{directory}: no CA here (missing {CA_CERT}); "
                           f"create one with: timeclock-collector ca init {directory}") from e
        except ValueError as e:
            raise PKIError(f"{cert_file}: not a PEM certificate") from e
        if not (directory / INDEX).is_file():
            raise PKIError(f"{directory / INDEX}: missing; the CA directory is incomplete")
        return cls(directory, cert, passphrase)

    # -- internals ----------------------------------------------------------------------
    def _private_key(self) -> ec.EllipticCurvePrivateKey:
        try:
            check_private_file(self.key_file)
        except KeyFileError as e:
            raise PKIError(str(e)) from e
        data = self.key_file.read_bytes()
        try:
            key = serialization.load_pem_private_key(data, password=self._passphrase)
        except TypeError as e:
            if self._passphrase is None:
                raise PKIError(f"{self.key_file}: the CA key is passphrase-encrypted; "
                               f"give --passphrase-file") from e
            raise PKIError(f"{self.key_file}: the CA key is not encrypted; "
                           f"drop --passphrase-file") from e
        except ValueError as e:
            raise PKIError(f"{self.key_file}: cannot decrypt or parse the CA key "
                           f"(wrong passphrase?): give --passphrase-file the file with the "
                           f"passphrase the CA key was made with") from e
        if not isinstance(key, ec.EllipticCurvePrivateKey):
            raise PKIError(f"{self.key_file}: not an EC key")
        if key.public_key() != self.cert.public_key():
            raise PKIError(f"{self.key_file} does not belong to {self.cert_file}")
        return key

    @contextlib.contextmanager
    def _locked(self) -> Iterator[dict[str, Any]]:
        """Hold the CA lock and yield the index; it is saved if the block succeeds."""
        with open(self.directory / ".lock", "a+b") as lock:
            fcntl.flock(lock, fcntl.LOCK_EX)
            index = self._load_index()
            yield index
            self._save_index(index)

    def _load_index(self) -> dict[str, Any]:
        try:
            data: dict[str, Any] = json.loads(self.index_file.read_text(encoding="utf-8"))
        except (OSError, ValueError) as e:
            raise PKIError(f"{self.index_file}: unreadable index: {e}") from e
        if data.get("v") != 1 or not isinstance(data.get("certs"), list):
            raise PKIError(f"{self.index_file}: not a version 1 index")
        return data

    def _save_index(self, index: dict[str, Any]) -> None:
        write_public_file(self.index_file,
                        (json.dumps(index, indent=2, sort_keys=True) + "\n").encode())

    def _leaf(self, *, cn: str, public_key: Any, kind: Kind, days: int, now: dt.datetime,
              san: x509.SubjectAlternativeName | None) -> IssuedCert:
        _check_days(days)
        ca_key = self._private_key()
        eku = ExtendedKeyUsageOID.SERVER_AUTH if kind == "server" else \
            ExtendedKeyUsageOID.CLIENT_AUTH
        not_before = now - BACKDATE
        not_after = now + dt.timedelta(days=days)
        serial = x509.random_serial_number()
        builder = (x509.CertificateBuilder()
                   .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, cn)]))
                   .issuer_name(self.cert.subject)
                   .public_key(public_key)
                   .serial_number(serial)
                   .not_valid_before(not_before)
                   .not_valid_after(not_after)
                   .add_extension(x509.BasicConstraints(ca=False, path_length=None),
                                  critical=True)
                   .add_extension(x509.KeyUsage(
                       digital_signature=True, content_commitment=False,
                       key_encipherment=isinstance(public_key, rsa.RSAPublicKey),
                       data_encipherment=False, key_agreement=False, key_cert_sign=False,
                       crl_sign=False, encipher_only=False, decipher_only=False), critical=True)
                   .add_extension(x509.ExtendedKeyUsage([eku]), critical=False)
                   .add_extension(x509.SubjectKeyIdentifier.from_public_key(public_key),
                                  critical=False)
                   .add_extension(x509.AuthorityKeyIdentifier.from_issuer_public_key(
                       ca_key.public_key()), critical=False))
        if san is not None:
            builder = builder.add_extension(san, critical=False)
        cert = builder.sign(ca_key, hashes.SHA256())
        pem = cert.public_bytes(serialization.Encoding.PEM)
        entry = IndexEntry(serial=format_serial(serial), cn=cn, kind=kind,
                           not_before=not_before, not_after=not_after)
        with self._locked() as index:
            _write_new_public(self.directory / ISSUED_DIR / f"{entry.serial}.crt", pem)
            index["certs"].append(entry.to_dict())
        return IssuedCert(entry, pem)

    # -- issuing ------------------------------------------------------------------------
    def issue_server(self, *, dns: Sequence[str], ips: Sequence[str], now: dt.datetime,
                     name: str = "broker", days: int = DEFAULT_LEAF_DAYS) -> ServerFiles:
        """Issue a server key and certificate (SANs: ``dns`` names and ``ips``) into
        ``server/<name>.key`` (0600) and ``server/<name>.crt``."""
        now = _check_now(now)
        if not _NAME_RE.fullmatch(name):
            raise PKIError(f"server name {name[:80]!r} must match {_NAME_RE.pattern}")
        if not dns and not ips:
            raise PKIError("a server certificate needs at least one --dns name or --ip address")
        general: list[x509.GeneralName] = []
        for d in dns:
            if not _DNS_RE.fullmatch(d):
                raise PKIError(f"{d[:80]!r} is not a DNS name")
            general.append(x509.DNSName(d.lower()))
        for ip in ips:
            try:
                general.append(x509.IPAddress(ipaddress.ip_address(ip)))
            except ValueError as e:
                raise PKIError(f"{ip[:80]!r} is not an IP address") from e
        key_file, cert_file = self.server_files(name)
        for p in (key_file, cert_file):
            if p.exists():
                raise PKIError(f"{p}: exists; refusing to overwrite (revoke it and choose "
                               f"another --name, or move the old files away)")
        key = ec.generate_private_key(ec.SECP256R1())
        cn = dns[0].lower() if dns else str(ips[0])
        issued = self._leaf(cn=cn, public_key=key.public_key(), kind="server", days=days,
                            now=now, san=x509.SubjectAlternativeName(general))
        _write_private(key_file, key.private_bytes(serialization.Encoding.PEM,
                                                   serialization.PrivateFormat.PKCS8,
                                                   serialization.NoEncryption()))
        _write_new_public(cert_file, issued.cert_pem)
        return ServerFiles(key_file, cert_file, issued.entry)

    def sign_csr(self, csr_pem: bytes, *, kind: str, now: dt.datetime,
                 days: int = DEFAULT_LEAF_DAYS) -> IssuedCert:
        """Sign a device's, collector's or API client's CSR as a TLS client certificate (EKU
        clientAuth).

        Only the CSR's CN and public key are used; any extensions it asks for are ignored.
        """
        now = _check_now(now)
        if kind not in CLIENT_KINDS:
            raise PKIError(f"kind {kind!r} must be one of {', '.join(CLIENT_KINDS)}")
        try:
            csr = x509.load_pem_x509_csr(csr_pem)
        except ValueError as e:
            raise PKIError("not a PEM certificate signing request (CSR)") from e
        try:
            valid = csr.is_signature_valid
        except InvalidSignature:
            valid = False
        if not valid:
            raise PKIError("the CSR's self-signature does not verify")
        cn = _subject_cn(csr.subject)
        if kind == "device" and not DEVICE_ID_RE.fullmatch(cn):
            raise PKIError(f"device CN {cn[:80]!r} is not a device id "
                           f"(must match {DEVICE_ID_RE.pattern})")
        if kind == "collector" and not COLLECTOR_ID_RE.fullmatch(cn):
            raise PKIError(f"collector CN {cn[:80]!r} must be collector.<name> "
                           f"(match {COLLECTOR_ID_RE.pattern})")
        if kind == "api-client" and not API_CLIENT_ID_RE.fullmatch(cn):
            raise PKIError(f"api-client CN {cn[:80]!r} must be api.<name> "
                           f"(match {API_CLIENT_ID_RE.pattern})")
        public_key = csr.public_key()
        _check_public_key(public_key)
        return self._leaf(cn=cn, public_key=public_key, kind=kind,  # type: ignore[arg-type]
                          days=days, now=now, san=None)

    def issue_client(self, cn: str, key_file: Path, cert_file: Path, *, kind: str,
                     now: dt.datetime, days: int = DEFAULT_LEAF_DAYS) -> IssuedCert:
        """Generate a key (0600) and a signed client certificate in one step.

        For tests and lab setups: in production the device generates its own key and sends
        only the CSR (``timeclock-agent init``), so the key never leaves it.
        """
        for p in (key_file, cert_file):
            if Path(p).exists():
                raise PKIError(f"{p}: exists; refusing to overwrite")
        try:
            key_pem, csr_pem = (_api_client_key_and_csr(cn) if kind == "api-client"
                                else make_tls_key_and_csr(cn))
        except WireError as e:
            raise PKIError(str(e)) from e
        issued = self.sign_csr(csr_pem, kind=kind, now=now, days=days)
        _write_private(Path(key_file), key_pem)
        _write_new_public(Path(cert_file), issued.cert_pem)
        return issued

    # -- index, revocation, CRL ---------------------------------------------------------
    def entries(self) -> list[IndexEntry]:
        return [IndexEntry.from_dict(d) for d in self._load_index()["certs"]]

    def revoke(self, *, reason: str, now: dt.datetime, serial: str | None = None,
               cn: str | None = None, crl_days: int = DEFAULT_CRL_DAYS) -> list[IndexEntry]:
        """Revoke one certificate (``serial``) or every unrevoked one of ``cn``; rewrite
        ``crl.pem``. Returns the entries revoked now. The broker must then load the new CRL
        (see certs/README.md, "Revocation and Mosquitto")."""
        now = _check_now(now)
        if (serial is None) == (cn is None):
            raise PKIError("give exactly one of --serial or --cn")
        if reason not in REASONS:
            raise PKIError(f"reason {reason!r} must be one of {', '.join(REASONS)}")
        want = format_serial(parse_serial(serial)) if serial is not None else None
        revoked: list[IndexEntry] = []
        with self._locked() as index:
            certs = [IndexEntry.from_dict(d) for d in index["certs"]]
            matched = [e for e in certs if e.serial == want or (cn is not None and e.cn == cn)]
            if not matched:
                what = f"serial {want}" if want is not None else f"CN {cn!r}"
                raise PKIError(f"no certificate with {what} in {self.index_file}")
            for i, e in enumerate(certs):
                if e in matched and e.revoked_at is None:
                    certs[i] = replace(e, revoked_at=now, reason=reason)
                    revoked.append(certs[i])
            if not revoked:
                raise PKIError("already revoked: " + ", ".join(
                    f"{e.serial} ({e.cn}) at {_iso(e.revoked_at)}"
                    for e in matched if e.revoked_at is not None))
            index["certs"] = [e.to_dict() for e in certs]
        self.write_crl(now=now, days=crl_days)
        return revoked

    def crl(self, *, now: dt.datetime, days: int = DEFAULT_CRL_DAYS) -> bytes:
        """A signed CRL (PEM) of every revoked certificate, valid ``days`` from ``now``."""
        now = _check_now(now)
        if not 1 <= days <= 366:
            raise PKIError(f"CRL validity of {days} days is outside 1..366")
        ca_key = self._private_key()
        with self._locked() as index:
            number = int(index.get("crl_number", 0)) + 1
            index["crl_number"] = number
            certs = [IndexEntry.from_dict(d) for d in index["certs"]]
        builder = (x509.CertificateRevocationListBuilder()
                   .issuer_name(self.cert.subject)
                   .last_update(now - BACKDATE)
                   .next_update(now + dt.timedelta(days=days))
                   .add_extension(x509.CRLNumber(number), critical=False)
                   .add_extension(x509.AuthorityKeyIdentifier.from_issuer_public_key(
                       ca_key.public_key()), critical=False))
        for e in certs:
            if e.revoked_at is None:
                continue
            builder = builder.add_revoked_certificate(
                x509.RevokedCertificateBuilder()
                .serial_number(parse_serial(e.serial))
                .revocation_date(e.revoked_at)
                .add_extension(x509.CRLReason(REASONS[e.reason or "unspecified"]),
                               critical=False)
                .build())
        return builder.sign(ca_key, hashes.SHA256()).public_bytes(serialization.Encoding.PEM)

    def write_crl(self, *, now: dt.datetime, out: Path | None = None,
                  days: int = DEFAULT_CRL_DAYS) -> Path:
        """Write the CRL atomically to ``out`` (default ``<ca>/crl.pem``); return the path."""
        path = Path(out) if out is not None else self.crl_file
        write_public_file(path, self.crl(now=now, days=days))
        return path
