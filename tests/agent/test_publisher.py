"""The agent publisher against a REAL mTLS Mosquitto and a receipting stand-in collector.

What must hold (DESIGN.md §4, CONTROLS.md D3/D4): a row leaves the outbox only for a receipt
that verifies under the log key, names this device, and acks seqs this agent published;
unacked punches are published again; the retained status and the last will tell operators
whether a clock is online.
"""

from __future__ import annotations

import json
import os
import random
import subprocess
import sys
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from agent.config import parse_config
from agent.publisher import (
    Publisher,
    PublisherError,
    PublisherSettings,
    backoff_delay,
    make_publisher,
)
from agent.queue import Outbox
from tests.agent.receipt_kit import (
    DEVICE,
    DRAIN_S,
    ROUND_TRIP_S,
    ReceiptStandin,
    record_n,
    settings,
)
from tests.fixtures.mosquitto import MosquittoBroker
from tests.polling import wait_for
from wire import topics
from wire.keys import SigningKey, save_signing_key
from wire.punch import MAX_ENVELOPE_BYTES

ROOT = Path(__file__).resolve().parents[2]
START_S = 120.0   # a Python process start, then a connect: a busy machine is slow at both


@pytest.fixture
def run_publisher(broker: MosquittoBroker, outbox: Outbox, log_key: SigningKey
                  ) -> Iterator[Callable[..., Publisher]]:
    started: list[Publisher] = []

    def make(**kw: Any) -> Publisher:
        status = kw.pop("status", None)
        pub = Publisher(outbox, DEVICE, log_key=log_key.verify_key,
                        settings=settings(broker, **kw), status=status)
        pub.start()
        started.append(pub)
        return pub

    yield make
    for p in started:
        p.stop()


# --- delivery -----------------------------------------------------------------------------

def test_d4_live_punches_go_one_per_envelope_and_leave_on_receipt(
        outbox: Outbox, device_key: SigningKey, standin: ReceiptStandin,
        run_publisher: Callable[..., Publisher]) -> None:
    pub = run_publisher()
    wait_for(lambda: pub.stats().connected, ROUND_TRIP_S, "connection")
    for n in range(1, 6):
        record_n(outbox, device_key, 1, pub.notify_new)
        wait_for(lambda: outbox.depth() == 0, ROUND_TRIP_S, f"receipt for punch {n}")
    st = pub.stats()
    assert (st.receipted, st.receipts, st.bad_receipts, st.unsent_acks) == (5, 5, 0, 0)
    assert st.last_receipt_at is not None
    assert [n for n, _ in standin.sizes] == [1, 1, 1, 1, 1]
    assert sorted(standin.seqs_seen(DEVICE)) == [1, 2, 3, 4, 5]
    assert standin.errors == []


def test_d4_backlog_goes_in_batches_within_limits(
        outbox: Outbox, device_key: SigningKey, standin: ReceiptStandin,
        run_publisher: Callable[..., Publisher]) -> None:
    record_n(outbox, device_key, 1200)
    pub = run_publisher(batch_max=500)
    wait_for(lambda: outbox.depth() == 0, DRAIN_S, "the backlog to drain")
    assert [n for n, _ in standin.sizes] == [500, 500, 200]
    assert max(b for _, b in standin.sizes) <= MAX_ENVELOPE_BYTES
    assert standin.seqs_seen(DEVICE) == dict.fromkeys(range(1, 1201), 1)
    assert pub.stats().receipted == 1200


def test_d4_receipt_signed_by_wrong_key_deletes_nothing(
        outbox: Outbox, device_key: SigningKey, standin: ReceiptStandin,
        run_publisher: Callable[..., Publisher]) -> None:
    standin.forge_with = SigningKey.generate()
    record_n(outbox, device_key, 3)
    pub = run_publisher(resend_after_s=0.5)      # one envelope of 3, one forged receipt
    wait_for(lambda: pub.stats().bad_receipts >= 1, ROUND_TRIP_S, "the forged receipt")
    assert outbox.depth() == 3
    assert pub.stats().receipted == 0
    # The collector's real receipts, once they come, still work: the punches were resent.
    standin.forge_with = None
    wait_for(lambda: outbox.depth() == 0, ROUND_TRIP_S, "a genuine receipt after resend")
    assert pub.stats().resent_punches >= 3


def test_d4_receipt_acking_unsent_seqs_deletes_none_of_them(
        outbox: Outbox, device_key: SigningKey, standin: ReceiptStandin,
        run_publisher: Callable[..., Publisher]) -> None:
    record_n(outbox, device_key, 6)           # all committed; a window of 2 sends 1-2 first
    standin.extra_seqs = (3, 4, 5, 6, 99)     # seqs the agent has not published (yet/ever)
    standin.max_receipts = 1
    pub = run_publisher(batch_max=2, window_punches=2)
    wait_for(lambda: pub.stats().receipts == 1, ROUND_TRIP_S, "the first receipt")
    wait_for(lambda: standin.envelopes >= 2, ROUND_TRIP_S, "the next batch after the window freed")
    st = pub.stats()
    assert st.receipted == 2
    assert st.unsent_acks == 5
    assert outbox.depth() == 4
    assert [sp.punch.seq for sp in outbox.pending()] == [3, 4, 5, 6]


