"""``timeclock-collector``: one entry point; each command group lives in its own module.

A command module exposes ``register(subparsers)`` which adds its parser(s) and sets
``func(args) -> int`` as the parser default.
"""

from __future__ import annotations

import argparse
import importlib
import sys
from collections.abc import Sequence

from collector import CollectorError
from wire.cli import missing_extra, run_command, setup_logging

EPILOG = """\
a site in a few commands (each has --help with examples; docs/operations.md walks through it):
  timeclock-collector init --user timeclock --origin acme.example/timeclock \\
      --dns mqtt.acme.example --listen 0.0.0.0     # CA, log key, certificates, broker, config
  timeclock-collector init --check --user timeclock  # what is missing or wrong (changes nothing)
  timeclock-collector serve --config /etc/timeclock/collector.toml
  timeclock-collector device enroll --config /etc/timeclock/collector.toml --ca /etc/timeclock/ca \\
      --csr clock-0017.csr --signing-key B64 --site hq --broker mqtt.acme.example:8883 --out b
  timeclock-collector ca status --ca /etc/timeclock/ca --broker-dir /var/lib/timeclock/broker
  timeclock-collector verify --store sqlite:///var/lib/timeclock/ledger.db --log-key-pub B64
  timeclock-collector export --store URL --bundle ./audit-2026-11 --log-key-pub B64
or see everything run on this machine first, from a checkout:  bash scripts/demo.sh
"""

# Command modules, in --help order. Each is collector.cli.<name>.
COMMANDS: tuple[str, ...] = ("init", "ca", "broker", "serve", "ledger", "device", "token",
                             "access_review", "breakglass", "policy_docs",
                             "people", "retention", "erase", "backup", "reviews", "kek",
                             "timesheet", "hr_push", "evidence")


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
    try:
        # The command modules import the 'collector' extra's libraries (aiohttp, paho, psycopg).
        parser = build_parser()
    except ModuleNotFoundError as e:
        return missing_extra("timeclock-collector", "collector", e)
    args = parser.parse_args(argv)
    setup_logging(verbose=args.verbose)
    return run_command("timeclock-collector", lambda: int(args.func(args)), (CollectorError,),
                       extra="collector")


if __name__ == "__main__":
    sys.exit(main())
