"""Controls D7/D8 (issue 11, build item 4; findings 5 and 7): principals, roles and tokens are
projections of the chain's ``access`` entries (collector.ledger.access_tables).

- a token, principal or role written straight into the database (SQLite file, PostgreSQL
  superuser) never authenticates or authorises, ``access-review`` and ``verify`` name the
  row, ``serve`` refuses to start (or alerts);
- the access rows that must not change are guarded by triggers on both stores;
- no one obtains a credential for another principal; a punch-data role waits for a second
  admin, and a requester never approves their own grant (both refusals recorded);
- the verifiers re-derive who could do what, when, from the chain alone (wire.grants).
"""

from __future__ import annotations

import re
import sqlite3
from pathlib import Path
from typing import Any

import psycopg
import pytest

from collector import ForbiddenError, LedgerError, SoDError
from collector.access.directory import Principals
from collector.cli.main import main as cli_main
from collector.ingest.alerts import Alerts
from collector.ledger import access_tables
from collector.ledger.postgres import PostgresStore
from collector.ledger.schema_check import check_schema, restore_sqlite
from collector.ledger.sqlite import SQLiteStore
from collector.ledger.tables import migrate_postgres
from collector.service.config import load_config
from collector.service.runner import preflight, schema_checks
from tests.collector.access_kit import (
    FORGED,
    bearer_status,
    forged_access_rows,
    sod_breaches_are_findings,
    token_hash,
)
from tests.collector.api_kit import Api, access_bodies, seed, start_api
from tests.collector.punch_kit import write_collector_config
from tests.e2e.attack_kit import drop_triggers, restore_triggers
from tests.fixtures.mosquitto import MosquittoBroker
from tests.fixtures.postgres import PgDatabase
from wire.keys import SigningKey


def _sqlite_exec(store: SQLiteStore, stmts: list[tuple[str, tuple[Any, ...]]]) -> None:
    with store._lock:                         # noqa: SLF001 - the attacker has the file
        for sql, params in stmts:
            store._conn.execute(sql, params)  # noqa: SLF001


# -- finding 7: rows written behind the ledger ---------------------------------------------------

async def test_d7_token_and_principal_inserted_in_sqlite_never_authenticate(api: Api) -> None:
    assert access_tables.check_projection(api.store) == []
    _sqlite_exec(api.store, forged_access_rows(api.store))       # type: ignore[arg-type]
    status, text = await bearer_status(api, "/v1/punches", FORGED)
    assert status == 401, text
    assert "no ledger entry issued this token" in text
    # the same row pointing at no entry at all
    _sqlite_exec(api.store, [("INSERT INTO tc_tokens (id, principal, hash, created_at, "  # type: ignore[arg-type]
                              "created_by, expires_at) VALUES ('tok-orphan0000', "
                              "'hr-reader', ?, 1, 'cli:x', ?)",
                              (token_hash("tct_" + "B" * 43), 2**62))])
    assert (await bearer_status(api, "/v1/punches", "tct_" + "B" * 43))[0] == 401
    assert access_tables.check_projection(api.store) == [
        "tc_principals/tc_roles: principal mallory has a row but no ledger entry made it",
        "tc_tokens: token tok-mallory000 has a row but no ledger entry made it"]
    # access-review no longer shows it as normal
    resp = await api.call("GET", "/v1/access-review", "auditor")
    assert (await resp.json())["drift"] == access_tables.check_projection(api.store)
    # honest tokens still work
    assert (await api.call("GET", "/v1/punches", "hr-reader")).status == 200


async def test_d8_role_inserted_in_sqlite_does_not_authorise(api: Api) -> None:
    _sqlite_exec(api.store, [("INSERT INTO tc_roles VALUES ('hr-reader', 'payroll.export', "  # type: ignore[arg-type]
                              "0, 'x')", ())])
    resp = await api.call("GET", "/v1/exports/payroll", "hr-reader")
    problem = await resp.json(content_type="application/problem+json")
    assert resp.status == 403
    assert "roles in the access tables (hr.read, payroll.export) differ from the ledger's " \
           "(hr.read)" in problem["detail"]
    assert access_tables.check_projection(api.store) == [
        "tc_principals/tc_roles: principal hr-reader: roles is {hr.read, payroll.export} in "
        "the table but {hr.read} in the ledger"]


