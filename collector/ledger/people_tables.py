"""The people directory's projection: ``tc_employees`` and ``tc_badges``, and the one badge
resolution every punch read uses.

The record is the chain: every change is an ``employee`` or ``badge`` entry (docs/protocol.md
§7.2), recorded by collector.people in the same transaction as the rows here. The tables are
its projection, rebuilt-able from the entries (collector.people.directory.replay):

- ``tc_employees``: one row per employee, the latest ``employee`` entry's record
  (``changed_idx``); ``created_idx`` is the first one's.
- ``tc_badges``: the periods of each credential, never overlapping: ``[valid_from,
  valid_until)`` (``valid_until`` NULL: open) with ``status`` ``assigned`` (held by
  ``employee_id``), ``lost`` or ``blocked`` (``employee_id``: who held it then, or NULL).
  A period is keyed by (credential, valid_from), which is also the index a punch resolves by.

Invariants enforced by the database (schema_sqlite / schema_postgres create the DDL below,
schema_check compares its triggers): no row is ever deleted; an update comes only from a
later entry (``changed_idx`` grows) and changes nothing of a period but its end — or, under a
``shred`` entry (an erasure), its credential to ``(erased) <idx>`` — nothing of an employee
but the record (never its id or ``created_idx``). On PostgreSQL the app role may
SELECT, INSERT and UPDATE them, nothing else.

Resolution (:class:`BadgeResolver`) happens when punches are read, not when they are
recorded: a badge assigned retroactively resolves the punches it covers the next time they
are read. One query per page (or one per export) loads the periods; each punch is then a
binary search in memory — never a query per row.
"""

from __future__ import annotations

from bisect import bisect_right
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass, replace
from typing import TYPE_CHECKING, Any

from collector import LedgerError
from collector.ledger.pg_guards import forbid
from wire.bodies_people import Employee, employee_record

if TYPE_CHECKING:   # no import at run time: schema_sqlite/schema_postgres import this module
    from collector.ledger.body_crypto import BodySealer
    from collector.ledger.sqlbase import SQLStore, Tx

TABLES = ("tc_employees", "tc_badges")
NAME_COLUMN = "tc_employees.name"   # sealed at rest on a keyed ledger (DESIGN.md §8.6)
BADGE_COLUMN = "tc_badges.credential"   # sealed deterministically (a key and a lookup)
# What an erasure (a ``shred`` entry) leaves in tc_badges.credential of the person's periods,
# + the period's idx (unique, never a credential: CREDENTIAL_RE has no space or parenthesis).
ERASED_BADGE = "(erased) "
UPDATABLE = TABLES            # the app role's UPDATE grant (rows change only as above)

_REFUSE = "(the ledger is append-only)"


def _table_statements(integer: str, suffix: str) -> tuple[str, ...]:
    """The tables and their indexes: SQLite's and PostgreSQL's differ only in the integer
    type and SQLite's ``WITHOUT ROWID``."""
    return (
        f"""CREATE TABLE IF NOT EXISTS tc_employees (
    employee_id  TEXT PRIMARY KEY,
    name         TEXT NOT NULL,
    department   TEXT NOT NULL,
    site         TEXT NOT NULL,
    timezone     TEXT NOT NULL,
    manager_id   TEXT,
    status       TEXT NOT NULL,
    active_from  TEXT NOT NULL,
    left_on      TEXT,
    created_idx  {integer} NOT NULL,
    changed_idx  {integer} NOT NULL
)""",
        "CREATE INDEX IF NOT EXISTS tc_employees_manager ON tc_employees (manager_id)",
        f"""CREATE TABLE IF NOT EXISTS tc_badges (
    credential   TEXT NOT NULL,
    valid_from   {integer} NOT NULL,
    valid_until  {integer},
    employee_id  TEXT,
    status       TEXT NOT NULL,
    idx          {integer} NOT NULL,
    changed_idx  {integer} NOT NULL,
    PRIMARY KEY (credential, valid_from)
){suffix}""",
        "CREATE INDEX IF NOT EXISTS tc_badges_employee ON tc_badges (employee_id, valid_from)",
    )


