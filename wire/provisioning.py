"""The provisioning bundle (docs/operations.md, "The bundle"): what the operator hands a clock.

Written by the collector (collector.fleet.provisioning, ``device enroll`` / ``device renew``),
read by the agent (agent.provision, ``timeclock-agent provision``); this is its one
definition. One JSON file::

    {"v": 1, "kind": "timeclock-provisioning-bundle", "purpose": "enrol" | "renew",
     "device": …, "site": …, "signing_key_id": …, "cert_serial": …, "cert_not_after": …,
     "device_cert": PEM, "ca_cert": PEM,
     "log_public_key": b64, "broker": {"host", "port", "options"}, "readers": {…},  # enrol only
     "seal_public_key": b64}  # optional, enrol only: the ledger's X25519 seal key (wire.sealed)

An enrolment bundle with ``seal_public_key`` makes the clock seal its envelopes (DESIGN.md §8.6);
older bundles without it stay valid and the clock publishes plain §4 envelopes.

Invariants: a :class:`ProvisioningBundle` that exists is valid, field by field, and holds no
private key (no PEM private key block anywhere in it): building one with a private key, writing
one or reading bytes that contain one is refused with :class:`PrivateKeyInBundleError`;
parsing is strict (exact fields per purpose, no duplicate keys, bounded size). Whether the
certificates match the clock's keys and CA is the agent's check (it holds the TLS key).
"""

from __future__ import annotations

import json
import os
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from wire.errors import DecodeError, OversizeError, WireError
from wire.fields import DEVICE_ID_RE, KEY_ID_RE, get_choice, get_int, get_str, require_object
from wire.keys import VerifyKey
from wire.sealed import SealPublicKey

BUNDLE_KIND = "timeclock-provisioning-bundle"
BUNDLE_VERSION = 1
PURPOSES = frozenset({"enrol", "renew"})
MAX_BUNDLE_BYTES = 256 * 1024
MAX_SITE_CHARS = 128
PRIVATE_PEM_RE = re.compile(r"-----BEGIN [A-Z ]*PRIVATE KEY-----")
HOST_RE = re.compile(r"^[A-Za-z0-9.:\-\[\]]{1,253}$")
SERIAL_RE = re.compile(r"^[0-9a-f]{1,40}$")
NOT_AFTER_RE = re.compile(r"^[0-9]{4}-[0-9]{2}-[0-9]{2}T[0-9]{2}:[0-9]{2}:[0-9]{2}Z$")
NAME_RE = re.compile(r"^[A-Za-z0-9_.-]{1,64}$")
CERT_BEGIN = "-----BEGIN CERTIFICATE-----"
CERT_END = "-----END CERTIFICATE-----"

_COMMON = frozenset({"v", "kind", "purpose", "device", "site", "signing_key_id", "cert_serial",
                     "cert_not_after", "device_cert", "ca_cert"})
_ENROL = _COMMON | {"log_public_key", "broker", "readers"}
_BROKER = frozenset({"host", "port", "options"})


class BundleError(DecodeError):
    """Bytes or fields that are not a valid provisioning bundle."""

    reason = "bad-bundle"


class PrivateKeyInBundleError(BundleError):
    """A bundle that contains a PEM private key block: no genuine bundle does."""

    reason = "private-key-in-bundle"


def guard_no_private_key(text: str | bytes) -> None:
    """Refuse ``text`` if it contains a PEM private key block (the reason bundles exist is
    that private keys never leave the clock)."""
    s = text.decode("utf-8", "replace") if isinstance(text, bytes) else text
    if PRIVATE_PEM_RE.search(s):
        raise PrivateKeyInBundleError("the bundle contains a private key, which no genuine "
                                      "bundle does: refused")


def _is_scalar(v: Any) -> bool:
    return isinstance(v, str | int | float | bool)


def _options(value: Any, where: str) -> dict[str, Any]:
    """An agent TOML section: names → scalars or arrays of scalars (no nested tables)."""
    if not isinstance(value, dict):
        raise BundleError(f"{where}: expected an object", field=where)
    for k, v in value.items():
        if not NAME_RE.fullmatch(k):
            raise BundleError(f"{where}: {k[:70]!r} is not an option name", field=where)
        if not (_is_scalar(v) or (isinstance(v, list) and all(_is_scalar(x) for x in v))):
            raise BundleError(f"{where}.{k}: expected a string, number, boolean or an array "
                              f"of them", field=where)
    return dict(value)


