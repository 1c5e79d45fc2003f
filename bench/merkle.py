"""The Merkle tree in the stores (DESIGN.md §8.1): build, proof latency, append overhead.

Usage: ``python bench/merkle.py [--entries 1000000] [--runs 3] [--postgres]``

1. **Synthetic ledger.** A version 1 SQLite file (collector.ledger.schema_sqlite.SCHEMA_V1, the
   schema before the tree) is written directly: ``--entries`` real entry rows (idx, kind, at,
   body hash, prev, hash — a valid chain, accepted by the v1 triggers) of kind ``access``
   whose bodies are small canonical JSON objects (``{"n":i,"pad":…}``), inserted in one
   transaction with ``executemany``. With ``--postgres`` the same rows are COPYed into a v1
   PostgreSQL database (a throwaway cluster from tests/fixtures/postgres.py) whose node table
   is then emptied and whose schema is marked version 1.
2. **Build.** Each run upgrades a fresh copy: SQLite by opening it (``SQLiteStore``: the v1 → v2
   upgrade builds the tree in its transaction), PostgreSQL by ``migrate`` as the owner role.
   Reported: leaves/s = entries / wall time of the whole upgrade (DDL, build, commit).
3. **Proofs.** On the built ledger: ``--samples`` inclusion proofs (random leaf, random size ≥
   leaf + 1 up to the full size) and consistency proofs (random 1 ≤ m < n ≤ size) through the
   store API (``SQLStore.inclusion_proof`` / ``consistency_proof``: one indexed query each);
   latency p50/p99 per call, every 100th proof verified with wire.merkle.
4. **Append overhead.** The same batches of real signed punches appended to two fresh
   ledgers, alternating A and B in one invocation: A = a store whose append skips the tree
   (the leaf hashing, ``append_nodes`` and the node INSERT; the leaf trigger dropped), B = the
   real store. Reported: punches/s of each and B's overhead in percent.
"""

from __future__ import annotations

import argparse
import hashlib
import random
import shutil
import sqlite3
import statistics
import sys
import tempfile
import time
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any

import common  # sets sys.path to the repository root
import psycopg

from collector.ledger.base import EventFact
from collector.ledger.postgres import PostgresStore, migrate
from collector.ledger.schema_sqlite import SCHEMA_V1
from collector.ledger.sqlbase import SQLStore, _Append
from collector.ledger.sqlite import SQLiteStore
from collector.ledger.tree import TreeSQL, row_leaf_data
from tests.collector.ledger_kit import T0, Clock
from wire import ZERO_HASH, merkle
from wire.ledger import make_entry
from wire.merkle import Address, Node

CHUNK = 50_000


def synthetic_rows(n: int) -> Iterator[tuple[tuple[Any, ...], tuple[int, bytes]]]:
    """(entry row, body row) of ``n`` chained ``access`` entries in the real byte format."""
    prev = ZERO_HASH
    pad = "x" * 120      # about the size of an access body
    for i in range(n):
        body = b'{"n":%d,"pad":"%s"}' % (i, pad.encode())
        bh = hashlib.sha256(body).hexdigest()
        at = T0 + i * 1000
        h = hashlib.sha256(row_leaf_data(i, "access", at, bh, prev)).hexdigest()
        yield (i, "access", at, bh, prev, h), (i, body)
        prev = h


def make_v1_sqlite(path: Path, n: int) -> float:
    t0 = time.perf_counter()
    conn = sqlite3.connect(path, isolation_level=None)
    conn.execute("PRAGMA journal_mode = WAL")
    conn.executescript(SCHEMA_V1)
    conn.execute("BEGIN")
    rows = synthetic_rows(n)
    while True:
        chunk = [r for _, r in zip(range(CHUNK), rows, strict=False)]
        if not chunk:
            break
        conn.executemany("INSERT INTO entries VALUES (?, ?, ?, ?, ?, ?)", [e for e, _ in chunk])
        conn.executemany("INSERT INTO bodies VALUES (?, ?)", [b for _, b in chunk])
    conn.execute("COMMIT")
    conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    conn.close()
    return time.perf_counter() - t0


