"""Verifier steps (1)-(6), the store's (7)-(8) through Ingestor, receipts, alerts, the writer.

Real SQLite ledger in tmp_path and the real registry; no MQTT here (see test_attacks/test_serve).
"""

from __future__ import annotations

import queue
import threading
from pathlib import Path

import pytest

from collector.ingest.alerts import Alerts, ChainWatch, GapTracker
from collector.ingest.pipeline import Inbound, Ingestor, Publisher, Writer
from collector.ingest.punch_verifier import judge
from collector.ingest.receipts import ackable_seqs, build_receipts
from collector.ingest.statuses import StatusTable
from collector.ledger import registry
from collector.ledger.base import AppendResult, Fact, Outcome, PunchFact, RejectionFact
from collector.ledger.registry import RegistrySnapshot
from collector.ledger.sqlbase import SQLStore
from collector.ledger.sqlite import SQLiteStore
from tests.collector.punch_kit import T0, SimClock, enroll, envelope, new_clock, raw_envelope
from wire.ack import SignedAck
from wire.canonical import canonical
from wire.device_status import DeviceStatus, StorageStatus
from wire.errors import SignatureError
from wire.keys import SigningKey
from wire.ledger import Entry
from wire.punch import SignedPunch
from wire.rotation import RotationRequest
from wire.topics import punches


@pytest.fixture
def log_key() -> SigningKey:
    return SigningKey.generate()


@pytest.fixture
def clock(store: SQLStore) -> SimClock:
    c = new_clock()
    enroll(store, c)
    return c


def view(store: SQLStore) -> RegistrySnapshot:
    return RegistrySnapshot.load(store)


def reasons(facts: list[Fact]) -> list[str]:
    return [f.reason if isinstance(f, RejectionFact) else "ok" for f in facts]


# -- verifier: one test per step -------------------------------------------------------------

def test_d2_valid_envelope_yields_one_punch_fact_per_punch(store: SQLStore,
                                                          clock: SimClock) -> None:
    items = clock.batch(3)
    facts = judge(clock.topic, envelope(clock.device, items), T0, view(store))
    assert reasons(facts) == ["ok", "ok", "ok"]
    assert [f.signed for f in facts if isinstance(f, PunchFact)] == items


def test_d2_step1_oversized_is_rejected_whole_before_parsing(store: SQLStore,
                                                            clock: SimClock) -> None:
    payload = envelope(clock.device, clock.batch(2))
    facts = judge(clock.topic, payload, T0, view(store), max_bytes=len(payload) - 1)
    assert reasons(facts) == ["oversized"]
    f = facts[0]
    assert isinstance(f, RejectionFact)
    assert (f.raw, f.device, f.topic) == (payload, clock.device, clock.topic)
    assert "limit" in f.detail


@pytest.mark.parametrize(("payload", "detail"), [
    (b"not json", "not JSON"),
    (b'{"v":1,"device":"x","punches":[]', "not JSON"),
    (b'{"v":1.0,"device":"x","punches":[]}', "floats"),
    (b'{"v":1,"v":1,"device":"x","punches":[]}', "duplicate key"),
    (b'{"v":1,"device":"x","punches":[],"extra":0}', "unknown field"),
    (b'{"v":1,"device":"x","punches":[]}', "1-500 punches"),
    (b'{"v":2,"device":"x","punches":[{}]}', "version"),
    (b"\xff\xfe", "not UTF-8"),
    (b"[]", "expected an object"),
    (b"", "not JSON"),
])
def test_d2_step2_strict_decode_rejects_whole(store: SQLStore, payload: bytes,
                                              detail: str) -> None:
    facts = judge(punches("x"), payload, T0, view(store))
    assert reasons(facts) == ["malformed"]
    assert isinstance(facts[0], RejectionFact)
    assert detail in facts[0].detail
    assert facts[0].raw == payload


def test_d2_step2_one_malformed_punch_does_not_sink_the_others(store: SQLStore,
                                                               clock: SimClock) -> None:
    good = clock.batch(2)
    bad = good[0].to_dict()
    bad["punch"] = dict(bad["punch"], seq=99, extra="x")
    payload = raw_envelope(clock.device, [good[0].to_dict(), bad, good[1].to_dict()])
    facts = judge(clock.topic, payload, T0, view(store))
    assert reasons(facts) == ["ok", "malformed", "ok"]
    rej = facts[1]
    assert isinstance(rej, RejectionFact)
    assert rej.raw == canonical(bad)
    assert rej.detail.startswith("punches[1]: punch: unknown field(s) extra")
    assert rej.device == clock.device


