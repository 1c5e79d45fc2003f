"""Store-level snapshots and restores for ``backup`` / ``restore`` (control D16).

Invariants:

- A snapshot is one consistent state of a live ledger while ``serve`` appends, and the facts
  it reports (size, head, newest checkpoints) are read from that same state:
  SQLite through the online backup API (``sqlite3.Connection.backup`` in one step, i.e. one
  read transaction of the WAL database; never a copy of the file), into a 0600 temporary
  file beside the ledger (the same bytes, the same protection; removed when the snapshot
  ends, and one a killed run left is removed by the next: :func:`remove_stale`); PostgreSQL
  through ``pg_dump -Fc --snapshot`` under a snapshot exported by the
  REPEATABLE READ transaction that read the facts.
- Credentials never reach a command line: a DSN's password goes to pg_dump/pg_restore in
  ``PGPASSWORD``; messages carry redacted DSNs only.
- A restore never touches a target that holds anything (:func:`target_contents`), and the
  SQLite file appears under its name only once it is complete (written beside it, then
  linked into place, which also refuses a file that appeared meanwhile).
"""

from __future__ import annotations

import contextlib
import fcntl
import glob
import os
import shutil
import sqlite3
import subprocess
import tempfile
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any

import psycopg
from psycopg.conninfo import conninfo_to_dict, make_conninfo

from collector import BackupError
from collector.ledger import sqlite_path
from collector.ledger.postgres import redact
from collector.ledger.sqlite import connect
from wire import ZERO_HASH

PG_FORMAT = "custom"        # pg_dump -Fc: compressed, restored with pg_restore

Rows = Callable[[str], list[tuple[Any, ...]]]


@dataclass(frozen=True)
class SnapshotFacts:
    """What the manifest records of the state a snapshot holds."""

    store: str                          # "sqlite" | "postgresql"
    size: int                           # entries
    head: str                           # hash of entry size-1 (ZERO_HASH when empty)
    checkpoint_v1: dict[str, Any] | None   # {"size", "head"} of the newest v1 checkpoint
    checkpoint_v2: dict[str, Any] | None   # {"size", "note"} of the newest v2 note


def store_kind(url: str) -> str:
    return "sqlite" if sqlite_path(url) is not None else "postgresql"


def _facts(store: str, rows: Rows, tables: set[str]) -> SnapshotFacts:
    head_rows = rows("SELECT idx, hash FROM entries ORDER BY idx DESC LIMIT 1")
    size, head = (int(head_rows[0][0]) + 1, str(head_rows[0][1])) if head_rows \
        else (0, ZERO_HASH)
    v1 = rows("SELECT size, head FROM checkpoints ORDER BY size DESC, at DESC LIMIT 1")
    v2 = rows("SELECT size, note FROM tc_checkpoints_v2 ORDER BY size DESC LIMIT 1") \
        if "tc_checkpoints_v2" in tables else []
    return SnapshotFacts(
        store=store, size=size, head=head,
        checkpoint_v1={"size": int(v1[0][0]), "head": str(v1[0][1])} if v1 else None,
        checkpoint_v2={"size": int(v2[0][0]), "note": str(v2[0][1])} if v2 else None)


def _sidecars(path: Path) -> list[Path]:
    return [path.with_name(path.name + s) for s in ("", "-journal", "-wal", "-shm")]


def remove_stale(directory: Path, prefix: str) -> list[Path]:
    """Remove the temporary files ``prefix*.tmp`` in ``directory`` that no running backup or
    restore holds (each holds a lock on its own while it lives): a killed run's plaintext
    snapshot must not outlive the next run. Returns what was removed."""
    removed: list[Path] = []
    for p in sorted(directory.glob(f"{glob.escape(prefix)}*.tmp")):
        try:
            fd = os.open(p, os.O_RDONLY | os.O_NOFOLLOW)
        except OSError:
            continue
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            continue                     # in use by a live run
        else:
            for q in _sidecars(p):
                with contextlib.suppress(FileNotFoundError):
                    q.unlink()
            removed.append(p)
        finally:
            os.close(fd)
    return removed


