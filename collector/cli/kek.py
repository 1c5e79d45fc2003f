"""``timeclock-collector kek create | check | rewrap``: the key-encryption keys that wrap the
data keys of encryption at rest (DESIGN.md §8.6; collector.ledger.kek; docs/operations.md
"Key-encryption keys: file, systemd credential, HSM").

``create`` never replaces a key: a KEK that is overwritten takes every data key it wrapped
with it. ``check`` loads a spec and wraps and unwraps a random key, changing nothing.
``rewrap`` moves every live data key of a ledger to a new KEK in one transaction (the
keyring's; no body is read or written) and records it as an ``access`` entry.
"""

from __future__ import annotations

import argparse
import getpass
import os
import sys
import textwrap
from pathlib import Path

from collector import KekError
from collector.cli.args import STORE_HELP, add_kek_sources
from collector.cli.shared import NO_KEK, ledger_kek
from collector.ledger import kek as keks
from collector.ledger import keyring, open_store, sqlite_path
from collector.ledger.base import EventFact
from collector.ledger.postgres import PostgresStore
from collector.ledger.sqlbase import SQLStore
from collector.ledger.sqlite import SQLiteStore
from wire.clock import now_us as clock_now_us

EPILOG = textwrap.dedent("""\
    examples:
      timeclock-collector kek create --file /etc/timeclock/kek.key
      timeclock-collector kek create --pkcs11 \\
          "module=/usr/lib/softhsm/libsofthsm2.so;token=timeclock;key=kek-2026;pin-file=/etc/timeclock/hsm.pin"
      timeclock-collector kek check --kek file:/etc/timeclock/kek.key
      timeclock-collector kek check --kek credential:timeclock-kek     # under systemd
      timeclock-collector kek check --kek "pkcs11:module=…;token=timeclock;key=kek-2026;pin-file=…"
      timeclock-collector kek rewrap --store sqlite:///var/lib/timeclock/ledger.db \\
          --kek file:/etc/timeclock/kek.key \\
          --to "pkcs11:module=…;token=timeclock;key=kek-2027;pin-file=…"

    --file writes a 32-byte random key in a new 0600 file; keep a copy OFF the collector
    host (without it no data key, hence no encrypted body, can be read again). Under systemd,
    encrypt it into a credential (systemd-creds encrypt --name=timeclock-kek kek.key
    /etc/credstore.encrypted/timeclock-kek) and name it credential:timeclock-kek.
    --pkcs11 generates an AES-256 key inside the token (sensitive, non-extractable; the
    token's user PIN is read from pin-file, a 0600 file); the key never leaves the HSM.
    Both refuse to replace an existing key. Each prints the KEK id and the spec to configure.
    rewrap (with serve stopped) moves every live data key of the ledger from --kek to --to in
    one transaction, touching no body, and records an access entry (from, to, keys, who);
    then configure the new spec and keep the old KEK until the ledger verifies under it.
    """)


def register(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    p = sub.add_parser("kek", help="make or check the key-encryption key (file, credential, HSM)",
                       description="Key-encryption keys wrap the data keys of encryption at "
                                   "rest (DESIGN.md §8.6).",
                       epilog=EPILOG, formatter_class=argparse.RawDescriptionHelpFormatter)
    actions = p.add_subparsers(dest="kek_action", metavar="ACTION", required=True)
    c = actions.add_parser("create", help="make a new KEK (never replaces one)", epilog=EPILOG,
                           formatter_class=argparse.RawDescriptionHelpFormatter)
    where = c.add_mutually_exclusive_group(required=True)
    where.add_argument("--file", type=Path, metavar="PATH", help="a new 0600 key file")
    where.add_argument("--pkcs11", metavar="SPEC",
                       help="module=…;token=LABEL;key=LABEL;pin-file=PATH: generate the key "
                            "in this token")
    c.set_defaults(func=cmd_create)
    k = actions.add_parser("check", help="load a KEK and round-trip a random data key",
                           epilog=EPILOG, formatter_class=argparse.RawDescriptionHelpFormatter)
    k.add_argument("--kek", required=True, metavar="SPEC",
                   help="file:/path | credential:NAME | pkcs11:module=…;token=…;key=…;"
                        "pin-file=…")
    k.set_defaults(func=cmd_check)
    r = actions.add_parser("rewrap", help="move a ledger's data keys to a new KEK (no body is "
                                          "touched)", epilog=EPILOG,
                           formatter_class=argparse.RawDescriptionHelpFormatter)
    r.add_argument("--store", required=True, metavar="URL", help=STORE_HELP)
    r.add_argument("--kek", metavar="SPEC",
                   help="the KEK that wraps the data keys now (default: $TIMECLOCK_LEDGER_KEK, "
                        "else [ledger] kek of --config)")
    add_kek_sources(r, kek=False)
    r.add_argument("--to", required=True, metavar="SPEC", help="the new KEK")
    r.set_defaults(func=cmd_rewrap)


def cmd_create(args: argparse.Namespace) -> int:
    if args.file is not None:
        kek: keks.Kek = keks.create_file_kek(args.file)
        spec = f"file:{args.file}"
    else:
        kek = keks.create_pkcs11_kek(args.pkcs11)
        spec = "pkcs11:" + args.pkcs11.removeprefix("pkcs11:")
    print(f"KEK {kek.kek_id} created; configure it as: {spec}", file=sys.stderr)
    if args.file is not None:
        print("keep a copy of the key file off this host", file=sys.stderr)
    print(kek.kek_id)
    return 0


def cmd_check(args: argparse.Namespace) -> int:
    kek = keks.load_kek(args.kek)
    dek, aad = os.urandom(keks.DEK_BYTES), b"timeclock kek check"
    if kek.unwrap(kek.wrap(dek, aad), aad) != dek:     # pragma: no cover - AEAD or KekError
        raise KekError(f"{kek.kek_id}: a wrapped key came back different")
    print(f"KEK {kek.kek_id}: wraps and unwraps", file=sys.stderr)
    print(kek.kek_id)
    return 0


def cmd_rewrap(args: argparse.Namespace) -> int:
    spec = ledger_kek(args)
    if spec is None:
        raise KekError(NO_KEK)
    old, new = keks.load_kek(spec), keks.load_kek(args.to)
    if old.kek_id == new.kek_id:
        raise KekError(f"--kek and --to are the same KEK ({old.kek_id}): nothing to move")
    path = sqlite_path(args.store)
    if path is not None and not path.exists():
        raise KekError(f"{path}: no such ledger")
    # (opened without a keyring first: opening with one would make the first data key)
    plain: SQLStore = PostgresStore(args.store) if path is None else SQLiteStore(path)
    try:
        if not keyring.in_use(plain):
            raise KekError("this ledger holds no data keys (its bodies are not encrypted at "
                           "rest): nothing to rewrap")
    finally:
        plain.close()
    store = open_store(args.store, kek=spec)
    try:
        now = clock_now_us()
        n = keyring.Keyring(store, old).rewrap(new, now_us=now)
        store.append([EventFact("access", {
            "type": "kek-rewrap", "at": now, "principal": f"os:{getpass.getuser()}",
            "via": "cli", "from": old.kek_id, "to": new.kek_id, "keys": n})], now_us=now)
    finally:
        store.close()
    print(f"rewrapped {n} data key(s) from {old.kek_id} to {new.kek_id}; configure the new "
          f"KEK ([ledger] kek) and keep the old one until the ledger verifies under it",
          file=sys.stderr)
    print(n)
    return 0
