"""The clock checks that its own punches are in the log (DESIGN.md §8.4, protocol.md §13.9).

When a v2 receipt deletes a punch, the publisher hands :meth:`InclusionChecker.record` the
seq, the receipt's leaf index and the SHA-256 of the signed punch bytes this clock published
(what the ledger entry's ``body`` field must be). All of them, or a sample
(``[witness] check_inclusion``, ``sample_rate``), are kept in ``inclusion.json``. Once the
clock's witness holds a verified checkpoint covering a pending leaf, :meth:`requests` builds
wire.inclusion.InclusionRequest messages against that checkpoint (size and root remembered
per leaf); :meth:`handle` verifies each answer: the entry is a ``punch`` at that index whose
body hash is this clock's punch, its leaf hash (§12.1) with the path folds to the verified
root (wire.merkle.verify_inclusion). Why that proves the punch is in the log: the root is
signed by the log key and cosigned by this clock after checking consistency with every
earlier checkpoint it held; the path binds the leaf to that root, the leaf binds the entry
bytes, and the entry's ``body`` binds the exact signed punch bytes (SHA-256).

A failure — the path does not fold to the root (``bad-proof``), the entry is not this punch
(``wrong-entry``), the collector names the leaf ``missing``, or no valid answer before the
deadline (``no-answer``) — is an ERROR log line and stays in the status (``inclusion`` of the
witness object) until the operator removes ``inclusion.json``.

Invariants: the file is replaced atomically (agent.witness.write_atomic); at most
``max_pending`` leaves wait (the oldest unasked are dropped, counted, with a warning); only a
proof that verifies ever counts a punch as checked.
"""

from __future__ import annotations

import base64
import json
import logging
import random
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from agent.witness import WitnessStateError, write_atomic
from wire.clock import to_us
from wire.device_status import InclusionStatus
from wire.errors import ProofError, WireError
from wire.inclusion import MAX_REQUEST_LEAVES, InclusionAnswer, InclusionRequest
from wire.merkle import entry_leaf_hash, verify_inclusion
from wire.note import Checkpoint

log = logging.getLogger(__name__)

INCLUSION_FILE = "inclusion.json"
STATE_VERSION = 1
MODES = ("all", "sample", "off")
MAX_PENDING = 10_000
MAX_FAILURES_KEPT = 50
_MAX_STATE_BYTES = 4 * 1024 * 1024


def inclusion_path(state_dir: Path) -> Path:
    return state_dir / INCLUSION_FILE


_ITEM_KEYS = frozenset({"seq", "body", "asked_size", "asked_root", "first_us", "sent_us",
                        "asks"})


def _pending_item(v: Any) -> dict[str, Any]:
    """One pending leaf as read back from the file (raises ValueError when it is not one)."""
    if not isinstance(v, dict) or set(v) != _ITEM_KEYS or not isinstance(v["body"], str) \
            or not isinstance(v["asks"], int):
        raise ValueError(f"a pending check is not one: {str(v)[:80]}")
    return dict(v)


