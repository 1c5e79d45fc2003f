"""The ledger's data keys (DESIGN.md §8.6): one 32-byte key per (subject, period), wrapped by
the key-encryption key (collector.ledger.kek), kept in ``tc_data_keys``.

- subject: the employee id a punch resolves to at its device time, or, for a badge that
  resolves to nobody, ``badge:`` + a keyed pseudonym of the credential (:meth:`Keyring.
  badge_subject`, never the credential); ``_system`` for what is not personal; the blind
  index key is the row (``_index``, ``-``).
- period: the UTC calendar month ``YYYY-MM`` of the punch's device time (:func:`period_of`),
  so retention and erasure destroy whole months of one person and nothing of anyone else.
- key id: ``dk-`` + 32 random hex digits, unique in the ledger.
- aad of the wrap: :func:`wrap_aad` (the ledger's origin, subject, period and key id), so a
  wrapped key moved to another row, subject, period or ledger does not unwrap.

Invariants (enforced by the table's triggers on both stores, not only here): a row is never
deleted; the only changes are a rewrap (``wrapped`` and ``kek_id`` replaced while the key is
alive) and a destruction (``wrapped`` blanked to zero bytes and ``destroyed_idx`` set to the
idx of the ``shred`` or ``retention`` entry recorded for it, once). A destroyed key is gone:
nothing in the database can bring it back.

The cache holds unwrapped keys (LRU, ``cache_max``): ingest and exports unwrap a key once per
process, never per row; a destroyed key leaves the cache in the same call that blanks it.
"""

from __future__ import annotations

import hashlib
import hmac
import secrets
import threading
from collections import OrderedDict
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

from nacl.exceptions import CryptoError

from collector import KekError, KeyDestroyedError, KeyringError, LedgerError
from collector.ledger.kek import Kek

if TYPE_CHECKING:   # no import at run time: schema_sqlite/schema_postgres import this module
    from collector.ledger.sqlbase import SQLStore, Tx

TABLE = "tc_data_keys"
KEY_BYTES = 32
SYSTEM_SUBJECT = "_system"
INDEX_SUBJECT, INDEX_PERIOD = "_index", "-"
CACHE_MAX = 4096
_IN_CHUNK = 500
# Calls of Keyring.destroy in this process: a key destroyed through this store's own
# connection does not change its write stamp, so every memo of live keys checks this too.
_DESTROYS = [0]
_WRAP_DOMAIN = b"timeclock data key v1\x00"
_COLS = "key_id, subject, period, wrapped, kek_id, created_idx, destroyed_idx"


# -- the table (one statement each; SQLite's and PostgreSQL's differ in types only) ----------

def _table(integer: str, blob: str) -> str:
    return f"""CREATE TABLE IF NOT EXISTS {TABLE} (
    key_id         TEXT PRIMARY KEY,
    subject        TEXT NOT NULL,
    period         TEXT NOT NULL,
    wrapped        {blob} NOT NULL,
    kek_id         TEXT NOT NULL,
    created_idx    {integer} NOT NULL,
    destroyed_idx  {integer},
    UNIQUE (subject, period)
)"""


_REFUSE = ("only a rewrap of a live key or its destruction under a shred or retention entry "
           "may change it (the ledger is append-only)")
_SQLITE_UPDATE = (
    "CREATE TRIGGER IF NOT EXISTS tc_data_keys_update BEFORE UPDATE ON tc_data_keys\n"
    "WHEN NEW.key_id IS NOT OLD.key_id OR NEW.subject IS NOT OLD.subject\n"
    "  OR NEW.period IS NOT OLD.period OR NEW.created_idx IS NOT OLD.created_idx\n"
    "  OR OLD.destroyed_idx IS NOT NULL\n"
    "  OR NOT ((NEW.destroyed_idx IS NULL AND length(NEW.wrapped) > 0)\n"
    "          OR (length(NEW.wrapped) = 0 AND NEW.kek_id IS OLD.kek_id AND EXISTS (\n"
    "              SELECT 1 FROM entries e WHERE e.idx = NEW.destroyed_idx\n"
    "              AND e.kind IN ('shred', 'retention'))))\n"
    "BEGIN SELECT RAISE(ABORT, 'timeclock: UPDATE on tc_data_keys refused: only a rewrap of a "
    "live key or its destruction under a shred or retention entry may change it (the ledger "
    "is append-only)'); END")
