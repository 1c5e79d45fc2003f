"""The ledger's Merkle tree in the store (DESIGN.md §8.1; docs/protocol.md §12.2, §13.1).

The node table ``tc_merkle (level, idx) -> hash`` holds every *complete* subtree of the tree
over the entries (wire.merkle's storage): level 0 the leaf hashes, (L, k) the hash of leaves
k·2**L … (k+1)·2**L − 1. Invariants, kept by the database and not only by this code:
- the table is append-only like ``entries`` (triggers refuse UPDATE/DELETE; on PostgreSQL the
  app role may only INSERT and SELECT);
- an entry is inserted only after its leaf (a trigger on ``entries``), and the append writes
  the new nodes in its own transaction, so the tree always covers every committed entry and a
  crash leaves both or neither;
- a node never changes once written (its last leaf is appended), so a proof read at any time
  for a size up to the stored size is final.

This module holds the SQL of the node table for both dialects (:class:`TreeSQL`), the leaf of
an entry row, the streaming tree build of ``migrate`` (:func:`build`) and the recomputation
the store audit runs (:func:`check`).
"""

from __future__ import annotations

import hashlib
import os
import re
import struct
import subprocess
import sys
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager, suppress
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any, cast

from collector import LedgerError
from wire.errors import ProofError
from wire.ledger import KINDS, LEDGER_DOMAIN
from wire.merkle import Address, Node, append_nodes, frontier, leaf_hash, node_hash

BUILD_BATCH = 1 << 14  # entries read, hashed and their nodes inserted per step of a build
PARALLEL_MIN_STEPS = 8     # whole steps from which a SQLite build hashes in worker processes
BUILD_WORKERS = 2
CHECK_BATCH = 20_000
_HEX64 = re.compile(r"[0-9a-f]{64}")
_MAX_INT = 2**53 - 1
# (count, level, first, blob of count hashes): nodes (level, first + k) from 32-byte slices.
_RUN_INSERT = ("WITH RECURSIVE k(i) AS (SELECT 0 UNION ALL SELECT i + 1 FROM k WHERE i + 1 < ?) "
               "INSERT INTO tc_merkle (level, idx, hash) "
               "SELECT ?, ? + i, substr(?, i * 32 + 1, 32) FROM k")
_ENTRY_PAGE = ("SELECT idx, kind, at, body, prev, hash FROM entries WHERE idx >= ? AND idx < ? "
               "ORDER BY idx")


def row_leaf_data(idx: Any, kind: Any, at: Any, body: Any, prev: Any) -> bytes:
    """The leaf data of a stored entry row: ``LEDGER_DOMAIN + canonical(entry)``.

    Built directly from the validated fields (the canonical form of an entry whose kind is one
    of wire.ledger.KINDS and whose hashes are lowercase hex needs no escaping, keys in sorted
    order), which is what makes a 1M-entry build fast; tests check it equals
    ``wire.merkle.entry_leaf_data`` of the same Entry. A row that is not a valid entry is a
    LedgerError: no leaf is made for it.
    """
    if type(idx) is not int or type(at) is not int or not 0 <= idx <= _MAX_INT \
            or not 0 <= at <= _MAX_INT or kind not in KINDS \
            or not isinstance(body, str) or not _HEX64.fullmatch(body) \
            or not isinstance(prev, str) or not _HEX64.fullmatch(prev):
        raise LedgerError(f"entry row {idx!r} is not a valid entry: no Merkle leaf for it")
    return LEDGER_DOMAIN + (f'{{"at":{at},"body":"{body}","idx":{idx},"kind":"{kind}",'
                            f'"prev":"{prev}","v":1}}').encode("ascii")


