"""The Merkle tree in both stores (DESIGN.md §8.1): maintained by append, proven from stored nodes.

Every root and proof the store serves is checked against wire.merkle's reference (a
MemoryTree over the entries' leaf hashes) and its verifiers; the node table is append-only in
the database; a version 1 ledger gets its tree from the upgrade; concurrent appenders and a
rolled-back transaction leave one consistent tree.
"""

from __future__ import annotations

import queue
import signal
import sqlite3
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import psycopg
import pytest

from collector import LedgerError
from collector.cli.main import main
from collector.ledger import open_store, tree
from collector.ledger.base import EventFact, RejectionFact
from collector.ledger.postgres import PostgresStore, migrate
from collector.ledger.schema_sqlite import SCHEMA_V1, TREE_DDL, TRIGGER_NAMES
from collector.ledger.sqlbase import SQLStore
from collector.ledger.sqlite import SQLiteStore
from tests.collector.ledger_kit import T0, Clock
from wire import ZERO_HASH, merkle
from wire.errors import ProofError
from wire.ledger import make_entry

BATCHES = (1, 2, 3, 1, 5, 8, 4, 7, 1, 16, 9, 6)     # 63 facts after the enrolment: 64 entries


def reference(store: SQLStore) -> merkle.MemoryTree:
    """wire.merkle's tree over the store's entries, recomputed from the entries alone."""
    ref = merkle.MemoryTree()
    ref.append([merkle.entry_leaf_hash(se.entry) for se in store.entries()])
    return ref


def fill(store: SQLStore, n_after_enrol: int = 63) -> Clock:
    """An enrolment, then punches and a rejection in batches of varied sizes."""
    c = Clock("clock-1")
    store.append([EventFact("device", c.enrolled_body())], now_us=T0)
    left = n_after_enrol
    for i, b in enumerate(BATCHES):
        k = min(b, left)
        if k == 0:
            break
        facts: list[Any] = [c.fact() for _ in range(k)]
        if i == 3:
            facts[-1] = RejectionFact("malformed", "not JSON", "timeclock/v1/punches/x", b"x", T0)
        store.append(facts, now_us=T0 + i)
        left -= k
    return c


def node_count(store: SQLStore) -> int:
    return int(store.query("SELECT COUNT(*) FROM tc_merkle")[0][0])


def test_d5_stored_root_equals_the_reference_after_every_batch(store: SQLStore) -> None:
    c = Clock("clock-1")
    store.append([EventFact("device", c.enrolled_body())], now_us=T0)
    sizes = [1]
    for i, b in enumerate(BATCHES):
        store.append([c.fact() for _ in range(b)], now_us=T0 + i)
        sizes.append(sizes[-1] + b)
        ref = reference(store)
        assert store.tree_size() == sizes[-1] == ref.size
        assert store.merkle_root(sizes[-1]) == merkle.root(ref, sizes[-1])
    assert sizes[-1] == 64
    ref = reference(store)
    assert [store.merkle_root(n) for n in range(65)] == [merkle.root(ref, n) for n in range(65)]
    assert store.merkle_root(0) == merkle.EMPTY_ROOT
    # exactly the complete subtrees: 2n − popcount(n) nodes, and the recomputation agrees
    assert node_count(store) == 2 * 64 - 1
    assert store.check_tree() == tree.TreeCheck(0, 64, 127)


def test_d5_every_inclusion_and_consistency_proof_verifies_for_sizes_1_to_64(
        store: SQLStore) -> None:
    fill(store)
    ref = reference(store)
    assert store.tree_size() == 64
    roots = [store.merkle_root(n) for n in range(65)]
    leaves = [store.leaf_hash(i) for i in range(64)]
    assert leaves == [merkle.entry_leaf_hash(se.entry) for se in store.entries()]
    for n in range(1, 65):
        for i in range(n):
            proof = store.inclusion_proof(i, n)
            assert proof == merkle.inclusion_proof(ref, i, n)
            merkle.verify_inclusion(leaves[i], i, n, proof, roots[n])
        for m in range(n + 1):
            proof = store.consistency_proof(m, n)
            assert proof == merkle.consistency_proof(ref, m, n)
            merkle.verify_consistency(m, n, roots[m], roots[n], proof)
    # a flipped bit in a served proof fails
    proof = store.inclusion_proof(5, 64)
    bad = [proof[0][:3] + bytes([proof[0][3] ^ 1]) + proof[0][4:], *proof[1:]]
    with pytest.raises(ProofError, match="does not lead to the root"):
        merkle.verify_inclusion(leaves[5], 5, 64, bad, roots[64])


