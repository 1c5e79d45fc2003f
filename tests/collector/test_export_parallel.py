"""Issue 12 (payroll export with decryption at speed): the payroll export checks and formats
its rows in several worker processes (collector.records.exports ``jobs``, the CLI's
``--jobs``). The file must be the one a single process writes, byte for byte, on SQLite and
PostgreSQL, plain and encrypted at rest; an edited row in any chunk still stops the export
with that row's error and no partial file; a KEK a child cannot reopen runs in one process.
"""

from __future__ import annotations

import io
import re
import sqlite3
from pathlib import Path

import pytest

from collector.cli.main import main
from collector.ledger import KEK_ENV, readers
from collector.ledger.base import EventFact
from collector.ledger.kek import create_file_kek
from collector.ledger.keyring import Keyring
from collector.ledger.row_check import ProjectionError
from collector.ledger.sqlbase import PunchQuery, SQLStore
from collector.people.csv_import import import_files
from collector.records import exports
from tests.collector.keyring_kit import BADGE, BADGES, EMPLOYEES, MONTH, STRANGER, MemoryKek
from tests.collector.ledger_kit import T0, Clock
from tests.e2e.attack_kit import drop_triggers, restore_triggers

CHUNK = 9           # rows per chunk here: 120 punches make a dozen chunks
PUNCHES = 40        # per clock
DAY = 86_400 * 1_000_000


