"""The people directory on both stores (real SQLite file, real PostgreSQL as the app role):
CSV import all or nothing and idempotent, badge rules, punch resolution at device time, the
projection's guards, and the ledger still verifying with directory entries in it.

Controls: D6 where subject identity matters (who a punch belongs to, one holder per badge),
D20 for the output fields (employee_id, badge_status in the payroll export).
"""

from __future__ import annotations

import io
import json
import sqlite3
from collections import Counter
from pathlib import Path

import pytest

from collector import AppendOnlyError, BadgeConflictError, DirectoryError
from collector.cli.main import main
from collector.ledger import people_tables
from collector.ledger.base import EventFact
from collector.ledger.schema_check import check_schema
from collector.ledger.sqlbase import PunchQuery, SQLStore
from collector.ledger.sqlite import SQLiteStore
from collector.people import directory
from collector.people.csv_import import ImportError_, import_files
from collector.records.export_fields import FieldSet
from collector.records.exports import export_bundle, export_payroll
from tests.collector.ledger_kit import T0, Clock, seeded_key, sqlite_exec
from wire import verify_cli
from wire.ledger import Checkpoint

NOW = T0 + 10**9
DAY = 86_400 * 1_000_000
BADGE = "em4100:0012345678"
OTHER = "em4100:0000000042"
EMPLOYEES = """employee_id,name,department,site,timezone,manager_id
E1001,Ada Lovelace,Operations,hq,Europe/London,E1000
E1000,Grace Hopper,Operations,hq,America/New_York,
E1002,Alan Turing,Research,plant,Europe/London,E1000
"""
BADGES = f"""credential,employee_id,valid_from,valid_until,status
{BADGE},E1001,2025-01-01T00:00:00Z,,assigned
{OTHER},E1002,2025-01-01T00:00:00Z,2025-11-01T00:00:00Z,lost
"""


def _write(tmp_path: Path, name: str, text: str) -> Path:
    p = tmp_path / name
    p.write_text(text, encoding="utf-8")
    return p


def _kinds(store: SQLStore) -> list[str]:
    return [se.entry.kind for se in store.entries()]


def _imported(store: SQLStore, tmp_path: Path) -> None:
    import_files(store, _write(tmp_path, "e.csv", EMPLOYEES), _write(tmp_path, "b.csv", BADGES),
                 now_us=NOW)


def test_d6_import_records_one_entry_per_change_and_reimport_records_nothing(
        store: SQLStore, tmp_path: Path) -> None:
    emp, badges = _write(tmp_path, "e.csv", EMPLOYEES), _write(tmp_path, "b.csv", BADGES)
    dry = import_files(store, emp, badges, now_us=NOW, dry_run=True)
    assert len(dry.changes) == 6
    assert _kinds(store) == []                                    # a dry run records nothing
    done = import_files(store, emp, badges, now_us=NOW)
    # the manager first (E1000 is on line 3), then reports; the lost badge: held, then lost
    assert _kinds(store) == ["employee"] * 3 + ["badge"] * 3
    assert [r.change.summary for r in done.recorded][:3] == [
        "employee E1000: new employee", "employee E1001: new employee",
        "employee E1002: new employee"]
    assert import_files(store, emp, badges, now_us=NOW + 1).recorded == []
    assert len(_kinds(store)) == 6
    changed = EMPLOYEES.replace("E1002,Alan Turing,Research", "E1002,Alan Turing,Cryptography")
    again = import_files(store, _write(tmp_path, "e2.csv", changed), None, now_us=NOW + 2)
    assert [r.change.summary for r in again.recorded] == ["employee E1002: changed department"]
    e = directory.employee(store, "E1002")
    assert (e.department, e.created_idx, e.changed_idx) == ("Cryptography", 2, 6)
    assert directory.check_projection(store) == []                # the tables are the chain's


