"""Receipts v2 at the clock (DESIGN.md §8.4, agent/publisher.py): a receipt that names, for a
seq, another punch than the one this clock sent (the ledger holds a conflicting punch) never
deletes the clock's own; a v2 receipt naming its own punch does. Real broker, real outbox."""

from __future__ import annotations

import pytest

from agent.publisher import Publisher
from agent.queue import Outbox
from tests.agent.receipt_kit import DEVICE, record_n, settings
from tests.fixtures.mosquitto import MosquittoBroker
from tests.polling import wait_for
from wire import topics
from wire.ack import Ack
from wire.keys import SigningKey
from wire.punch import Envelope

pytestmark = [pytest.mark.mqtt]

FOREIGN = "f" * 64


def test_a_v2_receipt_for_another_punch_keeps_ours(broker: MosquittoBroker, outbox: Outbox,
                                                   device_key: SigningKey,
                                                   log_key: SigningKey) -> None:
    punches = broker.subscribe("collector.test", topics.punches(DEVICE))
    col = punches.client   # one certificate, one connection (client id forced to the CN)
    record_n(outbox, device_key, 3)            # queued before it connects: one envelope
    pub = Publisher(outbox, DEVICE, log_key=log_key.verify_key, settings=settings(broker))
    pub.start()
    try:
        env = Envelope.from_bytes(punches.get().payload)
        sent = {p.punch.seq: p.punch.hash() for p in env.punches}
        assert sorted(sent) == [1, 2, 3]
        landed = ((1, sent[1], 10), (2, FOREIGN, 11), (3, sent[3], 12))
        receipt = Ack.landed(DEVICE, landed, at=1, log=log_key.key_id).sign(log_key)
        col.publish(topics.acks(DEVICE), receipt.to_bytes(), qos=1).wait_for_publish(30)
        wait_for(lambda: outbox.depth() == 1, 30, "seqs 1 and 3 deleted")
        assert [r.punch.seq for r in outbox.pending()] == [2]
        assert pub.state()["foreign_punch_acks"] == 1
        # The ledger's own record of seq 2, when it is ours, does delete it.
        ours = Ack.landed(DEVICE, ((2, sent[2], 13),), at=2, log=log_key.key_id).sign(log_key)
        col.publish(topics.acks(DEVICE), ours.to_bytes(), qos=1).wait_for_publish(30)
        wait_for(lambda: outbox.depth() == 0, 30, "seq 2 deleted by its own receipt")
    finally:
        pub.stop()
