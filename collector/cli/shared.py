"""Helpers the access-control command groups share (collector.cli.breakglass,
collector.cli.policy_docs, collector.cli.access_review): one section of the collector config,
the acting OS user, and a ledger opened with its access tables."""

from __future__ import annotations

import getpass
import tomllib
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import TypeVar

from collector import ConfigError
from collector.cli.ledger import open_existing_store
from collector.ledger.sqlbase import SQLStore
from collector.ledger.tables import ensure_schema
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


@contextmanager
def access_store(url: str) -> Iterator[SQLStore]:
    """An existing ledger with its access tables ensured; closed afterwards."""
    store = open_existing_store(url)
    try:
        ensure_schema(store)
        yield store
    finally:
        store.close()
