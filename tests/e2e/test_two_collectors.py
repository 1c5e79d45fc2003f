"""Two collector processes on one PostgreSQL ledger behind the MQTT v5 shared subscription
(DESIGN.md §4): ten clocks, each punch recorded exactly once, one valid chain (control D5)."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.e2e.site_kit import (
    assert_exactly_once,
    bundle_verifies,
    running_site,
    simulated,
    wait_for,
)
from tests.fixtures.postgres import PgDatabase

pytestmark = [pytest.mark.mqtt, pytest.mark.subprocess]   # a whole site: real processes

CLOCKS = 10
COUNT = 40


def test_d5_two_collectors_one_postgres_ten_clocks(tmp_path: Path,
                                                    pg_ledger: PgDatabase) -> None:
    with running_site(tmp_path / "site", store_url=pg_ledger.app_dsn) as site:
        site.prepare(collectors=("a", "b"))
        site.start_broker()
        site.start_collector("a")
        site.start_collector("b")
        for name in ("a", "b"):
            log = site.root / "collectors" / name / "serve.log"
            wait_for(lambda f=log: f.exists() and "MQTT subscribed" in f.read_text(), 60,
                     f"collector {name} to subscribe")
        for i in range(CLOCKS):
            site.add_clock(f"clock-{i + 1:02d}", simulated(interval_s=0.1, count=COUNT))
        wait_for(lambda: all(c.queue_stats()[1] == COUNT for c in site.clocks), 120,
                 "every clock to record its punches")
        wait_for(site.drained, 120, "the clocks' queues to drain")
        assert_exactly_once(site)
        out = bundle_verifies(site, tmp_path / "bundle")
        assert f"punches: {CLOCKS * COUNT}" in out
        assert all(p.poll() is None for p in site.collectors.values())
