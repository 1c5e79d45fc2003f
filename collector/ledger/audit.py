"""Verify a live ledger store with the shared auditor (wire.audit.LedgerAuditor), incrementally.

Reads are raw: entry rows and body bytes exactly as stored (``raw_entries``), never the
derived tables, so an edit anywhere in the chain or its bodies is caught and named by idx.

Incremental: after a clean run, a small state file remembers the largest checkpoint that
verified (its size and head), the device keys registered before it, and the store's
identity (hash of entry 0). The next run feeds only entries from that size on, starting
the auditor at that trusted head; ``full=True`` re-reads everything. Entries before the
resume point are attested by the signed checkpoint; ``prior_punch_hash`` lookups for the
device chains across the resume point read the punch index and then re-check the raw entry
and body it points to.

Version 2 (issue 10, docs/protocol.md §13.4), the rules of ``timeclock-verify`` where they
apply to a live store:

- the state's checkpoint is one the auditor already holds: a store smaller than it is
  truncated, and a store whose entry size-1 no longer has its head was rewritten below it
  (also on a ``full`` run, which re-reads from idx 0 but still checks the state);
- the stored Merkle tree is recomputed from the entry rows over the range read
  (``SQLStore.check_tree``), so a root or proof the store serves is the entries' own;
- every v2 checkpoint note opens under the log key and its root equals the store's tree at its
  size (on a full run, also the root the auditor computes from the entries while streaming);
- the tail: a live store is normally ahead of its newest checkpoint by up to one checkpoint
  interval, so an uncovered tail is reported (``VerifyResult.uncovered``), and fails only with
  ``require_coverage`` (what a bundle must meet: its export signs a checkpoint of its size).

Sampled re-check (control D5, issue 11): an incremental run also re-reads ``sample`` entries
drawn at random from below its resume point (``random.SystemRandom`` unless the caller
injects an RNG, so an insider cannot predict which rows are looked at) and checks each one's
row hash, its links to both neighbours, its body hash and its stored Merkle leaf. An edit
there must otherwise be carried up to the state's checkpoint head, which ``_held`` catches.
The state remembers when the last run from idx 0 was (``last_full_us``), and the result says
what was covered: the range read, how many older entries were sampled, and that time.
"""

from __future__ import annotations

import base64
import json
import os
import random
import tempfile
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from collector import CollectorError, LedgerError
from collector.ledger import checkpoint_tables, retention_tables
from collector.ledger.projections import projection_findings
from collector.ledger.sqlbase import SQLStore
from wire import ZERO_HASH
from wire.audit import AuditReport, Check, Finding, KeyState, LedgerAuditor
from wire.bundle import LogNotes
from wire.errors import WireError
from wire.keys import VerifyKey
from wire.ledger import Entry, SignedCheckpoint, body_hash
from wire.merkle import entry_leaf_hash
from wire.note import Checkpoint as NoteCheckpoint
from wire.note import Note
from wire.punch import SignedPunch

STATE_VERSION = 1
Progress = Callable[[int, int], None]   # (entries done, entries total)
PROGRESS_EVERY = 2000
SAMPLE_DEFAULT = 64               # older entries re-checked by each incremental run


class VerifyStateError(CollectorError):
    """The verify state file is unreadable or belongs to another ledger."""


@dataclass(frozen=True)
class VerifyState:
    store_id: str                 # hash of entry 0: which ledger this state belongs to
    checkpoint: SignedCheckpoint  # the resume point: verified clean up to its size
    keys: tuple[KeyState, ...]    # device keys registered before checkpoint.size
    last_full_us: int | None = None   # when the last run from idx 0 finished clean

    def to_dict(self) -> dict[str, Any]:
        return {"v": STATE_VERSION, "store_id": self.store_id,
                "last_full_us": self.last_full_us,
                "checkpoint": self.checkpoint.to_dict(),
                "keys": [{"device": k.device, "key": k.key_id, "public": k.verify_key.b64,
                          "from_seq": k.from_seq, "until_seq": k.until_seq,
                          "revoked_at_idx": k.revoked_at_idx,
                          "registered_idx": k.registered_idx} for k in self.keys]}

    @classmethod
    def from_dict(cls, d: Any) -> VerifyState:
        try:
            if d["v"] != STATE_VERSION:
                raise VerifyStateError(f"verify state version {d['v']!r} is not supported")
            keys = tuple(KeyState(k["device"], k["key"], VerifyKey.from_b64(k["public"]),
                                  from_seq=k["from_seq"], until_seq=k["until_seq"],
                                  revoked_at_idx=k["revoked_at_idx"],
                                  registered_idx=k["registered_idx"]) for k in d["keys"])
            last_full = d.get("last_full_us")      # absent in states written before D5
            if last_full is not None and (not isinstance(last_full, int)
                                          or isinstance(last_full, bool)):
                raise VerifyStateError(f"verify state: last_full_us {last_full!r} is not "
                                       f"an integer")
            return cls(str(d["store_id"]), SignedCheckpoint.from_dict(d["checkpoint"]), keys,
                       last_full)
        except (KeyError, TypeError, WireError) as e:
            raise VerifyStateError(f"verify state is malformed: {e}") from e


