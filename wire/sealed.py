"""Sealed punch envelopes (DESIGN.md §8.6, docs/protocol.md "Sealed envelopes"): the broker sees
no credential.

A clock whose provisioning bundle carries the ledger's X25519 *seal* public key publishes, on
``timeclock/v1/devices/{id}/punches``, not the §4 envelope itself but::

    {"device": id, "sealed": b64(SealedBox(canonical §4 envelope)), "to": seal key id, "v": 1}

in canonical JSON (so it always starts with ``{"device":"<id>","sealed":"``), at most
:data:`MAX_SEALED_BYTES` (256 KiB, the broker's ``message_size_limit``). ``sealed`` is standard
base64 with padding (RFC 4648 §4), canonical; the box is libsodium's ``crypto_box_seal``
(PyNaCl :class:`nacl.public.SealedBox`: an ephemeral X25519 key, XSalsa20-Poly1305, 48 bytes of
overhead), never hand-rolled. ``to`` is the key id (DESIGN.md §1: first 16 hex of SHA-256 of
the raw 32-byte public key) of the seal key it was sealed to. The device id stays in clear for
the broker's ACL and the collector's topic check; the inner envelope must name the same device.

Invariants: a :class:`SealedEnvelope` that exists is valid (device id, key id, canonical base64,
size); sealing is randomised (two seals of the same bytes differ), so tests compare round trips,
never ciphertexts; :meth:`SealKey.open` raises :class:`SealError` (reason ``undecryptable``) for
anything it cannot open, and its messages never contain plaintext. The seal key is a separate
X25519 key in its own 0600 file, never derived from the Ed25519 log key.
"""

from __future__ import annotations

import base64
import binascii
from dataclasses import dataclass
from pathlib import Path

from nacl import exceptions as nacl_exceptions
from nacl import public
from nacl.bindings import crypto_box_SEALBYTES

from wire.canonical import loads
from wire.errors import DecodeError, OversizeError, WireError
from wire.fields import DEVICE_ID_RE, KEY_ID_RE, check_version, get_str, require_object
from wire.keys import b64decode_strict, key_id, read_key_file, write_key_file
from wire.punch import MAX_ENVELOPE_BYTES, Envelope

SEALED_VERSION = 1
MAX_SEALED_BYTES = MAX_ENVELOPE_BYTES     # the whole MQTT payload, as for a plain envelope
SEAL_OVERHEAD = crypto_box_SEALBYTES    # 48: the ephemeral public key and the Poly1305 tag
_KEYS = frozenset({"v", "device", "sealed", "to"})
_PREFIX = b'{"device":"'
_AFTER_DEVICE = b',"sealed":"'
_SEAL_KEY_HEADER = b"timeclock-x25519-seal-key-v1\n"


