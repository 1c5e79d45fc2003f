"""Crashes during steady ingest (controls D4, D5): the collector killed with SIGKILL 20 times
(SQLite and PostgreSQL), the broker killed and restarted. Afterwards every punch is in the
ledger exactly once, the chain and the audit bundle verify, and every clock's queue is empty.
"""

from __future__ import annotations

import signal
import time
from pathlib import Path

import pytest

from tests.e2e.sitekit import (
    Site,
    assert_exactly_once,
    bundle_verifies,
    running_site,
    simulated,
    wait_for,
)
from tests.fixtures.postgres import PgDatabase

KILLS = 20


def _ledger_size(site: Site) -> int:
    return sum(p.highest for p in site.progress().values())


def _start(site: Site, clocks: int, *, interval_s: float, count: int) -> None:
    site.prepare()
    site.start_broker()
    site.start_collector()
    for i in range(clocks):
        site.add_clock(f"clock-{i + 1}", simulated(interval_s=interval_s, count=count))


def _all_recorded(site: Site, count: int) -> None:
    """The simulated readers are done: every clock recorded ``count`` punches."""
    wait_for(lambda: all(c.queue_stats()[1] == count for c in site.clocks), 60,
             f"every clock to record {count} punches")


def _kill_collector_repeatedly(site: Site) -> None:
    for _ in range(KILLS):
        before = _ledger_size(site)
        # Kill only once this incarnation has made progress: each kill hits live ingest.
        wait_for(lambda b=before: _ledger_size(site) > b, 30, "ingest progress")
        site.kill_collector("main", signal.SIGKILL)
        site.start_collector("main")


@pytest.mark.parametrize("backend", ["sqlite", "postgresql"])
def test_d5_collector_sigkill_20_times(tmp_path: Path, backend: str,
                                       request: pytest.FixtureRequest) -> None:
    store_url = None
    if backend == "postgresql":
        db: PgDatabase = request.getfixturevalue("pg_ledger")
        store_url = db.app_dsn
    with running_site(tmp_path / "site", store_url=store_url) as site:
        _start(site, 3, interval_s=0.1, count=150)
        _kill_collector_repeatedly(site)
        _all_recorded(site, 150)
        wait_for(site.drained, 60, "the clocks' queues to drain")
        assert_exactly_once(site)
        bundle_verifies(site, tmp_path / "bundle")


def test_d4_broker_killed_and_restarted_during_ingest(tmp_path: Path) -> None:
    with running_site(tmp_path / "site") as site:
        _start(site, 3, interval_s=0.1, count=120)
        broker = site.broker
        assert broker is not None
        for _ in range(3):
            before = _ledger_size(site)
            wait_for(lambda b=before: _ledger_size(site) > b + 10, 30, "ingest progress")
            restarts = broker.restarts
            broker.kill()   # SIGKILL: a crash; the supervisor restarts it
            wait_for(lambda r=restarts: broker.restarts > r and broker.running, 30,
                     "the supervisor to restart the broker")
        before = _ledger_size(site)
        wait_for(lambda: _ledger_size(site) > before + 10, 30, "ingest progress")
        broker.pause()      # a clean stop and an outage of 3 s
        time.sleep(3)       # the deliberate outage
        broker.start()
        _all_recorded(site, 120)
        wait_for(site.drained, 60, "the clocks' queues to drain")
        assert_exactly_once(site)
        bundle_verifies(site, tmp_path / "bundle")
