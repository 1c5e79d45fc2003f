"""The collector's MQTT link (paho-mqtt 2.x): mTLS, persistent MQTT v5 session, manual PUBACK.

Invariants (DESIGN.md §4):
- Identity ``collector.<name>``: client id and TLS client certificate CN; the TLS context comes
  from :func:`wire.tls.client_context` (TLS ≥ 1.2, server certificate and host name checked).
- MQTT v5 with ``clean_start=False`` and a session expiry, so QoS 1 punches published while
  the collector is down are queued by the broker and delivered when it reconnects.
- ``manual_ack=True`` (paho ≥ 2.0, ``Client.ack(mid, qos)``): paho does not PUBACK a message
  when ``on_message`` returns; the writer PUBACKs it after the ledger commit. A message that
  is never PUBACKed (crash, store down) is redelivered by the broker.
- Punches arrive through the shared subscription ``$share/collectors/…/+/punches`` (several
  collectors share the load); statuses through a plain subscription (retained statuses are
  not delivered on shared subscriptions, and every collector keeps its own last-seen table);
  the clocks' cosignature replies likewise (collector.ingest.cosignatures), PUBACKed on
  receipt: a lost reply is asked again with the next checkpoint; and their inclusion requests
  (collector.ingest.inclusion_answers), PUBACKed on receipt: the clock asks again; likewise
  their resume requests (collector.ingest.resume_answers).
- ``on_message`` never raises into paho: a handler failure is logged and the message stays
  un-PUBACKed. A full inbox blocks ``on_message`` (back-pressure to the broker over TCP)
  until there is room or the link is stopping.
"""

from __future__ import annotations

import logging
import queue
import threading
from collections.abc import Callable

import paho.mqtt.client as paho
from paho.mqtt.enums import CallbackAPIVersion
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties
from paho.mqtt.reasoncodes import ReasonCode
from paho.mqtt.subscribeoptions import SubscribeOptions

from collector import CollectorError
from collector.ingest.pipeline import Inbound, Publisher
from collector.service.config import MqttSection
from wire.clock import now_us
from wire.errors import WireError
from wire.inclusion import ALL_INCLUSION_REQUESTS
from wire.resume_answer import ALL_RESUME_REQUESTS
from wire.tls import client_context
from wire.topics import ALL_STATUS, SHARED_PUNCHES
from wire.witness import ALL_COSIGNATURES

log = logging.getLogger("timeclock.mqtt")

MAX_INFLIGHT = 100   # DESIGN.md §4: paho scans in-flight messages per PUBACK; 100 is fastest


def _settled(info: paho.MQTTMessageInfo) -> bool:
    """Published, or never to be confirmed: paho's ``is_published`` raises for a message
    handed over while disconnected (rc NO_CONN), even after it went out on reconnect. Such a
    receipt is not tracked further; if it was lost, the clock resends and the ledger dedupes."""
    try:
        return info.is_published()
    except (RuntimeError, ValueError):
        return True


class MqttError(CollectorError):
    """The MQTT link could not be set up or used."""


