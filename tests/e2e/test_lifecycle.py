"""Enrol → run → rotate → revoke, end to end with real processes (controls D1, D2, D3, D17).

Real ``timeclock-agent`` processes enrolled through ``init`` → ``device enroll`` →
``provision``; a real ``timeclock-collector serve``; the managed Mosquitto with mTLS.
"""

from __future__ import annotations

import json
import re
import time
from pathlib import Path

import pytest

from collector.ledger import open_store
from collector.ledger.sqlbase import PunchQuery
from tests.e2e.site_kit import bundle_verifies, cli, running_site, simulated, wait_for
from tests.fixtures.mosquitto import mqtt_probe
from wire.tls import client_context

pytestmark = [pytest.mark.mqtt, pytest.mark.subprocess]   # a whole site: real processes


def test_d1_d3_d17_enrol_rotate_revoke(tmp_path: Path) -> None:
    with running_site(tmp_path / "site") as site:
        site.prepare()
        site.start_broker()
        site.start_collector()
        a = site.add_clock("clock-a", simulated(interval_s=0.2, count=0, action="in"))
        b = site.add_clock("clock-b", simulated(interval_s=0.2, count=50, action="out"))
        cfg = str(site.collector_config())
        wait_for(lambda: site.progress()["clock-a"].contiguous >= 5, 60, "first punches")

        # -- rotation: a new key made on the clock, registered from its signed request
        site.stop_clock(a)
        _, last = a.queue_stats()
        r = cli("agent.provision", "rotate-key", "--config", str(a.config))
        assert r.returncode == 0, r.stderr
        m = re.search(r"rotation request:\s+(\S+)", r.stdout)
        assert m is not None, r.stdout
        request = json.loads(Path(m.group(1)).read_text())["rotation"]
        assert request["from_seq"] == last + 1
        r = cli("collector.cli.main", "device", "rotate-key", "--config", cfg,
                "--request", m.group(1))
        assert r.returncode == 0, r.stderr
        site.start_clock(a)
        from_seq = request["from_seq"]
        wait_for(lambda: site.progress()["clock-a"].contiguous >= from_seq + 5, 60,
                 "punches under the new key")
        store = open_store(site.store_url)
        try:
            rows = list(store.punch_rows(PunchQuery(device="clock-a")))
        finally:
            store.close()
        assert {r.key_id for r in rows if r.seq < from_seq} == {request["old_key"]}
        assert {r.key_id for r in rows if r.seq >= from_seq} == {request["key"]}
        bundle_verifies(site, tmp_path / "bundle-rotated")

        # -- revocation in the ledger: the clock's new punches are quarantined, not acked
        r = cli("collector.cli.main", "device", "revoke", "--config", cfg, "--device", "clock-a",
                "--reason", "stolen")
        assert r.returncode == 0, r.stderr

        def quarantined() -> bool:
            s = open_store(site.store_url)
            try:
                return any(q.reason == "device-revoked" and "clock-a" in q.topic
                           for q in s.quarantine(limit=1000))
            finally:
                s.close()
        wait_for(quarantined, 60, "a device-revoked rejection for clock-a")
        assert a.queue_stats()[0] > 0  # never acked: the clock keeps them

        # -- certificate revoked, CRL reloaded, the LIVE session cut: refused within 5 s
        ctx = client_context(a.directory / "ca.crt", a.directory / "tls.crt",
                             a.directory / "tls.key")
        log = site.root / "broker" / "mosquitto.log"
        agent_connects = log.read_text().count("as clock-a (p5")
        assert mqtt_probe("127.0.0.1", site.port, ctx, client_id="probe-a").accepted
        # The broker forces the client id to the CN: the probe replaced the clock's session.
        # Wait until the clock is connected again, so there is a live session to cut.
        wait_for(lambda: log.read_text().count("as clock-a (p5") > agent_connects, 60,
                 "clock-a to reconnect after the probe")
        kicked_before = log.read_text().count("clock-a been disconnected")
        t0 = time.monotonic()
        r = cli("collector.cli.main", "device", "revoke", "--config", cfg, "--ca",
                str(site.root / "ca"), "--device", "clock-a", "--reason", "stolen",
                "--cert-reason", "key-compromise")
        assert r.returncode == 0, r.stderr
        # The 5 s of the control run from the revoke command's completion (CRL written, broker
        # told): the command's own Python start-up is machine speed, not revocation latency.
        t1 = time.monotonic()
        wait_for(lambda: log.read_text().count("clock-a been disconnected") > kicked_before,
                 60, "the broker to drop clock-a's session")
        refused = mqtt_probe("127.0.0.1", site.port, ctx, client_id="probe-a2")
        elapsed = time.monotonic() - t1
        assert not refused.accepted, refused.detail
        assert elapsed < 5.0, f"revocation took {elapsed:.2f} s after the revoke command"
        print(f"revocation: live session cut and new connection refused {elapsed:.2f} s after "
              f"the revoke command ({time.monotonic() - t0:.2f} s including it; "
              f"{r.stdout.strip().splitlines()[-1]})")

        # -- the other clock is unaffected; everything still verifies
        wait_for(lambda: site.drained([b]), 120, "clock-b to drain")
        bundle_verifies(site, tmp_path / "bundle-revoked")
