"""The clock as a witness (agent/witness.py, DESIGN.md §8.3): real notes signed by a log key,
real RFC 9162 proofs from wire.merkle.MemoryTree, a real state file in tmp_path."""

from __future__ import annotations

import base64
import hashlib
import json
import logging
from collections.abc import Callable
from pathlib import Path

import pytest

from agent.status import render
from agent.witness import ClockWitness, witness_path
from wire.device_status import DeviceStatus, WitnessStatus
from wire.errors import DecodeError
from wire.keys import SigningKey
from wire.merkle import MemoryTree, consistency_proof, leaf_hash, root
from wire.note import COSIGNATURE_V1, Checkpoint, NoteVerifier
from wire.witness import AddCheckpoint, CosignatureReply, device_witness_name

ORIGIN = "acme.example/timeclock"
DEVICE = "clock-0017"
NOW = 1_767_225_600.0


class Log:
    """A log: a Merkle tree and the log key that signs its checkpoints."""

    def __init__(self, key: SigningKey, origin: str = ORIGIN) -> None:
        self.key = key
        self.origin = origin
        self.tree = MemoryTree()
        self.leaves: list[bytes] = []

    def grow(self, n: int, tag: bytes = b"e") -> None:
        new = [leaf_hash(tag + str(len(self.leaves) + i).encode()) for i in range(n)]
        self.leaves += new
        self.tree.append(new)

    def checkpoint(self, size: int | None = None) -> Checkpoint:
        size = self.tree.size if size is None else size
        return Checkpoint(self.origin, size, root(self.tree, size))

    def request(self, old: int, size: int | None = None, *,
                key: SigningKey | None = None) -> bytes:
        cp = self.checkpoint(size)
        proof = tuple(consistency_proof(self.tree, old, cp.size))
        return AddCheckpoint(old, proof, cp.sign(key or self.key)).to_bytes()


@pytest.fixture
def log_key() -> SigningKey:
    return SigningKey.generate()


@pytest.fixture
def device_key() -> SigningKey:
    return SigningKey.generate()


@pytest.fixture
def make(tmp_path: Path, device_key: SigningKey,
         log_key: SigningKey) -> Callable[[], ClockWitness]:
    return lambda: ClockWitness(witness_path(tmp_path), DEVICE, device_key,
                                log_key.verify_key, now=lambda: NOW)


def device_verifier(key: SigningKey) -> NoteVerifier:
    return NoteVerifier(device_witness_name(ORIGIN, DEVICE), key.verify_key, COSIGNATURE_V1)


def test_d5_cosigns_a_consistent_checkpoint_persists_it_and_survives_a_restart(
        make: Callable[[], ClockWitness], log_key: SigningKey, device_key: SigningKey,
        tmp_path: Path) -> None:
    log_ = Log(log_key)
    log_.grow(5)
    w = make()
    assert w.status().state == "none"
    reply = w.handle(log_.request(0))
    assert reply is not None
    assert reply.result == "cosigned"
    cp = log_.checkpoint()
    note = cp.signed_note(log_key).with_signature(reply.cosignature_line())
    assert cp.verify_cosignature(note, device_verifier(device_key)) == int(NOW)
    assert CosignatureReply.from_bytes(reply.to_bytes()) == reply
    assert w.status() == WitnessStatus("ok", 5, int(NOW * 1e6), 0, None, "", None)
    state = json.loads(witness_path(tmp_path).read_text())
    assert (state["origin"], state["note"]) == (ORIGIN, cp.sign(log_key))

    log_.grow(12)
    w2 = make()                                      # a restart
    assert w2.checkpoint == cp
    assert w2.handle(log_.request(5)).result == "cosigned"  # type: ignore[union-attr]
    assert make().checkpoint == log_.checkpoint()


def test_d5_a_request_from_another_size_gets_conflict_with_the_size_held(
        make: Callable[[], ClockWitness], log_key: SigningKey) -> None:
    log_ = Log(log_key)
    log_.grow(3)
    w = make()
    w.handle(log_.request(0))
    log_.grow(4)
    reply = w.handle(log_.request(0))
    assert (reply.result, reply.known_size) == ("conflict", 3)  # type: ignore[union-attr]
    assert w.checkpoint == log_.checkpoint(3)
    assert w.status().state == "ok"


