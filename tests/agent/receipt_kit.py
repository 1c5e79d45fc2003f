"""A stand-in collector for agent tests and benches: receipts for the envelopes it receives.

It connects as ``collector.test`` (a real collector certificate, mTLS) and subscribes to
``timeclock/v1/devices/+/punches``. For each envelope it publishes a signed receipt
(``wire.ack.Ack(...).sign(log_key)``) on that device's acks topic, QoS 1. It does not verify
punch signatures or keep a ledger (that is the real collector's job); it exists so the agent's
delivery can be tested against a real broker. Misbehaviours are switches that can be flipped
while it runs: ``forge_with`` (sign with a wrong key), ``extra_seqs`` (also ack seqs that were
never sent), ``ack_device`` (name another device in the receipt), ``acking`` (stop acking),
``drop_first`` (swallow the receipts of the first N envelopes), ``max_receipts`` (stop after
N receipts). Its session is persistent by default, like a real collector's: a broker restart
keeps its subscription, so punches published before it reconnects still reach it.
"""

from __future__ import annotations

import json
import ssl
import threading
import time
from collections import Counter
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

import paho.mqtt.client as mqtt
from paho.mqtt.enums import CallbackAPIVersion
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties
from paho.mqtt.reasoncodes import ReasonCode

from agent.publisher import PublisherSettings
from wire import topics
from wire.ack import Ack, SignedAck, ranges_from_seqs
from wire.keys import SigningKey
from wire.punch import Envelope, Punch, SignedPunch

if TYPE_CHECKING:
    from tests.fixtures.mosquitto import MosquittoBroker


