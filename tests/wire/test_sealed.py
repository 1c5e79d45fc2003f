"""Sealed envelopes (wire.sealed, DESIGN.md §8.6, docs/protocol.md "Sealed envelopes").

Keys are generated at run time (sealing is randomised, so nothing is compared to a stored
ciphertext and no private key is committed); the exact outer shape is checked byte for byte.
"""

from __future__ import annotations

import base64
import hashlib
import json
import os
import stat
import uuid
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path

import pytest
from nacl.public import PrivateKey, SealedBox

from tests.wire.test_provisioning import enrol
from wire import ZERO_HASH
from wire.canonical import canonical
from wire.errors import DecodeError, KeyFileError, OversizeError
from wire.keys import SigningKey, b64decode_strict
from wire.provisioning import BundleError, ProvisioningBundle
from wire.punch import Envelope, Punch, SignedPunch
from wire.sealed import (
    MAX_SEALED_BYTES,
    SEAL_OVERHEAD,
    SealedEnvelope,
    SealError,
    SealKey,
    SealPublicKey,
    b64decode_canonical,
    load_seal_key,
    looks_sealed,
    save_seal_key,
)
from wire.seqloss import looks_like_loss

DEVICE = "clock-0017"
SK = SigningKey.generate()


def _punches(n: int, device: str = DEVICE) -> tuple[SignedPunch, ...]:
    out, prev = [], ZERO_HASH
    boot = str(uuid.uuid4())
    for seq in range(1, n + 1):
        p = Punch(device=device, seq=seq, prev=prev, ts=1_767_225_600_000_000 + seq,
                  clock="synced", boot=boot, mono=seq, reader="front",
                  credential=f"em4100:{seq:010d}", action="in", key=SK.key_id)
        out.append(p.sign(SK))
        prev = p.hash()
    return tuple(out)


def test_d3_round_trip_opens_the_exact_canonical_envelope_bytes() -> None:
    key = SealKey.generate()
    env = Envelope(DEVICE, _punches(3))
    payload = SealedEnvelope.seal(env, key.public_key).to_bytes()
    got = SealedEnvelope.from_bytes(payload)
    assert got.open(key) == env.to_bytes()
    assert got.open_envelope(key) == env
    # randomised: the same envelope seals differently every time, and both open
    again = SealedEnvelope.seal(env, key.public_key)
    assert again.ciphertext != got.ciphertext
    assert again.open(key) == env.to_bytes()


def test_d3_exact_outer_shape_is_canonical_json_with_the_device_in_clear() -> None:
    key = SealKey.generate()
    env = Envelope(DEVICE, _punches(2))
    sealed = SealedEnvelope.seal(env, key.public_key)
    payload = sealed.to_bytes()
    obj = json.loads(payload)
    assert set(obj) == {"v", "device", "sealed", "to"}
    assert (obj["v"], obj["device"]) == (1, DEVICE)
    assert obj["to"] == hashlib.sha256(key.public_key.raw).hexdigest()[:16] == key.key_id
    raw = base64.b64decode(obj["sealed"], validate=True)
    assert base64.b64encode(raw).decode() == obj["sealed"]          # standard, padded
    assert len(raw) == len(env.to_bytes()) + SEAL_OVERHEAD == len(env.to_bytes()) + 48
    assert payload == canonical(obj)                                # canonical JSON
    assert payload.startswith(b'{"device":"clock-0017","sealed":"')
    assert looks_sealed(payload)
    assert not looks_sealed(env.to_bytes())
    assert not looks_like_loss(payload)
    # libsodium's own crypto_box_seal_open (PyNaCl, not our code) opens it too
    assert SealedBox(PrivateKey(key.secret)).decrypt(raw) == env.to_bytes()


