"""The mutable tables beside the chain: access (principals, roles, tokens) and corrections.

They sit in the ledger's database (SQLite file or PostgreSQL) but are not part of the hash
chain: they hold state (last use, revocation, a proposal's status). Every change to them is
recorded as a ledger entry in the same transaction (collector.access, collector.records), so
the chain is their audit trail. SQLite creates them on open (:func:`ensure_schema`); on
PostgreSQL the owner role creates them when migrating (:func:`migrate_postgres`), and the
collector's app role may change them (they are state, not the record).
"""

from __future__ import annotations

import psycopg
from psycopg import sql as pgsql

from collector import LedgerError
from collector.ledger import access_tables
from collector.ledger.postgres import redact
from collector.ledger.sqlbase import SQLStore

SCHEMA = """
CREATE TABLE IF NOT EXISTS tc_principals (
    name          TEXT PRIMARY KEY,
    kind          TEXT NOT NULL,
    created_at    BIGINT NOT NULL,
    created_by    TEXT NOT NULL,
    last_used_at  BIGINT,
    disabled_at   BIGINT,
    roles_idx     BIGINT              -- the access entry that set its roles (access_tables)
);
CREATE TABLE IF NOT EXISTS tc_roles (
    principal   TEXT NOT NULL,
    role        TEXT NOT NULL,
    granted_at  BIGINT NOT NULL,
    granted_by  TEXT NOT NULL,
    PRIMARY KEY (principal, role)
);
CREATE TABLE IF NOT EXISTS tc_tokens (
    id            TEXT PRIMARY KEY,
    principal     TEXT NOT NULL,
    hash          TEXT NOT NULL UNIQUE,
    created_at    BIGINT NOT NULL,
    created_by    TEXT NOT NULL,
    expires_at    BIGINT NOT NULL,
    last_used_at  BIGINT,
    revoked_at    BIGINT,
    revoked_by    TEXT,
    entry_idx     BIGINT              -- the token.create entry that issued it
);
CREATE TABLE IF NOT EXISTS tc_grants (
    id            TEXT PRIMARY KEY,
    principal     TEXT NOT NULL,
    roles         TEXT NOT NULL,
    requested_by  TEXT NOT NULL,
    requested_at  BIGINT NOT NULL,
    request_idx   BIGINT NOT NULL,
    status        TEXT NOT NULL,
    decided_by    TEXT,
    decided_at    BIGINT,
    decided_idx   BIGINT
);
CREATE TABLE IF NOT EXISTS tc_corrections (
    id              TEXT PRIMARY KEY,
    device          TEXT NOT NULL,
    seq             BIGINT NOT NULL,
    original_idx    BIGINT NOT NULL,
    field           TEXT NOT NULL,
    before_value    TEXT NOT NULL,
    after_value     TEXT NOT NULL,
    reason          TEXT NOT NULL,
    note            TEXT NOT NULL,
    editor          TEXT NOT NULL,
    proposed_at     BIGINT NOT NULL,
    status          TEXT NOT NULL,
    approver        TEXT,
    decided_at      BIGINT,
    decision_note   TEXT,
    correction_idx  BIGINT
);
CREATE INDEX IF NOT EXISTS tc_corrections_punch ON tc_corrections (device, seq);
CREATE INDEX IF NOT EXISTS tc_corrections_status ON tc_corrections (status, proposed_at);
"""
TABLES = ("tc_principals", "tc_roles", "tc_tokens", "tc_corrections", "tc_grants")
GRANTS = "\n".join(f"GRANT SELECT, INSERT, UPDATE, DELETE ON {t} TO {{role}};" for t in TABLES)


def ensure_schema(store: SQLStore) -> None:
    """Create the tables in a SQLite ledger; check they exist in a PostgreSQL one."""
    if store.ph != "?":
        have = store.query("SELECT COUNT(*) FROM information_schema.tables "
                           "WHERE table_name = ANY(?)", (list(TABLES),))
        if int(have[0][0]) != len(TABLES):
            raise LedgerError("the access tables are missing in this PostgreSQL ledger: run "
                              "`timeclock-collector migrate` as the owner role")
        return
    store.create_tables(SCHEMA)
    access_tables.upgrade_sqlite(store)    # entry columns of older files, access triggers


def migrate_postgres(owner_dsn: str, app_role: str | None = None) -> None:
    """Create the tables as the owner role and let ``app_role`` use them."""
    try:
        with psycopg.connect(owner_dsn, autocommit=True) as conn, conn.transaction():
            for stmt in SCHEMA.split(";"):
                if stmt.strip():
                    conn.execute(stmt)
            for stmt in access_tables.PG_UPGRADE:
                conn.execute(stmt)
            if app_role is not None:
                for g in GRANTS.splitlines():
                    conn.execute(pgsql.SQL(g.rstrip(";")).format(
                        role=pgsql.Identifier(app_role)))
    except psycopg.Error as e:
        raise LedgerError(f"creating the access tables in {redact(owner_dsn)} failed: "
                          f"{e}") from e