def _sqlite_no_delete(table: str) -> str:
    return (f"CREATE TRIGGER IF NOT EXISTS {table}_no_delete BEFORE DELETE ON {table}\n"
            f"BEGIN SELECT RAISE(ABORT, 'timeclock: DELETE on {table} refused {_REFUSE}'); END")


def _pg_guards(table: str) -> str:
    """No DELETE or TRUNCATE; UPDATE only through ``<table>_update()``."""
    return (forbid(table, "DELETE", truncate=True)
            + f"CREATE OR REPLACE TRIGGER {table}_update BEFORE UPDATE ON {table}\n"
            f"    FOR EACH ROW EXECUTE FUNCTION {table}_update();\n")


SQLITE_TABLE_STATEMENTS = _table_statements("INTEGER", " WITHOUT ROWID")
SQLITE_TRIGGER_STATEMENTS: tuple[str, ...] = (
    _sqlite_no_delete("tc_employees"),
    "CREATE TRIGGER IF NOT EXISTS tc_employees_update BEFORE UPDATE ON tc_employees\n"
    "WHEN NEW.employee_id IS NOT OLD.employee_id OR NEW.created_idx IS NOT OLD.created_idx\n"
    "  OR NEW.changed_idx <= OLD.changed_idx\n"
    "BEGIN SELECT RAISE(ABORT, 'timeclock: UPDATE on tc_employees refused: only a later "
    f"entry changes it {_REFUSE}'); END",
    _sqlite_no_delete("tc_badges"),
    "CREATE TRIGGER IF NOT EXISTS tc_badges_update BEFORE UPDATE ON tc_badges\n"
    "WHEN (NEW.credential IS NOT OLD.credential AND NOT (NEW.credential = '(erased) ' || "
    "OLD.idx\n"
    "      AND EXISTS (SELECT 1 FROM entries e WHERE e.idx = NEW.changed_idx\n"
    "                  AND e.kind = 'shred')))\n"
    "  OR NEW.valid_from IS NOT OLD.valid_from\n"
    "  OR NEW.employee_id IS NOT OLD.employee_id OR NEW.status IS NOT OLD.status\n"
    "  OR NEW.idx IS NOT OLD.idx OR NEW.changed_idx <= OLD.changed_idx\n"
    "BEGIN SELECT RAISE(ABORT, 'timeclock: UPDATE on tc_badges refused: only a later entry "
    "moves a period end (the ledger is append-only)'); END",
)
SQLITE_TRIGGERS = ("tc_employees_no_delete", "tc_employees_update", "tc_badges_no_delete",
                   "tc_badges_update")
# One statement each: a v1 ledger's upgrade runs them one by one (schema_sqlite.TREE_DDL);
# restoring a trigger of a ledger made before the directory first creates the tables
# (schema_check.restore_sqlite).
SQLITE_STATEMENTS = SQLITE_TABLE_STATEMENTS + SQLITE_TRIGGER_STATEMENTS
SQLITE_DDL = "".join(f"{stmt};\n" for stmt in SQLITE_STATEMENTS)

# tc_append_only() is schema_postgres's (created before this DDL in the same script).
POSTGRES_DDL = "\n" + "".join(f"{stmt};\n" for stmt in _table_statements("BIGINT", "")) + f"""
CREATE OR REPLACE FUNCTION tc_employees_update() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    IF NEW.employee_id IS DISTINCT FROM OLD.employee_id
       OR NEW.created_idx IS DISTINCT FROM OLD.created_idx
       OR NEW.changed_idx <= OLD.changed_idx THEN
        RAISE EXCEPTION 'timeclock: UPDATE on tc_employees refused: only a later employee '
                        'entry changes a record {_REFUSE}'
            USING ERRCODE = 'insufficient_privilege';
    END IF;
    RETURN NEW;
END $$;

CREATE OR REPLACE FUNCTION tc_badges_update() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    IF (NEW.credential IS DISTINCT FROM OLD.credential
        AND NOT (NEW.credential = '(erased) ' || OLD.idx AND EXISTS (
            SELECT 1 FROM entries e WHERE e.idx = NEW.changed_idx AND e.kind = 'shred')))
       OR NEW.valid_from IS DISTINCT FROM OLD.valid_from
       OR NEW.employee_id IS DISTINCT FROM OLD.employee_id
       OR NEW.status IS DISTINCT FROM OLD.status OR NEW.idx IS DISTINCT FROM OLD.idx
       OR NEW.changed_idx <= OLD.changed_idx THEN
        RAISE EXCEPTION 'timeclock: UPDATE on tc_badges refused: only a later badge entry '
                        'moves the end of a period {_REFUSE}'
            USING ERRCODE = 'insufficient_privilege';
    END IF;
    RETURN NEW;
END $$;

{_pg_guards("tc_employees")}{_pg_guards("tc_badges")}"""  # noqa: S608 - constant DDL
POSTGRES_GRANTS = "GRANT UPDATE ON tc_employees, tc_badges TO {role};\n"

