"""Issue 13 item 5 (controls D12, D13): what anyone who can reach the port can add to the
append-only ledger is bounded. Liveness probes are never access entries; requests without an
authenticated principal are tallied per (source address, minute), at most ``sources_max + 1``
entries a minute; the throttle keys on the credential as well as the address, so a valid
token keeps working from an address that a flood of bad ones throttles; a burst raises one
alert (an ``alert`` entry and ``timeclock_alerts_total``)."""

from __future__ import annotations

import json
from typing import Any

from collector.api import ApiSettings
from collector.api.access_log import MINUTE_US, OTHERS, AccessRecord, Aggregates, Throttle
from collector.ingest.metrics import sample_value
from collector.ledger.sqlite import SQLiteStore
from tests.collector.api_kit import access_bodies, requests_of, seed, start_api
from tests.polling import await_for

FLOOD = 3000            # bad requests: a fixed count, not a duration
STEP = 500              # the injected clock moves STEP_S after every STEP of them
STEP_S = 30
VALID_EVERY = 100


def _alerts(store: SQLiteStore) -> list[dict[str, Any]]:
    return [json.loads(e.body) for e in store.entries()
            if e.entry.kind == "alert" and e.body is not None]


def _burst_count() -> float:
    return sample_value("timeclock_alerts_total",
                        {"kind": "api-unauthenticated-burst", "severity": "2"}) or 0.0


def _bad_request(i: int) -> tuple[str, dict[str, str]]:
    """A fuzz-like mix: a fresh bad token, the same bad token again, a bad scheme, none at
    all, an unknown route, a liveness probe."""
    kind = i % 6
    if kind == 0:
        return "/v1/punches", {"Authorization": f"Bearer tct_{i:043d}"}
    if kind == 1:
        return "/v1/exports/payroll", {"Authorization": "Bearer tct_" + "Z" * 43}
    if kind == 2:
        return "/v1/devices", {"Authorization": f"Basic {i}"}
    if kind == 3:
        return "/v1/corrections", {}
    if kind == 4:
        return f"/v1/nothing-{i}", {}
    return "/healthz", {}


