"""``timeclock-collector breakglass …``: sealed, time-boxed break-glass access (CONTROLS.md
D11; docs/operations.md "Break-glass access"; the rules are collector.access.breakglass).
"""

from __future__ import annotations

import argparse
import json
import sys
import textwrap
from pathlib import Path

from collector.access.breakglass import (
    BreakGlass,
    BreakGlassSettings,
    read_break_glass_section,
)
from collector.access.principals import ROLES, PrincipalError, get_principal
from collector.cli.args import add_store
from collector.cli.shared import access_store as _store
from collector.cli.shared import cli_actor as _actor
from collector.cli.shared import config_section
from wire.clock import now_us

EPILOG = textwrap.dedent("""\
    examples:
      timeclock-collector breakglass seal --store ledger.db --principal oncall.alice \\
          --role admin --config /etc/timeclock/collector.toml   # prints the secret ONCE
      timeclock-collector breakglass open --store ledger.db --id bg-1a2b3c4d5e6f \\
          --principal oncall.alice --reason "API admin locked out" --case INC-4411 \\
          --secret-file -                 # the envelope's secret on stdin
      timeclock-collector breakglass review --store ledger.db --id bg-1a2b3c4d5e6f \\
          --by bob --note "checked every access entry of the window against INC-4411"
      timeclock-collector breakglass list --store ledger.db [--json]

    A seal is prepared in advance: the roles it adds, for one named principal, and a secret
    printed once (put it in a sealed envelope or the safe; only its SHA-256 is recorded).
    Opening it (here or POST /v1/breakglass/open) needs the secret, a reason and a case
    reference; it lasts at most [breakglass] max_duration_s (default 1 h, never more than
    4 h), raises a severity-1 alert at once, and stays overdue-review until another
    principal records the post-use review. A seal opens once.
    """)

def register(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    p = sub.add_parser("breakglass", help="sealed, time-boxed break-glass access (D11)",
                       description="Seal, open, review and list break-glass grants.",
                       epilog=EPILOG, formatter_class=argparse.RawDescriptionHelpFormatter)
    bsub = p.add_subparsers(dest="breakglass_command", metavar="ACTION", required=True)

    s = bsub.add_parser("seal", help="prepare a grant for a principal (secret printed once)")
    add_store(s, config=False)
    s.add_argument("--principal", required=True, help="who may open it")
    s.add_argument("--role", action="append", required=True, choices=sorted(ROLES),
                   help="role it adds while open (repeat)")
    s.add_argument("--config", type=Path, metavar="TOML",
                   help="collector config: [breakglass] max_duration_s (default 3600)")
    s.set_defaults(func=cmd_seal)

    o = bsub.add_parser("open", help="open a sealed grant (its severity-1 alert at once)")
    add_store(o, config=False)
    o.add_argument("--id", required=True, metavar="BG_ID", help="bg-… from `breakglass list`")
    o.add_argument("--principal", required=True, help="the principal it is sealed for")
    o.add_argument("--reason", required=True, help="why (recorded)")
    o.add_argument("--case", required=True, help="incident or ticket reference")
    o.add_argument("--secret-file", required=True, metavar="PATH",
                   help="file holding the sealed secret ('-': stdin)")
    o.add_argument("--config", type=Path, metavar="TOML", help="collector config")
    o.set_defaults(func=cmd_open)

    r = bsub.add_parser("review", help="record the post-use review (not the user or opener)")
    add_store(r)
    r.add_argument("--id", required=True, metavar="BG_ID")
    r.add_argument("--by", required=True, metavar="PRINCIPAL", help="the reviewer")
    r.add_argument("--note", required=True, help="what was checked")
    r.set_defaults(func=cmd_review)

    ls = bsub.add_parser("list", help="seals, openings and reviews")
    add_store(ls)
    ls.add_argument("--json", action="store_true", help="machine-readable output")
    ls.set_defaults(func=cmd_list)


def _settings(path: Path | None) -> BreakGlassSettings:
    return (BreakGlassSettings() if path is None
            else config_section(path, "breakglass", read_break_glass_section))


def cmd_seal(args: argparse.Namespace) -> int:
    with _store(args) as store:
        issued = BreakGlass(store, _settings(args.config)).seal(
            args.principal, args.role, by=_actor(), now_us=now_us())
    print(f"sealed {issued.id} for {args.principal}: {', '.join(issued.seal.roles)} for at "
          f"most {issued.seal.max_s} s (entry {issued.idx})")
    print("secret (shown once; seal it in an envelope or the safe):", file=sys.stderr)
    print(issued.secret)
    return 0


def _secret(path: str) -> str:
    try:
        text = sys.stdin.readline() if path == "-" else Path(path).read_text()
    except OSError as e:
        raise PrincipalError(f"cannot read {path}: {e.strerror or e}") from e
    return text.strip()


def cmd_open(args: argparse.Namespace) -> int:
    secret = _secret(args.secret_file)
    with _store(args) as store:
        p = get_principal(store, args.principal)
        if p is None:
            raise PrincipalError(f"no principal {args.principal!r}")
        state = BreakGlass(store, _settings(args.config)).open(
            args.id, secret, principal=p, by=_actor(), reason=args.reason, case=args.case,
            now_us=now_us())
    print(f"{args.id} OPEN for {args.principal} until {state['opened']['until']} µs "
          f"(entry {state['opened']['idx']}); a severity-1 alert was recorded; a post-use "
          f"review by another principal is required")
    return 0


def cmd_review(args: argparse.Namespace) -> int:
    with _store(args) as store:
        state = BreakGlass(store).review(args.id, by=args.by, note=args.note, now_us=now_us())
    print(f"{args.id} reviewed by {args.by} (entry {state['review']['idx']})")
    return 0


def cmd_list(args: argparse.Namespace) -> int:
    with _store(args) as store:
        rows = BreakGlass(store).list(now_us=now_us())
    if args.json:
        print(json.dumps({"items": rows}, indent=2, sort_keys=True))
        return 0
    for r in rows:
        opened = r.get("opened")
        what = "" if opened is None else f"; opened by {opened['by']} case {opened['case']}"
        print(f"{r['id']} {r['status']:15} {r['principal']} [{', '.join(r['roles'])}]{what}")
    print(f"{len(rows)} break-glass grants, "
          f"{sum(1 for r in rows if r['status'] == 'overdue-review')} awaiting review")
    return 0
