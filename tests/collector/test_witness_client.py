"""The collector as a client of an external witness (collector/ingest/witness_client.py)
against the real ``timeclock-witness`` over HTTPS on loopback (tests/witness/witness_kit.py):
cosignatures verified and stored, 409 answered, and a truncated or rewritten ledger refused
by the witness and raised as a critical alert."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from collector.ingest.alerts import Alerts
from collector.ingest.witness_client import ExternalWitnesses, WitnessEndpoint, parse_witnesses
from collector.ledger import checkpoint_tables
from collector.ledger.sqlbase import SQLStore
from tests.collector.ledger_kit import CheckpointedLedger
from tests.fixtures.pki import TestPKI
from tests.witness.witness_kit import ORIGIN, WITNESS_NAME, Log, WitnessServer
from wire.keys import SigningKey
from wire.note import Note, cosigned_by
from wire.witness import AddCheckpoint

pytestmark = [pytest.mark.subprocess]

LOG_KEY = SigningKey(bytes(range(32)))


@pytest.fixture
def server(tmp_path: Path, pki: TestPKI) -> Iterator[WitnessServer]:
    srv = WitnessServer(tmp_path / "witness", pki, [Log(LOG_KEY, ORIGIN)])
    srv.start()
    try:
        yield srv
    finally:
        srv.stop()


def endpoint(srv: WitnessServer) -> WitnessEndpoint:
    [ep] = parse_witnesses([{"url": srv.url, "name": WITNESS_NAME, "key": srv.verifier.vkey(),
                             "ca_cert": str(srv.pki.ca_file)}], Path("/"), problems := [])
    assert problems == []
    return ep


def cosigned(store: SQLStore, size: int, srv: WitnessServer) -> list[str]:
    stored = checkpoint_tables.get(store, size)
    assert stored is not None
    return cosigned_by(stored.checkpoint, Note.from_text(stored.note), [srv.verifier])


def test_d5_each_checkpoint_is_cosigned_with_a_proof_from_the_last(
        tmp_path: Path, server: WitnessServer) -> None:
    led = CheckpointedLedger(tmp_path / "ledger.db", LOG_KEY, ORIGIN)
    client = ExternalWitnesses(led.store, (endpoint(server),))
    cp = led.grow(4)
    assert client.send(cp) == {WITNESS_NAME: "cosigned"}
    assert cosigned(led.store, cp.size, server) == [WITNESS_NAME]
    cp2 = led.grow(9)
    assert client.send(cp2) == {WITNESS_NAME: "cosigned"}
    # A restarted collector starts from the stored cosignatures, not from 0.
    cp3 = led.grow(1)
    again = ExternalWitnesses(led.store, (endpoint(server),))
    again.start()
    try:
        again.offer(cp3)
        assert again.wait_idle(60)
    finally:
        again.stop()
    assert cosigned(led.store, cp3.size, server) == [WITNESS_NAME]


def test_d5_a_witness_ahead_answers_409_and_is_asked_again(tmp_path: Path,
                                                        server: WitnessServer) -> None:
    led = CheckpointedLedger(tmp_path / "ledger.db", LOG_KEY, ORIGIN)
    cp = led.grow(3)
    # Someone (another collector of this ledger) already had size cp.size cosigned.
    assert server.post(AddCheckpoint(0, (), cp.note).to_bytes()).status == 200
    cp2 = led.grow(5)
    client = ExternalWitnesses(led.store, (endpoint(server),))
    assert client.send(cp2) == {WITNESS_NAME: "cosigned"}
    assert cosigned(led.store, cp2.size, server) == [WITNESS_NAME]


@pytest.mark.parametrize(("attack", "regrow"), [("truncated", 0), ("rewritten", 12)])
def test_d5_a_truncated_or_rewritten_ledger_is_refused_and_alerted(
        tmp_path: Path, server: WitnessServer, attack: str, regrow: int) -> None:
    honest = CheckpointedLedger(tmp_path / "honest.db", LOG_KEY, ORIGIN)
    cp = honest.grow(8)
    assert ExternalWitnesses(honest.store, (endpoint(server),)).send(cp)[WITNESS_NAME] == \
        "cosigned"
    # The same log key and origin over another ledger: what is left after a truncation
    # (smaller), or a truncation regrown with other punches (larger, other history).
    fake = CheckpointedLedger(tmp_path / "fake.db", LOG_KEY, ORIGIN)
    fake_cp = fake.grow(3, credential="em4100:0099999999")
    if regrow:
        fake_cp = fake.grow(regrow, credential="em4100:0099999999")
    alerts = Alerts()
    client = ExternalWitnesses(fake.store, (endpoint(server),), alerts=alerts)
    client._sizes[WITNESS_NAME] = 0      # the attacker's collector remembers nothing
    assert client.send(fake_cp) == {WITNESS_NAME: "refused"}
    [alert] = alerts.recent("witness-refusal")
    assert "REFUSES" in alert.detail
    assert cosigned(fake.store, fake_cp.size, server) == []


def test_d5_unreachable_witness_is_a_warning_not_a_crash(tmp_path: Path, pki: TestPKI) -> None:
    led = CheckpointedLedger(tmp_path / "ledger.db", LOG_KEY, ORIGIN)
    srv = WitnessServer(tmp_path / "w", pki, [Log(LOG_KEY, ORIGIN)])   # never started
    client = ExternalWitnesses(led.store, (endpoint(srv),))
    assert client.send(led.grow(1)) == {WITNESS_NAME: "error"}


@pytest.mark.parametrize(("table", "problem"), [
    ({"url": "http://w.example", "name": "w.example/w"}, "https:// only"),
    ({"url": "https://w.example", "name": "w.example/w", "key": "nonsense"}, "verifier key"),
    ({"url": "https://w.example", "name": "w.example/w", "extra": 1},
     "witnesses[0].extra: unknown key"),
    ({"url": "https://w.example", "name": "w.example/w"}, "witnesses[0].key: required"),
])
def test_d5_witness_config_problems(table: dict[str, object], problem: str) -> None:
    problems: list[str] = []
    assert parse_witnesses([table], Path("/"), problems) == ()
    assert any(problem in p for p in problems), problems
