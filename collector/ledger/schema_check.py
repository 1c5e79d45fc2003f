"""Schema self-check (control D5): does the database still enforce what ``migrate`` created?

The append-only guarantees live in the database (triggers; on PostgreSQL also the app role's
narrow grants), so whoever administers it can quietly remove them: drop or disable a
trigger, replace its function, grant the app role UPDATE, make it the owner of a table.
:func:`check_schema` compares the live catalogue with what the schema modules create and
returns one finding per difference, in words an operator can act on. ``serve`` refuses to
start on a finding (or alerts, with ``[ledger] on_schema_drift = "alert"``) and ``verify``
reports them.

What is compared:
- SQLite: every trigger of ``schema_sqlite.TRIGGER_NAMES`` exists in ``sqlite_master`` with
  exactly the SQL the schema creates (the expected text is read back from an in-memory
  database the schema is applied to, so formatting never differs);
- PostgreSQL: every ``CREATE OR REPLACE TRIGGER`` of ``schema_postgres.SCHEMA`` exists on its
  table, is enabled, fires on the same events and calls the same function, and each trigger
  function's body is the schema's; the connected role (the app role, under ``serve``) is no
  superuser, owns no ledger table and holds no table privilege beyond what ``migrate``
  grants (``schema_postgres.GRANTS``, ``tables.GRANTS``, ``checkpoint_tables``' grants).
  Fewer privileges than granted are not a finding (a read-only auditor role is fine).

The check reads the catalogue only; it never repairs. Re-running ``migrate`` as the owner
does (PostgreSQL: ``CREATE OR REPLACE`` and the grants; SQLite: :func:`restore_sqlite`), and
``verify --full`` then tells whether anything was changed while the guard was down.
"""

from __future__ import annotations

import re
import sqlite3
from dataclasses import dataclass
from pathlib import Path

from collector import LedgerError
from collector.ledger import access_tables, checkpoint_tables, people_tables, tables
from collector.ledger.schema_postgres import SCHEMA as PG_SCHEMA
from collector.ledger.schema_sqlite import SCHEMA as SQLITE_SCHEMA
from collector.ledger.schema_sqlite import TRIGGER_NAMES
from collector.ledger.sqlbase import SQLStore
from collector.ledger.sqlite import connect

REMEDY = ("re-run `timeclock-collector migrate` as the owner role (SQLite: as the file's "
          "owner), then `timeclock-collector verify --full`")

_PRIVILEGES = ("SELECT", "INSERT", "UPDATE", "DELETE", "TRUNCATE", "REFERENCES", "TRIGGER")
_LEDGER_TABLES = ("meta", "entries", "bodies", "punches", "devices", "keys", "quarantine",
                  "retained", "checkpoints", "tc_merkle")


def _granted() -> dict[str, frozenset[str]]:
    """Table → the privileges ``migrate`` grants the app role (schema_postgres.GRANTS)."""
    out = {t: frozenset({"SELECT", "INSERT"}) for t in _LEDGER_TABLES}
    out["devices"] = out["keys"] = frozenset({"SELECT", "INSERT", "UPDATE"})
    out["bodies"] = frozenset({"SELECT", "INSERT", "DELETE"})
    # D15: the retention purge (the triggers allow only it: collector.ledger.retention_tables)
    out["punches"] = out["quarantine"] = frozenset({"SELECT", "INSERT", "UPDATE"})
    for t in tables.TABLES:           # tables.GRANTS: full DML (projections beside the ledger)
        out[t] = frozenset({"SELECT", "INSERT", "UPDATE", "DELETE"})
    for t in checkpoint_tables.TABLES:
        out[t] = frozenset({"SELECT", "INSERT"})
    for t in people_tables.UPDATABLE:  # schema_postgres.GRANTS: the directory's projection
        out[t] = frozenset({"SELECT", "INSERT", "UPDATE"})
    return out


GRANTED: dict[str, frozenset[str]] = _granted()


@dataclass(frozen=True)
class SchemaCheck:
    """The result of :func:`check_schema`: ``findings`` empty means no drift."""

    findings: tuple[str, ...]

    @property
    def ok(self) -> bool:
        return not self.findings

    def message(self) -> str:
        """One line naming every finding and what to do."""
        return (f"the ledger schema differs from what migrate created: "
                f"{'; '.join(self.findings)} — {REMEDY}")


def check_schema(store: SQLStore) -> SchemaCheck:
    """Compare ``store``'s catalogue with the schema (see the module docstring)."""
    if store.ph == "?":
        return SchemaCheck(tuple(_sqlite_findings(store)))
    return SchemaCheck(tuple(_pg_trigger_findings(store) + _pg_role_findings(store)))


