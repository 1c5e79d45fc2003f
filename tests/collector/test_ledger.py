"""One suite, run against both ledger stores (SQLite and a real PostgreSQL 15).

Proves D5 (append-only, hash-chained ledger: the database itself refuses UPDATE/DELETE; the
PostgreSQL app role has INSERT/SELECT only; verify names the first tampered idx) and D15
(a body may be deleted only under a retention entry).
"""

from __future__ import annotations

import hashlib
import multiprocessing
import random
import shutil
import sqlite3
import threading
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import psycopg
import pytest

from collector import AppendOnlyError, LedgerError, RegistryError
from collector.ingest.checkpoints import make_checkpoint
from collector.ledger import open_store
from collector.ledger.audit import verify_store
from collector.ledger.base import EventFact, Outcome, RejectionFact
from collector.ledger.schema_sqlite import SCHEMA, TRIGGER_NAMES
from collector.ledger.sqlbase import SQLStore
from tests.collector.ledger_kit import T0, Clock, seeded_key
from wire import ZERO_HASH
from wire.canonical import canonical, loads
from wire.ledger import Entry, body_hash
from wire.rotation import RotationRequest

Stmt = tuple[str, tuple[Any, ...]]       # SQL with ? placeholders, parameters
LOG_KEY = seeded_key("log-key")
LOG_KEYS = {LOG_KEY.key_id: LOG_KEY.verify_key}


@dataclass
class Backend:
    """A ledger URL plus the raw access that the tests (and attackers) use around the store."""

    kind: str
    url: str
    app_exec: Callable[[str], None]          # as the collector's own DB identity
    tamper: Callable[[list[Stmt]], None]     # as a DB superuser who bypasses triggers
    snapshot: Callable[[], Callable[[], None]]  # returns restore()

    def open(self) -> SQLStore:
        return open_store(self.url)


def _sqlite_backend(path: Path) -> Backend:
    def app_exec(sql: str) -> None:
        conn = sqlite3.connect(path, isolation_level=None)
        try:
            conn.execute(sql)
        finally:
            conn.close()

    def tamper(stmts: list[Stmt]) -> None:
        conn = sqlite3.connect(path, isolation_level=None)
        try:
            conn.execute("PRAGMA synchronous = OFF")     # test speed; the attack is the same
            conn.execute("BEGIN")
            for t in TRIGGER_NAMES:
                conn.execute(f"DROP TRIGGER IF EXISTS {t}")
            for sql, params in stmts:
                conn.execute(sql, params)
            conn.execute("COMMIT")
            # put the triggers back: the attacker hides their tracks
            conn.executescript("BEGIN;" + SCHEMA + "COMMIT;")
        finally:
            conn.close()

    def snapshot() -> Callable[[], None]:
        conn = sqlite3.connect(path, isolation_level=None)
        conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")
        conn.close()
        copy = path.with_suffix(".pristine")
        shutil.copyfile(path, copy)

        def restore() -> None:
            for suffix in ("-wal", "-shm"):
                Path(str(path) + suffix).unlink(missing_ok=True)
            shutil.copyfile(copy, path)
        return restore

    return Backend("sqlite", f"sqlite://{path}", app_exec, tamper, snapshot)


def _pg_backend(db: Any) -> Backend:
    def app_exec(sql: str) -> None:
        with psycopg.connect(db.app_dsn, autocommit=True) as conn:
            conn.execute(sql)

    def tamper(stmts: list[Stmt]) -> None:
        with psycopg.connect(db.admin_dsn) as conn:
            conn.execute("SET session_replication_role = replica")  # triggers off
            for sql, params in stmts:
                conn.execute(sql.replace("?", "%s"), params)

    def snapshot() -> Callable[[], None]:
        with psycopg.connect(db.admin_dsn) as conn:
            entries = conn.execute("SELECT idx, kind, at, body, prev, hash FROM entries").fetchall()
            bodies = conn.execute("SELECT idx, body FROM bodies").fetchall()

        def restore() -> None:
            with psycopg.connect(db.admin_dsn) as conn:
                conn.execute("SET session_replication_role = replica")
                conn.execute("DELETE FROM entries")
                conn.execute("DELETE FROM bodies")
                with conn.cursor() as cur:
                    cur.executemany("INSERT INTO entries VALUES (%s, %s, %s, %s, %s, %s)",
                                    entries)
                    cur.executemany("INSERT INTO bodies VALUES (%s, %s)", bodies)
        return restore

    return Backend("postgres", db.app_dsn, app_exec, tamper, snapshot)


