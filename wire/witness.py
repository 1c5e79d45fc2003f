"""Witness messages (DESIGN.md §8.3, docs/protocol.md §13.7): what a witness is asked, and
what a clock answers.

- :class:`AddCheckpoint` is the body of a C2SP tlog-witness ``POST /add-checkpoint``::

      old <size>\\n
      <base64 consistency proof hash>\\n      (0 to 63 lines)
      \\n
      <checkpoint note: body, blank line, signature lines>

  The collector sends the very same bytes to each clock, on the clock's own topic
  ``timeclock/v1/devices/{id}/checkpoint`` (:func:`checkpoint_topic`), so clocks and external
  witnesses are asked one question in one format.
- :class:`CosignatureReply` is what a clock publishes on
  ``timeclock/v1/devices/{id}/cosignature``: canonical JSON naming the checkpoint body it
  answers and either its cosignature line (``cosigned``), the size it holds when the request
  was built from another one (``conflict``, C2SP's 409), or a refusal (``refused``) with the
  reason, a detail for the operator and the signed note of the largest checkpoint the clock
  holds (the evidence against the new one). A refusal is signed by the clock's key under its
  own domain prefix ``timeclock/witness-refusal/v1\\n`` (never a punch, never a cosignature).

Invariants: parsing is strict (exact key sets, canonical numbers and base64, bounded sizes); a
message that exists is well formed, and ``from_bytes(to_bytes(m)) == m``. Nothing here
verifies a log or a witness key: that is the reader's job (wire.note, wire.merkle).
"""

from __future__ import annotations

import base64
import re
from dataclasses import dataclass
from typing import Any

from wire.canonical import canonical, loads
from wire.errors import DecodeError, OversizeError
from wire.fields import check_version, get_choice, get_int, get_str, validate_device_id
from wire.keys import SigningKey, VerifyKey, b64decode_strict
from wire.merkle import HASH_SIZE
from wire.note import MAX_SIZE, Checkpoint, Note, NoteSignature, check_origin

WITNESS_VERSION = 1
MAX_PROOF_LINES = 63                 # C2SP tlog-witness: a proof has at most 63 hashes
MAX_ADD_CHECKPOINT_BYTES = 64 * 1024  # the note of an add-checkpoint request: log signatures
MAX_REPLY_BYTES = 32 * 1024
MAX_DETAIL_CHARS = 300
REFUSAL_DOMAIN = b"timeclock/witness-refusal/v1\n"
RESULTS = frozenset({"cosigned", "conflict", "refused"})
# Why a clock refused: the log shrank, a proof did not lead from the checkpoint it holds to the
# new one (or the same size has another root), the note is not signed by the log key, the
# proof or request is malformed, or the checkpoint names another log than the one it holds.
REFUSAL_REASONS = frozenset({"shrinking", "inconsistent", "bad-signature", "bad-proof",
                             "malformed", "wrong-origin"})
DEVICE_WITNESS_INFIX = "/devices/"

_OLD_RE = re.compile(r"old (0|[1-9][0-9]{0,15})")
_DEVICE_PREFIX = "timeclock/v1/devices/"


def checkpoint_topic(device: str) -> str:
    """Where the collector asks ``device`` to cosign (read only by that device)."""
    return f"{_DEVICE_PREFIX}{device}/checkpoint"


def cosignature_topic(device: str) -> str:
    """Where ``device`` answers (written only by that device)."""
    return f"{_DEVICE_PREFIX}{device}/cosignature"


ALL_COSIGNATURES = f"{_DEVICE_PREFIX}+/cosignature"
ALL_CHECKPOINT_REQUESTS = f"{_DEVICE_PREFIX}+/checkpoint"


def device_witness_name(origin: str, device: str) -> str:
    """A clock's witness name: ``<origin>/devices/<device id>`` (DESIGN.md §8.3)."""
    return f"{check_origin(origin)}{DEVICE_WITNESS_INFIX}{validate_device_id(device)}"


