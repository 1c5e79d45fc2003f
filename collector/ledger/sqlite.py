"""The SQLite ledger store (the default for one collector; several processes may share a file).

WAL journal, ``synchronous=FULL`` (a commit that returned survives power loss, so a receipt
sent after ``append`` is honest), ``BEGIN IMMEDIATE`` per append: it takes the database's
write lock before reading the chain head, so concurrent appenders from other processes
queue up and the chain stays one chain. Append-only is enforced by the schema's triggers.

A version 1 file (no Merkle tree) is upgraded when it is opened, in one ``BEGIN IMMEDIATE``
transaction: the node table and its triggers are created, the tree is built from the entries
(collector.ledger.tree.build, streaming) and ``meta.schema`` becomes 2; a crash during it
leaves the file at version 1, and a second process opening it meanwhile waits for the lock
and finds version 2.

A write lock held by another process beyond ``busy_timeout``, an I/O error, a full disk or a
file that cannot be opened makes the store unavailable (LedgerUnavailableError), not a failure
of the facts: the caller retries after :meth:`SQLStore.reconnect`, which opens the file anew,
and gives up after its own limit (the collector's ``[ledger] outage_max_s``).
"""

from __future__ import annotations

import logging
import os
import sqlite3
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager, suppress
from pathlib import Path
from typing import Any

from collector import LedgerError, LedgerUnavailableError
from collector.ledger import tree
from collector.ledger.row_check import ENROLMENT_SQL, RowChecker
from collector.ledger.schema_sqlite import READ_INDEXES, SCHEMA, SCHEMA_VERSION, TREE_DDL
from collector.ledger.sqlbase import PunchQuery, PunchRow, SQLStore, guarded_rows

log = logging.getLogger("timeclock.ledger")

BUSY_TIMEOUT_MS = 30_000
_IN_CHUNK = 500   # seqs per IN (...) list; SQLite allows ≥ 999 parameters
# Primary result codes of a database that is away, not of a statement that is wrong:
# BUSY, LOCKED, IOERR, FULL, CANTOPEN, PROTOCOL.
_UNAVAILABLE_CODES = {5, 6, 10, 13, 14, 15}


def connect(path: Path, *, readonly: bool = False,
            cache_kib: int | None = None) -> sqlite3.Connection:
    """A connection with the ledger's pragmas; autocommit mode (transactions are explicit).
    ``cache_kib``: its page cache (SQLite's default: 2 MiB), for a reader that streams."""
    try:
        if readonly:
            # as_uri() percent-encodes the path: '?', '#', '%' or a leading '//' in a file
            # name cannot turn into URI syntax.
            conn = sqlite3.connect(f"{Path(path).absolute().as_uri()}?mode=ro", uri=True,
                                   isolation_level=None, check_same_thread=False)
        else:
            _create_private(Path(path))
            conn = sqlite3.connect(path, isolation_level=None, check_same_thread=False)
        conn.execute(f"PRAGMA busy_timeout = {BUSY_TIMEOUT_MS}")
        if cache_kib is not None:
            conn.execute(f"PRAGMA cache_size = -{int(cache_kib)}")
        if not readonly:
            _wal(conn)
        conn.execute("PRAGMA synchronous = FULL")
    except sqlite3.Error as e:
        raise LedgerError(f"cannot open SQLite ledger {path}: {e}") from e
    return conn


def _wal(conn: sqlite3.Connection) -> None:
    """``PRAGMA journal_mode = WAL``, waiting like busy_timeout does. Turning a file to WAL
    takes its exclusive lock and SQLite answers SQLITE_BUSY at once, without calling the
    busy handler, while another connection reads it or turns it to WAL too: two collectors
    started together on a new ledger (the demo's ``--collectors 2``) must both open it."""
    deadline = time.monotonic() + BUSY_TIMEOUT_MS / 1000
    wait = 0.005
    while True:
        try:
            conn.execute("PRAGMA journal_mode = WAL")
            return
        except sqlite3.OperationalError as e:
            if (getattr(e, "sqlite_errorcode", 0) & 0xFF) != sqlite3.SQLITE_BUSY \
                    or time.monotonic() >= deadline:
                raise
        time.sleep(wait)
        wait = min(wait * 2, 0.1)


