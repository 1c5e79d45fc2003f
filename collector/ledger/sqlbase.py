"""What the SQLite and PostgreSQL stores share: the append algorithm and the SQL reads.

A subclass provides a write transaction that holds the chain-head lock (SQLite: ``BEGIN
IMMEDIATE``; PostgreSQL: ``pg_advisory_xact_lock``), a read cursor, its placeholder style and
how to recognise its database errors. Everything else is here, so both stores record the same
facts as the same bytes.

Invariants of ``append`` (also enforced by the schemas' triggers): one transaction per call;
idx values consecutive from the current size; ``at`` never below the previous entry's ``at``;
(device, seq) deduplicated against the table and within the batch; the Merkle tree's new
nodes (collector.ledger.tree) are inserted in the same transaction, before the entries.
"""

from __future__ import annotations

import hashlib
import logging
import threading
from abc import abstractmethod
from collections.abc import Callable, Iterator, Sequence
from contextlib import AbstractContextManager, contextmanager
from dataclasses import dataclass
from typing import Any, NamedTuple

from collector import (
    AppendOnlyError,
    KeyringError,
    LedgerError,
    LedgerUnavailableError,
    RegistryError,
)
from collector.ledger import body_crypto, key_authority, people_tables, retention_tables, tree
from collector.ledger.base import (
    AppendResult,
    DeviceProgress,
    DeviceRecord,
    EventFact,
    Fact,
    KeyRecord,
    LedgerStore,
    Outcome,
    PunchFact,
    QuarantineRecord,
    RejectionFact,
    SealPlan,
    StoredEntry,
)
from collector.ledger.body_crypto import BodySealer, PunchPlanner
from collector.ledger.indoubt import InDoubt, Settled, merge
from collector.ledger.keyring import Keyring, period_of
from wire import ZERO_HASH, merkle
from wire.bodies import Body, BodyError, DeviceEvent, Retention, parse_body
from wire.canonical import canonical
from wire.errors import ProofError, WireError
from wire.ledger import Entry, SignedCheckpoint, body_hash, entry_leaf_bytes
from wire.punch import SignedPunch

log = logging.getLogger("timeclock.ledger")

PAGE = 1000
_RAW_PAGE = ("SELECT e.idx, e.kind, e.at, e.body, e.prev, e.hash, b.body FROM entries e "
             "LEFT JOIN bodies b ON b.idx = e.idx WHERE e.idx > ? {stop}ORDER BY e.idx LIMIT ?")
# The row, then what collector.ledger.row_check needs to check it against the chain: its
# entry and its body (row_check.EXTRA_COLUMNS). A row whose body retention removed is never
# handed out: nothing could check it, and its data is meant to be gone (the purge of
# ``retention run`` blanks it; verify --full reports one not yet purged).
_PAYROLL = ("SELECT p.device, p.site, p.seq, p.credential, p.action, p.ts, p.clock, p.reader, "
            "p.key_id, e.at, p.idx, e.hash, e.kind, e.body, e.prev, b.body "
            "FROM punches p JOIN entries e ON e.idx = p.idx JOIN bodies b ON b.idx = p.idx"
            "{where} ORDER BY {ts}, p.device, p.seq")
QUARANTINE_SUBJECT = "_quarantine"    # the data keys of quarantined raw bytes (§8.6)
# Kinds appended through their own fact type (PunchFact, RejectionFact), never as EventFact:
# a punch must pass the registry re-check, a rejection keeps its raw bytes in quarantine.
_OWN_FACT_KINDS = frozenset({"punch", "rejection"})


@dataclass(frozen=True, slots=True)
class RawEntry:
    """An entry row exactly as stored, unvalidated (the verifier's view of the database)."""

    idx: Any
    kind: Any
    at: Any
    body_hash: Any
    prev: Any
    hash: Any
    body: bytes | None


class PunchRow(NamedTuple):
    """One recorded punch joined with its entry, for payroll exports (a named tuple, not a
    frozen dataclass: an export builds one per row, and a frozen dataclass's ``__init__``
    alone costs ~5 µs of a 20 µs row budget)."""

    device: str
    site: str
    seq: int
    credential: str
    action: str
    ts: int
    clock: str
    reader: str
    key_id: str
    at: int
    idx: int
    entry_hash: str


@dataclass(frozen=True, slots=True)
class PunchQuery:
    """Filters of a payroll export; ``since``/``until`` bound the device time ``ts``."""

    since: int | None = None
    until: int | None = None
    site: str | None = None
    device: str | None = None
    from_idx: int | None = None     # only punches recorded at or after this entry idx

    def sql(self, ph: str, *, credential: str | None = None, credential_tag: str | None = None,
            seq: int | None = None,
            after: tuple[int, str, int] | None = None, limit: int | None = None
            ) -> tuple[str, list[Any]]:
        """The payroll SELECT with ``ph`` placeholders, and its parameters; ``credential``,
        ``seq``, ``after`` (a (ts, device, seq) cursor, exclusive) and ``limit`` narrow it
        to one API page or one punch."""
        where, params = self.where(ph)
        extra: list[str] = []
        if credential is not None:
            # A keyed ledger's rows hold the credential's blind index (DESIGN.md §8.6), rows
            # from before it the credential: either matches.
            tag = credential_tag
            extra.append(f"p.credential IN ({ph}, {ph})" if tag else f"p.credential = {ph}")
            params.extend((credential, tag) if tag else (credential,))
        if seq is not None:
            extra.append(f"p.seq = {ph}")
            params.append(seq)
        if after is not None:
            extra.append(f"(p.ts, p.device, p.seq) > ({ph}, {ph}, {ph})")
            params.extend(after)
        if extra:
            where = (where + " AND " if where else " WHERE ") + " AND ".join(extra)
        text = _PAYROLL.format(where=where,  # values are parameters, never text
                               ts="p.ts" if self.from_idx is None else "+p.ts")
        if limit is not None:
            text += f" LIMIT {ph}"
            params.append(limit)
        return text, params

    def where(self, ph: str) -> tuple[str, list[Any]]:
        # A punch whose body retention removed has its personal columns blanked (credential
        # '' never matches the credential pattern): it is no longer a punch anyone reads.
        clauses: list[str] = ["p.credential <> ''"]
        params: list[Any] = []
        # With from_idx (the few rows appended since a read) the idx index leads: ``+p.ts``
        # keeps SQLite's planner off the ts index (a no-op in PostgreSQL).
        ts = "p.ts" if self.from_idx is None else "+p.ts"
        for col, op, val in ((ts, ">=", self.since), (ts, "<", self.until),
                             ("p.site", "=", self.site), ("p.device", "=", self.device),
                             ("p.idx", ">=", self.from_idx)):
            if val is not None:
                clauses.append(f"{col} {op} {ph}")
                params.append(val)
        return (" WHERE " + " AND ".join(clauses) if clauses else ""), params


