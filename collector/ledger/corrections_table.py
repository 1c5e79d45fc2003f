"""Reads and writes of ``tc_corrections``: the index of proposed, approved and rejected
corrections (the workflow and its rules are collector.records.corrections's).

The table is not the record: an approval's ``correction`` ledger entry is. ``before`` and
``after`` are stored as JSON text; rows come back decoded.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

from collector.ledger.sqlbase import SQLStore, Tx

_COLS = ("id, device, seq, original_idx, field, before_value, after_value, reason, note, "
         "editor, proposed_at, status, approver, decided_at, decision_note, correction_idx")


@dataclass(frozen=True, slots=True)
class Correction:
    id: str
    device: str
    seq: int
    original_idx: int
    field: str
    before: Any
    after: Any
    reason: str
    note: str
    editor: str
    proposed_at: int
    status: str                    # proposed | approved | rejected
    approver: str | None
    decided_at: int | None
    decision_note: str | None
    correction_idx: int | None

    def to_dict(self) -> dict[str, Any]:
        return {"id": self.id, "device": self.device, "seq": self.seq,
                "original_idx": self.original_idx, "field": self.field,
                "before": self.before, "after": self.after, "reason": self.reason,
                "note": self.note, "editor": self.editor, "proposed_at": self.proposed_at,
                "status": self.status, "approver": self.approver,
                "decided_at": self.decided_at, "decision_note": self.decision_note,
                "correction_idx": self.correction_idx}


@dataclass(frozen=True, slots=True)
class ApprovedRow:
    """An approved correction as the table indexes it (checked against the ledger by the
    caller)."""

    device: str
    seq: int
    field: str
    after: Any
    correction_idx: int
    id: str


def _row(r: tuple[Any, ...]) -> Correction:
    return Correction(str(r[0]), str(r[1]), int(r[2]), int(r[3]), str(r[4]), json.loads(r[5]),
                      json.loads(r[6]), str(r[7]), str(r[8]), str(r[9]), int(r[10]),
                      str(r[11]), r[12], None if r[13] is None else int(r[13]), r[14],
                      None if r[15] is None else int(r[15]))


def get(store: SQLStore, cid: str) -> Correction | None:
    rows = store.query(f"SELECT {_COLS} FROM tc_corrections WHERE id = ?",  # noqa: S608 - constant columns
                       (cid,))
    return _row(rows[0]) if rows else None


def find(store: SQLStore, *, status: str | None = None, device: str | None = None,
         seq: int | None = None, after: str | None = None, limit: int = 100
         ) -> list[Correction]:
    """Corrections matching every given filter, by id, after the id ``after``."""
    clauses: list[str] = []
    params: list[Any] = []
    for col, val in (("status", status), ("device", device), ("seq", seq)):
        if val is not None:
            clauses.append(f"{col} = ?")
            params.append(val)
    if after is not None:
        clauses.append("id > ?")
        params.append(after)
    where = (" WHERE " + " AND ".join(clauses)) if clauses else ""
    return [_row(r) for r in store.query(
        f"SELECT {_COLS} FROM tc_corrections{where} ORDER BY id LIMIT ?",  # noqa: S608 - values are parameters
        (*params, limit))]


def approved(store: SQLStore) -> list[ApprovedRow]:
    """Every approved correction, in the order of its ledger entry."""
    return [ApprovedRow(str(d), int(s), str(f), json.loads(a), int(cidx), str(cid))
            for d, s, f, a, cidx, cid in store.query(
                "SELECT device, seq, field, after_value, correction_idx, id "
                "FROM tc_corrections WHERE status = 'approved' ORDER BY correction_idx")]


def insert(tx: Tx, c: Correction) -> None:
    tx.execute(f"INSERT INTO tc_corrections ({_COLS}) VALUES "  # noqa: S608 - constant columns
               "(?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
               (c.id, c.device, c.seq, c.original_idx, c.field, json.dumps(c.before),
                json.dumps(c.after), c.reason, c.note, c.editor, c.proposed_at, c.status,
                c.approver, c.decided_at, c.decision_note, c.correction_idx))


def decide(tx: Tx, cid: str, *, status: str, approver: str, now_us: int, note: str,
           correction_idx: int | None) -> bool:
    """Set the decision of a still-proposed correction; False if it was not proposed."""
    return bool(tx.rows(
        "UPDATE tc_corrections SET status = ?, approver = ?, decided_at = ?, "
        "decision_note = ?, correction_idx = ? WHERE id = ? AND status = 'proposed' "
        "RETURNING id", (status, approver, now_us, note, correction_idx, cid)))


def present(store: SQLStore) -> bool:
    """Does the ledger have ``tc_corrections`` (tables.ensure_schema makes it)?"""
    if store.ph != "?":
        rows = store.query("SELECT COUNT(*) FROM information_schema.tables "
                           "WHERE table_name = 'tc_corrections'")
    else:
        rows = store.query("SELECT COUNT(*) FROM sqlite_master WHERE type = 'table' "
                           "AND name = 'tc_corrections'")
    return int(rows[0][0]) == 1


def delete_of_entries(tx: Tx, idxs: list[int]) -> int:
    """Delete the index rows (any status) of the punches ``idxs`` and of the correction
    entries ``idxs``: an erasure removed those bodies (collector.records.erasure), so the
    rows' before/after values, reasons and notes are the person's data left behind."""
    n = 0
    for i in range(0, len(idxs), 500):
        chunk = idxs[i:i + 500]
        marks = ", ".join("?" * len(chunk))
        n += len(tx.rows(f"SELECT id FROM tc_corrections WHERE original_idx IN ({marks}) "  # noqa: S608 - placeholders only
                         f"OR correction_idx IN ({marks})", (*chunk, *chunk)))
        tx.execute(f"DELETE FROM tc_corrections WHERE original_idx IN ({marks}) "  # noqa: S608 - placeholders only
                   f"OR correction_idx IN ({marks})", (*chunk, *chunk))
    return n
