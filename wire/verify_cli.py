"""``timeclock-verify``: an auditor's offline check of an audit bundle (docs/protocol.md §9,
§13.1), of a payroll export that carries proofs (§13.3), of an evidence pack, or of a
timesheet against its signed sidecar (§13.18).

Exit status: 0 everything verifies (sequence gaps are listed as findings), 1 the bundle fails
a check (the first failing idx and check are named), 2 usage or I/O error. Needs nothing but
the bundle and, ideally, the collector's public key obtained out of band; version 2 anchors
the verdict outside the collector: a checkpoint the auditor already holds
(``--trusted-checkpoint``) and a witness policy (``--witness``/``--quorum`` or
``--witness-policy``).
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from collections.abc import Sequence
from pathlib import Path

from wire.audit import Check
from wire.bundle import BundleAudit, BundleError, audit_bundle, dumps_report, parse_trusted
from wire.cli import run_command
from wire.errors import WireError
from wire.evidence import EvidenceError, check_registers, opened, verify_pack
from wire.export_proofs import (
    ExportProofError,
    dumps_export_report,
    print_export_report,
    verify_export,
)
from wire.keys import VerifyKey
from wire.note import MAX_NOTE_BYTES, Note
from wire.timesheet_proofs import TimesheetProofError, print_timesheet_report, verify_timesheet
from wire.witness_policy import PolicyError, WitnessPolicy

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

version 2 (docs/protocol.md §13): a bundle with checkpoints.v2.ndjson (one {"note"} per
line) has each checkpoint note checked against the Merkle tree of its ledger. Anchor the
verdict outside the collector with what you hold yourself:
  --trusted-checkpoint cp.txt   a checkpoint note you kept from earlier (e.g. the last
                                bundle's): the ledger must be consistent with it
  --witness VKEY --quorum N     the newest checkpoint needs N valid cosignatures by these
                                witnesses (C2SP vkeys); or --witness-policy FILE
  timeclock-verify ./bundle --collector-key B64 --trusted-checkpoint cp.txt \
      --witness-policy policy.txt
Every non-empty ledger needs a checkpoint covering its last entry.

verify a payroll export that carries proofs, alone (no bundle):
  timeclock-verify --export payroll.ndjson --collector-key B64 --witness-policy policy.txt

verify a timesheet against its signed sidecar (signature, SHA-256, every punch's inclusion
proof, and the hours recomputed from the proven punches with the sidecar's rules):
  timeclock-verify --timesheet nov.csv nov.csv.sidecar.json --collector-key B64

verify an evidence pack (manifest signature, every file, then its bundle as above):
  timeclock-verify --evidence evidence-2026-11.tar.gz --collector-key B64

checks (docs/protocol.md §9, §13): (0) keys (1) entry (2) entry-hash (3) prev (4) body
(5) fact (6) device-chain (7) checkpoint (8) checkpoint-v2 (9) trusted-checkpoint (10) witness
(11) coverage. Sequence gaps are findings, not failures.
"""


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="timeclock-verify", description=DESCRIPTION, epilog=EPILOG,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("bundle", metavar="BUNDLE_DIR", type=Path, nargs="?",
                   help="the audit bundle directory")
    p.add_argument("--export", metavar="FILE", type=Path,
                   help="verify a payroll export with proofs (NDJSON) instead of a bundle")
    p.add_argument("--evidence", metavar="PACK", type=Path,
                   help="verify an evidence pack (its folder or .tar.gz, made by "
                        "`timeclock-collector evidence`): the log key's signature on its "
                        "manifest, every file's SHA-256, and the audit bundle inside")
    p.add_argument("--timesheet", metavar=("FILE", "SIDECAR"), type=Path, nargs=2,
                   help="verify a timesheet (csv or ndjson) against its signed sidecar "
                        "(`timeclock-collector timesheet --log-key`, docs/protocol.md §13.18)")
    p.add_argument("--collector-key", metavar="B64", action="append", default=[],
                   help="collector log public key (standard base64, 32 bytes), obtained out of "
                        "band; repeat for a log whose key was rotated")
    p.add_argument("--origin", metavar="ORIGIN",
                   help="the log's origin (its checkpoints' first line); pins it")
    p.add_argument("--trusted-checkpoint", metavar="FILE", type=Path, action="append",
                   default=[], help="a checkpoint note you already hold; repeatable")
    p.add_argument("--witness", metavar="VKEY", action="append", default=[],
                   help="C2SP vkey of a witness whose cosignature counts; repeatable")
    p.add_argument("--quorum", metavar="N", type=int,
                   help="cosignatures the newest checkpoint needs (default: every --witness)")
    p.add_argument("--max-age", metavar="SECONDS", type=int,
                   help="count only cosignatures at most this old (see --now)")
    p.add_argument("--witness-policy", metavar="FILE", type=Path,
                   help="a witness policy file (docs/protocol.md §13.2) instead of "
                        "--witness/--quorum/--max-age")
    p.add_argument("--now", metavar="POSIX_S", type=int,
                   help="the time for --max-age (default: this machine's clock)")
    p.add_argument("--json", action="store_true", help="print the report as JSON")
    return p


