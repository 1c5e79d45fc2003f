"""The ledger verification core (DESIGN.md §6, docs/protocol.md §9): one auditor, fed incrementally.

Used by the offline bundle verifier (``timeclock-verify``) and by the collector's live-store
``verify``. Entries are fed in idx order, checkpoints before the entries they cover; per entry
only its kind and ``at`` are held (9 bytes: a retention entry may remove any earlier body and
is judged on them), otherwise per device (its seen-seq intervals) and per gap, so a ledger of
millions of entries verifies in a few bytes per entry.

Checks, numbered as in docs/protocol.md:
  (0) keys: the bundle's collector keys agree with the keys pinned out of band (bundle.py).
  (1) entry: each entry decodes strictly and its idx is the expected next one.
  (2) entry-hash: the recorded hash equals the recomputed entry hash.
  (3) prev: ``prev`` is the hash of the previous entry (64 zeros at idx 0).
  (4) body: body bytes hash to ``entry.body`` and are canonical JSON; a missing body is allowed
      only where a LATER ``retention`` entry lists its idx, and never for ``device``/``retention``.
  (5) fact: each body parses for its kind (wire.bodies: the rule the store applies on append,
      so both refuse the same bodies with the same message); a punch verifies under a key
      that an EARLIER ``device`` entry registered for its device, valid for its seq and not
      revoked; a ``retention`` entry cites approved policies and removes only punch/rejection
      bodies older than their cut-offs and under no active hold, ``policy``/``hold`` entries
      keep dual control (wire.bodies_retention, protocol §7.2).
  (6) device-chain: per device, by seq (not ledger position): a seq recorded twice or a ``prev``
      that does not link is tampering; a missing seq is a finding (not tampering).
  (7) checkpoint: signed by a trusted log key, size ≤ entries, head = hash of entry size-1.
  (8) checkpoint-v2: a C2SP checkpoint note (DESIGN.md §8.2), opened under the log key by the
      caller, in size order, size ≤ entries, root = the RFC 9162 root of the entries fed, at
      its size (the auditor keeps the tree's frontier while streaming: O(log n) hashes).
  (9) trusted-checkpoint: a checkpoint the verifier already holds: the ledger is at least as
      large, and the tree at its size has its root (else truncated / rewritten).
  (10) witness: the newest v2 checkpoint carries the policy's quorum (bundle.py).
  (11) coverage: with ``require_coverage``, a non-empty ledger's last entry is covered by a
      checkpoint that verified (v1 head or v2 root); a bundle with v2 checkpoints needs a v2
      one (DESIGN.md §8.2: the last one covers the bundle's last entry).

Invariants: ``feed`` never raises on bad data, it records findings; a finding is ``tamper``
when the ledger cannot be what the collector committed to; the report names the lowest idx.
"""

from __future__ import annotations

import base64
import hashlib
import heapq
import itertools
from array import array
from bisect import bisect_right
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field, replace
from enum import StrEnum
from typing import Any

from wire import ZERO_HASH
from wire.bodies import (
    UNDELETABLE_KINDS,
    Access,
    Alert,
    BodyError,
    Correction,
    DeviceEvent,
    Rejection,
    Retention,
    parse_body,
)
from wire.bodies_breakglass import BreakGlassBook, BreakGlassFact
from wire.bodies_retention import HoldEvent, PolicyApproved, PolicyProposed, RetentionRules
from wire.bodies_shred import Shred
from wire.canonical import canonical, loads
from wire.errors import DecodeError, WireError
from wire.grants import AccessHistory
from wire.key_changes import KeyChanges
from wire.keys import VerifyKey
from wire.ledger import (
    KINDS,
    LEDGER_DOMAIN,
    Checkpoint,
    Entry,
    SignedCheckpoint,
    body_hash,
    verify_link,
)
from wire.merkle import EMPTY_ROOT, node_hash
from wire.note import Checkpoint as NoteCheckpoint
from wire.punch import Punch, SignedPunch

MAX_FINDINGS = 10_000
"""Findings kept per severity (tamper / not); beyond it the lowest-idx ones are kept."""

MAX_GAP_LOOKUPS = 10_000
"""In a resumed audit, seqs of one gap looked up in the prior store before giving up."""

_KINDS_BY_CODE: tuple[str, ...] = ("?", *sorted(KINDS))
_KIND_CODE: dict[str, int] = {k: i for i, k in enumerate(_KINDS_BY_CODE)}



class Check(StrEnum):
    """The verification steps; ``number`` is the step number of docs/protocol.md §9."""

    KEYS = "keys"
    ENTRY = "entry"
    ENTRY_HASH = "entry-hash"
    PREV = "prev"
    BODY = "body"
    FACT = "fact"
    DEVICE_CHAIN = "device-chain"
    CHECKPOINT = "checkpoint"
    CHECKPOINT_V2 = "checkpoint-v2"
    TRUSTED = "trusted-checkpoint"
    WITNESS = "witness"
    COVERAGE = "coverage"

    @property
    def number(self) -> int:
        return list(Check).index(self)


@dataclass(frozen=True)
class Finding:
    idx: int | None
    check: str
    message: str
    tamper: bool

    def sort_key(self) -> tuple[bool, bool, int, int]:
        """(0) keys first (every other step depends on them), then by idx, None last."""
        step = Check(self.check).number
        return (step != 0, self.idx is None, self.idx or 0, step)

    def __str__(self) -> str:
        where = f"idx {self.idx}" if self.idx is not None else "bundle"
        what = "TAMPER" if self.tamper else "finding"
        return f"{what} at {where}, check ({Check(self.check).number}) {self.check}: " \
               f"{self.message}"

    def to_dict(self) -> dict[str, Any]:
        return {"idx": self.idx, "check": self.check, "step": Check(self.check).number,
                "message": self.message, "tamper": self.tamper}