@dataclass(frozen=True, slots=True)
class AddCheckpoint:
    """A tlog-witness add-checkpoint request: the size the witness is believed to hold, the
    RFC 9162 consistency proof from it, and the checkpoint note (text, every line kept)."""

    old_size: int
    proof: tuple[bytes, ...]
    note: str

    def __post_init__(self) -> None:
        if not isinstance(self.old_size, int) or isinstance(self.old_size, bool) or \
                not 0 <= self.old_size <= MAX_SIZE:
            raise DecodeError(f"old size must be an integer in 0…{MAX_SIZE}", field="old")
        if len(self.proof) > MAX_PROOF_LINES:
            raise DecodeError(f"consistency proof has {len(self.proof)} hashes, at most "
                              f"{MAX_PROOF_LINES}", field="proof")
        for i, h in enumerate(self.proof):
            if not isinstance(h, bytes) or len(h) != HASH_SIZE:
                raise DecodeError(f"proof[{i}] must be {HASH_SIZE} bytes", field="proof")
        if self.old_size == 0 and self.proof:
            raise DecodeError("a consistency proof from size 0 is empty", field="proof")
        self.parsed()     # the note is a checkpoint note

    def parsed(self) -> tuple[Checkpoint, Note]:
        """The note and its checkpoint, parsed (signatures not verified)."""
        note = Note.from_text(self.note)
        return Checkpoint.from_body(note.body), note

    def to_bytes(self) -> bytes:
        lines = [f"old {self.old_size}\n"]
        lines += [base64.b64encode(h).decode("ascii") + "\n" for h in self.proof]
        data = ("".join(lines) + "\n" + self.note).encode("utf-8")
        if len(data) > MAX_ADD_CHECKPOINT_BYTES:
            raise OversizeError(f"add-checkpoint request is {len(data)} bytes, at most "
                                f"{MAX_ADD_CHECKPOINT_BYTES}")
        return data

    @classmethod
    def from_bytes(cls, data: bytes) -> AddCheckpoint:
        if len(data) > MAX_ADD_CHECKPOINT_BYTES:
            raise OversizeError(f"add-checkpoint request is {len(data)} bytes, at most "
                                f"{MAX_ADD_CHECKPOINT_BYTES}")
        try:
            text = data.decode("utf-8")
        except UnicodeDecodeError as e:
            raise DecodeError(f"add-checkpoint request is not UTF-8 ({e.reason})") from e
        head, sep, note = text.partition("\n\n")
        if not sep:
            raise DecodeError("add-checkpoint request has no blank line before the checkpoint")
        lines = head.split("\n")
        m = _OLD_RE.fullmatch(lines[0])
        if m is None:
            raise DecodeError(f"add-checkpoint request starts with {lines[0][:40]!r}, not "
                              "'old <size>'", field="old")
        if len(lines) - 1 > MAX_PROOF_LINES:
            raise DecodeError(f"consistency proof has {len(lines) - 1} lines, at most "
                              f"{MAX_PROOF_LINES}", field="proof")
        proof = tuple(b64decode_strict(line, field=f"proof[{i}]", length=HASH_SIZE)
                      for i, line in enumerate(lines[1:]))
        return cls(int(m.group(1)), proof, note)


def _detail(value: str) -> str:
    if len(value) > MAX_DETAIL_CHARS:
        raise DecodeError(f"detail: longer than {MAX_DETAIL_CHARS} chars", field="detail")
    if any(ord(c) < 0x20 for c in value):
        raise DecodeError("detail: contains a control character", field="detail")
    return value


_COMMON = frozenset({"v", "device", "checkpoint", "result"})
_KEYS = {
    "cosigned": _COMMON | {"cosignature"},
    "conflict": _COMMON | {"known_size"},
    "refused": _COMMON | {"reason", "detail", "known", "at", "sig"},
}


