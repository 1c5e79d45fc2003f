"""Remote configuration, end to end (D18 device hardening, D19 change management; issue 15
item 6, docs/protocol.md §13.14, docs/operations.md "Changing a clock's configuration
remotely"): the real Mosquitto with mTLS and the ACL plugin, a real agent process, the
collector CLI.

A change is recorded, published, verified by the clock with the log key, applied through the
overlay file, answered (signed by the clock) and the answer recorded; a forged change, a
replayed older serial, a change the loader refuses and one outside the allow-list forced onto
the topic with a collector's certificate are all refused by the clock, reported and nothing is
applied; another device's certificate can neither read nor write a clock's change.
"""

from __future__ import annotations

import json
import threading
from pathlib import Path
from typing import Any

import paho.mqtt.client as mqtt
import pytest

from agent.config import load_config as load_agent_config
from agent.errors import ConfigError as AgentConfigError
from agent.remote_config import overlay_path
from collector.fleet import remote_config as remote
from collector.fleet.broker_process import CONTROL_IDENTITY, BrokerControl
from collector.ledger import open_store
from lab.site import Clock, Site
from tests.e2e.site_kit import bundle_verifies, cli, running_site, simulated, wait_for
from tests.fixtures.mosquitto import MosquittoBroker
from wire import topics
from wire.canonical import canonical
from wire.keys import SigningKey, load_signing_key
from wire.remote_config import CONFIG_DOMAIN, ConfigChange, SignedConfigResult

pytestmark = [pytest.mark.mqtt, pytest.mark.subprocess]   # real broker and processes

DEVICE = "clock-1"


def _configure(site: Site, *args: str, by: str = "alice") -> Any:
    return cli("collector.cli.main", "device", "configure", DEVICE, "--config",
               str(site.collector_config()), "--wait-s", "90", *args,
               *(("--by", by) if by else ()), timeout_s=180)


def _config_entries(site: Site) -> list[dict[str, Any]]:
    store = open_store(site.store_url)
    try:
        return [{"event": e.event, "serial": e.serial, "by": e.by,
                 "status": e.result.result.status if e.result else None,
                 "reason": e.result.result.reason if e.result else None}
                for _idx, e in remote.config_entries(store)]
    finally:
        store.close()


def _force(site: Site, payload: bytes, serial: int) -> SignedConfigResult:
    """Publish ``payload`` on the clock's config topic with a collector's (the broker control
    identity's) certificate, as an insider holding it could, and return the clock's answer."""
    own = BrokerControl(site.root / "broker").control_client()
    assert own is not None
    got = remote.exchange(*own, CONTROL_IDENTITY, DEVICE, payload=payload, serial=serial,
                          timeout_s=90)
    answers = [SignedConfigResult.from_bytes(p) for p in got]
    mine = [a for a in answers if a.result.serial == serial]
    assert mine, f"no answer for serial {serial}: {answers}"
    return mine[-1]


def _restarted(site: Site, clock: Clock) -> None:
    """The agent stopped itself after applying (systemd would start it again): do that."""
    p = clock.process
    assert p is not None
    wait_for(lambda: p.poll() is not None, 90, "the agent to stop after applying a change")
    assert p.returncode == 0, clock.log_file.read_text()[-3000:]
    site.start_clock(clock)


def _overlay_serial(clock: Clock) -> int:
    """The serial of the change applied on the clock (its overlay file, 0600)."""
    path = overlay_path(load_agent_config(clock.config).device.state_dir)
    assert path.stat().st_mode & 0o777 == 0o600
    serial: int = json.loads(path.read_bytes())["change"]["serial"]
    return serial


def _running_on(site: Site, clock: Clock, before: int) -> None:
    wait_for(lambda: site.progress()[DEVICE].contiguous >= before + 3, 90,
             "punches after the restart")
    assert clock.process is not None
    assert clock.process.poll() is None


