"""Sealing planned ahead of the commit (DESIGN.md §8.6; collector.ledger.body_crypto.
PunchPlanner): a punch judged with its SealPlan — the blind index tag of its credential and the
(subject, period) of its data key, worked out off the writer thread — is recorded exactly as
one without (the same entries, bodies, projection rows and data keys, byte for byte, with the
randomness fixed); a plan of another ledger's sealer is ignored; and a change of the people
directory between the judging and the commit is honoured: the punch resolves to the badge's
holder at the commit, through the store's own check of the directory version under the chain
lock and through the ingest writer that judged it ahead."""

from __future__ import annotations

import hashlib
import itertools
import queue
import threading
from collections.abc import Callable, Iterator
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest
from nacl import bindings as sodium

from collector.ingest.alerts import Alerts
from collector.ingest.pipeline import Inbound, Ingestor, Publisher, Writer
from collector.ledger import body_crypto, keyring, open_store
from collector.ledger.base import EventFact, PunchFact
from collector.ledger.keyring import Keyring
from collector.ledger.registry import RegistrySnapshot
from collector.ledger.sqlbase import SQLStore
from collector.people.csv_import import import_files
from tests.collector import keyring_kit
from tests.collector.keyring_kit import BADGE, BADGES, EMPLOYEES, MONTH, NOW, ORIGIN, STRANGER
from tests.collector.ledger_kit import T0, Clock
from tests.collector.punch_kit import envelope
from tests.fixtures.postgres import PgCluster, create_database, drop_database, migrate_ledger
from wire.keys import SigningKey
from wire.topics import punches

KEK_KEY = bytes(range(32))
# STRANGER handed to E1000 from before the punches: what an HR push between judging and commit
# changes.
HANDED_OVER = f"""credential,employee_id,valid_from,valid_until,status
{BADGE},E1001,2025-01-01T00:00:00Z,,assigned
{STRANGER},E1000,2025-01-01T00:00:00Z,,assigned
"""


class FixedRandom:
    """The randomness of the append (nonces, data keys, their ids and wraps) as a stream fixed
    by its seed, so two ledgers built the same way hold the same bytes."""

    def __init__(self) -> None:
        self.restart()

    def restart(self) -> None:
        self._n = itertools.count()

    def bytes(self, n: int | None = None) -> bytes:
        n = 32 if n is None else n
        out = b""
        while len(out) < n:
            out += hashlib.sha256(b"fixed random %d" % next(self._n)).digest()
        return out[:n]

    def hex(self, n: int | None = None) -> str:
        return self.bytes(16 if n is None else n).hex()


@pytest.fixture
def fixed_random(monkeypatch: pytest.MonkeyPatch) -> Callable[[], None]:
    """Calling it restarts the stream (before each ledger of a comparison)."""
    r = FixedRandom()
    fake_secrets = SimpleNamespace(token_bytes=r.bytes, token_hex=r.hex)
    monkeypatch.setattr(body_crypto, "os", SimpleNamespace(urandom=r.bytes))
    monkeypatch.setattr(keyring, "secrets", fake_secrets)
    monkeypatch.setattr(keyring_kit, "secrets", fake_secrets)
    monkeypatch.setattr(sodium, "randombytes", r.bytes)
    return r.restart


@pytest.fixture
def twin_urls(store_kind: str, tmp_path: Path, request: pytest.FixtureRequest
              ) -> Iterator[tuple[str, str]]:
    """Two fresh ledgers of the same kind."""
    if store_kind == "sqlite":
        yield f"sqlite://{tmp_path / 'a.db'}", f"sqlite://{tmp_path / 'b.db'}"
        return
    cluster: PgCluster = request.getfixturevalue("pg_cluster")
    dbs = [migrate_ledger(create_database(cluster)) for _ in range(2)]
    try:
        yield dbs[0].app_dsn, dbs[1].app_dsn
    finally:
        for db in dbs:
            drop_database(cluster, db)


