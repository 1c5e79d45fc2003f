"""Proof latency through the HTTPS API on a large ledger (issue 10: p99 ≤ 5 ms).

Setup, once per invocation: a CA and server certificate (collector.fleet.pki) in a temp dir;
a SQLite ledger of ``--entries`` entries built as bench/export.py builds its synthetic ledger
(pre-signed, chained punches over 50 clocks, batched ``store.append``; the store maintains its
Merkle tree inside each append); then 32 v2 checkpoints (collector.ingest.checkpoints) at
random sizes and at the full size, and a token with ``hr.read`` and ``audit.read``.

Measured: the API server runs in its own process (collector.api.start_api: HTTPS, real token
authentication, access logging into the same ledger). The client (aiohttp, this process, one
keep-alive connection) sends ``--requests`` sequential requests of each kind and times each
one from send to the last body byte:

- ``GET /v1/punches/{device}/{seq}/proof`` for random punches (inclusion proof to the newest
  checkpoint, with its note);
- ``GET /v1/log/consistency?from=N&to=M`` between two random checkpoints N < M.
- baseline, same run: ``GET /v1/log/checkpoint`` (authentication, access logging and one
  small read, no proof), to show what the API layer itself costs on this machine.

Every response is verified with wire.merkle against the checkpoint roots, outside the timed
span (a fast wrong answer would not count). Targets: p99 ≤ 5 ms for both; exit status 1 if missed.

    python bench/proofs.py              # 1,000,000 entries, 2,000 requests of each kind
    python bench/proofs.py --requests 3000 --runs 3 --baseline-tree /tmp/tc-base
        # three runs on one seeded ledger, every request also sent to a server running the
        # code of /tmp/tc-base (`git worktree add /tmp/tc-base <commit>`): an A/B per run
    python bench/proofs.py --quick      # 100,000 entries, 500 requests of each kind
"""

from __future__ import annotations

import argparse
import asyncio
import datetime as dt
import json
import os
import random
import shutil
import ssl
import subprocess
import sys
import tempfile
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiohttp
import common  # sets sys.path to the repository root
from export import common_free_port, seed

from collector.access.directory import Principals
from collector.api import ApiSection, start_api
from collector.fleet.pki import CertificateAuthority
from collector.ingest.checkpoints import make_checkpoint_v2
from collector.ledger import checkpoint_tables
from collector.ledger.sqlite import SQLiteStore
from collector.ledger.tables import ensure_schema
from wire.keys import SigningKey
from wire.ledger import Entry
from wire.merkle import ConsistencyProof, InclusionProof, entry_leaf_hash
from wire.note import Checkpoint, NoteVerifier

TARGET_P99_MS = 5.0
DEVICES = 50
ORIGIN = "bench.example/timeclock"
CHECKPOINTS = 32


def serve(db: str, port: int, cert: str, key: str) -> None:
    """Child process: serve the API over HTTPS until stdin closes."""

    async def main() -> None:
        store = SQLiteStore(Path(db))
        reader = SQLiteStore(Path(db))      # as serve does: proofs on their own connection
        section = ApiSection(cert=Path(cert), key=Path(key), listen="127.0.0.1", port=port)
        runner = await start_api(section, store, log_keys={}, reader=reader)
        print("READY", flush=True)
        await asyncio.get_running_loop().run_in_executor(None, sys.stdin.read)
        await runner.cleanup()
        reader.close()
        store.close()

    asyncio.run(main())


async def timed(s: aiohttp.ClientSession, url: str, headers: dict[str, str],
                ctx: ssl.SSLContext) -> tuple[float, Any]:
    """(milliseconds from send to the last body byte, the parsed JSON body)."""
    started = time.perf_counter()
    async with s.get(url, headers=headers, ssl=ctx) as r:
        body = await r.read()
        if r.status != 200:
            raise RuntimeError(f"{url}: {r.status}: {body[:300]!r}")
    return (time.perf_counter() - started) * 1000, json.loads(body)