class MqttLink(Publisher):
    """One paho client: subscribes, feeds an inbox, publishes receipts, PUBACKs on request."""

    def __init__(self, cfg: MqttSection, identity: str, inbox: queue.Queue[Inbound], *,
                 on_status: Callable[[Inbound], None] | None = None,
                 clock: Callable[[], int] = now_us,
                 subscribe_punches: str = SHARED_PUNCHES,
                 on_cosignature: Callable[[Inbound], None] | None = None,
                 on_inclusion_request: Callable[[Inbound], None] | None = None,
                 on_resume_request: Callable[[Inbound], None] | None = None) -> None:
        self.cfg = cfg
        self.identity = identity
        self.inbox = inbox
        self.on_status = on_status
        self.on_cosignature = on_cosignature
        self.on_inclusion_request = on_inclusion_request
        self.on_resume_request = on_resume_request
        self.clock = clock
        self.subscribe_punches = subscribe_punches
        self.connected = threading.Event()
        self.subscribed = threading.Event()
        self._stopping = threading.Event()
        self._pending_pubs: list[paho.MQTTMessageInfo] = []
        self._pub_lock = threading.Lock()
        try:
            ctx = client_context(cfg.ca_cert, cfg.cert, cfg.key)
        except WireError as e:
            raise MqttError(f"MQTT TLS setup failed: {e}") from e
        c = paho.Client(CallbackAPIVersion.VERSION2, client_id=identity,
                        protocol=paho.MQTTv5, manual_ack=True)
        c.tls_set_context(ctx)
        c.max_inflight_messages_set(MAX_INFLIGHT)
        c.max_queued_messages_set(0)
        c.reconnect_delay_set(1, 30)
        c.on_connect = self._on_connect
        c.on_disconnect = self._on_disconnect
        c.on_subscribe = self._on_subscribe
        c.on_message = self._on_message
        self.client = c

    # -- lifecycle ------------------------------------------------------------------------
    def start(self) -> None:
        """Connect in the background (paho's network thread); reconnects by itself."""
        props = Properties(PacketTypes.CONNECT)  # type: ignore[no-untyped-call]  # paho: untyped
        props.SessionExpiryInterval = self.cfg.session_expiry_s
        props.ReceiveMaximum = self.cfg.receive_maximum
        try:
            self.client.connect_async(self.cfg.host, self.cfg.port,
                                      keepalive=self.cfg.keepalive_s, clean_start=False,
                                      properties=props)
        except (OSError, ValueError) as e:
            raise MqttError(f"cannot connect to MQTT broker {self.cfg.host}:{self.cfg.port}: "
                            f"{e}") from e
        self.client.loop_start()

    def wait_ready(self, timeout_s: float) -> bool:
        """True once connected and subscribed."""
        return self.subscribed.wait(timeout_s)

    def pause(self) -> None:
        """Stop taking messages into the inbox (they stay un-PUBACKed for redelivery)."""
        self._stopping.set()

    def flush(self, timeout_s: float) -> bool:
        """Wait until every receipt published so far has been sent to the broker."""
        with self._pub_lock:
            infos, self._pending_pubs = self._pending_pubs, []
        ok = True
        for info in infos:
            try:
                info.wait_for_publish(timeout=max(timeout_s, 0.01))
            except (RuntimeError, ValueError):
                ok = False
            ok = ok and info.is_published()
        return ok

    def stop(self) -> None:
        self._stopping.set()
        self.client.disconnect()
        self.client.loop_stop()

    # -- Publisher ------------------------------------------------------------------------
    def publish(self, topic: str, payload: bytes, *, qos: int = 1,
                retain: bool = False) -> None:
        info = self.client.publish(topic, payload, qos=qos, retain=retain)
        if info.rc not in (paho.MQTT_ERR_SUCCESS, paho.MQTT_ERR_NO_CONN):
            log.warning("publishing on %s failed: %s", topic, paho.error_string(info.rc))
            return
        with self._pub_lock:
            self._pending_pubs = [i for i in self._pending_pubs if not _settled(i)]
            self._pending_pubs.append(info)

    def ack(self, msg: Inbound) -> None:
        if msg.qos > 0:
            self.client.ack(msg.mid, msg.qos)

    # -- paho callbacks (network thread) --------------------------------------------------
    def _on_connect(self, client: paho.Client, _userdata: object, flags: paho.ConnectFlags,
                    reason: ReasonCode, _props: Properties | None) -> None:
        if reason.is_failure:
            log.error("MQTT connect as %s refused: %s", self.identity, reason)
            return
        self.connected.set()
        log.info("MQTT connected as %s (session present: %s)", self.identity,
                 flags.session_present)
        subs = [(self.subscribe_punches, SubscribeOptions(qos=1)),
                (ALL_STATUS, SubscribeOptions(qos=1))]
        if self.on_cosignature is not None:
            subs.append((ALL_COSIGNATURES, SubscribeOptions(qos=1)))
        if self.on_inclusion_request is not None:
            subs.append((ALL_INCLUSION_REQUESTS, SubscribeOptions(qos=1)))
        if self.on_resume_request is not None:
            subs.append((ALL_RESUME_REQUESTS, SubscribeOptions(qos=1)))
        client.subscribe(subs)

    def _on_subscribe(self, _client: paho.Client, _userdata: object, _mid: int,
                      reasons: list[ReasonCode], _props: Properties | None) -> None:
        failed = [str(r) for r in reasons if r.is_failure]
        if failed:
            log.error("MQTT subscription refused: %s", ", ".join(failed))
            return
        log.info("MQTT subscribed: %s and %s", self.subscribe_punches, ALL_STATUS)
        self.subscribed.set()

    def _on_disconnect(self, _client: paho.Client, _userdata: object,
                       _flags: paho.DisconnectFlags, reason: ReasonCode,
                       _props: Properties | None) -> None:
        self.connected.clear()
        self.subscribed.clear()
        if not self._stopping.is_set():
            log.warning("MQTT disconnected (%s); reconnecting", reason)

    def _on_message(self, _client: paho.Client, _userdata: object,
                    message: paho.MQTTMessage) -> None:
        try:
            msg = Inbound(topic=message.topic, payload=bytes(message.payload),
                          received_at=self.clock(), mid=message.mid, qos=message.qos)
            if msg.topic.endswith("/status"):
                if self.on_status is not None:
                    self.on_status(msg)
                self.ack(msg)
                return
            if msg.topic.endswith("/cosignature"):
                if self.on_cosignature is not None:
                    self.on_cosignature(msg)
                self.ack(msg)
                return
            if msg.topic.endswith("/inclusion/request"):
                if self.on_inclusion_request is not None:
                    self.on_inclusion_request(msg)
                self.ack(msg)
                return
            if msg.topic.endswith("/resume/request"):
                if self.on_resume_request is not None:
                    self.on_resume_request(msg)
                self.ack(msg)
                return
            while not self._stopping.is_set():
                try:
                    self.inbox.put(msg, timeout=0.2)
                    return
                except queue.Full:
                    continue
        except Exception:  # paho would otherwise stop its loop: keep the link alive
            log.exception("handling an MQTT message failed; it stays unacknowledged")
