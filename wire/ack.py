"""Signed ack receipts (DESIGN.md §4): what a clock may delete from its queue.

A receipt is ``{"ack": {...}, "sig": ...}`` signed with the log key over
``b"timeclock/ack/v1\\n" + canonical(ack)``. ``acked`` holds inclusive seq ranges, sorted and
disjoint (and not adjacent: adjacent ranges are merged, so one set of seqs has one encoding).
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

from wire.canonical import canonical_trusted, loads
from wire.errors import DecodeError, KeyMismatchError
from wire.fields import (
    DEVICE_ID_RE,
    KEY_ID_RE,
    check_version,
    get_int,
    get_str,
    require_object,
)
from wire.keys import SigningKey, VerifyKey
from wire.punch import SIG_RE

ACK_DOMAIN = b"timeclock/ack/v1\n"
MAX_ACK_RANGES = 10_000
_ACK_KEYS = frozenset({"v", "device", "acked", "at", "log"})
_SIGNED_KEYS = frozenset({"ack", "sig"})

Ranges = tuple[tuple[int, int], ...]


def ranges_from_seqs(seqs: Iterable[int]) -> Ranges:
    """Collapse seqs into sorted, disjoint, merged inclusive ranges."""
    out: list[list[int]] = []
    for s in sorted(set(seqs)):
        if out and s == out[-1][1] + 1:
            out[-1][1] = s
        else:
            out.append([s, s])
    return tuple((a, b) for a, b in out)


def seqs_in(ranges: Ranges) -> Iterable[int]:
    for a, b in ranges:
        yield from range(a, b + 1)


def _parse_ranges(value: Any) -> Ranges:
    if not isinstance(value, list) or not value:
        raise DecodeError("acked: expected a non-empty array of [first,last]", field="acked")
    if len(value) > MAX_ACK_RANGES:
        raise DecodeError("acked: too many ranges", field="acked")
    out: list[tuple[int, int]] = []
    for r in value:
        if (not isinstance(r, list) or len(r) != 2
                or any(not isinstance(x, int) or isinstance(x, bool) for x in r)):
            raise DecodeError("acked: each range is [first,last] integers", field="acked")
        a, b = r
        if a < 1 or b < a:
            raise DecodeError(f"acked: bad range [{a},{b}]", field="acked")
        if out and a <= out[-1][1] + 1:
            raise DecodeError("acked: ranges must be sorted, disjoint and merged",
                              field="acked")
        out.append((a, b))
    return tuple(out)


def _validate(d: Any) -> tuple[str, Ranges, int, str]:
    obj = require_object(d, "ack", _ACK_KEYS)
    check_version(obj)
    return (get_str(obj, "device", DEVICE_ID_RE), _parse_ranges(obj["acked"]),
            get_int(obj, "at", minimum=0), get_str(obj, "log", KEY_ID_RE))


@dataclass(frozen=True, slots=True)
class Ack:
    device: str
    acked: Ranges
    at: int
    log: str
    v: int = 1

    def __post_init__(self) -> None:
        _validate(self.to_dict())

    @classmethod
    def from_dict(cls, d: Any) -> Ack:
        return cls(*_validate(d))

    def to_dict(self) -> dict[str, Any]:
        return {"v": self.v, "device": self.device, "acked": [list(r) for r in self.acked],
                "at": self.at, "log": self.log}

    def signed_message(self) -> bytes:
        return ACK_DOMAIN + canonical_trusted(self.to_dict())

    def seqs(self) -> Iterable[int]:
        return seqs_in(self.acked)

    def sign(self, key: SigningKey) -> SignedAck:
        if key.key_id != self.log:
            raise KeyMismatchError(f"ack names log key {self.log}, signing key is {key.key_id}",
                                   field="log")
        return SignedAck(self, key.sign(self.signed_message()))


@dataclass(frozen=True, slots=True)
class SignedAck:
    ack: Ack
    sig: str

    @classmethod
    def from_bytes(cls, data: bytes) -> SignedAck:
        obj = require_object(loads(data), "receipt", _SIGNED_KEYS)
        return cls(Ack.from_dict(obj["ack"]), get_str(obj, "sig", SIG_RE))

    def to_dict(self) -> dict[str, Any]:
        return {"ack": self.ack.to_dict(), "sig": self.sig}

    def to_bytes(self) -> bytes:
        return canonical_trusted(self.to_dict())

    def verify(self, log_key: VerifyKey) -> None:
        if log_key.key_id != self.ack.log:
            raise KeyMismatchError(f"receipt names log key {self.ack.log}, expected "
                                   f"{log_key.key_id}", field="log")
        log_key.verify(self.ack.signed_message(), self.sig)
