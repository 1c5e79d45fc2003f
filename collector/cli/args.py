"""What the ledger command groups' parsers share (collector.cli.people, collector.cli.retention):
a ``--store URL`` argument, the KEK's sources (``--kek``, ``--config``) and a subcommand that
works on one ledger.

Invariant: every subcommand made here has ``--store`` (required) as its first option, shows its
group's examples (the epilog) as written, and runs ``func`` with the parsed arguments. Every
parser with ``--store`` also has ``--kek`` and ``--config`` (:func:`add_kek_sources`), which
collector.cli.shared.ledger_kek reads: flag > environment > config.
"""

from __future__ import annotations

import argparse
from collections.abc import Callable
from pathlib import Path
from typing import Any

from collector.ledger import KEK_ENV

STORE_HELP = "ledger: sqlite:///path, a path, or postgresql://…"
KEK_HELP = (f"the ledger's KEK: file:/path | credential:NAME | pkcs11:… (default: "
            f"${KEK_ENV}, else [ledger] kek of --config)")
CONFIG_HELP = "collector config (collector.toml): its [ledger] kek opens an encrypted ledger"


def add_kek_sources(p: argparse.ArgumentParser, *, config: bool = True, kek: bool = True,
                    again: bool = False) -> None:
    """``--kek SPEC`` and ``--config FILE`` (``config=False``/``kek=False``: the parser has
    its own), the sources of an encrypted ledger's KEK (docs/operations.md). ``again``: a
    subcommand's copy, which does not overwrite one given before the subcommand."""
    more: dict[str, Any] = {"default": argparse.SUPPRESS} if again else {}
    if kek:
        p.add_argument("--kek", metavar="SPEC", help=KEK_HELP, **more)
    if config:
        p.add_argument("--config", type=Path, metavar="FILE", help=CONFIG_HELP, **more)


def add_store(p: argparse.ArgumentParser, *, config: bool = True) -> None:
    """``--store URL`` (required) and the KEK's sources (``config=False``: the parser adds
    its own ``--config``, a collector config too)."""
    p.add_argument("--store", required=True, metavar="URL", help=STORE_HELP)
    add_kek_sources(p, config=config)


def add_command(subparsers: argparse._SubParsersAction[argparse.ArgumentParser], name: str, *,
                help: str, epilog: str, func: Callable[[argparse.Namespace], int],  # noqa: A002 - argparse's own name
                config: bool = True, **defaults: Any) -> argparse.ArgumentParser:
    """The subcommand ``name`` with ``--store`` and the KEK's sources (``config=False``: it
    adds its own ``--config``), running ``func`` (``defaults``: more parsed values it reads,
    e.g. ``event=``)."""
    p = subparsers.add_parser(name, help=help, epilog=epilog,
                              formatter_class=argparse.RawDescriptionHelpFormatter)
    add_store(p, config=config)
    p.set_defaults(func=func, **defaults)
    return p
