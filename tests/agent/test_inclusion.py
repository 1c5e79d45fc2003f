"""The clock's checks that its own punches are in the log (agent.inclusion, protocol.md §13.9),
with real RFC 9162 proofs from wire.merkle.MemoryTree: a proof that verifies counts, a
tampered path, another entry, a leaf named missing and no answer before the deadline are
failures, reported in the status; pending checks survive a restart; the file is bounded.
"""

from __future__ import annotations

import hashlib
import json
import logging
import random
from pathlib import Path

import pytest

from agent.inclusion import InclusionChecker, inclusion_path
from agent.status import witness_line
from wire import ZERO_HASH
from wire.device_status import DeviceStatus, WitnessStatus
from wire.errors import DecodeError, OversizeError
from wire.inclusion import (
    MAX_ANSWER_BYTES,
    MAX_REQUEST_LEAVES,
    InclusionAnswer,
    InclusionRequest,
    LeafProof,
    answer_topic,
    device_of_request_topic,
    request_topic,
)
from wire.ledger import Entry, make_entry
from wire.merkle import MemoryTree, entry_leaf_hash, inclusion_proof, root
from wire.note import Checkpoint

ORIGIN = "acme.example/timeclock"
DEVICE = "clock-1"


class Log:
    """A ledger's entries and tree: every third entry is one of our punches."""

    def __init__(self) -> None:
        self.entries: list[Entry] = []
        self.tree = MemoryTree()
        self.bodies: dict[int, str] = {}     # leaf -> body hash of our punch

    def grow(self, n: int) -> None:
        for _ in range(n):
            i = len(self.entries)
            body = f'{{"punch":{i}}}'.encode()
            kind = "punch" if i % 3 == 1 else "rejection"
            prev = self.entries[-1].hash() if self.entries else ZERO_HASH
            e = make_entry(idx=i, kind=kind, at=1_000 + i, body=body, prev=prev)
            self.entries.append(e)
            self.tree.append([entry_leaf_hash(e)])
            if kind == "punch":
                self.bodies[i] = hashlib.sha256(body).hexdigest()

    def checkpoint(self) -> Checkpoint:
        return Checkpoint(ORIGIN, len(self.entries), root(self.tree, len(self.entries)))

    def landed(self) -> list[tuple[int, int, str]]:
        return [(leaf // 3 + 1, leaf, body) for leaf, body in sorted(self.bodies.items())]

    def answer(self, req: InclusionRequest) -> InclusionAnswer:
        return InclusionAnswer(req.device, req.size, tuple(
            LeafProof(i, self.entries[i], tuple(inclusion_proof(self.tree, i, req.size)))
            for i in req.leaves))


class Now:
    def __init__(self) -> None:
        self.t = 1_767_225_600.0

    def __call__(self) -> float:
        return self.t


def make(tmp_path: Path, now: Now | None = None, **kw: object) -> InclusionChecker:
    return InclusionChecker(inclusion_path(tmp_path), DEVICE, now=now or Now(), **kw)  # type: ignore[arg-type]


def test_d5_own_punches_proven_and_the_pending_list_survives_a_restart(
        tmp_path: Path) -> None:
    lg = Log()
    lg.grow(30)
    chk = make(tmp_path)
    assert chk.record(lg.landed()) == 10
    assert chk.requests(None) == []                  # no verified checkpoint yet: nothing
    again = make(tmp_path)                           # restart before the answer
    assert again.status().pending == 10
    reqs = again.requests(lg.checkpoint())
    assert [r.leaves for r in reqs] == [tuple(sorted(lg.bodies))]
    assert again.handle(lg.answer(reqs[0]).to_bytes())
    st = again.status()
    assert (st.checked, st.pending, st.failed) == (10, 0, 0)
    assert make(tmp_path).status().checked == 10      # persisted
    assert "10 punch(es) proven in the log, 0 pending" in witness_line(
        {"state": "ok", "size": 30, "inclusion": st.to_dict()}, now_us=0)


def test_only_leaves_below_the_verified_size_are_asked(tmp_path: Path) -> None:
    lg = Log()
    lg.grow(10)
    cp10 = lg.checkpoint()
    lg.grow(20)
    chk = make(tmp_path)
    chk.record(lg.landed())
    (req,) = chk.requests(cp10)
    assert req.size == 10
    assert req.leaves == (1, 4, 7)
    assert chk.requests(cp10) == []                  # asked: not again before retry_s
    chk.handle(lg.answer(req).to_bytes())
    assert chk.status().checked == 3
    assert chk.status().pending == 7


def test_d5_a_tampered_path_is_a_failure(tmp_path: Path,
                                        caplog: pytest.LogCaptureFixture) -> None:
    lg = Log()
    lg.grow(20)
    chk = make(tmp_path)
    chk.record(lg.landed()[:1])
    (req,) = chk.requests(lg.checkpoint())
    good = lg.answer(req).proofs[0]
    path = list(good.inclusion_path)
    path[0] = bytes(32)
    bad = InclusionAnswer(DEVICE, req.size, (LeafProof(good.leaf_index, good.entry,
                                                       tuple(path)),))
    with caplog.at_level(logging.ERROR):
        assert chk.handle(bad.to_bytes())
    st = chk.status()
    assert (st.checked, st.pending, st.failed, st.reason) == (0, 0, 1, "bad-proof")
    assert "INCLUSION CHECK FAILED" in caplog.text
    ws = WitnessStatus("ok", 20, inclusion=st)
    assert ws.alarm
    assert ws.inclusion_failed
    assert "INCLUSION CHECK FAILED x1" in witness_line(ws.to_dict(), now_us=0)
    # and it travels in the device status, parsed strictly
    ds = DeviceStatus(DEVICE, "offline", "1", witness=ws)
    assert DeviceStatus.from_bytes(ds.to_bytes()) == ds


def test_d5_a_proof_of_another_root_is_a_failure(tmp_path: Path) -> None:
    """The proof is right for the collector's (rewritten) tree, not the checkpoint held."""
    lg, forged = Log(), Log()
    lg.grow(12)
    forged.grow(11)
    forged.entries.append(make_entry(idx=11, kind="rejection", at=5, body=b"{}",
                                     prev=forged.entries[-1].hash()))
    forged.tree.append([entry_leaf_hash(forged.entries[-1])])
    chk = make(tmp_path)
    chk.record(lg.landed())
    (req,) = chk.requests(lg.checkpoint())
    chk.handle(forged.answer(req).to_bytes())
    assert chk.status().failed == 4
    assert chk.status().reason == "bad-proof"


def test_d5_another_entry_is_a_failure(tmp_path: Path) -> None:
    lg = Log()
    lg.grow(20)
    chk = make(tmp_path)
    chk.record([(1, 4, lg.bodies[1])])   # leaf 4 with the body of leaf 1's punch: not ours
    (req,) = chk.requests(lg.checkpoint())
    chk.handle(lg.answer(req).to_bytes())   # a valid proof of leaf 4, whose body differs
    assert chk.status().reason == "wrong-entry"
    assert chk.status().failed == 1


def test_d5_missing_and_no_answer_are_failures(tmp_path: Path) -> None:
    lg = Log()
    lg.grow(20)
    now = Now()
    chk = make(tmp_path, now, deadline_s=600.0, retry_s=60.0)
    chk.record(lg.landed()[:2])
    (req,) = chk.requests(lg.checkpoint())
    chk.handle(InclusionAnswer(DEVICE, req.size, (), (req.leaves[0],)).to_bytes())
    assert chk.status().reason == "missing"
    assert chk.status().pending == 1
    now.t += 61
    (again,) = chk.requests(lg.checkpoint())        # asked again after retry_s
    assert again.leaves == (req.leaves[1],)
    now.t += 3600                                    # offline: nothing asked meanwhile
    assert len(chk.requests(lg.checkpoint())) == 1   # not failed: asked 3 times only
    assert chk.status().pending == 1
    for _ in range(20):                              # asked every retry_s, unanswered
        now.t += 61
        chk.requests(lg.checkpoint())
        if not chk.status().pending:
            break
    st = chk.status()
    assert (st.failed, st.pending, st.reason) == (2, 0, "no-answer")
    # a late answer for a failed leaf changes nothing
    assert not chk.handle(lg.answer(again).to_bytes())


def test_answers_for_another_size_or_device_are_ignored(tmp_path: Path) -> None:
    lg = Log()
    lg.grow(10)
    cp10 = lg.checkpoint()
    lg.grow(10)
    chk = make(tmp_path)
    chk.record(lg.landed()[:1])
    (req,) = chk.requests(lg.checkpoint())
    stale = lg.answer(InclusionRequest(DEVICE, 10, req.leaves))
    assert stale.size == cp10.size
    assert not chk.handle(stale.to_bytes())
    other = InclusionAnswer("clock-2", req.size, lg.answer(req).proofs)
    assert not chk.handle(other.to_bytes())
    assert not chk.handle(b"not json")
    assert chk.status().pending == 1
    assert chk.status().failed == 0


def test_sample_and_off(tmp_path: Path) -> None:
    lg = Log()
    lg.grow(300)
    none = make(tmp_path / "a", mode="sample", sample_rate=0.0)
    assert none.record(lg.landed()) == 0
    some = make(tmp_path / "b", mode="sample", sample_rate=0.5, rng=random.Random(7))  # noqa: S311 -- a seeded test sample
    assert 20 < some.record(lg.landed()) < 80
    assert make(tmp_path / "c", mode="off").record(lg.landed()) == 0
    with pytest.raises(ValueError, match="check_inclusion"):
        make(tmp_path / "d", mode="some")


def test_pending_is_bounded(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    lg = Log()
    lg.grow(60)
    chk = make(tmp_path, max_pending=5)
    with caplog.at_level(logging.WARNING):
        chk.record(lg.landed())
    assert chk.status().pending == 5
    assert "dropped unchecked" in caplog.text
    d = json.loads(inclusion_path(tmp_path).read_text())
    assert d["dropped"] == 15
    assert sorted(map(int, d["pending"])) == sorted(lg.bodies)[-5:]


def test_an_unreadable_file_is_kept_and_reported(tmp_path: Path) -> None:
    inclusion_path(tmp_path).write_text("{not json")
    chk = make(tmp_path)
    assert chk.status().failed == 1
    assert chk.status().reason == "state-unreadable"
    lg = Log()
    lg.grow(5)
    chk.record(lg.landed())
    assert inclusion_path(tmp_path).read_text() == "{not json"   # evidence kept


def test_messages_round_trip_and_parse_strictly() -> None:
    lg = Log()
    lg.grow(8)
    req = InclusionRequest(DEVICE, 8, (1, 4))
    assert InclusionRequest.from_bytes(req.to_bytes()) == req
    ans = lg.answer(req)
    assert InclusionAnswer.from_bytes(ans.to_bytes()) == ans
    assert request_topic(DEVICE) == "timeclock/v1/devices/clock-1/inclusion/request"
    assert answer_topic(DEVICE) == "timeclock/v1/devices/clock-1/inclusion"
    assert device_of_request_topic(request_topic(DEVICE)) == DEVICE
    assert device_of_request_topic(answer_topic(DEVICE)) is None
    bad_requests = [
        b'{"device":"clock-1","leaves":[4,1],"size":8,"v":1}',       # unsorted
        b'{"device":"clock-1","leaves":[1,1],"size":8,"v":1}',       # repeated
        b'{"device":"clock-1","leaves":[8],"size":8,"v":1}',         # not below size
        b'{"device":"clock-1","leaves":[],"size":8,"v":1}',          # empty
        b'{"device":"clock-1","leaves":[1],"size":8,"v":2}',         # version
        b'{"device":"clock-1","leaves":[1],"size":8,"v":1,"x":1}',   # unknown key
        b'{"device":"clock-1","leaves":[true],"size":8,"v":1}',      # not an integer
    ]
    for raw in bad_requests:
        with pytest.raises(DecodeError):
            InclusionRequest.from_bytes(raw)
    with pytest.raises(DecodeError):
        InclusionRequest(DEVICE, 1000, tuple(range(MAX_REQUEST_LEAVES + 1)))
    with pytest.raises(OversizeError):
        InclusionAnswer.from_bytes(b" " * (MAX_ANSWER_BYTES + 1))
    d = ans.to_dict()
    d["proofs"][0]["inclusion_path"][0] = "AAAA"
    with pytest.raises(DecodeError):
        InclusionAnswer.from_dict(d)
    d = ans.to_dict()
    d["missing"] = [1]                                              # proven and missing
    with pytest.raises(DecodeError):
        InclusionAnswer.from_dict(d)
