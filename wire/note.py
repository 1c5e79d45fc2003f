"""Signed notes (C2SP signed-note), checkpoint v2 (C2SP tlog-checkpoint) and Ed25519
cosignatures (C2SP tlog-cosignature v1): DESIGN.md §8.2–8.3, docs/protocol.md §12.4–12.6.

A note is UTF-8 text: a body ending in a newline, a blank line, then one or more lines
``— <key name> <base64(4-byte key id ‖ signature)>``. A checkpoint body is exactly three lines,
``<origin>\\n<size>\\n<base64 root>\\n`` (no extension lines), signed by the log key under the
name ``<origin>``; the origin never starts with ``timeclock/``, so no note can be read as a v1
message. A cosignature is a signature line of type 0x04 whose payload is an 8-byte big-endian
POSIX timestamp (seconds) and an Ed25519 signature over
``"cosignature/v1\\ntime <timestamp>\\n" + body``.

Invariants: a :class:`Note` that exists was parsed strictly (bounded size and line count, no
control characters but newline, canonical base64, no duplicate (name, key id)); signature lines
of keys the caller did not name are kept, byte for byte, and ignored; a line that does name a
key the caller trusts must verify, or the whole note is refused.
"""

from __future__ import annotations

import base64
import hashlib
import re
import struct
from collections.abc import Iterable
from dataclasses import dataclass

from wire.errors import DecodeError, KeyMismatchError, OversizeError, SignatureError
from wire.keys import SigningKey, VerifyKey, b64decode_strict

ED25519 = 0x01
COSIGNATURE_V1 = 0x04
_KINDS = {ED25519: "Ed25519", COSIGNATURE_V1: "cosignature/v1"}

SIG_PREFIX = "\u2014 "   # em dash, space
MAX_NOTE_BYTES = 1 << 20
MAX_SIGNATURES = 1024     # C2SP asks for at least 16; clocks are witnesses, so allow many
MAX_LINE_BYTES = 8192     # room for unknown (e.g. post-quantum) signature types
MAX_NAME_BYTES = 512
MAX_ORIGIN_BYTES = 256
MAX_SIZE = 2**53 - 1      # tree sizes stay within canonical JSON's integers
MAX_TIMESTAMP = 2**63 - 1
RESERVED_ORIGIN_PREFIX = "timeclock/"
COSIGNATURE_HEADER = b"cosignature/v1\n"

_SIZE_RE = re.compile(r"0|[1-9][0-9]{0,15}")
_CONTROL_RE = re.compile(r"[\x00-\x09\x0b-\x1f]")
_HEX8_RE = re.compile(r"[0-9a-fA-F]{8}")


def check_key_name(name: str, what: str = "key name") -> str:
    """C2SP: non-empty, no Unicode space, no ``+``; here also bounded and control-free."""
    if not isinstance(name, str) or not name:
        raise DecodeError(f"{what} is empty", field="name")
    if len(name.encode("utf-8", "surrogatepass")) > MAX_NAME_BYTES:
        raise DecodeError(f"{what} is longer than {MAX_NAME_BYTES} bytes", field="name")
    for c in name:
        if c.isspace() or c == "+" or ord(c) < 0x20 or 0xD800 <= ord(c) <= 0xDFFF:
            raise DecodeError(f"{what} {name[:80]!r} contains {c!r} (no spaces, '+' or "
                              "control characters)", field="name")
    return name


def check_origin(origin: str) -> str:
    check_key_name(origin, "origin")
    if len(origin.encode("utf-8")) > MAX_ORIGIN_BYTES:
        raise DecodeError(f"origin is longer than {MAX_ORIGIN_BYTES} bytes", field="origin")
    if origin.startswith(RESERVED_ORIGIN_PREFIX):
        raise DecodeError(f"origin {origin[:80]!r} starts with {RESERVED_ORIGIN_PREFIX!r}, "
                          "which is reserved for v1 messages", field="origin")
    return origin


def note_key_id(name: str, kind: int, public_raw: bytes) -> bytes:
    """SHA-256(name ‖ 0x0A ‖ kind ‖ 32-byte public key)[:4]."""
    return hashlib.sha256(name.encode("utf-8") + b"\n" + bytes([kind]) + public_raw).digest()[:4]


