"""The console's incremental reads (collector.api.console_rows, issue 16): the timesheets a
page is computed from, and each clock's progress, equal what a fresh read of the store gives
(SQLite and PostgreSQL),
as punches arrive in and out of time order, the directory changes and an entry that can
change punch rows makes the window read again; a row recorded since is checked before it is
used (issue 11), and what is held is what the ledger's entries say."""

from __future__ import annotations

import sqlite3
from pathlib import Path

import pytest

from collector.api import console_rows as CR
from collector.ledger.base import EventFact
from collector.ledger.row_check import ProjectionError
from collector.ledger.sqlbase import PunchQuery, SQLStore
from collector.ledger.sqlite import SQLiteStore
from collector.people.csv_import import import_files
from collector.records.exports import Fixed
from collector.records.timesheet_export import load
from collector.records.timesheets import Rules, Timesheet
from tests.collector.ledger_kit import T0, Clock
from tests.e2e.attack_kit import drop_triggers, restore_triggers

H = 3600 * 1_000_000
DAY = 24 * H
NOW = T0 + 20 * DAY
CRED = {e: f"em4100:{n:010d}" for n, e in enumerate(("ANN", "BOB", "CAT"), start=1)}
BADGES = "credential,employee_id,valid_from,valid_until,status\n" + "".join(
    f"{c},{e},2025-01-01T00:00:00Z,,assigned\n" for e, c in CRED.items())


def _people(tmp: Path, store: SQLStore, *, bob_zone: str, at: int) -> None:
    (tmp / "e.csv").write_text(
        "employee_id,name,department,site,timezone,manager_id\n"
        "ANN,Ann Archer,Ops,hq,Europe/London,\n"
        f"BOB,Bob Baker,Ops,plant,{bob_zone},ANN\n"
        "CAT,Cat Cooper,Ops,plant,Europe/London,ANN\n", encoding="utf-8")
    (tmp / "b.csv").write_text(BADGES, encoding="utf-8")
    import_files(store, tmp / "e.csv", tmp / "b.csv", now_us=at)


def _seed(store: SQLStore, tmp_path: Path) -> tuple[SQLStore, Clock, Clock]:
    hq, plant = Clock("clock-01", site="hq"), Clock("clock-02", site="plant")
    store.append([EventFact("device", c.enrolled_body()) for c in (hq, plant)], now_us=T0)
    _people(tmp_path, store, bob_zone="Europe/London", at=T0 + 1)
    # 18 days of an in at 08:00 and an out at 16:00 for each, a few days before the window
    facts = []
    for d in range(18):
        for emp, clock in (("ANN", hq), ("BOB", plant), ("CAT", plant)):
            base = NOW - (18 - d) * DAY + 8 * H
            facts.append(clock.fact(credential=CRED[emp], action="in", ts=base))
            if not (emp == "CAT" and d == 9):       # one missing out
                facts.append(clock.fact(credential=CRED[emp], action="out", ts=base + 8 * H))
    store.append(facts, now_us=NOW - DAY)
    return store, hq, plant


@pytest.fixture
def site(store: SQLStore, tmp_path: Path) -> tuple[SQLStore, Clock, Clock]:
    """The site on SQLite and on PostgreSQL (the same queries, ``from_idx`` included)."""
    return _seed(store, tmp_path)


@pytest.fixture
def sqlite_site(sqlite_store: SQLiteStore, tmp_path: Path) -> tuple[SQLStore, Clock, Clock]:
    """The site in a SQLite file the insider edits."""
    return _seed(sqlite_store, tmp_path)


def _shape(sheets: list[Timesheet]) -> list[tuple[object, ...]]:
    return [(s.employee_id, s.timezone, s.shifts, s.exceptions) for s in sheets]


RANGES = (  # (days back from now, days back to (0 = now + 1 µs), sites, employees)
    (15, 0, None, None), (14, 0, None, frozenset({"BOB"})),
    (8, 0, frozenset({"plant"}), None), (15, 0, None, frozenset({"BOB", "CAT"})))


def _same_as_load(store: SQLStore, now: int, fixed: Fixed) -> int:
    shifts = 0
    for back, to, sites, employees in RANGES:
        since, until = now - back * DAY, now - to * DAY + 1
        got = CR.window_sheets(store, fixed, Rules(), since=since, until=until, now_us=now,
                               sites=sites, employees=employees)
        assert got is not None
        want = load(store, PunchQuery(since=since, until=until), Rules(), fixed, sites=sites,
                    employees=employees).sheets
        assert _shape(got) == _shape(want)
        shifts += sum(len(s.shifts) for s in got)
    return shifts


