"""Ed25519 keys for punches, receipts and checkpoints (PyNaCl), key ids, and key files.

Key id (DESIGN.md §1): first 16 lowercase hex chars of SHA-256(raw 32-byte public key).
Private key files are 0600; loading one readable by group or others is refused, because a
signing key that others could read can no longer prove which device signed a punch.
"""

from __future__ import annotations

import base64
import binascii
import contextlib
import hashlib
import os
import stat
from pathlib import Path

from nacl import exceptions as nacl_exceptions
from nacl import signing

from wire.errors import DecodeError, KeyFileError, SignatureError


def key_id(public_raw: bytes) -> str:
    return hashlib.sha256(public_raw).hexdigest()[:16]


def b64decode_strict(text: str, *, field: str, length: int | None = None) -> bytes:
    """Standard base64 with padding, nothing else (no whitespace, no URL alphabet)."""
    try:
        raw = base64.b64decode(text.encode("ascii"), validate=True)
    except (binascii.Error, UnicodeEncodeError) as e:
        raise DecodeError(f"{field}: not standard base64", field=field) from e
    if base64.b64encode(raw).decode("ascii") != text:
        raise DecodeError(f"{field}: base64 is not in canonical form", field=field)
    if length is not None and len(raw) != length:
        raise DecodeError(f"{field}: expected {length} bytes, got {len(raw)}", field=field)
    return raw


class VerifyKey:
    """An Ed25519 public key with its key id."""

    __slots__ = ("_vk", "key_id", "raw")

    def __init__(self, raw: bytes) -> None:
        if len(raw) != 32:
            raise DecodeError("public key must be 32 bytes", field="signing_key")
        self.raw = bytes(raw)
        self._vk = signing.VerifyKey(self.raw)
        self.key_id = key_id(self.raw)

    @classmethod
    def from_b64(cls, text: str) -> VerifyKey:
        return cls(b64decode_strict(text, field="signing_key", length=32))

    @property
    def b64(self) -> str:
        return base64.b64encode(self.raw).decode("ascii")

    def verify(self, message: bytes, sig_b64: str) -> None:
        """Raise :class:`SignatureError` unless ``sig_b64`` signs ``message`` under this key."""
        try:
            sig = b64decode_strict(sig_b64, field="sig", length=64)
        except DecodeError as e:
            raise SignatureError(f"signature is malformed: {e}", field="sig") from e
        try:
            self._vk.verify(message, sig)
        except nacl_exceptions.BadSignatureError as e:
            raise SignatureError(f"signature does not verify under key {self.key_id}",
                                 field="sig") from e

    def __eq__(self, other: object) -> bool:
        return isinstance(other, VerifyKey) and other.raw == self.raw

    def __hash__(self) -> int:
        return hash(self.raw)

    def __repr__(self) -> str:
        return f"VerifyKey({self.key_id})"


class SigningKey:
    """An Ed25519 private key. Its repr never shows secret material."""

    __slots__ = ("_sk", "verify_key")

    def __init__(self, seed: bytes) -> None:
        if len(seed) != 32:
            raise KeyFileError("Ed25519 seed must be 32 bytes")
        self._sk = signing.SigningKey(bytes(seed))
        self.verify_key = VerifyKey(bytes(self._sk.verify_key))

    @classmethod
    def generate(cls) -> SigningKey:
        return cls(os.urandom(32))

    @property
    def key_id(self) -> str:
        return self.verify_key.key_id

    @property
    def seed(self) -> bytes:
        return bytes(self._sk)

    def sign(self, message: bytes) -> str:
        """Sign ``message``; return the signature as standard base64 with padding."""
        return base64.b64encode(self._sk.sign(message).signature).decode("ascii")

    def __repr__(self) -> str:
        return f"SigningKey({self.key_id})"


def check_private_file(path: Path) -> None:
    """Refuse a private key/secret file that group or others can read or write."""
    try:
        st = path.stat()
    except FileNotFoundError as e:
        raise KeyFileError(f"{path}: no such key file") from e
    if not stat.S_ISREG(st.st_mode):
        raise KeyFileError(f"{path}: not a regular file")
    if st.st_mode & 0o077:
        raise KeyFileError(
            f"{path}: mode {stat.S_IMODE(st.st_mode):04o} lets group/others access a private "
            f"key; run: chmod 600 {path}")


def write_private_file(path: Path, data: bytes, *, force: bool = False) -> None:
    """Create ``path`` with mode 0600 (never briefly wider); refuse to overwrite unless forced."""
    path.parent.mkdir(parents=True, exist_ok=True)
    flags = os.O_WRONLY | os.O_CREAT | os.O_TRUNC
    if not force:
        flags |= os.O_EXCL
    try:
        fd = os.open(path, flags, 0o600)
    except FileExistsError as e:
        raise KeyFileError(f"{path}: exists; refusing to overwrite a key (use --force)") from e
    try:
        os.fchmod(fd, 0o600)
        os.write(fd, data)
        os.fsync(fd)
    finally:
        os.close(fd)


def write_public_file(path: Path, data: bytes, *, mode: int = 0o644) -> None:
    """Atomically and durably replace a public file (certificate, CRL, index, config, witness
    state): readers see the old or the new bytes, never a torn file, even across a power cut
    (temporary file, fsync, rename, fsync of the directory). Raises OSError; the temporary
    file never outlives a failure."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")   # per process: no shared temp
    try:
        with open(tmp, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.chmod(tmp, mode)
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            tmp.unlink()
        raise
    dfd = os.open(path.parent, os.O_RDONLY)
    try:
        os.fsync(dfd)
    finally:
        os.close(dfd)


def write_key_file(path: Path, header: bytes, secret: bytes, *, force: bool = False) -> None:
    """A small text key file: one header line naming its kind, then the base64 secret."""
    write_private_file(path, header + base64.b64encode(secret) + b"\n", force=force)


def read_key_file(path: Path, header: bytes, *, what: str, length: int) -> bytes:
    """The secret of a :func:`write_key_file` file (0600 enforced), checked for kind and size."""
    check_private_file(path)
    data = path.read_bytes()
    if not data.startswith(header):
        raise KeyFileError(f"{path}: not a timeclock {what} file")
    try:
        secret = base64.b64decode(data[len(header):].strip(), validate=True)
    except binascii.Error as e:
        raise KeyFileError(f"{path}: corrupt {what} file") from e
    if len(secret) != length:
        raise KeyFileError(f"{path}: {what} must be {length} bytes, got {len(secret)}")
    return secret


_SEED_HEADER = b"timeclock-ed25519-seed-v1\n"


def save_signing_key(path: Path, key: SigningKey, *, force: bool = False) -> None:
    """Store a signing key as a small text file: a header line and the base64 seed."""
    write_key_file(path, _SEED_HEADER, key.seed, force=force)


def load_signing_key(path: Path) -> SigningKey:
    return SigningKey(read_key_file(path, _SEED_HEADER, what="Ed25519 key", length=32))