@pytest.mark.parametrize(("line", "text", "why"), [
    (2, "E1,Ada,Ops,hq,Mars/Olympus,", "not an IANA time zone"),
    (3, "E2,,Ops,hq,UTC,", "name: must not be empty"),
    (4, "E3,Bob,Ops,hq,UTC,E404", "manager E404 is not in the directory"),
    (4, "E3,Bob,Ops,hq,UTC", "5 field(s), the header has 6"),
    (4, "E3,Bob,Ops,hq,UTC,E3", "cannot be their own manager"),
])
def test_d6_a_bad_row_anywhere_applies_nothing_and_names_its_line(
        store: SQLStore, tmp_path: Path, line: int, text: str, why: str) -> None:
    good = ["E1,Ada,Ops,hq,UTC,", "E2,Grace,Ops,hq,UTC,E1", "E3,Bob,Ops,hq,UTC,E1"]
    rows = list(good)
    rows[line - 2] = text
    f = _write(tmp_path, "e.csv", "employee_id,name,department,site,timezone,manager_id\n"
               + "\n".join(rows) + "\n")
    with pytest.raises(ImportError_, match=r"nothing imported") as info:
        import_files(store, f, None, now_us=NOW)
    assert [p for p in info.value.problems if p.startswith(f"e.csv:{line}: ")], \
        info.value.problems
    assert why in str(info.value)
    assert _kinds(store) == []


def test_d6_a_bad_badge_row_leaves_the_good_employees_unrecorded_too(
        store: SQLStore, tmp_path: Path) -> None:
    bad = BADGES + f"{BADGE},E1002,2025-06-01T00:00:00Z,,assigned\n"
    with pytest.raises(ImportError_) as info:
        import_files(store, _write(tmp_path, "e.csv", EMPLOYEES), _write(tmp_path, "b.csv", bad),
                     now_us=NOW)
    assert info.value.problems == [
        f"b.csv:4: badge {BADGE} is held by employee E1001 over [2025-01-01T00:00:00Z, open), "
        f"which overlaps [2025-06-01T00:00:00Z, open): end that assignment first (badge "
        f"return) or choose another interval"]
    assert _kinds(store) == []


def test_d6_overlapping_assignment_refused_naming_the_other_holder(
        store: SQLStore, tmp_path: Path) -> None:
    _imported(store, tmp_path)
    n = len(_kinds(store))
    t = 1_750_000_000_000_000
    with pytest.raises(BadgeConflictError, match=r"held by employee E1001 over "
                                                 r"\[2025-01-01T00:00:00Z, open\)"):
        directory.badge_event(store, "assigned", BADGE, start_us=t, employee_id="E1000",
                              now_us=NOW)
    with pytest.raises(BadgeConflictError, match=r"is lost \(held by employee E1002\) over "
                                                 r"\[2025-11-01T00:00:00Z, open\)"):
        directory.badge_event(store, "assigned", OTHER, start_us=1_765_000_000_000_000,
                              employee_id="E1000", now_us=NOW)
    assert len(_kinds(store)) == n
    # after a return the badge may go to someone else, from the return on
    directory.badge_event(store, "returned", BADGE, start_us=t, now_us=NOW)
    directory.badge_event(store, "assigned", BADGE, start_us=t, employee_id="E1000",
                          now_us=NOW)
    assert directory.holder_at(store, BADGE, t - 1) == ("E1001", "assigned")
    assert directory.holder_at(store, BADGE, t) == ("E1000", "assigned")
    assert directory.check_projection(store) == []


def test_d6_manager_must_exist_and_no_cycle(store: SQLStore, tmp_path: Path) -> None:
    _imported(store, tmp_path)
    boss = directory.employee(store, "E1000").record()
    with pytest.raises(DirectoryError, match=r"manager E1001 would make a cycle "
                                             r"\(E1000 -> E1001 -> E1000\)"):
        directory.set_employee(store, {**boss, "manager_id": "E1001"}, now_us=NOW)
    with pytest.raises(DirectoryError, match=r"manager E9 is not in the directory"):
        directory.set_employee(store, {**boss, "manager_id": "E9"}, now_us=NOW)
    cyc = _write(tmp_path, "c.csv", "employee_id,name,department,site,timezone,manager_id\n"
                 "E7,A,x,hq,UTC,E8\nE8,B,x,hq,UTC,E7\n")
    with pytest.raises(ImportError_, match=r"c.csv:2: employee E7: manager E8 makes a cycle"):
        import_files(store, cyc, None, now_us=NOW)