def b64decode_canonical(text: str, *, field: str) -> bytes:
    """:func:`wire.keys.b64decode_strict` for a large field (a sealed box of up to 256 KiB):
    the same acceptance and errors, without re-encoding the whole value. Once the alphabet
    check has passed ('=' only as the last one or two characters), every 4-character group but
    the last decodes and re-encodes to itself, so the text is canonical exactly when its length
    is the canonical length and its last group is the canonical encoding of the last bytes."""
    try:
        raw = base64.b64decode(text.encode("ascii"), validate=True)
    except (binascii.Error, UnicodeEncodeError) as e:
        raise DecodeError(f"{field}: not standard base64", field=field) from e
    tail = raw[3 * ((len(raw) - 1) // 3):] if raw else b""
    if len(text) != 4 * -(-len(raw) // 3) or base64.b64encode(tail).decode("ascii") != text[
            len(text) - 4 * (len(tail) > 0):]:
        raise DecodeError(f"{field}: base64 is not in canonical form", field=field)
    return raw


class SealError(WireError):
    """A sealed envelope that cannot be opened: another key, damaged or forged ciphertext."""

    reason = "undecryptable"


def looks_sealed(payload: bytes) -> bool:
    """True when ``payload`` is shaped as a sealed envelope (its canonical first bytes); cheap,
    so the collector tells it apart from a plain §4 envelope without parsing either."""
    if not payload.startswith(_PREFIX):
        return False
    end = payload.find(b'"', len(_PREFIX), len(_PREFIX) + 64)
    return end > len(_PREFIX) and payload.startswith(_AFTER_DEVICE, end + 1)


class SealPublicKey:
    """The ledger's X25519 seal public key (from the provisioning bundle)."""

    __slots__ = ("_box", "_raw", "key_id")

    def __init__(self, raw: bytes) -> None:
        if len(raw) != public.PublicKey.SIZE:
            raise DecodeError(f"seal public key: expected 32 bytes, got {len(raw)}",
                              field="seal_public_key")
        self._raw = bytes(raw)
        self._box = public.SealedBox(public.PublicKey(self._raw))
        self.key_id = key_id(self._raw)

    @classmethod
    def from_b64(cls, text: str) -> SealPublicKey:
        return cls(b64decode_strict(text, field="seal_public_key", length=32))

    @property
    def raw(self) -> bytes:
        return self._raw

    @property
    def b64(self) -> str:
        return base64.b64encode(self._raw).decode("ascii")

    def seal(self, plaintext: bytes) -> bytes:
        """libsodium ``crypto_box_seal``: randomised, ``len(plaintext) + 48`` bytes."""
        return bytes(self._box.encrypt(plaintext))

    def __eq__(self, other: object) -> bool:
        return isinstance(other, SealPublicKey) and other._raw == self._raw

    def __hash__(self) -> int:
        return hash(self._raw)

    def __repr__(self) -> str:
        return f"SealPublicKey({self.key_id})"


class SealKey:
    """The ledger's X25519 seal private key (the collector's ``[collector] seal_key`` file)."""

    __slots__ = ("_box", "_private", "public_key")

    def __init__(self, secret: bytes) -> None:
        if len(secret) != public.PrivateKey.SIZE:
            raise WireError(f"seal key: expected 32 bytes, got {len(secret)}")
        self._private = public.PrivateKey(bytes(secret))
        self._box = public.SealedBox(self._private)
        self.public_key = SealPublicKey(bytes(self._private.public_key))

    @classmethod
    def generate(cls) -> SealKey:
        return cls(bytes(public.PrivateKey.generate()))

    @property
    def key_id(self) -> str:
        return self.public_key.key_id

    @property
    def secret(self) -> bytes:
        return bytes(self._private)

    def open(self, ciphertext: bytes) -> bytes:
        """The plaintext of a box sealed to this key; :class:`SealError` otherwise."""
        try:
            return bytes(self._box.decrypt(ciphertext))
        except nacl_exceptions.CryptoError as e:
            raise SealError(f"the sealed box does not open with seal key {self.key_id} "
                            f"({len(ciphertext)} bytes: damaged, forged or sealed to another "
                            f"key)", field="sealed") from e

    def __repr__(self) -> str:
        return f"SealKey({self.key_id})"


def save_seal_key(path: Path, key: SealKey, *, force: bool = False) -> None:
    """A 0600 text file: a header line and the base64 X25519 secret (wire.keys format)."""
    write_key_file(path, _SEAL_KEY_HEADER, key.secret, force=force)


def load_seal_key(path: Path) -> SealKey:
    """Read a seal key file (0600 enforced, header and size checked)."""
    return SealKey(read_key_file(path, _SEAL_KEY_HEADER, what="X25519 seal key", length=32))


@dataclass(frozen=True, slots=True)
class SealedEnvelope:
    """The MQTT payload of a sealing clock: its device in clear, the §4 envelope sealed."""

    device: str
    to: str
    ciphertext: bytes

    def __post_init__(self) -> None:
        if not DEVICE_ID_RE.fullmatch(self.device):
            raise DecodeError(f"device: {self.device[:70]!r} is not a device id",
                              field="device")
        if not KEY_ID_RE.fullmatch(self.to):
            raise DecodeError(f"to: {self.to[:40]!r} is not a key id", field="to")
        if len(self.ciphertext) <= SEAL_OVERHEAD:
            raise DecodeError(f"sealed: {len(self.ciphertext)} bytes is no sealed box "
                              f"(more than {SEAL_OVERHEAD} needed)", field="sealed")

    @classmethod
    def seal(cls, envelope: Envelope, key: SealPublicKey) -> SealedEnvelope:
        """Seal the canonical bytes of ``envelope`` to ``key``."""
        return cls(envelope.device, key.key_id, key.seal(envelope.to_bytes()))

    @classmethod
    def from_bytes(cls, data: bytes, *, max_bytes: int = MAX_SEALED_BYTES) -> SealedEnvelope:
        if len(data) > max_bytes:
            raise OversizeError(f"sealed envelope is {len(data)} bytes, limit {max_bytes}",
                                field="payload")
        obj = require_object(loads(data), "sealed envelope", _KEYS)
        check_version(obj, expected=SEALED_VERSION)
        device = get_str(obj, "device", DEVICE_ID_RE)
        to = get_str(obj, "to", KEY_ID_RE)
        return cls(device, to, b64decode_canonical(get_str(obj, "sealed"), field="sealed"))

    def to_bytes(self) -> bytes:
        """Canonical JSON (keys sorted; every value needs no escaping)."""
        return (_PREFIX + self.device.encode("ascii") + b'","sealed":"'
                + base64.b64encode(self.ciphertext) + b'","to":"' + self.to.encode("ascii")
                + b'","v":1}')

    def open(self, key: SealKey) -> bytes:
        """The inner envelope's bytes (not parsed: the caller judges them as a §4 payload).

        :class:`SealError` when sealed to another key or when the box does not open."""
        if self.to != key.key_id:
            raise SealError(f"sealed to seal key {self.to}; this collector's seal key is "
                            f"{key.key_id}", field="to")
        return key.open(self.ciphertext)

    def open_envelope(self, key: SealKey) -> Envelope:
        """Open and strictly parse the inner §4 envelope; its device must be the clear one."""
        inner = Envelope.from_bytes(self.open(key))
        if inner.device != self.device:
            raise DecodeError(f"the sealed envelope of {self.device!r} holds an envelope of "
                              f"{inner.device!r}", field="device")
        return inner
