"""``timeclock-collector hr-push``: deliver recorded punches to an HR system's webhook, in
ledger order, at least once, each delivery recorded on the ledger (collector.ingest.hr_push)."""

from __future__ import annotations

import argparse
import signal
import socket
import sys
import textwrap
from pathlib import Path
from types import FrameType

from collector import CollectorError
from collector.cli.args import add_command
from collector.cli.shared import store_of
from collector.ingest.detectors_webhooks import NAME_RE, WebhookEndpoint, load_secret
from collector.ingest.hr_push import HrPush
from collector.records.corrections import Corrections
from collector.records.timesheet_close import TimecardParcel, parcels

EPILOG = textwrap.dedent("""\
    examples:
      timeclock-collector hr-push --store sqlite:///var/lib/timeclock/ledger.db \\
          --url https://hr.acme.example/timeclock/punches --secret-file /etc/timeclock/hr.secret
      timeclock-collector hr-push --store URL --url URL --secret-file F --once   # a timer

    Punches go out in ledger order in batches (--batch), each POST signed with HMAC-SHA256
    over "<timestamp>.<body>" (X-Timeclock-Signature: sha256=<hex>, X-Timeclock-Timestamp)
    and named by X-Timeclock-Delivery (<name>:<first idx>-<last idx>, the same on every
    retry: deduplicate by it). Each punch carries the employee id, never the badge. A 2xx
    answer is recorded as an 'hr-delivery' access entry, which is also the cursor: a restart
    resumes after the last one. A batch is retried --attempts times with back-off; giving
    up records 'hr-delivery-failed' and (with --once) exits 1; the next run retries it.

    Closed pay periods (`timesheet-close`) are delivered once the punches are caught up:
    each close's timecards in one POST (type "timecards", X-Timeclock-Delivery
    <name>:close-<idx>), and when a timecard of a delivered period changes afterwards (a
    correction, a late punch) the new card as an amendment naming the digest it replaces
    (type "timecard-amendments", <name>:close-<idx>:amend-<hash>); each recorded as an
    'hr-delivery' entry. --no-timecards delivers punches only.
    """)


def register(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    p = add_command(sub, "hr-push", help="deliver punches to an HR webhook (signed, "
                    "at least once, recorded)", epilog=EPILOG, func=cmd_hr_push)
    p.add_argument("--url", required=True, help="https:// (http:// only to loopback)")
    p.add_argument("--secret-file", required=True, type=Path, metavar="FILE",
                   help="the HMAC key, a 0600 file of at least 16 bytes")
    p.add_argument("--name", default="hr", help="the endpoint's name (its cursor)")
    p.add_argument("--identity", default=socket.gethostname(),
                   help="the 'collector' field of each delivery")
    p.add_argument("--once", action="store_true", help="deliver until caught up, then exit")
    p.add_argument("--interval-s", type=float, default=30.0, metavar="S",
                   help="wait between polls when caught up")
    p.add_argument("--batch", type=int, default=500, metavar="N", help="punches per POST")
    p.add_argument("--attempts", type=int, default=8, metavar="N")
    p.add_argument("--backoff-initial-s", type=float, default=1.0, metavar="S")
    p.add_argument("--backoff-max-s", type=float, default=300.0, metavar="S")
    p.add_argument("--timeout-s", type=float, default=10.0, metavar="S")
    p.add_argument("--no-timecards", action="store_true",
                   help="deliver punches only, not the timecards of closed pay periods")


def _endpoint(args: argparse.Namespace) -> WebhookEndpoint:
    from urllib.parse import urlsplit  # noqa: PLC0415 - only here

    if not NAME_RE.fullmatch(args.name):
        raise CollectorError(f"--name {args.name!r} must match {NAME_RE.pattern}")
    u = urlsplit(args.url)
    if u.scheme != "https" and not (u.scheme == "http" and
                                    u.hostname in ("127.0.0.1", "::1", "localhost")):
        raise CollectorError(f"--url {args.url[:80]!r}: must be https:// (http:// only to a "
                             "loopback receiver)")
    for flag, value, lo, hi in (("--batch", args.batch, 1, 10_000),
                                ("--attempts", args.attempts, 1, 100),
                                ("--interval-s", args.interval_s, 0.05, 86_400),
                                ("--backoff-initial-s", args.backoff_initial_s, 0.01, 3600),
                                ("--backoff-max-s", args.backoff_max_s, 0.01, 86_400),
                                ("--timeout-s", args.timeout_s, 0.1, 120)):
        if not lo <= value <= hi:
            raise CollectorError(f"{flag} {value}: must be between {lo} and {hi}")
    return WebhookEndpoint(args.name, args.url, args.secret_file, 1, args.timeout_s,
                           args.attempts, args.backoff_initial_s, args.backoff_max_s)


def cmd_hr_push(args: argparse.Namespace) -> int:
    ep = _endpoint(args)
    secret = load_secret(args.secret_file)
    with store_of(args) as store:
        def owed(since: int | None) -> list[TimecardParcel]:
            return parcels(store, ep.name, Corrections(store).applied_complete,
                           since_idx=since)

        push = HrPush(store, ep, secret, args.identity, batch=args.batch,
                      timecards=None if args.no_timecards else owed)

        def stop(_sig: int, _frame: FrameType | None) -> None:
            push.stopping.set()
        signal.signal(signal.SIGTERM, stop)
        signal.signal(signal.SIGINT, stop)
        out = push.run(once=args.once, interval_s=args.interval_s)
    gave_up = "; a batch was given up (recorded; the next run retries it)" if out.failed else ""
    print(f"hr-push {ep.name}: {out.delivered} punch(es) delivered in {out.batches} "
          f"batch(es), {out.parcels} timecard parcel(s){gave_up}", file=sys.stderr)
    return 1 if out.failed else 0
