"""The clock as a witness of the log (DESIGN.md §8.3, docs/protocol.md §13.7).

The collector asks each clock, on ``timeclock/v1/devices/{id}/checkpoint``, to cosign its
newest checkpoint with a C2SP tlog-witness add-checkpoint request (wire.witness.AddCheckpoint):
the size it believes the clock holds, the RFC 9162 consistency proof from there, and the
checkpoint note signed by the log key. :meth:`ClockWitness.handle` answers with a
wire.witness.CosignatureReply:

  (1) parse strictly; (2) the note is a checkpoint of the log the clock pinned (its origin is
  learnt from the first checkpoint that the log key signed, then fixed) and the log key signed
  it; (3) the log did not shrink below the largest checkpoint held; (4) the request's old size
  is the size held, else ``conflict`` with the size held (the collector asks again);
  (5) the consistency proof leads from the held checkpoint to the new one; (6) persist the new
  checkpoint, then cosign it under ``<origin>/devices/<device id>`` with the clock's signing
  key (the cosignature/v1 prefix keeps it apart from punch signatures).

A failure of (2), (3) or (5) is a refusal: an ERROR log line, a signed refusal reply carrying
the note the clock holds as evidence, and the witness state ``refusing`` in the status file,
``timeclock-agent status`` and the retained MQTT status (wire.device_status.WitnessStatus).

Invariants: the state file (``witness.json`` in the state directory) holds the largest
checkpoint verified, with its log signature; it is replaced atomically (temp file, fsync,
rename, fsync of the directory) *before* a cosignature leaves, only ever by a larger or equal
consistent checkpoint, and nothing else deletes it (acked punches live in the queue, not
here). A state file that cannot be read leaves the witness ``broken``: it cosigns nothing and
says so, and the file is left for the operator (starting afresh from size 0 would let a
truncated log pass).
"""

from __future__ import annotations

import json
import logging
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from agent.errors import AgentError
from wire.clock import to_us
from wire.device_status import WitnessStatus
from wire.errors import DecodeError, KeyMismatchError, ProofError, SignatureError, WireError
from wire.keys import SigningKey, VerifyKey, write_public_file
from wire.merkle import EMPTY_ROOT, verify_consistency
from wire.note import ED25519, Checkpoint, Note, NoteVerifier, check_origin
from wire.witness import MAX_DETAIL_CHARS, AddCheckpoint, CosignatureReply, device_witness_name

log = logging.getLogger(__name__)

WITNESS_FILE = "witness.json"
STATE_VERSION = 1
_MAX_STATE_BYTES = 256 * 1024


class WitnessStateError(AgentError):
    """The witness state file cannot be read or written."""


@dataclass(slots=True)
class _State:
    """What ``witness.json`` holds."""

    origin: str | None = None
    note: str | None = None           # the largest checkpoint verified, log signature only
    cosigned_at_us: int | None = None
    refusals: int = 0
    refusing: dict[str, Any] | None = None   # {"reason","detail","since_us","offered_size"}
    last_refusal: dict[str, Any] | None = field(default=None)

    def to_dict(self) -> dict[str, Any]:
        return {"v": STATE_VERSION, "origin": self.origin, "note": self.note,
                "cosigned_at_us": self.cosigned_at_us, "refusals": self.refusals,
                "refusing": self.refusing, "last_refusal": self.last_refusal}


def _sanitize(text: str) -> str:
    return " ".join(text.split())[:MAX_DETAIL_CHARS]


def write_atomic(path: Path, data: bytes) -> None:
    """Replace ``path`` with ``data``: a reader (or a power cut) sees the old or the new file."""
    try:
        write_public_file(path, data, mode=0o600)     # every agent file is 0600
    except OSError as e:
        raise WitnessStateError(f"{path}: cannot write the witness state: "
                                f"{e.strerror or e}") from e


