"""The collector's side of the signed resume record (collector/ingest/resume_answers.py,
docs/protocol.md §13.13) on a real SQLite ledger with the real ingest pipeline: the answer names
the last punch the ledger holds and its hash, signed with the log key for the asking clock and
its nonce; a clock that continues from it (seq + 1, prev = that hash) is appended as a normal
punch, while continuing with an unknown prev is a fork (what ``--after-seq`` alone would do).
Requests naming another device than their topic, or malformed, get no answer. The whole path
over MQTT with a real clock is tests/e2e/test_queue_damage.py ``[state-lost]``.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from collector.ingest.alerts import Alerts
from collector.ingest.pipeline import Inbound, Ingestor
from collector.ingest.resume_answers import ResumeAnswers
from collector.ledger import open_store
from collector.ledger.base import Outcome
from collector.ledger.registry import RegistrySnapshot
from collector.ledger.sqlbase import SQLStore
from tests.collector.punch_kit import T0, enroll, envelope, new_clock
from wire import ZERO_HASH
from wire.keys import SigningKey
from wire.resume_answer import ResumeRequest, SignedResumeAnswer, answer_topic, request_topic

LOG_KEY = SigningKey.generate()


@pytest.fixture
def store(tmp_path: Path) -> Iterator[SQLStore]:
    s = open_store(f"sqlite://{tmp_path / 'ledger.db'}")
    try:
        yield s
    finally:
        s.close()


def _answers(store: SQLStore) -> tuple[ResumeAnswers, list[tuple[str, bytes]]]:
    sent: list[tuple[str, bytes]] = []
    return ResumeAnswers(store, LOG_KEY, lambda t, b: sent.append((t, b)),
                         now=lambda: T0 + 5), sent


def test_d4_collector_answers_its_last_recorded_seq_and_hash_signed(store: SQLStore) -> None:
    clock = new_clock()
    enroll(store, clock)
    ing = Ingestor(store, lambda: RegistrySnapshot.load(store), LOG_KEY, Alerts())
    recorded = clock.batch(6)
    ing.process([Inbound(clock.topic, envelope(clock.device, recorded), T0)], now_us=T0)
    answers, sent = _answers(store)
    req = ResumeRequest.new(clock.device)
    answers.receive(request_topic(clock.device), req.to_bytes())
    assert answers.process() == 1
    [(topic, payload)] = sent
    assert topic == answer_topic(clock.device)
    got = SignedResumeAnswer.from_bytes(payload).verify(LOG_KEY.verify_key, req)
    assert (got.last_seq, got.last_hash, got.at) == (6, recorded[-1].hash(), T0 + 5)
    # The clock continues from it: a normal punch. With an unknown prev: a fork.
    clock.seq, clock.prev = 12, ZERO_HASH            # a resume after a typed seq, prev unknown
    unknown = clock.punch(seq=7)
    clock.seq, clock.prev = got.last_seq, got.last_hash
    linked = clock.punch()
    res = ing.process([Inbound(clock.topic, envelope(clock.device, [unknown]), T0, mid=2)],
                      now_us=T0)
    assert [r.outcome for r in res.results] == [Outcome.FORK]
    res = ing.process([Inbound(clock.topic, envelope(clock.device, [linked]), T0, mid=3)],
                      now_us=T0)
    assert [r.outcome for r in res.results] == [Outcome.APPENDED]
    assert store.progress(clock.device).highest == 7


def test_d4_collector_answers_zero_for_a_clock_without_punches(store: SQLStore) -> None:
    clock = new_clock()
    enroll(store, clock)
    answers, _ = _answers(store)
    req = ResumeRequest.new(clock.device)
    signed = answers.answer(request_topic(clock.device), req.to_bytes())
    assert signed is not None
    got = signed.verify(LOG_KEY.verify_key, req)
    assert (got.last_seq, got.last_hash) == (0, ZERO_HASH)


# Fixed ids: a parameter with a fresh nonce would differ between xdist workers' collections.
@pytest.mark.parametrize(("topic_device", "payload"), [
    ("clock-a", ResumeRequest.new("clock-b").to_bytes()),   # asks for another clock's record
    ("clock-a", b'{"device":"clock-a","v":1}'),             # malformed: no nonce
    ("clock-a", b"\xff" * 10),
], ids=["another-clocks-record", "no-nonce", "not-json"])
def test_d4_collector_ignores_requests_not_for_the_topics_device(
        store: SQLStore, topic_device: str, payload: bytes) -> None:
    answers, sent = _answers(store)
    answers.receive(request_topic(topic_device), payload)
    assert answers.process() == 1
    assert sent == []
    assert answers.counts["bad"] == 1