async def measure(bases: dict[str, str], token: str, ctx: ssl.SSLContext, *, requests: int,
                  punches: int, log: NoteVerifier, roots: dict[int, bytes]
                  ) -> dict[str, dict[str, list[float]]]:
    """Per-request latencies (ms) of each kind, per server of ``bases`` (label → URL); every
    response is verified (untimed). With two servers each request goes to both, in turn and
    in alternating order, so both see the same machine."""
    rnd = random.Random(7)  # noqa: S311 - reproducible sampling, not security
    headers = {"Authorization": f"Bearer {token}"}
    per_device = punches // DEVICES
    sizes = sorted(roots)
    out = {label: {"inclusion": [], "consistency": [], "baseline": []} for label in bases}
    sessions = {label: aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=1))
                for label in bases}
    try:
        for label, base in bases.items():
            for _ in range(20):  # warm-up: TLS handshake, the first pages into the cache
                await timed(sessions[label], f"{base}/v1/log/checkpoint", headers, ctx)
        order = list(bases)
        # Interleaved, so that every kind sees the same machine (the cores are shared).
        for _ in range(requests):
            dev, seq = f"clock-{rnd.randrange(DEVICES):03d}", rnd.randint(1, per_device)
            old, new = sorted(rnd.sample(sizes, 2))
            order.reverse()
            for label in order:
                s, base, o = sessions[label], bases[label], out[label]
                ms, doc = await timed(s, f"{base}/v1/punches/{dev}/{seq}/proof", headers, ctx)
                o["inclusion"].append(ms)
                cp = Checkpoint.open(doc["checkpoint"], log)
                entry = Entry.from_dict(doc["entry"]["entry"])
                InclusionProof.from_dict(doc["inclusion_proof"]).verify(
                    entry_leaf_hash(entry), cp.root)
                ms, doc = await timed(s, f"{base}/v1/log/consistency?from={old}&to={new}",
                                      headers, ctx)
                o["consistency"].append(ms)
                ConsistencyProof.from_dict(doc).verify(roots[old], roots[new])
                ms, doc = await timed(s, f"{base}/v1/log/checkpoint", headers, ctx)
                o["baseline"].append(ms)
                Checkpoint.open(doc["note"], log)
    finally:
        for s in sessions.values():
            await s.close()
    return out


ROUTES = {"inclusion": "/v1/punches/{device}/{seq}/proof",
          "consistency": "/v1/log/consistency", "baseline": "/v1/log/checkpoint"}


def server_durations(db: Path, since: int) -> dict[str, list[float]]:
    """Server-side ms per route of the 200 responses recorded in access entries ≥ ``since``
    (from the guard middleware's start to the response: no TLS, no client)."""
    out: dict[str, list[float]] = {r: [] for r in ROUTES.values()}
    store = SQLiteStore(db)
    try:
        for se in store.entries(since):
            if se.entry.kind != "access" or se.body is None:
                continue
            b = json.loads(se.body)
            if b.get("type") == "request" and b.get("route") in out and b["status"] == 200:
                out[b["route"]].append(b["duration_us"] / 1000)
    finally:
        store.close()
    return out


@dataclass
class Ledger:
    db: Path
    token: str
    log: NoteVerifier
    roots: dict[int, bytes]
    size: int