class TreeSQL:
    """The node table's statements in one dialect (SQLite: ``?``, row values)."""

    ph = "?"

    def select(self, cur: Any, addresses: Sequence[Address]) -> dict[Address, bytes]:
        """{(level, idx): hash} of those of ``addresses`` that are stored (one query)."""
        if not addresses:
            return {}
        # Driven by the VALUES list, one primary-key lookup per address (a row-value IN
        # would scan the table).
        marks = ",".join(["(?, ?)"] * len(addresses))
        cur.execute(f"SELECT m.level, m.idx, m.hash FROM (VALUES {marks}) AS q "  # noqa: S608 - only ? placeholders are formatted in
                    f"JOIN tc_merkle m ON m.level = q.column1 AND m.idx = q.column2",
                    [v for a in addresses for v in a])
        return {(int(lv), int(i)): bytes(h) for lv, i, h in cur.fetchall()}

    def insert(self, cur: Any, nodes: Sequence[Node]) -> None:
        if nodes:
            cur.executemany("INSERT INTO tc_merkle (level, idx, hash) VALUES (?, ?, ?)", nodes)

    def insert_appended(self, cur: Any, nodes: Sequence[Node]) -> None:
        """Insert what :func:`wire.merkle.append_nodes` returned for an append: the new leaves
        (consecutive, about half the rows) as one run, the interior nodes row by row."""
        leaves = [n for n in nodes if n[0] == 0]
        if leaves and leaves[-1][1] - leaves[0][1] == len(leaves) - 1:
            self.insert_run(cur, 0, leaves[0][1], b"".join(n[2] for n in leaves))
            self.insert(cur, [n for n in nodes if n[0] != 0])
        else:
            self.insert(cur, nodes)

    def insert_run(self, cur: Any, level: int, first: int, run: bytes) -> None:
        """Insert the nodes (level, first + k) = the k-th 32 bytes of ``run``: one statement
        whose loop runs in SQLite (a recursive CTE over the blob), not one binding per row from
        Python — the build's largest cost (about 1.7× faster than ``executemany`` here)."""
        if run:
            cur.execute(_RUN_INSERT, (len(run) // 32, level, first, run))

    def sql(self, s: str) -> str:
        return s if self.ph == "?" else s.replace("?", self.ph)


class PgTreeSQL(TreeSQL):
    """PostgreSQL: addresses as arrays through ``unnest`` (a statement's text never depends on
    a count: one plan); nodes written with COPY (INSERT privilege; several times faster than
    an INSERT of arrays or executemany for the two rows per leaf)."""

    ph = "%s"

    def select(self, cur: Any, addresses: Sequence[Address]) -> dict[Address, bytes]:
        if not addresses:
            return {}
        cur.execute("SELECT m.level, m.idx, m.hash FROM tc_merkle m "
                    "JOIN unnest(%s::int[], %s::bigint[]) AS q(level, idx) "
                    "ON m.level = q.level AND m.idx = q.idx",
                    ([a[0] for a in addresses], [a[1] for a in addresses]))
        return {(int(lv), int(i)): bytes(h) for lv, i, h in cur.fetchall()}

    def insert(self, cur: Any, nodes: Sequence[Node]) -> None:
        if nodes:
            with cur.copy("COPY tc_merkle (level, idx, hash) FROM STDIN") as cp:
                for n in nodes:
                    cp.write_row(n)

    def insert_appended(self, cur: Any, nodes: Sequence[Node]) -> None:
        self.insert(cur, nodes)      # one COPY is already the cheapest here

    def insert_run(self, cur: Any, level: int, first: int, run: bytes) -> None:
        if run:     # the loop runs in the server: one bytea, cut by generate_series
            cur.execute("INSERT INTO tc_merkle (level, idx, hash) "
                        "SELECT %s, %s::bigint + i, substring(%s::bytea from i * 32 + 1 for 32) "
                        "FROM generate_series(0, %s - 1) AS i",
                        (level, first, run, len(run) // 32))


SQLITE_TREE = TreeSQL()
PG_TREE = PgTreeSQL()


class CursorReader:
    """A wire.merkle.HashReader over the node table through one cursor (inside the caller's
    transaction, so an append sees the nodes it is about to build on)."""

    def __init__(self, cur: Any, dialect: TreeSQL) -> None:
        self._cur = cur
        self._dialect = dialect

    def get_nodes(self, addresses: Sequence[Address]) -> list[bytes]:
        found = self._dialect.select(self._cur, addresses)
        missing = [a for a in addresses if a not in found]
        if missing:
            raise ProofError(f"the node table has no node at (level, index) {missing[0]}")
        return [found[a] for a in addresses]


class _Frontier:
    """A HashReader holding only the compact range of a tree being recomputed in memory."""

    def __init__(self, nodes: dict[Address, bytes]) -> None:
        self.nodes = nodes

    def get_nodes(self, addresses: Sequence[Address]) -> list[bytes]:
        return [self.nodes[a] for a in addresses]

    def advance(self, size: int, new: Sequence[Node]) -> None:
        want = frontier(size)
        known = dict(self.nodes)
        # The new compact range is made of the last nodes completed at each of its levels.
        levels = {lv for lv, _ in want}
        for lv, i, h in reversed(new):
            if lv in levels and (lv, i) in want:
                known[(lv, i)] = h
                levels.discard(lv)
                if not levels:
                    break
        self.nodes = {a: known[a] for a in want}


def _count(cur: Any, sql: str) -> int:
    cur.execute(sql)
    row = cur.fetchone()
    return 0 if row is None or row[0] is None else int(row[0])


def entry_count(cur: Any) -> int:
    return _count(cur, "SELECT MAX(idx) + 1 FROM entries")


def tree_leaves(cur: Any) -> int:
    """How many leaves the node table holds (they are consecutive from 0)."""
    return _count(cur, "SELECT MAX(idx) + 1 FROM tc_merkle WHERE level = 0")


def _leaves(rows: Sequence[tuple[Any, ...]], expect_first: int) -> list[bytes]:
    """The leaf hashes of consecutive entry rows, each checked against its stored hash.

    The hot loop of a build (a million rows): the row's bytes are formed without the
    per-field validation of :func:`row_leaf_data`, because the check that their SHA-256 is
    the row's stored entry hash proves they are the very bytes the chain committed to; a row
    that fails it gets the validated path, for the error message."""
    out: list[bytes] = []
    sha256, domain, kinds = hashlib.sha256, LEDGER_DOMAIN, KINDS
    for n, (idx, kind, at, body, prev, h) in enumerate(rows):
        if idx != expect_first + n:
            raise LedgerError(f"entry {expect_first + n} is missing (next row is idx {idx}): "
                              f"the ledger is not a chain; run `timeclock-collector verify`")
        data = domain + (f'{{"at":{at},"body":"{body}","idx":{idx},"kind":"{kind}",'
                         f'"prev":"{prev}","v":1}}').encode()
        if sha256(data).hexdigest() != h or kind not in kinds or type(at) is not int:
            row_leaf_data(idx, kind, at, body, prev)      # raises if the row is not an entry
            raise LedgerError(f"entry {idx}'s stored hash is not the hash of its row: no tree "
                              f"is built over a tampered ledger; run `timeclock-collector "
                              f"verify --full`")
        out.append(sha256(b"\x00" + data).digest())
    return out


def build(cur: Any, dialect: TreeSQL, *, batch: int = BUILD_BATCH,
          progress: Callable[[int, int], None] | None = None,
          source: Path | str | None = None) -> int:
    """Add the nodes of every entry the node table does not cover yet, inside the caller's
    write transaction (which holds the chain lock), streaming about ``batch`` entries at a
    time; returns how many leaves were added. Each entry's stored hash is checked against its
    row on the way (a tree is never built over an entry that fails its own hash). The compact
    range is read once and then kept in memory.

    Steps are aligned to a power of two (``span``, the largest one ≤ ``batch``): a whole
    aligned step is one complete subtree, hashed level by level in bulk and written one level
    per statement (:meth:`TreeSQL.insert_run`), then joined to the frontier above it; only
    the first step (from an unaligned size) and the last (a partial one) take the general
    path, :func:`wire.merkle.append_nodes`. Both give the same nodes (tests compare them).

    ``source``: where the committed entries to build can be read by other processes — the
    SQLite file (in WAL mode) of the v1 → v2 upgrade, or the PostgreSQL DSN of ``migrate``
    (a str). With at least :data:`PARALLEL_MIN_STEPS` whole steps, worker
    processes read and hash the aligned steps from their own read-only connections while this
    one inserts (threads were measured slower here: the GIL); the results are consumed in
    order, a bounded number ahead.
    """
    size = tree_leaves(cur)
    total = entry_count(cur)
    try:
        base = frontier(size)
        tip = _Frontier(dict(zip(base, CursorReader(cur, dialect).get_nodes(base),
                                 strict=True)))
    except ProofError as e:
        raise LedgerError(f"the node table is incomplete below leaf {size}: {e}") from e
    height = max(0, batch.bit_length() - 1)
    span = 1 << height
    plan: list[tuple[int, int]] = []
    at = size
    while at < total:
        plan.append((at, min(total, (at // span + 1) * span)))
        at = plan[-1][1]
    whole = [a for a, b in plan if a % span == 0 and b - a == span]
    start = size
    with _step_hasher(cur, dialect, source, whole, height) as hashed:
        for size, end in plan:
            if size % span == 0 and end - size == span:
                runs = hashed(size)
                for level, run in enumerate(runs):
                    dialect.insert_run(cur, level, size >> level, run)
                joined = _join_up(tip.nodes, size, height, runs[-1])
                dialect.insert(cur, joined)
                tip.advance(end, [(height, size >> height, runs[-1]), *joined])
            else:
                nodes = append_nodes(tip, size, read_leaves(cur, dialect, size, end))
                dialect.insert(cur, nodes)
                tip.advance(end, nodes)
            if progress is not None:
                progress(end, total)
    return total - start


def read_leaves(cur: Any, dialect: TreeSQL, start: int, end: int) -> list[bytes]:
    cur.execute(dialect.sql(_ENTRY_PAGE), (start, end))
    leaves = _leaves(cur.fetchall(), start)
    if len(leaves) != end - start:
        raise LedgerError(f"entry {start + len(leaves)} is missing: the ledger is not a "
                          f"chain; run `timeclock-collector verify`")
    return leaves


def subtree(leaves: Sequence[bytes], height: int) -> list[bytes]:
    """The levels 0 … ``height`` of the complete subtree over 2**height leaf hashes, each
    level as one blob of 32-byte hashes."""
    sha256 = hashlib.sha256
    level = list(leaves)
    runs = [b"".join(level)]
    for _ in range(height):
        level = [sha256(b"\x01" + left + right).digest()
                 for left, right in zip(level[0::2], level[1::2], strict=True)]
        runs.append(b"".join(level))
    return runs


@contextmanager
def _step_hasher(cur: Any, dialect: TreeSQL, source: Path | str | None, starts: Sequence[int],
                 height: int) -> Iterator[Callable[[int], list[bytes]]]:
    """A function from an aligned step's start to its levels (:func:`subtree`), called with
    ``starts`` in order: worker processes (collector.ledger.tree_worker) reading ``source``
    when the build is large enough and the file is in WAL mode (so their reads see the
    committed entries while this connection holds the write lock), else the caller's
    cursor."""
    span = 1 << height

    def local(start: int) -> list[bytes]:
        return subtree(read_leaves(cur, dialect, start, start + span), height)

    sqlite = isinstance(source, Path)
    if source is None or len(starts) < PARALLEL_MIN_STEPS or (sqlite and not _is_wal(cur)):
        yield local
        return
    n = max(1, min(BUILD_WORKERS, os.cpu_count() or 1))
    # The source goes through the environment (a DSN may hold a password: not in argv).
    env = {**os.environ, "TIMECLOCK_TREE_SOURCE": str(source),
           "TIMECLOCK_TREE_DIALECT": "sqlite" if sqlite else "postgresql"}
    workers = [subprocess.Popen(  # noqa: S603 - our own module, no shell
        [sys.executable, "-m", "collector.ledger.tree_worker", str(height)],
        stdin=subprocess.PIPE, stdout=subprocess.PIPE, env=env) for _ in range(n)]
    ins = [cast("IO[bytes]", w.stdin) for w in workers]
    outs = [cast("IO[bytes]", w.stdout) for w in workers]
    sizes = [32 * (span >> level) for level in range(height + 1)]
    sent = taken = 0

    def hashed(start: int) -> list[bytes]:
        nonlocal sent, taken
        if starts[taken] != start:
            raise LedgerError(f"tree build out of step: {start} is not {starts[taken]}")
        while sent < min(taken + 2 * n, len(starts)):    # each worker two steps ahead
            ins[sent % n].write(b"%d\n" % starts[sent])
            ins[sent % n].flush()
            sent += 1
        out, w = outs[taken % n], workers[taken % n]
        taken += 1
        kind = out.read(1)
        if kind == b"K":
            blob = _read_exactly(out, sum(sizes))
            runs, at = [], 0
            for size in sizes:
                runs.append(blob[at:at + size])
                at += size
            return runs
        if kind == b"E":
            (length,) = struct.unpack(">I", _read_exactly(out, 4))
            raise LedgerError(_read_exactly(out, length).decode(errors="replace"))
        raise LedgerError(f"tree build worker {w.pid} ended early (exit {w.poll()})")

    done = False
    try:
        yield hashed
        done = True
    finally:
        for f in ins:
            with suppress(OSError):     # a worker that already ended
                f.close()
        for w, f in zip(workers, outs, strict=True):
            if not done:                # a failed build: it may be blocked writing a step
                w.kill()
            try:
                w.wait(30)
            except subprocess.TimeoutExpired:
                w.kill()
                w.wait()
            f.close()


def _read_exactly(f: Any, n: int) -> bytes:
    data = f.read(n)
    if len(data) != n:
        raise LedgerError(f"tree build worker: {len(data)} of {n} bytes before it ended")
    return bytes(data)


def _is_wal(cur: Any) -> bool:
    cur.execute("PRAGMA journal_mode")
    row = cur.fetchone()
    return row is not None and str(row[0]).lower() == "wal"


def _join_up(frontier_nodes: dict[Address, bytes], size: int, level: int,
             top: bytes) -> list[Node]:
    """The interior nodes completed when the subtree (level, size >> level) = ``top`` is added
    to a tree of ``size`` leaves (a multiple of 2**level): while it is a right child, its left
    sibling is on the frontier and their parent is new."""
    out: list[Node] = []
    idx, h = size >> level, top
    while idx & 1:
        h = node_hash(frontier_nodes[(level, idx - 1)], h)
        level, idx = level + 1, idx >> 1
        out.append((level, idx, h))
    return out


@dataclass(frozen=True, slots=True)
class TreeFinding:
    """One stored node that is missing, extra or not what the entries give."""

    level: int
    index: int
    message: str


@dataclass(frozen=True, slots=True)
class TreeCheck:
    """What :func:`check` found over leaves ``start`` … ``stop`` − 1."""

    start: int
    stop: int
    nodes_checked: int
    findings: tuple[TreeFinding, ...] = field(default=())

    @property
    def ok(self) -> bool:
        return not self.findings

    @property
    def first_leaf(self) -> int | None:
        """The first leaf index whose tree position is wrong (where to look), or None."""
        if not self.findings:
            return None
        return min(f.index << f.level for f in self.findings)


def _stored_range(cur: Any, dialect: TreeSQL, first: int, last: int
                  ) -> Iterator[tuple[Address, bytes]]:
    """Stored nodes whose last leaf lies in first … last (one range query per level)."""
    level = 0
    while (1 << level) <= last + 1:
        lo = ((first + (1 << level)) >> level) - 1     # ceil((first + 1) / 2**level) − 1
        hi = ((last + 1) >> level) - 1
        if lo <= hi:
            cur.execute(dialect.sql("SELECT idx, hash FROM tc_merkle WHERE level = ? "
                                    "AND idx >= ? AND idx <= ?"), (level, lo, hi))
            for i, h in cur.fetchall():
                yield (level, int(i)), bytes(h)
        level += 1


def check(cur: Any, dialect: TreeSQL, start: int, stop: int, *,
          batch: int = CHECK_BATCH, max_findings: int = 100) -> TreeCheck:
    """Recompute the nodes whose last leaf is in ``start`` … ``stop`` − 1 from the entry rows
    and compare them with the stored ones; also count the whole table when ``stop`` is the
    ledger's size (a node planted beyond the tree is a finding).

    The stored compact range at ``start`` (popcount(start) nodes) is the trusted base, as a
    resumed audit trusts what it verified before; ``start`` = 0 checks everything.
    """
    q = dialect.sql
    findings: list[TreeFinding] = []
    total = entry_count(cur)
    if not 0 <= start <= stop <= total:
        raise LedgerError(f"tree check range {start}…{stop} is outside the ledger's "
                          f"0…{total}")
    try:
        base = dict(zip(frontier(start), CursorReader(cur, dialect).get_nodes(frontier(start)),
                        strict=True))
    except ProofError as e:
        return TreeCheck(start, stop, 0, (TreeFinding(0, start, f"base of the check: {e}"),))
    tree = _Frontier(base)
    size, checked = start, 0
    while size < stop and len(findings) < max_findings:
        end = min(stop, size + batch)
        cur.execute(q(_ENTRY_PAGE), (size, end))
        rows = cur.fetchall()
        leaves: list[bytes] = []
        for n, (idx, kind, at, body, prev, _h) in enumerate(rows):
            if int(idx) != size + n:
                raise LedgerError(f"entry {size + n} is missing: the ledger is not a chain")
            try:
                leaves.append(leaf_hash(row_leaf_data(int(idx), kind, int(at), body, prev)))
            except LedgerError as e:
                raise LedgerError(f"tree check: {e}") from e
        expected = append_nodes(tree, size, leaves)
        stored = dict(_stored_range(cur, dialect, size, end - 1))
        for lv, i, h in expected:
            got = stored.get((lv, i))
            if got is None:
                findings.append(TreeFinding(lv, i, "node missing from the node table"))
            elif got != h:
                findings.append(TreeFinding(
                    lv, i, f"stored node is {got.hex()[:16]}…, the entries give "
                           f"{h.hex()[:16]}…"))
        checked += len(expected)
        tree.advance(end, expected)
        size = end
    if stop == total and not findings:
        findings.extend(_count_check(cur, dialect, total))
    return TreeCheck(start, stop, checked, tuple(findings[:max_findings]))


# A node (L, k) lies inside the tree of n leaves iff its last leaf does: k < n >> L.
_INSIDE = ("SELECT COUNT(*) FROM tc_merkle WHERE level >= 0 AND level <= 62 AND idx >= 0 "
           "AND idx < (? >> level)")
# One statement, so one snapshot: appends that commit meanwhile add entries and nodes together.
_BEYOND = ("SELECT COUNT(*) FROM tc_merkle m, (SELECT COALESCE(MAX(idx) + 1, 0) AS n "
           "FROM entries) e WHERE m.level < 0 OR m.level > 62 OR m.idx < 0 "
           "OR m.idx >= (e.n >> m.level)")


def _count_check(cur: Any, dialect: TreeSQL, total: int) -> list[TreeFinding]:
    """The whole table: exactly 2n − popcount(n) nodes inside the tree of ``total`` leaves,
    and none beyond the ledger (a node planted ahead of the appends). Safe while a collector
    appends: the nodes inside ``total`` never change."""
    out: list[TreeFinding] = []
    cur.execute(dialect.sql(_INSIDE), (total,))
    have = int(cur.fetchone()[0])
    want = 2 * total - bin(total).count("1")
    if have != want:
        out.append(TreeFinding(0, total, f"the node table holds {have} nodes inside the tree "
                                         f"of {total} leaves, which has {want}"))
    beyond = _count(cur, _BEYOND)
    if beyond:
        out.append(TreeFinding(0, total, f"the node table holds {beyond} node(s) beyond the "
                                         f"ledger's last entry"))
    return out