def _policy(args: argparse.Namespace) -> WitnessPolicy | None:
    if args.witness_policy is not None:
        if args.witness or args.quorum is not None or args.max_age is not None:
            raise PolicyError("--witness-policy replaces --witness, --quorum and --max-age; "
                              "give one or the other")
        return WitnessPolicy.load(args.witness_policy)
    if not args.witness and args.quorum is None and args.max_age is None:
        return None
    if args.quorum is not None and args.quorum < 0:
        raise PolicyError("--quorum must be ≥ 0")
    return WitnessPolicy.from_args(args.witness, args.quorum, origin=args.origin,
                                   max_age_s=args.max_age)


def _trusted(paths: list[Path]) -> list[tuple[str, Note]]:
    out = []
    for path in paths:
        label = f"trusted checkpoint {path}"
        try:
            with path.open("rb") as f:
                data = f.read(MAX_NOTE_BYTES + 1)
        except OSError as e:
            raise BundleError(f"--trusted-checkpoint {path}: cannot read: {e.strerror}") from e
        out.append((label, parse_trusted(label, data)))
    return out


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
    if audit.v2 or r.trusted or audit.policy:
        print(f"v2 checkpoints: {r.checkpoints_v2} (origin {audit.origin or 'none'})  "
              f"trusted checkpoints: {r.trusted}  tree root: {r.root}", file=out)
    if r.size:
        print(f"covered by a checkpoint: {r.covered} of {r.size} entries", file=out)
    if audit.policy:
        w = audit.witness
        cosigned = ", ".join(w.cosigned) if w is not None and w.cosigned else "nobody"
        print(f"witness policy: {audit.policy}; newest checkpoint cosigned by: {cosigned}",
              file=out)
    if r.findings:
        print(f"findings ({len(r.findings) + r.omitted}):", file=out)
        for f in r.findings[:MAX_LISTED]:
            print(f"  {f}", file=out)
        hidden = len(r.findings) - MAX_LISTED + r.omitted
        if hidden > 0:
            print(f"  … and {hidden} more (use --json for the kept ones)", file=out)
    first = r.first_failure
    if first is None:
        also = [what for what, on in (
            ("the Merkle tree matches every v2 checkpoint", r.checkpoints_v2 > 0),
            ("the ledger extends every checkpoint you hold", r.trusted > 0),
            ("the witness quorum is met", audit.witness is not None)) if on]
        print("RESULT: OK: every entry, body, signature, device chain and checkpoint verifies"
              + "".join(f"; {a}" for a in also)
              + ("" if audit.pinned else " (against the UNPINNED key in keys.json)"), file=out)
        return
    where = f"idx {first.idx}" if first.idx is not None else "the bundle keys/checkpoints"
    if first.idx is None and first.check in (Check.TRUSTED, Check.WITNESS):
        where = "the checkpoints"
    print(f"RESULT: FAILED at {where}, check ({Check(first.check).number}) {first.check}: "
          f"{first.message}", file=out)


def main(argv: Sequence[str] | None = None) -> int:
    parser = _parser()
    args = parser.parse_args(argv)
    if sum(x is not None for x in (args.bundle, args.export, args.evidence,
                                   args.timesheet)) != 1:
        parser.error("give a BUNDLE_DIR, --export FILE or --evidence PACK, or --timesheet "
                     "FILE SIDECAR (one of them)")
    return run_command("timeclock-verify", lambda: _verify(args),
                       (BundleError, ExportProofError, EvidenceError, TimesheetProofError))


