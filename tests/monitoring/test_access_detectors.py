"""The detectors over the access ledger (collector.ingest.detectors_access; D13, D8): grant
changes, export volume and after-hours reads of personal data, judged from the real
``access`` entries that the access commands (both stores) and the API (its access log)
record; each an ``alert`` naming the principal, once per window or local day."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import pytest

from collector.access.directory import Principals
from collector.ingest.alerts import Alerts
from collector.ingest.detectors import DetectorSettings, read_detector_section
from collector.ingest.detectors_access import AccessSettings, AccessWatch
from collector.ledger import checkpoint_tables
from collector.ledger.postgres import PostgresStore
from collector.ledger.sqlbase import SQLStore
from collector.ledger.sqlite import SQLiteStore
from collector.ledger.tables import ensure_schema, migrate_postgres
from collector.service.config import load_config
from collector.service.runner import CollectorService
from tests.collector.api_kit import Api, seed, start_api
from tests.collector.punch_kit import T0
from tests.collector.test_reviews import CONFIG
from wire.config import Section

S = 1_000_000


def _watch(store: SQLStore, settings: AccessSettings, now: int) -> tuple[AccessWatch, Alerts]:
    alerts = Alerts(record=True, clock=lambda: now)
    watch = AccessWatch(alerts, settings)
    assert watch.tick(store, now) == []          # the baseline: history is not judged
    return watch, alerts


def _recorded(store: SQLStore, alerts: Alerts, now: int) -> list[dict[str, Any]]:
    """Record the queued alerts in ``store``; every ``alert`` entry body in it."""
    alerts.flush(lambda facts: store.append(facts, now_us=now))
    return [json.loads(e.body) for e in store.entries()
            if e.entry.kind == "alert" and e.body is not None]


@pytest.fixture
def astore(store_kind: str, sqlite_path: Path, request: pytest.FixtureRequest
           ) -> Iterator[SQLStore]:
    """A ledger with the access tables, on both stores (PostgreSQL: migrated by the owner)."""
    store: SQLStore
    if store_kind == "sqlite":
        store = SQLiteStore(sqlite_path)
    else:
        pg = request.getfixturevalue("pg_ledger")
        migrate_postgres(pg.owner_dsn, pg.app_role)
        store = PostgresStore(pg.app_dsn)
    try:
        ensure_schema(store)
        yield store
    finally:
        store.close()


def test_d13_d8_grant_changes_alert_naming_the_actor(astore: SQLStore) -> None:
    store = astore
    principals = Principals(store)
    principals.create_token("boot-admin", ["admin"], expires_days=30, actor="cli:test",
                            now_us=T0)
    watch, alerts = _watch(store, AccessSettings(), T0 + S)
    principals.create_principal("svc-ops", "token", ["ops.devices"], actor="boot-admin",
                                now_us=T0 + 2 * S)
    principals.set_roles("svc-ops", ["ops.devices", "audit.read"], actor="boot-admin",
                         now_us=T0 + 3 * S)
    principals.create_token("svc-ops", ["audit.read", "ops.devices"], expires_days=7,
                            actor="svc-ops", now_us=T0 + 4 * S)   # a credential, no grant
    got = watch.tick(store, T0 + 5 * S)
    assert [(a.kind, a.severity) for a in got] == [("grant-change", 3)] * 2
    assert [a.kind for a in alerts.recent()] == ["grant-change"] * 2
    assert [(b["alert"], b["principal"], b["action"]) for b in _recorded(
        store, alerts, T0 + 5 * S)] == [("grant-change", "boot-admin", "principal.create"),
                                        ("grant-change", "boot-admin", "roles.set")]
    assert "principal.create of svc-ops by boot-admin" in got[0].detail
    assert "roles.set of svc-ops by boot-admin" in got[1].detail
    assert watch.tick(store, T0 + 6 * S) == []             # each entry judged once
    off, _ = _watch(store, AccessSettings(grant_changes=False), T0 + 7 * S)
    principals.set_roles("svc-ops", ["ops.devices"], actor="boot-admin", now_us=T0 + 8 * S)
    assert off.tick(store, T0 + 9 * S) == []


@pytest.fixture
async def api(sqlite_store: SQLiteStore) -> AsyncIterator[Api]:
    seed(sqlite_store)                                     # 2 clocks × 5 punches
    a = await start_api(sqlite_store)
    try:
        yield a
    finally:
        await a.client.close()


async def _get(api: Api, path: str, who: str) -> None:
    resp = await api.call("GET", path, who)
    assert resp.status == 200, await resp.text()
    await resp.read()


async def test_d13_export_volume_and_after_hours_reads_from_the_access_log(api: Api) -> None:
    # the app's clock starts at 2025-11-26 07:16 UTC, a Wednesday
    settings = AccessSettings(export_rows_max=15, export_window_s=3600,
                              business_hours="08:00-18:00", business_days="mon-fri")
    watch, _ = _watch(api.store, settings, api.clock.now)
    await _get(api, "/v1/punches", "hr-reader")            # 10 rows, at 07:16: after hours
    await _get(api, "/v1/checkpoints", "auditor")          # not personal data
    await api.flush()
    got = watch.tick(api.store, api.clock.now)
    assert [(a.kind, a.severity) for a in got] == [("after-hours-read", 2)]
    assert "hr-reader read personal data (/v1/punches" in got[0].detail
    assert "Wed 07:16 UTC" in got[0].detail
    await _get(api, "/v1/punches", "hr-reader")            # 20 rows in the hour: over 15
    await _get(api, "/v1/punches", "hr-reader")            # same day, same window: once each
    await api.flush()
    got = watch.tick(api.store, api.clock.now)
    assert [a.kind for a in got] == ["export-volume"]
    assert "hr-reader received 20 rows" in got[0].detail
    api.clock.advance(2 * 3600)                            # 09:16: working hours, new window
    await _get(api, "/v1/punches", "hr-reader")
    await api.flush()
    assert watch.tick(api.store, api.clock.now) == []
    api.clock.advance(3 * 86_400 + 3600)                   # Saturday 10:16
    await _get(api, "/v1/punches", "hr-reader")
    await api.flush()
    assert [a.kind for a in watch.tick(api.store, api.clock.now)] == ["after-hours-read"]


async def test_d13_access_detectors_off_by_default_for_hours_and_by_zero_for_volume(
        api: Api) -> None:
    watch, _ = _watch(api.store, AccessSettings(export_rows_max=0), api.clock.now)
    for _ in range(3):
        await _get(api, "/v1/punches", "hr-reader")
    await api.flush()
    assert watch.tick(api.store, api.clock.now) == []
    off = AccessWatch(Alerts(), DetectorSettings(enabled=False).access(), enabled=False)
    assert off.tick(api.store, api.clock.now) == []


def test_d13_business_hours_keys_are_checked() -> None:
    problems: list[str] = []
    read_detector_section(Section("detectors", {
        "business_hours": "18:00-08:00", "business_days": "weekdays",
        "business_timezone": "Mars/Olympus", "export_rows_max": -1}, problems))
    text = "\n".join(problems)
    for key in ("business_hours", "business_days", "business_timezone", "export_rows_max"):
        assert f"detectors.{key}" in text, key
    s = read_detector_section(Section("detectors", {
        "business_hours": "06:00-20:00", "business_days": "sun-thu",
        "business_timezone": "Asia/Jerusalem", "grant_changes": False}))
    assert s.access() == AccessSettings(grant_changes=False, business_hours="06:00-20:00",
                                        business_days="sun-thu",
                                        business_timezone="Asia/Jerusalem")


def test_d13_the_service_tick_judges_new_access_entries(sqlite_store: SQLiteStore,
                                                        tmp_path: Path) -> None:
    path = tmp_path / "collector.toml"
    path.write_text(CONFIG)
    cfg = load_config(path)
    ensure_schema(sqlite_store)                              # the side tables serve makes
    checkpoint_tables.ensure_schema(sqlite_store)
    principals = Principals(sqlite_store)
    principals.create_token("boot-admin", ["admin"], expires_days=30, actor="cli:test",
                            now_us=T0)
    now = [T0 + 10 * S]
    svc = CollectorService(cfg, store=sqlite_store, clock=lambda: now[0])
    svc._tick(now[0], 0)                 # noqa: SLF001 - the writer's tick: the baseline
    principals.create_principal("svc-ops", "token", ["ops.devices"], actor="boot-admin",
                                now_us=now[0])
    for _ in range(3):                   # the ledger is read every 5 s; alerts flushed next
        now[0] += 6 * S
        svc._tick(now[0], 0)             # noqa: SLF001 - as above
    got = [b for b in _bodies(sqlite_store) if b["alert"] == "grant-change"]
    assert [(b["principal"], b["action"]) for b in got] == [("boot-admin", "principal.create")]


def _bodies(store: SQLStore) -> list[dict[str, Any]]:
    return [json.loads(e.body) for e in store.entries()
            if e.entry.kind == "alert" and e.body is not None]