SQLITE_STATEMENTS: tuple[str, ...] = (
    _table("INTEGER", "BLOB"),
    "CREATE INDEX IF NOT EXISTS tc_data_keys_subject ON tc_data_keys (subject, period)",
    "CREATE TRIGGER IF NOT EXISTS tc_data_keys_no_delete BEFORE DELETE ON tc_data_keys\n"
    "BEGIN SELECT RAISE(ABORT, 'timeclock: DELETE on tc_data_keys refused (the ledger is "
    "append-only)'); END",
    _SQLITE_UPDATE,
)
SQLITE_TRIGGERS = ("tc_data_keys_no_delete", "tc_data_keys_update")

# tc_append_only() is schema_postgres's (created before this DDL in the same script).
POSTGRES_DDL = "\n" + _table("BIGINT", "BYTEA") + ";\n" + SQLITE_STATEMENTS[1] + f""";
CREATE OR REPLACE FUNCTION tc_data_keys_update() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    IF NEW.key_id IS DISTINCT FROM OLD.key_id OR NEW.subject IS DISTINCT FROM OLD.subject
       OR NEW.period IS DISTINCT FROM OLD.period
       OR NEW.created_idx IS DISTINCT FROM OLD.created_idx
       OR OLD.destroyed_idx IS NOT NULL
       OR NOT ((NEW.destroyed_idx IS NULL AND octet_length(NEW.wrapped) > 0)
               OR (octet_length(NEW.wrapped) = 0 AND NEW.kek_id = OLD.kek_id AND EXISTS (
                   SELECT 1 FROM entries e WHERE e.idx = NEW.destroyed_idx
                   AND e.kind IN ('shred', 'retention')))) THEN
        RAISE EXCEPTION 'timeclock: UPDATE on tc_data_keys refused: {_REFUSE}'
            USING ERRCODE = 'insufficient_privilege';
    END IF;
    RETURN NEW;
END $$;
CREATE OR REPLACE TRIGGER tc_data_keys_append_only BEFORE DELETE ON tc_data_keys FOR EACH ROW EXECUTE FUNCTION tc_append_only();
CREATE OR REPLACE TRIGGER tc_data_keys_no_truncate BEFORE TRUNCATE ON tc_data_keys FOR EACH STATEMENT EXECUTE FUNCTION tc_append_only();
CREATE OR REPLACE TRIGGER tc_data_keys_update BEFORE UPDATE ON tc_data_keys
    FOR EACH ROW EXECUTE FUNCTION tc_data_keys_update();
"""  # noqa: E501, S608 - one trigger a line, as pg_guards writes them; a constant
POSTGRES_GRANTS = "GRANT UPDATE ON tc_data_keys TO {role};\n"


def present(store: SQLStore) -> bool:
    if store.ph != "?":
        rows = store.query("SELECT COUNT(*) FROM information_schema.tables "
                           "WHERE table_name = ?", (TABLE,))
    else:
        rows = store.query("SELECT COUNT(*) FROM sqlite_master WHERE type = 'table' "
                           "AND name = ?", (TABLE,))
    return int(rows[0][0]) == 1


def ensure_schema(store: SQLStore) -> None:
    """A SQLite ledger made before the key table gets it (new ones have it from
    schema_sqlite); a PostgreSQL one must have been migrated by the owner role."""
    if present(store):
        return
    if store.ph != "?":
        raise LedgerError(f"the data key table {TABLE} is missing in this PostgreSQL ledger: "
                          f"run `timeclock-collector migrate` as the owner role")
    with store.transaction(0, what=f"creating {TABLE}") as tx:
        for stmt in SQLITE_STATEMENTS:
            tx.execute(stmt)


# -- subjects, periods, aad --------------------------------------------------------------------

def ledger_id(store: SQLStore) -> str:
    """The ledger's own random id (``meta`` key ``keyring``), made on first use: what the
    wrap's aad binds as the origin, so a wrapped key copied into another ledger, or a row
    from it, does not unwrap there."""
    rows = store.query("SELECT value FROM meta WHERE key = 'keyring'")
    if not rows:
        with store.transaction(0, what="recording the ledger's keyring id") as tx:
            tx.execute("INSERT INTO meta (key, value) VALUES ('keyring', ?) "
                       "ON CONFLICT DO NOTHING", ("ledger-" + secrets.token_hex(16),))
        rows = store.query("SELECT value FROM meta WHERE key = 'keyring'")
    return str(rows[0][0])


