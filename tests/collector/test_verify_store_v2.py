"""Issue 10: the live store's ``verify`` follows timeclock-verify's v2 rules where they apply.

The attacks are the issue's: an attacker with the database file (triggers dropped) truncates
the ledger or deletes a punch from the middle and re-hashes the chain, rebuilding the Merkle
node table and re-signing checkpoints with the log key. The verify state, a checkpoint an
earlier verify verified, is held like a trusted checkpoint; the stored tree is recomputed
from the entries; v2 notes must match the store's tree.
"""

from __future__ import annotations

import sqlite3
from pathlib import Path

import pytest

from collector.cli.main import main
from collector.ingest.checkpoints import make_checkpoint
from collector.ledger.audit import VerifyState, verify_store
from collector.ledger.base import EventFact
from collector.ledger.schema_sqlite import TRIGGER_NAMES
from collector.ledger.sqlbase import SQLStore
from tests.collector.ledger_kit import T0, Clock, seeded_key
from wire.ledger import Entry
from wire.merkle import MemoryTree, entry_leaf_hash
from wire.note import Checkpoint as NoteCheckpoint

LOG_KEY = seeded_key("log-key")
LOG_KEYS = {LOG_KEY.key_id: LOG_KEY.verify_key}
ORIGIN = "acme.example/timeclock"


def _ledger(store: SQLStore) -> VerifyState:
    """11 entries: enrolment and 10 punches; checkpoints at 6 (the verify state) and 11."""
    c = Clock("clock-1")
    store.append([EventFact("device", c.enrolled_body())], now_us=T0)
    store.append([c.fact() for _ in range(5)], now_us=T0 + 1)
    make_checkpoint(store, LOG_KEY, T0 + 2)                          # size 6
    state = verify_store(store, LOG_KEYS).state
    assert state is not None
    assert state.checkpoint.checkpoint.size == 6
    store.append([c.fact() for _ in range(5)], now_us=T0 + 3)
    make_checkpoint(store, LOG_KEY, T0 + 4)                          # size 11
    return state


def _connect(db: Path) -> sqlite3.Connection:
    conn = sqlite3.connect(db, isolation_level=None)
    for t in TRIGGER_NAMES:
        conn.execute(f"DROP TRIGGER IF EXISTS {t}")
    return conn


def _truncate(db: Path, size: int) -> None:
    """Delete entries from ``size`` on, their tree nodes and the checkpoints above them."""
    conn = _connect(db)
    for sql in ("DELETE FROM entries WHERE idx >= ?", "DELETE FROM bodies WHERE idx >= ?",
                "DELETE FROM punches WHERE idx >= ?", "DELETE FROM checkpoints WHERE size > ?"):
        conn.execute(sql, (size,))
    conn.execute("DELETE FROM tc_merkle WHERE ((idx + 1) << level) > ?", (size,))
    conn.close()


def _rehash_without(db: Path, victim: int) -> None:
    """Delete entry ``victim`` and re-chain, re-number and re-tree everything after it."""
    conn = _connect(db)
    rows = conn.execute("SELECT idx, kind, at, body, prev, hash FROM entries ORDER BY idx"
                        ).fetchall()
    bodies = dict(conn.execute("SELECT idx, body FROM bodies").fetchall())
    kept = [r for r in rows if r[0] != victim]
    for sql in ("DELETE FROM entries WHERE idx >= ?", "DELETE FROM bodies WHERE idx >= ?",
                "DELETE FROM checkpoints WHERE size > ?"):
        conn.execute(sql, (victim,))
    conn.execute("DELETE FROM punches WHERE idx = ?", (victim,))
    conn.execute("UPDATE punches SET idx = idx - 1 WHERE idx > ?", (victim,))
    conn.execute("DELETE FROM tc_merkle")
    tree = MemoryTree()
    prev = kept[victim - 1][5]
    for i, (old, kind, at, body_hash, _, _) in enumerate(kept):
        entry = Entry(idx=i, kind=kind, at=at, body=body_hash,
                      prev=prev if i >= victim else kept[i][4])
        if i >= victim:
            conn.execute("INSERT INTO entries VALUES (?, ?, ?, ?, ?, ?)",
                         (i, kind, at, body_hash, entry.prev, entry.hash()))
            conn.execute("INSERT INTO bodies VALUES (?, ?)", (i, bodies[old]))
            prev = entry.hash()
        for level, idx, h in tree.append([entry_leaf_hash(entry)]):
            conn.execute("INSERT INTO tc_merkle VALUES (?, ?, ?)", (level, idx, h))
    conn.close()


