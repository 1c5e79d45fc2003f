"""Punch v1, signed punch and the MQTT punch envelope (DESIGN.md §3-4).

Invariants: a :class:`Punch` is always valid per the field table; the signed message is
``b"timeclock/punch/v1\\n" + canonical(punch)``; the punch hash is SHA-256 hex of exactly that
message, and ``prev`` of seq n is the punch hash of seq n-1 (64 zeros for seq 1).

Hot path (the collector decodes, verifies, hashes and stores every punch): a punch's canonical
bytes are built once, when it is constructed, by formatting its fields in sorted key order.
That equals ``canonical(punch.to_dict())`` byte for byte because every string field has
already matched a pattern whose characters need no JSON escaping (ASCII letters, digits,
``-`` and ``:``) and every integer is a plain ``int``; a value of another type falls back to
the JSON encoder. tests/wire/test_punch_fastpath.py checks the equality on generated punches.
"""

from __future__ import annotations

import hashlib
import re
from dataclasses import dataclass, field
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
from wire.redact import redact

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
_FIELDS = ("v", "device", "seq", "prev", "ts", "clock", "boot", "mono", "reader", "credential",
           "action", "key")
# Sorted keys (JCS); every %s is a pattern-checked string that needs no escaping.
_PUNCH_FORMAT = ('{"action":"%s","boot":"%s","clock":"%s","credential":"%s","device":"%s",'
                 '"key":"%s","mono":%d,"prev":"%s","reader":"%s","seq":%d,"ts":%d,"v":%d}')
_device_ok = DEVICE_ID_RE.fullmatch
_hash_ok = HASH_RE.fullmatch
_uuid_ok = UUID_RE.fullmatch
_credential_ok = CREDENTIAL_RE.fullmatch
_key_ok = KEY_ID_RE.fullmatch
_sig_ok = SIG_RE.fullmatch


def _fast_validate(d: dict[str, Any]) -> dict[str, Any] | None:
    """The field table's checks for a plain dict of plain values, or None to take the slow
    path (which accepts the same punches and names what is wrong with the others)."""
    device, seq, prev, ts = d["device"], d["seq"], d["prev"], d["ts"]
    clock, boot, mono, reader = d["clock"], d["boot"], d["mono"], d["reader"]
    credential, action, key, v = d["credential"], d["action"], d["key"], d["v"]
    if (type(v) is int and v == 1
            and type(seq) is int and seq >= 1
            and type(ts) is int and ts >= 0
            and type(mono) is int and mono >= 0
            and type(device) is str and _device_ok(device) is not None
            and type(prev) is str and _hash_ok(prev) is not None
            and type(clock) is str and clock in CLOCK_STATES
            and type(boot) is str and _uuid_ok(boot) is not None
            and type(reader) is str and _device_ok(reader) is not None
            and type(credential) is str and _credential_ok(credential) is not None
            and type(action) is str and action in ACTIONS
            and type(key) is str and _key_ok(key) is not None
            and (seq != 1 or prev == ZERO_HASH)):
        return {"v": 1, "device": device, "seq": seq, "prev": prev, "ts": ts, "clock": clock,
                "boot": boot, "mono": mono, "reader": reader, "credential": credential,
                "action": action, "key": key}
    return None


