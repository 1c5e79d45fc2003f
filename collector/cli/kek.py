"""``timeclock-collector kek create | check``: the key-encryption keys that wrap the data keys
of encryption at rest (DESIGN.md §8.6; collector.ledger.kek; docs/operations.md
"Key-encryption keys: file, systemd credential, HSM").

``create`` never replaces a key: a KEK that is overwritten takes every data key it wrapped
with it. ``check`` loads a spec and wraps and unwraps a random key, changing nothing.
"""

from __future__ import annotations

import argparse
import os
import sys
import textwrap
from pathlib import Path

from collector import KekError
from collector.ledger import kek as keks

EPILOG = textwrap.dedent("""\
    examples:
      timeclock-collector kek create --file /etc/timeclock/kek.key
      timeclock-collector kek create --pkcs11 \\
          "module=/usr/lib/softhsm/libsofthsm2.so;token=timeclock;key=kek-2026;pin-file=/etc/timeclock/hsm.pin"
      timeclock-collector kek check --kek file:/etc/timeclock/kek.key
      timeclock-collector kek check --kek credential:timeclock-kek     # under systemd
      timeclock-collector kek check --kek "pkcs11:module=…;token=timeclock;key=kek-2026;pin-file=…"

    --file writes a 32-byte random key in a new 0600 file; keep a copy OFF the collector
    host (without it no data key, hence no encrypted body, can be read again). Under systemd,
    encrypt it into a credential (systemd-creds encrypt --name=timeclock-kek kek.key
    /etc/credstore.encrypted/timeclock-kek) and name it credential:timeclock-kek.
    --pkcs11 generates an AES-256 key inside the token (sensitive, non-extractable; the
    token's user PIN is read from pin-file, a 0600 file); the key never leaves the HSM.
    Both refuse to replace an existing key. Each prints the KEK id and the spec to configure.
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
