"""``timeclock-collector retention``: retention policies, legal holds, and the retention run
(control D15; docs/operations.md "Retention and legal holds").

Every change is a ledger entry (``policy``, ``hold``) that the store and every verifier judge
by one rule (wire.bodies_retention): a policy applies only once a second, different principal
approved it; a hold is released only when a principal other than the one who asked approves.
``plan`` reads only; ``run`` is one transaction (collector.records.retention).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import textwrap
import time
from typing import Any

from collector import CollectorError
from collector.cli.args import add_command
from collector.cli.shared import open_args_store
from collector.ledger.base import EventFact
from collector.records import retention
from collector.records.exports import iso, parse_time
from wire.bodies_retention import RECORDS
from wire.clock import now_us as clock_now_us

DEFAULT_DAYS = {"punch": 2192, "rejection": 2192}
"""CONTROLS §2's recommended default (docs/compliance.md): punches 6 years from the entry
(NY Labor Law §661; beyond FLSA, CA and ES), and the quarantine with the audit trail, 6 years."""

STALL_ENV = "TIMECLOCK_TEST_RETENTION_STALL"
"""Tests only: the name of a run step after which ``run`` stops inside its transaction (it
prints ``stalled after <step>`` and waits to be killed)."""

DESCRIPTION = ("Retention policies, legal holds and the retention run (control D15). Every "
               "change is a ledger entry that the store and every verifier judge: a policy "
               "applies only once a second principal approved it; a hold is released only "
               "when a principal other than the one who asked approves; `plan` reads only, "
               "`run` is one transaction that leaves one evidence entry.")

EPILOG = textwrap.dedent("""\
    Retention removes personal data when the policy that governs it allows, never sooner and
    never under a legal hold, and leaves one evidence entry per run; the chain, checkpoints and
    proofs still verify (the hashes stay, DESIGN.md §6).

    1. a policy per record kind (punch, rejection), for all sites, one site, or a jurisdiction
       (a label and its sites); it applies once a second principal approved it:
         timeclock-collector retention policy propose --store URL --name punches-6y \\
             --record punch --by alice                 # --days: default 2192 (6 years)
         timeclock-collector retention policy approve --store URL --proposal 812 --by bob
       (defaults, CONTROLS §2 in docs/compliance.md: punches 6 years = 2192 days; a
       jurisdiction's statutory minimum plus a limitation buffer, e.g. ES 4 years)
    2. legal holds keep what they name (all criteria given must match: --device, --site,
       --credential, --employee, --from/--until on the punch time):
         timeclock-collector retention hold place --store URL --name smith-v-acme \\
             --case 2026-CV-0142 --reason "litigation hold" --site hq --by carol
         timeclock-collector retention hold release --store URL --hold 905 \\
             --reason "case closed" --by carol
         timeclock-collector retention hold approve-release --store URL --request 977 --by dave
    3. see what a run would remove, and what each hold keeps, then run it (the systemd timer
       timeclock-retention.timer runs it daily):
         timeclock-collector retention plan --store URL [--at 2032-01-01T00:00:00Z]
         timeclock-collector retention run --store URL
    `retention list` shows the policies and holds.
    """)


def _add_by(p: argparse.ArgumentParser, what: str) -> None:
    p.add_argument("--by", required=True, metavar="PRINCIPAL", help=f"who {what} (recorded)")


def register(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    fmt = argparse.RawDescriptionHelpFormatter
    r = sub.add_parser("retention", help="retention policies, legal holds, plan and run (D15)",
                       description=textwrap.fill(DESCRIPTION, 90), epilog=EPILOG,
                       formatter_class=fmt)
    rs = r.add_subparsers(dest="retention_command", metavar="SUBCOMMAND", required=True)
    _register_policy(rs)
    _register_hold(rs)
    _register_runs(rs)


def _register_policy(rs: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    fmt = argparse.RawDescriptionHelpFormatter
    pol = rs.add_parser("policy", help="propose or approve a retention policy",
                        epilog=EPILOG, formatter_class=fmt)
    ps = pol.add_subparsers(dest="policy_command", metavar="ACTION", required=True)
    pp = add_command(ps, "propose", help="propose a period for one record kind and scope",
                     epilog=EPILOG, func=cmd_policy_propose)
    pp.add_argument("--name", required=True, help="policy name, e.g. punches-6y")
    pp.add_argument("--record", required=True, choices=sorted(RECORDS))
    pp.add_argument("--days", type=int,
                    help="retention period in days (default: the recommended default of "
                         "docs/compliance.md, 6 years = 2192 days for punches and rejections)")
    scope = pp.add_mutually_exclusive_group()
    scope.add_argument("--site", help="only this site (default: all sites)")
    scope.add_argument("--jurisdiction", help="a jurisdiction label; give its --sites")
    pp.add_argument("--sites", help="comma-separated sites of --jurisdiction")
    _add_by(pp, "proposes it")
    pa = add_command(ps, "approve", help="approve a proposal (a different principal)",
                     epilog=EPILOG, func=cmd_policy_approve)
    pa.add_argument("--proposal", required=True, type=int, help="idx of the proposal entry")
    _add_by(pa, "approves it")


def _register_hold(rs: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    fmt = argparse.RawDescriptionHelpFormatter
    hold = rs.add_parser("hold", help="place or release a legal hold", epilog=EPILOG,
                         formatter_class=fmt)
    hs = hold.add_subparsers(dest="hold_command", metavar="ACTION", required=True)
    hp = add_command(hs, "place", help="keep what the criteria name from every run",
                     epilog=EPILOG, func=cmd_hold_place)
    hp.add_argument("--name", required=True)
    hp.add_argument("--case", required=True, help="case or matter id")
    hp.add_argument("--reason", required=True)
    for opt in ("device", "site", "credential", "employee"):
        hp.add_argument(f"--{opt}")
    hp.add_argument("--from", dest="from_ts", metavar="TIME",
                    help="punch time from (ISO 8601 with offset, or µs)")
    hp.add_argument("--until", dest="until_ts", metavar="TIME", help="punch time until")
    _add_by(hp, "places it")
    hr = add_command(hs, "release", help="ask for a hold's release (needs a second approver)",
                     epilog=EPILOG, func=cmd_hold_release)
    hr.add_argument("--hold", required=True, type=int, help="idx of the hold entry")
    hr.add_argument("--reason", required=True)
    _add_by(hr, "asks")
    ha = add_command(hs, "approve-release",
                     help="approve a release request (another principal)", epilog=EPILOG,
                     func=cmd_hold_approve)
    ha.add_argument("--request", required=True, type=int, help="idx of the release request")
    _add_by(ha, "approves the release")


def _register_runs(rs: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    ls = add_command(rs, "list", help="policies and holds", epilog=EPILOG, func=cmd_list)
    ls.add_argument("--json", action="store_true")
    pl = add_command(rs, "plan", help="what a run would remove, and what each hold keeps",
                     epilog=EPILOG, func=cmd_plan)
    pl.add_argument("--at", metavar="TIME", help="plan as of this time (default: now)")
    pl.add_argument("--json", action="store_true")
    rn = add_command(rs, "run", help="remove what the plan says, leave one evidence entry",
                     epilog=EPILOG, func=cmd_run)
    rn.add_argument("--json", action="store_true")


def _append(args: argparse.Namespace, kind: str, body: dict[str, Any]) -> int:
    store = open_args_store(args)
    try:
        [res] = store.append([EventFact(kind, body)], now_us=clock_now_us())
    finally:
        store.close()
    print(f"recorded {kind} entry {res.idx}")
    return 0


def cmd_policy_propose(args: argparse.Namespace) -> int:
    days = args.days if args.days is not None else DEFAULT_DAYS[args.record]
    body: dict[str, Any] = {"event": "proposed", "policy": args.name, "record": args.record,
                            "period_days": days, "scope": "all", "by": args.by}
    if args.site:
        body.update(scope="site", site=args.site)
    elif args.jurisdiction:
        if not args.sites:
            raise CollectorError("--jurisdiction needs --sites (the sites it covers)")
        body.update(scope="jurisdiction", jurisdiction=args.jurisdiction,
                    sites=[s.strip() for s in args.sites.split(",") if s.strip()])
    elif args.sites:
        raise CollectorError("--sites goes with --jurisdiction")
    return _append(args, "policy", body)


def cmd_policy_approve(args: argparse.Namespace) -> int:
    return _append(args, "policy", {"event": "approved", "proposal": args.proposal,
                                    "by": args.by})


def cmd_hold_place(args: argparse.Namespace) -> int:
    body: dict[str, Any] = {"event": "placed", "hold": args.name, "case": args.case,
                            "reason": args.reason, "by": args.by}
    for opt in ("device", "site", "credential", "employee"):
        if getattr(args, opt):
            body[opt] = getattr(args, opt)
    for opt in ("from_ts", "until_ts"):
        if getattr(args, opt):
            body[opt] = parse_time(getattr(args, opt))
    return _append(args, "hold", body)


def cmd_hold_release(args: argparse.Namespace) -> int:
    return _append(args, "hold", {"event": "release-requested", "hold": args.hold,
                                  "reason": args.reason, "by": args.by})


def cmd_hold_approve(args: argparse.Namespace) -> int:
    return _append(args, "hold", {"event": "released", "request": args.request,
                                  "by": args.by})


def cmd_list(args: argparse.Namespace) -> int:
    store = open_args_store(args)
    try:
        rules = retention.load_rules(store)
    finally:
        store.close()
    policies: list[dict[str, Any]] = [
        {"idx": i, "policy": p.name, "record": p.record, "scope": p.scope,
                 "site": p.site, "jurisdiction": p.jurisdiction, "sites": list(p.sites),
                 "period_days": p.period_days, "proposed_by": p.by,
                 "approved_idx": rules.approvals.get(i),
                 "current": i in rules.current.values()}
                for i, p in sorted(rules.proposals.items())]
    holds: list[dict[str, Any]] = [
        {"idx": i, "hold": h.name, "case": h.case, "reason": h.reason, "placed_by": h.by,
              "criteria": {k: v for k, v in (("device", h.device), ("site", h.site),
                                             ("credential", h.credential),
                                             ("employee", h.employee), ("from_ts", h.from_ts),
                                             ("until_ts", h.until_ts)) if v is not None},
              "released_idx": rules.released.get(i)}
             for i, h in sorted(rules.holds.items())]
    if args.json:
        json.dump({"policies": policies, "holds": holds}, sys.stdout, indent=2)
        print()
        return 0
    for p in policies:
        state = ("in force" if p["current"] else "replaced") if p["approved_idx"] is not None \
            else "awaiting approval"
        print(f"policy {p['idx']}: {p['policy']} — {p['record']} {p['period_days']} days, "
              f"{p['scope']} {p['site'] or p['jurisdiction'] or ''}".rstrip()
              + f", proposed by {p['proposed_by']}: {state}")
    for h in holds:
        state = "released" if h["released_idx"] is not None else "ACTIVE"
        crit = ", ".join(f"{k}={v}" for k, v in h["criteria"].items())
        print(f"hold {h['idx']}: {h['hold']} (case {h['case']}) — {crit}; placed by "
              f"{h['placed_by']}: {state}")
    if not policies and not holds:
        print("no retention policies and no holds: nothing is ever removed")
    return 0


def _print_plan(p: retention.Plan) -> None:
    print(f"retention plan at {iso(p.at_us)}:")
    if not p.policies:
        print("  no approved policy: nothing is removed")
    for pp in p.policies:
        total = sum(pp.remove.values())
        sites = ", ".join(f"{s}: {n}" for s, n in sorted(pp.remove.items())) or "none"
        print(f"  policy {pp.name} (idx {pp.idx}, {pp.record}, {pp.scope}, {pp.period_days} "
              f"days): removes {total} recorded before {iso(pp.cutoff)} ({sites})")
    for h in p.holds:
        print(f"  hold {h.name} (case {h.case}, idx {h.idx}) keeps {h.keeps}")
    for what, n in sorted(p.ungoverned.items()):
        print(f"  no policy governs {what}: {n} kept")
    if any(p.unpurged):
        print(f"  projection rows of bodies removed before, to purge: punches "
              f"{p.unpurged[0]}, quarantine {p.unpurged[1]}")


def cmd_plan(args: argparse.Namespace) -> int:
    at = parse_time(args.at) if args.at else clock_now_us()
    store = open_args_store(args)
    try:
        p = retention.plan(store, at)
    finally:
        store.close()
    if args.json:
        json.dump(p.to_dict(), sys.stdout, indent=2)
        print()
    else:
        _print_plan(p)
    return 0


def _stall_hook() -> retention.StepHook | None:
    stall = os.environ.get(STALL_ENV)
    if not stall:
        return None

    def hook(step: str) -> None:
        if step == stall:
            print(f"stalled after {step}", file=sys.stderr, flush=True)
            deadline = time.monotonic() + 600
            while time.monotonic() < deadline:   # until the test kills this process
                time.sleep(0.2)
    return hook


def cmd_run(args: argparse.Namespace) -> int:
    store = open_args_store(args)
    try:
        result = retention.run(store, clock_now_us(), hook=_stall_hook())
    finally:
        store.close()
    if args.json:
        json.dump(result.to_dict(), sys.stdout, indent=2)
        print()
        return 0
    _print_plan(result.plan)
    if result.entry_idx is None:
        print("nothing to remove: no entry written")
    else:
        print(f"removed {len(result.plan.remove)} bodies; evidence: retention entry "
              f"{result.entry_idx}")
    print(f"purged projection rows: punches {result.purged_punches}, quarantine "
          f"{result.purged_quarantine}")
    return 0
