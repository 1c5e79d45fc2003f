"""The largest checkpoint this collector made or saw cosigned, kept outside the database.

A ledger can be truncated by whoever controls its database (DELETE with the triggers
dropped, a restore of an old backup): the chain and the tree of what remains still verify.
The collector therefore keeps the newest v2 checkpoint note it made or stored (with every
cosignature it gathered) in a state file beside the log key (``[collector] state_dir``), and
``serve`` refuses to start on a ledger that does not extend it (:func:`check_ledger`):

1. the note verifies under the log key and the configured origin;
2. the ledger's tree size is at least the note's size (else: truncated);
3. the ledger's Merkle root at that size is the note's root, and the stored tree proves
   its current root consistent with it (else: rewritten).

Invariants: the file only ever moves to a larger checkpoint, or to the same one with more
signatures; it is written atomically (temporary file, fsync, rename, fsync of the
directory), mode 0600 like every file the collector writes (issue 12 item 6; a checkpoint is
public, but one rule is easier to keep), in a directory created 0700.
"""

from __future__ import annotations

import logging
from pathlib import Path

from collector import CollectorError, LedgerError
from collector.ledger.sqlbase import SQLStore
from wire.errors import ProofError, WireError
from wire.keys import write_public_file
from wire.merkle import verify_consistency
from wire.note import Checkpoint, Note, NoteVerifier

log = logging.getLogger("timeclock.collector")

STATE_FILE = "largest-checkpoint.note"


class LedgerRollbackError(CollectorError):
    """The ledger is smaller than, or inconsistent with, a checkpoint this collector made."""


class StateFileError(CollectorError):
    """The state file cannot be read, verified or written."""


class LogState:
    """The state file of one collector (see the module docstring)."""

    def __init__(self, directory: Path, verifier: NoteVerifier) -> None:
        self.path = directory / STATE_FILE
        self.verifier = verifier
        self._saved: tuple[int, int] | None = None   # (size, signature lines) on disk

    def load(self) -> tuple[Checkpoint, str] | None:
        """The checkpoint in the state file and its note, or None if there is no file."""
        try:
            text = self.path.read_text(encoding="utf-8")
        except FileNotFoundError:
            return None
        except (OSError, UnicodeDecodeError) as e:
            raise StateFileError(f"{self.path}: cannot read: {e}") from e
        try:
            cp, note = Checkpoint.open_note(text, self.verifier)
        except WireError as e:
            raise StateFileError(
                f"{self.path}: not a checkpoint of origin {self.verifier.name!r} signed by "
                f"this log key ({e}); if the origin or log key was changed on purpose, move "
                f"the file away and say so in the change record") from e
        self._saved = (cp.size, len(note.signatures))
        return cp, text

    def save(self, size: int, note: str) -> bool:
        """Write ``note`` (of checkpoint ``size``) if it is larger than the saved one, or the
        same size with more signature lines; True if written."""
        try:
            lines = len(Note.from_text(note).signatures)
        except WireError as e:
            raise StateFileError(f"not writing {self.path}: the note is malformed: {e}") from e
        if self._saved is not None and (size, lines) <= self._saved:
            return False     # smaller, or the same checkpoint with no more signatures
        try:
            self.path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
            write_public_file(self.path, note.encode("utf-8"), mode=0o600)
        except OSError as e:
            raise StateFileError(f"{self.path}: cannot write: {e}") from e
        self._saved = (size, lines)
        return True


def check_ledger(store: SQLStore, state: LogState) -> Checkpoint | None:
    """Raise LedgerRollbackError unless the ledger extends the checkpoint in the state file;
    return that checkpoint (None when there is no state file yet)."""
    found = state.load()
    if found is None:
        log.info("no %s yet: the first checkpoint will be kept there", state.path)
        return None
    cp, _ = found
    size = store.tree_size()
    if size < cp.size:
        raise LedgerRollbackError(
            f"the ledger has {size} entries but this collector made (or saw cosigned) a "
            f"checkpoint of size {cp.size} ({state.path}): entries were deleted or an old "
            f"backup was restored; refusing to start (restore the ledger up to at least "
            f"size {cp.size} or investigate)")
    try:
        old_root = store.merkle_root(cp.size)
        if old_root != cp.root:
            raise LedgerRollbackError(
                f"the ledger's Merkle root at size {cp.size} is not the root of the checkpoint "
                f"of size {cp.size} in {state.path} (ledger now {size} entries): the ledger "
                f"was rewritten; refusing to start")
        verify_consistency(cp.size, size, cp.root, store.merkle_root(size),
                           store.consistency_proof(cp.size, size))
    except ProofError as e:
        raise LedgerRollbackError(
            f"the ledger of {size} entries is not consistent with the checkpoint of size "
            f"{cp.size} in {state.path}: {e}; refusing to start") from e
    except LedgerError as e:
        raise LedgerRollbackError(
            f"cannot prove the ledger of {size} entries consistent with the checkpoint of "
            f"size {cp.size} in {state.path}: {e}; refusing to start") from e
    return cp
