"""Crashes during steady ingest (controls D4, D5): the collector killed with SIGKILL 20 times
(SQLite and PostgreSQL), the broker killed and restarted. Afterwards every punch is in the
ledger exactly once, the chain and the audit bundle verify, and every clock's queue is empty.

The clocks are tapped (:class:`Taps`) until the fault loop is done, so every kill hits live
ingest however long each kill/restart cycle takes on this machine; the exactly-once checks
then hold for whatever was tapped.
"""

from __future__ import annotations

import signal
import time
from pathlib import Path

import pytest

from tests.e2e.site_kit import (
    Site,
    Taps,
    assert_exactly_once,
    bundle_verifies,
    running_site,
    tapped_clock,
    wait_for,
)
from tests.fixtures.postgres import PgDatabase

pytestmark = [pytest.mark.mqtt, pytest.mark.subprocess]   # a whole site: real processes

KILLS = 20
INTERVAL_S = 0.1


def _ledger_size(site: Site) -> int:
    return sum(p.highest for p in site.progress().values())


def _start(site: Site, clocks: int) -> Taps:
    site.prepare()
    site.start_broker()
    site.start_collector()
    for i in range(clocks):
        tapped_clock(site, f"clock-{i + 1}")
    return Taps(site.clocks, interval_s=INTERVAL_S)


def _progress(site: Site, before: int, more: int = 0) -> None:
    wait_for(lambda: _ledger_size(site) > before + more, 120,
             f"ingest progress past {before + more} ledger punches")


def _kill_collector_repeatedly(site: Site) -> None:
    for _ in range(KILLS):
        # Kill only once this incarnation has made progress: each kill hits live ingest.
        _progress(site, _ledger_size(site))
        site.kill_collector("main", signal.SIGKILL)
        site.start_collector("main")


@pytest.mark.parametrize("backend", ["sqlite",
                                     pytest.param("postgresql", marks=pytest.mark.postgres)])
def test_d5_collector_sigkill_20_times(tmp_path: Path, backend: str,
                                       request: pytest.FixtureRequest) -> None:
    store_url = None
    if backend == "postgresql":
        db: PgDatabase = request.getfixturevalue("pg_ledger")
        store_url = db.app_dsn
    with running_site(tmp_path / "site", store_url=store_url) as site:
        taps = _start(site, 3)
        _kill_collector_repeatedly(site)
        taps.stop_and_drain(site)
        assert_exactly_once(site)
        bundle_verifies(site, tmp_path / "bundle")


def test_d4_broker_killed_and_restarted_during_ingest(tmp_path: Path) -> None:
    with running_site(tmp_path / "site") as site:
        taps = _start(site, 3)
        broker = site.broker
        assert broker is not None
        for _ in range(3):
            _progress(site, _ledger_size(site), 10)
            restarts = broker.restarts
            broker.kill()   # SIGKILL: a crash; the supervisor restarts it
            wait_for(lambda r=restarts: broker.restarts > r and broker.running, 60,
                     "the supervisor to restart the broker")
        _progress(site, _ledger_size(site), 10)
        broker.pause()      # a clean stop and an outage of 3 s
        time.sleep(3)       # the deliberate outage (the clocks keep queueing taps)
        broker.start()
        _progress(site, _ledger_size(site), 10)   # ingest resumed after the outage
        taps.stop_and_drain(site)
        assert_exactly_once(site)
        bundle_verifies(site, tmp_path / "bundle")
