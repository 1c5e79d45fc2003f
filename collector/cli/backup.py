"""``timeclock-collector backup-key create | backup | restore``: encrypted backups of the
ledger and the restore drill (control D16; collector.records.backup holds the format)."""

from __future__ import annotations

import argparse
import getpass
import sys
import tempfile
import textwrap
from datetime import UTC, datetime
from pathlib import Path

from psycopg.conninfo import conninfo_to_dict

from collector import BackupError
from collector.cli import ledger as ledger_cli
from collector.cli.args import add_kek_sources
from collector.cli.shared import ledger_kek
from collector.ledger import sqlite_path
from collector.ledger.postgres import redact
from collector.records import backup as backups
from wire.clock import now_us as clock_now_us

KEY_EPILOG = textwrap.dedent("""\
    examples:
      timeclock-collector backup-key create --out /etc/timeclock/backup.key

    A 32-byte random key in a 0600 file. Keep a copy OFF the collector host (a password
    manager, a sealed envelope in the safe): a backup cannot be read without it, and a copy
    next to the backups protects nothing.
    """)

BACKUP_EPILOG = textwrap.dedent("""\
    examples:
      timeclock-collector backup --store sqlite:///var/lib/timeclock/ledger.db \\
          --out /var/backups/timeclock/ledger-$(date -u +%F).tcbak --key /etc/timeclock/backup.key
      timeclock-collector backup --store postgresql://tc_owner@db/timeclock \\
          --out /var/backups/timeclock/pg-$(date -u +%F).tcbak --key /etc/timeclock/backup.key

    A consistent snapshot while `serve` runs (SQLite: the online backup API; PostgreSQL:
    pg_dump, as the owner role), encrypted and authenticated chunk by chunk under the backup
    key (docs/protocol.md "Backup file"). The file is written 0600 under a temporary name and
    renamed once complete (--out DIR: ledger-<UTC time>.tcbak in DIR, what the nightly
    timeclock-backup.service does). The backup is recorded in the ledger as an `access` entry (who,
    size, head). Ship the file off-host (docs/operations.md "Backup and restore").
    """)

RESTORE_EPILOG = textwrap.dedent("""\
    examples:
      timeclock-collector restore --in ledger-2026-12-01.tcbak --key /etc/timeclock/backup.key \\
          --store sqlite:///srv/restore/ledger.db \\
          --log-key-pub Kay64UG8yvCyLhqU000LxzYeUm0L/hLIl5S8kyKWbdc=
      timeclock-collector restore --in pg-2026-12-01.tcbak --key /etc/timeclock/backup.key \\
          --store postgresql://tc_owner@db/timeclock_restored \\
          --app-dsn postgresql://tc_app@db/timeclock_restored --log-key /etc/timeclock/log.key

    Refuses a target that holds anything (a SQLite file that exists; a PostgreSQL database
    with any table: create it empty, owned by the owner role). The whole file is
    authenticated before anything is written to the target; then the snapshot is restored
    (PostgreSQL: pg_restore as the owner, then the app role's grants as `migrate` gives them)
    and `verify --full` runs on the restored store (PostgreSQL: as --app-dsn, so the grants
    are checked too) and prints its result.
    Exit status: 0 restored and verified, 1 restored but verification failed, 2 error
    (nothing restored).
    """)


