"""The collector's signed record of a clock's last recorded (seq, hash) (docs/protocol.md
§13.13, DESIGN.md §8.5): what a clock that lost its sequence state resumes from.

A clock whose queue is behind its mark or whose whole state directory was lost
(agent/seqmark.py) asks, while its agent is stopped (``timeclock-agent resume
--from-collector``), and continues its chain after ``last_seq`` with ``prev = last_hash``:

- :class:`ResumeRequest` on ``timeclock/v1/devices/{id}/resume/request`` (written only by that
  clock): canonical JSON ``{"device":id,"nonce":<32 lowercase hex>,"v":1}``; the nonce is fresh
  random per request.
- :class:`SignedResumeAnswer` on ``timeclock/v1/devices/{id}/resume`` (read only by that
  clock)::

      {"answer": {"at": µs, "device": id, "last_hash": <64 hex>, "last_seq": n,
                  "log": <log key id>, "nonce": <the request's>, "v": 1},
       "sig": b64(Ed25519_log(b"timeclock/resume-answer/v1\\n" + canonical(answer)))}

  ``last_seq`` is the highest seq of that device the ledger holds as a punch (0: none),
  ``last_hash`` the hash of that signed punch (§3, what the next punch's ``prev`` must be;
  64 zeros when ``last_seq`` is 0).

The clock accepts an answer only if the log key it was provisioned with (``[keys]
log_public_key``) signed it, it names that key, its own device id and the nonce it just sent
(an old answer replayed, another clock's answer, or one made with any other key is refused).
Invariants: parsing is strict (exact key sets, bounded sizes); an object that exists is valid;
``from_bytes(to_bytes(m)) == m``.
"""

from __future__ import annotations

import re
import secrets
from dataclasses import dataclass
from typing import Any

from wire import ZERO_HASH
from wire.canonical import canonical, canonical_trusted, loads
from wire.errors import DecodeError, KeyMismatchError, OversizeError
from wire.fields import (
    B64_SIG_RE,
    HASH_RE,
    KEY_ID_RE,
    check_version,
    get_int,
    get_str,
    require_object,
    validate_device_id,
)
from wire.keys import SigningKey, VerifyKey

RESUME_DOMAIN = b"timeclock/resume-answer/v1\n"
RESUME_VERSION = 1
MAX_REQUEST_BYTES = 1024
MAX_ANSWER_BYTES = 2048
NONCE_RE = re.compile(r"^[0-9a-f]{32}$")
_DEVICE_PREFIX = "timeclock/v1/devices/"
_REQUEST_LEAF = "/resume/request"
ALL_RESUME_REQUESTS = f"{_DEVICE_PREFIX}+{_REQUEST_LEAF}"
_REQUEST_KEYS = frozenset({"v", "device", "nonce"})
_ANSWER_KEYS = frozenset({"v", "device", "nonce", "last_seq", "last_hash", "at", "log"})
_SIGNED_KEYS = frozenset({"answer", "sig"})


def request_topic(device: str) -> str:
    """Where ``device`` asks for its resume record (written only by that device)."""
    return f"{_DEVICE_PREFIX}{device}{_REQUEST_LEAF}"


def answer_topic(device: str) -> str:
    """Where the collector answers ``device`` (read only by that device)."""
    return f"{_DEVICE_PREFIX}{device}/resume"


def device_of_request_topic(topic: str) -> str | None:
    """The device id of a request topic, or None when ``topic`` is not one."""
    if not topic.startswith(_DEVICE_PREFIX) or not topic.endswith(_REQUEST_LEAF):
        return None
    device = topic[len(_DEVICE_PREFIX):-len(_REQUEST_LEAF)]
    try:
        return validate_device_id(device)
    except DecodeError:
        return None


@dataclass(frozen=True, slots=True)
class ResumeRequest:
    device: str
    nonce: str

    def __post_init__(self) -> None:
        validate_device_id(self.device)
        if not NONCE_RE.fullmatch(self.nonce):
            raise DecodeError("nonce: expected 32 lowercase hex digits", field="nonce")

    @classmethod
    def new(cls, device: str) -> ResumeRequest:
        return cls(device, secrets.token_hex(16))

    @classmethod
    def from_bytes(cls, data: bytes) -> ResumeRequest:
        if len(data) > MAX_REQUEST_BYTES:
            raise OversizeError(f"resume request: {len(data)} bytes, more than "
                                f"{MAX_REQUEST_BYTES}")
        obj = require_object(loads(data), "resume request", _REQUEST_KEYS)
        check_version(obj, expected=RESUME_VERSION)
        return cls(get_str(obj, "device"), get_str(obj, "nonce"))

    def to_bytes(self) -> bytes:
        return canonical({"v": RESUME_VERSION, "device": self.device, "nonce": self.nonce})


