"""The payroll export that carries proofs (docs/protocol.md §13.3): the collector's producer.

The export is :func:`collector.records.exports.export_payroll`'s NDJSON, bounded by the newest
stored v2 checkpoint (not by the ledger's size), so that every row lies under that ONE
checkpoint: its note, with every cosignature gathered, goes in the header
(``proofs.checkpoint``), and each row carries its ledger entry, its body and its RFC 9162
inclusion path to that checkpoint's root (``wire.export_proofs.row_proof``). The format and its
offline verification (``timeclock-verify --export``) live in ``wire.export_proofs``.

Rows carry only the export's field set (collector.records.export_fields, default payroll). The
proof's ``body`` (the signed punch, which holds the badge credential) is carried only when the
set shows the credential (investigation); otherwise the proof is the entry and its inclusion
path, and a verifier checks the shown device/seq/action/time against the audit bundle's body
at the entry's idx (the entry commits to it by hash).

Invariants: nothing is written unless a v2 checkpoint exists; a row whose punch body retention
deleted cannot be proven and stops the export with a clear error before anything of it is
written past that row (the caller writes to a file it removes on error, as the CLI does).
"""

from __future__ import annotations

import json
from typing import TextIO

from collector import LedgerError
from collector.ledger import checkpoint_tables
from collector.ledger.people_tables import BadgeResolver
from collector.ledger.sqlbase import PunchQuery, SQLStore
from collector.records.export_fields import DEFAULT, FieldSet, Pseudonyms
from collector.records.exports import (
    ExportError,
    ExportSummary,
    Fixed,
    latest_checkpoint,
    punch_item,
    select,
    snapshot_rows,
)
from wire.errors import WireError
from wire.export_proofs import header_proofs, row_proof
from wire.ledger import Entry


def export_payroll_with_proofs(store: SQLStore, out: TextIO, *, query: PunchQuery,
                               now_us: int, corrections: Fixed | None = None,
                               fields: FieldSet = DEFAULT,
                               pseudonyms: Pseudonyms | None = None) -> ExportSummary:
    """Write the NDJSON payroll export of ``query`` with a proof per row (§13.3)."""
    checkpoint_tables.ensure_schema(store)
    stored = checkpoint_tables.newest(store, at_most=store.head()[0])
    if stored is None or stored.size == 0:
        raise ExportError("no v2 checkpoint is stored yet, so there is nothing to prove rows "
                          "against: export again after the collector's next checkpoint")
    size = stored.size
    last = next(store.raw_entries(size - 1, size), None)
    if last is None:
        raise ExportError(f"entry {size - 1} under the checkpoint of size {size} is missing")
    summary = ExportSummary(query, size, str(last.hash), latest_checkpoint(store, size))
    header = summary.header(generated_at=now_us, fmt="ndjson", fields=fields,
                            pseudonyms=pseudonyms is not None)
    header["proofs"] = header_proofs(stored.note)
    out.write(json.dumps({"header": header}, sort_keys=True) + "\n")
    holders = BadgeResolver.load(store)
    for r in snapshot_rows(store, summary):
        item = punch_item(r, corrections.get((r.device, r.seq)) if corrections else None,
                          holders.resolve(r.credential, r.ts), pseudonyms)
        row = select(item, fields)
        row["proof"] = _proof(store, r.idx, size, with_body=fields.credential)
        out.write(json.dumps(row, sort_keys=True, ensure_ascii=False) + "\n")
    out.write(json.dumps({"trailer": summary.trailer()}, sort_keys=True) + "\n")
    return summary


def _proof(store: SQLStore, idx: int, size: int, *, with_body: bool) -> dict[str, object]:
    raw = next(store.raw_entries(idx, idx + 1), None)
    if raw is None:
        raise ExportError(f"ledger idx {idx}: the entry is missing")
    if raw.body is None:
        raise ExportError(f"ledger idx {idx}: its punch body was deleted by retention, so the "
                          f"row cannot carry a proof; narrow the export to later punches")
    try:
        entry = Entry(idx=raw.idx, kind=raw.kind, at=raw.at, body=raw.body_hash, prev=raw.prev)
        return row_proof(entry, raw.body if with_body else None,
                         store.inclusion_proof(idx, size))
    except (WireError, LedgerError, TypeError) as e:
        raise ExportError(f"ledger idx {idx}: cannot prove the row: {e}") from e