@dataclass(frozen=True, slots=True)
class NoteSignature:
    """One signature line: key name, 4-byte key id, and the rest of the decoded payload."""

    name: str
    key_id: bytes
    sig: bytes

    def __post_init__(self) -> None:
        check_key_name(self.name)
        if len(self.key_id) != 4 or not self.sig:
            raise DecodeError("signature needs a 4-byte key id and a non-empty signature",
                              field="sig")

    def line(self) -> str:
        return f"{SIG_PREFIX}{self.name} {base64.b64encode(self.key_id + self.sig).decode()}\n"

    @classmethod
    def from_line(cls, line: str) -> NoteSignature:
        """One line without its newline."""
        if not line.startswith(SIG_PREFIX):
            raise DecodeError(f"signature line {line[:40]!r} does not start with '\u2014 '",
                              field="sig")
        rest = line[len(SIG_PREFIX):]
        name, sep, b64 = rest.partition(" ")
        if not sep or " " in b64:
            raise DecodeError(f"signature line {line[:80]!r} is not '\u2014 <name> <base64>'",
                              field="sig")
        check_key_name(name)
        raw = b64decode_strict(b64, field="sig")
        if len(raw) < 5:
            raise DecodeError(f"signature of {name[:80]!r} is {len(raw)} bytes; it needs a "
                              "4-byte key id and a signature", field="sig")
        return cls(name, raw[:4], raw[4:])


@dataclass(frozen=True, slots=True)
class NoteVerifier:
    """A trusted (name, Ed25519 public key, signature type); its key id follows from them."""

    name: str
    key: VerifyKey
    kind: int = ED25519

    def __post_init__(self) -> None:
        check_key_name(self.name)
        if self.kind not in _KINDS:
            raise DecodeError(f"signature type 0x{self.kind:02x} is not supported here "
                              "(0x01 Ed25519, 0x04 cosignature/v1)", field="kind")

    @property
    def key_id(self) -> bytes:
        return note_key_id(self.name, self.kind, self.key.raw)

    def matches(self, sig: NoteSignature) -> bool:
        return sig.name == self.name and sig.key_id == self.key_id

    def vkey(self) -> str:
        """C2SP verifier key: ``<name>+<hex key id>+<base64(type ‖ public key)>``."""
        payload = base64.b64encode(bytes([self.kind]) + self.key.raw).decode("ascii")
        return f"{self.name}+{self.key_id.hex()}+{payload}"

    @classmethod
    def from_vkey(cls, text: str) -> NoteVerifier:
        # The base64 part may itself contain '+': split at the first two only.
        parts = text.split("+", 2)
        if len(parts) != 3:
            raise DecodeError("verifier key is not <name>+<hex key id>+<base64 key>",
                              field="vkey")
        name, hex_id, b64 = parts
        check_key_name(name)
        if not _HEX8_RE.fullmatch(hex_id):
            raise DecodeError(f"verifier key id {hex_id[:20]!r} is not 8 hex digits",
                              field="vkey")
        raw = b64decode_strict(b64, field="vkey")
        if len(raw) != 33:
            raise DecodeError(f"verifier key material is {len(raw)} bytes, expected 33 "
                              "(type byte and 32-byte Ed25519 key)", field="vkey")
        verifier = cls(name, VerifyKey(raw[1:]), raw[0])
        if verifier.key_id != bytes.fromhex(hex_id):
            raise KeyMismatchError(f"verifier key {name[:80]!r}: key id {hex_id} does not match "
                                   f"the key ({verifier.key_id.hex()})", field="vkey")
        return verifier


def _note_text(data: str | bytes) -> str:
    """The note as str: bounded, valid UTF-8 (no lone surrogates)."""
    if isinstance(data, bytes | bytearray):
        if len(data) > MAX_NOTE_BYTES:
            raise OversizeError(f"note is {len(data)} bytes, at most {MAX_NOTE_BYTES}")
        try:
            return bytes(data).decode("utf-8")
        except UnicodeDecodeError as e:
            raise DecodeError(f"note is not UTF-8: {e.reason} at byte {e.start}") from e
    if len(data.encode("utf-8", "surrogatepass")) > MAX_NOTE_BYTES:
        raise OversizeError(f"note is larger than {MAX_NOTE_BYTES} bytes")
    if any(0xD800 <= ord(c) <= 0xDFFF for c in data):
        raise DecodeError("note contains a lone surrogate")
    return data


def _ed25519_verify(key: VerifyKey, message: bytes, sig: bytes, who: str) -> None:
    if len(sig) != 64:
        raise SignatureError(f"signature of {who} is {len(sig)} bytes, expected 64",
                             field="sig")
    try:
        key.verify(message, base64.b64encode(sig).decode("ascii"))
    except SignatureError as e:
        raise SignatureError(f"signature of {who} does not verify", field="sig") from e