def _fill(store: SQLStore, tmp_path: Path) -> None:
    """Three clocks at two sites, 120 punches over two months of the directory's badge, a
    badge nobody holds and a second one, all interleaved in device time."""
    clocks = [Clock("clock-a"), Clock("clock-b"), Clock("clock-c", site="plant-2")]
    store.append([EventFact("device", c.enrolled_body()) for c in clocks], now_us=T0)
    (tmp_path / "e.csv").write_text(EMPLOYEES, encoding="utf-8")
    (tmp_path / "b.csv").write_text(BADGES, encoding="utf-8")
    import_files(store, tmp_path / "e.csv", tmp_path / "b.csv", now_us=T0)
    badges = (BADGE, STRANGER, "em4100:0000000042")
    for i in range(PUNCHES):
        store.append([c.fact(credential=badges[(i + n) % 3], action="in" if i % 2 else "out",
                             ts=T0 + i * (2 * MONTH // PUNCHES) + n * DAY // 7)
                      for n, c in enumerate(clocks)], now_us=T0 + i)


@pytest.fixture(params=["plain", "keyed"])
def filled(request: pytest.FixtureRequest, store: SQLStore, tmp_path: Path,
           monkeypatch: pytest.MonkeyPatch) -> SQLStore:
    if request.param == "keyed":
        create_file_kek(tmp_path / "kek.key")
        monkeypatch.setenv(KEK_ENV, f"file:{tmp_path / 'kek.key'}")
        from collector.ledger.kek import load_kek  # noqa: PLC0415 - keyed case only

        store.use_keyring(Keyring(store, load_kek(f"file:{tmp_path / 'kek.key'}")))
    _fill(store, tmp_path)
    monkeypatch.setattr(exports, "CHUNK_ROWS", CHUNK)
    return store


def _export(store: SQLStore, fmt: str, jobs: int, query: PunchQuery | None = None) -> str:
    out = io.StringIO()
    exports.export_payroll(store, out, fmt=fmt, query=query or PunchQuery(), now_us=T0,
                           jobs=jobs)
    return out.getvalue()


@pytest.mark.subprocess
@pytest.mark.parametrize("fmt", exports.FORMATS)
def test_payroll_in_several_processes_is_the_file_of_one_process(
        filled: SQLStore, fmt: str) -> None:
    assert readers.forkable(filled)
    assert len(exports._chunks(filled, PunchQuery())) > 6     # really split (CHUNK rows)
    one = _export(filled, fmt, 1)
    assert one.count("\n") == PUNCHES * 3 + (3 if fmt == "csv" else 2)
    for jobs in (2, 3):
        assert _export(filled, fmt, jobs) == one
    # A query's own bounds and filters hold in every chunk.
    query = PunchQuery(since=T0 + MONTH // 3, until=T0 + MONTH + MONTH // 2, site="hq")
    part = _export(filled, fmt, 1, query)
    assert 10 < part.count("clock-") < PUNCHES * 2
    assert "plant-2" not in part.split("\n", 1)[1]
    assert _export(filled, fmt, 2, query) == part


@pytest.mark.subprocess
def test_the_cli_export_with_jobs_writes_the_same_rows(
        filled: SQLStore, store_kind: str, store_url: str, tmp_path: Path,
        request: pytest.FixtureRequest) -> None:
    if store_kind == "postgresql":      # the operator's migrate comes before any CLI export
        db = request.getfixturevalue("pg_ledger")
        assert main(["migrate", "--store", db.owner_dsn, "--app-role", db.app_role]) == 0
    files = []
    for jobs in ("1", "2"):
        out = tmp_path / f"payroll-{jobs}.csv"
        assert main(["export", "--store", store_url, "--payroll", "--out", str(out),
                     "--jobs", jobs]) == 0
        files.append(out.read_text(encoding="utf-8").split("\n", 1)[1])   # after the header
        assert (out.stat().st_mode & 0o777) == 0o600
    assert files[0] == files[1]
    assert '"rows": 120' in files[1]


@pytest.mark.subprocess
def test_an_edited_row_in_a_later_chunk_stops_a_parallel_export(
        sqlite_store: SQLStore, sqlite_path: Path, tmp_path: Path,
        monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> None:
    _fill(sqlite_store, tmp_path)
    monkeypatch.setattr(exports, "CHUNK_ROWS", CHUNK)
    conn = sqlite3.connect(sqlite_path)
    saved = drop_triggers(conn)     # the insider (tests/collector/test_projection_rows.py)
    conn.execute("UPDATE punches SET action = 'in' WHERE device = 'clock-c' AND seq = 39")
    restore_triggers(conn, saved)
    conn.commit()
    conn.close()
    says = (r"punch row clock-c#39 \(entry \d+\) does not match the ledger: column\(s\) "
            r"action differ from the signed punch in the entry")
    with pytest.raises(ProjectionError, match=says):
        _export(sqlite_store, "csv", 2)
    out = tmp_path / "payroll.csv"
    assert main(["export", "--store", f"sqlite://{sqlite_path}", "--payroll", "--out",
                 str(out), "--jobs", "2"]) != 0
    assert re.search(says, capsys.readouterr().err)
    assert not out.exists()


@pytest.mark.subprocess
def test_a_sealed_body_moved_in_a_later_chunk_stops_a_parallel_export(
        sqlite_store: SQLStore, sqlite_path: Path, tmp_path: Path,
        monkeypatch: pytest.MonkeyPatch) -> None:
    """A worker opens each body under its own entry's data key: a sealed body moved to
    another entry (same key, another idx) in a later chunk stops the export with that
    row's error, whatever --jobs, and no file is written."""
    create_file_kek(tmp_path / "kek.key")
    from collector.ledger.kek import load_kek  # noqa: PLC0415 - keyed case only

    sqlite_store.use_keyring(Keyring(sqlite_store, load_kek(f"file:{tmp_path / 'kek.key'}")))
    _fill(sqlite_store, tmp_path)
    monkeypatch.setattr(exports, "CHUNK_ROWS", CHUNK)
    late = [int(r[0]) for r in sqlite_store.query(
        "SELECT idx FROM punches WHERE credential NOT LIKE '%:%' ORDER BY ts DESC LIMIT 2")]
    conn = sqlite3.connect(sqlite_path)
    saved = drop_triggers(conn)
    conn.execute("DROP TRIGGER IF EXISTS bodies_no_update")
    conn.execute("UPDATE bodies SET body = (SELECT body FROM bodies WHERE idx = ?) "
                 "WHERE idx = ?", (late[1], late[0]))
    restore_triggers(conn, saved)
    conn.commit()
    conn.close()
    says = (rf"punch row clock-\w#\d+ \(entry {late[0]}\) does not match the ledger: its "
            rf"sealed body does not open under its data key")
    for jobs in (1, 2):
        with pytest.raises(ProjectionError, match=says):
            _export(sqlite_store, "csv", jobs)


@pytest.mark.subprocess
def test_an_erased_persons_rows_are_left_out_by_every_worker(filled: SQLStore) -> None:
    """A destroyed data key (D15 erasure) reads as erased in a worker as in one process: the
    person's punches are nobody's data any more and leave the file, whatever --jobs."""
    if filled.sealer is None:
        return
    from collector.records import erasure  # noqa: PLC0415 - keyed case only

    before = _export(filled, "csv", 1)
    assert before.count("E1001") == PUNCHES    # the directory's badge: one clock in three
    erasure.erase(filled, employee="E1001", reason="gdpr-17", case="DSR-7", by="alice",
                  approved_by="bob", now_us=T0 + 3 * MONTH)
    one = _export(filled, "csv", 1)
    assert "E1001" not in one
    assert '"rows": 80' in one
    for jobs in (2, 3):
        assert _export(filled, "csv", jobs) == one


def test_a_kek_a_child_cannot_reopen_exports_in_one_process(
        sqlite_store: SQLStore, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    sqlite_store.use_keyring(Keyring(sqlite_store, MemoryKek()))   # not a file KEK
    _fill(sqlite_store, tmp_path)
    monkeypatch.setattr(exports, "CHUNK_ROWS", CHUNK)
    assert not readers.forkable(sqlite_store)
    assert _export(sqlite_store, "csv", 2) == _export(sqlite_store, "csv", 1)


def test_ts_splits_cut_in_order_and_bad_jobs_are_refused(filled: SQLStore) -> None:
    cuts = readers.ts_splits(filled, PunchQuery(), CHUNK)
    assert cuts == sorted(set(cuts))
    assert len(cuts) == PUNCHES * 3 // CHUNK
    with pytest.raises(exports.ExportError, match="jobs -1"):
        _export(filled, "csv", -1)


@pytest.mark.parametrize("site", ["hq", "a,b", 'say "hi"', "two\nlines", "cr\rhere", ""])
def test_a_csv_row_is_what_csv_writer_writes(site: str) -> None:
    """The CSV fast path (one str.format per row) falls back to csv.writer whenever a field
    needs quoting, so every line is csv.writer's."""
    import csv  # noqa: PLC0415

    from collector.ledger.people_tables import BadgeResolver  # noqa: PLC0415
    from collector.ledger.sqlbase import PunchRow  # noqa: PLC0415
    from collector.records.export_fields import DEFAULT, FieldSet  # noqa: PLC0415

    row = PunchRow("clock-a", site, 7, BADGE, "in", T0, "synced", "front", "k1", T0 + 5, 12,
                   "ab" * 32)
    for fields in (DEFAULT, FieldSet.choose(DEFAULT.set_name, ["site"]),
                   FieldSet.choose(DEFAULT.set_name, ["site", "employee_id"])):
        expected = io.StringIO()
        csv.writer(expected, lineterminator="\n").writerow(
            exports.csv_picker(fields)(exports.flat_row(row, (None, "unknown"), None)))
        render = exports.row_renderer("csv", fields, None, None, BadgeResolver({}))
        assert render(row) == expected.getvalue()


def test_a_reader_unwraps_the_keys_of_the_months_it_reads_in_batches(
        filled: SQLStore) -> None:
    if filled.sealer is None:
        assert readers.prefetch_keys(filled, PunchQuery(), set()) == 0
        return
    from collector.ledger.keyring import period_of  # noqa: PLC0415

    reader = readers.fresh_reader(filled)
    try:
        low, high = filled.query("SELECT MIN(ts), MAX(ts) FROM punches")[0]
        months = sorted({period_of(int(low)), period_of(int(high))})
        live = filled.query("SELECT period, COUNT(*) FROM tc_data_keys WHERE destroyed_idx "
                            "IS NULL GROUP BY period ORDER BY period")
        want = sum(int(n) for p, n in live if months[0] <= p <= months[-1])
        assert want > 3
        done: set[str] = set()
        assert readers.prefetch_keys(reader, PunchQuery(), done) == want
        assert months[0] in done
        assert months[-1] in done
        assert readers.prefetch_keys(reader, PunchQuery(), done) == 0     # once per month
        # A query of the first month only: that month's keys.
        first = PunchQuery(until=int(low) + 1)
        assert 0 < readers.prefetch_keys(reader, first, set()) < want
        # Into a read run's key map instead: there alone (each key held once), and what
        # the map holds opens the rows without another unwrap.
        ring = reader.sealer.ring if reader.sealer is not None else None
        assert ring is not None
        ring.forget([str(r[0]) for r in filled.query("SELECT key_id FROM tc_data_keys")])
        run_keys: dict[bytes, bytes | None] = {}
        assert readers.prefetch_keys(reader, PunchQuery(), set(), run_keys) == want
        assert len(run_keys) == want
        assert ring.cached == 0
        read = [list(rows) for rows in reader.punch_chunks([PunchQuery()], run_keys=run_keys)]
        assert read == [list(filled.punch_rows(PunchQuery()))]
        assert ring.cached == 0
    finally:
        reader.close()


def test_a_finished_months_keys_are_dropped_and_open_again_when_met(
        filled: SQLStore) -> None:
    """An export worker drops the data keys of a month its chunks have passed
    (readers.forget_months); a later read of that month unwraps them again and opens the
    same rows."""
    if filled.sealer is None:
        assert readers.forget_months(filled, {}, {"2025-11"}, 2**62) == 0
        return
    from collector.ledger.keyring import period_of  # noqa: PLC0415

    low = int(filled.query("SELECT MIN(ts) FROM punches")[0][0])
    month = period_of(low)
    end = readers.month_end(month)
    assert period_of(end - 1) == month
    assert period_of(end) != month
    keys = int(filled.query("SELECT COUNT(*) FROM tc_data_keys WHERE period = ?",
                            (month,))[0][0])
    first, later = PunchQuery(until=end), PunchQuery(since=end)
    chunks = [first, later, first]
    reader = readers.fresh_reader(filled)
    try:
        ring = reader.sealer.ring if reader.sealer is not None else None
        assert ring is not None
        run_keys: dict[bytes, bytes | None] = {}
        done: set[str] = set()
        got = []
        for n, (q, rows) in enumerate(zip(chunks, reader.punch_chunks(chunks,
                                                                      run_keys=run_keys),
                                          strict=True)):
            dropped = readers.forget_months(reader, run_keys, done, q.since)
            if n == 1:      # the first month is behind this chunk: its keys are gone
                assert dropped == keys
                assert done == set()
                assert run_keys == {}
                assert ring.cached == 0
            else:
                assert dropped == 0
            readers.prefetch_keys(reader, q, done, run_keys)
            got.append(list(rows))
            assert run_keys != {}
    finally:
        reader.close()
    assert len(got[0]) > 3
    assert len(got[1]) > 3
    assert got[2] == got[0]         # the dropped month opens again, row for row
    assert got[0] + got[1] == list(filled.punch_rows(PunchQuery()))


def test_row_times_are_iso_text_to_the_microsecond() -> None:
    """exports._Iso (tables per minute and second, a memo per day) writes what iso() does."""
    import random  # noqa: PLC0415

    fast = exports._Iso()
    rnd = random.Random(12)  # noqa: S311 - test times, not secrets
    times = [0, -1, 1, DAY - 1, -DAY, 253_402_300_799_999_999, T0,
             *(rnd.randrange(-62_000_000_000_000_000, 253_402_300_799_999_999)
               for _ in range(20_000))]
    assert [fast(u) for u in times] == [exports.iso(u) for u in times]


def _read_syscalls() -> int:
    return int(next(line.split()[1] for line in Path("/proc/self/io").read_text().splitlines()
                    if line.startswith("syscr:")))


def test_an_export_of_many_clocks_reads_each_page_about_once(sqlite_path: Path) -> None:
    """Rows in device-time order come from one region of ``punches`` (stored by device and
    seq), ``entries`` and ``bodies`` (by idx) per clock whose batches interleave in time: a
    reader's page cache sized for the clocks (readers.reader_cache_kib) reads each page of
    the ledger about once; one of a fixed 512 KiB read every page again for each row (here
    over ten times the ledger's pages)."""
    from collector.ledger.sqlite import SQLiteStore  # noqa: PLC0415

    store = SQLiteStore(sqlite_path)
    try:
        clocks = [Clock(f"clock-{n:02d}") for n in range(60)]
        store.append([EventFact("device", c.enrolled_body()) for c in clocks], now_us=T0)
        for n, c in enumerate(clocks):      # each clock's backlog as one batch
            store.append([c.fact(ts=T0 + (i * len(clocks) + n) * 1_000_000)
                          for i in range(80)], now_us=T0 + n)
        ((pages,),) = store.query("PRAGMA page_count")
        before = _read_syscalls()
        summary = exports.export_payroll(store, io.StringIO(), fmt="csv", query=PunchQuery(),
                                         now_us=T0, jobs=1)
        reads = _read_syscalls() - before
    finally:
        store.close()
    assert summary.rows == 60 * 80
    assert reads < 2 * int(pages), (reads, pages)
