"""Extra read-only views of a store for exports that read in several processes.

A payroll export over a large ledger is split by device time into chunks that worker
processes check and format side by side (collector.records.exports). A worker is a forked
child; it must never use the parent's database connection (neither SQLite's nor libpq's
survives a fork), so it opens its own store on the same database with the same KEK:
:func:`fresh_reader`. A KEK that lives in a PKCS#11 token is a logged-in session of the
parent, which a child cannot use: :func:`forkable` says no and the export runs in one
process.
"""

from __future__ import annotations

import datetime as dt
import itertools
from typing import Any

from collector.ledger.body_crypto import RUN_KEYS_MAX
from collector.ledger.kek import FileKek
from collector.ledger.keyring import TABLE as KEYS_TABLE
from collector.ledger.keyring import Keyring, period_of
from collector.ledger.postgres import PostgresStore
from collector.ledger.sqlbase import PunchQuery, SQLStore
from collector.ledger.sqlite import SQLiteStore, connect


def forkable(store: SQLStore) -> bool:
    """Can a forked child open this store again by itself (a SQLite file or a PostgreSQL
    DSN, and no KEK or one held in memory)?"""
    if not isinstance(store, SQLiteStore | PostgresStore):
        return False
    return store.sealer is None or isinstance(store.sealer.ring.kek, FileKek)


READER_CACHE_KIB = 512     # SQLite page cache of a reader's connections (default 2 MiB each)
# ... plus this much per enrolled clock for the connection that reads the punches (see
# reader_cache_kib), up to READER_CACHE_MAX_KIB.
CACHE_KIB_PER_DEVICE = 12
READER_CACHE_MAX_KIB = 65_536
PREFETCH_BATCH = 500        # data keys read and unwrapped at a time (bounded transient memory)


def fresh_reader(store: SQLStore, *, cache_max: int = RUN_KEYS_MAX) -> SQLStore:
    """A new store object on ``store``'s database, with its own connection and, on a keyed
    ledger, a keyring under the same KEK (for a child process: see the module docstring)
    whose cache holds ``cache_max`` unwrapped data keys: a worker reads chunk after chunk,
    each its own read run (body_crypto.BodySealer.run_opener), and unwraps each key once
    for all of them. A SQLite reader's connections keep a page cache of READER_CACHE_KIB:
    an export reads the ts index, punches, entries and bodies in one pass, and only the
    b-trees' inner pages are met again (a worker's private memory, not its speed)."""
    fresh: SQLStore
    if isinstance(store, SQLiteStore):
        fresh = SQLiteStore(store.path, cache_kib=READER_CACHE_KIB)
        fresh.cache_kib = reader_cache_kib(fresh)     # the connections it opens from now on
    elif isinstance(store, PostgresStore):
        fresh = PostgresStore(store.dsn)
    else:
        raise TypeError(f"{type(store).__name__} cannot be opened again")
    if store.sealer is not None:
        ring = store.sealer.ring
        fresh.use_keyring(Keyring(fresh, ring.kek, origin=ring.origin, cache_max=cache_max))
    return fresh


def reader_cache_kib(store: SQLStore) -> int:
    """The page cache (KiB) for a reader's connection that reads punches in device-time
    order: READER_CACHE_KIB and CACHE_KIB_PER_DEVICE per enrolled clock. The ``punches``
    table is stored by (device, seq) and entries and bodies by idx, so rows in device-time
    order come from one region of each per clock whose punches interleave in time (clocks
    publish their own batches): about a leaf page of each per clock is met again and again.
    A cache smaller than that reads every page again for each of its rows (a 1M-row export
    of 50 clocks: 3.3 million reads of 4 KiB instead of 0.25 million; bench/export.py
    --payroll); pages are only held as they are read."""
    ((n,),) = store.query("SELECT COUNT(*) FROM devices")
    return min(READER_CACHE_MAX_KIB, READER_CACHE_KIB + CACHE_KIB_PER_DEVICE * int(n))