def truncated(log_: Log, key: SigningKey, keep: int, regrow: int) -> Log:
    """The attack: the log cut back to ``keep`` entries, then ``regrow`` other ones appended."""
    fake = Log(key)
    fake.leaves = log_.leaves[:keep]
    fake.tree.append(fake.leaves)
    fake.grow(regrow, tag=b"forged")
    return fake


def _regrown(log_: Log, key: SigningKey) -> bytes:
    fake = truncated(log_, key, 6, 9)                # size 15, first 10 leaves not the same
    # The attacker's best proof from 10 is its own tree's: it cannot lead to the old root.
    return AddCheckpoint(10, tuple(consistency_proof(fake.tree, 10, 15)),
                         fake.checkpoint().sign(key)).to_bytes()


def _short_proof(log_: Log, key: SigningKey) -> bytes:
    log_.grow(3)
    proof = consistency_proof(log_.tree, 10, 13)[:-1]
    return AddCheckpoint(10, tuple(proof), log_.checkpoint().sign(key)).to_bytes()


REFUSALS = [
    # (case, build the request from the honest log that the clock saw at size 10, reason)
    ("shrinking", lambda log_, key: AddCheckpoint(
        0, (), truncated(log_, key, 6, 0).checkpoint().sign(key)).to_bytes(), "shrinking"),
    ("truncated-and-regrown", _regrown, "inconsistent"),
    ("same-size-other-root", lambda log_, key: AddCheckpoint(
        10, (), truncated(log_, key, 6, 4).checkpoint().sign(key)).to_bytes(),
     "inconsistent"),
    ("bad-log-signature", lambda log_, key: log_.request(10, key=SigningKey.generate()),
     "bad-signature"),
    ("proof-too-short", _short_proof, "bad-proof"),
]


@pytest.mark.parametrize(("case", "build", "reason"), REFUSALS, ids=[c[0] for c in REFUSALS])
def test_d5_refuses_and_says_so(  # noqa: PLR0917 -- three parameters and four fixtures
        case: str, build: Callable[[Log, SigningKey], bytes], reason: str,
        make: Callable[[], ClockWitness], log_key: SigningKey, device_key: SigningKey,
        caplog: pytest.LogCaptureFixture) -> None:
    log_ = Log(log_key)
    log_.grow(10)
    w = make()
    assert w.handle(log_.request(0)).result == "cosigned"  # type: ignore[union-attr]
    held = log_.checkpoint()
    with caplog.at_level(logging.ERROR, logger="agent.witness"):
        reply = w.handle(build(log_, log_key))
    assert reply is not None
    assert (reply.result, reply.reason) == ("refused", reason)
    assert reply.known == held.sign(log_key)         # the evidence: what the clock holds
    reply.verify_refusal(device_key.verify_key)
    assert any(r.levelno == logging.ERROR and "REFUSES" in r.getMessage()
               for r in caplog.records), caplog.text
    # Nothing moved: the largest checkpoint verified is still the honest one, on disk too.
    for witness in (w, make()):
        assert witness.checkpoint == held
        st = witness.status()
        assert (st.state, st.reason, st.refusals, st.size) == ("refusing", reason, 1, 10)
        assert st.since_us == int(NOW * 1e6)
    # ... and it shows in the status the clock publishes and in `timeclock-agent status`.
    status = DeviceStatus("clock-0017", "offline", "0.1.0", witness=w.status())
    assert DeviceStatus.from_bytes(status.to_bytes()).witness == w.status()
    text = render({"publisher": {"status": "connected", "witness": w.status().to_dict()}},
                  now_us=int(NOW * 1e6), live=True)
    line = next(x for x in text.splitlines() if x.startswith("witness:"))
    assert f"REFUSING to cosign ({reason})" in line


def test_d5_a_forged_refusal_does_not_verify(make: Callable[[], ClockWitness],
                                          log_key: SigningKey) -> None:
    log_ = Log(log_key)
    log_.grow(4)
    w = make()
    w.handle(log_.request(0))
    reply = w.handle(AddCheckpoint(0, (), log_.checkpoint(2).sign(log_key)).to_bytes())
    assert reply is not None
    assert reply.reason == "shrinking"
    with pytest.raises(Exception, match="does not verify"):
        reply.verify_refusal(SigningKey.generate().verify_key)


