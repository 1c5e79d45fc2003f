"""wire.provisioning and wire.rotation: the bundle and the rotation request, defined once.

Both sides use these classes (collector.fleet.provisioning and collector.cli.device write and
check, agent.provision reads and signs); the end-to-end flows are tests/collector/test_fleet.py.
"""

from __future__ import annotations

import json
from dataclasses import replace
from typing import Any

import pytest

from tests.wire.bundle_kit import DEVICE_KEY, DEVICE_KEY_V2, ROGUE_KEY, seeded_key
from wire.canonical import canonical
from wire.errors import DecodeError, KeyMismatchError, OversizeError, SignatureError
from wire.keys import SigningKey
from wire.provisioning import (
    BundleError,
    PrivateKeyInBundleError,
    ProvisioningBundle,
)
from wire.rotation import (
    MAX_REQUEST_BYTES,
    ROTATION_DOMAIN,
    RotationRequest,
    SignedRotationRequest,
)

PEM = "-----BEGIN CERTIFICATE-----\nMIIB\n-----END CERTIFICATE-----\n"
PRIVATE = "-----BEGIN PRIVATE KEY-----\nMC4C\n-----END PRIVATE KEY-----\n"
LOG = seeded_key("log").verify_key


def enrol(**over: Any) -> ProvisioningBundle:
    fields: dict[str, Any] = {
        "purpose": "enrol", "device": "clock-17", "site": "hq",
        "signing_key_id": DEVICE_KEY.key_id, "cert_pem": PEM, "ca_pem": PEM,
        "cert_serial": "1f3a", "cert_not_after": "2027-01-05T12:00:00Z",
        "log_public_key": LOG.b64, "broker_host": "mqtt.example.org", "broker_port": 8883,
        "readers": {"front": {"kind": "rdm6300", "port": "/dev/serial0", "debounce_s": 1.5}},
        "mqtt_options": {"resend_after_s": 5.0}}
    fields.update(over)
    return ProvisioningBundle(**fields)


def test_bundle_round_trips_through_bytes() -> None:
    b = enrol()
    data = b.to_bytes()
    assert data.endswith(b"}\n")
    assert ProvisioningBundle.from_bytes(data) == b
    renew = replace(b, purpose="renew", log_public_key=None, broker_host=None,
                    broker_port=None, readers={}, mqtt_options={})
    assert "readers" not in renew.to_dict()
    assert ProvisioningBundle.from_bytes(renew.to_bytes()) == renew


def _edited(**changes: Any) -> bytes:
    d = enrol().to_dict()
    for k, v in changes.items():
        if v is None:
            del d[k]
        else:
            d[k] = v
    return json.dumps(d).encode()


@pytest.mark.parametrize(("data", "message"), [
    (_edited(site=PRIVATE), "contains a private key"),
    (_edited(readers={"front": {"kind": "x", "note": PRIVATE}}), "contains a private key"),
    (_edited(kind="something-else"), "not a version 1 timeclock provisioning bundle"),
    (_edited(v=2), "not a version 1"),
    (_edited(purpose="upgrade"), "purpose: 'upgrade' is not one of"),
    (_edited(extra=1), "enrol bundle: unknown field.s. extra"),
    (_edited(readers=None), "enrol bundle: missing field.s. readers"),
    (_edited(device="Clock 17"), "device: 'Clock 17' does not match"),
    (_edited(signing_key_id=""), "signing_key_id: '' is not a key id"),
    (_edited(device_cert=PRIVATE.replace("PRIVATE KEY", "X")), "device_cert: expected a PEM"),
    (_edited(log_public_key="AAAA"), "log_public_key: not a base64 Ed25519 public key"),
    (_edited(broker={"host": "mqtt", "port": 70000, "options": {}}), "not a TCP port"),
    (_edited(broker={"host": "a b", "port": 1, "options": {}}), "host: 'a b' does not match"),
    (_edited(readers={}), "at least one reader section"),
    (_edited(readers={"front": {"kind": {"nested": 1}}}), "readers.front.kind: expected"),
    (_edited(cert_not_after="soon"), "cert_not_after: 'soon' does not match"),
    (b'{"v": 1, "v": 1}', "a key appears twice"),
    (b'{"v": NaN}', "NaN is not allowed"),
    (b"\xff", "not UTF-8"),
    (b"[1,", "invalid JSON"),
])
def test_bundle_parse_is_strict(data: bytes, message: str) -> None:
    with pytest.raises(BundleError, match=message):
        ProvisioningBundle.from_bytes(data)


