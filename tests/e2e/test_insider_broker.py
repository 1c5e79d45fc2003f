"""One stolen clock certificate breaks nothing (issue 11, control D3): table-driven attacks on
the broker of a real site (managed Mosquitto 2.0.11 with mTLS, a real collector, real agents)
while honest clocks punch; and the API refusing MQTT identities.

Each row names the attack, the certificate it uses, what the broker must answer (SUBACK
reason codes, PUBACK reason, the client id the broker forces) and what must be recorded:
every punch the honest clocks recorded is in the ledger, the collector's session is never
replaced, and the attacker receives nothing.
"""

from __future__ import annotations

import datetime as dt
import queue
import re
import ssl
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiohttp
import paho.mqtt.client as mqtt
import pytest
from paho.mqtt.enums import CallbackAPIVersion

from collector.access.directory import Principals
from collector.api.app import start_api
from collector.api.config import ApiSection
from collector.ledger.sqlite import SQLiteStore
from tests.e2e.site_kit import Site, Taps, running_site, tapped_clock, wait_for
from tests.fixtures.mosquitto import suback
from tests.fixtures.pki import ClientCert, TestPKI
from wire import inclusion, topics, witness
from wire.tls import client_context

pytestmark = [pytest.mark.mqtt, pytest.mark.subprocess]   # a whole site: real processes

REFUSED = "Not authorized"


@dataclass(frozen=True, slots=True)
class Attack:
    name: str
    cert: str                    # "stolen-device" or "api-client"
    client_id: str               # what the attacker asks for
    filters: tuple[str, ...]     # one SUBSCRIBE packet; every filter must be refused
    connections: int = 1         # the same certificate connecting again and again
    publish: str | None = None   # a topic it then tries to publish to (PUBACK must refuse)


STOLEN = "clock-spare"    # a clock certificate of the site CA, taken with its key
API_CN = "api.payroll"

ATTACKS = [
    # finding 1: join the collectors' shared subscription, once...
    Attack("share-once", "stolen-device", STOLEN, (topics.SHARED_PUNCHES,)),
    # ... and many times over, in one packet and over several connections
    Attack("share-many", "stolen-device", STOLEN, (
        topics.SHARED_PUNCHES, "$share/collectors/timeclock/v1/devices/+/status",
        "$share/collectors/" + witness.ALL_COSIGNATURES,
        "$share/collectors/" + inclusion.ALL_INCLUSION_REQUESTS,
        "$share/x/timeclock/v1/devices/+/punches", "$share/collectors/#",
        topics.ALL_PUNCHES, "timeclock/v1/#", "#"), connections=9),
    # finding 2: take the collector's client id (kick it off, wipe its session)
    Attack("collector-client-id", "stolen-device", "collector.main", (topics.SHARED_PUNCHES,),
           publish=topics.punches("clock-a")),
    # finding 10: an API integration's certificate is no MQTT identity at all
    Attack("api-client", "api-client", "collector.main",
           (topics.SHARED_PUNCHES, topics.CHECKPOINT, topics.acks("clock-a")),
           publish=topics.punches("clock-a")),
]


def _connect(site: Site, ctx: ssl.SSLContext, client_id: str,
             got: queue.Queue[str]) -> tuple[mqtt.Client, Any]:
    c = mqtt.Client(CallbackAPIVersion.VERSION2, client_id=client_id, protocol=mqtt.MQTTv5)
    c.tls_set_context(ctx)
    connected = threading.Event()
    outcome: list[Any] = []

    def on_connect(_c: mqtt.Client, _u: Any, _f: Any, rc: Any, _p: Any) -> None:
        outcome.append(rc)
        connected.set()

    c.on_connect = on_connect
    c.on_message = lambda _c, _u, m: got.put(m.topic)
    c.connect("127.0.0.1", site.port, keepalive=10)
    c.loop_start()
    assert connected.wait(30), "no CONNACK"
    c.on_connect = None
    return c, outcome[0]


def _puback(c: mqtt.Client, topic: str) -> str:
    done = threading.Event()
    codes: list[Any] = []

    def on_publish(_c: mqtt.Client, _u: Any, _mid: int, rc: Any, _p: Any) -> None:
        codes.append(rc)
        done.set()

    c.on_publish = on_publish
    c.publish(topic, b'{"forged":true}', qos=1)
    assert done.wait(30), f"no PUBACK for {topic}"
    return str(codes[0].getName())


def _connections_as(log: str, cid: str) -> int:
    return len(re.findall(rf"New client connected from \S+ as {re.escape(cid)} \(", log))


