"""The clock's signed loss report (DESIGN.md §8.5, docs/protocol.md §13.11): punches it committed
and lost from its queue, announced to the collector so the ledger's gap carries its reason.

Made by the agent for each loss that ``timeclock-agent resume`` recorded (agent/seqmark.py) and
published on the clock's own punches topic ``timeclock/v1/devices/{id}/punches`` (QoS 1), next
to its punch envelopes; the collector records it as a ``rejection`` entry with reason
``seq-loss`` (the signed bytes in quarantine) and the verifier reports it as a finding. One
definition for both sides::

    {"loss": {"v": 1, "kind": "timeclock-seq-loss", "device": …, "key": <key id>,
              "first": n, "last": m, "next_seq": m + 1, "reason": "…", "at": µs},
     "sig": b64(Ed25519_device(b"timeclock/seq-loss/v1\\n" + canonical(loss)))}

``first..last`` were committed on the clock and are gone from its queue (an empty range,
``first = last + 1``, when nothing was lost: a mark lost with the queue intact); the chain
continues at ``next_seq``. Invariants: a report that exists is valid (sizes and ranges bounded,
``next_seq = last + 1``); parsing is strict (exact key sets); the payload is canonical JSON, so
it is told apart from a punch envelope by its first bytes (:func:`looks_like_loss`).
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any

from wire.canonical import canonical, canonical_trusted, loads
from wire.errors import DecodeError, KeyMismatchError, OversizeError
from wire.fields import (
    B64_SIG_RE,
    DEVICE_ID_RE,
    KEY_ID_RE,
    check_version,
    get_int,
    get_str,
    require_object,
)
from wire.keys import SigningKey, VerifyKey

LOSS_KIND = "timeclock-seq-loss"
LOSS_DOMAIN = b"timeclock/seq-loss/v1\n"
LOSS_VERSION = 1
MAX_LOSS_BYTES = 4 * 1024
MAX_REASON_CHARS = 200
_REASON_RE = re.compile(r"^[^\x00-\x1f\x7f]{0,200}$")
_KEYS = frozenset({"v", "kind", "device", "key", "first", "last", "next_seq", "reason", "at"})
_SIGNED_KEYS = frozenset({"loss", "sig"})
_PREFIX = b'{"loss":'


def looks_like_loss(payload: bytes) -> bool:
    """True when ``payload`` is shaped as a loss report (canonical JSON sorts ``loss`` first)."""
    return payload.startswith(_PREFIX)


def _fields(d: Any) -> tuple[str, str, int, int, str, int]:
    obj = require_object(d, "loss", _KEYS)
    check_version(obj, expected=LOSS_VERSION)
    if obj["kind"] != LOSS_KIND:
        raise DecodeError(f"kind: not a timeclock loss report ({LOSS_KIND})", field="kind")
    device = get_str(obj, "device", DEVICE_ID_RE)
    key = get_str(obj, "key", KEY_ID_RE)
    first = get_int(obj, "first", minimum=1)
    last = get_int(obj, "last", minimum=0)
    if last < first - 1:
        raise DecodeError("last: below first - 1", field="last")
    if get_int(obj, "next_seq", minimum=1) != last + 1:
        raise DecodeError("next_seq: must be last + 1", field="next_seq")
    reason = get_str(obj, "reason", _REASON_RE)
    return device, key, first, last, reason, get_int(obj, "at", minimum=0)


@dataclass(frozen=True, slots=True)
class LossReport:
    """``device`` lost ``first..last`` from its queue (signed by key ``key``) at ``at``."""

    device: str
    key: str
    first: int
    last: int
    reason: str
    at: int

    def __post_init__(self) -> None:
        _fields(self.to_dict())

    @property
    def lost(self) -> int:
        return self.last - self.first + 1

    @classmethod
    def from_dict(cls, d: Any) -> LossReport:
        return cls(*_fields(d))

    def to_dict(self) -> dict[str, Any]:
        return {"v": LOSS_VERSION, "kind": LOSS_KIND, "device": self.device, "key": self.key,
                "first": self.first, "last": self.last, "next_seq": self.last + 1,
                "reason": self.reason, "at": self.at}

    def signed_message(self) -> bytes:
        return LOSS_DOMAIN + canonical_trusted(self.to_dict())

    def sign(self, key: SigningKey) -> SignedLossReport:
        if key.key_id != self.key:
            raise KeyMismatchError(f"the report names key {self.key}, the signing key is "
                                   f"{key.key_id}", field="key")
        return SignedLossReport(self, key.sign(self.signed_message()))


@dataclass(frozen=True, slots=True)
class SignedLossReport:
    report: LossReport
    sig: str

    def __post_init__(self) -> None:
        if not B64_SIG_RE.fullmatch(self.sig):
            raise DecodeError("sig: expected 64 bytes of standard base64", field="sig")

    @classmethod
    def from_bytes(cls, data: bytes) -> SignedLossReport:
        if len(data) > MAX_LOSS_BYTES:
            raise OversizeError(f"loss report: {len(data)} bytes, more than {MAX_LOSS_BYTES}")
        obj = require_object(loads(data), "loss report", _SIGNED_KEYS)
        return cls(LossReport.from_dict(obj["loss"]), get_str(obj, "sig"))

    def to_bytes(self) -> bytes:
        return canonical({"loss": self.report.to_dict(), "sig": self.sig})

    def verify(self, key: VerifyKey) -> LossReport:
        """The report, if ``key`` is the key it names and signed it; else raise
        :class:`KeyMismatchError` or :class:`wire.errors.SignatureError`."""
        if key.key_id != self.report.key:
            raise KeyMismatchError(f"the report names key {self.report.key}, not {key.key_id}",
                                   field="key")
        key.verify(self.report.signed_message(), self.sig)
        return self.report
