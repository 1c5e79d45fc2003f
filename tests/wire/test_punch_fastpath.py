"""The ingest fast paths of wire.punch and wire.canonical give exactly the generic bytes.

Punch/SignedPunch/Envelope bytes are built by formatting validated fields; these tests hold
them to ``canonical(to_dict())`` (the JSON encoder) on generated values, and check that the
fast validation accepts and rejects exactly what the field-by-field path does.
"""

from __future__ import annotations

import json
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from wire import ZERO_HASH
from wire.canonical import canonical, canonical_trusted, loads
from wire.errors import DecodeError
from wire.keys import SigningKey
from wire.punch import Envelope, Punch, SignedPunch

KEY = SigningKey(bytes(range(32)))
HEX = "0123456789abcdef"
ident = st.from_regex(r"\A[a-z0-9](?:[a-z0-9-]{0,20}[a-z0-9])?\Z")


@st.composite
def punch_dicts(draw: st.DrawFn) -> dict[str, Any]:
    seq = draw(st.integers(1, 2**53 - 1))
    prev = ZERO_HASH if seq == 1 else draw(st.text(HEX, min_size=64, max_size=64))
    return {
        "v": 1, "device": draw(ident), "seq": seq, "prev": prev,
        "ts": draw(st.integers(0, 2**53 - 1)),
        "clock": draw(st.sampled_from(["synced", "unsynced"])),
        "boot": draw(st.uuids()).hex[:8] + "-0000-4000-8000-" + "0" * 12,
        "mono": draw(st.integers(0, 2**53 - 1)), "reader": draw(ident),
        "credential": draw(st.from_regex(r"\A[a-z0-9]{1,16}:[0-9A-Za-z]{1,64}\Z")),
        "action": draw(st.sampled_from(["in", "out", "break-start", "break-end", "punch"])),
        "key": KEY.key_id,
    }


@settings(max_examples=300, deadline=None)
@given(punch_dicts())
def test_punch_bytes_equal_the_json_encoder(d: dict[str, Any]) -> None:
    p = Punch.from_dict(d)
    generic = json.dumps(d, sort_keys=True, separators=(",", ":"),
                         ensure_ascii=False).encode()
    assert p.to_bytes() == generic == canonical(p.to_dict()) == Punch(**d).to_bytes()
    signed = p.sign(KEY)
    assert signed.to_bytes() == canonical(signed.to_dict())
    env = Envelope(p.device, (signed, signed))
    assert env.to_bytes() == canonical(env.to_dict())
    assert SignedPunch.from_bytes(signed.to_bytes()) == signed
    assert p.hash() == p.hash() == Punch.from_bytes(generic).hash()


def test_canonical_trusted_equals_json_dumps() -> None:
    value = {"b": [1, "é", {"z": None, "a": True}], "a": "\u2028\"\\", "c": -(2**53 - 1)}
    assert canonical_trusted(value) == json.dumps(
        value, sort_keys=True, separators=(",", ":"), ensure_ascii=False).encode()
    with pytest.raises(DecodeError, match="cannot serialise canonically"):
        canonical_trusted({"x": "\ud800"})


@pytest.mark.parametrize(("field", "value", "message"), [
    ("seq", True, "seq: expected an integer"),
    ("seq", 0, "seq: must be ≥ 1"),
    ("ts", -1, "ts: must be ≥ 0"),
    ("device", "Bad", "device: 'Bad' does not match"),
    ("clock", "maybe", "clock: 'maybe' is not one of"),
    ("prev", "ab" * 32, "prev: seq 1 must have prev of 64 zeros"),
    ("v", 2, "v: unsupported version"),
    ("key", 7, "key: expected a string"),
])
def test_fast_validation_rejects_like_the_field_checks(field: str, value: Any,
                                                       message: str) -> None:
    d = {"v": 1, "device": "c1", "seq": 1, "prev": ZERO_HASH, "ts": 0, "clock": "synced",
         "boot": "00000000-0000-4000-8000-000000000000", "mono": 0, "reader": "r",
         "credential": "em4100:1", "action": "in", "key": KEY.key_id}
    d[field] = value
    with pytest.raises(DecodeError, match=message):
        Punch.from_dict(d)


def test_lone_surrogate_escape_is_still_rejected() -> None:
    with pytest.raises(DecodeError, match="lone surrogate"):
        loads(b'{"a":"\\ud800"}')
    with pytest.raises(DecodeError, match="duplicate key 'a'"):
        loads(b'{"a":1,"a":2}')