def prepare(db: Path, punches: int) -> Ledger:
    """The synthetic ledger, its checkpoints (random sizes and the full size: consistency
    proofs go between two of them, as between a checkpoint a witness holds and a newer
    one) and a token."""
    seed_s = seed(db, punches, devices=DEVICES)
    store = SQLiteStore(db)
    try:
        size = store.tree_size()
        print(f"seeded  : {size:,} entries ({punches:,} signed punches) in {seed_s:.1f} s "
              f"({size / seed_s:,.0f}/s, tree maintained by each append); db "
              f"{db.stat().st_size / 2**20:.0f} MiB")
        log_key = SigningKey.generate()
        checkpoint_tables.ensure_schema(store)
        ensure_schema(store)
        rnd = random.Random(11)  # noqa: S311 - reproducible sizes
        roots: dict[int, bytes] = {}
        for n in sorted({*rnd.sample(range(1, size), CHECKPOINTS - 1), size}):
            roots[n] = make_checkpoint_v2(store, log_key, ORIGIN, n,
                                          time.time_ns() // 1000).checkpoint.root
        token = Principals(store).create_token("bench", ["hr.read", "audit.read"],
                                               expires_days=1, actor="bench",
                                               now_us=time.time_ns() // 1000).token
        return Ledger(db, token, NoteVerifier(ORIGIN, log_key.verify_key), roots,
                      store.tree_size())
    finally:
        store.close()


def run(ledger: Ledger, *, cert: Path, key: Path, ca: Path, requests: int, punches: int,
        trees: dict[str, Path], dbs: dict[str, Path]
        ) -> dict[str, dict[str, list[float]]] | None:
    """Serve the ledger in a child process per code tree of ``trees`` (label → checkout; each
    on its own copy of the ledger, written to ``dbs``) and measure; None if a server did not
    start."""
    procs: list[subprocess.Popen[str]] = []
    try:
        bases: dict[str, str] = {}
        for label, tree in trees.items():
            port = common_free_port()
            db = ledger.db if label == "this tree" else ledger.db.with_name(f"{port}.db")
            if db != ledger.db:
                shutil.copyfile(ledger.db, db)
            dbs[label] = db
            proc = subprocess.Popen([sys.executable, str(tree / "bench" / "proofs.py"),
                                     "--serve", str(db), str(port), str(cert), str(key)],
                                    stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
            procs.append(proc)
            assert proc.stdout is not None  # noqa: S101 - Popen with stdout=PIPE
            if proc.stdout.readline().strip() != "READY":
                return None
            bases[label] = f"https://127.0.0.1:{port}"
        ctx = ssl.create_default_context(cafile=str(ca))
        return asyncio.run(measure(bases, ledger.token, ctx, requests=requests,
                                   punches=punches, log=ledger.log, roots=ledger.roots))
    finally:
        for proc in procs:
            if proc.stdin is not None:
                proc.stdin.close()
            proc.wait(30)


def report(label: str, results: dict[str, list[float]], server: dict[str, list[float]],
           *, target: bool) -> bool:
    rows = []
    ok = True
    for kind, ms in results.items():
        p99 = common.percentile(ms, 99)
        ok = ok and (kind == "baseline" or p99 <= TARGET_P99_MS)
        srv = server[ROUTES[kind]]
        rows.append([kind, f"{len(ms):,}", f"{common.percentile(ms, 50):.2f}",
                     f"{common.percentile(ms, 90):.2f}", f"{p99:.2f}", f"{max(ms):.2f}",
                     f"{common.percentile(srv, 50):.2f}", f"{common.percentile(srv, 99):.2f}"])
    print(f"\n## {label}")
    print(common.table(["request", "n", "p50 ms", "p90 ms", "p99 ms", "max ms",
                        "server p50", "server p99"], rows))
    if target:
        print(f"target  : client p99 ≤ {TARGET_P99_MS} ms for both proofs → "
              f"{'OK' if ok else 'MISSED'}")
    return ok


def main(argv: Sequence[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true", help="100,000 entries, 500 requests")
    ap.add_argument("--entries", type=int, help="punches in the ledger (default 1,000,000)")
    ap.add_argument("--requests", type=int, help="requests of each kind (default 2,000)")
    ap.add_argument("--runs", type=int, default=1,
                    help="measurement runs on the same seeded ledger (fresh servers each); "
                         "the target is judged on the median of the runs' p99 (default 1)")
    ap.add_argument("--baseline-tree", type=Path, metavar="DIR",
                    help="also serve the ledger with the code of this checkout (e.g. `git "
                         "worktree add /tmp/tc-base <commit>`), on a copy of it, and send "
                         "every request to both servers in turn: an A/B in one run")
    ap.add_argument("--serve", nargs=4, help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    if args.serve:
        serve(*args.serve)
        return 0
    punches = args.entries or (100_000 if args.quick else 1_000_000)
    requests = args.requests or (500 if args.quick else 2_000)
    trees = {"this tree": common.ROOT}
    if args.baseline_tree is not None:
        if not (args.baseline_tree / "bench" / "proofs.py").is_file():
            ap.error(f"--baseline-tree {args.baseline_tree}: no bench/proofs.py there")
        trees[f"baseline tree {args.baseline_tree}"] = args.baseline_tree.resolve()
    with tempfile.TemporaryDirectory(prefix="tc-bench-proofs-") as tmp:
        work = Path(tmp)
        print(common.header("Merkle proofs served through the HTTPS API", data_dir=work))
        now = dt.datetime.now(dt.UTC)
        ca = CertificateAuthority.init(work / "ca", now=now, common_name="bench CA")
        files = ca.issue_server(dns=["localhost"], ips=["127.0.0.1"], now=now, name="api")
        ledger = prepare(work / "ledger.db", punches)
        p99s: dict[str, dict[str, list[float]]] = {}
        for n in range(1, args.runs + 1):
            dbs: dict[str, Path] = {}
            results = run(ledger, cert=files.cert_file, key=files.key_file, ca=ca.cert_file,
                          requests=requests, punches=punches, trees=trees, dbs=dbs)
            if results is None:
                print("API server did not start", file=sys.stderr)
                return 1
            print(f"\n# run {n} of {args.runs} (load {os.getloadavg()[0]:.2f})")
            for label, res in results.items():
                report(label, res, server_durations(dbs[label], ledger.size),
                       target=label == "this tree" and args.runs == 1)
                for kind, ms in res.items():
                    p99s.setdefault(label, {}).setdefault(kind, []).append(
                        common.percentile(ms, 99))
            for db in dbs.values():
                if db != ledger.db:
                    db.unlink()
        print("\nclient  : send to last body byte, sequential on one keep-alive HTTPS "
              "connection per server")
        print("server  : duration_us of each request's access ledger entry (middleware in to "
              "response: no TLS, no client)")
        print("baseline: GET /v1/log/checkpoint, same connection and token (authentication, "
              "access log, one small read): what the API costs without a proof")
        rows = [[label, kind, " · ".join(f"{v:.2f}" for v in vs), f"{common.median(vs):.2f}"]
                for label, kinds in p99s.items() for kind, vs in kinds.items()]
        print(common.table(["server", "request", "client p99 per run ms", "median"], rows))
        mine = p99s["this tree"]
        ok = all(common.median(mine[k]) <= TARGET_P99_MS for k in ("inclusion", "consistency"))
        print(f"target  : median client p99 ≤ {TARGET_P99_MS} ms for both proofs → "
              f"{'OK' if ok else 'MISSED'}")
        print(f"load    : {os.getloadavg()[0]:.2f} at the end")
        return 0 if ok else 1

if __name__ == "__main__":
    os.environ.setdefault("PYTHONHASHSEED", "0")
    sys.exit(main())
