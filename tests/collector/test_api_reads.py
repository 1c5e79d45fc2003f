"""Where the API's reads run (collector.api.reads): inline on the event loop only through a
reader connection of its own that never waits for a writer, and the same answers as before —
a revocation committed on the writer is refused by the very next request, and a credential's
use is still written, at most once a minute."""

from __future__ import annotations

from pathlib import Path

from collector.access.directory import Principals
from collector.api.reads import INLINE_READS
from collector.ledger.postgres import PostgresStore
from collector.ledger.sqlite import SQLiteStore
from tests.collector.api_kit import seed, start_api
from tests.fixtures.postgres import PgDatabase


async def test_a_sqlite_reader_of_its_own_reads_inline_and_sees_every_commit(
        sqlite_store: SQLiteStore, sqlite_path: Path) -> None:
    seed(sqlite_store, devices=1, punches=3)
    reader = SQLiteStore(sqlite_path)
    api = await start_api(sqlite_store, reader=reader)
    try:
        assert api.client.server.app[INLINE_READS] is True
        resp = await api.call("GET", "/v1/punches", "hr-reader")
        assert resp.status == 200, await resp.text()
        assert [r["seq"] for r in (await resp.json())["items"]] == [1, 2, 3]
        # A revocation committed on the writer: the inline reader refuses the next request.
        tid = next(t.id for t in Principals(sqlite_store).tokens("ops"))
        assert (await api.call("GET", "/v1/devices", "ops")).status == 200
        assert (await api.call("POST", f"/v1/tokens/{tid}/revoke", "admin")).status == 200
        assert (await api.call("GET", "/v1/devices", "ops")).status == 401
        # The use of a credential is written on the writer, once a minute, not per request.
        def last_used() -> int | None:
            p = Principals(sqlite_store).get("hr-reader")
            assert p is not None
            return p.last_used_at
        first = last_used()
        assert first is not None
        for _ in range(3):
            assert (await api.call("GET", "/v1/punches", "hr-reader")).status == 200
        assert last_used() == first
        api.clock.advance(61)
        assert (await api.call("GET", "/v1/punches", "hr-reader")).status == 200
        later = last_used()
        assert later is not None
        assert later > first
    finally:
        await api.client.close()
        reader.close()


async def test_no_reader_of_its_own_keeps_the_reads_in_threads(
        sqlite_store: SQLiteStore) -> None:
    seed(sqlite_store, devices=1, punches=1)
    api = await start_api(sqlite_store)        # the reader is the writer: it may wait
    try:
        assert api.client.server.app[INLINE_READS] is False
        assert (await api.call("GET", "/v1/punches", "hr-reader")).status == 200
    finally:
        await api.client.close()


async def test_a_postgresql_reader_keeps_the_reads_in_threads(pg_ledger: PgDatabase) -> None:
    from collector.cli.main import main as cli_main  # noqa: PLC0415 - as test_api_postgres

    assert cli_main(["migrate", "--store", pg_ledger.owner_dsn,
                     "--app-role", pg_ledger.app_role]) == 0
    store, reader = PostgresStore(pg_ledger.app_dsn), PostgresStore(pg_ledger.app_dsn)
    seed(store, devices=1, punches=2)
    api = await start_api(store, reader=reader)
    try:
        assert api.client.server.app[INLINE_READS] is False   # a network round trip each
        resp = await api.call("GET", "/v1/punches", "hr-reader")
        assert [r["seq"] for r in (await resp.json())["items"]] == [1, 2]
    finally:
        await api.client.close()
        reader.close()
        store.close()

