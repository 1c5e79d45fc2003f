"""Key-encryption keys (KEKs): wrap and unwrap the 32-byte data keys of DESIGN.md §8.6.

A KEK never encrypts a body; it only wraps data keys, each bound to an ``aad`` the caller
chooses (the keyring binds the data key's id, subject and period), so a wrapped key moved to
another row does not unwrap. Backends, chosen by :func:`load_kek`'s spec:

- ``file:/path``: a 32-byte random key in a 0600 file (``kek create --file``); wrap is
  XChaCha20-Poly1305 with a random 24-byte nonce.
- ``credential:NAME``: the same key file, read from ``$CREDENTIALS_DIRECTORY/NAME`` (systemd
  ``LoadCredential=`` / ``LoadCredentialEncrypted=``); same format, same ``kek_id``.
- ``pkcs11:module=…;token=…;key=…;pin-file=…``: an AES-256 key generated inside the token,
  sensitive and non-extractable (``kek create --pkcs11``); wrap is AES-256-GCM done by the
  token with a random 12-byte IV. The key's value never leaves the HSM.

Invariants: the wrapped form is byte-exact as docs/protocol.md "Wrapped data keys" states
(a version byte naming the backend's algorithm, the nonce, the AEAD output; the version byte
is authenticated with the caller's aad); ``unwrap`` either returns the 32 bytes that were
wrapped under this KEK with this aad or raises :class:`~collector.KekError` — a wrong key,
a wrong aad and a damaged blob are refused alike, never answered with other bytes.
Re-wrapping (:func:`rewrap`) touches only the wrapped key, never a body.
"""

from __future__ import annotations

import hashlib
import hmac
import os
import re
import threading
from pathlib import Path
from typing import Any, Protocol

import pkcs11
from nacl import bindings as sodium
from nacl.exceptions import CryptoError
from pkcs11.mechanisms import GCMParams

from collector import KekError
from wire.errors import WireError
from wire.keys import check_private_file, read_key_file, write_key_file

DEK_BYTES = 32
KEY_BYTES = 32
KEY_HEADER = b"timeclock-kek-v1\n"
V_XCHACHA = 0x01            # file / credential: XChaCha20-Poly1305, 24-byte nonce
V_AES_GCM = 0x02            # PKCS#11: AES-256-GCM in the token, 12-byte IV, 16-byte tag
XNONCE_BYTES = sodium.crypto_aead_xchacha20poly1305_ietf_NPUBBYTES      # 24
GCM_IV_BYTES = 12
TAG_BYTES = 16
WRAPPED_BYTES = {V_XCHACHA: 1 + XNONCE_BYTES + DEK_BYTES + TAG_BYTES,   # 73
                 V_AES_GCM: 1 + GCM_IV_BYTES + DEK_BYTES + TAG_BYTES}   # 61
DEFAULT_PKCS11_MODULE = "/usr/lib/softhsm/libsofthsm2.so"
PKCS11_FIELDS = ("module", "token", "key", "pin-file")
_CREDENTIAL_NAME = re.compile(r"[A-Za-z0-9_.@-]{1,255}")


class Kek(Protocol):
    kek_id: str

    def wrap(self, dek: bytes, aad: bytes) -> bytes: ...

    def unwrap(self, wrapped: bytes, aad: bytes) -> bytes: ...


def _check_dek(dek: bytes) -> None:
    if len(dek) != DEK_BYTES:
        raise KekError(f"a data key must be {DEK_BYTES} bytes, got {len(dek)}")


def _split(wrapped: bytes, version: int, kek_id: str) -> bytes:
    """The blob's bytes after the version byte, once its version and length are this KEK's."""
    if not wrapped or wrapped[0] not in WRAPPED_BYTES:
        raise KekError(f"not a wrapped data key (version byte "
                       f"{wrapped[:1].hex() or 'missing'})")
    if wrapped[0] != version:
        raise KekError(f"the data key was wrapped by another kind of KEK (version "
                       f"{wrapped[0]}), not by {kek_id}")
    if len(wrapped) != WRAPPED_BYTES[version]:
        raise KekError(f"wrapped data key is {len(wrapped)} bytes, expected "
                       f"{WRAPPED_BYTES[version]} (damaged)")
    return wrapped[1:]


def _refused(kek_id: str) -> KekError:
    return KekError(f"the data key does not unwrap under {kek_id}: wrong KEK, wrong aad or a "
                    f"damaged wrapped key")


# -- file and systemd credential ---------------------------------------------------------------

