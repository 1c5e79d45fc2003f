"""``timeclock-collector access-review …``: the access review (CONTROLS.md D8, D13).

Without an action it lists every principal with its roles, last use and unused access
(collector.cli.token.cmd_review, as before). The actions run the periodic review of
collector.access.access_reviews: ``start`` lists every grant for a named reviewer in a
ledger entry, ``decide`` records keep or revoke per grant (a revoke is applied at once, as an
access entry citing the review), ``sign-off`` closes it, ``show`` prints reviews.
"""

from __future__ import annotations

import argparse
import json
import sys
import textwrap
from contextlib import AbstractContextManager

from collector.access import access_reviews
from collector.cli.args import add_kek_sources
from collector.cli.shared import access_store
from collector.cli.shared import cli_actor as _actor
from collector.cli.token import REVIEW_EPILOG, cmd_review
from collector.ledger.sqlbase import SQLStore
from wire.clock import now_us

EPILOG = REVIEW_EPILOG + textwrap.dedent("""
    the periodic review ([reviews] access_review_days, default 90; overdue alerts):
      timeclock-collector access-review start --store ledger.db --reviewer carol
      timeclock-collector access-review decide --store ledger.db --review arv-1a2b3c4d5e6f \\
          --grant alice keep --by carol
      timeclock-collector access-review decide --store ledger.db --review arv-1a2b3c4d5e6f \\
          --grant mallory revoke --by carol --note "left the team in October"
      timeclock-collector access-review decide --store ledger.db --review arv-1a2b3c4d5e6f \\
          --grant carol keep --by dave          # nobody decides their own grant
      timeclock-collector access-review sign-off --store ledger.db --review arv-1a2b3c4d5e6f \\
          --by carol --note "12 grants: 11 kept, 1 revoked"
      timeclock-collector access-review show --store ledger.db [--review ID] [--json]

    A revoke sets the principal's roles to none at once (an access entry roles.set citing
    the review); sign-off needs every grant decided.
    """)


def register(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    a = sub.add_parser("access-review", help="review API access: roles, last use, unused; "
                                             "the periodic keep/revoke review",
                       description="Access review (CONTROLS.md D8): principals, roles and "
                                   "last use; flags access unused for --unused-days. With an "
                                   "action: the periodic review signed off in the ledger.",
                       epilog=EPILOG, formatter_class=argparse.RawDescriptionHelpFormatter)
    a.add_argument("--store", metavar="URL",
                   help="ledger: sqlite:///path, a path, or postgresql://…")
    add_kek_sources(a)
    a.add_argument("--unused-days", type=int, default=90, metavar="N",
                   help="flag principals not used for N days (default 90)")
    a.add_argument("--json", action="store_true", help="machine-readable output")
    a.set_defaults(func=_listing)
    asub = a.add_subparsers(dest="review_action", metavar="ACTION", required=False)

    def action(name: str, help_: str) -> argparse.ArgumentParser:
        q = asub.add_parser(name, help=help_)
        # SUPPRESS: the action's --store does not overwrite one given before the action
        q.add_argument("--store", metavar="URL", default=argparse.SUPPRESS,
                       help="ledger: sqlite:///path, a path, or postgresql://…")
        add_kek_sources(q, again=True)
        return q

    s = action("start", "start a review of every grant for a named reviewer")
    s.add_argument("--reviewer", required=True, metavar="PRINCIPAL")
    s.set_defaults(func=cmd_start)

    d = action("decide", "keep or revoke one grant (a revoke is applied at once)")
    d.add_argument("--review", required=True, metavar="ID", help="arv-… from `start`")
    d.add_argument("--grant", required=True, metavar="PRINCIPAL", help="whose grant")
    d.add_argument("decision", choices=("keep", "revoke"))
    d.add_argument("--by", required=True, metavar="PRINCIPAL",
                   help="the reviewer (another principal for the reviewer's own grant)")
    d.add_argument("--note", help="why (recorded)")
    d.set_defaults(func=cmd_decide)

    o = action("sign-off", "close a review whose grants are all decided")
    o.add_argument("--review", required=True, metavar="ID")
    o.add_argument("--by", required=True, metavar="PRINCIPAL", help="the reviewer")
    o.add_argument("--note", required=True, help="what was reviewed and decided")
    o.set_defaults(func=cmd_sign_off)

    w = action("show", "reviews with their decisions and sign-off")
    w.add_argument("--review", metavar="ID", help="only this review")
    w.set_defaults(func=cmd_show)


def _need_store(args: argparse.Namespace) -> str:
    if not getattr(args, "store", None):
        print("timeclock-collector: error: access-review: --store is required",
              file=sys.stderr)
        raise SystemExit(2)
    return str(args.store)


def _listing(args: argparse.Namespace) -> int:
    _need_store(args)
    return cmd_review(args)


def _store(args: argparse.Namespace) -> AbstractContextManager[SQLStore]:
    return access_store(args, _need_store(args))


def _print(st: access_reviews.ReviewState) -> None:
    d = st.to_dict()
    print(f"{d['review']} [{d['status']}] reviewer {d['reviewer']} (entry {d['start_idx']})")
    for g in d["grants"]:
        dec = g["decision"]
        what = "UNDECIDED" if dec is None else f"{dec['decision']} by {dec['by']}"
        print(f"  {g['principal']:24} {', '.join(g['roles']) or '-':40} {what}")


def cmd_start(args: argparse.Namespace) -> int:
    with _store(args) as store:
        st = access_reviews.start(store, reviewer=args.reviewer, by=_actor(), now_us=now_us())
    _print(st)
    return 0


def cmd_decide(args: argparse.Namespace) -> int:
    with _store(args) as store:
        st = access_reviews.decide(store, args.review, args.grant, args.decision, by=args.by,
                                   now_us=now_us(), note=args.note)
    print(f"{args.review}: {args.grant} {args.decision} by {args.by}"
          + (" (roles revoked)" if args.decision == "revoke" else ""))
    print(f"{len(st.undecided())} grants left to decide")
    return 0


def cmd_sign_off(args: argparse.Namespace) -> int:
    with _store(args) as store:
        st = access_reviews.sign_off(store, args.review, by=args.by, note=args.note,
                                     now_us=now_us())
    assert st.signed is not None  # noqa: S101 - just signed off
    print(f"{args.review} signed off by {args.by} (entry {st.signed[0]}): "
          f"{st.signed[2].kept} kept, {len(st.signed[2].revoked)} revoked")
    return 0


def cmd_show(args: argparse.Namespace) -> int:
    with _store(args) as store:
        found = access_reviews.reviews(store.query)
    rows = [st for st in found.values() if args.review in (None, st.started.review)]
    if args.json:
        print(json.dumps({"items": [st.to_dict() for st in rows]}, indent=2, sort_keys=True))
    else:
        for st in rows:
            _print(st)
    return 0
