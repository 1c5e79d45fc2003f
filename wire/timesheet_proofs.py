"""The signed timesheet sidecar (docs/protocol.md §13.18): a plain timesheet CSV (or NDJSON)
that a third party checks offline against the ledger's signed checkpoint, and recomputes.

``timeclock-collector timesheet --out FILE --log-key KEY`` writes ``FILE`` unchanged (any
importer reads it) and ``FILE.sidecar.json``: the unsigned sidecar's members (query, rules,
ledger snapshot, the file's SHA-256, counts) plus

    "proofs": {"format": PROOFS_FORMAT, "checkpoint": <C2SP note, every signature line>,
               "employees": {<employee_id>: {"timezone": <IANA name>}},
               "punches": [{"employee_id", "entry", "body", "leaf_index", "inclusion_path"}],
               "corrections": [{"entry", "body", "leaf_index", "inclusion_path"}]},
    "signature": {"key_id": <log key id>, "sig": <base64 Ed25519>}

``sig`` signs ``CONTEXT + canonical(sidecar without "signature")`` (wire.canonical, the same
pattern as the evidence manifest). ``punches`` holds every punch the file is computed from
(entry, signed punch body, RFC 9162 inclusion path to the note's root), ``corrections`` every
approved ``correction`` entry whose value a row uses.

:func:`verify_timesheet` checks, each a numbered step with its own message: (1) the signature
under a pinned log key; (2) the file's SHA-256 and format; (3) the note under the log key (and a
witness policy's quorum when given), of the size the sidecar names as its ledger snapshot;
(4) each punch: a punch entry over its body, at its leaf index, included under the note's root,
inside the query's device-time range, listed once; (5) each correction: a correction entry over
its body, included, amending a listed punch (device, seq, original idx); (6) the hours: the
listed punches, with the latest listed correction per field applied, paired per employee in
their time zone with the sidecar's rules (wire.timesheets, the collector's own engine) give
byte for byte the file, and its row count.

What it does not prove, and says so: who held a badge (``employee_id`` per punch) and each
employee's time zone are the collector's word, signed by the log key, not derived from the
people directory's entries; that no punch of the query was left out (the sidecar lists the
devices' seq ranges, which a bundle checks). The sidecar carries the signed punches, so badge
credentials: it is kept like an audit bundle (0600), the CSV holds none.
"""

from __future__ import annotations

import base64
import hashlib
from collections import defaultdict
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from wire.bundle import LogNotes
from wire.canonical import canonical, loads
from wire.errors import DecodeError, WireError
from wire.keys import SigningKey, VerifyKey, b64decode_strict
from wire.ledger import Entry, body_hash
from wire.merkle import MAX_PROOF_HASHES, entry_leaf_hash, verify_inclusion
from wire.note import Checkpoint, Note
from wire.punch import ACTIONS, SignedPunch
from wire.timesheets import Rules, TimePunch, build, render
from wire.witness_policy import PolicyError, QuorumResult, WitnessPolicy

PROOFS_FORMAT = "timeclock timesheet proofs v1"
SIDECAR_KIND = "timeclock timesheet sidecar v1"
CONTEXT = b"timeclock/timesheet-sidecar/v1\n"
MAX_SIDECAR = 512 * 1024 * 1024
MAX_FILE = 512 * 1024 * 1024
_PROOF_KEYS = frozenset({"entry", "body", "leaf_index", "inclusion_path"})


class TimesheetProofError(WireError):
    """A timesheet or its sidecar cannot be read at all (missing, not JSON, no proofs)."""

    reason = "timesheet"


def signed_message(sidecar: dict[str, Any]) -> bytes:
    """The bytes the log key signs: the context line and the canonical sidecar without its
    ``signature`` member."""
    return CONTEXT + canonical({k: v for k, v in sidecar.items() if k != "signature"})


def sign_sidecar(sidecar: dict[str, Any], key: SigningKey) -> dict[str, Any]:
    """``sidecar`` with its ``signature`` member (replacing any)."""
    unsigned = {k: v for k, v in sidecar.items() if k != "signature"}
    return {**unsigned, "signature": {"key_id": key.key_id,
                                      "sig": key.sign(signed_message(unsigned))}}