def _create_private(path: Path) -> None:
    """Make a new ledger file 0600 whatever the umask (issue 12 item 6): SQLite gives its
    ``-wal``, ``-shm`` and ``-journal`` files the database file's mode. An existing file is
    left as it is; any other failure is sqlite3.connect's to report."""
    if str(path) == ":memory:" or path.exists():
        return
    with suppress(OSError):        # FileExistsError included: another opener was first
        os.close(os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600))


class SQLiteStore(SQLStore):
    """A ledger in one SQLite file; the schema is created or checked on open."""

    ph = "?"
    db_errors = (sqlite3.Error,)

    def __init__(self, path: str | Path, *, cache_kib: int | None = None) -> None:
        """``cache_kib``: the page cache of each of its connections (SQLite's default when
        None): an export worker's store streams rows and keeps few pages (readers)."""
        super().__init__()
        self.path = Path(path)
        self.cache_kib = cache_kib
        self._aborted = 0       # write transactions that did not commit (write_stamp)
        self._conn = connect(self.path, cache_kib=cache_kib)
        # WAL: a reader works from its snapshot and never waits for a writer. (A file system
        # that cannot do WAL leaves the rollback journal, where readers wait for commits.)
        try:
            mode = self._conn.execute("PRAGMA journal_mode").fetchone()
            self.reads_wait_for_writers = str(mode[0]).lower() != "wal"
            row = self._schema_version()
            if row is None:
                self._conn.executescript("BEGIN IMMEDIATE;" + SCHEMA + "COMMIT;")
                row = self._schema_version()
            elif int(row[0]) == 1:
                self._upgrade_v1()
                row = self._schema_version()
        except LedgerError:
            self._conn.close()
            raise
        except sqlite3.Error as e:
            self._conn.close()
            raise LedgerError(f"{self.path}: cannot create or read the ledger schema: {e}") from e
        if row is None or int(row[0]) != SCHEMA_VERSION:
            self._conn.close()
            raise LedgerError(f"{self.path}: ledger schema version {row and row[0]} is not "
                              f"{SCHEMA_VERSION}; this collector cannot use it")
        self._ensure_read_indexes()

    def _ensure_read_indexes(self) -> None:
        """Create the :data:`READ_INDEXES` a file made before them lacks (once: seconds for a
        large ledger; a file that has them is only read). They only speed reads up, so a file
        that cannot take them (read-only) is used without them, with a warning."""
        names = [stmt.split()[5] for stmt in READ_INDEXES]
        marks = ", ".join("?" * len(names))
        try:
            have = {str(r[0]) for r in self._conn.execute(
                f"SELECT name FROM sqlite_master WHERE type = 'index' AND name IN ({marks})",  # noqa: S608 - placeholders only
                names)}
            missing = [stmt for stmt, n in zip(READ_INDEXES, names, strict=True) if n not in have]
            if missing:
                self._conn.executescript("BEGIN IMMEDIATE;" + "".join(f"{s};" for s in missing)
                                         + "COMMIT;")
        except sqlite3.Error as e:
            with suppress(sqlite3.Error):
                self._conn.rollback()
            log.warning("%s: the read indexes %s are missing and could not be created (%s): "
                        "the console's and the compliance page's reads are slower", self.path,
                        ", ".join(names), e)

    def _upgrade_v1(self) -> None:
        """Version 1 → 2: the node table, its triggers and the tree of every entry, at once."""
        t0 = time.monotonic()
        cur = self._conn.cursor()
        cur.execute("BEGIN IMMEDIATE")
        try:
            row = self._schema_version()      # another process may have upgraded meanwhile
            if row is not None and int(row[0]) == 1:
                for stmt in TREE_DDL:
                    cur.execute(stmt)
                leaves = tree.build(cur, tree.SQLITE_TREE, source=self.path)
                cur.execute("UPDATE meta SET value = ? WHERE key = 'schema'",
                            (str(SCHEMA_VERSION),))
                log.warning("%s: ledger schema upgraded from version 1 to %d: Merkle tree of "
                            "%d entries built in %.1f s", self.path, SCHEMA_VERSION, leaves,
                            time.monotonic() - t0)
        except BaseException:
            self._conn.rollback()
            raise
        else:
            cur.execute("COMMIT")
        finally:
            cur.close()

    def _unavailable(self, e: Exception) -> bool:
        code = getattr(e, "sqlite_errorcode", None)
        return isinstance(e, sqlite3.OperationalError) and code is not None \
            and code & 0xFF in _UNAVAILABLE_CODES

    def _reopen(self) -> None:
        with suppress(sqlite3.Error):   # closing also rolls back a transaction left open
            self._conn.close()
        try:
            self._conn = connect(self.path, cache_kib=self.cache_kib)
            row = self._schema_version()
        except LedgerError as e:
            raise LedgerUnavailableError(str(e)) from e
        except sqlite3.Error as e:
            if self._unavailable(e):
                raise LedgerUnavailableError(f"{self.path}: {e}") from e
            raise LedgerError(f"{self.path}: {e}") from e
        if row is None or int(row[0]) != SCHEMA_VERSION:
            raise LedgerError(f"{self.path}: ledger schema version {row and row[0]} is not "
                              f"{SCHEMA_VERSION}")

    def _schema_version(self) -> tuple[Any, ...] | None:
        has_meta = self._conn.execute(
            "SELECT 1 FROM sqlite_master WHERE type = 'table' AND name = 'meta'").fetchone()
        if has_meta is None:
            return None
        row: tuple[Any, ...] | None = self._conn.execute(
            "SELECT value FROM meta WHERE key = 'schema'").fetchone()
        return row

    @contextmanager
    def _write(self) -> Iterator[Any]:
        cur = self._conn.cursor()
        committed = False
        try:
            cur.execute("BEGIN IMMEDIATE")
            try:
                yield cur
            except BaseException:
                self._conn.rollback()
                raise
            cur.execute("COMMIT")
            committed = True
        finally:
            if not committed:
                self._aborted += 1      # write_stamp: what this transaction read is void
            cur.close()

    def write_stamp(self, cur: Any) -> object | None:
        """(connection, transactions of it not committed, ``PRAGMA data_version``): the
        pragma changes when another connection commits, and not for this connection's own
        commits; a rollback or failed commit counts in the second; a reconnect changes the
        first (SQLStore.write_stamp)."""
        version = cur.execute("PRAGMA data_version").fetchone()[0]
        return (self._conn, self._aborted, int(version))

    @contextmanager
    def _read(self) -> Iterator[Any]:
        cur = self._conn.cursor()
        try:
            yield cur
        finally:
            cur.close()

    def _existing(self, cur: Any, pairs: set[tuple[str, int]]
                  ) -> dict[tuple[str, int], tuple[str, int]]:
        # One indexed query per device and chunk of seqs, not one per punch: a backlog
        # batch of 2,000 punches from a few clocks costs a handful of statements.
        by_device: dict[str, list[int]] = {}
        for device, seq in pairs:
            by_device.setdefault(device, []).append(seq)
        out: dict[tuple[str, int], tuple[str, int]] = {}
        for device, seqs in by_device.items():
            seqs.sort()
            for i in range(0, len(seqs), _IN_CHUNK):
                chunk = seqs[i:i + _IN_CHUNK]
                marks = ",".join("?" * len(chunk))
                sql = f"SELECT seq, punch_hash, idx FROM punches WHERE device = ? AND seq IN ({marks})"  # noqa: E501, S608 - only ? placeholders are formatted in
                cur.execute(sql, (device, *chunk))
                for seq, h, idx in cur.fetchall():
                    out[(device, int(seq))] = (str(h), int(idx))
        return out

    def punch_chunks(self, queries: Sequence[PunchQuery], *,
                     run_keys: dict[bytes, bytes | None] | None = None
                     ) -> Iterator[Iterator[PunchRow]]:
        # Own read-only connection: a long export never holds this store's lock, and WAL
        # gives it one consistent snapshot while appends go on.
        conn = connect(self.path, readonly=True, cache_kib=self.cache_kib)
        try:
            conn.execute("BEGIN")
            check = RowChecker(
                lambda device: conn.execute(ENROLMENT_SQL, (device,)).fetchone(),
                self.plain_opener(run_keys), self._unmemoised_blind)
            for query in queries:
                text, params = query.sql("?")
                yield guarded_rows(check.rows(conn.execute(text, params)), (sqlite3.Error,))
            conn.execute("COMMIT")
        except sqlite3.Error as e:
            raise LedgerError(f"reading punches failed: {e}") from e
        finally:
            conn.close()

    def close(self) -> None:
        with self._lock:
            self._conn.close()