def keyed_ledger(url: str, tmp_path: Path) -> tuple[SQLStore, Clock]:
    """A keyed ledger with a clock and the people of keyring_kit (E1001 holds BADGE)."""
    store = open_store(url)
    store.use_keyring(Keyring(store, keyring_kit.MemoryKek(KEK_KEY), origin=ORIGIN))
    c = Clock("clock-1")
    store.append([EventFact("device", c.enrolled_body())], now_us=T0)
    (tmp_path / "e.csv").write_text(EMPLOYEES, encoding="utf-8")
    (tmp_path / "b.csv").write_text(BADGES, encoding="utf-8")
    import_files(store, tmp_path / "e.csv", tmp_path / "b.csv", now_us=T0)
    return store, c


def punch_facts() -> list[PunchFact]:
    """E1001's badge in November and December, a badge nobody holds, one after another."""
    c = Clock("clock-1")
    return [c.fact(credential=BADGE), c.fact(credential=STRANGER),
            c.fact(credential=BADGE, ts=T0 + MONTH), c.fact(credential=STRANGER)]


def planned(store: SQLStore, facts: list[PunchFact]) -> list[PunchFact]:
    planner = store.punch_planner()
    assert planner is not None
    return [PunchFact(f.signed, f.topic, f.received_at, planner.plan(f.signed.punch))
            for f in facts]


def dump(store: SQLStore) -> dict[str, list[tuple[Any, ...]]]:
    """Every table the append writes, raw, in a stable order."""
    out: dict[str, list[tuple[Any, ...]]] = {}
    for name, sql in (
            ("entries", "SELECT idx, kind, at, body, prev, hash FROM entries ORDER BY idx"),
            ("bodies", "SELECT idx, body FROM bodies ORDER BY idx"),
            ("punches", "SELECT device, seq, punch_hash, idx, key_id, ts, clock, credential, "
                        "action, reader, site FROM punches ORDER BY idx"),
            ("data_keys", "SELECT key_id, subject, period, wrapped, kek_id, created_idx, "
                          "destroyed_idx FROM tc_data_keys ORDER BY key_id"),
            ("badges", "SELECT credential, valid_from, valid_until, employee_id, status, idx, "
                       "changed_idx FROM tc_badges ORDER BY credential, valid_from")):
        out[name] = [tuple(bytes(v) if isinstance(v, memoryview) else v for v in r)
                     for r in store.query(sql)]
    return out


def subject_of(store: SQLStore, idx: int) -> tuple[str, str]:
    """(subject, period) of the data key that seals the body of entry ``idx``."""
    stored = bytes(store.query("SELECT body FROM bodies WHERE idx = ?", (idx,))[0][0])
    key_id = body_crypto.sealed_key_id(stored)
    row = store.query("SELECT subject, period FROM tc_data_keys WHERE key_id = ?", (key_id,))
    return str(row[0][0]), str(row[0][1])


def test_planned_punches_are_recorded_byte_for_byte_as_unplanned_ones(
        twin_urls: tuple[str, str], tmp_path: Path, fixed_random: Callable[[], None],
        monkeypatch: pytest.MonkeyPatch) -> None:
    resolved: list[int] = []       # punches BodySealer.subjects resolved in the append
    subjects = body_crypto.BodySealer.subjects

    def counting(self: body_crypto.BodySealer, tx: Any, pending: Any) -> Any:
        pending = list(pending)
        resolved.extend(p[0] for p in pending if p[1] == "punch" and p[3] is not None)
        return subjects(self, tx, pending)

    monkeypatch.setattr(body_crypto.BodySealer, "subjects", counting)
    dumps = []
    for url, plan in zip(twin_urls, (False, True), strict=True):
        fixed_random()
        store, _ = keyed_ledger(url, tmp_path)
        try:
            facts = punch_facts()
            if plan:
                facts = planned(store, facts)
                assert [(f.sealing.subject, f.sealing.period) for f in facts
                        if f.sealing is not None][:3] == [
                    ("E1001", "2025-11"), (store.sealer.ring.badge_subject(STRANGER),  # type: ignore[union-attr]
                                           "2025-11"), ("E1001", "2025-12")]
            resolved.clear()
            store.append(facts, now_us=NOW)
            assert len(resolved) == (0 if plan else 4)     # the plans were used, not redone
            dumps.append(dump(store))
        finally:
            store.close()
    unplanned, planned_ = dumps
    assert len(unplanned["punches"]) == 4
    assert all(body_crypto.is_sealed(b) for i, b in unplanned["bodies"]
               if i in {r[3] for r in unplanned["punches"]})
    for table in unplanned:
        assert planned_[table] == unplanned[table], table


