"""Our collector against a third-party C2SP tlog-witness (tests/interop/aics_kit.py:
``aics-witness`` from PyPI, unmodified, behind a TLS terminator): it cosigns each checkpoint
our collector offers with a consistency proof from the last one, and the collector verifies
and stores its cosignatures (cosignature/v1 under the witness's own vkey); a witness that is
ahead answers 409 and our client starts again from its size; a truncated or rewritten ledger
under the same log key is refused by it, and our collector raises the critical alert. The
reverse (our ``timeclock-witness`` with another log) is tests/interop/test_c2sp_go.py's notes
and proofs; docs/protocol.md §13.10."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from collector.ingest import checkpoints
from collector.ingest.alerts import Alerts
from collector.ingest.witness_client import ExternalWitnesses, WitnessEndpoint, parse_witnesses
from collector.ledger import checkpoint_tables
from tests.collector.ledger_kit import CheckpointedLedger
from tests.fixtures.pki import TestPKI
from tests.interop.aics_kit import NAME, AicsWitness, TLSProxy, unpack
from wire.keys import SigningKey
from wire.note import Note, NoteVerifier, cosigned_by

pytestmark = [pytest.mark.subprocess]

ORIGIN = "interop.example/timeclock"
LOG_KEY = SigningKey(bytes(range(32)))


@pytest.fixture(scope="module")
def site_packages(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return unpack(tmp_path_factory.mktemp("aics"))


@pytest.fixture
def witness(tmp_path: Path, site_packages: Path, pki: TestPKI
            ) -> Iterator[tuple[AicsWitness, WitnessEndpoint]]:
    w = AicsWitness(tmp_path / "aics", site_packages)
    w.trust(ORIGIN, checkpoints.note_verifier(ORIGIN, LOG_KEY).vkey())
    w.start()
    proxy = TLSProxy(pki, w.port)
    try:
        problems: list[str] = []
        [ep] = parse_witnesses([{"url": proxy.url, "name": NAME, "key": w.vkey,
                                 "ca_cert": str(pki.ca_file)}], Path("/"), problems)
        assert problems == []
        yield w, ep
    finally:
        proxy.stop()
        w.stop()


def cosigners(led: CheckpointedLedger, size: int, vkey: str) -> list[str]:
    stored = checkpoint_tables.get(led.store, size)
    assert stored is not None
    return cosigned_by(stored.checkpoint, Note.from_text(stored.note),
                       [NoteVerifier.from_vkey(vkey)])


def test_d5_a_third_party_witness_cosigns_our_checkpoints_and_we_store_them(
        tmp_path: Path, witness: tuple[AicsWitness, WitnessEndpoint]) -> None:
    w, ep = witness
    led = CheckpointedLedger(tmp_path / "ledger.db", LOG_KEY, ORIGIN)
    client = ExternalWitnesses(led.store, (ep,))
    for n in (4, 9, 1, 17):          # each from the size cosigned before: a real proof
        cp = led.grow(n)
        assert client.send(cp) == {NAME: "cosigned"}, w.log_text()[-2000:]
        assert cosigners(led, cp.size, w.vkey) == [NAME]
    # A restarted collector starts from the stored cosignatures, not from 0.
    cp = led.grow(3)
    again = ExternalWitnesses(led.store, (ep,))
    assert again.send(cp) == {NAME: "cosigned"}
    assert cosigners(led, cp.size, w.vkey) == [NAME]


def test_d5_a_third_party_witness_ahead_answers_409_and_we_start_from_its_size(
        tmp_path: Path, witness: tuple[AicsWitness, WitnessEndpoint]) -> None:
    w, ep = witness
    led = CheckpointedLedger(tmp_path / "ledger.db", LOG_KEY, ORIGIN)
    first = ExternalWitnesses(led.store, (ep,))
    assert first.send(led.grow(5)) == {NAME: "cosigned"}
    # Another collector of this ledger, which believes the witness holds nothing yet.
    other = ExternalWitnesses(led.store, (ep,))
    other._sizes[NAME] = 0
    cp = led.grow(6)
    assert other.send(cp) == {NAME: "cosigned"}, w.log_text()[-2000:]
    assert cosigners(led, cp.size, w.vkey) == [NAME]


@pytest.mark.parametrize("regrow", [0, 12], ids=["truncated", "rewritten"])
def test_d5_a_third_party_witness_refuses_a_truncated_or_rewritten_ledger(
        tmp_path: Path, witness: tuple[AicsWitness, WitnessEndpoint], regrow: int) -> None:
    w, ep = witness
    honest = CheckpointedLedger(tmp_path / "honest.db", LOG_KEY, ORIGIN)
    cp = honest.grow(8)
    assert ExternalWitnesses(honest.store, (ep,)).send(cp) == {NAME: "cosigned"}
    fake = CheckpointedLedger(tmp_path / "fake.db", LOG_KEY, ORIGIN)
    fake_cp = fake.grow(3, credential="em4100:0099999999")
    if regrow:
        fake_cp = fake.grow(regrow, credential="em4100:0099999999")
    alerts = Alerts()
    client = ExternalWitnesses(fake.store, (ep,), alerts=alerts)
    client._sizes[NAME] = 0       # the attacker's collector remembers nothing
    assert client.send(fake_cp) == {NAME: "refused"}, w.log_text()[-2000:]
    [alert] = alerts.recent("witness-refusal")
    assert "REFUSES" in alert.detail
    assert cosigners(fake, fake_cp.size, w.vkey) == []
