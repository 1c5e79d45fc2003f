"""Streaming punches as NDJSON through the HTTPS API: throughput and server memory.

Setup, once per invocation: a CA and server certificate (collector.fleet.pki) in a temp dir, a
SQLite ledger seeded with ``--rows`` pre-signed punches (Ed25519, chained per device) by
direct batched ``store.append`` calls, and an ``hr.read`` token.

Each run: the API server runs in its own process (collector.api.start_api, HTTPS, TLS ≥ 1.2,
real token authentication and access logging); the client (aiohttp, this process) GETs
``/v1/punches?format=ndjson`` and counts rows as they stream. The server's RSS is sampled
from /proc every 50 ms; growth = peak during the stream − RSS just before it.

Baseline, same run: the raw floor without HTTP, TLS, auth or the API's row shaping — a plain
``sqlite3`` cursor over the same punch rows, each row ``json.dumps``-ed (what any NDJSON export
of this ledger must at least do); the ratio API / baseline shows what the API layer costs.

Targets: median ≥ 50,000 rows/s and RSS growth < 50 MB; exit status 1 if missed.

    python bench/export.py            # 3 runs, 1,000,000 punches
    python bench/export.py --quick    # 2 runs, 100,000 punches

``--payroll``: the payroll export with decryption (issue 12: ≥ 50,000 rows/s, RSS growth
< 50 MB for 1M rows), A/B in one run. Two SQLite ledgers get the same ``--rows`` signed
punches (the same bytes, appended batch by batch to both) of ``--people`` employees, each with
one badge, imported first through the people directory (collector.people.csv_import): **A**
plain, **B** keyed (``[ledger] kek`` a file KEK: every punch body sealed under its employee's
(subject, month) data key, the projection's credential column a blind index). Punches are
5 s apart, so 1M rows span 58 days: three months, ``--people`` × 3 data keys. Each run is
``timeclock-collector export --payroll --out FILE`` (CSV, the default payroll field set,
corrections applied, every row checked against its entry and body hash) in a fresh child
process, A and B alternating (A first in odd runs), with ``--jobs`` (default 0: the export
checks and formats its rows in one worker process per CPU, at most 4, each a forked child
reading its own chunks of device time; 1: one process). The child reports the command's wall
time, the CPU time of the command and its workers, and its memory growth: sampled every
20 ms, its own RSS plus each worker's private memory (Private_Clean + Private_Dirty of
/proc/PID/smaps_rollup: the pages a worker does not share with it), peak − RSS before.

    python bench/export.py --payroll            # 3 runs each, 1,000,000 punches
    python bench/export.py --payroll --quick    # 2 runs each, 100,000 punches
    python bench/export.py --payroll --jobs 1   # one process (the baseline of --jobs)
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import datetime as dt
import json
import os
import socket
import ssl
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Sequence
from pathlib import Path

import aiohttp
import common  # sets sys.path to the repository root

from collector.access.directory import Principals
from collector.api import ApiSection, start_api
from collector.fleet.pki import CertificateAuthority
from collector.ledger.base import EventFact, PunchFact
from collector.ledger.sqlite import SQLiteStore
from wire import ZERO_HASH
from wire.keys import SigningKey
from wire.punch import Punch
from wire.topics import punches as topic

TARGET_ROWS_S = 50_000
TARGET_RSS_MB = 50.0
T0 = 1_764_140_400_000_000


def rss_kb(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    return 0


def seed(db: Path, rows: int, devices: int) -> float:
    """Fill ``db`` with ``rows`` signed punches over ``devices`` clocks; returns seconds."""
    started = time.perf_counter()
    store = SQLiteStore(db)
    store._conn.execute("PRAGMA synchronous = OFF")  # seeding only; the API reads normally
    keys = {f"clock-{d:03d}": SigningKey.generate() for d in range(devices)}
    store.append([EventFact("device", {"event": "enrolled", "device": dev, "site": "hq",
                                       "key": k.key_id, "signing_key": k.verify_key.b64})
                  for dev, k in keys.items()], now_us=T0)
    prev = dict.fromkeys(keys, ZERO_HASH)
    per_device = rows // devices
    batch: list[PunchFact] = []
    n = 0
    for seq in range(1, per_device + 1):
        for dev, k in keys.items():
            p = Punch(device=dev, seq=seq, prev=prev[dev], ts=T0 + n * 1000, clock="synced",
                      boot="6b2f1e0c-3c4d-4e8a-9f1a-2b3c4d5e6f70", mono=seq, reader="front",
                      credential=f"em4100:{n % 5000:010d}",
                      action="in" if seq % 2 else "out", key=k.key_id)
            prev[dev] = p.hash()
            batch.append(PunchFact(p.sign(k), topic(dev), T0 + n * 1000))
            n += 1
            if len(batch) >= 5000:
                store.append(batch, now_us=T0 + n * 1000)
                batch = []
    if batch:
        store.append(batch, now_us=T0 + n * 1000)
    store.close()
    return time.perf_counter() - started


PEOPLE_T0 = "2025-01-01T00:00:00Z"
PAYROLL_GAP_US = 5_000_000


def vm_kb(field: str) -> int:
    """``field`` (VmHWM, VmRSS) of this process from /proc, in kB."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1])
    return 0


