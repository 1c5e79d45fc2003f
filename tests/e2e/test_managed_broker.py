"""The managed broker with the dynamic-security plugin loaded: the ACL file still decides
(a clock can neither write another clock's topic nor drive the plugin), and `device list`
reads the clocks' retained statuses across processes (controls D3, D4)."""

from __future__ import annotations

import json
import queue
import threading
from pathlib import Path
from typing import Any

import paho.mqtt.client as mqtt
import pytest
from paho.mqtt.enums import CallbackAPIVersion

from collector.fleet.broker_process import CONTROL_TOPIC, uses_plugin
from tests.e2e.site_kit import cli, running_site, simulated, wait_for
from wire.tls import client_context

pytestmark = [pytest.mark.mqtt, pytest.mark.subprocess]   # a whole site: real processes


def _client(site_port: int, ctx: Any, cid: str) -> mqtt.Client:
    c = mqtt.Client(CallbackAPIVersion.VERSION2, client_id=cid, protocol=mqtt.MQTTv5)
    c.tls_set_context(ctx)
    ok = threading.Event()
    c.on_connect = lambda *_a: ok.set()
    c.connect("127.0.0.1", site_port)
    c.loop_start()
    assert ok.wait(30)
    return c


def test_d3_plugin_keeps_acl_and_device_list_reads_statuses(tmp_path: Path) -> None:
    with running_site(tmp_path / "site") as site:
        # A second listed collector identity to observe with: the broker forces client ids
        # to the certificate CN, so collector.main's certificate would replace the collector.
        site.prepare(collectors=("main", "observer"))
        site.start_broker()
        assert uses_plugin(site.root / "broker")
        site.start_collector()
        a = site.add_clock("clock-a", simulated(interval_s=0.2, count=10))
        b = site.add_clock("clock-b", simulated(interval_s=0.2, count=10))
        wait_for(lambda: site.drained() and all(c.queue_stats()[1] == 10 for c in site.clocks),
                 120, "both clocks to record and drain")

        d = site.root / "collectors" / "observer"
        seen: queue.Queue[str] = queue.Queue()
        col = _client(site.port, client_context(site.root / "ca" / "ca.crt", d / "tls.crt",
                                                d / "tls.key"), "collector.observer")
        col.on_message = lambda _c, _u, m: seen.put(m.topic)
        subscribed = threading.Event()
        col.on_subscribe = lambda *_a: subscribed.set()
        col.subscribe([("timeclock/v1/devices/+/punches", 1), (f"{CONTROL_TOPIC}/#", 1)])
        assert subscribed.wait(30)
        site.stop_clock(a)   # its certificate is used below: one connection per certificate
        dev = _client(site.port, client_context(a.directory / "ca.crt", a.directory / "tls.crt",
                                                a.directory / "tls.key"), "clock-a")
        dev.publish("timeclock/v1/devices/clock-b/punches", b"forged", qos=1).wait_for_publish(30)
        cmd = {"commands": [{"command": "disableClient", "username": "clock-b"}]}
        dev.publish(CONTROL_TOPIC, json.dumps(cmd), qos=1).wait_for_publish(30)
        # Marker: same connection, so the broker handled both publishes before it.
        dev.publish("timeclock/v1/devices/clock-a/punches", b"marker", qos=1).wait_for_publish(30)
        topics = []
        while "timeclock/v1/devices/clock-a/punches" not in topics:
            topics.append(seen.get(timeout=30))
        assert "timeclock/v1/devices/clock-b/punches" not in topics
        assert not any(t.startswith("$CONTROL") for t in topics)
        log = (site.root / "broker" / "mosquitto.log").read_text()
        assert "clock-b been disconnected" not in log
        for c in (dev, col):
            c.disconnect()
            c.loop_stop()

        r = cli("collector.cli.main", "device", "list", "--config", str(site.collector_config()),
                "--ca", str(site.root / "ca"), "--json")
        assert r.returncode == 0, r.stderr
        rows = {row["device"]: row for row in json.loads(r.stdout)}
        assert set(rows) == {"clock-a", "clock-b"}
        assert rows["clock-b"]["online"] == "online"
        assert rows["clock-b"]["recorded"] == 10
        assert rows["clock-b"]["cert_not_after"] is not None
        assert b.queue_stats()[0] == 0


def test_serve_supervises_the_managed_broker(tmp_path: Path) -> None:
    import os  # noqa: PLC0415
    import signal  # noqa: PLC0415

    from collector.fleet.broker_process import BrokerControl  # noqa: PLC0415

    with running_site(tmp_path / "site") as site:
        site.prepare()
        cfg = site.collector_config()
        cfg.write_text(cfg.read_text().replace("[broker]\n", "[broker]\nmanaged = true\n"))
        serve = site.start_collector()
        log = site.root / "collectors" / "main" / "serve.log"
        wait_for(lambda: log.exists() and "MQTT subscribed" in log.read_text(), 60,
                 "serve to start its broker and subscribe")
        control = BrokerControl(site.root / "broker")
        first = control.pid()
        os.kill(first, signal.SIGKILL)          # a broker crash
        wait_for(lambda: _pid_or_none(control) not in (None, first), 60,
                 "serve to restart the broker")
        wait_for(lambda: log.read_text().count("MQTT subscribed") >= 2, 60,
                 "the collector to reconnect")
        second = control.pid()
        serve.send_signal(signal.SIGTERM)
        assert serve.wait(60) == 0
        wait_for(lambda: not Path(f"/proc/{second}").exists(), 30, "the broker to stop")


def _pid_or_none(control: Any) -> int | None:
    try:
        return int(control.pid())
    except Exception:  # noqa: BLE001 -- not running (yet)
        return None
