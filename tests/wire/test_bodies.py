"""wire.bodies: the one strict parse of ledger entry bodies (docs/protocol.md §7.2).

The store-vs-auditor agreement on bad bodies is tests/collector/test_body_rules.py; here, what
each parse returns and how it fails, without a store.
"""

from __future__ import annotations

import hashlib
from typing import Any

import pytest

from tests.wire.bundle_kit import DEVICE_KEY, vector_ledger
from wire.bodies import (
    Access,
    BodyError,
    Correction,
    DeviceEvent,
    Rejection,
    Retention,
    parse_body,
)
from wire.canonical import loads
from wire.punch import SignedPunch

KEY = DEVICE_KEY.verify_key
RAW = hashlib.sha256(b"x").hexdigest()


@pytest.mark.parametrize(("kind", "body", "parsed"), [
    ("device", {"event": "enrolled", "device": "clock-1", "site": "hq", "key": KEY.key_id,
                "signing_key": KEY.b64, "approver": "alice"},
     DeviceEvent("enrolled", "clock-1", key=KEY.key_id, signing_key=KEY, from_seq=1,
                 site="hq")),
    ("device", {"event": "enrolled", "device": "clock-1", "site": "hq", "key": KEY.key_id,
                "signing_key": KEY.b64, "from_seq": 7},
     DeviceEvent("enrolled", "clock-1", key=KEY.key_id, signing_key=KEY, from_seq=7,
                 site="hq")),
    ("device", {"event": "rotated", "device": "clock-1", "key": KEY.key_id,
                "signing_key": KEY.b64, "from_seq": 9},
     DeviceEvent("rotated", "clock-1", key=KEY.key_id, signing_key=KEY, from_seq=9)),
    ("device", {"event": "revoked", "device": "clock-1", "reason": "stolen"},
     DeviceEvent("revoked", "clock-1", reason="stolen")),
    ("rejection", {"reason": "malformed", "topic": "t", "raw_sha256": RAW, "received_at": 3,
                   "device": None},
     Rejection("malformed", "t", RAW, 3)),
    ("rejection", {"reason": "conflict", "topic": "t", "raw_sha256": RAW, "received_at": 3,
                   "detail": "seq 4", "device": "clock-1"},
     Rejection("conflict", "t", RAW, 3, "seq 4", "clock-1")),
    ("retention", {"policy": "6y", "deleted": [[0, 1], [3, 3]], "count": 2, "at": 1},
     Retention("6y", ((0, 1), (3, 3)), 2)),
    ("correction", {"original_idx": 3, "editor": "bob"}, Correction(3)),
    ("access", {}, Access({})),
])
def test_good_bodies_parse_to_their_facts(kind: str, body: dict[str, Any],
                                          parsed: object) -> None:
    assert parse_body(kind, body, idx=5) == parsed


def test_a_punch_body_is_the_signed_punch() -> None:
    _, _, raw = vector_ledger().entries[1]
    assert raw is not None
    sp = parse_body("punch", loads(raw), idx=1)
    assert isinstance(sp, SignedPunch)
    assert sp.to_bytes() == raw


@pytest.mark.parametrize(("kind", "body", "message", "field"), [
    ("punch", {"punch": {}, "sig": ""}, r"^punch body: ", None),
    ("device", [], r"^device body: device body: expected a JSON object$", None),
    ("rejection", {"reason": "r", "topic": "t", "raw_sha256": "XYZ", "received_at": 1},
     r"^rejection body: raw_sha256: 'XYZ' does not match", "raw_sha256"),
    ("retention", {"policy": "p", "deleted": {}, "count": 0},
     r"^retention body: deleted: expected an array", "deleted"),
    ("access", "read", r"^access body: access body: expected a JSON object$", None),
    ("checkpoint", {}, r"^checkpoint body: 'checkpoint' is not an entry kind", "kind"),
])
def test_bad_bodies_name_kind_and_field(kind: str, body: Any, message: str,
                                        field: str | None) -> None:
    with pytest.raises(BodyError, match=message) as e:
        parse_body(kind, body, idx=5)
    assert e.value.kind == kind
    if field is not None:
        assert e.value.field == field
