"""What a database admin can do to a SQLite ledger with the collector stopped: the attacks the
e2e tests replay against a live site (truncation, a punch dropped and the chain re-hashed)."""

from __future__ import annotations

import hashlib
import sqlite3
from pathlib import Path
from typing import Any

from wire import ZERO_HASH
from wire.canonical import canonical
from wire.ledger import Entry
from wire.merkle import MemoryTree, entry_leaf_hash

# (kind, at, body hash, body bytes or None) of each entry the rewritten ledger keeps
Kept = list[tuple[str, int, str, Any]]


def drop_triggers(conn: sqlite3.Connection) -> list[str]:
    """Drop every trigger; returns their SQL, for :func:`restore_triggers`."""
    saved = conn.execute("SELECT name, sql FROM sqlite_master WHERE type = 'trigger'"
                         ).fetchall()
    for name, _sql in saved:
        conn.execute(f'DROP TRIGGER "{name}"')
    return [str(sql) for _name, sql in saved]


def restore_triggers(conn: sqlite3.Connection, saved: list[str]) -> None:
    """Put the dropped triggers back exactly as they were: the attacker covers the tracks
    that `serve`'s schema check would see (collector.ledger.schema_check), so what catches
    the attack is the witnesses and the verifiers, not a missing trigger."""
    for sql in saved:
        conn.execute(sql)


def truncate_ledger(db: Path, keep: int) -> None:
    """Drop the triggers and delete every entry from ``keep`` on, with its body, punch row,
    tree nodes, quarantine rows and the checkpoints (v1 and v2) and cosignatures above it."""
    conn = sqlite3.connect(db)
    try:
        saved = drop_triggers(conn)
        for table in ("bodies", "punches", "quarantine", "entries"):
            conn.execute(f"DELETE FROM {table} WHERE idx >= ?", (keep,))  # noqa: S608 -- ours
        # a complete subtree (L, k) covers leaves k·2^L … (k+1)·2^L − 1
        conn.execute("DELETE FROM tc_merkle WHERE (idx + 1) * (1 << level) > ?", (keep,))
        for table in ("tc_cosignatures", "tc_checkpoints_v2", "checkpoints"):
            conn.execute(f"DELETE FROM {table} WHERE size > ?", (keep,))  # noqa: S608 -- ours
        restore_triggers(conn, saved)
        conn.commit()
    finally:
        conn.close()


def without_victim_plus_forgery(rows: list[Any], bodies: dict[int, Any], victim: int) -> Kept:
    """Every entry but ``victim``, then a forged ``access`` entry so the size stays the same."""
    forged = canonical({"principal": "mallory", "action": "read", "at": rows[-1][2]})
    kept: Kept = [(r[1], r[2], r[3], bodies.get(r[0])) for r in rows if r[0] != victim]
    kept.append(("access", rows[-1][2], hashlib.sha256(forged).hexdigest(), forged))
    return kept


def rewrite_from(conn: sqlite3.Connection, kept: Kept, victim: int) -> None:
    """Re-chain and re-number every kept entry from ``victim`` on and rebuild the whole tree
    (the caller has deleted the old rows from ``victim`` on and every tree node)."""
    tree = MemoryTree()
    prev = ZERO_HASH
    for i, (kind, at, body_hash, body) in enumerate(kept):
        entry = Entry(idx=i, kind=kind, at=at, body=body_hash, prev=prev)
        prev = entry.hash()
        if i >= victim:
            conn.execute("INSERT INTO entries VALUES (?, ?, ?, ?, ?, ?)",
                         (i, kind, at, body_hash, entry.prev, prev))
            if body is not None:
                conn.execute("INSERT INTO bodies VALUES (?, ?)", (i, body))
        conn.executemany("INSERT INTO tc_merkle VALUES (?, ?, ?)",
                         tree.append([entry_leaf_hash(entry)]))


def rehash_without_a_punch(db: Path, size: int) -> int:
    """A database admin, collector stopped: delete a punch from the middle, re-chain and
    re-number everything after it, append a forged ``access`` entry (the size is what the
    auditor saw), rebuild the whole tree and drop every checkpoint above the victim."""
    conn = sqlite3.connect(db)
    try:
        saved = drop_triggers(conn)
        rows = conn.execute("SELECT idx, kind, at, body, prev, hash FROM entries "
                            "WHERE idx < ? ORDER BY idx", (size,)).fetchall()
        bodies = dict(conn.execute("SELECT idx, body FROM bodies WHERE idx < ?", (size,)))
        victim = next(r[0] for r in rows[size // 2:] if r[1] == "punch")
        kept = without_victim_plus_forgery(rows, bodies, victim)
        for table in ("entries", "bodies", "quarantine"):
            conn.execute(f"DELETE FROM {table} WHERE idx >= ?", (victim,))  # noqa: S608 -- ours
        conn.execute("DELETE FROM punches WHERE idx = ?", (victim,))
        conn.execute("UPDATE punches SET idx = idx - 1 WHERE idx > ?", (victim,))
        for table in ("tc_merkle", "tc_cosignatures", "tc_checkpoints_v2", "checkpoints"):
            where = "" if table == "tc_merkle" else " WHERE size > ?"
            conn.execute(f"DELETE FROM {table}{where}",  # noqa: S608 -- ours
                         () if not where else (victim,))
        rewrite_from(conn, kept, victim)
        restore_triggers(conn, saved)
        conn.commit()
    finally:
        conn.close()
    return int(victim)