class FileKek:
    """A KEK held in memory from a key file; ``kek_id`` depends on the key, not its path."""

    def __init__(self, key: bytes) -> None:
        if len(key) != KEY_BYTES:
            raise KekError(f"a KEK must be {KEY_BYTES} bytes, got {len(key)}")
        self._key = bytes(key)
        self.kek_id = "file:" + hashlib.sha256(self._key).hexdigest()[:16]

    def wrap(self, dek: bytes, aad: bytes) -> bytes:
        _check_dek(dek)
        nonce = os.urandom(XNONCE_BYTES)
        head = bytes([V_XCHACHA])
        sealed: bytes = sodium.crypto_aead_xchacha20poly1305_ietf_encrypt(
            dek, head + aad, nonce, self._key)
        return head + nonce + sealed

    def unwrap(self, wrapped: bytes, aad: bytes) -> bytes:
        rest = _split(wrapped, V_XCHACHA, self.kek_id)
        nonce, sealed = rest[:XNONCE_BYTES], rest[XNONCE_BYTES:]
        try:
            dek: bytes = sodium.crypto_aead_xchacha20poly1305_ietf_decrypt(
                sealed, wrapped[:1] + aad, nonce, self._key)
        except CryptoError as e:
            raise _refused(self.kek_id) from e
        return dek

    def __repr__(self) -> str:
        return f"FileKek({self.kek_id})"


def create_file_kek(path: Path) -> FileKek:
    """A new random KEK in a 0600 file; refuses to overwrite any existing file."""
    key = os.urandom(KEY_BYTES)
    try:
        write_key_file(path, KEY_HEADER, key)
    except WireError as e:
        if path.exists():
            raise KekError(f"{path}: exists; refusing to overwrite a KEK (the data keys it "
                           f"wraps could never be unwrapped again)") from e
        raise KekError(str(e)) from e
    except OSError as e:
        raise KekError(f"{path}: {e.strerror}") from e
    return FileKek(key)


def _load_file(path: Path) -> FileKek:
    try:
        return FileKek(read_key_file(path, KEY_HEADER, what="KEK", length=KEY_BYTES))
    except WireError as e:
        raise KekError(str(e)) from e
    except OSError as e:
        raise KekError(f"{path}: {e.strerror}") from e


def credential_name(name: str) -> str:
    """``name`` if it is a valid systemd credential name (KekError otherwise)."""
    if not _CREDENTIAL_NAME.fullmatch(name) or name in (".", ".."):
        raise KekError(f"credential:{name}: a credential name is letters, digits and "
                       f"'_.@-' (no '/')")
    return name


def _credential_path(name: str) -> Path:
    credential_name(name)
    directory = os.environ.get("CREDENTIALS_DIRECTORY")
    if not directory:
        raise KekError(f"credential:{name}: CREDENTIALS_DIRECTORY is not set; run under "
                       f"systemd with LoadCredential={name}:/path or "
                       f"LoadCredentialEncrypted={name}, or use file:/path")
    return Path(directory) / name


# -- PKCS#11 -----------------------------------------------------------------------------------

_LIBS: dict[str, Any] = {}
_LIBS_LOCK = threading.Lock()


_LOGGED_IN: dict[tuple[str, str], str] = {}
"""(module, token label) -> the PIN this process logged in with: PKCS#11 login is per
application, so a second session is already logged in and C_Login refuses to run again."""


def _why(e: Exception) -> str:
    return str(e) or type(e).__name__


def _lib(module: str, *, fresh: bool = False) -> Any:
    """One loaded PKCS#11 library per module path in this process (C_Initialize runs once);
    ``fresh`` re-initialises it, which re-reads the module's configuration (tokens added
    since, e.g. SoftHSM2's SOFTHSM2_CONF)."""
    with _LIBS_LOCK:
        lib = _LIBS.get(module)
        try:
            if lib is None:
                lib = _LIBS[module] = pkcs11.lib(module)
            elif fresh:
                lib.reinitialize()      # (every session ends: Pkcs11Kek reconnects)
                for k in [k for k in _LOGGED_IN if k[0] == module]:
                    del _LOGGED_IN[k]
        except pkcs11.PKCS11Error as e:
            raise KekError(f"pkcs11: cannot load module {module}: {_why(e)}") from e
        return lib