def test_d4_receipt_for_another_device_is_ignored(
        outbox: Outbox, device_key: SigningKey, standin: ReceiptStandin,
        run_publisher: Callable[..., Publisher]) -> None:
    standin.ack_device = "clock-0002"
    pub = run_publisher()
    record_n(outbox, device_key, 2, pub.notify_new)
    wait_for(lambda: pub.stats().foreign_receipts >= 1, ROUND_TRIP_S, "the foreign receipt")
    assert outbox.depth() == 2
    assert pub.stats().receipted == 0


def test_d4_resend_after_timeout_when_first_receipt_is_lost(
        outbox: Outbox, device_key: SigningKey, standin: ReceiptStandin,
        run_publisher: Callable[..., Publisher]) -> None:
    standin.drop_first = 1
    record_n(outbox, device_key, 3)
    pub = run_publisher(resend_after_s=0.5)      # one envelope of 3; its receipt is lost
    wait_for(lambda: outbox.depth() == 0, ROUND_TRIP_S, "delivery after the resend")
    assert standin.dropped == 1
    # Resent at least once; on a busy machine a receipt can take longer than the 0.5 s timer,
    # and then the envelope is (rightly) resent again: always whole, never seq by seq.
    seen = standin.seqs_seen(DEVICE)
    sends = seen[1]
    assert sends >= 2
    assert seen == {1: sends, 2: sends, 3: sends}
    st = pub.stats()
    assert (st.resent_punches, st.receipted) == (3 * (sends - 1), 3)


def test_d3_broker_certificate_from_another_ca_is_refused(
        broker: MosquittoBroker, outbox: Outbox, log_key: SigningKey) -> None:
    pub = Publisher(outbox, DEVICE, log_key=log_key.verify_key,
                    settings=settings(broker, ca_file=broker.pki.foreign_ca_file))
    pub.start()
    try:
        wait_for(lambda: pub.stats().connect_failures >= 2, ROUND_TRIP_S,
                 "two failed TLS handshakes")
        assert pub.stats().connects == 0
    finally:
        pub.stop()


def test_d4_reconnects_and_resumes_after_broker_restart(
        broker: MosquittoBroker, outbox: Outbox, device_key: SigningKey,
        standin: ReceiptStandin, run_publisher: Callable[..., Publisher]) -> None:
    pub = run_publisher()
    wait_for(lambda: pub.stats().connected, ROUND_TRIP_S, "connection")
    broker.restart()
    wait_for(lambda: pub.stats().connects >= 2, ROUND_TRIP_S, "the reconnect")
    record_n(outbox, device_key, 4, pub.notify_new)
    wait_for(lambda: outbox.depth() == 0, ROUND_TRIP_S, "delivery after the restart")


@pytest.mark.usefixtures("standin")
def test_make_publisher_wires_the_agent_config(
        broker: MosquittoBroker, outbox: Outbox, device_key: SigningKey, log_key: SigningKey,
        tmp_path: Path) -> None:
    cert = broker.pki.device(DEVICE)
    save_signing_key(tmp_path / "sign.key", device_key)   # the witness cosigns with it
    config = parse_config({
        "device": {"id": DEVICE, "state_dir": str(tmp_path)},
        "keys": {"signing_key": "sign.key", "queue_key": "queue.key",
                 "tls_key": f"credential:{cert.key_file.name}", "tls_cert": str(cert.cert_file),
                 "ca_cert": str(cert.ca_file), "log_public_key": log_key.verify_key.b64},
        "mqtt": {"host": broker.host, "port": broker.port, "reconnect_min_s": 0.1},
        "readers": {"front": {"kind": "simulated", "credentials": ["0001"]}},
    }, base_dir=tmp_path)
    pub = make_publisher(config, outbox, status=dict,
                         env={"CREDENTIALS_DIRECTORY": str(cert.key_file.parent)})
    assert pub.state()["status"] == "stopped"
    pub.start()
    try:
        record_n(outbox, device_key, 2, pub.wake)
        wait_for(lambda: outbox.depth() == 0, ROUND_TRIP_S, "delivery")
        assert pub.healthy()
        state = pub.state()
        assert (state["status"], state["receipted"]) == ("connected", 2)
        assert isinstance(state["last_receipt_us"], int)
    finally:
        pub.stop()
    assert not pub.healthy()


# --- status and last will -------------------------------------------------------------------