def test_a_plan_of_another_ledgers_sealer_is_not_used(
        twin_urls: tuple[str, str], tmp_path: Path) -> None:
    """Another ledger's blind index key gives other tags: the store derives its own."""
    other, _ = keyed_ledger(twin_urls[0], tmp_path)
    store, _ = keyed_ledger(twin_urls[1], tmp_path)
    try:
        facts = planned(other, punch_facts())
        store.append(facts, now_us=NOW)
        ring = store.sealer.ring       # type: ignore[union-attr]
        tags = [r[0] for r in store.query("SELECT credential FROM punches ORDER BY idx")]
        assert tags == [ring.blind(f.signed.punch.credential) for f in facts]
        assert tags != [f.sealing.credential_tag for f in facts if f.sealing is not None]
    finally:
        other.close()
        store.close()


def test_a_badge_handed_over_after_planning_resolves_to_its_new_holder_at_commit(
        store_url: str, tmp_path: Path) -> None:
    store, _ = keyed_ledger(store_url, tmp_path)
    try:
        facts = planned(store, punch_facts()[:2])     # STRANGER: nobody's when planned
        assert facts[1].sealing is not None
        assert facts[1].sealing.subject.startswith("badge:")
        (tmp_path / "b2.csv").write_text(HANDED_OVER, encoding="utf-8")
        import_files(store, None, tmp_path / "b2.csv", now_us=T0 + 1)
        results = store.append(facts, now_us=NOW)
        assert subject_of(store, results[0].idx) == ("E1001", "2025-11")
        assert subject_of(store, results[1].idx) == ("E1000", "2025-11")
        # the next plan is made against the new directory
        planner = store.punch_planner()
        assert planner is not None
        assert planner.plan(punch_facts()[1].signed.punch).subject == "E1000"
    finally:
        store.close()


class RecordingLink(Publisher):
    def __init__(self) -> None:
        self.acked: list[int] = []

    def publish(self, topic: str, payload: bytes, *, qos: int = 1,
                retain: bool = False) -> None:
        pass

    def ack(self, msg: Inbound) -> None:
        self.acked.append(msg.mid)


def test_the_writer_honours_a_badge_handed_over_while_it_judged_ahead(
        store_url: str, tmp_path: Path) -> None:
    """The service's writer judges the next batch (and plans its sealing) while one commits;
    a badge entry committed between that judging and the batch's commit wins."""
    store, c = keyed_ledger(store_url, tmp_path)
    ing = Ingestor(store, lambda: RegistrySnapshot.load(store), SigningKey.generate(), Alerts())
    inbox: queue.Queue[Inbound] = queue.Queue()
    link = RecordingLink()
    w = Writer(ing, inbox, link, batch_max=1, batch_wait_ms=0, clock=lambda: NOW,
               idle_wake_s=30, judge_ahead=True)
    stop = threading.Event()
    try:
        first, second = c.punch(credential=BADGE), c.punch(credential=STRANGER)
        inbox.put(Inbound(punches(c.device), envelope(c.device, [first]), T0, mid=1))
        inbox.put(Inbound(punches(c.device), envelope(c.device, [second]), T0, mid=2))
        assert w.step(stop) == 1          # meanwhile the second is judged ahead
        assert w._ahead is not None       # noqa: SLF001 - what the helper judged
        judged = w._ahead[2].result(timeout=30)   # noqa: SLF001
        fact = judged[0][1][0]
        assert isinstance(fact, PunchFact)
        assert fact.sealing is not None
        assert fact.sealing.subject.startswith("badge:")   # planned before the hand-over
        (tmp_path / "b2.csv").write_text(HANDED_OVER, encoding="utf-8")
        import_files(store, None, tmp_path / "b2.csv", now_us=T0 + 1)
        assert w.step(stop) == 1
        assert link.acked == [1, 2]
        idx = int(store.query("SELECT idx FROM punches WHERE seq = 2")[0][0])
        assert subject_of(store, idx) == ("E1000", "2025-11")
    finally:
        stop.set()
        w.close()
        store.close()