@contextmanager
def _private_temp(directory: Path, prefix: str) -> Iterator[Path]:
    """A new 0600 file ``prefix*.tmp`` in ``directory``, locked while the block runs (see
    :func:`remove_stale`), removed with its SQLite sidecars afterwards."""
    remove_stale(directory, prefix)
    fd, name = tempfile.mkstemp(dir=directory, prefix=prefix, suffix=".tmp")
    try:
        fcntl.flock(fd, fcntl.LOCK_SH)
        os.fchmod(fd, 0o600)
        yield Path(name)
    finally:
        for p in _sidecars(Path(name)):
            with contextlib.suppress(FileNotFoundError):
                p.unlink()
        os.close(fd)


@contextmanager
def sqlite_snapshot(path: Path) -> Iterator[tuple[SnapshotFacts, IO[bytes]]]:
    """The facts and a readable stream of a consistent copy of the SQLite ledger ``path``."""
    if not path.is_file():
        raise BackupError(f"{path}: no such ledger file (a typo in --store?)")
    with _private_temp(path.parent, f".{path.name}.snapshot-") as tmp:
        try:
            src = connect(path, readonly=True)
            try:
                dst = sqlite3.connect(tmp, isolation_level=None)
                try:
                    src.backup(dst)   # pages=-1: every page in one step, one read snapshot
                    names = {str(r[0]) for r in dst.execute(
                        "SELECT name FROM sqlite_master WHERE type = 'table'")}
                    facts = _facts("sqlite", lambda q: dst.execute(q).fetchall(), names)
                    # Fold a WAL the copy may have into the file: the stream is one file.
                    dst.execute("PRAGMA journal_mode = DELETE")
                finally:
                    dst.close()
            finally:
                src.close()
        except sqlite3.Error as e:
            raise BackupError(f"{path}: the online backup failed: {e}") from e
        with open(tmp, "rb") as f:
            yield facts, f


def pg_tool(name: str) -> str:
    """``name`` (pg_dump, pg_restore) on PATH, else the newest /usr/lib/postgresql/*/bin."""
    found = shutil.which(name)
    if found:
        return found
    candidates = sorted(glob.glob(f"/usr/lib/postgresql/*/bin/{name}"),
                        key=lambda p: int(Path(p).parts[-3]) if Path(p).parts[-3].isdigit()
                        else 0)
    if not candidates:
        raise BackupError(f"{name} not found (install postgresql-client)")
    return candidates[-1]


def _pg_args(dsn: str) -> tuple[str, dict[str, str]]:
    """A conninfo for a PostgreSQL client tool without the password, and its environment."""
    params = conninfo_to_dict(dsn)
    password = params.pop("password", None)
    env = dict(os.environ)
    if password is not None:
        env["PGPASSWORD"] = str(password)
    return make_conninfo("", **params), env


def _tool_error(what: str, dsn: str, stderr: IO[bytes], rc: int | None) -> BackupError:
    stderr.seek(0)
    lines = [ln for ln in stderr.read().decode("utf-8", "replace").splitlines() if ln.strip()]
    last = redact(lines[-1].strip())[:300] if lines else "no message"
    return BackupError(f"{what} of {redact(dsn)} failed (exit {rc}): {last}")


@contextmanager
def postgres_snapshot(dsn: str) -> Iterator[tuple[SnapshotFacts, IO[bytes]]]:
    """The facts and pg_dump's output stream of one snapshot of the PostgreSQL ledger ``dsn``
    (the owner role: it can read every table)."""
    try:
        conn = psycopg.connect(dsn)
    except psycopg.Error as e:
        raise BackupError(f"cannot connect to {redact(dsn)}: "
                          f"{str(e).strip().splitlines()[0] if str(e).strip() else e}") from e
    try:
        conn.isolation_level = psycopg.IsolationLevel.REPEATABLE_READ
        conn.read_only = True
        try:
            snap = conn.execute("SELECT pg_export_snapshot()").fetchone()
            names = {str(r[0]) for r in conn.execute(
                "SELECT table_name FROM information_schema.tables "
                "WHERE table_schema = current_schema()")}
            if "entries" not in names:
                raise BackupError(f"{redact(dsn)}: no ledger schema here")
            facts = _facts("postgresql", lambda q: conn.execute(q).fetchall(), names)
        except psycopg.Error as e:
            raise BackupError(f"reading {redact(dsn)} failed: {e}") from e
        assert snap is not None     # noqa: S101 - SELECT of a function returns one row
        conninfo, env = _pg_args(dsn)
        with tempfile.TemporaryFile() as err:
            proc = subprocess.Popen(   # noqa: S603 - fixed argv, no shell
                [pg_tool("pg_dump"), "--format=custom", f"--snapshot={snap[0]}",
                 "--no-password", f"--dbname={conninfo}"],
                stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=err, env=env)
            try:
                assert proc.stdout is not None  # noqa: S101 - stdout=PIPE
                yield facts, proc.stdout
                proc.stdout.close()
                rc = proc.wait()
            finally:
                if proc.poll() is None:
                    proc.kill()
                    proc.wait()
            if rc != 0:
                raise _tool_error("pg_dump", dsn, err, rc)
    finally:
        conn.close()