@pytest.fixture
def backend(store_kind: str, sqlite_path: Path, request: pytest.FixtureRequest) -> Backend:
    """Raw access to the very ledger the ``store`` fixture (tests/collector/conftest.py) opens."""
    if store_kind == "sqlite":
        return _sqlite_backend(sqlite_path)
    return _pg_backend(request.getfixturevalue("pg_ledger"))


def enroll(store: SQLStore, clock: Clock, now: int = T0) -> int:
    return store.append([EventFact("device", clock.enrolled_body())], now_us=now)[0].idx


def assert_valid_chain(store: SQLStore) -> int:
    prev, n = ZERO_HASH, 0
    for i, se in enumerate(store.entries()):
        assert se.entry.idx == i
        assert se.entry.prev == prev
        assert se.hash == se.entry.hash()
        if se.body is not None:
            assert body_hash(se.body) == se.entry.body
        prev, n = se.hash, i + 1
    assert store.head() == (n, prev)
    return n


# -- append, dedupe, conflict, rejection ---------------------------------------------------

def test_append_records_punches_as_one_chain(store: SQLStore) -> None:
    c = Clock("clock-0017")
    assert store.head() == (0, ZERO_HASH)
    assert enroll(store, c) == 0
    facts = [c.fact() for _ in range(3)]
    results = store.append(facts, now_us=T0 + 10)
    assert [(r.outcome, r.idx, r.device, r.seq) for r in results] == [
        (Outcome.APPENDED, i + 1, "clock-0017", i + 1) for i in range(3)]
    stored = list(store.entries(1))
    assert [s.body for s in stored] == [f.signed.to_bytes() for f in facts]
    assert {s.entry.kind for s in stored} == {"punch"}
    assert {s.entry.at for s in stored} == {T0 + 10}
    assert assert_valid_chain(store) == 4
    assert [s.entry.idx for s in store.entries(2, 3)] == [2]


def test_at_never_goes_below_the_previous_entry(store: SQLStore) -> None:
    c = Clock("clock-1")
    enroll(store, c, now=T0 + 5_000)
    r = store.append([c.fact()], now_us=T0)          # the clock stepped back
    assert next(store.entries(r[0].idx)).entry.at == T0 + 5_000
    r = store.append([c.fact()], now_us=T0 + 9_000)
    assert next(store.entries(r[0].idx)).entry.at == T0 + 9_000


def test_duplicate_returns_the_existing_idx(store: SQLStore) -> None:
    c = Clock("clock-1")
    enroll(store, c)
    f1, f2 = c.fact(), c.fact()
    store.append([f1], now_us=T0)
    results = store.append([f1, f2, f2], now_us=T0)   # redelivery, and twice in one batch
    assert [(r.outcome, r.idx) for r in results] == [
        (Outcome.DUPLICATE, 1), (Outcome.APPENDED, 2), (Outcome.DUPLICATE, 2)]
    assert store.head()[0] == 3


