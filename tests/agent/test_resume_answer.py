"""The collector's signed resume record (wire.resume_answer, docs/protocol.md §13.13) and the
clock's side of asking for it (agent.resume_client) against a real Mosquitto (mTLS, the
generated ACL and the timeclock_acl plugin): a clock reads only its own answers and writes only
its own requests, and an answer that another key signed, that names another device or that
answers another request is refused and never used.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import paho.mqtt.client as mqtt
import pytest

from agent.config import AgentConfig, parse_config
from agent.resume_client import ask_collector
from tests.collector.test_broker import MARKER, publish_ok
from tests.fixtures.mosquitto import MosquittoBroker
from wire import ZERO_HASH
from wire.errors import DecodeError, KeyMismatchError, SignatureError, WireError
from wire.keys import SigningKey
from wire.resume_answer import (
    ALL_RESUME_REQUESTS,
    RESUME_DOMAIN,
    ResumeAnswer,
    ResumeRequest,
    SignedResumeAnswer,
    answer_topic,
    request_topic,
)

DEVICE = "dev-a"
LOG = SigningKey(bytes(range(32)))
OTHER = SigningKey(bytes(range(1, 33)))
HASH = "ab" * 32


def _answer(req: ResumeRequest, *, device: str | None = None, nonce: str | None = None,
            key: SigningKey = LOG, last_seq: int = 8) -> SignedResumeAnswer:
    return ResumeAnswer(device or req.device, nonce or req.nonce, last_seq, HASH, 1_000,
                        key.key_id).sign(key)


# -- bytes ----------------------------------------------------------------------------------

def test_d4_resume_answer_bytes_round_trip_and_domain() -> None:
    req = ResumeRequest(DEVICE, "0f" * 16)
    assert req.to_bytes() == b'{"device":"dev-a","nonce":"' + b"0f" * 16 + b'","v":1}'
    assert ResumeRequest.from_bytes(req.to_bytes()) == req
    signed = _answer(req)
    assert SignedResumeAnswer.from_bytes(signed.to_bytes()) == signed
    assert signed.answer.signed_message().startswith(RESUME_DOMAIN + b'{"at":1000,')
    LOG.verify_key.verify(signed.answer.signed_message(), signed.sig)
    assert signed.verify(LOG.verify_key, req).last_seq == 8


@pytest.mark.parametrize(("data", "match"), [
    (b'{"device":"dev-a","nonce":"00","v":1}', "nonce"),
    (b'{"device":"dev-a","extra":1,"nonce":"' + b"0" * 32 + b'","v":1}', "extra"),
    (b'{"device":"dev-a","nonce":"' + b"0" * 32 + b'","v":2}', "v"),
    (b'{"device":"Dev.A","nonce":"' + b"0" * 32 + b'","v":1}', "device"),
])
def test_d4_resume_request_parsing_is_strict(data: bytes, match: str) -> None:
    with pytest.raises(DecodeError, match=match):
        ResumeRequest.from_bytes(data)


def test_d4_resume_answer_fields_are_checked() -> None:
    with pytest.raises(DecodeError, match="last_hash: must be 64 zeros"):
        ResumeAnswer(DEVICE, "0" * 32, 0, HASH, 0, LOG.key_id)
    assert ResumeAnswer(DEVICE, "0" * 32, 0, ZERO_HASH, 0, LOG.key_id).last_seq == 0
    with pytest.raises(DecodeError, match="last_seq"):
        ResumeAnswer(DEVICE, "0" * 32, -1, HASH, 0, LOG.key_id)


def _tampered(req: ResumeRequest) -> SignedResumeAnswer:
    good = _answer(req)
    moved = ResumeAnswer(req.device, req.nonce, 9, HASH, 1_000, LOG.key_id)
    return SignedResumeAnswer(moved, good.sig)


# Each forged answer, the error it must raise: none of them is ever resumed from.
REFUSED: dict[str, tuple[Callable[[ResumeRequest], SignedResumeAnswer], type[WireError], str]] = {
    "signed-by-another-key-naming-it": (lambda r: _answer(r, key=OTHER), KeyMismatchError,
                                        "names log key"),
    "signed-by-another-key-naming-the-log-key": (
        lambda r: SignedResumeAnswer(ResumeAnswer(r.device, r.nonce, 8, HASH, 1_000,
                                                  LOG.key_id),
                                     OTHER.sign(ResumeAnswer(r.device, r.nonce, 8, HASH, 1_000,
                                                             LOG.key_id).signed_message())),
        SignatureError, "does not verify"),
    "another-device": (lambda r: _answer(r, device="dev-b"), KeyMismatchError, "for device"),
    "another-request": (lambda r: _answer(r, nonce="1" * 32), KeyMismatchError, "nonce"),
    "tampered-seq": (_tampered, SignatureError, "does not verify"),
}


@pytest.mark.parametrize("case", sorted(REFUSED))
def test_d4_forged_resume_answers_are_refused(case: str) -> None:
    make, error, match = REFUSED[case]
    req = ResumeRequest.new(DEVICE)
    with pytest.raises(error, match=match):
        make(req).verify(LOG.verify_key, req)


# -- the broker: each clock its own topics ----------------------------------------------------

@pytest.mark.mqtt
def test_d3_resume_topics_each_device_its_own(mosquitto: MosquittoBroker) -> None:
    """A clock publishes only its own resume requests and reads only the answers to it; the
    collector reads every clock's requests and answers each."""
    col_sub = mosquitto.subscribe("collector.main", ALL_RESUME_REQUESTS)
    a = mosquitto.subscribe("dev-a", answer_topic("dev-a"))
    assert mosquitto.suback(a.client, ["timeclock/v1/devices/+/resume", answer_topic("dev-b"),
                                       ALL_RESUME_REQUESTS, request_topic("dev-a")]) == [
        "Not authorized"] * 4
    col = mosquitto.client("collector.standby")
    publish_ok(col, answer_topic("dev-b"), b"for b")
    publish_ok(col, answer_topic("dev-a"), MARKER)
    assert [(m.topic, m.payload) for m in a.get_until(lambda m: m.payload == MARKER)] == [
        (answer_topic("dev-a"), MARKER)]
    denied: list[Any] = []
    done = threading.Event()

    def on_publish(_c: mqtt.Client, _u: Any, _mid: int, rc: Any, _p: Any) -> None:
        denied.append(rc)
        done.set()

    a.client.on_publish = on_publish
    for topic in (request_topic("dev-b"), answer_topic("dev-a"), answer_topic("dev-b")):
        done.clear()
        a.client.publish(topic, b"forged", qos=1)
        assert done.wait(30)
        assert denied[-1].getName() == "Not authorized", topic
    a.client.on_publish = None
    publish_ok(mosquitto.client("dev-b"), request_topic("dev-b"), b"b's")
    publish_ok(a.client, request_topic("dev-a"), MARKER)
    got = col_sub.get_until(lambda m: m.payload == MARKER)
    assert sorted((m.topic, m.payload) for m in got) == [
        (request_topic("dev-a"), MARKER), (request_topic("dev-b"), b"b's")]


