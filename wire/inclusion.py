"""Inclusion checks of a clock's own punches (DESIGN.md §8.4, docs/protocol.md §13.9).

A clock keeps, for (a sample of) the punches it deleted on a v2 receipt, the receipt's leaf
index and the SHA-256 of the signed punch it published (the ledger entry's ``body`` field,
§7.1). Once it has verified a checkpoint covering them (it witnesses the log: agent.witness),
it asks the collector for RFC 9162 inclusion proofs to that checkpoint:

- :class:`InclusionRequest` on ``timeclock/v1/devices/{id}/inclusion/request`` (written only by
  that clock): canonical JSON ``{"v":1,"device":id,"size":n,"leaves":[i,…]}``, leaf indices
  sorted, distinct, below ``size``, 1 to :data:`MAX_REQUEST_LEAVES` of them.
- :class:`InclusionAnswer` on ``timeclock/v1/devices/{id}/inclusion`` (read only by that
  clock): ``{"v":1,"device":id,"size":n,"proofs":[{"leaf_index":i,"entry":{§7.1 entry},
  "inclusion_path":[b64,…]},…],"missing":[i,…]}``.

The answer is not signed: it proves itself. The clock recomputes the leaf hash from the entry
(§12.1) and folds the path to the root of the checkpoint it verified under the log key, and
checks that the entry is a ``punch`` at that index whose ``body`` is the hash of its own signed
punch bytes. Anything else (a bad path, another entry, a leaf named ``missing``, no answer)
is a failure that the clock reports.

Invariants: parsing is strict (exact key sets, canonical base64, bounded sizes and counts), a
message that exists is well formed, and ``from_bytes(to_bytes(m)) == m``.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from wire.canonical import canonical, loads
from wire.errors import DecodeError, OversizeError
from wire.fields import check_version, get_int, require_object, validate_device_id
from wire.ledger import Entry
from wire.merkle import HASH_SIZE, proof_from_b64, proof_to_b64
from wire.note import MAX_SIZE

INCLUSION_VERSION = 1
MAX_REQUEST_LEAVES = 64
MAX_PATH_HASHES = 63                      # a tree of at most 2^53 - 1 leaves needs ≤ 53
MAX_REQUEST_BYTES = 4 * 1024
MAX_ANSWER_BYTES = 256 * 1024
_DEVICE_PREFIX = "timeclock/v1/devices/"
_REQUEST_KEYS = frozenset({"v", "device", "size", "leaves"})
_ANSWER_KEYS = frozenset({"v", "device", "size", "proofs", "missing"})
_PROOF_KEYS = frozenset({"leaf_index", "entry", "inclusion_path"})

ALL_INCLUSION_REQUESTS = f"{_DEVICE_PREFIX}+/inclusion/request"


def request_topic(device: str) -> str:
    """Where ``device`` asks for inclusion proofs (written only by that device)."""
    return f"{_DEVICE_PREFIX}{device}/inclusion/request"


def answer_topic(device: str) -> str:
    """Where the collector answers ``device`` (read only by that device)."""
    return f"{_DEVICE_PREFIX}{device}/inclusion"


def device_of_request_topic(topic: str) -> str | None:
    """The device id of a request topic, or None when ``topic`` is not one."""
    if not topic.startswith(_DEVICE_PREFIX) or not topic.endswith("/inclusion/request"):
        return None
    device = topic[len(_DEVICE_PREFIX):-len("/inclusion/request")]
    try:
        return validate_device_id(device)
    except DecodeError:
        return None


def _size(value: int) -> int:
    if not isinstance(value, int) or isinstance(value, bool) or not 1 <= value <= MAX_SIZE:
        raise DecodeError(f"size must be an integer in 1…{MAX_SIZE}", field="size")
    return value


def _leaves(value: Any, size: int, field: str, *, minimum: int) -> tuple[int, ...]:
    if not isinstance(value, list | tuple):
        raise DecodeError(f"{field}: expected an array of leaf indices", field=field)
    if not minimum <= len(value) <= MAX_REQUEST_LEAVES:
        raise DecodeError(f"{field}: {len(value)} leaf indices, expected {minimum}…"
                          f"{MAX_REQUEST_LEAVES}", field=field)
    prev = -1
    for i in value:
        if not isinstance(i, int) or isinstance(i, bool) or not prev < i < size:
            raise DecodeError(f"{field}: leaf indices must be integers, sorted, distinct and "
                              f"below size {size}", field=field)
        prev = i
    return tuple(value)


@dataclass(frozen=True, slots=True)
class InclusionRequest:
    """A clock's question: prove leaves ``leaves`` in the tree of ``size`` leaves."""

    device: str
    size: int
    leaves: tuple[int, ...]
    v: int = INCLUSION_VERSION

    def __post_init__(self) -> None:
        validate_device_id(self.device)
        _leaves(list(self.leaves), _size(self.size), "leaves", minimum=1)

    def to_dict(self) -> dict[str, Any]:
        return {"v": self.v, "device": self.device, "size": self.size,
                "leaves": list(self.leaves)}

    def to_bytes(self) -> bytes:
        return canonical(self.to_dict())

    @classmethod
    def from_dict(cls, d: Any) -> InclusionRequest:
        obj = require_object(d, "inclusion request", _REQUEST_KEYS)
        check_version(obj, expected=INCLUSION_VERSION)
        size = _size(get_int(obj, "size", minimum=1))
        return cls(validate_device_id(obj["device"]),
                   size, _leaves(obj["leaves"], size, "leaves", minimum=1))

    @classmethod
    def from_bytes(cls, data: bytes) -> InclusionRequest:
        if len(data) > MAX_REQUEST_BYTES:
            raise OversizeError(f"inclusion request is {len(data)} bytes, at most "
                                f"{MAX_REQUEST_BYTES}")
        return cls.from_dict(loads(data))


