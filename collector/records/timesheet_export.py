"""Timesheets from the ledger: the recorded punches of a time range, each resolved to the
employee who held the badge at punch time and with approved corrections applied, paired by
collector.records.timesheets in each employee's time zone.

Rows come through the export path (collector.records.exports.snapshot_rows), so each is
checked against the chain before it is used, and the ledger snapshot (size, head, newest
checkpoint) goes into the sidecar file beside the CSV: the CSV itself stays plain (one header
row, no comment lines) so any importer reads it, and the sidecar binds it to the ledger by its
SHA-256.

With the log key (:func:`signed_sidecar`, ``timeclock-collector timesheet --log-key``) the
sidecar is bounded by one v2 checkpoint and carries, for every punch the file is computed from
and every correction a row uses, its entry, body and inclusion proof to that checkpoint, signed
by the log key (wire.timesheet_proofs, docs/protocol.md §13.18): ``timeclock-verify
--timesheet`` checks it and recomputes the hours offline.
"""

from __future__ import annotations

import hashlib
from collections import defaultdict
from dataclasses import dataclass, field
from typing import Any

from collector.ledger import checkpoint_tables, people_tables
from collector.ledger.people_tables import BadgeResolver
from collector.ledger.sqlbase import PunchQuery, PunchRow, SQLStore
from collector.records.exports import (
    ExportError,
    ExportSummary,
    Fixed,
    iso,
    latest_checkpoint,
    snapshot_rows,
)
from collector.records.timesheets import Rules, TimePunch, Timesheet, build
from wire.errors import WireError
from wire.keys import SigningKey
from wire.ledger import Entry
from wire.timesheet_proofs import PROOFS_FORMAT, SIDECAR_KIND, proof_item, sign_sidecar

_EMPLOYEES_ONE_BY_ONE = 20


@dataclass(slots=True)
class Sheets:
    sheets: list[Timesheet]
    summary: ExportSummary
    punches: int = 0
    unassigned: dict[str, int] = field(default_factory=dict)   # badge status -> punches
    sources: dict[int, str] = field(default_factory=dict)      # punch entry idx -> employee
    timezones: dict[str, str] = field(default_factory=dict)    # employee -> IANA zone
    corrections: set[int] = field(default_factory=set)         # correction entries used


def load(store: SQLStore, query: PunchQuery, rules: Rules, corrections: Fixed,
         *, employee: str | None = None, sites: frozenset[str] | None = None,
         size: int | None = None, employees: frozenset[str] | None = None) -> Sheets:
    """Every employee's timesheet over ``query`` (device time), or only ``employee``'s;
    ``sites``: only punches of clocks at these sites (a site-scoped principal); ``size``:
    the ledger snapshot to read (default: the whole ledger now), e.g. a checkpoint's size;
    ``employees``: only these employees' timesheets (a supervisor's team).

    Punches of badges that resolve to nobody (unknown, lost, blocked) belong to no timesheet;
    their count by status is kept (``unassigned``) so the sidecar says what was left out."""
    if size is None:
        size, head = store.head()
    else:
        last = next(store.raw_entries(size - 1, size), None) if size > 0 else None
        head = "" if last is None else str(last.hash)
    summary = ExportSummary(query, size, head, latest_checkpoint(store, size))
    holders = BadgeResolver.load(store)
    by_employee: dict[str, list[TimePunch]] = defaultdict(list)
    out = Sheets([], summary)
    for r in snapshot_rows(store, summary):
        if sites is not None and r.site not in sites:
            continue
        out.punches += 1
        emp, status = holders.resolve(r.credential, r.ts)
        if emp is None:
            out.unassigned[status] = out.unassigned.get(status, 0) + 1
            continue
        if (employee is not None and emp != employee) or (employees is not None
                                                           and emp not in employees):
            continue
        out.sources[r.idx] = emp
        tp = time_punch(r, corrections)
        by_employee[emp].append(tp)
        out.corrections.update(tp.corrections)
    # Many employees: their rows in one query, not one each.
    rows_of = ({e.employee_id: e for e in people_tables.employees(store)}
               if len(by_employee) > _EMPLOYEES_ONE_BY_ONE else None)
    for emp in sorted(by_employee):
        row = people_tables.employee(store, emp) if rows_of is None else rows_of.get(emp)
        tz = row.timezone if row is not None else "UTC"
        out.timezones[emp] = tz
        out.sheets.append(build(emp, tz, by_employee[emp], rules))
    return out


def time_punch(r: PunchRow, corrections: Fixed) -> TimePunch:
    """The row as a timesheet punch, with its approved corrections applied."""
    fixed = corrections.get((r.device, r.seq))
    if not fixed:       # most punches: nothing to apply
        return TimePunch(r.ts, r.action, r.device, r.seq)
    ts = int(fixed["ts"].value) if "ts" in fixed else r.ts
    action = str(fixed["action"].value) if "action" in fixed else r.action
    used = tuple(sorted({a.correction_idx for a in fixed.values()}))
    return TimePunch(ts, action, r.device, r.seq, used)