def test_conflict_is_quarantined_with_a_rejection_entry(store: SQLStore) -> None:
    c = Clock("clock-1")
    enroll(store, c)
    original = c.punch()
    store.append([c.fact(original)], now_us=T0)
    clone = c.punch(seq=1, prev=ZERO_HASH, credential="em4100:0099999999")
    [r] = store.append([c.fact(clone, received_at=T0 + 7)], now_us=T0 + 8)
    assert (r.outcome, r.idx, r.device, r.seq) == (Outcome.CONFLICT, 2, "clock-1", 1)
    se = next(store.entries(2))
    assert se.entry.kind == "rejection"
    body = loads(se.body)
    raw = clone.to_bytes()
    assert body["reason"] == "conflict"
    assert body["device"] == "clock-1"
    assert body["topic"] == "timeclock/v1/devices/clock-1/punches"
    assert body["received_at"] == T0 + 7
    assert body["raw_sha256"] == hashlib.sha256(raw).hexdigest()
    assert original.hash() in body["detail"]
    [q] = store.quarantine()
    assert (q.idx, q.reason, q.size, q.raw_sha256) == (2, "conflict", len(raw),
                                                        body["raw_sha256"])
    assert store.quarantined_raw(q.id) == raw
    assert store.punch_hash("clock-1", 1) == (original.hash(), 1)


def test_rejection_fact_is_recorded_with_raw_bytes(store: SQLStore) -> None:
    raw = b'{"garbage":'
    [r] = store.append([RejectionFact("malformed", "not JSON", "timeclock/v1/devices/x/punches",
                                      raw, T0, device="x")], now_us=T0)
    assert (r.outcome, r.idx, r.device) == (Outcome.REJECTED, 0, "x")
    se = next(store.entries())
    assert se.body == canonical({"reason": "malformed", "detail": "not JSON", "device": "x",
                                 "topic": "timeclock/v1/devices/x/punches",
                                 "raw_sha256": hashlib.sha256(raw).hexdigest(),
                                 "received_at": T0})
    [r2] = store.append([RejectionFact("bad-topic", "", "t", b"\x00", T0)], now_us=T0)
    assert "device" not in loads(next(store.entries(r2.idx)).body)
    assert store.quarantined_raw(store.quarantine(after_id=1)[0].id) == b"\x00"


def test_device_events_update_the_registry_projection(store: SQLStore) -> None:
    c = Clock("clock-1", site="plant-2")
    enroll(store, c)
    store.append([c.fact() for _ in range(3)], now_us=T0)
    new = seeded_key("clock-1-v2")
    request = RotationRequest("clock-1", c.key.key_id, new.key_id, new.verify_key, 4,
                              T0).sign(c.key)
    store.append([EventFact("device", {"event": "rotated", "device": "clock-1",
                                       "key": new.key_id, "signing_key": new.verify_key.b64,
                                       "from_seq": 4, "request": request.to_dict()})],
                 now_us=T0)
    keys = store.keys("clock-1")
    assert [(k.key_id, k.from_seq, k.until_seq, k.status) for k in keys] == [
        (c.key.key_id, 1, 4, "active"), (new.key_id, 4, None, "active")]
    store.append([EventFact("device", {"event": "revoked", "device": "clock-1",
                                       "reason": "lost", "key": c.key.key_id})], now_us=T0)
    assert [k.status for k in store.keys("clock-1")] == ["revoked", "active"]
    assert store.device("clock-1").status == "active"   # type: ignore[union-attr]
    [r] = store.append([EventFact("device", {"event": "revoked", "device": "clock-1",
                                             "reason": "stolen"})], now_us=T0)
    rec = store.device("clock-1")
    assert rec is not None
    assert (rec.site, rec.status, rec.enrolled_idx, rec.changed_idx) == (
        "plant-2", "revoked", 0, r.idx)
    assert [k.status for k in store.keys("clock-1")] == ["revoked", "revoked"]
    assert [d.device for d in store.devices()] == ["clock-1"]
    assert store.device("nope") is None


