"""Issue 11 finding 8: the ``punches`` projection edited by someone with DB write access
(SQLite: triggers dropped and put back; PostgreSQL: the superuser with triggers off) must not
reach payroll or the API. Every row is checked against its entry, its body and its device's
enrolment entry before it leaves (collector.ledger.row_check); the export stops, names the
row and what differs, and leaves no partial file; the API answers 500 "integrity"."""

from __future__ import annotations

import hashlib
import json
import sqlite3
from collections.abc import Callable
from pathlib import Path
from typing import Any

import psycopg
import pytest

from collector.cli.main import main
from collector.ledger.audit import verify_store
from collector.ledger.base import EventFact
from collector.ledger.row_check import ProjectionError
from collector.ledger.sqlbase import PunchQuery, SQLStore
from collector.ledger.sqlite import SQLiteStore
from tests.collector.ledger_kit import T0, Clock, seeded_key
from tests.e2e.attack_kit import drop_triggers, restore_triggers
from tests.fixtures.postgres import PgDatabase

LOG_KEY = seeded_key("log-key")


def _fill(store: SQLStore) -> None:
    a, b = Clock("clock-a"), Clock("clock-b", site="plant-2")
    for c in (a, b):
        store.append([EventFact("device", c.enrolled_body())], now_us=T0)   # idx 0, 1
    store.append([a.fact(action="in"), b.fact(action="in"), a.fact(action="out")],
                 now_us=T0 + 5)                                             # idx 2, 3, 4


def _body(store: SQLStore, idx: int) -> bytes:
    return bytes(store.query("SELECT body FROM bodies WHERE idx = ?", (idx,))[0][0])


def _edited_body(store: SQLStore) -> tuple[bytes, str]:
    """clock-a#1's body with action 'out' (no longer validly signed) and its SHA-256."""
    doc = json.loads(_body(store, 2))
    doc["punch"]["action"] = "out"
    raw = json.dumps(doc, separators=(",", ":"), sort_keys=True).encode()
    return raw, hashlib.sha256(raw).hexdigest()


SET_A1 = "UPDATE punches SET {} = ? WHERE device = 'clock-a' AND seq = 1"
Stmts = list[tuple[str, tuple[Any, ...]]]


def _set(column: str, value: object) -> tuple[str, tuple[Any, ...]]:
    """An edit of clock-a#1's projection row (``column`` is one of ours, never input)."""
    return SET_A1.format(column), (value,)


def _cases(store: SQLStore) -> dict[str, tuple[Stmts, str]]:
    """name → (the insider's statements, what the refusal must say)."""
    raw, digest = _edited_body(store)
    return {
        "action": ([_set("action", "out")],
                   "punch row clock-a#1 (entry 2) does not match the ledger: column(s) "
                   "action differ from the signed punch in the entry"),
        "credential": ([_set("credential", "em4100:0099999999")],
                       "column(s) credential differ"),
        "site": ([_set("site", "plant-9")],
                 "its site is not the site of the device's enrolment entry"),
        "enrolment pointer": ([("UPDATE devices SET enrolled_idx = 1 WHERE device = 'clock-a'",
                                ())],
                              "devices.enrolled_idx does not point at this device's "
                              "enrolment entry"),
        "row moved to another entry": ([_set("idx", 3)], "column(s) device, key differ"),
        "body and row": ([("UPDATE bodies SET body = ? WHERE idx = 2", (raw,)),
                          _set("action", "out")],
                         "the stored body is not the body the entry commits to"),
        "entry, body and row": ([("UPDATE entries SET body = ? WHERE idx = 2", (digest,)),
                                 ("UPDATE bodies SET body = ? WHERE idx = 2", (raw,)),
                                 _set("action", "out")],
                                "the entry's hash is not the hash of its fields"),
    }


@pytest.fixture
def tamper(store_kind: str, sqlite_path: Path, request: pytest.FixtureRequest
           ) -> Callable[[Stmts], None]:
    """Statements run as the insider: with the append-only triggers out of the way, and put
    back afterwards (SQLite) or off for the session only (PostgreSQL superuser)."""
    if store_kind == "sqlite":
        def sqlite_tamper(stmts: Stmts) -> None:
            conn = sqlite3.connect(sqlite_path)
            saved = drop_triggers(conn)
            for sql, params in stmts:
                conn.execute(sql, params)
            restore_triggers(conn, saved)
            conn.commit()
            conn.close()
        return sqlite_tamper
    return pg_tamper(request.getfixturevalue("pg_ledger"))


def pg_tamper(db: PgDatabase) -> Callable[[Stmts], None]:
    """The PostgreSQL insider: the superuser, its session's triggers off (replica role), after
    the operator's migrate (access tables too), as before any CLI export."""
    assert main(["migrate", "--store", db.owner_dsn, "--app-role", db.app_role]) == 0

    def run(stmts: Stmts) -> None:
        with psycopg.connect(db.admin_dsn) as conn:
            conn.execute("SET session_replication_role = replica")
            for sql, params in stmts:
                conn.execute(sql.replace("?", "%s"), params)
    return run


