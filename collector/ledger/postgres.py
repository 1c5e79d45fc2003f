"""The PostgreSQL ledger store (psycopg 3), for several collectors sharing one ledger.

Each append runs in one transaction that first takes ``pg_advisory_xact_lock(LOCK_KEY)``:
collectors append one after another, each reading the chain head only after the previous
one committed (READ COMMITTED sees it), so the chain stays one chain. The schema's triggers
refuse a second entry at the same idx or with a wrong ``prev`` anyway.

Collectors connect as the app role, which may only INSERT/SELECT the chain; ``migrate`` runs
as the owner role and grants exactly that.
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import psycopg
from psycopg import sql

from collector import LedgerError
from collector.ledger.schema_postgres import GRANTS, SCHEMA, SCHEMA_VERSION
from collector.ledger.sqlbase import PunchQuery, PunchRow, SQLStore

# Arbitrary constant identifying "the chain head of this database" among advisory locks.
LOCK_KEY = 0x74696D65636C6B  # "timeclk"
EXPORT_ITERSIZE = 2000


def redact(dsn: str) -> str:
    """A DSN safe to print: the password (URL or key=value form) replaced by ***."""
    dsn = re.sub(r"(://[^:/@]*:)[^@]*@", r"\1***@", dsn)
    return re.sub(r"(password\s*=\s*)\S+", r"\1***", dsn, flags=re.IGNORECASE)


def _connect(dsn: str) -> psycopg.Connection[tuple[Any, ...]]:
    try:
        return psycopg.connect(dsn, autocommit=True)
    except psycopg.Error as e:
        raise LedgerError(f"cannot connect to PostgreSQL ledger {redact(dsn)}: "
                          f"{str(e).strip().splitlines()[0] if str(e).strip() else e}") from e


def migrate(owner_dsn: str, *, app_role: str | None = None) -> None:
    """Create or update the schema as the owner role; grant ``app_role`` its narrow rights."""
    with _connect(owner_dsn) as conn:
        try:
            with conn.transaction():
                conn.execute("SELECT pg_advisory_xact_lock(%s)", (LOCK_KEY + 1,))
                conn.execute(SCHEMA)
                if app_role is not None:
                    for stmt in GRANTS.strip().splitlines():
                        conn.execute(sql.SQL(stmt.rstrip(";")).format(
                            role=sql.Identifier(app_role)))
        except psycopg.Error as e:
            raise LedgerError(f"migrating {redact(owner_dsn)} failed: {e}") from e


class PostgresStore(SQLStore):
    """A ledger in one PostgreSQL database (already migrated; see ``migrate``)."""

    ph = "%s"
    db_errors = (psycopg.Error,)

    def __init__(self, dsn: str) -> None:
        super().__init__()
        self._dsn = dsn
        self._conn = _connect(dsn)
        try:
            row = self._conn.execute("SELECT value FROM meta WHERE key = 'schema'").fetchone()
        except psycopg.Error as e:
            self._conn.close()
            raise LedgerError(f"{redact(dsn)}: no ledger schema here (run `timeclock-collector "
                              f"migrate` as the owner role first): "
                              f"{str(e).splitlines()[0]}") from e
        if row is None or int(row[0]) != SCHEMA_VERSION:
            self._conn.close()
            raise LedgerError(f"{redact(dsn)}: ledger schema version {row and row[0]} is not "
                              f"{SCHEMA_VERSION}")

    def __repr__(self) -> str:
        return f"PostgresStore({redact(self._dsn)})"

    @contextmanager
    def _write(self) -> Iterator[Any]:
        with self._conn.transaction(), self._conn.cursor() as cur:
            cur.execute("SELECT pg_advisory_xact_lock(%s)", (LOCK_KEY,))
            yield cur

    @contextmanager
    def _read(self) -> Iterator[Any]:
        with self._conn.cursor() as cur:
            yield cur

    def _existing(self, cur: Any, pairs: set[tuple[str, int]]
                  ) -> dict[tuple[str, int], tuple[str, int]]:
        devices = [d for d, _ in pairs]
        seqs = [s for _, s in pairs]
        cur.execute(
            "SELECT p.device, p.seq, p.punch_hash, p.idx FROM punches p "
            "JOIN unnest(%s::text[], %s::bigint[]) AS q(device, seq) "
            "ON p.device = q.device AND p.seq = q.seq", (devices, seqs))
        return {(str(d), int(s)): (str(h), int(i)) for d, s, h, i in cur.fetchall()}

    def punch_rows(self, query: PunchQuery) -> Iterator[PunchRow]:
        # A server-side cursor on its own connection: the export streams in pages of
        # EXPORT_ITERSIZE rows from one snapshot, never materialising the result.
        conn = _connect(self._dsn)
        try:
            text, params = query.sql("%s")
            with conn.transaction(), conn.cursor(name="tc_payroll") as cur:
                cur.itersize = EXPORT_ITERSIZE
                cur.execute(text, params)
                for r in cur:
                    yield PunchRow(*r)
        except psycopg.Error as e:
            raise LedgerError(f"reading punches failed: {e}") from e
        finally:
            conn.close()

    def close(self) -> None:
        with self._lock:
            self._conn.close()
