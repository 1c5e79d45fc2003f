"""Provisioning bundles: what the operator hands a clock after enrolling it (control D1, D3).

Enrolment with keys made on the device: ``timeclock-agent init`` writes the TLS key, a CSR
(CN = device id) and the Ed25519 signing key on the clock; only the CSR and the signing
*public* key travel. :func:`enroll_device` signs the CSR with the site CA, registers the
device and its key in the ledger (a ``device`` entry, collector.ledger.registry) and returns a
:class:`Bundle`: one JSON file with the device certificate, the CA certificate, the log public
key (which the agent needs to verify receipts), the broker address, the reader sections and,
when given, the ledger's X25519 seal public key (the clock then seals its envelopes, §8.6).
``timeclock-agent provision BUNDLE`` (agent/provision.py) installs it with one command. The
bundle's one definition, shared with the agent, is wire.provisioning.ProvisioningBundle
(``Bundle`` here). Format: docs/operations.md, "The bundle".

Invariants:
- a bundle never contains private key material: ProvisioningBundle refuses to exist or be
  written with a PEM private key block in it, and nothing in it comes from a private key;
- the registry is checked before the CA signs (device not enrolled, key unused), so a refused
  enrolment issues no certificate; if the ledger append still fails after signing, the new
  certificate is revoked at once;
- a renewal bundle (:func:`renew_certificate`) carries a certificate for an *active* device
  only and no agent configuration: the clock keeps its keys, queue and config.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.x509.oid import NameOID

from collector import PKIError, RegistryError
from collector.fleet.pki import DEFAULT_LEAF_DAYS, CertificateAuthority, IssuedCert
from collector.ledger import registry
from collector.ledger.sqlbase import SQLStore
from wire.clock import to_us
from wire.errors import WireError
from wire.fields import DEVICE_ID_RE
from wire.keys import VerifyKey
from wire.provisioning import HOST_RE, ProvisioningBundle
from wire.sealed import SealPublicKey

DEFAULT_READERS: dict[str, dict[str, Any]] = {
    "front": {"kind": "rdm6300", "port": "/dev/serial0", "action": "punch"}}

Bundle = ProvisioningBundle
"""The bundle this module writes: its one definition is wire.provisioning (the agent reads it
with the same class)."""


class ProvisionError(PKIError):
    """A bundle cannot be made (bad CSR, key, broker address)."""


def parse_broker(text: str) -> tuple[str, int]:
    """``HOST:PORT`` (``[v6]:PORT`` for IPv6) → (host, port)."""
    host, sep, port = text.rpartition(":")
    host = host.strip("[]")
    if not sep or not host or not HOST_RE.fullmatch(host) or not port.isdigit() \
            or not 1 <= int(port) <= 65535:
        raise ProvisionError(f"broker {text[:80]!r}: expected HOST:PORT, e.g. "
                             f"mqtt.example.org:8883")
    return host, int(port)


def csr_device(csr_pem: bytes) -> str:
    """The device id a CSR asks for (its CN), checked against the device-id pattern."""
    try:
        csr = x509.load_pem_x509_csr(csr_pem)
    except ValueError as e:
        raise ProvisionError("the CSR is not a PEM certificate signing request") from e
    cns = csr.subject.get_attributes_for_oid(NameOID.COMMON_NAME)
    cn = str(cns[0].value) if len(cns) == 1 else ""
    if not DEVICE_ID_RE.fullmatch(cn):
        raise ProvisionError(f"the CSR's CN {cn[:80]!r} is not a device id "
                             f"({DEVICE_ID_RE.pattern})")
    return cn


def load_signing_public(value: str) -> VerifyKey:
    """The device's Ed25519 public key: base64 text, or a file holding it (e.g. the
    ``signing.pub`` that ``timeclock-agent init`` prints/writes)."""
    text = value.strip()
    path = Path(text)
    if len(text) != 44 or path.exists():
        try:
            text = path.read_text(encoding="utf-8").strip()
        except OSError as e:
            raise ProvisionError(f"--signing-key {value[:80]!r}: neither a base64 public key "
                                 f"nor a readable file ({e.strerror})") from e
    try:
        return VerifyKey.from_b64(text)
    except WireError as e:
        raise ProvisionError(f"signing key: not a base64 Ed25519 public key ({e})") from e


def _cert_bundle(purpose: str, device: str, site: str, key_id: str, *,
                 issued: IssuedCert, ca: CertificateAuthority, **more: Any) -> Bundle:
    return Bundle(purpose=purpose, device=device, site=site, signing_key_id=key_id,
                  cert_pem=issued.cert_pem.decode("ascii"),
                  ca_pem=ca.cert.public_bytes(serialization.Encoding.PEM).decode("ascii"),
                  cert_serial=issued.entry.serial,
                  cert_not_after=issued.entry.not_after.strftime("%Y-%m-%dT%H:%M:%SZ"),
                  **more)


def enroll_device(store: SQLStore, ca: CertificateAuthority, csr_pem: bytes, signing_key: str,
                  *, site: str, broker: tuple[str, int], log_public_key: VerifyKey,
                  now: dt.datetime, readers: Mapping[str, Mapping[str, Any]] | None = None,
                  approver: str | None = None, days: int = DEFAULT_LEAF_DAYS,
                  mqtt_options: Mapping[str, Any] | None = None,
                  seal_public_key: SealPublicKey | None = None) -> Bundle:
    """Sign the device's CSR, record its enrolment in the ledger, return its bundle."""
    device = csr_device(csr_pem)
    vk = load_signing_public(signing_key)
    existing = store.device(device)
    if existing is not None:
        raise RegistryError(f"device {device} is already enrolled ({existing.status}, idx "
                            f"{existing.enrolled_idx}); renew its certificate with "
                            f"`device renew`, or give a new clock a new id")
    owner = store.key_owner(vk.key_id)
    if owner is not None:
        raise RegistryError(f"signing key {vk.key_id} is already registered to {owner}")
    issued = ca.sign_csr(csr_pem, kind="device", now=now, days=days)
    try:
        registry.enroll(store, device, site, vk.b64, now_us=_us(now), approver=approver)
    except BaseException:
        ca.revoke(serial=issued.entry.serial, reason="cessation-of-operation", now=now)
        raise
    return _cert_bundle("enrol", device, site, vk.key_id, issued=issued, ca=ca,
                        log_public_key=log_public_key.b64, broker_host=broker[0],
                        broker_port=broker[1],
                        readers=dict(readers if readers is not None else DEFAULT_READERS),
                        mqtt_options=dict(mqtt_options or {}),
                        seal_public_key=None if seal_public_key is None else seal_public_key.b64)


def renew_certificate(store: SQLStore, ca: CertificateAuthority, csr_pem: bytes, *,
                      now: dt.datetime, days: int = DEFAULT_LEAF_DAYS) -> Bundle:
    """A new certificate for an enrolled, active device (same or new TLS key). The old
    certificate stays valid until it expires (revoke it with ``ca revoke --serial`` once the
    clock reconnected with the new one, if you want)."""
    device = csr_device(csr_pem)
    rec = store.device(device)
    if rec is None:
        raise RegistryError(f"device {device} is not enrolled; enrol it first")
    if rec.status != "active":
        raise RegistryError(f"device {device} is {rec.status}; it gets no new certificate")
    keys = [k for k in store.keys(device) if k.until_seq is None and k.status == "active"]
    issued = ca.sign_csr(csr_pem, kind="device", now=now, days=days)
    return _cert_bundle("renew", device, rec.site, keys[-1].key_id if keys else "",
                        issued=issued, ca=ca)


def _us(now: dt.datetime) -> int:
    return to_us(now.timestamp())
