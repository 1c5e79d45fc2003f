"""Build real ledgers and audit bundles for tests: real keys, real signatures, real hashes.

``standard_ledger()`` starts with the 4 entries and the checkpoint of tests/vectors/punch-v1.json
(byte for byte), then adds a second device with out-of-order arrivals, a rejection, a key
rotation, an access event, a correction, a retention that deletes two bodies, and checkpoints.
The ``*_lines`` helpers edit a written bundle the way an attacker would.

Version 2 (issue 10): with ``v2=True`` every checkpoint is also a C2SP checkpoint note over the
builder's Merkle tree (wire.merkle.MemoryTree), signed with the log key under ``ORIGIN`` and
cosigned by ``witnesses`` (an external witness and clock-0017 by default), written to
``checkpoints.v2.ndjson``. v1 builders (the default) write no v2 file, as v1 bundles do.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from wire import ZERO_HASH
from wire.bundle import write_bundle
from wire.canonical import canonical
from wire.export_proofs import header_proofs, iso, row_proof
from wire.keys import SigningKey
from wire.ledger import Checkpoint, Entry, SignedCheckpoint, make_entry
from wire.merkle import MemoryTree, entry_leaf_hash, inclusion_proof, root
from wire.note import COSIGNATURE_V1, Note, NoteVerifier
from wire.note import Checkpoint as NoteCheckpoint
from wire.punch import Punch, SignedPunch
from wire.rotation import RotationRequest

VECTORS: dict[str, Any] = json.loads(
    (Path(__file__).parent.parent / "vectors" / "punch-v1.json").read_text())

DEVICE_KEY = SigningKey(bytes.fromhex(VECTORS["device_key"]["seed_hex"]))
COLLECTOR_KEY = SigningKey(bytes.fromhex(VECTORS["collector_key"]["seed_hex"]))
BOOT = "6b2f1e0c-3c4d-4e8a-9f1a-2b3c4d5e6f70"
T0 = 1764140460000000


def seeded_key(label: str) -> SigningKey:
    """A deterministic test key (never use such keys outside tests)."""
    return SigningKey(hashlib.sha256(b"timeclock-test-key\n" + label.encode()).digest())


DEVICE_B_KEY = seeded_key("clock-0042")
DEVICE_KEY_V2 = seeded_key("clock-0017 v2")
ROGUE_KEY = seeded_key("rogue")

ORIGIN = "acme.example/timeclock"
EXTERNAL_WITNESS = ("witness.hr.acme.example", seeded_key("witness hr"))
CLOCK_WITNESS = (f"{ORIGIN}/devices/clock-0042", DEVICE_B_KEY)
WITNESSES = (EXTERNAL_WITNESS, CLOCK_WITNESS)
COSIGNED_AT = 1764140500       # POSIX seconds of every test cosignature


def witness_vkey(witness: tuple[str, SigningKey]) -> str:
    name, key = witness
    return NoteVerifier(name, key.verify_key, COSIGNATURE_V1).vkey()


def deleted_ranges(idxs: list[int]) -> list[list[int]]:
    """A retention body's ``deleted``: sorted distinct ``idxs`` as [first, last] ranges (written
    out here, not taken from wire.bodies_retention.idx_ranges, which the verifier checks with)."""
    ranges: list[list[int]] = []
    for i in idxs:
        if ranges and ranges[-1][1] == i - 1:
            ranges[-1][1] = i
        else:
            ranges.append([i, i])
    return ranges


def make_punch(device: str, key: SigningKey, seq: int, prev: str, *, ts: int,
               credential: str = "em4100:0012345678", action: str = "in") -> SignedPunch:
    return Punch(device=device, seq=seq, prev=prev, ts=ts, clock="synced", boot=BOOT,
                 mono=ts % 10**9, reader="front", credential=credential, action=action,
                 key=key.key_id).sign(key)


@dataclass
class LedgerBuilder:
    """An in-memory ledger: entries with hashes and bodies, plus signed checkpoints."""

    log_key: SigningKey = COLLECTOR_KEY
    entries: list[tuple[Entry, str, bytes | None]] = field(default_factory=list)
    checkpoints: list[SignedCheckpoint] = field(default_factory=list)
    heads: dict[str, tuple[int, str]] = field(default_factory=dict)   # device -> (seq, hash)
    clock: int = T0
    v2: bool = False
    origin: str = ORIGIN
    witnesses: tuple[tuple[str, SigningKey], ...] = WITNESSES
    tree: MemoryTree = field(default_factory=MemoryTree)
    notes: list[str] = field(default_factory=list)
    device_keys: dict[str, SigningKey] = field(default_factory=dict)   # current, per device

    @property
    def head(self) -> str:
        return self.entries[-1][1] if self.entries else ZERO_HASH

    def _at(self, at: int | None) -> int:
        self.clock = at if at is not None else self.clock + 1000
        return self.clock

    def append(self, kind: str, body: dict[str, Any] | bytes, *, at: int | None = None) -> int:
        raw = body if isinstance(body, bytes) else canonical(body)
        entry = make_entry(idx=len(self.entries), kind=kind, at=self._at(at), body=raw,
                           prev=self.head)
        self.entries.append((entry, entry.hash(), raw))
        self.tree.append([entry_leaf_hash(entry)])
        return entry.idx

    def enrol(self, device: str, key: SigningKey, *, site: str = "hq",
              at: int | None = None) -> int:
        self.device_keys[device] = key
        return self.append("device", {"event": "enrolled", "device": device, "site": site,
                                      "key": key.key_id, "signing_key": key.verify_key.b64},
                           at=at)

    def rotate(self, device: str, key: SigningKey, from_seq: int, *,
               old: SigningKey | None = None) -> int:
        """A rotation carrying the clock's request, signed by ``old`` (default: the key the
        builder last registered for ``device``)."""
        old = old or self.device_keys[device]
        request = RotationRequest(device, old.key_id, key.key_id, key.verify_key, from_seq,
                                  self.clock).sign(old)
        self.device_keys[device] = key
        return self.append("device", {"event": "rotated", "device": device, "key": key.key_id,
                                      "signing_key": key.verify_key.b64, "from_seq": from_seq,
                                      "request": request.to_dict()})

    def revoke(self, device: str, reason: str = "stolen") -> int:
        return self.append("device", {"event": "revoked", "device": device, "reason": reason})

    def signed(self, device: str, key: SigningKey, seq: int | None = None,
               **kw: Any) -> SignedPunch:
        """The device's next punch (or punch ``seq`` linked to the chain head)."""
        last_seq, last_hash = self.heads.get(device, (0, ZERO_HASH))
        seq = last_seq + 1 if seq is None else seq
        sp = make_punch(device, key, seq, last_hash, ts=kw.pop("ts", self.clock), **kw)
        if seq > last_seq:
            self.heads[device] = (seq, sp.hash())
        return sp

    def punch(self, sp: SignedPunch, *, at: int | None = None) -> int:
        return self.append("punch", sp.to_bytes(), at=at)

    def delete_bodies(self, idxs: list[int]) -> None:
        for i in idxs:
            entry, h, _ = self.entries[i]
            self.entries[i] = (entry, h, None)

    def checkpoint(self, *, at: int | None = None) -> SignedCheckpoint:
        cp = Checkpoint(log=self.log_key.key_id, size=len(self.entries), head=self.head,
                        at=self._at(at)).sign(self.log_key)
        self.checkpoints.append(cp)
        if self.v2:
            self.checkpoint_v2()
        return cp

    def checkpoint_v2(self, *, size: int | None = None,
                      witnesses: tuple[tuple[str, SigningKey], ...] | None = None,
                      timestamp: int = COSIGNED_AT) -> str:
        """A v2 checkpoint note of ``size`` (default: every entry), signed and cosigned."""
        n = len(self.entries) if size is None else size
        cp = NoteCheckpoint(self.origin, n, root(self.tree, n))
        note = cp.signed_note(self.log_key)
        for name, key in self.witnesses if witnesses is None else witnesses:
            note = note.with_signature(cp.cosign(key, name, timestamp=timestamp))
        self.notes.append(note.to_text())
        return self.notes[-1]

    def write(self, directory: Path) -> Path:
        write_bundle(directory, self.entries, self.checkpoints, [self.log_key.verify_key],
                     notes=self.notes if self.v2 else None)
        return directory


