"""Encryption at rest of the central ledger (DESIGN.md §8.6; issue 12 item 2), on both stores
(a real SQLite file, a real PostgreSQL database as the app role): the data keys per
(subject, period) in ``tc_data_keys``, wrapped by the KEK with an aad that binds them to their
ledger and row; a wrong KEK refused naming its id; a rewrap that touches no body; destroyed
keys gone from table and cache; the table's guards.

Controls: D17 (key inventory and rotation: the KEK id on every key row, rewrap), D15 (a
destroyed key is the disposal).
"""

from __future__ import annotations

import hashlib
import io
import json
import secrets
import sqlite3
import subprocess
from pathlib import Path

import psycopg
import pytest

from collector import AppendOnlyError, KeyDestroyedError, KeyringError, LedgerError
from collector.ledger import KEK_ENV, body_crypto, keyring, open_store, people_tables, queries
from collector.ledger.audit import verify_store
from collector.ledger.base import EventFact, Outcome
from collector.ledger.kek import create_file_kek, load_kek
from collector.ledger.keyring import Keyring, period_of, wrap_aad
from collector.ledger.row_check import ProjectionError
from collector.ledger.schema_check import check_schema
from collector.ledger.sqlbase import PunchQuery, SQLStore
from collector.ledger.sqlite import SQLiteStore
from collector.people import directory
from collector.people.csv_import import import_files
from collector.records import retention
from collector.records.export_fields import FieldSet
from collector.records.exports import export_bundle, export_payroll
from tests.collector.keyring_kit import (
    BADGE,
    LOG_KEY,
    MONTH,
    NOW,
    ORIGIN,
    STRANGER,
    MemoryKek,
    checkpoint,
    file_kek_store,
    forms,
    personal_store,
    secrets_of_everyone,
)
from tests.collector.ledger_kit import T0, Clock, sqlite_exec
from tests.fixtures.postgres import PG_BIN, PgCluster, PgDatabase
from wire import verify_cli


def _bodies(store: SQLStore) -> list[tuple[int, bytes]]:
    return [(int(i), bytes(b)) for i, b in store.query("SELECT idx, body FROM bodies ORDER BY idx")]


def _key(store: SQLStore, ring: Keyring, subject: str, period: str, idx: int = 0) -> str:
    with store.transaction(T0) as tx:
        return ring.data_key(tx, subject, period, idx=idx).key_id


def test_period_is_the_utc_month_of_the_device_time() -> None:
    assert period_of(0) == "1970-01"
    # 2026-02-28T23:59:59.999999Z and one µs later
    assert period_of(1_772_323_199_999_999) == "2026-02"
    assert period_of(1_772_323_200_000_000) == "2026-03"


def test_aad_binds_origin_subject_period_and_id_and_refuses_nul() -> None:
    a = wrap_aad(ORIGIN, "E1", "2026-01", "dk-1")
    assert a == b"timeclock data key v1\x00" + ORIGIN.encode() + b"\x00E1\x002026-01\x00dk-1\x00"
    assert a != wrap_aad(ORIGIN, "E1", "2026-02", "dk-1")
    with pytest.raises(KeyringError, match="NUL"):
        wrap_aad(ORIGIN, "E1\x00", "2026-01", "dk-1")


def test_one_key_per_subject_and_period_unwrapped_once(store: SQLStore) -> None:
    kek = MemoryKek()
    ring = Keyring(store, kek, origin=ORIGIN)
    a = _key(store, ring, "E1", "2026-01")
    assert _key(store, ring, "E1", "2026-01") == a
    b = _key(store, ring, "E1", "2026-02")
    c = _key(store, ring, "E2", "2026-01")
    assert len({a, b, c}) == 3
    rows = ring.rows([a, b, c])
    assert {(r.subject, r.period, r.kek_id) for r in rows.values()} == {
        ("E1", "2026-01", kek.kek_id), ("E1", "2026-02", kek.kek_id),
        ("E2", "2026-01", kek.kek_id)}
    assert all(len(r.wrapped) > 32 and r.destroyed_idx is None for r in rows.values())
    # A fresh keyring (another process) unwraps each key once, then serves the cache.
    fresh = Keyring(store, kek, origin=ORIGIN)
    kek.unwraps = 0
    for _ in range(3):
        got = fresh.keys([a, b, c])
    assert kek.unwraps == 3
    assert got[a] == ring.key(a)
    assert len(got[a] or b"") == 32


