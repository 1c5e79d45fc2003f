"""Encrypted backups of the ledger and their restore (control D16; docs/protocol.md
"Backup file", docs/operations.md "Backup and restore").

The container (version 1), byte-exact:

    magic "TCBACKUP" (8) | version 0x01 (1) | key id (8) | secretstream header (24)
    then records: length (4, big-endian, of the sealed message) | sealed message

Each sealed message is libsodium's crypto_secretstream_xchacha20poly1305 (PyNaCl bindings,
never our own construction) under the 32-byte backup key, with the 17-byte prefix (magic,
version, key id) as associated data; its plaintext starts with one type byte: ``M`` the
manifest (canonical JSON, first), ``D`` a chunk of the snapshot (≤ 64 KiB), ``E`` the trailer
(canonical JSON: data bytes and SHA-256), sealed with TAG_FINAL and followed by nothing.

Invariants:

- memory stays flat: the snapshot is read, sealed and written one chunk at a time, and read
  back the same way;
- a backup file exists under its name only once complete: it is written 0600 (whatever the
  umask) to ``.<name>.<pid>.tmp`` beside it, fsynced and renamed; a killed backup leaves at
  most that temporary file, which restore refuses as truncated;
- a restore writes nothing to the target until every message of the file authenticated in
  order and the trailer closed it (SQLite: written beside the target and linked into place
  only then; PostgreSQL: a first pass authenticates the whole file, the second feeds
  pg_restore in one transaction, killed if anything fails);
- every backup is an ``access`` entry of the ledger it copied ("type": "backup": who, the
  size and head backed up, the file, the key id).
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import struct
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any

from nacl import bindings as sodium
from nacl.exceptions import CryptoError

from collector import BackupError, BackupIntegrityError, LedgerError
from collector.ledger import backup as snapshots
from collector.ledger import checkpoint_tables, open_store, sqlite_path
from collector.ledger.base import EventFact
from collector.ledger.postgres import migrate, redact
from collector.ledger.sqlite import SQLiteStore
from collector.ledger.tables import migrate_postgres
from wire.canonical import canonical, loads
from wire.errors import WireError
from wire.keys import read_key_file, write_key_file

MAGIC = b"TCBACKUP"
VERSION = 1
KEY_ID_BYTES = 8
PREFIX_BYTES = len(MAGIC) + 1 + KEY_ID_BYTES                       # 17: the associated data
HEADER_BYTES = PREFIX_BYTES + sodium.crypto_secretstream_xchacha20poly1305_HEADERBYTES  # 41
CHUNK_BYTES = 64 * 1024
ABYTES = sodium.crypto_secretstream_xchacha20poly1305_ABYTES       # 17
MAX_SEALED = ABYTES + 1 + CHUNK_BYTES
KEY_BYTES = sodium.crypto_secretstream_xchacha20poly1305_KEYBYTES  # 32
KEY_HEADER = b"timeclock-backup-key-v1\n"
TAG_MESSAGE = sodium.crypto_secretstream_xchacha20poly1305_TAG_MESSAGE
TAG_FINAL = sodium.crypto_secretstream_xchacha20poly1305_TAG_FINAL
MANIFEST, DATA, END = b"M", b"D", b"E"
MANIFEST_MAX = 1 << 20


def tool_version() -> str:
    try:
        from importlib.metadata import version  # noqa: PLC0415 - only when a backup runs

        return f"timeclock {version('timeclock')}"
    except Exception:  # noqa: BLE001 - a source checkout without metadata
        return "timeclock (unknown version)"


@dataclass(frozen=True)
class BackupKey:
    """The 32-byte backup key; its repr names only the key id."""

    raw: bytes

    @property
    def key_id(self) -> bytes:
        """8 bytes naming the key (SHA-256 of a label and the key): which key a file needs."""
        return hashlib.sha256(b"timeclock backup key id\x00" + self.raw).digest()[:KEY_ID_BYTES]

    def __repr__(self) -> str:
        return f"BackupKey({self.key_id.hex()})"


def create_backup_key(path: Path, *, force: bool = False) -> BackupKey:
    """A new random backup key in a 0600 file (refuses to overwrite one unless ``force``)."""
    key = BackupKey(sodium.crypto_secretstream_xchacha20poly1305_keygen())
    try:
        write_key_file(path, KEY_HEADER, key.raw, force=force)
    except WireError as e:
        raise BackupError(str(e)) from e
    return key


def load_backup_key(path: Path) -> BackupKey:
    """The key of a ``backup-key create`` file; refuses one group or others can access."""
    try:
        return BackupKey(read_key_file(path, KEY_HEADER, what="backup key", length=KEY_BYTES))
    except WireError as e:
        raise BackupError(str(e)) from e
    except OSError as e:
        raise BackupError(f"{path}: {e.strerror}") from e


# -- the container -----------------------------------------------------------------------------

class _Sealer:
    def __init__(self, f: IO[bytes], key: BackupKey) -> None:
        self._f = f
        self._prefix = MAGIC + bytes([VERSION]) + key.key_id
        self._state = sodium.crypto_secretstream_xchacha20poly1305_state()
        header = sodium.crypto_secretstream_xchacha20poly1305_init_push(self._state, key.raw)
        f.write(self._prefix + header)

    def put(self, kind: bytes, data: bytes, *, final: bool = False) -> None:
        sealed = sodium.crypto_secretstream_xchacha20poly1305_push(
            self._state, kind + data, self._prefix, TAG_FINAL if final else TAG_MESSAGE)
        self._f.write(struct.pack(">I", len(sealed)) + sealed)


class _Opener:
    """Reads and authenticates one backup file, message by message, in order."""

    def __init__(self, f: IO[bytes], key: BackupKey, name: str) -> None:
        self._f, self._name = f, name
        head = f.read(HEADER_BYTES)
        if len(head) < len(MAGIC) or head[:len(MAGIC)] != MAGIC:
            raise BackupIntegrityError(f"{name}: not a timeclock backup file (bad magic)")
        if len(head) < HEADER_BYTES:
            raise BackupIntegrityError(f"{name}: truncated in its header; nothing restored")
        if head[len(MAGIC)] != VERSION:
            raise BackupIntegrityError(f"{name}: backup format version {head[len(MAGIC)]} is "
                                       f"not supported (this collector reads {VERSION})")
        kid = head[len(MAGIC) + 1:PREFIX_BYTES]
        if kid != key.key_id:
            raise BackupIntegrityError(f"{name}: made with backup key {kid.hex()}, not with "
                                       f"this key ({key.key_id.hex()}); nothing restored")
        self._prefix = head[:PREFIX_BYTES]
        self._state = sodium.crypto_secretstream_xchacha20poly1305_state()
        try:
            sodium.crypto_secretstream_xchacha20poly1305_init_pull(
                self._state, head[PREFIX_BYTES:], key.raw)
        except CryptoError as e:
            raise self._bad(PREFIX_BYTES) from e
        self.offset = HEADER_BYTES
        self.index = 0

    def _bad(self, at: int) -> BackupIntegrityError:
        return BackupIntegrityError(
            f"{self._name}: damaged or tampered at message {self.index} (byte {at}): it does "
            f"not authenticate under the backup key; nothing restored")

    def _short(self) -> BackupIntegrityError:
        return BackupIntegrityError(
            f"{self._name}: truncated at byte {self.offset} (the backup's end marker is "
            f"missing); nothing restored")

    def next(self) -> tuple[bytes, bytes, bool]:
        """(type byte, payload, final) of the next message."""
        start = self.offset
        raw_len = self._f.read(4)
        if len(raw_len) < 4:
            raise self._short()
        (n,) = struct.unpack(">I", raw_len)
        if not ABYTES < n <= MAX_SEALED:
            raise self._bad(start)
        sealed = self._f.read(n)
        if len(sealed) < n:
            raise self._short()
        try:
            plain, tag = sodium.crypto_secretstream_xchacha20poly1305_pull(
                self._state, sealed, self._prefix)
        except CryptoError as e:
            raise self._bad(start) from e
        self.offset = start + 4 + n
        self.index += 1
        if tag not in (TAG_MESSAGE, TAG_FINAL):
            raise self._bad(start)
        return plain[:1], plain[1:], tag == TAG_FINAL

    def manifest(self) -> dict[str, Any]:
        kind, payload, final = self.next()
        if kind != MANIFEST or final or len(payload) > MANIFEST_MAX:
            raise BackupIntegrityError(f"{self._name}: the first message is not a manifest")
        try:
            doc = loads(payload)
        except WireError as e:
            raise BackupIntegrityError(f"{self._name}: manifest: {e}") from e
        if not isinstance(doc, dict) or doc.get("format") != "timeclock-backup":
            raise BackupIntegrityError(f"{self._name}: manifest of an unknown format")
        return doc

    def data(self) -> Iterator[bytes]:
        """The snapshot's chunks; the trailer, its counts and end of file checked last."""
        digest, count = hashlib.sha256(), 0
        while True:
            kind, payload, final = self.next()
            if kind == DATA and not final:
                digest.update(payload)
                count += len(payload)
                yield payload
                continue
            if kind != END or not final:
                raise BackupIntegrityError(f"{self._name}: message {self.index} out of order")
            try:
                trailer = loads(payload)
            except WireError as e:
                raise BackupIntegrityError(f"{self._name}: trailer: {e}") from e
            if not isinstance(trailer, dict) or trailer.get("data_bytes") != count \
                    or trailer.get("sha256") != digest.hexdigest():
                raise BackupIntegrityError(f"{self._name}: the trailer does not match the data")
            if self._f.read(1):
                raise BackupIntegrityError(f"{self._name}: bytes after the end of the backup "
                                           f"(byte {self.offset}); nothing restored")
            return


