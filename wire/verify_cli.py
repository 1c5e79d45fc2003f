"""``timeclock-verify``: an auditor's offline check of an audit bundle (docs/protocol.md §9).

Exit status: 0 everything verifies (sequence gaps are listed as findings), 1 the bundle fails
a check (the first failing idx and check are named), 2 usage or I/O error. Needs nothing but
the bundle and, ideally, the collector's public key obtained out of band.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from pathlib import Path

from wire.audit import Check
from wire.bundle import BundleAudit, BundleError, audit_bundle, dumps_report
from wire.cli import run_command
from wire.errors import WireError
from wire.keys import VerifyKey

EXIT_OK = 0
EXIT_FAILED = 1
EXIT_USAGE = 2
MAX_LISTED = 50

DESCRIPTION = """\
Verify a timeclock audit bundle offline: every entry hash and body hash, every punch
signature (under the device key the ledger registered for that seq), every device chain,
every signed checkpoint. Exits 0 if all verifies, 1 naming the first failing ledger idx and
check, 2 on usage or read errors.
"""

EPILOG = """\
the bundle (made by `timeclock-collector export`) is a directory with:
  ledger.ndjson       one {"entry","hash","body"} per line, idx order
  checkpoints.ndjson  one {"checkpoint","sig"} per line, signed by the collector log key
  keys.json           {"collector":[{"key","public"}]}: the log keys, as the bundle claims

pin the collector key: get its base64 public key from the collector operator through a
channel you trust (not with the bundle), then
  timeclock-verify ./bundle --collector-key Kay64UG8yvCyLhqU000LxzYeUm0L/hLIl5S8kyKWbdc=
Without --collector-key the keys in keys.json are used, which only shows that the bundle is
consistent with itself: whoever made it could also have made its key.

checks (docs/protocol.md §9): (0) keys (1) entry (2) entry-hash (3) prev (4) body (5) fact
(6) device-chain (7) checkpoint. Sequence gaps are findings, not failures.
"""


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="timeclock-verify", description=DESCRIPTION, epilog=EPILOG,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("bundle", metavar="BUNDLE_DIR", type=Path, help="the audit bundle directory")
    p.add_argument("--collector-key", metavar="B64", action="append", default=[],
                   help="collector log public key (standard base64, 32 bytes), obtained out of "
                        "band; repeat for a log whose key was rotated")
    p.add_argument("--json", action="store_true", help="print the report as JSON")
    return p


def _pinned(values: list[str]) -> list[VerifyKey] | None:
    if not values:
        return None
    keys = []
    for v in values:
        try:
            keys.append(VerifyKey.from_b64(v.strip()))
        except WireError as e:
            raise BundleError(f"--collector-key {v[:60]!r}: not a base64 Ed25519 public key "
                              f"({e})") from e
    return keys


def _print_human(audit: BundleAudit, bundle: Path) -> None:
    r = audit.report
    out = sys.stdout
    print(f"bundle: {bundle}", file=out)
    if audit.pinned:
        print(f"collector key: pinned ({', '.join(audit.bundle_keys) or 'none listed'} in "
              f"keys.json)", file=out)
    else:
        print("WARNING: the collector key was NOT pinned out of band. keys.json inside the "
              "bundle was trusted, so this only shows that the bundle is consistent with "
              "itself. Re-run with --collector-key <base64 public key from the collector "
              "operator>.", file=sys.stderr)
    print(f"entries: {r.entries} (size {r.size}, head {r.head})", file=out)
    print(f"punches: {r.punches}  devices: {r.devices}  checkpoints: {r.checkpoints}", file=out)
    if r.findings:
        print(f"findings ({len(r.findings) + r.omitted}):", file=out)
        for f in r.findings[:MAX_LISTED]:
            print(f"  {f}", file=out)
        hidden = len(r.findings) - MAX_LISTED + r.omitted
        if hidden > 0:
            print(f"  … and {hidden} more (use --json for the kept ones)", file=out)
    first = r.first_failure
    if first is None:
        print("RESULT: OK: every entry, body, signature, device chain and checkpoint verifies"
              + ("" if audit.pinned else " (against the UNPINNED key in keys.json)"), file=out)
        return
    where = f"idx {first.idx}" if first.idx is not None else "the bundle keys/checkpoints"
    print(f"RESULT: FAILED at {where}, check ({Check(first.check).number}) {first.check}: "
          f"{first.message}", file=out)


def main(argv: Sequence[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    return run_command("timeclock-verify", lambda: _verify(args), (BundleError,))


def _verify(args: argparse.Namespace) -> int:
    # A bundle that cannot be read at all is BundleError: exit 2 (EXIT_USAGE) via run_command.
    audit = audit_bundle(args.bundle, pinned=_pinned(args.collector_key))
    if args.json:
        if not audit.pinned:
            print("WARNING: the collector key was NOT pinned out of band (--collector-key)",
                  file=sys.stderr)
        print(dumps_report(audit))
    else:
        _print_human(audit, args.bundle)
    return EXIT_OK if audit.ok else EXIT_FAILED


if __name__ == "__main__":
    sys.exit(main())