def test_d2_step3_topic_and_device_must_agree(store: SQLStore, clock: SimClock) -> None:
    other = new_clock()
    enroll(store, other)
    # payload device ≠ topic device
    payload = envelope(other.device, other.batch(1))
    facts = judge(clock.topic, payload, T0, view(store))
    assert reasons(facts) == ["device-mismatch"]
    # envelope device = topic device, but one punch names another device: whole envelope
    mixed = raw_envelope(clock.device, [clock.punch().to_dict(), other.punch().to_dict()])
    facts = judge(clock.topic, mixed, T0, view(store))
    assert reasons(facts) == ["device-mismatch"]
    assert isinstance(facts[0], RejectionFact)
    assert facts[0].raw == mixed
    # not a punches topic at all
    facts = judge("timeclock/v1/devices/A.B/punches", envelope(clock.device, clock.batch(1)),
                  T0, view(store))
    assert reasons(facts) == ["bad-topic"]


def test_d1_step4_unknown_and_revoked_devices(store: SQLStore, clock: SimClock) -> None:
    stranger = new_clock()
    facts = judge(stranger.topic, envelope(stranger.device, stranger.batch(1)), T0, view(store))
    assert reasons(facts) == ["unknown-device"]
    registry.revoke(store, clock.device, "stolen", now_us=T0)
    facts = judge(clock.topic, envelope(clock.device, clock.batch(1)), T0, view(store))
    assert reasons(facts) == ["device-revoked"]


def test_d1_step5_key_checks(store: SQLStore, clock: SimClock) -> None:
    rogue = SigningKey.generate()
    facts = judge(clock.topic, envelope(clock.device, [clock.punch(key=rogue)]), T0,
                  view(store))
    assert reasons(facts) == ["unknown-key"]
    assert isinstance(facts[0], RejectionFact)
    assert facts[0].detail.startswith("seq 1: key ")

    # Rotation from seq 5: the old key signs 1-4 only, the new key 5 onwards.
    new_key = SigningKey.generate()
    registry.rotate(store, RotationRequest(clock.device, clock.key.key_id, new_key.key_id,
                                           new_key.verify_key, 5, T0).sign(clock.key),
                    now_us=T0)
    c = SimClock(clock.device, clock.key)
    ok = c.batch(4)
    late_old = c.punch()                    # seq 5 under the old key
    early_new = SimClock(clock.device, new_key).punch()   # seq 1 under the new key
    facts = judge(c.topic, envelope(c.device, [*ok, late_old]), T0, view(store))
    assert reasons(facts) == ["ok"] * 4 + ["key-not-valid-for-seq"]
    facts = judge(c.topic, envelope(c.device, [early_new]), T0, view(store))
    assert reasons(facts) == ["key-not-valid-for-seq"]

    registry.revoke(store, clock.device, "compromised", key_id=new_key.key_id, now_us=T0)
    c2 = SimClock(clock.device, new_key, seq=4, prev=late_old.hash())
    facts = judge(c2.topic, envelope(c2.device, [c2.punch()]), T0, view(store))
    assert reasons(facts) == ["key-revoked"]


def test_d2_step6_bad_signature_rejects_only_that_punch(store: SQLStore,
                                                       clock: SimClock) -> None:
    a, b, c = clock.batch(3)
    forged = b.to_dict()
    forged["punch"]["action"] = "out"      # content changed after signing
    payload = raw_envelope(clock.device, [a.to_dict(), forged, c.to_dict()])
    facts = judge(clock.topic, payload, T0, view(store))
    assert reasons(facts) == ["ok", "bad-signature", "ok"]
    registry_key = view(store).key_for(clock.device, clock.key.key_id, 2)
    with pytest.raises(SignatureError, match="does not verify"):
        SignedPunch.from_dict(forged).verify(registry_key)


# -- Ingestor: (7) dedupe, (8) append, receipts ----------------------------------------------

def make_ingestor(store: SQLStore, log_key: SigningKey, **kw: object) -> Ingestor:
    return Ingestor(store, lambda: RegistrySnapshot.load(store), log_key, Alerts(),
                    **kw)  # type: ignore[arg-type]


