"""The collector tests' ledger fixtures, once.

- ``store_kind`` / ``store_url`` / ``store``: one ledger per test, parametrized over both stores
  (``[sqlite]``: a file in tmp_path; ``[postgresql]``: a fresh database of the real cluster,
  migrated by the owner role, opened as the collector's narrow app role). A test that takes
  ``store`` runs against both.
- ``sqlite_store``: a SQLite ledger only, for tests that poke at the SQLite file itself or that
  exercise something store-independent (the API's views).
- ``api``: the real API application over ``sqlite_store`` with seeded clocks and tokens.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import TYPE_CHECKING

import pytest

from collector.ledger import open_store
from collector.ledger.sqlbase import SQLStore
from collector.ledger.sqlite import SQLiteStore

if TYPE_CHECKING:
    from tests.collector.api_kit import Api

STORE_KINDS = ("sqlite", "postgresql")


@pytest.fixture(params=STORE_KINDS)
def store_kind(request: pytest.FixtureRequest) -> str:
    kind: str = request.param
    return kind


@pytest.fixture
def sqlite_path(tmp_path: Path) -> Path:
    return tmp_path / "ledger.db"


@pytest.fixture
def store_url(store_kind: str, sqlite_path: Path, request: pytest.FixtureRequest) -> str:
    if store_kind == "sqlite":
        return f"sqlite://{sqlite_path}"   # sqlite:///abs/path (tmp_path is absolute)
    dsn: str = request.getfixturevalue("pg_ledger").app_dsn
    return dsn


@pytest.fixture
def store(store_url: str) -> Iterator[SQLStore]:
    s = open_store(store_url)
    try:
        yield s
    finally:
        s.close()


@pytest.fixture
def sqlite_store(sqlite_path: Path) -> Iterator[SQLiteStore]:
    s = SQLiteStore(sqlite_path)
    try:
        yield s
    finally:
        s.close()


@pytest.fixture
async def api(sqlite_store: SQLiteStore) -> AsyncIterator[Api]:
    # Imported here: the ledger fixtures above must not depend on the API's imports.
    from tests.collector.api_kit import seed, start_api  # noqa: PLC0415

    clocks = seed(sqlite_store)
    a = await start_api(sqlite_store, clocks=clocks)
    try:
        yield a
    finally:
        await a.client.close()