CASES = ["action", "credential", "site", "enrolment pointer", "row moved to another entry",
         "body and row", "entry, body and row"]


@pytest.mark.parametrize("case", CASES)
def test_d5_an_edited_punches_projection_never_leaves_the_store(
        *, store: SQLStore, store_url: str, tamper: Callable[[Stmts], None], case: str,
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    _fill(store)
    assert len(list(store.punch_rows(PunchQuery()))) == 3      # the honest ledger exports
    stmts, says = _cases(store)[case]
    tamper(stmts)
    with pytest.raises(ProjectionError) as e:
        list(store.punch_rows(PunchQuery()))
    assert says in str(e.value)
    assert "run `timeclock-collector verify --full`" in str(e.value)
    assert "em4100:" not in str(e.value)                       # never a credential value
    # The operator's export: refused, and no partial file is left to be sent on.
    out = tmp_path / "payroll.csv"
    assert main(["export", "--store", store_url, "--payroll", "--out", str(out)]) != 0
    assert says in capsys.readouterr().err
    assert not out.exists()


async def test_d5_the_api_refuses_an_edited_row_with_an_integrity_problem(
        sqlite_store: SQLiteStore, sqlite_path: Path) -> None:
    from tests.collector.api_kit import start_api  # noqa: PLC0415 - the API only here

    _fill(sqlite_store)
    api = await start_api(sqlite_store)
    try:
        resp = await api.call("GET", "/v1/punches", "hr-reader")
        assert resp.status == 200
        assert len((await resp.json())["items"]) == 3
        conn = sqlite3.connect(sqlite_path)
        saved = drop_triggers(conn)
        conn.execute("UPDATE punches SET action = 'out' WHERE device = 'clock-a' AND seq = 1")
        restore_triggers(conn, saved)
        conn.commit()
        conn.close()
        resp = await api.call("GET", "/v1/punches", "hr-reader")
        assert resp.status == 500
        problem = await resp.json(content_type="application/problem+json")
        assert problem["type"].endswith("integrity")
        assert "punch row clock-a#1 (entry 2) does not match the ledger" in problem["detail"]
        # A stream reads its first rows before it starts: refused the same way.
        resp = await api.call("GET", "/v1/punches?format=ndjson", "hr-reader")
        assert resp.status == 500
    finally:
        await api.client.close()


# -- verify --full re-derives every projection from the chain (collector.ledger.projections) --

def _keys_row() -> tuple[str, tuple[Any, ...]]:
    forged = Clock("forged-key")        # a key no device entry registered
    return ("INSERT INTO keys (key_id, device, public_b64, from_seq, until_seq, status, "
            "registered_idx) VALUES (?, 'clock-a', ?, 1, NULL, 'active', 1)",
            (forged.key.key_id, forged.key.verify_key.b64))


FULL_CASES: dict[str, tuple[Callable[[], Stmts], str | tuple[str, ...]]] = {
    "device revoked in the table only": (
        lambda: [("UPDATE devices SET status = 'revoked' WHERE device = 'clock-a'", ())],
        "devices projection: row 'clock-a' differs from the entries"),
    "device moved to another site": (
        lambda: [("UPDATE devices SET site = 'plant-9' WHERE device = 'clock-b'", ())],
        "devices projection: row 'clock-b' differs from the entries"),
    "key revoked in the table only": (
        lambda: [("UPDATE keys SET status = 'revoked' WHERE device = 'clock-b'", ())],
        "keys projection: row"),
    "key added to the table": (lambda: [_keys_row()],
                               "is in the table but no device entry makes it"),
    "punch row deleted": (
        lambda: [("DELETE FROM punches WHERE device = 'clock-a' AND seq = 1", ())],
        "punch entry 2 has no row: the punch is hidden from payroll and the API"),
    "punch row blanked": (
        lambda: [_set("credential", "")],
        # Named as blanked where exports skip blanked rows (retention's purge), else as an
        # edited credential: either way the verifier reports that row.
        ("the row of clock-a#1 is blanked as if removed under retention, but its body is "
         "still in the ledger", "punch row clock-a#1 (entry 2) does not match the ledger: "
         "column(s) credential differ")),
    "punch row edited": (lambda: [_set("action", "out")],
                         "column(s) action differ from the signed punch"),
}


@pytest.mark.parametrize("case", list(FULL_CASES))
def test_d5_verify_full_rederives_every_projection(
        store: SQLStore, tamper: Callable[[Stmts], None], case: str) -> None:
    _fill(store)
    keys = {LOG_KEY.key_id: LOG_KEY.verify_key}
    assert verify_store(store, keys, full=True).ok          # the honest ledger
    stmts, says = FULL_CASES[case]
    tamper(stmts())
    result = verify_store(store, keys, full=True)
    assert not result.ok
    found = [str(f) for f in result.report.findings if f.tamper]
    expected = (says,) if isinstance(says, str) else says
    assert any(e in f for f in found for e in expected), found