def msg(clock: SimClock, items: list[object], *, mid: int = 1) -> Inbound:
    if all(isinstance(i, SignedPunch) for i in items):
        payload = envelope(clock.device, items)  # type: ignore[arg-type]
    else:
        payload = raw_envelope(clock.device, items)
    return Inbound(clock.topic, payload, T0, mid=mid)


def acked(receipts: list[tuple[str, SignedAck]], log_key: SigningKey) -> dict[str, list[int]]:
    out: dict[str, list[int]] = {}
    for topic, r in receipts:
        r.verify(log_key.verify_key)
        assert topic == f"timeclock/v1/devices/{r.ack.device}/acks"
        out.setdefault(r.ack.device, []).extend(r.ack.seqs())
    return out


def test_d5_append_then_receipt_then_duplicate(store: SQLStore, clock: SimClock,
                                               log_key: SigningKey) -> None:
    ing = make_ingestor(store, log_key)
    items = clock.batch(3)
    size0, _ = store.head()
    res = ing.process([msg(clock, items)], now_us=T0)
    assert [r.outcome for r in res.results] == [Outcome.APPENDED] * 3
    assert acked(res.receipts, log_key) == {clock.device: [1, 2, 3]}
    assert store.head()[0] == size0 + 3
    # Replay of receipted punches: no new entry, receipt again.
    res = ing.process([msg(clock, items[1:])], now_us=T0 + 1)
    assert [r.outcome for r in res.results] == [Outcome.DUPLICATE] * 2
    assert acked(res.receipts, log_key) == {clock.device: [2, 3]}
    assert store.head()[0] == size0 + 3
    assert ing.alerts.counts()["punch:duplicate"] == 2


def test_d5_conflict_is_quarantined_alerted_and_acked(store: SQLStore, clock: SimClock,
                                                      log_key: SigningKey) -> None:
    ing = make_ingestor(store, log_key)
    twin = SimClock(clock.device, clock.key)   # a clone: same key, same seq, other content
    ing.process([msg(clock, clock.batch(1))], now_us=T0)
    other = twin.punch(action="out")
    res = ing.process([msg(twin, [other])], now_us=T0 + 1)
    assert [r.outcome for r in res.results] == [Outcome.CONFLICT]
    assert acked(res.receipts, log_key) == {clock.device: [1]}
    q = store.quarantine()
    assert [(r.reason, r.topic) for r in q] == [("conflict", clock.topic)]
    assert store.quarantined_raw(q[0].id) == other.to_bytes()
    alerts = ing.alerts.recent("conflict")
    assert [(a.device, a.severity) for a in alerts] == [(clock.device, 1)]


def test_d2_rejected_punches_are_recorded_but_never_acked(store: SQLStore,
                                                          clock: SimClock,
                                                          log_key: SigningKey) -> None:
    ing = make_ingestor(store, log_key)
    a, b, c = clock.batch(3)
    forged = b.to_dict()
    forged["punch"]["credential"] = "em4100:9999999999"
    res = ing.process([msg(clock, [a.to_dict(), forged, c.to_dict()])], now_us=T0)
    assert [r.outcome for r in res.results] == [Outcome.APPENDED, Outcome.REJECTED,
                                                Outcome.APPENDED]
    # Seq 2 is only claimed by a forgery: acking it could delete the genuine seq 2.
    assert acked(res.receipts, log_key) == {clock.device: [1, 3]}
    (q,) = store.quarantine()
    assert q.reason == "bad-signature"
    assert store.quarantined_raw(q.id) == canonical(forged)
    entry = list(store.entries(q.idx, q.idx + 1))[0]
    assert entry.entry.kind == "rejection"
    assert ing.alerts.counts()["rejected:bad-signature"] == 1
    # The genuine seq 2 arriving later is accepted and acked.
    res = ing.process([msg(clock, [b])], now_us=T0 + 1)
    assert acked(res.receipts, log_key) == {clock.device: [2]}


