"""Tap-to-committed latency of a punch, against a bare SQLite commit on the same filesystem.

A "tap" is timed from the moment a reader would hand it over (``Tap.mono_us``) until
:meth:`agent.punches.PunchMaker.record` returns, i.e. the punch is built, signed (Ed25519),
encrypted (XChaCha20-Poly1305), committed with ``synchronous=FULL`` in WAL mode and its
sequence mark written (agent/seqmark.py: one pwrite + fdatasync, as the agent runs;
``--no-mark`` measures without it, as before the mark existed). The
baseline is a bare ``INSERT`` + ``COMMIT`` of a row of the same size into a plain SQLite file
with the same pragmas, interleaved tap by tap so both see the same disk. Each run uses fresh
files; the table shows medians over runs of each run's p50/p99.

Target: median p99 of a punch ≤ 2 × median p99 of the bare commit; exit status 1 if missed.

    python bench/agent_latency.py             # 5 runs x 300 taps
    python bench/agent_latency.py --quick     # 3 runs x 100 taps
    python bench/agent_latency.py --no-mark   # the outbox without its sequence mark
"""

from __future__ import annotations

import argparse
import os
import shutil
import sqlite3
import sys
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path

import common  # sets sys.path to the repository root

from agent.punches import PunchMaker
from agent.queue import Outbox
from agent.readers.base import Tap
from agent.seqmark import SeqMark
from wire.keys import SigningKey

TARGET_RATIO = 2.0


def _bare_db(path: Path) -> sqlite3.Connection:
    conn = sqlite3.connect(path, isolation_level=None)
    conn.execute("PRAGMA journal_mode=WAL").fetchone()
    conn.execute("PRAGMA synchronous=FULL")
    conn.execute("CREATE TABLE t (seq INTEGER PRIMARY KEY, created_us INTEGER NOT NULL, "
                 "nonce BLOB NOT NULL, ct BLOB NOT NULL)")
    return conn


def one_run(workdir: Path, taps: int, *, mark: bool = True) -> tuple[list[float], list[float]]:
    """Return (punch latencies, bare commit latencies) in milliseconds."""
    run_dir = Path(tempfile.mkdtemp(prefix="latency-", dir=workdir))
    try:
        key = os.urandom(32)
        outbox = Outbox(run_dir / "queue.db", key, "bench-clock",
                        mark=SeqMark(run_dir / "seqmark", key, "bench-clock") if mark else None)
        maker = PunchMaker(outbox, SigningKey.generate())
        bare = _bare_db(run_dir / "bare.db")
        punch_ms: list[float] = []
        bare_ms: list[float] = []
        row_len = 0
        for i in range(taps):
            t0 = time.monotonic_ns()
            tap = Tap("front", f"em4100:{i:010d}", "in", t0 // 1000)
            signed = maker.record(tap)
            punch_ms.append((time.monotonic_ns() - t0) / 1e6)
            row_len = row_len or len(signed.to_bytes()) + 16   # ciphertext = plaintext + tag
            b0 = time.monotonic_ns()
            bare.execute("BEGIN IMMEDIATE")
            bare.execute("INSERT INTO t VALUES (?, ?, ?, ?)",
                         (i + 1, b0 // 1000, os.urandom(24), os.urandom(row_len)))
            bare.execute("COMMIT")
            bare_ms.append((time.monotonic_ns() - b0) / 1e6)
        bare.close()
        outbox.close()
        return punch_ms, bare_ms
    finally:
        shutil.rmtree(run_dir, ignore_errors=True)


def main(argv: Sequence[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--runs", type=int, default=5, help="independent runs (default 5)")
    ap.add_argument("--taps", type=int, default=300, help="taps per run (default 300)")
    ap.add_argument("--quick", action="store_true", help="3 runs x 100 taps")
    ap.add_argument("--no-mark", action="store_true",
                    help="no sequence mark (the outbox before agent/seqmark.py)")
    ap.add_argument("--dir", type=Path, default=None,
                    help="directory on the filesystem to measure (default: a temp dir)")
    args = ap.parse_args(argv)
    if args.quick:
        args.runs, args.taps = 3, 100
    if args.runs < 1 or args.taps < 10:
        ap.error("need --runs ≥ 1 and --taps ≥ 10")
    workdir = Path(args.dir) if args.dir else Path(tempfile.gettempdir())
    workdir.mkdir(parents=True, exist_ok=True)
    print(common.header("agent tap-to-committed latency", data_dir=workdir))

    rows = []
    p50s: list[tuple[float, float]] = []
    p99s: list[tuple[float, float]] = []
    for r in range(args.runs):
        punch, bare = one_run(workdir, args.taps, mark=not args.no_mark)
        p = (common.percentile(punch, 50), common.percentile(punch, 99))
        b = (common.percentile(bare, 50), common.percentile(bare, 99))
        p50s.append((p[0], b[0]))
        p99s.append((p[1], b[1]))
        rows.append([f"run {r + 1}", f"{p[0]:.2f}", f"{p[1]:.2f}", f"{b[0]:.2f}", f"{b[1]:.2f}",
                     f"{p[1] / b[1]:.2f}"])
    med = [common.median([x[0] for x in p50s]), common.median([x[0] for x in p99s]),
           common.median([x[1] for x in p50s]), common.median([x[1] for x in p99s])]
    ratio = med[1] / med[3]
    rows.append(["median", *(f"{v:.2f}" for v in med), f"{ratio:.2f}"])
    print(f"{args.runs} runs x {args.taps} taps; milliseconds; sequence mark "
          f"{'off' if args.no_mark else 'on'}")
    print(common.table(["", "punch p50", "punch p99", "bare p50", "bare p99", "p99 ratio"],
                       rows))
    ok = ratio <= TARGET_RATIO
    print(f"punch p99 / bare commit p99 = {ratio:.2f} (target ≤ {TARGET_RATIO:.1f}): "
          f"{'PASS' if ok else 'FAIL'}")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