async def test_d12_d13_flood_is_bounded_valid_token_keeps_working_healthz_unrecorded(
        sqlite_store: SQLiteStore) -> None:
    seed(sqlite_store)
    bursts_before = _burst_count()
    api = await start_api(sqlite_store, settings=ApiSettings(auth_failures_max=10,
                                                             auth_failures_window_s=300))
    started_at = api.clock.now
    sent: dict[int, int] = {}
    valid = 0
    try:
        for i in range(FLOOD):
            path, headers = _bad_request(i)
            resp = await api.client.get(path, headers=headers)
            await resp.read()
            if path != "/healthz":
                sent[resp.status] = sent.get(resp.status, 0) + 1
            else:
                assert resp.status == 200
            if i % VALID_EVERY == 0:
                # the same address, throttled for every bad credential: a valid token works
                ok = await api.call("GET", "/v1/punches?limit=1", "hr-reader")
                assert ok.status == 200, await ok.text()
                valid += 1
            if (i + 1) % STEP == 0:
                api.clock.advance(STEP_S)
        assert sent.get(429, 0) > FLOOD // 3        # the attacker is throttled …
        assert set(sent) <= {401, 404, 429}
        await await_for(lambda: [a for a in _alerts(sqlite_store)
                                 if a["alert"] == "api-unauthenticated-burst"], 60,
                        "the api-unauthenticated-burst alert entry")
    finally:
        await api.client.close()                    # flushes the last tallies
    ended_at = api.clock.now
    minutes = (ended_at // MINUTE_US) - (started_at // MINUTE_US) + 1
    bodies = access_bodies(sqlite_store)
    tallies = [b for b in bodies if b["type"] == "unauthenticated"]
    requests = requests_of(sqlite_store)
    # (1) bounded: one source, so at most one tally a minute (cap: sources_max + 1)
    assert 1 <= len(tallies) <= minutes
    assert len({(t["minute"], t["client"]) for t in tallies}) == len(tallies)
    admin = [b for b in bodies if b["type"] == "admin"]        # the kit's tokens, before
    assert len(bodies) == len(tallies) + valid + len(admin)
    # (2) nothing lost: every bad request is counted, by status
    counted: dict[int, int] = {}
    for t in tallies:
        for status, n in t["statuses"].items():
            counted[int(status)] = counted.get(int(status), 0) + n
    assert counted == sent
    # (3) the valid token's requests are entries of their own; /healthz never appears
    assert [(r["principal"], r["status"]) for r in requests] == [("hr-reader", 200)] * valid
    assert not any("healthz" in json.dumps(t["routes"]) for t in tallies)
    assert not any("tct_" in json.dumps(b) for b in bodies)     # no credential recorded
    # (4) one burst, one alert (the flood is one burst: every minute of it is over the bar)
    bursts = [a for a in _alerts(sqlite_store) if a["alert"] == "api-unauthenticated-burst"]
    assert len(bursts) == 1
    assert _burst_count() == bursts_before + 1


def _rec(client: str, at: int, status: int = 401) -> AccessRecord:
    return AccessRecord(request_id="r", at=at, method="GET", path="/v1/punches", query={},
                        client=client, route="/v1/punches", auth="token", status=status,
                        outcome="unauthenticated" if status == 401 else "throttled")


def test_d12_tallies_capped_per_minute_the_rest_counted_as_others() -> None:
    agg = Aggregates(sources_max=100, others_sources_max=500, burst_per_minute=10**9)
    t0 = 1_764_000_000 * 1_000_000 // MINUTE_US * MINUTE_US
    sent = 0
    for minute in range(3):
        for i in range(5000):                       # 1000 addresses, 5 requests each
            agg.add(_rec(f"10.0.{i % 1000 // 250}.{i % 250}", t0 + minute * MINUTE_US + i))
            sent += 1
    assert agg.due(t0 + MINUTE_US) != []            # minute 0 is over, 1 and 2 are open
    bodies = agg.due(t0 + 2 * MINUTE_US) + agg.drain()
    assert agg.drain() == []
    assert len(bodies) == 2 * 101
    others = [b for b in bodies if b["client"] == OTHERS]
    assert len(others) == 2
    assert all(b["count"] == 900 * 5 for b in others)
    assert all(b["sources"] == 500 and b["sources_capped"] is True for b in others)
    assert sum(b["count"] for b in bodies) == 2 * 5000


def test_d12_burst_is_one_alert_while_it_lasts() -> None:
    agg = Aggregates(burst_per_minute=5)
    t0 = 1_764_000_000 * 1_000_000 // MINUTE_US * MINUTE_US
    starts = [agg.add(_rec("10.0.0.1", t0 + m * MINUTE_US + i))
              for m in (0, 1, 2, 4) for i in range(7)]
    # minutes 0-2 are one burst; minute 3 is quiet, so minute 4 is a new one
    assert [i for i, s in enumerate(starts) if s] == [4, 3 * 7 + 4]


def test_d13_throttle_keys_on_address_and_credential() -> None:
    th = Throttle(max_failures=3, window_s=60)
    now = 10**15
    for i in range(3):
        assert th.retry_after_s("10.0.0.1", "bad", now + i) is None
        th.failed("10.0.0.1", "bad", now + i)
    assert th.retry_after_s("10.0.0.1", "bad", now + 10) == 60     # the same credential
    assert th.retry_after_s("10.0.0.2", "bad", now + 10) is None   # from elsewhere: not
    assert th.retry_after_s("10.0.0.1", "good", now + 10) is None  # another credential: not
    assert th.address_retry_after_s("10.0.0.1", now + 10) == 60    # but the address is
    assert th.address_retry_after_s("10.0.0.1", now + 61_000_000) is None
    assert th.retry_after_s("10.0.0.1", "bad", now + 61_000_000) is None
