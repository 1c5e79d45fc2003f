"""The encrypted outbox: round trip, the test vector, D4 byte search, tampering, keys, restart."""

from __future__ import annotations

import base64
import json
import logging
import os
import sqlite3
import stat
import threading
from pathlib import Path
from typing import Any

import pytest

from agent.errors import QueueError, QueueIntegrityError
from agent.queue import Outbox, decrypt_row, encrypt_row, read_stats, row_aad
from wire import ZERO_HASH
from wire.chain import verify_device_chain
from wire.keys import SigningKey
from wire.punch import Punch, SignedPunch

VECTORS: dict[str, Any] = json.loads(
    (Path(__file__).parent.parent / "vectors" / "punch-v1.json").read_text())
DEVICE = "clock-0017"
KEY = bytes(range(32))
SK = SigningKey(bytes(range(100, 132)))
CREDENTIALS = ["em4100:0012345678", "em4100:0087654321", "hid:7766554433"]
BOOT = "6b2f1e0c-3c4d-4e8a-9f1a-2b3c4d5e6f70"


def make(seq: int, prev: str, credential: str = CREDENTIALS[0],
         device: str = DEVICE) -> SignedPunch:
    return Punch(device=device, seq=seq, prev=prev, ts=1_764_140_400_000_000 + seq,
                 clock="synced", boot=BOOT, mono=91_000_000 + seq, reader="front",
                 credential=credential, action="in", key=SK.key_id).sign(SK)


def fill(box: Outbox, n: int) -> list[SignedPunch]:
    out = []
    for i in range(n):
        cred = CREDENTIALS[i % len(CREDENTIALS)]

        def build(seq: int, prev: str, cred: str = cred) -> SignedPunch:
            return make(seq, prev, cred)

        out.append(box.record(build))
    return out


@pytest.fixture
def qpath(tmp_path: Path) -> Path:
    return tmp_path / "state" / "queue.db"


def test_round_trip_in_seq_order_with_linked_chain(qpath: Path) -> None:
    with Outbox(qpath, KEY, DEVICE) as box:
        made = fill(box, 7)
        assert [p.punch.seq for p in made] == list(range(1, 8))
        assert made[0].punch.prev == ZERO_HASH
        got = box.pending()
        assert got == made
        verify_device_chain(DEVICE, [p.punch for p in got])
        assert box.depth() == 7
        assert box.last_seq() == 7
        assert box.oldest_created_us() is not None


def test_pending_limit_bytes_and_after_seq(qpath: Path) -> None:
    with Outbox(qpath, KEY, DEVICE) as box:
        made = fill(box, 10)
        assert [p.punch.seq for p in box.pending(limit=3)] == [1, 2, 3]
        assert [p.punch.seq for p in box.pending(after_seq=8)] == [9, 10]
        one = len(made[0].to_bytes()) + 1
        assert len(box.pending(max_bytes=2 * one + 5)) == 2
        # A limit smaller than one punch still makes progress.
        assert [p.punch.seq for p in box.pending(max_bytes=1)] == [1]


def test_delete_acked_is_exact_and_chain_continues(qpath: Path) -> None:
    with Outbox(qpath, KEY, DEVICE) as box:
        made = fill(box, 5)
        assert box.delete_acked([2, 4, 99]) == 2
        assert [p.punch.seq for p in box.pending()] == [1, 3, 5]
        assert box.delete_acked([1, 3, 5]) == 3
        assert box.depth() == 0
        assert box.oldest_created_us() is None
        nxt = box.record(make)
        assert nxt.punch.seq == 6
        assert nxt.punch.prev == made[-1].hash()


def test_seq_and_prev_persist_across_reopen(qpath: Path) -> None:
    with Outbox(qpath, KEY, DEVICE) as box:
        made = fill(box, 3)
        box.delete_acked([1, 2, 3])
    with Outbox(qpath, KEY, DEVICE) as box:
        assert box.last_seq() == 3
        p4 = box.record(make)
    assert p4.punch.seq == 4
    assert p4.punch.prev == made[2].hash()


def test_build_error_rolls_back_and_consumes_no_seq(qpath: Path) -> None:
    def broken(seq: int, prev: str) -> SignedPunch:
        raise RuntimeError("reader glitch")

    with Outbox(qpath, KEY, DEVICE) as box:
        with pytest.raises(RuntimeError, match="reader glitch"):
            box.record(broken)
        assert box.record(make).punch.seq == 1
        with pytest.raises(QueueError, match="does not continue the chain"):
            box.record(lambda s, p: make(s + 1, ZERO_HASH))
        assert box.last_seq() == 1


