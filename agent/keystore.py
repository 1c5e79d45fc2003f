"""Where the agent's secrets come from: a 0600 file, or a systemd credential.

A key reference in the config is either a path (relative paths are resolved against the config
file's directory) or ``credential:NAME``, which names a file in ``$CREDENTIALS_DIRECTORY`` (set by
systemd for ``LoadCredential=``/``LoadCredentialEncrypted=``; TPM2-sealed where the board has
one). Invariants: a secret file that group or others can access is refused
(:func:`wire.keys.check_private_file`); secret bytes and key paths are never logged.

The queue key file is ``timeclock-queue-key-v1\\n`` + base64(32 random bytes) + ``\\n``.
"""

from __future__ import annotations

import os
import re
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

from agent.errors import ConfigError
from wire.errors import KeyFileError
from wire.keys import (
    SigningKey,
    load_signing_key,
    read_key_file,
    write_key_file,
)

CREDENTIAL_PREFIX = "credential:"
QUEUE_KEY_BYTES = 32
_QUEUE_KEY_HEADER = b"timeclock-queue-key-v1\n"
_CREDENTIAL_NAME_RE = re.compile(r"^[A-Za-z0-9_.-]{1,255}$")


@dataclass(frozen=True, slots=True)
class KeyRef:
    """A secret's location: exactly one of ``path`` or ``credential`` is set."""

    path: Path | None = None
    credential: str | None = None

    def __post_init__(self) -> None:
        if (self.path is None) == (self.credential is None):
            raise ValueError("KeyRef needs exactly one of path or credential")

    @classmethod
    def parse(cls, text: str, *, base_dir: Path) -> KeyRef:
        """``credential:NAME`` or a path; raise ``ValueError`` with an operator message."""
        if text.startswith(CREDENTIAL_PREFIX):
            name = text[len(CREDENTIAL_PREFIX):]
            if not _CREDENTIAL_NAME_RE.fullmatch(name) or name in {".", ".."}:
                raise ValueError(f"credential name {name!r} is not a plain file name")
            return cls(credential=name)
        if not text:
            raise ValueError("empty path")
        p = Path(text).expanduser()
        return cls(path=p if p.is_absolute() else base_dir / p)

    def resolve(self, env: Mapping[str, str] | None = None) -> Path:
        """The file holding the secret; a credential needs ``$CREDENTIALS_DIRECTORY``."""
        if self.path is not None:
            return self.path
        env = os.environ if env is None else env
        cred_dir = env.get("CREDENTIALS_DIRECTORY")
        if not cred_dir:
            raise ConfigError([
                f"credential {self.credential!r}: $CREDENTIALS_DIRECTORY is not set; "
                "credentials are provided by systemd (LoadCredentialEncrypted=)"])
        assert self.credential is not None  # noqa: S101 -- guaranteed by __post_init__
        return Path(cred_dir) / self.credential

    def describe(self) -> str:
        """Redacted form for logs and status: the credential name or the file name only."""
        if self.credential is not None:
            return f"credential:{self.credential}"
        assert self.path is not None  # noqa: S101 -- guaranteed by __post_init__
        return f"file:{self.path.name}"


def new_queue_key() -> bytes:
    return os.urandom(QUEUE_KEY_BYTES)


def save_queue_key(path: Path, key: bytes, *, force: bool = False) -> None:
    if len(key) != QUEUE_KEY_BYTES:
        raise KeyFileError(f"queue key must be {QUEUE_KEY_BYTES} bytes")
    write_key_file(path, _QUEUE_KEY_HEADER, key, force=force)


def load_queue_key(path: Path) -> bytes:
    """Read a queue key file (0600 enforced); raise :class:`KeyFileError` naming the problem."""
    return read_key_file(path, _QUEUE_KEY_HEADER, what="queue key", length=QUEUE_KEY_BYTES)


def load_signing(ref: KeyRef, env: Mapping[str, str] | None = None) -> SigningKey:
    return load_signing_key(ref.resolve(env))


def load_queue(ref: KeyRef, env: Mapping[str, str] | None = None) -> bytes:
    return load_queue_key(ref.resolve(env))