def test_d5_truncation_below_the_verified_checkpoint_fails(sqlite_store: SQLStore,
                                                        sqlite_path: Path) -> None:
    state = _ledger(sqlite_store)
    _truncate(sqlite_path, 4)
    assert verify_store(sqlite_store, LOG_KEYS).ok      # on its own, the cut looks clean
    for full in (False, True):
        result = verify_store(sqlite_store, LOG_KEYS, state=state, full=full)
        first = result.report.first_failure
        assert first is not None, full
        assert (first.idx, first.check) == (4, "trusted-checkpoint")
        assert "the ledger is smaller than a checkpoint you hold — truncated" in first.message


def test_d5_rehash_below_the_verified_checkpoint_fails(sqlite_store: SQLStore,
                                                    sqlite_path: Path) -> None:
    state = _ledger(sqlite_store)
    _rehash_without(sqlite_path, 3)
    make_checkpoint(sqlite_store, LOG_KEY, T0 + 9)       # the attacker holds the log key
    clean = verify_store(sqlite_store, LOG_KEYS)
    assert clean.ok, clean.report.findings                # why v2 needs an anchor
    for full in (False, True):
        first = verify_store(sqlite_store, LOG_KEYS, state=state, full=full).report.first_failure
        assert first is not None, full
        assert (first.idx, first.check) == (5, "trusted-checkpoint")
        assert "rewritten below a checkpoint you hold" in first.message


def test_d5_an_edited_tree_node_fails(sqlite_store: SQLStore, sqlite_path: Path) -> None:
    _ledger(sqlite_store)
    conn = _connect(sqlite_path)
    conn.execute("UPDATE tc_merkle SET hash = ? WHERE level = 1 AND idx = 2", (bytes(32),))
    conn.close()
    first = verify_store(sqlite_store, LOG_KEYS).report.first_failure
    assert first is not None
    assert (first.idx, first.check) == (5, "checkpoint-v2")
    assert "stored Merkle node (level 1, index 2)" in first.message


def test_d5_v2_notes_match_the_stores_tree(sqlite_store: SQLStore) -> None:
    _ledger(sqlite_store)
    good = [NoteCheckpoint(ORIGIN, n, sqlite_store.merkle_root(n)).sign(LOG_KEY)
            for n in (6, 11)]
    for full in (False, True):
        result = verify_store(sqlite_store, LOG_KEYS, notes=good, full=full)
        assert result.ok, result.report.findings
        assert result.notes == 2
    wrong = NoteCheckpoint(ORIGIN, 8, sqlite_store.merkle_root(9)).sign(LOG_KEY)
    beyond = NoteCheckpoint(ORIGIN, 12, sqlite_store.merkle_root(11)).sign(LOG_KEY)
    rogue = NoteCheckpoint(ORIGIN, 6, sqlite_store.merkle_root(6)).sign(seeded_key("rogue"))
    cases = [(wrong, 7, "the store's tree has"), (beyond, 11, "truncated"),
             (rogue, None, "not signed by a trusted collector log key")]
    for note, idx, message in cases:
        first = verify_store(sqlite_store, LOG_KEYS, notes=[*good, note]).report.first_failure
        assert first is not None, message
        assert (first.idx, first.check) == (idx, "checkpoint-v2")
        assert message in first.message


def test_d5_an_uncovered_tail_is_counted_and_fails_only_when_required(
        sqlite_store: SQLStore) -> None:
    _ledger(sqlite_store)
    c = Clock("clock-2")
    sqlite_store.append([EventFact("device", c.enrolled_body())], now_us=T0 + 5)
    sqlite_store.append([c.fact() for _ in range(2)], now_us=T0 + 6)
    result = verify_store(sqlite_store, LOG_KEYS)
    assert (result.ok, result.uncovered) == (True, 3)
    strict = verify_store(sqlite_store, LOG_KEYS, require_coverage=True).report.first_failure
    assert strict is not None
    assert (strict.idx, strict.check) == (13, "coverage")


def test_d5_cli_verify_holds_its_state_on_full_runs(sqlite_store: SQLStore, sqlite_path: Path,
                                                 tmp_path: Path,
                                                 capsys: pytest.CaptureFixture[str]) -> None:
    _ledger(sqlite_store)
    args = ["verify", "--store", f"sqlite://{sqlite_path}", "--log-key-pub",
            LOG_KEY.verify_key.b64, "--state", str(tmp_path / "vs.json")]
    assert main(args) == 0                      # state: the checkpoint of size 11
    capsys.readouterr()
    _truncate(sqlite_path, 8)
    for extra in ([], ["--full"]):
        assert main([*args, *extra]) == 1, extra
        out = capsys.readouterr().out
        assert "check (9) trusted-checkpoint: the ledger is smaller than a checkpoint you " \
               "hold — truncated" in out