def require_current_triggers(store: SQLStore, *, what: str) -> None:
    """Refuse (LedgerError, one line naming ``migrate``) to run ``what`` — a command that
    deletes bodies and blanks projection rows under an entry, which only the current triggers
    allow (an erasure, a retention run) — on a ledger whose triggers are not the schema's.

    Why refuse rather than bring the triggers on open (as SQLiteStore does for its read
    indexes): a ledger made by an older collector has triggers that refuse what the current
    ones allow (before erasure, ``tc_badges_update`` refuses the ``(erased) <idx>``
    credential and the purge triggers know no ``shred`` entry), so the newer ones widen what
    the database accepts, which is a change of the append-only guarantees, not a read aid;
    and an open cannot tell an older version from a trigger someone dropped or edited (D5:
    ``serve`` and ``verify`` report it as drift and only ``migrate`` repairs it, after which
    ``verify --full`` says whether anything changed meanwhile). Without this check such a
    command fails half-way with the trigger's own refusal, which names no remedy. The role
    findings of PostgreSQL are not this check's (an operator may run it as the owner)."""
    found = _sqlite_findings(store) if store.ph == "?" else _pg_trigger_findings(store)
    if found:
        where = getattr(store, "path", None)
        arg = str(where) if where is not None else "URL (as the owner role)"
        raise LedgerError(f"{what} refused: this ledger's triggers are not the ones of this "
                          f"collector's schema ({'; '.join(found)}): a ledger made by an "
                          f"older version, or changed since; run `timeclock-collector migrate "
                          f"--store {arg}` first, then `timeclock-collector verify --full`; "
                          f"nothing done")


# -- SQLite ----------------------------------------------------------------------------------

_SQLITE_TRIGGERS = TRIGGER_NAMES + access_tables.TRIGGER_NAMES   # the chain's + access rows'


def _sqlite_expected() -> dict[str, str]:
    mem = sqlite3.connect(":memory:")
    try:
        mem.executescript(SQLITE_SCHEMA + tables.SCHEMA + ";\n".join(access_tables.TRIGGERS))
        rows = mem.execute("SELECT name, sql FROM sqlite_master WHERE type = 'trigger'")
        return {str(n): str(s) for n, s in rows if n in _SQLITE_TRIGGERS}
    finally:
        mem.close()


def _sqlite_names(tables_present: set[str]) -> tuple[str, ...]:
    """The triggers to expect: the access tables' only once they exist (collector.ledger.
    tables creates them with their triggers when the API or ``migrate`` opens the file)."""
    return _SQLITE_TRIGGERS if "tc_tokens" in tables_present else TRIGGER_NAMES


def _sqlite_findings(store: SQLStore) -> list[str]:
    expected = _sqlite_expected()
    have = {str(n): (str(t), str(s)) for n, t, s in store.query(
        "SELECT name, tbl_name, sql FROM sqlite_master WHERE type = 'trigger'")}
    present = {str(r[0]) for r in store.query(
        "SELECT name FROM sqlite_master WHERE type = 'table'")}
    out: list[str] = []
    for name in _sqlite_names(present):
        if name not in have:
            out.append(f"trigger {name} is missing")
        elif have[name][1] != expected[name]:
            out.append(f"trigger {name} differs from the schema's")
    return out


def restore_sqlite(path: Path) -> list[str]:
    """Recreate the triggers of ``path`` that are missing or differ (``migrate`` on a SQLite
    ledger); returns their names. One transaction: all of them or none."""
    conn = connect(path)
    try:
        expected = _sqlite_expected()
        have = {str(n): str(s) for n, s in conn.execute(
            "SELECT name, sql FROM sqlite_master WHERE type = 'trigger'")}
        present = {str(r[0]) for r in conn.execute(
            "SELECT name FROM sqlite_master WHERE type = 'table'")}
        redo = [n for n in _sqlite_names(present) if have.get(n) != expected[n]]
        if redo:
            conn.execute("BEGIN IMMEDIATE")
            try:
                for stmt in people_tables.SQLITE_TABLE_STATEMENTS:  # a ledger made before them
                    conn.execute(stmt)
                for name in redo:
                    conn.execute(f"DROP TRIGGER IF EXISTS {name}")
                    conn.execute(expected[name])
            except BaseException:
                conn.rollback()
                raise
            conn.execute("COMMIT")
        return redo
    except sqlite3.Error as e:
        raise LedgerError(f"{path}: cannot restore the ledger triggers: {e}") from e
    finally:
        conn.close()


# -- PostgreSQL ------------------------------------------------------------------------------