def test_d3_no_credential_byte_in_the_sealed_payload() -> None:
    key = SealKey.generate()
    punches = _punches(20)
    payload = SealedEnvelope.seal(Envelope(DEVICE, punches), key.public_key).to_bytes()
    plain = Envelope(DEVICE, punches).to_bytes()
    for p in punches:
        assert p.punch.credential.encode() in plain       # the search can find them
        assert p.punch.credential.encode() not in payload
    assert b'"credential"' not in payload
    assert b"em4100:" not in payload


def _outer(**changes: object) -> bytes:
    """A valid sealed envelope's JSON object with ``changes`` (None: field removed)."""
    key = SealKey.generate()
    d = json.loads(SealedEnvelope.seal(Envelope(DEVICE, _punches(1)), key.public_key)
                   .to_bytes())
    for k, v in changes.items():
        if v is None:
            del d[k]
        else:
            d[k] = v(d[k]) if callable(v) else v
    return json.dumps(d).encode()


@pytest.mark.parametrize(("payload", "match"), [
    (_outer(v=2), "unsupported version"),
    (_outer(to=None), "missing field.s. to"),
    (_outer(punches=[]), "unknown field.s. punches"),
    (_outer(device="Clock 1"), "device: 'Clock 1' does not match"),
    (_outer(to="XYZ"), "to: 'XYZ' does not match"),
    (_outer(sealed=lambda s: s.rstrip("=") + " "), "sealed: not standard base64"),
    (_outer(sealed=lambda s: "-_" + s[2:]), "sealed: not standard base64"),
    (_outer(sealed=base64.b64encode(b"x" * 48).decode()), "no sealed box"),
    (b'{"device":"clock-0017","sealed":', "not JSON"),
])
def test_d3_strict_outer_decode(payload: bytes, match: str) -> None:
    with pytest.raises(DecodeError, match=match):
        SealedEnvelope.from_bytes(payload)


def test_d3_size_limit_is_the_mqtt_payload_limit() -> None:
    with pytest.raises(OversizeError, match=f"limit {MAX_SEALED_BYTES}"):
        SealedEnvelope.from_bytes(b" " * (MAX_SEALED_BYTES + 1))


def test_d3_another_key_damaged_or_forged_boxes_do_not_open() -> None:
    key, other = SealKey.generate(), SealKey.generate()
    env = Envelope(DEVICE, _punches(2))
    sealed = SealedEnvelope.seal(env, key.public_key)
    with pytest.raises(SealError, match=f"sealed to seal key {key.key_id}"):
        sealed.open(other)
    # names the right key id but does not open with it (sealed to another key)
    forged = SealedEnvelope(DEVICE, other.key_id, sealed.ciphertext)
    with pytest.raises(SealError, match="does not open") as e:
        forged.open(other)
    assert e.value.reason == "undecryptable"
    flipped = bytearray(sealed.ciphertext)
    flipped[-1] ^= 1
    with pytest.raises(SealError, match="does not open"):
        SealedEnvelope(DEVICE, key.key_id, bytes(flipped)).open(key)
    # an error message carries sizes and key ids, never plaintext
    assert b"em4100" not in str(e.value).encode()


def test_d3_inner_device_must_be_the_clear_device() -> None:
    key = SealKey.generate()
    inner = Envelope("clock-9999", _punches(1, "clock-9999"))
    sealed = SealedEnvelope(DEVICE, key.key_id, key.public_key.seal(inner.to_bytes()))
    with pytest.raises(DecodeError, match="holds an envelope of 'clock-9999'"):
        sealed.open_envelope(key)


def test_d3_seal_key_file_is_0600_and_refused_when_readable(tmp_path: Path) -> None:
    old = os.umask(0)
    try:
        key = SealKey.generate()
        path = tmp_path / "seal.key"
        save_seal_key(path, key)
    finally:
        os.umask(old)
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert load_seal_key(path).public_key == key.public_key
    with pytest.raises(KeyFileError, match="exists"):
        save_seal_key(path, key)
    path.chmod(0o640)
    with pytest.raises(KeyFileError, match="chmod 600"):
        load_seal_key(path)
    path.chmod(0o600)
    path.write_bytes(b"timeclock-ed25519-seed-v1\n" + base64.b64encode(os.urandom(32)))
    with pytest.raises(KeyFileError, match="not a timeclock X25519 seal key file"):
        load_seal_key(path)


