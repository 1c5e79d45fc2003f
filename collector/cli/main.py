"""``timeclock-collector``: one entry point; each command group lives in its own module.

A command module exposes ``register(subparsers)`` which adds its parser(s) and sets
``func(args) -> int`` as the parser default.
"""

from __future__ import annotations

import argparse
import importlib
import logging
import sys
from collections.abc import Sequence

from collector import CollectorError

EPILOG = """\
a site in a few commands (each has --help with examples; docs/operations.md walks through it):
  timeclock-collector ca init /etc/timeclock/ca
  timeclock-collector ca issue-server --ca /etc/timeclock/ca --dns broker.example.org
  timeclock-collector broker-config --ca /etc/timeclock/ca --out /var/lib/timeclock/broker \\
      --port 8883 --collector main
  timeclock-collector device enroll --csr clock-0017.csr --signing-key clock-0017.pub ...
  timeclock-collector serve --config /etc/timeclock/collector.toml
  timeclock-collector verify --store sqlite:///var/lib/timeclock/ledger.db --log-key-pub B64
  timeclock-collector export --store URL --bundle ./audit-2026-11 --log-key-pub B64
or see everything run on this machine first, from a checkout:  bash scripts/demo.sh
"""

# Command modules, in --help order. Each is collector.cli.<name>.
COMMANDS: tuple[str, ...] = ("ca", "broker", "serve", "ledger", "device", "token")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="timeclock-collector",
        description="Verify punches from time clocks, keep the tamper-evident ledger, run the "
                    "site's CA and broker configuration, and serve HR and auditors.",
        formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog=EPILOG)
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    for name in COMMANDS:
        importlib.import_module(f"collector.cli.{name}").register(sub)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.DEBUG if args.verbose else logging.INFO,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    try:
        rc: int = args.func(args)
    except CollectorError as e:
        print(f"timeclock-collector: error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return 130
    return rc


if __name__ == "__main__":
    sys.exit(main())
