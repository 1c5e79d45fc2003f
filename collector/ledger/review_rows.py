"""Typed reads for alert reviews and scheduled sign-offs (collector.records.reviews).

There is no projection table: the record is the chain (``alert`` and ``review`` entries,
docs/protocol.md §7.2), and these reads derive an alert's state and a period's sign-off from
it, on the store (``store.query``) or inside a write transaction (``tx.rows``, so a check and
the entry it allows are under the same chain-head lock).
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from typing import Any

from collector.ledger.sqlbase import to_bytes

Rows = Callable[[str, Sequence[Any]], list[tuple[Any, ...]]]
"""``store.query`` or ``tx.rows``: SQL with ``?`` placeholders → rows."""

_OF_KIND = ("SELECT e.idx, e.at, b.body FROM entries e LEFT JOIN bodies b ON b.idx = e.idx "
            "WHERE e.kind = ? AND e.at >= ? ORDER BY e.idx")
_ONE = "SELECT e.kind, e.at, b.body FROM entries e LEFT JOIN bodies b ON b.idx = e.idx " \
       "WHERE e.idx = ?"
_IN_WINDOW = ("SELECT idx FROM entries WHERE kind = ? AND at >= ? AND at < ? "
              "ORDER BY idx")
_FIRST = "SELECT at FROM entries WHERE idx = 0"


@dataclass(frozen=True, slots=True)
class KindRow:
    idx: int
    at: int
    body: bytes | None             # None once retention deleted it


def of_kind(rows: Rows, kind: str, *, since_at: int = 0) -> list[KindRow]:
    """Every ``kind`` entry recorded at or after ``since_at`` (µs), in idx order."""
    return [KindRow(int(i), int(a), to_bytes(b)) for i, a, b in rows(_OF_KIND, (kind, since_at))]


def alerts_named(rows: Rows, name: str) -> Iterator[dict[str, Any]]:
    """The body of every ``alert`` entry whose ``alert`` is ``name`` (unreadable or removed
    bodies skipped): what an overdue-review tick raised before a restart."""
    for r in of_kind(rows, "alert"):
        try:
            body = json.loads(r.body) if r.body is not None else None
        except ValueError:
            continue
        if isinstance(body, dict) and body.get("alert") == name:
            yield body


def entry(rows: Rows, idx: int) -> tuple[str, int, bytes | None] | None:
    """(kind, at, body) of entry ``idx``, or None when there is none."""
    found = rows(_ONE, (idx,))
    if not found:
        return None
    kind, at, body = found[0]
    return str(kind), int(at), to_bytes(body)


def idxs_in_window(rows: Rows, kind: str, first_us: int, until_us: int) -> list[int]:
    """The idx of every ``kind`` entry recorded in ``[first_us, until_us)``, ascending."""
    return [int(r[0]) for r in rows(_IN_WINDOW, (kind, first_us, until_us))]


def first_at(rows: Rows) -> int | None:
    """When the ledger's first entry was recorded (µs), None for an empty ledger."""
    found = rows(_FIRST, ())
    return int(found[0][0]) if found else None