def guarded_rows(rows: Iterator[PunchRow], errors: tuple[type[Exception], ...]
                 ) -> Iterator[PunchRow]:
    """``rows`` with a driver error met while reading them raised as a LedgerError."""
    try:
        yield from rows
    except errors as e:
        raise LedgerError(f"reading punches failed: {e}") from e


def to_bytes(v: Any) -> bytes | None:
    if v is None:
        return None
    return bytes(v)


def checked_body(kind: str, body: dict[str, Any], *, idx: int) -> Body:
    """The body of a ``kind`` entry about to be appended at ``idx``, parsed by the rule the
    auditor applies (wire.bodies), so the store never records a body that verify would
    report; a bad ``device`` body is a RegistryError, any other a LedgerError, with the
    auditor's message."""
    try:
        return parse_body(kind, body, idx=idx)
    except BodyError as e:
        raise (RegistryError if kind == "device" else LedgerError)(str(e)) from e


class Tx:
    """One write transaction of a store (from :meth:`SQLStore.transaction`), holding the
    chain-head lock. :meth:`record` appends a ledger entry inside it with exactly the bytes
    ``append`` would give it; :meth:`execute`/:meth:`rows` run the statements of the
    ledger's table modules (``?`` placeholders) in the same transaction."""

    def __init__(self, cur: Any, now_us: int, sql: Callable[[str], str],
                 planner: Callable[[Any, int], _Append],
                 stamp: Callable[[Any], object] | None = None) -> None:
        self.now_us = now_us
        self.results: list[AppendResult] = []
        self.sealer: BodySealer | None = None    # the store's (personal columns, §8.6)
        self._cur = cur
        self._sql = sql
        self._planner = planner
        self._stamp = stamp

    def stamp(self) -> object | None:
        """The store's :meth:`SQLStore.write_stamp` in this transaction: equal stamps mean
        nothing but this connection's own committed transactions changed the database in
        between; None when the store cannot tell (then nothing may be assumed)."""
        return None if self._stamp is None else self._stamp(self._cur)

    def execute(self, sql: str, params: Sequence[Any] = ()) -> None:
        self._cur.execute(self._sql(sql), tuple(params))

    def rows(self, sql: str, params: Sequence[Any] = ()) -> list[tuple[Any, ...]]:
        self.execute(sql, params)
        return list(self._cur.fetchall())

    def record(self, kind: str, body: dict[str, Any]) -> int:
        """Append ``body`` as a ``kind`` entry now (same transaction); returns its idx."""
        res = self._planner(self._cur, self.now_us).run([EventFact(kind, body)])
        self.results.extend(res)
        return res[0].idx