def test_the_cache_is_bounded(store: SQLStore) -> None:
    kek = MemoryKek()
    ring = Keyring(store, kek, origin=ORIGIN, cache_max=2)
    ids = [_key(store, ring, f"E{i}", "2026-01") for i in range(5)]
    assert ring.cached == 2
    kek.unwraps = 0
    ring.key(ids[0])            # evicted: unwrapped again
    assert kek.unwraps == 1
    with pytest.raises(KeyringError, match="at least 1"):
        Keyring(store, kek, origin=ORIGIN, cache_max=0)


def test_d17_a_wrong_kek_is_refused_naming_both_kek_ids(store: SQLStore) -> None:
    right, wrong = MemoryKek(), MemoryKek()
    kid = _key(store, Keyring(store, right, origin=ORIGIN), "E1", "2026-01")
    with pytest.raises(KeyringError, match=rf"wrapped by KEK '{right.kek_id}', not by the "
                                           rf"configured KEK '{wrong.kek_id}'"):
        Keyring(store, wrong, origin=ORIGIN).key(kid)
    # Same KEK id but other bytes, or the right KEK under another ledger's origin: refused.
    impostor = MemoryKek()
    impostor.kek_id = right.kek_id
    with pytest.raises(KeyringError, match=rf"does not unwrap under KEK '{right.kek_id}'"):
        Keyring(store, impostor, origin=ORIGIN).key(kid)
    with pytest.raises(KeyringError, match="does not unwrap"):
        Keyring(store, right, origin="other.example/ledger").key(kid)
    with pytest.raises(KeyringError, match="no data key dk-nope"):
        Keyring(store, right, origin=ORIGIN).key("dk-nope")


def test_d17_keys_under_the_file_kek_and_a_wrong_key_file(store: SQLStore, tmp_path: Path
                                                          ) -> None:
    a = create_file_kek(tmp_path / "a.kek")
    b = create_file_kek(tmp_path / "b.kek")
    ring = Keyring(store, load_kek(f"file:{tmp_path / 'a.kek'}"), origin=ORIGIN)
    kid = _key(store, ring, "E1", "2026-01")
    assert ring.rows([kid])[kid].kek_id == a.kek_id
    assert Keyring(store, a, origin=ORIGIN).key(kid) == ring.key(kid)
    with pytest.raises(KeyringError, match=rf"wrapped by KEK '{a.kek_id}', not by the "
                                           rf"configured KEK '{b.kek_id}'"):
        Keyring(store, b, origin=ORIGIN).key(kid)


def test_d17_rewrap_moves_every_live_key_to_the_new_kek_and_touches_no_body(
        store: SQLStore) -> None:
    old, new = MemoryKek(), MemoryKek()
    store.append([EventFact("alert", {"alert": "clock-offline", "severity": 3,
                                      "detail": "before"})], now_us=T0)
    ring = Keyring(store, old, origin=ORIGIN)
    ids = [_key(store, ring, f"E{i}", "2026-01", idx=0) for i in range(3)]
    values = ring.keys(ids)
    before = _bodies(store)
    assert ring.rewrap(new, now_us=T0) == 3
    assert _bodies(store) == before
    assert {r.kek_id for r in ring.rows(ids).values()} == {new.kek_id}
    assert Keyring(store, new, origin=ORIGIN).keys(ids) == values
    with pytest.raises(KeyringError, match=f"wrapped by KEK '{new.kek_id}'"):
        Keyring(store, old, origin=ORIGIN).key(ids[0])
    # A KEK that cannot unwrap a row makes the rewrap fail whole: nothing moved.
    with pytest.raises(KeyringError):
        Keyring(store, old, origin=ORIGIN).rewrap(MemoryKek(), now_us=T0)
    assert {r.kek_id for r in ring.rows(ids).values()} == {new.kek_id}