# -- the clock asks: refused answers are never used ----------------------------------------

class _Answerer:
    """A stand-in collector (collector.main): answers each request with ``forged`` answers
    first, then with the genuine one, all on the asking clock's answer topic."""

    def __init__(self, broker: MosquittoBroker,
                 forged: list[Callable[[ResumeRequest], SignedResumeAnswer]]) -> None:
        self.forged = forged
        self.requests: list[ResumeRequest] = []
        self.sub = broker.subscribe("collector.main", ALL_RESUME_REQUESTS)
        self.client = self.sub.client
        self._stop = threading.Event()
        self._t = threading.Thread(target=self._run, daemon=True)
        self._t.start()

    def _run(self) -> None:
        while not self._stop.is_set():
            try:
                msg = self.sub.get(0.2)
            except AssertionError:
                continue
            req = ResumeRequest.from_bytes(bytes(msg.payload))
            self.requests.append(req)
            for make in [*self.forged, _answer]:
                publish_ok(self.client, answer_topic(req.device), make(req).to_bytes())

    def close(self) -> None:
        self._stop.set()
        self._t.join(30)


@pytest.fixture
def answerer(mosquitto: MosquittoBroker) -> Iterator[Callable[..., _Answerer]]:
    made: list[_Answerer] = []

    def make(forged: list[Callable[[ResumeRequest], SignedResumeAnswer]]) -> _Answerer:
        made.append(_Answerer(mosquitto, forged))
        return made[-1]

    yield make
    for a in made:
        a.close()


def _config(broker: MosquittoBroker, tmp_path: Path) -> AgentConfig:
    cert = broker.pki.device(DEVICE)
    return parse_config({
        "device": {"id": DEVICE, "state_dir": str(tmp_path)},
        "keys": {"signing_key": "sign.key", "queue_key": "queue.key",
                 "tls_key": str(cert.key_file), "tls_cert": str(cert.cert_file),
                 "ca_cert": str(cert.ca_file), "log_public_key": LOG.verify_key.b64},
        "mqtt": {"host": broker.host, "port": broker.port},
        "readers": {"front": {"kind": "simulated", "credentials": ["0001"]}},
    }, base_dir=tmp_path)


@pytest.mark.mqtt
def test_d4_clock_refuses_forged_answers_and_resumes_from_the_genuine_one(
        mosquitto: MosquittoBroker, answerer: Callable[..., _Answerer], tmp_path: Path,
        caplog: pytest.LogCaptureFixture) -> None:
    forged = [REFUSED[c][0] for c in sorted(REFUSED)]
    a = answerer(forged)
    with caplog.at_level(logging.ERROR, logger="agent.resume_client"):
        got = ask_collector(_config(mosquitto, tmp_path), timeout_s=120)
    assert (got.device, got.last_seq, got.last_hash, got.log) == (DEVICE, 8, HASH, LOG.key_id)
    assert got.nonce == a.requests[0].nonce
    refused = [r.getMessage() for r in caplog.records if "REFUSED" in r.getMessage()]
    # Every forged answer arrived before the genuine one (one publisher, in order).
    assert len(refused) >= len(forged), refused
    assert {m.split("(")[1].split(")")[0] for m in refused} == {"KeyMismatchError",
                                                                  "SignatureError"}
