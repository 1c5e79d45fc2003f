"""Ledger entries and signed checkpoints (DESIGN.md §6).

``entry hash = SHA-256(b"timeclock/ledger/v1\\n" + canonical(entry))``; ``body`` is the SHA-256
hex of the body bytes (the canonical JSON of the fact), which live apart from the chain so that
retention can delete a body and leave the chain verifiable. A checkpoint signs (size, head).
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from typing import Any

from wire import ZERO_HASH
from wire.canonical import canonical_trusted, loads
from wire.errors import ChainBrokenError, DecodeError, KeyMismatchError
from wire.fields import (
    HASH_RE,
    KEY_ID_RE,
    check_version,
    get_choice,
    get_int,
    get_str,
    require_object,
)
from wire.keys import SigningKey, VerifyKey
from wire.punch import SIG_RE

LEDGER_DOMAIN = b"timeclock/ledger/v1\n"
CHECKPOINT_DOMAIN = b"timeclock/checkpoint/v1\n"
KINDS = frozenset({"punch", "rejection", "device", "access", "correction", "retention",
                   "alert", "policy", "hold", "config",
                   "employee", "badge", "review", "shred",
                   "break_glass", "access_review", "policy_doc", "acknowledgement"})
_ENTRY_KEYS = frozenset({"v", "idx", "kind", "at", "body", "prev"})
_CHECKPOINT_KEYS = frozenset({"v", "log", "size", "head", "at"})
_SIGNED_CP_KEYS = frozenset({"checkpoint", "sig"})


def body_hash(body: bytes) -> str:
    return hashlib.sha256(body).hexdigest()


@dataclass(frozen=True, slots=True)
class Entry:
    idx: int
    kind: str
    at: int
    body: str
    prev: str
    v: int = 1

    def __post_init__(self) -> None:
        Entry._validate(self.to_dict())

    @staticmethod
    def _validate(d: Any) -> tuple[int, str, int, str, str]:
        obj = require_object(d, "entry", _ENTRY_KEYS)
        check_version(obj)
        return (get_int(obj, "idx", minimum=0), get_choice(obj, "kind", KINDS),
                get_int(obj, "at", minimum=0), get_str(obj, "body", HASH_RE),
                get_str(obj, "prev", HASH_RE))

    @classmethod
    def from_dict(cls, d: Any) -> Entry:
        return cls(*cls._validate(d))

    @classmethod
    def from_bytes(cls, data: bytes) -> Entry:
        return cls.from_dict(loads(data))

    def to_dict(self) -> dict[str, Any]:
        return {"v": self.v, "idx": self.idx, "kind": self.kind, "at": self.at,
                "body": self.body, "prev": self.prev}

    def to_bytes(self) -> bytes:
        return canonical_trusted(self.to_dict())

    def hash(self) -> str:
        return hashlib.sha256(LEDGER_DOMAIN + self.to_bytes()).hexdigest()


def make_entry(*, idx: int, kind: str, at: int, body: bytes, prev: str) -> Entry:
    """Build the entry that appends ``body`` after an entry whose hash is ``prev``."""
    return Entry(idx=idx, kind=kind, at=at, body=body_hash(body), prev=prev)


def entry_leaf_bytes(*, idx: int, kind: str, at: int, body: str, prev: str) -> bytes:
    """``LEDGER_DOMAIN + Entry(...).to_bytes()`` for fields the caller made itself: a store's
    append, where ``kind`` is one of KINDS, ``idx`` and ``at`` are non-negative ints and
    ``body``/``prev`` are SHA-256 hex digests it computed. Skips the dataclass and its
    validation (the ingest hot path); byte-identical to the canonical form (keys sorted:
    at, body, idx, kind, prev, v), checked against Entry by tests/wire/test_ledger_bytes."""
    if kind not in KINDS:
        raise DecodeError(f"kind: {kind[:40]!r} is not one of {sorted(KINDS)}", field="kind")
    return (b'%s{"at":%d,"body":"%s","idx":%d,"kind":"%s","prev":"%s","v":1}'
            % (LEDGER_DOMAIN, at, body.encode(), idx, kind.encode(), prev.encode()))


def verify_link(entry: Entry, prev_hash: str | None) -> None:
    """(2) ``prev`` is the hash of entry idx-1 (64 zeros for idx 0)."""
    expected = ZERO_HASH if entry.idx == 0 else prev_hash
    if entry.prev != expected:
        raise ChainBrokenError(f"entry {entry.idx}: prev does not match the hash of entry "
                               f"{entry.idx - 1}", field="prev")


@dataclass(frozen=True, slots=True)
class Checkpoint:
    log: str
    size: int
    head: str
    at: int
    v: int = 1

    def __post_init__(self) -> None:
        Checkpoint._validate(self.to_dict())

    @staticmethod
    def _validate(d: Any) -> tuple[str, int, str, int]:
        obj = require_object(d, "checkpoint", _CHECKPOINT_KEYS)
        check_version(obj)
        size = get_int(obj, "size", minimum=0)
        head = get_str(obj, "head", HASH_RE)
        if size == 0 and head != ZERO_HASH:
            raise DecodeError("head: an empty log's head is 64 zeros", field="head")
        return (get_str(obj, "log", KEY_ID_RE), size, head, get_int(obj, "at", minimum=0))

    @classmethod
    def from_dict(cls, d: Any) -> Checkpoint:
        return cls(*cls._validate(d))

    def to_dict(self) -> dict[str, Any]:
        return {"v": self.v, "log": self.log, "size": self.size, "head": self.head,
                "at": self.at}

    def signed_message(self) -> bytes:
        return CHECKPOINT_DOMAIN + canonical_trusted(self.to_dict())

    def sign(self, key: SigningKey) -> SignedCheckpoint:
        if key.key_id != self.log:
            raise KeyMismatchError(f"checkpoint names log key {self.log}, signing key is "
                                   f"{key.key_id}", field="log")
        return SignedCheckpoint(self, key.sign(self.signed_message()))


@dataclass(frozen=True, slots=True)
class SignedCheckpoint:
    checkpoint: Checkpoint
    sig: str

    @classmethod
    def from_dict(cls, d: Any) -> SignedCheckpoint:
        obj = require_object(d, "signed checkpoint", _SIGNED_CP_KEYS)
        return cls(Checkpoint.from_dict(obj["checkpoint"]), get_str(obj, "sig", SIG_RE))

    @classmethod
    def from_bytes(cls, data: bytes) -> SignedCheckpoint:
        return cls.from_dict(loads(data))

    def to_dict(self) -> dict[str, Any]:
        return {"checkpoint": self.checkpoint.to_dict(), "sig": self.sig}

    def to_bytes(self) -> bytes:
        return canonical_trusted(self.to_dict())

    def verify(self, log_key: VerifyKey) -> None:
        if log_key.key_id != self.checkpoint.log:
            raise KeyMismatchError(f"checkpoint names log key {self.checkpoint.log}, "
                                   f"expected {log_key.key_id}", field="log")
        log_key.verify(self.checkpoint.signed_message(), self.sig)
