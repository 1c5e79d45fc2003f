"""What a database admin can do to a ledger with the collector stopped: the attacks the e2e tests
replay against a live site (truncation, a punch dropped and the chain re-hashed; SQLite), and
a key change written into the database (issue 11 finding 4; SQLite or, through
:class:`QmarkConnection`, PostgreSQL)."""

from __future__ import annotations

import contextlib
import hashlib
import io
import sqlite3
from pathlib import Path
from typing import Any

from collector.cli.main import main as collector_main
from collector.ledger import registry
from collector.ledger.sqlbase import SQLStore
from tests.collector.ledger_kit import T0, Clock
from wire import ZERO_HASH
from wire.canonical import canonical
from wire.keys import SigningKey, save_signing_key
from wire.ledger import Entry
from wire.ledger import body_hash as sha256_body
from wire.merkle import MemoryTree, entry_leaf_hash
from wire.rotation import RotationRequest, SignedRotationRequest
from wire.verify_cli import main as verify_main

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


class QmarkConnection:
    """A psycopg connection that takes sqlite3's ``?`` placeholders, so the attacks here run on
    a PostgreSQL ledger too (as the superuser, ``session_replication_role = replica``)."""

    def __init__(self, conn: Any) -> None:
        self.conn = conn

    def execute(self, sql: str, params: Any = ()) -> Any:
        return self.conn.execute(sql.replace("?", "%s"), params)

    def executemany(self, sql: str, rows: Any) -> None:
        with self.conn.cursor() as cur:
            cur.executemany(sql.replace("?", "%s"), list(rows))


def append_forged_key_change(conn: Any, clock: Clock, operator: SigningKey, *,
                             request: bool) -> int:
    """Issue 11 finding 4 written into the database (``conn``: sqlite3, or
    :class:`QmarkConnection`; its guards already out of the way): a ``rotated`` entry to the
    operator's key (carrying a request the operator signed, or none) and a punch signed with it
    appended, chained and re-treed with the projections to match. Returns the rotation's idx."""
    rows = conn.execute("SELECT idx, kind, at, body, prev, hash FROM entries ORDER BY idx"
                        ).fetchall()
    bodies = {int(i): bytes(b) for i, b in conn.execute("SELECT idx, body FROM bodies")}
    seq, at = clock.seq + 1, int(rows[-1][2]) + 1
    body: dict[str, object] = {"event": "rotated", "device": clock.device,
                               "key": operator.key_id,
                               "signing_key": operator.verify_key.b64, "from_seq": seq}
    if request:
        req = RotationRequest(clock.device, clock.key.key_id, operator.key_id,
                              operator.verify_key, seq, at)
        body["request"] = SignedRotationRequest(
            req, operator.sign(req.signed_message())).to_dict()
    rotation = canonical(body)
    punch = clock.punch(key=operator, action="out", ts=T0 - 3 * 3600 * 10**6)
    raw = punch.to_bytes()
    kept: Kept = [(r[1], r[2], r[3], bodies.get(r[0])) for r in rows]
    kept += [("device", at, sha256_body(rotation), rotation),
             ("punch", at, sha256_body(raw), raw)]
    n = len(rows)
    conn.execute("DELETE FROM tc_merkle")
    rewrite_from(conn, kept, n)
    conn.execute("UPDATE keys SET until_seq = ? WHERE device = ? AND until_seq IS NULL",
                 (seq, clock.device))
    conn.execute("INSERT INTO keys (key_id, device, public_b64, from_seq, until_seq, "
                 "status, registered_idx) VALUES (?, ?, ?, ?, NULL, 'active', ?)",
                 (operator.key_id, clock.device, operator.verify_key.b64, seq, n))
    # as the append does: the device's last change is the rotation (verify --full
    # re-derives the registry and would name a stale row)
    conn.execute("UPDATE devices SET changed_idx = ? WHERE device = ?", (n, clock.device))
    p = punch.punch
    conn.execute("INSERT INTO punches (device, seq, punch_hash, idx, key_id, ts, clock, "
                 "credential, action, reader, site) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                 (p.device, p.seq, punch.hash(), n + 1, p.key, p.ts, p.clock,
                  p.credential, p.action, p.reader, "hq"))
    return n


def ledger_with_a_clock(store: SQLStore) -> Clock:
    """clock-1 enrolled with three punches: the ledger the key-change attack is written into."""
    clock = Clock("clock-1")
    registry.enroll(store, clock.device, "hq", clock.key.verify_key.b64, now_us=T0)
    store.append([clock.fact() for _ in range(3)], now_us=T0)
    return clock


# What both verifiers must say at the forged rotation's entry: with a request the operator
# signed, TAMPER; without one (the shape of a pre-request ledger), an unauthenticated key
# change, a finding: never passed silently. ((verify rc, timeclock-verify rc), the words)
KEY_CHANGE_VERDICTS = {
    True: ((1, 1), "TAMPER at idx {idx}, check (5) fact: device body: the rotation request is "
                   "not signed by clock-1's current key"),
    False: ((0, 0), "finding at idx {idx}, check (5) fact: UNAUTHENTICATED KEY CHANGE: "
                    "clock-1 rotated to key"),
}


def both_verdicts(store: str, directory: Path) -> tuple[tuple[int, int], str, str]:
    """``verify --full`` of the live ledger and ``timeclock-verify`` of a bundle exported from
    it (the export signed with a fresh log key): ((exit codes), live output, offline output)."""
    log_key = SigningKey.generate()
    key_file = directory / "log.key"
    save_signing_key(key_file, log_key)
    pub = log_key.verify_key.b64
    live, offline = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(live):
        rc = collector_main(["verify", "--store", store, "--log-key-pub", pub, "--full",
                             "--state", str(directory / "verify-state.json")])
    with contextlib.redirect_stdout(io.StringIO()):
        exported = collector_main(["export", "--store", store, "--bundle",
                                   str(directory / "bundle"), "--log-key", str(key_file)])
    assert exported == 0
    with contextlib.redirect_stdout(offline):
        rc_bundle = verify_main([str(directory / "bundle"), "--collector-key", pub])
    return (rc, rc_bundle), live.getvalue(), offline.getvalue()