def test_receipts_rule_and_ranges(log_key: SigningKey) -> None:
    rs = [AppendResult(Outcome.APPENDED, 1, "d", 1), AppendResult(Outcome.DUPLICATE, 0, "d", 2),
          AppendResult(Outcome.CONFLICT, 2, "d", 4), AppendResult(Outcome.REJECTED, 3, "d", 3),
          AppendResult(Outcome.REJECTED, 4, None), AppendResult(Outcome.APPENDED, 5, "e", 9)]
    assert ackable_seqs(rs) == {"d": {1, 2, 4}, "e": {9}}
    receipts = build_receipts(ackable_seqs(rs), log_key, now_us=T0)
    assert [(t, r.ack.acked) for t, r in receipts] == [
        ("timeclock/v1/devices/d/acks", ((1, 2), (4, 4))),
        ("timeclock/v1/devices/e/acks", ((9, 9),))]
    for _, r in receipts:
        SignedAck.from_bytes(r.to_bytes()).verify(log_key.verify_key)
        assert r.ack.log == log_key.key_id


class PoisonStore(SQLiteStore):
    """A real SQLite store that fails (like a bug would) on facts from one topic."""

    poison = "timeclock/v1/devices/poison/punches"
    down = False

    def append(self, facts, *, now_us):  # type: ignore[no-untyped-def]
        if self.down:
            raise RuntimeError("database is down")
        if any(isinstance(f, PunchFact | RejectionFact) and f.topic == self.poison
               and getattr(f, "reason", "") != "internal-error" for f in facts):
            raise RuntimeError("boom")
        return super().append(facts, now_us=now_us)


def test_no_input_crashes_internal_errors_are_quarantined(tmp_path: Path,
                                                         log_key: SigningKey) -> None:
    store = PoisonStore(tmp_path / "p.db")
    clock = new_clock()
    enroll(store, clock)
    poison = SimClock("poison")
    enroll(store, poison)
    ing = make_ingestor(store, log_key)
    good = msg(clock, clock.batch(1), mid=1)
    bad = msg(poison, poison.batch(1), mid=2)
    res = ing.process([good, bad], now_us=T0)
    assert res.committed == [good, bad]
    assert [r.outcome for r in res.results] == [Outcome.APPENDED, Outcome.REJECTED]
    (q,) = store.quarantine()
    assert (q.reason, q.detail) == ("internal-error", "RuntimeError: boom")
    assert store.quarantined_raw(q.id) == bad.payload
    # A registry that is broken (None): the message is quarantined, not lost.
    ing2 = Ingestor(store, lambda: None, log_key, Alerts())  # type: ignore[arg-type, return-value]
    res = ing2.process([msg(clock, clock.batch(1), mid=3)], now_us=T0)
    assert [r.outcome for r in res.results] == [Outcome.REJECTED]
    assert store.quarantine()[-1].reason == "internal-error"
    # Store down: nothing committed, the message stays pending (never PUBACKed).
    store.down = True
    m = msg(clock, clock.batch(1), mid=4)
    res = ing.process([m], now_us=T0)
    assert (res.committed, res.pending, res.receipts) == ([], [m], [])
    store.close()


# -- alerts: gaps and chain breaks -----------------------------------------------------------

def test_d5_gap_open_longer_than_limit_is_reported_once(store: SQLStore, clock: SimClock,
                                                       log_key: SigningKey) -> None:
    alerts = Alerts()
    gaps = GapTracker(10, alerts)
    ing = Ingestor(store, lambda: RegistrySnapshot.load(store), log_key, alerts, gaps=gaps)
    p1, p2, p3, p4 = clock.batch(4)
    ing.process([msg(clock, [p1, p3])], now_us=T0)
    assert gaps.open_gaps(clock.device) == ((2, 2),)
    ing.report_gaps(now_us=T0 + 9_000_000)
    assert alerts.recent("gap") == []
    ing.report_gaps(now_us=T0 + 10_000_000)
    ing.report_gaps(now_us=T0 + 20_000_000)
    (a,) = alerts.recent("gap")
    assert (a.device, a.detail) == (clock.device, "seq 2-2 missing for 10 s")
    assert alerts.counts()["gap-open"] == 1
    ing.process([msg(clock, [p2, p4])], now_us=T0 + 21_000_000)
    assert gaps.open_gaps(clock.device) == ()


def test_d5_gap_filled_elsewhere_is_not_reported(store: SQLStore, clock: SimClock,
                                                log_key: SigningKey) -> None:
    alerts = Alerts()
    gaps = GapTracker(1, alerts)
    ing = Ingestor(store, lambda: RegistrySnapshot.load(store), log_key, alerts, gaps=gaps)
    p1, p2, p3 = clock.batch(3)
    ing.process([msg(clock, [p1, p3])], now_us=T0)
    # Another collector of the same ledger records seq 2.
    make_ingestor(store, log_key).process([msg(clock, [p2])], now_us=T0)
    ing.report_gaps(now_us=T0 + 5_000_000)
    assert alerts.recent("gap") == []