def load_state(path: Path) -> VerifyState | None:
    if not path.exists():
        return None
    try:
        return VerifyState.from_dict(json.loads(path.read_text()))
    except (OSError, ValueError) as e:
        raise VerifyStateError(f"{path}: cannot read verify state: {e}") from e


def save_state(path: Path, state: VerifyState) -> None:
    """Write atomically (temp file + rename) so a crash never leaves half a state."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=".verify-state-", dir=path.parent)
    try:
        with os.fdopen(fd, "w") as f:
            json.dump(state.to_dict(), f, sort_keys=True, indent=1)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


@dataclass(frozen=True)
class VerifyResult:
    report: AuditReport
    resumed_from: int             # first idx read (0 for a full run)
    size: int                     # entries in the store when the run started
    state: VerifyState | None     # the new resume point (None when not clean/no checkpoint)
    uncovered: int = 0            # entries after the newest checkpoint that verified
    notes: int = 0                # v2 checkpoint notes checked
    sampled: int = 0              # entries below resumed_from re-checked at random (D5)
    last_full_us: int | None = None   # when the last clean run from idx 0 was (None: unknown)

    @property
    def ok(self) -> bool:
        return self.report.ok


def store_id(store: SQLStore) -> str:
    first = next(store.raw_entries(0, 1), None)
    return ZERO_HASH if first is None else str(first.hash)


def _prior_punch_hash(store: SQLStore, start: int) -> Callable[[str, int], str | None]:
    def lookup(device: str, seq: int) -> str | None:
        found = store.punch_hash(device, seq)
        if found is None or found[1] >= start:
            return None
        phash, idx = found
        raw = next(store.raw_entries(idx, idx + 1), None)
        if raw is None or raw.kind != "punch":
            return None
        if raw.body is None:
            return phash        # deleted by retention: the index is all that is left
        try:
            sp = SignedPunch.from_bytes(raw.body)
        except WireError:
            return None
        ok = (body_hash(raw.body) == raw.body_hash and sp.punch.device == device
              and sp.punch.seq == seq)
        return sp.hash() if ok else None
    return lookup


def _held(store: SQLStore, size: int, state: VerifyState) -> list[Finding]:
    """(9) the state's checkpoint is held by the auditor: the store is not smaller than it
    and still has its head at its size (a re-hash below it changes that hash)."""
    cp = state.checkpoint.checkpoint
    where = (f"the checkpoint of size {cp.size} that an earlier verify verified (head "
             f"{cp.head[:12]}…, in the verify state)")
    if size < cp.size:
        return [Finding(size, Check.TRUSTED.value, f"the ledger is smaller than a checkpoint "
                        f"you hold — truncated: {size} entries, below {where}", True)]
    last = next(store.raw_entries(cp.size - 1, cp.size), None) if cp.size else None
    if last is not None and str(last.hash) != cp.head:
        return [Finding(cp.size - 1, Check.TRUSTED.value, f"the ledger was rewritten below a "
                        f"checkpoint you hold: entry {cp.size - 1} hashes to "
                        f"{str(last.hash)[:12]}…, not the head of {where}", True)]
    return []


def _tree_findings(store: SQLStore, start: int, size: int) -> list[Finding]:
    """The stored tree over leaves start … size − 1 is the one the entry rows give."""
    if size <= start:
        return []
    try:
        check = store.check_tree(start, size)
    except LedgerError as e:        # e.g. entries missing: the auditor names where, (1)
        return [Finding(None, Check.CHECKPOINT_V2.value, f"the stored Merkle tree cannot be "
                        f"checked: {e}", True)]
    # Named at the node's last leaf: the entry whose append completed it.
    return [Finding(((f.index + 1) << f.level) - 1, Check.CHECKPOINT_V2.value,
                    f"stored Merkle node (level {f.level}, index {f.index}): {f.message}: "
                    f"roots and proofs served from it are not the entries' own", True)
            for f in check.findings]


def _note_findings(store: SQLStore, notes: Sequence[str], log_keys: Mapping[str, VerifyKey],
                   *, size: int, start: int, auditor: LedgerAuditor | None) -> list[Finding]:
    """(8) each v2 note opens under the log key and matches the store's tree at its size;
    with ``auditor`` (a run from idx 0) it is also fed, to match the recomputed tree."""
    opener = LogNotes(log_keys.values())
    out: list[Finding] = []
    for n, text in enumerate(notes, 1):
        try:
            cp = opener.open(Note.from_text(text))
        except WireError as e:
            out.append(Finding(None, Check.CHECKPOINT_V2.value,
                               f"stored v2 checkpoint #{n}: {e}", True))
            continue
        if cp.size < start:
            continue        # attested by the checkpoint this run resumed from
        out.extend(_note_root(store, cp, n, size))
        if auditor is not None:
            auditor.feed_note(cp)
    return out


def _note_root(store: SQLStore, cp: NoteCheckpoint, n: int, size: int) -> list[Finding]:
    what = f"stored v2 checkpoint #{n} (size {cp.size})"
    if cp.size > size:
        return [Finding(size, Check.CHECKPOINT_V2.value, f"{what} was signed, but the ledger "
                        f"ends at {size} entries: idx {size}..{cp.size - 1} are missing "
                        f"(truncated)", True)]
    stored = store.merkle_root(cp.size)
    if stored != cp.root:
        return [Finding(cp.size - 1 if cp.size else None, Check.CHECKPOINT_V2.value,
                        f"{what} signed root {base64.b64encode(cp.root).decode()[:16]}…, the "
                        f"store's tree has {base64.b64encode(stored).decode()[:16]}… at that "
                        f"size", True)]
    return []


def _sampled_findings(store: SQLStore, start: int, head: str, count: int,
                      rng: random.Random) -> tuple[int, list[Finding]]:
    """(how many, findings) of re-checking ``count`` random entries below ``start`` (whose
    entry start − 1 hashes to ``head``, the resume point): each row's hash, its links to the
    neighbours, its body hash and its stored Merkle leaf."""
    picks = rng.sample(range(start), min(count, start)) if start > 0 and count > 0 else []
    out: list[Finding] = []
    for i in sorted(picks):
        rows = {r.idx: r for r in store.raw_entries(max(i - 1, 0), i + 2)}
        raw = rows.get(i)
        what = f"sampled entry {i} (below the resume point {start})"
        if raw is None:
            out.append(Finding(i, Check.ENTRY.value, f"{what} is missing", True))
            continue
        try:
            entry = Entry(idx=raw.idx, kind=raw.kind, at=raw.at, body=raw.body_hash,
                          prev=raw.prev)
        except (WireError, TypeError) as e:
            out.append(Finding(i, Check.ENTRY.value, f"{what} is malformed: {e}", True))
            continue
        if entry.hash() != str(raw.hash):
            out.append(Finding(i, Check.ENTRY_HASH.value, f"{what}: its row hashes to "
                               f"{entry.hash()[:12]}…, not the stored {str(raw.hash)[:12]}…",
                               True))
        before = rows.get(i - 1)
        want_prev = ZERO_HASH if i == 0 else (str(before.hash) if before else None)
        if want_prev is None or entry.prev != want_prev:
            out.append(Finding(i, Check.PREV.value, f"{what}: prev does not link to entry "
                               f"{i - 1}", True))
        after = rows.get(i + 1)
        next_prev = head if i + 1 == start else (str(after.prev) if after else None)
        if next_prev != str(raw.hash):
            out.append(Finding(i, Check.PREV.value, f"{what}: entry {i + 1} does not link to "
                               f"it", True))
        if raw.body is not None and body_hash(raw.body) != raw.body_hash:
            out.append(Finding(i, Check.BODY.value, f"{what}: its body does not hash to the "
                               f"entry's body hash (the body was edited)", True))
        try:
            leaf_ok = store.leaf_hash(i) == entry_leaf_hash(entry)
        except LedgerError:
            leaf_ok = False
        if not leaf_ok:
            out.append(Finding(i, Check.CHECKPOINT_V2.value, f"{what}: its stored Merkle leaf "
                               f"is not the entry's", True))
    return len(picks), out


def stored_notes(store: SQLStore) -> list[str]:
    """The store's v2 checkpoint notes, with every signature gathered, in size order; none
    for a ledger whose checkpoint v2 tables were never created (a v1 ledger)."""
    try:
        checkpoint_tables.ensure_schema(store)
    except LedgerError:
        return []       # PostgreSQL not migrated for v2: there is nothing v2 to check
    return [c.note for c in checkpoint_tables.all_checkpoints(store)]


def _resume(store: SQLStore, size: int, sid: str, state: VerifyState | None, *, full: bool
            ) -> tuple[int, str, tuple[KeyState, ...] | None, list[Finding]]:
    """(start idx, its head, prior keys, findings) of a run from ``state``."""
    if state is None:
        return 0, ZERO_HASH, None, []
    if state.store_id != sid:
        raise VerifyStateError("the verify state belongs to another ledger (entry 0 "
                               "differs); run a full verify" if not full else
                               "the verify state belongs to another ledger (entry 0 "
                               "differs): if the ledger was replaced on purpose, remove "
                               "the state file")
    findings = _held(store, size, state)
    if full or findings:        # re-read everything; a broken resume point is no resume point
        return 0, ZERO_HASH, None, findings
    cp = state.checkpoint.checkpoint
    return cp.size, cp.head, state.keys, findings


def verify_store(store: SQLStore, log_keys: Mapping[str, VerifyKey], *,
                 state: VerifyState | None = None, progress: Progress | None = None,
                 full: bool = False, notes: Sequence[str] | None = None,
                 require_coverage: bool = False, sample: int = SAMPLE_DEFAULT,
                 rng: random.Random | None = None, now_us: int | None = None
                 ) -> VerifyResult:
    """Audit ``store`` from ``state``'s checkpoint (or from idx 0) to its current end.

    With ``full`` the audit reads from idx 0 but still holds ``state``'s checkpoint as
    trusted. ``notes`` are v2 checkpoint notes to check (default: the store's own, from
    collector.ledger.checkpoint_tables). ``require_coverage`` makes an uncovered tail a failure.
    An incremental run re-checks ``sample`` random older entries, drawn with ``rng`` (default
    ``random.SystemRandom()``; tests inject a seeded one). ``now_us`` is recorded in the new
    state as the time of the last full run when this run read from idx 0.
    """
    if notes is None:
        notes = stored_notes(store)
    size, _ = store.head()
    sid = store_id(store)
    start, start_head, prior_keys, extra = _resume(store, size, sid, state, full=full)
    auditor = LedgerAuditor(log_keys, start_idx=start, start_head=start_head,
                            prior_keys=prior_keys,
                            prior_punch_hash=_prior_punch_hash(store, start) if start else None,
                            prior_entry=retention_tables.prior_entry(store.query)
                            if start else None,
                            prior_retention=retention_tables.prior_rules(store.query, start)
                            if start else (),
                            require_coverage=require_coverage)
    cps = [c for c in store.checkpoints() if c.checkpoint.size >= start]
    for c in cps:
        auditor.feed_checkpoint(c)
    extra.extend(_note_findings(store, notes, log_keys, size=size, start=start,
                                auditor=auditor if start == 0 else None))
    extra.extend(_tree_findings(store, start, size))
    # A run from idx 0 also re-derives the projections the collector serves from.
    extra.extend(projection_findings(store) if start == 0 else [])
    sampled, found = _sampled_findings(store, start, start_head, sample,
                                       rng if rng is not None else random.SystemRandom())
    extra.extend(found)
    # Resume point for next time: the largest checkpoint within what we read.
    target = max((c for c in cps if 0 < c.checkpoint.size <= size
                  and c.checkpoint.log in log_keys),
                 key=lambda c: c.checkpoint.size, default=None)
    keys_at_target: tuple[KeyState, ...] | None = None
    if target is not None and target.checkpoint.size == start:
        keys_at_target = tuple(prior_keys or ())
    done = 0
    for raw in store.raw_entries(start, size):
        try:
            entry = Entry(idx=raw.idx, kind=raw.kind, at=raw.at, body=raw.body_hash,
                          prev=raw.prev)
        except (WireError, TypeError) as e:
            auditor.feed_malformed(f"stored row idx {raw.idx!r}: {e}")
        else:
            auditor.feed(entry, str(raw.hash), raw.body)
            if target is not None and entry.idx + 1 == target.checkpoint.size:
                keys_at_target = auditor.keys_snapshot()
        done += 1
        if progress is not None and done % PROGRESS_EVERY == 0:
            progress(done, size - start)
    if progress is not None:
        progress(done, size - start)
    report = auditor.finish()
    if extra:
        report.findings = sorted(extra + report.findings, key=Finding.sort_key)
    last_full = state.last_full_us if state is not None else None
    if start == 0 and report.ok and now_us is not None:
        last_full = now_us
    new_state = None
    if report.ok and target is not None and keys_at_target is not None:
        new_state = VerifyState(sid, target, keys_at_target, last_full)
    covered = max(report.covered, start)
    return VerifyResult(report, start, size, new_state, uncovered=max(size - covered, 0),
                        notes=len(notes), sampled=sampled, last_full_us=last_full)
