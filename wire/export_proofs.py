"""A payroll export that proves itself: every row carries its ledger entry and an inclusion
proof to one checkpoint note in the header (docs/protocol.md §13.3). Write and verify it.

The export is the NDJSON payroll extract of ``timeclock-collector export --payroll`` with
``--with-proofs``: a ``{"header": …}`` line, one object per punch, a ``{"trailer": …}`` line.
With proofs, the header gains ``"proofs": {"format": PROOFS_FORMAT, "checkpoint": <note>}``
(the C2SP checkpoint note with every signature gathered, DESIGN.md §8.2) and every row gains::

    "proof": {"entry": <the ledger entry object>, "body": <the signed punch, as JSON>,
              "leaf_index": <idx>, "inclusion_path": [<base64 hash>, …]}

A payroll provider verifies it alone, with the collector's public key and a witness policy:
(1) the note opens under the log key (origin = key name) and (2) meets the policy's quorum;
for each row (3) the entry is a punch entry whose ``body`` hashes its body and whose hash is
the row's ``entry_hash``, (4) the RFC 9162 inclusion proof of the entry's leaf at
``leaf_index`` = ``ledger_idx`` = entry idx leads to the note's root at its size, and (5) the
row's visible fields equal the signed punch's (device, seq, credential, action, device time,
clock, reader, key) and the entry's (recorded time, idx); a row without corrections shows its
original values as effective. (6) The trailer's row count is the number of rows.

A row shows only its export's field set (D20): a field it leaves out is not compared. A proof
without ``body`` (field sets without the credential, which the signed punch holds) proves the
entry and its inclusion, and (5) compares only the entry's fields; its device, seq, action and
device time are then checked against the audit bundle's body at that idx (a finding says so).

What it does not prove, and says so: the ``site`` column (from the enrolment, not the punch),
corrections (other entries; a row's effective values are listed as resting on them), and the
punch signature (the device key is in the enrolment entry, which the export does not carry; the
collector checked it on ingest and the inclusion proof shows the ledger recorded exactly these
bytes).

Invariants: reading streams, one row in memory; a row that does not verify is a finding with
its line number, never an exception; the verdict is ``ok`` only if every row verifies.
"""

from __future__ import annotations

import base64
import json
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import IO, Any, TextIO

from wire.bodies import parse_body
from wire.bundle import LogNotes
from wire.canonical import canonical, loads
from wire.errors import DecodeError, WireError
from wire.fields import require_object
from wire.keys import VerifyKey, b64decode_strict
from wire.ledger import Entry, body_hash
from wire.merkle import MAX_PROOF_HASHES, entry_leaf_hash, verify_inclusion
from wire.note import Checkpoint, Note
from wire.punch import SignedPunch
from wire.witness_policy import PolicyError, QuorumResult, WitnessPolicy

PROOFS_FORMAT = "timeclock payroll proofs v1"
MAX_LINE_BYTES = 4 * 1024 * 1024
_PROOF_KEYS = frozenset({"entry", "body", "leaf_index", "inclusion_path"})
_PROOF_KEYS_NO_BODY = _PROOF_KEYS - {"body"}    # a field set without the credential
_HEADER_PROOF_KEYS = frozenset({"format", "checkpoint"})
MAX_LISTED = 50


class ExportProofError(WireError):
    """An export that cannot be read at all (missing, not NDJSON, no header with proofs)."""

    reason = "export"


def iso(us: int) -> str:
    """The export's time format (collector.records.exports.iso): UTC, µs, ``Z``."""
    secs, frac = divmod(us, 1_000_000)
    return datetime.fromtimestamp(secs, UTC).strftime("%Y-%m-%dT%H:%M:%S") + f".{frac:06d}Z"


# -- writing (the collector's producer calls these) -------------------------------------------

def header_proofs(note_text: str) -> dict[str, Any]:
    """The header's ``proofs`` member: the one checkpoint note every row is proven against."""
    return {"format": PROOFS_FORMAT, "checkpoint": note_text}


def row_proof(entry: Entry, body: bytes | None, inclusion_path: Sequence[bytes]
              ) -> dict[str, Any]:
    """A row's ``proof`` member: its entry, its body as JSON (None: left out, for a field set
    without the credential, which the body holds), leaf index and inclusion path."""
    proof: dict[str, Any] = {
        "entry": entry.to_dict(), "leaf_index": entry.idx,
        "inclusion_path": [base64.b64encode(h).decode("ascii") for h in inclusion_path]}
    if body is not None:
        proof["body"] = loads(body)
    return proof