def test_d5_leaf_data_of_a_row_is_the_entry_s_leaf_data(store: SQLStore) -> None:
    fill(store, 10)
    seen = set()
    for se in store.entries():
        e = se.entry
        seen.add(e.kind)
        assert tree.row_leaf_data(e.idx, e.kind, e.at, e.body, e.prev) == \
            merkle.entry_leaf_data(e)
    assert seen == {"device", "punch", "rejection"}
    with pytest.raises(LedgerError, match="not a valid entry"):
        tree.row_leaf_data(0, "punch", 0, "AB" * 32, ZERO_HASH)
    with pytest.raises(LedgerError, match="not a valid entry"):
        tree.row_leaf_data(0, 'pun"ch', 0, ZERO_HASH, ZERO_HASH)


@pytest.mark.parametrize(("call", "match"), [
    (lambda s: s.merkle_root(11), "size 11 is beyond the tree, which has 10 leaves"),
    (lambda s: s.merkle_root(-1), "tree size must be an integer ≥ 0"),
    (lambda s: s.inclusion_proof(10, 10), "no leaf 10 in a tree of size 10"),
    (lambda s: s.inclusion_proof(3, 11), "beyond the tree"),
    (lambda s: s.consistency_proof(5, 11), "beyond the tree"),
    (lambda s: s.consistency_proof(0, 11), "beyond the tree"),
    (lambda s: s.consistency_proof(11, 11), "beyond the tree"),
    (lambda s: s.consistency_proof(6, 5), "smaller size"),
    (lambda s: s.leaf_hash(10), "beyond the tree"),
    (lambda s: s.leaf_hash(-1), "leaf index must be an integer ≥ 0"),
])
def test_d5_out_of_range_is_a_ledger_error(store: SQLStore, call: Any, match: str) -> None:
    fill(store, 9)
    assert store.tree_size() == 10
    with pytest.raises(LedgerError, match=match):
        call(store)


def test_d5_an_empty_ledger_has_the_empty_tree(store: SQLStore) -> None:
    assert store.tree_size() == 0
    assert store.merkle_root(0) == merkle.EMPTY_ROOT
    assert store.consistency_proof(0, 0) == []
    assert store.check_tree().ok
    with pytest.raises(LedgerError, match="beyond the tree"):
        store.merkle_root(1)


# -- append-only in the database ----------------------------------------------------------

def _app_exec(store_kind: str, sqlite_path: Path, request: pytest.FixtureRequest,
              sql: str) -> None:
    if store_kind == "sqlite":
        conn = sqlite3.connect(sqlite_path, isolation_level=None)
        try:
            conn.execute(sql)
        finally:
            conn.close()
    else:
        with psycopg.connect(request.getfixturevalue("pg_ledger").app_dsn,
                             autocommit=True) as conn:
            conn.execute(sql)


@pytest.mark.parametrize("sql", [
    "UPDATE tc_merkle SET hash = hash WHERE level = 0 AND idx = 1",
    "UPDATE tc_merkle SET idx = 99 WHERE level = 1 AND idx = 0",
    "DELETE FROM tc_merkle WHERE level = 0 AND idx = 4",
    "DELETE FROM tc_merkle",
    "INSERT INTO tc_merkle (level, idx, hash) VALUES (0, 1, zeroblob(32))",
])
def test_d5_node_table_refuses_rewrites(store: SQLStore, store_kind: str, sqlite_path: Path,
                                     request: pytest.FixtureRequest, sql: str) -> None:
    fill(store, 7)
    before = store.query("SELECT level, idx, hash FROM tc_merkle ORDER BY level, idx")
    if store_kind == "postgresql":
        sql = sql.replace("zeroblob(32)", "'\\x" + "00" * 32 + "'::bytea")
    err = sqlite3.DatabaseError if store_kind == "sqlite" else psycopg.Error
    with pytest.raises(err, match="append-only|permission denied|UNIQUE|duplicate"):
        _app_exec(store_kind, sqlite_path, request, sql)
    assert store.query("SELECT level, idx, hash FROM tc_merkle ORDER BY level, idx") == before
    assert store.check_tree().ok