def test_window_timesheets_equal_a_fresh_read_as_punches_arrive(
        site: tuple[SQLStore, Clock, Clock], tmp_path: Path) -> None:
    store, hq, plant = site
    window = CR.window_of(store)
    assert _same_as_load(store, NOW, {}) > 0
    assert (window.reads, window.extensions) == (1, 0)
    hits = CR.SHEETS.hits
    # in time order, then late (a clock's backlog: older device times recorded after newer)
    store.append([hq.fact(credential=CRED["ANN"], action="in", ts=NOW - H)], now_us=NOW)
    _same_as_load(store, NOW + 1, {})
    store.append([plant.fact(credential=CRED["BOB"], action="out", ts=NOW - 2 * DAY + 20 * H),
                  plant.fact(credential=CRED["CAT"], action="out", ts=NOW - 9 * DAY + 17 * H)],
                 now_us=NOW + 2)
    _same_as_load(store, NOW + 3, {})
    assert (window.reads, window.extensions) == (1, 2)    # never read again from scratch
    assert CR.SHEETS.hits > hits        # the employees nobody punched for: not paired again
    # the directory changes (BOB's time zone): grouped again, still the same answer
    _people(tmp_path, store, bob_zone="America/New_York", at=NOW + 4)
    assert _same_as_load(store, NOW + 5, {}) > 0
    got = CR.window_sheets(store, {}, Rules(), since=NOW - 14 * DAY, until=NOW, now_us=NOW + 5,
                           sites=None, employees=frozenset({"BOB"}))
    assert got is not None
    assert [s.timezone for s in got] == ["America/New_York"]


def test_a_range_before_the_window_is_read_from_the_store(
        site: tuple[SQLStore, Clock, Clock]) -> None:
    store, _, _ = site
    assert CR.window_sheets(store, {}, Rules(), since=NOW - 30 * DAY, until=NOW, now_us=NOW,
                            sites=None) is None


def test_a_device_entry_makes_the_window_read_again(
        site: tuple[SQLStore, Clock, Clock]) -> None:
    store, _, _ = site
    window = CR.window_of(store)
    _same_as_load(store, NOW, {})
    store.append([EventFact("device", Clock("clock-03", site="hq").enrolled_body())],
                 now_us=NOW)
    _same_as_load(store, NOW + 1, {})
    assert window.reads == 2
    # and so does the next day (the window's floor moves)
    _same_as_load(store, NOW + DAY, {})
    assert window.reads == 3


def _edit(db: Path, device: str, seq: int) -> None:
    conn = sqlite3.connect(db)
    saved = drop_triggers(conn)
    conn.execute("UPDATE punches SET action = 'in' WHERE device = ? AND seq = ?", (device, seq))
    restore_triggers(conn, saved)
    conn.commit()
    conn.close()


def test_a_row_recorded_since_is_checked_before_it_is_used(
        sqlite_site: tuple[SQLStore, Clock, Clock], sqlite_path: Path) -> None:
    store, hq, _ = sqlite_site
    _same_as_load(store, NOW, {})
    store.append([hq.fact(credential=CRED["ANN"], action="out", ts=NOW - H)], now_us=NOW)
    _edit(sqlite_path, "clock-01", hq.seq)          # the insider edits the new row
    with pytest.raises(ProjectionError, match=rf"punch row clock-01#{hq.seq} .* does not "
                                              r"match the ledger: column\(s\) action"):
        CR.window_sheets(store, {}, Rules(), since=NOW - DAY, until=NOW + 1, now_us=NOW + 1,
                         sites=None)


def test_a_held_row_is_what_its_entry_says_even_after_an_edit(
        sqlite_site: tuple[SQLStore, Clock, Clock], sqlite_path: Path) -> None:
    store, hq, _ = sqlite_site
    store.append([hq.fact(credential=CRED["ANN"], action="out", ts=NOW - H)], now_us=NOW)
    before = CR.window_sheets(store, {}, Rules(), since=NOW - DAY, until=NOW + 1, now_us=NOW,
                              sites=None, employees=frozenset({"ANN"}))
    _edit(sqlite_path, "clock-01", hq.seq)          # after the window read and checked it
    after = CR.window_sheets(store, {}, Rules(), since=NOW - DAY, until=NOW + 1, now_us=NOW,
                             sites=None, employees=frozenset({"ANN"}))
    assert before is not None
    assert after is not None
    assert _shape(after) == _shape(before)          # the ledger's "out", not the edit
    edited = [p.action for sh in after for s in sh.shifts for p in (s.start_punch, s.end_punch)
              if p is not None and (p.device, p.seq) == ("clock-01", hq.seq)]
    assert edited == ["out"]
    with pytest.raises(ProjectionError, match="column\\(s\\) action"):     # a fresh read
        load(store, PunchQuery(since=NOW - DAY, until=NOW + 1), Rules(), {})


def test_progress_is_kept_as_store_progress_would_give_it(store: SQLStore) -> None:
    c = Clock("clock-01")
    store.append([EventFact("device", c.enrolled_body())], now_us=T0)
    signed = {s: c.punch(ts=T0 + s) for s in range(1, 13)}

    def record(*seqs: int) -> None:
        store.append([c.fact(signed[s]) for s in seqs], now_us=T0)
        got = CR.progress_of(store, "clock-01")
        assert got == store.progress("clock-01")

    record(1, 2, 5)                 # a gap 3-4
    record(9)                       # another, 6-8
    record(3)                       # fills part of the first
    record(7, 4)                    # the first closes, the second splits
    record(6, 8, 10, 12)
    got = CR.progress_of(store, "clock-01")
    assert (got.contiguous, got.highest, got.gaps) == (10, 12, ((11, 11),))
