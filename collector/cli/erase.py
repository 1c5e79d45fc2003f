"""``timeclock-collector erase``: erasure of one person's data by destroying their data keys
(DESIGN.md §8.6; control D15; docs/operations.md "Encryption at rest and erasure").

One transaction (collector.records.erasure): refused when one principal asks and approves or a
legal hold keeps the person; else one ``shred`` entry, the bodies and projection rows removed,
the keys blanked. The ledger, its proofs and its bundles still verify afterwards. ``--plan``:
the same transaction rolled back, printing what it would have done.
"""

from __future__ import annotations

import argparse
import json
import sys
import textwrap
from pathlib import Path

from collector import CollectorError
from collector.cli.args import add_store
from collector.cli.shared import config_section, open_args_store
from collector.ledger import KEK_ENV
from collector.records import erasure
from wire.clock import now_us as clock_now_us
from wire.errors import WireError
from wire.sealed import SealKey, load_seal_key

EPILOG = textwrap.dedent(f"""\
    The ledger must be encrypted at rest (its KEK: --kek, else ${KEK_ENV}, else [ledger]
    kek of --config); the person's bodies were sealed under their own data keys, so
    destroying the keys erases them while every hash, checkpoint and proof stays valid.

      timeclock-collector erase --store sqlite:///var/lib/timeclock/ledger.db \\
          --kek file:/etc/timeclock/ledger.kek --employee E1001 \\
          --reason "GDPR art. 17 request" --case DSR-2026-0007 --by alice --approved-by bob

    Run it with --plan first (same arguments): the erasure runs in its transaction and
    is rolled back, so it records and changes nothing, and it is refused exactly as the
    run would be (dual control, a legal hold, a ledger needing migrate: the same message,
    exit 2). Its JSON is the run's without "entry" and with "plan": true — "keys" the data
    keys it would destroy, "entries"/"count" the entries whose bodies go, "purged" how
    many punches, quarantined messages, badge periods and corrections it would purge,
    "purged_quarantine" the rejection entry idx of each of those messages (never their
    bytes), "unjudged_quarantine" those it would keep and why; stderr has a one-line
    summary. A run that follows it does what it said, unless the ledger changed between.

    Quarantined sealed envelopes are searched inside with the seal keys given
    (--seal-key FILE, repeated for earlier, rotated keys; default: [collector] seal_key of
    --config); one no key opens is kept and listed under "unjudged_quarantine".

    A ledger made by an older collector is refused until `timeclock-collector migrate
    --store URL` has brought its triggers (the older ones refuse what an erasure writes).

    Then make the freed pages leave the files: SQLite `sqlite3 ledger.db 'VACUUM'` (with
    serve stopped) and a WAL checkpoint; PostgreSQL `VACUUM FULL bodies, punches,
    tc_data_keys` as the owner. Backups taken before keep the data until they expire.
    """)


def register(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    p = sub.add_parser("erase", help="erase one person's data by destroying their data keys",
                       description="Erase one employee's personal data (D15): their data "
                                   "keys are destroyed and one shred entry records it.",
                       epilog=EPILOG, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_store(p)
    p.add_argument("--employee", required=True, metavar="ID", help="the employee id")
    p.add_argument("--reason", required=True, help="why (recorded in the shred entry)")
    p.add_argument("--case", required=True, metavar="ID", help="the request's case id")
    p.add_argument("--by", required=True, metavar="PRINCIPAL", help="who asks")
    p.add_argument("--approved-by", required=True, metavar="PRINCIPAL",
                   help="who approves: another principal (dual control)")
    p.add_argument("--seal-key", type=Path, action="append", default=[], metavar="FILE",
                   help="an X25519 seal key (current or earlier) opening quarantined sealed "
                        "envelopes; repeat for several (default: [collector] seal_key of "
                        "--config)")
    p.add_argument("--plan", action="store_true",
                   help="show what the erasure would do, or why it would be refused; "
                        "records and changes nothing (see below)")
    p.set_defaults(func=cmd_erase)


def _seal_keys(args: argparse.Namespace) -> list[SealKey]:
    """The keys of --seal-key, else the config's ``[collector] seal_key`` (if any)."""
    paths: list[Path] = list(args.seal_key)
    config: Path | None = getattr(args, "config", None)
    if not paths and config is not None:
        found = config_section(config, "collector",
                               lambda s: s.path("seal_key", config.parent))
        paths = [] if found is None else [found]
    try:
        return [load_seal_key(p) for p in paths]
    except (WireError, OSError) as e:
        raise CollectorError(f"seal key: {e}") from e


def cmd_erase(args: argparse.Namespace) -> int:
    seal_keys = _seal_keys(args)
    store = open_args_store(args)
    try:
        res = erasure.erase(store, employee=args.employee, reason=args.reason,
                            case=args.case, by=args.by, approved_by=args.approved_by,
                            now_us=clock_now_us(), seal_keys=seal_keys, plan=args.plan)
    finally:
        store.close()
    print(json.dumps(res.to_dict(), sort_keys=True))
    kept = "would keep" if res.plan else "kept"
    for idx, why in res.unjudged:
        print(f"{kept} the quarantined message of entry {idx}: {why}; the erasure cannot tell "
              f"whose it is", file=sys.stderr)
    if res.plan:
        print(summary(args.employee, res), file=sys.stderr)
    return 0


def _spans(spans: tuple[tuple[int, int], ...]) -> str:
    return ", ".join(str(a) if a == b else f"{a}..{b}" for a, b in spans)


def summary(employee: str, res: erasure.ErasureResult) -> str:
    """The plan's one line for the operator (the JSON on stdout has every figure)."""
    q = res.quarantine_entries
    rejections = f" (rejection entries {', '.join(map(str, q))})" if q else ""
    return (f"plan, nothing recorded or changed: the erasure of employee {employee} would "
            f"destroy {len(res.keys)} data key(s), remove the bodies of {res.count} "
            f"entries ({_spans(res.entries)}), purge {res.purged_punches} punch(es), "
            f"{res.erased_badges} badge period(s), {res.deleted_corrections} correction(s) "
            f"and {res.purged_quarantine} quarantined message(s){rejections}, and keep "
            f"{len(res.unjudged)} quarantined message(s) it cannot judge; run the same "
            f"command without --plan to erase")
