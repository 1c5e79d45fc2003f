"""Corrections of punches as amendments (CONTROLS.md D6): propose, approve or reject.

The original punch is never touched. A proposal is a row in ``tc_corrections`` and an
``access`` ledger entry; an approval appends a ``correction`` ledger entry whose body
references the original punch's ledger idx (the shape wire.audit checks):

    {"original_idx": n, "device", "seq", "field": "action"|"ts", "before", "after", "reason",
     "note", "editor", "approver", "proposal", "proposed_at", "approved_at"}

Invariants:
- the editor never approves or rejects their own proposal (:class:`SoDError`, recorded);
- three persons (wire.grants.three_person_violation): the subject (the employee whose badge
  it was at punch time), the editor and the approver are different people, compared by
  employee id where the caller says who the principals are, by principal name otherwise; an
  employee's own dispute (reason ``employee-dispute``) is the one proposal whose editor is
  its subject, and it is decided by someone else. A refusal is an ``access`` entry with
  ``"outcome": "refused"`` and nothing else is written;
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

from collector import CollectorError, SoDError
from collector.ledger import corrections_table, queries
from collector.ledger.corrections_table import Correction
from collector.ledger.sqlbase import SQLStore
from collector.ledger.tables import ensure_schema
from wire.grants import DISPUTE_REASON, three_person_violation
from wire.punch import ACTIONS

FIELDS = ("action", "ts")
REASONS: dict[str, str] = {
    "wrong-action": "the employee pressed the wrong action (in/out/break)",
    "clock-error": "the device clock was wrong (unsynced, skewed, reset)",
    "device-fault": "the reader or device misbehaved",
    "employee-request": "the employee asked for it, with evidence",
    "supervisor-attestation": "a supervisor attests the actual time",
    DISPUTE_REASON: "the employee disputes their own punch (raised by the employee with "
                    "employee.self; HR decides)",
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


def entry_body(c: Correction, approver: str, approved_at: int,
               subject: str | None = None) -> dict[str, Any]:
    """The ``correction`` ledger entry's body approving ``c`` (``subject``: the employee
    whose punch it is, when the directory knows)."""
    body = {"original_idx": c.original_idx, "device": c.device, "seq": c.seq,
            "field": c.field, "before": c.before, "after": c.after, "reason": c.reason,
            "note": c.note, "editor": c.editor, "approver": approver, "proposal": c.id,
            "proposed_at": c.proposed_at, "approved_at": approved_at}
    if subject is not None:
        body["subject"] = subject
    return body


@dataclass(frozen=True, slots=True)
class Persons:
    """Who the people of one correction are (employee ids; None: not known / not linked)."""

    subject: str | None = None
    editor: str | None = None
    approver: str | None = None


@dataclass(frozen=True, slots=True)
class Applied:
    """The effective value of one corrected field and the entry that set it."""

    value: Any
    correction_idx: int
    proposal: str

    def to_dict(self) -> dict[str, Any]:
        return {"value": self.value, "correction_idx": self.correction_idx,
                "proposal": self.proposal}


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
    """The correction workflow over one ledger store (table: collector.ledger.corrections_table)."""

    def __init__(self, store: SQLStore) -> None:
        ensure_schema(store)
        self.store = store

    # -- reads ------------------------------------------------------------------------------
    def get(self, cid: str) -> Correction:
        c = corrections_table.get(self.store, cid)
        if c is None:
            raise CorrectionNotFoundError(f"no correction {cid[:40]!r}")
        return c

    def find(self, *, status: str | None = None, device: str | None = None,
             seq: int | None = None, after: str | None = None,
             limit: int = 100) -> list[Correction]:
        return corrections_table.find(self.store, status=status, device=device, seq=seq,
                                      after=after, limit=limit)

    def applied(self, pairs: set[tuple[str, int]] | None = None
                ) -> dict[tuple[str, int], dict[str, Applied]]:
        """Effective corrected fields per (device, seq); all of them when ``pairs`` is None.

        The table is only an index: each value is checked against the ``correction`` ledger
        entry it names, so an edited table row cannot change what an export shows."""
        out: dict[tuple[str, int], dict[str, Applied]] = {}
        for r in corrections_table.approved(self.store):
            key = (r.device, r.seq)
            if pairs is not None and key not in pairs:
                continue
            out.setdefault(key, {})[r.field] = Applied(r.after, r.correction_idx, r.id)
        self._check_against_ledger(out)
        return out

    def applied_complete(self) -> dict[tuple[str, int], dict[str, Applied]]:
        """:meth:`applied` for all punches, also proving the table lost no approved correction:
        the ledger's ``correction`` entries and the table's approved rows must be the same
        set. One scan of the chain: for exports, which read everything anyway."""
        out = self.applied()
        in_table = {a.correction_idx for fields in out.values() for a in fields.values()}
        # A correction whose body a retention run or an erasure removed keeps no table row
        # (the erasure deletes it with the body): only those may be missing.
        in_ledger = queries.idxs_of_kind(self.store, "correction") \
            - queries.removed_of_kind(self.store, "correction")
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
        for idx, raw in queries.bodies_of_kind(self.store, "correction", list(wanted)):
            (device, seq), fld, a = wanted.pop(idx)
            body = json.loads(raw)
            if (body.get("device"), body.get("seq"), body.get("field"),
                    body.get("after")) != (device, seq, fld, a.value):
                raise CorrectionIntegrityError(
                    f"correction {a.proposal}: the corrections table says {device}#{seq} "
                    f"{fld} = {a.value!r}, ledger entry {idx} says otherwise; the table "
                    f"was altered outside timeclock (the ledger is authoritative)")
        # What is left names no correction entry with a body: retention may have deleted it
        # (then the table row is all that is left), or the idx is not a correction at all.
        for idx, (_, _, a) in wanted.items():
            if queries.kind_of(self.store, idx) != "correction":
                raise CorrectionIntegrityError(
                    f"correction {a.proposal}: the corrections table names ledger entry {idx}, "
                    f"which is not a correction entry (the table was altered)")

    def _original(self, device: str, seq: int) -> tuple[int, dict[str, Any]]:
        p = queries.punch_fields(self.store, device, seq)
        if p is None:
            raise CorrectionNotFoundError(f"no recorded punch {device}#{seq}")
        return p.idx, {"action": p.action, "ts": p.ts}

    def current(self, device: str, seq: int, field: str) -> tuple[int, Any]:
        """(original ledger idx, effective value of ``field``) of a recorded punch."""
        idx, orig = self._original(device, seq)
        fixed = self.applied({(device, seq)}).get((device, seq), {})
        return idx, fixed[field].value if field in fixed else orig[field]

    # -- workflow ---------------------------------------------------------------------------
    def _refuse(self, actor: str, action: str, cid: str | None, why: str, now_us: int,
                **what: Any) -> SoDError:
        err = SoDError(why)
        with self.store.transaction(now_us, what="recording a refusal") as tx:
            tx.record("access", {"type": "correction", "action": action, "actor": actor,
                                 "at": now_us, **({"proposal": cid} if cid else {}), **what,
                                 "outcome": "refused", "error": str(err)})
        return err

    def propose(self, *, device: str, seq: int, field: str, after: Any, reason: str,
                editor: str, now_us: int, note: str = "", before: Any = None,
                persons: Persons | None = None) -> Correction:
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
        ps = persons or Persons()
        why = three_person_violation(subject=ps.subject, editor=editor, approver=None,
                                     editor_employee=ps.editor, reason=reason)
        if why is not None:
            raise self._refuse(editor, "propose", None, why, now_us, device=device, seq=seq)
        c = Correction("cor-" + secrets.token_hex(8), device, seq, idx, field, cur, after,
                       reason, note, editor, now_us, "proposed", None, None, None, None)
        with self.store.transaction(now_us, what="proposing a correction") as tx:
            corrections_table.insert(tx, c)
            tx.record("access", {"type": "correction", "action": "propose", "actor": editor,
                                 "at": now_us, "proposal": c.id, "original_idx": idx,
                                 "device": device, "seq": seq, "field": field,
                                 "before": cur, "after": after, "reason": reason,
                                 **({"subject": ps.subject} if ps.subject else {})})
        return c

    def decide(self, cid: str, *, approve: bool, approver: str, now_us: int,
               note: str = "", persons: Persons | None = None) -> Correction:
        """Approve (appends the ``correction`` entry) or reject a proposal; ``persons``: who
        the subject, editor and approver are (the three-person rule)."""
        if len(note) > MAX_NOTE:
            raise CorrectionError(f"note: at most {MAX_NOTE} characters")
        c = self.get(cid)
        action = "approve" if approve else "reject"
        if c.editor == approver:
            err = SoDError(f"segregation of duties: {approver} proposed correction {cid} and "
                           f"may not {action} it; another principal with hr.approve must")
            with self.store.transaction(now_us, what="recording a refusal") as tx:
                tx.record("access", {"type": "correction", "action": action, "actor": approver,
                                     "at": now_us, "proposal": cid, "outcome": "refused",
                                     "error": str(err)})
            raise err
        ps = persons or Persons()
        why = three_person_violation(subject=ps.subject, editor=c.editor, approver=approver,
                                     editor_employee=ps.editor, approver_employee=ps.approver,
                                     reason=c.reason)
        if why is not None:
            raise self._refuse(approver, action, cid, why, now_us)
        if c.status != "proposed":
            raise CorrectionConflictError(f"correction {cid} is already {c.status}")
        with self.store.transaction(now_us, what="deciding a correction") as tx:
            cidx = None
            if approve:
                _, cur = self.current(c.device, c.seq, c.field)
                if cur != c.before:
                    raise CorrectionConflictError(
                        f"correction {cid} was proposed against {c.field} = {c.before!r}, "
                        f"but it is now {cur!r}: reject it and propose again")
                cidx = tx.record("correction", entry_body(c, approver, now_us, ps.subject))
            else:
                tx.record("access", {"type": "correction", "action": "reject",
                                     "actor": approver, "at": now_us, "proposal": cid,
                                     "outcome": "done"})
            decided = corrections_table.decide(
                tx, cid, status="approved" if approve else "rejected", approver=approver,
                now_us=now_us, note=note, correction_idx=cidx)
            if not decided:
                raise CorrectionConflictError(f"correction {cid} was decided concurrently")
        return self.get(cid)