def _payroll(store: SQLStore) -> list[dict[str, object]]:
    out = io.StringIO()
    # the investigation set shows the credential beside whom it resolved to (the default,
    # payroll, leaves it out: tests/collector/test_export_fields.py)
    export_payroll(store, out, fmt="ndjson", query=PunchQuery(), now_us=NOW,
                   fields=FieldSet.choose("investigation"))
    return [json.loads(x) for x in out.getvalue().splitlines()[1:-1]]


def test_d20_retroactive_assignment_resolves_an_already_recorded_punch(
        store: SQLStore, tmp_path: Path) -> None:
    c = Clock("clock-1")
    store.append([EventFact("device", c.enrolled_body())], now_us=T0)
    store.append([c.fact(credential=BADGE)], now_us=T0 + 1)      # ts T0 + 1 s
    assert [(r["employee_id"], r["badge_status"]) for r in _payroll(store)] == \
        [(None, "unknown")]
    _imported(store, tmp_path)       # BADGE is E1001's since 2025-01-01, before the punch
    rows = _payroll(store)
    assert [(r["credential"], r["employee_id"], r["badge_status"]) for r in rows] == \
        [(BADGE, "E1001", "assigned")]


def test_d20_lost_blocked_and_unknown_badges_are_reported_as_such(
        store: SQLStore, tmp_path: Path) -> None:
    _imported(store, tmp_path)
    t_lost = 1_761_955_200_000_000                       # 2025-11-01T00:00:00Z
    directory.badge_event(store, "blocked", BADGE, start_us=T0 + 5_000_000, now_us=NOW)
    c = Clock("clock-1")
    store.append([EventFact("device", c.enrolled_body())], now_us=NOW)
    store.append([c.fact(credential=OTHER, ts=t_lost - 1),    # before the loss: E1002's
                  c.fact(credential=OTHER, ts=t_lost + DAY),  # found by someone: lost
                  c.fact(credential=BADGE, ts=T0 + 1),        # before the block: E1001's
                  c.fact(credential=BADGE, ts=T0 + 9_000_000),
                  c.fact(credential="em4100:9999999999", ts=T0 + 2)], now_us=NOW)
    got = {(r["credential"], r["device_time_us"]): (r["employee_id"], r["badge_status"])
           for r in _payroll(store)}
    assert got == {(OTHER, t_lost - 1): ("E1002", "assigned"),
                   (OTHER, t_lost + DAY): (None, "lost"),
                   (BADGE, T0 + 1): ("E1001", "assigned"),
                   (BADGE, T0 + 9_000_000): (None, "blocked"),
                   ("em4100:9999999999", T0 + 2): (None, "unknown")}


def test_d6_projection_rows_cannot_be_deleted_or_reassigned(store: SQLStore,
                                                            tmp_path: Path) -> None:
    _imported(store, tmp_path)
    for sql, params in (
            ("DELETE FROM tc_badges WHERE credential = ?", (BADGE,)),
            ("UPDATE tc_badges SET employee_id = ?, changed_idx = 99 WHERE credential = ?",
             ("E1000", BADGE)),
            ("UPDATE tc_badges SET valid_until = 1 WHERE credential = ?", (BADGE,)),
            ("DELETE FROM tc_employees WHERE employee_id = ?", ("E1000",)),
            ("UPDATE tc_employees SET employee_id = 'X', changed_idx = 99 "
             "WHERE employee_id = ?", ("E1000",))):
        # the trigger, or on PostgreSQL first the app role's missing DELETE grant
        with pytest.raises(AppendOnlyError, match=r"append-only|permission denied for table"), \
                store.transaction(NOW) as tx:
            tx.execute(sql, params)
    assert directory.holder_at(store, BADGE, NOW) == ("E1001", "assigned")