def copy_db(src: Path, dst: Path) -> None:
    for suffix in ("", "-wal", "-shm"):
        Path(str(dst) + suffix).unlink(missing_ok=True)
    shutil.copyfile(src, dst)


def pct(values: Sequence[float], q: float) -> float:
    s = sorted(values)
    return s[min(len(s) - 1, int(q * len(s)))]


def proof_latency(store: SQLStore, size: int, samples: int, seed: int
                  ) -> tuple[list[float], list[float]]:
    rng = random.Random(seed)  # noqa: S311 - reproducible sample, not crypto
    incl: list[float] = []
    cons: list[float] = []
    root_full = store.merkle_root(size)
    for k in range(samples):
        n = rng.randint(1, size)
        i = rng.randrange(n)
        t = time.perf_counter()
        proof = store.inclusion_proof(i, n)
        incl.append(time.perf_counter() - t)
        if k % 100 == 0:
            merkle.verify_inclusion(store.leaf_hash(i), i, n, proof, store.merkle_root(n))
        m = rng.randint(1, size - 1)
        n2 = rng.randint(m + 1, size)
        t = time.perf_counter()
        proof = store.consistency_proof(m, n2)
        cons.append(time.perf_counter() - t)
        if k % 100 == 0:
            merkle.verify_consistency(m, n2, store.merkle_root(m), store.merkle_root(n2), proof)
    assert store.merkle_root(size) == root_full
    return incl, cons


# -- append A/B ------------------------------------------------------------------------------

class _NoNodes(TreeSQL):
    """No node table: the A side's append reads and writes no nodes."""

    def select(self, cur: Any, addresses: Sequence[Address]) -> dict[Address, bytes]:
        return {a: bytes(32) for a in addresses}

    def insert(self, cur: Any, nodes: Sequence[Node]) -> None:
        return None


class _NoTreeAppend(_Append):
    """The append as it was before the tree (version 1): one hash per entry, no leaf hash,
    no ``append_nodes`` read, no node INSERT."""

    def _entry(self, kind: str, body: bytes) -> int:
        idx = self.size
        e = make_entry(idx=idx, kind=kind, at=self.at, body=body, prev=self.prev)
        h = e.hash()
        self.entries.append((idx, kind, self.at, e.body, e.prev, h))
        self.bodies.append((idx, body))
        self.prev = h
        self.size += 1
        return idx


def no_tree(store: SQLStore) -> SQLStore:
    def planner(cur: Any, now_us: int) -> _Append:
        return _NoTreeAppend(cur, now_us, sql=store._sql, existing=store._existing,
                             tree_sql=_NoNodes())
    store._planner = planner  # type: ignore[method-assign]
    return store


def append_ab(open_a: Callable[[], SQLStore], open_b: Callable[[], SQLStore], punches: int,
              batch: int, runs: int) -> tuple[list[float], list[float]]:
    """punches/s of A (no tree) and B (tree), one fresh ledger per side and run,
    alternating A and B so that machine load affects both alike."""
    a_rates: list[float] = []
    b_rates: list[float] = []
    for run in range(runs):
        c = Clock(f"bench-{run}")
        facts = [c.fact() for _ in range(punches)]
        batches = [facts[i:i + batch] for i in range(0, len(facts), batch)]
        order = [("A", open_a, a_rates), ("B", open_b, b_rates)]
        if run % 2:
            order.reverse()
        for _name, opener, rates in order:
            s = opener()
            try:
                s.append([EventFact("device", c.enrolled_body())], now_us=T0)
                t = time.perf_counter()
                for k, b in enumerate(batches):
                    s.append(b, now_us=T0 + k)
                rates.append(punches / (time.perf_counter() - t))
            finally:
                s.close()
    return a_rates, b_rates


# -- PostgreSQL -------------------------------------------------------------------------------

