"""``python -m lab``: a whole demo site on this machine, end to end (lab/site.py).

The lab is a tool for people trying timeclock out and for the end-to-end tests; no installed
package imports it.
"""

from __future__ import annotations

import argparse
import logging
import sys
import textwrap
from collections.abc import Sequence
from pathlib import Path

from collector import CollectorError
from lab.extras import Extras, Options
from lab.site import run_demo

EPILOG = textwrap.dedent("""\
    example (what scripts/demo.sh runs after scripts/bootstrap.sh):
      python -m lab --dir run/site --duration-s 60 --clocks 3
    the whole product (any of the options alone, too):
      python -m lab --api --postgres --collectors 2 --witness

    Builds a throwaway CA, a Mosquitto broker with mutual TLS, a collector with a SQLite
    ledger and N clocks (real `timeclock-agent run` processes: an rdm6300 reader and a
    serial-line reader fed through ptys, then simulated readers). Stops the broker for a
    while in the middle (the clocks keep recording), waits for the queues to drain, prints
    a summary per clock, verifies the ledger and writes an audit bundle that
    `timeclock-verify` checks. Everything lives under --dir (deleted and rebuilt on each
    run); Ctrl-C stops every process it started.
    """)


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="python -m lab",
        description="Run a whole timeclock site on this machine and verify what it recorded.",
        epilog=EPILOG, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--dir", type=Path, default=Path("run/site"),
                   help="where everything is generated (%(default)s; rebuilt each run)")
    p.add_argument("--duration-s", type=float, default=60.0,
                   help="how long the clocks tap badges (%(default)s)")
    p.add_argument("--clocks", type=int, default=3, help="number of clocks (%(default)s)")
    p.add_argument("--outage-s", type=float, default=10.0,
                   help="broker outage in the middle, at most a third of the run "
                        "(%(default)s)")
    p.add_argument("--api", action="store_true",
                   help="also serve the HR API (HTTPS) and show one request with a bearer "
                        "token made by `token create`")
    p.add_argument("--postgres", action="store_true",
                   help="keep the ledger in a PostgreSQL started with initdb/pg_ctl (as the "
                        "postgres user when root; needs the postgresql package)")
    p.add_argument("--collectors", type=int, default=1, metavar="N",
                   help="collector processes on the shared subscription (%(default)s)")
    p.add_argument("--witness", action="store_true",
                   help="run a timeclock-witness that every collector asks to cosign its "
                        "checkpoints")
    return p


def _cmd(args: argparse.Namespace) -> int:
    if not 1 <= args.clocks <= 50:
        raise CollectorError("--clocks must be between 1 and 50")
    if not 5 <= args.duration_s <= 3600:
        raise CollectorError("--duration-s must be between 5 and 3600")
    if not 1 <= args.collectors <= 4:
        raise CollectorError("--collectors must be between 1 and 4")
    options = Options(api=args.api, postgres=args.postgres, collectors=args.collectors,
                      witness=args.witness)
    extras = None if options == Options() else Extras(options)
    return run_demo(args.dir, duration_s=args.duration_s, clocks=args.clocks,
                    outage_s=args.outage_s, extras=extras)


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.INFO,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    try:
        return _cmd(args)
    except CollectorError as e:
        print(f"lab: error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return 130