def test_d5_pg_owner_cannot_rewrite_or_truncate_nodes_either(pg_ledger: Any) -> None:
    s = PostgresStore(pg_ledger.app_dsn)
    try:
        fill(s, 3)
    finally:
        s.close()
    with psycopg.connect(pg_ledger.app_dsn, autocommit=True) as conn:
        for sql in ("TRUNCATE tc_merkle", "DROP TRIGGER tc_merkle_append_only ON tc_merkle"):
            with pytest.raises(psycopg.Error, match="permission denied|must be owner"):
                conn.execute(sql)
    with psycopg.connect(pg_ledger.owner_dsn, autocommit=True) as conn:
        for sql in ("UPDATE tc_merkle SET hash = hash", "DELETE FROM tc_merkle",
                    "TRUNCATE tc_merkle"):
            with pytest.raises(psycopg.Error, match="append-only"):
                conn.execute(sql)


def test_d5_an_entry_without_its_leaf_is_refused(store: SQLStore, store_kind: str,
                                              sqlite_path: Path,
                                              request: pytest.FixtureRequest) -> None:
    fill(store, 2)
    size, head = store.head()
    e = make_entry(idx=size, kind="access", at=T0, body=b"{}", prev=head)
    sql = (f"INSERT INTO entries (idx, kind, at, body, prev, hash) VALUES ({e.idx}, "  # noqa: S608 - our own hex and ints
           f"'{e.kind}', {e.at}, '{e.body}', '{e.prev}', '{e.hash()}')")
    err = sqlite3.DatabaseError if store_kind == "sqlite" else psycopg.Error
    with pytest.raises(err, match="Merkle leaf is not in tc_merkle"):
        _app_exec(store_kind, sqlite_path, request, sql)
    assert store.head() == (size, head)


# -- transactions --------------------------------------------------------------------------

def test_d5_a_rollback_leaves_no_nodes(store: SQLStore) -> None:
    fill(store, 5)
    nodes, root = node_count(store), store.merkle_root(6)

    def abandon() -> None:
        with store.transaction(T0) as tx:
            tx.record("device", Clock("clock-2").enrolled_body())
            tx.record("device", Clock("clock-3").enrolled_body())
            raise RuntimeError("abandoned")

    with pytest.raises(RuntimeError, match="abandoned"):
        abandon()
    assert (store.tree_size(), node_count(store), store.merkle_root(6)) == (6, nodes, root)
    # a failing append (a fact refused after the first was planned) leaves none either
    with pytest.raises(LedgerError, match="EventFact"):
        store.append([EventFact("device", Clock("clock-4").enrolled_body()),
                      EventFact("punch", {})], now_us=T0)
    assert (store.tree_size(), node_count(store)) == (6, nodes)
    # and the next append grows the same tree
    store.append([EventFact("device", Clock("clock-5").enrolled_body())], now_us=T0)
    ref = reference(store)
    assert store.merkle_root(7) == merkle.root(ref, 7)
    merkle.verify_consistency(6, 7, root, store.merkle_root(7), store.consistency_proof(6, 7))


def test_d5_entries_recorded_in_one_transaction_grow_the_tree(store: SQLStore) -> None:
    fill(store, 2)
    with store.transaction(T0) as tx:
        for i in range(5):
            tx.record("device", Clock(f"clock-{i + 10}").enrolled_body())
    ref = reference(store)
    assert store.tree_size() == 8
    assert store.merkle_root(8) == merkle.root(ref, 8)
    assert store.check_tree().ok


