"""Forks (DESIGN.md §8.5, issue 11 finding 3): a punch whose ``prev`` does not link to the
recorded neighbouring punch is quarantined with a severity-1 alert, never appended as a punch
and never acknowledged, and the ledger keeps verifying (the auditor reports the quarantined
fork as a finding, not tampering). Real ledger stores (SQLite and PostgreSQL), real registry.
"""

from __future__ import annotations

import hashlib
import json

import pytest

from collector.ingest.alerts import SEVERITY_CRITICAL, Alerts
from collector.ingest.pipeline import Inbound, Ingestor
from collector.ledger.audit import verify_store
from collector.ledger.base import Outcome
from collector.ledger.registry import RegistrySnapshot
from collector.ledger.sqlbase import PunchQuery, SQLStore
from tests.collector.punch_kit import T0, SimClock, enroll, envelope, new_clock
from wire import ZERO_HASH
from wire.canonical import canonical
from wire.errors import DecodeError
from wire.keys import SigningKey
from wire.punch import SignedPunch
from wire.seqloss import LossReport, SignedLossReport, looks_like_loss

LOG_KEY = SigningKey.generate()
LOG_KEYS = {LOG_KEY.key_id: LOG_KEY.verify_key}


def _ingestor(store: SQLStore) -> tuple[Ingestor, Alerts]:
    alerts = Alerts()
    return Ingestor(store, lambda: RegistrySnapshot.load(store), LOG_KEY, alerts), alerts


def _send(ing: Ingestor, clock: SimClock, items: list[SignedPunch],
          mid: int = 1) -> list[Outcome]:
    res = ing.process([Inbound(clock.topic, envelope(clock.device, items), T0, mid=mid)],
                      now_us=T0)
    return [r.outcome for r in res.results]


def _acked(ing: Ingestor, clock: SimClock, items: list[SignedPunch]) -> set[int]:
    res = ing.process([Inbound(clock.topic, envelope(clock.device, items), T0)], now_us=T0)
    out: set[int] = set()
    for _, receipt in res.receipts:
        for a, b in receipt.ack.acked:
            out.update(range(a, b + 1))
    return out


def _recorded(store: SQLStore, clock: SimClock) -> dict[int, str]:
    out: dict[int, str] = {}
    for r in store.punch_rows(PunchQuery(device=clock.device)):
        found = store.punch_hash(clock.device, r.seq)
        assert found is not None
        out[r.seq] = str(found[0])
    return out


def _verifies_with_forks(store: SQLStore, forks: int) -> None:
    """verify --full semantics: no tampering; each quarantined fork is one finding."""
    result = verify_store(store, LOG_KEYS)
    assert result.report.ok, [f.message for f in result.report.findings if f.tamper]
    found = [f for f in result.report.findings if "fork" in f.message]
    assert len(found) == forks, [f.message for f in result.report.findings]
    assert not any(f.tamper for f in found)


def _forked(clock: SimClock, seq: int, prev: str) -> SignedPunch:
    """A validly signed punch at ``seq`` whose prev is ``prev`` (not advancing the clock)."""
    saved = (clock.seq, clock.prev)
    clock.seq, clock.prev = seq - 1, prev
    try:
        return clock.punch()
    finally:
        clock.seq, clock.prev = saved


def test_d5_fork_prev_mismatch_is_quarantined_with_a_sev1_alert_never_appended(
        store: SQLStore) -> None:
    clock = new_clock()
    enroll(store, clock)
    ing, alerts = _ingestor(store)
    assert _send(ing, clock, clock.batch(3)) == [Outcome.APPENDED] * 3
    bad = _forked(clock, 4, hashlib.sha256(b"not seq 3").hexdigest())
    assert _acked(ing, clock, [bad]) == set()             # not acknowledged: the clock keeps it
    assert 4 not in _recorded(store, clock)
    q = store.quarantine()[-1]
    assert (q.reason, q.topic) == ("fork", clock.topic)
    assert store.quarantined_raw(q.id) == bad.to_bytes()
    [alert] = alerts.recent("fork")
    assert (alert.severity, alert.device) == (SEVERITY_CRITICAL, clock.device)
    assert "seq 4" in alert.detail
    # The genuine seq 4 still links and is appended; nothing else changed.
    good = clock.punch()
    assert _send(ing, clock, [good], mid=2) == [Outcome.APPENDED]
    assert _recorded(store, clock)[4] == good.hash()
    _verifies_with_forks(store, 1)


def test_d5_fork_late_punch_that_its_recorded_successor_does_not_link_to(
        store: SQLStore) -> None:
    clock = new_clock()
    enroll(store, clock)
    ing, alerts = _ingestor(store)
    p1, p2, p3, p4 = clock.batch(4)
    assert _send(ing, clock, [p1, p2, p4]) == [Outcome.APPENDED] * 3   # seq 3 is a gap
    other3 = _forked(clock, 3, p2.hash())                # links below, not to recorded seq 4
    assert _send(ing, clock, [other3], mid=2) == [Outcome.FORK]
    assert 3 not in _recorded(store, clock)
    assert len(alerts.recent("fork")) == 1
    assert _send(ing, clock, [p3], mid=3) == [Outcome.APPENDED]       # the genuine one fills it
    assert sorted(_recorded(store, clock)) == [1, 2, 3, 4]
    _verifies_with_forks(store, 1)


