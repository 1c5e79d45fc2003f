"""The collector opens sealed envelopes (wire.sealed, DESIGN.md §8.6) in ingest.

Real SQLite ledger and registry in tmp_path, keys made at run time. What must hold: one open per
message; a sealed envelope is recorded exactly like the plain one it holds; whatever cannot be
opened, names another device than its clear one or its topic, or arrives unsealed while
``require_sealed`` is on, is quarantined with a reason and its raw bytes (the sealed bytes, for
sealed input) — never dropped, never acknowledged.
"""

from __future__ import annotations

import re

import pytest

from collector.ingest.alerts import Alerts
from collector.ingest.pipeline import Inbound, Ingestor
from collector.ingest.punch_verifier import judge
from collector.ledger.base import Fact, Outcome, RejectionFact
from collector.ledger.registry import RegistrySnapshot
from collector.ledger.sqlite import SQLiteStore
from tests.collector.punch_kit import T0, SimClock, enroll, envelope, new_clock
from wire.keys import SigningKey
from wire.punch import Envelope
from wire.sealed import SealedEnvelope, SealKey
from wire.seqloss import LossReport


class CountingSealKey(SealKey):
    """A real seal key that counts its opens (the cost rule: one per message)."""

    __slots__ = ("opens",)

    def __init__(self, secret: bytes) -> None:
        super().__init__(secret)
        self.opens = 0

    def open(self, ciphertext: bytes) -> bytes:
        self.opens += 1
        return super().open(ciphertext)


@pytest.fixture
def clock(sqlite_store: SQLiteStore) -> SimClock:
    c = new_clock()
    enroll(sqlite_store, c)
    return c


@pytest.fixture
def seal_key() -> CountingSealKey:
    return CountingSealKey(SealKey.generate().secret)


def sealed(clock: SimClock, n: int, key: SealKey, *, device: str | None = None) -> bytes:
    env = Envelope(clock.device, tuple(clock.batch(n)))
    return SealedEnvelope(device or clock.device, key.key_id,
                          key.public_key.seal(env.to_bytes())).to_bytes()


def reasons(facts: list[Fact]) -> list[str]:
    return [f.reason if isinstance(f, RejectionFact) else "ok" for f in facts]


def only_rejection(facts: list[Fact]) -> RejectionFact:
    assert len(facts) == 1
    f = facts[0]
    assert isinstance(f, RejectionFact)
    return f


def test_d3_sealed_envelope_is_judged_like_the_plain_one_with_one_open(
        sqlite_store: SQLiteStore, clock: SimClock, seal_key: CountingSealKey) -> None:
    payload = sealed(clock, 50, seal_key)
    facts = judge(clock.topic, payload, T0, RegistrySnapshot.load(sqlite_store), seal_key=seal_key)
    assert reasons(facts) == ["ok"] * 50
    assert seal_key.opens == 1                  # one sealed-box open per message, not per punch


def test_d3_sealed_punches_are_recorded_and_receipted(
        sqlite_store: SQLiteStore, clock: SimClock, seal_key: CountingSealKey) -> None:
    log_key = SigningKey.generate()
    ing = Ingestor(sqlite_store, lambda: RegistrySnapshot.load(sqlite_store), log_key, Alerts(),
                   seal_key=seal_key, require_sealed=True)
    res = ing.process([Inbound(clock.topic, sealed(clock, 3, seal_key), T0, mid=1)],
                      now_us=T0)
    assert [r.outcome for r in res.results] == [Outcome.APPENDED] * 3
    assert [topic for topic, _ in res.receipts] == [f"timeclock/v1/devices/{clock.device}/acks"]
    assert sorted(res.receipts[0][1].ack.seqs()) == [1, 2, 3]
    assert sqlite_store.progress(clock.device).contiguous == 3
    assert sqlite_store.quarantine() == []