def test_d15_a_destroyed_key_is_blank_and_gone_from_the_cache(sqlite_store: SQLiteStore
                                                              ) -> None:
    store = sqlite_store
    kek = MemoryKek()
    ring = Keyring(store, kek, origin=ORIGIN)
    kid = _key(store, ring, "E1", "2026-01")
    other = _key(store, ring, "E2", "2026-01")
    ring.key(kid)
    # Only under a shred or retention entry: an alert's idx is refused by the trigger.
    store.append([EventFact("alert", {"alert": "clock-offline", "severity": 3,
                                      "detail": "x"})], now_us=T0)
    with pytest.raises((AppendOnlyError, LedgerError), match="tc_data_keys refused"), \
            store.transaction(T0) as tx:
        ring.destroy(tx, [kid], idx=0)
    assert ring.rows([kid])[kid].wrapped != b""
    _destroy_raw(store, kid)
    ring.forget([kid])
    row = ring.rows([kid])[kid]
    assert (row.wrapped, row.destroyed) == (b"", True)
    assert ring.keys([kid, other])[kid] is None
    with pytest.raises(KeyDestroyedError, match=f"data key {kid} .E1, 2026-01. was destroyed"):
        ring.key(kid)
    # Data of that month recorded after the erasure goes under a new key of "E1+<idx>"
    # (never the destroyed one, never an exception on the append path).
    with store.transaction(T0) as tx:
        later = ring.data_key(tx, "E1", "2026-01", idx=1)
    row = ring.rows([later.key_id])[later.key_id]
    assert (row.subject, row.period) == (f"E1+{row_destroyed_idx(ring, kid)}", "2026-01")
    assert [k.key_id for k in ring.subject_keys("E1")] == sorted([kid, later.key_id])
    assert ring.key(other) is not None


def row_destroyed_idx(ring: Keyring, kid: str) -> int | None:
    return ring.rows([kid])[kid].destroyed_idx


def _destroy_raw(store: SQLiteStore, kid: str) -> None:
    """Blank a key as a shred entry will, under a stand-in ``retention`` entry row (the
    trigger accepts a shred or retention idx; the shred entry itself: test_erasure.py)."""
    conn = sqlite3.connect(store.path)
    try:
        idx = conn.execute("SELECT MAX(idx) FROM entries").fetchone()[0]
        conn.execute("DROP TRIGGER entries_no_update")
        conn.execute("UPDATE entries SET kind = 'retention' WHERE idx = ?", (idx,))
        conn.execute("UPDATE tc_data_keys SET wrapped = x'', destroyed_idx = ? "
                     "WHERE key_id = ?", (idx, kid))
        conn.commit()
    finally:
        conn.close()


def test_the_key_table_refuses_delete_and_any_other_change(store: SQLStore) -> None:
    ring = Keyring(store, MemoryKek(), origin=ORIGIN)
    kid = _key(store, ring, "E1", "2026-01")
    for sql, params in (("DELETE FROM tc_data_keys WHERE key_id = ?", (kid,)),
                        ("UPDATE tc_data_keys SET subject = 'E2' WHERE key_id = ?", (kid,)),
                        ("UPDATE tc_data_keys SET period = '2026-02' WHERE key_id = ?", (kid,)),
                        ("UPDATE tc_data_keys SET wrapped = ? WHERE key_id = ?", (b"", kid)),
                        ("UPDATE tc_data_keys SET destroyed_idx = 0 WHERE key_id = ?", (kid,))):
        with pytest.raises(LedgerError, match="tc_data_keys"), store.transaction(T0) as tx:
            tx.execute(sql, params)
    assert ring.rows([kid])[kid].destroyed_idx is None
    assert check_schema(store).findings == ()


