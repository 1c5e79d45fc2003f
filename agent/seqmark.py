"""The sequence mark: a clock's highest committed (seq, punch hash), kept outside the queue.

The outbox (:mod:`agent.queue`) holds the chain state inside ``queue.db``. If that file, or its
WAL, is lost or damaged (an SD card swap with the keys kept, a zero-length file, a truncated or
garbled WAL), SQLite opens what is left without complaint and the chain would silently restart
below seqs the clock already used: the collector would see reused seqs (conflicts) and forks
(docs/protocol.md §13.11, DESIGN.md §8.5 "Forks"). The mark is the second, independent record
that makes this visible: the queue is compared with it at every open, and a queue *behind* its
mark refuses to record until an operator resumes it (``timeclock-agent resume``), which continues
the chain *after* the mark, never inside it, and records the loss (:data:`LOSS_FILE`).

File format (``seqmark`` in the agent's state directory, 0600, :data:`FILE_BYTES` long, written
in place, never truncated or renamed after it is created): two slots of :data:`SLOT_BYTES`; the
mark for seq ``n`` goes to slot ``n % 2``. A slot is::

    b"TCSM1\\n" | seq (8, big-endian) | nonce (24) | length (2, big-endian) | ct | zeros

``ct`` = XChaCha20-Poly1305-IETF of canonical ``{"hash": <hex>, "seq": n}`` under the queue key,
associated data ``b"timeclock/seqmark/v1\\n" + device + b":" + str(seq)`` (a punch hash commits
to a credential: it is as secret as the punch, like the queue's own chain state). Reading
takes the valid slot with the highest seq; a torn write damages only the slot being written, so
the other slot (the mark before it) still reads.

Invariants:
- :meth:`SeqMark.write` returns only after ``fdatasync``; :meth:`agent.queue.Outbox.record`
  calls it after the queue's COMMIT and before the punch is reported or visible to the
  publisher (both wait for the outbox lock), so every seq that ever left the clock is ≤ the mark,
  and a queue behind the mark has lost committed punches.
- A slot that fails authentication is never used; a file in which no slot authenticates is a
  :class:`~agent.errors.SeqMarkError` (the outbox refuses to record then).
- The mark never goes down: writing a seq below the one read raises.
"""

from __future__ import annotations

import dataclasses
import json
import os
import struct
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from agent.errors import QueueIntegrityError, SeqMarkError
from agent.queue import open_sealed, seal
from wire import ZERO_HASH
from wire.canonical import canonical, loads
from wire.errors import WireError
from wire.fields import HASH_RE, validate_device_id
from wire.keys import write_public_file

MARK_FILE = "seqmark"
LOSS_FILE = "seqloss.json"
MAGIC = b"TCSM1\n"
DOMAIN = b"timeclock/seqmark/v1\n"
SLOT_BYTES = 256
FILE_BYTES = 2 * SLOT_BYTES
_HEAD = struct.Struct(">Q24sH")          # seq, nonce, ct length
_CT_MAX = SLOT_BYTES - len(MAGIC) - _HEAD.size


@dataclass(frozen=True, slots=True)
class Mark:
    """The highest committed seq of this clock and the hash of that signed punch."""

    seq: int
    hash: str


def mark_aad(device: str, seq: int) -> bytes:
    return DOMAIN + device.encode("ascii") + b":" + str(seq).encode("ascii")


def encode_slot(key: bytes, device: str, mark: Mark, nonce: bytes | None = None) -> bytes:
    n, ct = seal(key, mark_aad(device, mark.seq),
                 canonical({"hash": mark.hash, "seq": mark.seq}), nonce)
    if len(ct) > _CT_MAX:
        raise SeqMarkError(f"sequence mark for seq {mark.seq} does not fit a slot")
    body = MAGIC + _HEAD.pack(mark.seq, n, len(ct)) + ct
    return body + b"\0" * (SLOT_BYTES - len(body))


def decode_slot(key: bytes, device: str, slot: bytes) -> Mark | None:
    """The mark in ``slot``, or None when it is empty, torn or fails authentication."""
    if len(slot) != SLOT_BYTES or not slot.startswith(MAGIC):
        return None
    seq, nonce, length = _HEAD.unpack_from(slot, len(MAGIC))
    start = len(MAGIC) + _HEAD.size
    if length > _CT_MAX:
        return None
    try:
        obj = loads(open_sealed(key, mark_aad(device, seq), nonce, slot[start:start + length]))
    except (QueueIntegrityError, WireError):
        return None
    h = obj.get("hash") if isinstance(obj, dict) else None
    if (not isinstance(obj, dict) or set(obj) != {"hash", "seq"} or obj["seq"] != seq
            or not isinstance(h, str) or not HASH_RE.fullmatch(h)):
        return None
    return Mark(seq, h)


