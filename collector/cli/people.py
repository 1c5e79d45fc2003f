"""``timeclock-collector people …`` and ``badge …``: the people directory (issue 12).

Every change is an ``employee`` or ``badge`` ledger entry (docs/protocol.md §7.2); the
commands print ids, credentials and intervals, never names to the log (``people show`` prints
the record it was asked for on stdout).
"""

from __future__ import annotations

import argparse
import json
import sys
import textwrap
from pathlib import Path

from collector.cli.args import add_command
from collector.cli.shared import open_args_store
from collector.people import directory
from collector.people.csv_import import import_files, parse_instant
from collector.people.rules import interval
from wire.clock import now_us

PEOPLE_EPILOG = textwrap.dedent("""\
    examples:
      timeclock-collector people import --store ledger.db --employees staff.csv --dry-run
      timeclock-collector people import --store ledger.db --employees staff.csv \\
          --badges badges.csv
      timeclock-collector people list --store ledger.db [--site hq] [--json]
      timeclock-collector people show --store ledger.db E1001

    staff.csv (header row; columns in any order; status, active_from, left_on optional):
      employee_id,name,department,site,timezone,manager_id
      E1000,Grace Hopper,Operations,hq,America/New_York,
      E1001,Ada Lovelace,Operations,hq,America/New_York,E1000

    badges.csv (one row per holding period [valid_from, valid_until); status says how it
    ended: assigned (still held), returned, lost or blocked at valid_until):
      credential,employee_id,valid_from,valid_until,status
      em4100:0012345678,E1001,2026-01-05,,assigned
      em4100:0000000042,E1000,2025-03-01T08:00:00-05:00,2026-01-04T17:00:00-05:00,lost

    Times: ISO 8601 with an offset, µs since the epoch, or a date (midnight in the employee's
    time zone). An import is all or nothing: any bad row is reported with its line number
    and nothing is recorded. Importing the same files again records nothing; a changed row
    records one entry. Employees missing from the file are not touched.
    """)

BADGE_EPILOG = textwrap.dedent("""\
    examples:
      timeclock-collector badge assign --store ledger.db em4100:0012345678 E1001 \\
          --from 2026-01-05T08:00:00+01:00 [--until 2026-12-31T00:00:00Z]
      timeclock-collector badge lost --store ledger.db em4100:0012345678 [--at TIME]
      timeclock-collector badge block --store ledger.db em4100:0012345678 --at TIME
      timeclock-collector badge return --store ledger.db em4100:0012345678 [--at TIME]

    One credential has at most one holder at any instant: an assignment overlapping another
    is refused with that holder's employee id and interval. From a loss or block on, punches
    with the badge resolve to nobody (badge_status lost / blocked) until it is returned;
    after a return they are unknown until it is assigned again. An assignment may be
    retroactive: punches already recorded resolve to the holder the next time they are read.
    --at defaults to now.
    """)