def test_an_older_sqlite_ledger_gets_the_key_table_on_first_use(tmp_path: Path) -> None:
    path = tmp_path / "old.db"
    s = SQLiteStore(path)
    s.close()
    conn = sqlite3.connect(path)
    conn.executescript("DROP TRIGGER tc_data_keys_update; DROP TRIGGER tc_data_keys_no_delete;"
                       "DROP TABLE tc_data_keys;")
    conn.close()
    s = SQLiteStore(path)
    try:
        assert not keyring.present(s)
        ring = Keyring(s, MemoryKek(), origin=ORIGIN)
        assert keyring.present(s)
        assert _key(s, ring, "E1", "2026-01").startswith("dk-")
    finally:
        s.close()


def test_the_blind_index_and_badge_pseudonyms(store: SQLStore) -> None:
    kek = MemoryKek()
    ring = Keyring(store, kek, origin=ORIGIN)
    tag = ring.blind("em4100:0012345678")
    assert tag == Keyring(store, kek, origin=ORIGIN).blind("em4100:0012345678")
    assert tag != ring.blind("em4100:0012345679")
    assert len(tag) == 64
    assert "0012345678" not in tag
    subject = ring.badge_subject("em4100:0012345678")
    assert subject.startswith("badge:")
    assert subject[6:] not in tag
    assert len(subject) == 38


# -- bodies at rest ------------------------------------------------------------------------------

