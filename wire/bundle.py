"""The audit bundle (DESIGN.md §6, docs/protocol.md §8): write it, read it as a stream, audit it.

A bundle is a directory with ``ledger.ndjson`` (one ``{"entry","hash","body"}`` per line, idx
order, body as a JSON value or null), ``checkpoints.ndjson`` (one signed checkpoint per line)
and ``keys.json`` (``{"collector":[{"key","public"}]}``). Every line is canonical JSON. A v2
bundle adds ``checkpoints.v2.ndjson`` (DESIGN.md §8.2): one ``{"note": <checkpoint note with
every signature line>}`` per line in size order; the auditor opens each note under the log key
(its origin is the key name), checks its root against the tree it computes while streaming the
ledger, checks any checkpoint the caller already holds, and the witness policy's quorum on the
newest note (docs/protocol.md §13.1).

Invariants: reading never holds more than one ledger line in memory (a million-line bundle
streams); a line that does not decode becomes a (1)/(7) finding at its position, never an
exception; a body's bytes are ``canonical(body value)``, so the writer refuses a stored body
that is not JSON (a damaged store must be verified in place, not exported).
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any

from wire.audit import AuditReport, Check, Finding, KeyState, LedgerAuditor
from wire.canonical import canonical, loads
from wire.errors import DecodeError, KeyMismatchError, SignatureError, WireError
from wire.fields import HASH_RE, KEY_ID_RE, get_str, require_object
from wire.keys import VerifyKey
from wire.ledger import Entry, SignedCheckpoint
from wire.note import COSIGNATURE_V1, MAX_NOTE_BYTES, Note, NoteVerifier
from wire.note import Checkpoint as NoteCheckpoint
from wire.witness_policy import PolicyError, QuorumResult, WitnessPolicy

LEDGER_FILE = "ledger.ndjson"
CHECKPOINTS_FILE = "checkpoints.ndjson"
CHECKPOINTS_V2_FILE = "checkpoints.v2.ndjson"
KEYS_FILE = "keys.json"
MAX_LINE_BYTES = 4 * 1024 * 1024   # far above any body (punch envelopes are ≤ 256 KiB)
_LINE_KEYS = frozenset({"entry", "hash", "body"})


class BundleError(WireError):
    """A bundle that cannot be read at all (missing file, bad keys.json, I/O error)."""

    reason = "bundle"


@dataclass(frozen=True, slots=True)
class BundleEntry:
    """One decoded ledger line; ``body`` is the canonical bytes of the embedded value."""

    line: int
    entry: Entry
    hash: str
    body: bytes | None
    value: Any = None            # the body's JSON value (body == canonical(value))


@dataclass(frozen=True, slots=True)
class Malformed:
    """A line that does not decode; ``message`` names the line and what is wrong."""

    line: int
    message: str


@dataclass
class BundleAudit:
    report: AuditReport
    pinned: bool                 # the log keys came from the caller, not from keys.json
    bundle_keys: list[str]       # key ids listed in keys.json
    origin: str | None = None    # the log's origin (v2), as pinned or as the notes carry it
    v2: bool = False             # the bundle has checkpoints.v2.ndjson
    policy: str = ""             # the witness policy, described
    witness: QuorumResult | None = None   # the quorum check of the newest v2 checkpoint

    @property
    def ok(self) -> bool:
        return self.report.ok


# -- writing ---------------------------------------------------------------------------------

def ledger_line(entry: Entry, entry_hash: str, body: bytes | None) -> bytes:
    """The canonical ``ledger.ndjson`` line (with its newline) for one stored entry."""
    value = None
    if body is not None:
        try:
            value = loads(body)
        except DecodeError as e:
            raise BundleError(f"entry {entry.idx}: stored body is not JSON ({e}); the store "
                              f"is damaged: run verify on it instead of exporting") from e
    return canonical({"entry": entry.to_dict(), "hash": entry_hash, "body": value}) + b"\n"


def keys_document(log_keys: Iterable[VerifyKey]) -> bytes:
    keys = sorted({k.key_id: k for k in log_keys}.values(), key=lambda k: k.key_id)
    return canonical({"collector": [{"key": k.key_id, "public": k.b64} for k in keys]}) + b"\n"


def _create(path: Path) -> IO[bytes]:
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        os.fchmod(fd, 0o600)               # 0600 whatever the umask (issue 12 item 6)
        return os.fdopen(fd, "wb")
    except FileExistsError as e:
        raise BundleError(f"{path}: exists; refusing to overwrite a bundle") from e
    except OSError as e:
        raise BundleError(f"{path}: cannot create: {e.strerror}") from e


def note_line(note_text: str) -> bytes:
    """The canonical ``checkpoints.v2.ndjson`` line (with its newline) for one note."""
    return canonical({"note": note_text}) + b"\n"


def write_bundle(directory: Path, entries: Iterable[tuple[Entry, str, bytes | None]],
                 checkpoints: Iterable[SignedCheckpoint],
                 log_keys: Iterable[VerifyKey], *,
                 notes: Iterable[str] | None = None) -> int:
    """Write a bundle into ``directory`` (created if needed; existing files are refused).

    ``entries`` are (entry, recorded hash, body bytes or None) in idx order and are streamed.
    ``notes`` (v2) are checkpoint note texts with every signature, in size order; the last
    should be of the bundle's own size. Returns the number of entries written.
    """
    directory = Path(directory)
    try:
        directory.mkdir(parents=True, exist_ok=True, mode=0o700)   # 0700/0600: it holds
    except OSError as e:                                           # every credential
        raise BundleError(f"{directory}: cannot create: {e.strerror}") from e
    count = 0
    try:
        with _create(directory / KEYS_FILE) as f:
            f.write(keys_document(log_keys))
        with _create(directory / CHECKPOINTS_FILE) as f:
            for cp in checkpoints:
                f.write(cp.to_bytes() + b"\n")
        if notes is not None:
            with _create(directory / CHECKPOINTS_V2_FILE) as f:
                for text in notes:
                    f.write(note_line(text))
        with _create(directory / LEDGER_FILE) as f:
            for entry, entry_hash, body in entries:
                f.write(ledger_line(entry, entry_hash, body))
                count += 1
    except OSError as e:
        raise BundleError(f"{directory}: write failed: {e.strerror}") from e
    return count


# -- reading ---------------------------------------------------------------------------------

def _open(path: Path) -> IO[bytes]:
    try:
        return path.open("rb")
    except FileNotFoundError as e:
        raise BundleError(f"{path}: missing; an audit bundle holds {LEDGER_FILE}, "
                          f"{CHECKPOINTS_FILE} and {KEYS_FILE}") from e
    except OSError as e:
        raise BundleError(f"{path}: cannot read: {e.strerror}") from e


def _lines(path: Path) -> Iterator[tuple[int, bytes | None]]:
    """(line number, content without newline); None for a line over MAX_LINE_BYTES."""
    with _open(path) as f:
        n = 0
        while True:
            try:
                line = f.readline(MAX_LINE_BYTES + 1)
                n += 1
                if not line:
                    return
                if len(line) > MAX_LINE_BYTES:
                    while line and not line.endswith(b"\n"):     # skip to the line's end
                        line = f.readline(MAX_LINE_BYTES)
                    yield n, None
                    continue
            except OSError as e:
                raise BundleError(f"{path}: read failed at line {n}: {e.strerror}") from e
            yield n, line[:-1] if line.endswith(b"\n") else line


def read_keys(directory: Path) -> dict[str, VerifyKey]:
    """The collector log keys listed in ``keys.json``, by key id (each id is checked)."""
    path = Path(directory) / KEYS_FILE
    with _open(path) as f:
        data = f.read(MAX_LINE_BYTES)
    try:
        obj = require_object(loads(data), "keys.json", frozenset({"collector"}))
        listed = obj["collector"]
        if not isinstance(listed, list):
            raise DecodeError("collector: expected an array")
        keys: dict[str, VerifyKey] = {}
        for item in listed:
            k = require_object(item, "collector key", frozenset({"key", "public"}))
            kid = get_str(k, "key", KEY_ID_RE)
            vk = VerifyKey.from_b64(get_str(k, "public"))
            if vk.key_id != kid:
                raise DecodeError(f"key {kid} is not the key id of its public key "
                                  f"({vk.key_id})")
            keys[kid] = vk
    except WireError as e:
        raise BundleError(f"{path}: {e}") from e
    return keys


def iter_checkpoints(directory: Path) -> Iterator[SignedCheckpoint | Malformed]:
    for n, raw in _lines(Path(directory) / CHECKPOINTS_FILE):
        if raw is None:
            yield Malformed(n, f"{CHECKPOINTS_FILE} line {n}: longer than {MAX_LINE_BYTES} B")
            continue
        try:
            yield SignedCheckpoint.from_bytes(raw)
        except WireError as e:
            yield Malformed(n, f"{CHECKPOINTS_FILE} line {n}: {e}")


def decode_ledger_line(raw: bytes, line: int = 0) -> BundleEntry:
    """Decode one ``ledger.ndjson`` line; the body bytes are ``canonical(body value)``."""
    obj = require_object(loads(raw), "ledger line", _LINE_KEYS)
    entry = Entry.from_dict(obj["entry"])
    entry_hash = get_str(obj, "hash", HASH_RE)
    value = obj["body"]
    return BundleEntry(line, entry, entry_hash, None if value is None else canonical(value),
                       value)


def iter_ledger(directory: Path) -> Iterator[BundleEntry | Malformed]:
    for n, raw in _lines(Path(directory) / LEDGER_FILE):
        if raw is None:
            yield Malformed(n, f"{LEDGER_FILE} line {n}: longer than {MAX_LINE_BYTES} B")
            continue
        try:
            yield decode_ledger_line(raw, n)
        except WireError as e:
            yield Malformed(n, f"{LEDGER_FILE} line {n}: {e}")


def decode_note_line(raw: bytes) -> Note:
    """Decode one ``checkpoints.v2.ndjson`` line into its (parsed, not yet verified) note."""
    obj = require_object(loads(raw), "v2 checkpoint line", frozenset({"note"}))
    return Note.from_text(get_str(obj, "note"))


def iter_notes(directory: Path) -> Iterator[tuple[int, Note] | Malformed]:
    """(line number, note) per line of ``checkpoints.v2.ndjson``; nothing if it is absent."""
    path = Path(directory) / CHECKPOINTS_V2_FILE
    if not path.is_file():
        return
    for n, raw in _lines(path):
        if raw is None or len(raw) > 2 * MAX_NOTE_BYTES:
            yield Malformed(n, f"{CHECKPOINTS_V2_FILE} line {n}: too long for a note")
            continue
        try:
            yield n, decode_note_line(raw)
        except WireError as e:
            yield Malformed(n, f"{CHECKPOINTS_V2_FILE} line {n}: {e}")


class LogNotes:
    """Opens checkpoint notes under the trusted log keys, for one origin.

    The origin is the log key's note name (DESIGN.md §8.2). It is pinned by the caller, or
    else taken from the first note opened; every later note must carry the same one.
    """

    def __init__(self, keys: Iterable[VerifyKey], origin: str | None = None) -> None:
        self.keys = list(keys)
        self.origin = origin

    def open(self, note: Note) -> NoteCheckpoint:
        cp = NoteCheckpoint.from_body(note.body)
        if self.origin is None:
            self.origin = cp.origin
        elif cp.origin != self.origin:
            raise KeyMismatchError(f"origin {cp.origin[:80]!r} is not the log's origin "
                                   f"{self.origin[:80]!r}", field="origin")
        for key in self.keys:
            verifier = NoteVerifier(cp.origin, key)
            if any(verifier.matches(sig) for sig in note.signatures):
                return NoteCheckpoint.open_note(note, verifier)[0]
        raise SignatureError(f"the note is not signed by a trusted collector log key under "
                             f"the name {cp.origin[:80]!r}", field="sig")


# -- auditing --------------------------------------------------------------------------------

def _trusted_keys(listed: dict[str, VerifyKey], pinned: Sequence[VerifyKey] | None,
                  ) -> tuple[dict[str, VerifyKey], list[Finding]]:
    """(0) the keys to trust, and a finding per keys.json key that was not pinned."""
    if pinned is None:
        return listed, []
    trusted = {k.key_id: k for k in pinned}
    findings = [
        Finding(None, Check.KEYS.value, f"{KEYS_FILE} lists collector key {kid}, which is not "
                f"a pinned collector key: the bundle does not come from the pinned collector, "
                f"or {KEYS_FILE} was replaced", True)
        for kid, key in sorted(listed.items()) if trusted.get(kid) != key]
    return trusted, findings


def parse_trusted(label: str, data: str | bytes) -> Note:
    """A checkpoint note the verifier holds; one that does not parse is a usage error."""
    try:
        return Note.from_text(data)
    except WireError as e:
        raise BundleError(f"{label}: not a checkpoint note: {e}") from e


def _origin(origin: str | None, policy: WitnessPolicy | None) -> str | None:
    if policy is not None and policy.origin is not None:
        if origin is not None and origin != policy.origin:
            raise BundleError(f"--origin {origin[:80]!r} is not the witness policy's origin "
                              f"{policy.origin[:80]!r}")
        return policy.origin
    return origin


def audit_bundle(directory: Path, *, pinned: Sequence[VerifyKey] | None = None,
                 trusted: Sequence[tuple[str, Note]] = (),
                 policy: WitnessPolicy | None = None, origin: str | None = None,
                 now_s: int | None = None) -> BundleAudit:
    """Verify a bundle: steps (0)-(11) of docs/protocol.md §9 and §13.1.

    With ``pinned`` (collector keys obtained out of band) only those keys are trusted, and a
    key in keys.json that is not pinned is a (0) failure. Without it keys.json is trusted,
    which proves only that the bundle is consistent with itself: the caller must say so.
    ``trusted`` are (label, note) of checkpoints the caller already holds (:func:`parse_trusted`);
    ``policy`` is the witness policy for the newest v2 checkpoint; ``now_s`` (POSIX seconds)
    is needed by a policy with max-age. Raises :class:`BundleError` only when the bundle cannot
    be read.
    """
    directory = Path(directory)
    for name in (LEDGER_FILE, CHECKPOINTS_FILE):
        if not (directory / name).is_file():
            raise BundleError(f"{directory / name}: missing; is {directory} an audit bundle?")
    listed = read_keys(directory)
    trusted_keys, extra = _trusted_keys(listed, pinned)
    auditor = LedgerAuditor(trusted_keys, require_coverage=True)
    for cp in iter_checkpoints(directory):
        if isinstance(cp, Malformed):
            auditor.feed_malformed_checkpoint(cp.message)
        else:
            auditor.feed_checkpoint(cp)
    opener = LogNotes(trusted_keys.values(), _origin(origin, policy))
    held = 0        # the largest size of a held checkpoint that opened
    # (9) the checkpoints the verifier holds fix the origin before the bundle's notes can
    for label, note in trusted:
        try:
            held_cp = opener.open(note)
            auditor.feed_trusted(held_cp, label)
            held = max(held, held_cp.size)
        except WireError as e:
            extra.append(Finding(None, Check.TRUSTED.value, f"{label}: {e}: it cannot vouch "
                                 f"for this ledger", True))
    newest = _feed_notes(directory, auditor, opener, policy, extra)
    for item in iter_ledger(directory):
        if isinstance(item, Malformed):
            auditor.feed_malformed(item.message)
        else:
            auditor.feed(item.entry, item.hash, item.body, decoded=item.value)
    report = auditor.finish()
    if policy is not None and policy.enrolled_clocks and opener.origin is not None:
        policy = policy.with_clocks(_enrolled_clocks(auditor, held, opener.origin))
    quorum = _check_quorum(newest, policy, now_s, extra)
    if extra:
        report.findings = sorted(extra + report.findings, key=Finding.sort_key)
    return BundleAudit(report, pinned is not None, sorted(listed), opener.origin,
                       (directory / CHECKPOINTS_V2_FILE).is_file(),
                       policy.describe() if policy is not None else "", quorum)


def _enrolled_clocks(auditor: LedgerAuditor, held: int, origin: str) -> list[NoteVerifier]:
    """The witness keys of the clocks the ledger enrolled before ``held`` (a held checkpoint's
    size): per clock, the key in force at that size, never revoked (docs/protocol.md §13.2)."""
    newest: dict[str, KeyState] = {}
    for k in auditor.keys_snapshot():
        if k.registered_idx is None or k.registered_idx >= held:
            continue
        if k.device not in newest or k.registered_idx > (newest[k.device].registered_idx or 0):
            newest[k.device] = k
    return [NoteVerifier(f"{origin}/devices/{k.device}", k.verify_key, COSIGNATURE_V1)
            for k in newest.values() if k.revoked_at_idx is None]


def _feed_notes(directory: Path, auditor: LedgerAuditor, opener: LogNotes,
                policy: WitnessPolicy | None, extra: list[Finding],
                ) -> tuple[NoteCheckpoint, Note] | None:
    """(8) open and feed every v2 note; returns the newest (largest size, last in file)."""
    newest: tuple[NoteCheckpoint, Note] | None = None
    for item in iter_notes(directory):
        if isinstance(item, Malformed):
            auditor.feed_malformed_note(item.message)
            continue
        n, note = item
        try:
            cp = opener.open(note)
        except WireError as e:
            auditor.feed_malformed_note(f"{CHECKPOINTS_V2_FILE} line {n}: {e}")
            continue
        auditor.feed_note(cp)
        if policy is not None:
            # (10) a named witness's line must verify in every note, not only the newest
            try:
                policy.verify_lines(cp, note)
            except WireError as e:
                extra.append(Finding(cp.size - 1 if cp.size else None, Check.WITNESS.value,
                                     f"v2 checkpoint of size {cp.size} ({CHECKPOINTS_V2_FILE} "
                                     f"line {n}): {e}", True))
        if newest is None or cp.size >= newest[0].size:
            newest = (cp, note)
    return newest


def _check_quorum(newest: tuple[NoteCheckpoint, Note] | None, policy: WitnessPolicy | None,
                  now_s: int | None, extra: list[Finding]) -> QuorumResult | None:
    """(10) the newest v2 checkpoint carries the policy's quorum."""
    if policy is None or policy.empty:
        return None
    if newest is None:
        if policy.quorum:
            extra.append(Finding(None, Check.WITNESS.value,
                                 f"the bundle has no v2 checkpoint, so no witness cosigned "
                                 f"anything: {policy.describe()} not met", True))
        return None
    cp, note = newest
    at = cp.size - 1 if cp.size else None
    try:
        result = policy.check(cp, note, now_s=now_s)
    except (WireError, PolicyError) as e:
        extra.append(Finding(at, Check.WITNESS.value,
                             f"the newest v2 checkpoint (size {cp.size}): {e}", True))
        return None
    if not result.met:
        extra.append(Finding(at, Check.WITNESS.value,
                             f"the newest v2 checkpoint (size {cp.size}) carries "
                             f"{result.shortfall()} ({policy.describe()}): no independent "
                             f"witness vouches that this is the log everyone else sees",
                             True))
    return result


def dumps_report(audit: BundleAudit) -> str:
    """The ``--json`` form of an audit."""
    out = audit.report.to_dict()
    out["collector_key_pinned"] = audit.pinned
    out["bundle_keys"] = audit.bundle_keys
    out["origin"] = audit.origin
    out["v2"] = audit.v2
    out["policy"] = audit.policy
    out["witness"] = audit.witness.to_dict() if audit.witness is not None else None
    return json.dumps(out, indent=2, sort_keys=True)