def test_d5_fork_in_the_same_batch_as_its_neighbour(store: SQLStore) -> None:
    clock = new_clock()
    enroll(store, clock)
    ing, _ = _ingestor(store)
    p1, p2 = clock.batch(2)
    bad3 = _forked(clock, 3, p1.hash())                  # prev of seq 2, not of seq 2 itself
    assert _send(ing, clock, [p1, p2, bad3]) == [Outcome.APPENDED, Outcome.APPENDED,
                                                  Outcome.FORK]
    _verifies_with_forks(store, 1)


def test_d5_finding3_a_clock_that_restarts_its_chain_never_breaks_the_ledger(
        store: SQLStore) -> None:
    """Issue 11 finding 3: the queue is lost, keys kept; the clock starts again at seq 1. Its
    new 1..6 are conflicts (quarantined), its new 7 does not link to the recorded 6 (a fork,
    quarantined): before, 7 was appended and `verify --full` reported TAMPER for ever."""
    clock = new_clock()
    enroll(store, clock)
    ing, alerts = _ingestor(store)
    assert _send(ing, clock, clock.batch(6)) == [Outcome.APPENDED] * 6
    recorded = _recorded(store, clock)
    restarted = SimClock(clock.device, key=clock.key, seq=0, prev=ZERO_HASH)
    again = restarted.batch(7)
    assert _send(ing, clock, again, mid=2) == [Outcome.CONFLICT] * 6 + [Outcome.FORK]
    assert _recorded(store, clock) == recorded           # nothing appended, nothing replaced
    assert [a.kind for a in alerts.recent()].count("fork") == 1
    assert [a.kind for a in alerts.recent()].count("conflict") == 6
    _verifies_with_forks(store, 1)
    # The genuine clock's next punch links to its recorded 6 and is appended.
    assert _send(ing, clock, [clock.punch()], mid=3) == [Outcome.APPENDED]
    _verifies_with_forks(store, 1)


# -- the clock's signed loss report (wire.seqloss, protocol §13.11) ---------------------------

def _loss(clock: SimClock, *, first: int = 4, last: int = 9, key: SigningKey | None = None,
          device: str | None = None) -> bytes:
    k = key or clock.key
    report = LossReport(device or clock.device, k.key_id, first, last, "SD card replaced", T0)
    return report.sign(k).to_bytes()


def test_d5_loss_report_round_trip_is_strict() -> None:
    key = SigningKey.generate()
    signed = LossReport("clock-1", key.key_id, 3, 7, "why", T0).sign(key)
    data = signed.to_bytes()
    assert looks_like_loss(data)
    assert SignedLossReport.from_bytes(data) == signed
    assert signed.verify(key.verify_key).lost == 5
    assert LossReport("clock-1", key.key_id, 8, 7, "nothing lost", T0).lost == 0
    with pytest.raises(DecodeError, match="last: below first - 1"):
        LossReport("clock-1", key.key_id, 9, 7, "x", T0)
    obj = json.loads(data)
    obj["loss"]["next_seq"] = 99
    with pytest.raises(DecodeError, match="next_seq"):
        SignedLossReport.from_bytes(canonical(obj))
    obj["loss"]["extra"] = 1
    with pytest.raises(DecodeError):
        SignedLossReport.from_bytes(canonical(obj))


@pytest.mark.parametrize(("case", "reason"), [
    ("valid", "seq-loss"),
    ("another clock's key", "bad-signature"),
    ("another device in the report", "device-mismatch"),
    ("unknown key id", "unknown-key"),
    ("garbled", "malformed"),
])
def test_d5_loss_report_is_recorded_as_a_finding_or_rejected_for_its_step(
        store: SQLStore, case: str, reason: str) -> None:
    clock = new_clock()
    enroll(store, clock)
    other = new_clock()
    enroll(store, other)
    ing, alerts = _ingestor(store)
    assert _send(ing, clock, clock.batch(3)) == [Outcome.APPENDED] * 3
    payload = {
        "valid": lambda: _loss(clock),
        "another clock's key": lambda: _loss(clock, key=SigningKey.generate()),
        "another device in the report": lambda: _loss(other, device=other.device),
        "unknown key id": lambda: _loss(clock, key=other.key),
        "garbled": lambda: _loss(clock)[:-5] + b"xxxx}",
    }[case]()
    if case == "another clock's key":      # same key id as the clock's, other private key
        good = json.loads(_loss(clock))
        forged = json.loads(payload)
        good["sig"] = forged["sig"]
        payload = canonical(good)
    res = ing.process([Inbound(clock.topic, payload, T0)], now_us=T0)
    assert [r.outcome for r in res.results] == [Outcome.REJECTED]
    assert res.receipts == []
    q = store.quarantine()[-1]
    assert q.reason == reason, q.detail
    assert store.quarantined_raw(q.id) == payload
    assert sorted(_recorded(store, clock)) == [1, 2, 3]          # nothing else changed
    if reason == "seq-loss":
        assert "seqs 4..9 (6) committed and lost" in q.detail
        [a] = alerts.recent("seq-loss")
        assert (a.device, a.severity) == (clock.device, 2)
        result = verify_store(store, LOG_KEYS)
        assert result.report.ok
        assert [f.tamper for f in result.report.findings
                if "reported a loss (signed)" in f.message] == [False]
    else:
        assert alerts.recent("seq-loss") == []
