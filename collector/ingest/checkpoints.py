"""Signed checkpoints of the ledger (DESIGN.md §6, control D5) and when to make them.

A checkpoint signs (size, head) with the log key that the collectors of one ledger share.
Anyone holding an old checkpoint can later prove that the log only grew. The store refuses
a checkpoint whose head is not its own entry size-1.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from collector import CollectorError
from collector.ledger.base import LedgerStore
from wire.errors import WireError
from wire.keys import SigningKey, load_signing_key
from wire.ledger import Checkpoint, SignedCheckpoint


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