def test_d5_prev_mismatch_raises_chain_break_alert(store: SQLStore, clock: SimClock,
                                                   log_key: SigningKey) -> None:
    alerts = Alerts()
    ing = Ingestor(store, lambda: RegistrySnapshot.load(store), log_key, alerts,
                   chain=ChainWatch(alerts, lookup=lambda d, s: (
                       h[0] if (h := store.punch_hash(d, s)) else None)))
    p1 = clock.punch()
    bad2 = clock.punch(prev="ab" * 32)     # validly signed, but does not link to seq 1
    res = ing.process([msg(clock, [p1, bad2])], now_us=T0)
    # DESIGN.md §8.5 "Forks": the store quarantines it (tests/collector/test_forks.py), so
    # the chain watch never sees a broken link; the alert is the fork's, severity 1.
    assert [r.outcome for r in res.results] == [Outcome.APPENDED, Outcome.FORK]
    assert alerts.recent("chain-break") == []
    (a,) = alerts.recent("fork")
    assert a.device == clock.device
    assert a.severity == 1
    assert a.detail.startswith("seq 2 does not link")


# -- the writer thread ------------------------------------------------------------------------

class RecordingLink(Publisher):
    def __init__(self) -> None:
        self.events: list[tuple[str, object]] = []

    def publish(self, topic: str, payload: bytes, *, qos: int = 1,
                retain: bool = False) -> None:
        self.events.append(("publish", SignedAck.from_bytes(payload)))

    def ack(self, msg: Inbound) -> None:
        self.events.append(("puback", msg.mid))


def test_writer_commits_then_receipts_then_pubacks(store: SQLStore, clock: SimClock,
                                                   log_key: SigningKey) -> None:
    inbox: queue.Queue[Inbound] = queue.Queue()
    link = RecordingLink()
    ticks: list[int] = []
    w = Writer(make_ingestor(store, log_key), inbox, link, batch_max=4, batch_wait_ms=0,
               clock=lambda: T0, tick=lambda now, n: ticks.append(n))
    for i in range(3):
        inbox.put(msg(clock, clock.batch(2), mid=10 + i))
    stop = threading.Event()
    assert w.step(stop) == 2          # batch_max=4 facts: two messages of two punches
    assert w.step(stop) == 1
    assert [e[0] for e in link.events] == ["publish", "puback", "puback", "publish", "puback"]
    first = link.events[0][1]
    assert isinstance(first, SignedAck)
    assert list(first.ack.seqs()) == [1, 2, 3, 4]
    assert [e[1] for e in link.events if e[0] == "puback"] == [10, 11, 12]
    assert ticks == [2, 1]
    assert w.step(stop) == 0          # idle: ticks with nothing handled
    assert ticks == [2, 1, 0]


def test_writer_judging_ahead_keeps_the_order_commit_receipts_pubacks(
        store: SQLStore, clock: SimClock, log_key: SigningKey) -> None:
    """The service's writer judges the next batch on a helper thread while one commits: the
    same batches, receipts before PUBACKs, each message PUBACKed after its own commit."""
    inbox: queue.Queue[Inbound] = queue.Queue()
    link = RecordingLink()
    ticks: list[int] = []
    w = Writer(make_ingestor(store, log_key), inbox, link, batch_max=4, batch_wait_ms=0,
               clock=lambda: T0, tick=lambda now, n: ticks.append(n), idle_wake_s=0.2,
               judge_ahead=True)
    for i in range(3):
        inbox.put(msg(clock, clock.batch(2), mid=10 + i))
    stop = threading.Event()
    try:
        assert w.step(stop) == 2      # the third message is judged meanwhile
        assert w.step(stop) == 1
        assert [e[0] for e in link.events] == ["publish", "puback", "puback",
                                               "publish", "puback"]
        acks = [e[1] for e in link.events if e[0] == "publish"]
        assert [list(a.ack.seqs()) for a in acks if isinstance(a, SignedAck)] == [
            [1, 2, 3, 4], [5, 6]]
        assert [e[1] for e in link.events if e[0] == "puback"] == [10, 11, 12]
        assert w.step(stop) == 0      # nothing arrived while the last batch committed
        assert ticks == [2, 1, 0]
    finally:
        stop.set()
        w.close()
    assert store.progress(clock.device).contiguous == 6


