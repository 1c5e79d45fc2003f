"""``timeclock-collector alerts …`` and ``reviews …``: alert review and scheduled reviews
signed off in the system (issue 14 item 3; CONTROLS.md D13).

Every acknowledgement, resolution and sign-off is a ``review`` ledger entry (docs/protocol.md
§7.2) naming its reviewer (``--by``) with a note; collector.records.reviews holds the rules.
"""

from __future__ import annotations

import argparse
import json
import textwrap
from pathlib import Path

from collector.cli.args import add_kek_sources
from collector.cli.shared import open_args_store
from collector.records import reviews
from collector.service.config import load_config
from wire.bodies_review import REVIEW_KINDS
from wire.clock import now_us

ALERTS_EPILOG = textwrap.dedent("""\
    examples:
      timeclock-collector alerts list --store ledger.db --open
      timeclock-collector alerts ack 812 --store ledger.db --by alice \\
          --note "clock-0017 was moved to the loading dock; checking with facilities"
      timeclock-collector alerts resolve 812 --store ledger.db --by alice \\
          --note "facilities confirm the move (ticket 4411); not an attack"

    An alert is open until it is resolved; resolving needs an acknowledgement first. An
    alert that names a principal (the actor it is about) is resolved by someone else.
    """)

REVIEWS_EPILOG = textwrap.dedent("""\
    examples:
      timeclock-collector reviews due --store ledger.db [--config collector.toml] [--json]
      timeclock-collector reviews sign-off daily-alerts --store ledger.db --by alice \\
          --note "12 alerts, all resolved; 2 tickets opened" [--period 2026-11-30]
      timeclock-collector reviews sign-off access-sample --store ledger.db --by alice \\
          --note "25 entries checked: each request matched a ticket or a shift"
      timeclock-collector reviews show 9120 --store ledger.db

    daily-alerts: the alerts of one UTC day (YYYY-MM-DD), overdue daily_grace_s after the
    day ends. access-sample: sample_size access entries of one ISO week (YYYY-Www) drawn
    with the OS's CSPRNG; the entry lists the idx drawn (`reviews show` re-performs it).
    --period defaults to the oldest period due. --config reads [reviews] (defaults without).
    """)


def _store_arg(p: argparse.ArgumentParser, *, config: bool = True) -> None:
    p.add_argument("--store", required=True, metavar="URL",
                   help="ledger: sqlite:///path, a path, or postgresql://…")
    add_kek_sources(p, config=config)       # config=False: the parser has its own --config


def _review_args(p: argparse.ArgumentParser, *, config: bool = True) -> None:
    _store_arg(p, config=config)
    p.add_argument("--by", required=True, metavar="PRINCIPAL", help="the named reviewer")
    p.add_argument("--note", required=True, help="what was checked and decided")