_EMP_COLS = ("employee_id, name, department, site, timezone, manager_id, status, "
             "active_from, left_on, created_idx, changed_idx")
_BADGE_COLS = "credential, valid_from, valid_until, employee_id, status, idx, changed_idx"
_IN_CHUNK = 500


@dataclass(frozen=True, slots=True)
class EmployeeRow(Employee):
    """An employee's record (wire.bodies_people.Employee, the fields in that order) as
    ``tc_employees`` keeps it, with the idx of its first and of its latest entry."""

    created_idx: int
    changed_idx: int

    def record(self) -> dict[str, Any]:
        """The record as an ``employee`` body holds it (wire.bodies_people.employee_record)."""
        return employee_record(self)


@dataclass(frozen=True, slots=True)
class BadgePeriod:
    credential: str
    valid_from: int
    valid_until: int | None
    employee_id: str | None
    status: str                  # assigned | lost | blocked
    idx: int
    changed_idx: int

    def covers(self, ts: int) -> bool:
        return self.valid_from <= ts and (self.valid_until is None or ts < self.valid_until)


def _emp(r: Sequence[Any], sealer: BodySealer | None = None) -> EmployeeRow:
    name = str(r[1]) if sealer is None else sealer.column(str(r[1]), column=NAME_COLUMN,
                                                           row_id=str(r[0]))
    return EmployeeRow(str(r[0]), name, str(r[2]), str(r[3]), str(r[4]),
                       None if r[5] is None else str(r[5]), str(r[6]), str(r[7]),
                       None if r[8] is None else str(r[8]), int(r[9]), int(r[10]))


def _period(r: Sequence[Any], sealer: BodySealer | None = None) -> BadgePeriod:
    cred = str(r[0]) if sealer is None else sealer.undet(str(r[0]), column=BADGE_COLUMN)
    return BadgePeriod(cred, int(r[1]), None if r[2] is None else int(r[2]),
                       None if r[3] is None else str(r[3]), str(r[4]), int(r[5]), int(r[6]))


# -- reads ------------------------------------------------------------------------------------

def employee(store: SQLStore, employee_id: str) -> EmployeeRow | None:
    rows = store.query(f"SELECT {_EMP_COLS} FROM tc_employees WHERE employee_id = ?",  # noqa: S608 - constant columns
                       (employee_id,))
    return _emp(rows[0], store.sealer) if rows else None


def employees(store: SQLStore, *, after: str | None = None, limit: int | None = None,
              site: str | None = None, department: str | None = None,
              manager_id: str | None = None) -> list[EmployeeRow]:
    """Employees matching every given filter, by id, after the id ``after``."""
    clauses: list[str] = []
    params: list[Any] = []
    for col, val in (("site", site), ("department", department), ("manager_id", manager_id)):
        if val is not None:
            clauses.append(f"{col} = ?")
            params.append(val)
    if after is not None:
        clauses.append("employee_id > ?")
        params.append(after)
    where = (" WHERE " + " AND ".join(clauses)) if clauses else ""
    sql = f"SELECT {_EMP_COLS} FROM tc_employees{where} ORDER BY employee_id"  # noqa: S608 - values are parameters
    if limit is not None:
        sql += " LIMIT ?"
        params.append(limit)
    return [_emp(r, store.sealer) for r in store.query(sql, params)]