def people_files(work: Path, people: int) -> tuple[Path, Path]:
    """An employees and a badges CSV: E00000… each holding badge em4100:{n:010d}."""
    emp, bad = work / "employees.csv", work / "badges.csv"
    emp.write_text("employee_id,name,department,site,timezone,manager_id\n" + "".join(
        f"E{i:05d},Person {i:05d},Operations,hq,Europe/London,\n" for i in range(people)),
        encoding="utf-8")
    bad.write_text("credential,employee_id,valid_from,valid_until,status\n" + "".join(
        f"em4100:{i:010d},E{i:05d},{PEOPLE_T0},,assigned\n" for i in range(people)),
        encoding="utf-8")
    return emp, bad


def seed_pair(plain_db: Path, keyed_db: Path, kek_spec: str, *, rows: int, devices: int,
              people: int, work: Path) -> float:
    """The same directory and signed punches appended to a plain and a keyed ledger."""
    from collector.ledger.kek import load_kek  # noqa: PLC0415 - payroll mode only
    from collector.ledger.keyring import Keyring  # noqa: PLC0415
    from collector.people.csv_import import import_files  # noqa: PLC0415

    started = time.perf_counter()
    stores = [SQLiteStore(plain_db), SQLiteStore(keyed_db)]
    stores[1].use_keyring(Keyring(stores[1], load_kek(kek_spec)))
    emp, bad = people_files(work, people)
    keys = {f"clock-{d:03d}": SigningKey.generate() for d in range(devices)}
    for store in stores:
        store._conn.execute("PRAGMA synchronous = OFF")  # seeding only; exports read normally
        store.append([EventFact("device", {"event": "enrolled", "device": dev, "site": "hq",
                                           "key": k.key_id, "signing_key": k.verify_key.b64})
                      for dev, k in keys.items()], now_us=T0)
        import_files(store, emp, bad, now_us=T0)
    prev = dict.fromkeys(keys, ZERO_HASH)
    batch: list[PunchFact] = []
    n = 0
    for seq in range(1, rows // devices + 1):
        for dev, k in keys.items():
            ts = T0 + n * PAYROLL_GAP_US
            p = Punch(device=dev, seq=seq, prev=prev[dev], ts=ts, clock="synced",
                      boot="6b2f1e0c-3c4d-4e8a-9f1a-2b3c4d5e6f70", mono=seq, reader="front",
                      credential=f"em4100:{n % people:010d}",
                      action="in" if seq % 2 else "out", key=k.key_id)
            prev[dev] = p.hash()
            batch.append(PunchFact(p.sign(k), topic(dev), ts))
            n += 1
            if len(batch) >= 5000:
                for store in stores:
                    store.append(batch, now_us=ts)
                batch = []
    for store in stores:
        if batch:
            store.append(batch, now_us=T0 + n * PAYROLL_GAP_US)
        store.close()
    return time.perf_counter() - started


def private_kb(pid: int) -> int:
    """Memory only process ``pid`` holds (Private_Clean + Private_Dirty, kB): a forked
    worker's own pages, not those it still shares with its parent; 0 once it is gone."""
    try:
        text = Path(f"/proc/{pid}/smaps_rollup").read_text()
    except OSError:
        return 0
    return sum(int(line.split()[1]) for line in text.splitlines()
               if line.startswith(("Private_Clean:", "Private_Dirty:")))


def children_of_self() -> list[int]:
    out: list[int] = []
    for task in Path("/proc/self/task").iterdir():
        with contextlib.suppress(OSError):
            out += [int(p) for p in (task / "children").read_text().split()]
    return out


def payroll_child(url: str, out: str, jobs: str) -> None:
    """Child process: one ``timeclock-collector export --payroll --jobs N``; prints its
    figures. CPU: this process and its export workers. Memory, sampled every 20 ms while the
    command runs: this process's RSS plus each worker's private memory (the pages it does
    not share with this process); growth = the peak of that sum − the RSS just before."""
    from collector.cli.main import main as cli  # noqa: PLC0415 - imported before measuring

    before = vm_kb("VmRSS")
    peak = [before]
    stop = threading.Event()

    def sample() -> None:
        while not stop.wait(0.02):
            total = vm_kb("VmRSS") + sum(private_kb(p) for p in children_of_self())
            peak[0] = max(peak[0], total)

    sampler = threading.Thread(target=sample, daemon=True)
    sampler.start()
    started, t0 = time.perf_counter(), os.times()
    rc = cli(["export", "--store", url, "--payroll", "--out", out, "--purpose", "bench",
              "--jobs", jobs])
    secs, t1 = time.perf_counter() - started, os.times()
    stop.set()
    sampler.join()
    cpu = sum(getattr(t1, f) - getattr(t0, f)
              for f in ("user", "system", "children_user", "children_system"))
    print(json.dumps({"rc": rc, "secs": secs, "cpu_s": cpu, "rss_before_kb": before,
                      "peak_kb": max(peak[0], vm_kb("VmHWM"))}), flush=True)


def payroll_run(url: str, out: Path, kek_spec: str | None, jobs: int
                ) -> tuple[int, float, float, float]:
    """(rows, seconds, peak memory growth MB, CPU seconds) of one export in a fresh child
    process (payroll_child)."""
    from collector.ledger import KEK_ENV  # noqa: PLC0415

    env = {k: v for k, v in os.environ.items() if k != KEK_ENV}
    if kek_spec is not None:
        env[KEK_ENV] = kek_spec
    done = subprocess.run([sys.executable, __file__, "--payroll-child", url, str(out),
                           str(jobs)],
                          env=env, capture_output=True, text=True, check=False, timeout=3600)
    if done.returncode != 0:
        raise RuntimeError(f"export child failed ({done.returncode}): {done.stderr[-2000:]}")
    fig = json.loads(done.stdout.strip().splitlines()[-1])
    if fig["rc"] != 0:
        raise RuntimeError(f"export exited {fig['rc']}: {done.stderr[-2000:]}")
    rows = 0
    with out.open(encoding="utf-8") as f:
        for line in f:
            if line.startswith("# ") and '"trailer"' in line:
                rows = json.loads(line[2:])["trailer"]["rows"]
    out.unlink()
    return rows, fig["secs"], (fig["peak_kb"] - fig["rss_before_kb"]) / 1024, fig["cpu_s"]


def payroll_main(rows: int, runs: int, people: int, jobs: int) -> int:
    from collector.ledger.kek import create_file_kek  # noqa: PLC0415 - payroll mode only

    with tempfile.TemporaryDirectory(prefix="tc-bench-payroll-") as tmp:
        work = Path(tmp)
        print(common.header("Payroll export with decryption: plain (A) vs keyed (B) ledger",
                            data_dir=work))
        from collector.records.exports import default_jobs  # noqa: PLC0415
        print(f"jobs    : --jobs {jobs} ({default_jobs() if jobs == 0 else jobs} worker "
              f"process(es) when the ledger splits into chunks)")
        create_file_kek(work / "kek.key")
        spec = f"file:{work / 'kek.key'}"
        plain_db, keyed_db = work / "plain.db", work / "keyed.db"
        seed_s = seed_pair(plain_db, keyed_db, spec, rows=rows, devices=50, people=people,
                           work=work)
        print(f"seeded  : {rows:,} signed punches of {people:,} employees into both ledgers "
              f"in {seed_s:.1f} s; plain {plain_db.stat().st_size / 2**20:.0f} MiB, keyed "
              f"{keyed_db.stat().st_size / 2**20:.0f} MiB")
        sides = {"A": (f"sqlite:///{plain_db}", None), "B": (f"sqlite:///{keyed_db}", spec)}
        results: dict[str, list[tuple[float, float, float, float]]] = {"A": [], "B": []}
        for i in range(runs):
            for side in ("A", "B") if i % 2 == 0 else ("B", "A"):
                url, kek = sides[side]
                n, secs, growth, cpu = payroll_run(url, work / "out.csv", kek, jobs)
                if n != rows:
                    print(f"run {i + 1} {side}: expected {rows} rows, got {n}",
                          file=sys.stderr)
                    return 1
                results[side].append((n / secs, secs, growth, n / cpu))
        print(common.table(
            ["run", "rows", "A s", "A rows/s", "A rows/CPU-s", "A RSS growth MB", "B s",
             "B rows/s", "B rows/CPU-s", "B RSS growth MB", "B / A"],
            [[i + 1, f"{rows:,}", f"{a[1]:.2f}", f"{a[0]:,.0f}", f"{a[3]:,.0f}", f"{a[2]:.1f}",
              f"{b[1]:.2f}", f"{b[0]:,.0f}", f"{b[3]:,.0f}", f"{b[2]:.1f}",
              f"{b[0] / a[0]:.2f}"]
             for i, (a, b) in enumerate(zip(results["A"], results["B"], strict=True))]))
        med = {s: common.median([r for r, *_ in results[s]]) for s in results}
        cpu_med = {s: common.median([c for *_, c in results[s]]) for s in results}
        worst = max(g for _, _, g, _ in results["B"])
        print(f"CPU     : rows per CPU-second of the export process and its workers, median A "
              f"{cpu_med['A']:,.0f}, B {cpu_med['B']:,.0f} (steadier than wall time on a "
              f"shared machine)")
        ok = med["B"] >= TARGET_ROWS_S and worst < TARGET_RSS_MB
        print(f"median  : A (plain) {med['A']:,.0f} rows/s; B (keyed, decrypting) "
              f"{med['B']:,.0f} rows/s (target ≥ {TARGET_ROWS_S:,}), B / A "
              f"{med['B'] / med['A']:.2f}; B peak RSS growth worst {worst:.1f} MB (target < "
              f"{TARGET_RSS_MB:.0f} MB) → {'OK' if ok else 'MISSED'}")
        return 0 if ok else 1


def serve(db: str, port: int, cert: str, key: str) -> None:
    """Child process: serve the API over HTTPS until stdin closes."""

    async def main() -> None:
        store = SQLiteStore(Path(db))
        section = ApiSection(cert=Path(cert), key=Path(key), listen="127.0.0.1", port=port)
        runner = await start_api(section, store, log_keys={})
        print("READY", flush=True)
        await asyncio.get_running_loop().run_in_executor(None, sys.stdin.read)
        await runner.cleanup()
        store.close()

    asyncio.run(main())


async def fetch(url: str, token: str, ctx: ssl.SSLContext) -> tuple[int, float]:
    rows = 0
    started = time.perf_counter()
    async with aiohttp.ClientSession() as s, s.get(
            url, headers={"Authorization": f"Bearer {token}"}, ssl=ctx) as r:
        if r.status != 200:
            raise RuntimeError(f"{r.status}: {await r.text()}")
        async for chunk in r.content.iter_chunked(1 << 20):
            rows += chunk.count(b"\n")
    return rows, time.perf_counter() - started


def one_run(db: Path, token: str, *, cert: Path, key: Path, ca: Path
            ) -> tuple[int, float, float]:
    port = common_free_port()
    proc = subprocess.Popen([sys.executable, __file__, "--serve", str(db), str(port),
                             str(cert), str(key)], stdin=subprocess.PIPE,
                            stdout=subprocess.PIPE, text=True)
    try:
        assert proc.stdout is not None
        if proc.stdout.readline().strip() != "READY":
            raise RuntimeError("API server did not start")
        base = rss_kb(proc.pid)
        peak = base
        done = threading.Event()

        def sample() -> None:
            nonlocal peak
            while not done.wait(0.05):
                peak = max(peak, rss_kb(proc.pid))

        t = threading.Thread(target=sample, daemon=True)
        t.start()
        ctx = ssl.create_default_context(cafile=str(ca))
        rows, secs = asyncio.run(fetch(f"https://127.0.0.1:{port}/v1/punches?format=ndjson",
                                       token, ctx))
        done.set()
        t.join()
        peak = max(peak, rss_kb(proc.pid))
        return rows, secs, (peak - base) / 1024
    finally:
        if proc.stdin is not None:
            proc.stdin.close()
        proc.wait(30)


def baseline(db: Path) -> tuple[int, float]:
    """Raw floor: iterate the punch rows with a bare sqlite3 cursor, one JSON line each."""
    import json  # noqa: PLC0415 -- only the baseline needs it
    import sqlite3  # noqa: PLC0415

    conn = sqlite3.connect(f"file:{db}?mode=ro", uri=True)
    rows = 0
    started = time.perf_counter()
    cur = conn.execute("SELECT device, site, seq, credential, action, ts, clock, idx, punch_hash "
                       "FROM punches ORDER BY ts, device, seq")
    cols = [d[0] for d in cur.description]
    for row in cur:
        json.dumps(dict(zip(cols, row, strict=True)))
        rows += 1
    secs = time.perf_counter() - started
    conn.close()
    return rows, secs


def common_free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


def main(argv: Sequence[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true", help="2 runs of 100,000 punches")
    ap.add_argument("--rows", type=int, help="punches in the ledger (default 1,000,000)")
    ap.add_argument("--runs", type=int, help="runs (default 3)")
    ap.add_argument("--payroll", action="store_true",
                    help="payroll export A/B: plain vs keyed ledger (decryption)")
    ap.add_argument("--people", type=int, default=5000,
                    help="employees (and badges) of the --payroll ledgers (default 5,000)")
    ap.add_argument("--serve", nargs=4, help=argparse.SUPPRESS)
    ap.add_argument("--jobs", type=int, default=0, metavar="N",
                    help="--payroll: the export's --jobs (default 0: one worker per CPU, "
                         "at most 4; 1: one process)")
    ap.add_argument("--payroll-child", nargs=3, help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    if args.serve:
        serve(*args.serve)
        return 0
    if args.payroll_child:
        payroll_child(*args.payroll_child)
        return 0
    rows = args.rows or (100_000 if args.quick else 1_000_000)
    runs = args.runs or (2 if args.quick else 3)
    if args.payroll:
        return payroll_main(rows, runs, args.people, args.jobs)

    with tempfile.TemporaryDirectory(prefix="tc-bench-export-") as tmp:
        work = Path(tmp)
        print(common.header("API NDJSON export: punches streamed over HTTPS", data_dir=work))
        now = dt.datetime.now(dt.UTC)
        ca = CertificateAuthority.init(work / "ca", now=now, common_name="bench CA")
        server = ca.issue_server(dns=["localhost"], ips=["127.0.0.1"], now=now, name="api")
        db = work / "ledger.db"
        seed_s = seed(db, rows, devices=50)
        print(f"seeded  : {rows:,} signed punches in {seed_s:.1f} s "
              f"({rows / seed_s:,.0f}/s, batched store.append of pre-signed punches); "
              f"db {db.stat().st_size / 2**20:.0f} MiB")
        store = SQLiteStore(db)
        token = Principals(store).create_token("bench", ["hr.read"], expires_days=1,
                                               actor="bench", now_us=time.time_ns() // 1000
                                               ).token
        store.close()
        results = []
        for i in range(runs):
            n, secs, growth = one_run(db, token, cert=server.cert_file, key=server.key_file,
                                      ca=ca.cert_file)
            if n != rows:
                print(f"run {i + 1}: expected {rows} rows, got {n}", file=sys.stderr)
                return 1
            bn, bsecs = baseline(db)
            results.append((n / secs, growth, secs, bn / bsecs))
        print(common.table(["run", "rows", "seconds", "rows/s", "server RSS growth MB",
                            "baseline rows/s", "API / baseline"],
                           [[i + 1, f"{rows:,}", f"{s:.2f}", f"{r:,.0f}", f"{g:.1f}",
                             f"{b:,.0f}", f"{r / b:.2f}"]
                            for i, (r, g, s, b) in enumerate(results)]))
        print(f"baseline: median {common.median([b for *_, b in results]):,.0f} rows/s (bare "
              f"sqlite3 cursor + json.dumps per row, same ledger, same run)")
        med_rate = common.median([r for r, *_ in results])
        med_growth = common.median([g for _, g, *_ in results])
        worst_growth = max(g for _, g, *_ in results)
        ok = med_rate >= TARGET_ROWS_S and worst_growth < TARGET_RSS_MB
        print(f"median  : {med_rate:,.0f} rows/s (target ≥ {TARGET_ROWS_S:,}); RSS growth "
              f"median {med_growth:.1f} MB, worst {worst_growth:.1f} MB (target < "
              f"{TARGET_RSS_MB:.0f} MB) → {'OK' if ok else 'MISSED'}")
        return 0 if ok else 1


if __name__ == "__main__":
    os.environ.setdefault("PYTHONHASHSEED", "0")
    sys.exit(main())