class PgBench:
    """A throwaway cluster (tests/fixtures/postgres.py) and one database per use."""

    def __init__(self) -> None:
        import tests.fixtures.postgres as pgfix  # noqa: PLC0415 - only with --postgres
        self.fix = pgfix
        self._gen = pgfix.pg_cluster.__wrapped__()
        self.cluster = next(self._gen)
        self._n = 0

    def database(self) -> Any:
        self._n += 1
        name = f"tc_bench_{self._n}"
        f = self.fix
        with psycopg.connect(self.cluster.admin_dsn, autocommit=True) as conn:
            conn.execute(f"CREATE DATABASE {name} OWNER {f.OWNER_ROLE}")
            conn.execute(f"GRANT CONNECT ON DATABASE {name} TO {f.APP_ROLE}")
        return f.PgDatabase(
            name=name, owner_dsn=self.cluster.dsn(f.OWNER_ROLE, f.OWNER_PASSWORD, name),
            app_dsn=self.cluster.dsn(f.APP_ROLE, f.APP_PASSWORD, name),
            admin_dsn=f"host={self.cluster.socket_dir} port={self.cluster.port} "
                      f"user=postgres dbname={name}", app_role=f.APP_ROLE)

    def close(self) -> None:
        self._gen.close()


def load_v1_pg(db: Any, n: int) -> float:
    """``n`` synthetic entries in a database at schema version 1 (no nodes)."""
    t0 = time.perf_counter()
    migrate(db.owner_dsn, app_role=db.app_role)
    with psycopg.connect(db.admin_dsn, autocommit=True) as conn, conn.transaction():
        conn.execute("SET session_replication_role = replica")   # bulk load: triggers off
        with conn.cursor() as cur, \
                cur.copy("COPY entries (idx, kind, at, body, prev, hash) FROM STDIN") as cp:
            for e, _b in synthetic_rows(n):
                cp.write_row(e)
        conn.execute("UPDATE meta SET value = '1' WHERE key = 'schema'")
    with psycopg.connect(db.admin_dsn, autocommit=True) as conn:
        conn.execute("VACUUM ANALYZE entries")
    return time.perf_counter() - t0


def pg_v1_to_fresh(db: Any) -> None:
    """Back to version 1 after a build (a superuser empties the node table)."""
    with psycopg.connect(db.admin_dsn, autocommit=True) as conn, conn.transaction():
        conn.execute("SET session_replication_role = replica")
        conn.execute("DELETE FROM tc_merkle")
        conn.execute("UPDATE meta SET value = '1' WHERE key = 'schema'")
    with psycopg.connect(db.admin_dsn, autocommit=True) as conn:
        conn.execute("VACUUM tc_merkle")


# -- main ------------------------------------------------------------------------------------

