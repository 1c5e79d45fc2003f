"""Corrections of punches as amendments (CONTROLS.md D6): propose, approve or reject.

The original punch is never touched. A proposal is a row in ``tc_corrections`` and an
``access`` ledger entry; an approval appends a ``correction`` ledger entry whose body
references the original punch's ledger idx (the shape wire.audit checks):

    {"original_idx": n, "device", "seq", "field": "action"|"ts", "before", "after", "reason",
     "note", "editor", "approver", "proposal", "proposed_at", "approved_at"}

Invariants:
- the editor never approves or rejects their own proposal (:class:`SoDError`, recorded);
- an approval applies only if the value it was proposed against is still the effective
  value (otherwise :class:`CorrectionConflictError`: a stale proposal must be rejected);
- the effective value of a field is the ``after`` of its latest approved correction (by
  ledger idx), else the original; exports show both, with the correction's idx.
"""

from __future__ import annotations

import json
import secrets
from dataclasses import dataclass
from typing import Any

from collector import CollectorError
from collector.access.principals import SoDError, ensure_schema, read, transaction
from collector.ledger.sqlbase import SQLStore
from wire.punch import ACTIONS

FIELDS = ("action", "ts")
REASONS: dict[str, str] = {
    "wrong-action": "the employee pressed the wrong action (in/out/break)",
    "clock-error": "the device clock was wrong (unsynced, skewed, reset)",
    "device-fault": "the reader or device misbehaved",
    "employee-request": "the employee asked for it, with evidence",
    "supervisor-attestation": "a supervisor attests the actual time",
}
MAX_NOTE = 500
MAX_TS = 2**53 - 1
STATUSES = ("proposed", "approved", "rejected")


class CorrectionError(CollectorError):
    """A correction request is invalid (unknown punch, field, reason or value)."""


class CorrectionNotFoundError(CorrectionError):
    """No such punch or correction."""


class CorrectionIntegrityError(CorrectionError):
    """The corrections table disagrees with the ``correction`` entry it names in the ledger."""


class CorrectionConflictError(CorrectionError):
    """The correction no longer fits the punch's current value or was already decided."""


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
    status: str
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

    def entry_body(self, approver: str, approved_at: int) -> dict[str, Any]:
        """The ``correction`` ledger entry's body."""
        return {"original_idx": self.original_idx, "device": self.device, "seq": self.seq,
                "field": self.field, "before": self.before, "after": self.after,
                "reason": self.reason, "note": self.note, "editor": self.editor,
                "approver": approver, "proposal": self.id, "proposed_at": self.proposed_at,
                "approved_at": approved_at}


@dataclass(frozen=True, slots=True)
class Applied:
    """The effective value of one corrected field and the entry that set it."""

    value: Any
    correction_idx: int
    proposal: str

    def to_dict(self) -> dict[str, Any]:
        return {"value": self.value, "correction_idx": self.correction_idx,
                "proposal": self.proposal}


_COLS = ("id, device, seq, original_idx, field, before_value, after_value, reason, note, "
         "editor, proposed_at, status, approver, decided_at, decision_note, correction_idx")


def _row(r: tuple[Any, ...]) -> Correction:
    return Correction(str(r[0]), str(r[1]), int(r[2]), int(r[3]), str(r[4]), json.loads(r[5]),
                      json.loads(r[6]), str(r[7]), str(r[8]), str(r[9]), int(r[10]),
                      str(r[11]), r[12], None if r[13] is None else int(r[13]), r[14],
                      None if r[15] is None else int(r[15]))


def check_value(field: str, value: Any) -> Any:
    if field == "action":
        if not isinstance(value, str) or value not in ACTIONS:
            raise CorrectionError(f"after: action must be one of {', '.join(sorted(ACTIONS))}")
    elif field == "ts":
        if not isinstance(value, int) or isinstance(value, bool) or not 0 <= value <= MAX_TS:
            raise CorrectionError("after: ts must be an integer (µs since the epoch, UTC)")
    else:
        raise CorrectionError(f"field must be one of {', '.join(FIELDS)}")
    return value


