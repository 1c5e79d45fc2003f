"""Exports from a ledger store: the audit bundle (DESIGN.md §6) and payroll extracts.

Both stream: entries and punches are read a page (or a server-side cursor batch) at a time
and written as they come; nothing is materialised. Both are bounded by the ledger size at the
start of the export, so a concurrent append never makes a file disagree with its own header.

A payroll extract is evidence an auditor can test (AT-C 205.36): it names its query, its
ledger snapshot (size and head), the latest signed checkpoint and how many rows it covers,
and ends with the row count and each device's seq range.
"""

from __future__ import annotations

import csv
import json
import re
from collections.abc import Iterable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, TextIO

from collector.errors import CollectorError
from collector.ledger.sqlbase import PunchQuery, PunchRow, SQLStore
from wire.bundle import write_bundle
from wire.errors import WireError
from wire.keys import VerifyKey
from wire.ledger import SignedCheckpoint

FORMATS = ("csv", "ndjson")
COLUMNS = ("device", "site", "seq", "credential", "action", "device_time", "device_time_us",
           "clock", "recorded_at", "recorded_at_us", "ledger_idx", "entry_hash")


class ExportError(CollectorError):
    """An export could not be written (bad query, existing bundle, I/O error)."""


def parse_time(text: str) -> int:
    """µs since the epoch from an integer or an ISO 8601 time with a UTC offset (or ``Z``)."""
    if re.fullmatch(r"-?\d+", text):
        return int(text)
    try:
        dt = datetime.fromisoformat(text.replace("Z", "+00:00").replace("z", "+00:00"))
    except ValueError as e:
        raise ExportError(f"{text!r} is neither µs since the epoch nor an ISO 8601 time") from e
    if dt.tzinfo is None:
        raise ExportError(f"{text!r} has no UTC offset; add Z or +hh:mm (payroll spans "
                          f"time zones and DST changes)")
    delta = dt - datetime(1970, 1, 1, tzinfo=UTC)
    return (delta.days * 86_400 + delta.seconds) * 1_000_000 + delta.microseconds


def iso(us: int) -> str:
    secs, frac = divmod(us, 1_000_000)
    return datetime.fromtimestamp(secs, UTC).strftime("%Y-%m-%dT%H:%M:%S") + f".{frac:06d}Z"


@dataclass
class ExportSummary:
    query: PunchQuery
    size: int                                  # ledger size the export is bounded by
    head: str
    checkpoint: SignedCheckpoint | None        # latest checkpoint within the snapshot
    rows: int = 0
    uncovered: int = 0                         # rows beyond the checkpoint (not yet signed)
    seq_ranges: dict[str, list[int]] = field(default_factory=dict)   # device -> [min, max]

    def header(self, *, generated_at: int, fmt: str) -> dict[str, Any]:
        cp = self.checkpoint
        return {
            "export": "timeclock payroll v1", "format": fmt, "generated_at": iso(generated_at),
            "query": {"since": self.query.since, "until": self.query.until,
                      "site": self.query.site, "device": self.query.device,
                      "time": "device time (ts), since inclusive, until exclusive",
                      "order": "device time, device, seq"},
            "ledger": {"size": self.size, "head": self.head},
            "checkpoint": None if cp is None else cp.to_dict(),
            "columns": list(COLUMNS),
        }

    def trailer(self) -> dict[str, Any]:
        cp_size = 0 if self.checkpoint is None else self.checkpoint.checkpoint.size
        return {"rows": self.rows, "covered_by_checkpoint": self.rows - self.uncovered,
                "checkpoint_size": cp_size, "uncovered": self.uncovered,
                "seq_ranges": {d: r for d, r in sorted(self.seq_ranges.items())}}


def _row(r: PunchRow) -> dict[str, Any]:
    return {"device": r.device, "site": r.site, "seq": r.seq, "credential": r.credential,
            "action": r.action, "device_time": iso(r.ts), "device_time_us": r.ts,
            "clock": r.clock, "recorded_at": iso(r.at), "recorded_at_us": r.at,
            "ledger_idx": r.idx, "entry_hash": r.entry_hash}


def _latest_checkpoint(store: SQLStore, size: int) -> SignedCheckpoint | None:
    cps = [c for c in store.checkpoints() if c.checkpoint.size <= size]
    return max(cps, key=lambda c: (c.checkpoint.size, c.checkpoint.at), default=None)


def export_payroll(store: SQLStore, out: TextIO, *, fmt: str, query: PunchQuery,
                   now_us: int) -> ExportSummary:
    """Write one row per recorded punch matching ``query`` to ``out`` as CSV or NDJSON.

    CSV: ``#`` comment lines carry the header and trailer (as JSON), then a column row.
    NDJSON: a ``{"header":…}`` line, one object per punch, a ``{"trailer":…}`` line.
    """
    if fmt not in FORMATS:
        raise ExportError(f"format {fmt!r}: use one of {', '.join(FORMATS)}")
    size, head = store.head()
    summary = ExportSummary(query, size, head, _latest_checkpoint(store, size))
    cp_size = 0 if summary.checkpoint is None else summary.checkpoint.checkpoint.size
    header = summary.header(generated_at=now_us, fmt=fmt)
    writer: Any = None
    if fmt == "csv":
        out.write("# " + json.dumps({"header": header}, sort_keys=True) + "\n")
        writer = csv.writer(out, lineterminator="\n")
        writer.writerow(COLUMNS)
    else:
        out.write(json.dumps({"header": header}, sort_keys=True) + "\n")
    for r in store.punch_rows(query):
        if r.idx >= size:
            continue        # appended after the snapshot: belongs to the next export
        summary.rows += 1
        if r.idx >= cp_size:
            summary.uncovered += 1
        rng = summary.seq_ranges.setdefault(r.device, [r.seq, r.seq])
        rng[0], rng[1] = min(rng[0], r.seq), max(rng[1], r.seq)
        row = _row(r)
        if writer is not None:
            writer.writerow([row[c] for c in COLUMNS])
        else:
            out.write(json.dumps(row, sort_keys=True) + "\n")
    trailer = summary.trailer()
    if fmt == "csv":
        out.write("# " + json.dumps({"trailer": trailer}, sort_keys=True) + "\n")
    else:
        out.write(json.dumps({"trailer": trailer}, sort_keys=True) + "\n")
    return summary


def export_bundle(store: SQLStore, directory: Path, log_keys: Iterable[VerifyKey]) -> int:
    """Write the audit bundle of the whole ledger into ``directory``; returns entries written."""
    size, _ = store.head()
    cps = [c for c in store.checkpoints() if c.checkpoint.size <= size]
    entries = ((se.entry, se.hash, se.body) for se in store.entries(0, size))
    try:
        return write_bundle(directory, entries, cps, log_keys)
    except WireError as e:
        raise ExportError(f"audit bundle: {e}") from e
