"""The ledger interface (DESIGN.md §6) that the SQLite and PostgreSQL stores implement.

Invariants every store keeps, inside the database and not only in this code:
- the chain (``entries``) is append-only: UPDATE and DELETE fail in the database itself;
- a body may be deleted only when a ``retention`` entry already covers its idx;
- ``append`` is one transaction: all facts of a batch get consecutive idx values or none do;
- (device, seq) is unique among recorded punches; the same hash again is a duplicate (no new
  entry), a different hash is a conflict (quarantined with a ``rejection`` entry);
- several collectors may append to one PostgreSQL ledger at once; the store serialises them.
Receipts may be sent only after ``append`` has returned (the commit is durable then).
"""

from __future__ import annotations

import enum
from abc import ABC, abstractmethod
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any

from wire.ledger import Entry, SignedCheckpoint
from wire.punch import SignedPunch


@dataclass(frozen=True, slots=True)
class SealPlan:
    """What a keyed ledger's append derives for one punch from its credential, device time and
    the people directory, worked out ahead of the commit (off the writer thread; DESIGN.md
    §8.6, collector.ledger.body_crypto.PunchPlanner): the projection's blind index tag and the
    (subject, period) whose data key seals the body. The store uses it only when it was made
    by its own sealer (``sealer``) against the directory version it reads in the append's
    transaction (``directory``); otherwise it derives both again, so a plan never changes
    what is recorded, only where it is computed."""

    credential_tag: str
    subject: str
    period: str
    directory: tuple[int, int] | None      # badges_version the subject was resolved against
    sealer: object = field(compare=False, repr=False)   # the BodySealer that made it


@dataclass(frozen=True, slots=True)
class PunchFact:
    """A verified punch to record. ``topic`` and ``received_at`` are kept for a conflict;
    ``sealing`` (optional): its :class:`SealPlan` for a keyed ledger, made while judging."""

    signed: SignedPunch
    topic: str
    received_at: int
    sealing: SealPlan | None = None


@dataclass(frozen=True, slots=True)
class RejectionFact:
    """Input that failed verification: raw bytes go to quarantine, a ``rejection`` entry
    records ``{"reason","topic","raw_sha256","received_at"}`` (+ ``detail``, ``device``)."""

    reason: str
    detail: str
    topic: str
    raw: bytes
    received_at: int
    device: str | None = None


@dataclass(frozen=True, slots=True)
class EventFact:
    """Any other fact: ``device`` lifecycle, ``access``, ``correction``, ``retention``.

    For ``device`` events the store also updates its registry projection in the same
    transaction (enrolled → device + key active; rotated → new key from ``from_seq``;
    revoked → device and its keys revoked).
    """

    kind: str
    body: dict[str, Any]


Fact = PunchFact | RejectionFact | EventFact


class Outcome(enum.Enum):
    APPENDED = "appended"      # a new entry holds this fact
    DUPLICATE = "duplicate"    # same (device, seq, hash) already recorded: receipt again
    CONFLICT = "conflict"      # same (device, seq), other hash: quarantined + rejection entry
    REJECTED = "rejected"      # a RejectionFact, recorded
    FORK = "fork"              # prev does not link to the recorded neighbour: quarantined +
                               # ``rejection`` entry (reason ``fork``), never a punch entry


@dataclass(frozen=True, slots=True)
class AppendResult:
    outcome: Outcome
    idx: int                   # the entry that records it (the existing one for DUPLICATE)
    device: str | None = None
    seq: int | None = None


@dataclass(frozen=True, slots=True)
class StoredEntry:
    entry: Entry
    hash: str
    body: bytes | None         # None once retention deleted it


@dataclass(frozen=True, slots=True)
class DeviceRecord:
    device: str
    site: str
    status: str                # active | retired | revoked
    enrolled_idx: int
    changed_idx: int


@dataclass(frozen=True, slots=True)
class KeyRecord:
    device: str
    key_id: str
    public_b64: str
    from_seq: int
    until_seq: int | None      # exclusive; set when a newer key takes over (rotation)
    status: str                # active | revoked
    registered_idx: int


@dataclass(frozen=True, slots=True)
class DeviceProgress:
    device: str
    contiguous: int            # highest seq s such that 1..s are all recorded
    highest: int
    gaps: tuple[tuple[int, int], ...]   # missing inclusive ranges below ``highest``


@dataclass(frozen=True, slots=True)
class QuarantineRecord:
    id: int
    idx: int                   # its rejection entry
    received_at: int
    topic: str
    reason: str
    detail: str
    raw_sha256: str
    size: int


class LedgerStore(ABC):
    """One ledger. Implementations: ``SQLiteStore``, ``PostgresStore``."""

    @abstractmethod
    def append(self, facts: Sequence[Fact], *, now_us: int) -> list[AppendResult]:
        """Record ``facts`` in one transaction, in order; one result per fact."""

    @abstractmethod
    def head(self) -> tuple[int, str]:
        """(size, hash of entry size-1 or 64 zeros)."""

    @abstractmethod
    def entries(self, start: int = 0, stop: int | None = None) -> Iterator[StoredEntry]:
        """Entries with start <= idx < stop, in idx order."""

    @abstractmethod
    def device(self, device: str) -> DeviceRecord | None: ...

    @abstractmethod
    def devices(self) -> list[DeviceRecord]: ...

    @abstractmethod
    def keys(self, device: str) -> list[KeyRecord]: ...

    @abstractmethod
    def progress(self, device: str) -> DeviceProgress: ...

    @abstractmethod
    def add_checkpoint(self, signed: SignedCheckpoint) -> None: ...

    @abstractmethod
    def checkpoints(self) -> list[SignedCheckpoint]: ...

    @abstractmethod
    def quarantine(self, *, limit: int = 100, after_id: int = 0) -> list[QuarantineRecord]: ...

    @abstractmethod
    def quarantined_raw(self, qid: int) -> bytes: ...

    @abstractmethod
    def close(self) -> None: ...
