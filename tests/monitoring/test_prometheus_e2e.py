"""End to end with a real Prometheus (Debian's package, tests/fixtures/prometheus.py) scraping a
live site (lab.site through tests/e2e/site_kit.py): a real collector with ``[metrics]``, two
clocks with their loopback metrics, the shipped rules with ``for: 0s``.

- a scrape of the collector and of a clock passes ``promtool check metrics``;
- a badge tapped at both clocks fires the collector's buddy-punch detector (an ``alert``
  entry naming both punches) and Prometheus's TimeclockBuddyPunch alert;
- stopping a clock fires the collector's clock-offline detector (an ``alert`` entry) and
  Prometheus's TimeclockClockOffline alert for that device.

Everything is awaited by condition through Prometheus's own HTTP API and the ledger, with
generous deadlines; nothing sleeps.
"""

from __future__ import annotations

import json
import subprocess
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from collector.ledger import open_store
from lab.site import SITE_NAME, Clock, PtyFeed
from tests.e2e.site_kit import Site, running_site, wait_for
from tests.fixtures.prometheus import PROMTOOL, Factory, PrometheusServer, fast_rules, free_port

pytestmark = [pytest.mark.mqtt, pytest.mark.subprocess]   # a whole site: real processes

RULES = Path(__file__).resolve().parents[2] / "monitoring" / "timeclock.rules.yml"


@dataclass
class Watched:
    site: Site
    collector_port: int
    clocks: dict[str, tuple[Clock, int]]     # device → (clock, its metrics port)


def _clock_with_metrics(site: Site, device: str) -> tuple[Clock, int]:
    """A clock reading badge lines from a pty (like site_kit.tapped_clock), with ``[metrics]``
    on a free loopback port."""
    d = site.root / "clocks" / device
    d.mkdir(parents=True, exist_ok=True)
    feed = PtyFeed(d / "reader.tty")
    readers = {"desk": {"kind": "serial-line", "port": str(feed.link), "format": "wiegand26",
                        "regex": r"W26:([0-9]{1,10})", "action": "punch", "debounce_s": 0.0}}
    try:
        clock = site.add_clock(device, readers, start=False)
    except BaseException:
        feed.close()
        raise
    clock.feeds.append(feed)
    port = free_port()
    clock.config.write_text(clock.config.read_text() + f"\n[metrics]\nport = {port}\n")
    site.start_clock(clock)
    return clock, port


@pytest.fixture
def watched(tmp_path: Path) -> Iterator[Watched]:
    with running_site(tmp_path / "site") as site:
        site.prepare()
        port = free_port()
        cfg = site.collector_config()
        cfg.write_text(cfg.read_text() + f"\n[metrics]\nport = {port}\n\n"
                       "[detectors]\noffline_after_s = 2\n")
        site.start_broker()
        site.start_collector()
        clocks = {d: _clock_with_metrics(site, d) for d in ("clock-a", "clock-b")}
        yield Watched(site, port, clocks)


def scrape(port: int) -> str:
    def get() -> str | None:
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as r:  # noqa: S310 - loopback http
                return str(r.read().decode())
        except OSError:
            return None
    return wait_for(get, 90, f"a scrape of 127.0.0.1:{port}")