def proof_item(entry: Entry, body: bytes, inclusion_path: Sequence[bytes],
               **extra: Any) -> dict[str, Any]:
    """One member of ``proofs.punches`` / ``proofs.corrections``."""
    return {**extra, "entry": entry.to_dict(), "body": loads(body), "leaf_index": entry.idx,
            "inclusion_path": [base64.b64encode(h).decode("ascii") for h in inclusion_path]}


# -- verifying -------------------------------------------------------------------------------

@dataclass(frozen=True)
class Problem:
    check: str          # signature | file | note | witness | punch | correction | hours
    message: str

    def __str__(self) -> str:
        return f"check {self.check}: {self.message}"


@dataclass
class TimesheetAudit:
    key_id: str = ""                     # the pinned log key that signed the sidecar
    fmt: str = ""
    rows: int = 0
    punches: int = 0                     # proven
    corrections: int = 0                 # proven
    employees: int = 0
    size: int | None = None
    origin: str | None = None
    witness: QuorumResult | None = None
    problems: list[Problem] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not self.problems

    def fail(self, check: str, message: str) -> None:
        self.problems.append(Problem(check, message))

    def to_dict(self) -> dict[str, Any]:
        return {"ok": self.ok, "key_id": self.key_id, "format": self.fmt, "rows": self.rows,
                "punches": self.punches, "corrections": self.corrections,
                "employees": self.employees, "checkpoint_size": self.size,
                "origin": self.origin,
                "witness": self.witness.to_dict() if self.witness is not None else None,
                "problems": [{"check": p.check, "message": p.message} for p in self.problems],
                "notes": self.notes}


def _read(path: Path, limit: int, what: str) -> bytes:
    try:
        with path.open("rb") as f:
            data = f.read(limit + 1)
    except OSError as e:
        raise TimesheetProofError(f"{path}: cannot read the {what}: {e.strerror}") from e
    if len(data) > limit:
        raise TimesheetProofError(f"{path}: the {what} is larger than {limit} bytes")
    return data


def _hash(value: Any) -> bytes:
    if not isinstance(value, str):
        raise DecodeError("inclusion_path holds a non-string", field="inclusion_path")
    return b64decode_strict(value, field="inclusion_path", length=32)


@dataclass(frozen=True, slots=True)
class _Proven:
    entry: Entry
    body: Any                 # the parsed JSON body


