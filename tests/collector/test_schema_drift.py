"""Control D5 (issue 11, finding 9): append-only triggers dropped or grants widened by an
admin are noticed (collector.ledger.schema_check): ``serve`` refuses to start or, with
``[ledger] on_schema_drift = "alert"``, starts and raises a severity-1 alert; ``verify``
reports them; ``migrate`` puts them back. Incremental verification re-checks a random
sample of older entries, so an edit below the resume point is found (the RNG is seeded here,
never left to luck)."""

from __future__ import annotations

import random
import re
import sqlite3
import subprocess
import sys
from pathlib import Path

import psycopg
import pytest

from collector import ConfigError, LedgerError
from collector.cli.main import main
from collector.ingest.checkpoints import make_checkpoint
from collector.ledger import open_store
from collector.ledger.audit import SAMPLE_DEFAULT, verify_store
from collector.ledger.base import EventFact
from collector.ledger.postgres import PostgresStore, migrate
from collector.ledger.schema_check import check_schema, pg_expected_triggers
from collector.ledger.schema_sqlite import SCHEMA, TRIGGER_NAMES
from collector.ledger.sqlbase import SQLStore
from collector.ledger.sqlite import SQLiteStore
from collector.service.config import load_config
from collector.service.runner import preflight
from tests.collector.ledger_kit import T0, Clock, seeded_key, sqlite_exec
from tests.collector.punch_kit import write_collector_config
from tests.collector.test_serve import ServeProcess
from tests.fixtures.mosquitto import MosquittoBroker
from tests.fixtures.postgres import PgDatabase
from tests.polling import wait_for
from wire.ledger import make_entry

LOG_KEY = seeded_key("log-key")
LOG_KEYS = {LOG_KEY.key_id: LOG_KEY.verify_key}
ROOT = Path(__file__).resolve().parents[2]


def _ledger(db: Path) -> None:
    store = SQLiteStore(db)
    c = Clock("clock-1")
    store.append([EventFact("device", c.enrolled_body())], now_us=T0)
    store.append([c.fact() for _ in range(3)], now_us=T0)
    store.close()


def _check(db: Path) -> tuple[str, ...]:
    store = open_store(str(db))
    try:
        return check_schema(store).findings
    finally:
        store.close()


# -- the check itself -------------------------------------------------------------------------

@pytest.mark.parametrize("trigger", TRIGGER_NAMES)
def test_d5_each_dropped_sqlite_trigger_is_named_refused_and_restored_by_migrate(
        trigger: str, tmp_path: Path, mosquitto: MosquittoBroker,
        capsys: pytest.CaptureFixture[str]) -> None:
    db = tmp_path / "ledger.db"
    _ledger(db)
    sqlite_exec(db, f"DROP TRIGGER {trigger}")
    assert _check(db) == (f"trigger {trigger} is missing",)
    cfg_file, _ = write_collector_config(tmp_path / "c", mosquitto, store_url=f"sqlite://{db}")
    with pytest.raises(LedgerError, match=rf"refusing to start: .*trigger {trigger} is "
                                          r"missing — re-run `timeclock-collector migrate`"):
        preflight(load_config(cfg_file))
    assert main(["migrate", "--store", str(db)]) == 0
    assert f"restored trigger(s): {trigger}" in capsys.readouterr().err
    assert _check(db) == ()
    preflight(load_config(cfg_file))        # clean again: serve would start


def test_d5_an_edited_sqlite_trigger_is_a_finding(tmp_path: Path) -> None:
    db = tmp_path / "ledger.db"
    _ledger(db)
    sqlite_exec(db, "DROP TRIGGER punches_no_update",
            "CREATE TRIGGER punches_no_update BEFORE UPDATE ON punches WHEN 0 "
            "BEGIN SELECT RAISE(ABORT, 'never'); END")
    assert _check(db) == ("trigger punches_no_update differs from the schema's",)
    assert main(["migrate", "--store", str(db)]) == 0
    assert _check(db) == ()


