"""The broker sees no credential (DESIGN.md §8.6, issue 12 item 5; controls D3/D4).

A real mTLS Mosquitto with persistence on (tests/fixtures/mosquitto.py), the real collector
(CollectorService) and real agent publishers (agent.publisher.Publisher over agent.queue.Outbox).
The collector subscribes once with its persistent session and stops; the clocks then publish,
so every punch waits in the broker's queue for ``collector.main`` — a second collector identity
watches each message pass, so the test knows the broker holds all of them. Mosquitto is stopped
with SIGTERM, which writes ``mosquitto.db``; that file and the broker's log are searched for
every badge credential (the whole ``kind:value`` string: a colon never occurs in base64, so a
ciphertext cannot hold one by chance). Sealed: none found. The same run with plain envelopes
finds every one of them in ``mosquitto.db``, so the search can fail. Then the broker and the
collector start again and the queued messages are recorded in full: sealing loses nothing.
"""

from __future__ import annotations

import logging
import os
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from agent.publisher import Publisher
from agent.queue import Outbox
from collector.ledger import registry
from collector.ledger.sqlbase import PunchQuery
from collector.ledger.sqlite import SQLiteStore
from collector.service.config import load_config
from collector.service.runner import CollectorService
from tests.agent.receipt_kit import settings
from tests.collector.punch_kit import T0, write_collector_config
from tests.fixtures.mosquitto import MosquittoBroker
from tests.polling import wait_for
from wire import topics
from wire.keys import SigningKey
from wire.punch import Envelope, Punch, SignedPunch
from wire.sealed import SealedEnvelope, SealKey, looks_sealed, save_seal_key

CLOCKS = ("vault-clock-1", "vault-clock-2")
PUNCHES = 40                     # per clock: more than one envelope's worth is not needed
DEADLINE_S = 120.0               # generous: a loaded machine; a condition that holds is instant


class Clock:
    """A real agent outbox and publisher for one device, with distinctive credentials."""

    def __init__(self, broker: MosquittoBroker, directory: Path, device: str, n: int) -> None:
        self.device = device
        self.key = SigningKey.generate()
        self.outbox = Outbox(directory / f"{device}.queue.db", os.urandom(32), device)
        tag = uuid.uuid4().hex[:8]
        self.credentials = [f"em4100:{tag}{i:04d}{device[-1]}" for i in range(1, n + 1)]
        self.broker = broker
        self.publisher: Publisher | None = None

    def tap_all(self) -> None:
        boot = str(uuid.uuid4())
        for i, credential in enumerate(self.credentials, start=1):
            def build(seq: int, prev: str, credential: str = credential, i: int = i
                      ) -> SignedPunch:
                return Punch(device=self.device, seq=seq, prev=prev, ts=T0 + i, clock="synced",
                             boot=boot, mono=i, reader="front", credential=credential,
                             action="in", key=self.key.key_id).sign(self.key)
            self.outbox.record(build)
            if self.publisher is not None:
                self.publisher.notify_new()

    def start(self, log_key: SigningKey, seal: SealKey | None) -> None:
        self.publisher = Publisher(
            self.outbox, self.device, log_key=log_key.verify_key,
            settings=settings(self.broker, self.device, resend_after_s=600.0),
            seal_key=None if seal is None else seal.public_key)
        self.publisher.start()

    def stop(self) -> None:
        if self.publisher is not None:
            self.publisher.stop()
            self.publisher = None


@pytest.fixture
def running() -> Iterator[Callable[[object], None]]:
    """Stops what a test started (publishers, collectors), whatever happens in between."""
    things: list[object] = []
    yield things.append
    for t in reversed(things):
        if isinstance(t, Clock):
            t.stop()
            t.outbox.close()
        elif isinstance(t, CollectorService) and t.link is not None \
                and t.link.client.is_connected():
            t.stop()


def _seqs_in(payload: bytes, key: SealKey) -> tuple[str, list[int]]:
    if looks_sealed(payload):
        env = SealedEnvelope.from_bytes(payload).open_envelope(key)
    else:
        env = Envelope.from_bytes(payload)
    return env.device, [p.punch.seq for p in env.punches]