def parse_pkcs11_spec(spec: str) -> dict[str, str]:
    """``module=…;token=…;key=…;pin-file=…`` (a ``pkcs11:`` prefix allowed) into its fields;
    every problem at once."""
    body = spec.removeprefix("pkcs11:")
    fields: dict[str, str] = {}
    problems: list[str] = []
    for part in filter(None, (p.strip() for p in body.split(";"))):
        name, eq, value = part.partition("=")
        name = name.strip()
        if not eq or not value.strip():
            problems.append(f"{part!r}: expected name=value")
        elif name not in PKCS11_FIELDS:
            problems.append(f"{name}: unknown field (expected {', '.join(PKCS11_FIELDS)})")
        elif name in fields:
            problems.append(f"{name}: given twice")
        else:
            fields[name] = value.strip()
    fields.setdefault("module", DEFAULT_PKCS11_MODULE)
    problems += [f"{n}: missing" for n in PKCS11_FIELDS if n not in fields]
    if problems:
        raise KekError("pkcs11 KEK spec: " + "; ".join(problems))
    return fields


def _read_pin(path: Path) -> str:
    try:
        check_private_file(path)
        pin = path.read_text(encoding="utf-8").strip()
    except WireError as e:
        raise KekError(f"pkcs11 pin-file: {e}") from e
    except (OSError, UnicodeDecodeError) as e:
        raise KekError(f"pkcs11 pin-file {path}: {getattr(e, 'strerror', None) or e}") from e
    if not pin:
        raise KekError(f"pkcs11 pin-file {path}: empty")
    return pin


def _open_session(fields: dict[str, str], *, rw: bool = False) -> Any:
    """A logged-in session on the token the spec names (KekError: module, token or PIN)."""
    pin = _read_pin(Path(fields["pin-file"]))
    lib = _lib(fields["module"])
    label = fields["token"]
    try:
        try:
            token = lib.get_token(token_label=label)
        except pkcs11.NoSuchToken:
            token = _lib(fields["module"], fresh=True).get_token(token_label=label)
        try:
            session = token.open(rw=rw, user_pin=pin)
        except pkcs11.UserAlreadyLoggedIn:
            # (the first session's login covers this one; its PIN must be the same)
            known = _LOGGED_IN.get((fields["module"], label))
            if known is not None and not hmac.compare_digest(known.encode(), pin.encode()):
                raise pkcs11.PinIncorrect() from None
            session = token.open(rw=rw)
        _LOGGED_IN[(fields["module"], label)] = pin
        return session
    except pkcs11.NoSuchToken as e:
        raise KekError(f"pkcs11: no token labelled {label!r} in {fields['module']}") from e
    except pkcs11.MultipleTokensReturned as e:
        raise KekError(f"pkcs11: more than one token labelled {label!r}") from e
    except (pkcs11.PinIncorrect, pkcs11.PinLenRange, pkcs11.PinInvalid) as e:
        raise KekError(f"pkcs11: token {label!r}: wrong PIN (pin-file {fields['pin-file']})") \
            from e
    except pkcs11.PinLocked as e:
        raise KekError(f"pkcs11: token {label!r}: the user PIN is locked") from e
    except pkcs11.PKCS11Error as e:
        raise KekError(f"pkcs11: token {label!r}: cannot log in: "
                       f"{_why(e)}") from e