def check_metrics(text: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([PROMTOOL, "check", "metrics"], input=text, capture_output=True,  # noqa: S603 - the packaged promtool
                          text=True, timeout=60, check=False)


def alert_entries(site: Site) -> list[dict[str, Any]]:
    store = open_store(site.store_url)
    try:
        return [json.loads(e.body) for e in store.entries()
                if e.entry.kind == "alert" and e.body is not None]
    finally:
        store.close()


def test_d13_scrapes_of_collector_and_clock_pass_promtool(watched: Watched) -> None:
    wait_for(lambda: 'timeclock_device_online{device="clock-a"}' in scrape(
        watched.collector_port), 120, "the collector to hear clock-a's status")
    collector = scrape(watched.collector_port)
    agent = scrape(watched.clocks["clock-a"][1])
    for name, text in (("collector", collector), ("agent", agent)):
        r = check_metrics(text)
        assert r.returncode == 0, f"{name}: {r.stdout}{r.stderr}"
    for metric in ("timeclock_ingest_latency_seconds_bucket", "timeclock_store_append_seconds",
                   "timeclock_alerts_total", "timeclock_certificate_expiry_timestamp_seconds",
                   "timeclock_crl_next_update_timestamp_seconds",
                   "timeclock_device_last_seen_timestamp_seconds",
                   "timeclock_ingest_pending_messages"):
        assert metric in collector, metric
    for metric in ("timeclock_agent_queue_depth", "timeclock_agent_oldest_unacked_age_seconds",
                   "timeclock_agent_clock_synced", "timeclock_agent_broker_connected",
                   "timeclock_agent_certificate_expiry_timestamp_seconds"):
        assert metric in agent, metric
    # the check can fail: a counter without the conventional suffix is refused
    bad = check_metrics("# HELP x a counter\n# TYPE x counter\nx 1\n")
    assert bad.returncode != 0
    assert '"_total" suffix' in bad.stdout + bad.stderr


def test_d13_prometheus_sees_a_buddy_punch_and_an_offline_clock(
        watched: Watched, prometheus_factory: Factory, tmp_path: Path) -> None:
    site = watched.site
    (a, _), (b, _) = watched.clocks["clock-a"], watched.clocks["clock-b"]
    prom: PrometheusServer = prometheus_factory(
        {"timeclock-collector": [f"127.0.0.1:{watched.collector_port}"],
         "timeclock-agent": [f"127.0.0.1:{p}" for _, p in watched.clocks.values()]},
        rules=[fast_rules(RULES, tmp_path / "fast.rules.yml")])
    wait_for(lambda: (h := prom.targets_up()) and len(h) == 3
             and all(v == "up" for v in h.values()), 120, "every target up in Prometheus")
    wait_for(lambda: prom.query('timeclock_device_online{device="clock-b"} == 1'), 120,
             "Prometheus to see clock-b online")
    # both readers have opened their pty (a line written before would be flushed unread)
    wait_for(lambda: len(prom.query('timeclock_agent_reader_open{reader="desk"} == 1')) == 2,
             120, "both clocks' readers open, seen through Prometheus")
    # Prometheus has the buddy-punch counter at 0 before the alert (increase() needs it)
    wait_for(lambda: prom.query('timeclock_alerts_total{kind="buddy-punch"} == 0'), 60,
             "the buddy-punch counter at 0 in Prometheus")
    assert prom.firing("TimeclockBuddyPunch") == []

    # -- one badge at both clocks within a second: buddy punching ---------------------------
    a.feeds[0].write(b"W26:777\r\n")
    b.feeds[0].write(b"W26:777\r\n")
    wait_for(lambda: [e for e in alert_entries(site) if e["alert"] == "buddy-punch"], 120,
             "a buddy-punch alert entry in the ledger")
    (buddy,) = [e for e in alert_entries(site) if e["alert"] == "buddy-punch"]
    assert sorted(buddy["devices"]) == ["clock-a", "clock-b"]
    assert f"site {SITE_NAME}" in buddy["detail"]
    assert "777" not in json.dumps(buddy), "the alert entry must not carry the badge"
    firing = wait_for(lambda: prom.firing("TimeclockBuddyPunch"), 120,
                      "Prometheus's TimeclockBuddyPunch alert to fire")
    assert firing[0]["labels"]["team"] == "compliance"

    # -- stop a clock: offline -------------------------------------------------------------
    assert prom.firing("TimeclockClockOffline") == []
    site.stop_clock(b)
    wait_for(lambda: [e for e in alert_entries(site)
                      if e["alert"] == "clock-offline" and e["device"] == "clock-b"], 120,
             "a clock-offline alert entry for clock-b in the ledger")
    firing = wait_for(lambda: prom.firing("TimeclockClockOffline", device="clock-b"), 120,
                      "Prometheus's TimeclockClockOffline alert for clock-b")
    assert firing[0]["labels"]["severity"] == "warning"
    assert prom.firing("TimeclockClockOffline", device="clock-a") == []
    assert not [e for e in alert_entries(site)
                if e["alert"] == "clock-offline" and e["device"] == "clock-a"]
