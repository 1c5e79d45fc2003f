"""The queue-damage variants of issue 11 finding 11 (and finding 3, with and without the mark),
applied to a stopped
clock's state directory: real files, real SQLite, no mocks.

A "stopped" clock here is one killed with SIGKILL (or, in-process, a copy of its files taken
while the outbox is open): a clean stop checkpoints and removes the WAL, so only a killed agent
leaves committed transactions in ``queue.db-wal`` for the WAL variants to damage.
"""

from __future__ import annotations

import shutil
import sqlite3
import struct
from collections.abc import Callable
from pathlib import Path

QUEUE = "queue.db"
WAL = "queue.db-wal"
SHM = "queue.db-shm"
MARK = "seqmark"
_WAL_HEADER = 32
_FRAME_HEADER = 24


def _wal_frames(wal: Path) -> tuple[int, list[int]]:
    """(page size, offsets of the frames of the WAL's current generation, in order)."""
    data = wal.read_bytes()
    if len(data) < _WAL_HEADER:
        return 0, []
    page = struct.unpack(">I", data[8:12])[0]
    salt = data[16:24]
    out: list[int] = []
    off = _WAL_HEADER
    while off + _FRAME_HEADER + page <= len(data):
        if data[off + 8:off + 16] != salt:
            break
        out.append(off)
        off += _FRAME_HEADER + page
    return page, out


def delete_queue(state: Path) -> None:
    for name in (QUEUE, WAL, SHM):
        (state / name).unlink(missing_ok=True)


def zero_length_queue(state: Path) -> None:
    (state / QUEUE).write_bytes(b"")
    (state / SHM).unlink(missing_ok=True)


def truncate_wal(state: Path) -> None:
    """Cut the WAL in the middle of its current generation's frames."""
    _, frames = _wal_frames(state / WAL)
    with open(state / WAL, "r+b") as f:
        f.truncate(frames[len(frames) // 2] if frames else _WAL_HEADER)
    (state / SHM).unlink(missing_ok=True)


def delete_wal(state: Path) -> None:
    (state / WAL).unlink(missing_ok=True)
    (state / SHM).unlink(missing_ok=True)


def garble_wal(state: Path) -> None:
    """Overwrite page bytes of a frame in the middle of the current generation: SQLite's
    checksum chain breaks there and it silently ignores that frame and every later one."""
    page, frames = _wal_frames(state / WAL)
    if not frames:
        return
    off = frames[len(frames) // 2] + _FRAME_HEADER + page // 2
    with open(state / WAL, "r+b") as f:
        f.seek(off)
        f.write(b"\xa5" * 64)
    (state / SHM).unlink(missing_ok=True)


def lose_mark(state: Path) -> None:
    (state / MARK).unlink()


def lose_state(state: Path) -> None:
    """The whole state directory lost, the keys kept (an SD card replaced while the keys sit on
    another partition or in a TPM): neither queue nor mark is left."""
    delete_queue(state)
    lose_mark(state)


VARIANTS: dict[str, Callable[[Path], None]] = {
    "queue-deleted": delete_queue,
    "queue-zero-length": zero_length_queue,
    "wal-truncated": truncate_wal,
    "wal-deleted": delete_wal,
    "wal-garbled": garble_wal,
    "mark-lost": lose_mark,
    "state-lost": lose_state,
}
LOSES_QUEUE_TRANSACTIONS = frozenset(VARIANTS) - {"mark-lost"}


def copy_state(src: Path, dst: Path) -> Path:
    """Copy queue.db, its WAL and the mark (not the -shm) as a kill -9 would leave them."""
    dst.mkdir(parents=True, exist_ok=True)
    for name in (QUEUE, WAL, MARK):
        if (src / name).exists():
            shutil.copyfile(src / name, dst / name)
    return dst


def last_seq_after(state: Path, damage: Callable[[Path], None], scratch: Path) -> int | None:
    """The chain state's seq SQLite would open after ``damage``, found on a scratch copy
    (None: the damaged file does not open as a queue at all)."""
    if scratch.exists():
        shutil.rmtree(scratch)
    copy = copy_state(state, scratch)
    damage(copy)
    try:
        conn = sqlite3.connect(copy / QUEUE)
        try:
            row = conn.execute("SELECT last_seq FROM chain WHERE id = 1").fetchone()
        finally:
            conn.close()
    except sqlite3.OperationalError as e:
        if "no such table" in str(e):
            return 0                    # SQLite opened it as an empty database
        return None
    except sqlite3.DatabaseError:
        return None                     # "file is not a database"
    return 0 if row is None else int(row[0])
