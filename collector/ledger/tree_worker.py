"""A worker process of the tree build (collector.ledger.tree.build with a ``source``).

``python -m collector.ledger.tree_worker HEIGHT``, with ``TIMECLOCK_TREE_DIALECT`` (``sqlite``
or ``postgresql``) and ``TIMECLOCK_TREE_SOURCE`` (the SQLite file, opened read-only, or the
DSN — in the environment, not argv, so that no password shows in the process list). For each
decimal step start it reads on stdin (one per line) it reads the 2**HEIGHT entries from there
(committed ones: its own connection), checks each row's stored hash, hashes the complete
subtree over them and writes one frame on stdout: ``b"K"`` + the levels 0 … HEIGHT as one blob
of 32-byte hashes ((2**(HEIGHT+1) − 1) · 32 bytes), or ``b"E"`` + a 4-byte big-endian length +
the error message in UTF-8. It ends at end of input. A separate program rather than
multiprocessing, so that nothing of the parent's ``__main__`` is re-run.
"""

from __future__ import annotations

import os
import sqlite3
import struct
import sys
from pathlib import Path
from typing import Any

from collector import LedgerError
from collector.ledger.tree import PG_TREE, SQLITE_TREE, TreeSQL, read_leaves, subtree


def _connect() -> tuple[Any, TreeSQL, tuple[type[Exception], ...]]:
    source = os.environ["TIMECLOCK_TREE_SOURCE"]
    if os.environ.get("TIMECLOCK_TREE_DIALECT") == "postgresql":
        import psycopg  # noqa: PLC0415 - only a PostgreSQL build needs it

        conn: Any = psycopg.connect(source, autocommit=True)
        return conn, PG_TREE, (LedgerError, psycopg.Error)
    uri = Path(source).resolve().as_uri() + "?mode=ro"
    return sqlite3.connect(uri, uri=True), SQLITE_TREE, (LedgerError, sqlite3.Error)


def main(argv: list[str]) -> int:
    height = int(argv[0])
    out = sys.stdout.buffer
    conn, dialect, errors = _connect()
    try:
        for line in sys.stdin.buffer:
            start = int(line)
            try:
                leaves = read_leaves(conn.cursor(), dialect, start, start + (1 << height))
                out.write(b"K" + b"".join(subtree(leaves, height)))
            except errors as e:
                msg = str(e).encode()
                out.write(b"E" + struct.pack(">I", len(msg)) + msg)
            out.flush()
    finally:
        conn.close()
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