def test_d6_verify_full_and_the_bundle_verifier_pass_with_directory_entries(
        sqlite_store: SQLStore, sqlite_path: Path, tmp_path: Path,
        capsys: pytest.CaptureFixture[str]) -> None:
    c = Clock("clock-1")
    sqlite_store.append([EventFact("device", c.enrolled_body())], now_us=T0)
    sqlite_store.append([c.fact(credential=BADGE)], now_us=T0)
    _imported(sqlite_store, tmp_path)
    directory.badge_event(sqlite_store, "returned", BADGE, start_us=NOW, now_us=NOW)
    log_key = seeded_key("log-key")
    size, head = sqlite_store.head()
    sqlite_store.add_checkpoint(Checkpoint(log=log_key.key_id, size=size, head=head,
                                           at=NOW).sign(log_key))
    assert main(["verify", "--store", str(sqlite_path), "--log-key-pub",
                 log_key.verify_key.b64, "--full", "--state", str(tmp_path / "vs")]) == 0
    assert capsys.readouterr().out.startswith(f"OK: idx 0..{size - 1} verified")
    export_bundle(sqlite_store, tmp_path / "bundle", [log_key.verify_key])
    assert verify_cli.main([str(tmp_path / "bundle"), "--collector-key",
                            log_key.verify_key.b64]) == 0
    assert "RESULT: OK" in capsys.readouterr().out


def test_d6_people_cli_imports_lists_shows_and_teaches(
        sqlite_store: SQLStore, sqlite_path: Path, tmp_path: Path,
        capsys: pytest.CaptureFixture[str]) -> None:
    emp, badges = _write(tmp_path, "e.csv", EMPLOYEES), _write(tmp_path, "b.csv", BADGES)
    db = str(sqlite_path)
    assert main(["people", "import", "--store", db, "--employees", str(emp), "--badges",
                 str(badges), "--dry-run"]) == 0
    out = capsys.readouterr()
    assert "would record 6 change(s)" in out.err
    assert _kinds(sqlite_store) == []
    assert "Ada Lovelace" not in out.out + out.err          # names are never printed
    assert main(["people", "import", "--store", db, "--employees", str(emp)]) == 0
    assert main(["people", "list", "--store", db]) == 0
    assert capsys.readouterr().out.splitlines()[-3:] == [
        "E1000\tOperations\thq\tactive\tmanager=-",
        "E1001\tOperations\thq\tactive\tmanager=E1000",
        "E1002\tResearch\tplant\tactive\tmanager=E1000"]
    assert main(["badge", "assign", "--store", db, BADGE, "E1001",
                 "--from", "2025-01-01"]) == 0     # a date: midnight in Europe/London
    assert main(["badge", "assign", "--store", db, BADGE, "E1000",
                 "--from", "2025-02-01T00:00:00Z"]) == 2     # refused: the CLI error path
    assert "held by employee E1001 over [2025-01-01T00:00:00Z, open)" in \
        capsys.readouterr().err
    assert main(["people", "show", "--store", db, "E1001"]) == 0
    shown = json.loads(capsys.readouterr().out)
    assert [(b["credential"], b["status"], b["valid_until"]) for b in shown["badges"]] == \
        [(BADGE, "assigned", None)]
    with pytest.raises(SystemExit):
        main(["badge", "--help"])
    assert "timeclock-collector badge assign --store ledger.db" in capsys.readouterr().out


def test_d5_a_ledger_from_before_the_directory_gets_its_tables_but_a_read_repairs_no_trigger(
        sqlite_store: SQLStore, sqlite_path: Path) -> None:
    # as made before the directory
    sqlite_exec(sqlite_path, "DROP TABLE tc_badges", "DROP TABLE tc_employees")
    assert check_schema(sqlite_store).findings == tuple(
        f"trigger {t} is missing" for t in people_tables.SQLITE_TRIGGERS)
    assert directory.holder_at(sqlite_store, BADGE, NOW) == (None, "unknown")
    assert check_schema(sqlite_store).ok                         # created with their triggers
    sqlite_exec(sqlite_path, "DROP TRIGGER tc_badges_update")
    assert directory.holder_at(sqlite_store, BADGE, NOW) == (None, "unknown")
    assert check_schema(sqlite_store).findings == ("trigger tc_badges_update is missing",)
    assert main(["migrate", "--store", str(sqlite_path)]) == 0   # only migrate repairs
    assert check_schema(sqlite_store).ok