def periods(store: SQLStore, *, credential: str | None = None,
            employee_id: str | None = None) -> list[BadgePeriod]:
    """Badge periods of one credential or one employee (or all), by credential and start."""
    sql = f"SELECT {_BADGE_COLS} FROM tc_badges"  # noqa: S608 - constant columns
    params: list[Any] = []
    if credential is not None:
        sql += " WHERE credential = ?"
        params.append(_stored(store.sealer, credential))
    elif employee_id is not None:
        sql += " WHERE employee_id = ?"
        params.append(employee_id)
    return [_period(r, store.sealer)
            for r in store.query(sql + " ORDER BY credential, valid_from", params)]


# -- reads inside a write transaction (the directory's rules are checked under the lock) -------

def tx_employees(tx: Tx) -> dict[str, EmployeeRow]:
    return {e.employee_id: e for e in (_emp(r, tx.sealer) for r in tx.rows(
        f"SELECT {_EMP_COLS} FROM tc_employees"))}  # noqa: S608 - constant columns


def tx_periods(tx: Tx, credentials: Iterable[str]) -> dict[str, list[BadgePeriod]]:
    return _by_credential((r for sql, chunk in _credential_queries(credentials, tx.sealer)
                           for r in tx.rows(sql, chunk)), tx.sealer)


def _stored(sealer: BodySealer | None, credential: str) -> str:
    """What ``tc_badges.credential`` holds for ``credential`` (sealed on a keyed ledger)."""
    return credential if sealer is None else sealer.det(credential, column=BADGE_COLUMN)


def _credential_queries(credentials: Iterable[str], sealer: BodySealer | None = None
                        ) -> Iterator[tuple[str, list[str]]]:
    """(query, parameters) loading the periods of ``credentials``, one per 500 of them."""
    creds = sorted({_stored(sealer, c) for c in credentials})
    for i in range(0, len(creds), _IN_CHUNK):
        chunk = creds[i:i + _IN_CHUNK]
        yield (f"SELECT {_BADGE_COLS} FROM tc_badges WHERE credential IN "  # noqa: S608 - placeholders only
               f"({', '.join('?' * len(chunk))}) ORDER BY credential, valid_from", chunk)


def _by_credential(rows: Iterable[Sequence[Any]], sealer: BodySealer | None = None
                   ) -> dict[str, list[BadgePeriod]]:
    out: dict[str, list[BadgePeriod]] = {}
    for r in rows:
        p = _period(r, sealer)
        out.setdefault(p.credential, []).append(p)
    return out


# -- writes (inside the transaction that records the entry) -----------------------------------

def put_employee(tx: Tx, e: EmployeeRow, *, exists: bool) -> None:
    if tx.sealer is not None:   # the name at rest under the person's key (DESIGN.md §8.6)
        e = replace(e, name=tx.sealer.seal_column(tx, e.name, column=NAME_COLUMN,
                                                  row_id=e.employee_id,
                                                  subject=e.employee_id, idx=e.changed_idx))
    if exists:
        tx.execute("UPDATE tc_employees SET name = ?, department = ?, site = ?, timezone = ?, "
                   "manager_id = ?, status = ?, active_from = ?, left_on = ?, changed_idx = ? "
                   "WHERE employee_id = ?",
                   (e.name, e.department, e.site, e.timezone, e.manager_id, e.status,
                    e.active_from, e.left_on, e.changed_idx, e.employee_id))
    else:
        tx.execute(f"INSERT INTO tc_employees ({_EMP_COLS}) VALUES "  # noqa: S608 - constant columns
                   "(?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                   (e.employee_id, e.name, e.department, e.site, e.timezone, e.manager_id,
                    e.status, e.active_from, e.left_on, e.created_idx, e.changed_idx))