class SQLStore(LedgerStore):
    """A LedgerStore over a DB-API connection; see the module docstring."""

    ph = "?"
    db_errors: tuple[type[Exception], ...] = ()
    tree_sql: tree.TreeSQL = tree.SQLITE_TREE
    # Whether a read on this connection can wait for another connection's write (a lock, a
    # commit); False lets a caller run short reads inline on an event loop (collector.api.reads).
    reads_wait_for_writers = True
    # DESIGN.md §8.6: seals personal bodies on append and opens them on read
    # (collector.ledger.body_crypto); None: bodies are written clear, and a sealed one is an
    # error naming [ledger] kek. Set by :meth:`use_keyring`.
    sealer: BodySealer | None = None

    def __init__(self) -> None:
        self._lock = threading.RLock()
        # Connection handling (see reconnect): the loss that made this store unavailable,
        # appends whose commit was in flight when it happened, and those found committed.
        self._lost: LedgerUnavailableError | None = None
        self._in_doubt: list[InDoubt] = []
        self._settled = Settled()
        self.last_error: LedgerError | None = None   # a failure that is not an outage
        self.auto_reconnect = True                   # the next call tries once by itself

    # -- hooks ----------------------------------------------------------------------------
    @abstractmethod
    def _write(self) -> AbstractContextManager[Any]:
        """A cursor inside a write transaction that holds the chain-head lock."""

    @abstractmethod
    def _read(self) -> AbstractContextManager[Any]:
        """A cursor for one consistent read."""

    @abstractmethod
    def _existing(self, cur: Any, pairs: set[tuple[str, int]]
                  ) -> dict[tuple[str, int], tuple[str, int]]:
        """{(device, seq): (punch hash, idx)} of the pairs already recorded."""

    def punch_rows(self, query: PunchQuery) -> Iterator[PunchRow]:
        """Stream recorded punches matching ``query`` ordered by (ts, device, seq), each
        checked against the chain (collector.ledger.row_check)."""
        for rows in self.punch_chunks([query]):
            yield from rows

    @abstractmethod
    def punch_chunks(self, queries: Sequence[PunchQuery], *,
                     run_keys: dict[bytes, bytes | None] | None = None
                     ) -> Iterator[Iterator[PunchRow]]:
        """:meth:`punch_rows` of each of ``queries`` in turn (each iterator read to its end
        before the next is taken), from one connection, one snapshot and one row checker
        (an export worker's chunks: collector.records.exports) whose opener keeps its
        data keys in ``run_keys`` (:meth:`plain_opener`)."""

    def _sql(self, s: str) -> str:
        return s if self.ph == "?" else s.replace("?", self.ph)

    def _unavailable(self, e: Exception) -> bool:
        """Is ``e`` the database being away (lost connection, locked, I/O) rather than a
        refusal of this statement? Such a failure is retried after :meth:`reconnect`."""
        return False

    def _reopen(self) -> None:
        """Replace the connection with a new one (raise LedgerUnavailableError if the
        database is still away)."""
        raise LedgerUnavailableError(f"{self!r} cannot reconnect")

    # -- connection handling ----------------------------------------------------------------
    @property
    def unavailable(self) -> LedgerUnavailableError | None:
        """The loss that made the store unavailable, until :meth:`reconnect` succeeds."""
        return self._lost

    def reconnect(self) -> None:
        """Open a new connection after a loss, then settle appends whose commit outcome was
        unknown (see collector.ledger.indoubt). Raises LedgerUnavailableError while the
        database is still away, another LedgerError if it is back but unusable."""
        with self._lock:
            try:
                self._reopen()
                for doubt in self._in_doubt:
                    with self._read() as cur:
                        cur.execute(self._sql("SELECT hash FROM entries WHERE idx = ?"),
                                    (doubt.first_idx,))
                        row = cur.fetchone()
                    committed = row is not None and str(row[0]) == doubt.first_hash
                    log.warning("an append of %d fact(s) was committing when the connection "
                                "dropped: it %s", len(doubt.facts),
                                "had committed (a retry gets its results, no second entry)"
                                if committed else "had not committed (a retry appends it)")
                    if committed:
                        self._settled.add(doubt)
            except self.db_errors as e:
                raise self._fail(e, "reconnecting to the ledger failed") from e
            self._in_doubt.clear()
            self._lost = None

    def _ensure_connected(self) -> None:
        if self._lost is not None:
            if not self.auto_reconnect:
                raise self._lost
            self.reconnect()

    def _fail(self, e: Exception, what: str) -> LedgerError:
        msg = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        if self._unavailable(e):
            self._lost = LedgerUnavailableError(f"{what}: the database is unavailable: {msg}")
            return self._lost
        if "append-only" in msg or "permission denied" in msg:
            # the trigger (SQLite, PostgreSQL) or the app role's missing grant (PostgreSQL)
            return AppendOnlyError(f"{what}: {msg}")
        self.last_error = LedgerError(f"{what}: {msg}")
        return self.last_error

    def _q(self, sql: str, params: Sequence[Any] = ()) -> list[tuple[Any, ...]]:
        with self._lock:
            self._ensure_connected()
            try:
                with self._read() as cur:
                    cur.execute(self._sql(sql), tuple(params))
                    rows: list[tuple[Any, ...]] = cur.fetchall()
                    return rows
            except self.db_errors as e:
                raise self._fail(e, "ledger read failed") from e

    # -- the public transaction and query API (for the ledger's table and query modules) ----
    def query(self, sql: str, params: Sequence[Any] = ()) -> list[tuple[Any, ...]]:
        """Rows of one read; ``sql`` uses ``?`` placeholders on every store.

        For collector.ledger's own query modules (queries, access_tables, corrections_table):
        code outside collector.ledger calls their typed functions, never SQL."""
        return self._q(sql, params)

    @contextmanager
    def transaction(self, now_us: int, *, what: str = "ledger transaction") -> Iterator[Tx]:
        """One write transaction holding the chain-head lock: the statements run through the
        yielded :class:`Tx` and the entries it records commit together, or none of them do
        (an exception inside the block rolls everything back and propagates)."""
        with self._lock:
            self._ensure_connected()
            try:
                with self._write() as cur:
                    tx = Tx(cur, now_us, self._sql, self._planner, self.write_stamp)
                    tx.sealer = self.sealer
                    yield tx
            except self.db_errors as e:
                raise self._fail(e, f"{what} failed") from e

    def create_tables(self, ddl: str) -> None:
        """Run ``ddl`` (``;``-separated ``CREATE … IF NOT EXISTS`` statements) in one write
        transaction. For SQLite; on PostgreSQL the owner role creates tables when migrating."""
        with self._lock:
            self._ensure_connected()
            try:
                with self._write() as cur:
                    for stmt in ddl.split(";"):
                        if stmt.strip():
                            cur.execute(stmt)
            except self.db_errors as e:
                raise self._fail(e, "creating tables failed") from e

    def _planner(self, cur: Any, now_us: int) -> _Append:
        return _Append(cur, now_us, sql=self._sql, existing=self._existing,
                       tree_sql=self.tree_sql, sealer=self.sealer, stamp=self.write_stamp)

    def write_stamp(self, cur: Any) -> object | None:
        """Inside a write transaction on ``cur``: a value that stays equal from one write
        transaction to the next exactly while no other connection committed, no transaction
        of this store's connection was rolled back and the connection was not replaced, so
        a row read in the first still holds in the second (the keyring's memo of live data
        keys: Keyring.data_keys). None here: a store that cannot tell (PostgreSQL) reads
        every time."""
        del cur
        return None

    # -- bodies at rest (DESIGN.md §8.6; collector.ledger.body_crypto) ----------------------
    def use_keyring(self, ring: Keyring) -> None:
        """Seal personal bodies from now on and open sealed ones with ``ring``'s keys."""
        people_tables.ensure_schema(self)     # punches resolve their subject through it
        ring.index_key()      # its own transaction, before any append needs a pseudonym
        self.sealer = BodySealer(ring)

    def credential_of(self, stored: str) -> str:
        """The credential a ``tc_badges.credential`` value holds (sealed on a keyed ledger)."""
        if self.sealer is None:
            return stored
        return self.sealer.undet(stored, column=people_tables.BADGE_COLUMN)

    def _opened(self, r: tuple[Any, ...]) -> bytes | None:
        """A raw row's body for the verifier: the plaintext, or — when a sealed body does not
        open (edited, moved) — the stored bytes, which then fail the body hash as tampering
        at that idx; a missing or wrong KEK is still the operator's error (KeyringError)."""
        stored = to_bytes(r[6])
        try:
            return self.plain(r[0], r[3], stored)
        except KeyringError:
            raise
        except LedgerError:
            return stored

    def blind_credential(self, credential: str, *, memo: bool = True) -> str | None:
        """What the ``punches`` projection holds for ``credential`` on a keyed ledger (its
        blind index; DESIGN.md §8.6), None without a keyring. ``memo`` False: not kept in
        the keyring's memo (a long read whose RowChecker keeps its own: punch_chunks)."""
        return None if self.sealer is None else self.sealer.ring.blind(credential, memo=memo)

    def _unmemoised_blind(self, credential: str) -> str | None:
        return self.blind_credential(credential, memo=False)

    def punch_planner(self) -> PunchPlanner | None:
        """On a keyed ledger, what makes punches' SealPlans ahead of the append (the ingest's
        judging; BodySealer.planner), by the thread that owns the store."""
        return None if self.sealer is None else self.sealer.planner(self)

    def plain(self, idx: Any, body_hash: Any, stored: bytes | None) -> bytes | None:
        """The plaintext of a stored body (None: absent, or its data key was destroyed)."""
        if self.sealer is None:
            body_crypto.unsealed_error(stored)
            return stored
        return self.sealer.plain(idx, body_hash, stored)

    def plain_opener(self, run_keys: dict[bytes, bytes | None] | None = None
                     ) -> Callable[[Any, Any, bytes | None], bytes | None]:
        """:meth:`plain` for one read run over many bodies (payroll export, API page): its
        data keys unwrapped once each for the run (BodySealer.run_opener), in ``run_keys``
        when given."""
        return self.plain if self.sealer is None else self.sealer.run_opener(run_keys)

    # -- append ---------------------------------------------------------------------------
    def append(self, facts: Sequence[Fact], *, now_us: int) -> list[AppendResult]:
        if not facts:
            return []
        with self._lock:
            self._ensure_connected()
            # Facts an in-doubt append turned out to have committed are not appended again.
            todo, known = self._settled.split(facts)
            plan: _Append | None = None
            results: list[AppendResult] | None = None
            try:
                if todo:
                    with self._write() as cur:
                        plan = self._planner(cur, now_us)
                        results = plan.run(todo)
                self.last_error = None
                self._settled.used(facts, known)
                return merge(len(facts), known, results or [])
            except self.db_errors as e:
                if results is not None and plan is not None and plan.entries \
                        and self._unavailable(e):
                    # Lost while committing: the outcome is unknown until reconnect() reads.
                    self._in_doubt.append(InDoubt(tuple(todo), tuple(results),
                                                  plan.entries[0][0], plan.entries[0][5]))
                if "UNIQUE" in str(e).upper() and any(
                        isinstance(f, EventFact) and f.kind == "device" for f in facts):
                    raise RegistryError(f"device event conflicts with the registry: "
                                        f"{str(e).splitlines()[0]}") from e
                raise self._fail(e, "ledger append failed") from e

    # -- reads ----------------------------------------------------------------------------
    def head(self) -> tuple[int, str]:
        rows = self._q("SELECT idx, hash FROM entries ORDER BY idx DESC LIMIT 1")
        if not rows:
            return 0, ZERO_HASH
        return int(rows[0][0]) + 1, str(rows[0][1])

    def raw_entries(self, start: int = 0, stop: int | None = None) -> Iterator[RawEntry]:
        """Entry rows with their bodies exactly as stored, in idx order, a page at a time."""
        after = start - 1
        while True:
            lim = PAGE if stop is None else min(PAGE, stop - after - 1)
            if lim <= 0:
                return
            if stop is None:
                rows = self._q(_RAW_PAGE.format(stop=""), (after, lim))
            else:
                rows = self._q(_RAW_PAGE.format(stop="AND e.idx < ? "), (after, stop, lim))
            for r in rows:
                yield RawEntry(r[0], r[1], r[2], r[3], r[4], r[5], self._opened(r))
            if len(rows) < lim:
                return
            after = int(rows[-1][0])

    def entries(self, start: int = 0, stop: int | None = None) -> Iterator[StoredEntry]:
        for r in self.raw_entries(start, stop):
            try:
                e = Entry(idx=r.idx, kind=r.kind, at=r.at, body=r.body_hash, prev=r.prev)
            except WireError as err:
                raise LedgerError(f"entry {r.idx} is not a valid entry: {err}") from err
            yield StoredEntry(e, str(r.hash), r.body)

    def device(self, device: str) -> DeviceRecord | None:
        rows = self._q("SELECT device, site, status, enrolled_idx, changed_idx FROM devices "
                       "WHERE device = ?", (device,))
        return DeviceRecord(*rows[0]) if rows else None

    def devices(self) -> list[DeviceRecord]:
        return [DeviceRecord(*r) for r in self._q(
            "SELECT device, site, status, enrolled_idx, changed_idx FROM devices ORDER BY device")]

    def keys(self, device: str) -> list[KeyRecord]:
        return [KeyRecord(*r) for r in self._q(
            "SELECT device, key_id, public_b64, from_seq, until_seq, status, registered_idx "
            "FROM keys WHERE device = ? ORDER BY from_seq, registered_idx", (device,))]

    def all_keys(self) -> list[KeyRecord]:
        """Every registered key of every device (for a registry snapshot)."""
        return [KeyRecord(*r) for r in self._q(
            "SELECT device, key_id, public_b64, from_seq, until_seq, status, registered_idx "
            "FROM keys ORDER BY device, from_seq, registered_idx")]

    def key_owner(self, key_id: str) -> str | None:
        """The device a key id is registered to, if any (key ids are unique ledger-wide)."""
        rows = self._q("SELECT device FROM keys WHERE key_id = ?", (key_id,))
        return str(rows[0][0]) if rows else None

    def progress(self, device: str) -> DeviceProgress:
        rows = self._q(
            "SELECT seq, prev_seq FROM (SELECT seq, LAG(seq) OVER (ORDER BY seq) AS prev_seq "
            "FROM punches WHERE device = ?) t WHERE prev_seq IS NULL OR seq - prev_seq > 1 "
            "ORDER BY seq", (device,))
        top = self._q("SELECT MAX(seq) FROM punches WHERE device = ?", (device,))
        highest = int(top[0][0]) if top and top[0][0] is not None else 0
        gaps: list[tuple[int, int]] = []
        for seq, prev_seq in rows:
            lo = 1 if prev_seq is None else int(prev_seq) + 1
            if int(seq) > lo:
                gaps.append((lo, int(seq) - 1))
        contiguous = gaps[0][0] - 1 if gaps else highest
        return DeviceProgress(device, contiguous, highest, tuple(gaps))

    def punch_hash(self, device: str, seq: int) -> tuple[str, int] | None:
        """(punch hash, idx) of a recorded (device, seq)."""
        rows = self._q("SELECT punch_hash, idx FROM punches WHERE device = ? AND seq = ?",
                       (device, seq))
        return (str(rows[0][0]), int(rows[0][1])) if rows else None

    def add_checkpoint(self, signed: SignedCheckpoint) -> None:
        cp = signed.checkpoint
        with self._lock:
            self._ensure_connected()
            try:
                with self._write() as cur:
                    if cp.size > 0:
                        cur.execute(self._sql("SELECT hash FROM entries WHERE idx = ?"),
                                    (cp.size - 1,))
                        row = cur.fetchone()
                        if row is None or row[0] != cp.head:
                            raise LedgerError(f"checkpoint of size {cp.size} does not match "
                                              f"this ledger's entry {cp.size - 1}")
                    cur.execute(self._sql(
                        "SELECT 1 FROM checkpoints WHERE log = ? AND size = ? AND at = ? "
                        "AND sig = ?"), (cp.log, cp.size, cp.at, signed.sig))
                    if cur.fetchone() is None:
                        cur.execute(self._sql(
                            "INSERT INTO checkpoints (log, size, head, at, sig) "
                            "VALUES (?, ?, ?, ?, ?)"), (cp.log, cp.size, cp.head, cp.at,
                                                          signed.sig))
            except self.db_errors as e:
                raise self._fail(e, "storing a checkpoint failed") from e

    def checkpoints(self) -> list[SignedCheckpoint]:
        out: list[SignedCheckpoint] = []
        for log, size, head, at, sig in self._q(
                "SELECT log, size, head, at, sig FROM checkpoints ORDER BY size, at, id"):
            try:
                out.append(SignedCheckpoint.from_dict({"checkpoint": {
                    "v": 1, "log": log, "size": size, "head": head, "at": at}, "sig": sig}))
            except WireError as e:
                raise LedgerError(f"stored checkpoint of size {size} is malformed: {e}") from e
        return out

    def quarantine(self, *, limit: int = 100, after_id: int = 0) -> list[QuarantineRecord]:
        return [QuarantineRecord(*r) for r in self._q(
            "SELECT id, idx, received_at, topic, reason, detail, raw_sha256, size "
            "FROM quarantine WHERE id > ? ORDER BY id LIMIT ?", (after_id, limit))]

    def quarantined_raw(self, qid: int) -> bytes:
        rows = self._q("SELECT raw, idx, raw_sha256 FROM quarantine WHERE id = ?", (qid,))
        if not rows:
            raise LedgerError(f"no quarantined message with id {qid}")
        # Sealed at rest on a keyed ledger (DESIGN.md §8.6), aad = its entry idx + raw SHA-256;
        # without a keyring the bytes are whatever arrived (they may even look sealed).
        raw: bytes | None = bytes(rows[0][0])
        if self.sealer is not None:
            raw = self.sealer.plain(rows[0][1], rows[0][2], raw)
        if raw is None:
            raise LedgerError(f"quarantined message {qid}: its data key was destroyed")
        return raw

    # -- the Merkle tree (DESIGN.md §8.1; collector.ledger.tree) -----------------------------
    def tree_size(self) -> int:
        """The number of leaves: the number of entries (the tree covers every one)."""
        rows = self._q("SELECT e.idx, m.hash FROM entries e LEFT JOIN tc_merkle m "
                       "ON m.level = 0 AND m.idx = e.idx ORDER BY e.idx DESC LIMIT 1")
        if not rows:
            return 0
        if rows[0][1] is None:
            raise LedgerError(f"the Merkle tree does not cover entry {rows[0][0]}: the node "
                              f"table is incomplete (run `timeclock-collector migrate`)")
        return int(rows[0][0]) + 1

    def _tree_read(self, what: str, size: int, f: Callable[[merkle.HashReader], Any]) -> Any:
        """``f`` over the stored nodes: one query (wire.merkle reads every node at once)."""
        with self._lock:
            self._ensure_connected()
            try:
                with self._read() as cur:
                    try:
                        return f(tree.CursorReader(cur, self.tree_sql))
                    except ProofError as e:
                        # Beyond the tree is the caller's mistake; a node missing inside it
                        # is the store's (an incomplete or damaged node table).
                        leaves = tree.tree_leaves(cur)
                        if size > leaves:
                            raise LedgerError(f"{what}: size {size} is beyond the tree, "
                                              f"which has {leaves} leaves") from e
                        raise LedgerError(f"{what}: {e}") from e
            except self.db_errors as e:
                raise self._fail(e, f"{what} failed") from e

    def merkle_root(self, size: int) -> bytes:
        """MTH of the first ``size`` entries (popcount(size) stored nodes)."""
        if not isinstance(size, int) or size < 0:
            raise LedgerError(f"tree size must be an integer ≥ 0, got {size!r}")
        out: bytes = self._tree_read(f"Merkle root of size {size}", size,
                                     lambda r: merkle.root(r, size))
        return out

    def inclusion_proof(self, index: int, size: int) -> list[bytes]:
        """RFC 9162 inclusion proof of leaf (entry) ``index`` in the tree of ``size``."""
        out: list[bytes] = self._tree_read(
            f"inclusion proof of leaf {index} in size {size}", size,
            lambda r: merkle.inclusion_proof(r, index, size))
        return out

    def consistency_proof(self, old_size: int, new_size: int) -> list[bytes]:
        """RFC 9162 consistency proof from the tree of ``old_size`` to ``new_size``; the
        sizes must not exceed the tree (an empty proof is only for 0 or equal sizes)."""
        if isinstance(new_size, int) and new_size > 0 and old_size in (0, new_size):
            self.leaf_hash(new_size - 1)     # still refuse a size beyond the tree
        out: list[bytes] = self._tree_read(
            f"consistency proof from size {old_size} to {new_size}", new_size,
            lambda r: merkle.consistency_proof(r, old_size, new_size))
        return out

    def leaf_hash(self, index: int) -> bytes:
        """The stored leaf hash of entry ``index``."""
        if not isinstance(index, int) or index < 0:
            raise LedgerError(f"leaf index must be an integer ≥ 0, got {index!r}")
        out: list[bytes] = self._tree_read(f"leaf {index}", index + 1,
                                           lambda r: r.get_nodes([(0, index)]))
        return out[0]

    def check_tree(self, start: int = 0, stop: int | None = None) -> tree.TreeCheck:
        """Recompute the tree's nodes for leaves ``start`` … ``stop`` − 1 (default: to the
        end) from the entry rows and compare them with the stored nodes (for ``verify
        --full``: an edited node table is a finding, never a silent wrong proof)."""
        with self._lock:
            self._ensure_connected()
            try:
                with self._read() as cur:
                    end = tree.entry_count(cur) if stop is None else stop
                    return tree.check(cur, self.tree_sql, start, end)
            except self.db_errors as e:
                raise self._fail(e, "checking the Merkle tree failed") from e