def prefetch_keys(store: SQLStore, query: PunchQuery, done: set[str],
                  run_keys: dict[bytes, bytes | None] | None = None) -> int:
    """Unwrap, in batches, the live data keys of every month ``query``'s device times span
    (DESIGN.md §8.6: a body's key is its subject's for the UTC month of its device time)
    into the keyring cache of a :func:`fresh_reader` — or, given a read run's key map
    (``run_keys``: body_crypto.BodySealer.run_opener's), into that map alone, so that a
    worker holds each key once —, leaving out the months in ``done`` (then added to it).
    An export worker does this before each chunk: one query per PREFETCH_BATCH keys
    instead of one query per key its rows meet. Returns the keys unwrapped; 0 on an unkeyed
    ledger or when the months hold more keys than the cache (the rows then unwrap their
    own)."""
    if store.sealer is None:
        return 0
    ring = store.sealer.ring
    since, until = query.since, query.until
    if since is None or until is None:
        low, high = store.query("SELECT MIN(ts), MAX(ts) FROM punches")[0]
        if low is None:
            return 0
        since = int(low) if since is None else since
        until = int(high) + 1 if until is None else until
    months: list[str] = []
    day = dt.datetime.fromtimestamp(since // 1_000_000, dt.UTC).date().replace(day=1)
    last = period_of(max(since, until - 1))
    while (month := f"{day.year:04d}-{day.month:02d}") <= last and len(months) < 1200:
        if month not in done:
            months.append(month)
        day = (day + dt.timedelta(days=32)).replace(day=1)
    if not months:
        return 0
    done.update(months)
    ids = _key_ids(store, months, live_only=True)
    if len(ids) > RUN_KEYS_MAX:      # fresh_reader's cache
        return 0
    # In batches: the key rows and their unwrapping are transient, the cache is what stays.
    n = 0
    for i in range(0, len(ids), PREFETCH_BATCH):
        got = ring.keys(ids[i:i + PREFETCH_BATCH], remember=run_keys is None)
        if run_keys is not None:
            run_keys.update((k.encode("ascii", "replace"), v) for k, v in got.items())
        n += len(got)
    return n


def _key_ids(store: SQLStore, months: list[str], *, live_only: bool) -> list[str]:
    """The ids of the data keys of ``months`` (only those not destroyed with ``live_only``)."""
    live = "destroyed_idx IS NULL AND " if live_only else ""
    return [str(r[0]) for r in store.query(
        f"SELECT key_id FROM {KEYS_TABLE} WHERE {live}period IN "  # noqa: S608 - constant text, placeholders only
        f"({', '.join([store.ph] * len(months))})", months)]


def month_end(month: str) -> int:
    """µs since the epoch of the first instant after UTC month ``month`` ("YYYY-MM")."""
    year, mon = int(month[:4]), int(month[5:7])
    first = dt.datetime(year + mon // 12, mon % 12 + 1, 1, tzinfo=dt.UTC)
    return int(first.timestamp()) * 1_000_000


def forget_months(store: SQLStore, run_keys: dict[bytes, bytes | None], done: set[str],
                  before: int | None) -> int:
    """Drop the data keys of every month in ``done`` that ends at or before ``before`` from a
    read run's key map (``run_keys``: body_crypto.BodySealer.run_opener's) and the keyring
    cache, and the month from ``done``; returns the key ids dropped.

    An export worker reads its chunks in device-time order, so once a chunk starts after a
    month's end no later chunk of its own meets that month's keys (DESIGN.md §8.6: a body's
    key is its subject's for the UTC month of its device time): the worker's private memory
    then holds about one month of keys, not every month it has read. Should a later read
    meet one again, it is unwrapped again (the opener falls back to the keyring), so this
    bounds memory and never changes what opens."""
    if store.sealer is None or before is None:
        return 0
    ended = sorted(m for m in done if month_end(m) <= before)
    if not ended:
        return 0
    done.difference_update(ended)
    ids = _key_ids(store, ended, live_only=False)
    for key_id in ids:
        run_keys.pop(key_id.encode("ascii", "replace"), None)
    store.sealer.ring.forget(ids)
    return len(ids)


def ts_splits(store: SQLStore, query: PunchQuery, every: int) -> list[int]:
    """Device times that cut ``query``'s punches into runs of about ``every`` rows, in
    order and distinct (from the ts index alone: the site, device and retention filters
    are left out, so a run may hold fewer rows)."""
    if every < 1:
        raise ValueError(f"every must be at least 1, got {every}")
    clauses, params = [], []
    for op, val in ((">=", query.since), ("<", query.until)):
        if val is not None:
            clauses.append(f"ts {op} {store.ph}")
            params.append(val)
    where = (" WHERE " + " AND ".join(clauses)) if clauses else ""
    cuts: list[Any]
    if isinstance(store, SQLiteStore):
        # Every row's ts comes over the index; islice keeps one in ``every`` without a
        # Python step for the others. Its own read-only connection, like punch_rows.
        conn = connect(store.path, readonly=True, cache_kib=READER_CACHE_KIB)
        try:
            cur = conn.execute(f"SELECT ts FROM punches{where} ORDER BY ts", params)  # noqa: S608 - only placeholders are formatted in
            cuts = [r[0] for r in itertools.islice(cur, every, None, every)]
        finally:
            conn.close()
    else:
        rows = store.query(
            f"SELECT ts FROM (SELECT ts, ROW_NUMBER() OVER (ORDER BY ts) AS rn FROM punches"  # noqa: S608 - only placeholders are formatted in
            f"{where}) AS w WHERE rn > 1 AND MOD(rn - 1, {store.ph}) = 0 ORDER BY ts",
            (*params, every))
        cuts = [r[0] for r in rows]
    out: list[int] = []
    for ts in cuts:
        if not out or int(ts) > out[-1]:
            out.append(int(ts))
    return out
