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

:func:`check_registers` then checks two registers against that bundle (the signature only
says the collector wrote them): ``registers/hr-deliveries.json`` — every listed delivery is the
bundle's ``access`` entry at its idx with the same fields, and the count is the number of
``hr-delivery``/``hr-delivery-failed`` entries of the period — and
``registers/witnesses.json`` — each witness's latest cosignature line is on the bundle's
checkpoint note of that size, the newest checkpoint named is a note of the bundle, and
``current`` is true exactly for those that cosigned it; the manifest's ``hr_deliveries`` and
``witnesses`` summaries equal the registers'.
"""

from __future__ import annotations

import hashlib
import tarfile
import tempfile
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path, PurePosixPath
from typing import Any

from wire.bundle import BundleEntry, iter_ledger, iter_notes
from wire.canonical import canonical, loads
from wire.errors import WireError
from wire.keys import VerifyKey
from wire.note import MAX_SIGNATURES
from wire.note import Checkpoint as NoteCheckpoint

PACK_KIND = "timeclock evidence pack v1"
CONTEXT = b"timeclock/evidence-pack/v1\n"
MANIFEST = "manifest.json"
SIGNATURE = "manifest.sig"
MAX_MANIFEST = 16 * 1024 * 1024
MAX_MEMBERS = 100_000
MAX_REGISTER = 64 * 1024 * 1024
HR_TYPES = ("hr-delivery", "hr-delivery-failed")     # acknowledged (2xx), given up
HR_FIELDS = ("endpoint", "host", "what", "attempts", "delivery", "first_idx", "last_idx",
             "punches", "close_idx", "period", "digests", "amends", "error")
HR_REGISTER = "registers/hr-deliveries.json"
WITNESS_REGISTER = "registers/witnesses.json"


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


# -- the delivery record and the witness status -------------------------------------------------

def iso_s(us: int) -> str:
    """The registers' time format: UTC, whole seconds, ``+00:00``."""
    return datetime.fromtimestamp(us / 1_000_000, UTC).isoformat(timespec="seconds")


def hr_summary(rows: Sequence[dict[str, Any]]) -> dict[str, int]:
    """The manifest's ``hr_deliveries``: how many deliveries, acknowledged and given up."""
    ack = sum(1 for r in rows if r.get("acknowledged") is True)
    return {"count": len(rows), "acknowledged": ack, "failed": len(rows) - ack}


def witness_summary(status: dict[str, Any]) -> list[dict[str, Any]]:
    """The manifest's ``witnesses``: name, latest cosigned size, current."""
    return [{"name": w["name"], "latest_size": w["latest_size"], "current": w["current"]}
            for w in status.get("witnesses", [])]


def _register(root: Path, rel: str) -> Any:
    path = root / rel
    try:
        with path.open("rb") as f:
            data = f.read(MAX_REGISTER + 1)
        if len(data) > MAX_REGISTER:
            raise EvidenceError(f"{rel}: larger than {MAX_REGISTER} bytes")
        return loads(data)
    except OSError as e:
        raise EvidenceError(f"{rel}: cannot read ({e})") from e
    except WireError as e:
        raise EvidenceError(f"{rel}: not JSON ({e})") from e


def _period(manifest: dict[str, Any]) -> tuple[int, int]:
    try:
        a, b = (datetime.fromisoformat(str(manifest[k])) for k in ("from", "to"))
    except (KeyError, ValueError) as e:
        raise EvidenceError(f"{MANIFEST}: from/to are not ISO 8601 times ({e})") from e
    return int(a.timestamp()) * 1_000_000, int(b.timestamp()) * 1_000_000


@dataclass(slots=True)
class RegisterCheck:
    deliveries: int = 0
    acknowledged: int = 0
    witnesses: int = 0
    current: int = 0
    problems: list[str] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)


def check_registers(root: Path, manifest: dict[str, Any]) -> RegisterCheck:
    """The delivery record and the witness status of a pack whose manifest verified, against
    its bundle (module doc). A pack made before these registers existed gets a note."""
    out = RegisterCheck()
    files = manifest.get("files", {})
    bundle = root / "bundle"
    since, until = _period(manifest)
    hr_entries: dict[int, BundleEntry] = {}
    for item in iter_ledger(bundle):
        if not isinstance(item, BundleEntry) or item.entry.kind != "access":
            continue
        v = item.value
        if isinstance(v, dict) and v.get("type") in HR_TYPES \
                and since <= item.entry.at < until:
            hr_entries[item.entry.idx] = item
    if HR_REGISTER in files:
        _check_hr(_register(root, HR_REGISTER), hr_entries, manifest, out)
    else:
        out.notes.append(f"{HR_REGISTER}: not in this pack (made before delivery records)")
    if WITNESS_REGISTER in files:
        _check_witnesses(_register(root, WITNESS_REGISTER), bundle, manifest, out)
    else:
        out.notes.append(f"{WITNESS_REGISTER}: not in this pack (made before witness status)")
    return out


