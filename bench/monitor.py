"""In-process cost of the ingest monitor (issue 14: metrics and detectors ≤ 5 % of ingest).

What ``Ingestor.observe`` costs the writer thread per punch, without a broker or a store:
``IngestMonitor.committed`` (the ingest counters, the latency histogram and every detector,
collector.ingest.detectors) over the batches the service's writer gets in bench/ingest.py's
end-to-end workload — 10 clocks × 10,000 punches, each badge new, one second apart, envelopes
of 500 punches, four envelopes (2,000 facts) per batch, all appended. That workload is the
buddy-pair detector's worst case (every punch makes a pair seen for the first time). Timed
with the thread's CPU time (``time.thread_time``), so other jobs on a shared machine distort
it far less than a wall-clock rate; each run starts with fresh detectors. The signed punches
are built once per invocation and frozen out of the garbage collector's view (gc.freeze), so
what is timed is the monitor and the garbage its own state makes.

    python bench/monitor.py              # 5 runs
    python bench/monitor.py --runs 9

The end-to-end A/B is ``bench/ingest.py --monitor-ab``; this one says how much of it is the
monitor itself.
"""

from __future__ import annotations

import argparse
import gc
import statistics
import time
from collections.abc import Sequence

import common  # sets sys.path to the repository root

from collector.ingest.alerts import Alerts
from collector.ingest.detectors import Detectors, DetectorSettings, IngestMonitor
from collector.ledger.base import AppendResult, Fact, Outcome, PunchFact
from tests.collector.punch_kit import SimClock

Batch = tuple[list[int], list[tuple[Fact, AppendResult]]]


def batches(devices: int, per_device: int, envelope: int, per_batch: int, recv: int
            ) -> list[Batch]:
    """The writer's batches: each clock's envelopes interleaved, ``per_batch`` a batch."""
    clocks = [SimClock(f"bench-clock-{i:03d}").batch(per_device) for i in range(devices)]
    out: list[Batch] = []
    idx = 1
    for e in range(0, per_device, envelope):
        for g in range(0, devices, per_batch):
            received: list[int] = []
            done: list[tuple[Fact, AppendResult]] = []
            at = recv + e * 1000
            for punches in clocks[g:g + per_batch]:
                received.append(at)
                for p in punches[e:e + envelope]:
                    done.append((PunchFact(p, "bench", at),
                                 AppendResult(Outcome.APPENDED, idx, p.punch.device,
                                              p.punch.seq)))
                    idx += 1
            out.append((received, done))
    return out


def run(work: Sequence[Batch], now_us: int) -> float:
    """µs of writer-thread CPU per punch for one pass with fresh detectors."""
    alerts = Alerts(record=False, clock=lambda: now_us)
    monitor = IngestMonitor(Detectors(alerts, DetectorSettings(), site_of=lambda _d: None,
                                      recorded_at=lambda _idx: None))
    spent = 0.0
    n = 0
    for received, done in work:
        t0 = time.thread_time()
        monitor.committed(received, done, now_us=now_us)
        spent += time.thread_time() - t0
        n += len(done)
    if alerts.unrecorded():
        raise SystemExit("the workload raised alerts: it no longer measures the quiet path")
    return spent / n * 1e6


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--runs", type=int, default=5, help="passes (default 5); median reported")
    p.add_argument("--devices", type=int, default=10, help="clocks (default 10)")
    p.add_argument("--per-device", type=int, default=10_000, help="punches per clock")
    a = p.parse_args()
    recv = int(time.time() * 1e6)
    t0 = time.monotonic()
    work = batches(a.devices, a.per_device, 500, 4, recv)
    gc.collect()
    gc.freeze()
    print(common.header("ingest monitor, in-process"))
    print(f"workload: {a.devices} clocks × {a.per_device:,} punches (each badge new), "
          f"{len(work)} batches, built in {time.monotonic() - t0:.1f} s")
    runs = [run(work, recv + 5_000_000) for _ in range(a.runs)]
    print("monitor CPU per punch, per run: " + ", ".join(f"{r:.2f}" for r in runs) + " µs")
    print(f"monitor CPU per punch (median): {statistics.median(runs):.2f} µs")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
