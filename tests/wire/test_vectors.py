"""DESIGN.md §7: every value of tests/vectors/punch-v1.json is reproduced byte for byte."""

from __future__ import annotations

import base64
import json
from pathlib import Path
from typing import Any

import pytest
from nacl.bindings import crypto_aead_xchacha20poly1305_ietf_encrypt

from wire.ack import Ack, SignedAck
from wire.canonical import canonical, loads
from wire.errors import DecodeError, SignatureError
from wire.keys import SigningKey, VerifyKey
from wire.ledger import Checkpoint, Entry, SignedCheckpoint, body_hash, make_entry
from wire.punch import Envelope, Punch, SignedPunch

VECTORS: dict[str, Any] = json.loads(
    (Path(__file__).parent.parent / "vectors" / "punch-v1.json").read_text())


@pytest.fixture(scope="module")
def device_key() -> SigningKey:
    return SigningKey(bytes.fromhex(VECTORS["device_key"]["seed_hex"]))


@pytest.fixture(scope="module")
def collector_key() -> SigningKey:
    return SigningKey(bytes.fromhex(VECTORS["collector_key"]["seed_hex"]))


def test_key_ids_and_public_keys(device_key: SigningKey, collector_key: SigningKey) -> None:
    assert device_key.verify_key.b64 == VECTORS["device_key"]["public_b64"]
    assert device_key.key_id == VECTORS["device_key"]["key_id"]
    assert collector_key.verify_key.b64 == VECTORS["collector_key"]["public_b64"]
    assert collector_key.key_id == VECTORS["collector_key"]["key_id"]


@pytest.mark.parametrize("vec", VECTORS["punches"], ids=lambda v: f"seq{v['punch']['seq']}")
def test_punch_bytes(vec: dict[str, Any], device_key: SigningKey) -> None:
    punch = Punch.from_dict(vec["punch"])
    assert punch.to_bytes() == vec["canonical"].encode()
    assert punch.signed_message() == base64.b64decode(vec["signed_message_b64"])
    signed = punch.sign(device_key)
    assert signed.sig == vec["sig"]
    assert punch.hash() == vec["punch_hash"]
    assert signed.to_bytes() == vec["signed_punch"].encode()
    assert SignedPunch.from_bytes(vec["signed_punch"].encode()) == signed
    signed.verify(VerifyKey.from_b64(VECTORS["device_key"]["public_b64"]))


def test_prev_links_punch_hashes() -> None:
    ps = VECTORS["punches"]
    for a, b in zip(ps, ps[1:], strict=False):
        assert b["punch"]["prev"] == a["punch_hash"]


def test_envelope_bytes() -> None:
    env = Envelope.from_bytes(VECTORS["envelope"].encode())
    assert env.device == "clock-0017"
    assert [p.punch.seq for p in env.punches] == [1, 2, 3]
    assert env.to_bytes() == VECTORS["envelope"].encode()


def test_ack_receipt(collector_key: SigningKey) -> None:
    receipt = SignedAck.from_bytes(VECTORS["ack"].encode())
    ack = Ack(device="clock-0017", acked=((1, 3),), at=1764140460500000,
              log=collector_key.key_id)
    assert receipt.ack == ack
    assert ack.sign(collector_key).to_bytes() == VECTORS["ack"].encode()
    receipt.verify(collector_key.verify_key)


def test_ledger_entries() -> None:
    prev = "0" * 64
    for vec in VECTORS["ledger"]:
        body = vec["body"].encode()
        assert canonical(loads(body)) == body
        entry = make_entry(idx=vec["entry"]["idx"], kind=vec["entry"]["kind"],
                           at=vec["entry"]["at"], body=body, prev=prev)
        assert entry == Entry.from_dict(vec["entry"])
        assert entry.body == body_hash(body) == vec["entry"]["body"]
        assert entry.to_bytes() == vec["canonical"].encode()
        assert entry.hash() == vec["entry_hash"]
        prev = entry.hash()
    # Punch bodies are the signed punches.
    assert VECTORS["ledger"][1]["body"] == VECTORS["punches"][0]["signed_punch"]


def test_checkpoint(collector_key: SigningKey) -> None:
    vec = VECTORS["checkpoint"]
    cp = Checkpoint.from_dict(vec["checkpoint"])
    assert canonical(cp.to_dict()) == vec["canonical"].encode()
    assert cp.head == VECTORS["ledger"][-1]["entry_hash"]
    signed = cp.sign(collector_key)
    assert signed.sig == vec["sig"]
    SignedCheckpoint.from_dict({"checkpoint": vec["checkpoint"], "sig": vec["sig"]}).verify(
        collector_key.verify_key)


def test_queue_row_ciphertext() -> None:
    vec = VECTORS["queue_row"]
    aad = b"timeclock/queue/v1\n" + b"clock-0017" + b":" + b"1"
    assert aad == base64.b64decode(vec["aad_b64"])
    ct = crypto_aead_xchacha20poly1305_ietf_encrypt(
        vec["plaintext"].encode(), aad, bytes.fromhex(vec["nonce_hex"]),
        bytes.fromhex(vec["key_hex"]))
    assert ct == base64.b64decode(vec["ciphertext_b64"])


_EXPECTED: dict[str, tuple[type[Exception], str]] = {
    "float value": (DecodeError, "floats are not allowed"),
    "duplicate key": (DecodeError, "duplicate key 'action'"),
    "unknown field": (DecodeError, "unknown field.*extra"),
    "bad device id": (DecodeError, "^device: "),
    "signature by another key": (SignatureError, "does not verify under key 56475aa75463474c"),
    "tampered credential": (SignatureError, "does not verify under key 56475aa75463474c"),
}


def test_every_must_reject_case_has_an_expectation() -> None:
    assert sorted(c["why"] for c in VECTORS["must_reject"]) == sorted(_EXPECTED)


@pytest.mark.parametrize("case", VECTORS["must_reject"], ids=lambda c: c["why"])
def test_must_reject(case: dict[str, Any]) -> None:
    error, pattern = _EXPECTED[case["why"]]
    device_key = VerifyKey.from_b64(VECTORS["device_key"]["public_b64"])

    def decode_and_verify() -> None:
        if "punch_json" in case:
            Punch.from_bytes(case["punch_json"].encode())
        else:
            SignedPunch.from_bytes(case["signed_punch"].encode()).verify(device_key)

    with pytest.raises(error, match=pattern):
        decode_and_verify()