def test_d18_d19_remote_configuration_end_to_end(tmp_path: Path) -> None:  # noqa: PLR0915 -- one site, one story
    with running_site(tmp_path / "site") as site:
        site.prepare()
        site.start_broker()
        site.start_collector()
        clock = site.add_clock(DEVICE, simulated(interval_s=0.3, count=0, action="in"))
        wait_for(lambda: site.progress()[DEVICE].contiguous >= 3, 90, "first punches")
        base = load_agent_config(clock.config)
        assert base.status.interval_s == 5.0

        # -- outside the allow-list: refused at the collector, nothing recorded or sent
        for bad in ("mqtt.host=evil.example", "keys.log_public_key=AAAA",
                    "feedback.refused_command=/bin/sh", "readers.desk.port=/dev/ttyS0"):
            r = _configure(site, "--set", bad)
            assert r.returncode == 2, (bad, r.stdout, r.stderr)
            assert "may not be changed remotely" in r.stderr, r.stderr
        r = _configure(site, "--set", "status.interval_s=2", by="")
        assert r.returncode == 2, (r.stdout, r.stderr)
        assert "--by PRINCIPAL is required" in r.stderr, r.stderr
        r = _configure(site, "--set", "status.interval_s=2", "--dry-run", by="")
        assert r.returncode == 0, r.stderr
        assert "nothing recorded" in r.stdout
        assert _config_entries(site) == []

        # -- a change applied end to end, its answer recorded
        r = _configure(site, "--set", "status.interval_s=2", "--set", "readers.desk.action=out")
        assert r.returncode == 0, (r.stdout, r.stderr)
        assert f"{DEVICE}: change 1 applied" in r.stdout
        _restarted(site, clock)
        effective = load_agent_config(clock.config)
        assert effective.status.interval_s == 2.0
        assert effective.readers[0].section["action"] == "out"
        assert _overlay_serial(clock) == 1
        _running_on(site, clock, site.progress()[DEVICE].contiguous)
        entries = _config_entries(site)
        assert [(e["event"], e["serial"], e["by"], e["status"]) for e in entries] == [
            ("change", 1, "alice", None), ("result", 1, None, "applied")]

        # -- a value the agent's loader refuses: reported with the loader's message
        r = _configure(site, "--set", "status.interval_s=0")
        assert r.returncode == 1, (r.stdout, r.stderr)
        assert "change 2 refused" in r.stdout, r.stdout
        assert "status.interval_s" in r.stdout, r.stdout
        assert load_agent_config(clock.config).status.interval_s == 2.0

        # -- a second change applied (serial 3), then the first one replayed
        r = _configure(site, "--set", "status.interval_s=3")
        assert r.returncode == 0, (r.stdout, r.stderr)
        _restarted(site, clock)
        _running_on(site, clock, site.progress()[DEVICE].contiguous)
        store = open_store(site.store_url)
        try:
            first = next(e.change for _i, e in remote.config_entries(store)
                         if e.change is not None and e.serial == 1)
        finally:
            store.close()
        assert first is not None
        answer = _force(site, first.to_bytes(), 1)
        assert answer.result.status == "refused"
        assert "replay: serial 1 is not above the applied serial 3" in answer.result.reason

        # -- a forged change (another key, claiming the log key id) refused and reported
        log_key = load_signing_key(site.root / "log.key")
        forger = SigningKey.generate()
        change = ConfigChange(DEVICE, 10, 1, {"status.interval_s": 1}, log_key.key_id)
        forged = canonical({"change": change.to_dict(),
                            "sig": forger.sign(change.signed_message())})
        answer = _force(site, forged, 10)
        assert answer.result.status == "refused"
        assert answer.result.reason.startswith("signature"), answer.result.reason
        # the answer is signed by the clock's key; the collector records it once
        r = _configure(site, "--collect")
        assert r.returncode == 0, r.stderr
        assert "change 10 refused" in r.stdout, r.stdout
        assert "recorded as ledger entry" in r.stdout, r.stdout

        # -- outside the allow-list, signed by the real log key, forced onto the topic
        raw = {"v": 1, "device": DEVICE, "serial": 11, "at": 1,
               "set": {"mqtt.host": "evil.example"}, "log": log_key.key_id}
        smuggled = canonical({"change": raw,
                              "sig": log_key.sign(CONFIG_DOMAIN + canonical(raw))})
        answer = _force(site, smuggled, 0)
        assert answer.result.status == "refused"
        assert "may not be changed remotely" in answer.result.reason

        # nothing of the refused changes was applied; the clock still runs on serial 3
        assert _overlay_serial(clock) == 3
        assert load_agent_config(clock.config).status.interval_s == 3.0
        assert clock.process is not None
        assert clock.process.poll() is None
        r = cli("collector.cli.main", "device", "list", "--config",
                str(site.collector_config()), "--json")
        assert r.returncode == 0, r.stderr
        row = next(x for x in json.loads(r.stdout) if x["device"] == DEVICE)
        assert row["config"]["applied"] == 3
        assert row["config"]["sent"] == 3
        r = cli("collector.cli.main", "device", "list", "--config",
                str(site.collector_config()))
        assert r.returncode == 0, r.stderr
        assert f"remote configuration of {DEVICE}: serial 3 sent, 3 applied" in r.stdout
        # every verifier parses the config entries (wire.bodies) and the ledger verifies
        bundle_verifies(site, site.root / "bundle")

        # an overlay nobody signed (edited on the clock) stops the agent at start, fail closed
        path = overlay_path(load_agent_config(clock.config).device.state_dir)
        tampered = json.loads(path.read_bytes())
        tampered["change"]["set"]["status.interval_s"] = 1
        path.write_bytes(canonical(tampered))
        with pytest.raises(AgentConfigError, match="not a remote change signed by the log key"):
            load_agent_config(clock.config)


def test_d18_another_device_can_neither_read_nor_write_a_clocks_config(
        mosquitto: MosquittoBroker) -> None:
    genuine = b'{"genuine":1}'
    col = mosquitto.client("collector.main")
    info = col.publish(topics.config("dev-a"), genuine, qos=1, retain=True)
    info.wait_for_publish(30)
    assert info.is_published()

    # a stolen certificate of another clock: no subscription to dev-a's change or results
    b = mosquitto.client("dev-b")
    assert mosquitto.suback(b, [topics.config("dev-a"), "timeclock/v1/devices/+/config",
                                topics.config_result("dev-a"), topics.ALL_CONFIG_RESULTS]
                            ) == ["Not authorized"] * 4
    acks: list[Any] = []
    done = threading.Event()

    def on_publish(_c: mqtt.Client, _u: Any, _mid: int, rc: Any, _p: Any) -> None:
        acks.append(rc)
        done.set()

    b.on_publish = on_publish
    for topic in (topics.config("dev-a"), topics.config_result("dev-a"), topics.config("dev-b")):
        done.clear()
        b.publish(topic, b"forged", qos=1, retain=True)
        assert done.wait(30)
        assert acks[-1].getName() == "Not authorized", topic

    # the clock itself reads its change (still the genuine one) and writes only its result
    sub = mosquitto.subscribe("dev-a", topics.config("dev-a"))
    assert sub.get().payload == genuine
    assert mosquitto.suback(sub.client, [topics.config_result("dev-a")]) == ["Not authorized"]
    res = mosquitto.subscribe("collector.standby", topics.ALL_CONFIG_RESULTS)
    sub.client.publish(topics.config_result("dev-a"), b"answer", qos=1).wait_for_publish(30)
    assert res.get().payload == b"answer"