def proof_size(store: SQLStore) -> int:
    """The size of the newest v2 checkpoint: what a signed sidecar's snapshot is bounded by
    (the caller holding the log key first checkpoints the head when it is not covered)."""
    checkpoint_tables.ensure_schema(store)
    stored = checkpoint_tables.newest(store, at_most=store.head()[0])
    if stored is None or stored.size == 0:
        raise ExportError("no v2 checkpoint is stored yet, so there is nothing to prove the "
                          "timesheet's punches against: run the collector (or give the log "
                          "key, which checkpoints the ledger first)")
    return stored.size


def sidecar(sheets: Sheets, *, csv_bytes: bytes, rows: int, rules: Rules, generated_at: int,
            fmt: str) -> dict[str, Any]:
    """What the CSV (or NDJSON) was made from: query, rules, the ledger snapshot and its
    newest checkpoint, and the file's SHA-256."""
    s = sheets.summary
    cp = s.checkpoint
    return {
        "export": SIDECAR_KIND, "format": fmt, "generated_at": iso(generated_at),
        "sha256": hashlib.sha256(csv_bytes).hexdigest(), "rows": rows,
        "query": {"since": s.query.since, "until": s.query.until, "site": s.query.site,
                  "device": s.query.device,
                  "time": "recorded device time (ts), since inclusive, until exclusive; "
                          "shifts use the corrected times"},
        "rules": {"round_minutes": rules.round_minutes, "rounding": rules.rounding,
                  "grace_minutes": rules.grace_minutes, "duplicate_s": rules.duplicate_s,
                  "max_shift_h": rules.max_shift_h, "week_start": rules.week_start,
                  "period": rules.period, "period_anchor": rules.period_anchor.isoformat()},
        "ledger": {"size": s.size, "head": s.head},
        "uncovered": s.uncovered,
        "checkpoint": None if cp is None else cp.to_dict(),
        "punches": sheets.punches, "employees": len(sheets.sheets),
        "unassigned_punches": dict(sorted(sheets.unassigned.items())),
        "seq_ranges": {d: list(r) for d, r in sorted(s.seq_ranges.items())},
    }


def signed_sidecar(store: SQLStore, sheets: Sheets, *, csv_bytes: bytes, rows: int,
                   rules: Rules, generated_at: int, fmt: str, key: SigningKey,
                   employee: str | None = None) -> dict[str, Any]:
    """:func:`sidecar` with the proofs of every punch and correction the file rests on, signed
    by the log key (wire.timesheet_proofs). ``sheets`` must have been loaded with ``size`` =
    a stored v2 checkpoint's size (:func:`proof_size`)."""
    size = sheets.summary.size
    stored = checkpoint_tables.get(store, size)
    if stored is None:
        raise ExportError(f"no v2 checkpoint of size {size}: load the timesheet at "
                          f"proof_size(store)")
    used = sorted(sheets.corrections)
    late = [i for i in used if i >= size]
    if late:
        raise ExportError(f"correction entr{'y' if len(late) == 1 else 'ies'} "
                          f"{', '.join(map(str, late[:5]))} came after the checkpoint of size "
                          f"{size}: make the timesheet again after the next checkpoint")
    paths = checkpoint_tables.inclusion_proofs(store, [*sheets.sources, *used], size)
    punches = [_item(store, idx, paths[idx].inclusion_path, employee_id=emp)
               for idx, emp in sorted(sheets.sources.items())]
    corrections = [_item(store, idx, paths[idx].inclusion_path) for idx in used]
    meta = sidecar(sheets, csv_bytes=csv_bytes, rows=rows, rules=rules,
                   generated_at=generated_at, fmt=fmt)
    meta["query"]["employee"] = employee
    meta["proofs"] = {"format": PROOFS_FORMAT, "checkpoint": stored.note,
                      "employees": {e: {"timezone": tz}
                                    for e, tz in sorted(sheets.timezones.items())},
                      "punches": punches, "corrections": corrections}
    return sign_sidecar(meta, key)


def _item(store: SQLStore, idx: int, path: tuple[bytes, ...], **extra: Any) -> dict[str, Any]:
    raw = next(store.raw_entries(idx, idx + 1), None)
    if raw is None or raw.body is None:
        raise ExportError(f"ledger idx {idx}: its body is gone (retention or erasure), so the "
                          f"timesheet cannot carry its proof; narrow --from/--to to later "
                          f"punches")
    try:
        entry = Entry(idx=raw.idx, kind=raw.kind, at=raw.at, body=raw.body_hash, prev=raw.prev)
        return proof_item(entry, raw.body, path, **extra)
    except WireError as e:
        raise ExportError(f"ledger idx {idx}: cannot prove it: {e}") from e
