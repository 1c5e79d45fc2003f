"""The stolen-certificate attacks on the broker (issue 11 findings 1, 2 and 10, control D3), shared
by the live-site test (tests/e2e/test_insider_broker.py: managed Mosquitto, collector and agents
as processes) and the findings table (tests/e2e/test_insider_findings.py: the fixture broker, an
in-process collector on PostgreSQL).

Each :class:`Attack` names the certificate it uses, the client id it asks for, the filters of its
one SUBSCRIBE packet (every one must be refused: ``REFUSED`` in the SUBACK) and the topic it then
tries to publish to (the PUBACK must refuse it). The broker forces the client id to the
certificate's CN, so nobody can take the collector's id.
"""

from __future__ import annotations

import queue
import re
import ssl
import threading
from dataclasses import dataclass
from typing import Any

import aiohttp
import paho.mqtt.client as mqtt
from paho.mqtt.enums import CallbackAPIVersion

from collector.access.directory import Principals
from collector.api.app import start_api
from collector.api.config import ApiSection
from collector.ledger.sqlbase import SQLStore
from tests.fixtures.mosquitto import free_port
from tests.fixtures.pki import ClientCert, TestPKI
from wire import inclusion, topics, witness

REFUSED = "Not authorized"
STOLEN = "clock-spare"    # a clock certificate of the site CA, taken with its key
API_CN = "api.payroll"


@dataclass(frozen=True, slots=True)
class Attack:
    name: str
    cert: str                    # "stolen-device" or "api-client"
    client_id: str               # what the attacker asks for
    filters: tuple[str, ...]     # one SUBSCRIBE packet; every filter must be refused
    connections: int = 1         # the same certificate connecting again and again
    publish: str | None = None   # a topic it then tries to publish to (PUBACK must refuse)


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
ATTACK = {a.name: a for a in ATTACKS}


def connect(port: int, ctx: ssl.SSLContext, client_id: str,
            got: queue.Queue[str]) -> tuple[mqtt.Client, Any]:
    """A connected MQTT v5 client (its loop running) whose deliveries land in ``got``; with the
    CONNACK reason code."""
    c = mqtt.Client(CallbackAPIVersion.VERSION2, client_id=client_id, protocol=mqtt.MQTTv5)
    c.tls_set_context(ctx)
    connected = threading.Event()
    outcome: list[Any] = []

    def on_connect(_c: mqtt.Client, _u: Any, _f: Any, rc: Any, _p: Any) -> None:
        outcome.append(rc)
        connected.set()

    c.on_connect = on_connect
    c.on_message = lambda _c, _u, m: got.put(m.topic)
    c.connect("127.0.0.1", port, keepalive=10)
    c.loop_start()
    assert connected.wait(30), "no CONNACK"
    c.on_connect = None
    return c, outcome[0]


def puback(c: mqtt.Client, topic: str) -> str:
    """Publish QoS 1 to ``topic``; the PUBACK's reason."""
    done = threading.Event()
    codes: list[Any] = []

    def on_publish(_c: mqtt.Client, _u: Any, _mid: int, rc: Any, _p: Any) -> None:
        codes.append(rc)
        done.set()

    c.on_publish = on_publish
    c.publish(topic, b'{"forged":true}', qos=1)
    assert done.wait(30), f"no PUBACK for {topic}"
    return str(codes[0].getName())


def connections_as(log: str, cid: str) -> int:
    """How many connections the broker's log shows under client id ``cid``."""
    return len(re.findall(rf"New client connected from \S+ as {re.escape(cid)} \(", log))


async def api_status(store: SQLStore, pki: TestPKI, cert: ClientCert, *, kind: str) -> int:
    """The real API (mTLS) over ``store`` asked for /v1/devices with ``cert``, registered as an
    API principal all the same: the kind of the certificate decides. A 401 must say why."""
    Principals(store).register_cert(cert.name, ["ops.devices"], actor="cli:t", now_us=1)
    section = ApiSection(cert=pki.server_cert_file, key=pki.server_key_file,
                         listen="127.0.0.1", port=free_port(), client_ca=pki.ca_file,
                         crl=pki.crl_file)
    runner = await start_api(section, store, log_keys={})
    try:
        ctx = ssl.create_default_context(cafile=str(pki.ca_file))
        ctx.load_cert_chain(str(cert.cert_file), str(cert.key_file))
        async with aiohttp.ClientSession() as s, \
                s.get(f"https://127.0.0.1:{section.port}/v1/devices", ssl=ctx) as r:
            text = await r.text()
            if r.status == 401:
                assert f"is a {kind} certificate" in text, text
            return r.status
    finally:
        await runner.cleanup()
