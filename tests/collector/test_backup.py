"""D16: encrypted backups taken while the ledger is written, restored into fresh stores that
``verify --full`` accepts; damaged, truncated or foreign files refused before the target is
touched; non-empty targets refused; no credential in clear; 0600 whatever the umask.

Real SQLite files and the real PostgreSQL cluster (pg_dump/pg_restore run as the owner role).
"""

from __future__ import annotations

import base64
import contextlib
import fcntl
import itertools
import json
import os
import signal
import subprocess
import sys
import threading
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import psycopg
import pytest

from collector import BackupError, BackupIntegrityError, LedgerError
from collector.cli.main import main
from collector.ingest.checkpoints import make_checkpoint, make_checkpoint_v2
from collector.ledger import backup as snapshots
from collector.ledger import checkpoint_tables, open_store
from collector.ledger.base import EventFact
from collector.ledger.sqlbase import SQLStore
from collector.records import backup as backups
from tests.collector.ledger_kit import T0, Clock, seeded_key
from tests.fixtures.postgres import OWNER_PASSWORD, OWNER_ROLE, PgCluster, PgDatabase
from tests.polling import wait_for

LOG_KEY = seeded_key("log-key")
ORIGIN = "backup.example/timeclock"
CREDENTIAL = "em4100:0047110815"
PG = pytest.param("postgresql", marks=[pytest.mark.postgres, pytest.mark.subprocess])
_dbs = itertools.count(1)


@dataclass
class Site:
    """A ledger to back up: ``url`` as the backup runs it (PostgreSQL: the owner), ``app_url``
    as the collector writes it; a fresh empty ``target`` (and its app DSN) to restore into."""

    kind: str
    url: str
    app_url: str
    target: str
    target_app: str | None


@contextlib.contextmanager
def _empty_database(cluster: PgCluster) -> Iterator[PgDatabase]:
    """A second fresh database like pg_db's (created by the DBA, owned by the owner role)."""
    name = f"tc_restore_{os.getpid()}_{next(_dbs)}"
    with psycopg.connect(cluster.admin_dsn, autocommit=True) as conn:
        conn.execute(f"CREATE DATABASE {name} OWNER {OWNER_ROLE}")
        conn.execute(f"REVOKE ALL ON DATABASE {name} FROM PUBLIC")
        conn.execute(f"GRANT CONNECT ON DATABASE {name} TO tc_app")
    try:
        yield PgDatabase(name=name, owner_dsn=cluster.dsn(OWNER_ROLE, OWNER_PASSWORD, name),
                         app_dsn=cluster.dsn("tc_app", "app-test-pw", name),
                         admin_dsn=f"host={cluster.socket_dir} port={cluster.port} "
                                   f"user=postgres dbname={name}", app_role="tc_app")
    finally:
        with psycopg.connect(cluster.admin_dsn, autocommit=True) as conn:
            conn.execute(f"DROP DATABASE IF EXISTS {name} WITH (FORCE)")


@pytest.fixture
def site(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Site]:
    kind: str = request.param
    if kind == "sqlite":
        db = tmp_path / "ledger.db"
        s = open_store(f"sqlite://{db}")
        checkpoint_tables.ensure_schema(s)
        s.close()
        (tmp_path / "restore").mkdir()
        yield Site(kind, f"sqlite://{db}", f"sqlite://{db}",
                   f"sqlite://{tmp_path / 'restore' / 'ledger.db'}", None)
        return
    source: PgDatabase = request.getfixturevalue("pg_ledger")
    cluster: PgCluster = request.getfixturevalue("pg_cluster")
    with _empty_database(cluster) as target:
        yield Site(kind, source.owner_dsn, source.app_dsn, target.owner_dsn, target.app_dsn)


def _fill(store: SQLStore, clock: Clock, n: int, now: int) -> None:
    store.append([clock.fact(credential=CREDENTIAL) for _ in range(n)], now_us=now)