class Corrections:
    """The correction workflow over one ledger store (tables from collector.access.principals)."""

    def __init__(self, store: SQLStore) -> None:
        ensure_schema(store)
        self.store = store

    # -- reads ------------------------------------------------------------------------------
    def get(self, cid: str) -> Correction:
        rows = read(self.store, f"SELECT {_COLS} FROM tc_corrections WHERE id = ?",  # noqa: S608 - constant columns
                    (cid,))
        if not rows:
            raise CorrectionNotFoundError(f"no correction {cid[:40]!r}")
        return _row(rows[0])

    def find(self, *, status: str | None = None, device: str | None = None,
             seq: int | None = None, after: str | None = None,
             limit: int = 100) -> list[Correction]:
        clauses, params = [], []
        for col, val in (("status", status), ("device", device), ("seq", seq)):
            if val is not None:
                clauses.append(f"{col} = ?")
                params.append(val)
        if after is not None:
            clauses.append("id > ?")
            params.append(after)
        where = (" WHERE " + " AND ".join(clauses)) if clauses else ""
        return [_row(r) for r in read(
            self.store, f"SELECT {_COLS} FROM tc_corrections{where} ORDER BY id LIMIT ?",  # noqa: S608 - values are parameters
            (*params, limit))]

    def applied(self, pairs: set[tuple[str, int]] | None = None
                ) -> dict[tuple[str, int], dict[str, Applied]]:
        """Effective corrected fields per (device, seq); all of them when ``pairs`` is None.

        The table is only an index: each value is checked against the ``correction`` ledger
        entry it names, so an edited table row cannot change what an export shows."""
        rows = read(self.store, "SELECT device, seq, field, after_value, correction_idx, id "
                                "FROM tc_corrections WHERE status = 'approved' "
                                "ORDER BY correction_idx")
        out: dict[tuple[str, int], dict[str, Applied]] = {}
        for device, seq, fld, after, cidx, cid in rows:
            key = (str(device), int(seq))
            if pairs is not None and key not in pairs:
                continue
            out.setdefault(key, {})[str(fld)] = Applied(json.loads(after), int(cidx), str(cid))
        self._check_against_ledger(out)
        return out

    def applied_complete(self) -> dict[tuple[str, int], dict[str, Applied]]:
        """:meth:`applied` for all punches, also proving the table lost no approved correction:
        the ledger's ``correction`` entries and the table's approved rows must be the same
        set. One scan of the chain: for exports, which read everything anyway."""
        out = self.applied()
        in_table = {a.correction_idx for fields in out.values() for a in fields.values()}
        in_ledger = {int(r[0]) for r in read(self.store, "SELECT idx FROM entries "
                                                         "WHERE kind = 'correction'")}
        missing = sorted(in_ledger - in_table)
        if missing:
            raise CorrectionIntegrityError(
                f"ledger correction entr{'y' if len(missing) == 1 else 'ies'} "
                f"{', '.join(map(str, missing[:10]))} {'has' if len(missing) == 1 else 'have'} "
                f"no approved row in the corrections table (rows were deleted outside "
                f"timeclock; the ledger is authoritative): refusing to export without them")
        return out

    def _check_against_ledger(self, applied: dict[tuple[str, int], dict[str, Applied]]) -> None:
        wanted = {a.correction_idx: (key, fld, a) for key, fields in applied.items()
                  for fld, a in fields.items()}
        idxs = sorted(wanted)
        for i in range(0, len(idxs), 500):
            chunk = idxs[i:i + 500]
            sql = ("SELECT b.idx, b.body FROM bodies b JOIN entries e ON e.idx = b.idx "  # noqa: S608 - only "?" placeholders are joined in
                   "WHERE e.kind = 'correction' AND b.idx IN (" + ", ".join("?" * len(chunk)) + ")")
            for idx, raw in read(self.store, sql, chunk):
                (device, seq), fld, a = wanted.pop(int(idx))
                body = json.loads(bytes(raw))
                if (body.get("device"), body.get("seq"), body.get("field"),
                        body.get("after")) != (device, seq, fld, a.value):
                    raise CorrectionIntegrityError(
                        f"correction {a.proposal}: the corrections table says {device}#{seq} "
                        f"{fld} = {a.value!r}, ledger entry {idx} says otherwise; the table "
                        f"was altered outside timeclock (the ledger is authoritative)")
        # What is left names no correction entry with a body: retention may have deleted it
        # (then the table row is all that is left), or the idx is not a correction at all.
        for idx, (_, _, a) in wanted.items():
            kind = read(self.store, "SELECT kind FROM entries WHERE idx = ?", (idx,))
            if not kind or kind[0][0] != "correction":
                raise CorrectionIntegrityError(
                    f"correction {a.proposal}: the corrections table names ledger entry {idx}, "
                    f"which is not a correction entry (the table was altered)")

    def _original(self, device: str, seq: int) -> tuple[int, dict[str, Any]]:
        rows = read(self.store, "SELECT idx, action, ts FROM punches WHERE device = ? AND "
                                "seq = ?", (device, seq))
        if not rows:
            raise CorrectionNotFoundError(f"no recorded punch {device}#{seq}")
        idx, action, ts = rows[0]
        return int(idx), {"action": str(action), "ts": int(ts)}

    def current(self, device: str, seq: int, field: str) -> tuple[int, Any]:
        """(original ledger idx, effective value of ``field``) of a recorded punch."""
        idx, orig = self._original(device, seq)
        fixed = self.applied({(device, seq)}).get((device, seq), {})
        return idx, fixed[field].value if field in fixed else orig[field]

    # -- workflow ---------------------------------------------------------------------------
    def propose(self, *, device: str, seq: int, field: str, after: Any, reason: str,
                editor: str, now_us: int, note: str = "", before: Any = None) -> Correction:
        if field not in FIELDS:
            raise CorrectionError(f"field must be one of {', '.join(FIELDS)}")
        if reason not in REASONS:
            raise CorrectionError(f"reason must be one of {', '.join(REASONS)}")
        if len(note) > MAX_NOTE:
            raise CorrectionError(f"note: at most {MAX_NOTE} characters")
        check_value(field, after)
        idx, cur = self.current(device, seq, field)
        if before is not None and before != cur:
            raise CorrectionConflictError(f"before: the punch's current {field} is {cur!r}, "
                                          f"not {before!r}")
        if after == cur:
            raise CorrectionError(f"after: {field} is already {cur!r}")
        c = Correction("cor-" + secrets.token_hex(8), device, seq, idx, field, cur, after,
                       reason, note, editor, now_us, "proposed", None, None, None, None)
        with transaction(self.store, now_us) as tx:
            tx.x(f"INSERT INTO tc_corrections ({_COLS}) VALUES "  # noqa: S608 - constant columns
                 "(?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                 (c.id, device, seq, idx, field, json.dumps(cur), json.dumps(after), reason,
                  note, editor, now_us, "proposed", None, None, None, None))
            tx.record("access", {"type": "correction", "action": "propose", "actor": editor,
                                 "at": now_us, "proposal": c.id, "original_idx": idx,
                                 "device": device, "seq": seq, "field": field,
                                 "before": cur, "after": after, "reason": reason})
        return c

    def decide(self, cid: str, *, approve: bool, approver: str, now_us: int,
               note: str = "") -> Correction:
        """Approve (appends the ``correction`` entry) or reject a proposal."""
        if len(note) > MAX_NOTE:
            raise CorrectionError(f"note: at most {MAX_NOTE} characters")
        c = self.get(cid)
        action = "approve" if approve else "reject"
        if c.editor == approver:
            err = SoDError(f"segregation of duties: {approver} proposed correction {cid} and "
                           f"may not {action} it; another principal with hr.approve must")
            with transaction(self.store, now_us) as tx:
                tx.record("access", {"type": "correction", "action": action, "actor": approver,
                                     "at": now_us, "proposal": cid, "outcome": "refused",
                                     "error": str(err)})
            raise err
        if c.status != "proposed":
            raise CorrectionConflictError(f"correction {cid} is already {c.status}")
        with transaction(self.store, now_us) as tx:
            cidx = None
            if approve:
                _, cur = self.current(c.device, c.seq, c.field)
                if cur != c.before:
                    raise CorrectionConflictError(
                        f"correction {cid} was proposed against {c.field} = {c.before!r}, "
                        f"but it is now {cur!r}: reject it and propose again")
                cidx = tx.record("correction", c.entry_body(approver, now_us))
            else:
                tx.record("access", {"type": "correction", "action": "reject",
                                     "actor": approver, "at": now_us, "proposal": cid,
                                     "outcome": "done"})
            n = tx.rows("UPDATE tc_corrections SET status = ?, approver = ?, decided_at = ?, "
                        "decision_note = ?, correction_idx = ? WHERE id = ? AND status = "
                        "'proposed' RETURNING id",
                        ("approved" if approve else "rejected", approver, now_us, note, cidx,
                         cid))
            if not n:
                raise CorrectionConflictError(f"correction {cid} was decided concurrently")
        return self.get(cid)