# -- verifying -------------------------------------------------------------------------------

@dataclass(frozen=True)
class ExportFinding:
    line: int | None         # line of the export file (1 = header)
    check: str               # note | witness | row | inclusion | fields | trailer
    message: str
    failure: bool = True

    def __str__(self) -> str:
        where = f"line {self.line}" if self.line is not None else "export"
        return f"{'FAILED' if self.failure else 'note'} at {where}, check {self.check}: " \
               f"{self.message}"

    def to_dict(self) -> dict[str, Any]:
        return {"line": self.line, "check": self.check, "message": self.message,
                "failure": self.failure}


@dataclass
class ExportAudit:
    rows: int = 0
    proven: int = 0
    origin: str | None = None
    size: int | None = None            # the checkpoint's tree size
    root: str | None = None
    witness: QuorumResult | None = None
    findings: list[ExportFinding] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not any(f.failure for f in self.findings)

    @property
    def first_failure(self) -> ExportFinding | None:
        return next((f for f in self.findings if f.failure), None)

    def to_dict(self) -> dict[str, Any]:
        first = self.first_failure
        return {"ok": self.ok, "rows": self.rows, "proven": self.proven, "origin": self.origin,
                "checkpoint_size": self.size, "root": self.root,
                "witness": self.witness.to_dict() if self.witness is not None else None,
                "first_failure": first.to_dict() if first else None,
                "findings": [f.to_dict() for f in self.findings]}


def _lines(path: Path) -> Iterator[tuple[int, bytes]]:
    try:
        f: IO[bytes] = path.open("rb")
    except OSError as e:
        raise ExportProofError(f"{path}: cannot read: {e.strerror}") from e
    with f:
        n = 0
        while True:
            try:
                raw = f.readline(MAX_LINE_BYTES + 1)
            except OSError as e:
                raise ExportProofError(f"{path}: read failed: {e.strerror}") from e
            n += 1
            if not raw:
                return
            if len(raw) > MAX_LINE_BYTES:
                raise ExportProofError(f"{path} line {n}: longer than {MAX_LINE_BYTES} bytes")
            yield n, raw.rstrip(b"\n")


def _open_note(text: Any, keys: Sequence[VerifyKey], origin: str | None) -> tuple[Checkpoint,
                                                                                  Note]:
    if not isinstance(text, str):
        raise DecodeError("proofs.checkpoint must be the note text")
    note = Note.from_text(text)
    return LogNotes(keys, origin).open(note), note