@pytest.mark.subprocess
@pytest.mark.parametrize("seal", [True, False], ids=["sealed", "plain"])
def test_d3_d4_broker_persistence_and_log_hold_no_credential_when_sealed(
        seal: bool, mosquitto_factory: Callable[..., MosquittoBroker], tmp_path: Path,
        running: Callable[[object], None], caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO)
    broker = mosquitto_factory(collectors=("main", "standby"))
    db = tmp_path / "ledger.db"
    store = SQLiteStore(db)
    seal_key = SealKey.generate()
    save_seal_key(tmp_path / "seal.key", seal_key)
    cfg_file, log_key = write_collector_config(tmp_path / "main", broker,
                                               store_url=f"sqlite://{db}")
    text = cfg_file.read_text()
    cfg_file.write_text(text.replace("\n[mqtt]", f'seal_key = "{tmp_path / "seal.key"}"\n\n'
                                                 "[mqtt]", 1))
    clocks = [Clock(broker, tmp_path, d, PUNCHES) for d in CLOCKS]
    for c in clocks:
        running(c)
        registry.enroll(store, c.device, "hq", c.key.verify_key.b64, now_us=T0)

    # 1. The collector's persistent session exists, and the collector is away.
    first = CollectorService(load_config(cfg_file))
    running(first)
    first.start()
    assert first.wait_ready(DEADLINE_S), "collector did not connect and subscribe"
    first.stop()

    # 2. The clocks publish; a watcher sees every punch pass through the broker.
    watcher = broker.subscribe("collector.standby", topics.ALL_PUNCHES)
    for c in clocks:
        c.start(log_key, seal_key if seal else None)
        c.tap_all()
    want = {(c.device, s) for c in clocks for s in range(1, PUNCHES + 1)}
    seen: set[tuple[str, int]] = set()
    sealed_payloads = 0

    def watched() -> bool:
        nonlocal sealed_payloads
        while not watcher.messages.empty():
            payload = watcher.messages.get_nowait().payload
            sealed_payloads += looks_sealed(payload)
            device, seqs = _seqs_in(payload, seal_key)
            seen.update((device, s) for s in seqs)
        return want <= seen

    wait_for(watched, DEADLINE_S, "every punch to pass through the broker")
    assert (sealed_payloads > 0) is seal
    for c in clocks:
        c.stop()

    # 3. SIGTERM: Mosquitto writes its persistence file with collector.main's queue in it.
    broker.stop()
    db_file = broker.data_dir / "mosquitto.db"
    persisted = db_file.read_bytes()
    assert (b'"sealed":"' if seal else b'"punches":[') in persisted, \
        "the queued messages are not in mosquitto.db: the search would prove nothing"
    files = {"mosquitto.db": persisted, "mosquitto.log": broker.log_file.read_bytes()}
    credentials = [cr.encode() for c in clocks for cr in c.credentials]
    found = {(name, cr) for name, data in files.items() for cr in credentials if cr in data}
    if seal:
        assert found == set(), f"{len(found)} credential(s) in clear in the broker's files"
        assert b'"credential"' not in persisted
    else:
        assert {cr for name, cr in found if name == "mosquitto.db"} == set(credentials)
    assert not {cr for name, cr in found if name == "mosquitto.log"}

    # 4. Broker and collector back: every queued punch is recorded, sealed or not.
    broker.start()
    second = CollectorService(load_config(cfg_file))
    running(second)
    second.start()
    assert second.wait_ready(DEADLINE_S)

    def recorded() -> bool:
        return all(store.progress(c.device).contiguous == PUNCHES for c in clocks)

    wait_for(recorded, DEADLINE_S, "the broker's queued punches to be recorded")
    for c in clocks:
        rows = sorted(store.punch_rows(PunchQuery(device=c.device)), key=lambda r: r.seq)
        assert [r.credential for r in rows] == c.credentials
    assert store.quarantine() == []
    second.stop()
    logged = "\n".join(r.getMessage() for r in caplog.records)
    assert not [cr for cr in credentials if cr.decode() in logged]
    store.close()
