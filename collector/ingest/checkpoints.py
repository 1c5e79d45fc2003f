"""Signed checkpoints of the ledger (DESIGN.md §6 and §8.2, control D5) and when to make them.

Two kinds are made together, for the same size, with the log key that the collectors of one
ledger share:

- v1 (§6): signs (size, head); the store refuses one whose head is not its entry size-1.
  Kept as is: v1 bundles still verify.
- v2 (§8.2): a C2SP tlog-checkpoint note ``<origin>\n<size>\n<base64 root>\n`` signed under
  the origin, whose root is the store's Merkle root at that size (collector.ledger.
  checkpoint_tables refuses any other). Witnesses cosign these, and anyone holding one can
  be given RFC 9162 inclusion and consistency proofs that lead to its root.

The origin names one ledger and must be the same for every collector of it: configured as
``[collector] origin``, or else :func:`default_origin` of the log key (see docs/protocol.md
§13.6).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from collector import CollectorError
from collector.ledger import checkpoint_tables
from collector.ledger.base import LedgerStore
from collector.ledger.sqlbase import SQLStore
from wire.errors import WireError
from wire.keys import SigningKey, load_signing_key
from wire.ledger import Checkpoint, SignedCheckpoint
from wire.note import Checkpoint as NoteCheckpoint
from wire.note import NoteVerifier, check_origin

DEFAULT_ORIGIN_DOMAIN = "timeclock.invalid"


class LogKeyError(CollectorError):
    """The log key file is missing, malformed or readable by others."""


def load_log_key(path: Path) -> SigningKey:
    """Load the log signing key (a 0600 timeclock Ed25519 key file)."""
    try:
        return load_signing_key(path)
    except (WireError, OSError) as e:
        raise LogKeyError(f"log key: {e}") from e


def make_checkpoint(store: LedgerStore, log_key: SigningKey, now_us: int) -> SignedCheckpoint:
    """Sign the store's current (size, head) at ``now_us`` and store the checkpoint."""
    size, head = store.head()
    signed = Checkpoint(log=log_key.key_id, size=size, head=head, at=now_us).sign(log_key)
    store.add_checkpoint(signed)
    return signed


class OriginError(CollectorError):
    """The configured origin is not a valid one, or not the one this ledger's checkpoints use."""


def default_origin(log_key_id: str) -> str:
    """The origin of a ledger whose config names none: ``timeclock.invalid/<log key id>``.

    Derived from the log key, which every collector of one ledger shares, so it is stable
    across restarts and hosts; ``.invalid`` (RFC 2606) says that nobody chose a name. A
    ledger whose log key is rotated keeps its origin only if it is configured (checkpoints
    of a new origin are refused by :func:`resolve_origin`).
    """
    return f"{DEFAULT_ORIGIN_DOMAIN}/{log_key_id}"


def validate_origin(origin: str) -> str:
    """Raise OriginError unless ``origin`` is a schema-less URL fit for a checkpoint."""
    if "://" in origin:
        raise OriginError(f"origin {origin[:80]!r}: a schema-less URL, e.g. "
                          f"acme.example/timeclock (no scheme)")
    try:
        return check_origin(origin)
    except WireError as e:
        raise OriginError(f"origin: {e}") from e


def resolve_origin(configured: str | None, store: SQLStore, log_key: SigningKey) -> str:
    """The origin to sign with: the configured one, else :func:`default_origin`; refused
    when this ledger already holds v2 checkpoints under another origin (witnesses and
    auditors follow one origin; changing it would orphan every checkpoint they hold)."""
    origin = validate_origin(configured or default_origin(log_key.key_id))
    stored = checkpoint_tables.newest(store)
    if stored is not None and stored.checkpoint.origin != origin:
        how = "[collector] origin" if configured else "the default origin (no [collector] origin)"
        raise OriginError(f"{how} is {origin!r} but this ledger's checkpoints are of origin "
                          f"{stored.checkpoint.origin!r}: set [collector] origin = "
                          f"{stored.checkpoint.origin!r}")
    return origin


def note_verifier(origin: str, log_key: SigningKey) -> NoteVerifier:
    """The log's note verifier: the log public key under the origin."""
    return NoteVerifier(origin, log_key.verify_key)


def make_checkpoint_v2(store: SQLStore, log_key: SigningKey, origin: str, size: int,
                       now_us: int) -> checkpoint_tables.StoredCheckpoint:
    """Sign the store's Merkle root at ``size`` under ``origin``, store the note, and return
    the stored checkpoint (with any cosignatures already gathered for that size)."""
    note = NoteCheckpoint(origin, size, store.merkle_root(size)).sign(log_key)
    checkpoint_tables.add_checkpoint(store, note, made_at=now_us)
    stored = checkpoint_tables.get(store, size)
    if stored is None:      # just stored, and the table is append-only
        raise CollectorError(f"checkpoint of size {size} vanished after it was stored")
    return stored


@dataclass
class CheckpointPolicy:
    """Checkpoint every ``every_entries`` new entries or every ``every_s`` seconds.

    Only a ledger that grew since the last checkpoint needs a new one. ``due`` is pure (time
    is a parameter); call ``made`` with each checkpoint made or loaded.
    """

    every_entries: int = 1000
    every_s: float = 60.0
    last_size: int = 0
    last_at: int | None = field(default=None)

    def __post_init__(self) -> None:
        if self.every_entries < 1 or self.every_s <= 0:
            raise ValueError("checkpoint policy needs every_entries ≥ 1 and every_s > 0")

    @classmethod
    def from_store(cls, store: LedgerStore, *, every_entries: int = 1000,
                   every_s: float = 60.0) -> CheckpointPolicy:
        """A policy that continues from the latest checkpoint already stored."""
        policy = cls(every_entries, every_s)
        cps = store.checkpoints()
        if cps:
            policy.made(max(cps, key=lambda s: (s.checkpoint.size, s.checkpoint.at)))
        return policy

    def due(self, size: int, now_us: int) -> bool:
        if size <= self.last_size:
            return False
        if size - self.last_size >= self.every_entries or self.last_at is None:
            return True
        return now_us - self.last_at >= self.every_s * 1_000_000

    def made(self, signed: SignedCheckpoint) -> None:
        self.last_size = max(self.last_size, signed.checkpoint.size)
        self.last_at = signed.checkpoint.at if self.last_at is None else max(
            self.last_at, signed.checkpoint.at)