def _seed(url: str, clock: Clock) -> None:
    store = open_store(url)
    try:
        checkpoint_tables.ensure_schema(store)
        store.append([EventFact("device", clock.enrolled_body())], now_us=T0)
        _fill(store, clock, 20, T0 + 1)
        make_checkpoint(store, LOG_KEY, T0 + 2)
        make_checkpoint_v2(store, LOG_KEY, ORIGIN, store.tree_size(), T0 + 2)
        _fill(store, clock, 5, T0 + 3)          # a tail after the newest checkpoint
    finally:
        store.close()


def _size(url: str) -> int:
    store = open_store(url)
    try:
        return store.head()[0]
    finally:
        store.close()


def _key(tmp_path: Path, name: str = "backup.key") -> Path:
    path = tmp_path / name
    assert main(["backup-key", "create", "--out", str(path)]) == 0
    return path


def _backup(site: Site, out: Path, key: Path) -> None:
    assert main(["backup", "--store", site.url, "--out", str(out), "--key", str(key)]) == 0


def _restore_args(site: Site, inp: Path, key: Path) -> list[str]:
    args = ["restore", "--in", str(inp), "--key", str(key), "--store", site.target,
            "--log-key-pub", LOG_KEY.verify_key.b64]
    return args + (["--app-dsn", site.target_app] if site.target_app else [])


def _target_holds(site: Site) -> list[str]:
    return snapshots.target_contents(site.target)


