"""What the ledger command groups' parsers share (collector.cli.people, collector.cli.retention):
a ``--store URL`` argument and a subcommand that works on one ledger.

Invariant: every subcommand made here has ``--store`` (required) as its first option, shows its
group's examples (the epilog) as written, and runs ``func`` with the parsed arguments.
"""

from __future__ import annotations

import argparse
from collections.abc import Callable
from typing import Any

STORE_HELP = "ledger: sqlite:///path, a path, or postgresql://…"


def add_store(p: argparse.ArgumentParser) -> None:
    p.add_argument("--store", required=True, metavar="URL", help=STORE_HELP)


def add_command(subparsers: argparse._SubParsersAction[argparse.ArgumentParser], name: str, *,
                help: str, epilog: str, func: Callable[[argparse.Namespace], int],  # noqa: A002 - argparse's own name
                **defaults: Any) -> argparse.ArgumentParser:
    """The subcommand ``name`` with ``--store``, running ``func`` (``defaults``: more
    parsed values it reads, e.g. ``event=``)."""
    p = subparsers.add_parser(name, help=help, epilog=epilog,
                              formatter_class=argparse.RawDescriptionHelpFormatter)
    add_store(p)
    p.set_defaults(func=func, **defaults)
    return p
