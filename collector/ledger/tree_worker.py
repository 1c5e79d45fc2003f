"""A worker process of the tree build (collector.ledger.tree.build with a ``source``).

``python -m collector.ledger.tree_worker FILE HEIGHT`` opens the SQLite ledger FILE read-only
and, for each decimal step start it reads on stdin (one per line), reads the 2**HEIGHT entries
from there, checks each row's stored hash, hashes the complete subtree over them and writes
one frame on stdout: ``b"K"`` + the levels 0 … HEIGHT as one blob of 32-byte hashes
((2**(HEIGHT+1) − 1) · 32 bytes), or ``b"E"`` + a 4-byte big-endian length + the error
message in UTF-8. It ends at end of input. A separate program rather than multiprocessing,
so that nothing of the parent's ``__main__`` is re-run.
"""

from __future__ import annotations

import sqlite3
import struct
import sys
from pathlib import Path

from collector import LedgerError
from collector.ledger.tree import SQLITE_TREE, read_leaves, subtree


def main(argv: list[str]) -> int:
    path, height = Path(argv[0]), int(argv[1])
    out = sys.stdout.buffer
    conn = sqlite3.connect(path.resolve().as_uri() + "?mode=ro", uri=True)
    try:
        for line in sys.stdin.buffer:
            start = int(line)
            try:
                leaves = read_leaves(conn.cursor(), SQLITE_TREE, start, start + (1 << height))
                out.write(b"K" + b"".join(subtree(leaves, height)))
            except (LedgerError, sqlite3.Error) as e:
                msg = str(e).encode()
                out.write(b"E" + struct.pack(">I", len(msg)) + msg)
            out.flush()
    finally:
        conn.close()
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
