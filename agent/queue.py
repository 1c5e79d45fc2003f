"""The encrypted outbox (DESIGN.md §5): signed punches wait here until a signed receipt acks them.

Storage: SQLite in WAL mode, ``synchronous=FULL``, ``secure_delete=ON``, and a bounded WAL
(``wal_autocheckpoint`` of :data:`WAL_AUTOCHECKPOINT_PAGES`, ``journal_size_limit`` of
:data:`JOURNAL_SIZE_LIMIT_BYTES`): each commit appends ~3 pages to the WAL, and SQLite's default
(checkpoint at 1000 pages, never shrink) would let the WAL alone take ~4 MB, refilling a small
disk by itself. Tables:

- ``punches(seq, created_us, nonce, ct)``: ``ct`` = XChaCha20-Poly1305-IETF of the canonical
  signed punch under the queue key, random 24-byte nonce, associated data
  ``b"timeclock/queue/v1\\n" + device + b":" + str(seq)`` (so a row moved to another seq or
  another device's queue fails authentication).
- ``chain(id=1, last_seq, nonce, ct)``: the chain state ``{"hash":…,"seq":…}`` encrypted with
  associated data ``b"timeclock/queue-state/v1\\n" + device + b":" + str(last_seq)``: a punch
  hash commits to a credential, so it is kept as secret as the punch itself.
- ``meta``: schema version, device id, and a key check (an encrypted constant) that tells a
  wrong queue key apart from a damaged row before anything is read or changed.
- ``set_aside``: rows that failed authentication, kept (still encrypted) with the reason.

Invariants: only seq and timing metadata are stored in clear; no credential or punch JSON ever
reaches the file in clear. :meth:`Outbox.record` reads the chain state, builds the punch, inserts
it and advances the state in ONE transaction and returns only after COMMIT (fsync'd), so seq
never repeats or skips, even across a crash. :meth:`Outbox.delete_acked` is the only way a row
leaves ``punches`` other than being set aside as unauthentic; a set-aside row is never returned.

The sequence mark (:mod:`agent.seqmark`, given as ``mark=``) is a second record of the chain head
outside this file, written after each COMMIT and before the punch is reported or readable by
the publisher. At open the queue is compared with it: a queue behind its mark (file deleted or
zero-length, WAL truncated, deleted or garbled), a mark that is lost while the queue was used
with one, a mark that disagrees with the queue, or (``seeded=True``: the state directory was
seeded with a mark at provisioning) neither queue nor mark, the whole state lost, makes
:meth:`Outbox.sequence` read
``refusing``, and :meth:`Outbox.record` raises :class:`SequenceRefusedError` (no seq used) until
:meth:`Outbox.resume` continues the chain after the highest seq either record knows. So a seq
is never used twice, even when SQLite silently drops committed transactions.

A full disk (``SQLITE_FULL``) is a state, not a crash: the failed write is rolled back and raised
as :class:`QueueFullError`, the outbox reads ``full`` in :meth:`Outbox.storage` until a later
commit succeeds, and :meth:`Outbox.probe_storage` (the service calls it every tick) truncates
the WAL and tries a one-row write so that a freed disk is noticed without a tap.
"""

from __future__ import annotations

import errno
import logging
import os
import sqlite3
import threading
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from nacl import exceptions as nacl_exceptions
from nacl.bindings import (
    crypto_aead_xchacha20poly1305_ietf_decrypt,
    crypto_aead_xchacha20poly1305_ietf_encrypt,
)

from agent.errors import (
    QueueError,
    QueueFullError,
    QueueIntegrityError,
    SeqMarkError,
    SequenceRefusedError,
)
from wire import ZERO_HASH
from wire.canonical import canonical, loads
from wire.clock import now_us as wall_us
from wire.errors import WireError
from wire.fields import HASH_RE, validate_device_id
from wire.punch import SignedPunch

if TYPE_CHECKING:
    from agent.seqmark import SeqLoss, SeqMark

log = logging.getLogger(__name__)