class _Verifier:
    def __init__(self, sidecar: dict[str, Any], keys: Sequence[VerifyKey],
                 policy: WitnessPolicy | None, origin: str | None, now_s: int | None) -> None:
        self.side, self.keys, self.policy, self.origin, self.now_s = (sidecar, keys, policy,
                                                                      origin, now_s)
        self.audit = TimesheetAudit()
        self.cp: Checkpoint | None = None

    def signature(self) -> None:
        # (1) the log key's signature over the canonical sidecar
        sig = self.side.get("signature")
        if not isinstance(sig, dict) or not isinstance(sig.get("sig"), str):
            self.audit.fail("signature", "the sidecar is not signed (no signature member): "
                            "make it with `timeclock-collector timesheet --log-key`")
            return
        message = signed_message(self.side)
        for key in self.keys:
            try:
                key.verify(message, sig["sig"])
            except WireError:
                continue
            self.audit.key_id = key.key_id
            return
        self.audit.fail("signature", f"the sidecar is not signed by any pinned log key "
                        f"({', '.join(k.key_id for k in self.keys)}): it was changed after "
                        f"signing, or signed by another key")

    def file(self, data: bytes) -> None:
        # (2) the file is the one the sidecar describes
        self.audit.fmt = str(self.side.get("format"))
        if self.audit.fmt not in ("csv", "ndjson"):
            self.audit.fail("file", f"format {self.audit.fmt[:20]!r}: only csv and ndjson "
                            "timesheets carry proofs")
        if hashlib.sha256(data).hexdigest() != self.side.get("sha256"):
            self.audit.fail("file", "the file's SHA-256 is not the sidecar's sha256: the "
                            "timesheet was changed after it was made")

    def note(self, proofs: dict[str, Any]) -> None:
        # (3) the checkpoint note, under the log key, of the sidecar's snapshot size
        try:
            text = proofs.get("checkpoint")
            if not isinstance(text, str):
                raise DecodeError("proofs.checkpoint must be the note text")
            note = Note.from_text(text)
            cp = LogNotes(self.keys, self.origin).open(note)
        except WireError as e:
            self.audit.fail("note", f"the sidecar's checkpoint does not verify: {e}")
            return
        self.cp = cp
        self.audit.size, self.audit.origin = cp.size, cp.origin
        ledger = self.side.get("ledger")
        if not isinstance(ledger, dict) or ledger.get("size") != cp.size:
            self.audit.fail("note", f"the sidecar's ledger size is not its checkpoint's size "
                            f"{cp.size}")
        if self.policy is None or self.policy.empty:
            return
        try:
            result = self.policy.check(cp, note, now_s=self.now_s)
        except (WireError, PolicyError) as e:
            self.audit.fail("witness", f"the sidecar's checkpoint: {e}")
            return
        self.audit.witness = result
        if not result.met:
            self.audit.fail("witness", f"the sidecar's checkpoint (size {cp.size}) carries "
                            f"{result.shortfall()} ({self.policy.describe()})")

    def proven(self, item: Any, kind: str, what: str) -> _Proven | None:
        """(4)/(5) an entry of ``kind`` over its body, at its leaf index, under the root."""
        try:
            if not isinstance(item, dict) or not set(item) >= _PROOF_KEYS:
                raise DecodeError(f"a proof holds {', '.join(sorted(_PROOF_KEYS))}")
            entry = Entry.from_dict(item["entry"])
            if entry.kind != kind:
                raise DecodeError(f"ledger idx {entry.idx} is a {entry.kind} entry, not a "
                                  f"{kind}")
            if item["leaf_index"] != entry.idx:
                raise DecodeError(f"leaf_index {item['leaf_index']!r} is not the entry's idx "
                                  f"{entry.idx}")
            if body_hash(canonical(item["body"])) != entry.body:
                raise DecodeError(f"ledger idx {entry.idx}: the body does not hash to the "
                                  f"entry's body hash: the {kind} was edited")
        except WireError as e:
            self.audit.fail(what, str(e))
            return None
        if self.cp is None:
            self.audit.fail(what, f"ledger idx {entry.idx}: no verified checkpoint to prove "
                            f"it against")
            return None
        try:
            path = item["inclusion_path"]
            if not isinstance(path, list) or len(path) > MAX_PROOF_HASHES:
                raise DecodeError(f"inclusion_path must be a list of at most "
                                  f"{MAX_PROOF_HASHES} hashes")
            verify_inclusion(entry_leaf_hash(entry), entry.idx, self.cp.size,
                             [_hash(h) for h in path], self.cp.root)
        except WireError as e:
            self.audit.fail(what, f"ledger idx {entry.idx}: the inclusion proof does not lead "
                            f"to the checkpoint's root (a forged or stale proof): {e}")
            return None
        return _Proven(entry, item["body"])

    def punches(self, proofs: dict[str, Any]) -> dict[int, tuple[str, SignedPunch]]:
        q = self.side.get("query")
        query: dict[str, Any] = q if isinstance(q, dict) else {}
        since, until = query.get("since"), query.get("until")
        out: dict[int, tuple[str, SignedPunch]] = {}
        items = proofs.get("punches")
        if not isinstance(items, list):
            self.audit.fail("punch", "proofs.punches must be a list")
            return out
        for item in items:
            p = self.proven(item, "punch", "punch")
            if p is None:
                continue
            idx = p.entry.idx
            try:
                sp = SignedPunch.from_dict(p.body)
            except WireError as e:
                self.audit.fail("punch", f"ledger idx {idx}: not a signed punch: {e}")
                continue
            emp = item.get("employee_id")
            ts = sp.punch.ts
            if not isinstance(emp, str) or not emp:
                self.audit.fail("punch", f"ledger idx {idx}: no employee_id")
            elif idx in out:
                self.audit.fail("punch", f"ledger idx {idx} is listed twice")
            elif (isinstance(since, int) and ts < since) or (isinstance(until, int)
                                                            and ts >= until):
                self.audit.fail("punch", f"ledger idx {idx}: device time {ts} is outside "
                                f"the query's [{since}, {until})")
            else:
                out[idx] = (emp, sp)
        self.audit.punches = len(out)
        return out

    def corrections(self, proofs: dict[str, Any], punches: dict[int, tuple[str, SignedPunch]]
                    ) -> dict[int, dict[str, tuple[int, Any]]]:
        """original idx -> field -> (correction idx, value): the latest listed per field."""
        out: dict[int, dict[str, tuple[int, Any]]] = defaultdict(dict)
        items = proofs.get("corrections", [])
        if not isinstance(items, list):
            self.audit.fail("correction", "proofs.corrections must be a list")
            return out
        for item in items:
            p = self.proven(item, "correction", "correction")
            if p is None:
                continue
            idx = p.entry.idx
            b: dict[str, Any] = p.body if isinstance(p.body, dict) else {}
            fld, value = b.get("field"), b.get("after")
            orig = b.get("original_idx")
            target = punches.get(orig) if isinstance(orig, int) else None
            if target is None or not isinstance(orig, int):
                self.audit.fail("correction", f"ledger idx {idx}: amends idx {orig!r}, which "
                                f"is not a listed punch")
                continue
            pp = target[1].punch
            if (b.get("device"), b.get("seq")) != (pp.device, pp.seq) or not orig < idx:
                self.audit.fail("correction", f"ledger idx {idx}: names another punch than "
                                f"the one at idx {orig}")
                continue
            if fld not in ("action", "ts") or not ((fld == "action" and value in ACTIONS)
                    or (fld == "ts" and isinstance(value, int)
                        and not isinstance(value, bool))):
                self.audit.fail("correction", f"ledger idx {idx}: field {fld!r} = "
                                f"{str(value)[:30]!r} is not a correction of action or ts")
                continue
            seen = out[orig].get(fld)
            if seen is None or seen[0] < idx:
                out[orig][fld] = (idx, value)
            self.audit.corrections += 1
        return out

    def hours(self, data: bytes, punches: dict[int, tuple[str, SignedPunch]],
              fixes: dict[int, dict[str, tuple[int, Any]]], proofs: dict[str, Any]) -> None:
        # (6) recompute the file from the proven punches with the sidecar's rules
        try:
            rules = Rules.from_dict(self.side.get("rules"))
        except WireError as e:
            self.audit.fail("hours", str(e))
            return
        zones = proofs.get("employees")
        if not isinstance(zones, dict):
            self.audit.fail("hours", "proofs.employees must map employee ids to time zones")
            return
        by_emp: dict[str, list[TimePunch]] = defaultdict(list)
        for idx, (emp, sp) in punches.items():
            p, fixed = sp.punch, fixes.get(idx, {})
            ts = int(fixed["ts"][1]) if "ts" in fixed else p.ts
            action = str(fixed["action"][1]) if "action" in fixed else p.action
            used = tuple(sorted({i for i, _ in fixed.values()}))
            by_emp[emp].append(TimePunch(ts, action, p.device, p.seq, used))
        sheets = []
        for emp in sorted(by_emp):
            tz = zones.get(emp)
            if not isinstance(tz, dict) or not isinstance(tz.get("timezone"), str):
                self.audit.fail("hours", f"employee {emp[:64]!r}: no time zone in "
                                "proofs.employees")
                return
            try:
                sheets.append(build(emp, tz["timezone"], by_emp[emp], rules))
            except WireError as e:
                self.audit.fail("hours", f"employee {emp[:64]!r}: {e}")
                return
        self.audit.employees = len(sheets)
        if self.audit.fmt not in ("csv", "ndjson"):
            return
        text, rows = render(sheets, self.audit.fmt)
        self.audit.rows = rows
        if rows != self.side.get("rows"):
            self.audit.fail("hours", f"the sidecar counts {self.side.get('rows')!r} rows; the "
                            f"proven punches give {rows}")
        expected = text.encode()
        if expected != data:
            self.audit.fail("hours", _first_difference(expected, data))


