"""Typed reads of the chain and its projections for the API, records and access layers.

Every SQL text of the collector lives in collector.ledger; callers get rows as values.
"""

from __future__ import annotations

import functools
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from typing import Any

from collector.ledger.row_check import ENROLMENT_SQL, RowChecker
from collector.ledger.sqlbase import PunchQuery, PunchRow, SQLStore, to_bytes

IN_CHUNK = 500      # values per IN (...) list (SQLite allows ≥ 999 parameters)
_KIND_PAGE = ("SELECT e.idx, e.at, e.hash, e.body, b.body FROM entries e LEFT JOIN bodies b "
              "ON b.idx = e.idx WHERE e.kind = ? AND e.idx > ? ORDER BY e.idx LIMIT ?")


@dataclass(frozen=True, slots=True)
class KindEntry:
    idx: int
    at: int
    hash: str
    body: bytes | None             # None once retention deleted it


def entries_of_kind(store: SQLStore, kind: str, after: int, limit: int) -> list[KindEntry]:
    """At most ``limit`` entries of ``kind`` with idx > ``after``, in idx order."""
    return [KindEntry(int(idx), int(at), str(h), store.plain(idx, bh, to_bytes(body)))
            for idx, at, h, bh, body in store.query(_KIND_PAGE, (kind, after, limit))]


DAY_US = 86_400 * 1_000_000


def newest_idx_except(store: SQLStore, kind: str) -> int:
    """The idx of the newest entry whose kind is not ``kind`` (-1: none), walking back from
    the head (collector.api.console_cache: the entries since are page views)."""
    rows = store.query("SELECT idx FROM entries WHERE kind <> ? ORDER BY idx DESC LIMIT 1",
                       (kind,))
    return -1 if not rows else int(rows[0][0])


def newest_of_kinds(store: SQLStore, kinds: Iterable[str]) -> int:
    """The idx of the newest entry of one of ``kinds`` (-1: none; the kind index)."""
    ks = sorted(kinds)
    marks = ", ".join("?" * len(ks))
    rows = store.query(f"SELECT MAX(idx) FROM entries WHERE kind IN ({marks})", ks)  # noqa: S608 - placeholders only
    return -1 if not rows or rows[0][0] is None else int(rows[0][0])


def any_of_kinds(store: SQLStore, lo: int, hi: int, kinds: Iterable[str]) -> bool:
    """Whether an entry with ``lo`` <= idx < ``hi`` is of one of ``kinds`` (a range of the
    chain's primary key: the entries since a read)."""
    ks = sorted(kinds)
    if hi <= lo or not ks:
        return False
    marks = ", ".join("?" * len(ks))
    return bool(store.query(
        f"SELECT 1 FROM entries WHERE idx >= ? AND idx < ? AND kind IN ({marks}) LIMIT 1",  # noqa: S608 - placeholders only
        (lo, hi, *ks)))


def punch_seqs_between(store: SQLStore, lo: int, hi: int) -> list[tuple[str, int]]:
    """(device, seq) of the punches recorded at entries ``lo`` <= idx < ``hi``, by seq (the
    idx index: the punches since a read)."""
    if hi <= lo:
        return []
    rows = store.query("SELECT device, seq FROM punches WHERE idx >= ? AND idx < ? "
                       "ORDER BY seq", (lo, hi))
    return [(str(d), int(s)) for d, s in rows]


def device_seqs(store: SQLStore, device: str, below: int) -> Iterator[int]:
    """The recorded seqs of ``device`` at entries below ``below``, ascending (its key
    range)."""
    for (seq,) in store.query("SELECT seq FROM punches WHERE device = ? AND idx < ? "
                              "ORDER BY seq", (device, below)):
        yield int(seq)


def punch_days(store: SQLStore, since: int, until: int, sites: frozenset[str] | None
               ) -> dict[int, int]:
    """UTC day number (ts // 86,400 s) → recorded punches with ``since`` <= ts < ``until``
    (at ``sites``; None: anywhere), counted by the database over the projection's ts index,
    for a plot: the rows are not checked against their entries one by one and none leaves
    (``verify`` checks the projection)."""
    if sites is not None and not sites:
        return {}
    where = "" if sites is None else f" AND site IN ({', '.join('?' * len(sites))})"
    rows = store.query(f"SELECT ts / {DAY_US} AS d, COUNT(*) FROM punches "  # noqa: S608 - placeholders and a constant
                       f"WHERE ts >= ? AND ts < ?{where} GROUP BY ts / {DAY_US}",
                       (since, until, *sorted(sites or ())))
    return {int(d): int(n) for d, n in rows}


