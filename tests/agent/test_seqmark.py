"""The sequence mark (agent/seqmark.py) and the outbox against it: every queue-damage variant of
issue 11 finding 11 on real SQLite files ends in a refusal that uses no seq, and a resume that
continues after the mark with the loss recorded: never a reused seq.

The state of a killed agent is a copy of queue.db, its WAL and the mark taken while the outbox
is open (a clean close would checkpoint and remove the WAL). tests/e2e/test_queue_damage.py
replays the same variants on a real agent process with a real collector and broker.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

from agent import cli as agent_cli
from agent.errors import QueueError, SeqMarkError, SequenceRefusedError
from agent.keystore import save_queue_key
from agent.punches import REFUSED_SEQUENCE, PunchMaker
from agent.queue import Outbox
from agent.seqmark import (
    FILE_BYTES,
    LOSS_FILE,
    SLOT_BYTES,
    Mark,
    SeqMark,
    read_losses,
)
from agent.status import sequence_line
from tests.agent.queue_damage_kit import (
    LOSES_QUEUE_TRANSACTIONS,
    VARIANTS,
    copy_state,
    last_seq_after,
)
from tests.agent.test_queue import DEVICE, KEY, SK, fill, make
from wire import ZERO_HASH
from wire.chain import check_device_chain
from wire.keys import save_signing_key

PUNCHES = 30          # enough for SQLite to checkpoint once (the WAL holds the rest)


def _open(state: Path, key: bytes = KEY, *, seeded: bool = False) -> Outbox:
    """``seeded``: as provisioned (agent/provision.py), so a whole lost state is told from a
    first start (the damaged snapshots; a new state directory is a first start)."""
    return Outbox(state / "queue.db", key, DEVICE, mark=SeqMark(state / "seqmark", key, DEVICE),
                  seeded=seeded)


def _killed_state(tmp_path: Path, n: int = PUNCHES) -> tuple[Path, list[str]]:
    """A state directory as kill -9 leaves it after ``n`` committed punches (their hashes)."""
    live = tmp_path / "live"
    box = _open(live)
    try:
        hashes = [p.hash() for p in fill(box, n)]
        snap = copy_state(live, tmp_path / "killed")
    finally:
        box.close()
    return snap, hashes


# -- the mark file --------------------------------------------------------------------------

def test_d4_mark_round_trip_two_slots_and_never_down(tmp_path: Path) -> None:
    m = SeqMark(tmp_path / "seqmark", KEY, DEVICE)
    assert m.read() is None
    m.create()
    assert m.read() == Mark(0, ZERO_HASH)
    assert (tmp_path / "seqmark").stat().st_size == FILE_BYTES
    assert (tmp_path / "seqmark").stat().st_mode & 0o777 == 0o600
    m.write(Mark(1, "11" * 32))
    m.write(Mark(2, "22" * 32))
    assert SeqMark(tmp_path / "seqmark", KEY, DEVICE).read() == Mark(2, "22" * 32)
    with pytest.raises(SeqMarkError, match="would go down from seq 2 to 1"):
        m.write(Mark(1, "11" * 32))
    with pytest.raises(SeqMarkError, match="exists already"):
        m.create()
    assert b"22" * 32 not in (tmp_path / "seqmark").read_bytes()   # the hash is encrypted
    m.close()


def test_d4_torn_slot_reads_the_mark_before_it(tmp_path: Path) -> None:
    m = SeqMark(tmp_path / "seqmark", KEY, DEVICE)
    m.create()
    m.write(Mark(7, "77" * 32))
    m.write(Mark(8, "88" * 32))          # slot 0
    m.close()
    with open(tmp_path / "seqmark", "r+b") as f:   # a torn write of slot 0
        f.seek(40)
        f.write(b"\xff" * 30)
    assert SeqMark(tmp_path / "seqmark", KEY, DEVICE).read() == Mark(7, "77" * 32)


@pytest.mark.parametrize(("what", "damage"), [
    ("both slots garbled", lambda p: p.write_bytes(os.urandom(FILE_BYTES))),
    ("empty file", lambda p: p.write_bytes(b"")),
    ("another device's mark", None),
])
def test_d4_mark_that_does_not_authenticate_is_an_error(tmp_path: Path, what: str,
                                                        damage: object) -> None:
    path = tmp_path / "seqmark"
    if damage is None:
        SeqMark(path, KEY, "clock-other").create(Mark(5, "55" * 32))
    else:
        SeqMark(path, KEY, DEVICE).create(Mark(5, "55" * 32))
        damage(path)  # type: ignore[operator]
    with pytest.raises(SeqMarkError, match="damaged or not this clock's"):
        SeqMark(path, KEY, DEVICE).read()
    assert len(path.read_bytes()) in (0, FILE_BYTES, 2 * SLOT_BYTES), what


# -- the outbox against its mark --------------------------------------------------------------

def test_d4_outbox_keeps_the_mark_at_the_last_committed_punch(tmp_path: Path) -> None:
    box = _open(tmp_path)
    try:
        made = fill(box, 5)
        assert box.sequence().state == "ok"
        assert box.mark is not None
        assert box.mark.read() == Mark(5, made[-1].hash())
        assert box.mark.writes == 5
    finally:
        box.close()


def test_d4_a_legacy_queue_without_a_mark_is_adopted(tmp_path: Path) -> None:
    with Outbox(tmp_path / "queue.db", KEY, DEVICE) as box:      # before the mark existed
        made = fill(box, 3)
    box = _open(tmp_path)
    try:
        assert box.sequence().state == "ok"
        assert SeqMark(tmp_path / "seqmark", KEY, DEVICE).read() == Mark(3, made[-1].hash())
        assert box.record(make).punch.seq == 4
    finally:
        box.close()


def test_d4_kill_between_commit_and_mark_write_is_not_a_loss(tmp_path: Path) -> None:
    """The mark is written after the COMMIT: a queue one ahead of its mark is a crash in
    between (not damage), and the mark catches up at open."""
    snap, hashes = _killed_state(tmp_path, 4)
    mark = SeqMark(snap / "seqmark", KEY, DEVICE)
    (snap / "seqmark").unlink()
    mark.create(Mark(3, hashes[2]))
    box = _open(snap)
    try:
        assert box.sequence().state == "ok"
        assert SeqMark(snap / "seqmark", KEY, DEVICE).read() == Mark(4, hashes[3])
    finally:
        box.close()


@pytest.mark.parametrize("variant", sorted(VARIANTS))
def test_d4_queue_damage_refuses_then_resumes_after_the_mark(tmp_path: Path,
                                                             variant: str) -> None:
    snap, hashes = _killed_state(tmp_path)
    q_after = last_seq_after(snap, VARIANTS[variant], tmp_path / "scratch")
    if variant in LOSES_QUEUE_TRANSACTIONS:
        assert q_after is not None
        assert q_after < PUNCHES, f"{variant}: the damage lost no transaction ({q_after})"
    VARIANTS[variant](snap)
    refused: list[str] = []
    box = _open(snap, seeded=True)
    try:
        st = box.sequence()
        assert st.state == "refusing"
        assert st.reason == {"mark-lost": "mark-lost", "state-lost": "state-lost"}.get(
            variant, "queue-behind-mark")
        maker = PunchMaker(box, SK, on_refused=lambda _t, r: refused.append(r))

        class Tap:
            reader, credential, action, mono_us = "front", "em4100:0012345678", "in", 0
        with pytest.raises(Exception, match="sequence refusing") as ei:
            maker.record(Tap())
        assert type(ei.value).__name__ == "TapRefusedError"
        with pytest.raises(SequenceRefusedError):
            box.record(make)
        assert (refused, maker.refused_sequence) == ([REFUSED_SEQUENCE], 1)
        q_seq = box.last_seq()
        assert q_seq == (PUNCHES if variant == "mark-lost" else q_after)
        if variant == "state-lost":
            # Nothing on the clock knows its last seq: only the collector's (signed) record,
            # here all PUNCHES recorded (tests/e2e/test_resume_answer.py asks a real one).
            with pytest.raises(QueueError, match="only the collector knows"):
                box.resume(reason="test: SD card replaced")
            loss = box.resume(reason="test: SD card replaced", after_seq=PUNCHES,
                              after_hash=hashes[-1])
        else:
            loss = box.resume(reason="test: SD card replaced")
        with pytest.raises(QueueError, match="nothing to resume"):
            box.resume(reason="twice")
        nxt = box.record(make)
    finally:
        box.close()
    # Never a reused seq: the chain continues after everything the clock ever committed,
    # linked to the last committed punch (its hash is in the mark, or the collector's record).
    assert nxt.punch.seq == PUNCHES + 1
    assert nxt.punch.prev == hashes[-1]
    assert (loss.first, loss.last) == (q_seq + 1, PUNCHES)
    assert read_losses(snap / LOSS_FILE) == [loss]
    assert json.loads((snap / LOSS_FILE).read_text())["losses"][0]["reason"] \
        == "test: SD card replaced"
    # Restarted: ok, and the chain held in the queue still links with no repeat.
    box = _open(snap, seeded=True)
    try:
        assert box.sequence().state == "ok"
        pending = box.pending(limit=10**6, max_bytes=10**9)
        seqs = [p.punch.seq for p in pending]
        assert len(seqs) == len(set(seqs))
        assert seqs[-1] == PUNCHES + 1
        assert check_device_chain(DEVICE, [p.punch for p in pending]).ok
    finally:
        box.close()


def test_d4_resume_after_the_collectors_last_seq(tmp_path: Path) -> None:
    """--after-seq: the operator's number from the collector is higher than both records."""
    snap, _ = _killed_state(tmp_path, 5)
    VARIANTS["queue-deleted"](snap)
    box = _open(snap)
    try:
        loss = box.resume(reason="collector says 9", after_seq=9)
        nxt = box.record(make)
    finally:
        box.close()
    assert (loss.first, loss.last, nxt.punch.seq) == (1, 9, 10)