def test_d5_a_fresh_and_an_upgraded_sqlite_ledger_have_no_finding(tmp_path: Path) -> None:
    from collector.ledger.schema_sqlite import SCHEMA_V1  # noqa: PLC0415 - only here

    v1 = tmp_path / "v1.db"
    conn = sqlite3.connect(v1, isolation_level=None)
    conn.executescript(SCHEMA_V1)
    conn.close()
    for db in (tmp_path / "fresh.db", v1):
        assert _check(db) == ()             # v1 is upgraded to v2 on open


def test_d5_schema_drift_setting_is_checked(tmp_path: Path, mosquitto: MosquittoBroker) -> None:
    cfg_file, _ = write_collector_config(tmp_path, mosquitto, store_url="sqlite:l.db",
                                         extra='[ledger]\non_schema_drift = "ignore"\n')
    with pytest.raises(ConfigError, match=r"ledger.on_schema_drift: 'ignore' is not one of "
                                          r"alert, refuse"):
        load_config(cfg_file)


def test_d5_verify_reports_schema_drift_and_exits_non_zero(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    db = tmp_path / "ledger.db"
    _ledger(db)
    args = ["verify", "--store", str(db), "--log-key-pub", LOG_KEY.verify_key.b64,
            "--state", str(tmp_path / "vs.json")]
    assert main(args) == 0
    capsys.readouterr()
    sqlite_exec(db, "DROP TRIGGER entries_no_update", "DROP TRIGGER bodies_no_update")
    assert main(args) == 1
    out = capsys.readouterr().out
    assert out.startswith("OK: ")          # the chain itself is intact
    assert "SCHEMA DRIFT: 2 finding(s)" in out
    assert "  trigger entries_no_update is missing\n" in out
    assert "  trigger bodies_no_update is missing\n" in out
    assert main([*args, "--json"]) == 1
    assert '"trigger bodies_no_update is missing"' in capsys.readouterr().out


# -- serve, as a subprocess --------------------------------------------------------------------

@pytest.mark.subprocess
def test_d5_serve_refuses_to_start_on_a_dropped_trigger(
        tmp_path: Path, mosquitto: MosquittoBroker) -> None:
    db = tmp_path / "ledger.db"
    _ledger(db)
    sqlite_exec(db, "DROP TRIGGER punches_no_update", "DROP TRIGGER entries_chain")
    cfg_file, _ = write_collector_config(tmp_path / "c", mosquitto, store_url=f"sqlite://{db}")
    r = subprocess.run([sys.executable, "-m", "collector.cli.main", "serve", "--config",
                        str(cfg_file)], cwd=ROOT, capture_output=True, text=True, timeout=120,
                       check=False)
    assert r.returncode == 2, r.stderr
    assert "trigger entries_chain is missing; trigger punches_no_update is missing — re-run " \
           "`timeclock-collector migrate` as the owner role" in r.stderr
    assert "then `timeclock-collector verify --full`" in r.stderr
    assert "Traceback" not in r.stderr
    assert "MQTT subscribed" not in r.stderr


@pytest.mark.subprocess
def test_d5_serve_in_alert_mode_starts_and_raises_a_severity_1_alert(
        tmp_path: Path, mosquitto: MosquittoBroker) -> None:
    db = tmp_path / "ledger.db"
    _ledger(db)
    sqlite_exec(db, "DROP TRIGGER entries_no_delete")
    cfg_file, _ = write_collector_config(tmp_path / "c", mosquitto, store_url=f"sqlite://{db}",
                                         extra='[ledger]\non_schema_drift = "alert"\n')
    serve = ServeProcess(cfg_file)
    store = SQLiteStore(db)
    try:
        serve.wait_for_line("ALERT sev=1 kind=schema-drift device=-: the ledger schema "
                            "differs from what migrate created: trigger entries_no_delete is "
                            "missing")
        serve.wait_for_line("MQTT subscribed")

        def recorded() -> bool:
            return any(r.kind == "alert" and r.body is not None and b'"schema-drift"' in r.body
                       for r in store.raw_entries(0))
        wait_for(recorded, timeout_s=60, what="the schema-drift alert entry")
        assert serve.terminate() == 0
    finally:
        err = serve.close()
        store.close()
    assert "Traceback" not in err


# -- PostgreSQL ---------------------------------------------------------------------------------

def _admin(pg: PgDatabase, *stmts: str) -> None:
    with psycopg.connect(pg.admin_dsn, autocommit=True) as conn:
        for stmt in stmts:
            conn.execute(stmt)


def _findings(dsn: str) -> tuple[str, ...]:
    store = PostgresStore(dsn)
    try:
        return check_schema(store).findings
    finally:
        store.close()


def test_d5_postgres_migrated_app_role_has_no_finding(pg_ledger: PgDatabase) -> None:
    assert _findings(pg_ledger.app_dsn) == ()


def test_d5_postgres_each_dropped_trigger_is_named_and_migrate_restores_it(
        pg_ledger: PgDatabase) -> None:
    triggers = pg_expected_triggers()
    assert len(triggers) == 33          # 6 of them the people directory's, 2 retention's purge,
                                        # 3 the data keys' (collector.ledger.keyring)
    for t in triggers:
        _admin(pg_ledger, f"DROP TRIGGER {t.name} ON {t.table}")
        assert _findings(pg_ledger.app_dsn) == (f"trigger {t.name} on {t.table} is missing",)
        migrate(pg_ledger.owner_dsn, app_role=pg_ledger.app_role)
        assert _findings(pg_ledger.app_dsn) == (), t.name


def test_d5_postgres_disabled_trigger_and_replaced_function_are_findings(
        pg_ledger: PgDatabase) -> None:
    _admin(pg_ledger, "ALTER TABLE punches DISABLE TRIGGER punches_append_only",
           "CREATE OR REPLACE FUNCTION tc_append_only() RETURNS trigger LANGUAGE plpgsql AS "
           "$$ BEGIN RETURN NEW; END $$")
    assert _findings(pg_ledger.app_dsn) == (
        "trigger punches_append_only on punches is disabled",
        "trigger function tc_append_only differs from the schema's")


@pytest.mark.parametrize(("grant", "finding"), [
    ("GRANT DELETE ON punches TO {role}", "role {role} may DELETE punches"),
    ("GRANT DELETE ON entries TO {role}", "role {role} may DELETE entries"),
    ("GRANT TRUNCATE ON bodies TO {role}", "role {role} may TRUNCATE bodies"),
    ("GRANT TRIGGER ON tc_merkle TO {role}", "role {role} may TRIGGER tc_merkle"),
    ("ALTER TABLE entries OWNER TO {role}",
     "role {role} owns table entries (it can drop its triggers)"),
])
def test_d5_postgres_app_role_widened_by_superuser_is_refused(
        grant: str, finding: str, pg_ledger: PgDatabase, tmp_path: Path,
        mosquitto: MosquittoBroker) -> None:
    role = pg_ledger.app_role
    _admin(pg_ledger, grant.format(role=role))
    assert _findings(pg_ledger.app_dsn) == (finding.format(role=role),)
    cfg_file, _ = write_collector_config(tmp_path, mosquitto, store_url=pg_ledger.app_dsn)
    wanted = re.escape(finding.format(role=role))
    with pytest.raises(LedgerError, match=f"refusing to start: .*{wanted}"):
        preflight(load_config(cfg_file))


def test_d5_postgres_owner_and_superuser_connections_are_findings(
        pg_ledger: PgDatabase) -> None:
    owner = _findings(pg_ledger.owner_dsn)
    assert "role tc_owner owns table entries (it can drop its triggers)" in owner
    assert all("owns table" in f for f in owner)
    admin = _findings(pg_ledger.admin_dsn)
    assert admin[0].endswith("is a superuser (it can disable every trigger): connect as the "
                             "app role migrate --app-role granted")


# -- sampled incremental verification ---------------------------------------------------------

# The attacks' SQL is built from ints and hex digests of this test (S608: no input reaches it).
def _edit_body(store: SQLStore, idx: int) -> list[str]:
    return [f"UPDATE bodies SET body = X'7B7D' WHERE idx = {idx}"]  # noqa: S608


def _edit_row(store: SQLStore, idx: int) -> list[str]:
    return [f"UPDATE entries SET at = at + 1 WHERE idx = {idx}"]  # noqa: S608


def _rehash_row(store: SQLStore, idx: int) -> list[str]:
    """The insider recomputes the row's hash: its successor's prev no longer matches."""
    raw = next(store.raw_entries(idx, idx + 1))
    e = make_entry(idx=idx, kind=raw.kind, at=raw.at + 1, body=b"{}", prev=raw.prev)
    return [f"UPDATE bodies SET body = X'7B7D' WHERE idx = {idx}",  # noqa: S608
            f"UPDATE entries SET at = {e.at}, body = '{e.body}', "  # noqa: S608
            f"hash = '{e.hash()}' WHERE idx = {idx}"]


@pytest.mark.parametrize(("edit", "check"), [
    (_edit_body, "check (4) body"), (_edit_row, "check (2) entry-hash"),
    (_rehash_row, "check (3) prev")])
def test_d5_sampled_incremental_verify_finds_an_edited_old_entry(
        edit: object, check: str, tmp_path: Path) -> None:
    db = tmp_path / "ledger.db"
    store = SQLiteStore(db)
    c = Clock("clock-1")
    store.append([EventFact("device", c.enrolled_body())], now_us=T0)
    store.append([c.fact() for _ in range(499)], now_us=T0)
    make_checkpoint(store, LOG_KEY, T0 + 1)                       # size 500
    first = verify_store(store, LOG_KEYS, now_us=T0 + 5)
    assert (first.ok, first.resumed_from, first.sampled, first.last_full_us) == \
        (True, 0, 0, T0 + 5)
    state = first.state
    assert state is not None
    assert state.last_full_us == T0 + 5
    store.append([c.fact() for _ in range(3)], now_us=T0 + 2)

    seed = 1105
    victim = random.Random(seed).sample(range(500), SAMPLE_DEFAULT)[0]   # noqa: S311 - test RNG
    assert callable(edit)
    sqlite_exec(db, *(f"DROP TRIGGER {t}" for t in TRIGGER_NAMES), *edit(store, victim))
    conn = sqlite3.connect(db, isolation_level=None)
    conn.executescript(SCHEMA)                                   # triggers restored: no drift
    conn.close()
    assert check_schema(store).ok

    unsampled = verify_store(store, LOG_KEYS, state=state, sample=0)
    assert unsampled.ok             # what finding 9 saw: the edit is below the resume point
    found = verify_store(store, LOG_KEYS, state=state,
                         rng=random.Random(seed))                 # noqa: S311 - test RNG
    assert (found.ok, found.resumed_from, found.sampled, found.last_full_us) == \
        (False, 500, SAMPLE_DEFAULT, T0 + 5)
    first_failure = found.report.first_failure
    assert first_failure is not None
    assert first_failure.idx == victim
    assert str(first_failure).startswith(f"TAMPER at idx {victim}, {check}: sampled entry "
                                         f"{victim} (below the resume point 500)")
    full = verify_store(store, LOG_KEYS, state=state, full=True)
    assert not full.ok
    store.close()


def test_d5_verify_cli_says_what_was_covered(tmp_path: Path,
                                             capsys: pytest.CaptureFixture[str]) -> None:
    db = tmp_path / "ledger.db"
    store = SQLiteStore(db)
    c = Clock("clock-1")
    store.append([EventFact("device", c.enrolled_body())], now_us=T0)
    store.append([c.fact() for _ in range(99)], now_us=T0)
    make_checkpoint(store, LOG_KEY, T0 + 1)                       # size 100
    store.close()
    args = ["verify", "--store", str(db), "--log-key-pub", LOG_KEY.verify_key.b64,
            "--state", str(tmp_path / "vs.json")]
    assert main(args) == 0
    first = capsys.readouterr().out
    assert "  coverage: every entry read (full run); last full run 20" in first
    assert main([*args, "--sample", "10"]) == 0
    out = capsys.readouterr().out
    assert "  coverage: no new entries, idx 0..99 attested by the verified checkpoint and " \
           "10 of them re-checked at random; last full run 20" in out
    assert main([*args, "--sample", "-1"]) == 2
    assert "--sample -1: must be 0 or more" in capsys.readouterr().err