def register(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    fmt = argparse.RawDescriptionHelpFormatter
    al = sub.add_parser("alerts", help="list, acknowledge and resolve alerts",
                        description="Alerts are ledger entries; reviewers acknowledge and "
                                    "resolve them with entries of their own.",
                        epilog=ALERTS_EPILOG, formatter_class=fmt)
    asub = al.add_subparsers(dest="alerts_command", metavar="ACTION", required=True)
    ls = asub.add_parser("list", help="alerts with their review state",
                         epilog=ALERTS_EPILOG, formatter_class=fmt)
    _store_arg(ls)
    ls.add_argument("--open", action="store_true", help="only those not resolved")
    ls.add_argument("--json", action="store_true", help="one JSON object per line")
    ls.set_defaults(func=cmd_list)
    for name, what in (("ack", "acknowledge"), ("resolve", "resolve")):
        q = asub.add_parser(name, help=f"{what} the alert entry IDX",
                            epilog=ALERTS_EPILOG, formatter_class=fmt)
        q.add_argument("idx", type=int, metavar="IDX", help="the alert entry's idx")
        _review_args(q)
        q.set_defaults(func=cmd_review, event=name)

    rv = sub.add_parser("reviews", help="scheduled reviews: what is due, sign-offs",
                        description="Scheduled reviews (daily alerts, weekly access-log "
                                    "sample) signed off as ledger entries.",
                        epilog=REVIEWS_EPILOG, formatter_class=fmt)
    rsub = rv.add_subparsers(dest="reviews_command", metavar="ACTION", required=True)
    due = rsub.add_parser("due", help="periods due or overdue for sign-off",
                          epilog=REVIEWS_EPILOG, formatter_class=fmt)
    _store_arg(due, config=False)
    due.add_argument("--config", type=Path, help="collector.toml ([reviews] schedule)")
    due.add_argument("--json", action="store_true", help="one JSON object per line")
    due.set_defaults(func=cmd_due)
    so = rsub.add_parser("sign-off", help="sign off one period of a scheduled review",
                         epilog=REVIEWS_EPILOG, formatter_class=fmt)
    so.add_argument("review", choices=sorted(REVIEW_KINDS))
    _review_args(so, config=False)
    so.add_argument("--period", help="YYYY-MM-DD (daily-alerts) or YYYY-Www (access-sample)")
    so.add_argument("--config", type=Path, help="collector.toml ([reviews] sample_size)")
    so.set_defaults(func=cmd_sign_off)
    show = rsub.add_parser("show", help="re-perform an access-sample sign-off from its entry",
                           epilog=REVIEWS_EPILOG, formatter_class=fmt)
    show.add_argument("idx", type=int, metavar="IDX")
    _store_arg(show)
    show.set_defaults(func=cmd_show)


def _settings(path: Path | None) -> reviews.ReviewSettings:
    if path is None:
        return reviews.ReviewSettings()
    return load_config(path).reviews or reviews.ReviewSettings()


def cmd_list(args: argparse.Namespace) -> int:
    store = open_args_store(args)
    try:
        found = reviews.alerts(store, status="open" if args.open else None)
    finally:
        store.close()
    for a in found:
        d = a.to_dict()
        if args.json:
            print(json.dumps(d, sort_keys=True, ensure_ascii=False))
            continue
        who = ""
        if a.acked is not None:
            who += f" ack={a.acked.by}@{a.acked_idx}"
        if a.resolved is not None:
            who += f" resolved={a.resolved.by}@{a.resolved_idx}"
        print(f"{a.idx}\t{d['alert']}\tsev={d['severity']}\t{d['device'] or '-'}\t"
              f"{a.status}{who}\t{d['detail']}")
    return 0


def cmd_review(args: argparse.Namespace) -> int:
    store = open_args_store(args)
    try:
        idx, state = reviews.review_alert(store, args.event, args.idx, by=args.by,
                                          note=args.note, now_us=now_us())
    finally:
        store.close()
    print(f"alert {args.idx} {state.status} by {args.by} (review entry idx {idx})")
    return 0


def cmd_due(args: argparse.Namespace) -> int:
    settings = _settings(args.config)
    store = open_args_store(args)
    try:
        found = reviews.due(store, settings, now_us=now_us())
    finally:
        store.close()
    for d in found:
        if args.json:
            print(json.dumps(d.to_dict(), sort_keys=True))
        else:
            print(f"{d.review}\t{d.period}\t{'overdue' if d.overdue else 'due'}")
    return 0


def cmd_sign_off(args: argparse.Namespace) -> int:
    settings = _settings(args.config)
    store = open_args_store(args)
    try:
        done = reviews.sign_off(store, args.review, by=args.by, note=args.note,
                                now_us=now_us(), settings=settings, period=args.period)
    finally:
        store.close()
    b = done.body
    extra = (f": {len(b['sampled'])} of {b['population']} access entries sampled "
             f"({', '.join(map(str, b['sampled'])) or 'none'})"
             if args.review == "access-sample" else
             f": {b['alerts']} alert(s), {len(b['unresolved'])} not resolved")
    print(f"{args.review} {b['period']} signed off by {args.by} (idx {done.idx}){extra}")
    return 0


def cmd_show(args: argparse.Namespace) -> int:
    store = open_args_store(args)
    try:
        check = reviews.check_sample(store, args.idx)
    finally:
        store.close()
    for p in check.problems:
        print(f"SAMPLE MISMATCH: {p}")
    if check.ok:
        print(f"access sample at idx {args.idx}: re-performed, every sampled idx is an access "
              f"entry of its period and the population matches")
    return 0 if check.ok else 1