@dataclass(frozen=True, slots=True)
class Note:
    """A parsed signed note: its body (the signed text) and every signature line, in order."""

    body: str
    signatures: tuple[NoteSignature, ...]

    def __post_init__(self) -> None:
        if not self.body.endswith("\n") or _CONTROL_RE.search(self.body):
            raise DecodeError("note body must end with a newline and hold no control "
                              "character but newline", field="body")
        if not self.signatures:
            raise DecodeError("a note needs at least one signature", field="sig")

    @classmethod
    def from_text(cls, data: str | bytes) -> Note:
        text = _note_text(data)
        if m := _CONTROL_RE.search(text):
            raise DecodeError(f"note contains control character {m.group()!r} at "
                              f"{m.start()}; only newline is allowed")
        if not text.endswith("\n"):
            raise DecodeError("note does not end with a newline")
        # The body is separated from the signatures by the last blank line.
        split = text.rfind("\n\n")
        if split < 0:
            raise DecodeError("note has no blank line before its signatures")
        body, sig_block = text[:split + 1], text[split + 2:]
        if not sig_block:
            raise DecodeError("note has no signature lines")
        lines = sig_block[:-1].split("\n")
        if len(lines) > MAX_SIGNATURES:
            raise OversizeError(f"note has {len(lines)} signatures, at most {MAX_SIGNATURES}")
        sigs: list[NoteSignature] = []
        seen: set[tuple[str, bytes]] = set()
        for line in lines:
            if len(line.encode("utf-8")) > MAX_LINE_BYTES:
                raise OversizeError(f"signature line is longer than {MAX_LINE_BYTES} bytes")
            sig = NoteSignature.from_line(line)
            if (sig.name, sig.key_id) in seen:
                raise DecodeError(f"two signatures by {sig.name[:80]!r} with key id "
                                  f"{sig.key_id.hex()}", field="sig")
            seen.add((sig.name, sig.key_id))
            sigs.append(sig)
        return cls(body, tuple(sigs))

    def to_text(self) -> str:
        return self.body + "\n" + "".join(s.line() for s in self.signatures)

    def with_signature(self, sig: NoteSignature) -> Note:
        """This note with ``sig`` added (refused if that name and key id already signed)."""
        if any(s.name == sig.name and s.key_id == sig.key_id for s in self.signatures):
            raise DecodeError(f"note already has a signature by {sig.name[:80]!r} with key id "
                              f"{sig.key_id.hex()}", field="sig")
        return Note(self.body, (*self.signatures, sig))

    def signature_by(self, verifier: NoteVerifier) -> NoteSignature:
        """The one line whose (name, key id) is ``verifier``'s; lines of other keys are ignored."""
        for s in self.signatures:
            if verifier.matches(s):
                return s
        raise SignatureError(f"note is not signed by {verifier.name[:80]!r} (key id "
                             f"{verifier.key_id.hex()})", field="sig")

    def verify(self, verifier: NoteVerifier) -> None:
        """Raise unless ``verifier`` (type 0x01) signed the body."""
        if verifier.kind != ED25519:
            raise KeyMismatchError(f"{verifier.name[:80]!r} is a type 0x{verifier.kind:02x} "
                                   "key, not a note-signing (0x01) key", field="kind")
        sig = self.signature_by(verifier)
        _ed25519_verify(verifier.key, self.body.encode("utf-8"), sig.sig,
                        repr(verifier.name[:80]))


def sign_note(body: str, key: SigningKey, name: str) -> NoteSignature:
    """A type 0x01 signature line by ``key`` under ``name`` over ``body``."""
    check_key_name(name)
    key_id = note_key_id(name, ED25519, key.verify_key.raw)
    return NoteSignature(name, key_id, base64.b64decode(key.sign(body.encode("utf-8"))))