def test_a_bundle_with_a_private_key_cannot_exist_or_be_written() -> None:
    with pytest.raises(PrivateKeyInBundleError, match="contains a private key"):
        enrol(site=PRIVATE)
    with pytest.raises(PrivateKeyInBundleError):
        enrol(mqtt_options={"note": PRIVATE})
    with pytest.raises(OversizeError):
        ProvisioningBundle.from_bytes(b" " * (256 * 1024 + 1))


def test_a_renewal_bundle_carries_the_certificate_only() -> None:
    with pytest.raises(BundleError, match="certificate only"):
        enrol(purpose="renew")
    assert enrol(purpose="renew", signing_key_id="", log_public_key=None, broker_host=None,
                 broker_port=None, readers={}, mqtt_options={}).signing_key_id == ""


# -- rotation requests -------------------------------------------------------------------

def request(**over: Any) -> RotationRequest:
    fields: dict[str, Any] = {"device": "clock-17", "old_key": DEVICE_KEY.key_id,
                              "key": DEVICE_KEY_V2.key_id,
                              "signing_key": DEVICE_KEY_V2.verify_key, "from_seq": 42,
                              "at": 1}
    fields.update(over)
    return RotationRequest(**fields)


def test_rotation_request_is_signed_by_the_old_key_over_its_canonical_body() -> None:
    signed = request().sign(DEVICE_KEY)
    body = signed.to_dict()["rotation"]
    assert body["kind"] == "timeclock-key-rotation"
    DEVICE_KEY.verify_key.verify(ROTATION_DOMAIN + canonical(body), signed.sig)
    back = SignedRotationRequest.from_bytes(signed.to_bytes())
    assert back == signed
    assert back.verify(DEVICE_KEY.verify_key) == request()


def test_rotation_request_verify_names_what_is_wrong() -> None:
    signed = request().sign(DEVICE_KEY)
    with pytest.raises(KeyMismatchError, match=f"replaces key {DEVICE_KEY.key_id}, not"):
        signed.verify(ROGUE_KEY.verify_key)
    forged = SignedRotationRequest(replace(signed.request, from_seq=1), signed.sig)
    with pytest.raises(SignatureError, match="does not verify"):
        forged.verify(DEVICE_KEY.verify_key)
    with pytest.raises(KeyMismatchError, match="the signing key is"):
        request().sign(ROGUE_KEY)


def _signed_dict(**changes: Any) -> dict[str, Any]:
    d = request().sign(DEVICE_KEY).to_dict()
    d["rotation"].update(changes)
    return d


@pytest.mark.parametrize(("doc", "message"), [
    (_signed_dict(kind="timeclock-provisioning-bundle"), "not a timeclock key rotation"),
    (_signed_dict(key=ROGUE_KEY.key_id), "is not the key id of signing_key"),
    (_signed_dict(key=DEVICE_KEY.key_id, old_key=DEVICE_KEY.key_id,
                  signing_key=DEVICE_KEY.verify_key.b64), "the new key is the old key"),
    (_signed_dict(from_seq=0), "from_seq: must be ≥ 1"),
    (_signed_dict(device="../etc"), "device: '../etc' does not match"),
    (_signed_dict(extra=True), "unknown field.s. extra"),
    ({**_signed_dict(), "sig": "x"}, "sig: expected 64 bytes"),
    ({"rotation": _signed_dict()["rotation"]}, "missing field.s. sig"),
])
def test_rotation_request_parse_is_strict(doc: dict[str, Any], message: str) -> None:
    with pytest.raises(DecodeError, match=message):
        SignedRotationRequest.from_bytes(json.dumps(doc).encode())


def test_rotation_request_size_is_bounded() -> None:
    with pytest.raises(OversizeError):
        SignedRotationRequest.from_bytes(b" " * (MAX_REQUEST_BYTES + 1))


def test_a_new_key_signs_nothing_for_the_old() -> None:
    new = SigningKey.generate()
    signed = request(key=new.key_id, signing_key=new.verify_key).sign(DEVICE_KEY)
    with pytest.raises(KeyMismatchError):
        signed.verify(new.verify_key)