@dataclass
class AuditReport:
    entries: int          # entries fed to this audit
    punches: int          # punch entries among them (with or without body)
    devices: int          # devices with at least one registered key
    checkpoints: int      # checkpoints fed
    findings: list[Finding]   # sorted by idx (None last), then step
    size: int             # idx of the next entry: start_idx + entries when idx were in order
    head: str             # recorded hash of the last entry fed (start_head if none)
    omitted: int = 0      # findings beyond MAX_FINDINGS that were not kept
    checkpoints_v2: int = 0        # v2 checkpoint notes fed
    trusted: int = 0               # trusted checkpoints fed
    covered: int = 0               # largest size covered by a checkpoint that verified
    root: str | None = None        # base64 RFC 9162 root of the entries fed (None: not computed)

    @property
    def ok(self) -> bool:
        return not any(f.tamper for f in self.findings)

    @property
    def first_failure(self) -> Finding | None:
        tampers = [f for f in self.findings if f.tamper]
        return min(tampers, key=Finding.sort_key) if tampers else None

    def to_dict(self) -> dict[str, Any]:
        first = self.first_failure
        return {"ok": self.ok, "entries": self.entries, "punches": self.punches,
                "devices": self.devices, "checkpoints": self.checkpoints, "size": self.size,
                "head": self.head, "first_failure": first.to_dict() if first else None,
                "findings": [f.to_dict() for f in self.findings], "omitted": self.omitted,
                "checkpoints_v2": self.checkpoints_v2, "trusted_checkpoints": self.trusted,
                "covered": self.covered, "root": self.root}


@dataclass(slots=True)
class KeyState:
    """A device signing key as the ledger registered it.

    Valid for punches with ``from_seq <= seq < until_seq`` (``until_seq`` None: no upper
    bound) recorded before ``revoked_at_idx`` (None: not revoked).
    """

    device: str
    key_id: str
    verify_key: VerifyKey
    from_seq: int = 1
    until_seq: int | None = None
    revoked_at_idx: int | None = None
    registered_idx: int | None = None

    def invalid_for(self, seq: int, idx: int) -> str | None:
        """Why this key may not sign ``seq`` recorded at ``idx``; None if it may."""
        if seq < self.from_seq or (self.until_seq is not None and seq >= self.until_seq):
            upper = "" if self.until_seq is None else str(self.until_seq - 1)
            return (f"key {self.key_id} of {self.device} is valid for seq "
                    f"{self.from_seq}..{upper}, not seq {seq}")
        if self.revoked_at_idx is not None and idx > self.revoked_at_idx:
            return (f"key {self.key_id} of {self.device} was revoked at idx "
                    f"{self.revoked_at_idx}, before this punch was recorded")
        return None


class _Findings:
    """Keeps the MAX_FINDINGS lowest-idx findings of each severity."""

    def __init__(self, cap: int) -> None:
        self._cap = cap
        self._heaps: dict[bool, list[tuple[int, int, int, Finding]]] = {True: [], False: []}
        self._order = itertools.count()
        self.omitted = 0

    def add(self, f: Finding) -> None:
        idx_key = f.idx if f.idx is not None else 2**62
        # Max-heap on (idx, step) via negation: heap[0] is the finding to drop first.
        item = (-idx_key, -Check(f.check).number, -next(self._order), f)
        heap = self._heaps[f.tamper]
        if len(heap) < self._cap:
            heapq.heappush(heap, item)
            return
        self.omitted += 1
        if item[:3] > heap[0][:3]:
            heapq.heapreplace(heap, item)

    def sorted(self) -> list[Finding]:
        found = [item[3] for heap in self._heaps.values() for item in heap]
        return sorted(found, key=Finding.sort_key)


class _DeviceChain:
    """One device's seen seqs as sorted disjoint intervals, with the hashes at their edges.

    Enough to detect a reused seq, check every ``prev`` link as soon as both ends are seen (in
    any arrival order), and list gaps, in memory proportional to the number of gaps.
    """

    __slots__ = ("bottom", "ends", "starts", "top_hash")

    def __init__(self) -> None:
        self.starts: list[int] = []
        self.ends: list[int] = []
        self.top_hash: dict[int, str] = {}              # interval end seq -> punch hash
        self.bottom: dict[int, tuple[str, int]] = {}    # interval start seq -> (prev, idx)

    def contains(self, seq: int) -> bool:
        i = bisect_right(self.starts, seq) - 1
        return i >= 0 and self.ends[i] >= seq

    def hash_of(self, seq: int) -> str | None:
        return self.top_hash.get(seq)

    def add(self, seq: int, prev: str, phash: str, idx: int) -> tuple[str | None, int | None]:
        """Record ``seq`` (not yet present); return (prev of seq+1, its idx) if seq+1 is known."""
        i = bisect_right(self.starts, seq) - 1
        left = i if i >= 0 and self.ends[i] == seq - 1 else None
        right = i + 1 if i + 1 < len(self.starts) and self.starts[i + 1] == seq + 1 else None
        right_link = self.bottom[seq + 1] if right is not None else (None, None)
        if left is not None and right is not None:
            self.ends[left] = self.ends[right]
            del self.starts[right], self.ends[right]
            del self.top_hash[seq - 1], self.bottom[seq + 1]
        elif left is not None:
            self.ends[left] = seq
            del self.top_hash[seq - 1]
            self.top_hash[seq] = phash
        elif right is not None:
            self.starts[right] = seq
            del self.bottom[seq + 1]
            self.bottom[seq] = (prev, idx)
        else:
            self.starts.insert(i + 1, seq)
            self.ends.insert(i + 1, seq)
            self.top_hash[seq] = phash
            self.bottom[seq] = (prev, idx)
        return right_link

    def gaps(self) -> Iterable[tuple[int, int, int]]:
        """Missing inclusive seq ranges below the highest seen: (first, last, idx of next)."""
        expected = 1
        for start, end in zip(self.starts, self.ends, strict=True):
            if start > expected:
                yield expected, start - 1, self.bottom[start][1]
            expected = end + 1