def test_d3_insider_broker_attacks_refused_nothing_lost(tmp_path: Path) -> None:
    with running_site(tmp_path / "site") as site:
        site.prepare()
        site.start_broker()
        site.start_collector()
        serve_log = site.root / "collectors" / "main" / "serve.log"
        wait_for(lambda: serve_log.exists() and "MQTT subscribed" in serve_log.read_text(),
                 60, "the collector to subscribe")
        honest = [tapped_clock(site, "clock-a"), tapped_clock(site, "clock-b")]
        d = site.root / "stolen"
        d.mkdir()
        # A clock certificate of this site's CA, taken with its key (a spare clock's).
        certs = {"stolen-device": client_context(site.root / "ca" / "ca.crt",
                                                 *_issue(site, d, STOLEN, "device")),
                 "api-client": client_context(site.root / "ca" / "ca.crt",
                                              *_issue(site, d, API_CN, "api-client"))}
        identity = {"stolen-device": STOLEN, "api-client": API_CN}
        broker_log = site.root / "broker" / "mosquitto.log"
        col_before = _connections_as(broker_log.read_text(), "collector.main")

        taps = Taps(honest, interval_s=0.05, max_taps=4000)   # starts tapping at once
        got: queue.Queue[str] = queue.Queue()
        try:
            wait_for(lambda: all(c.queue_stats()[1] >= 5 for c in honest), 120,
                     "the honest clocks to record punches")
            for a in ATTACKS:
                for _ in range(a.connections):
                    c, rc = _connect(site, certs[a.cert], a.client_id, got)
                    try:
                        # TLS and CONNECT succeed (Mosquitto 2.0 has no CONNECT hook for a
                        # certificate identity); the id is forced to the CN...
                        assert not rc.is_failure, (a.name, rc)
                        assert suback(c, a.filters) == [REFUSED] * len(a.filters), a.name
                        if a.publish is not None:
                            assert _puback(c, a.publish) == REFUSED, a.name
                    finally:
                        c.disconnect()
                        c.loop_stop()
                text = broker_log.read_text()
                # ... the broker logged the connection under the certificate's CN, never
                # under the id asked for (unless it is the CN), and refused every filter.
                assert _connections_as(text, identity[a.cert]) >= a.connections, a.name
                assert f"denied SUBSCRIBE {a.filters[0]} for {identity[a.cert]}" in text, a.name
        finally:
            # Every clock records every tap from its first on, once, and drains: k..sent.
            taps.stop_and_drain(site)
        text = broker_log.read_text()
        # The collector's session was never replaced: one connection, never kicked.
        assert _connections_as(text, "collector.main") == col_before
        assert "already connected, closing old connection" not in text
        assert serve_log.read_text().count("MQTT subscribed") == 1
        # Nothing was delivered to the attackers; every honest punch is in the ledger.
        assert got.empty(), [got.get() for _ in range(got.qsize())]
        prog = site.progress()
        assert [prog[c.device].contiguous for c in honest] == [c.queue_stats()[1]
                                                               for c in honest]
        assert all(c.queue_stats()[0] == 0 and c.queue_stats()[1] >= 5 for c in honest)


def _issue(site: Site, d: Path, cn: str, kind: str) -> tuple[Path, Path]:
    assert site.ca is not None
    site.ca.issue_client(cn, d / f"{cn}.key", d / f"{cn}.crt", kind=kind,
                         now=dt.datetime.now(dt.UTC))
    return d / f"{cn}.crt", d / f"{cn}.key"


@pytest.mark.parametrize(("kind", "name", "status"), [
    ("device", "clock-77", 401),               # a clock's certificate, even if registered
    ("collector", "collector.main", 401),      # a collector's certificate
    ("api-client", "api.payroll", 200),        # the one kind the API accepts
])
async def test_d3_api_refuses_device_and_collector_certificates(
        tmp_path: Path, pki: TestPKI, kind: str, name: str, status: int) -> None:
    cert = {"device": pki.device, "collector": pki.collector,
            "api-client": pki.api_client}[kind](name)
    store = SQLiteStore(tmp_path / "ledger.db")
    try:
        await _api_row(store, pki, cert, kind=kind, status=status)
    finally:
        store.close()


async def _api_row(store: SQLiteStore, pki: TestPKI, cert: ClientCert, *, kind: str,
                   status: int) -> None:
    # Registered as an API principal all the same: the kind of the certificate decides.
    Principals(store).register_cert(cert.name, ["ops.devices"], actor="cli:t", now_us=1)
    section = ApiSection(cert=pki.server_cert_file, key=pki.server_key_file,
                         listen="127.0.0.1", port=_free_port(), client_ca=pki.ca_file,
                         crl=pki.crl_file)
    runner = await start_api(section, store, log_keys={})
    try:
        ctx = ssl.create_default_context(cafile=str(pki.ca_file))
        ctx.load_cert_chain(str(cert.cert_file), str(cert.key_file))
        async with aiohttp.ClientSession() as s, \
                s.get(f"https://127.0.0.1:{section.port}/v1/devices", ssl=ctx) as r:
            text = await r.text()
            assert r.status == status, text
            if status == 401:
                assert f"is a {kind} certificate" in text
    finally:
        await runner.cleanup()


def _free_port() -> int:
    import socket  # noqa: PLC0415

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port