def test_d1_registry_is_rechecked_under_the_chain_lock(store: SQLStore) -> None:
    """Ingest verifies against a registry snapshot; a revocation or rotation committed since
    (here: earlier in the same batch, or in an earlier batch) must still win, or the ledger
    would hold a punch the auditor reports as tampering."""
    a, b = Clock("clock-a"), Clock("clock-b")
    enroll(store, a)
    enroll(store, b)
    stale = a.fact()                                  # verified before the revocation
    revoked = {"event": "revoked", "device": "clock-a", "reason": "stolen"}
    new_key = seeded_key("clock-b-2")
    rotated = {"event": "rotated", "device": "clock-b", "key": new_key.key_id,
               "signing_key": new_key.verify_key.b64, "from_seq": 2,
               "request": RotationRequest("clock-b", b.key.key_id, new_key.key_id,
                                          new_key.verify_key, 2, T0).sign(b.key).to_dict()}
    b1 = b.fact()                                     # seq 1, old key: still valid
    b2_old_key = b.fact()                             # seq 2 signed with the old key
    results = store.append([EventFact("device", revoked), stale, EventFact("device", rotated),
                            b1, b2_old_key], now_us=T0 + 10)
    assert [(r.outcome, r.device, r.seq) for r in results] == [
        (Outcome.APPENDED, "clock-a", None), (Outcome.REJECTED, "clock-a", 1),
        (Outcome.APPENDED, "clock-b", None), (Outcome.APPENDED, "clock-b", 1),
        (Outcome.REJECTED, "clock-b", 2)]
    reasons = [(q.reason, q.idx) for q in store.quarantine()]
    assert reasons == [("device-revoked", results[1].idx),
                       ("key-not-valid-for-seq", results[4].idx)]
    assert [r.outcome for r in store.append([Clock("clock-z").fact()], now_us=T0 + 11)] == [
        Outcome.REJECTED]
    assert store.quarantine()[-1].reason == "unknown-device"
    report = verify_store(store, LOG_KEYS).report
    assert report.ok, report.findings


def test_a_failing_fact_rolls_back_the_whole_batch(store: SQLStore) -> None:
    c = Clock("clock-1")
    enroll(store, c)
    before = store.head()
    with pytest.raises(RegistryError, match="event"):
        store.append([c.fact(), EventFact("device", {"event": "exploded", "device": "x"})],
                     now_us=T0)
    assert store.head() == before
    assert store.punch_hash("clock-1", 1) is None
    with pytest.raises(RegistryError, match="conflicts with the registry"):
        store.append([c.fact(), EventFact("device", c.enrolled_body())], now_us=T0)
    assert store.head() == before


def test_progress_reports_gaps(store: SQLStore) -> None:
    c = Clock("clock-1")
    enroll(store, c)
    signed = [c.punch() for _ in range(9)]
    store.append([c.fact(signed[i]) for i in (1, 2, 4, 8)], now_us=T0)   # seqs 2,3,5,9
    p = store.progress("clock-1")
    assert (p.contiguous, p.highest, p.gaps) == (0, 9, ((1, 1), (4, 4), (6, 8)))
    store.append([c.fact(signed[0])], now_us=T0)
    p = store.progress("clock-1")
    assert (p.contiguous, p.highest, p.gaps) == (3, 9, ((4, 4), (6, 8)))
    assert store.progress("other").highest == 0


def test_checkpoints_are_stored_and_must_match_the_chain(store: SQLStore) -> None:
    c = Clock("clock-1")
    enroll(store, c)
    store.append([c.fact() for _ in range(4)], now_us=T0)
    cp = make_checkpoint(store, LOG_KEY, T0 + 1)
    assert (cp.checkpoint.size, cp.checkpoint.head) == store.head()
    store.add_checkpoint(cp)                                   # idempotent
    assert store.checkpoints() == [cp]
    cp.verify(LOG_KEY.verify_key)
    forged = type(cp.checkpoint)(log=LOG_KEY.key_id, size=3, head="ab" * 32, at=T0)
    with pytest.raises(LedgerError, match="does not match this ledger's entry 2"):
        store.add_checkpoint(forged.sign(LOG_KEY))


