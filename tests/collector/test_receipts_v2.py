"""Receipts v2 from the collector (DESIGN.md §8.4, collector/ingest/receipts.py and
pipeline.py): each acked seq names the hash of the punch the ledger holds and its leaf index —
for a conflict, the recorded punch, so the clone's receipt cannot delete the genuine one —
and wire.ack parses v2 strictly while v1 stays readable."""

from __future__ import annotations

import pytest

from collector.ingest.alerts import Alerts
from collector.ingest.pipeline import Inbound, Ingestor
from collector.ledger.base import Outcome
from collector.ledger.registry import RegistrySnapshot
from collector.ledger.sqlbase import SQLStore
from tests.collector.punch_kit import T0, SimClock, enroll, envelope, new_clock
from wire.ack import ACK_DOMAIN, ACK_DOMAIN_V2, Ack, SignedAck
from wire.errors import DecodeError, SignatureError
from wire.keys import SigningKey
from wire.merkle import entry_leaf_hash


@pytest.fixture
def log_key() -> SigningKey:
    return SigningKey(bytes(range(32)))


@pytest.fixture
def clock(store: SQLStore) -> SimClock:
    c = new_clock()
    enroll(store, c)
    return c


def process(store: SQLStore, log_key: SigningKey, clock: SimClock, items: list, *,
            now: int) -> list[tuple[str, SignedAck]]:
    ing = Ingestor(store, lambda: RegistrySnapshot.load(store), log_key, Alerts())
    res = ing.process([Inbound(clock.topic, envelope(clock.device, items), T0, mid=1)],
                      now_us=now)
    return list(res.receipts)


def test_receipts_name_each_punch_and_its_leaf(store: SQLStore, clock: SimClock,
                                               log_key: SigningKey) -> None:
    items = clock.batch(3)
    [(topic, r)] = process(store, log_key, clock, items, now=T0)
    r.verify(log_key.verify_key)
    assert r.ack.v == 2
    assert r.ack.punches is not None
    assert [(s, h) for s, h, _ in r.ack.punches] == [(p.punch.seq, p.punch.hash())
                                                    for p in items]
    # each leaf index is the entry that records the punch: its Merkle leaf verifies
    for seq, h, leaf in r.ack.punches:
        assert store.punch_hash(clock.device, seq) == (h, leaf)
        [stored] = list(store.entries(leaf, leaf + 1))
        assert store.leaf_hash(leaf) == entry_leaf_hash(stored.entry)
    # a duplicate is acked with the same commitment
    [(_, again)] = process(store, log_key, clock, items[1:], now=T0 + 1)
    assert again.ack.punches == r.ack.punches[1:]


def test_a_conflict_is_acked_with_the_recorded_punch(store: SQLStore, clock: SimClock,
                                                     log_key: SigningKey) -> None:
    genuine = clock.batch(1)
    [(_, first)] = process(store, log_key, clock, genuine, now=T0)
    twin = SimClock(clock.device, clock.key)
    other = twin.punch(action="out")
    ing = Ingestor(store, lambda: RegistrySnapshot.load(store), log_key, Alerts())
    res = ing.process([Inbound(twin.topic, envelope(twin.device, [other]), T0, mid=2)],
                      now_us=T0 + 1)
    assert [r.outcome for r in res.results] == [Outcome.CONFLICT]
    [(_, receipt)] = res.receipts
    assert receipt.ack.punch_hashes() == {1: genuine[0].punch.hash()}
    assert receipt.ack.punch_hashes() != {1: other.punch.hash()}
    assert receipt.ack.punches == first.ack.punches


def test_v2_is_signed_under_its_own_prefix_and_parsed_strictly(log_key: SigningKey) -> None:
    ack = Ack.landed("clock-1", ((1, "a" * 64, 7), (2, "b" * 64, 9)), at=5,
                     log=log_key.key_id)
    assert ack.acked == ((1, 2),)
    assert ack.signed_message().startswith(ACK_DOMAIN_V2)
    signed = ack.sign(log_key)
    assert SignedAck.from_bytes(signed.to_bytes()) == signed
    # the same bytes under the v1 prefix do not verify: no downgrade
    v1_claim = SignedAck(ack, log_key.sign(ACK_DOMAIN + ack.signed_message()[len(ACK_DOMAIN_V2):]))
    with pytest.raises(SignatureError):
        v1_claim.verify(log_key.verify_key)
    d = ack.to_dict()
    for bad, match in [({**d, "punches": [[1, "a" * 64, 7]]}, "exactly the acked seqs"),
                       ({**d, "punches": [[1, "A" * 64, 7], [2, "b" * 64, 9]]}, "bad hash"),
                       ({**d, "punches": [[2, "b" * 64, 9], [1, "a" * 64, 7]]}, "in order"),
                       ({k: v for k, v in d.items() if k != "punches"}, "missing"),
                       ({**{k: v for k, v in d.items() if k != "punches"}, "v": 1,
                         "punches": []}, "unknown")]:
        with pytest.raises(DecodeError, match=match):
            Ack.from_dict(bad)
    # v1 still reads
    v1 = Ack("clock-1", ((1, 2),), 5, log_key.key_id)
    assert Ack.from_dict(v1.to_dict()) == v1
    assert v1.punch_hashes() is None