def test_d5_consistent_again_after_a_refusal_cosigns_and_keeps_the_record(
        make: Callable[[], ClockWitness], log_key: SigningKey) -> None:
    log_ = Log(log_key)
    log_.grow(4)
    w = make()
    w.handle(log_.request(0))
    w.handle(AddCheckpoint(0, (), log_.checkpoint(2).sign(log_key)).to_bytes())
    assert w.status().state == "refusing"
    log_.grow(2)
    assert w.handle(log_.request(4)).result == "cosigned"  # type: ignore[union-attr]
    st = w.status()
    assert (st.state, st.refusals, st.reason, st.size) == ("ok", 1, "shrinking", 6)


def test_d5_another_origin_is_refused(make: Callable[[], ClockWitness],
                                   log_key: SigningKey) -> None:
    log_ = Log(log_key)
    log_.grow(2)
    w = make()
    w.handle(log_.request(0))
    other = Log(log_key, origin="other.example/log")
    other.grow(3)
    reply = w.handle(other.request(0))
    assert (reply.result, reply.reason) == ("refused", "wrong-origin")  # type: ignore[union-attr]


def test_d5_garbage_is_ignored_loudly_and_changes_nothing(
        make: Callable[[], ClockWitness], log_key: SigningKey,
        caplog: pytest.LogCaptureFixture) -> None:
    log_ = Log(log_key)
    log_.grow(2)
    w = make()
    w.handle(log_.request(0))
    with caplog.at_level(logging.ERROR, logger="agent.witness"):
        assert w.handle(b"old 2\nnot base64\n\n" + log_.checkpoint().sign(log_key).encode()) \
            is None
    assert "not a checkpoint request" in caplog.text or "not standard base64" in caplog.text
    assert w.checkpoint == log_.checkpoint()


def test_d5_an_unreadable_state_file_is_broken_not_a_fresh_start(
        make: Callable[[], ClockWitness], log_key: SigningKey, tmp_path: Path) -> None:
    witness_path(tmp_path).write_text("{not json")
    log_ = Log(log_key)
    log_.grow(2)
    w = make()
    assert w.handle(log_.request(0)) is None
    assert w.status().state == "broken"
    assert witness_path(tmp_path).read_text() == "{not json"


def test_d5_the_state_file_is_replaced_atomically(make: Callable[[], ClockWitness],
                                               log_key: SigningKey, tmp_path: Path) -> None:
    log_ = Log(log_key)
    log_.grow(3)
    w = make()
    w.handle(log_.request(0))
    assert sorted(p.name for p in tmp_path.iterdir()) == ["witness.json"]


# -- the message shapes (wire.witness) -------------------------------------------------------

def test_d5_add_checkpoint_bytes_are_the_c2sp_body(log_key: SigningKey) -> None:
    log_ = Log(log_key)
    log_.grow(7)
    note = log_.checkpoint().sign(log_key)
    proof = consistency_proof(log_.tree, 3, 7)
    body = ("old 3\n" + "".join(base64.b64encode(h).decode() + "\n" for h in proof) + "\n"
            + note).encode()
    req = AddCheckpoint.from_bytes(body)
    assert (req.old_size, list(req.proof), req.note) == (3, proof, note)
    assert req.to_bytes() == body


@pytest.mark.parametrize(("body", "match"), [
    (b"old 03\n\n", "not 'old <size>'"),
    (b"old 1\n", "no blank line"),
    (b"old 0\n" + b"A" * 44 + b"\n\n", "expected 32 bytes|not standard base64"),
    (b"old 1\n" + b"\n".join([b"A" * 43 + b"="] * 64) + b"\n\n", "at most 63"),
    (b"old 1\n\nnot a note\n", "blank line|signature"),
    (b"old 1\n\n" + b"x" * 70_000, "at most"),
])
def test_d5_add_checkpoint_is_parsed_strictly(body: bytes, match: str) -> None:
    with pytest.raises(DecodeError, match=match):
        AddCheckpoint.from_bytes(body)


def test_d5_reply_is_parsed_strictly(log_key: SigningKey) -> None:
    cp = Checkpoint(ORIGIN, 1, hashlib.sha256(b"x").digest())
    ok = CosignatureReply.conflict(DEVICE, cp.body_text(), 4).to_dict()
    for bad, match in [({**ok, "extra": 1}, "unknown field"), ({**ok, "result": "maybe"},
                       "result"), ({**ok, "checkpoint": "x\n"}, "line"),
                       ({**ok, "known_size": -1}, "≥ 0")]:
        with pytest.raises(DecodeError, match=match):
            CosignatureReply.from_dict(bad)