def in_use(store: SQLStore) -> bool:
    """Does the ledger hold data keys (then its bodies may be sealed)?"""
    return present(store) and bool(store.query(f"SELECT 1 FROM {TABLE} LIMIT 1"))  # noqa: S608 - constant table


def erased_subjects(store: SQLStore) -> set[str]:
    """The subjects a ``shred`` entry destroyed keys of (DESIGN.md §8.6), ``+N`` stripped."""
    if not present(store):
        return set()
    return {str(r[0]).split("+", 1)[0] for r in store.query(
        f"SELECT DISTINCT k.subject FROM {TABLE} k JOIN entries e ON e.idx = k.destroyed_idx "  # noqa: S608 - constant table
        "WHERE e.kind = 'shred'")}


_DAY_US = 86_400_000_000
_PERIODS: dict[int, str] = {}      # UTC day → its month (the append's hot path)
BLINDS_MAX = 65_536                # blind index tags kept per keyring


def period_of(ts_us: int) -> str:
    """The UTC month ``YYYY-MM`` of a device time in µs since the epoch."""
    day = ts_us // _DAY_US
    period = _PERIODS.get(day)
    if period is None:
        if len(_PERIODS) >= 4096:
            _PERIODS.clear()
        period = _PERIODS[day] = datetime.fromtimestamp(
            day * 86_400, tz=UTC).strftime("%Y-%m")
    return period


def wrap_aad(origin: str, subject: str, period: str, key_id: str) -> bytes:
    """The associated data a data key is wrapped with: domain, then the four fields, each
    UTF-8 and NUL-terminated (none may contain NUL)."""
    parts = (origin, subject, period, key_id)
    if any("\x00" in p for p in parts):
        raise KeyringError("a data key's origin, subject, period and id may not contain NUL")
    return _WRAP_DOMAIN + b"".join(p.encode() + b"\x00" for p in parts)


@dataclass(frozen=True, slots=True)
class KeyRow:
    """One row of ``tc_data_keys`` (``wrapped`` empty once destroyed)."""

    key_id: str
    subject: str
    period: str
    wrapped: bytes
    kek_id: str
    created_idx: int
    destroyed_idx: int | None

    @property
    def destroyed(self) -> bool:
        return self.destroyed_idx is not None


def _row(r: Sequence[Any]) -> KeyRow:
    return KeyRow(str(r[0]), str(r[1]), str(r[2]), bytes(r[3]), str(r[4]), int(r[5]),
                  None if r[6] is None else int(r[6]))


@dataclass(frozen=True, slots=True)
class DataKey:
    key_id: str
    key: bytes