def test_d20_an_export_resolves_every_row_with_one_directory_query(
        sqlite_store: SQLiteStore, tmp_path: Path) -> None:
    _imported(sqlite_store, tmp_path)
    c = Clock("clock-1")
    sqlite_store.append([EventFact("device", c.enrolled_body())], now_us=NOW)
    creds = [BADGE, OTHER, *(f"em4100:{n:010d}" for n in range(100, 140))]
    sqlite_store.append([c.fact(credential=creds[n % len(creds)], ts=T0 + n)
                         for n in range(400)], now_us=NOW)
    statements: list[str] = []
    sqlite_store._conn.set_trace_callback(statements.append)  # noqa: SLF001 - the real connection's trace
    try:
        rows = _payroll(sqlite_store)
    finally:
        sqlite_store._conn.set_trace_callback(None)  # noqa: SLF001
    assert len(rows) == 400
    # BADGE is E1001's since 2025; OTHER was lost on 2025-11-01, before T0; the rest unknown
    assert Counter(r["badge_status"] for r in rows) == {"assigned": 10, "lost": 10,
                                                         "unknown": 380}
    assert len([s for s in statements if "FROM tc_badges" in s]) == 1  # not one per row


def test_d6_people_cli_reports_every_bad_row_and_records_nothing(
        sqlite_store: SQLStore, sqlite_path: Path, tmp_path: Path,
        capsys: pytest.CaptureFixture[str]) -> None:
    bad = _write(tmp_path, "staff.csv", EMPLOYEES.replace("Europe/London,E1000",
                                                          "Europe/Londn,E1000", 1)
                 + "E1003,,Research,plant,UTC,\n")
    assert main(["people", "import", "--store", str(sqlite_path), "--employees",
                 str(bad)]) == 2
    err = capsys.readouterr().err
    assert "2 problem(s), nothing imported" in err
    assert "staff.csv:2: employee: timezone: 'Europe/Londn' is not an IANA time zone" in err
    assert "staff.csv:5: employee: name: must not be empty" in err
    assert "Traceback" not in err
    assert _kinds(sqlite_store) == []


def test_d6_verify_full_finds_a_badge_period_rewritten_behind_the_ledger(
        sqlite_store: SQLStore, sqlite_path: Path, tmp_path: Path,
        capsys: pytest.CaptureFixture[str]) -> None:
    _imported(sqlite_store, tmp_path)
    log_key = seeded_key("log-key")
    size, head = sqlite_store.head()
    sqlite_store.add_checkpoint(Checkpoint(log=log_key.key_id, size=size, head=head,
                                           at=NOW).sign(log_key))
    args = ["verify", "--store", str(sqlite_path), "--log-key-pub", log_key.verify_key.b64,
            "--full", "--state", str(tmp_path / "vs")]
    assert main(args) == 0
    capsys.readouterr()
    # a database writer gives E1001's badge to E1000, triggers dropped and put back after
    conn = sqlite3.connect(sqlite_path, isolation_level=None)
    try:
        saved = [str(s) for (s,) in conn.execute(
            "SELECT sql FROM sqlite_master WHERE name = 'tc_badges_update'")]
        conn.execute("DROP TRIGGER tc_badges_update")
        conn.execute("UPDATE tc_badges SET employee_id = 'E1000' WHERE credential = ?",
                     (BADGE,))
        for s in saved:
            conn.execute(s)
    finally:
        conn.close()
    assert directory.holder_at(sqlite_store, BADGE, NOW) == ("E1000", "assigned")
    assert main(args) == 1
    out = capsys.readouterr().out
    assert "DIRECTORY DRIFT: 1 finding(s)" in out
    assert f"badge {BADGE}: the table's periods differ from the ledger's entries" in out