def test_d7_sqlite_triggers_keep_access_rows_as_their_entries_made_them(
        sqlite_store: SQLiteStore) -> None:
    p = Principals(sqlite_store)
    issued = p.create_token("pat", ["hr.read"], expires_days=5, actor="cli:op", now_us=10)
    p.revoke_token(issued.record.id, actor="cli:op", now_us=20)
    for sql in ("UPDATE tc_tokens SET revoked_at = NULL",
                "UPDATE tc_tokens SET expires_at = expires_at + 1",
                "DELETE FROM tc_tokens", "DELETE FROM tc_principals",
                "UPDATE tc_principals SET roles_idx = roles_idx - 1",
                "UPDATE tc_principals SET kind = 'cert'"):
        with pytest.raises(LedgerError, match="access rows change only with their ledger "
                                              "entry"), sqlite_store.transaction(30) as tx:
            tx.execute(sql)
    with sqlite_store.transaction(30) as tx:      # last use may change
        tx.execute("UPDATE tc_tokens SET last_used_at = 30")
    assert check_schema(sqlite_store).findings == ()


def test_d7_dropped_access_trigger_is_schema_drift_and_migrate_restores_it(
        tmp_path: Path) -> None:
    db = tmp_path / "l.db"
    store = SQLiteStore(db)
    Principals(store)
    store.close()
    conn = sqlite3.connect(db)
    conn.execute("DROP TRIGGER tc_tokens_no_update")
    conn.close()
    store = SQLiteStore(db)
    try:
        assert check_schema(store).findings == ("trigger tc_tokens_no_update is missing",)
    finally:
        store.close()
    assert restore_sqlite(db) == ["tc_tokens_no_update"]


def _serve_config(tmp_path: Path, mosquitto: MosquittoBroker, url: str,
                  extra: str = "") -> Path:
    cfg, _ = write_collector_config(tmp_path / "c", mosquitto, store_url=url, extra=extra)
    return cfg


async def test_d7_serve_refuses_to_start_and_verify_fails_on_a_forged_row(
        api: Api, tmp_path: Path, mosquitto: MosquittoBroker,
        capsys: pytest.CaptureFixture[str]) -> None:
    _sqlite_exec(api.store, forged_access_rows(api.store))       # type: ignore[arg-type]
    db = Path(str(api.store.query("PRAGMA database_list")[0][2]))
    cfg = _serve_config(tmp_path, mosquitto, f"sqlite://{db}")
    with pytest.raises(LedgerError, match=r"refusing to start: the access tables differ "
                                          r"from the ledger's access entries: tc_principals/"
                                          r"tc_roles: principal mallory has a row"):
        preflight(load_config(cfg))
    key = SigningKey.generate()
    assert cli_main(["verify", "--store", str(db), "--log-key-pub", key.verify_key.b64,
                     "--state", str(tmp_path / "vs.json")]) == 1
    out = capsys.readouterr().out
    assert "ACCESS DRIFT: 2 finding(s)" in out
    assert "  tc_tokens: token tok-mallory000 has a row but no ledger entry made it" in out
    assert cli_main(["access-review", "--store", str(db)]) == 1
    assert "ACCESS DRIFT   tc_principals/tc_roles: principal mallory" in capsys.readouterr().out


async def test_d7_unrevoked_behind_dropped_triggers_is_named_at_start_up(
        api: Api, tmp_path: Path, mosquitto: MosquittoBroker) -> None:
    """The database admin drops the triggers, un-revokes a token and puts the triggers back
    exactly as they were (tests/e2e/attack_kit.py): the schema check sees nothing, the
    projection check names the row, so ``serve`` refuses to start."""
    tid = Principals(api.store).tokens("hr-reader")[0].id
    Principals(api.store).revoke_token(tid, actor="admin", now_us=api.clock())
    assert (await api.call("GET", "/v1/punches", "hr-reader")).status == 401
    db = Path(str(api.store.query("PRAGMA database_list")[0][2]))
    conn = sqlite3.connect(db, isolation_level=None)
    try:
        saved = drop_triggers(conn)
        conn.execute("UPDATE tc_tokens SET revoked_at = NULL, revoked_by = NULL WHERE id = ?",
                      (tid,))
        restore_triggers(conn, saved)
    finally:
        conn.close()
    assert check_schema(api.store).findings == ()
    [finding] = access_tables.check_projection(api.store)
    assert re.fullmatch(rf"tc_tokens: token {tid}: revoked_at is none in the table but \d+ "
                        rf"in the ledger", finding), finding
    with pytest.raises(LedgerError, match=re.escape(finding)):
        preflight(load_config(_serve_config(tmp_path, mosquitto, f"sqlite://{db}")))