def _merge(ranges: list[tuple[int, int]]) -> list[tuple[int, int]]:
    out: list[tuple[int, int]] = []
    for a, b in sorted(ranges):
        if out and a <= out[-1][1] + 1:
            out[-1] = (out[-1][0], max(out[-1][1], b))
        else:
            out.append((a, b))
    return out


def _subtract(a: int, b: int, cover: list[tuple[int, int]]) -> Iterable[tuple[int, int]]:
    """Parts of [a, b] not inside the merged, sorted ``cover``."""
    i = max(bisect_right(cover, (a, 2**62)) - 1, 0)
    cur = a
    while cur <= b and i < len(cover):
        ca, cb = cover[i]
        if cb < cur:
            i += 1
            continue
        if ca > b:
            break
        if ca > cur:
            yield cur, ca - 1
        cur = cb + 1
        i += 1
    if cur <= b:
        yield cur, b


@dataclass
class _Pending:
    ordinal: int
    checkpoint: Checkpoint


@dataclass(frozen=True)
class _RootCheck:
    """A root to compare with the tree's when the tree reaches ``size`` leaves."""

    check: Check            # CHECKPOINT_V2 (from the bundle) or TRUSTED (the verifier's own)
    label: str              # how the report names it
    size: int
    root: bytes


class TreeFrontier:
    """The RFC 9162 tree over the leaves appended so far, kept as its frontier: one complete
    subtree hash per set bit of the size, so O(log n) memory for a ledger of any length."""

    __slots__ = ("_hashes", "_levels", "size")

    def __init__(self) -> None:
        self.size = 0
        self._levels: list[int] = []
        self._hashes: list[bytes] = []

    def append(self, leaf: bytes) -> None:
        level, h = 0, leaf
        while self._levels and self._levels[-1] == level:
            self._levels.pop()
            h = node_hash(self._hashes.pop(), h)
            level += 1
        self._levels.append(level)
        self._hashes.append(h)
        self.size += 1

    def root(self) -> bytes:
        if not self._hashes:
            return EMPTY_ROOT
        acc = self._hashes[-1]
        for h in reversed(self._hashes[:-1]):
            acc = node_hash(h, acc)
        return acc


def _b64(h: bytes) -> str:
    return base64.b64encode(h).decode("ascii")


@dataclass
class _State:
    null_ranges: list[list[int]] = field(default_factory=list)   # idx with no body, merged
    retained: list[tuple[int, int]] = field(default_factory=list)  # idx ranges retention deleted
    punch_bits: bytearray = field(default_factory=bytearray)     # bit i: idx start+i is a punch
    deleted_punches: int = 0
    # For the retention judgement (wire.bodies_retention): each entry's kind and ``at`` from
    # the start, 9 bytes per entry (a retention entry may remove any earlier body).
    kinds: bytearray = field(default_factory=bytearray)
    ats: array[int] = field(default_factory=lambda: array("q"))


