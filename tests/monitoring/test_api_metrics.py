"""The API's share of monitoring (collector.api.metrics): requests counted by route template
and status, refused credentials counted, and an address locked out by the throttle raises an
``auth-failure-burst`` alert that the API records as an ``alert`` ledger entry."""

from __future__ import annotations

import json
from typing import Any

from collector.api import ApiSettings
from collector.ingest.metrics import sample_value
from collector.ledger.sqlite import SQLiteStore
from tests.collector.api_kit import start_api
from tests.polling import await_for


def _alerts(store: SQLiteStore) -> list[dict[str, Any]]:
    return [json.loads(e.body) for e in store.entries()
            if e.entry.kind == "alert" and e.body is not None]


def _v(name: str, **labels: str) -> float:
    return sample_value(name, labels) or 0.0


async def test_d13_api_requests_and_auth_failures_are_counted_and_a_lockout_alerts(
        sqlite_store: SQLiteStore) -> None:
    api = await start_api(sqlite_store, settings=ApiSettings(auth_failures_max=3,
                                                             auth_failures_window_s=60))
    ok_before = _v("timeclock_api_requests_total", route="/v1/punches", method="GET",
                   status="200")
    denied_before = _v("timeclock_api_requests_total", route="/v1/punches", method="GET",
                       status="401")
    fails_before = _v("timeclock_api_auth_failures_total", method="token")
    try:
        assert (await api.call("GET", "/v1/punches", "hr-reader")).status == 200
        bad = {"Authorization": "Bearer tct_" + "B" * 43}
        statuses = [(await api.client.get("/v1/punches", headers=bad)).status
                    for _ in range(4)]
        assert statuses == [401, 401, 401, 429]
        entries = await await_for(lambda: _alerts(sqlite_store), 60,
                                  "the auth-failure-burst alert entry")
    finally:
        await api.client.close()
    assert _v("timeclock_api_requests_total", route="/v1/punches", method="GET",
              status="200") == ok_before + 1
    assert _v("timeclock_api_requests_total", route="/v1/punches", method="GET",
              status="401") == denied_before + 3
    assert _v("timeclock_api_auth_failures_total", method="token") == fails_before + 3
    (alert,) = entries
    assert alert["alert"] == "auth-failure-burst"
    assert alert["count"] == 3
    assert alert["client"] == "127.0.0.1"
    assert "BBBB" not in json.dumps(alert), "the refused token is never recorded"
    # no label holds a raw path or a credential
    from collector.ingest.metrics import REGISTRY  # noqa: PLC0415

    labels = {v for m in REGISTRY.collect() for s in m.samples for v in s.labels.values()}
    assert not any("BBBB" in v or "tct_" in v for v in labels)