def test_d3_public_key_b64_is_strict() -> None:
    key = SealKey.generate()
    assert SealPublicKey.from_b64(key.public_key.b64) == key.public_key
    with pytest.raises(DecodeError, match="32 bytes"):
        SealPublicKey.from_b64(base64.b64encode(b"x" * 31).decode())
    with pytest.raises(DecodeError, match="base64"):
        SealPublicKey.from_b64(key.public_key.b64.rstrip("="))


def test_d3_bundle_carries_the_optional_seal_key_and_old_bundles_still_parse() -> None:
    key = SealKey.generate()
    sealing = enrol(seal_public_key=key.public_key.b64)
    assert json.loads(sealing.to_bytes())["seal_public_key"] == key.public_key.b64
    assert ProvisioningBundle.from_bytes(sealing.to_bytes()) == sealing
    old = enrol()                                   # a bundle from before §8.6
    assert "seal_public_key" not in old.to_dict()
    assert ProvisioningBundle.from_bytes(old.to_bytes()).seal_public_key is None
    d = old.to_dict() | {"seal_public_key": "AAAA"}
    with pytest.raises(BundleError, match="seal_public_key: not a base64 X25519 public key"):
        ProvisioningBundle.from_bytes(json.dumps(d).encode())
    with pytest.raises(BundleError, match="renewal bundle carries the certificate only"):
        replace(old, purpose="renew", log_public_key=None, broker_host=None,
                broker_port=None, readers={}, mqtt_options={},
                seal_public_key=key.public_key.b64)


def test_d3_bundle_file_is_0600_whatever_the_umask(tmp_path: Path) -> None:
    old = os.umask(0)
    try:
        path = enrol().write(tmp_path / "clock.bundle")
    finally:
        os.umask(old)
    assert stat.S_IMODE(path.stat().st_mode) == 0o600


_B64_CASES = ["", "=", "==", "A", "AA", "AAA", "QQ", "QQ=", "QQ==", "QR==", "QUI=", "QUJ=",
              "QUJD", "QUJD=", "QUJDQQ==", "QUJDQR==", "QQ==QQ==", "Q===", "QUJDRA=", "QUJDRA",
              " QUJD", "QUJD\n", "QU JD", "-_-_", "QUJD\u00e9", "AAAAAAAAAAAAAA==",
              base64.b64encode(bytes(range(256)) * 40).decode()]


def _decoded(decode: Callable[..., bytes], text: str) -> bytes | str:
    """What ``decode`` makes of ``text``: its bytes, or its error's text."""
    try:
        return decode(text, field="sealed")
    except DecodeError as e:
        return str(e)


@pytest.mark.parametrize("text", _B64_CASES)
def test_d3_sealed_base64_is_accepted_exactly_as_b64decode_strict_accepts_it(text: str) -> None:
    """The sealed field's decoder checks the canonical form on the last group only (a
    sealed box is up to 256 KiB): the same bytes, or the same error, as the strict one."""
    assert _decoded(b64decode_canonical, text) == _decoded(b64decode_strict, text)


def test_d3_sealed_base64_matches_the_strict_decoder_on_every_single_character_edit() -> None:
    """Every length 0..12 bytes, every position replaced by characters that break the
    alphabet, the padding or the unused bits: both decoders agree on each."""
    for n in range(13):
        good = base64.b64encode(bytes((7 * i + n) % 256 for i in range(n))).decode()
        for i in range(max(len(good), 1)):
            for ch in "AQgw/+=Z9a _-":
                text = good[:i] + ch + good[i + 1:]
                assert _decoded(b64decode_canonical, text) == _decoded(b64decode_strict,
                                                                        text), text