class Keyring:
    """The data keys of one ledger under one KEK, with the bounded cache of unwrapped keys.

    Reads go through ``store``; a key is created inside the caller's write transaction
    (:meth:`data_key` with ``tx``), so it commits with the entry it encrypts or not at all."""

    def __init__(self, store: SQLStore, kek: Kek, *, origin: str | None = None,
                 cache_max: int = CACHE_MAX) -> None:
        if cache_max < 1:
            raise KeyringError(f"the data key cache must hold at least 1 key, got {cache_max}")
        ensure_schema(store)
        self.store, self.kek = store, kek
        self.origin = ledger_id(store) if origin is None else origin
        self._cache: OrderedDict[str, bytes] = OrderedDict()
        self._max = cache_max
        self._lock = threading.Lock()
        self._index_key: bytes | None = None
        self._subkeys: dict[str, bytes] = {}
        self._blinds: dict[tuple[str, str], str] = {}     # (purpose, value) → tag
        # (subject, period) → its key, as data_keys found the row alive in a write
        # transaction with stamp _live_stamp (Tx.stamp) and no destroy() since (_DESTROYS);
        # only rows read from the table: a key data_key creates is read again next time.
        self._live: dict[tuple[str, str], DataKey] = {}
        self._live_stamp: object | None = None
        self._live_destroys = 0

    # -- the cache --------------------------------------------------------------------------
    def _remember(self, key_id: str, key: bytes) -> None:
        with self._lock:
            self._cache[key_id] = key
            self._cache.move_to_end(key_id)
            while len(self._cache) > self._max:
                self._cache.popitem(last=False)

    def _cached(self, key_id: str) -> bytes | None:
        with self._lock:
            key = self._cache.get(key_id)
            if key is not None:
                self._cache.move_to_end(key_id)
            return key

    def forget(self, key_ids: Iterable[str]) -> None:
        """Drop keys from the cache (they were destroyed, here or by another collector)."""
        gone = set(key_ids)
        with self._lock:
            for k in gone:
                self._cache.pop(k, None)

    @property
    def cached(self) -> int:
        return len(self._cache)

    # -- unwrap -----------------------------------------------------------------------------
    def _unwrap(self, row: KeyRow) -> bytes:
        if row.destroyed:
            raise KeyDestroyedError(f"data key {row.key_id} ({row.subject}, {row.period}) was "
                                    f"destroyed by entry {row.destroyed_idx}")
        if row.kek_id != self.kek.kek_id:
            raise KeyringError(f"data key {row.key_id} is wrapped by KEK {row.kek_id!r}, not by "
                               f"the configured KEK {self.kek.kek_id!r} ([ledger] kek: "
                               f"configure the KEK that wrapped it until the keys are "
                               f"re-wrapped to the new one)")
        aad = wrap_aad(self.origin, row.subject, row.period, row.key_id)
        try:
            key = self.kek.unwrap(row.wrapped, aad)
        except (KekError, CryptoError, ValueError) as e:
            raise KeyringError(f"data key {row.key_id} does not unwrap under KEK "
                               f"{self.kek.kek_id!r} (another key with the same id, another "
                               f"ledger's origin, or an edited row): {e}") from e
        if len(key) != KEY_BYTES:
            raise KeyringError(f"data key {row.key_id} unwrapped to {len(key)} bytes under KEK "
                               f"{self.kek.kek_id!r}, not {KEY_BYTES}")
        return key

    def rows(self, key_ids: Iterable[str]) -> dict[str, KeyRow]:
        """The rows of ``key_ids`` (one query per 500)."""
        ids = sorted(set(key_ids))
        out: dict[str, KeyRow] = {}
        for i in range(0, len(ids), _IN_CHUNK):
            chunk = ids[i:i + _IN_CHUNK]
            for r in self.store.query(f"SELECT {_COLS} FROM {TABLE} WHERE key_id IN "  # noqa: S608 - placeholders only
                                      f"({', '.join('?' * len(chunk))})", chunk):
                out[str(r[0])] = _row(r)
        return out

    def keys(self, key_ids: Iterable[str], *, remember: bool = True
             ) -> dict[str, bytes | None]:
        """Unwrapped keys by id, None for a destroyed one; one query for every key not cached
        (an export page asks once for all its keys). An unknown id is a KeyringError.
        ``remember`` False: the keys unwrapped here are not added to the cache (a caller
        that keeps them itself: readers.prefetch_keys)."""
        want = set(key_ids)
        out: dict[str, bytes | None] = {}
        missing: list[str] = []
        for k in want:
            got = self._cached(k)
            if got is None:
                missing.append(k)
            else:
                out[k] = got
        if missing:
            found = self.rows(missing)
            for k in missing:
                row = found.get(k)
                if row is None:
                    raise KeyringError(f"no data key {k} in this ledger")
                if row.destroyed:
                    out[k] = None
                    continue
                key = self._unwrap(row)
                if remember:
                    self._remember(k, key)
                out[k] = key
        return out

    def key(self, key_id: str) -> bytes:
        """One unwrapped key; KeyDestroyedError if it was destroyed."""
        got = self._cached(key_id)
        if got is not None:
            return got
        found = self.rows([key_id])
        if key_id not in found:
            raise KeyringError(f"no data key {key_id} in this ledger")
        key = self._unwrap(found[key_id])
        self._remember(key_id, key)
        return key

    # -- create -----------------------------------------------------------------------------
    def data_key(self, tx: Tx, subject: str, period: str, *, idx: int) -> DataKey:
        """The live key of (subject, period), created in ``tx`` if there is none (``idx``:
        the first entry it covers). A destroyed key is never reused: data of an erased
        subject's month recorded after the erasure goes under the subject ``S+<shred idx>``
        (which a later erasure of S destroys too), never an exception on the append path."""
        rows = tx.rows(f"SELECT {_COLS} FROM {TABLE} WHERE subject = ? AND period = ?",  # noqa: S608 - constant columns
                       (subject, period))
        if rows:
            row = _row(rows[0])
            if row.destroyed:
                return self.data_key(tx, f"{subject}+{row.destroyed_idx}", period, idx=idx)
            key = self._cached(row.key_id) or self._unwrap(row)
        else:
            key = secrets.token_bytes(KEY_BYTES)
            key_id = "dk-" + secrets.token_hex(16)
            wrapped = self.kek.wrap(key, wrap_aad(self.origin, subject, period, key_id))
            tx.execute(f"INSERT INTO {TABLE} ({_COLS}) VALUES (?, ?, ?, ?, ?, ?, NULL)",  # noqa: S608 - constant columns
                       (key_id, subject, period, wrapped, self.kek.kek_id, idx))
            row = KeyRow(key_id, subject, period, wrapped, self.kek.kek_id, idx, None)
        # The row is always read in ``tx`` (one indexed query per subject and month of a
        # transaction, never per row): a key created by a transaction that rolled back is
        # never handed out again, only its cached bytes stay unused.
        self._remember(row.key_id, key)
        return DataKey(row.key_id, key)

    def data_keys(self, tx: Tx, first: dict[tuple[str, str], int]
                  ) -> dict[tuple[str, str], DataKey]:
        """:meth:`data_key` of every (subject, period) of ``first`` (→ the first entry it
        covers), read in ``tx`` with one query per period and 500 subjects instead of one per
        pair; what is absent or destroyed goes through :meth:`data_key`. A pair this store's
        connection found alive in an earlier transaction is not read again while nothing can
        have changed it (:meth:`_remembered`)."""
        out, remember = self._remembered(tx, first)
        by_period: dict[str, list[str]] = {}
        for subject, period in first:
            if (subject, period) not in out:
                by_period.setdefault(period, []).append(subject)
        for period, subjects in by_period.items():
            for i in range(0, len(subjects), 500):
                found = self._live_rows(tx, period, subjects[i:i + 500])
                out.update(found)
                if remember is not None:
                    remember.update(found)
        for pair, idx in first.items():
            if pair not in out:
                out[pair] = self.data_key(tx, pair[0], pair[1], idx=idx)
        return out

    def _remembered(self, tx: Tx, first: dict[tuple[str, str], int]
                    ) -> tuple[dict[tuple[str, str], DataKey],
                               dict[tuple[str, str], DataKey] | None]:
        """(the pairs of ``first`` in the memo of live keys, the memo to add the pairs read
        to — None when the store gives no stamp). The memo holds only keys read from the
        table alive; it is emptied when ``tx``'s stamp differs from the one it was filled
        under (another connection committed, a transaction of this connection did not, the
        connection was replaced: SQLStore.write_stamp) or a key was destroyed in this process
        since (through this very connection, which no stamp shows), and when it outgrows
        the cache's bound."""
        stamp = tx.stamp()
        live = self._live
        if stamp is None or stamp != self._live_stamp or _DESTROYS[0] != self._live_destroys \
                or len(live) + len(first) > self._max:
            live.clear()
            self._live_stamp, self._live_destroys = stamp, _DESTROYS[0]
        out = {pair: live[pair] for pair in first if pair in live}
        return out, (None if stamp is None else live)

    def _live_rows(self, tx: Tx, period: str, subjects: list[str]
                   ) -> dict[tuple[str, str], DataKey]:
        """The live keys of ``subjects`` in ``period`` (a destroyed or absent one is left
        out), read in ``tx``. The append's hot path: the rows of a batch's subjects are mostly
        cached, so their ids alone, and the cached keys taken in one pass under one lock; the
        full rows (the wrapped keys) only for the rest, in the same transaction."""
        out: dict[tuple[str, str], DataKey] = {}
        found = tx.rows(f"SELECT key_id, subject, destroyed_idx FROM {TABLE} "  # noqa: S608 - constant table, placeholders only
                        f"WHERE period = ? AND subject IN "
                        f"({', '.join('?' * len(subjects))})", (period, *subjects))
        misses: list[str] = []
        with self._lock:
            cache = self._cache
            for kid_, subject, destroyed in found:
                if destroyed is not None:
                    continue         # destroyed: data_key, the next key
                kid = str(kid_)
                key = cache.get(kid)
                if key is None:
                    misses.append(kid)
                else:
                    cache.move_to_end(kid)
                    out[(str(subject), period)] = DataKey(kid, key)
        if misses:
            rows = tx.rows(f"SELECT {_COLS} FROM {TABLE} WHERE key_id IN "  # noqa: S608 - constant columns, placeholders only
                           f"({', '.join('?' * len(misses))})", misses)
            for r in rows:
                row = _row(r)
                if row.destroyed:
                    continue         # as above
                key = self._unwrap(row)
                self._remember(row.key_id, key)
                out[(row.subject, period)] = DataKey(row.key_id, key)
        return out

    # -- the blind index and pseudonyms -------------------------------------------------------
    def index_key(self) -> bytes:
        """The key of the blind index (one per ledger; created on first use, in a transaction
        of its own: call it once outside any, as SQLStore.use_keyring does)."""
        if self._index_key is not None:
            return self._index_key
        rows = self.store.query(f"SELECT {_COLS} FROM {TABLE} WHERE subject = ? AND "  # noqa: S608 - constant columns
                                "period = ?", (INDEX_SUBJECT, INDEX_PERIOD))
        if rows:
            key = self._unwrap(_row(rows[0]))
        else:
            with self.store.transaction(0, what="creating the blind index key") as tx:
                key = self.data_key(tx, INDEX_SUBJECT, INDEX_PERIOD, idx=0).key
        self._index_key = key
        return key

    def blind(self, value: str, *, purpose: str = "credential", memo: bool = True) -> str:
        """HMAC-SHA256 of ``value`` under a key derived from the index key for ``purpose``,
        hex: equal values give equal tags (lookups by credential), the value never leaves.
        ``memo`` False: the tag is not remembered here (a caller with a memo of its own)."""
        memo_key = (purpose, value)
        tag = self._blinds.get(memo_key)
        if tag is not None:
            return tag
        sub = self._subkeys.get(purpose)
        if sub is None:
            sub = self._subkeys[purpose] = hmac.new(
                self.index_key(), b"timeclock blind index\x00" + purpose.encode(),
                hashlib.sha256).digest()
        tag = hmac.digest(sub, value.encode(), "sha256").hex()
        if not memo:
            return tag
        if len(self._blinds) >= BLINDS_MAX:    # a workforce's badges fit; a flood is bounded
            self._blinds.clear()
        self._blinds[memo_key] = tag
        return tag

    def derived_key(self, purpose: str) -> bytes:
        """A 32-byte key derived from the index key for ``purpose`` (same derivation as the
        blind index's sub-keys)."""
        self.blind("", purpose=purpose)
        return self._subkeys[purpose]

    def badge_subject(self, credential: str) -> str:
        """The subject of a punch whose badge resolves to nobody: a keyed pseudonym."""
        return "badge:" + self.blind(credential, purpose="subject")[:32]

    # -- destroy and rewrap --------------------------------------------------------------------
    def subject_keys(self, subject: str) -> list[KeyRow]:
        """Every key of ``subject`` (and of ``subject+N``, its data after an erasure)."""
        return [_row(r) for r in self.store.query(
            f"SELECT {_COLS} FROM {TABLE} WHERE subject = ? OR substr(subject, 1, ?) = ? "  # noqa: S608 - constant columns
            "ORDER BY period, key_id", (subject, len(subject) + 1, subject + "+"))]

    def destroy(self, tx: Tx, key_ids: Sequence[str], *, idx: int) -> None:
        """Blank the wrapped keys of ``key_ids`` under the shred or retention entry ``idx``
        (recorded earlier in ``tx``; the trigger refuses otherwise) and drop them from the
        cache. Already destroyed keys are left as they are."""
        for k in key_ids:
            tx.execute(f"UPDATE {TABLE} SET wrapped = ?, destroyed_idx = ? "  # noqa: S608 - constant table
                       "WHERE key_id = ? AND destroyed_idx IS NULL", (b"", idx, k))
        _DESTROYS[0] += 1       # every keyring's memo of live keys is void (data_keys)
        self.forget(key_ids)

    def rewrap(self, new_kek: Kek, *, now_us: int) -> int:
        """Wrap every live key under ``new_kek`` in one transaction and use it from now on;
        no body is read or written. Returns how many keys were rewrapped."""
        n = 0
        with self.store.transaction(now_us, what="rewrapping the data keys") as tx:
            for r in tx.rows(f"SELECT {_COLS} FROM {TABLE} WHERE destroyed_idx IS NULL "  # noqa: S608 - constant columns
                             "ORDER BY key_id"):
                row = _row(r)
                key = self._unwrap(row)
                aad = wrap_aad(self.origin, row.subject, row.period, row.key_id)
                tx.execute(f"UPDATE {TABLE} SET wrapped = ?, kek_id = ? WHERE key_id = ?",  # noqa: S608 - constant table
                           (new_kek.wrap(key, aad), new_kek.kek_id, row.key_id))
                n += 1
        self.kek = new_kek
        return n