def _first_difference(expected: bytes, got: bytes) -> str:
    want = expected.decode().splitlines()
    have = got.decode("utf-8", "replace").splitlines()
    for n, (a, b) in enumerate(zip(want, have, strict=False), start=1):
        if a != b:
            return (f"line {n} of the timesheet is not what the proven punches give: "
                    f"recomputed {a[:160]!r}, the file has {b[:160]!r}")
    return (f"the timesheet has {len(have)} lines, the proven punches give {len(want)}: "
            f"lines were added or removed")


def verify_timesheet(path: Path, sidecar_path: Path, keys: Sequence[VerifyKey], *,
                     policy: WitnessPolicy | None = None, origin: str | None = None,
                     now_s: int | None = None) -> TimesheetAudit:
    """Verify a timesheet file against its signed sidecar: steps (1)-(6) of the module doc.
    Every step runs, so the audit lists every problem, not only the first."""
    data = _read(Path(path), MAX_FILE, "timesheet")
    raw = _read(Path(sidecar_path), MAX_SIDECAR, "sidecar")
    try:
        side = loads(raw)
    except WireError as e:
        raise TimesheetProofError(f"{sidecar_path}: not a JSON sidecar ({e})") from e
    if not isinstance(side, dict) or side.get("export") != SIDECAR_KIND:
        raise TimesheetProofError(f"{sidecar_path}: not a {SIDECAR_KIND!r}")
    proofs = side.get("proofs")
    if not isinstance(proofs, dict) or proofs.get("format") != PROOFS_FORMAT:
        raise TimesheetProofError(f"{sidecar_path}: the sidecar carries no proofs; make it "
                                  f"with `timeclock-collector timesheet --log-key`")
    v = _Verifier(side, keys, policy, origin, now_s)
    v.signature()
    v.file(data)
    v.note(proofs)
    punches = v.punches(proofs)
    fixes = v.corrections(proofs, punches)
    v.hours(data, punches, fixes, proofs)
    v.audit.notes += [
        "employee_id per punch and each employee's time zone are the collector's word "
        "(signed), not derived from the people directory's entries",
        f"{_unassigned(side)} punch(es) of badges held by nobody are counted in the sidecar, "
        "not listed or proven"]
    return v.audit