# -- backup ------------------------------------------------------------------------------------

@dataclass(frozen=True)
class BackupSummary:
    out: Path
    bytes: int
    manifest: dict[str, Any]
    entry_idx: int


def backup(url: str, out: Path, key: BackupKey, *, principal: str, now_us: int,
           force: bool = False, kek: str | None = None) -> BackupSummary:
    """Snapshot the ledger ``url`` into the encrypted file ``out`` and record the backup
    (``kek``: an encrypted ledger's KEK spec, as open_store takes it)."""
    if out.exists() and not force:
        raise BackupError(f"{out}: exists; use --force to replace it")
    if not out.parent.is_dir():
        raise BackupError(f"{out.parent}: no such directory")
    tmp = out.with_name(f".{out.name}.{os.getpid()}.tmp")
    try:
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        os.fchmod(fd, 0o600)
    except OSError as e:
        raise BackupError(f"{tmp}: {e.strerror}") from e
    try:
        with os.fdopen(fd, "wb") as f:
            with snapshots.snapshot(url) as (facts, stream):
                manifest: dict[str, Any] = {
                    "format": "timeclock-backup", "version": VERSION, "store": facts.store,
                    "dump_format": "sqlite3" if facts.store == "sqlite"
                    else f"pg_dump-{snapshots.PG_FORMAT}",
                    "size": facts.size, "head": facts.head,
                    "checkpoint_v1": facts.checkpoint_v1, "checkpoint_v2": facts.checkpoint_v2,
                    "made_at_us": now_us, "tool": tool_version(), "source": _name(url)}
                sealer = _Sealer(f, key)
                sealer.put(MANIFEST, canonical(manifest))
                f.flush()
                digest, count = hashlib.sha256(), 0
                while chunk := stream.read(CHUNK_BYTES):
                    digest.update(chunk)
                    count += len(chunk)
                    sealer.put(DATA, chunk)
            sealer.put(END, canonical({"data_bytes": count, "sha256": digest.hexdigest()}),
                       final=True)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, out)
    except BaseException as e:
        with contextlib.suppress(OSError):
            tmp.unlink()
        if isinstance(e, OSError):
            raise BackupError(f"{out}: {e.strerror}") from e
        raise
    dfd = os.open(out.parent, os.O_RDONLY)
    try:
        os.fsync(dfd)
    finally:
        os.close(dfd)
    size = out.stat().st_size
    store = open_store(url, kek=kek)
    try:
        body = {"type": "backup", "via": "cli", "principal": principal,
                "size": manifest["size"], "head": manifest["head"], "bytes": size,
                "out": str(out), "key": key.key_id.hex(), "store": facts.store}
        result = store.append([EventFact("access", body)], now_us=now_us)
    finally:
        store.close()
    return BackupSummary(out, size, manifest, result[0].idx)