ROW_DOMAIN = b"timeclock/queue/v1\n"
STATE_DOMAIN = b"timeclock/queue-state/v1\n"
KEYCHECK_DOMAIN = b"timeclock/queue-keycheck/v1\n"
NONCE_BYTES = 24
KEY_BYTES = 32
SCHEMA_VERSION = 1
_KEYCHECK_PLAINTEXT = b"timeclock queue key check v1"
# WAL bounds (see the module docstring): ~256 KiB of WAL between checkpoints, and the WAL file
# is cut back to 256 KiB when it restarts, so a 2 MiB filesystem keeps room for the punches.
WAL_AUTOCHECKPOINT_PAGES = 64
JOURNAL_SIZE_LIMIT_BYTES = 256 * 1024
# Free space below this reads "low"; a full queue is declared writable again only once at
# least this much is free and a probe write commits (hysteresis: no flapping at 0 bytes).
MIN_FREE_BYTES = 64 * 1024
_SQLITE_FULL = 13
_CHECKPOINT_BUSY_MS = 100          # a TRUNCATE checkpoint waits this long for a reader at most
_BUSY_MS = 30_000

_SCHEMA = """
CREATE TABLE IF NOT EXISTS meta (k TEXT PRIMARY KEY, v BLOB NOT NULL);
CREATE TABLE IF NOT EXISTS punches (
    seq INTEGER PRIMARY KEY,
    created_us INTEGER NOT NULL,
    nonce BLOB NOT NULL,
    ct BLOB NOT NULL
);
CREATE TABLE IF NOT EXISTS chain (
    id INTEGER PRIMARY KEY CHECK (id = 1),
    last_seq INTEGER NOT NULL,
    nonce BLOB NOT NULL,
    ct BLOB NOT NULL
);
CREATE TABLE IF NOT EXISTS set_aside (
    seq INTEGER NOT NULL,
    created_us INTEGER NOT NULL,
    nonce BLOB NOT NULL,
    ct BLOB NOT NULL,
    reason TEXT NOT NULL,
    at_us INTEGER NOT NULL
);
"""



# --- the row cipher (pure functions; the test vector goes through these) ---------------------

def row_aad(device: str, seq: int) -> bytes:
    return ROW_DOMAIN + device.encode("ascii") + b":" + str(seq).encode("ascii")


def state_aad(device: str, last_seq: int) -> bytes:
    return STATE_DOMAIN + device.encode("ascii") + b":" + str(last_seq).encode("ascii")


def seal(key: bytes, aad: bytes, plaintext: bytes,
         nonce: bytes | None = None) -> tuple[bytes, bytes]:
    """Encrypt with XChaCha20-Poly1305-IETF; return ``(nonce, ciphertext)``. Nonce is random
    unless given (tests reproduce the vector with a fixed one)."""
    if len(key) != KEY_BYTES:
        raise QueueError(f"queue key must be {KEY_BYTES} bytes")
    n = os.urandom(NONCE_BYTES) if nonce is None else nonce
    if len(n) != NONCE_BYTES:
        raise QueueError(f"nonce must be {NONCE_BYTES} bytes")
    return n, bytes(crypto_aead_xchacha20poly1305_ietf_encrypt(plaintext, aad, n, key))


def open_sealed(key: bytes, aad: bytes, nonce: bytes, ciphertext: bytes) -> bytes:
    """Decrypt and authenticate; raise :class:`QueueIntegrityError` if anything was altered."""
    try:
        return bytes(crypto_aead_xchacha20poly1305_ietf_decrypt(ciphertext, aad, nonce, key))
    except (nacl_exceptions.CryptoError, nacl_exceptions.ValueError, TypeError) as e:
        raise QueueIntegrityError("ciphertext failed authentication") from e


def encrypt_row(key: bytes, device: str, seq: int, plaintext: bytes,
                nonce: bytes | None = None) -> tuple[bytes, bytes]:
    return seal(key, row_aad(device, seq), plaintext, nonce)


def decrypt_row(key: bytes, device: str, seq: int, nonce: bytes, ciphertext: bytes) -> bytes:
    return open_sealed(key, row_aad(device, seq), nonce, ciphertext)


# --- statistics readable without the key ------------------------------------------------------

@dataclass(frozen=True, slots=True)
class QueueStats:
    depth: int
    oldest_created_us: int | None
    last_seq: int
    set_aside: int

    def to_dict(self) -> dict[str, Any]:
        return {"depth": self.depth, "oldest_created_us": self.oldest_created_us,
                "last_seq": self.last_seq, "set_aside": self.set_aside}


def _stats(conn: sqlite3.Connection) -> QueueStats:
    depth, oldest = conn.execute("SELECT count(*), min(created_us) FROM punches").fetchone()
    row = conn.execute("SELECT last_seq FROM chain WHERE id = 1").fetchone()
    aside = conn.execute("SELECT count(*) FROM set_aside").fetchone()[0]
    return QueueStats(int(depth), None if oldest is None else int(oldest),
                      0 if row is None else int(row[0]), int(aside))


