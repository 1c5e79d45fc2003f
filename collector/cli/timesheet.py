"""``timeclock-collector timesheet``: punches paired into shifts with hours per day, week and
pay period, as plain CSV (with a sidecar binding it to the ledger), NDJSON or per-employee
timecards (collector.records.timesheets holds the rules)."""

from __future__ import annotations

import argparse
import json
import sys
import textwrap
from datetime import UTC, date, datetime
from pathlib import Path

from collector import CollectorError
from collector.cli.args import add_command
from collector.cli.ledger import _private_out, _record_export, _v2_signer
from collector.cli.shared import store_of
from collector.ingest.checkpoints import load_log_key
from collector.ledger.sqlbase import PunchQuery, SQLStore
from collector.records.corrections import Corrections
from collector.records.exports import parse_time
from collector.records.timesheet_close import close_period
from collector.records.timesheet_export import Sheets, load, proof_size, sidecar, signed_sidecar
from collector.records.timesheets import (
    PERIODS,
    ROUNDINGS,
    Rules,
    period_of,
    render,
    timecard,
)
from wire.clock import now_us

FORMATS = ("csv", "ndjson", "timecard")
EPILOG = textwrap.dedent("""\
    examples:
      timeclock-collector timesheet --store ledger.db \\
          --from 2026-11-01T00:00Z --to 2026-12-01T00:00Z \\
          --out nov.csv --purpose "November payroll"      # nov.csv + nov.csv.sidecar.json
      timeclock-collector timesheet --store ledger.db \
          --from 2026-11-01T00:00Z --to 2026-12-01T00:00Z --out nov.csv \
          --log-key /etc/timeclock/log.key       # the sidecar signed, with inclusion proofs
      timeclock-verify --timesheet nov.csv nov.csv.sidecar.json --collector-key B64
      timeclock-collector timesheet --store ledger.db \\
          --from 2026-11-16T00:00Z --to 2026-12-01T00:00Z \\
          --format timecard --employee E-1001 --period semimonthly
      timeclock-collector timesheet --store ledger.db \\
          --from 2026-11-01T00:00Z --to 2026-12-01T00:00Z \\
          --round-minutes 15 --grace-minutes 5 --format ndjson

    Shifts pair in/out punches per employee in the employee's time zone (people directory);
    an overnight shift belongs to the day it began; hours are UTC differences, so DST nights
    count the hours lived. Missing and duplicate punches are exceptions (NDJSON, timecards)
    and a shift with a missing punch counts no hours until it is corrected. Approved
    corrections are applied and named in each row. --from/--to are device times (UTC unless
    they carry an offset), --to exclusive. Every run leaves an access entry (who, why, what).
    With --log-key the ledger is checkpointed (v2) when its head is not yet, the timesheet is
    made at that checkpoint, and the sidecar carries every punch and correction it rests on
    with its inclusion proof, signed by the log key: an auditor or payroll provider checks
    it offline and recomputes the hours (timeclock-verify --timesheet). The sidecar then
    holds the signed punches, which carry badge credentials: keep it like an audit bundle.
    """)


CLOSE_EPILOG = textwrap.dedent("""\
    examples:
      timeclock-collector timesheet-close --store ledger.db --period 2026-11-16 \\
          --pay-period semimonthly --by hr-anna --approved-by payroll-ben \\
          --reason "November second half, checked against the rota"

    Closes the pay period that holds the local day --period (with the rules given, the same
    options as `timesheet`): ONE access entry of type timesheet-close names the period, the
    rules, both principals (dual control: --approved-by must differ from --by) and holds
    every employee's timecard of the period with its SHA-256. A period closes once, and only
    after its last day has ended everywhere (UTC-12). `hr-push` then delivers the closed
    timecards, and a later correction as an amendment naming the card it replaces.
    """)


