"""The collector answers the clocks' inclusion requests (collector.ingest.inclusion_answers,
protocol.md §13.9) from either store: each answer verifies on the clock (agent.inclusion)
against the root of the stored tree, the entry's body hash is the hash of the clock's signed
punch bytes, leaves beyond the tree are listed missing, and a request on another device's
topic or that does not parse gets no answer.
"""

from __future__ import annotations

import hashlib
from pathlib import Path

from agent.inclusion import InclusionChecker
from collector.ingest.inclusion_answers import InclusionAnswers
from collector.ledger.base import EventFact
from collector.ledger.sqlbase import SQLStore
from tests.collector.ledger_kit import T0, Clock
from wire.inclusion import InclusionAnswer, InclusionRequest, answer_topic, request_topic
from wire.note import Checkpoint

ORIGIN = "acme.example/timeclock"


def _site(store: SQLStore) -> tuple[Clock, dict[int, tuple[int, str]]]:
    """Two clocks punching in turn; returns clock-1 and its seq -> (leaf, body hash)."""
    a, b = Clock("clock-1"), Clock("clock-2")
    store.append([EventFact("device", a.enrolled_body()),
                  EventFact("device", b.enrolled_body())], now_us=T0)
    mine: dict[int, tuple[int, str]] = {}
    for i in range(12):
        signed = a.punch()
        store.append([a.fact(signed), b.fact()], now_us=T0 + i + 1)
        found = store.punch_hash("clock-1", signed.punch.seq)
        assert found is not None
        assert found[0] == signed.hash()
        mine[signed.punch.seq] = (found[1], hashlib.sha256(signed.to_bytes()).hexdigest())
    return a, mine


def test_d5_answers_verify_on_the_clock(store: SQLStore, tmp_path: Path) -> None:
    _a, mine = _site(store)
    size = store.tree_size()
    published: list[tuple[str, bytes]] = []
    answers = InclusionAnswers(store, lambda t, b: published.append((t, b)))
    chk = InclusionChecker(tmp_path / "inclusion.json", "clock-1")
    chk.record([(seq, leaf, body) for seq, (leaf, body) in mine.items()])
    cp = Checkpoint(ORIGIN, size, store.merkle_root(size))
    for req in chk.requests(cp):
        answers.receive(request_topic("clock-1"), req.to_bytes())
    assert answers.process() == 1
    ((topic, payload),) = published
    assert topic == answer_topic("clock-1")
    assert chk.handle(payload)
    st = chk.status()
    assert (st.checked, st.pending, st.failed) == (12, 0, 0)


def test_d5_a_body_hash_that_is_not_the_punch_fails(store: SQLStore,
                                                    tmp_path: Path) -> None:
    _a, mine = _site(store)
    size = store.tree_size()
    answers = InclusionAnswers(store, lambda t, b: None)
    chk = InclusionChecker(tmp_path / "inclusion.json", "clock-1")
    leaf, _body = mine[3]
    chk.record([(3, leaf, mine[4][1])])          # another punch's bytes at leaf 3's index
    (req,) = chk.requests(Checkpoint(ORIGIN, size, store.merkle_root(size)))
    ans = answers.answer(request_topic("clock-1"), req.to_bytes())
    assert ans is not None
    assert len(ans.proofs) == 1
    chk.handle(ans.to_bytes())
    assert chk.status().reason == "wrong-entry"


def test_beyond_the_tree_is_missing_and_bad_requests_get_no_answer(store: SQLStore) -> None:
    _site(store)
    size = store.tree_size()
    answers = InclusionAnswers(store, lambda t, b: None)
    ans = answers.answer(request_topic("clock-1"),
                         InclusionRequest("clock-1", size + 5, (2, size + 1)).to_bytes())
    assert isinstance(ans, InclusionAnswer)
    assert ans.proofs == ()
    assert ans.missing == (2, size + 1)
    ok = answers.answer(request_topic("clock-1"),
                        InclusionRequest("clock-1", size, (2,)).to_bytes())
    assert ok is not None
    assert ok.proofs[0].entry.idx == 2
    # on another device's topic, or not a request: nothing
    assert answers.answer(request_topic("clock-2"),
                          InclusionRequest("clock-1", size, (2,)).to_bytes()) is None
    assert answers.answer(request_topic("clock-1"), b"{}") is None
    assert answers.counts["bad"] == 2