def read_stats(path: Path) -> QueueStats:
    """Queue depth/age/last seq from the clear metadata, read-only and without the key
    (``timeclock-agent status`` uses this next to a running agent). A file whose schema is not
    there yet (an agent starting: the schema is created in one transaction) is an empty queue."""
    if not path.exists():
        raise QueueError(f"{path}: no queue database")
    try:
        conn = sqlite3.connect(f"{path.resolve().as_uri()}?mode=ro", uri=True, timeout=5.0)
        try:
            if conn.execute("SELECT count(*) FROM sqlite_master WHERE type = 'table' "
                            "AND name = 'punches'").fetchone()[0] == 0:
                return QueueStats(0, None, 0, 0)
            return _stats(conn)
        finally:
            conn.close()
    except sqlite3.Error as e:
        raise QueueError(f"{path}: cannot read queue: {e}") from e


# --- storage ----------------------------------------------------------------------------------

@dataclass(frozen=True, slots=True)
class StorageState:
    """Can the outbox commit? ``ok``, ``low`` (under :data:`MIN_FREE_BYTES` free, still
    committing) or ``full`` (the last write failed for lack of space and none succeeded since)."""

    state: str
    free_bytes: int | None          # free space for us on the queue's filesystem (statvfs)
    since_us: int | None            # when this state began
    detail: str


def free_bytes(directory: Path) -> int | None:
    """Bytes an unprivileged writer may still use on ``directory``'s filesystem, or None."""
    try:
        st = os.statvfs(directory)
    except OSError:
        return None
    return st.f_bavail * st.f_frsize


def is_full_error(e: BaseException) -> bool:
    """SQLITE_FULL ("database or disk is full") or ENOSPC, whatever layer reported it."""
    if isinstance(e, OSError):
        return e.errno in (errno.ENOSPC, errno.EDQUOT)
    if isinstance(e, sqlite3.Error):
        code = getattr(e, "sqlite_errorcode", None)
        return (isinstance(code, int) and code & 0xFF == _SQLITE_FULL) \
            or "database or disk is full" in str(e)
    return False


# --- the sequence state ------------------------------------------------------------------------

@dataclass(frozen=True, slots=True)
class SequenceState:
    """Queue against sequence mark. ``state``: ``ok``, ``refusing`` (taps are refused until an
    operator resumes the clock) or ``unmarked`` (no mark configured). ``reason`` (refusing):
    ``queue-behind-mark``, ``mark-lost``, ``mark-damaged``, ``mark-disagrees``,
    ``mark-write-failed``, ``state-lost``. ``lost`` is the seq range committed on this clock
    and gone from the queue (``queue-behind-mark``)."""

    state: str
    reason: str | None
    queue_seq: int
    mark_seq: int | None
    lost: tuple[int, int] | None
    since_us: int
    detail: str

    def to_dict(self) -> dict[str, Any]:
        return {"state": self.state, "reason": self.reason, "queue_seq": self.queue_seq,
                "mark_seq": self.mark_seq, "lost": None if self.lost is None else list(self.lost),
                "since_us": self.since_us, "detail": self.detail}


# --- the outbox --------------------------------------------------------------------------------