@dataclass(frozen=True, slots=True)
class ResumeAnswer:
    """The ledger holds ``device``'s punches up to ``last_seq`` (hash ``last_hash``), as of
    ``at``; signed by log key ``log`` for the request with ``nonce``."""

    device: str
    nonce: str
    last_seq: int
    last_hash: str
    at: int
    log: str

    def __post_init__(self) -> None:
        validate_device_id(self.device)
        if not NONCE_RE.fullmatch(self.nonce):
            raise DecodeError("nonce: expected 32 lowercase hex digits", field="nonce")
        if isinstance(self.last_seq, bool) or not isinstance(self.last_seq, int) \
                or self.last_seq < 0:
            raise DecodeError("last_seq: expected an integer ≥ 0", field="last_seq")
        if not HASH_RE.fullmatch(self.last_hash):
            raise DecodeError("last_hash: expected 64 lowercase hex digits", field="last_hash")
        if self.last_seq == 0 and self.last_hash != ZERO_HASH:
            raise DecodeError("last_hash: must be 64 zeros when last_seq is 0",
                              field="last_hash")
        if not KEY_ID_RE.fullmatch(self.log):
            raise DecodeError("log: expected a key id (16 lowercase hex digits)", field="log")

    @classmethod
    def from_dict(cls, d: Any) -> ResumeAnswer:
        obj = require_object(d, "answer", _ANSWER_KEYS)
        check_version(obj, expected=RESUME_VERSION)
        return cls(get_str(obj, "device"), get_str(obj, "nonce"),
                   get_int(obj, "last_seq", minimum=0), get_str(obj, "last_hash"),
                   get_int(obj, "at", minimum=0), get_str(obj, "log"))

    def to_dict(self) -> dict[str, Any]:
        return {"v": RESUME_VERSION, "device": self.device, "nonce": self.nonce,
                "last_seq": self.last_seq, "last_hash": self.last_hash, "at": self.at,
                "log": self.log}

    def signed_message(self) -> bytes:
        return RESUME_DOMAIN + canonical_trusted(self.to_dict())

    def sign(self, key: SigningKey) -> SignedResumeAnswer:
        if key.key_id != self.log:
            raise KeyMismatchError(f"the answer names log key {self.log}, the signing key is "
                                   f"{key.key_id}", field="log")
        return SignedResumeAnswer(self, key.sign(self.signed_message()))


@dataclass(frozen=True, slots=True)
class SignedResumeAnswer:
    answer: ResumeAnswer
    sig: str

    def __post_init__(self) -> None:
        if not B64_SIG_RE.fullmatch(self.sig):
            raise DecodeError("sig: expected 64 bytes of standard base64", field="sig")

    @classmethod
    def from_bytes(cls, data: bytes) -> SignedResumeAnswer:
        if len(data) > MAX_ANSWER_BYTES:
            raise OversizeError(f"resume answer: {len(data)} bytes, more than "
                                f"{MAX_ANSWER_BYTES}")
        obj = require_object(loads(data), "resume answer", _SIGNED_KEYS)
        return cls(ResumeAnswer.from_dict(obj["answer"]), get_str(obj, "sig"))

    def to_bytes(self) -> bytes:
        return canonical({"answer": self.answer.to_dict(), "sig": self.sig})

    def verify(self, log_key: VerifyKey, request: ResumeRequest) -> ResumeAnswer:
        """The answer, if it answers ``request`` and ``log_key`` signed it; else raise
        :class:`KeyMismatchError` (another key, device or nonce) or
        :class:`wire.errors.SignatureError`."""
        a = self.answer
        # (1) the key it names is the clock's log key, (2) it answers this clock's request,
        # (3) the log key signed exactly these bytes.
        if a.log != log_key.key_id:
            raise KeyMismatchError(f"the answer names log key {a.log}, not this clock's "
                                   f"{log_key.key_id}", field="log")
        if a.device != request.device:
            raise KeyMismatchError(f"the answer is for device {a.device}, not "
                                   f"{request.device}", field="device")
        if a.nonce != request.nonce:
            raise KeyMismatchError("the answer does not carry this request's nonce (an old "
                                   "or someone else's answer)", field="nonce")
        log_key.verify(a.signed_message(), self.sig)
        return a