async def test_d7_alert_mode_starts_with_a_severity_1_access_drift_alert(
        api: Api, tmp_path: Path, mosquitto: MosquittoBroker) -> None:
    _sqlite_exec(api.store, forged_access_rows(api.store))       # type: ignore[arg-type]
    db = Path(str(api.store.query("PRAGMA database_list")[0][2]))
    cfg = load_config(_serve_config(tmp_path, mosquitto, f"sqlite://{db}",
                                    extra='[ledger]\non_schema_drift = "alert"\n'))
    alerts = Alerts()
    schema_checks(cfg, api.store, alerts)                  # starts: no LedgerError
    [alert] = alerts.recent("access-drift")
    assert alert.severity == 1
    assert alert.detail.startswith("the access tables differ from the ledger's access "
                                   "entries: tc_principals/tc_roles: principal mallory has a "
                                   "row but no ledger entry made it; tc_tokens: token "
                                   "tok-mallory000 has a row")


async def test_d7_postgres_rows_inserted_by_a_superuser_never_authenticate(
        pg_ledger: PgDatabase, tmp_path: Path, mosquitto: MosquittoBroker) -> None:
    migrate_postgres(pg_ledger.owner_dsn, pg_ledger.app_role)   # the access tables
    store = PostgresStore(pg_ledger.app_dsn)
    seed(store, devices=1, punches=2)
    api = await start_api(store)
    try:
        assert check_schema(store).findings == ()
        preflight(load_config(_serve_config(tmp_path, mosquitto, pg_ledger.app_dsn)))
        with psycopg.connect(pg_ledger.admin_dsn, autocommit=True) as conn:
            for sql, params in forged_access_rows(store):
                conn.execute(sql.replace("?", "%s"), params)
        status, text = await bearer_status(api, "/v1/punches", FORGED)
        assert status == 401, text
        with pytest.raises(LedgerError, match="refusing to start: the access tables differ "
                                              "from the ledger's access entries"):
            preflight(load_config(_serve_config(tmp_path, mosquitto, pg_ledger.app_dsn)))
        # the app role cannot un-revoke or re-point a token: the guard trigger refuses
        Principals(store).revoke_token(
            next(t.id for t in Principals(store).tokens("hr-reader")), actor="cli:op",
            now_us=api.clock())
        with pytest.raises(LedgerError, match="access rows change only with their ledger "
                                              "entry"), store.transaction(api.clock()) as tx:
            tx.execute("UPDATE tc_tokens SET revoked_at = NULL WHERE principal = ?",
                       ("hr-reader",))
        assert (await api.call("GET", "/v1/punches", "hr-reader")).status == 401
        # a guard dropped by the superuser is schema drift; migrate puts it back
        with psycopg.connect(pg_ledger.admin_dsn, autocommit=True) as conn:
            conn.execute("DROP TRIGGER tc_tokens_guard ON tc_tokens")
        assert check_schema(store).findings == ("trigger tc_tokens_guard on tc_tokens is "
                                                "missing",)
        migrate_postgres(pg_ledger.owner_dsn, pg_ledger.app_role)
        assert check_schema(store).findings == ()
    finally:
        await api.client.close()
        store.close()


# -- finding 5: credentials for others, punch data without a second admin ------------------------

async def test_d7_no_one_obtains_a_token_for_another_principal(api: Api) -> None:
    resp = await api.call("POST", "/v1/tokens", "admin", json={"principal": "hr-reader"})
    problem = await resp.json(content_type="application/problem+json")
    assert resp.status == 403
    assert "no one obtains a credential for another principal" in problem["detail"]
    resp = await api.call("POST", "/v1/tokens", "admin",
                          json={"principal": "newbie", "roles": ["hr.read"]})
    assert resp.status == 403
    # a token for oneself works (and authenticates)
    resp = await api.call("POST", "/v1/tokens", "hr-reader", json={"expires_days": 1})
    assert resp.status == 201
    fresh = (await resp.json())["token"]
    assert (await bearer_status(api, "/v1/punches", fresh))[0] == 200
    # the host operator: no new principal once an admin exists, no second token for anyone
    p = Principals(api.store)
    with pytest.raises(ForbiddenError, match="an admin exists"):
        p.create_token("newbie", ["hr.read"], expires_days=1, actor="cli:op",
                       now_us=api.clock())
    with pytest.raises(ForbiddenError, match="hr-reader already has a token"):
        p.create_token("hr-reader", [], expires_days=1, actor="cli:op", now_us=api.clock())
    refused = [(b["actor"], b["principal"]) for b in access_bodies(api.store)
               if b.get("action") == "token.create" and b.get("outcome") == "refused"]
    assert refused == [("admin", "hr-reader"), ("admin", "newbie"), ("cli:op", "newbie"),
                       ("cli:op", "hr-reader")]