def register(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    fmt = argparse.RawDescriptionHelpFormatter
    people = sub.add_parser("people", help="the people directory: import, list, show",
                            description="Employees and their badges, kept as ledger entries.",
                            epilog=PEOPLE_EPILOG, formatter_class=fmt)
    psub = people.add_subparsers(dest="people_command", metavar="ACTION", required=True)
    imp = add_command(psub, "import", help="import employees (and badges) from CSV",
                      epilog=PEOPLE_EPILOG, func=cmd_import)
    imp.add_argument("--employees", type=Path, metavar="CSV",
                     help="employees: employee_id,name,department,site,timezone,manager_id")
    imp.add_argument("--badges", type=Path, metavar="CSV",
                     help="badges: credential,employee_id,valid_from,valid_until,status")
    imp.add_argument("--dry-run", action="store_true",
                     help="print what would be recorded; record nothing")
    ls = add_command(psub, "list", help="list employees (id, department, site, status)",
                     epilog=PEOPLE_EPILOG, func=cmd_list)
    ls.add_argument("--site")
    ls.add_argument("--department")
    ls.add_argument("--manager", metavar="ID", help="only the manager's direct reports")
    ls.add_argument("--json", action="store_true", help="one JSON object per line")
    show = add_command(psub, "show", help="one employee with their badge periods",
                       epilog=PEOPLE_EPILOG, func=cmd_show)
    show.add_argument("employee_id", metavar="ID")

    badge = sub.add_parser("badge", help="assign a badge, or report it lost, blocked, returned",
                           description="Badge credentials and who holds them when.",
                           epilog=BADGE_EPILOG, formatter_class=fmt)
    bsub = badge.add_subparsers(dest="badge_command", metavar="ACTION", required=True)
    assign = add_command(bsub, "assign",
                         help="give CREDENTIAL to EMPLOYEE over [--from, --until)",
                         epilog=BADGE_EPILOG, func=cmd_badge, event="assigned")
    assign.add_argument("credential", metavar="CREDENTIAL")
    assign.add_argument("employee_id", metavar="EMPLOYEE")
    assign.add_argument("--from", dest="start", required=True, metavar="TIME")
    assign.add_argument("--until", metavar="TIME", help="exclusive end (default: open)")
    for name, event, what in (("lost", "lost", "reported lost"), ("block", "blocked", "blocked"),
                              ("return", "returned", "given back")):
        q = add_command(bsub, name, help=f"CREDENTIAL {what} at --at (default now)",
                        epilog=BADGE_EPILOG, func=cmd_badge, event=event)
        q.add_argument("credential", metavar="CREDENTIAL")
        q.add_argument("--at", dest="start", metavar="TIME")
        q.add_argument("--employee", dest="employee_id", metavar="ID",
                       help="the holder it is expected from (refused if someone else holds it)")
        if event != "returned":
            q.add_argument("--until", metavar="TIME", help="end of the status (default: open)")


def cmd_import(args: argparse.Namespace) -> int:
    if args.employees is None and args.badges is None:
        print("people import: give --employees CSV and/or --badges CSV", file=sys.stderr)
        return 2
    store = open_args_store(args)
    try:
        result = import_files(store, args.employees, args.badges, now_us=now_us(),
                              dry_run=args.dry_run)
    finally:
        store.close()
    verb = "would record" if args.dry_run else "recorded"
    for i, ch in enumerate(result.changes):
        idx = "" if args.dry_run else f" (idx {result.recorded[i].idx})"
        print(f"{ch.summary}{idx}")
    print(f"{verb} {len(result.changes)} change(s) from {result.employees_rows} employee "
          f"row(s) and {result.badge_rows} badge row(s)", file=sys.stderr)
    return 0


def cmd_list(args: argparse.Namespace) -> int:
    from collector.ledger import people_tables  # noqa: PLC0415 - the one read this needs

    store = open_args_store(args)
    try:
        people_tables.ensure_schema(store)
        rows = people_tables.employees(store, site=args.site, department=args.department,
                                       manager_id=args.manager)
    finally:
        store.close()
    for e in rows:
        if args.json:
            print(json.dumps(directory.employee_dict(e), sort_keys=True, ensure_ascii=False))
        else:
            print(f"{e.employee_id}\t{e.department}\t{e.site}\t{e.status}\t"
                  f"manager={e.manager_id or '-'}")
    return 0


def cmd_show(args: argparse.Namespace) -> int:
    store = open_args_store(args)
    try:
        e = directory.employee(store, args.employee_id)
        badges = directory.badges_of(store, e.employee_id)
    finally:
        store.close()
    print(json.dumps(directory.employee_dict(e, badges), sort_keys=True, indent=2,
                     ensure_ascii=False))
    return 0


def cmd_badge(args: argparse.Namespace) -> int:
    store = open_args_store(args)
    try:
        tz = None
        if args.employee_id is not None:
            tz = directory.employee(store, args.employee_id).timezone
        now = now_us()
        start = now if args.start is None else parse_instant(args.start, tz)
        until = parse_instant(args.until, tz) if getattr(args, "until", None) else None
        done = directory.badge_event(store, args.event, args.credential, start_us=start,
                                     until_us=until, employee_id=args.employee_id,
                                     now_us=now)
    finally:
        store.close()
    if done is None:
        print(f"badge {args.credential}: already {args.event} "
              f"{interval(start, until)}; nothing recorded", file=sys.stderr)
    else:
        print(f"{done.change.summary} (idx {done.idx})")
    return 0