def _add_rules(p: argparse.ArgumentParser, *, kind_flag: str) -> None:
    r = Rules()
    p.add_argument("--round-minutes", type=int, default=r.round_minutes, metavar="N",
                   help="round shift starts and ends to N minutes (0: off)")
    p.add_argument("--rounding", choices=ROUNDINGS, default=r.rounding)
    p.add_argument("--grace-minutes", type=int, default=r.grace_minutes, metavar="N",
                   help="a start up to N min after / an end up to N min before a boundary "
                        "counts as the boundary")
    p.add_argument("--duplicate-s", type=int, default=r.duplicate_s, metavar="S",
                   help="the same action again within S seconds is a duplicate")
    p.add_argument("--max-shift-h", type=int, default=r.max_shift_h, metavar="H",
                   help="a shift open longer is a missing out punch")
    p.add_argument(kind_flag, dest="period_kind", choices=PERIODS, default=r.period,
                   help="pay period")
    p.add_argument("--week-start", type=int, default=r.week_start, metavar="0-6",
                   help="first day of the week, 0 = Monday")
    p.add_argument("--period-anchor", default=r.period_anchor.isoformat(), metavar="DATE",
                   help="biweekly: a date inside a first pay period")


def register(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    p = add_command(sub, "timesheet", help="timesheets: shifts, hours, exceptions, timecards",
                    epilog=EPILOG, func=cmd_timesheet)
    p.add_argument("--from", dest="since", required=True, metavar="TIME",
                   help="first device time (ISO 8601 with a UTC offset, or µs)")
    p.add_argument("--to", dest="until", required=True, metavar="TIME",
                   help="end device time, exclusive")
    p.add_argument("--employee", metavar="ID", help="one employee only")
    p.add_argument("--site", help="punches of one site's clocks only")
    p.add_argument("--format", choices=FORMATS, default="csv")
    p.add_argument("--out", type=Path, metavar="FILE",
                   help="write here (0600) and, for csv/ndjson, FILE.sidecar.json")
    p.add_argument("--force", action="store_true", help="overwrite --out")
    p.add_argument("--purpose", default="not stated", metavar="TEXT",
                   help="why the timesheet is made (recorded in the access entry)")
    p.add_argument("--log-key", type=Path, metavar="FILE",
                   help="the log signing key: sign the sidecar and carry an inclusion proof "
                        "of every punch (needs --out, csv or ndjson)")
    p.add_argument("--origin", metavar="ORIGIN",
                   help="with --log-key: the log's origin (default: the ledger's own)")
    _add_rules(p, kind_flag="--period")
    # Its own command, not `timesheet close`: `timesheet` requires --from/--to, and an
    # optional sub-command would make argparse stop requiring them.
    c = add_command(sub, "timesheet-close", help="close a pay period (dual control); hr-push "
                    "delivers its timecards", epilog=CLOSE_EPILOG, func=cmd_close)
    c.add_argument("--period", dest="day", required=True, metavar="DATE",
                   help="a local day (YYYY-MM-DD) inside the pay period to close")
    c.add_argument("--by", required=True, metavar="PRINCIPAL", help="who closes it")
    c.add_argument("--approved-by", required=True, metavar="PRINCIPAL",
                   help="who approves: another principal (dual control)")
    c.add_argument("--reason", default="pay period closed", metavar="TEXT",
                   help="recorded in the close entry")
    _add_rules(c, kind_flag="--pay-period")


def _rules(args: argparse.Namespace) -> Rules:
    try:
        anchor = date.fromisoformat(args.period_anchor)
    except ValueError as e:
        raise CollectorError(f"--period-anchor {args.period_anchor!r}: use YYYY-MM-DD") from e
    return Rules(round_minutes=args.round_minutes, rounding=args.rounding,
                 grace_minutes=args.grace_minutes, duplicate_s=args.duplicate_s,
                 max_shift_h=args.max_shift_h, week_start=args.week_start,
                 period=args.period_kind, period_anchor=anchor)


def cmd_close(args: argparse.Namespace) -> int:
    rules = _rules(args)
    try:
        day = date.fromisoformat(args.day)
    except ValueError as e:
        raise CollectorError(f"--period {args.day!r}: a local day, YYYY-MM-DD") from e
    with store_of(args) as store:
        idx, body = close_period(store, day=day, rules=rules,
                                 corrections=Corrections(store).applied_complete(),
                                 by=args.by, approved_by=args.approved_by,
                                 reason=args.reason, now_us=now_us())
    p = body["period"]
    print(json.dumps({"entry": idx, "period": p, "timecards": len(body["timecards"]),
                      "digests": body["digests"]}, sort_keys=True))
    print(f"timesheet-close: {p['first']} – {p['last']} ({p['kind']}) closed at ledger idx "
          f"{idx} with {len(body['timecards'])} timecard(s); hr-push delivers them",
          file=sys.stderr)
    return 0


def _render(sheets: Sheets, fmt: str, rules: Rules, since: int, until: int) -> tuple[str, int]:
    if fmt in ("csv", "ndjson"):
        return render(sheets.sheets, fmt)
    first = period_of(_day(since), rules)
    last = period_of(_day(until - 1), rules)
    cards = []
    for sheet in sheets.sheets:
        period = first
        while period[0] <= last[0]:
            cards.append(timecard(sheet, period, rules))
            period = period_of(period[1].fromordinal(period[1].toordinal() + 1), rules)
    return "\f\n".join(cards), len(cards)


def _day(us: int) -> date:
    return datetime.fromtimestamp(us / 1_000_000, UTC).date()


def cmd_timesheet(args: argparse.Namespace) -> int:
    rules = _rules(args)
    since, until = parse_time(args.since), parse_time(args.until)
    if until <= since:
        raise CollectorError(f"--to {args.until} must be after --from {args.since}")
    key = None
    if args.log_key is not None:
        if args.out is None or args.format == "timecard":
            raise CollectorError("--log-key signs the sidecar of a csv or ndjson file: give "
                                 "--out FILE (and no --format timecard)")
        key = load_log_key(args.log_key)
    with store_of(args) as store:
        size = None
        if key is not None:
            size = store.head()[0]
            signer = _v2_signer(store, argparse.Namespace(log_key=[args.log_key],
                                                          origin=args.origin))
            if signer is not None and size > 0 and proof_size_or_zero(store) < size:
                signer(size)
            size = proof_size(store)
        corrections = Corrections(store).applied_complete()
        sheets = load(store, PunchQuery(since=since, until=until, site=args.site), rules,
                      corrections, employee=args.employee, size=size)
        text, rows = _render(sheets, args.format, rules, since, until)
        generated = now_us()
        if args.out is None:
            sys.stdout.write(text)
        else:
            if key is not None:
                meta = signed_sidecar(store, sheets, csv_bytes=text.encode(), rows=rows,
                                      rules=rules, generated_at=generated, fmt=args.format,
                                      key=key, employee=args.employee)
            elif args.format != "timecard":
                meta = sidecar(sheets, csv_bytes=text.encode(), rows=rows, rules=rules,
                               generated_at=generated, fmt=args.format)
            try:
                with _private_out(args.out, force=args.force) as f:
                    f.write(text)
                if args.format != "timecard":
                    side = args.out.with_name(args.out.name + ".sidecar.json")
                    with _private_out(side, force=args.force) as f:
                        f.write(json.dumps(meta, indent=2, sort_keys=True) + "\n")
            except FileExistsError as e:
                raise CollectorError(f"{e.filename}: exists; use --force to overwrite") from e
        _record_export(store, argparse.Namespace(purpose=args.purpose, format=args.format,
                                                 out=args.out or "stdout", bundle=None),
                       what="timesheet", rows=rows,
                       query={"since": since, "until": until, "site": args.site,
                              "employee": args.employee, "signed": key is not None})
    print(f"timesheet: {len(sheets.sheets)} employee(s), {rows} {args.format} row(s) from "
          f"{sheets.punches} punch(es); {sum(sheets.unassigned.values())} punch(es) of badges "
          "held by nobody left out"
          + (f"; sidecar signed, at checkpoint size {size}" if key is not None else ""),
          file=sys.stderr)
    return 0


def proof_size_or_zero(store: SQLStore) -> int:
    try:
        return proof_size(store)
    except CollectorError:
        return 0