def test_d5_two_concurrent_appenders_on_postgres_keep_one_tree(pg_ledger: Any) -> None:
    setup = PostgresStore(pg_ledger.app_dsn)
    clocks = [Clock(f"clock-{i}") for i in range(2)]
    for c in clocks:
        setup.append([EventFact("device", c.enrolled_body())], now_us=T0)
    batches = {c.device: [[c.fact() for _ in range(1 + i % 4)] for i in range(30)]
               for c in clocks}
    errors: list[BaseException] = []
    start = threading.Barrier(len(clocks))
    seen: dict[str, list[tuple[int, bytes]]] = {c.device: [] for c in clocks}

    def run(c: Clock) -> None:
        s = PostgresStore(pg_ledger.app_dsn)      # its own connection: another collector
        try:
            start.wait(timeout=30)
            for i, batch in enumerate(batches[c.device]):
                s.append(batch, now_us=T0 + i)
                n = s.tree_size()
                seen[c.device].append((n, s.merkle_root(n)))
        except BaseException as e:  # reported to the main thread below
            errors.append(e)
        finally:
            s.close()

    threads = [threading.Thread(target=run, args=(c,)) for c in clocks]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=120)
    try:
        assert errors == []
        total = 2 + sum(len(b) for bs in batches.values() for b in bs)
        ref = reference(setup)
        assert setup.tree_size() == ref.size == total
        assert setup.check_tree() == tree.TreeCheck(0, total, 2 * total - total.bit_count())
        # every root either appender saw is a prefix of the one tree
        final = setup.merkle_root(total)
        for n, r in (x for xs in seen.values() for x in xs):
            assert r == merkle.root(ref, n)
            merkle.verify_consistency(n, total, r, final, setup.consistency_proof(n, total))
    finally:
        setup.close()


_APPENDER = """
import sys
from collector.ledger import open_store
from collector.ledger.base import EventFact
from tests.collector.ledger_kit import T0, Clock
s = open_store(sys.argv[1])
c = Clock(sys.argv[2])
s.append([EventFact("device", c.enrolled_body())], now_us=T0)
i = 0
while True:
    s.append([c.fact() for _ in range(300)], now_us=T0 + i)
    i += 1
    print(i, flush=True)
"""


def _pump(proc: subprocess.Popen[str], lines: queue.Queue[str]) -> None:
    for line in proc.stdout or []:
        lines.put(line)


@pytest.mark.subprocess
def test_d5_a_killed_appender_leaves_entries_and_tree_in_step(store: SQLStore,
                                                           store_url: str) -> None:
    """SIGKILL an appending process (most of its time is inside an append transaction),
    three times: what committed has its tree, what did not has neither."""
    root = Path(__file__).resolve().parents[2]
    for cycle in range(3):
        proc = subprocess.Popen([sys.executable, "-c", _APPENDER, store_url, f"clock-k{cycle}"],
                                cwd=root, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                text=True)
        lines: queue.Queue[str] = queue.Queue()
        reader = threading.Thread(target=_pump, args=(proc, lines), daemon=True)
        reader.start()
        try:
            for _ in range(2 + cycle):        # a few appends committed, then kill
                try:
                    lines.get(timeout=60)
                except queue.Empty:
                    pytest.fail(f"the appender printed nothing in 60 s: "
                                f"{proc.stderr.read() if proc.poll() is not None else ''}")
        finally:
            proc.send_signal(signal.SIGKILL)
            proc.wait(timeout=60)
            reader.join(timeout=60)
        size = store.head()[0]
        assert size >= 1 + 300 * (2 + cycle)
        assert store.tree_size() == size
        assert store.check_tree() == tree.TreeCheck(0, size, 2 * size - size.bit_count())
    ref = reference(store)
    assert store.merkle_root(ref.size) == merkle.root(ref, ref.size)


# -- the audit's recomputation -------------------------------------------------------------

Tamper = Callable[..., None]


@pytest.fixture
def tamper(store_kind: str, sqlite_path: Path, request: pytest.FixtureRequest) -> Tamper:
    """Run statements on the ``store`` fixture's ledger as an attacker who bypasses the
    triggers (SQLite: drops them; PostgreSQL: a superuser with triggers off)."""
    def run(*stmts: tuple[str, tuple[Any, ...]]) -> None:
        _tamper(store_kind, sqlite_path, request, *stmts)
    return run


