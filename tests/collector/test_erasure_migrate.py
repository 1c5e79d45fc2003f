"""An erasure or a retention run on a SQLite ledger made by an older collector (issue 12): its
triggers refuse what the current ones allow — before erasure, ``tc_badges_update`` refuses
the ``(erased) <idx>`` credential and the purge triggers know no ``shred`` entry — so the
command is refused up front, in one line naming ``timeclock-collector migrate --store …``,
with nothing recorded or destroyed; after ``migrate`` the erasure runs and ``verify --full``
passes. The store does not bring the triggers itself (collector.ledger.schema_check.
require_current_triggers says why).

Control: D15 (disposal logged, the chain still verifies), D5 (only migrate repairs triggers).
SQLite through the CLI; one older PostgreSQL ledger (its trigger function) too.
"""

from __future__ import annotations

import json
import re
import sqlite3
from pathlib import Path

import pytest

from collector.cli.main import main
from collector.ledger import KEK_ENV, open_store, people_tables
from collector.ledger.audit import verify_store
from collector.ledger.kek import create_file_kek, load_kek
from collector.ledger.postgres import migrate
from collector.ledger.sqlite import SQLiteStore
from tests.collector.keyring_kit import LOG_KEY, NOW, checkpoint, file_kek_store, personal_store
from tests.collector.ledger_kit import sqlite_exec
from tests.collector.test_schema_drift import _admin
from tests.fixtures.postgres import PgDatabase

LATER = NOW + 10**6
# tc_badges_update as collectors made it before the erasure of badge periods (a3949d4^).
BADGES_BEFORE_ERASURE = (
    "CREATE TRIGGER tc_badges_update BEFORE UPDATE ON tc_badges\n"
    "WHEN NEW.credential IS NOT OLD.credential OR NEW.valid_from IS NOT OLD.valid_from\n"
    "  OR NEW.employee_id IS NOT OLD.employee_id OR NEW.status IS NOT OLD.status\n"
    "  OR NEW.idx IS NOT OLD.idx OR NEW.changed_idx <= OLD.changed_idx\n"
    "BEGIN SELECT RAISE(ABORT, 'timeclock: UPDATE on tc_badges refused: only a later entry "
    "moves a period end (the ledger is append-only)'); END")
PURGE_TRIGGERS = ("bodies_delete_needs_retention", "punches_no_update", "quarantine_no_update")


def _before_shred(db: Path) -> list[str]:
    """The purge triggers as made before erasure (2f22504^): only a retention entry counts."""
    conn = sqlite3.connect(db)
    try:
        out: list[str] = []
        for name in PURGE_TRIGGERS:
            (sql,) = conn.execute("SELECT sql FROM sqlite_master WHERE name = ?",
                                  (name,)).fetchone()
            assert "IN ('retention', 'shred')" in sql
            out += [f"DROP TRIGGER {name}",
                    sql.replace("IN ('retention', 'shred')", "= 'retention'")]
        return out
    finally:
        conn.close()


OLDER = {
    "badge trigger before erasure": (
        lambda db: ["DROP TRIGGER tc_badges_update", BADGES_BEFORE_ERASURE],
        ["trigger tc_badges_update differs from the schema's"]),
    "purge triggers before shred": (
        _before_shred, [f"trigger {t} differs from the schema's" for t in PURGE_TRIGGERS]),
    "badge trigger missing": (
        lambda db: ["DROP TRIGGER tc_badges_update"], ["trigger tc_badges_update is missing"]),
}


def _state(db: str, spec: str) -> tuple[int, list[tuple[str, int | None]]]:
    """(entries, [(key id, destroyed idx)]) of the ledger: what a refusal must leave."""
    store = open_store(db, kek=spec)
    try:
        keys = [(str(k), None if d is None else int(d)) for k, d in store.query(
            "SELECT key_id, destroyed_idx FROM tc_data_keys ORDER BY key_id")]
        return store.head()[0], keys
    finally:
        store.close()


@pytest.mark.parametrize("older", sorted(OLDER))
def test_d15_erase_on_an_older_sqlite_ledger_names_migrate_then_works_after_it(
        older: str, sqlite_store: SQLiteStore, tmp_path: Path,
        capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch) -> None:
    sqlite_path = sqlite_store.path
    spec = file_kek_store(sqlite_store, tmp_path)
    sqlite_store.close()
    monkeypatch.delenv(KEK_ENV, raising=False)
    db = str(sqlite_path)
    edit, findings = OLDER[older]
    sqlite_exec(sqlite_path, *edit(sqlite_path))
    before = _state(db, spec)
    args = ["erase", "--store", db, "--kek", spec, "--employee", "E1001", "--reason",
            "gdpr-17", "--case", "DSR-7", "--by", "alice", "--approved-by", "bob"]
    assert main(args) == 2
    captured = capsys.readouterr()
    err = captured.err.strip()
    assert captured.out == ""
    assert len(err.splitlines()) == 1          # one line, no traceback, no trigger's SQL
    assert re.fullmatch(
        r"timeclock-collector: error: erasure of employee E1001 refused: this ledger's "
        rf"triggers are not the ones of this collector's schema \({re.escape('; '.join(findings))}"
        r"\): a ledger made by an older version, or changed since; run `timeclock-collector "
        rf"migrate --store {re.escape(db)}` first, then `timeclock-collector verify --full`; "
        r"nothing done", err), err
    assert _state(db, spec) == before           # nothing recorded, no key destroyed
    # What the line says to run, then the erasure again.
    assert main(["migrate", "--store", db, "--kek", spec]) == 0
    assert "restored trigger(s)" in capsys.readouterr().err
    assert main(args) == 0
    out = json.loads(capsys.readouterr().out)
    assert (out["entries"], out["count"], out["purged"]["badge_periods"]) == (
        [[2, 4], [6, 6]], 4, 1)
    assert out["unjudged_quarantine"] == []
    size, keys = _state(db, spec)
    assert size == before[0] + 1
    assert [d for _, d in keys if d is not None] == [out["entry"]] * 3
    store = open_store(db, kek=spec)
    try:
        checkpoint(store, LATER)
    finally:
        store.close()
    assert main(["verify", "--store", db, "--kek", spec, "--log-key-pub",
                 LOG_KEY.verify_key.b64, "--full", "--state", str(tmp_path / "vs")]) == 0
    assert capsys.readouterr().out.startswith("OK: idx 0..")