def _pem_cert(obj: Mapping[str, Any], key: str) -> str:
    text = get_str(obj, key)
    if not text.startswith(CERT_BEGIN) or CERT_END not in text:
        raise BundleError(f"{key}: expected a PEM certificate", field=key)
    return text


def _seal_key(obj: Mapping[str, Any]) -> str:
    try:
        return SealPublicKey.from_b64(get_str(obj, "seal_public_key")).b64
    except DecodeError as e:
        raise BundleError(f"seal_public_key: not a base64 X25519 public key ({e})",
                          field="seal_public_key") from e


def _bundle_fields(d: Any) -> dict[str, Any]:
    """The constructor arguments of the bundle ``d`` (a decoded JSON object), or raise."""
    if not isinstance(d, dict):
        raise BundleError("provisioning bundle: expected a JSON object")
    guard_no_private_key(json.dumps(d, ensure_ascii=False, default=str))
    if d.get("kind") != BUNDLE_KIND or d.get("v") != BUNDLE_VERSION:
        raise BundleError(f"not a version {BUNDLE_VERSION} timeclock provisioning bundle",
                          field="kind")
    purpose = get_choice(d, "purpose", PURPOSES) if "purpose" in d else None
    if purpose is None:
        raise BundleError("provisioning bundle: missing field(s) purpose", field="purpose")
    # seal_public_key is optional in an enrolment bundle: bundles before §8.6 lack it.
    keys = (_ENROL | ({"seal_public_key"} & set(d))) if purpose == "enrol" else _COMMON
    obj = require_object(d, f"{purpose} bundle", keys)
    site = get_str(obj, "site")
    if not site.strip() or len(site) > MAX_SITE_CHARS:
        raise BundleError(f"site: expected a name of 1..{MAX_SITE_CHARS} characters",
                          field="site")
    # A renewal of a clock whose every key was revoked names no signing key.
    signing_key_id = get_str(obj, "signing_key_id")
    if not (KEY_ID_RE.fullmatch(signing_key_id) or (purpose == "renew" and not signing_key_id)):
        raise BundleError(f"signing_key_id: {signing_key_id[:40]!r} is not a key id",
                          field="signing_key_id")
    out: dict[str, Any] = {
        "purpose": purpose, "device": get_str(obj, "device", DEVICE_ID_RE), "site": site,
        "signing_key_id": signing_key_id, "cert_pem": _pem_cert(obj, "device_cert"),
        "ca_pem": _pem_cert(obj, "ca_cert"), "cert_serial": get_str(obj, "cert_serial",
                                                                    SERIAL_RE),
        "cert_not_after": get_str(obj, "cert_not_after", NOT_AFTER_RE)}
    if purpose == "enrol":
        try:
            out["log_public_key"] = VerifyKey.from_b64(get_str(obj, "log_public_key")).b64
        except DecodeError as e:
            raise BundleError(f"log_public_key: not a base64 Ed25519 public key ({e})",
                              field="log_public_key") from e
        if "seal_public_key" in obj:
            out["seal_public_key"] = _seal_key(obj)
        broker = require_object(obj["broker"], "broker", _BROKER)
        out["broker_host"] = get_str(broker, "host", HOST_RE)
        port = get_int(broker, "port", minimum=1)
        if port > 65535:
            raise BundleError(f"broker.port: {port} is not a TCP port", field="port")
        out["broker_port"] = port
        out["mqtt_options"] = _options(broker["options"], "broker.options")
        readers = obj["readers"]
        if not isinstance(readers, dict) or not readers:
            raise BundleError("readers: expected an object with at least one reader section",
                              field="readers")
        for name in readers:
            if not NAME_RE.fullmatch(name):
                raise BundleError(f"readers: {name[:70]!r} is not a reader name",
                                  field="readers")
        out["readers"] = {n: _options(s, f"readers.{n}") for n, s in readers.items()}
    return out