@dataclass(frozen=True, slots=True)
class LeafProof:
    """One leaf: the ledger entry at ``leaf_index`` and its RFC 9162 inclusion path."""

    leaf_index: int
    entry: Entry
    inclusion_path: tuple[bytes, ...]

    def __post_init__(self) -> None:
        if len(self.inclusion_path) > MAX_PATH_HASHES or any(
                not isinstance(h, bytes) or len(h) != HASH_SIZE for h in self.inclusion_path):
            raise DecodeError(f"inclusion_path: at most {MAX_PATH_HASHES} hashes of "
                              f"{HASH_SIZE} bytes", field="inclusion_path")

    def to_dict(self) -> dict[str, Any]:
        return {"leaf_index": self.leaf_index, "entry": self.entry.to_dict(),
                "inclusion_path": proof_to_b64(self.inclusion_path)}

    @classmethod
    def from_dict(cls, d: Any) -> LeafProof:
        obj = require_object(d, "leaf proof", _PROOF_KEYS)
        path = obj["inclusion_path"]
        if isinstance(path, list) and len(path) > MAX_PATH_HASHES:
            raise DecodeError(f"inclusion_path: more than {MAX_PATH_HASHES} hashes",
                              field="inclusion_path")
        return cls(get_int(obj, "leaf_index", minimum=0), Entry.from_dict(obj["entry"]),
                   proof_from_b64(path, "inclusion_path"))


@dataclass(frozen=True, slots=True)
class InclusionAnswer:
    """The collector's answer to one request: a proof per leaf it can prove, the others
    listed as ``missing``."""

    device: str
    size: int
    proofs: tuple[LeafProof, ...]
    missing: tuple[int, ...] = ()
    v: int = INCLUSION_VERSION

    def __post_init__(self) -> None:
        validate_device_id(self.device)
        _size(self.size)
        idx = [p.leaf_index for p in self.proofs]
        _leaves(idx, self.size, "proofs", minimum=0)
        _leaves(list(self.missing), self.size, "missing", minimum=0)
        if set(idx) & set(self.missing):
            raise DecodeError("a leaf is both proven and missing", field="missing")
        if not idx and not self.missing:
            raise DecodeError("an answer names at least one leaf", field="proofs")

    def to_dict(self) -> dict[str, Any]:
        return {"v": self.v, "device": self.device, "size": self.size,
                "proofs": [p.to_dict() for p in self.proofs], "missing": list(self.missing)}

    def to_bytes(self) -> bytes:
        data = canonical(self.to_dict())
        if len(data) > MAX_ANSWER_BYTES:
            raise OversizeError(f"inclusion answer is {len(data)} bytes, at most "
                                f"{MAX_ANSWER_BYTES}")
        return data

    @classmethod
    def from_dict(cls, d: Any) -> InclusionAnswer:
        obj = require_object(d, "inclusion answer", _ANSWER_KEYS)
        check_version(obj, expected=INCLUSION_VERSION)
        proofs = obj["proofs"]
        if not isinstance(proofs, list) or len(proofs) > MAX_REQUEST_LEAVES:
            raise DecodeError(f"proofs: expected an array of at most {MAX_REQUEST_LEAVES}",
                              field="proofs")
        missing = obj["missing"]
        if not isinstance(missing, list):
            raise DecodeError("missing: expected an array of leaf indices", field="missing")
        return cls(validate_device_id(obj["device"]),
                   get_int(obj, "size", minimum=1),
                   tuple(LeafProof.from_dict(p) for p in proofs), tuple(missing))

    @classmethod
    def from_bytes(cls, data: bytes) -> InclusionAnswer:
        if len(data) > MAX_ANSWER_BYTES:
            raise OversizeError(f"inclusion answer is {len(data)} bytes, at most "
                                f"{MAX_ANSWER_BYTES}")
        return cls.from_dict(loads(data))