def _credential(obj: Any) -> str:
    """The credential field; an error names its length and keyed hash, never the value (it may
    be a real badge that a reader mangled: issue 12 item 6, wire.redact)."""
    v = obj["credential"]
    if not isinstance(v, str):
        raise DecodeError(f"credential: expected a string, got {redact(v)}", field="credential")
    if not CREDENTIAL_RE.fullmatch(v):
        raise DecodeError(f"credential: {redact(v)} does not match {CREDENTIAL_RE.pattern}",
                          field="credential")
    return v


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
    credential: str = field(repr=False)     # never in a log line or a traceback's repr
    action: str
    key: str
    v: int = 1
    # Derived once from the fields above (not part of a punch's identity): canonical bytes,
    # and the punch hash on first use.
    _bytes: bytes = field(default=b"", init=False, repr=False, compare=False)
    _hash: str = field(default="", init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        # Construction goes through the same checks as decoding: objects that exist are valid.
        Punch._validate(self.to_dict())
        object.__setattr__(self, "_bytes", self._encode())

    @classmethod
    def _trusted(cls, values: dict[str, Any]) -> Punch:
        """A punch from values that ``_validate`` returned (skips validating them twice)."""
        p = object.__new__(cls)
        for name in _FIELDS:
            object.__setattr__(p, name, values[name])
        object.__setattr__(p, "_hash", "")
        object.__setattr__(p, "_bytes", p._encode())
        return p

    def _encode(self) -> bytes:
        if (type(self.device) is str and type(self.prev) is str and type(self.clock) is str
                and type(self.boot) is str and type(self.reader) is str
                and type(self.credential) is str and type(self.action) is str
                and type(self.key) is str and type(self.seq) is int and type(self.ts) is int
                and type(self.mono) is int and type(self.v) is int):
            return (_PUNCH_FORMAT % (
                self.action, self.boot, self.clock, self.credential, self.device, self.key,
                self.mono, self.prev, self.reader, self.seq, self.ts, self.v)).encode("ascii")
        return canonical_trusted(self.to_dict())

    @staticmethod
    def _validate(d: Any) -> dict[str, Any]:
        if type(d) is dict and d.keys() == _PUNCH_KEYS:
            fast = _fast_validate(d)
            if fast is not None:
                return fast
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
            "credential": _credential(obj),
            "action": get_choice(obj, "action", ACTIONS),
            "key": get_str(obj, "key", KEY_ID_RE),
        }
        if out["seq"] == 1 and out["prev"] != ZERO_HASH:
            raise DecodeError("prev: seq 1 must have prev of 64 zeros", field="prev")
        return out

    @classmethod
    def from_dict(cls, d: Any) -> Punch:
        return cls._trusted(cls._validate(d))

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
        return self._bytes

    def signed_message(self) -> bytes:
        return PUNCH_DOMAIN + self._bytes

    def hash(self) -> str:
        h = self._hash
        if not h:
            h = hashlib.sha256(PUNCH_DOMAIN + self._bytes).hexdigest()
            object.__setattr__(self, "_hash", h)
        return h

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
        obj = (d if type(d) is dict and d.keys() == _SIGNED_KEYS
               else require_object(d, "signed punch", _SIGNED_KEYS))
        punch = Punch.from_dict(obj["punch"])
        sig = obj["sig"]
        if type(sig) is not str or _sig_ok(sig) is None:
            get_str(obj, "sig", SIG_RE)            # raises, naming what is wrong
            raise DecodeError("sig: expected 64 bytes of standard base64", field="sig")
        out = object.__new__(cls)             # both parts are checked: skip __post_init__
        object.__setattr__(out, "punch", punch)
        object.__setattr__(out, "sig", sig)
        return out

    @classmethod
    def from_bytes(cls, data: bytes) -> SignedPunch:
        return cls.from_dict(loads(data))

    def to_dict(self) -> dict[str, Any]:
        return {"punch": self.punch.to_dict(), "sig": self.sig}

    def to_bytes(self) -> bytes:
        if type(self.sig) is str:   # matched SIG_RE: base64 needs no escaping
            return b'{"punch":' + self.punch.to_bytes() + b',"sig":"' + self.sig.encode("ascii") \
                + b'"}'
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
        if type(self.device) is str:   # matched DEVICE_ID_RE: needs no escaping
            return (b'{"device":"' + self.device.encode("ascii") + b'","punches":['
                    + b",".join(p.to_bytes() for p in self.punches) + b'],"v":1}')
        return canonical_trusted(self.to_dict())