def register(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    k = sub.add_parser("backup-key", help="make the key that encrypts backups",
                       description="Make the backup key (D16).", epilog=KEY_EPILOG,
                       formatter_class=argparse.RawDescriptionHelpFormatter)
    kk = k.add_subparsers(dest="backup_key", metavar="ACTION", required=True)
    kc = kk.add_parser("create", help="write a new random backup key (0600)",
                       epilog=KEY_EPILOG, formatter_class=argparse.RawDescriptionHelpFormatter)
    kc.add_argument("--out", type=Path, required=True, metavar="FILE", help="the key file")
    kc.add_argument("--force", action="store_true", help="replace an existing key file")
    kc.set_defaults(func=cmd_key_create)

    b = sub.add_parser("backup", help="an encrypted, consistent snapshot of the ledger",
                       description="Back up the ledger store into one encrypted file (D16).",
                       epilog=BACKUP_EPILOG,
                       formatter_class=argparse.RawDescriptionHelpFormatter)
    b.add_argument("--store", required=True, metavar="URL",
                   help="ledger: sqlite:///path, a path, or the owner role's postgresql://…")
    b.add_argument("--out", type=Path, required=True, metavar="FILE",
                   help="backup file; an existing directory: ledger-<UTC time>.tcbak in it")
    b.add_argument("--key", type=Path, required=True, metavar="FILE",
                   help="backup key file (0600; `backup-key create`)")
    b.add_argument("--force", action="store_true", help="replace an existing --out file")
    add_kek_sources(b)
    b.set_defaults(func=cmd_backup)

    r = sub.add_parser("restore", help="restore a backup into an empty store and verify it",
                       description="Restore an encrypted backup into a new, empty store and "
                                   "run `verify --full` on it (D16).",
                       epilog=RESTORE_EPILOG,
                       formatter_class=argparse.RawDescriptionHelpFormatter)
    r.add_argument("--in", dest="inp", type=Path, required=True, metavar="FILE",
                   help="backup file")
    r.add_argument("--key", type=Path, required=True, metavar="FILE", help="backup key file")
    r.add_argument("--store", required=True, metavar="URL",
                   help="the empty target: a new SQLite path, or the owner role's DSN of an "
                        "empty PostgreSQL database")
    r.add_argument("--app-dsn", metavar="DSN",
                   help="PostgreSQL: the collectors' role on the target (its grants are "
                        "re-applied; verify runs as it)")
    r.add_argument("--log-key-pub", action="append", default=[], metavar="B64",
                   help="trusted collector log public key (base64); repeat for rotated keys")
    r.add_argument("--log-key", action="append", default=[], type=Path, metavar="FILE",
                   help="a log signing key file (0600); its public key is trusted")
    add_kek_sources(r)
    r.set_defaults(func=cmd_restore)


def cmd_key_create(args: argparse.Namespace) -> int:
    key = backups.create_backup_key(args.out, force=args.force)
    print(f"backup key {key.key_id.hex()} written to {args.out} (0600); keep a copy off-host",
          file=sys.stderr)
    return 0


def cmd_backup(args: argparse.Namespace) -> int:
    key = backups.load_backup_key(args.key)
    if args.out.is_dir():         # the nightly unit's form: one dated file per run
        stamp = datetime.now(UTC).strftime("%Y%m%dT%H%M%SZ")
        args.out = args.out / f"ledger-{stamp}.tcbak"
    s = backups.backup(args.store, args.out, key, principal=f"os:{getpass.getuser()}",
                       now_us=clock_now_us(), force=args.force, kek=ledger_kek(args))
    m = s.manifest
    cp = m["checkpoint_v2"] or m["checkpoint_v1"]
    print(f"backup: {m['size']} entries (head {m['head']}, newest checkpoint "
          f"{cp['size'] if cp else 'none'}) of {redact(args.store)} -> {s.out} "
          f"({s.bytes} bytes, key {key.key_id.hex()}); recorded as entry {s.entry_idx}",
          file=sys.stderr)
    return 0


def cmd_restore(args: argparse.Namespace) -> int:
    if not args.log_key_pub and not args.log_key:
        raise BackupError("restore runs verify --full and needs the collector log public key: "
                          "--log-key-pub B64 or --log-key FILE")
    app_role = None
    if sqlite_path(args.store) is None:
        if args.app_dsn is None:
            raise BackupError("a PostgreSQL restore needs --app-dsn (the collectors' role on "
                              "the target: its grants are re-applied and verify runs as it)")
        app_role = str(conninfo_to_dict(args.app_dsn).get("user") or "")
        if not app_role:
            raise BackupError(f"--app-dsn {redact(args.app_dsn)}: names no user")
    elif args.app_dsn is not None:
        raise BackupError("--app-dsn is for PostgreSQL targets only")
    key = backups.load_backup_key(args.key)
    kek = ledger_kek(args)
    s = backups.restore(args.inp, key, args.store, app_role=app_role, kek=kek)
    m = s.manifest
    cp = m.get("checkpoint_v2") or m.get("checkpoint_v1")
    made = datetime.fromtimestamp(int(m.get("made_at_us") or 0) / 1e6, UTC)
    print(f"restored: {s.size} entries (head {s.head}; newest checkpoint "
          f"{cp['size'] if isinstance(cp, dict) else 'none'}) from {args.inp}, made "
          f"{made.isoformat(timespec='seconds')} by {m.get('tool')} of {m.get('source')}; "
          f"now verify --full:", file=sys.stderr)
    with tempfile.TemporaryDirectory() as d:      # a fresh state: nothing is taken on trust
        verify = argparse.Namespace(
            store=args.app_dsn or args.store, log_key_pub=args.log_key_pub,
            log_key=args.log_key, state=Path(d) / "verify.json", full=True, progress=False,
            json=False, sample=0, kek=kek)
        return ledger_cli.cmd_verify(verify)
