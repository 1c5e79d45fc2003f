"""The key rotation request (control D17, docs/operations.md "Rotating a clock's signing key").

Made on the clock by ``timeclock-agent rotate-key`` (agent.provision), checked by
``timeclock-collector device rotate-key --request`` (collector.cli.device); this is its one
definition. A JSON file::

    {"rotation": {"v": 1, "kind": "timeclock-key-rotation", "device": …, "old_key": <key id>,
                  "key": <new key id>, "signing_key": <new public key, b64>,
                  "from_seq": n, "at": µs},
     "sig": b64(Ed25519_old(b"timeclock/rotate/v1\\n" + canonical(rotation)))}

Invariants: a request that exists is valid (``key`` is the key id of ``signing_key``, the new
key differs from the old, ``from_seq`` ≥ 1); it carries the NEW public key only, and it is
signed by the OLD private key, so the collector knows it comes from the enrolled clock:
:meth:`SignedRotationRequest.verify` raises unless the key given is ``old_key`` and the
signature verifies under it. Whether ``old_key`` is the device's current key is checked
against the ledger (wire.key_changes.verify_rotation): by the collector before it appends the
``rotated`` entry, which carries this object as ``request`` (``to_dict()``, byte-exact once
canonical), and by every verifier at that point of the chain.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

from wire.canonical import canonical_trusted, loads
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

ROTATION_KIND = "timeclock-key-rotation"
ROTATION_DOMAIN = b"timeclock/rotate/v1\n"
ROTATION_VERSION = 1
MAX_REQUEST_BYTES = 16 * 1024
_KEYS = frozenset({"v", "kind", "device", "old_key", "key", "signing_key", "from_seq", "at"})
_SIGNED_KEYS = frozenset({"rotation", "sig"})


def _request_fields(d: Any) -> tuple[str, str, str, VerifyKey, int, int]:
    obj = require_object(d, "rotation", _KEYS)
    check_version(obj, expected=ROTATION_VERSION)
    if obj["kind"] != ROTATION_KIND:
        raise DecodeError(f"kind: not a timeclock key rotation request ({ROTATION_KIND})",
                          field="kind")
    device = get_str(obj, "device", DEVICE_ID_RE)
    old_key = get_str(obj, "old_key", KEY_ID_RE)
    key = get_str(obj, "key", KEY_ID_RE)
    vk = VerifyKey.from_b64(get_str(obj, "signing_key"))
    if vk.key_id != key:
        raise DecodeError(f"key {key} is not the key id of signing_key ({vk.key_id})",
                          field="key")
    if key == old_key:
        raise DecodeError("key: the new key is the old key", field="key")
    return (device, old_key, key, vk, get_int(obj, "from_seq", minimum=1),
            get_int(obj, "at", minimum=0))


@dataclass(frozen=True, slots=True)
class RotationRequest:
    """What a clock asks: register ``signing_key`` (id ``key``) for ``device`` from
    ``from_seq`` on, replacing ``old_key``; ``at`` is when it was made (µs)."""

    device: str
    old_key: str
    key: str
    signing_key: VerifyKey
    from_seq: int
    at: int
    v: int = ROTATION_VERSION

    def __post_init__(self) -> None:
        _request_fields(self.to_dict())

    @classmethod
    def from_dict(cls, d: Any) -> RotationRequest:
        return cls(*_request_fields(d))

    def to_dict(self) -> dict[str, Any]:
        return {"v": self.v, "kind": ROTATION_KIND, "device": self.device,
                "old_key": self.old_key, "key": self.key,
                "signing_key": self.signing_key.b64, "from_seq": self.from_seq, "at": self.at}

    def signed_message(self) -> bytes:
        return ROTATION_DOMAIN + canonical_trusted(self.to_dict())

    def sign(self, old: SigningKey) -> SignedRotationRequest:
        if old.key_id != self.old_key:
            raise KeyMismatchError(f"the request replaces key {self.old_key}, the signing key "
                                   f"is {old.key_id}", field="old_key")
        return SignedRotationRequest(self, old.sign(self.signed_message()))


@dataclass(frozen=True, slots=True)
class SignedRotationRequest:
    request: RotationRequest
    sig: str

    def __post_init__(self) -> None:
        if not B64_SIG_RE.fullmatch(self.sig):
            raise DecodeError("sig: expected 64 bytes of standard base64", field="sig")

    @classmethod
    def from_dict(cls, d: Any) -> SignedRotationRequest:
        obj = require_object(d, "rotation request", _SIGNED_KEYS)
        return cls(RotationRequest.from_dict(obj["rotation"]), get_str(obj, "sig"))

    @classmethod
    def from_bytes(cls, data: bytes) -> SignedRotationRequest:
        if len(data) > MAX_REQUEST_BYTES:
            raise OversizeError(f"rotation request: {len(data)} bytes, more than "
                                f"{MAX_REQUEST_BYTES}")
        return cls.from_dict(loads(data))

    def to_dict(self) -> dict[str, Any]:
        return {"rotation": self.request.to_dict(), "sig": self.sig}

    def to_bytes(self) -> bytes:
        """Indented JSON (the operator may read it), one trailing newline."""
        return (json.dumps(self.to_dict(), indent=1, sort_keys=True) + "\n").encode()

    def verify(self, old: VerifyKey) -> RotationRequest:
        """The request, if ``old`` is the key it replaces and signed it; else raise
        :class:`KeyMismatchError` or :class:`wire.errors.SignatureError`."""
        if old.key_id != self.request.old_key:
            raise KeyMismatchError(f"the request replaces key {self.request.old_key}, not "
                                   f"{old.key_id}", field="old_key")
        old.verify(self.request.signed_message(), self.sig)
        return self.request