# -- D5: append-only in the database ---------------------------------------------------

@pytest.mark.parametrize("sql", [
    "UPDATE entries SET at = 0 WHERE idx = 1",
    "DELETE FROM entries WHERE idx = 2",
    "UPDATE bodies SET body = body WHERE idx = 1",
    "UPDATE punches SET credential = 'em4100:1' WHERE seq = 1",
    "DELETE FROM punches WHERE seq = 1",
    "DELETE FROM quarantine",
    "DELETE FROM checkpoints",
    "DELETE FROM devices",
    "INSERT INTO entries (idx, kind, at, body, prev, hash) VALUES (1, 'punch', 0, "
    "'00', '00', '00')",
    "INSERT INTO entries (idx, kind, at, body, prev, hash) VALUES (9, 'punch', 0, "
    "'00', '00', '00')",
])
def test_d5_database_refuses_rewrites(backend: Backend, store: SQLStore, sql: str) -> None:
    c = Clock("clock-1")
    enroll(store, c)
    store.append([c.fact() for _ in range(3)], now_us=T0)
    store.append([RejectionFact("malformed", "x", "t", b"x", T0)], now_us=T0)
    make_checkpoint(store, LOG_KEY, T0)
    before = list(store.entries())
    err = sqlite3.DatabaseError if backend.kind == "sqlite" else psycopg.Error
    with pytest.raises(err, match="append-only|permission denied|refused|UNIQUE|duplicate"):
        backend.app_exec(sql)
    assert list(store.entries()) == before


def test_d5_pg_app_role_has_insert_select_only_on_the_chain(pg_ledger: Any) -> None:
    backend = _pg_backend(pg_ledger)   # SQLite has no roles: its triggers are tested above
    for sql in ("TRUNCATE entries", "ALTER TABLE entries DISABLE TRIGGER USER",
                "DROP TRIGGER entries_append_only ON entries"):
        with pytest.raises(psycopg.Error, match="permission denied|must be owner"):
            backend.app_exec(sql)


def test_d5_store_maps_trigger_failures_to_append_only_error(store: SQLStore) -> None:
    enroll(store, Clock("clock-1"))
    with pytest.raises(AppendOnlyError, match="append-only|permission denied"):
        store._q("DELETE FROM entries WHERE idx = 0")
    assert store.head()[0] == 1


# -- D15: body deletion only under retention -----------------------------------------------

def test_d15_body_delete_needs_a_retention_entry(backend: Backend, store: SQLStore) -> None:
    c = Clock("clock-1")
    enroll(store, c)
    store.append([c.fact() for _ in range(4)], now_us=T0)
    err = sqlite3.DatabaseError if backend.kind == "sqlite" else psycopg.Error
    with pytest.raises(err, match="no retention entry covers"):
        backend.app_exec("DELETE FROM bodies WHERE idx = 1")
    # an approved 7-day policy (idx 5, 6), then a retention run 8 days later (D15: it cites it)
    day = 86_400_000_000
    p = store.append([EventFact("policy", {"event": "proposed", "policy": "punches-7d",
                                           "record": "punch", "period_days": 7,
                                           "scope": "all", "by": "alice"})], now_us=T0)[0].idx
    store.append([EventFact("policy", {"event": "approved", "proposal": p, "by": "bob"})],
                 now_us=T0)
    cites = [{"idx": p, "cutoff": T0 + day}]
    removed = [[i, "clock-1", "hq", T0 + i * 1_000_000] for i in (1, 2)]
    [r] = store.append([EventFact("retention", {"policy": "punches-7d", "deleted": [[1, 2]],
                                                "count": 2, "policies": cites,
                                                "removed": removed})], now_us=T0 + 8 * day)
    assert [s.body is None for s in store.entries()] == [False, True, True, False, False,
                                                          False, False, False]
    with pytest.raises(err, match="no retention entry covers"):
        backend.app_exec("DELETE FROM bodies WHERE idx = 3")
    with pytest.raises(LedgerError, match="range"):
        store.append([EventFact("retention", {"policy": "p", "deleted": [[3, 99]],
                                              "count": 1})], now_us=T0)
    with pytest.raises(LedgerError, match="idx 0, a device entry"):
        store.append([EventFact("retention", {"policy": "p", "deleted": [[0, 0]], "count": 1,
                                              "policies": cites,
                                              "removed": [[0, None, None, T0]]})],
                     now_us=T0 + 8 * day)
    backend.tamper([("INSERT INTO retained VALUES (?, ?, ?)", (7, 0, 0))])
    with pytest.raises(err, match="no retention entry covers"):
        backend.app_exec("DELETE FROM bodies WHERE idx = 0")   # a device body: never
    assert r.idx == 7
    assert assert_valid_chain(store) == 8
    result = verify_store(store, LOG_KEYS)
    assert result.ok, result.report.findings