@dataclass(frozen=True, slots=True)
class Checkpoint:
    """A tree head: ``<origin>\\n<size>\\n<base64 root>\\n``, signed as a note."""

    origin: str
    size: int
    root: bytes

    def __post_init__(self) -> None:
        check_origin(self.origin)
        if not isinstance(self.size, int) or isinstance(self.size, bool) or \
                not 0 <= self.size <= MAX_SIZE:
            raise DecodeError(f"checkpoint size must be an integer in 0…{MAX_SIZE}",
                              field="size")
        if not isinstance(self.root, bytes) or len(self.root) != 32:
            raise DecodeError("checkpoint root must be 32 bytes", field="root")

    def body(self) -> bytes:
        return self.body_text().encode("utf-8")

    def body_text(self) -> str:
        return f"{self.origin}\n{self.size}\n{base64.b64encode(self.root).decode('ascii')}\n"

    @classmethod
    def from_body(cls, body: str) -> Checkpoint:
        """Strictly parse a checkpoint body (three lines, each ending in a newline)."""
        if not body.endswith("\n"):
            raise DecodeError("checkpoint body does not end with a newline")
        lines = body[:-1].split("\n")
        if len(lines) > 3:
            raise DecodeError(f"checkpoint has {len(lines) - 3} extension line(s); "
                              "none are allowed", field="body")
        if len(lines) < 3:
            raise DecodeError(f"checkpoint body has {len(lines)} line(s), expected 3 "
                              "(origin, size, root)", field="body")
        origin, size_text, root_text = lines
        check_origin(origin)
        if not _SIZE_RE.fullmatch(size_text):
            raise DecodeError(f"checkpoint size {size_text[:24]!r} is not a decimal without "
                              "leading zeros", field="size")
        size = int(size_text)
        if size > MAX_SIZE:
            raise DecodeError(f"checkpoint size {size} exceeds {MAX_SIZE}", field="size")
        root = b64decode_strict(root_text, field="root", length=32)
        return cls(origin, size, root)

    # (log) -------------------------------------------------------------------------------

    def sign(self, key: SigningKey) -> str:
        """The note text signed by the log key under the origin (DESIGN.md §8.2)."""
        return self.signed_note(key).to_text()

    def signed_note(self, key: SigningKey) -> Note:
        return Note(self.body_text(), (sign_note(self.body_text(), key, self.origin),))

    @classmethod
    def open(cls, note_text: str | bytes, log: NoteVerifier) -> Checkpoint:
        """Parse a checkpoint note and verify the log's signature; other lines are ignored.

        ``log`` is the configured log key; its name must be the checkpoint's origin.
        """
        return cls.open_note(note_text, log)[0]

    @classmethod
    def open_note(cls, note_text: str | bytes | Note,
                  log: NoteVerifier) -> tuple[Checkpoint, Note]:
        """:meth:`open`, also returning the parsed note (for its cosignatures)."""
        note = note_text if isinstance(note_text, Note) else Note.from_text(note_text)
        cp = cls.from_body(note.body)
        # (1) the log key is named for this origin; (2) its signature verifies
        if log.name != cp.origin:
            raise KeyMismatchError(f"checkpoint origin {cp.origin[:80]!r} is not the log key's "
                                   f"name {log.name[:80]!r}", field="origin")
        note.verify(log)
        return cp, note

    # (witness) ---------------------------------------------------------------------------

    def cosignature_message(self, timestamp: int) -> bytes:
        _check_timestamp(timestamp)
        return COSIGNATURE_HEADER + f"time {timestamp}\n".encode("ascii") + self.body()

    def cosign(self, key: SigningKey, name: str, *, timestamp: int) -> NoteSignature:
        """A cosignature/v1 line by witness ``name`` at POSIX ``timestamp`` (seconds)."""
        check_key_name(name, "witness name")
        key_id = note_key_id(name, COSIGNATURE_V1, key.verify_key.raw)
        sig = base64.b64decode(key.sign(self.cosignature_message(timestamp)))
        return NoteSignature(name, key_id, struct.pack(">Q", timestamp) + sig)

    def verify_cosignature(self, note: str | bytes | Note, witness: NoteVerifier) -> int:
        """Verify ``witness``'s cosignature in ``note`` (a note of this checkpoint); return
        its timestamp. Lines of other keys are ignored."""
        if witness.kind != COSIGNATURE_V1:
            raise KeyMismatchError(f"{witness.name[:80]!r} is a type 0x{witness.kind:02x} key, "
                                   "not a cosignature/v1 (0x04) key", field="kind")
        parsed = note if isinstance(note, Note) else Note.from_text(note)
        if parsed.body != self.body_text():
            raise SignatureError("note is of another checkpoint than the one verified",
                                 field="body")
        sig = parsed.signature_by(witness)
        who = f"witness {witness.name[:80]!r}"
        if len(sig.sig) != 8 + 64:
            raise SignatureError(f"cosignature of {who} is {len(sig.sig)} bytes, expected 72 "
                                 "(timestamp and signature)", field="sig")
        (timestamp,) = struct.unpack(">Q", sig.sig[:8])
        if timestamp > MAX_TIMESTAMP:
            raise SignatureError(f"cosignature of {who} has timestamp {timestamp} > 2^63 − 1",
                                 field="sig")
        _ed25519_verify(witness.key, self.cosignature_message(timestamp), sig.sig[8:], who)
        return int(timestamp)


def _check_timestamp(timestamp: int) -> None:
    if not isinstance(timestamp, int) or isinstance(timestamp, bool) or \
            not 0 <= timestamp <= MAX_TIMESTAMP:
        raise DecodeError(f"cosignature timestamp must be an integer in 0…2^63 − 1, got "
                          f"{timestamp!r}", field="timestamp")


def cosigned_by(cp: Checkpoint, note: Note, witnesses: Iterable[NoteVerifier]) -> list[str]:
    """The names of ``witnesses`` whose cosignature in ``note`` verifies, for quorum counting;
    a witness without a line is skipped, one whose line fails raises (C2SP: reject the note)."""
    out = []
    for w in witnesses:
        if not any(w.matches(s) for s in note.signatures):
            continue
        cp.verify_cosignature(note, w)
        out.append(w.name)
    return out
