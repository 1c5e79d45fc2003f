"""Scheduled reviews through the API (issue 14 item 3; D13): ``GET /v1/reviews/due`` lists the
periods of the configured schedule that ended and are not signed off (due, or overdue after
their grace), ``POST /v1/reviews/{kind}/sign-off`` records a sign-off entry naming the calling
principal (``audit.review`` only), with strict bodies and the same refusals as the CLI; the
``[reviews]`` schedule of the collector config reaches the API."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from collector.api.keys import ApiSettings
from collector.ledger.sqlite import SQLiteStore
from collector.ledger.tables import ensure_schema
from collector.records import reviews
from collector.service.config import load_config
from tests.collector.api_kit import Api, issue_tokens, requests_of, start_api
from tests.collector.punch_kit import T0

SCHEDULE = reviews.ReviewSettings(start="2025-11-20", daily_grace_s=86_400,
                                  access_grace_s=3 * 86_400)


@pytest.fixture
async def api(sqlite_store: SQLiteStore) -> AsyncIterator[Api]:
    ensure_schema(sqlite_store)
    mine = issue_tokens(sqlite_store, T0, {"reviewer": ("audit.review",)})
    a = await start_api(sqlite_store, settings=ApiSettings(reviews=SCHEDULE))
    a.tokens.update(mine)
    try:
        yield a
    finally:
        await a.client.close()


async def _due(api: Api, who: str = "auditor") -> list[tuple[str, str, str]]:
    resp = await api.call("GET", "/v1/reviews/due", who)
    assert resp.status == 200
    return [(d["review"], d["period"], d["status"]) for d in (await resp.json())["items"]]


async def test_d13_api_lists_due_reviews_and_a_reviewer_signs_them_off(api: Api) -> None:
    # the app's clock: 2025-11-26 07:16 UTC — days up to 11-24 are past their day of grace,
    # 11-25 is due; ISO week 47 (11-17 to 11-23) ended, its three days of grace run
    days = [f"2025-11-{d}" for d in range(20, 26)]
    assert await _due(api) == [
        *(("daily-alerts", d, "overdue") for d in days[:-1]),
        ("daily-alerts", "2025-11-25", "due"), ("access-sample", "2025-W47", "due")]
    assert await _due(api, "reviewer") == await _due(api)
    for who in ("hr-reader", "admin", "ops"):
        resp = await api.call("GET", "/v1/reviews/due", who)
        assert resp.status == 403, who
    resp = await api.call("GET", "/v1/reviews/due?review=daily-alerts", "auditor")
    assert resp.status == 400

    before = api.store.head()[0]
    url = "/v1/reviews/daily-alerts/sign-off"
    for who in ("auditor", "admin"):                   # reading is not reviewing
        resp = await api.call("POST", url, who, json={"note": "n"})
        assert resp.status == 403, who
    for body, status, says in (
            ({}, 400, "missing note"), ({"note": ""}, 400, "must not be empty"),
            ({"note": "n", "by": "mallory"}, 400, "unknown field"),
            ({"note": 7}, 400, "note"), ({"note": "n", "period": "2025-13-45"}, 400, "period"),
            ({"note": "n", "period": "2025-W47"}, 400, "period"),
            ({"note": "n", "period": "2025-11-26"}, 409, "not over yet")):
        resp = await api.call("POST", url, "reviewer", json=body)
        assert resp.status == status, body
        assert says in (await resp.json())["detail"], body
    resp = await api.call("POST", "/v1/reviews/weekly/sign-off", "reviewer", json={"note": "n"})
    assert resp.status == 404
    assert [se for se in api.store.entries(before) if se.entry.kind == "review"] == []

    # no period: the oldest one due
    resp = await api.call("POST", url, "reviewer", json={"note": "alerts of the day read"})
    assert resp.status == 201
    got = await resp.json()
    assert (got["review"], got["period"], got["by"], got["alerts"]) == (
        "daily-alerts", "2025-11-20", "reviewer", 0)
    (entry,) = [se for se in api.store.entries(before) if se.entry.kind == "review"]
    assert entry.entry.idx == got["idx"]
    assert entry.body is not None
    assert json.loads(entry.body)["by"] == "reviewer"
    resp = await api.call("POST", url, "reviewer", json={"note": "n", "period": "2025-11-20"})
    assert resp.status == 409
    assert "was signed off" in (await resp.json())["detail"]
    assert ("daily-alerts", "2025-11-20", "overdue") not in await _due(api)

    # the weekly access sample: drawn in the entry, re-performable from it
    resp = await api.call("POST", "/v1/reviews/access-sample/sign-off", "reviewer",
                          json={"note": "sample checked", "period": "2025-W47"})
    assert resp.status == 201
    sample = await resp.json()
    assert sample["population"] == len(sample["sampled"])   # fewer than 25 access entries
    assert reviews.check_sample(api.store, sample["idx"]).ok
    assert ("access-sample", "2025-W47", "due") not in await _due(api)
    await api.flush()
    signed = [b for b in requests_of(api.store) if b.get("status") == 201
              and "review_idx" in b.get("extra", {})]
    assert sorted(b["extra"]["review_idx"] for b in signed) == sorted(
        [got["idx"], sample["idx"]])


async def test_d13_api_reviews_follow_defaults_without_a_schedule(
        sqlite_store: SQLiteStore) -> None:
    api = await start_api(sqlite_store)               # no [reviews]: the CLI's defaults
    try:
        items = await _due(api)
        # the ledger began at the app's first entries (2025-11-26): nothing has ended yet
        assert items == []
    finally:
        await api.client.close()


CONFIG = """
[collector]
name = "a"
store = "sqlite:///var/lib/timeclock/ledger.db"
log_key = "keys/log.key"

[mqtt]
host = "127.0.0.1"
port = 8883
ca_cert = "tls/ca.pem"
cert = "tls/collector.pem"
key = "tls/collector.key"

[api]
cert = "tls/api.pem"
key = "tls/api.key"
"""


def test_d13_the_reviews_schedule_of_the_config_reaches_the_api(tmp_path: Path) -> None:
    path = tmp_path / "collector.toml"
    path.write_text(CONFIG)
    cfg = load_config(path)
    assert cfg.api is not None
    assert cfg.api.settings({}).reviews is None
    path.write_text(CONFIG + '\n[reviews]\nstart = "2025-11-20"\ndaily_grace_s = 3600\n')
    cfg = load_config(path)
    assert cfg.api is not None
    assert cfg.api.settings({}).reviews == cfg.reviews == reviews.ReviewSettings(
        start="2025-11-20", daily_grace_s=3600)
