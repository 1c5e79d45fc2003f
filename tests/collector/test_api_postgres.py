"""PostgreSQL smoke test: the same API over a PostgreSQL ledger (access tables migrated by
the owner role, the collector connected as the narrow app role)."""

from __future__ import annotations

import json

from collector.cli.main import main as cli_main
from collector.ledger.postgres import PostgresStore
from tests.collector.api_kit import requests_of, seed, start_api
from tests.fixtures.postgres import PgDatabase


async def test_postgres_smoke_tokens_punches_correction_access_log(pg_ledger: PgDatabase
                                                                   ) -> None:
    # The operator's one migrate command prepares the ledger and the access tables.
    assert cli_main(["migrate", "--store", pg_ledger.owner_dsn,
                     "--app-role", pg_ledger.app_role]) == 0
    store = PostgresStore(pg_ledger.app_dsn)
    seed(store, devices=1, punches=3)
    api = await start_api(store)
    try:
        resp = await api.call("GET", "/v1/punches?format=ndjson", "hr-reader")
        assert resp.status == 200
        rows = [json.loads(x) for x in (await resp.text()).splitlines()]
        assert [r["seq"] for r in rows] == [1, 2, 3]
        resp = await api.call("GET", "/v1/punches?limit=2", "hr-reader")
        page = await resp.json()
        resp = await api.call("GET", f"/v1/punches?limit=2&cursor={page['next']}",
                              "hr-reader")
        assert [r["seq"] for r in (await resp.json())["items"]] == [3]
        resp = await api.call("POST", "/v1/corrections", "editor", json={
            "device": "clock-00", "seq": 1, "field": "action", "after": "in",
            "reason": "wrong-action"})
        assert resp.status == 201, await resp.text()
        cid = (await resp.json())["id"]
        resp = await api.call("POST", f"/v1/corrections/{cid}/approve", "approver")
        assert resp.status == 200, await resp.text()
        resp = await api.call("GET", "/v1/punches", "admin")
        assert resp.status == 403
        resp = await api.call("GET", "/v1/verification", "auditor")
        assert (await resp.json())["ok"] is True
    finally:
        await api.client.close()
    recs = requests_of(store)
    assert [(r["principal"], r["status"]) for r in recs] == [
        ("hr-reader", 200), ("hr-reader", 200), ("hr-reader", 200), ("editor", 201),
        ("approver", 200), ("admin", 403), ("auditor", 200)]
    kinds = [se.entry.kind for se in store.entries()]
    assert kinds.count("correction") == 1
    store.close()
