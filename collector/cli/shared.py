"""Helpers the command groups share: one section of the collector config, the acting OS user,
and the one way a command opens an existing ledger from ``--store`` (:func:`open_existing_store`,
:func:`store_of`), with its KEK from ``--kek``, ``$TIMECLOCK_LEDGER_KEK`` or ``[ledger] kek``
of ``--config``, in that order (:func:`ledger_kek`); the access-control groups
(collector.cli.breakglass, collector.cli.policy_docs, collector.cli.access_review) open it
with its access tables ensured (:func:`access_store`).

Invariant: no command opens a ledger that does not exist (a typo in --store makes no empty
ledger), and an encrypted ledger opened with no KEK is refused with the three sources named."""

from __future__ import annotations

import argparse
import getpass
import os
import tomllib
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import TypeVar

from collector import ConfigError, KekMissingError, LedgerError
from collector.ledger import KEK_ENV, open_store, sqlite_path
from collector.ledger.sqlbase import SQLStore
from collector.ledger.tables import ensure_schema
from collector.service.config import read_ledger_section
from wire.config import Section

T = TypeVar("T")


def config_section(path: Path, name: str, read: Callable[[Section], T]) -> T:
    """``[name]`` of the collector config at ``path``, read with ``read`` (every problem at
    once, ConfigError); only that section, so this command needs no other part of it."""
    try:
        data = tomllib.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, tomllib.TOMLDecodeError) as e:
        raise ConfigError([f"{path}: {e}"]) from e
    problems: list[str] = []
    got = read(Section(name, data.get(name, {}), problems))
    if problems:
        raise ConfigError(problems)
    return got


def cli_actor() -> str:
    """Who runs this command, as the entries name it (``cli:<OS user>``)."""
    try:
        return f"cli:{getpass.getuser()}"
    except (KeyError, OSError):
        return "cli:unknown"


NO_KEK = (f"this ledger is encrypted at rest; give its KEK with --kek SPEC, ${KEK_ENV} or "
          f"[ledger] kek in the collector config named by --config FILE "
          f"(SPEC: file:/path | credential:NAME | pkcs11:…)")


def ledger_kek(args: argparse.Namespace) -> str | None:
    """The KEK spec of the ledger this command opens: ``--kek``, else ``$TIMECLOCK_LEDGER_KEK``,
    else ``[ledger] kek`` of ``--config`` (read and checked alone: ConfigError), else None."""
    flag = getattr(args, "kek", None)
    if flag:
        return str(flag)
    env = os.environ.get(KEK_ENV)
    if env:
        return env
    config: Path | None = getattr(args, "config", None)
    if config is None:
        return None
    return config_section(config, "ledger", read_ledger_section).kek


def open_existing_store(url: str, *, kek: str | None = None, create: bool = False) -> SQLStore:
    """Open the ledger ``url`` names, refusing a SQLite file that does not exist (opening
    one would create an empty ledger: a typo in --store must not look like a fresh site).
    Only ``init``, ``migrate`` and ``serve`` create a ledger. A PostgreSQL database that does
    not exist or lacks the schema is refused by the store itself. ``kek``: the spec
    :func:`ledger_kek` chose (else $TIMECLOCK_LEDGER_KEK, as open_store reads it); an
    encrypted ledger with none is refused naming the three sources (KekMissingError).
    ``create``: ``migrate`` may make a new SQLite file."""
    path = sqlite_path(url)
    if path is not None and not path.exists() and not create:
        raise LedgerError(f"{path}: no such ledger file (a typo in --store?); "
                          f"`timeclock-collector init` or `migrate --store URL` creates one")
    try:
        return open_store(url, kek=kek)
    except KekMissingError as e:
        raise KekMissingError(NO_KEK) from e


def open_args_store(args: argparse.Namespace, url: str | None = None) -> SQLStore:
    """The existing ledger of ``--store`` (or ``url``), with the KEK :func:`ledger_kek`
    finds in ``args``."""
    return open_existing_store(url if url is not None else args.store, kek=ledger_kek(args))


@contextmanager
def store_of(args: argparse.Namespace, url: str | None = None) -> Iterator[SQLStore]:
    """:func:`open_args_store`, closed afterwards."""
    store = open_args_store(args, url)
    try:
        yield store
    finally:
        store.close()


@contextmanager
def access_store(args: argparse.Namespace, url: str | None = None) -> Iterator[SQLStore]:
    """An existing ledger (:func:`open_args_store`) with its access tables ensured; closed
    afterwards."""
    store = open_args_store(args, url)
    try:
        ensure_schema(store)
        yield store
    finally:
        store.close()