def test_concurrent_record_from_threads_keeps_one_chain(qpath: Path) -> None:
    with Outbox(qpath, KEY, DEVICE) as box:
        threads = [threading.Thread(target=fill, args=(box, 15)) for _ in range(4)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        got = box.pending()
    assert [p.punch.seq for p in got] == list(range(1, 61))
    assert verify_device_chain(DEVICE, [p.punch for p in got]).gaps == []


def test_queue_row_vector_reproduced() -> None:
    v = VECTORS["queue_row"]
    key = bytes.fromhex(v["key_hex"])
    nonce = bytes.fromhex(v["nonce_hex"])
    plaintext = v["plaintext"].encode()
    sp = SignedPunch.from_bytes(plaintext)
    assert row_aad(sp.punch.device, sp.punch.seq) == base64.b64decode(v["aad_b64"])
    n, ct = encrypt_row(key, sp.punch.device, sp.punch.seq, plaintext, nonce)
    assert n == nonce
    assert base64.b64encode(ct).decode() == v["ciphertext_b64"]
    assert decrypt_row(key, sp.punch.device, sp.punch.seq, nonce, ct) == plaintext
    with pytest.raises(QueueIntegrityError, match="failed authentication"):
        decrypt_row(key, sp.punch.device, sp.punch.seq + 1, nonce, ct)


def _queue_files(qpath: Path) -> list[Path]:
    return sorted(p for p in qpath.parent.iterdir() if p.name.startswith(qpath.name))


def _needles(punches: list[SignedPunch]) -> list[bytes]:
    out = [b'"punch"', b'"credential"', b"em4100:", b"hid:"]
    for p in punches:
        out += [p.punch.credential.split(":")[1].encode(), p.sig.encode()[:40],
                p.hash().encode(), p.to_bytes()[:30]]
    return out


def _assert_nothing_in_clear(qpath: Path, punches: list[SignedPunch]) -> list[str]:
    files = _queue_files(qpath)
    for f in files:
        data = f.read_bytes()
        for needle in _needles(punches):
            assert needle not in data, f"{needle!r} in clear in {f.name}"
    return [f.name for f in files]


def test_d4_no_credential_or_punch_json_in_clear_before_and_after_delete(qpath: Path) -> None:
    box = Outbox(qpath, KEY, DEVICE)
    made = fill(box, 30)
    names = _assert_nothing_in_clear(qpath, made)
    assert "queue.db-wal" in names  # the WAL is searched while it holds the rows
    box.pending()
    box.delete_acked(range(1, 21))
    _assert_nothing_in_clear(qpath, made)
    box.close()
    _assert_nothing_in_clear(qpath, made)  # after the WAL was checkpointed into the db
    with sqlite3.connect(qpath) as c:
        assert c.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
        assert c.execute("SELECT count(*) FROM punches").fetchone()[0] == 10


def test_d4_queue_files_are_private(qpath: Path) -> None:
    with Outbox(qpath, KEY, DEVICE) as box:
        fill(box, 2)
        for f in _queue_files(qpath):
            assert stat.S_IMODE(f.stat().st_mode) & 0o077 == 0, f.name


def test_d4_database_unreadable_without_key(qpath: Path) -> None:
    """The lost-device case: a copy of the file and SQL give seq/time but no punch."""
    with Outbox(qpath, KEY, DEVICE) as box:
        made = fill(box, 3)
    with sqlite3.connect(qpath) as c:
        rows = c.execute("SELECT * FROM punches").fetchall()
    flat = b"".join(x if isinstance(x, bytes) else str(x).encode() for r in rows for x in r)
    for needle in _needles(made):
        assert needle not in flat


def _tamper(qpath: Path, sql: str, *params: Any) -> None:
    with sqlite3.connect(qpath) as c:
        c.execute(sql, params)


def test_altered_ciphertext_is_set_aside_reported_and_never_returned(
        qpath: Path, caplog: pytest.LogCaptureFixture) -> None:
    with Outbox(qpath, KEY, DEVICE) as box:
        fill(box, 5)
    with sqlite3.connect(qpath) as c:
        ct = bytearray(c.execute("SELECT ct FROM punches WHERE seq = 3").fetchone()[0])
        ct[10] ^= 0x01
        c.execute("UPDATE punches SET ct = ? WHERE seq = 3", (bytes(ct),))
    caplog.set_level(logging.ERROR, logger="agent.queue")
    with Outbox(qpath, KEY, DEVICE) as box:
        got = box.pending()
        assert [p.punch.seq for p in got] == [1, 2, 4, 5]
        assert box.set_aside_count() == 1
        assert box.set_aside_reported == 1
        assert [p.punch.seq for p in box.pending()] == [1, 2, 4, 5]
        assert box.depth() == 4
        assert box.record(make).punch.seq == 6
    assert "seq=3 set aside: ciphertext failed authentication" in caplog.text
    with sqlite3.connect(qpath) as c:
        assert c.execute("SELECT seq, reason FROM set_aside").fetchall() == [
            (3, "ciphertext failed authentication")]


@pytest.mark.parametrize(("sql", "params"), [
    ("UPDATE punches SET seq = 9 WHERE seq = 2", ()),          # row moved to another seq
    ("UPDATE punches SET nonce = ? WHERE seq = 2", (b"\0" * 24,)),
    ("UPDATE punches SET ct = substr(ct, 1, 20) WHERE seq = 2", ()),
])
def test_moved_or_truncated_rows_are_set_aside(qpath: Path, sql: str, params: tuple[Any, ...]
                                               ) -> None:
    with Outbox(qpath, KEY, DEVICE) as box:
        fill(box, 9)
        box.delete_acked([9])  # seq 9 is free (and ≤ last_seq: see the next test)
    _tamper(qpath, sql, *params)
    with Outbox(qpath, KEY, DEVICE) as box:
        seqs = [p.punch.seq for p in box.pending()]
        assert 2 not in seqs
        assert 9 not in seqs
        assert box.set_aside_count() == 1


def test_row_beyond_chain_state_is_refused(qpath: Path) -> None:
    with Outbox(qpath, KEY, DEVICE) as box:
        fill(box, 3)
    _tamper(qpath, "UPDATE punches SET seq = 50 WHERE seq = 3")
    with pytest.raises(QueueIntegrityError, match="beyond the chain state"):
        Outbox(qpath, KEY, DEVICE)


def test_wrong_queue_key_is_a_clear_error_and_nothing_is_deleted(qpath: Path) -> None:
    with Outbox(qpath, KEY, DEVICE) as box:
        fill(box, 4)
    before = qpath.read_bytes()
    with pytest.raises(QueueIntegrityError, match="queue key does not open this queue"):
        Outbox(qpath, os.urandom(32), DEVICE)
    with Outbox(qpath, KEY, DEVICE) as box:
        assert [p.punch.seq for p in box.pending()] == [1, 2, 3, 4]
        assert box.set_aside_count() == 0
    assert len(qpath.read_bytes()) == len(before)


@pytest.mark.parametrize(("sql", "match"), [
    ("UPDATE chain SET last_seq = 2", "chain state failed authentication"),
    ("UPDATE chain SET ct = zeroblob(length(ct))", "chain state failed authentication"),
    ("DELETE FROM chain", "chain state is missing"),
])
def test_tampered_chain_state_refuses_to_continue(qpath: Path, sql: str, match: str) -> None:
    with Outbox(qpath, KEY, DEVICE) as box:
        fill(box, 4)
    _tamper(qpath, sql)
    with pytest.raises(QueueIntegrityError, match=match):
        Outbox(qpath, KEY, DEVICE)


def test_queue_of_another_device_is_refused(qpath: Path) -> None:
    Outbox(qpath, KEY, DEVICE).close()
    with pytest.raises(QueueError, match="belongs to device 'clock-0017'"):
        Outbox(qpath, KEY, "clock-0018")


def test_bad_key_length_and_unopenable_path(tmp_path: Path) -> None:
    with pytest.raises(QueueError, match="32 bytes"):
        Outbox(tmp_path / "q.db", b"short", DEVICE)
    (tmp_path / "file").write_text("x")
    with pytest.raises(QueueError, match="cannot open queue"):
        Outbox(tmp_path / "file" / "q.db", KEY, DEVICE)


def test_read_stats_without_key_while_writer_open(qpath: Path) -> None:
    with Outbox(qpath, KEY, DEVICE) as box:
        fill(box, 3)
        box.delete_acked([1])
        stats = read_stats(qpath)
        assert (stats.depth, stats.last_seq, stats.set_aside) == (2, 3, 0)
    with pytest.raises(QueueError, match="no queue database"):
        read_stats(qpath.parent / "nope.db")


def test_read_stats_of_a_queue_still_being_created_is_empty(qpath: Path) -> None:
    # What `status` (or the demo) sees in the instant between an agent creating the file and
    # committing its schema: an empty queue, not an error.
    qpath.parent.mkdir(parents=True, exist_ok=True)
    sqlite3.connect(qpath).close()
    stats = read_stats(qpath)
    assert (stats.depth, stats.last_seq, stats.set_aside) == (0, 0, 0)
    with Outbox(qpath, KEY, DEVICE) as box:
        fill(box, 2)
    assert read_stats(qpath).last_seq == 2