# -- D5: every single tampering is detected and located --------------------------------------

def _build_ledger(store: SQLStore) -> None:
    a, b = Clock("clock-a"), Clock("clock-b", site="plant-2")
    enroll(store, a)
    enroll(store, b)
    for i in range(6):
        store.append([a.fact(), b.fact()], now_us=T0 + i)
    store.append([RejectionFact("malformed", "x", "timeclock/v1/devices/clock-a/punches",
                                b"junk", T0, device="clock-a")], now_us=T0 + 7)
    make_checkpoint(store, LOG_KEY, T0 + 8)
    store.append([a.fact(), b.fact()], now_us=T0 + 9)
    make_checkpoint(store, LOG_KEY, T0 + 10)


def _mutation(rng: random.Random, store: SQLStore, kind: str) -> tuple[list[Stmt], int]:
    """SQL that tampers with the stored ledger, and the idx a verifier must name first."""
    size = store.head()[0]
    i = rng.randrange(size)
    if kind == "body-byte":
        body = bytearray(next(store.raw_entries(i, i + 1)).body or b"")
        body[rng.randrange(len(body))] ^= 1 << rng.randrange(7)
        return [("UPDATE bodies SET body = ? WHERE idx = ?", (bytes(body), i))], i
    if kind == "entry-field":
        col, val = rng.choice([("at", T0 - 1), ("kind", "access"), ("body", "1" * 64),
                               ("prev", "2" * 64), ("hash", "3" * 64)])
        return [(f"UPDATE entries SET {col} = ? WHERE idx = ?", (val, i))], i  # noqa: S608
    if kind == "delete-entry":
        return [("DELETE FROM entries WHERE idx = ?", (i,))], i
    if kind == "delete-body":
        return [("DELETE FROM bodies WHERE idx = ?", (i,))], i
    if kind in ("swap-entries", "swap-bodies"):
        j = rng.choice([k for k in range(size) if k != i])
        lo, hi = min(i, j), max(i, j)
        t = "entries" if kind == "swap-entries" else "bodies"
        return ([(f"UPDATE {t} SET idx = -1 WHERE idx = ?", (lo,)),  # noqa: S608
                 (f"UPDATE {t} SET idx = ? WHERE idx = ?", (lo, hi)),  # noqa: S608
                 (f"UPDATE {t} SET idx = ? WHERE idx = -1", (hi,))], lo)  # noqa: S608
    # truncate: drop the tail, which a signed checkpoint still covers
    k = max(i, 1)
    return [("DELETE FROM entries WHERE idx >= ?", (k,)),
            ("DELETE FROM bodies WHERE idx >= ?", (k,))], k


KINDS = ["body-byte", "entry-field", "delete-entry", "delete-body", "swap-entries",
         "swap-bodies", "truncate"]