def _tamper(store_kind: str, sqlite_path: Path, request: pytest.FixtureRequest,
            *stmts: tuple[str, tuple[Any, ...]]) -> None:
    if store_kind == "sqlite":
        conn = sqlite3.connect(sqlite_path, isolation_level=None)
        try:
            for t in TRIGGER_NAMES:
                conn.execute(f"DROP TRIGGER IF EXISTS {t}")
            for sql, params in stmts:
                conn.execute(sql, params)
        finally:
            conn.close()
    else:
        with psycopg.connect(request.getfixturevalue("pg_ledger").admin_dsn,
                             autocommit=True) as conn:
            conn.execute("SET session_replication_role = replica")
            for sql, params in stmts:
                conn.execute(sql.replace("?", "%s"), params)


@pytest.mark.parametrize(("stmt", "where", "message"), [
    (("UPDATE tc_merkle SET hash = ? WHERE level = 0 AND idx = 9", (b"\x01" * 32,)),
     (0, 9), "the entries give"),
    (("UPDATE tc_merkle SET hash = ? WHERE level = 2 AND idx = 1", (b"\x02" * 32,)),
     (2, 1), "the entries give"),
    (("DELETE FROM tc_merkle WHERE level = 1 AND idx = 6", ()),
     (1, 6), "missing"),
    (("INSERT INTO tc_merkle (level, idx, hash) VALUES (0, 40, ?)", (b"\x03" * 32,)),
     (0, 20), "holds 1 node(s) beyond the ledger's last entry"),
    (("INSERT INTO tc_merkle (level, idx, hash) VALUES (63, 0, ?)", (b"\x03" * 32,)),
     (0, 20), "holds 1 node(s) beyond the ledger's last entry"),
])
def test_d5_check_tree_finds_an_edited_node_table(store: SQLStore, tamper: Tamper,
                                               stmt: tuple[str, tuple[Any, ...]],
                                               where: tuple[int, int], message: str) -> None:
    fill(store, 19)
    assert store.check_tree() == tree.TreeCheck(0, 20, 38)
    tamper(stmt)
    result = store.check_tree()
    assert not result.ok
    first = result.findings[0]
    assert ((first.level, first.index), message in first.message) == (where, True), first
    assert result.first_leaf == where[1] << where[0]
    if "give" in message:     # resumed after the edit: the stored base (4, 0) holds
        assert store.check_tree(16, 20) == tree.TreeCheck(16, 20, 7)


def test_d5_check_tree_resumes_from_a_trusted_base(store: SQLStore) -> None:
    fill(store, 30)
    full = store.check_tree()
    assert full.ok
    part = store.check_tree(17, 25)
    assert (part.ok, part.start, part.stop) == (True, 17, 25)
    with pytest.raises(LedgerError, match="outside the ledger"):
        store.check_tree(0, 32)


def test_d5_check_tree_counts_the_whole_table_when_it_reaches_the_end(store: SQLStore,
                                                                    tamper: Tamper) -> None:
    fill(store, 19)
    tamper(("DELETE FROM tc_merkle WHERE level = 1 AND idx = 2", ()))
    assert store.check_tree(16, 19).ok       # neither the range nor its base holds (1, 2)
    assert store.check_tree(16, 20).findings == (tree.TreeFinding(
        0, 20, "the node table holds 37 nodes inside the tree of 20 leaves, which has 38"),)


def test_d5_check_tree_during_appends_finds_nothing(store: SQLStore, store_url: str) -> None:
    """A live audit runs while the collector appends: nodes that commit meanwhile are not
    'beyond the tree'."""
    c = fill(store, 3)
    other = open_store(store_url)
    stop = threading.Event()
    errors: list[BaseException] = []
    appended = [0]

    def append() -> None:
        try:
            while not stop.is_set():
                other.append([c.fact() for _ in range(7)], now_us=T0)
                appended[0] += 1
        except BaseException as e:  # reported below
            errors.append(e)

    t = threading.Thread(target=append)
    t.start()
    results: list[tree.TreeCheck] = []
    deadline = time.monotonic() + 120
    try:
        # at least 30 checks, and at least 10 appends committed while they ran
        while (len(results) < 30 or appended[0] < 10) and time.monotonic() < deadline \
                and not errors:
            results.append(store.check_tree())
    finally:
        stop.set()
        t.join(timeout=60)
        other.close()
    assert errors == []
    assert appended[0] >= 10
    assert [r.findings for r in results if not r.ok] == []


