"""Evidence packs, checked offline (docs/protocol.md "Evidence packs"; made by
``timeclock-collector evidence``).

A pack is a folder (or a ``.tar.gz`` of one folder) holding ``manifest.json`` — canonical JSON
(wire.canonical) with ``pack`` = :data:`PACK_KIND`, the period, the ledger size and head, the
log key and ``files``: path → SHA-256 hex of every other file except the signature — and
``manifest.sig``, the standard-base64 Ed25519 signature by the log key over
``b"timeclock/evidence-pack/v1\\n" + manifest.json``. :func:`verify_pack` checks the
signature under the pinned log keys, that the files on disk are exactly those listed with
those hashes, and returns the path of the audit bundle inside (``bundle/``) for
wire.bundle.audit_bundle.
"""

from __future__ import annotations

import hashlib
import tarfile
import tempfile
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath
from typing import Any

from wire.canonical import canonical, loads
from wire.errors import WireError
from wire.keys import VerifyKey

PACK_KIND = "timeclock evidence pack v1"
CONTEXT = b"timeclock/evidence-pack/v1\n"
MANIFEST = "manifest.json"
SIGNATURE = "manifest.sig"
MAX_MANIFEST = 16 * 1024 * 1024
MAX_MEMBERS = 100_000


class EvidenceError(WireError):
    """An evidence pack cannot be read or does not verify (the message says which file)."""


def signed_message(manifest: Any) -> bytes:
    return CONTEXT + canonical(manifest)


@dataclass(slots=True)
class PackCheck:
    root: Path                      # the pack folder (inside a temporary one for an archive)
    manifest: dict[str, Any]
    key_id: str                     # the log key that signed it
    problems: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not self.problems

    @property
    def bundle(self) -> Path:
        return self.root / "bundle"


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with path.open("rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


@contextmanager
def opened(pack: Path) -> Iterator[Path]:
    """The pack folder: ``pack`` itself, or the one folder of a ``.tar.gz`` unpacked safely
    (regular files and folders only, no absolute paths, no ``..``)."""
    if pack.is_dir():
        yield pack
        return
    if not pack.is_file():
        raise EvidenceError(f"{pack}: no such evidence pack (a folder or a .tar.gz)")
    with tempfile.TemporaryDirectory(prefix="tc-evidence-") as tmp:
        try:
            with tarfile.open(pack, mode="r:gz") as tar:
                members = tar.getmembers()
                if len(members) > MAX_MEMBERS:
                    raise EvidenceError(f"{pack}: more than {MAX_MEMBERS} members")
                tops = set()
                for m in members:
                    p = PurePosixPath(m.name)
                    if p.is_absolute() or ".." in p.parts or not (m.isfile() or m.isdir()):
                        raise EvidenceError(f"{pack}: member {m.name[:100]!r} is not a plain "
                                            "file or folder inside the pack")
                    tops.add(p.parts[0])
                if len(tops) != 1:
                    raise EvidenceError(f"{pack}: an evidence archive holds one folder, not "
                                        f"{len(tops)}")
                tar.extractall(tmp, members=members, filter="data")
        except (tarfile.TarError, OSError) as e:
            raise EvidenceError(f"{pack}: not a readable .tar.gz ({e})") from e
        yield Path(tmp) / tops.pop()


def _manifest(root: Path) -> tuple[dict[str, Any], bytes, str]:
    mpath, spath = root / MANIFEST, root / SIGNATURE
    try:
        raw = mpath.read_bytes()
        sig = spath.read_text(encoding="ascii").strip()
    except (OSError, UnicodeDecodeError) as e:
        raise EvidenceError(f"{root}: no readable {MANIFEST} and {SIGNATURE} ({e})") from e
    if len(raw) > MAX_MANIFEST:
        raise EvidenceError(f"{mpath}: larger than {MAX_MANIFEST} bytes")
    try:
        manifest = loads(raw)
    except WireError as e:
        raise EvidenceError(f"{mpath}: not canonical JSON ({e})") from e
    if not isinstance(manifest, dict) or manifest.get("pack") != PACK_KIND:
        raise EvidenceError(f"{mpath}: not a {PACK_KIND!r} manifest")
    files = manifest.get("files")
    if not isinstance(files, dict) or not all(
            isinstance(k, str) and isinstance(v, str) for k, v in files.items()):
        raise EvidenceError(f"{mpath}: 'files' must map paths to SHA-256 hex")
    if canonical(manifest) != raw:
        raise EvidenceError(f"{mpath}: not in canonical form (it was re-encoded)")
    return manifest, raw, sig


def verify_pack(root: Path, pinned: Sequence[VerifyKey]) -> PackCheck:
    """Check the manifest's signature and every file of the pack folder ``root``."""
    manifest, _, sig = _manifest(root)
    message = signed_message(manifest)
    signer = None
    for key in pinned:
        try:
            key.verify(message, sig)
        except WireError:
            continue
        signer = key
        break
    check = PackCheck(root, manifest, signer.key_id if signer else "")
    if signer is None:
        check.problems.append(f"{SIGNATURE}: the manifest is not signed by any pinned log key "
                              f"({', '.join(k.key_id for k in pinned)})")
        return check
    files: dict[str, str] = manifest["files"]
    present = {p.relative_to(root).as_posix() for p in root.rglob("*") if p.is_file()}
    present -= {MANIFEST, SIGNATURE}
    check.problems += [f"{rel}: in the pack but not in the manifest (added)"
                       for rel in sorted(present - files.keys())]
    check.problems += [f"{rel}: in the manifest but missing from the pack (removed)"
                       for rel in sorted(files.keys() - present)]
    check.problems += [f"{rel}: SHA-256 differs from the manifest (altered)"
                       for rel in sorted(files.keys() & present)
                       if _sha256(root / rel) != files[rel]]
    if not (root / "bundle").is_dir():
        check.problems.append("bundle/: missing (the audit bundle of the ledger)")
    return check