def test_d5_verify_detects_100_random_mutations(backend: Backend) -> None:
    s = backend.open()
    _build_ledger(s)
    size = s.head()[0]
    clean = verify_store(s, LOG_KEYS)
    assert clean.ok, clean.report.findings
    assert (clean.report.entries, clean.report.punches, clean.report.checkpoints) == (
        size, 14, 2)
    rng = random.Random(20251126)  # noqa: S311 - reproducible: the same 100 mutations every run
    mutations = [(KINDS[n % len(KINDS)], *_mutation(rng, s, KINDS[n % len(KINDS)]))
                 for n in range(100)]
    s.close()
    restore = backend.snapshot()
    missed: list[str] = []
    for n, (kind, stmts, expect) in enumerate(mutations):
        backend.tamper(stmts)
        tampered = backend.open()
        try:
            result = verify_store(tampered, LOG_KEYS)
        finally:
            tampered.close()
        first = result.report.first_failure
        if result.ok or first is None or first.idx != expect:
            missed.append(f"#{n} {kind} {stmts}: expected idx {expect}, got {first}")
        restore()
    assert missed == []


# -- concurrency -------------------------------------------------------------------------

def test_concurrent_appenders_keep_one_chain(backend: Backend) -> None:
    setup = backend.open()
    clocks = [Clock(f"clock-{i}") for i in range(2)]
    for c in clocks:
        enroll(setup, c)
    batches = {c.device: [[c.fact() for _ in range(10)] for _ in range(15)] for c in clocks}
    errors: list[BaseException] = []
    start = threading.Barrier(len(clocks))

    def run(c: Clock) -> None:
        s = backend.open()          # its own connection, as another collector process
        try:
            start.wait(timeout=30)
            for i, batch in enumerate(batches[c.device]):
                s.append(batch, now_us=T0 + i)
        except BaseException as e:  # reported to the main thread below
            errors.append(e)
        finally:
            s.close()

    threads = [threading.Thread(target=run, args=(c,)) for c in clocks]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=120)
    assert errors == []
    assert assert_valid_chain(setup) == 2 + 2 * 150
    for c in clocks:
        assert setup.progress(c.device).contiguous == 150
    kinds = [loads(se.body)["punch"]["device"] for se in setup.entries(2)]
    assert sorted(set(kinds)) == ["clock-0", "clock-1"]
    setup.close()


def test_entry_rows_round_trip_through_wire_entry(store: SQLStore) -> None:
    c = Clock("clock-1")
    enroll(store, c)
    se = next(store.entries())
    assert Entry.from_dict(se.entry.to_dict()) == se.entry
    assert se.body == canonical(c.enrolled_body())



def _open_at_barrier(path: Path, barrier: Any, errors: Any) -> None:
    barrier.wait(30)
    try:
        open_store(f"sqlite://{path}").close()
        errors.put("")
    except LedgerError as e:
        errors.put(str(e))


@pytest.mark.subprocess
def test_two_collectors_started_together_both_open_a_new_sqlite_ledger(tmp_path: Path) -> None:
    """The demo's ``--collectors 2`` on a new SQLite ledger: both processes turn the file to
    WAL at once, and SQLite answers one of them SQLITE_BUSY without calling its busy handler
    (each holds the lock the other waits for). That opener retries instead of exiting 2.
    Without the retry about one round in three fails here; 40 rounds."""
    ctx = multiprocessing.get_context("fork")
    failures = []
    for n in range(40):
        path = tmp_path / f"ledger-{n}.db"
        barrier, errors = ctx.Barrier(2), ctx.Queue()
        procs = [ctx.Process(target=_open_at_barrier, args=(path, barrier, errors))
                 for _ in range(2)]
        for p in procs:
            p.start()
        failures += [e for e in (errors.get(timeout=60) for _ in procs) if e]
        for p in procs:
            p.join(60)
    assert failures == []
    store = open_store(f"sqlite://{tmp_path / 'ledger-0.db'}")
    try:
        assert not store.reads_wait_for_writers          # WAL
    finally:
        store.close()
