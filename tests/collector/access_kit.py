"""Shared helpers of the break-glass, access-review and acknowledgement tests: a ledger with
the access tables on either store (PostgreSQL: migrated by the owner role, opened as the app
role), and the bodies of one entry kind."""

from __future__ import annotations

import json
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest

from collector.ledger.postgres import PostgresStore
from collector.ledger.sqlbase import SQLStore
from collector.ledger.sqlite import SQLiteStore
from collector.ledger.tables import ensure_schema, migrate_postgres


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