def test_d4_damaged_mark_refuses_and_resume_moves_it_aside(tmp_path: Path) -> None:
    snap, hashes = _killed_state(tmp_path, 5)
    (snap / "seqmark").write_bytes(b"\0" * FILE_BYTES)
    box = _open(snap)
    try:
        assert (box.sequence().state, box.sequence().reason) == ("refusing", "mark-damaged")
        box.resume(reason="mark damaged")
        nxt = box.record(make)
    finally:
        box.close()
    assert (nxt.punch.seq, nxt.punch.prev) == (6, hashes[-1])
    assert [p.name for p in snap.glob("seqmark.damaged.*")] != []


# -- the operator's view: status and `timeclock-agent resume` ----------------------------------

def test_d4_status_shows_a_refusing_sequence_and_its_losses() -> None:
    refusing = {"state": "refusing", "reason": "queue-behind-mark", "since_us": 0,
                "detail": "queue.db ends at seq 3 but the clock committed up to seq 9",
                "refused_taps": 4, "losses": []}
    line = sequence_line(refusing, now_us=5_000_000)
    assert line.startswith("sequence:      REFUSING TAPS (queue-behind-mark)")
    assert "4 tap(s) refused; run `timeclock-agent resume`" in line
    resumed = {"state": "ok", "mark_seq": 12, "losses": [
        {"first": 4, "last": 9, "reason": "r", "detail": "d", "at_us": 0}]}
    assert sequence_line(resumed, now_us=5_000_000) == \
        "sequence:      ok at seq 12; 1 resume(s), last 5s ago: seqs 4..9 lost"


def test_d4_resume_command(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    save_signing_key(tmp_path / "signing.key", SK)
    save_queue_key(tmp_path / "queue.key", KEY)
    cfg = tmp_path / "agent.toml"
    cfg.write_text(f'[device]\nid = "{DEVICE}"\nstate_dir = "state"\n'
                   '[keys]\nsigning_key = "signing.key"\nqueue_key = "queue.key"\n'
                   '[readers.front]\nkind = "simulated"\ncredentials = ["0012345678"]\n')
    box = _open(tmp_path / "state")
    try:
        fill(box, 4)
    finally:
        box.close()
    args = ["resume", "-c", str(cfg), "--reason", "card swapped"]
    assert agent_cli.main(args) == 3                      # nothing to resume
    assert "nothing to resume" in capsys.readouterr().out
    VARIANTS["queue-deleted"](tmp_path / "state")
    assert agent_cli.main(args) == 0
    out = capsys.readouterr().out
    assert "RESUMED: seqs 1..4 were committed on this clock" in out
    assert "The next punch is seq 5" in out
    [loss] = read_losses(tmp_path / "state" / LOSS_FILE)
    assert (loss.first, loss.last, loss.reason, loss.reported_us) == (1, 4, "card swapped", None)
