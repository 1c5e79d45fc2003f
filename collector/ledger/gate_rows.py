"""Typed reads for request-time authorisation (collector.access.gates): the entries of some
kinds appended after an idx, read by primary-key range so each request reads only what was
appended since the previous one (no index on ``kind`` is needed)."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from collector.ledger.review_rows import Rows
from collector.ledger.sqlbase import to_bytes

_HEAD = "SELECT MAX(idx) FROM entries"


@dataclass(frozen=True, slots=True)
class KindRow:
    idx: int
    at: int
    kind: str
    body: bytes | None


def head(rows: Rows) -> int:
    """The largest idx of the ledger (-1 when empty)."""
    found = rows(_HEAD, ())
    return -1 if not found or found[0][0] is None else int(found[0][0])


def kinds_between(rows: Rows, kinds: Sequence[str], after: int, upto: int) -> list[KindRow]:
    """Entries of ``kinds`` with ``after < idx <= upto``, in idx order."""
    marks = ", ".join("?" for _ in kinds)
    sql = ("SELECT e.idx, e.at, e.kind, b.body FROM entries e LEFT JOIN bodies b "  # noqa: S608 - only placeholders are interpolated
           f"ON b.idx = e.idx WHERE e.idx > ? AND e.idx <= ? AND e.kind IN ({marks}) "
           "ORDER BY e.idx")
    return [KindRow(int(i), int(a), str(k), to_bytes(b))
            for i, a, k, b in rows(sql, (after, upto, *kinds))]
