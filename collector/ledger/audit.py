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
"""

from __future__ import annotations

import json
import os
import tempfile
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from collector import CollectorError
from collector.ledger.sqlbase import SQLStore
from wire import ZERO_HASH
from wire.audit import AuditReport, KeyState, LedgerAuditor
from wire.errors import WireError
from wire.keys import VerifyKey
from wire.ledger import Entry, SignedCheckpoint, body_hash
from wire.punch import SignedPunch

STATE_VERSION = 1
Progress = Callable[[int, int], None]   # (entries done, entries total)
PROGRESS_EVERY = 2000


class VerifyStateError(CollectorError):
    """The verify state file is unreadable or belongs to another ledger."""


@dataclass(frozen=True)
class VerifyState:
    store_id: str                 # hash of entry 0: which ledger this state belongs to
    checkpoint: SignedCheckpoint  # the resume point: verified clean up to its size
    keys: tuple[KeyState, ...]    # device keys registered before checkpoint.size

    def to_dict(self) -> dict[str, Any]:
        return {"v": STATE_VERSION, "store_id": self.store_id,
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
            return cls(str(d["store_id"]), SignedCheckpoint.from_dict(d["checkpoint"]), keys)
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


def verify_store(store: SQLStore, log_keys: Mapping[str, VerifyKey], *,
                 state: VerifyState | None = None, progress: Progress | None = None
                 ) -> VerifyResult:
    """Audit ``store`` from ``state``'s checkpoint (or from idx 0) to its current end."""
    size, _ = store.head()
    sid = store_id(store)
    start, start_head, prior_keys = 0, ZERO_HASH, None
    if state is not None:
        if state.store_id != sid:
            raise VerifyStateError("the verify state belongs to another ledger (entry 0 "
                                   "differs); run a full verify")
        start = state.checkpoint.checkpoint.size
        start_head = state.checkpoint.checkpoint.head
        prior_keys = state.keys
    auditor = LedgerAuditor(log_keys, start_idx=start, start_head=start_head,
                            prior_keys=prior_keys,
                            prior_punch_hash=_prior_punch_hash(store, start) if start else None)
    cps = [c for c in store.checkpoints() if c.checkpoint.size >= start]
    for c in cps:
        auditor.feed_checkpoint(c)
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
    new_state = None
    if report.ok and target is not None and keys_at_target is not None:
        new_state = VerifyState(sid, target, keys_at_target)
    return VerifyResult(report, start, size, new_state)