_PG_TRIGGER = re.compile(r"CREATE OR REPLACE TRIGGER (\w+) BEFORE ([A-Z ]+?) ON (\w+)\s+"
                         r"FOR EACH (ROW|STATEMENT) EXECUTE FUNCTION (\w+)\(\)")
_EVENTS = re.compile(r" BEFORE ([A-Z ]+?) ON ")     # pg_get_triggerdef orders them its way
_PG_FUNCTION = re.compile(r"CREATE OR REPLACE FUNCTION (\w+)\(\) RETURNS trigger "
                          r"LANGUAGE plpgsql AS \$\$(.*?)\$\$", re.DOTALL)


@dataclass(frozen=True)
class _Trigger:
    name: str
    events: str      # "UPDATE OR DELETE"
    table: str
    level: str       # ROW | STATEMENT
    function: str


def pg_expected_triggers() -> tuple[_Trigger, ...]:
    """The triggers ``schema_postgres.SCHEMA`` creates."""
    return tuple(_Trigger(*m.groups()) for m in _PG_TRIGGER.finditer(PG_SCHEMA))


def _pg_trigger_findings(store: SQLStore) -> list[str]:
    rows = store.query(
        "SELECT t.tgname, c.relname, t.tgenabled, p.proname, pg_get_triggerdef(t.oid) "
        "FROM pg_trigger t JOIN pg_class c ON c.oid = t.tgrelid "
        "JOIN pg_namespace n ON n.oid = c.relnamespace JOIN pg_proc p ON p.oid = t.tgfoid "
        "WHERE NOT t.tgisinternal AND n.nspname = current_schema()")
    have = {(str(r[1]), str(r[0])): (str(r[2]), str(r[3]), str(r[4])) for r in rows}
    out: list[str] = []
    access = access_tables.present(store)     # its guards once migrate made the tables
    access_ddl = "\n".join(access_tables.PG_TRIGGERS) if access else ""
    for t in (*pg_expected_triggers(), *(
            _Trigger(*m.groups()) for m in _PG_TRIGGER.finditer(access_ddl))):
        got = have.get((t.table, t.name))
        if got is None:
            out.append(f"trigger {t.name} on {t.table} is missing")
            continue
        enabled, function, definition = got
        if enabled == "D":
            out.append(f"trigger {t.name} on {t.table} is disabled")
        elif enabled == "R":
            out.append(f"trigger {t.name} on {t.table} fires only in replica mode")
        fires = _EVENTS.search(definition)
        events = frozenset(fires.group(1).split(" OR ")) if fires else frozenset()
        if (function != t.function or events != frozenset(t.events.split(" OR "))
                or f" FOR EACH {t.level} " not in definition):
            out.append(f"trigger {t.name} on {t.table} differs from the schema's")
    bodies = {str(n): str(s) for n, s in store.query(
        "SELECT p.proname, p.prosrc FROM pg_proc p JOIN pg_namespace n "
        "ON n.oid = p.pronamespace WHERE n.nspname = current_schema()")}
    for m in _PG_FUNCTION.finditer(PG_SCHEMA + "\n" + access_ddl):
        name, body = m.group(1), m.group(2)
        if name not in bodies:
            out.append(f"trigger function {name} is missing")
        elif bodies[name].strip() != body.strip():
            out.append(f"trigger function {name} differs from the schema's")
    return out


def _pg_role_findings(store: SQLStore) -> list[str]:
    role, superuser = store.query(
        "SELECT current_user, rolsuper FROM pg_roles WHERE rolname = current_user")[0]
    out: list[str] = []
    if superuser:
        out.append(f"role {role} is a superuser (it can disable every trigger): connect as "
                   f"the app role migrate --app-role granted")
    names = sorted(GRANTED)
    privs_sql = ", ".join(f"has_table_privilege(c.oid, '{p}')" for p in _PRIVILEGES)
    rows = store.query(
        "SELECT c.relname, pg_get_userbyid(c.relowner) = current_user, "  # noqa: S608 - constants only
        f"{privs_sql} FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace "
        "WHERE n.nspname = current_schema() AND c.relkind IN ('r', 'p') "
        "AND c.relname = ANY(?) ORDER BY c.relname", (names,))
    for table, owns, *privs in rows:
        if owns:
            out.append(f"role {role} owns table {table} (it can drop its triggers)")
            continue
        if superuser:
            continue
        extra = [p for p, has in zip(_PRIVILEGES, privs, strict=True)
                 if has and p not in GRANTED[str(table)]]
        out.extend(f"role {role} may {p} {table}" for p in extra)
    return out