class _Append:
    """One append transaction: plan rows in memory, then insert them in a few executemany."""

    def __init__(self, cur: Any, now_us: int, *, sql: Callable[[str], str],
                 existing: Callable[[Any, set[tuple[str, int]]],
                                    dict[tuple[str, int], tuple[str, int]]],
                 tree_sql: tree.TreeSQL = tree.SQLITE_TREE,
                 sealer: BodySealer | None = None,
                 stamp: Callable[[Any], object] | None = None) -> None:
        self.sql = sql              # the store's placeholder translation
        self.stamp = stamp          # the store's write_stamp (Tx.stamp)
        self.sealer = sealer        # seals personal bodies in _flush (DESIGN.md §8.6)
        self.existing = existing    # the store's (device, seq) lookup
        self.tree_sql = tree_sql    # the store's node table statements
        self.cur = cur
        cur.execute("SELECT idx, hash, at FROM entries ORDER BY idx DESC LIMIT 1")
        row = cur.fetchone()
        self.size = 0 if row is None else int(row[0]) + 1
        self.prev = ZERO_HASH if row is None else str(row[1])
        # The clock may step back (NTP, VM migration): never record an earlier time.
        self.at = now_us if row is None else max(now_us, int(row[2]))
        self.start = self.size
        self.entries: list[tuple[int, str, int, str, str, str]] = []
        self.leaves: list[bytes] = []   # Merkle leaf hash of each entry, same order
        self.bodies: list[tuple[int, bytes]] = []
        self.punches: list[tuple[Any, ...]] = []
        self.punch_subjects: list[tuple[int, str, int]] = []   # (idx, credential, ts) to seal
        # punches whose subject was planned ahead: (plan, credential, ts) by idx
        self.planned: dict[int, tuple[SealPlan, str, int]] = {}
        self.quarantine: list[tuple[Any, ...]] = []
        self.retained: list[tuple[int, int, int]] = []
        self.sites: dict[str, str] = {}
        self.prevs: dict[tuple[str, int], str] = {}     # prev of punches read or appended
        # Registry state read under the chain lock: (device status, keys by id).
        self.registry: dict[str, tuple[str | None, dict[str, tuple[str, int, int | None]]]] = {}

    def _entry(self, kind: str, body: bytes) -> int:
        idx = self.size
        bh = body_hash(body)
        # One serialisation for both: the entry hash and the Merkle leaf hash the same bytes
        # (the fields are this append's own, so the entry is not re-validated field by field).
        data = entry_leaf_bytes(idx=idx, kind=kind, at=self.at, body=bh, prev=self.prev)
        h = hashlib.sha256(data).hexdigest()
        self.leaves.append(merkle.leaf_hash(data))
        self.entries.append((idx, kind, self.at, bh, self.prev, h))
        self.bodies.append((idx, body))
        self.prev = h
        self.size += 1
        return idx

    def _reject(self, *, reason: str, detail: str, topic: str, raw: bytes, received_at: int,
                device: str | None) -> int:
        raw_sha = hashlib.sha256(raw).hexdigest()
        body: dict[str, Any] = {"reason": reason, "topic": topic, "raw_sha256": raw_sha,
                                "received_at": received_at, "detail": detail}
        if device is not None:
            body["device"] = device
        checked_body("rejection", body, idx=self.size)
        idx = self._entry("rejection", canonical(body))
        self.quarantine.append((idx, received_at, topic, reason, detail, device, raw, raw_sha,
                                len(raw)))
        return idx

    def _rows(self, sql: str, params: Sequence[Any]) -> list[tuple[Any, ...]]:
        self.cur.execute(self.sql(sql), tuple(params))
        return list(self.cur.fetchall())

    def _body_of(self, idx: int) -> bytes | None:
        """The body of entry ``idx``: appended in this transaction, or stored."""
        if idx >= self.start:
            return next((b for i, b in self.bodies if i == idx), None)
        found = self._rows("SELECT body FROM bodies WHERE idx = ?", (idx,))
        return to_bytes(found[0][0]) if found else None

    def _load_sites(self, devices: set[str]) -> None:
        for d in devices:
            self.cur.execute(self.sql("SELECT site FROM devices WHERE device = ?"), (d,))
            row = self.cur.fetchone()
            if row is not None:
                self.sites[d] = str(row[0])

    def _registry(self, device: str) -> tuple[str | None, dict[str, tuple[str, int, int | None]]]:
        if device not in self.registry:
            self.cur.execute(self.sql("SELECT status FROM devices WHERE device = ?"),
                             (device,))
            row = self.cur.fetchone()
            self.cur.execute(self.sql("SELECT key_id, status, from_seq, until_seq FROM keys "
                                         "WHERE device = ?"), (device,))
            keys = {str(k): (str(st), int(a), None if b is None else int(b))
                    for k, st, a, b in self.cur.fetchall()}
            self.registry[device] = (None if row is None else str(row[0]), keys)
        return self.registry[device]

    def _still_valid(self, f: PunchFact) -> tuple[str, str] | None:
        """Re-check the registry under the chain lock: the ingest verified against a snapshot,
        and a revocation or rotation may have been committed since (by this or another
        collector). A punch recorded after its device or key stopped being valid would be
        reported as tampering by the auditor, so it is rejected here instead."""
        p = f.signed.punch
        status, keys = self._registry(p.device)
        if status is None:
            return "unknown-device", f"{p.device} is not enrolled"
        if status != "active":
            return "device-revoked", f"{p.device} is {status} (changed while this punch was " \
                                     f"being verified)"
        k = keys.get(p.key)
        if k is None:
            return "unknown-key", f"key {p.key} is not registered for {p.device}"
        kstatus, from_seq, until_seq = k
        if kstatus != "active":
            return "key-revoked", f"key {p.key} of {p.device} is {kstatus}"
        if p.seq < from_seq or (until_seq is not None and p.seq >= until_seq):
            last = "" if until_seq is None else str(until_seq - 1)
            return "key-not-valid-for-seq", (f"key {p.key} of {p.device} signs seqs "
                                             f"{from_seq}..{last}, not {p.seq}")
        return None

    def run(self, facts: Sequence[Fact]) -> list[AppendResult]:
        pairs = {(f.signed.punch.device, f.signed.punch.seq) for f in facts
                 if isinstance(f, PunchFact)}
        # The neighbours too: a punch whose prev does not link to them is a fork (_fork).
        near = pairs | {(d, s + k) for d, s in pairs for k in (-1, 1) if s + k >= 1}
        seen = self.existing(self.cur, near) if pairs else {}
        self._load_sites({d for d, _ in pairs})
        results: list[AppendResult] = []
        for f in facts:
            if isinstance(f, PunchFact):
                results.append(self._punch(f, seen))
            elif isinstance(f, RejectionFact):
                idx = self._reject(reason=f.reason, detail=f.detail, topic=f.topic, raw=f.raw,
                                   received_at=f.received_at, device=f.device)
                results.append(AppendResult(Outcome.REJECTED, idx, f.device))
            else:
                results.append(self._event(f))
        self._flush()
        return results

    def _punch(self, f: PunchFact, seen: dict[tuple[str, int], tuple[str, int]]
               ) -> AppendResult:
        p = f.signed.punch
        key = (p.device, p.seq)
        h = f.signed.hash()
        prior = seen.get(key)
        if prior is not None:
            if prior[0] == h:
                return AppendResult(Outcome.DUPLICATE, prior[1], p.device, p.seq)
            idx = self._reject(
                reason="conflict", topic=f.topic, raw=f.signed.to_bytes(),
                received_at=f.received_at, device=p.device,
                detail=f"seq {p.seq} is already recorded at idx {prior[1]} with punch hash "
                       f"{prior[0]}; this punch hash is {h} (cloned key or restored device?)")
            return AppendResult(Outcome.CONFLICT, idx, p.device, p.seq)
        fork = self._fork(f, h, seen)
        if fork is not None:
            idx = self._reject(reason="fork", detail=fork, topic=f.topic,
                               raw=f.signed.to_bytes(), received_at=f.received_at,
                               device=p.device)
            return AppendResult(Outcome.FORK, idx, p.device, p.seq)
        invalid = self._still_valid(f)
        if invalid is not None:
            idx = self._reject(reason=invalid[0], detail=invalid[1], topic=f.topic,
                               raw=f.signed.to_bytes(), received_at=f.received_at,
                               device=p.device)
            return AppendResult(Outcome.REJECTED, idx, p.device, p.seq)
        idx = self._entry("punch", f.signed.to_bytes())
        seen[key] = (h, idx)
        self.prevs[key] = p.prev
        # With a keyring the projection keeps the credential's blind index, not the credential
        # (DESIGN.md §8.6); readers get it back from the sealed body (row_check). A plan made
        # ahead by this store's sealer carries the tag (and the subject, checked in
        # _sealed_bodies against the directory of now).
        if self.sealer is None:
            cred = p.credential
        elif (plan := f.sealing) is not None and plan.sealer is self.sealer:
            cred = plan.credential_tag
            self.planned[idx] = (plan, p.credential, p.ts)
        else:
            cred = self.sealer.ring.blind(p.credential)
            self.punch_subjects.append((idx, p.credential, p.ts))
        self.punches.append((p.device, p.seq, h, idx, p.key, p.ts, p.clock, cred,
                             p.action, p.reader, self.sites.get(p.device, "")))
        return AppendResult(Outcome.APPENDED, idx, p.device, p.seq)

    def _fork(self, f: PunchFact, h: str, seen: dict[tuple[str, int], tuple[str, int]]
              ) -> str | None:
        """DESIGN.md §8.5 "Forks", the auditor's step (6) before the append: a punch whose
        ``prev`` is not the hash of the recorded seq-1, or whose hash is not the ``prev`` of the
        recorded seq+1, is never appended as a punch (the auditor would call that tampering)."""
        p = f.signed.punch
        below = seen.get((p.device, p.seq - 1))
        if below is not None and below[0] != p.prev:
            return (f"seq {p.seq} prev {p.prev} does not link to recorded seq {p.seq - 1} "
                    f"(idx {below[1]}, hash {below[0]}): a fork of {p.device}'s chain "
                    f"(cloned key, or a clock that lost its queue and restarted its chain?)")
        above = seen.get((p.device, p.seq + 1))
        if above is not None:
            above_prev = self._prev_of(p.device, p.seq + 1, above[1])
            if above_prev is not None and above_prev != h:
                return (f"seq {p.seq} hash {h} is not the prev {above_prev} of recorded seq "
                        f"{p.seq + 1} (idx {above[1]}): a fork of {p.device}'s chain")
        return None

    def _prev_of(self, device: str, seq: int, idx: int) -> str | None:
        """The ``prev`` of the recorded punch (device, seq) at ``idx``; None if its body was
        deleted under retention (the auditor cannot check that link either)."""
        if (device, seq) in self.prevs:
            return self.prevs[(device, seq)]
        self.cur.execute(self.sql("SELECT b.body, e.body FROM bodies b JOIN entries e "
                                  "ON e.idx = b.idx WHERE b.idx = ?"), (idx,))
        row = self.cur.fetchone()
        plain = None if row is None else self._plain(idx, row[1], to_bytes(row[0]))
        if plain is None:       # deleted under retention, or its data key destroyed
            return None
        prev = SignedPunch.from_bytes(plain).punch.prev
        self.prevs[(device, seq)] = prev
        return prev

    def _plain(self, idx: int, body_hash: Any, stored: bytes | None) -> bytes | None:
        if self.sealer is None:
            body_crypto.unsealed_error(stored)
            return stored
        return self.sealer.plain(idx, body_hash, stored)

    def _sealed_quarantine(self) -> list[tuple[Any, ...]]:
        """The quarantine rows with their raw bytes sealed (DESIGN.md §8.6) under the data key
        of (``_quarantine``, UTC month of receipt), when a keyring is set."""
        if self.sealer is None:
            return self.quarantine
        tx = Tx(self.cur, self.at, self.sql, lambda _c, _n: self, self.stamp)
        out: list[tuple[Any, ...]] = []
        for idx, received_at, topic, reason, detail, device, raw, sha, size in self.quarantine:
            dk = self.sealer.ring.data_key(tx, QUARANTINE_SUBJECT, period_of(received_at),
                                           idx=idx)
            out.append((idx, received_at, topic, reason, detail, device,
                        body_crypto.seal(raw, idx=idx, body_hash=sha, key_id=dk.key_id,
                                         key=dk.key), sha, size))
        return out

    def _credential_of(self, stored: str) -> str:
        if self.sealer is None:
            return stored
        return self.sealer.undet(stored, column=people_tables.BADGE_COLUMN)

    def _sealed_bodies(self) -> list[tuple[int, bytes]]:
        """The bodies to insert: personal ones sealed (DESIGN.md §8.6), when a keyring is set."""
        if self.sealer is None:
            return self.bodies
        tx = Tx(self.cur, self.at, self.sql, lambda _c, _n: self, self.stamp)
        tx.sealer = self.sealer
        punches = {i: {"credential": c, "ts": ts} for i, c, ts in self.punch_subjects}
        planned: dict[int, tuple[str, str] | str] = {}
        if self.planned:
            # The plans' subjects hold only if the badge periods are still those they were
            # resolved against (read here, under the chain lock: a badge entry or an erasure
            # committed since — by this batch, this process or another collector — changes
            # the version); else those punches are resolved again here, as without a plan.
            now = body_crypto.directory_version(tx.rows)
            self.sealer.directory_seen(now)
            for i, (plan, credential, ts) in self.planned.items():
                if plan.directory == now:
                    planned[i] = (plan.subject, plan.period)
                else:
                    punches[i] = {"credential": credential, "ts": ts}
        hashes = {e[0]: e[3] for e in self.entries}
        pending = [(e[0], e[1], e[2], punches.get(e[0]), b)
                   for e, (_, b) in zip(self.entries, self.bodies, strict=True)
                   if e[0] not in planned]
        subjects = self.sealer.subjects(tx, pending)
        subjects.update(planned)
        return self.sealer.seal_all(tx, self.bodies, hashes, subjects)

    def _event(self, f: EventFact) -> AppendResult:
        try:
            body = canonical(f.body)
        except WireError as e:
            raise LedgerError(f"{f.kind} entry: body is not canonical JSON: {e}") from e
        if f.kind in _OWN_FACT_KINDS:
            raise LedgerError(f"a {f.kind} entry is appended as a {f.kind.capitalize()}Fact, "
                              f"not as an EventFact")
        fact = checked_body(f.kind, f.body, idx=self.size)
        if isinstance(fact, DeviceEvent):   # D1/D17: the key change's authority (§8.5)
            key_authority.authorise(self._rows, self._body_of, fact)
        if f.kind in retention_tables.JUDGED_KINDS:
            # D15: policy/hold dual control and a retention entry's policies, ages and holds,
            # judged by the auditor's rules against the ledger and the bodies about to go.
            retention_tables.check_append(
                self._rows, f.kind, fact, idx=self.size, at=self.at,
                pending=[(i, k, b) for (i, k, *_), (_, b) in zip(self.entries, self.bodies,
                                                                 strict=True)],
                plain=self._plain, credential_of=self._credential_of)
        idx = self._entry(f.kind, body)
        if isinstance(fact, DeviceEvent):
            self._apply_device(f.body, idx, fact)
        elif isinstance(fact, Retention):
            self.retained.extend((idx, a, b) for a, b in fact.deleted)
        return AppendResult(Outcome.APPENDED, idx, f.body.get("device") if isinstance(
            f.body.get("device"), str) else None)

    def _apply_device(self, body: dict[str, Any], idx: int, ev: DeviceEvent) -> None:
        def x(sql: str, params: tuple[Any, ...]) -> None:
            self.cur.execute(self.sql(sql), params)

        event, device = body["event"], body["device"]
        self.registry.pop(device, None)     # later punches of this batch see the change
        if event == "enrolled":
            x("INSERT INTO devices (device, site, status, enrolled_idx, changed_idx) "
              "VALUES (?, ?, 'active', ?, ?)", (device, body["site"], idx, idx))
            x("INSERT INTO keys (key_id, device, public_b64, from_seq, until_seq, status, "
              "registered_idx) VALUES (?, ?, ?, ?, NULL, 'active', ?)",
              (body["key"], device, body["signing_key"], ev.from_seq, idx))
            self.sites[device] = body["site"]
        elif event == "reenrol-requested":
            pass            # a request changes no key until approved (collector.ledger.registry)
        elif event in ("rotated", "reenrolled"):
            x("UPDATE keys SET until_seq = ? WHERE device = ? AND until_seq IS NULL",
              (body["from_seq"], device))
            x("INSERT INTO keys (key_id, device, public_b64, from_seq, until_seq, status, "
              "registered_idx) VALUES (?, ?, ?, ?, NULL, 'active', ?)",
              (body["key"], device, body["signing_key"], body["from_seq"], idx))
            x("UPDATE devices SET changed_idx = ? WHERE device = ?", (idx, device))
        elif "key" in body:
            x("UPDATE keys SET status = 'revoked' WHERE device = ? AND key_id = ?",
              (device, body["key"]))
            x("UPDATE devices SET changed_idx = ? WHERE device = ?", (idx, device))
        else:
            x("UPDATE keys SET status = 'revoked' WHERE device = ?", (device,))
            x("UPDATE devices SET status = 'revoked', changed_idx = ? WHERE device = ?",
              (idx, device))

    def _flush(self) -> None:
        c, q = self.cur, self.sql
        if self.entries:
            # The nodes first: the schema refuses an entry whose leaf is not stored yet.
            try:
                nodes = merkle.append_nodes(tree.CursorReader(c, self.tree_sql), self.start,
                                            self.leaves)
            except ProofError as e:
                raise LedgerError(f"the Merkle tree cannot grow from size {self.start}: {e} "
                                  f"(run `timeclock-collector migrate`)") from e
            self.tree_sql.insert_appended(c, nodes)
            c.executemany(q("INSERT INTO entries (idx, kind, at, body, prev, hash) "
                            "VALUES (?, ?, ?, ?, ?, ?)"), self.entries)
            c.executemany(q("INSERT INTO bodies (idx, body) VALUES (?, ?)"),
                          self._sealed_bodies())
        if self.punches:
            c.executemany(q("INSERT INTO punches (device, seq, punch_hash, idx, key_id, ts, "
                            "clock, credential, action, reader, site) "
                            "VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)"), self.punches)
        if self.quarantine:
            c.executemany(q("INSERT INTO quarantine (idx, received_at, topic, reason, detail, "
                            "device, raw, raw_sha256, size) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)"),
                          self._sealed_quarantine())
        if self.retained:
            c.executemany(q("INSERT INTO retained (retention_idx, first_idx, last_idx) "
                            "VALUES (?, ?, ?)"), self.retained)
            for _, a, b in self.retained:
                c.execute(q("SELECT MIN(idx) FROM entries WHERE idx >= ? AND idx <= ? "
                            "AND kind IN ('device', 'retention')"), (a, b))
                row = c.fetchone()
                if row is not None and row[0] is not None:
                    raise LedgerError(f"retention may not delete the body of entry {row[0]}: "
                                      f"device and retention bodies are kept for verification")
                c.execute(q("DELETE FROM bodies WHERE idx >= ? AND idx <= ?"), (a, b))


def stored_entry_or_none(r: RawEntry) -> StoredEntry | None:
    """A StoredEntry for a raw row, or None when the row is not a valid entry."""
    try:
        return StoredEntry(Entry(idx=r.idx, kind=r.kind, at=r.at, body=r.body_hash,
                                 prev=r.prev), str(r.hash), r.body)
    except (WireError, TypeError):
        return None


def body_matches(r: RawEntry) -> bool:
    return r.body is not None and body_hash(r.body) == r.body_hash
