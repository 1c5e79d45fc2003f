"""Shared helpers of the break-glass, access-review and acknowledgement tests: a ledger with
the access tables on either store (PostgreSQL: migrated by the owner role, opened as the app
role), and the bodies of one entry kind; and issue 11 finding 7's forged access rows (what an
insider with write access inserts), shared by tests/collector/test_grants_chain.py and the
findings table (tests/e2e/test_insider_findings.py)."""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pytest

from collector.ledger.postgres import PostgresStore
from collector.ledger.sqlbase import SQLStore
from collector.ledger.sqlite import SQLiteStore
from collector.ledger.tables import ensure_schema, migrate_postgres

if TYPE_CHECKING:
    from tests.collector.api_kit import Api


@contextmanager
def access_store(store_kind: str, sqlite_path: Path, request: pytest.FixtureRequest
                 ) -> Iterator[SQLStore]:
    store: SQLStore
    if store_kind == "sqlite":
        store = SQLiteStore(sqlite_path)
    else:
        pg = request.getfixturevalue("pg_ledger")
        migrate_postgres(pg.owner_dsn, pg.app_role)        # the access tables
        store = PostgresStore(pg.app_dsn)
    try:
        ensure_schema(store)
        yield store
    finally:
        store.close()


def bodies(store: SQLStore, kind: str, since: int = 0) -> list[dict[str, Any]]:
    return [json.loads(se.body) for se in store.entries(since)
            if se.entry.kind == kind and se.body is not None]


# -- finding 7 (issue 11): access rows written behind the ledger ------------------------------

FORGED = "tct_" + "A" * 43          # a well-formed token the attacker knows


def token_hash(token: str) -> str:
    return hashlib.sha256(token.encode()).hexdigest()


def token_entry_idx(store: SQLStore, principal: str) -> int:
    return next(int(r[0]) for r in store.query(
        "SELECT entry_idx FROM tc_tokens WHERE principal = ?", (principal,)))


def forged_access_rows(store: SQLStore) -> list[tuple[str, tuple[Any, ...]]]:
    """What an insider with write access inserts: a principal with roles, and a token for it
    that points at another token's real entry (so only the entry's body betrays it)."""
    idx = token_entry_idx(store, "hr-reader")
    return [
        ("INSERT INTO tc_principals (name, kind, created_at, created_by, roles_idx) "
         "VALUES (?, 'token', 1, 'cli:x', ?)", ("mallory", idx)),
        ("INSERT INTO tc_roles (principal, role, granted_at, granted_by) "
         "VALUES ('mallory', 'hr.read', 1, 'cli:x')", ()),
        ("INSERT INTO tc_tokens (id, principal, hash, created_at, created_by, expires_at, "
         "entry_idx) VALUES ('tok-mallory000', 'mallory', ?, 1, 'cli:x', ?, ?)",
         (token_hash(FORGED), 2**62, idx)),
    ]


async def bearer_status(api: Api, path: str, token: str) -> tuple[int, str]:
    resp = await api.client.get(path, headers={"Authorization": f"Bearer {token}"})
    return resp.status, await resp.text()