def test_d5_a_missing_node_is_a_ledger_error_not_a_wrong_proof(store: SQLStore,
                                                            tamper: Tamper) -> None:
    fill(store, 15)
    tamper(("DELETE FROM tc_merkle WHERE level = 2 AND idx = 1", ()))
    with pytest.raises(LedgerError, match=r"no node at \(level, index\) \(2, 1\)"):
        store.inclusion_proof(0, 16)
    with pytest.raises(LedgerError, match=r"no node at \(level, index\) \(2, 1\)"):
        store.consistency_proof(4, 8)
    assert store.merkle_root(16) == merkle.root(reference(store), 16)
    assert store.check_tree().findings[0] == tree.TreeFinding(2, 1, "node missing from the "
                                                                    "node table")


# -- the upgrade from version 1 ------------------------------------------------------------

def write_v1_ledger(path: Path, n: int) -> list[bytes]:
    """A version 1 SQLite file (the schema before the tree) with ``n`` valid entries written
    directly as rows; returns their leaf hashes."""
    conn = sqlite3.connect(path, isolation_level=None)
    try:
        conn.executescript(SCHEMA_V1)
        conn.execute("BEGIN")
        prev, leaves = ZERO_HASH, []
        for i in range(n):
            body = b'{"n":%d}' % i
            e = make_entry(idx=i, kind="access", at=T0 + i, body=body, prev=prev)
            conn.execute("INSERT INTO entries VALUES (?, ?, ?, ?, ?, ?)",
                         (e.idx, e.kind, e.at, e.body, e.prev, e.hash()))
            conn.execute("INSERT INTO bodies VALUES (?, ?)", (i, body))
            prev = e.hash()
            leaves.append(merkle.entry_leaf_hash(e))
        conn.execute("COMMIT")
        assert conn.execute("SELECT name FROM sqlite_master WHERE name = 'tc_merkle'"
                            ).fetchone() is None
    finally:
        conn.close()
    return leaves