def _name(url: str) -> str:
    path = sqlite_path(url)
    return str(path.resolve()) if path is not None else redact(url)


# -- restore -----------------------------------------------------------------------------------

def read_manifest(path: Path, key: BackupKey) -> dict[str, Any]:
    """Authenticate the whole file and return its manifest (nothing is written)."""
    with _open(path) as f:
        opener = _Opener(f, key, str(path))
        manifest = opener.manifest()
        for _ in opener.data():
            pass
    return manifest


@contextlib.contextmanager
def _open(path: Path) -> Iterator[IO[bytes]]:
    try:
        f = open(path, "rb")  # noqa: SIM115 - closed by the context manager
    except OSError as e:
        raise BackupError(f"{path}: {e.strerror}") from e
    with f:
        yield f


@dataclass(frozen=True)
class RestoreSummary:
    manifest: dict[str, Any]
    size: int
    head: str


def restore(path: Path, key: BackupKey, url: str, *, app_role: str | None = None,
            kek: str | None = None) -> RestoreSummary:
    """Restore the backup ``path`` into the empty store ``url`` (PostgreSQL: the owner's DSN;
    ``app_role`` gets the grants ``migrate`` gives; ``kek``: an encrypted ledger's KEK spec).
    The caller verifies the result."""
    kind = snapshots.store_kind(url)
    held = snapshots.target_contents(url)
    if held:
        raise BackupError(f"{_name(url)}: the restore target is not empty ({', '.join(held[:5])}"
                          f"{', …' if len(held) > 5 else ''}); restore into a new file or an "
                          f"empty database")
    target = sqlite_path(url)
    if target is not None:
        with _open(path) as f:
            opener = _Opener(f, key, str(path))
            manifest = opener.manifest()
            _check_kind(manifest, kind, path)

            def check(tmp: Path) -> None:
                _check_head(_sqlite_head(tmp), manifest, path)

            snapshots.sqlite_restore(target, opener.data(), check=check)
        store = open_store(url, kek=kek)     # WAL, pragmas, the schema check of the file
    else:
        manifest = read_manifest(path, key)    # pass 1: all of it authenticates
        _check_kind(manifest, kind, path)
        with _open(path) as f:
            opener = _Opener(f, key, str(path))
            opener.manifest()
            snapshots.postgres_restore(url, opener.data())
        migrate(url, app_role=app_role)        # the triggers as the schema has them, grants
        migrate_postgres(url, app_role)
        checkpoint_tables.migrate_postgres(url, app_role)
        store = open_store(url, kek=kek)
    try:
        size, head = store.head()
    finally:
        store.close()
    _check_head((size, head), manifest, path)
    return RestoreSummary(manifest, size, head)


def _check_kind(manifest: dict[str, Any], kind: str, path: Path) -> None:
    if manifest.get("store") != kind:
        raise BackupError(f"{path}: a backup of a {manifest.get('store')} ledger cannot be "
                          f"restored into a {kind} store")


def _sqlite_head(db: Path) -> tuple[int, str]:
    try:
        s = SQLiteStore(db)
    except LedgerError as e:
        raise BackupError(f"the restored SQLite file does not open: {e}") from e
    try:
        return s.head()
    finally:
        s.close()


def _check_head(have: tuple[int, str], manifest: dict[str, Any], path: Path) -> None:
    if have != (manifest.get("size"), manifest.get("head")):
        raise BackupError(f"{path}: the restored ledger has {have[0]} entries (head "
                          f"{have[1][:16]}…), the manifest says {manifest.get('size')} "
                          f"(head {str(manifest.get('head'))[:16]}…)")