def _no_duplicates(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    out = dict(pairs)
    if len(out) != len(pairs):
        raise BundleError("provisioning bundle: a key appears twice in one object")
    return out


def _no_constant(text: str) -> Any:
    raise BundleError(f"provisioning bundle: {text} is not allowed")


@dataclass(frozen=True, slots=True)
class ProvisioningBundle:
    """A provisioning bundle. ``purpose`` is ``enrol`` (certificate + agent configuration)
    or ``renew`` (certificate only; the enrol-only fields are None/empty)."""

    purpose: str
    device: str
    site: str
    signing_key_id: str
    cert_pem: str
    ca_pem: str
    cert_serial: str
    cert_not_after: str
    log_public_key: str | None = None
    broker_host: str | None = None
    broker_port: int | None = None
    readers: Mapping[str, Mapping[str, Any]] = field(default_factory=dict)
    mqtt_options: Mapping[str, Any] = field(default_factory=dict)  # extra agent [mqtt] keys
    seal_public_key: str | None = None   # enrol only, optional: DESIGN.md §8.6 sealing

    def __post_init__(self) -> None:
        try:
            _bundle_fields(self.to_dict())
        except BundleError:
            raise
        except WireError as e:
            raise BundleError(f"provisioning bundle: {e}", field=e.field) from e
        if self.purpose == "renew" and (self.log_public_key is not None or self.readers
                                        or self.seal_public_key is not None
                                        or self.broker_host is not None
                                        or self.broker_port is not None or self.mqtt_options):
            raise BundleError("a renewal bundle carries the certificate only")

    @classmethod
    def from_dict(cls, d: Any) -> ProvisioningBundle:
        try:
            return cls(**_bundle_fields(d))
        except BundleError:
            raise
        except WireError as e:
            raise BundleError(f"provisioning bundle: {e}", field=e.field) from e

    @classmethod
    def from_bytes(cls, data: bytes) -> ProvisioningBundle:
        if len(data) > MAX_BUNDLE_BYTES:
            raise OversizeError(f"provisioning bundle: {len(data)} bytes, more than "
                                f"{MAX_BUNDLE_BYTES}")
        guard_no_private_key(data)
        try:
            d = json.loads(data.decode("utf-8"), object_pairs_hook=_no_duplicates,
                           parse_constant=_no_constant)
        except UnicodeDecodeError as e:
            raise BundleError(f"not a provisioning bundle (not UTF-8: {e.reason})") from e
        except ValueError as e:
            raise BundleError(f"not a provisioning bundle (invalid JSON: {e})") from e
        return cls.from_dict(d)

    def to_dict(self) -> dict[str, Any]:
        d: dict[str, Any] = {
            "v": BUNDLE_VERSION, "kind": BUNDLE_KIND, "purpose": self.purpose,
            "device": self.device, "site": self.site, "signing_key_id": self.signing_key_id,
            "cert_serial": self.cert_serial, "cert_not_after": self.cert_not_after,
            "device_cert": self.cert_pem, "ca_cert": self.ca_pem}
        if self.purpose == "enrol":
            d["log_public_key"] = self.log_public_key
            d["broker"] = {"host": self.broker_host, "port": self.broker_port,
                           "options": dict(self.mqtt_options)}
            d["readers"] = {k: dict(v) for k, v in self.readers.items()}
            if self.seal_public_key is not None:
                d["seal_public_key"] = self.seal_public_key
        return d

    def to_bytes(self) -> bytes:
        """Indented JSON (an operator may read it), one trailing newline."""
        data = (json.dumps(self.to_dict(), indent=1, sort_keys=True, allow_nan=False)
                + "\n").encode()
        guard_no_private_key(data)
        return data

    def write(self, path: Path, *, force: bool = False) -> Path:
        """Write the bundle to a new file (``force``: or over an existing one), mode 0600
        whatever the umask (it names the clock, its site and its readers)."""
        data = self.to_bytes()
        flags = os.O_WRONLY | os.O_CREAT | os.O_TRUNC | (0 if force else os.O_EXCL)
        try:
            fd = os.open(path, flags, 0o600)
            with open(fd, "wb") as f:
                os.fchmod(f.fileno(), 0o600)
                f.write(data)
        except FileExistsError as e:
            raise BundleError(f"{path}: exists; refusing to overwrite a bundle (use --force)"
                              ) from e
        except OSError as e:
            raise BundleError(f"cannot write the bundle {path}: {e.strerror}") from e
        return path