def test_d5_a_v1_sqlite_ledger_is_upgraded_by_migrate_and_then_proves(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = tmp_path / "v1.db"
    leaves = write_v1_ledger(path, 37)
    assert main(["migrate", "--store", f"sqlite://{path}"]) == 0
    assert "ledger schema ready" in capsys.readouterr().err
    s = SQLiteStore(path)
    try:
        assert s.query("SELECT value FROM meta WHERE key = 'schema'") == [("2",)]
        ref = merkle.MemoryTree()
        ref.append(leaves)
        assert s.tree_size() == 37
        assert [s.merkle_root(n) for n in range(38)] == [merkle.root(ref, n) for n in range(38)]
        assert s.check_tree() == tree.TreeCheck(0, 37, 2 * 37 - 3)
        old_root = s.merkle_root(37)
        c = Clock("clock-1")
        s.append([EventFact("device", c.enrolled_body())], now_us=T0 + 100)
        s.append([c.fact() for _ in range(5)], now_us=T0 + 100)
        merkle.verify_consistency(37, 43, old_root, s.merkle_root(43),
                                  s.consistency_proof(37, 43))
        merkle.verify_inclusion(leaves[12], 12, 43, s.inclusion_proof(12, 43),
                                s.merkle_root(43))
    finally:
        s.close()
    # opening again changes nothing
    again = SQLiteStore(path)
    assert again.check_tree().ok
    again.close()


def _stored_nodes(rows: Any) -> set[tuple[int, int, bytes]]:
    return {(int(lv), int(i), bytes(h)) for lv, i, h in rows}


@pytest.mark.parametrize("batch", [1, 4, 5, 8, 16])
@pytest.mark.parametrize("start", [0, 3, 8, 13, 32, 33])
def test_d5_the_build_in_aligned_steps_stores_exactly_the_nodes_of_append(
        tmp_path: Path, start: int, batch: int) -> None:
    """tree.build takes whole aligned subtrees in bulk and the unaligned first and last steps
    through append_nodes: from any stored size and for any step, it stores the nodes the
    reference's append gives, no more, no fewer."""
    path = tmp_path / "v1.db"
    leaves = write_v1_ledger(path, 70)
    ref = merkle.MemoryTree()
    before = ref.append(leaves[:start])
    after = ref.append(leaves[start:])
    conn = sqlite3.connect(path, isolation_level=None)
    try:
        conn.execute("BEGIN")
        for stmt in TREE_DDL:
            conn.execute(stmt)
        conn.executemany("INSERT INTO tc_merkle VALUES (?, ?, ?)", before)
        cur = conn.cursor()
        assert tree.build(cur, tree.SQLITE_TREE, batch=batch) == 70 - start
        conn.execute("COMMIT")
        got = _stored_nodes(conn.execute("SELECT level, idx, hash FROM tc_merkle"))
    finally:
        conn.close()
    assert got == set(before) | set(after)
    assert len(got) == 2 * 70 - bin(70).count("1")


@pytest.mark.subprocess
def test_d5_the_build_hashes_in_worker_processes_and_stores_the_same_nodes(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """With a source file in WAL mode and enough whole steps, tree_worker processes read and
    hash the aligned steps; the stored nodes are exactly the reference's."""
    monkeypatch.setattr(tree, "PARALLEL_MIN_STEPS", 2)
    spawned: list[list[str]] = []
    real_popen = subprocess.Popen

    def popen(args: list[str], **kw: Any) -> Any:
        spawned.append(list(args))
        return real_popen(args, **kw)
    monkeypatch.setattr(tree.subprocess, "Popen", popen)
    path = tmp_path / "v1.db"
    leaves = write_v1_ledger(path, 70)
    ref = merkle.MemoryTree()
    before = ref.append(leaves[:3])
    after = ref.append(leaves[3:])
    conn = sqlite3.connect(path, isolation_level=None)
    try:
        conn.execute("PRAGMA journal_mode = WAL")
        conn.execute("BEGIN IMMEDIATE")
        for stmt in TREE_DDL:
            conn.execute(stmt)
        conn.executemany("INSERT INTO tc_merkle VALUES (?, ?, ?)", before)
        assert tree.build(conn.cursor(), tree.SQLITE_TREE, batch=4, source=path) == 67
        conn.execute("COMMIT")
        got = _stored_nodes(conn.execute("SELECT level, idx, hash FROM tc_merkle"))
    finally:
        conn.close()
    assert len(spawned) == tree.BUILD_WORKERS
    assert all("collector.ledger.tree_worker" in a for a in spawned)
    assert got == set(before) | set(after)


@pytest.mark.subprocess
def test_d5_a_worker_s_finding_stops_the_build_with_its_message(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(tree, "PARALLEL_MIN_STEPS", 2)
    path = tmp_path / "v1.db"
    write_v1_ledger(path, 70)
    conn = sqlite3.connect(path, isolation_level=None)
    conn.execute("PRAGMA journal_mode = WAL")
    conn.execute("DROP TRIGGER entries_no_update")
    conn.execute("UPDATE entries SET at = at + 1 WHERE idx = 41")
    try:
        conn.execute("BEGIN IMMEDIATE")
        for stmt in TREE_DDL:
            conn.execute(stmt)
        with pytest.raises(LedgerError, match="entry 41's stored hash is not the hash of its row"):
            tree.build(conn.cursor(), tree.SQLITE_TREE, batch=4, source=path)
        conn.execute("ROLLBACK")
    finally:
        conn.close()


@pytest.mark.parametrize("workers", [
    pytest.param(False, id="one-process"),
    pytest.param(True, id="worker-processes", marks=pytest.mark.subprocess)])
def test_d5_the_aligned_build_writes_through_copy_on_postgres(
        pg_ledger: Any, workers: bool, monkeypatch: pytest.MonkeyPatch) -> None:
    if workers:
        monkeypatch.setattr(tree, "PARALLEL_MIN_STEPS", 2)
    ref, leaves = _pg_ledger_with_nodes_cut(pg_ledger, "(idx + 1) * (1 << level) > 5")
    with psycopg.connect(pg_ledger.admin_dsn, autocommit=True) as conn, \
            conn.transaction(), conn.cursor() as cur:        # from a tree of size 5
        assert tree.build(cur, tree.PG_TREE, batch=8,
                          source=pg_ledger.admin_dsn if workers else None) == 36
        cur.execute("SELECT level, idx, hash FROM tc_merkle")
        got = _stored_nodes(cur.fetchall())
    assert got == set(merkle.MemoryTree().append(leaves))
    s = PostgresStore(pg_ledger.app_dsn)
    try:
        assert [s.merkle_root(n) for n in range(42)] == [merkle.root(ref, n) for n in range(42)]
        assert s.check_tree().ok
    finally:
        s.close()


def _pg_ledger_with_nodes_cut(pg_ledger: Any, where: str) -> tuple[merkle.MemoryTree,
                                                                     list[bytes]]:
    """41 entries; then, as a superuser with the triggers off, the nodes ``where`` selects
    deleted. Returns the reference tree and the leaf hashes of the entries."""
    s = PostgresStore(pg_ledger.app_dsn)
    try:
        fill(s, 40)
        ref = reference(s)
        leaves = [merkle.entry_leaf_hash(se.entry) for se in s.entries()]
    finally:
        s.close()
    with psycopg.connect(pg_ledger.admin_dsn, autocommit=True) as conn:
        conn.execute("SET session_replication_role = replica")
        conn.execute(f"DELETE FROM tc_merkle WHERE {where}")  # noqa: S608 - the test's own
    return ref, leaves


def test_d5_a_v1_sqlite_ledger_with_a_broken_entry_is_not_upgraded(tmp_path: Path) -> None:
    path = tmp_path / "v1.db"
    write_v1_ledger(path, 12)
    conn = sqlite3.connect(path, isolation_level=None)
    conn.execute("DROP TRIGGER entries_no_update")
    conn.execute("UPDATE entries SET at = at + 1 WHERE idx = 7")
    conn.close()
    with pytest.raises(LedgerError, match="entry 7's stored hash is not the hash of its row"):
        SQLiteStore(path)
    conn = sqlite3.connect(path, isolation_level=None)
    try:   # rolled back: still version 1, no node table
        assert conn.execute("SELECT value FROM meta WHERE key = 'schema'").fetchone() == ("1",)
        assert conn.execute("SELECT name FROM sqlite_master WHERE name = 'tc_merkle'"
                            ).fetchone() is None
    finally:
        conn.close()


def test_d5_a_v1_postgres_ledger_is_refused_until_migrate_builds_its_tree(pg_ledger: Any) -> None:
    ref, _ = _pg_ledger_with_nodes_cut(pg_ledger, "TRUE")
    # Back to version 1: no nodes, version '1' (as a superuser, triggers off).
    with psycopg.connect(pg_ledger.admin_dsn, autocommit=True) as conn:
        conn.execute("SET session_replication_role = replica")
        conn.execute("UPDATE meta SET value = '1' WHERE key = 'schema'")
    with pytest.raises(LedgerError, match="schema version 1 is not 2 .*migrate"):
        PostgresStore(pg_ledger.app_dsn)
    assert migrate(pg_ledger.owner_dsn, app_role=pg_ledger.app_role) == 41
    assert migrate(pg_ledger.owner_dsn, app_role=pg_ledger.app_role) == 0   # idempotent
    s = PostgresStore(pg_ledger.app_dsn)
    try:
        assert s.tree_size() == 41
        assert [s.merkle_root(n) for n in range(42)] == [merkle.root(ref, n) for n in range(42)]
        assert s.check_tree().ok
        s.append([EventFact("device", Clock("clock-9").enrolled_body())], now_us=T0 + 9)
        ref = reference(s)
        merkle.verify_inclusion(merkle.root(ref, 1), 0, 42, s.inclusion_proof(0, 42),
                                s.merkle_root(42))
    finally:
        s.close()


def test_d5_opening_a_store_with_an_incomplete_tree_fails_its_next_append(tmp_path: Path) -> None:
    s = open_store(str(tmp_path / "l.db"))
    fill(s, 6)
    s.close()
    conn = sqlite3.connect(tmp_path / "l.db", isolation_level=None)
    conn.execute("DROP TRIGGER tc_merkle_no_delete")
    conn.execute("DELETE FROM tc_merkle WHERE level = 0 AND idx = 6")
    conn.close()
    s = open_store(str(tmp_path / "l.db"))
    try:
        with pytest.raises(LedgerError, match="does not cover entry 6"):
            s.tree_size()
        with pytest.raises(LedgerError, match="cannot grow from size 7"):
            s.append([EventFact("device", Clock("clock-2").enrolled_body())], now_us=T0)
        assert s.head()[0] == 7
    finally:
        s.close()
