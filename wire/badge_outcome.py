"""The collector's signed word to a clock that a punch it recorded was of an unknown or a
blocked badge (docs/protocol.md §13.16; issue 15 item 5): what the clock signals at the reader.

On ``timeclock/v1/devices/{id}/badge-outcome`` (QoS 1, not retained; written by collectors,
read only by that clock)::

    {"outcome": {"at": µs, "badge": "unknown"|"blocked"|"lost", "device": id,
                 "hash": <64 hex: the recorded punch's hash>, "log": <log key id>,
                 "seq": n, "v": 1},
     "sig": b64(Ed25519_log(b"timeclock/badge-outcome/v1\\n" + canonical(outcome)))}

The message only ever says something *bad* about a punch the ledger already holds: there is no
``assigned`` value, so no message can make a clock say "recorded" (that is said on the signed
receipt, §5.2/§13.8). A clock accepts it only if the log key it was provisioned with signed
it, it names that key and the clock's own id, and (``seq``, ``hash``) is a punch this clock
recorded recently and has not been told about yet (agent.service: a replayed or invented
message is ignored and logged).

Invariants: parsing is strict (exact key sets, bounded size, the patterns above); an object
that exists is valid; ``from_bytes(to_bytes(m)) == m``; the domain prefix is the module's own.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from wire.canonical import canonical, canonical_trusted, loads
from wire.errors import DecodeError, KeyMismatchError, OversizeError
from wire.fields import (
    B64_SIG_RE,
    HASH_RE,
    KEY_ID_RE,
    check_version,
    get_choice,
    get_int,
    get_str,
    require_object,
    validate_device_id,
)
from wire.keys import SigningKey, VerifyKey

OUTCOME_DOMAIN = b"timeclock/badge-outcome/v1\n"
OUTCOME_VERSION = 1
MAX_OUTCOME_BYTES = 1024
BADGE_STATES = frozenset({"unknown", "blocked", "lost"})
"""What the people directory resolved the credential to at the punch's device time (never
``assigned``: nothing is sent for a badge that was held then)."""
_DEVICE_PREFIX = "timeclock/v1/devices/"
_LEAF = "/badge-outcome"
_OUTCOME_KEYS = frozenset({"v", "device", "seq", "hash", "badge", "at", "log"})
_SIGNED_KEYS = frozenset({"outcome", "sig"})


def topic(device: str) -> str:
    """Where collectors tell ``device`` about its punches' badges (read only by it)."""
    return f"{_DEVICE_PREFIX}{device}{_LEAF}"


ALL_TOPICS = topic("+")


@dataclass(frozen=True, slots=True)
class BadgeOutcome:
    """Punch ``seq`` (hash ``hash``) of ``device`` was of a badge ``badge`` at its device
    time, as the ledger judged at ``at``; signed by log key ``log``."""

    device: str
    seq: int
    hash: str
    badge: str
    at: int
    log: str

    def __post_init__(self) -> None:
        validate_device_id(self.device)
        if isinstance(self.seq, bool) or not isinstance(self.seq, int) or self.seq < 1:
            raise DecodeError("seq: expected an integer ≥ 1", field="seq")
        if not isinstance(self.hash, str) or not HASH_RE.fullmatch(self.hash):
            raise DecodeError("hash: expected 64 lowercase hex digits", field="hash")
        if self.badge not in BADGE_STATES:
            raise DecodeError(f"badge: {str(self.badge)[:40]!r} is not one of "
                              f"{sorted(BADGE_STATES)}", field="badge")
        if isinstance(self.at, bool) or not isinstance(self.at, int) or self.at < 0:
            raise DecodeError("at: expected an integer ≥ 0", field="at")
        if not isinstance(self.log, str) or not KEY_ID_RE.fullmatch(self.log):
            raise DecodeError("log: expected a key id (16 lowercase hex digits)", field="log")

    @classmethod
    def from_dict(cls, d: Any) -> BadgeOutcome:
        obj = require_object(d, "badge outcome", _OUTCOME_KEYS)
        check_version(obj, expected=OUTCOME_VERSION)
        return cls(get_str(obj, "device"), get_int(obj, "seq", minimum=1),
                   get_str(obj, "hash", HASH_RE), get_choice(obj, "badge", BADGE_STATES),
                   get_int(obj, "at", minimum=0), get_str(obj, "log", KEY_ID_RE))

    def to_dict(self) -> dict[str, Any]:
        return {"v": OUTCOME_VERSION, "device": self.device, "seq": self.seq,
                "hash": self.hash, "badge": self.badge, "at": self.at, "log": self.log}

    def signed_message(self) -> bytes:
        return OUTCOME_DOMAIN + canonical_trusted(self.to_dict())

    def sign(self, key: SigningKey) -> SignedBadgeOutcome:
        if key.key_id != self.log:
            raise KeyMismatchError(f"the outcome names log key {self.log}, the signing key is "
                                   f"{key.key_id}", field="log")
        return SignedBadgeOutcome(self, key.sign(self.signed_message()))


@dataclass(frozen=True, slots=True)
class SignedBadgeOutcome:
    outcome: BadgeOutcome
    sig: str

    def __post_init__(self) -> None:
        if not isinstance(self.sig, str) or not B64_SIG_RE.fullmatch(self.sig):
            raise DecodeError("sig: expected 64 bytes of standard base64", field="sig")

    @classmethod
    def from_bytes(cls, data: bytes) -> SignedBadgeOutcome:
        if len(data) > MAX_OUTCOME_BYTES:
            raise OversizeError(f"badge outcome: {len(data)} bytes, more than "
                                f"{MAX_OUTCOME_BYTES}")
        obj = require_object(loads(data), "badge outcome message", _SIGNED_KEYS)
        return cls(BadgeOutcome.from_dict(obj["outcome"]), get_str(obj, "sig"))

    def to_bytes(self) -> bytes:
        return canonical({"outcome": self.outcome.to_dict(), "sig": self.sig})

    def verify(self, log_key: VerifyKey, device: str) -> BadgeOutcome:
        """The outcome, if ``log_key`` signed it for ``device``; else raise
        :class:`KeyMismatchError` (another key or device) or :class:`SignatureError`."""
        o = self.outcome
        # (2) the key it names is the clock's log key, (3) it is about this clock,
        # (4) the log key signed exactly these bytes.
        if o.log != log_key.key_id:
            raise KeyMismatchError(f"the outcome names log key {o.log}, not this clock's "
                                   f"{log_key.key_id}", field="log")
        if o.device != device:
            raise KeyMismatchError(f"the outcome is for device {o.device}, not {device}",
                                   field="device")
        log_key.verify(o.signed_message(), self.sig)
        return o