@dataclass(frozen=True, slots=True)
class CosignatureReply:
    """A clock's answer to one add-checkpoint request (see the module doc).

    ``checkpoint`` is the body text of the checkpoint offered. ``cosigned``: ``cosignature``
    is the cosignature/v1 line (with its newline). ``conflict``: ``known_size`` is the size the
    clock holds. ``refused``: ``reason`` (:data:`REFUSAL_REASONS`), ``detail``, ``known`` (the
    note the clock holds, or None), ``at`` (µs) and ``sig`` (the clock's signature)."""

    device: str
    checkpoint: str
    result: str
    cosignature: str | None = None
    known_size: int | None = None
    reason: str | None = None
    detail: str = ""
    known: str | None = None
    at: int | None = None
    sig: str | None = None
    v: int = WITNESS_VERSION

    def __post_init__(self) -> None:
        _fields(self.to_dict())

    # -- building --------------------------------------------------------------------------
    @classmethod
    def cosigned(cls, device: str, cp: Checkpoint, line: NoteSignature) -> CosignatureReply:
        return cls(device, cp.body_text(), "cosigned", cosignature=line.line())

    @classmethod
    def conflict(cls, device: str, checkpoint_body: str, known_size: int) -> CosignatureReply:
        return cls(device, checkpoint_body, "conflict", known_size=known_size)

    @classmethod
    def refused(cls, device: str, checkpoint_body: str, reason: str, detail: str, *,
                known: str | None, at: int, key: SigningKey) -> CosignatureReply:
        unsigned = cls(device, checkpoint_body, "refused", reason=reason,
                       detail=detail[:MAX_DETAIL_CHARS], known=known, at=at, sig="")
        return cls(device, checkpoint_body, "refused", reason=reason, detail=unsigned.detail,
                   known=known, at=at, sig=key.sign(unsigned.signed_message()))

    # -- reading ---------------------------------------------------------------------------
    def signed_message(self) -> bytes:
        """What a refusal's ``sig`` covers: the prefix and the reply without ``sig``."""
        d = self.to_dict()
        d.pop("sig", None)
        return REFUSAL_DOMAIN + canonical(d)

    def verify_refusal(self, key: VerifyKey) -> None:
        """Raise :class:`wire.errors.SignatureError` unless ``key`` signed this refusal."""
        if self.result != "refused" or self.sig is None:
            raise DecodeError("only a refusal carries a signature", field="sig")
        key.verify(self.signed_message(), self.sig)

    def cosignature_line(self) -> NoteSignature:
        if self.cosignature is None:
            raise DecodeError("reply carries no cosignature", field="cosignature")
        return NoteSignature.from_line(self.cosignature[:-1])

    def to_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {"v": self.v, "device": self.device,
                               "checkpoint": self.checkpoint, "result": self.result}
        if self.result == "cosigned":
            out["cosignature"] = self.cosignature
        elif self.result == "conflict":
            out["known_size"] = self.known_size
        else:
            out |= {"reason": self.reason, "detail": self.detail, "known": self.known,
                    "at": self.at, "sig": self.sig}
        return out

    @classmethod
    def from_dict(cls, d: Any) -> CosignatureReply:
        return cls(**_fields(d))

    def to_bytes(self) -> bytes:
        data = canonical(self.to_dict())
        if len(data) > MAX_REPLY_BYTES:
            raise OversizeError(f"cosignature reply is {len(data)} bytes, at most "
                                f"{MAX_REPLY_BYTES}")
        return data

    @classmethod
    def from_bytes(cls, data: bytes) -> CosignatureReply:
        if len(data) > MAX_REPLY_BYTES:
            raise OversizeError(f"cosignature reply is {len(data)} bytes, at most "
                                f"{MAX_REPLY_BYTES}")
        return cls.from_dict(loads(data))


def _fields(d: Any) -> dict[str, Any]:
    if not isinstance(d, dict):
        raise DecodeError("cosignature reply: expected an object")
    result = d.get("result")
    if result not in RESULTS:
        raise DecodeError(f"result: {str(result)[:40]!r} is not one of {sorted(RESULTS)}",
                          field="result")
    keys = _KEYS[result]
    unknown = sorted(set(d) - keys)
    if unknown:
        raise DecodeError(f"cosignature reply: unknown field(s) {', '.join(unknown)}",
                          field=unknown[0])
    missing = sorted(keys - set(d))
    if missing:
        raise DecodeError(f"cosignature reply: missing field(s) {', '.join(missing)}",
                          field=missing[0])
    check_version(d, expected=WITNESS_VERSION)
    out: dict[str, Any] = {"device": validate_device_id(get_str(d, "device")),
                           "checkpoint": get_str(d, "checkpoint"), "result": result}
    Checkpoint.from_body(out["checkpoint"])
    if result == "cosigned":
        line = get_str(d, "cosignature")
        if not line.endswith("\n") or "\n" in line[:-1]:
            raise DecodeError("cosignature: one signature line ending in a newline",
                              field="cosignature")
        NoteSignature.from_line(line[:-1])
        out["cosignature"] = line
    elif result == "conflict":
        out["known_size"] = get_int(d, "known_size", minimum=0)
    else:
        out["reason"] = get_choice(d, "reason", REFUSAL_REASONS)
        out["detail"] = _detail(get_str(d, "detail"))
        if d["known"] is not None:
            Note.from_text(get_str(d, "known"))
        out["known"] = d["known"]
        out["at"] = get_int(d, "at", minimum=0)
        sig = get_str(d, "sig")
        if sig:
            b64decode_strict(sig, field="sig", length=64)
        out["sig"] = sig
    return out
