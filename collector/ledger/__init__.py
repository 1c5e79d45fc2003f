"""Ledger stores behind one interface (base.LedgerStore): SQLite (default) and PostgreSQL.

``open_store(url)`` picks the store from the URL: ``sqlite:///abs/path.db``, ``sqlite:rel.db``
or a plain path (SQLite; created on first use), ``postgresql://…`` / ``postgres://…``
or a libpq ``key=value`` DSN
(PostgreSQL; migrated beforehand by the owner role with ``timeclock-collector migrate``).
"""

from __future__ import annotations

import os
import re
from pathlib import Path

from collector import KekMissingError, LedgerError
from collector.ledger import body_crypto, keyring
from collector.ledger.kek import load_kek
from collector.ledger.postgres import PostgresStore
from collector.ledger.sqlbase import SQLStore
from collector.ledger.sqlite import SQLiteStore

_KV_DSN = re.compile(r"^(host|dbname|user|service)=")
KEK_ENV = "TIMECLOCK_LEDGER_KEK"


def sqlite_path(url: str) -> Path | None:
    """The file path of a SQLite store URL, or None when ``url`` names PostgreSQL."""
    if url.startswith(("postgresql://", "postgres://")) or _KV_DSN.match(url):
        return None
    if url.startswith("sqlite:///"):
        # sqlite:////abs is the same file as sqlite:///abs (POSIX keeps a leading "//" in a
        # Path, which SQLite's URI open then reads as an authority and refuses).
        return Path("/" + url[len("sqlite:///"):].lstrip("/"))
    if url.startswith("sqlite://"):
        raise LedgerError(f"{url!r}: use sqlite:///absolute/path or sqlite:relative/path")
    if url.startswith("sqlite:"):
        return Path(url[len("sqlite:"):])
    if "://" in url:
        raise LedgerError(f"{url!r}: unknown store URL scheme (sqlite or postgresql)")
    return Path(url)


def open_store(url: str, *, kek: str | None = None) -> SQLStore:
    """Open the ledger named by ``url`` (see the module docstring).

    ``kek`` (else ``$TIMECLOCK_LEDGER_KEK``; ``[ledger] kek``): the key-encryption key spec
    (collector.ledger.kek.load_kek); with it personal bodies are sealed and opened
    (DESIGN.md §8.6). Without one a ledger that holds data keys is refused, naming the option.
    """
    path = sqlite_path(url)
    if path is None:
        store: SQLStore = PostgresStore(url)
    elif not url.startswith("sqlite") and not path.parent.is_dir():
        raise LedgerError(f"{path}: directory {path.parent} does not exist")
    else:
        store = SQLiteStore(path)
    try:
        spec = kek or os.environ.get(KEK_ENV) or None
        if spec is not None:
            store.use_keyring(keyring.Keyring(store, load_kek(spec)))
        elif keyring.in_use(store):
            raise KekMissingError(f"{body_crypto.NO_KEK}; or export {KEK_ENV}")
    except BaseException:
        store.close()
        raise
    return store