class ReceiptStandin:
    """Acks every received envelope with a receipt signed by ``log_key``."""

    def __init__(self, host: str, port: int, tls: ssl.SSLContext, log_key: SigningKey, *,
                 client_id: str = "collector.test", validate: bool = True,
                 session_expiry_s: int | None = 300, topic: str = topics.ALL_PUNCHES,
                 now_us: Callable[[], int] = lambda: time.time_ns() // 1000) -> None:
        self.log_key = log_key
        self.validate = validate      # False: read seqs with json only (bench: less CPU)
        self._now_us = now_us
        # switches (may be changed while running)
        self.acking = True
        self.forge_with: SigningKey | None = None
        self.extra_seqs: tuple[int, ...] = ()
        self.ack_device: str | None = None
        self.drop_first = 0
        self.max_receipts: int | None = None
        # observations
        self._lock = threading.Lock()
        self.envelopes = 0
        self.punches = 0
        self.receipts_sent = 0
        self.dropped = 0
        self.errors: list[str] = []
        self.sizes: list[tuple[int, int]] = []     # (punches, bytes) per envelope
        self.seen: dict[str, Counter[int]] = {}
        self._subscribed = threading.Event()
        self._c = mqtt.Client(CallbackAPIVersion.VERSION2, client_id=client_id,
                              protocol=mqtt.MQTTv5)
        self._c.tls_set_context(tls)
        self._c.max_inflight_messages_set(100)
        self._c.on_connect = self._on_connect
        self._c.on_subscribe = self._on_subscribe
        self._c.on_message = self._on_message
        self._host, self._port = host, port
        self._session_expiry_s = session_expiry_s
        self._topic = topic

    # lifecycle

    def start(self, timeout: float = 60.0) -> ReceiptStandin:
        """Connect and return once the punches subscription is acknowledged (a broker round
        trip: the deadline is generous, it costs nothing when the SUBACK comes at once)."""
        props = None
        if self._session_expiry_s is not None:
            props = Properties(PacketTypes.CONNECT)
            props.SessionExpiryInterval = self._session_expiry_s
        self._c.reconnect_delay_set(0.1, 0.5)  # paho annotates int but sleeps float seconds
        self._c.connect_async(self._host, self._port, keepalive=30,
                              clean_start=self._session_expiry_s is None, properties=props)
        self._c.loop_start()
        if not self._subscribed.wait(timeout):
            self._c.loop_stop()
            raise TimeoutError(f"receipt stand-in: no SUBACK within {timeout} s")
        return self

    def stop(self) -> None:
        self._c.disconnect()
        self._c.loop_stop()

    def __enter__(self) -> ReceiptStandin:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    # observations

    def seqs_seen(self, device: str) -> Counter[int]:
        with self._lock:
            return Counter(self.seen.get(device, Counter()))

    # paho callbacks

    def _on_connect(self, client: mqtt.Client, _u: Any, _f: mqtt.ConnectFlags,
                    reason: ReasonCode, _p: Any) -> None:
        if not reason.is_failure:
            client.subscribe(self._topic, qos=1)

    def _on_subscribe(self, _client: mqtt.Client, _u: Any, _mid: int,
                      reasons: list[ReasonCode], _p: Any) -> None:
        if all(not r.is_failure for r in reasons):
            self._subscribed.set()

    def _on_message(self, client: mqtt.Client, _u: Any, msg: mqtt.MQTTMessage) -> None:
        try:
            topic_device = topics.device_of(msg.topic, "punches")
            if self.validate:
                env = Envelope.from_bytes(msg.payload)
                device, seqs = env.device, [p.punch.seq for p in env.punches]
            else:
                obj = json.loads(msg.payload)
                device, seqs = obj["device"], [p["punch"]["seq"] for p in obj["punches"]]
            if device != topic_device:
                raise ValueError(f"envelope of {device} on the topic of {topic_device}")
        except Exception as e:  # noqa: BLE001 -- a test double records every failure
            with self._lock:
                self.errors.append(f"{msg.topic}: {e}")
            return
        with self._lock:
            self.envelopes += 1
            self.punches += len(seqs)
            self.sizes.append((len(seqs), len(msg.payload)))
            self.seen.setdefault(device, Counter()).update(seqs)
            if not self.acking or (self.max_receipts is not None
                                   and self.receipts_sent >= self.max_receipts):
                return
            if self.drop_first > 0:
                self.drop_first -= 1
                self.dropped += 1
                return
            forge, extra, ack_device = self.forge_with, self.extra_seqs, self.ack_device
        ack = Ack(ack_device or device, ranges_from_seqs([*seqs, *extra]), self._now_us(),
                  self.log_key.key_id)
        if forge is None:
            receipt = ack.sign(self.log_key)
        else:
            # Names the real log key, signed by another: what a compromised broker could make.
            receipt = SignedAck(ack, forge.sign(ack.signed_message()))
        with self._lock:
            self.receipts_sent += 1
        client.publish(topics.acks(device), receipt.to_bytes(), qos=1)


# --- small harness shared by the agent delivery tests -----------------------------------------
# (waiting is tests.polling.wait_for; the deadlines below are what the delivery tests pass it)

# A connect, a reconnect after a broker restart, or one broker round trip (publish → receipt).
ROUND_TRIP_S = 60.0
# A backlog drained after an outage or a crash: many round trips, resends, reconnect backoff.
DRAIN_S = 120.0

BOOT_ID = "6f1c2a9e-3b4d-4e5f-8a7b-1c2d3e4f5a6b"
DEVICE = "clock-0001"


def settings(broker: MosquittoBroker, device: str = DEVICE, **kw: Any) -> PublisherSettings:
    """Publisher settings for ``device`` against the fixture broker, with fast reconnects."""
    cert = broker.pki.device(device)
    base: dict[str, Any] = {
        "host": broker.host, "port": broker.port, "ca_file": cert.ca_file,
        "cert_file": cert.cert_file, "key_file": cert.key_file,
        "reconnect_min_s": 0.05, "reconnect_max_s": 0.5, "poll_interval_s": 0.2}
    base.update(kw)
    return PublisherSettings(**base)


def punch_builder(key: SigningKey, device: str, *, credential: str = "em4100:0012345678",
                  ts_us: int = 1_767_225_600_000_000) -> Callable[[int, str], SignedPunch]:
    """``build(seq, prev)`` for :meth:`agent.queue.Outbox.record`: a signed punch per seq."""

    def build(seq: int, prev: str) -> SignedPunch:
        return Punch(device=device, seq=seq, prev=prev, ts=ts_us + seq, clock="synced",
                     boot=BOOT_ID, mono=seq, reader="front", credential=credential,
                     action="in", key=key.key_id).sign(key)

    return build


def record_n(outbox: Any, key: SigningKey, n: int,
             notify: Callable[[], None] | None = None) -> list[int]:
    """Commit ``n`` punches (one transaction each, like taps); return their seqs."""
    build = punch_builder(key, outbox.device)
    seqs = []
    for _ in range(n):
        seqs.append(outbox.record(build).punch.seq)
        if notify is not None:
            notify()
    return seqs
