"""Broker outages: punches recorded while the broker is away all reach a receipt afterwards.

The broker is the REAL mTLS Mosquitto of the fixture, stopped (SIGTERM) or crashed (SIGKILL,
losing whatever it had not saved) and started again on the same port.
"""

from __future__ import annotations

from agent.publisher import Publisher
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
from wire.keys import SigningKey


def test_d4_1000_punches_recorded_while_broker_down_are_all_receipted(
        broker: MosquittoBroker, outbox: Outbox, log_key: SigningKey,
        standin: ReceiptStandin) -> None:
    device_key = SigningKey.generate()
    pub = Publisher(outbox, DEVICE, log_key=log_key.verify_key,
                    settings=settings(broker, resend_after_s=5.0))
    pub.start()
    try:
        wait_for(lambda: pub.stats().connected, ROUND_TRIP_S, "connection")
        broker.stop()
        wait_for(lambda: not pub.stats().connected, ROUND_TRIP_S, "the agent to see the outage")
        seqs = record_n(outbox, device_key, 1000, pub.notify_new)
        assert seqs == list(range(1, 1001))
        assert outbox.depth() == 1000
        assert standin.punches == 0
        broker.start()
        # How fast it drains is bench/agent_drain.py's question (docs/performance.md); here
        # only that everything arrives, once the broker is back, however slow the machine.
        wait_for(lambda: outbox.depth() == 0, DRAIN_S,
                 "the queue to empty after the broker returned")
        st = pub.stats()
        assert st.receipted == 1000
        assert st.bad_receipts == st.foreign_receipts == st.unsent_acks == 0
        assert set(standin.seqs_seen(DEVICE)) == set(range(1, 1001))
        assert standin.errors == []
    finally:
        pub.stop()


def test_d4_broker_crash_mid_drain_loses_no_punch(
        broker: MosquittoBroker, outbox: Outbox, log_key: SigningKey,
        standin: ReceiptStandin) -> None:
    """SIGKILL drops what the broker had PUBACKed but not delivered and the receipts it
    held; only receipts delete rows, so resends fill the gap.

    The stand-in acks at most 10 envelopes (200 punches) before the crash, so at least 400 rows
    are still queued when the broker dies, whatever the machine's speed (a fast one would
    otherwise drain all 600 before the kill, a race the crash must never win).
    """
    device_key = SigningKey.generate()
    record_n(outbox, device_key, 600)
    standin.max_receipts = 10
    pub = Publisher(outbox, DEVICE, log_key=log_key.verify_key,
                    settings=settings(broker, batch_max=20, window_punches=100,
                                      resend_after_s=1.0))
    pub.start()
    try:
        wait_for(lambda: pub.stats().receipts >= 2, ROUND_TRIP_S, "the drain to start")
        broker.kill()
        assert outbox.depth() >= 400
        standin.max_receipts = None
        broker.start()
        wait_for(lambda: outbox.depth() == 0, DRAIN_S, "the queue to empty after the crash")
        assert set(standin.seqs_seen(DEVICE)) == set(range(1, 601))
        assert pub.stats().receipted == 600
    finally:
        pub.stop()
