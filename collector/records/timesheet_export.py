"""Timesheets from the ledger: the recorded punches of a time range, each resolved to the
employee who held the badge at punch time and with approved corrections applied, paired by
collector.records.timesheets in each employee's time zone.

Rows come through the export path (collector.records.exports.snapshot_rows), so each is
checked against the chain before it is used, and the ledger snapshot (size, head, newest
checkpoint) goes into the sidecar file beside the CSV: the CSV itself stays plain (one header
row, no comment lines) so any importer reads it, and the sidecar binds it to the ledger by its
SHA-256.
"""

from __future__ import annotations

import hashlib
from collections import defaultdict
from dataclasses import dataclass, field
from typing import Any

from collector.ledger import people_tables
from collector.ledger.people_tables import BadgeResolver
from collector.ledger.sqlbase import PunchQuery, SQLStore
from collector.records.exports import ExportSummary, Fixed, iso, latest_checkpoint, snapshot_rows
from collector.records.timesheets import Rules, TimePunch, Timesheet, build

SIDECAR_KIND = "timeclock timesheet sidecar v1"


@dataclass(slots=True)
class Sheets:
    sheets: list[Timesheet]
    summary: ExportSummary
    punches: int = 0
    unassigned: dict[str, int] = field(default_factory=dict)   # badge status -> punches


def load(store: SQLStore, query: PunchQuery, rules: Rules, corrections: Fixed,
         *, employee: str | None = None, sites: frozenset[str] | None = None) -> Sheets:
    """Every employee's timesheet over ``query`` (device time), or only ``employee``'s;
    ``sites``: only punches of clocks at these sites (a site-scoped principal).

    Punches of badges that resolve to nobody (unknown, lost, blocked) belong to no timesheet;
    their count by status is kept (``unassigned``) so the sidecar says what was left out."""
    size, head = store.head()
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
        if employee is not None and emp != employee:
            continue
        fixed = corrections.get((r.device, r.seq), {})
        ts = int(fixed["ts"].value) if "ts" in fixed else r.ts
        action = str(fixed["action"].value) if "action" in fixed else r.action
        used = tuple(sorted({a.correction_idx for a in fixed.values()}))
        by_employee[emp].append(TimePunch(ts, action, r.device, r.seq, used))
    for emp in sorted(by_employee):
        row = people_tables.employee(store, emp)
        tz = row.timezone if row is not None else "UTC"
        out.sheets.append(build(emp, tz, by_employee[emp], rules))
    return out


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