def idxs_of_kind(store: SQLStore, kind: str) -> set[int]:
    """The idx of every entry of ``kind`` (one scan of the chain)."""
    return {int(r[0]) for r in store.query("SELECT idx FROM entries WHERE kind = ?", (kind,))}


def removed_of_kind(store: SQLStore, kind: str) -> set[int]:
    """The idx of every ``kind`` entry whose body a ``retention`` or ``shred`` entry removed
    (no body, and inside a ``retained`` range of such an entry: the triggers allow no other
    way for a body to go)."""
    return {int(r[0]) for r in store.query(
        "SELECT e.idx FROM entries e WHERE e.kind = ? AND NOT EXISTS (SELECT 1 FROM bodies b "
        "WHERE b.idx = e.idx) AND EXISTS (SELECT 1 FROM retained r JOIN entries s ON s.idx = "
        "r.retention_idx AND s.kind IN ('retention', 'shred') WHERE e.idx BETWEEN "
        "r.first_idx AND r.last_idx)", (kind,))}


def kind_of(store: SQLStore, idx: int) -> str | None:
    rows = store.query("SELECT kind FROM entries WHERE idx = ?", (idx,))
    return str(rows[0][0]) if rows else None


def bodies_of_kind(store: SQLStore, kind: str, idxs: Iterable[int]
                   ) -> Iterator[tuple[int, bytes]]:
    """(idx, body) of those ``idxs`` that are ``kind`` entries and still have a body."""
    wanted = sorted(idxs)
    for i in range(0, len(wanted), IN_CHUNK):
        chunk = wanted[i:i + IN_CHUNK]
        sql = ("SELECT b.idx, e.body, b.body FROM bodies b JOIN entries e ON e.idx = b.idx "  # noqa: S608 - only "?" placeholders are joined in
               "WHERE e.kind = ? AND b.idx IN (" + ", ".join("?" * len(chunk)) + ")")
        for idx, bh, raw in store.query(sql, (kind, *chunk)):
            plain = store.plain(idx, bh, bytes(raw))
            if plain is not None:      # None: its data key was destroyed (an erasure)
                yield int(idx), plain


@dataclass(frozen=True, slots=True)
class PunchFields:
    """The recorded (original) values of a punch that a correction may change."""

    idx: int
    action: str
    ts: int


def punch_fields(store: SQLStore, device: str, seq: int) -> PunchFields | None:
    rows = store.query("SELECT idx, action, ts FROM punches WHERE device = ? AND seq = ?",
                       (device, seq))
    return PunchFields(int(rows[0][0]), str(rows[0][1]), int(rows[0][2])) if rows else None


def punch_page(store: SQLStore, query: PunchQuery, *, limit: int,
               credential: str | None = None, after: tuple[int, str, int] | None = None
               ) -> list[PunchRow]:
    """One page of ``query`` (ordered by (ts, device, seq)), after the cursor ``after``."""
    tag = None if credential is None else store.blind_credential(credential)
    text, params = query.sql("?", credential=credential, credential_tag=tag, after=after,
                             limit=limit)
    check = RowChecker(functools.partial(_enrolment, store), store.plain_opener(),
                       store.blind_credential)
    return list(check.rows(store.query(text, params)))


def punch_row(store: SQLStore, device: str, seq: int) -> PunchRow | None:
    """The payroll row of one recorded punch."""
    text, params = PunchQuery(device=device).sql("?", seq=seq)
    rows = store.query(text, params)
    return next(RowChecker(functools.partial(_enrolment, store), store.plain,
                           store.blind_credential).rows(rows), None)


def _enrolment(store: SQLStore, device: str) -> tuple[Any, Any] | None:
    """For collector.ledger.row_check: the device's enrolment entry body hash and body."""
    rows = store.query(ENROLMENT_SQL, (device,))
    return rows[0] if rows else None
