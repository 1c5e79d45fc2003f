"""``timeclock-collector device register | rotate | revoke``: the device registry (control D1).

Each command appends one ``device`` entry to the ledger (collector.registry); the ledger is
the registry, so every enrolment, rotation and revocation is itself tamper-evident.
"""

from __future__ import annotations

import argparse
import textwrap
import time

from collector.ledger import open_store
from collector.registry import enroll, revoke, rotate

EPILOG = textwrap.dedent("""\
    examples:
      timeclock-collector device register --store ledger.db --device clock-17 --site hq \\
          --signing-key A6EHv/POEL4dcN0Y50vAmWfk1jCbpQ1fHdyGZBJVMbg= --approver alice
      timeclock-collector device rotate --store ledger.db --device clock-17 \\
          --signing-key <new base64 public key>
      timeclock-collector device revoke --store ledger.db --device clock-17 --reason stolen

    The signing key is the device's Ed25519 PUBLIC key (`timeclock-agent keygen` prints it).
    A revoked device id is never enrolled again; a key id belongs to one device only.
    """)


def register(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    p = sub.add_parser("device", help="enrol, rotate or revoke a time clock's signing key",
                       description="Manage the device registry kept in the ledger.",
                       epilog=EPILOG, formatter_class=argparse.RawDescriptionHelpFormatter)
    dsub = p.add_subparsers(dest="device_command", metavar="ACTION", required=True)

    def common(q: argparse.ArgumentParser) -> None:
        q.add_argument("--store", required=True, metavar="URL",
                       help="ledger: sqlite:///path, a path, or postgresql://…")
        q.add_argument("--device", required=True, help="device id (its certificate CN)")
        q.add_argument("--approver", help="who approved this change (recorded in the entry)")

    r = dsub.add_parser("register", help="enrol a device with its first signing key")
    common(r)
    r.add_argument("--site", required=True, help="site the device is installed at")
    r.add_argument("--signing-key", required=True, metavar="B64",
                   help="the device's Ed25519 public key, base64")
    r.set_defaults(func=cmd_register)

    o = dsub.add_parser("rotate", help="register a new signing key from a seq on")
    common(o)
    o.add_argument("--signing-key", required=True, metavar="B64", help="new public key")
    o.add_argument("--from-seq", type=int,
                   help="first seq signed with the new key (default: highest recorded + 1)")
    o.set_defaults(func=cmd_rotate)

    v = dsub.add_parser("revoke", help="revoke a device (or one --key of it), for good")
    common(v)
    v.add_argument("--reason", required=True, help="lost, stolen, decommissioned, …")
    v.add_argument("--key", metavar="KEY_ID", help="revoke only this key id")
    v.set_defaults(func=cmd_revoke)


def _now_us() -> int:
    return time.time_ns() // 1000


def cmd_register(args: argparse.Namespace) -> int:
    store = open_store(args.store)
    try:
        r = enroll(store, args.device, args.site, args.signing_key, now_us=_now_us(),
                   approver=args.approver)
    finally:
        store.close()
    print(f"enrolled {args.device} at {args.site}: ledger entry {r.idx}")
    return 0


def cmd_rotate(args: argparse.Namespace) -> int:
    store = open_store(args.store)
    try:
        r = rotate(store, args.device, args.signing_key, args.from_seq, now_us=_now_us(),
                   approver=args.approver)
    finally:
        store.close()
    print(f"rotated the key of {args.device}: ledger entry {r.idx}")
    return 0


def cmd_revoke(args: argparse.Namespace) -> int:
    store = open_store(args.store)
    try:
        r = revoke(store, args.device, args.reason, key_id=args.key, now_us=_now_us(),
                   approver=args.approver)
    finally:
        store.close()
    what = f"key {args.key} of {args.device}" if args.key else args.device
    print(f"revoked {what}: ledger entry {r.idx}")
    return 0