class _Verifier:
    def __init__(self, keys: Sequence[VerifyKey], policy: WitnessPolicy | None,
                 origin: str | None, now_s: int | None) -> None:
        self.keys = keys
        self.policy = policy
        self.origin = origin
        self.now_s = now_s
        self.audit = ExportAudit()
        self.cp: Checkpoint | None = None
        self.seen: set[int] = set()
        self.corrected = 0
        self.unbodied = 0

    def fail(self, line: int | None, check: str, message: str) -> None:
        self.audit.findings.append(ExportFinding(line, check, message))

    def header(self, line: int, obj: Any) -> None:
        header = obj.get("header") if isinstance(obj, dict) else None
        proofs = header.get("proofs") if isinstance(header, dict) else None
        if not isinstance(proofs, dict):
            raise ExportProofError(f"line {line}: the first line is not a header with "
                                   f"proofs; export with --with-proofs (NDJSON)")
        try:
            p = require_object(proofs, "proofs", _HEADER_PROOF_KEYS)
            if p["format"] != PROOFS_FORMAT:
                raise DecodeError(f"proofs.format {str(p['format'])[:60]!r} is not "
                                  f"{PROOFS_FORMAT!r}")
            # (1) the note opens under the log key, named for the origin
            cp, note = _open_note(p["checkpoint"], self.keys, self.origin)
        except WireError as e:
            self.fail(line, "note", f"the export's checkpoint does not verify: {e}")
            return
        self.cp = cp
        self.audit.origin, self.audit.size = cp.origin, cp.size
        self.audit.root = base64.b64encode(cp.root).decode("ascii")
        # (2) the witness quorum on that note
        policy = self.policy
        if policy is None or policy.empty:
            return
        try:
            result = policy.check(cp, note, now_s=self.now_s)
        except (WireError, PolicyError) as e:
            self.fail(line, "witness", f"the export's checkpoint: {e}")
            return
        self.audit.witness = result
        if not result.met:
            self.fail(line, "witness", f"the export's checkpoint (size {cp.size}) carries "
                      f"{result.shortfall()} ({policy.describe()})")

    def row(self, line: int, row: Any) -> None:
        self.audit.rows += 1
        if not isinstance(row, dict) or "proof" not in row:
            self.fail(line, "row", "the row carries no proof")
            return
        try:
            entry, sp = self._entry(row)
        except WireError as e:
            self.fail(line, "row", str(e))
            return
        if self.cp is None:
            self.fail(line, "inclusion", "no verified checkpoint to prove the row against")
            return
        # (4) inclusion of the entry's leaf in the checkpoint's tree
        try:
            path = row["proof"]["inclusion_path"]
            if not isinstance(path, list) or len(path) > MAX_PROOF_HASHES:
                raise DecodeError(f"inclusion_path must be a list of at most "
                                  f"{MAX_PROOF_HASHES} hashes")
            hashes = [_hash(h) for h in path]
            verify_inclusion(entry_leaf_hash(entry), entry.idx, self.cp.size, hashes,
                             self.cp.root)
        except WireError as e:
            self.fail(line, "inclusion", f"ledger idx {entry.idx}: {e}")
            return
        # (5) what the row shows is what was signed and recorded
        wrong = _field_mismatches(row, entry, sp)
        if wrong:
            self.fail(line, "fields", f"ledger idx {entry.idx}: the row's {', '.join(wrong)} "
                      f"differ from the signed punch / ledger entry")
            return
        if entry.idx in self.seen:
            self.fail(line, "row", f"ledger idx {entry.idx} is listed twice")
            return
        self.seen.add(entry.idx)
        if row.get("corrections"):
            self.corrected += 1
        if sp is None:
            self.unbodied += 1
        self.audit.proven += 1

    def _entry(self, row: dict[str, Any]) -> tuple[Entry, SignedPunch | None]:
        """(3) the proof's entry is a punch entry over its body, with the row's idx/hash."""
        raw = row["proof"]
        with_body = not isinstance(raw, dict) or "body" in raw
        proof = require_object(raw, "proof", _PROOF_KEYS if with_body else _PROOF_KEYS_NO_BODY)
        entry = Entry.from_dict(proof["entry"])
        if entry.kind != "punch":
            raise DecodeError(f"ledger idx {entry.idx} is a {entry.kind} entry, not a punch")
        if proof["leaf_index"] != entry.idx or row.get("ledger_idx") != entry.idx:
            raise DecodeError(f"leaf_index {proof['leaf_index']!r} / ledger_idx "
                              f"{row.get('ledger_idx')!r} are not the entry's idx {entry.idx}")
        if not with_body:       # (3) without the body: the entry alone (module doc)
            if row.get("entry_hash") != entry.hash():
                raise DecodeError(f"ledger idx {entry.idx}: entry_hash is not the entry's "
                                  f"hash")
            return entry, None
        body = canonical(proof["body"])
        if body_hash(body) != entry.body:
            raise DecodeError(f"ledger idx {entry.idx}: the body does not hash to the "
                              f"entry's body hash: the punch was edited")
        if row.get("entry_hash") != entry.hash():
            raise DecodeError(f"ledger idx {entry.idx}: entry_hash is not the entry's hash")
        sp = parse_body("punch", proof["body"], idx=entry.idx)
        if not isinstance(sp, SignedPunch):
            raise DecodeError(f"ledger idx {entry.idx}: body is not a signed punch")
        return entry, sp

    def trailer(self, line: int, trailer: Any) -> None:
        rows = trailer.get("rows") if isinstance(trailer, dict) else None
        if rows != self.audit.rows:
            self.fail(line, "trailer", f"the trailer counts {rows!r} rows, the export has "
                      f"{self.audit.rows}: rows were added or removed")

    def finish(self, saw_trailer: bool) -> ExportAudit:
        if not saw_trailer:
            self.fail(None, "trailer", "the export has no trailer line: it was cut short")
        if self.corrected:
            self.audit.findings.append(ExportFinding(
                None, "fields", f"{self.corrected} row(s) show effective values that rest on "
                "corrections; the correction entries are not proven by this export (the "
                "original values are)", failure=False))
        if self.unbodied:
            self.audit.findings.append(ExportFinding(
                None, "fields", f"{self.unbodied} row(s) carry no punch body (a field set "
                "without the credential): their entry and its inclusion are proven, their "
                "device, seq, action and device time are not; check them against the audit "
                "bundle's body at the entry's idx, whose hash the entry holds",
                failure=False))
        self.audit.findings.append(ExportFinding(
            None, "fields", "the site column is not proven (it comes from the clock's "
            "enrolment, not from the punch)", failure=False))
        return self.audit


