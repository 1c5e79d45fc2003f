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

from collector.errors import CollectorError

# Command modules, in --help order. Each is collector.commands.<name>.
COMMANDS: tuple[str, ...] = ("ca", "broker", "serve", "ledger", "device", "site", "token")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="timeclock-collector",
        description="Verify punches from time clocks, keep the tamper-evident ledger, run the "
                    "site's CA and broker configuration, and serve HR and auditors.")
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    for name in COMMANDS:
        importlib.import_module(f"collector.commands.{name}").register(sub)
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