def vector_ledger(*, v2: bool = False) -> LedgerBuilder:
    """The ledger and checkpoint of tests/vectors/punch-v1.json, rebuilt."""
    b = LedgerBuilder(v2=v2)
    for vec in VECTORS["ledger"]:
        e = vec["entry"]
        b.append(e["kind"], vec["body"].encode(), at=e["at"])
    for vec in VECTORS["punches"]:
        b.heads["clock-0017"] = (vec["punch"]["seq"], vec["punch_hash"])
    b.device_keys["clock-0017"] = DEVICE_KEY
    b.checkpoint(at=VECTORS["checkpoint"]["checkpoint"]["at"])
    return b


def standard_ledger(*, v2: bool = False) -> LedgerBuilder:
    """A valid 18-entry ledger (idx noted below) with checkpoints of size 4, 10, 15 and 18
    (with ``v2``, each also as a cosigned checkpoint note)."""
    b = vector_ledger(v2=v2)                                  # 0 enrol A, 1-3 A#1..3, cp size 4
    b.enrol("clock-0042", DEVICE_B_KEY, site="plant")     # 4
    p1 = b.signed("clock-0042", DEVICE_B_KEY)
    p2 = b.signed("clock-0042", DEVICE_B_KEY, credential="hid:77")
    p3 = b.signed("clock-0042", DEVICE_B_KEY, action="out")
    b.punch(p1)                                           # 5  B#1
    b.punch(p3)                                           # 6  B#3 arrives before B#2
    b.punch(p2)                                           # 7  B#2
    b.append("rejection", {"reason": "bad-signature", "detail": "signature does not verify",
                           "topic": "timeclock/v1/devices/clock-0042/punches",
                           "raw_sha256": hashlib.sha256(b"garbage").hexdigest(),
                           "received_at": b.clock, "device": "clock-0042"})   # 8
    b.rotate("clock-0017", DEVICE_KEY_V2, from_seq=4)     # 9
    b.checkpoint()                                        # size 10
    b.punch(b.signed("clock-0017", DEVICE_KEY_V2))        # 10 A#4 under the new key
    b.append("access", {"principal": "hr-alice", "action": "read",
                        "resource": "/v1/punches", "at": b.clock})           # 11
    b.append("correction", {"original_idx": 2, "editor": "sup-bob", "subject": "emp-17",
                            "approver": "hr-alice", "reason": "wrong-action",
                            "before": {"action": "in"}, "after": {"action": "out"}})  # 12
    b.punch(b.signed("clock-0042", DEVICE_B_KEY))         # 13 B#4
    b.append("retention", {"policy": "test-30d", "deleted": [[8, 8], [11, 11]], "count": 2,
                           "at": b.clock})                # 14
    b.delete_bodies([8, 11])
    b.checkpoint()                                        # size 15
    b.punch(b.signed("clock-0017", DEVICE_KEY_V2))        # 15 A#5
    b.punch(b.signed("clock-0042", DEVICE_B_KEY))         # 16 B#5
    b.append("access", {"principal": "auditor-carol", "action": "export", "at": b.clock})  # 17
    b.checkpoint()                                        # size 18
    return b