class ClockWitness:
    """One clock's witness: verifies, persists and cosigns checkpoints (thread-safe)."""

    def __init__(self, path: Path, device: str, signing: SigningKey, log_key: VerifyKey, *,
                 origin: str | None = None, now: Callable[[], float] = time.time) -> None:
        self.path = path
        self.device = device
        self._signing = signing
        self._log_key = log_key
        self._now = now
        self._lock = threading.Lock()
        self._state = _State()
        self._cp: Checkpoint | None = None
        self.broken: str | None = None
        self._broken_since: int | None = None
        self._configured_origin = None if origin is None else check_origin(origin)
        self._load()

    # -- state --------------------------------------------------------------------------------
    def _load(self) -> None:
        try:
            data = self.path.read_bytes()
        except FileNotFoundError:
            self._state.origin = self._configured_origin
            return
        except OSError as e:
            self._break(f"cannot read {self.path}: {e.strerror or e}")
            return
        try:
            if len(data) > _MAX_STATE_BYTES:
                raise DecodeError(f"larger than {_MAX_STATE_BYTES} bytes")
            d = json.loads(data)
            if not isinstance(d, dict) or d.get("v") != STATE_VERSION:
                raise DecodeError("not a version 1 witness state")
            st = _State(d.get("origin"), d.get("note"), d.get("cosigned_at_us"),
                        int(d.get("refusals", 0)), d.get("refusing"), d.get("last_refusal"))
            if st.note is not None:
                if st.origin is None:
                    raise DecodeError("a checkpoint without an origin")
                self._cp = Checkpoint.open(st.note, NoteVerifier(st.origin, self._log_key))
            if (self._configured_origin is not None and st.origin is not None
                    and st.origin != self._configured_origin):
                raise DecodeError(f"holds origin {st.origin!r}, configured "
                                  f"{self._configured_origin!r}")
            self._state = st
        except (ValueError, TypeError, WireError) as e:
            self._break(f"{self.path} is not a valid witness state ({e}); it is kept as it "
                        "is for the operator")

    def _break(self, why: str) -> None:
        self.broken = _sanitize(why)
        self._broken_since = to_us(self._now())
        log.error("WITNESS BROKEN: %s; this clock cosigns no checkpoint until it is fixed",
                  why)

    def _save(self) -> None:
        write_atomic(self.path, json.dumps(self._state.to_dict(), sort_keys=True,
                                           indent=1).encode() + b"\n")

    @property
    def checkpoint(self) -> Checkpoint | None:
        """The largest checkpoint verified (persisted)."""
        with self._lock:
            return self._cp

    def status(self) -> WitnessStatus:
        """For the status file and the retained MQTT status."""
        with self._lock:
            st = self._state
            size = None if self._cp is None else self._cp.size
            if self.broken is not None:
                return WitnessStatus("broken", size, st.cosigned_at_us, st.refusals,
                                     "state-unreadable", self.broken, self._broken_since)
            if st.refusing is not None:
                r = st.refusing
                return WitnessStatus("refusing", size, st.cosigned_at_us, st.refusals,
                                     r.get("reason"), _sanitize(str(r.get("detail", ""))),
                                     r.get("since_us"))
            last = st.last_refusal or {}
            return WitnessStatus("none" if self._cp is None else "ok", size,
                                 st.cosigned_at_us, st.refusals, last.get("reason"),
                                 "" if not last else
                                 _sanitize(f"last refusal: {last.get('detail', '')}"),
                                 None)

    # -- the protocol -------------------------------------------------------------------------
    def handle(self, payload: bytes) -> CosignatureReply | None:
        """Answer one add-checkpoint request; None when there is nothing to answer (the
        request does not even name a checkpoint, or the witness is broken)."""
        with self._lock:
            return self._handle(payload)

    def _handle(self, payload: bytes) -> CosignatureReply | None:  # noqa: PLR0911 -- one per step
        # (1) parse strictly
        try:
            req = AddCheckpoint.from_bytes(payload)
            cp, note = req.parsed()
        except WireError as e:
            log.error("WITNESS: ignored a checkpoint request that is not one: %s", e)
            return None
        body = cp.body_text()
        if self.broken is not None:
            log.error("WITNESS BROKEN (%s): not cosigning size %d", self.broken, cp.size)
            return None
        held = self._cp
        # (2) the log we witness, signed by the log key
        origin = self._state.origin
        if origin is not None and cp.origin != origin:
            return self._refuse(cp, "wrong-origin", f"checkpoint of {cp.origin[:80]!r}; this "
                                f"clock witnesses {origin[:80]!r}")
        try:
            Checkpoint.open_note(note, NoteVerifier(cp.origin, self._log_key, ED25519))
        except (SignatureError, KeyMismatchError) as e:
            return self._refuse(cp, "bad-signature", f"size {cp.size}: {e}")
        held_size = 0 if held is None else held.size
        # (3) never backwards
        if cp.size < held_size:
            return self._refuse(cp, "shrinking", f"the log offers size {cp.size}, smaller than "
                                f"size {held_size} this clock verified before")
        # (4) the proof must start where we are
        if req.old_size != held_size:
            log.info("witness: request from size %d, this clock holds %d; answering conflict",
                     req.old_size, held_size)
            return CosignatureReply.conflict(self.device, body, held_size)
        # (5) consistent with what we hold
        try:
            verify_consistency(held_size, cp.size, EMPTY_ROOT if held is None else held.root,
                               cp.root, req.proof)
        except ProofError as e:
            reason = "inconsistent" if e.field in ("old_root", "new_root") else "bad-proof"
            return self._refuse(cp, reason, f"size {held_size} -> {cp.size}: {e}")
        # (6) persist, then cosign
        now = self._now()
        log_sig = note.signature_by(NoteVerifier(cp.origin, self._log_key, ED25519))
        st = self._state
        previous = (st.origin, st.note, st.cosigned_at_us, st.refusing)
        st.origin = cp.origin
        st.note = Note(note.body, (log_sig,)).to_text()
        st.cosigned_at_us = to_us(now)
        if st.refusing is not None:
            log.warning("witness: size %d is consistent again with size %d; cosigning (the "
                        "refusal of %s stays in the record)", cp.size, held_size,
                        st.refusing.get("reason"))
        st.refusing = None
        try:
            self._save()
        except WitnessStateError:
            st.origin, st.note, st.cosigned_at_us, st.refusing = previous
            raise
        self._cp = cp
        line = cp.cosign(self._signing, device_witness_name(cp.origin, self.device),
                         timestamp=int(now))
        log.info("witness: cosigned size %d (consistent with size %d)", cp.size, held_size)
        return CosignatureReply.cosigned(self.device, cp, line)

    def _refuse(self, cp: Checkpoint, reason: str, detail: str) -> CosignatureReply:
        detail = _sanitize(detail)
        at = to_us(self._now())
        log.error("WITNESS REFUSES to cosign size %d of %s: %s (%s)", cp.size, cp.origin[:80],
                  reason, detail)
        st = self._state
        st.refusals += 1
        since = at if st.refusing is None else st.refusing.get("since_us", at)
        st.refusing = {"reason": reason, "detail": detail, "since_us": since,
                       "offered_size": cp.size}
        st.last_refusal = {"reason": reason, "detail": detail, "at_us": at,
                           "offered_size": cp.size}
        try:
            self._save()
        except WitnessStateError as e:
            log.error("%s; the refusal is reported but not persisted", e)
        return CosignatureReply.refused(self.device, cp.body_text(), reason, detail,
                                        known=st.note, at=at, key=self._signing)


def witness_path(state_dir: Path) -> Path:
    return state_dir / WITNESS_FILE
