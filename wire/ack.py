"""Signed ack receipts (DESIGN.md §4): what a clock may delete from its queue.

A receipt is ``{"ack": {...}, "sig": ...}`` signed with the log key over
``b"timeclock/ack/v1\\n" + canonical(ack)``. ``acked`` holds inclusive seq ranges, sorted and
disjoint (and not adjacent: adjacent ranges are merged, so one set of seqs has one encoding).

Version 2 (DESIGN.md §8.4, docs/protocol.md §13.8) adds ``punches``: one
``[seq, "<punch hash hex>", <leaf index>]`` per acked seq, in seq order, exactly the seqs of
``acked``: the hash of the punch the ledger holds for that seq and the ledger entry (Merkle
leaf) that records it. It is signed over ``b"timeclock/ack/v2\n" + canonical(ack)``. A clock
deletes a row only when the hash is its own punch's, so a receipt for someone else's
conflicting punch never deletes the genuine one. v1 receipts remain readable.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

from wire.canonical import canonical_trusted, loads
from wire.errors import DecodeError, KeyMismatchError
from wire.fields import (
    DEVICE_ID_RE,
    HASH_RE,
    KEY_ID_RE,
    check_version,
    get_int,
    get_str,
    require_object,
)
from wire.keys import SigningKey, VerifyKey
from wire.punch import SIG_RE

ACK_DOMAIN = b"timeclock/ack/v1\n"
ACK_DOMAIN_V2 = b"timeclock/ack/v2\n"
MAX_ACK_RANGES = 10_000
MAX_ACK_PUNCHES = 10_000
_ACK_KEYS = frozenset({"v", "device", "acked", "at", "log"})
_ACK_KEYS_V2 = _ACK_KEYS | {"punches"}

Landed = tuple[tuple[int, str, int], ...]
"""Receipt v2: (seq, punch hash, leaf index) per acked seq, in seq order."""
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


def _parse_punches(value: Any, ranges: Ranges) -> Landed:
    if not isinstance(value, list) or len(value) > MAX_ACK_PUNCHES:
        raise DecodeError(f"punches: expected an array of at most {MAX_ACK_PUNCHES} "
                          "[seq, hash, leaf]", field="punches")
    out: list[tuple[int, str, int]] = []
    for item in value:
        if (not isinstance(item, list) or len(item) != 3 or not isinstance(item[1], str)
                or any(not isinstance(x, int) or isinstance(x, bool) for x in (item[0],
                                                                               item[2]))):
            raise DecodeError("punches: each item is [seq, hash, leaf index]",
                              field="punches")
        seq, h, leaf = item
        if not HASH_RE.fullmatch(h) or leaf < 0:
            raise DecodeError(f"punches: seq {seq}: bad hash or leaf index", field="punches")
        out.append((seq, h, leaf))
    if [p[0] for p in out] != list(seqs_in(ranges)):
        raise DecodeError("punches: must list exactly the acked seqs, in order",
                          field="punches")
    return tuple(out)


def _validate(d: Any) -> tuple[str, Ranges, int, str, int, Landed | None]:
    if isinstance(d, dict) and d.get("v") == 2:
        obj = require_object(d, "ack", _ACK_KEYS_V2)
        check_version(obj, expected=2)
        ranges = _parse_ranges(obj["acked"])
        return (get_str(obj, "device", DEVICE_ID_RE), ranges, get_int(obj, "at", minimum=0),
                get_str(obj, "log", KEY_ID_RE), 2, _parse_punches(obj["punches"], ranges))
    obj = require_object(d, "ack", _ACK_KEYS)
    check_version(obj)
    return (get_str(obj, "device", DEVICE_ID_RE), _parse_ranges(obj["acked"]),
            get_int(obj, "at", minimum=0), get_str(obj, "log", KEY_ID_RE), 1, None)


@dataclass(frozen=True, slots=True)
class Ack:
    device: str
    acked: Ranges
    at: int
    log: str
    v: int = 1
    punches: Landed | None = None     # v2 only

    def __post_init__(self) -> None:
        _validate(self.to_dict())

    @classmethod
    def from_dict(cls, d: Any) -> Ack:
        return cls(*_validate(d))

    @classmethod
    def landed(cls, device: str, punches: Landed, *, at: int, log: str) -> Ack:
        """A v2 ack of ``punches`` ((seq, hash, leaf) in seq order)."""
        return cls(device, ranges_from_seqs(p[0] for p in punches), at, log, 2,
                   tuple(sorted(punches)))

    def to_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {"v": self.v, "device": self.device,
                               "acked": [list(r) for r in self.acked], "at": self.at,
                               "log": self.log}
        if self.v == 2:
            out["punches"] = [list(p) for p in self.punches or ()]
        return out

    def punch_hashes(self) -> dict[int, str] | None:
        """v2: seq -> the punch hash the ledger holds for it; v1: None (no commitment)."""
        return None if self.punches is None else {s: h for s, h, _ in self.punches}

    def signed_message(self) -> bytes:
        domain = ACK_DOMAIN_V2 if self.v == 2 else ACK_DOMAIN
        return domain + canonical_trusted(self.to_dict())

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
