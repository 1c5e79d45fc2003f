"""The witness itself, without HTTP: C2SP tlog-witness ``add-checkpoint`` (DESIGN.md §8.3).

:meth:`Witness.add_checkpoint` takes a request body (wire.witness.AddCheckpoint) and returns
the cosignature line, or raises :class:`Rejection` with the HTTP status the spec names:

  (1) the body parses (else 400); (2) the origin is a configured log (else 404); (3) the log's
  signature verifies (else 403); (4) old size ≤ checkpoint size (else 400); (5) old size is
  the size of the latest checkpoint cosigned for that log, or 0 (else 409 with that size,
  ``text/x.tlog.size``); (6) at equal sizes the roots are equal (else 409, as the spec says,
  with the same ``text/x.tlog.size`` body: a client sees that the size it sent is the size
  held, so the conflict is another root, not a size to retry from); the consistency proof
  leads from it to the new checkpoint (else 422); (7) the new checkpoint is persisted, then
  cosigned (cosignature/v1, Ed25519, under the witness's name, timestamp now).

Invariants: per log, the state file ``<state_dir>/<sha256(origin) hex>.note`` holds the largest
checkpoint cosigned (note text with the log's signature); it is replaced atomically (temporary
file, fsync, rename, fsync of the directory) before a cosignature is returned, and only by a
checkpoint proven consistent with it, so the witness never cosigns a log that shrank or forked.
Requests for one log are handled one at a time. A state file that does not verify under the
configured log key stops the witness at start (starting afresh would accept a rewritten log).
"""

from __future__ import annotations

import hashlib
import logging
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from wire.errors import DecodeError, KeyMismatchError, ProofError, SignatureError, WireError
from wire.keys import SigningKey, write_public_file
from wire.merkle import EMPTY_ROOT, verify_consistency
from wire.note import COSIGNATURE_V1, Checkpoint, Note, NoteVerifier
from wire.witness import AddCheckpoint
from witness import WitnessError
from witness.config import LogConfig

log = logging.getLogger("timeclock.witness")

SIZE_CONTENT_TYPE = "text/x.tlog.size"


class StateError(WitnessError):
    """A log's state file cannot be read, verified or written."""


@dataclass(frozen=True)
class Rejection(WitnessError):
    """The request is refused with ``status``; ``body`` is the response text."""

    status: int
    body: str
    content_type: str = "text/plain; charset=utf-8"

    def __str__(self) -> str:
        return f"{self.status}: {self.body.strip()}"


def _write_atomic(path: Path, data: bytes) -> None:
    try:
        write_public_file(path, data)
    except OSError as e:
        raise StateError(f"{path}: cannot write the witness state: {e.strerror or e}") from e


class _LogState:
    """One log: its key, the largest checkpoint cosigned (on disk and in memory), a lock."""

    def __init__(self, cfg: LogConfig, state_dir: Path) -> None:
        self.cfg = cfg
        self.path = state_dir / f"{hashlib.sha256(cfg.origin.encode()).hexdigest()}.note"
        self.lock = threading.Lock()
        self.checkpoint: Checkpoint | None = None
        try:
            text = self.path.read_text(encoding="utf-8")
        except FileNotFoundError:
            return
        except (OSError, UnicodeDecodeError) as e:
            raise StateError(f"{self.path}: cannot read: {e}") from e
        try:
            self.checkpoint = Checkpoint.open(text, cfg.verifier)
        except WireError as e:
            raise StateError(f"{self.path}: the state of log {cfg.origin!r} does not verify "
                             f"under its configured key ({e}); refusing to start") from e

    @property
    def size(self) -> int:
        return 0 if self.checkpoint is None else self.checkpoint.size

    def save(self, cp: Checkpoint, note: Note) -> None:
        own = note.signature_by(self.cfg.verifier)
        _write_atomic(self.path, Note(note.body, (own,)).to_text().encode("utf-8"))
        self.checkpoint = cp


class Witness:
    """Cosigns checkpoints of the configured logs (thread-safe)."""

    def __init__(self, name: str, key: SigningKey, logs: tuple[LogConfig, ...],
                 state_dir: Path, *, now: Callable[[], float] = time.time) -> None:
        self.name = name
        self.key = key
        self.now = now
        try:
            state_dir.mkdir(parents=True, exist_ok=True, mode=0o700)
        except OSError as e:
            raise StateError(f"{state_dir}: cannot create: {e.strerror or e}") from e
        self.logs = {lc.origin: _LogState(lc, state_dir) for lc in logs}

    @property
    def verifier(self) -> NoteVerifier:
        """This witness's cosignature key (give its :meth:`NoteVerifier.vkey` to verifiers)."""
        return NoteVerifier(self.name, self.key.verify_key, COSIGNATURE_V1)

    def size(self, origin: str) -> int:
        return self.logs[origin].size

    def add_checkpoint(self, body: bytes) -> str:
        """The cosignature line(s) for a request body, or :class:`Rejection`."""
        # (1) parse
        try:
            req = AddCheckpoint.from_bytes(body)
            cp, note = req.parsed()
        except DecodeError as e:
            raise Rejection(400, f"malformed add-checkpoint request: {e}\n") from e
        # (2) a log we witness
        state = self.logs.get(cp.origin)
        if state is None:
            raise Rejection(404, f"unknown log {cp.origin[:120]!r}\n")
        # (3) signed by its key
        try:
            Checkpoint.open_note(note, state.cfg.verifier)
        except (SignatureError, KeyMismatchError) as e:
            raise Rejection(403, f"the checkpoint is not signed by the log's key: {e}\n") from e
        # (4) a proof can only go forwards
        if req.old_size > cp.size:
            raise Rejection(400, f"old size {req.old_size} is larger than the checkpoint's "
                            f"size {cp.size}\n")
        with state.lock:
            held = state.checkpoint
            # (5) from the size we hold
            if req.old_size != state.size:
                raise Rejection(409, f"{state.size}\n", SIZE_CONTENT_TYPE)
            # (6) the same root at the same size (C2SP: 409, not 422), then consistent
            if held is not None and cp.size == held.size and cp.root != held.root:
                log.error("REFUSED checkpoint of %s size %d: another root for the size "
                          "cosigned before (a fork)", cp.origin, cp.size)
                raise Rejection(409, f"{state.size}\n", SIZE_CONTENT_TYPE)
            try:
                verify_consistency(state.size, cp.size,
                                   EMPTY_ROOT if held is None else held.root, cp.root,
                                   req.proof)
            except ProofError as e:
                log.error("REFUSED checkpoint of %s size %d: not consistent with size %d "
                          "cosigned before (%s)", cp.origin, cp.size, state.size, e)
                raise Rejection(422, f"the checkpoint is not proven consistent with size "
                                f"{state.size}: {e}\n") from e
            # (7) persist, then cosign
            state.save(cp, note)
        line = cp.cosign(self.key, self.name, timestamp=int(self.now()))
        log.info("cosigned %s size %d", cp.origin, cp.size)
        return line.line()
