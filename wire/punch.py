"""Punch v1, signed punch and the MQTT punch envelope (DESIGN.md §3-4).

Invariants: a :class:`Punch` is always valid per the field table; the signed message is
``b"timeclock/punch/v1\\n" + canonical(punch)``; the punch hash is SHA-256 hex of exactly that
message, and ``prev`` of seq n is the punch hash of seq n-1 (64 zeros for seq 1).
"""

from __future__ import annotations

import hashlib
import re
from dataclasses import dataclass
from typing import Any

from wire import ZERO_HASH
from wire.canonical import canonical_trusted, loads
from wire.errors import DecodeError, KeyMismatchError, OversizeError
from wire.fields import (
    CREDENTIAL_RE,
    DEVICE_ID_RE,
    HASH_RE,
    KEY_ID_RE,
    UUID_RE,
    check_version,
    get_choice,
    get_int,
    get_str,
    require_object,
)
from wire.keys import SigningKey, VerifyKey

PUNCH_DOMAIN = b"timeclock/punch/v1\n"
CLOCK_STATES = frozenset({"synced", "unsynced"})
ACTIONS = frozenset({"in", "out", "break-start", "break-end", "punch"})
READER_RE = DEVICE_ID_RE
SIG_RE = re.compile(r"^[A-Za-z0-9+/]{86}==$")
MAX_ENVELOPE_BYTES = 256 * 1024
MAX_ENVELOPE_PUNCHES = 500

_PUNCH_KEYS = frozenset(
    {"v", "device", "seq", "prev", "ts", "clock", "boot", "mono", "reader", "credential",
     "action", "key"})
_SIGNED_KEYS = frozenset({"punch", "sig"})
_ENVELOPE_KEYS = frozenset({"v", "device", "punches"})


@dataclass(frozen=True, slots=True)
class Punch:
    device: str
    seq: int
    prev: str
    ts: int
    clock: str
    boot: str
    mono: int
    reader: str
    credential: str
    action: str
    key: str
    v: int = 1

    def __post_init__(self) -> None:
        # Construction goes through the same checks as decoding: objects that exist are valid.
        Punch._validate(self.to_dict())

    @staticmethod
    def _validate(d: Any) -> dict[str, Any]:
        obj = require_object(d, "punch", _PUNCH_KEYS)
        check_version(obj)
        out = {
            "v": 1,
            "device": get_str(obj, "device", DEVICE_ID_RE),
            "seq": get_int(obj, "seq", minimum=1),
            "prev": get_str(obj, "prev", HASH_RE),
            "ts": get_int(obj, "ts", minimum=0),
            "clock": get_choice(obj, "clock", CLOCK_STATES),
            "boot": get_str(obj, "boot", UUID_RE),
            "mono": get_int(obj, "mono", minimum=0),
            "reader": get_str(obj, "reader", READER_RE),
            "credential": get_str(obj, "credential", CREDENTIAL_RE),
            "action": get_choice(obj, "action", ACTIONS),
            "key": get_str(obj, "key", KEY_ID_RE),
        }
        if out["seq"] == 1 and out["prev"] != ZERO_HASH:
            raise DecodeError("prev: seq 1 must have prev of 64 zeros", field="prev")
        return out

    @classmethod
    def from_dict(cls, d: Any) -> Punch:
        v = cls._validate(d)
        return cls(**v)

    @classmethod
    def from_bytes(cls, data: bytes) -> Punch:
        return cls.from_dict(loads(data))

    def to_dict(self) -> dict[str, Any]:
        return {
            "v": self.v, "device": self.device, "seq": self.seq, "prev": self.prev,
            "ts": self.ts, "clock": self.clock, "boot": self.boot, "mono": self.mono,
            "reader": self.reader, "credential": self.credential, "action": self.action,
            "key": self.key,
        }

    def to_bytes(self) -> bytes:
        return canonical_trusted(self.to_dict())

    def signed_message(self) -> bytes:
        return PUNCH_DOMAIN + self.to_bytes()

    def hash(self) -> str:
        return hashlib.sha256(self.signed_message()).hexdigest()

    def sign(self, key: SigningKey) -> SignedPunch:
        if key.key_id != self.key:
            raise KeyMismatchError(f"punch names key {self.key}, signing key is {key.key_id}",
                                   field="key")
        return SignedPunch(self, key.sign(self.signed_message()))


@dataclass(frozen=True, slots=True)
class SignedPunch:
    """The unit stored everywhere: ``{"punch": {...}, "sig": "..."}``."""

    punch: Punch
    sig: str

    def __post_init__(self) -> None:
        if not isinstance(self.sig, str) or not SIG_RE.fullmatch(self.sig):
            raise DecodeError("sig: expected 64 bytes of standard base64", field="sig")

    @classmethod
    def from_dict(cls, d: Any) -> SignedPunch:
        obj = require_object(d, "signed punch", _SIGNED_KEYS)
        return cls(Punch.from_dict(obj["punch"]), get_str(obj, "sig", SIG_RE))

    @classmethod
    def from_bytes(cls, data: bytes) -> SignedPunch:
        return cls.from_dict(loads(data))

    def to_dict(self) -> dict[str, Any]:
        return {"punch": self.punch.to_dict(), "sig": self.sig}

    def to_bytes(self) -> bytes:
        return canonical_trusted(self.to_dict())

    def hash(self) -> str:
        return self.punch.hash()

    def verify(self, key: VerifyKey) -> None:
        """(1) key id matches the punch's ``key``; (2) signature over the signed message."""
        if key.key_id != self.punch.key:
            raise KeyMismatchError(
                f"punch {self.punch.device}#{self.punch.seq} names key {self.punch.key}, "
                f"checked against {key.key_id}", field="key")
        key.verify(self.punch.signed_message(), self.sig)


@dataclass(frozen=True, slots=True)
class Envelope:
    """MQTT payload on ``timeclock/v1/devices/{id}/punches``: 1-500 punches, ≤ 256 KiB."""

    device: str
    punches: tuple[SignedPunch, ...]

    def __post_init__(self) -> None:
        if not DEVICE_ID_RE.fullmatch(self.device):
            raise DecodeError(f"device: {self.device!r} is not a device id", field="device")
        if not 1 <= len(self.punches) <= MAX_ENVELOPE_PUNCHES:
            raise DecodeError(
                f"punches: an envelope carries 1-{MAX_ENVELOPE_PUNCHES} punches, "
                f"got {len(self.punches)}", field="punches")

    @classmethod
    def from_bytes(cls, data: bytes, *, max_bytes: int = MAX_ENVELOPE_BYTES) -> Envelope:
        if len(data) > max_bytes:
            raise OversizeError(f"envelope is {len(data)} bytes, limit {max_bytes}",
                                field="payload")
        obj = require_object(loads(data), "envelope", _ENVELOPE_KEYS)
        check_version(obj)
        device = get_str(obj, "device", DEVICE_ID_RE)
        raw = obj["punches"]
        if not isinstance(raw, list):
            raise DecodeError("punches: expected an array", field="punches")
        if not 1 <= len(raw) <= MAX_ENVELOPE_PUNCHES:
            raise DecodeError(
                f"punches: an envelope carries 1-{MAX_ENVELOPE_PUNCHES} punches, "
                f"got {len(raw)}", field="punches")
        return cls(device, tuple(SignedPunch.from_dict(p) for p in raw))

    def to_dict(self) -> dict[str, Any]:
        return {"v": 1, "device": self.device, "punches": [p.to_dict() for p in self.punches]}

    def to_bytes(self) -> bytes:
        return canonical_trusted(self.to_dict())