def test_status_is_retained_online_with_queue_and_health(
        broker: MosquittoBroker, outbox: Outbox, device_key: SigningKey,
        run_publisher: Callable[..., Publisher]) -> None:
    record_n(outbox, device_key, 2)       # nobody acks: both stay queued
    pub = run_publisher(status=lambda: {"clock": "synced", "readers": {"front": "ok"},
                                         "version": "9.9.9", "pid": 1})
    wait_for(lambda: pub.stats().sent_punches == 2, ROUND_TRIP_S, "publishing")
    sub = broker.subscribe("collector.test", topics.status(DEVICE), client_id="status-reader")
    msg = sub.get(ROUND_TRIP_S)
    body = json.loads(msg.payload)
    assert msg.retain
    assert body["state"] == "online"
    assert body["queue"]["depth"] == 2
    assert body["queue"]["oldest_unacked_us"] == outbox.oldest_created_us()
    assert (body["clock"], body["readers"], body["version"]) == ("synced", {"front": "ok"},
                                                                   "9.9.9")
    pub.stop()
    assert json.loads(sub.get_until(
        lambda m: json.loads(m.payload)["state"] == "offline", ROUND_TRIP_S)[-1].payload
    )["reason"] == "stopped"


_CHILD = r"""
import json, sys
cfg = json.loads(sys.argv[1])
sys.path.insert(0, cfg["root"])
from pathlib import Path
from agent.publisher import Publisher, PublisherSettings
from agent.queue import Outbox
from wire.keys import VerifyKey
outbox = Outbox(Path(cfg["queue"]), bytes.fromhex(cfg["qkey"]), cfg["device"])
s = PublisherSettings(host=cfg["host"], port=cfg["port"], ca_file=Path(cfg["ca"]),
                      cert_file=Path(cfg["cert"]), key_file=Path(cfg["key"]),
                      reconnect_min_s=0.05, reconnect_max_s=0.5)
pub = Publisher(outbox, cfg["device"], log_key=VerifyKey.from_b64(cfg["log"]), settings=s,
                status=lambda: {"clock": "unsynced", "readers": {"front": "ok"}})
pub.start()
sys.stdin.read()  # run until killed
"""


def test_will_marks_the_clock_offline_when_its_process_is_killed(
        broker: MosquittoBroker, tmp_path: Path, log_key: SigningKey) -> None:
    device = "clock-killed"
    cert = broker.pki.device(device)
    cfg = {"root": str(ROOT), "queue": str(tmp_path / "q.db"), "qkey": os.urandom(32).hex(),
           "device": device, "host": broker.host, "port": broker.port, "ca": str(cert.ca_file),
           "cert": str(cert.cert_file), "key": str(cert.key_file), "log": log_key.verify_key.b64}
    sub = broker.subscribe("collector.test", topics.status(device), client_id="status-reader")
    child = subprocess.Popen([sys.executable, "-c", _CHILD, json.dumps(cfg)],
                             stdin=subprocess.PIPE)
    try:
        online = sub.get_until(lambda m: json.loads(m.payload)["state"] == "online",
                               START_S)[-1]
        assert json.loads(online.payload)["clock"] == "unsynced"
        child.kill()
        child.wait(ROUND_TRIP_S)
        will = sub.get_until(lambda m: json.loads(m.payload)["state"] == "offline",
                             ROUND_TRIP_S)[-1]
        assert json.loads(will.payload)["reason"] == "connection-lost"
    finally:
        child.kill()
        child.wait(ROUND_TRIP_S)
    # One connection per certificate (the broker forces the client id to the CN).
    sub.client.disconnect()
    sub.client.loop_stop()
    late = broker.subscribe("collector.test", topics.status(device), client_id="late-reader")
    retained = late.get(ROUND_TRIP_S)
    assert retained.retain
    assert json.loads(retained.payload)["state"] == "offline"


# --- units ----------------------------------------------------------------------------------

def test_backoff_is_exponential_jittered_and_capped() -> None:
    rng = random.Random(7)  # noqa: S311 -- a seeded sequence for a repeatable test
    for attempt, base in [(1, 1.0), (2, 2.0), (3, 4.0), (7, 60.0), (40, 60.0)]:
        delays = [backoff_delay(attempt, 1.0, 60.0, rng) for _ in range(200)]
        assert all(base / 2 <= d <= base for d in delays)
        assert max(delays) - min(delays) > base / 4   # jittered, not one fixed value


@pytest.mark.parametrize(("change", "message"), [
    ({"batch_max": 501}, "batch_max must be 1-500"),
    ({"batch_max": 100, "window_punches": 50}, "window_punches must be ≥ batch_max"),
    ({"reconnect_min_s": 5.0, "reconnect_max_s": 1.0}, "reconnect_min_s ≤ reconnect_max_s"),
    ({"port": 0}, "is not a TCP port"),
])
def test_invalid_settings_are_refused(change: dict[str, Any], message: str) -> None:
    base: dict[str, Any] = {"host": "h", "port": 8883, "ca_file": Path("ca"),
                            "cert_file": Path("c"), "key_file": Path("k")}
    with pytest.raises(PublisherError, match=message):
        PublisherSettings(**{**base, **change})


def test_group_readable_tls_key_is_refused(broker: MosquittoBroker, tmp_path: Path,
                                           outbox: Outbox, log_key: SigningKey) -> None:
    cert = broker.pki.device(DEVICE)
    key = tmp_path / "tls.key"
    key.write_bytes(cert.key_file.read_bytes())
    key.chmod(0o640)
    with pytest.raises(PublisherError, match="group/others"):
        Publisher(outbox, DEVICE, log_key=log_key.verify_key,
                  settings=settings(broker, key_file=key))