@pytest.mark.parametrize(("case", "expected"), [
    ("other-key", ("undecryptable", "this collector's seal key is")),
    ("forged-to", ("undecryptable", "does not open with seal key")),
    ("damaged", ("undecryptable", "does not open with seal key")),
    ("no-key", ("undecryptable", "has no .collector. seal_key")),
    ("clear-device-not-topic", ("device-mismatch", "sealed envelope of 'clock-other' published")),
    ("inner-device-not-clear", ("device-mismatch", "holds an envelope of")),
    ("garbled-outer", ("malformed", "sealed envelope: ")),
    ("inner-not-json", ("malformed", "sealed envelope holds: not JSON")),
])
def test_d3_what_cannot_be_opened_is_quarantined_with_the_sealed_bytes(
        sqlite_store: SQLiteStore, clock: SimClock, seal_key: CountingSealKey, case: str,
        expected: tuple[str, str]) -> None:
    reason, detail = expected
    other = SealKey.generate()
    key: SealKey | None = seal_key
    if case == "other-key":
        payload = sealed(clock, 2, other)
    elif case == "forged-to":
        env = Envelope(clock.device, tuple(clock.batch(2)))
        payload = SealedEnvelope(clock.device, seal_key.key_id,
                                 other.public_key.seal(env.to_bytes())).to_bytes()
    elif case == "damaged":
        good = SealedEnvelope.from_bytes(sealed(clock, 2, seal_key))
        flipped = bytearray(good.ciphertext)
        flipped[60] ^= 0x40
        payload = SealedEnvelope(good.device, good.to, bytes(flipped)).to_bytes()
    elif case == "no-key":
        payload, key = sealed(clock, 2, seal_key), None
    elif case == "clear-device-not-topic":
        payload = sealed(clock, 2, seal_key, device="clock-other")
    elif case == "inner-device-not-clear":
        impostor = new_clock()
        enroll(sqlite_store, impostor)
        env = Envelope(impostor.device, tuple(impostor.batch(2)))
        payload = SealedEnvelope(clock.device, seal_key.key_id,
                                 seal_key.public_key.seal(env.to_bytes())).to_bytes()
    elif case == "garbled-outer":
        payload = sealed(clock, 2, seal_key).replace(b'"v":1', b'"v":7')
    else:
        payload = SealedEnvelope(clock.device, seal_key.key_id,
                                 seal_key.public_key.seal(b"\x00not json" * 9)).to_bytes()
    log_key = SigningKey.generate()
    ing = Ingestor(sqlite_store, lambda: RegistrySnapshot.load(sqlite_store), log_key, Alerts(),
                   seal_key=key)
    res = ing.process([Inbound(clock.topic, payload, T0, mid=7)], now_us=T0)
    assert [r.outcome for r in res.results] == [Outcome.REJECTED]
    assert res.receipts == []                       # never acknowledged
    assert [m.mid for m in res.committed] == [7]    # recorded, so the broker may drop it
    [q] = sqlite_store.quarantine()
    assert q.reason == reason
    assert re.search(detail, q.detail), q.detail
    assert sqlite_store.quarantined_raw(q.id) == payload   # the sealed bytes, not the opened ones
    assert b"em4100:" not in payload
    assert seal_key.opens <= 1


def test_d3_require_sealed_quarantines_a_plain_envelope_as_unsealed(
        sqlite_store: SQLiteStore, clock: SimClock, seal_key: CountingSealKey) -> None:
    payload = envelope(clock.device, clock.batch(2))
    registry = RegistrySnapshot.load(sqlite_store)
    assert reasons(judge(clock.topic, payload, T0, registry, seal_key=seal_key)) == ["ok"] * 2
    f = only_rejection(judge(clock.topic, payload, T0, registry, seal_key=seal_key,
                             require_sealed=True))
    assert (f.reason, f.device, f.raw) == ("unsealed", clock.device, payload)
    assert "require_sealed" in f.detail


def test_d3_loss_reports_stay_plain_under_require_sealed(
        sqlite_store: SQLiteStore, clock: SimClock, seal_key: CountingSealKey) -> None:
    clock.batch(5)
    report = LossReport(device=clock.device, first=3, last=5, reason="queue file lost",
                        key=clock.key.key_id, at=T0).sign(clock.key)
    f = only_rejection(judge(clock.topic, report.to_bytes(), T0,
                             RegistrySnapshot.load(sqlite_store), seal_key=seal_key,
                             require_sealed=True))
    assert f.reason == "seq-loss"