class SeqMark:
    """The mark file of one device. Thread-safe; keep one per process (the outbox's)."""

    def __init__(self, path: Path, key: bytes, device: str) -> None:
        self.path = path
        self.device = validate_device_id(device)
        self._key = bytes(key)
        self._lock = threading.Lock()
        self._fd: int | None = None
        self._last: Mark | None = None
        self.writes = 0

    def exists(self) -> bool:
        return self.path.exists()

    def read(self) -> Mark | None:
        """The mark on disk; None if there is no mark file. Raises :class:`SeqMarkError` if the
        file exists but no slot authenticates (damaged, wrong key, another device's file)."""
        try:
            data = self.path.read_bytes()
        except FileNotFoundError:
            return None
        except OSError as e:
            raise SeqMarkError(f"{self.path}: cannot read the sequence mark: {e}") from e
        marks = [m for i in range(2)
                 if (m := decode_slot(self._key, self.device,
                                      data[i * SLOT_BYTES:(i + 1) * SLOT_BYTES])) is not None]
        if not marks:
            raise SeqMarkError(f"{self.path}: the sequence mark is damaged or not this clock's "
                               f"({len(data)} bytes, no slot authenticates under the queue key)")
        best = max(marks, key=lambda m: m.seq)
        with self._lock:
            self._last = best
        return best

    def create(self, mark: Mark = Mark(0, ZERO_HASH)) -> None:  # noqa: B008 -- frozen value
        """Write a new mark file (both slots, fsync'd, directory fsync'd); the file must not
        exist (a mark is never silently replaced)."""
        if self.path.exists():
            raise SeqMarkError(f"{self.path}: a sequence mark exists already; not replaced")
        empty = b"\0" * SLOT_BYTES
        slots = [empty, empty]
        slots[mark.seq % 2] = encode_slot(self._key, self.device, mark)
        try:
            # 0600: the file is secret like the queue (write_public_file's mode parameter).
            write_public_file(self.path, slots[0] + slots[1], mode=0o600)
        except OSError as e:
            raise SeqMarkError(f"{self.path}: cannot create the sequence mark: {e}") from e
        with self._lock:
            self._last = mark

    def write(self, mark: Mark) -> None:
        """Durably record ``mark`` (pwrite of one slot + fdatasync): the mark never goes down."""
        slot = encode_slot(self._key, self.device, mark)
        with self._lock:
            if self._last is not None and mark.seq < self._last.seq:
                raise SeqMarkError(f"{self.path}: sequence mark would go down from seq "
                                   f"{self._last.seq} to {mark.seq}; refused")
            try:
                if self._fd is None:
                    self._fd = os.open(self.path, os.O_WRONLY)   # no O_CREAT: it must exist
                os.pwrite(self._fd, slot, (mark.seq % 2) * SLOT_BYTES)
                os.fdatasync(self._fd)
            except OSError as e:
                raise SeqMarkError(f"{self.path}: cannot write the sequence mark for seq "
                                   f"{mark.seq}: {e}") from e
            self._last = mark
            self.writes += 1

    def close(self) -> None:
        with self._lock:
            if self._fd is not None:
                os.close(self._fd)
                self._fd = None


# --- the loss record ----------------------------------------------------------------------------

@dataclass(frozen=True, slots=True)
class SeqLoss:
    """Committed punches this clock lost, recorded when an operator resumed it.

    ``first..last`` are the seqs that were committed on the clock and are gone from its queue;
    those among them that the collector did not record are lost (those it did are safe).
    The chain continues at ``last + 1`` with ``prev`` = the mark's hash. ``reported_us``: when
    the collector's broker took the clock's signed report of it (wire.seqloss), if it did."""

    first: int
    last: int
    reason: str
    detail: str
    at_us: int
    reported_us: int | None = None

    def to_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {"first": self.first, "last": self.last, "reason": self.reason,
                               "detail": self.detail, "at_us": self.at_us}
        if self.reported_us is not None:
            out["reported_us"] = self.reported_us
        return out

    @classmethod
    def from_dict(cls, d: Any) -> SeqLoss:
        base = {"first", "last", "reason", "detail", "at_us"}
        if not isinstance(d, dict) or set(d) not in (base, base | {"reported_us"}):
            raise SeqMarkError("loss record: unexpected shape")
        vals = [d["first"], d["last"], d["at_us"], d.get("reported_us", 0)]
        if not all(isinstance(v, int) and not isinstance(v, bool) and v >= 0 for v in vals) \
                or not isinstance(d["reason"], str) or not isinstance(d["detail"], str):
            raise SeqMarkError("loss record: wrong field types")
        return cls(d["first"], d["last"], d["reason"], d["detail"], d["at_us"],
                   d.get("reported_us"))


def read_losses(path: Path) -> list[SeqLoss]:
    """The loss records kept in ``path`` (:data:`LOSS_FILE`), oldest first; [] if none."""
    try:
        data = json.loads(path.read_bytes())
    except FileNotFoundError:
        return []
    except (OSError, ValueError) as e:
        raise SeqMarkError(f"{path}: cannot read the loss record: {e}") from e
    if not isinstance(data, dict) or not isinstance(data.get("losses"), list):
        raise SeqMarkError(f"{path}: loss record has an unexpected shape")
    return [SeqLoss.from_dict(x) for x in data["losses"]]


def append_loss(path: Path, loss: SeqLoss) -> None:
    """Add ``loss`` to the durable loss record (atomic replace; it holds no secret)."""
    _write_losses(path, [*read_losses(path), loss])


def mark_reported(path: Path, loss: SeqLoss, at_us: int) -> None:
    """Note in the loss record that ``loss`` was reported to the collector at ``at_us``."""
    losses = [dataclasses.replace(x, reported_us=at_us)
              if (x.first, x.last, x.at_us) == (loss.first, loss.last, loss.at_us) else x
              for x in read_losses(path)]
    _write_losses(path, losses)


def _write_losses(path: Path, losses: list[SeqLoss]) -> None:
    data = json.dumps({"v": 1, "losses": [x.to_dict() for x in losses]}, indent=1,
                      sort_keys=True).encode() + b"\n"
    try:
        write_public_file(path, data, mode=0o600)     # every agent file is 0600
    except OSError as e:
        raise SeqMarkError(f"{path}: cannot write the loss record: {e}") from e