# -- editing a written bundle, as an attacker would ------------------------------------------

def read_lines(directory: Path, name: str = "ledger.ndjson") -> list[dict[str, Any]]:
    return [json.loads(line) for line in (directory / name).read_text().splitlines()]


def write_lines(directory: Path, lines: list[dict[str, Any]],
                name: str = "ledger.ndjson") -> None:
    (directory / name).write_bytes(b"".join(canonical(x) + b"\n" for x in lines))


def rehash(line: dict[str, Any], *, idx: int | None = None, prev: str | None = None) -> None:
    """Make a line self-consistent again: body hash, optional new idx/prev, entry hash."""
    e = line["entry"]
    if line["body"] is not None:
        e["body"] = hashlib.sha256(canonical(line["body"])).hexdigest()
    if idx is not None:
        e["idx"] = idx
    if prev is not None:
        e["prev"] = prev
    line["hash"] = Entry.from_dict(e).hash()


def rechain(lines: list[dict[str, Any]], start: int = 0) -> None:
    """Renumber and re-link every line from ``start`` (what a careful forger does)."""
    for i in range(start, len(lines)):
        prev = lines[i - 1]["hash"] if i > 0 else ZERO_HASH
        rehash(lines[i], idx=i, prev=prev)


def append_line(lines: list[dict[str, Any]], kind: str, body: Any, at: int) -> None:
    """Append a well-formed, correctly chained entry (an insider with database access)."""
    prev = lines[-1]["hash"] if lines else ZERO_HASH
    line = {"entry": {"v": 1, "idx": len(lines), "kind": kind, "at": at, "body": "",
                      "prev": prev}, "hash": "", "body": body}
    rehash(line)
    lines.append(line)


# -- a payroll export with proofs (wire.export_proofs), as the collector writes one ------------

def proof_export(b: LedgerBuilder, path: Path, *, note: str | None = None) -> Path:
    """Write the NDJSON payroll export of every punch of ``b`` with a proof per row against
    ``note`` (default: b's newest v2 note), in the collector's row shape."""
    text = note if note is not None else b.notes[-1]
    size = NoteCheckpoint.from_body(Note.from_text(text).body).size
    lines: list[dict[str, Any]] = [{"header": {"export": "timeclock payroll v1", "format": "ndjson",
                         "ledger": {"size": size, "head": b.entries[size - 1][1]},
                         "proofs": header_proofs(text)}}]
    for entry, h, body in b.entries[:size]:
        if entry.kind != "punch" or body is None:
            continue
        p = SignedPunch.from_bytes(body).punch
        effective = {"action": p.action, "device_time": iso(p.ts), "device_time_us": p.ts}
        lines.append({"action": p.action, "clock": p.clock, "corrections": {},
                      "credential": p.credential, "device": p.device,
                      "device_time": iso(p.ts), "device_time_us": p.ts,
                      "effective": effective, "entry_hash": h, "key": p.key,
                      "ledger_idx": entry.idx, "reader": p.reader,
                      "recorded_at": iso(entry.at), "recorded_at_us": entry.at, "seq": p.seq,
                      "site": "hq",
                      "proof": row_proof(entry, body, inclusion_proof(b.tree, entry.idx, size))})
    lines.append({"trailer": {"rows": len(lines) - 1}})
    path.write_text("".join(json.dumps(x, sort_keys=True) + "\n" for x in lines))
    return path
