"""Builders for ledger tests: a device with a real Ed25519 key that signs a chain of punches."""

from __future__ import annotations

import hashlib
import sqlite3
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from collector.ingest import checkpoints
from collector.ledger import checkpoint_tables
from collector.ledger.base import EventFact, PunchFact
from collector.ledger.sqlite import SQLiteStore
from wire import ZERO_HASH
from wire.keys import SigningKey
from wire.punch import Punch, SignedPunch
from wire.topics import punches as punches_topic

T0 = 1_764_140_400_000_000  # 2025-11-26T07:00:00Z in µs
BOOT = "6b2f1e0c-3c4d-4e8a-9f1a-2b3c4d5e6f70"


def seeded_key(name: str) -> SigningKey:
    return SigningKey(hashlib.sha256(name.encode()).digest())


def sqlite_exec(db: Path, *stmts: str) -> None:
    """Run ``stmts`` on the SQLite file ``db`` directly, each committed on its own: what an
    insider with the file can do behind the store's back (its triggers still apply)."""
    conn = sqlite3.connect(db, isolation_level=None)
    try:
        for stmt in stmts:
            conn.execute(stmt)
    finally:
        conn.close()


@dataclass
class Clock:
    """A device that signs consecutive punches (seq 1, 2, ...) linked by ``prev``."""

    device: str
    key: SigningKey = field(default=None)  # type: ignore[assignment]
    seq: int = 0
    prev: str = ZERO_HASH
    site: str = "hq"

    def __post_init__(self) -> None:
        if self.key is None:
            self.key = seeded_key(self.device)

    def punch(self, *, ts: int | None = None, credential: str = "em4100:0012345678",
              action: str = "in", clock: str = "synced", key: SigningKey | None = None,
              seq: int | None = None, prev: str | None = None) -> SignedPunch:
        k = key or self.key
        s = self.seq + 1 if seq is None else seq
        p = Punch(device=self.device, seq=s, prev=self.prev if prev is None else prev,
                  ts=T0 + s * 1_000_000 if ts is None else ts, clock=clock, boot=BOOT,
                  mono=s * 1000, reader="front", credential=credential, action=action,
                  key=k.key_id)
        signed = p.sign(k)
        if seq is None:
            self.seq = s
            self.prev = p.hash()
        return signed

    def fact(self, signed: SignedPunch | None = None, *, received_at: int = T0,
             **kw: object) -> PunchFact:
        return PunchFact(signed or self.punch(**kw), punches_topic(self.device),  # type: ignore[arg-type]
                         received_at)

    def enrolled_body(self) -> dict[str, object]:
        return {"event": "enrolled", "device": self.device, "site": self.site,
                "key": self.key.key_id, "signing_key": self.key.verify_key.b64}


class CheckpointedLedger:
    """A SQLite ledger of one enrolled clock whose every growth ends in a v2 checkpoint signed
    with ``log_key`` under ``origin`` (what a witness is offered)."""

    def __init__(self, path: Path, log_key: SigningKey, origin: str,
                 device: str = "clock-a") -> None:
        self.store = SQLiteStore(path)
        checkpoint_tables.ensure_schema(self.store)
        self.log_key, self.origin = log_key, origin
        self.clock = Clock(device)
        self.store.append([EventFact("device", self.clock.enrolled_body())], now_us=T0)
        self.now = T0

    def grow(self, n: int, **kw: Any) -> checkpoint_tables.StoredCheckpoint:
        self.now += 10
        self.store.append([self.clock.fact(**kw) for _ in range(n)], now_us=self.now)
        return checkpoints.make_checkpoint_v2(self.store, self.log_key, self.origin,
                                              self.store.tree_size(), self.now)