class LedgerAuditor:
    """Verify a ledger fed entry by entry; ``finish()`` returns the report.

    ``log_keys`` maps key id → collector log key trusted for checkpoints. To resume from a
    trusted checkpoint of size n (live-store verify), pass ``start_idx=n``, ``start_head`` =
    its head, ``prior_keys`` = device keys registered before n, ``prior_punch_hash(device,
    seq)`` = hash of a punch recorded before n (None if none), and optionally
    ``prior_entry_kind(idx)`` to check corrections that reference entries before n.
    """

    def __init__(self, log_keys: Mapping[str, VerifyKey], *, start_idx: int = 0,
                 start_head: str = ZERO_HASH,
                 prior_punch_hash: Callable[[str, int], str | None] | None = None,
                 prior_keys: Iterable[KeyState] | None = None,
                 prior_entry_kind: Callable[[int], str | None] | None = None,
                 prior_entry: Callable[[int], tuple[str, int] | None] | None = None,
                 prior_retention: Iterable[tuple[int, str, Any]] = (),
                 require_coverage: bool = False) -> None:
        for kid, key in log_keys.items():
            if key.key_id != kid:
                raise ValueError(f"log key listed as {kid} has key id {key.key_id}")
        self._log_keys = dict(log_keys)
        self._start = start_idx
        self._start_head = start_head
        self._next = start_idx
        self._head: str | None = start_head   # None after an undecodable entry
        self._last_hash = start_head
        self._prior_hash = prior_punch_hash
        self._prior_kind = prior_entry_kind
        # Retention under policy (protocol §7.2): the policies and holds entered so far (those
        # before a resume point come as ``prior_retention``: (idx, kind, body value)), the
        # (kind, at) of entries before it (``prior_entry``) and each device's enrolled site.
        self._prior_entry = prior_entry
        self._sites: dict[str, str] = {}
        self._retention = RetentionRules()
        self._prior_retention = list(prior_retention)
        # Who could do what, when (wire.grants): replayed from idx 0 only (a resumed audit
        # lacks the grants before its start; verify --full and bundles replay them all).
        self._access = AccessHistory() if start_idx == 0 else None
        self._keys: dict[str, list[KeyState]] = {}
        self._key_owner: dict[str, str] = {}
        for k in prior_keys or ():
            self._keys.setdefault(k.device, []).append(replace(k))
            self._key_owner[k.key_id] = k.device
        self._chains: dict[str, _DeviceChain] = {}
        self._key_changes = KeyChanges(start_idx)
        self._entry_at = 0
        self._pending: dict[int, list[_Pending]] = {}
        self._good_size = start_idx      # largest checkpoint size whose head matched
        self._state = _State()
        self._findings = _Findings(MAX_FINDINGS)
        self._entries = 0
        self._punches = 0
        self._checkpoints = 0
        self._report: AuditReport | None = None
        # (8)-(11): the tree is computed only from idx 0 (a resumed audit has no frontier)
        self._require_coverage = require_coverage
        self._tree: TreeFrontier | None = TreeFrontier() if start_idx == 0 else None
        self._tree_broken: int | None = None       # position of an entry that did not decode
        self._roots: dict[int, list[_RootCheck]] = {}
        self._notes = 0
        self._trusted = 0
        self._last_note_size = -1
        self._good_v2 = 0            # largest v2 size whose root matched
        self._v2_failed = False      # a v2 note did not open (the caller fed it as malformed)
        self._truncated = False      # a checkpoint lies beyond the last entry
        self._break_glass = BreakGlassBook()   # openings still owing their review (D11)

    # -- recording -------------------------------------------------------------------------

    def _add(self, idx: int | None, check: Check, message: str, *, tamper: bool = True) -> None:
        self._findings.add(Finding(idx, check.value, message, tamper))

    # -- checkpoints -----------------------------------------------------------------------

    def feed_checkpoint(self, signed: SignedCheckpoint) -> None:
        """Check a checkpoint's signature now and its head when entry size-1 is fed.

        Feed checkpoints before the entries they cover (a checkpoint of size ≤ the entries
        already fed can be checked only if it is the current head or the resume point).
        """
        self._guard()
        self._checkpoints += 1
        ordinal = self._checkpoints
        cp = signed.checkpoint
        at = cp.size - 1 if cp.size > 0 else None
        what = f"checkpoint #{ordinal} (size {cp.size}, head {cp.head[:12]}…)"
        # (7) signed by a trusted collector log key
        key = self._log_keys.get(cp.log)
        if key is None:
            self._add(at, Check.CHECKPOINT,
                      f"{what} is signed by log key {cp.log}, which is not a trusted "
                      f"collector key")
            return
        try:
            signed.verify(key)
        except WireError as e:
            self._add(at, Check.CHECKPOINT, f"{what}: forged or corrupted: {e}")
            return
        if cp.size < self._start:
            return      # before the resume point: attested by the checkpoint we resume from
        if cp.size == self._start:
            if cp.head != self._start_head:
                self._add(at, Check.CHECKPOINT,
                          f"{what} disagrees with the trusted head the audit resumed from")
            return
        if cp.size <= self._next:
            if cp.size == self._next and self._head is not None:
                self._check_head(cp.size - 1, self._head, _Pending(ordinal, cp))
                return
            raise ValueError(f"{what} was fed after the entries it covers; feed checkpoints "
                             f"first")
        self._pending.setdefault(cp.size - 1, []).append(_Pending(ordinal, cp))

    def feed_malformed_checkpoint(self, message: str) -> None:
        """A checkpoint that does not decode: (7) tampering, not tied to an idx."""
        self._guard()
        self._checkpoints += 1
        self._add(None, Check.CHECKPOINT, f"checkpoint #{self._checkpoints}: {message}")

    def _check_head(self, idx: int, recorded: str, p: _Pending) -> None:
        if p.checkpoint.head == recorded:
            self._good_size = max(self._good_size, p.checkpoint.size)
            return
        self._add(idx, Check.CHECKPOINT,
                  f"checkpoint #{p.ordinal} signed head {p.checkpoint.head[:12]}… for size "
                  f"{p.checkpoint.size}, but entry {idx} hashes to {recorded[:12]}…: the "
                  f"ledger differs from what the collector signed, somewhere in idx "
                  f"{self._good_size}..{idx}")

    # -- (8) v2 checkpoints, (9) trusted checkpoints ------------------------------------------

    def feed_note(self, cp: NoteCheckpoint) -> None:
        """A v2 checkpoint from the bundle, whose note the caller opened under the log key.

        Fed in file order (size order), before the entries it covers, like v1 checkpoints.
        """
        self._guard()
        self._notes += 1
        label = f"v2 checkpoint #{self._notes} (size {cp.size})"
        if cp.size < self._last_note_size:
            self._add(cp.size - 1 if cp.size else None, Check.CHECKPOINT_V2,
                      f"{label} follows one of size {self._last_note_size}: "
                      f"checkpoints.v2.ndjson is not in size order")
        self._last_note_size = max(self._last_note_size, cp.size)
        self._expect_root(_RootCheck(Check.CHECKPOINT_V2, label, cp.size, cp.root))

    def feed_malformed_note(self, message: str) -> None:
        """A v2 checkpoint line that does not decode or whose note does not open: (8)."""
        self._guard()
        self._notes += 1
        self._v2_failed = True
        self._add(None, Check.CHECKPOINT_V2, f"v2 checkpoint #{self._notes}: {message}")

    def feed_trusted(self, cp: NoteCheckpoint, label: str = "") -> None:
        """A checkpoint the verifier already holds (its signature checked by the caller)."""
        self._guard()
        self._trusted += 1
        label = label or f"trusted checkpoint #{self._trusted}"
        self._expect_root(_RootCheck(Check.TRUSTED, f"{label} (size {cp.size})", cp.size,
                                     cp.root))

    def _expect_root(self, rc: _RootCheck) -> None:
        if self._tree is None and self._tree_broken is None:
            raise ValueError("v2 roots can be checked only by an audit that starts at idx 0")
        position = self._start + self._entries
        if rc.size < position:
            raise ValueError(f"{rc.label} was fed after the entries it covers; feed "
                             f"checkpoints first")
        if rc.size == position and self._tree is not None:
            self._check_root(rc, self._tree.root())
            return
        self._roots.setdefault(rc.size, []).append(rc)

    def _check_root(self, rc: _RootCheck, computed: bytes) -> None:
        if computed == rc.root:
            if rc.check is Check.CHECKPOINT_V2:
                self._good_v2 = max(self._good_v2, rc.size)
            return
        at = rc.size - 1 if rc.size else None
        if rc.check is Check.TRUSTED:
            self._add(at, Check.TRUSTED,
                      f"the ledger was rewritten below a checkpoint you hold: {rc.label} has "
                      f"root {_b64(rc.root)}, the ledger's tree at that size has root "
                      f"{_b64(computed)}")
        else:
            self._add(at, Check.CHECKPOINT_V2,
                      f"{rc.label} signed root {_b64(rc.root)[:16]}…, but the tree of the "
                      f"ledger's first {rc.size} entries has root {_b64(computed)[:16]}…: the "
                      f"ledger differs from what the collector signed")

    # -- entries ---------------------------------------------------------------------------

    def feed_malformed(self, message: str) -> None:
        """An entry that does not decode: (1) tampering at the expected idx."""
        self._guard()
        self._entries += 1
        self._add(self._next, Check.ENTRY, f"entry does not decode: {message}")
        self._pending.pop(self._next, None)     # its head cannot be checked: (1) names it
        if self._tree is not None:              # nor any root above it: (1) names it too
            self._tree_broken = self._start + self._entries - 1
            self._tree = None
        self._next += 1
        self._head = None       # the next link cannot be checked

    def feed(self, entry: Entry, entry_hash: str, body: bytes | None, *,
             decoded: Any = None) -> None:
        """Check one entry (fed in idx order) with its recorded hash and body bytes.

        ``decoded`` may pass the body's JSON value when the caller built ``body`` as
        ``canonical(decoded)`` (the bundle reader does), to skip parsing it a second time.
        """
        self._guard()
        self._entries += 1
        idx = entry.idx
        # (1) idx is the expected next one
        in_order = idx == self._next
        if idx > self._next:        # named at the first missing idx
            self._add(self._next, Check.ENTRY,
                      f"expected idx {self._next}, found idx {idx}: entries missing")
        elif idx < self._next:      # named at the position that holds it
            position = min(self._start + self._entries - 1, self._next)
            self._add(position, Check.ENTRY, f"position {position} holds idx {idx}, expected "
                      f"{self._next}: an entry out of order or repeated")
        # (2) recorded hash = recomputed hash; the same bytes are leaf data of the tree (8)
        leaf_data = LEDGER_DOMAIN + entry.to_bytes()
        computed = hashlib.sha256(leaf_data).hexdigest()
        if computed != entry_hash:
            self._add(idx, Check.ENTRY_HASH,
                      f"recorded hash {entry_hash[:12]}… is not the hash of the entry "
                      f"({computed[:12]}…): the entry was edited")
        self._grow_tree(leaf_data)
        # (3) prev links to the previous entry's hash
        if in_order and self._head is not None:
            try:
                verify_link(entry, self._head)
            except WireError as e:
                self._add(idx, Check.PREV, f"{e}: an entry was removed, inserted or rewritten")
        self._next = max(self._next, idx + 1)
        self._head = self._last_hash = entry_hash
        for p in self._pending.pop(idx, ()):
            self._check_head(idx, entry_hash, p)
        if entry.kind == "punch":
            self._punches += 1
            self._mark_punch(idx)
        self._remember(idx, entry)
        # (4) body
        value = self._body(entry, body, decoded)
        if value is None:
            return
        # (5) the fact, per kind: the body parses as the store parses it on append (one
        # rule, wire.bodies), then it is checked against the ledger before it
        try:
            fact = parse_body(entry.kind, value, idx=idx)
        except BodyError as e:
            self._add(idx, Check.FACT, str(e))
            return
        if isinstance(fact, DeviceEvent) and fact.site is not None:
            self._sites[fact.device] = fact.site     # what a retention manifest row must name
        try:
            handler = getattr(self, f"_fact_{entry.kind}")
            self._entry_at = entry.at
            handler(idx, fact)
            self._judge_access(idx, entry.kind, value)
        except WireError as e:
            self._add(idx, Check.FACT, f"{entry.kind} body: {e}")

    def _judge_access(self, idx: int, kind: str, value: Any) -> None:
        """(5) who could do what, when (wire.grants, DESIGN.md §8.5): a grant, token or
        correction that broke segregation of duties or dual control is a finding at its idx
        (what the chain records is intact; what it records was not allowed)."""
        if self._access is not None and kind in ("access", "correction"):
            for b in self._access.feed(idx, kind, value):
                self._add(idx, Check.FACT, f"segregation of duties ({b.rule}): {b.message}",
                          tamper=False)

    def _grow_tree(self, leaf_data: bytes) -> None:
        """(8) append the leaf (RFC 9162: SHA-256(0x00 ‖ data)); check roots due at this size."""
        tree = self._tree
        if tree is None:
            return
        tree.append(hashlib.sha256(b"\x00" + leaf_data).digest())
        checks = self._roots.pop(tree.size, None)
        if checks:
            tree_root = tree.root()
            for rc in checks:
                self._check_root(rc, tree_root)

    def _body(self, entry: Entry, body: bytes | None, decoded: Any) -> Any | None:
        idx = entry.idx
        st = self._state
        if body is None:
            if entry.kind in UNDELETABLE_KINDS:
                self._add(idx, Check.BODY, f"the body of a {entry.kind} entry is missing; "
                          f"retention never deletes {entry.kind} bodies")
                return None
            if entry.kind == "punch":
                st.deleted_punches += 1
            if st.null_ranges and st.null_ranges[-1][1] == idx - 1:
                st.null_ranges[-1][1] = idx
            else:
                st.null_ranges.append([idx, idx])
            return None
        if body_hash(body) != entry.body:
            self._add(idx, Check.BODY, f"body hashes to {body_hash(body)[:12]}…, the entry "
                      f"records {entry.body[:12]}…: the body was edited")
            return None
        if decoded is not None:
            return decoded
        try:
            value = loads(body)
        except DecodeError as e:
            self._add(idx, Check.BODY, f"body is not strict JSON: {e}")
            return None
        if canonical(value) != body:
            self._add(idx, Check.BODY, "body bytes are not canonical JSON")
        return value

    def _mark_punch(self, idx: int) -> None:
        bits = self._state.punch_bits
        off = idx - self._start
        if off < 0:
            return
        need = off // 8 + 1
        if len(bits) < need:
            bits.extend(bytes(need - len(bits)))
        bits[off // 8] |= 1 << (off % 8)

    def _is_punch(self, idx: int) -> bool | None:
        off = idx - self._start
        if off < 0:
            kind = self._prior_kind(idx) if self._prior_kind else None
            return None if self._prior_kind is None else kind == "punch"
        bits = self._state.punch_bits
        return off // 8 < len(bits) and bool(bits[off // 8] & (1 << (off % 8)))

    # -- (5) facts ---------------------------------------------------------------------------

    def _fact_punch(self, idx: int, sp: SignedPunch) -> None:
        p = sp.punch
        keys = self._keys.get(p.device)
        if not keys:
            self._add(idx, Check.FACT, f"punch {p.device}#{p.seq}: no earlier device entry "
                      f"enrolled {p.device}")
            return
        key = next((k for k in keys if k.key_id == p.key), None)
        if key is None:
            self._add(idx, Check.FACT, f"punch {p.device}#{p.seq} is signed with key {p.key}, "
                      f"which no earlier device entry registered for {p.device}")
            return
        why = key.invalid_for(p.seq, idx)
        if why is not None:
            self._add(idx, Check.FACT, f"punch {p.device}#{p.seq}: {why}")
            return
        try:
            sp.verify(key.verify_key)
        except WireError as e:
            self._add(idx, Check.FACT, f"punch {p.device}#{p.seq}: {e}")
            return
        self._chain(idx, p)

    def _fact_device(self, idx: int, ev: DeviceEvent) -> None:
        device = ev.device
        keys = self._keys.get(device, [])
        if ev.event != "enrolled" and not keys:
            raise DecodeError(f"{ev.event} {device}, which was never enrolled")
        if ev.event == "revoked":
            self._revoke(idx, ev, keys)
            self._key_changes.revoked(idx, ev)
            return
        if ev.key is None or ev.signing_key is None or ev.from_seq is None:
            raise DecodeError(f"{ev.event} {device} registers no key")   # parse_device sets them
        owner = self._key_owner.get(ev.key)
        if owner is not None:       # keys are generated on one device and never leave it
            raise DecodeError(f"key {ev.key} is already registered for {owner}", field="key")
        # (5) key-change authority (DESIGN.md §8.5, wire.key_changes): a rotation is signed by
        # the key current at this point of the chain; a re-enrolment has two principals.
        cur = next((k for k in reversed(keys) if k.until_seq is None), None)
        note = self._key_changes.check(
            idx, self._entry_at, ev, known=bool(keys),
            current_key=cur.key_id if cur else None, current=cur.verify_key if cur else None,
            current_revoked=cur is not None and cur.revoked_at_idx is not None)
        if ev.event == "reenrol-requested":
            return
        if note is not None:
            self._add(idx, Check.FACT, note, tamper=False)
        for k in keys:      # older keys stay valid below from_seq only
            if k.until_seq is None or k.until_seq > ev.from_seq:
                k.until_seq = max(ev.from_seq, k.from_seq)
        self._keys.setdefault(device, []).append(
            KeyState(device, ev.key, ev.signing_key, from_seq=ev.from_seq, registered_idx=idx))
        self._key_owner[ev.key] = device

    @staticmethod
    def _revoke(idx: int, ev: DeviceEvent, keys: list[KeyState]) -> None:
        """Revoke one key (``key`` given) or every key of the device, from this idx on."""
        targets = keys
        if ev.key is not None:
            targets = [k for k in keys if k.key_id == ev.key]
            if not targets:
                raise DecodeError(f"revokes key {ev.key}, which is not a key of {ev.device}")
        for k in targets:
            if k.revoked_at_idx is None:
                k.revoked_at_idx = idx

    def _fact_rejection(self, idx: int, rejection: Rejection) -> None:
        """The raw bytes are in quarantine, not in the bundle. A ``fork`` (DESIGN.md §8.5: a
        punch whose prev did not link to its recorded neighbours, quarantined instead of
        appended) is reported as a finding, not tampering: the chain itself is intact; so is a
        clock's signed ``seq-loss`` report (the reason of a gap, protocol §13.11)."""
        if rejection.reason == "fork":
            self._add(idx, Check.DEVICE_CHAIN, f"a fork of {rejection.device or '?'}'s chain "
                      f"was quarantined (not appended): {rejection.detail or ''}"[:500],
                      tamper=False)
        elif rejection.reason == "seq-loss":
            self._add(idx, Check.DEVICE_CHAIN, f"{rejection.device or '?'} reported a loss "
                      f"(signed): {rejection.detail or ''}"[:500], tamper=False)

    def _fact_retention(self, idx: int, retention: Retention) -> None:
        """The ranges count as deleted (4) whatever the judgement; then (5) the judgement of
        wire.bodies_retention: cited approved policies, ages, active holds. An entry from
        before policies (no citation, no policy entry yet) is a finding, not tampering."""
        self._state.retained.extend(retention.deleted)
        self._load_prior_retention()
        here = self._entry_info(idx)
        at = here[1] if here is not None else 0
        j = self._retention.judge(idx, at, retention.cites, entry_info=self._entry_info,
                                  site_of=self._sites.get)
        if j.problems:
            more = f" (and {len(j.problems) - 1} more)" if len(j.problems) > 1 else ""
            self._add(idx, Check.FACT, f"retention body: {j.problems[0]}{more}")
        for note in j.notes:
            self._add(idx, Check.FACT, f"retention body: {note}", tamper=False)

    def _load_prior_retention(self) -> None:
        """The policies and holds before the resume point, once (bad ones are findings)."""
        for pidx, pkind, pvalue in self._prior_retention:
            try:
                prior_fact = parse_body(pkind, pvalue, idx=pidx)
                if isinstance(prior_fact, PolicyProposed | PolicyApproved | HoldEvent):
                    self._retention.apply(pidx, prior_fact)
            except WireError as e:
                self._add(pidx, Check.FACT, f"{pkind} body: {e}")
        self._prior_retention = []

    def _fact_policy(self, idx: int, fact: PolicyProposed | PolicyApproved) -> None:
        self._load_prior_retention()
        self._retention.apply(idx, fact)

    def _fact_hold(self, idx: int, fact: HoldEvent) -> None:
        self._load_prior_retention()
        self._retention.apply(idx, fact)

    def _remember(self, idx: int, entry: Entry) -> None:
        st = self._state
        if idx - self._start != len(st.ats):
            return          # out of order: (1) reported it; later lookups see None
        st.kinds.append(_KIND_CODE.get(entry.kind, 0))
        st.ats.append(entry.at)

    def _entry_info(self, idx: int) -> tuple[str, int] | None:
        """(kind, at) of an entry fed before, or before the resume point."""
        off = idx - self._start
        if off < 0:
            return self._prior_entry(idx) if self._prior_entry is not None else None
        st = self._state
        if off >= len(st.ats):
            return None
        return _KINDS_BY_CODE[st.kinds[off]], st.ats[off]

    def _fact_access(self, idx: int, access: Access) -> None:
        """Informational for the verifier (protocol §7.2)."""

    def _fact_config(self, idx: int, entry: object) -> None:
        """A remote configuration change or a clock's result (protocol §13.14): the body's
        shape and allow-list are checked (wire.remote_config); informational otherwise."""

    def _fact_alert(self, idx: int, alert: Alert) -> None:
        """Informational for the verifier (protocol §7.2): what a detector saw."""

    def _fact_employee(self, idx: int, employee: object) -> None:
        """People directory (protocol §7.2): the body's shape is checked (wire.bodies_people);
        its rules against the directory are the collector's."""

    _fact_badge = _fact_employee

    def _fact_review(self, idx: int, review: object) -> None:
        """Alert reviews and scheduled sign-offs (protocol §7.2 review): the body's shape is
        checked (wire.bodies_review); its rules against the ledger are the collector's."""

    def _fact_shred(self, idx: int, shred: Shred) -> None:
        """An erasure by key destruction (DESIGN.md §8.6; protocol §7.2 shred): from here on
        the bodies of the entries it names may be missing, as under retention (step 4), and
        only those; the erasure is reported (a finding, not tampering)."""
        self._state.retained.extend(shred.entries)
        self._add(idx, Check.FACT, f"shred: {len(shred.keys)} data key(s) of employee "
                  f"{shred.employee} destroyed, the bodies of {shred.count} entries erased "
                  f"(case {shred.case}; asked by {shred.by}, approved by "
                  f"{shred.approved_by})", tamper=False)

    def _fact_break_glass(self, idx: int, fact: BreakGlassFact) -> None:
        """Break-glass (protocol §7.2 break_glass; D11): seals, openings and reviews replayed
        (wire.bodies_breakglass); an opening without a review is a finding at finish."""
        self._break_glass.feed(idx, fact)

    def _fact_access_review(self, idx: int, fact: object) -> None:
        """Access reviews (protocol §7.2 access_review): the body's shape is checked
        (wire.bodies_access_review); the revocations are ordinary access entries."""

    def _fact_policy_doc(self, idx: int, fact: object) -> None:
        """Policy documents and acknowledgements (protocol §7.2): shape only."""

    _fact_acknowledgement = _fact_policy_doc

    def _fact_correction(self, idx: int, correction: Correction) -> None:
        original = correction.original_idx
        if self._is_punch(original) is False:
            raise DecodeError(f"original_idx {original} is not a punch entry")

    # -- (6) device chains ---------------------------------------------------------------

    def _chain(self, idx: int, p: Punch) -> None:
        chain = self._chains.setdefault(p.device, _DeviceChain())
        phash = p.hash()
        where = f"{p.device}#{p.seq}"
        prior = self._prior_hash
        if chain.contains(p.seq) or (prior is not None and prior(p.device, p.seq) is not None):
            self._add(idx, Check.DEVICE_CHAIN, f"seq {where} is recorded more than once "
                      f"(a replayed punch, or a reused seq: cloned key or restored device)")
            return
        # Link to seq-1 when known (here, or before the resume point).
        below = chain.hash_of(p.seq - 1)
        if below is None and p.seq > 1 and prior is not None and not chain.contains(p.seq - 1):
            below = prior(p.device, p.seq - 1)
        if below is not None and p.prev != below:
            self._add(idx, Check.DEVICE_CHAIN, f"punch {where}: prev does not match the hash "
                      f"of seq {p.seq - 1}: the device chain forks")
        above_prev, above_idx = chain.add(p.seq, p.prev, phash, idx)
        if above_prev is not None and above_prev != phash:
            self._add(idx, Check.DEVICE_CHAIN, f"punch {where}: seq {p.seq + 1} (idx "
                      f"{above_idx}) does not link to it: the device chain forks")

    def _gap_findings(self) -> None:
        note = ""
        if self._state.deleted_punches:
            note = (f" (or among the {self._state.deleted_punches} punch bodies retention "
                    f"deleted)")
        for device, chain in self._chains.items():
            for first, last, next_idx in chain.gaps():
                for a, b in self._unrecorded_before_start(device, first, last):
                    seqs = f"seq {a}" if a == b else f"seqs {a}..{b}"
                    self._add(next_idx, Check.DEVICE_CHAIN,
                              f"{device}: {seqs} missing before seq {b + 1}{note}",
                              tamper=False)

    def _unrecorded_before_start(self, device: str, first: int,
                                 last: int) -> Iterable[tuple[int, int]]:
        prior = self._prior_hash
        if prior is None or last - first + 1 > MAX_GAP_LOOKUPS:
            yield first, last
            return
        run: int | None = None
        for s in range(first, last + 1):
            if prior(device, s) is None:
                run = s if run is None else run
            elif run is not None:
                yield run, s - 1
                run = None
        if run is not None:
            yield run, last

    # -- finish --------------------------------------------------------------------------

    def keys_snapshot(self) -> tuple[KeyState, ...]:
        """Copies of every key registration seen so far (to resume a later audit from here)."""
        return tuple(replace(k) for ks in self._keys.values() for k in ks)

    def finish(self) -> AuditReport:
        """Run the end-of-ledger checks once and return the report (idempotent)."""
        if self._report is not None:
            return self._report
        st = self._state
        # (4) a missing body needs a later retention entry that lists its idx
        cover = _merge(st.retained)
        for a, b in st.null_ranges:
            for ua, ub in _subtract(a, b, cover):
                span = f"idx {ua}" if ua == ub else f"idx {ua}..{ub}"
                self._add(ua, Check.BODY, f"body of {span} is missing and no later retention "
                          f"entry lists it: deleted without a retention record")
        # (7) a checkpoint beyond the end: the tail was truncated under a signed checkpoint
        pending = [p for ps in self._pending.values() for p in ps]
        for p in pending:
            if p.checkpoint.size <= self._next:
                self._add(p.checkpoint.size - 1, Check.CHECKPOINT,
                          f"checkpoint #{p.ordinal} covers entry {p.checkpoint.size - 1}, "
                          f"which is not in the ledger")
        beyond = [p for p in pending if p.checkpoint.size > self._next]
        self._truncated = bool(beyond)
        if beyond:
            p = max(beyond, key=lambda p: p.checkpoint.size)
            self._add(self._next, Check.CHECKPOINT,
                      f"checkpoint #{p.ordinal} signed size {p.checkpoint.size}, but the "
                      f"ledger ends at {self._next} entries: idx {self._next}.."
                      f"{p.checkpoint.size - 1} are missing (truncated)")
        self._finish_v2()
        covered = max(self._good_size, self._good_v2)
        self._finish_coverage(covered)
        self._gap_findings()
        for at, what in self._break_glass.unreviewed():
            self._add(at, Check.FACT, what, tamper=False)
        self._report = AuditReport(
            entries=self._entries, punches=self._punches,
            devices=sum(1 for ks in self._keys.values() if ks),
            checkpoints=self._checkpoints, findings=self._findings.sorted(),
            size=self._next, head=self._last_hash,
            omitted=self._findings.omitted, checkpoints_v2=self._notes,
            trusted=self._trusted, covered=covered,
            root=_b64(self._tree.root()) if self._tree is not None else None)
        return self._report

    def _finish_v2(self) -> None:
        """(8)/(9) roots the ledger never reached: truncated, or uncheckable after (1)."""
        end = self._start + self._entries
        for size, checks in sorted(self._roots.items()):
            for rc in checks:
                if self._tree_broken is not None and size > self._tree_broken:
                    self._add(size - 1, rc.check, f"{rc.label}: the root cannot be "
                              f"recomputed: the entry at position {self._tree_broken} does "
                              f"not decode")
                elif rc.check is Check.TRUSTED:
                    self._truncated = True
                    self._add(end, Check.TRUSTED,
                              f"the ledger is smaller than a checkpoint you hold — truncated: "
                              f"{rc.label}, but the ledger ends at {end} entries: idx "
                              f"{end}..{size - 1} are missing")
                else:
                    self._truncated = True
                    self._add(end, Check.CHECKPOINT_V2,
                              f"{rc.label} was signed, but the ledger ends at {end} entries: "
                              f"idx {end}..{size - 1} are missing (truncated)")

    def _finish_coverage(self, covered: int) -> None:
        """(11) a non-empty ledger's last entry lies under a checkpoint that verified."""
        end = self._next
        # A checkpoint beyond the end already names the cut (truncation), at the first
        # missing idx: the uncovered tail is its consequence, not a second finding.
        if not self._require_coverage or end == 0 or self._truncated:
            return
        if self._notes and self._good_v2 < end and not self._v2_failed:
            self._add(end - 1, Check.COVERAGE,
                      f"no v2 checkpoint covers the last entry (idx {end - 1}): the newest "
                      f"whose root verifies covers {self._good_v2} entries (a bundle's last "
                      f"v2 checkpoint is of the bundle's own size, DESIGN.md §8.2)")
            return
        if covered >= end:
            return
        if self._checkpoints + self._notes == 0:
            self._add(end - 1, Check.COVERAGE,
                      f"the ledger has {end} entries and no checkpoint: nothing the collector "
                      f"signed covers any of it")
            return
        self._add(end - 1, Check.COVERAGE,
                  f"no checkpoint covers the last entry (idx {end - 1}): the newest that "
                  f"verifies covers {covered} entries, so idx {covered}..{end - 1} could have "
                  f"been added, changed or removed without a trace")

    def _guard(self) -> None:
        if self._report is not None:
            raise ValueError("the audit is finished; start a new LedgerAuditor")
