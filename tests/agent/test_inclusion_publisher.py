"""The publisher's inclusion checks (agent/publisher.py with agent.inclusion, protocol.md
§13.9), real broker and outbox: a v2 receipt keeps (leaf, body hash) of the clock's own
deleted punches only — not of a seq acked with another punch; once its witness cosigned a
covering checkpoint, the clock asks on its own request topic, and a proof to that root makes
the punches checked, in the status too."""

from __future__ import annotations

import hashlib
from pathlib import Path

import pytest

from agent.inclusion import InclusionChecker, inclusion_path
from agent.publisher import Publisher
from agent.queue import Outbox
from agent.witness import ClockWitness, witness_path
from tests.agent.receipt_kit import DEVICE, record_n, settings
from tests.fixtures.mosquitto import MosquittoBroker
from tests.polling import wait_for
from wire import ZERO_HASH, topics
from wire.ack import Ack
from wire.inclusion import InclusionAnswer, InclusionRequest, LeafProof, answer_topic, request_topic
from wire.keys import SigningKey
from wire.ledger import Entry, make_entry
from wire.merkle import MemoryTree, entry_leaf_hash, inclusion_proof, root
from wire.note import Checkpoint
from wire.punch import Envelope
from wire.witness import AddCheckpoint, checkpoint_topic

pytestmark = [pytest.mark.mqtt]

ORIGIN = "acme.example/timeclock"
FOREIGN = "f" * 64


def test_d5_own_receipted_punches_are_asked_and_proven(broker: MosquittoBroker,
                                                       outbox: Outbox,
                                                       device_key: SigningKey,
                                                       log_key: SigningKey,
                                                       tmp_path: Path) -> None:
    punches = broker.subscribe("collector.test", topics.punches(DEVICE))
    # One certificate, one connection: the broker forces the client id to the CN.
    assert broker.suback(punches.client, [request_topic(DEVICE)]) == ["Granted QoS 1"]
    requests, col = punches, punches.client
    record_n(outbox, device_key, 3)
    witness = ClockWitness(witness_path(tmp_path), DEVICE, device_key, log_key.verify_key)
    checker = InclusionChecker(inclusion_path(tmp_path), DEVICE)
    pub = Publisher(outbox, DEVICE, log_key=log_key.verify_key, settings=settings(broker),
                    witness=witness, inclusion=checker)
    pub.start()
    try:
        env = Envelope.from_bytes(punches.get().payload)
        signed = {p.punch.seq: p for p in env.punches}
        # a ledger: entries 0..9 not ours, then seq 1, seq 2 (another punch), seq 3
        entries: list[Entry] = []
        for i in range(13):
            body = signed[i - 9].to_bytes() if i in (10, 12) else b'{"other":%d}' % i
            entries.append(make_entry(idx=i, kind="punch", at=i, body=body,
                                      prev=entries[-1].hash() if entries else ZERO_HASH))
        tree = MemoryTree()
        tree.append([entry_leaf_hash(e) for e in entries])
        landed = ((1, signed[1].hash(), 10), (2, FOREIGN, 11), (3, signed[3].hash(), 12))
        receipt = Ack.landed(DEVICE, landed, at=1, log=log_key.key_id).sign(log_key)
        col.publish(topics.acks(DEVICE), receipt.to_bytes(), qos=1).wait_for_publish(30)
        wait_for(lambda: checker.status().pending == 2, 30, "seqs 1 and 3 kept for checks")
        assert outbox.depth() == 1                 # seq 2 stays queued
        cp = Checkpoint(ORIGIN, 13, root(tree, 13))
        col.publish(checkpoint_topic(DEVICE), AddCheckpoint(0, (), cp.sign(log_key)).to_bytes(),
                    qos=1).wait_for_publish(30)
        req = InclusionRequest.from_bytes(requests.get_until(
            lambda m: m.topic == request_topic(DEVICE))[-1].payload)
        assert (req.size, req.leaves) == (13, (10, 12))
        answer = InclusionAnswer(DEVICE, 13, tuple(
            LeafProof(i, entries[i], tuple(inclusion_proof(tree, i, 13))) for i in req.leaves))
        col.publish(answer_topic(DEVICE), answer.to_bytes(), qos=1).wait_for_publish(30)
        wait_for(lambda: checker.status().checked == 2, 30, "both punches proven")
        assert checker.status().failed == 0
        inc = pub.state()["witness"]["inclusion"]
        assert (inc["checked"], inc["pending"], inc["failed"]) == (2, 0, 0)
        assert hashlib.sha256(signed[1].to_bytes()).hexdigest() == entries[10].body
    finally:
        pub.stop()
