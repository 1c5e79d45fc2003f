"""The PostgreSQL ledger store (psycopg 3), for several collectors sharing one ledger.

Each append runs in one transaction that first takes ``pg_advisory_xact_lock(LOCK_KEY)``:
collectors append one after another, each reading the chain head only after the previous
one committed (READ COMMITTED sees it), so the chain stays one chain. The schema's triggers
refuse a second entry at the same idx or with a wrong ``prev`` anyway.

Collectors connect as the app role, which may only INSERT/SELECT the chain and the Merkle
tree's node table; ``migrate`` runs as the owner role (the app role never runs DDL), grants
exactly that, and upgrades a version 1 ledger by building its tree (collector.ledger.tree)
under the chain lock, so no append interleaves; collectors refuse a ledger whose schema is
not version 2 until then.

A lost connection (server restart, network) makes the store unavailable
(LedgerUnavailableError) instead of failing every call forever with "the connection is
closed": :meth:`SQLStore.reconnect` opens a new one, checks the schema again and settles an
append whose COMMIT was in flight (collector.ledger.indoubt). Connections use TCP keepalives,
so a peer that vanished without a reset is noticed in about half a minute, and a reconnect
gives up after ``RECONNECT_TIMEOUT_S``.
"""

from __future__ import annotations

import re
from collections.abc import Iterator, Sequence
from contextlib import contextmanager, suppress
from typing import Any

import psycopg
from psycopg import sql
from psycopg.conninfo import make_conninfo

from collector import LedgerError, LedgerUnavailableError
from collector.ledger import tree
from collector.ledger.row_check import ENROLMENT_SQL, RowChecker
from collector.ledger.schema_postgres import GRANTS, SCHEMA, SCHEMA_VERSION, SET_VERSION
from collector.ledger.sqlbase import PunchQuery, PunchRow, SQLStore, guarded_rows

# Arbitrary constant identifying "the chain head of this database" among advisory locks.
LOCK_KEY = 0x74696D65636C6B  # "timeclk"
EXPORT_ITERSIZE = 2000
RECONNECT_TIMEOUT_S = 5
# libpq keepalives: a silent peer is detected after about idle + interval × count seconds.
KEEPALIVES = {"keepalives": 1, "keepalives_idle": 10, "keepalives_interval": 5,
              "keepalives_count": 3}


def redact(dsn: str) -> str:
    """A DSN safe to print: the password (URL or key=value form) replaced by ***."""
    dsn = re.sub(r"(://[^:/@]*:)[^@]*@", r"\1***@", dsn)
    return re.sub(r"(password\s*=\s*)\S+", r"\1***", dsn, flags=re.IGNORECASE)


def _connect(dsn: str, **params: Any) -> psycopg.Connection[tuple[Any, ...]]:
    try:
        return psycopg.connect(make_conninfo(dsn, **KEEPALIVES, **params), autocommit=True)
    except psycopg.Error as e:
        raise LedgerError(f"cannot connect to PostgreSQL ledger {redact(dsn)}: "
                          f"{str(e).strip().splitlines()[0] if str(e).strip() else e}") from e


def migrate(owner_dsn: str, *, app_role: str | None = None) -> int:
    """Create or update the schema as the owner role; grant ``app_role`` its narrow rights.

    Builds the Merkle tree of the entries it does not cover yet (a version 1 ledger) under the
    chain lock and records version 2 after it; returns how many leaves were added."""
    with _connect(owner_dsn) as conn:
        try:
            with conn.transaction():
                conn.execute("SELECT pg_advisory_xact_lock(%s)", (LOCK_KEY + 1,))
                conn.execute(SCHEMA)
                with conn.cursor() as cur:
                    cur.execute("SELECT pg_advisory_xact_lock(%s)", (LOCK_KEY,))
                    leaves = tree.build(cur, tree.PG_TREE, source=owner_dsn)
                    cur.execute(SET_VERSION)
                if app_role is not None:
                    for stmt in GRANTS.strip().splitlines():
                        conn.execute(sql.SQL(stmt.rstrip(";")).format(
                            role=sql.Identifier(app_role)))
        except psycopg.Error as e:
            raise LedgerError(f"migrating {redact(owner_dsn)} failed: {e}") from e
    return leaves