class Outbox:
    """The agent's durable, encrypted queue of signed punches. Thread-safe (one lock)."""

    def __init__(self, path: Path, key: bytes, device: str, *,
                 now: Callable[[], int] = wall_us, mark: SeqMark | None = None,
                 seeded: bool = False) -> None:
        if len(key) != KEY_BYTES:
            raise QueueError(f"queue key must be {KEY_BYTES} bytes, got {len(key)}")
        self.path = path
        self.device = validate_device_id(device)
        self._key = bytes(key)
        self._now = now
        self._lock = threading.RLock()
        self._set_aside_reported = 0
        self._full_since_us: int | None = None
        self._full_detail = ""
        self._state_seen = ("ok", now())       # the last state storage() reported, since when
        self.full_errors = 0                   # writes (probes too) that failed for lack of space
        self.mark = mark
        self._sequence = SequenceState("unmarked", None, 0, None, None, now(), "no sequence mark")
        # Neither queue nor mark where provisioning seeded a mark: the whole state was lost.
        state_lost = (seeded and mark is not None and not path.exists()
                      and not mark.path.exists())
        self._conn = self._connect()
        try:
            self._init_or_check()
            if state_lost:
                self._set_meta("state-lost")    # durable: the new queue.db does not hide it
            if mark is not None:
                self._sequence = self._reconcile(mark)
        except BaseException:
            self._conn.close()
            raise

    # connection and schema

    def _connect(self) -> sqlite3.Connection:
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
            if not self.path.exists():
                # Create 0600 before SQLite does; SQLite gives -wal/-shm the same mode.
                os.close(os.open(self.path, os.O_WRONLY | os.O_CREAT, 0o600))
            conn = sqlite3.connect(self.path, isolation_level=None, timeout=30.0,
                                   check_same_thread=False)
            conn.execute("PRAGMA journal_mode=WAL").fetchone()
            conn.execute("PRAGMA synchronous=FULL")
            conn.execute("PRAGMA secure_delete=ON")
            conn.execute("PRAGMA foreign_keys=ON")
            conn.execute(f"PRAGMA wal_autocheckpoint={WAL_AUTOCHECKPOINT_PAGES}").fetchone()
            conn.execute(f"PRAGMA journal_size_limit={JOURNAL_SIZE_LIMIT_BYTES}").fetchone()
            mode = conn.execute("PRAGMA journal_mode").fetchone()[0]
            if str(mode).lower() != "wal":
                conn.close()
                raise QueueError(f"{self.path}: cannot switch the queue to WAL mode ({mode})")
            return conn
        except (sqlite3.Error, OSError) as e:
            raise QueueError(f"{self.path}: cannot open queue: {e}") from e

    @contextmanager
    def _tx(self) -> Iterator[sqlite3.Connection]:
        """One write transaction; COMMIT returns after the WAL is fsync'd (synchronous=FULL)."""
        with self._lock:
            try:
                self._conn.execute("BEGIN IMMEDIATE")
            except sqlite3.Error as e:
                raise QueueError(f"{self.path}: cannot start a transaction: {e}") from e
            try:
                yield self._conn
            except sqlite3.Error as e:
                self._rollback()
                raise self._error(e, "write failed") from e
            except BaseException:
                self._rollback()
                raise
            try:
                self._conn.execute("COMMIT")
            except sqlite3.Error as e:
                self._rollback()
                raise self._error(e, "commit failed") from e
            self._writable()

    def _rollback(self) -> None:
        # SQLite may already have rolled back (it does on SQLITE_FULL): no second ROLLBACK.
        if not self._conn.in_transaction:
            return
        try:
            self._conn.execute("ROLLBACK")
        except sqlite3.Error:
            log.exception("queue rollback failed")

    def _error(self, e: sqlite3.Error, what: str) -> QueueError:
        """The QueueError for ``e``; a full disk is a :class:`QueueFullError` and a state."""
        if not is_full_error(e):
            return QueueError(f"{self.path}: {what}: {e}")
        self.full_errors += 1
        if self._full_since_us is None:
            self._full_since_us = self._now()
            log.error("queue storage FULL: %s on %s (%s free); punches cannot be committed "
                      "until space is freed", e, self.path.parent,
                      _size(free_bytes(self.path.parent)))
        self._full_detail = f"{what}: {e}"
        # The WAL may hold pages a checkpoint can move into free pages of the database: cut
        # it back now so that the next tap has a chance (a no-op if the disk is truly full).
        self._checkpoint_truncate()
        return QueueFullError(f"{self.path}: storage full, {what}: {e}")

    def _writable(self) -> None:
        if self._full_since_us is not None:
            log.info("queue storage writable again after %.0f s full",
                        (self._now() - self._full_since_us) / 1e6)
            self._full_since_us = None
            self._full_detail = ""

    def _checkpoint_truncate(self) -> bool:
        """``wal_checkpoint(TRUNCATE)`` waiting at most briefly for readers; True if complete."""
        with self._lock:
            if self._conn.in_transaction:
                return False
            try:
                self._conn.execute(f"PRAGMA busy_timeout={_CHECKPOINT_BUSY_MS}")
                try:
                    busy = self._conn.execute("PRAGMA wal_checkpoint(TRUNCATE)").fetchone()[0]
                finally:
                    self._conn.execute(f"PRAGMA busy_timeout={_BUSY_MS}")
            except sqlite3.Error as e:
                log.debug("queue checkpoint failed: %s", e)
                return False
            return int(busy) == 0

    def _init_or_check(self) -> None:
        try:
            with self._tx() as c:
                for stmt in filter(None, (s.strip() for s in _SCHEMA.split(";"))):
                    c.execute(stmt)
                meta = dict(c.execute("SELECT k, v FROM meta").fetchall())
                if not meta:
                    nonce, ct = seal(self._key, KEYCHECK_DOMAIN + self.device.encode(),
                                     _KEYCHECK_PLAINTEXT)
                    c.executemany("INSERT INTO meta (k, v) VALUES (?, ?)", [
                        ("schema", str(SCHEMA_VERSION).encode()),
                        ("device", self.device.encode()),
                        ("keycheck", nonce + ct)])
                    self._write_state(c, 0, ZERO_HASH)
                    return
        except sqlite3.Error as e:
            raise QueueError(f"{self.path}: cannot initialise queue: {e}") from e
        self._check_meta(meta)

    def _check_meta(self, meta: dict[str, Any]) -> None:
        if bytes(meta.get("schema", b"")) != str(SCHEMA_VERSION).encode():
            raise QueueError(f"{self.path}: unsupported queue schema {meta.get('schema')!r}")
        stored = bytes(meta.get("device", b"")).decode("ascii", "replace")
        if stored != self.device:
            raise QueueError(f"{self.path}: queue belongs to device {stored!r}, "
                             f"not {self.device!r}; refusing to mix devices")
        kc = bytes(meta.get("keycheck", b""))
        try:
            plain = open_sealed(self._key, KEYCHECK_DOMAIN + self.device.encode(),
                                kc[:NONCE_BYTES], kc[NONCE_BYTES:])
        except QueueIntegrityError as e:
            raise QueueIntegrityError(
                f"{self.path}: the queue key does not open this queue (wrong or replaced key "
                "file/credential); nothing was read or deleted") from e
        if plain != _KEYCHECK_PLAINTEXT:
            raise QueueIntegrityError(f"{self.path}: queue key check has unexpected content")
        self._read_state(self._conn)  # a damaged chain state is reported at open

    # chain state

    def _write_state(self, c: sqlite3.Connection, seq: int, last_hash: str) -> None:
        nonce, ct = seal(self._key, state_aad(self.device, seq),
                         canonical({"hash": last_hash, "seq": seq}))
        c.execute("INSERT OR REPLACE INTO chain (id, last_seq, nonce, ct) VALUES (1, ?, ?, ?)",
                  (seq, nonce, ct))

    def _read_state(self, c: sqlite3.Connection) -> tuple[int, str]:
        row = c.execute("SELECT last_seq, nonce, ct FROM chain WHERE id = 1").fetchone()
        if row is None:
            raise QueueIntegrityError(f"{self.path}: chain state is missing; refusing to "
                                      "restart the seq chain (that would reuse seqs)")
        seq, nonce, ct = int(row[0]), bytes(row[1]), bytes(row[2])
        try:
            state = loads(open_sealed(self._key, state_aad(self.device, seq), nonce, ct))
        except (QueueIntegrityError, WireError) as e:
            raise QueueIntegrityError(f"{self.path}: chain state failed authentication; "
                                      "refusing to continue the seq chain") from e
        h = state.get("hash") if isinstance(state, dict) else None
        if (not isinstance(state, dict) or state.get("seq") != seq or not isinstance(h, str)
                or not HASH_RE.fullmatch(h)):
            raise QueueIntegrityError(f"{self.path}: chain state is malformed")
        highest = c.execute(
            "SELECT max(s) FROM (SELECT max(seq) AS s FROM punches "
            "UNION ALL SELECT max(seq) FROM set_aside)").fetchone()[0]
        if highest is not None and int(highest) > seq:
            raise QueueIntegrityError(f"{self.path}: queue holds seq {highest} beyond the chain "
                                      f"state {seq} (rolled-back state?); refusing to reuse seqs")
        return seq, h

    # sequence mark

    def _marked(self) -> bool:
        row = self._conn.execute("SELECT v FROM meta WHERE k = 'seqmark'").fetchone()
        return row is not None

    def _set_marked(self) -> None:
        self._set_meta("seqmark")

    def _set_meta(self, k: str) -> None:
        with self._tx() as c:
            c.execute("INSERT OR REPLACE INTO meta (k, v) VALUES (?, ?)", (k, b"1"))

    def _state_lost(self) -> bool:
        return self._conn.execute("SELECT v FROM meta WHERE k = 'state-lost'").fetchone() \
            is not None

    def _refusing(self, reason: str, q_seq: int, m_seq: int | None, detail: str,
                  lost: tuple[int, int] | None = None) -> SequenceState:
        log.error("sequence REFUSING (%s): %s; taps are refused until an operator resumes this "
                  "clock (timeclock-agent resume, docs/operations.md)", reason, detail)
        return SequenceState("refusing", reason, q_seq, m_seq, lost, self._now(), detail)

    def _reconcile(self, mark: SeqMark) -> SequenceState:  # noqa: PLR0911 -- one per state
        """Compare the queue's chain state with the mark (see the module docstring)."""
        from agent.seqmark import Mark  # noqa: PLC0415 -- seqmark imports this module

        q_seq, q_hash = self._read_state(self._conn)
        if self._state_lost():
            return self._refusing(
                "state-lost", q_seq, None,
                f"{self.path.parent} held neither the queue nor the sequence mark that "
                f"provisioning seeded (the whole state directory was lost, keys kept): the "
                f"clock's last seq is known only to the collector")
        marked = self._marked()
        try:
            m = mark.read()
        except SeqMarkError as e:
            return self._refusing("mark-damaged", q_seq, None, f"{e}; the queue is at seq {q_seq}")
        if m is None:
            if marked:
                return self._refusing(
                    "mark-lost", q_seq, None,
                    f"{mark.path} is missing but this queue was kept with one (queue at seq "
                    f"{q_seq}); the queue may be an old copy")
            mark.create(Mark(q_seq, q_hash))
            self._set_marked()
            if q_seq:
                log.info("sequence mark created at seq %d from the queue", q_seq)
            return SequenceState("ok", None, q_seq, q_seq, None, self._now(), "mark created")
        if not marked:
            self._set_marked()
        if q_seq > m.seq:
            # A crash between the queue's COMMIT and the mark's write: the queue is ahead.
            mark.write(Mark(q_seq, q_hash))
        elif q_seq == m.seq and q_hash != m.hash:
            return self._refusing("mark-disagrees", q_seq, m.seq,
                                  f"queue and mark both end at seq {q_seq} with different punch "
                                  f"hashes (a queue from another copy?)")
        elif q_seq < m.seq:
            return self._refusing(
                "queue-behind-mark", q_seq, m.seq,
                f"{self.path} ends at seq {q_seq} but the clock committed up to seq {m.seq} "
                f"(queue file or WAL lost or damaged): seqs {q_seq + 1}..{m.seq} are gone from "
                f"the queue", lost=(q_seq + 1, m.seq))
        return SequenceState("ok", None, max(q_seq, m.seq), max(q_seq, m.seq), None,
                             self._now(), "queue and mark agree")

    def sequence(self) -> SequenceState:
        """Queue against mark, as found at open (or after :meth:`resume`)."""
        return self._sequence

    def resume(self, *, reason: str, after_seq: int | None = None,
               after_hash: str | None = None) -> SeqLoss:
        """Continue a refusing chain after the highest seq known to the queue, the mark or the
        operator (``after_seq``: e.g. the collector's last recorded seq of this clock); the next
        punch gets that seq + 1, with ``prev`` the hash of the punch at that seq when it is
        known (``after_hash``: the hash of the punch at ``after_seq``, from the collector's
        signed answer). A lost state (``state-lost``) needs ``after_seq``: only the collector
        knows the clock's last seq then. Records and returns the loss (an empty range when no
        seq was lost)."""
        from agent.seqmark import LOSS_FILE, Mark, SeqLoss, append_loss  # noqa: PLC0415

        if self.mark is None:
            raise QueueError("this outbox has no sequence mark: nothing to resume")
        with self._lock:
            st = self._sequence
            if st.state != "refusing":
                raise QueueError(f"the sequence is {st.state}, not refusing: nothing to resume")
            if st.reason == "state-lost" and after_seq is None:
                raise QueueError("the whole state was lost: only the collector knows this "
                                 "clock's last seq; resume --from-collector, or --after-seq N "
                                 "with the collector's last recorded seq of this clock")
            q_seq, q_hash = self._read_state(self._conn)
            try:
                m = self.mark.read()
            except SeqMarkError:
                m = None                    # a damaged mark is moved aside below
            base = Mark(q_seq, q_hash)
            if m is not None and m.seq >= base.seq:
                base = m
            if after_seq is not None and after_seq > base.seq:
                # Beyond both: after a gap prev is unknown, unless the collector signed it.
                base = Mark(after_seq, after_hash or ZERO_HASH)
            with self._tx() as c:
                self._write_state(c, base.seq, base.hash)
                c.execute("INSERT OR REPLACE INTO meta (k, v) VALUES ('seqmark', ?)", (b"1",))
                c.execute("DELETE FROM meta WHERE k = 'state-lost'")
            if m is None:
                if self.mark.path.exists():
                    aside = self.mark.path.with_name(f"{self.mark.path.name}.damaged."
                                                     f"{self._now()}")
                    os.replace(self.mark.path, aside)
                    log.warning("damaged sequence mark moved aside to %s", aside)
                self.mark.create(base)
            else:
                self.mark.write(base)
            loss = SeqLoss(first=q_seq + 1, last=base.seq, reason=reason[:200],
                           detail=f"{st.reason}: {st.detail}"[:500], at_us=self._now())
            append_loss(self.mark.path.with_name(LOSS_FILE), loss)
            self._sequence = SequenceState("ok", None, base.seq, base.seq, None, self._now(),
                                           f"resumed after seq {base.seq}")
        lost = (f"seqs {loss.first}..{loss.last} lost from the queue"
                if loss.last >= loss.first else "no seq lost")
        log.error("sequence RESUMED by operator (%s): %s; the next punch is seq %d", reason,
                  lost, base.seq + 1)
        return loss

    # public API

    def record(self, build: Callable[[int, str], SignedPunch]) -> SignedPunch:
        """Commit the next punch: ``build(seq, prev)`` makes it inside ONE transaction with the
        chain-state read and update; returns only after COMMIT and the sequence mark's write.
        ``build`` errors roll back. A refusing sequence raises :class:`SequenceRefusedError`
        before anything is built."""
        with self._lock:
            if self._sequence.state == "refusing":
                st = self._sequence
                raise SequenceRefusedError(f"sequence refusing ({st.reason}): {st.detail}")
            with self._tx() as c:
                last_seq, last_hash = self._read_state(c)
                seq = last_seq + 1
                signed = build(seq, last_hash)
                p = signed.punch
                if p.seq != seq or p.prev != last_hash or p.device != self.device:
                    raise QueueError(f"built punch {p.device}#{p.seq} does not continue the "
                                     f"chain of {self.device} at seq {seq}")
                nonce, ct = encrypt_row(self._key, self.device, seq, signed.to_bytes())
                try:
                    c.execute("INSERT INTO punches (seq, created_us, nonce, ct) "
                              "VALUES (?, ?, ?, ?)", (seq, self._now(), nonce, ct))
                    self._write_state(c, seq, signed.hash())
                except sqlite3.Error as e:
                    self._rollback()
                    raise self._error(e, f"cannot store punch seq {seq}") from e
            if self.mark is not None:
                self._advance_mark(seq, signed.hash())
        return signed

    def _advance_mark(self, seq: int, punch_hash: str) -> None:
        """After the COMMIT, still under the lock (the publisher cannot read the row yet)."""
        from agent.seqmark import Mark  # noqa: PLC0415 -- seqmark imports this module

        assert self.mark is not None  # noqa: S101 -- checked by the caller
        try:
            self.mark.write(Mark(seq, punch_hash))
        except SeqMarkError as e:
            # The punch is committed (it will be published); later taps are refused, since a
            # queue lost now could reuse seqs the mark does not cover.
            self._sequence = self._refusing("mark-write-failed", seq, seq - 1, str(e))

    def pending(self, *, limit: int = 500, max_bytes: int = 250_000,
                after_seq: int = 0) -> list[SignedPunch]:
        """Unacked punches with seq > ``after_seq`` in seq order, at most ``limit`` of them and
        about ``max_bytes`` of signed-punch JSON (at least one if any is pending). A row that
        fails authentication or decoding is set aside and reported, never returned."""
        out: list[SignedPunch] = []
        bad: list[tuple[int, int, bytes, bytes, str]] = []
        size = 0
        with self._lock:
            try:
                rows = self._conn.execute(
                    "SELECT seq, created_us, nonce, ct FROM punches WHERE seq > ? "
                    "ORDER BY seq LIMIT ?", (after_seq, limit)).fetchall()
            except sqlite3.Error as e:
                raise QueueError(f"{self.path}: cannot read queue: {e}") from e
            for seq, created, nonce, ct in rows:
                reason = None
                try:
                    plain = decrypt_row(self._key, self.device, seq, bytes(nonce), bytes(ct))
                    sp = SignedPunch.from_bytes(plain)
                    if sp.punch.seq != seq or sp.punch.device != self.device:
                        reason = "decrypted punch names another device or seq"
                except QueueIntegrityError:
                    reason = "ciphertext failed authentication"
                except WireError as e:
                    reason = f"decrypted row is not a valid signed punch ({e.field or 'shape'})"
                if reason is not None:
                    bad.append((seq, created, bytes(nonce), bytes(ct), reason))
                    continue
                n = len(plain) + 1
                if out and size + n > max_bytes:
                    break
                size += n
                out.append(sp)
            if bad:
                self._set_aside(bad)
        return out

    def _set_aside(self, rows: list[tuple[int, int, bytes, bytes, str]]) -> None:
        at = self._now()
        with self._tx() as c:
            for seq, created, nonce, ct, reason in rows:
                c.execute("INSERT INTO set_aside (seq, created_us, nonce, ct, reason, at_us) "
                          "VALUES (?, ?, ?, ?, ?, ?)", (seq, created, nonce, ct, reason, at))
                c.execute("DELETE FROM punches WHERE seq = ?", (seq,))
        for seq, *_, reason in rows:
            self._set_aside_reported += 1
            log.error("queue row seq=%d set aside: %s (kept encrypted in table set_aside; "
                      "it will not be published)", seq, reason)

    def delete_acked(self, seqs: Iterable[int]) -> int:
        """Delete exactly these seqs (acked by a verified receipt); return how many were here."""
        wanted = sorted({int(s) for s in seqs})
        if not wanted:
            return 0
        deleted = 0
        with self._tx() as c:
            for i in range(0, len(wanted), 500):
                chunk = wanted[i:i + 500]
                marks = ",".join("?" * len(chunk))
                cur = c.execute(f"DELETE FROM punches WHERE seq IN ({marks})",  # noqa: S608 -- only '?' marks are interpolated
                                chunk)
                deleted += cur.rowcount
        return deleted

    def storage(self) -> StorageState:
        """Whether a punch can be committed now (no I/O besides one statvfs)."""
        free = free_bytes(self.path.parent)
        if self._full_since_us is not None:
            state, since = "full", self._full_since_us
            detail = (f"{self.path.parent}: {_size(free)} free; {self._full_detail}; taps are "
                      "refused until space is freed")
        else:
            state = "low" if free is not None and free < MIN_FREE_BYTES else "ok"
            since = self._state_seen[1] if self._state_seen[0] == state else self._now()
            detail = f"{self.path.parent}: {_size(free)} free"
        self._state_seen = (state, since)
        return StorageState(state, free, since, detail)

    def probe_storage(self) -> StorageState:
        """While full: truncate the WAL and, once :data:`MIN_FREE_BYTES` are free, commit a
        one-row write; success clears ``full``. Otherwise only :meth:`storage`."""
        if self._full_since_us is not None:
            self._checkpoint_truncate()
            free = free_bytes(self.path.parent)
            if free is None or free >= MIN_FREE_BYTES:
                try:
                    with self._tx() as c:
                        c.execute("INSERT OR REPLACE INTO meta (k, v) VALUES ('probe', ?)",
                                  (str(self._now()).encode(),))
                except QueueError as e:
                    log.debug("queue storage probe failed: %s", e)
        return self.storage()

    def wal_bytes(self) -> int:
        """Size of the ``-wal`` file (0 if there is none)."""
        try:
            return self.path.with_name(self.path.name + "-wal").stat().st_size
        except FileNotFoundError:
            return 0

    def stats(self) -> QueueStats:
        with self._lock:
            try:
                return _stats(self._conn)
            except sqlite3.Error as e:
                raise QueueError(f"{self.path}: cannot read queue: {e}") from e

    def depth(self) -> int:
        return self.stats().depth

    def oldest_created_us(self) -> int | None:
        return self.stats().oldest_created_us

    def last_seq(self) -> int:
        return self.stats().last_seq

    def set_aside_count(self) -> int:
        return self.stats().set_aside

    @property
    def set_aside_reported(self) -> int:
        """Rows this process has set aside (a counter for logs and metrics)."""
        return self._set_aside_reported

    def close(self) -> None:
        with self._lock:
            if self.mark is not None:
                self.mark.close()
            try:
                self._conn.close()
            except sqlite3.Error as e:
                raise QueueError(f"{self.path}: close failed: {e}") from e

    def __enter__(self) -> Outbox:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def _size(n: int | None) -> str:
    if n is None:
        return "unknown space"
    if n < 10 * 1024:
        return f"{n} bytes"
    if n < 10 * 1024 * 1024:
        return f"{n // 1024} KiB"
    return f"{n // (1024 * 1024)} MiB"