async def _second_admin(api: Api) -> str:
    resp = await api.call("POST", "/v1/principals", "admin",
                          json={"principal": "admin2", "roles": ["admin"]})
    assert resp.status == 201, await resp.text()
    assert (await resp.json())["pending"] is None       # admin reaches no punch data
    api.tokens["admin2"] = Principals(api.store).create_token(
        "admin2", [], expires_days=1, actor="cli:op", now_us=api.clock()).token
    return "admin2"


async def test_d8_punch_data_role_needs_a_second_admin_never_the_requester(api: Api) -> None:
    resp = await api.call("POST", "/v1/principals", "admin",
                          json={"principal": "carol", "roles": ["hr.read", "audit.read"]})
    assert resp.status == 201
    created = await resp.json()
    assert created["principal"]["roles"] == ["audit.read"]    # the rest waits
    gid = created["pending"]["id"]
    api.tokens["carol"] = Principals(api.store).create_token(
        "carol", [], expires_days=1, actor="cli:op", now_us=api.clock()).token  # handover
    assert (await api.call("GET", "/v1/punches", "carol")).status == 403
    resp = await api.call("POST", f"/v1/grants/{gid}/approve", "admin")
    problem = await resp.json(content_type="application/problem+json")
    assert resp.status == 403
    assert problem["type"] == "urn:timeclock:problem:segregation-of-duties"
    assert "admin requested grant" in problem["detail"]
    assert (await api.call("GET", "/v1/punches", "carol")).status == 403
    second = await _second_admin(api)
    resp = await api.call("POST", f"/v1/grants/{gid}/approve", second)
    assert resp.status == 200, await resp.text()
    assert (await resp.json())["status"] == "approved"
    assert (await api.call("GET", "/v1/punches", "carol")).status == 200
    resp = await api.call("POST", f"/v1/grants/{gid}/approve", second)
    assert resp.status == 400                                  # decided once
    changes = [(b["actor"], b["action"], b["outcome"]) for b in access_bodies(api.store)
               if b.get("type") == "admin" and "grant" in b]
    assert changes == [("admin", "grant.request", "done"),
                       ("admin", "grant.approve", "refused"),
                       ("admin2", "grant.approve", "done")]
    assert access_tables.check_projection(api.store) == []


async def test_d8_roles_change_adding_punch_data_is_pending_and_cli_refuses_self_approval(
        api: Api, capsys: pytest.CaptureFixture[str]) -> None:
    resp = await api.call("PUT", "/v1/principals/auditor/roles", "admin",
                          json={"roles": ["audit.read", "payroll.export"]})
    assert resp.status == 202
    gid = (await resp.json())["pending"]["id"]
    assert (await api.call("GET", "/v1/exports/payroll", "auditor")).status == 403
    resp = await api.call("PUT", "/v1/principals/auditor/roles", "admin",
                          json={"roles": []})            # narrowing applies at once
    assert resp.status == 200
    p = Principals(api.store)
    p.grants.set_roles("ops", ["hr.read"], actor="cli:op", now_us=api.clock())
    pending = {g.principal: g.id for g in p.pending_grants()}
    assert set(pending) == {"auditor", "ops"}
    with pytest.raises(SoDError, match="cli:op requested grant"):
        p.decide_grant(pending["ops"], approve=True, actor="cli:op", now_us=api.clock())
    db = str(api.store.query("PRAGMA database_list")[0][2])
    assert cli_main(["token", "grants", "--store", db]) == 0
    assert f"PENDING grant {gid}: auditor gets audit.read, payroll.export" in \
        capsys.readouterr().out
    assert cli_main(["token", "reject", "--store", db, gid]) == 0
    assert p.pending_grants()[0].principal == "ops"
    assert access_tables.check_projection(api.store) == []


# -- the verifiers: who could do what, when, from the chain alone --------------------------------

async def test_d8_both_verifiers_report_every_breach_at_its_entry(
        api: Api, tmp_path: Path) -> None:
    db = str(api.store.query("PRAGMA database_list")[0][2])
    sod_breaches_are_findings(api.store, db, api.clock(), tmp_path)