class PostgresStore(SQLStore):
    """A ledger in one PostgreSQL database (already migrated; see ``migrate``)."""

    ph = "%s"
    db_errors = (psycopg.Error,)
    tree_sql = tree.PG_TREE

    def __init__(self, dsn: str) -> None:
        super().__init__()
        self._dsn = dsn
        self._conn = self._open(_connect(dsn))

    @property
    def dsn(self) -> str:
        """The connection string this store was opened with (collector.ledger.readers)."""
        return self._dsn

    def _open(self, conn: psycopg.Connection[tuple[Any, ...]]
              ) -> psycopg.Connection[tuple[Any, ...]]:
        """``conn`` once the ledger schema is checked on it (closed and raised otherwise)."""
        dsn = self._dsn
        try:
            row = conn.execute("SELECT value FROM meta WHERE key = 'schema'").fetchone()
        except psycopg.Error as e:
            conn.close()
            if self._unavailable(e, conn):
                raise LedgerUnavailableError(f"{redact(dsn)}: {str(e).strip()[:300]}") from e
            raise LedgerError(f"{redact(dsn)}: no ledger schema here (run `timeclock-collector "
                              f"migrate` as the owner role first): "
                              f"{str(e).splitlines()[0]}") from e
        if row is None or int(row[0]) != SCHEMA_VERSION:
            conn.close()
            raise LedgerError(f"{redact(dsn)}: ledger schema version {row and row[0]} is not "
                              f"{SCHEMA_VERSION} (run `timeclock-collector migrate` as the "
                              f"owner role to upgrade it)")
        return conn

    def _unavailable(self, e: Exception,
                     conn: psycopg.Connection[tuple[Any, ...]] | None = None) -> bool:
        # Class 08 (connection exception), 57P (admin/crash shutdown, cannot connect now),
        # or a connection psycopg knows is gone ("the connection is closed").
        if not isinstance(e, psycopg.OperationalError):
            return False
        c = conn if conn is not None else getattr(self, "_conn", None)
        if c is not None and (c.closed or c.broken):
            return True
        return (e.sqlstate or "").startswith(("08", "57P"))

    def _reopen(self) -> None:
        with suppress(psycopg.Error):   # it is gone already; closing is only hygiene
            self._conn.close()
        try:
            conn = psycopg.connect(make_conninfo(self._dsn, **KEEPALIVES,
                                                 connect_timeout=RECONNECT_TIMEOUT_S),
                                   autocommit=True)
        except psycopg.OperationalError as e:
            # Refused, starting up, shutting down, unreachable: still away.
            raise LedgerUnavailableError(
                f"cannot reconnect to PostgreSQL ledger {redact(self._dsn)}: "
                f"{str(e).strip().splitlines()[-1][:300] if str(e).strip() else e}") from e
        except psycopg.Error as e:
            raise LedgerError(f"cannot reconnect to PostgreSQL ledger {redact(self._dsn)}: "
                              f"{str(e).strip()[:300]}") from e
        self._conn = self._open(conn)

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

    def punch_chunks(self, queries: Sequence[PunchQuery], *,
                     run_keys: dict[bytes, bytes | None] | None = None
                     ) -> Iterator[Iterator[PunchRow]]:
        # A server-side cursor per query on its own connection, in one transaction: the
        # export streams in pages of EXPORT_ITERSIZE rows from one snapshot, never
        # materialising the result.
        conn = _connect(self._dsn)
        try:
            with conn.transaction():
                check = RowChecker(lambda device: conn.execute(
                    ENROLMENT_SQL.replace("?", "%s"), (device,)).fetchone(),
                    self.plain_opener(run_keys), self._unmemoised_blind)
                for n, query in enumerate(queries):
                    text, params = query.sql("%s")
                    with conn.cursor(name=f"tc_payroll_{n}") as cur:
                        cur.itersize = EXPORT_ITERSIZE
                        cur.execute(text, params)
                        yield guarded_rows(check.rows(cur), (psycopg.Error,))
        except psycopg.Error as e:
            raise LedgerError(f"reading punches failed: {e}") from e
        finally:
            conn.close()

    def close(self) -> None:
        with self._lock:
            self._conn.close()
