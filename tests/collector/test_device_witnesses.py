"""Clocks as witnesses, collector side (collector/ingest/cosignatures.py, DESIGN.md §8.3):
a real store (SQLite and PostgreSQL), real v2 checkpoints, and real clock witnesses
(agent.witness.ClockWitness with the keys the registry enrolled) answering the requests."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import pytest

from agent.witness import ClockWitness
from collector.ingest import checkpoints
from collector.ingest.alerts import Alerts
from collector.ingest.cosignatures import DeviceWitnesses
from collector.ledger import checkpoint_tables
from collector.ledger.base import EventFact
from collector.ledger.sqlbase import SQLStore
from tests.collector.ledger_kit import T0, Clock
from wire.keys import SigningKey
from wire.note import COSIGNATURE_V1, Checkpoint, Note, NoteVerifier, cosigned_by
from wire.witness import (
    AddCheckpoint,
    CosignatureReply,
    checkpoint_topic,
    cosignature_topic,
    device_witness_name,
)

ORIGIN = "acme.example/timeclock"
LOG_KEY = SigningKey(bytes(range(32)))


class Site:
    """A ledger with clocks enrolled, the collector's DeviceWitnesses, and the clocks'
    witnesses wired to its requests (what the broker does, without the broker)."""

    def __init__(self, store: SQLStore, tmp_path: Path, devices: tuple[str, ...]) -> None:
        checkpoint_tables.ensure_schema(store)
        self.store = store
        self.clocks = {d: Clock(d) for d in devices}
        store.append([EventFact("device", c.enrolled_body()) for c in self.clocks.values()],
                     now_us=T0)
        self.witnesses = {d: ClockWitness(tmp_path / f"{d}.json", d, c.key,
                                          LOG_KEY.verify_key, now=lambda: T0 / 1e6)
                          for d, c in self.clocks.items()}
        self.sent: list[tuple[str, bytes, bool]] = []
        self.alerts = Alerts()
        self.dw = self.collector()
        self.now = T0

    def collector(self) -> DeviceWitnesses:
        return DeviceWitnesses(self.store, ORIGIN, lambda t, b, r: self.sent.append((t, b, r)),
                               alerts=self.alerts)

    def punch(self, n: int, device: str | None = None) -> None:
        c = self.clocks[device or next(iter(self.clocks))]
        self.now += 10
        self.store.append([c.fact() for _ in range(n)], now_us=self.now)

    def checkpoint(self) -> checkpoint_tables.StoredCheckpoint:
        self.now += 10
        return checkpoints.make_checkpoint_v2(self.store, LOG_KEY, ORIGIN,
                                              self.store.tree_size(), self.now)

    def deliver(self, dw: DeviceWitnesses | None = None,
                reply: Callable[[str, bytes], bytes | None] | None = None) -> int:
        """Hand every request to its clock and the answers back; until nothing is asked."""
        dw = dw or self.dw
        n = 0
        for _ in range(10):
            sent, self.sent = self.sent, []
            if not sent:
                return n
            for topic, body, retain in sent:
                assert retain is True
                device = next(d for d in self.clocks if checkpoint_topic(d) == topic)
                answer = (reply(device, body) if reply is not None else
                          _bytes(self.witnesses[device].handle(body)))
                if answer is not None:
                    dw.receive(cosignature_topic(device), answer, self.now)
                    n += 1
            dw.process()
        raise AssertionError("requests never settle")


def _bytes(r: CosignatureReply | None) -> bytes | None:
    return None if r is None else r.to_bytes()


def verifiers(site: Site) -> list[NoteVerifier]:
    return [NoteVerifier(device_witness_name(ORIGIN, d), c.key.verify_key, COSIGNATURE_V1)
            for d, c in site.clocks.items()]


def test_d5_clocks_cosign_each_checkpoint_with_a_proof_from_their_last(
        store: SQLStore, tmp_path: Path) -> None:
    site = Site(store, tmp_path, ("clock-a", "clock-b"))
    site.punch(5)
    cp = site.checkpoint()
    assert site.dw.offer(cp) == 2
    assert AddCheckpoint.from_bytes(site.sent[0][1]).old_size == 0
    site.deliver()
    stored = checkpoint_tables.get(store, cp.size)
    assert stored is not None
    note = Note.from_text(stored.note)
    assert sorted(cosigned_by(stored.checkpoint, note, verifiers(site))) == [
        f"{ORIGIN}/devices/clock-a", f"{ORIGIN}/devices/clock-b"]

    site.punch(3)
    cp2 = site.checkpoint()
    site.dw.offer(cp2)
    assert {AddCheckpoint.from_bytes(b).old_size for _, b, _ in site.sent} == {cp.size}
    site.deliver()
    assert checkpoint_tables.get(store, cp2.size).cosignatures == 2  # type: ignore[union-attr]
    assert site.dw.counts["cosignatures"] == 4
    # A restarted collector knows from the stored cosignatures where each clock stands.
    assert site.collector().cosigned_size("clock-b") == cp2.size


def test_d5_a_clock_ahead_of_the_collector_answers_conflict_and_is_asked_again(
        store: SQLStore, tmp_path: Path) -> None:
    site = Site(store, tmp_path, ("clock-a",))
    site.punch(4)
    cp = site.checkpoint()
    # The clock cosigned size cp.size, but the collector does not know (a lost reply).
    w = site.witnesses["clock-a"]
    assert w.handle(AddCheckpoint(0, (), cp.note).to_bytes()).result == "cosigned"  # type: ignore[union-attr]
    site.punch(2)
    cp2 = site.checkpoint()
    site.dw.offer(cp2)
    assert site.deliver() == 2                       # conflict, then the cosignature
    assert site.dw.counts["conflicts"] == 1
    assert checkpoint_tables.get(store, cp2.size).cosignatures == 1  # type: ignore[union-attr]
    assert w.checkpoint == cp2.checkpoint


@pytest.mark.parametrize("forgery", ["other-key", "other-device-topic", "unknown-checkpoint"])
def test_d5_forged_cosignatures_are_not_stored(store: SQLStore, tmp_path: Path,
                                            forgery: str) -> None:
    site = Site(store, tmp_path, ("clock-a", "clock-b"))
    site.punch(3)
    cp = site.checkpoint()
    name = device_witness_name(ORIGIN, "clock-a")
    target = cp.checkpoint
    if forgery == "unknown-checkpoint":
        target = Checkpoint(ORIGIN, cp.size, bytes(32))
    key = SigningKey.generate() if forgery == "other-key" else site.clocks["clock-a"].key
    line = target.cosign(key, name, timestamp=1)
    reply = CosignatureReply.cosigned("clock-a", target, line)
    topic = cosignature_topic("clock-b" if forgery == "other-device-topic" else "clock-a")
    site.dw.receive(topic, reply.to_bytes(), T0)
    site.dw.process()
    assert site.dw.counts["bad_replies"] == 1
    assert checkpoint_tables.get(store, cp.size).cosignatures == 0  # type: ignore[union-attr]


def test_d5_a_refusal_is_a_critical_alert(store: SQLStore, tmp_path: Path) -> None:
    site = Site(store, tmp_path, ("clock-a",))
    site.punch(6)
    cp = site.checkpoint()
    site.dw.offer(cp)
    site.deliver()
    # The clock now holds cp.size; offer it a smaller checkpoint it cannot accept.
    small = Checkpoint(ORIGIN, 2, store.merkle_root(2))
    site.dw.receive(cosignature_topic("clock-a"), _bytes(site.witnesses["clock-a"].handle(
        AddCheckpoint(0, (), small.sign(LOG_KEY)).to_bytes())) or b"", T0)
    site.dw.process()
    refusal = site.dw.refusals()["clock-a"]
    assert (refusal.reason, refusal.size, refusal.known_size) == ("shrinking", 2, cp.size)
    [alert] = site.alerts.recent("witness-refusal")
    assert alert.device == "clock-a"
    assert "REFUSES" in alert.detail


def test_d5_a_refusal_not_signed_by_the_clock_is_ignored(store: SQLStore, tmp_path: Path) -> None:
    site = Site(store, tmp_path, ("clock-a",))
    site.punch(2)
    cp = site.checkpoint()
    forged = CosignatureReply.refused("clock-a", cp.checkpoint.body_text(), "inconsistent",
                                      "forged", known=None, at=T0, key=SigningKey.generate())
    site.dw.receive(cosignature_topic("clock-a"), forged.to_bytes(), T0)
    site.dw.process()
    assert site.dw.refusals() == {}
    assert site.dw.counts["bad_replies"] == 1
