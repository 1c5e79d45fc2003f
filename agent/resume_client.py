"""Ask the collector for this clock's last recorded (seq, hash): ``resume --from-collector``.

Run while the agent is stopped (the broker allows one connection per client id, the
certificate's CN): connects with the clock's own certificate, subscribes to
``timeclock/v1/devices/{id}/resume``, publishes a :class:`wire.resume_answer.ResumeRequest`
with a fresh nonce on ``…/{id}/resume/request`` (again every :data:`ASK_EVERY_S` until
answered: a collector that is starting or riding out an outage answers a later copy), and
returns the first answer that verifies (docs/protocol.md §13.13): signed by the clock's log
key (``[keys] log_public_key``), for this device and this nonce. An answer that does not
verify is refused, logged and never used; if no valid answer arrives in time the last refusal
is the error.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Mapping

import paho.mqtt.client as mqtt
from paho.mqtt.enums import CallbackAPIVersion
from paho.mqtt.properties import Properties
from paho.mqtt.reasoncodes import ReasonCode

from agent.config import AgentConfig
from agent.errors import AgentError
from wire.errors import WireError
from wire.keys import VerifyKey
from wire.resume_answer import (
    ResumeAnswer,
    ResumeRequest,
    SignedResumeAnswer,
    answer_topic,
    request_topic,
)
from wire.tls import client_context

log = logging.getLogger(__name__)

ASK_EVERY_S = 5.0
DEFAULT_TIMEOUT_S = 60.0


class ResumeAnswerError(AgentError):
    """No answer from the collector that this clock can trust (none, or refused ones)."""


class _Asker:
    def __init__(self, log_key: VerifyKey, request: ResumeRequest) -> None:
        self.log_key = log_key
        self.request = request
        self.subscribed = threading.Event()
        self.done = threading.Event()
        self.answer: ResumeAnswer | None = None
        self.refused: list[str] = []
        self.connect_error: str | None = None

    def on_connect(self, client: mqtt.Client, _u: object, _f: mqtt.ConnectFlags,
                   reason: ReasonCode, _p: Properties | None) -> None:
        if reason.is_failure:
            self.connect_error = f"the broker refused the connection: {reason}"
            return
        client.subscribe(answer_topic(self.request.device), qos=1)

    def on_subscribe(self, _c: mqtt.Client, _u: object, _mid: int, reasons: list[ReasonCode],
                     _p: Properties | None) -> None:
        if any(r.is_failure for r in reasons):
            self.connect_error = (f"the broker refused the subscription to "
                                  f"{answer_topic(self.request.device)}: {reasons[0]}")
            return
        self.subscribed.set()

    def on_message(self, _c: mqtt.Client, _u: object, message: mqtt.MQTTMessage) -> None:
        try:
            answer = SignedResumeAnswer.from_bytes(bytes(message.payload)).verify(
                self.log_key, self.request)
        except WireError as e:
            self.refused.append(f"{type(e).__name__}: {e}")
            log.error("resume answer REFUSED (%s): %s", type(e).__name__, e)
            return
        if self.answer is None:
            self.answer = answer
            self.done.set()


def ask_collector(config: AgentConfig, *, env: Mapping[str, str] | None = None,
                  timeout_s: float = DEFAULT_TIMEOUT_S,
                  request: ResumeRequest | None = None) -> ResumeAnswer:
    """The collector's signed record of this clock's last recorded (seq, hash), verified."""
    m, k = config.mqtt, config.keys
    if m is None or k.ca_cert is None or k.tls_cert is None or k.tls_key is None \
            or k.log_public_key is None:
        raise ResumeAnswerError("--from-collector needs [mqtt] and keys.ca_cert, "
                                "keys.tls_cert, keys.tls_key and keys.log_public_key")
    req = request if request is not None else ResumeRequest.new(config.device.id)
    asker = _Asker(k.log_public_key, req)
    try:
        ctx = client_context(k.ca_cert, k.tls_cert, k.tls_key.resolve(env))
    except WireError as e:
        raise ResumeAnswerError(f"MQTT TLS setup failed: {e}") from e
    c = mqtt.Client(CallbackAPIVersion.VERSION2, client_id=config.device.id,
                    protocol=mqtt.MQTTv5)
    c.tls_set_context(ctx)
    c.on_connect = asker.on_connect
    c.on_subscribe = asker.on_subscribe
    c.on_message = asker.on_message
    deadline = time.monotonic() + timeout_s
    try:
        c.connect(m.host, m.port, keepalive=max(5, m.keepalive_s))
    except OSError as e:
        raise ResumeAnswerError(f"cannot reach the broker {m.host}:{m.port}: {e}") from e
    c.loop_start()
    try:
        next_ask = 0.0
        while not asker.done.is_set():
            now = time.monotonic()
            if asker.connect_error is not None:
                raise ResumeAnswerError(asker.connect_error)
            if now >= deadline:
                why = (f"; refused: {asker.refused[-1]}" if asker.refused
                       else "; no answer arrived")
                raise ResumeAnswerError(f"no valid resume answer from the collector within "
                                        f"{timeout_s:.0f} s ({len(asker.refused)} refused)"
                                        f"{why}")
            if asker.subscribed.is_set() and now >= next_ask:
                c.publish(request_topic(req.device), req.to_bytes(), qos=1)
                next_ask = now + ASK_EVERY_S
            asker.done.wait(0.1)
    finally:
        c.disconnect()
        c.loop_stop()
    assert asker.answer is not None  # noqa: S101 -- done is set only with an answer
    return asker.answer