def _verify(args: argparse.Namespace) -> int:
    # A bundle that cannot be read at all is BundleError: exit 2 (EXIT_USAGE) via run_command.
    policy = _policy(args)
    now_s = args.now if args.now is not None else int(time.time())
    if args.export is not None:
        return _verify_export(args, policy, now_s)
    if args.evidence is not None:
        return _verify_evidence(args, policy, now_s)
    if args.timesheet is not None:
        return _verify_timesheet(args, policy, now_s)
    audit = audit_bundle(args.bundle, pinned=_pinned(args.collector_key),
                         trusted=_trusted(args.trusted_checkpoint), policy=policy,
                         origin=args.origin, now_s=now_s)
    if args.json:
        if not audit.pinned:
            print("WARNING: the collector key was NOT pinned out of band (--collector-key)",
                  file=sys.stderr)
        print(dumps_report(audit))
    else:
        _print_human(audit, args.bundle)
    return EXIT_OK if audit.ok else EXIT_FAILED


def _verify_export(args: argparse.Namespace, policy: WitnessPolicy | None, now_s: int) -> int:
    keys = _pinned(args.collector_key)
    if keys is None:
        raise BundleError("--export needs --collector-key: an export carries no keys of its own")
    if args.trusted_checkpoint:
        raise BundleError("--trusted-checkpoint applies to bundles; an export is checked "
                          "against the one checkpoint it carries")
    result = verify_export(args.export, keys, policy=policy, origin=args.origin, now_s=now_s)
    if args.json:
        print(dumps_export_report(result))
    else:
        print_export_report(result, args.export, sys.stdout)
    return EXIT_OK if result.ok else EXIT_FAILED


def _verify_timesheet(args: argparse.Namespace, policy: WitnessPolicy | None,
                      now_s: int) -> int:
    keys = _pinned(args.collector_key)
    if keys is None:
        raise TimesheetProofError("--timesheet needs --collector-key: the sidecar names its "
                                  "own key, which proves nothing; pin the one you hold")
    path, side = args.timesheet
    audit = verify_timesheet(path, side, keys, policy=policy, origin=args.origin, now_s=now_s)
    if args.json:
        print(json.dumps(audit.to_dict(), indent=2, sort_keys=True))
    else:
        print_timesheet_report(audit, path, sys.stdout)
    return EXIT_OK if audit.ok else EXIT_FAILED


def _verify_evidence(args: argparse.Namespace, policy: WitnessPolicy | None, now_s: int) -> int:
    keys = _pinned(args.collector_key)
    if keys is None:
        raise EvidenceError("--evidence needs --collector-key: the pack names its own key, "
                            "which proves nothing; pin the one you hold")
    with opened(args.evidence) as root:
        check = verify_pack(root, keys)
        print(f"evidence pack: {args.evidence} ({check.manifest.get('from')} to "
              f"{check.manifest.get('to')}, made {check.manifest.get('generated_at')})")
        for problem in check.problems:
            print(f"  PROBLEM: {problem}")
        if not check.ok:
            print("RESULT: FAILED: the pack is not what the log key signed")
            return EXIT_FAILED
        print(f"manifest: signed by log key {check.key_id}; "
              f"{len(check.manifest['files'])} files, each as listed")
        regs = check_registers(root, check.manifest)
        print(f"registers: {regs.deliveries} HR deliveries ({regs.acknowledged} acknowledged) "
              f"and {regs.witnesses} witnesses ({regs.current} current), checked against the "
              f"bundle")
        for note in regs.notes:
            print(f"  note: {note}")
        for problem in regs.problems:
            print(f"  PROBLEM: {problem}")
        if regs.problems:
            print("RESULT: FAILED: the registers disagree with the bundle")
            return EXIT_FAILED
        audit = audit_bundle(check.bundle, pinned=keys, trusted=_trusted(args.trusted_checkpoint),
                             policy=policy, origin=args.origin, now_s=now_s)
        size = check.manifest.get("ledger", {}).get("size")
        if audit.report.size != size:
            print(f"RESULT: FAILED: the manifest says ledger size {size}, the bundle holds "
                  f"{audit.report.size}")
            return EXIT_FAILED
        if args.json:
            print(dumps_report(audit))
        else:
            _print_human(audit, check.bundle)
    return EXIT_OK if audit.ok else EXIT_FAILED


if __name__ == "__main__":
    sys.exit(main())