def _unassigned(side: dict[str, Any]) -> int:
    counts = side.get("unassigned_punches")
    if not isinstance(counts, dict):
        return 0
    return sum(v for v in counts.values() if isinstance(v, int) and not isinstance(v, bool))


def print_timesheet_report(audit: TimesheetAudit, path: Path, out: Any) -> None:
    print(f"timesheet: {path} ({audit.fmt}, {audit.rows} rows, {audit.employees} "
          f"employees)", file=out)
    print(f"sidecar: signed by log key {audit.key_id or 'NONE PINNED'}; checkpoint origin "
          f"{audit.origin or '?'} size {audit.size}", file=out)
    if audit.witness is not None:
        print(f"cosigned by: {', '.join(audit.witness.cosigned) or 'nobody'}", file=out)
    print(f"proven: {audit.punches} punches, {audit.corrections} corrections", file=out)
    for note in audit.notes:
        print(f"  note: {note}", file=out)
    for p in audit.problems[:50]:
        print(f"  FAILED {p}", file=out)
    if audit.ok:
        print("RESULT: OK: the sidecar is signed, every punch is in the checkpoint, and the "
              "hours recomputed from them are the file", file=out)
    else:
        first = audit.problems[0]
        print(f"RESULT: FAILED, {first}", file=out)