def _hash(value: Any) -> bytes:
    if not isinstance(value, str):
        raise DecodeError("inclusion_path holds a non-string", field="inclusion_path")
    return b64decode_strict(value, field="inclusion_path", length=32)


def _field_mismatches(row: dict[str, Any], entry: Entry, sp: SignedPunch | None
                      ) -> list[str]:
    """The shown fields that differ from the entry (and the signed punch, when carried).
    A field set may leave fields out (collector.records.export_fields): an absent field is
    not shown, so not compared; a shown one always is."""
    expected: dict[str, Any] = {"recorded_at_us": entry.at, "recorded_at": iso(entry.at)}
    if sp is not None:
        p = sp.punch
        expected.update({
            "device": p.device, "seq": p.seq, "credential": p.credential, "action": p.action,
            "device_time_us": p.ts, "device_time": iso(p.ts), "clock": p.clock,
            "reader": p.reader, "key": p.key})
    wrong = [k for k, v in expected.items() if k in row and row[k] != v]
    if sp is None:
        if "credential" in row:     # only a body proves a credential (and must carry it)
            wrong.append("credential (shown, yet the proof carries no body)")
        return wrong
    p = sp.punch
    if not row.get("corrections") and "effective" in row:
        eff = row.get("effective")
        if eff != {"action": p.action, "device_time": iso(p.ts), "device_time_us": p.ts}:
            wrong.append("effective (no correction, yet not the original values)")
    return wrong


def verify_export(path: Path, keys: Sequence[VerifyKey], *,
                  policy: WitnessPolicy | None = None, origin: str | None = None,
                  now_s: int | None = None) -> ExportAudit:
    """Verify a payroll export with proofs alone: steps (1)-(6) of the module doc."""
    v = _Verifier(keys, policy, origin, now_s)
    saw_header = saw_trailer = False
    for n, raw in _lines(Path(path)):
        if not raw.strip():
            continue
        try:
            obj = loads(raw)        # strict: no duplicate keys, floats or NaN
        except DecodeError as e:
            if not saw_header:
                raise ExportProofError(f"{path} line {n}: not JSON: {e}") from e
            v.fail(n, "row", f"not JSON: {e}")
            continue
        if not saw_header:
            v.header(n, obj)
            saw_header = True
        elif saw_trailer:
            v.fail(n, "trailer", "a line after the trailer")
        elif isinstance(obj, dict) and set(obj) == {"trailer"}:
            v.trailer(n, obj["trailer"])
            saw_trailer = True
        else:
            v.row(n, obj)
    if not saw_header:
        raise ExportProofError(f"{path}: empty; an export starts with a header line")
    return v.finish(saw_trailer)


def dumps_export_report(audit: ExportAudit) -> str:
    return json.dumps(audit.to_dict(), indent=2, sort_keys=True)


def print_export_report(audit: ExportAudit, path: Path, out: TextIO) -> None:
    print(f"export: {path}", file=out)
    print(f"checkpoint: origin {audit.origin or '?'} size {audit.size} root {audit.root}",
          file=out)
    if audit.witness is not None:
        who = ", ".join(audit.witness.cosigned) or "nobody"
        print(f"cosigned by: {who}", file=out)
    print(f"rows: {audit.rows}  proven: {audit.proven}", file=out)
    shown: Iterable[ExportFinding] = audit.findings[:MAX_LISTED]
    for f in shown:
        print(f"  {f}", file=out)
    first = audit.first_failure
    if first is None:
        print("RESULT: OK: the checkpoint verifies and every row is included in it, as shown",
              file=out)
    else:
        where = f"line {first.line}" if first.line is not None else "the export"
        print(f"RESULT: FAILED at {where}, check {first.check}: {first.message}", file=out)