def insert_period(tx: Tx, p: BadgePeriod) -> None:
    tx.execute(f"INSERT INTO tc_badges ({_BADGE_COLS}) VALUES (?, ?, ?, ?, ?, ?, ?)",  # noqa: S608 - constant columns
               (_stored(tx.sealer, p.credential), p.valid_from, p.valid_until, p.employee_id,
                p.status, p.idx, p.changed_idx))


def set_period_end(tx: Tx, credential: str, valid_from: int, until: int | None, *,
                   changed_idx: int) -> None:
    tx.execute("UPDATE tc_badges SET valid_until = ?, changed_idx = ? "
               "WHERE credential = ? AND valid_from = ?",
               (until, changed_idx, _stored(tx.sealer, credential), valid_from))


# -- resolution ---------------------------------------------------------------------------------

UNKNOWN = (None, "unknown")
_FOREVER = 1 << 80         # beyond every µs time: a period without valid_until


class BadgeResolver:
    """Who held a credential at a device time: ``resolve(credential, ts)`` →
    ``(employee_id, badge_status)`` with status ``assigned`` (employee_id set), ``lost``,
    ``blocked`` or ``unknown`` (no period covers ts); a lost or blocked badge's punch belongs
    to nobody (employee_id None)."""

    def __init__(self, by_credential: dict[str, list[BadgePeriod]]) -> None:
        self._periods = by_credential
        self._starts = {c: [p.valid_from for p in ps] for c, ps in by_credential.items()}
        # Per credential, in valid_from order: (valid_from, valid_until or _FOREVER, answer)
        # — an export resolves every row, most badges have one period.
        self._spans = {c: [(p.valid_from, _FOREVER if p.valid_until is None else p.valid_until,
                            (p.employee_id if p.status == "assigned" else None, p.status))
                           for p in ps] for c, ps in by_credential.items()}

    @classmethod
    def load(cls, store: SQLStore, credentials: Iterable[str] | None = None) -> BadgeResolver:
        """Every period (one query; an export), or those of ``credentials`` (one query per
        500 credentials; an API page)."""
        ensure_schema(store)
        if credentials is None:
            rows = store.query(f"SELECT {_BADGE_COLS} FROM tc_badges "  # noqa: S608 - constant columns
                               "ORDER BY credential, valid_from")
        else:
            rows = [r for sql, chunk in _credential_queries(credentials, store.sealer)
                    for r in store.query(sql, chunk)]
        return cls(_by_credential(rows, store.sealer))

    def resolve(self, credential: str, ts: int) -> tuple[str | None, str]:
        spans = self._spans.get(credential)
        if not spans:
            return UNKNOWN
        if len(spans) == 1:
            start, until, answer = spans[0]
            return answer if start <= ts < until else UNKNOWN
        i = bisect_right(self._starts[credential], ts) - 1
        if i < 0:
            return UNKNOWN
        _, until, answer = spans[i]
        return answer if ts < until else UNKNOWN


def present(store: SQLStore) -> bool:
    """Does the ledger have the directory's tables (a ledger from before it may not)?"""
    if store.ph != "?":
        sql = "SELECT COUNT(*) FROM information_schema.tables WHERE table_name = ANY(?)"
        have = store.query(sql, (list(TABLES),))
    else:
        have = store.query("SELECT COUNT(*) FROM sqlite_master WHERE type = 'table' AND name "
                           "IN (?, ?)", TABLES)
    return int(have[0][0]) == len(TABLES)


def ensure_schema(store: SQLStore) -> None:
    """A SQLite ledger made before the directory gets its tables and triggers (new ledgers
    have them from schema_sqlite); a PostgreSQL one must have been migrated. Never repairs
    a trigger (schema_check reports drift, ``migrate`` repairs it)."""
    # Only a ledger without the tables gets them here: a missing trigger of existing tables is
    # schema drift, which schema_check reports and only `migrate` repairs (never a read).
    if present(store):
        return
    if store.ph != "?":
        raise LedgerError("the people directory tables are missing in this PostgreSQL "
                          "ledger: run `timeclock-collector migrate` as the owner role")
    with store.transaction(0, what="creating the people directory tables") as tx:
        for stmt in SQLITE_STATEMENTS:
            tx.execute(stmt)