def test_writer_judging_ahead_judges_again_after_an_enrolment(
        store: SQLStore, clock: SimClock, log_key: SigningKey) -> None:
    """A clock enrolled after the snapshot its first punch was judged ahead with: judged again
    with the registry of its own batch, recorded, nothing quarantined as unknown-device."""
    inbox: queue.Queue[Inbound] = queue.Queue()
    link = RecordingLink()
    w = Writer(make_ingestor(store, log_key), inbox, link, batch_wait_ms=0, clock=lambda: T0,
               idle_wake_s=30, judge_ahead=True)
    stop = threading.Event()
    try:
        inbox.put(msg(clock, clock.batch(1), mid=1))
        assert w.step(stop) == 1      # the helper now waits for the next message
        late = new_clock()
        enroll(store, late)
        inbox.put(msg(late, late.batch(2), mid=2))
        assert w.step(stop) == 1
        assert [e[1] for e in link.events if e[0] == "puback"] == [1, 2]
    finally:
        stop.set()
        w.close()
    assert store.quarantine(limit=100) == []
    assert store.progress(late.device).contiguous == 2


def test_writer_run_stops_cleanly(store: SQLStore, clock: SimClock,
                                  log_key: SigningKey) -> None:
    inbox: queue.Queue[Inbound] = queue.Queue()
    link = RecordingLink()
    w = Writer(make_ingestor(store, log_key), inbox, link, idle_wake_s=0.05)
    stop = threading.Event()
    t = threading.Thread(target=w.run, args=(stop,))
    t.start()
    inbox.put(msg(clock, clock.batch(1), mid=7))
    deadline = threading.Event()
    for _ in range(500):
        if ("puback", 7) in link.events:
            break
        deadline.wait(0.01)
    stop.set()
    t.join(5)
    assert not t.is_alive()
    assert ("puback", 7) in link.events


def test_status_table_keeps_last_status() -> None:
    t = StatusTable()
    full = DeviceStatus(device="c1", state="offline", version="0.1.0", reason="stopped",
                        storage=StorageStatus("full", 0, 4, 7, "disk full"))
    row = t.update("timeclock/v1/devices/c1/status", full.to_bytes(), 5)
    assert row is not None
    assert (row.status, row.error) == (full, None)
    assert row.status.storage is not None
    assert row.status.storage.full
    t.update("timeclock/v1/devices/c1/status", b"garbage", 6)
    row = t.get("c1")
    assert row is not None
    assert (row.received_at, row.status, row.size) == (6, None, 7)
    assert row.error is not None
    assert "not JSON" in row.error
    # a status naming another device than its topic is not what it claims
    other = t.update("timeclock/v1/devices/c2/status", full.to_bytes(), 7)
    assert other is not None
    assert (other.status, other.error) == (None, "status names device c1, published on "
                                                  "the topic of c2")
    assert t.update("bogus/topic", b"{}", 1) is None
    assert set(t.snapshot()) == {"c1", "c2"}


def test_entries_of_rejections_chain_like_everything_else(store: SQLStore,
                                                         clock: SimClock,
                                                         log_key: SigningKey) -> None:
    ing = make_ingestor(store, log_key)
    ing.process([Inbound(clock.topic, b"junk", T0), msg(clock, clock.batch(1))], now_us=T0)
    prev = None
    for se in store.entries():
        assert isinstance(se.entry, Entry)
        assert se.hash == se.entry.hash()
        if prev is not None:
            assert se.entry.prev == prev
        prev = se.hash


def test_d2_resent_rejection_is_counted_not_recorded_again(store: SQLStore,
                                                          clock: SimClock,
                                                          log_key: SigningKey) -> None:
    ing = make_ingestor(store, log_key)
    forged = clock.punch().to_dict()
    forged["punch"]["action"] = "out"
    m = msg(clock, [forged])
    first = ing.process([m], now_us=T0)
    size = store.head()[0]
    again = ing.process([m, m], now_us=T0 + 1)
    assert [r.outcome for r in first.results] == [Outcome.REJECTED]
    assert (again.results, again.committed, again.receipts) == ([], [m, m], [])
    assert store.head()[0] == size
    assert ing.alerts.counts()["rejected-repeat:bad-signature"] == 2