def test_d15_personal_bodies_are_sealed_and_every_read_sees_the_plaintext(
        store: SQLStore, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    ring, _ = personal_store(store, tmp_path)
    stored = {i: b for i, b in _bodies(store)}
    kinds = {se.entry.idx: se.entry.kind for se in store.entries()}
    sealed = {i for i, b in stored.items() if body_crypto.is_sealed(b)}
    assert sealed == {i for i, k in kinds.items() if k in ("punch", "employee", "badge")}
    assert len(sealed) == 6
    blob = b"".join(stored.values())
    assert [s for s in secrets_of_everyone() if s in blob] == []
    # The chain commits to the plaintext: every read path opens the bodies.
    for se in store.entries():
        assert se.body is not None
        assert hashlib.sha256(se.body).hexdigest() == se.entry.body
    assert BADGE.encode() in b"".join(se.body or b"" for se in store.entries())
    # Subjects: the employee at punch time, else the badge's pseudonym; one key per month.
    subjects = {(r.subject, r.period) for r in ring.rows(
        body_crypto.sealed_key_id(stored[i]) for i in sealed).values()}
    assert subjects == {("E1000", "2025-11"), ("E1001", "2025-11"), ("E1001", "2025-12"),
                        (ring.badge_subject(STRANGER), "2025-11")}
    rows = list(store.punch_rows(PunchQuery()))
    assert [r.credential for r in rows] == [BADGE, STRANGER, BADGE]
    assert directory.check_projection(store) == []
    assert directory.employee(store, "E1001") is not None
    result = verify_store(store, {LOG_KEY.key_id: LOG_KEY.verify_key}, full=True)
    assert result.ok, result.report
    # The auditor's bundle is the evidence: plaintext bodies, each file 0600.
    export_bundle(store, tmp_path / "bundle", [LOG_KEY.verify_key])
    assert verify_cli.main([str(tmp_path / "bundle"), "--collector-key",
                            LOG_KEY.verify_key.b64]) == 0
    assert "RESULT: OK" in capsys.readouterr().out


def test_a_sealed_ledger_without_a_kek_says_which_option_is_missing(
        store: SQLStore, tmp_path: Path) -> None:
    personal_store(store, tmp_path)
    store.sealer = None
    with pytest.raises(KeyringError, match=r"bodies are encrypted .*set \[ledger\] kek"):
        list(store.entries())
    with pytest.raises(KeyringError, match=r"\[ledger\] kek"):
        list(store.punch_rows(PunchQuery()))


def test_a_sealed_body_moved_to_another_entry_does_not_open(sqlite_store: SQLiteStore,
                                                            tmp_path: Path) -> None:
    personal_store(sqlite_store, tmp_path)
    punches = [se.entry.idx for se in sqlite_store.entries() if se.entry.kind == "punch"]
    a, b = punches[0], punches[2]
    sqlite_exec(sqlite_store.path, "DROP TRIGGER bodies_no_update",
                f"UPDATE bodies SET body = (SELECT body FROM bodies WHERE idx = {b}) "  # noqa: S608 - test ints
                f"WHERE idx = {a}")
    with pytest.raises(ProjectionError, match=f"entry {a}.*sealed body does not open"):
        list(sqlite_store.punch_rows(PunchQuery()))
    # The verifier reports it as tampering at that entry (not a crash).
    report = verify_store(sqlite_store, {LOG_KEY.key_id: LOG_KEY.verify_key}, full=True).report
    assert not report.ok
    assert [f.idx for f in report.findings if f.tamper and "body" in f.message][:1] == [a]


def test_open_store_takes_the_kek_or_refuses_an_encrypted_ledger(
        sqlite_store: SQLiteStore, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    spec = file_kek_store(sqlite_store, tmp_path)
    url = f"sqlite://{sqlite_store.path}"
    monkeypatch.delenv(KEK_ENV, raising=False)
    with pytest.raises(KeyringError, match=rf"set \[ledger\] kek .* or export {KEK_ENV}"):
        open_store(url)
    for store in (open_store(url, kek=spec), _with_env(monkeypatch, spec, url)):
        try:
            assert [r.credential for r in store.punch_rows(PunchQuery())] == [
                BADGE, STRANGER, BADGE]
        finally:
            store.close()
    # An unencrypted ledger opens as before without one.
    plain = open_store(f"sqlite://{tmp_path / 'plain.db'}")
    plain.close()


def _with_env(monkeypatch: pytest.MonkeyPatch, spec: str, url: str) -> SQLStore:
    monkeypatch.setenv(KEK_ENV, spec)
    return open_store(url)


def test_d15_a_retention_run_reads_and_removes_sealed_bodies(store: SQLStore,
                                                             tmp_path: Path) -> None:
    ring, _ = personal_store(store, tmp_path)
    p = store.append([EventFact("policy", {"event": "proposed", "policy": "punches-7d",
                                           "record": "punch", "period_days": 7,
                                           "scope": "all", "by": "alice"})],
                     now_us=NOW)[0].idx
    store.append([EventFact("policy", {"event": "approved", "proposal": p, "by": "bob"})],
                 now_us=NOW)
    later = NOW + 30 * 86_400 * 1_000_000
    assert len(retention.plan(store, later).remove) == 3
    res = retention.run(store, later)
    assert res.entry_idx is not None
    assert res.purged_punches == 3
    # The keys that sealed only removed punches are destroyed under the retention entry and
    # named in it; E1001's November key also sealed their directory entries: kept.
    spent = {(k.subject, k.period) for k in ring.rows(
        k.key_id for s in ("E1001", ring.badge_subject(STRANGER)) for k in ring.subject_keys(s)
    ).values() if k.destroyed_idx == res.entry_idx}
    assert spent == {("E1001", "2025-12"), (ring.badge_subject(STRANGER), "2025-11")}
    (ev,) = [se for se in store.entries() if se.entry.kind == "retention"]
    assert len(json.loads(ev.body or b"")["keys"]) == 2
    assert list(store.punch_rows(PunchQuery())) == []
    checkpoint(store, later)
    result = verify_store(store, {LOG_KEY.key_id: LOG_KEY.verify_key}, full=True)
    assert result.ok, result.report


def test_the_punches_projection_keeps_the_blind_index_not_the_credential(
        store: SQLStore, tmp_path: Path) -> None:
    personal_store(store, tmp_path)
    column = [str(r[0]) for r in store.query("SELECT credential FROM punches ORDER BY seq")]
    assert column == [store.blind_credential(c) for c in (BADGE, STRANGER, BADGE)]
    assert not any(s.decode() in "".join(column) for s in secrets_of_everyone())
    # Lookups by credential still work (the API's ?credential=), and give the credential back.
    page = queries.punch_page(store, PunchQuery(), limit=10, credential=BADGE)
    assert [(r.seq, r.credential) for r in page] == [(1, BADGE), (3, BADGE)]
    assert queries.punch_row(store, "clock-1", 2).credential == STRANGER  # type: ignore[union-attr]


def test_an_edited_blind_index_is_caught_like_an_edited_credential(
        sqlite_store: SQLiteStore, tmp_path: Path) -> None:
    personal_store(sqlite_store, tmp_path)
    other = sqlite_store.blind_credential(STRANGER)
    sqlite_exec(sqlite_store.path, "DROP TRIGGER punches_no_update",
                f"UPDATE punches SET credential = '{other}' WHERE seq = 1")  # noqa: S608 - test value
    with pytest.raises(ProjectionError, match=r"clock-1#1 .*column\(s\) credential differ"):
        list(sqlite_store.punch_rows(PunchQuery()))


def test_directory_names_are_sealed_at_rest_and_read_in_clear(store: SQLStore,
                                                              tmp_path: Path) -> None:
    personal_store(store, tmp_path)
    stored = {str(r[0]): str(r[1]) for r in store.query(
        "SELECT employee_id, name FROM tc_employees")}
    assert all(body_crypto.is_sealed_column(v) for v in stored.values())
    assert not any(n in v for n in ("Ada", "Grace", "Lovelace", "Hopper")
                   for v in stored.values())
    assert [e.name for e in people_tables.employees(store)] == ["Grace Hopper",
                                                                 "Ada Lovelace"]
    assert directory.employee(store, "E1001").name == "Ada Lovelace"
    assert directory.check_projection(store) == []
    # A sealed name moved to another row does not open.
    with store.transaction(NOW) as tx:
        tx.execute("UPDATE tc_employees SET name = ?, changed_idx = changed_idx + 100 "
                   "WHERE employee_id = 'E1000'", (stored["E1001"],))
    with pytest.raises(LedgerError, match="tc_employees.name of E1000 does not open"):
        directory.employee(store, "E1000")


# -- the byte search (issue 12 acceptance, as far as built) -------------------------------------

def _unique_site(store: SQLStore, tmp_path: Path) -> tuple[str, str, list[str]]:
    """A sealed ledger whose person, badge and stranger's badge are unique to this test (the
    PostgreSQL cluster is shared): (assigned credential, unassigned credential, names)."""
    tag = secrets.token_hex(4)
    first, last = f"Zelda{tag}", f"Quimby{tag}"
    badge = f"em4100:{secrets.randbelow(10**10):010d}"
    stranger = f"em4100:{secrets.randbelow(10**10):010d}"
    store.use_keyring(Keyring(store, MemoryKek()))
    c = Clock("clock-1")
    store.append([EventFact("device", c.enrolled_body())], now_us=T0)
    (tmp_path / "e.csv").write_text("employee_id,name,department,site,timezone,manager_id\n"
                                    f"E77,{first} {last},Ops,hq,UTC,\n", encoding="utf-8")
    (tmp_path / "b.csv").write_text("credential,employee_id,valid_from,valid_until,status\n"
                                    f"{badge},E77,2025-01-01T00:00:00Z,,assigned\n",
                                    encoding="utf-8")
    import_files(store, tmp_path / "e.csv", tmp_path / "b.csv", now_us=T0)
    store.append([c.fact(credential=badge), c.fact(credential=stranger),
                  c.fact(credential=badge, ts=T0 + MONTH)], now_us=NOW)
    assert [r.credential for r in store.punch_rows(PunchQuery())] == [badge, stranger, badge]
    # A punch of a clock nobody enrolled: quarantined with its raw bytes (sealed at rest).
    rejected = f"em4100:{secrets.randbelow(10**10):010d}"
    (r,) = store.append([Clock("clock-9").fact(credential=rejected)], now_us=NOW)
    assert r.outcome is Outcome.REJECTED
    (q,) = store.quarantine()
    assert rejected.encode() in store.quarantined_raw(q.id)
    return badge, f"{stranger} {rejected}", [first, last, f"{first} {last}"]


def _found(blob: bytes, values: list[str]) -> list[str]:
    every = [w for v in values for w in v.split(" ")] + values
    return [v for v in every for f in forms(v) if f in blob]


def _tree(root: Path) -> bytes:
    return b"".join(p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file())


def test_no_credential_or_name_in_any_sqlite_file(tmp_path: Path) -> None:
    """Every file of a sealed SQLite ledger (db, -wal, -shm), with the WAL not checkpointed
    and after a checkpoint: no employee name, no credential (the directory's badge and a
    badge nobody holds), raw, base64 or hex."""
    db = tmp_path / "ledger.db"
    store = SQLiteStore(db)
    try:
        (tmp_path / "csv").mkdir()
        badge, stranger, names = _unique_site(store, tmp_path / "csv")
        files = [p for p in tmp_path.iterdir() if p.name.startswith("ledger.db")]
        assert {p.name for p in files} >= {"ledger.db", "ledger.db-wal"}
        assert _found(_tree_of(files), [*names, badge, stranger]) == []
        store.query("PRAGMA wal_checkpoint(TRUNCATE)")
        assert _found(_tree_of(files), [*names, badge, stranger]) == []
        # ... and the reads still see them
        assert directory.holder_at(store, badge, NOW) == ("E77", "assigned")
        assert [e.name for e in people_tables.employees(store)] == [names[2]]
    finally:
        store.close()


def _tree_of(files: list[Path]) -> bytes:
    return b"".join(p.read_bytes() for p in files if p.exists())


@pytest.mark.subprocess
def test_no_credential_or_name_in_the_postgresql_files_or_a_plain_dump(
        pg_ledger: PgDatabase, pg_cluster: PgCluster, tmp_path: Path) -> None:
    store = open_store(pg_ledger.app_dsn)
    try:
        badge, stranger, names = _unique_site(store, tmp_path)
    finally:
        store.close()
    with psycopg.connect(pg_ledger.admin_dsn, autocommit=True) as conn:
        conn.execute("CHECKPOINT")     # the heap files, not only the WAL, hold the rows
    assert _found(_tree(pg_cluster.data_dir), [*names, badge, stranger]) == []
    dump = subprocess.run([str(PG_BIN / "pg_dump"), "--format=plain", pg_ledger.owner_dsn],
                          capture_output=True, check=True, timeout=120).stdout
    assert b"CREATE TABLE public.tc_data_keys" in dump
    assert _found(dump, [*names, badge, stranger]) == []


def test_no_credential_or_name_in_the_default_exports(tmp_path: Path) -> None:
    """Issue 12's byte search, the files an export writes: the payroll export with its
    defaults (CSV and NDJSON, payroll field set: employee id, no badge) of the sealed ledger
    holds no credential and no name, raw, base64 or hex; the investigation set (asked for by
    name) does carry the badge, so the search can fail."""
    store = SQLiteStore(tmp_path / "ledger.db")
    try:
        (tmp_path / "csv").mkdir()
        badge, stranger, names = _unique_site(store, tmp_path / "csv")
        written: list[bytes] = []
        for fmt in ("csv", "ndjson"):
            out = io.StringIO()
            export_payroll(store, out, fmt=fmt, query=PunchQuery(), now_us=NOW)
            written.append(out.getvalue().encode())
        assert b"E77" in written[0]
        assert b"E77" in written[1]
        assert _found(b"\n".join(written), [*names, badge, stranger]) == []
        out = io.StringIO()
        export_payroll(store, out, fmt="csv", query=PunchQuery(), now_us=NOW,
                       fields=FieldSet.choose("investigation"))
        assert badge in _found(out.getvalue().encode(), [badge])
    finally:
        store.close()