class InclusionChecker:
    """Pending inclusion checks of this clock's deleted punches (thread-safe)."""

    def __init__(self, path: Path, device: str, *, mode: str = "all", sample_rate: float = 1.0,
                 deadline_s: float = 3600.0, retry_s: float = 60.0,
                 max_pending: int = MAX_PENDING, now: Callable[[], float] = time.time,
                 rng: random.Random | None = None) -> None:
        if mode not in MODES:
            raise ValueError(f"check_inclusion must be one of {', '.join(MODES)}")
        self.path = path
        self.device = device
        self.mode = mode
        self.sample_rate = sample_rate
        self.deadline_s = deadline_s
        self.retry_s = retry_s
        self.max_pending = max_pending
        self._now = now
        self._rng = rng or random.SystemRandom()
        self._lock = threading.Lock()
        # leaf index (str) -> {"seq", "body", "asked_size", "asked_root", "first_us", "sent_us"}
        self._pending: dict[int, dict[str, Any]] = {}
        self._failures: list[dict[str, Any]] = []
        self._failed = 0
        self._checked = 0
        self._dropped = 0
        self._readonly = False
        self._load()

    # -- state --------------------------------------------------------------------------------
    def _load(self) -> None:
        try:
            data = self.path.read_bytes()
        except FileNotFoundError:
            return
        except OSError as e:
            self._fail_local(f"cannot read {self.path}: {e.strerror or e}")
            return
        try:
            if len(data) > _MAX_STATE_BYTES:
                raise ValueError(f"larger than {_MAX_STATE_BYTES} bytes")
            d = json.loads(data)
            if not isinstance(d, dict) or d.get("v") != STATE_VERSION:
                raise ValueError("not a version 1 inclusion state")
            self._pending = {int(k): _pending_item(v) for k, v in d["pending"].items()}
            self._failures = list(d["failures"])[-MAX_FAILURES_KEPT:]
            self._failed = int(d["failed"])
            self._checked = int(d["checked"])
            self._dropped = int(d.get("dropped", 0))
        except (ValueError, TypeError, KeyError, AttributeError) as e:
            self._fail_local(f"{self.path} is not a valid inclusion state ({e}); it is kept "
                             "for the operator and checks start afresh")
            self._pending = {}

    def _fail_local(self, why: str) -> None:
        log.error("INCLUSION CHECKS: %s", why)
        self._failed += 1
        self._failures.append({"leaf": None, "seq": None, "reason": "state-unreadable",
                               "detail": why[:300], "at_us": to_us(self._now())})
        self._readonly = True

    def _save(self) -> None:
        if self._readonly:
            return                       # an unreadable file is evidence: never overwrite it
        d = {"v": STATE_VERSION, "checked": self._checked, "failed": self._failed,
             "dropped": self._dropped, "failures": self._failures[-MAX_FAILURES_KEPT:],
             "pending": {str(k): v for k, v in sorted(self._pending.items())}}
        try:
            write_atomic(self.path, json.dumps(d, sort_keys=True).encode() + b"\n")
        except WitnessStateError as e:
            log.error("inclusion checks not persisted: %s", e)

    def status(self) -> InclusionStatus:
        with self._lock:
            last = self._failures[-1] if self._failures else None
            return InclusionStatus(
                self._checked, len(self._pending), self._failed,
                None if last is None else last["reason"],
                "" if last is None else str(last["detail"])[:300],
                None if last is None else last["at_us"])

    # -- recording ----------------------------------------------------------------------------
    def record(self, landed: list[tuple[int, int, str]]) -> int:
        """Keep (seq, leaf index, body hash) of deleted punches, all or a sample; return how
        many were kept."""
        if self.mode == "off" or not landed:
            return 0
        with self._lock:
            kept = 0
            for seq, leaf, body in landed:
                if self.mode == "sample" and self._rng.random() >= self.sample_rate:
                    continue
                self._pending[leaf] = {"seq": seq, "body": body, "asked_size": None,
                                       "asked_root": None, "first_us": None, "sent_us": None,
                                       "asks": 0}
                kept += 1
            while len(self._pending) > self.max_pending:
                oldest = min(self._pending)
                del self._pending[oldest]
                self._dropped += 1
                log.warning("inclusion checks: more than %d pending; leaf %d dropped unchecked",
                            self.max_pending, oldest)
            if kept:
                self._save()
            return kept

    # -- asking -------------------------------------------------------------------------------
    def requests(self, cp: Checkpoint | None) -> list[InclusionRequest]:
        """The requests due against ``cp`` (the witness's verified checkpoint); also fails
        the leaves whose deadline passed."""
        if cp is None:
            return []
        now_us = to_us(self._now())
        due: list[int] = []
        with self._lock:
            changed = self._expire(now_us)
            root = base64.b64encode(cp.root).decode("ascii")
            for leaf, p in sorted(self._pending.items()):
                if leaf >= cp.size:
                    break
                sent = p["sent_us"]
                if (p["asked_size"] == cp.size and sent is not None
                        and now_us - sent < self.retry_s * 1e6):
                    continue
                p["asked_size"], p["asked_root"], p["sent_us"] = cp.size, root, now_us
                p["asks"] += 1
                if p["first_us"] is None:
                    p["first_us"] = now_us
                due.append(leaf)
                changed = True
            if changed:
                self._save()
        return [InclusionRequest(self.device, cp.size, tuple(due[i:i + MAX_REQUEST_LEAVES]))
                for i in range(0, len(due), MAX_REQUEST_LEAVES)]

    def _expire(self, now_us: int) -> bool:
        # Late = the deadline passed since the first request AND it was asked as often as the
        # deadline allows: requests go out only while connected, so a clock that was offline
        # for a while does not count that time against the collector.
        asks = max(3, int(self.deadline_s // self.retry_s))
        late = [leaf for leaf, p in self._pending.items()
                if p["first_us"] is not None and p["asks"] >= asks
                and now_us - p["first_us"] > self.deadline_s * 1e6]
        for leaf in late:
            self._fail(leaf, "no-answer", f"no valid inclusion proof within "
                       f"{self.deadline_s:g} s and {asks} requests")
        return bool(late)

    # -- answers ------------------------------------------------------------------------------
    def handle(self, payload: bytes) -> bool:
        """Verify one answer; True if the state changed."""
        try:
            ans = InclusionAnswer.from_bytes(payload)
        except WireError as err:
            log.error("INCLUSION CHECKS: ignored an answer that is not one: %s", err)
            return False
        if ans.device != self.device:
            log.warning("inclusion: ignored an answer for device %s", ans.device)
            return False
        changed = False
        with self._lock:
            for proof in ans.proofs:
                p = self._pending.get(proof.leaf_index)
                if p is None or p["asked_size"] != ans.size:
                    continue            # not asked, or asked again against another size
                changed = True
                entry = proof.entry
                if (entry.idx != proof.leaf_index or entry.kind != "punch"
                        or entry.body != p["body"]):
                    self._fail(proof.leaf_index, "wrong-entry",
                               f"entry {entry.idx} ({entry.kind}, body {entry.body[:16]}…) is "
                               f"not this "
                               f"clock's punch (body {str(p['body'])[:16]}…)")
                    continue
                try:
                    verify_inclusion(entry_leaf_hash(entry), proof.leaf_index, ans.size,
                                     proof.inclusion_path,
                                     base64.b64decode(str(p["asked_root"]), validate=True))
                except (ProofError, ValueError) as err:
                    self._fail(proof.leaf_index, "bad-proof", f"size {ans.size}: {err}")
                    continue
                del self._pending[proof.leaf_index]
                self._checked += 1
                log.debug("inclusion: seq %s (leaf %d) is in the checkpoint of size %d",
                          p["seq"], proof.leaf_index, ans.size)
            for leaf in ans.missing:
                p = self._pending.get(leaf)
                if p is None or p["asked_size"] != ans.size:
                    continue
                changed = True
                self._fail(leaf, "missing", f"the collector cannot prove leaf {leaf} in the "
                           f"checkpoint of size {ans.size}")
            if changed:
                self._save()
        return changed

    def _fail(self, leaf: int, reason: str, detail: str) -> None:
        p = self._pending.pop(leaf)
        detail = " ".join(f"seq {p['seq']} (leaf {leaf}): {detail}".split())[:300]
        log.error("INCLUSION CHECK FAILED: %s: %s — the log does not prove this clock's "
                  "punch", reason, detail)
        self._failed += 1
        self._failures.append({"leaf": leaf, "seq": p["seq"], "reason": reason,
                               "detail": detail, "at_us": to_us(self._now())})
        del self._failures[:-MAX_FAILURES_KEPT]