def parse(argv: Sequence[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                epilog=__doc__.split("\n\n", 1)[1],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--entries", type=int, default=1_000_000, help="synthetic ledger size")
    p.add_argument("--runs", type=int, default=3, help="runs of each measure (median)")
    p.add_argument("--samples", type=int, default=2000, help="proofs of each kind per run")
    p.add_argument("--punches", type=int, default=10_000, help="punches per append run")
    p.add_argument("--batch", type=int, default=500, help="punches per append")
    p.add_argument("--postgres", action="store_true", help="also measure PostgreSQL")
    p.add_argument("--skip-sqlite", action="store_true", help="PostgreSQL only")
    p.add_argument("--dir", type=Path, help="work directory (default: a temporary one)")
    return p.parse_args(argv)


def report_build(label: str, n: int, times: list[float]) -> None:
    rates = [n / t for t in times]
    print(f"{label} build  : {n:,} leaves in " + ", ".join(f"{t:.2f}" for t in times)
          + f" s → median {statistics.median(rates):,.0f} leaves/s "
            f"(runs: {', '.join(f'{r:,.0f}' for r in rates)})")


def report_proofs(label: str, incl: list[list[float]], cons: list[list[float]]) -> None:
    for what, runs in (("inclusion  ", incl), ("consistency", cons)):
        p50 = [pct(r, 0.50) * 1e3 for r in runs]
        p99 = [pct(r, 0.99) * 1e3 for r in runs]
        print(f"{label} {what} proof: p50 {statistics.median(p50):.3f} ms, "
              f"p99 {statistics.median(p99):.3f} ms (median of {len(runs)} runs of "
              f"{len(runs[0])}; p99 per run: {', '.join(f'{x:.3f}' for x in p99)})")


def report_append(label: str, a: list[float], b: list[float]) -> None:
    ma, mb = statistics.median(a), statistics.median(b)
    print(f"{label} append : A (no tree) median {ma:,.0f} punches/s "
          f"({', '.join(f'{x:,.0f}' for x in a)}); B (tree) median {mb:,.0f} punches/s "
          f"({', '.join(f'{x:,.0f}' for x in b)}); overhead {100 * (ma - mb) / ma:.1f}%")


def bench_sqlite(args: argparse.Namespace, d: Path) -> None:
    v1 = d / "v1.db"
    made = make_v1_sqlite(v1, args.entries)
    print(f"sqlite ledger : {args.entries:,} v1 entries written in {made:.1f} s "
          f"({v1.stat().st_size / 1e6:.0f} MB)")
    times: list[float] = []
    incl: list[list[float]] = []
    cons: list[list[float]] = []
    work = d / "work.db"
    for run in range(args.runs):
        copy_db(v1, work)
        t = time.perf_counter()
        s = SQLiteStore(work)
        times.append(time.perf_counter() - t)
        try:
            assert s.tree_size() == args.entries
            i, c = proof_latency(s, args.entries, args.samples, seed=run)
            incl.append(i)
            cons.append(c)
        finally:
            s.close()
    report_build("sqlite", args.entries, times)
    report_proofs("sqlite", incl, cons)

    k = 0

    def fresh(tree: bool) -> Callable[[], SQLStore]:
        def opener() -> SQLStore:
            nonlocal k
            k += 1
            path = d / f"ab-{k}.db"
            s = SQLiteStore(path)
            if tree:
                return s
            s.close()
            conn = sqlite3.connect(path, isolation_level=None)
            conn.execute("DROP TRIGGER entries_need_leaf")
            conn.close()
            return no_tree(SQLiteStore(path))
        return opener

    a, b = append_ab(fresh(False), fresh(True), args.punches, args.batch, args.runs)
    report_append("sqlite", a, b)


def bench_postgres(args: argparse.Namespace) -> None:
    pg = PgBench()
    try:
        db = pg.database()
        made = load_v1_pg(db, args.entries)
        print(f"pg ledger     : {args.entries:,} v1 entries COPYed in {made:.1f} s "
              f"(server: fsync=off, synchronous_commit=off, shared_buffers=32MB)")
        times: list[float] = []
        incl: list[list[float]] = []
        cons: list[list[float]] = []
        for run in range(args.runs):
            if run:
                pg_v1_to_fresh(db)
            t = time.perf_counter()
            built = migrate(db.owner_dsn, app_role=db.app_role)
            times.append(time.perf_counter() - t)
            assert built == args.entries, built
            s = PostgresStore(db.app_dsn)
            try:
                i, c = proof_latency(s, args.entries, args.samples, seed=run)
                incl.append(i)
                cons.append(c)
            finally:
                s.close()
        report_build("pg    ", args.entries, times)
        report_proofs("pg    ", incl, cons)

        def fresh(tree: bool) -> Callable[[], SQLStore]:
            def opener() -> SQLStore:
                d2 = pg.database()
                migrate(d2.owner_dsn, app_role=d2.app_role)
                if tree:
                    return PostgresStore(d2.app_dsn)
                with psycopg.connect(d2.owner_dsn, autocommit=True) as conn:
                    conn.execute("DROP TRIGGER entries_need_leaf ON entries")
                return no_tree(PostgresStore(d2.app_dsn))
            return opener

        a, b = append_ab(fresh(False), fresh(True), args.punches, args.batch, args.runs)
        report_append("pg    ", a, b)
    finally:
        pg.close()


def main(argv: Sequence[str] | None = None) -> int:
    args = parse(argv)
    d = args.dir or Path(tempfile.mkdtemp(prefix="tc-merkle-bench-"))
    d.mkdir(parents=True, exist_ok=True)
    print(common.header("bench/merkle.py: the Merkle tree in the stores", data_dir=d))
    try:
        if not args.skip_sqlite:
            bench_sqlite(args, d)
        if args.postgres:
            bench_postgres(args)
    finally:
        if args.dir is None:
            shutil.rmtree(d, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