@contextmanager
def snapshot(url: str) -> Iterator[tuple[SnapshotFacts, IO[bytes]]]:
    path = sqlite_path(url)
    cm = sqlite_snapshot(path) if path is not None else postgres_snapshot(url)
    with cm as pair:
        yield pair


def target_contents(url: str) -> list[str]:
    """What a restore target already holds (empty: it may be restored into)."""
    path = sqlite_path(url)
    if path is not None:
        return [str(p) for p in _sidecars(path) if p.exists()]
    try:
        with psycopg.connect(url, autocommit=True) as conn:
            rows = conn.execute(
                "SELECT n.nspname || '.' || c.relname FROM pg_class c "
                "JOIN pg_namespace n ON n.oid = c.relnamespace "
                "WHERE n.nspname NOT IN ('pg_catalog', 'information_schema') "
                "AND n.nspname NOT LIKE 'pg_toast%' AND n.nspname NOT LIKE 'pg_temp%' "
                "ORDER BY 1 LIMIT 6").fetchall()
    except psycopg.Error as e:
        raise BackupError(f"cannot connect to the restore target {redact(url)}: "
                          f"{str(e).strip().splitlines()[0] if str(e).strip() else e}") from e
    return [str(r[0]) for r in rows]


def sqlite_restore(path: Path, chunks: Iterable[bytes], *,
                   check: Callable[[Path], None]) -> None:
    """Write ``chunks`` (the snapshot, already authenticated or authenticated as it is read)
    beside ``path``; run ``check`` on the complete file; then link it into place. On any
    failure nothing exists under ``path`` and no temporary file is left."""
    if not path.parent.is_dir():
        raise BackupError(f"{path}: directory {path.parent} does not exist")
    with _private_temp(path.parent, f".{path.name}.restore-") as tmp:
        with open(tmp, "wb") as f:
            for chunk in chunks:
                f.write(chunk)
            f.flush()
            os.fsync(f.fileno())
        check(tmp)
        try:
            os.link(tmp, path)          # never replaces a file that appeared meanwhile
        except FileExistsError as e:
            raise BackupError(f"{path}: appeared during the restore; nothing replaced") from e
    dfd = os.open(path.parent, os.O_RDONLY)
    try:
        os.fsync(dfd)
    finally:
        os.close(dfd)


def postgres_restore(dsn: str, chunks: Iterable[bytes]) -> None:
    """``pg_restore`` the custom-format dump ``chunks`` into the empty database ``dsn`` as its
    owner, in one transaction (objects owned by the connecting role; no ACLs: the grants are
    re-applied by ``migrate``). A failure, or an exception while feeding it, rolls back."""
    conninfo, env = _pg_args(dsn)
    with tempfile.TemporaryFile() as err:
        proc = subprocess.Popen(   # noqa: S603 - fixed argv, no shell
            [pg_tool("pg_restore"), "--no-owner", "--no-acl", "--single-transaction",
             "--exit-on-error", "--no-password", f"--dbname={conninfo}"],
            stdin=subprocess.PIPE, stdout=subprocess.DEVNULL, stderr=err, env=env)
        assert proc.stdin is not None  # noqa: S101 - stdin=PIPE
        try:
            try:
                for chunk in chunks:
                    proc.stdin.write(chunk)
                proc.stdin.close()
            except BrokenPipeError:
                pass                     # pg_restore stopped: its exit status says why
            rc = proc.wait()
        except BaseException:
            proc.kill()                  # before its input ends: it must not commit
            proc.wait()
            raise
        if rc != 0:
            raise _tool_error("pg_restore", dsn, err, rc)