@pytest.mark.parametrize("site", ["sqlite", PG], indirect=True)
def test_d16_backup_while_appending_restores_a_store_that_verifies(
        site: Site, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    clock = Clock("clock-b")
    _seed(site.app_url, clock)
    key = _key(tmp_path)
    out = tmp_path / "ledger.tcbak"
    stop = threading.Event()
    appended = itertools.count()
    done: list[int] = []
    errors: list[BaseException] = []

    def appender() -> None:      # the collector writing while the backup runs
        store = open_store(site.app_url)
        try:
            for i in range(5000):               # bounded by count, and stopped below
                if stop.is_set():
                    break
                _fill(store, clock, 1, T0 + 10 + i)
                done.append(next(appended))
        except BaseException as e:  # noqa: BLE001 - reported by the test thread
            errors.append(e)
        finally:
            store.close()

    t = threading.Thread(target=appender, daemon=True)
    t.start()
    try:
        wait_for(lambda: len(done) >= 5 or errors, 60, "the appender to be writing")
        at_start = _size(site.app_url)
        _backup(site, out, key)
        wait_for(lambda: len(done) >= 10 or errors or not t.is_alive(), 60,
                 "appends after the backup")
    finally:
        stop.set()
        t.join(timeout=60)
    assert not errors, errors
    after = _size(site.app_url)
    capsys.readouterr()

    assert main(_restore_args(site, out, key)) == 0
    printed = capsys.readouterr()
    assert printed.out.startswith("OK: idx 0.."), printed
    manifest = backups.read_manifest(out, backups.load_backup_key(key))
    restored = _size(site.target)
    assert at_start <= restored == manifest["size"] < after   # the access entry came after
    assert (manifest["store"], manifest["checkpoint_v1"]["size"],
            manifest["checkpoint_v2"]["size"]) == (site.kind, 21, 21)
    assert f"restored: {restored} entries" in printed.err

    # the backup is an access entry of the ledger it copied, after the snapshot
    src = open_store(site.app_url)
    try:
        recorded = [json.loads(e.body or b"{}") for e in src.entries(restored)
                    if e.entry.kind == "access"]
    finally:
        src.close()
    assert [(b["type"], b["size"], b["head"], b["key"]) for b in recorded] == \
        [("backup", restored, manifest["head"], backups.load_backup_key(key).key_id.hex())]

    # the restored store is a working ledger for the collector's role, still append-only
    target = open_store(site.target_app or site.target)
    try:
        target.append([EventFact("access", {"type": "probe"})], now_us=T0 + 100)
        assert target.head()[0] == restored + 1
        with pytest.raises(LedgerError, match="append-only|permission denied"), \
                target.transaction(T0 + 101) as tx:
            tx.execute("UPDATE entries SET at = 0 WHERE idx = 0")
    finally:
        target.close()


def _one_sqlite_backup(tmp_path: Path) -> tuple[Site, Path, Path]:
    db = tmp_path / "ledger.db"
    (tmp_path / "restore").mkdir(parents=True, exist_ok=True)
    site = Site("sqlite", f"sqlite://{db}", f"sqlite://{db}",
                f"sqlite://{tmp_path / 'restore' / 'ledger.db'}", None)
    _seed(site.url, Clock("clock-c"))
    key = _key(tmp_path)
    out = tmp_path / "ledger.tcbak"
    _backup(site, out, key)
    return site, out, key


def _damaged(data: bytes) -> Iterator[tuple[str, bytes, str]]:
    """(what, bytes, the refusal) for flips over every region and truncations."""
    h = backups.HEADER_BYTES
    flips = sorted({*range(h + 8), *range(h + 8, len(data), 997), *range(len(data) - 48,
                                                                           len(data))})
    for at in flips:
        b = bytearray(data)
        b[at] ^= 0x01
        want = ("bad magic" if at < 8 else "version" if at == 8
                else "made with backup key" if at < backups.PREFIX_BYTES
                else "damaged or tampered|truncated|out of order")
        yield f"flip@{at}", bytes(b), want
    for cut in (0, 7, h - 1, h, h + 3, h + 40, len(data) // 2, len(data) - 1):
        yield f"cut@{cut}", data[:cut], "bad magic|truncated"
    starts = _record_starts(data)
    assert len(starts) >= 4                     # manifest, ≥ 2 data chunks, trailer
    for i, at in enumerate(starts):             # cut exactly between records: no end marker
        yield f"cut-before-record-{i}", data[:at], "truncated"
    # a whole record dropped, or two swapped: the stream's state no longer matches
    a, b, c = starts[1], starts[2], starts[3]
    yield "drop-record-1", data[:a] + data[b:], "damaged or tampered"
    yield "swap-records-1-2", data[:a] + data[b:c] + data[a:b] + data[c:], \
        "damaged or tampered"
    yield "trailing", data + b"\x00", "bytes after the end"


def _record_starts(data: bytes) -> list[int]:
    """Where each sealed record of a backup file starts (its 4-byte length)."""
    at, starts = backups.HEADER_BYTES, []
    while at < len(data):
        starts.append(at)
        at += 4 + int.from_bytes(data[at:at + 4], "big")
    assert at == len(data)
    return starts


def test_d16_a_damaged_truncated_or_foreign_backup_is_refused_and_nothing_is_written(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    site, out, key = _one_sqlite_backup(tmp_path)
    data = out.read_bytes()
    k = backups.load_backup_key(key)
    restore_dir = tmp_path / "restore"
    bad = tmp_path / "bad.tcbak"
    cases = 0
    for what, damaged, want in _damaged(data):
        bad.write_bytes(damaged)
        with pytest.raises(BackupIntegrityError, match=want):
            backups.restore(bad, k, site.target)
        assert list(restore_dir.iterdir()) == [], what     # no target, no temporary file
        cases += 1
    assert cases > 60

    # a wrong key (another key file): refused by its id, the target untouched
    other = _key(tmp_path, "other.key")
    capsys.readouterr()
    assert main(_restore_args(site, out, other)) == 2
    err = capsys.readouterr().err
    assert "made with backup key" in err
    assert len(err.strip().splitlines()) == 1
    assert list(restore_dir.iterdir()) == []
    # the same key id but other key bytes (a forged header): no message authenticates
    forged = bytearray(data)
    forged[backups.PREFIX_BYTES - backups.KEY_ID_BYTES:backups.PREFIX_BYTES] = \
        backups.load_backup_key(other).key_id
    bad.write_bytes(bytes(forged))
    with pytest.raises(BackupIntegrityError, match="damaged or tampered"):
        backups.restore(bad, backups.load_backup_key(other), site.target)
    assert list(restore_dir.iterdir()) == []

    # one flipped byte through the CLI: one clear line, exit 2
    b = bytearray(data)
    b[len(data) // 2] ^= 0x80
    bad.write_bytes(bytes(b))
    assert main(_restore_args(site, bad, key)) == 2
    err = capsys.readouterr().err
    assert err.startswith("timeclock-collector: error: ")
    assert "nothing restored" in err
    assert len(err.strip().splitlines()) == 1
    assert list(restore_dir.iterdir()) == []
    # and the intact file restores
    assert main(_restore_args(site, out, key)) == 0


@pytest.mark.postgres
@pytest.mark.subprocess
def test_d16_a_damaged_backup_never_reaches_the_postgresql_target(
        pg_ledger: PgDatabase, pg_cluster: PgCluster, tmp_path: Path) -> None:
    _seed(pg_ledger.app_dsn, Clock("clock-p"))
    key = _key(tmp_path)
    out = tmp_path / "pg.tcbak"
    with _empty_database(pg_cluster) as target:
        site = Site("postgresql", pg_ledger.owner_dsn, pg_ledger.app_dsn, target.owner_dsn,
                    target.app_dsn)
        _backup(site, out, key)
        data = out.read_bytes()
        k = backups.load_backup_key(key)
        bad = tmp_path / "bad.tcbak"
        # the last message (the trailer) and a middle one: pg_restore would have had the rest
        for what, damaged in (("flip-end", data[:-3] + bytes([data[-3] ^ 1]) + data[-2:]),
                              ("flip-mid", data[:len(data) // 2] + bytes([data[len(data) // 2]
                                                                           ^ 1])
                               + data[len(data) // 2 + 1:]),
                              ("cut", data[:-100])):
            bad.write_bytes(damaged)
            with pytest.raises(BackupIntegrityError, match="damaged or tampered|truncated"):
                backups.restore(bad, k, site.target, app_role="tc_app")
            assert _target_holds(site) == [], what
        # a SQLite backup is not restored into PostgreSQL (and the reverse)
        sqlite_site, sqlite_out, sqlite_key = _one_sqlite_backup(tmp_path / "s")
        with pytest.raises(BackupError, match="a backup of a sqlite ledger cannot"):
            backups.restore(sqlite_out, backups.load_backup_key(sqlite_key), site.target,
                            app_role="tc_app")
        assert _target_holds(site) == []
        with pytest.raises(BackupError, match="a backup of a postgresql ledger cannot"):
            backups.restore(out, k, sqlite_site.target)
        assert main(_restore_args(site, out, key)) == 0


@pytest.mark.parametrize("site", ["sqlite", PG], indirect=True)
def test_d16_restore_refuses_a_target_that_is_not_empty(site: Site, tmp_path: Path,
                                                        capsys: pytest.CaptureFixture[str]
                                                        ) -> None:
    _seed(site.app_url, Clock("clock-d"))
    key = _key(tmp_path)
    out = tmp_path / "ledger.tcbak"
    _backup(site, out, key)
    assert main(_restore_args(site, out, key)) == 0         # now the target holds a ledger
    before = _size(site.target)
    capsys.readouterr()
    assert main(_restore_args(site, out, key)) == 2
    err = capsys.readouterr().err
    assert "the restore target is not empty" in err, err
    assert _size(site.target) == before
    # even an empty ledger file, or a migrated database, is not a restore target
    if site.kind == "sqlite":
        fresh = tmp_path / "empty.db"
        open_store(f"sqlite://{fresh}").close()
        with pytest.raises(BackupError, match="not empty"):
            backups.restore(out, backups.load_backup_key(key), f"sqlite://{fresh}")
        assert _size(f"sqlite://{fresh}") == 0


def test_d16_the_backup_file_holds_no_credential_in_clear(tmp_path: Path) -> None:
    site, out, key = _one_sqlite_backup(tmp_path)
    ledger = Path(site.url.removeprefix("sqlite://")).read_bytes()
    assert CREDENTIAL.encode() in ledger          # the search finds it where it is in clear
    data = out.read_bytes()
    raw = backups.load_backup_key(key).raw
    for needle in (CREDENTIAL.encode(), CREDENTIAL.split(":")[1].encode(), b"em4100",
                   raw, base64.b64encode(raw), b"SQLite format 3", b"clock-c", b"entries"):
        assert needle not in data, needle


@pytest.mark.postgres
@pytest.mark.subprocess
def test_d16_a_postgresql_backup_holds_no_credential_or_password(
        pg_ledger: PgDatabase, tmp_path: Path) -> None:
    _seed(pg_ledger.app_dsn, Clock("clock-q"))
    key = _key(tmp_path)
    out = tmp_path / "pg.tcbak"
    assert main(["backup", "--store", pg_ledger.owner_dsn, "--out", str(out), "--key",
                 str(key)]) == 0
    data = out.read_bytes()
    for needle in (CREDENTIAL.encode(), b"em4100", OWNER_PASSWORD.encode(), b"app-test-pw",
                   b"PGDMP", b"clock-q"):
        assert needle not in data, needle
    manifest = backups.read_manifest(out, backups.load_backup_key(key))
    assert OWNER_PASSWORD not in json.dumps(manifest)
    assert manifest["dump_format"] == "pg_dump-custom"


def test_d16_files_are_0600_whatever_the_umask(tmp_path: Path) -> None:
    old = os.umask(0)
    try:
        site, out, key = _one_sqlite_backup(tmp_path)
        assert main(_restore_args(site, out, key)) == 0
        restored = Path(site.target.removeprefix("sqlite://"))
        modes = {p.name: p.stat().st_mode & 0o777 for p in (key, out, restored)}
        assert modes == {"backup.key": 0o600, "ledger.tcbak": 0o600, "ledger.db": 0o600}
        # --force replaces a backup and keeps it 0600
        out.chmod(0o644)
        assert main(["backup", "--store", site.url, "--out", str(out), "--key", str(key),
                     "--force"]) == 0
        assert out.stat().st_mode & 0o777 == 0o600
    finally:
        os.umask(old)
    # --out DIR (the nightly unit's form): one dated 0600 file in it
    nightly = tmp_path / "nightly"
    nightly.mkdir()
    assert main(["backup", "--store", site.url, "--out", str(nightly), "--key", str(key)]) == 0
    made = list(nightly.iterdir())
    assert [p.name[:7] for p in made] == ["ledger-"]
    assert made[0].name.endswith(".tcbak")
    assert made[0].stat().st_mode & 0o777 == 0o600
    # a key file that group or others can read is refused, and nothing is written
    key.chmod(0o640)
    again = tmp_path / "again.tcbak"
    with pytest.raises(BackupError, match="chmod 600"):
        backups.load_backup_key(key)
    assert main(["backup", "--store", site.url, "--out", str(again), "--key", str(key)]) == 2
    assert not again.exists()
    # an existing key or backup is never overwritten without --force
    key.chmod(0o600)
    assert main(["backup-key", "create", "--out", str(key)]) == 2
    assert main(["backup", "--store", site.url, "--out", str(out), "--key", str(key)]) == 2


def test_d16_restore_exits_non_zero_when_verify_fails(tmp_path: Path,
                                                      capsys: pytest.CaptureFixture[str]
                                                      ) -> None:
    site, out, key = _one_sqlite_backup(tmp_path)
    capsys.readouterr()
    other_log = seeded_key("another-log-key").verify_key.b64
    args = _restore_args(site, out, key)
    args[args.index("--log-key-pub") + 1] = other_log
    assert main(args) == 1
    printed = capsys.readouterr()
    assert printed.out.startswith("TAMPERED"), printed.out
    assert "restored: 26 entries" in printed.err     # restored, and the verdict is printed


def test_d16_backup_and_restore_help_carry_examples(capsys: pytest.CaptureFixture[str]) -> None:
    for cmd in (["backup"], ["restore"], ["backup-key", "create"]):
        with pytest.raises(SystemExit) as e:
            main([*cmd, "--help"])
        assert e.value.code == 0
        text = capsys.readouterr().out
        assert "examples:" in text, cmd
        assert "timeclock-collector " + cmd[0] in text, cmd


@pytest.mark.postgres
@pytest.mark.subprocess
def test_d16_a_killed_backup_leaves_no_file_that_looks_complete(
        pg_ledger: PgDatabase, tmp_path: Path) -> None:
    """The backup is SIGKILLed while pg_dump waits for a table another session holds locked
    (so it cannot have finished): no file under --out; the temporary one is refused."""
    _seed(pg_ledger.app_dsn, Clock("clock-k"))
    key = _key(tmp_path)
    out = tmp_path / "pg.tcbak"
    tmp = out.with_name(f".{out.name}.")
    lock = psycopg.connect(pg_ledger.admin_dsn)
    try:
        lock.execute("LOCK TABLE quarantine IN ACCESS EXCLUSIVE MODE")
        proc = subprocess.Popen(   # noqa: S603 - the collector's own CLI
            [sys.executable, "-m", "collector.cli.main", "backup", "--store",
             pg_ledger.owner_dsn, "--out", str(out), "--key", str(key)],
            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
        try:
            partial = wait_for(
                lambda: [p for p in tmp_path.iterdir() if p.name.startswith(tmp.name)
                         and p.stat().st_size > backups.HEADER_BYTES] or proc.poll() is not None,
                120, "the backup's temporary file with its manifest")
            assert isinstance(partial, list), proc.stderr.read() if proc.stderr else ""
            os.kill(proc.pid, signal.SIGKILL)
            proc.wait(timeout=60)
        finally:
            if proc.poll() is None:
                proc.kill()
                proc.wait(timeout=60)
            if proc.stderr is not None:
                proc.stderr.close()
    finally:
        lock.rollback()              # pg_dump goes on, finds its reader gone, and exits
        lock.close()
    assert not out.exists()
    assert partial[0].stat().st_mode & 0o777 == 0o600
    with pytest.raises(BackupIntegrityError, match="truncated"):
        backups.read_manifest(partial[0], backups.load_backup_key(key))


def test_d16_a_killed_runs_plaintext_snapshot_is_removed_by_the_next_backup(
        tmp_path: Path) -> None:
    """A SIGKILLed SQLite backup can leave its 0600 snapshot (the ledger in clear) beside the
    ledger; the next backup removes it, but never the file of a backup still running."""
    site, out, key = _one_sqlite_backup(tmp_path)
    stale = tmp_path / ".ledger.db.snapshot-killed.tmp"
    stale.write_bytes(Path(site.url.removeprefix("sqlite://")).read_bytes())
    (tmp_path / ".ledger.db.snapshot-killed.tmp-wal").write_bytes(b"wal")
    live = tmp_path / ".ledger.db.snapshot-running.tmp"
    live.write_bytes(b"another backup's snapshot")
    fd = os.open(live, os.O_RDONLY)
    try:
        fcntl.flock(fd, fcntl.LOCK_SH)            # what a running backup holds
        assert main(["backup", "--store", site.url, "--out", str(tmp_path / "next.tcbak"),
                     "--key", str(key)]) == 0
        assert sorted(p.name for p in tmp_path.iterdir() if p.name.startswith(".")) == \
            [live.name]
    finally:
        os.close(fd)