class Pkcs11Kek:
    """An AES-256 key inside a PKCS#11 token; wrap and unwrap run in the token.

    One logged-in session is kept and used under a lock (a PKCS#11 session is not for
    concurrent use); a session the library lost is reopened once."""

    def __init__(self, fields: dict[str, str]) -> None:
        self._fields = dict(fields)
        self.kek_id = f"pkcs11:{fields['token']}/{fields['key']}"
        self._lock = threading.Lock()
        self._session: Any = None
        self._key: Any = None
        self._connect()

    def _connect(self) -> None:
        session = _open_session(self._fields)
        try:
            key = session.get_key(object_class=pkcs11.ObjectClass.SECRET_KEY,
                                  key_type=pkcs11.KeyType.AES, label=self._fields["key"])
        except pkcs11.NoSuchKey as e:
            session.close()
            raise KekError(f"{self.kek_id}: no AES key labelled {self._fields['key']!r} in the "
                           f"token (kek create --pkcs11 makes one)") from e
        except pkcs11.MultipleObjectsReturned as e:
            session.close()
            raise KekError(f"{self.kek_id}: more than one key labelled "
                           f"{self._fields['key']!r}") from e
        self._session, self._key = session, key

    def _crypt(self, op: str, data: bytes, iv: bytes, aad: bytes) -> bytes:
        lost = (pkcs11.SessionHandleInvalid, pkcs11.SessionClosed, pkcs11.DeviceRemoved)
        with self._lock:
            for attempt in (1, 2):
                try:
                    out: bytes = getattr(self._key, op)(
                        data, mechanism=pkcs11.Mechanism.AES_GCM,
                        mechanism_param=GCMParams(iv, aad))
                    return out
                except lost as e:
                    if attempt == 2:
                        raise KekError(f"{self.kek_id}: the token is unavailable: "
                                       f"{_why(e)}") from e
                    self._connect()
                except pkcs11.PKCS11Error as e:
                    if op == "decrypt":
                        raise _refused(self.kek_id) from e
                    raise KekError(f"{self.kek_id}: the token could not wrap: "
                                   f"{_why(e)}") from e
        raise AssertionError("unreachable")     # pragma: no cover

    def wrap(self, dek: bytes, aad: bytes) -> bytes:
        _check_dek(dek)
        iv = os.urandom(GCM_IV_BYTES)
        head = bytes([V_AES_GCM])
        return head + iv + self._crypt("encrypt", dek, iv, head + aad)

    def unwrap(self, wrapped: bytes, aad: bytes) -> bytes:
        rest = _split(wrapped, V_AES_GCM, self.kek_id)
        dek = self._crypt("decrypt", rest[GCM_IV_BYTES:], rest[:GCM_IV_BYTES],
                          wrapped[:1] + aad)
        if len(dek) != DEK_BYTES:     # pragma: no cover - GCM authenticated the length
            raise _refused(self.kek_id)
        return dek

    def close(self) -> None:
        with self._lock:
            if self._session is not None:
                self._session.close()
                self._session = self._key = None

    def __repr__(self) -> str:
        return f"Pkcs11Kek({self.kek_id})"


def create_pkcs11_kek(spec: str) -> Pkcs11Kek:
    """Generate the spec's AES-256 key inside the token: persistent, private, sensitive and
    non-extractable, usable only to encrypt and decrypt; refuses a label already in use."""
    fields = parse_pkcs11_spec(spec)
    session = _open_session(fields, rw=True)
    attr = pkcs11.Attribute
    try:
        existing = list(session.get_objects({attr.CLASS: pkcs11.ObjectClass.SECRET_KEY,
                                             attr.LABEL: fields["key"]}))
        if existing:
            raise KekError(f"pkcs11:{fields['token']}/{fields['key']}: the token already "
                           f"holds a key with this label; refusing to make another")
        session.generate_key(
            pkcs11.KeyType.AES, 256, label=fields["key"], id=os.urandom(8), store=True,
            capabilities=pkcs11.MechanismFlag.ENCRYPT | pkcs11.MechanismFlag.DECRYPT,
            template={attr.TOKEN: True, attr.PRIVATE: True, attr.SENSITIVE: True,
                      attr.EXTRACTABLE: False, attr.MODIFIABLE: False,
                      attr.WRAP: False, attr.UNWRAP: False,
                      attr.SIGN: False, attr.VERIFY: False, attr.DERIVE: False})
    except pkcs11.PKCS11Error as e:
        raise KekError(f"pkcs11:{fields['token']}/{fields['key']}: the token could not "
                       f"generate the key: {_why(e)}") from e
    finally:
        session.close()
    return Pkcs11Kek(fields)


# -- specs -------------------------------------------------------------------------------------

def load_kek(spec: str) -> Kek:
    """The KEK a spec names: ``file:/path``, ``credential:NAME`` or
    ``pkcs11:module=…;token=…;key=…;pin-file=…`` (KekError says what is wrong)."""
    scheme, colon, rest = spec.partition(":")
    if not colon or not rest:
        raise KekError(f"KEK {spec!r}: expected file:/path, credential:NAME or "
                       f"pkcs11:module=…;token=…;key=…;pin-file=…")
    if scheme == "file":
        return _load_file(Path(rest))
    if scheme == "credential":
        return _load_file(_credential_path(rest))
    if scheme == "pkcs11":
        return Pkcs11Kek(parse_pkcs11_spec(rest))
    raise KekError(f"KEK {spec!r}: unknown kind {scheme!r} (expected file, credential or "
                   f"pkcs11)")


def rewrap(old: Kek, new: Kek, wrapped: bytes, aad: bytes) -> bytes:
    """The same data key, unwrapped by ``old`` and wrapped by ``new`` under the same aad."""
    return new.wrap(old.unwrap(wrapped, aad), aad)