def test_d15_a_retention_run_on_an_older_sqlite_ledger_names_migrate(
        sqlite_store: SQLiteStore, sqlite_path: Path, capsys: pytest.CaptureFixture[str]
        ) -> None:
    """The purge triggers of a ledger made before erasure: a run is refused before its
    transaction (not half-way by the bodies trigger), naming migrate; after it, it runs."""
    sqlite_store.close()          # a new ledger, its purge triggers then made older
    sqlite_exec(sqlite_path, *_before_shred(sqlite_path))
    db = str(sqlite_path)
    assert main(["retention", "run", "--store", db]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1
    assert err.startswith("timeclock-collector: error: retention run refused: this ledger's "
                          "triggers are not the ones of this collector's schema (trigger "
                          "bodies_delete_needs_retention differs from the schema's; ")
    assert err.endswith(f"run `timeclock-collector migrate --store {db}` first, then "
                        f"`timeclock-collector verify --full`; nothing done")
    assert main(["migrate", "--store", db]) == 0
    capsys.readouterr()
    assert main(["retention", "run", "--store", db]) == 0
    assert "nothing to remove: no entry written" in capsys.readouterr().out


# tc_badges_update() as PostgreSQL ledgers had it before the erasure of badge periods: the
# current function without the clause that lets a shred entry's "(erased) <idx>" through.
_ERASED_CLAUSE = re.compile(
    r"\(NEW\.credential IS DISTINCT FROM OLD\.credential\s+AND NOT \(.*?'shred'\)\)\)", re.S)
_CURRENT_FN = re.search(r"CREATE OR REPLACE FUNCTION tc_badges_update\(\).*?END \$\$",
                        people_tables.POSTGRES_DDL, re.S)
assert _CURRENT_FN is not None
assert _ERASED_CLAUSE.search(_CURRENT_FN.group(0)) is not None
PG_BADGES_BEFORE_ERASURE = _ERASED_CLAUSE.sub("NEW.credential IS DISTINCT FROM OLD.credential",
                                              _CURRENT_FN.group(0))


def test_d15_erase_on_an_older_postgresql_ledger_names_migrate_then_works_after_it(
        pg_ledger: PgDatabase, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """The same on PostgreSQL, as the app role: the older trigger function is found (the
    role's own findings are not this check's), `migrate` as the owner replaces it."""
    create_file_kek(tmp_path / "ledger.kek")
    spec = f"file:{tmp_path / 'ledger.kek'}"
    store = open_store(pg_ledger.app_dsn, kek=spec)
    try:
        personal_store(store, tmp_path, kek=load_kek(spec), origin=None)
    finally:
        store.close()
    _admin(pg_ledger, PG_BADGES_BEFORE_ERASURE)
    before = _state(pg_ledger.app_dsn, spec)
    args = ["erase", "--store", pg_ledger.app_dsn, "--kek", spec, "--employee", "E1001",
            "--reason", "gdpr-17", "--case", "DSR-7", "--by", "alice", "--approved-by", "bob"]
    assert main(args) == 2
    err = capsys.readouterr().err.strip()
    assert err == ("timeclock-collector: error: erasure of employee E1001 refused: this "
                   "ledger's triggers are not the ones of this collector's schema (trigger "
                   "function tc_badges_update differs from the schema's): a ledger made by an "
                   "older version, or changed since; run `timeclock-collector migrate --store "
                   "URL (as the owner role)` first, then `timeclock-collector verify --full`; "
                   "nothing done")
    assert _state(pg_ledger.app_dsn, spec) == before
    migrate(pg_ledger.owner_dsn, app_role=pg_ledger.app_role)
    assert main(args) == 0
    assert json.loads(capsys.readouterr().out)["count"] == 4
    store = open_store(pg_ledger.app_dsn, kek=spec)
    try:
        checkpoint(store, LATER)
        result = verify_store(store, {LOG_KEY.key_id: LOG_KEY.verify_key}, full=True)
        assert result.ok, result.report
    finally:
        store.close()