def _check_hr(reg: Any, entries: dict[int, BundleEntry], manifest: dict[str, Any],
              out: RegisterCheck) -> None:
    listed = reg.get("listed") if isinstance(reg, dict) else None
    if not isinstance(listed, list):
        out.problems.append(f"{HR_REGISTER}: no 'listed' deliveries")
        return
    for row in listed:
        idx = row.get("idx") if isinstance(row, dict) else None
        be = entries.get(idx) if isinstance(idx, int) else None
        if be is None:
            out.problems.append(f"{HR_REGISTER}: delivery at idx {idx!r} is not an "
                                f"hr-delivery entry of the period in the bundle")
            continue
        body = be.value
        want = {"idx": idx, "at": iso_s(be.entry.at),
                "acknowledged": body.get("type") == HR_TYPES[0],
                **{k: body[k] for k in HR_FIELDS if k in body}}
        if row != want:
            wrong = sorted(k for k in set(row) | set(want) if row.get(k) != want.get(k))
            out.problems.append(f"{HR_REGISTER}: delivery at idx {idx} differs from its "
                                f"ledger entry in {', '.join(wrong)}")
    count = reg.get("count")
    if count != len(entries):
        out.problems.append(f"{HR_REGISTER}: counts {count!r} deliveries; the bundle holds "
                            f"{len(entries)} of the period")
    summary = hr_summary([{"acknowledged": e.value.get("type") == HR_TYPES[0]}
                          for e in entries.values()])
    if {k: reg.get(k) for k in summary} != summary or manifest.get("hr_deliveries") != summary:
        out.problems.append(f"{HR_REGISTER}: the summary (manifest or register) is not the "
                            f"bundle's {summary}")
    out.deliveries, out.acknowledged = summary["count"], summary["acknowledged"]


def _check_witnesses(reg: Any, bundle: Path, manifest: dict[str, Any],
                     out: RegisterCheck) -> None:
    notes: dict[int, tuple[set[str], int]] = {}     # size -> (signature lines, how many)
    for item in iter_notes(bundle):
        if not isinstance(item, tuple):
            continue
        note = item[1]
        try:
            size = NoteCheckpoint.from_body(note.body).size
        except WireError:
            continue
        notes[size] = ({s.line().rstrip("\n") for s in note.signatures}, len(note.signatures))
    witnesses = reg.get("witnesses") if isinstance(reg, dict) else None
    newest = reg.get("newest_checkpoint") if isinstance(reg, dict) else None
    if not isinstance(witnesses, list):
        out.problems.append(f"{WITNESS_REGISTER}: no 'witnesses' list")
        return
    top = newest.get("size") if isinstance(newest, dict) else None
    if newest is not None and top not in notes:
        out.problems.append(f"{WITNESS_REGISTER}: the newest checkpoint (size {top!r}) is not "
                            f"a checkpoint note of the bundle")
    for w in witnesses:
        if not isinstance(w, dict):
            out.problems.append(f"{WITNESS_REGISTER}: a witness that is not an object")
            continue
        name, wsize, line = w.get("name"), w.get("latest_size"), w.get("line")
        lines, count = notes.get(wsize, (set(), 0)) if isinstance(wsize, int) else (set(), 0)
        if line not in lines and count < MAX_SIGNATURES:
            out.problems.append(f"{WITNESS_REGISTER}: {name!r}'s latest cosignature is not on "
                                f"the bundle's checkpoint of size {wsize!r}")
        if w.get("current") is not (wsize == top):
            out.problems.append(f"{WITNESS_REGISTER}: {name!r} is said to be "
                                f"{'current' if w.get('current') else 'not current'}, but its "
                                f"latest cosignature is of size {wsize!r} and the newest "
                                f"checkpoint of size {top!r}")
        out.witnesses += 1
        out.current += w.get("current") is True
    if manifest.get("witnesses") != witness_summary(reg):
        out.problems.append(f"{WITNESS_REGISTER}: the manifest's witness summary is not the "
                            f"register's")
