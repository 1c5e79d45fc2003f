"""The ingest writer thread's work per punch, plain (A) against sealed and keyed (B), in process.

bench/ingest.py --sealing-ab measures the whole path (broker, paho, judging, the writer); its
rate is bound by the single writer thread (collector.ingest.pipeline.Writer), which commits
while the judge-ahead thread judges the next batch. This bench isolates the two: the same
workload as --sealing-ab (10 clocks' backlogs, badges from a pool of 500, envelopes ≤ 180,000
bytes plain; B's sealed to the ledger's seal key), judged in batches of ≤ 2,000 punches as the
Writer collects them, then committed (``Ingestor.commit``: the store's append with its
receipts) into a fresh SQLite ledger per side and run: A plain, B keyed (a file KEK).

Reported per side, medians over ``--runs`` interleaved runs: the thread CPU time (user+sys,
``time.thread_time``) per punch of judging (the judge-ahead thread's share: decode, open,
verify, and on B each punch's SealPlan) and of the writer thread's share (the registry and
directory snapshots it reads per batch, and ``Ingestor.commit``). With ``--profile``: B's
commits under cProfile, top functions by their own time; with ``--steps``: one more B side
with thread-CPU timers around the sealing steps.

    python bench/seal_writer.py                # 3 runs of 4 clocks × 5,000 punches
    python bench/seal_writer.py --profile      # + the profile of B's commits
    cp bench/seal_writer.py /tmp/tc-base/bench/ && python /tmp/tc-base/bench/seal_writer.py
                                               # the same against an older checkout
"""

from __future__ import annotations

import argparse
import cProfile
import io
import pstats
import shutil
import sys
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import common  # sets sys.path to the repository root
from ingest import BADGES, SEALED_PLAIN_BYTES, T0_US, make_fleet, sealed_fleet

from collector.ingest.alerts import Alerts
from collector.ingest.pipeline import Inbound, Ingestor
from collector.ledger import open_store, registry
from collector.ledger.base import Fact
from collector.ledger.kek import create_file_kek
from collector.ledger.sqlbase import SQLStore
from collector.ledger.sqlite import SQLiteStore
from wire.keys import SigningKey
from wire.sealed import SealKey

BATCH_MAX = 2000          # the Writer's default batch_max


def _store(d: Path, keyed: bool) -> SQLStore:
    d.mkdir()
    if not keyed:
        return SQLiteStore(d / "ledger.db")
    create_file_kek(d / "ledger.kek")
    return open_store(f"sqlite://{d / 'ledger.db'}", kek=f"file:{d / 'ledger.kek'}")


def one_side(d: Path, envelopes: list[tuple[str, str, bytes, int]], clocks: Sequence[object],
             seal_key: SealKey | None, *, profile: cProfile.Profile | None = None
             ) -> tuple[float, float, int]:
    """(judge µs per punch, commit µs per punch, punches) of one side on a fresh ledger."""
    store = _store(d, seal_key is not None)
    try:
        for c in clocks:
            registry.enroll(store, c.device, "hq", c.key.verify_key.b64,  # type: ignore[attr-defined]
                            now_us=T0_US)
        ing = Ingestor(store, lambda: registry.RegistrySnapshot.load(store),
                       SigningKey.generate(), Alerts(), seal_key=seal_key)
        # a tree from before the SealPlans (PYTHONPATH=<that checkout>: its collector)
        plans = hasattr(ing, "planner")
        judge_s = commit_s = 0.0
        n = 0
        i = 0
        while i < len(envelopes):
            tw = time.thread_time()
            reg = ing.registry()                # the writer reads both snapshots
            planner = ing.planner() if plans else None
            t0 = time.thread_time()
            commit_s += t0 - tw
            groups: list[tuple[Inbound, list[Fact]]] = []
            facts = 0
            while i < len(envelopes) and facts < BATCH_MAX:
                _, topic, payload, k = envelopes[i]
                groups.append((m := Inbound(topic, payload, T0_US + i),
                               ing.judge(m, reg, planner) if plans else ing.judge(m, reg)))
                facts += k
                i += 1
            t1 = time.thread_time()
            if profile is not None:
                profile.enable()
            ing.commit(groups, now_us=T0_US + i)
            if profile is not None:
                profile.disable()
            t2 = time.thread_time()
            judge_s += t1 - t0
            commit_s += t2 - t1
            n += facts
        return judge_s * 1e6 / n, commit_s * 1e6 / n, n
    finally:
        store.close()


STEPS = (("collector.ledger.body_crypto", "BodySealer", "subjects"),
         ("collector.ledger.body_crypto", "BodySealer", "seal_all"),
         ("collector.ledger.body_crypto", None, "seal_many"),
         ("collector.ledger.keyring", "Keyring", "data_keys"),
         ("collector.ledger.keyring", "Keyring", "blind"),
         ("collector.ledger.sqlbase", "_Append", "_sealed_bodies"),
         ("collector.ledger.sqlbase", "_Append", "run"))


def steps(d: Path, envelopes: list[tuple[str, str, bytes, int]], clocks: Sequence[object],
          key: SealKey) -> str:
    """One B side with thread-CPU timers around the sealing steps (nested: seal_many and
    data_keys are inside seal_all, which is inside _sealed_bodies, inside run)."""
    import importlib  # noqa: PLC0415

    spent: dict[str, list[float]] = {}
    undo: list[tuple[object, str, object]] = []

    def timed(name: str, f: Any) -> Any:
        acc = spent.setdefault(name, [0.0, 0])

        def wrapper(*args: Any, **kwargs: Any) -> Any:
            t = time.thread_time()
            try:
                return f(*args, **kwargs)
            finally:
                acc[0] += time.thread_time() - t
                acc[1] += 1
        return wrapper

    for mod, cls, fn in STEPS:
        owner = importlib.import_module(mod)
        if cls is not None:
            owner = getattr(owner, cls)
        undo.append((owner, fn, owner.__dict__[fn]))
        setattr(owner, fn, timed(f"{cls + '.' if cls else ''}{fn}", owner.__dict__[fn]))
    try:
        _, commit_us, n = one_side(d, envelopes, clocks, key)
    finally:
        for owner, fn, f in undo:
            setattr(owner, fn, f)
    rows = [[name, calls, f"{s * 1e6 / n:.2f}"] for name, (s, calls) in spent.items()]
    rows.append(["Ingestor.commit (all)", "", f"{commit_us:.2f}"])
    return common.table(["step (B, writer thread)", "calls", "µs per punch"], rows)


def main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0] if __doc__ else None)
    p.add_argument("--devices", type=int, default=4)
    p.add_argument("--per-device", type=int, default=5_000)
    p.add_argument("--runs", type=int, default=3)
    p.add_argument("--profile", action="store_true")
    p.add_argument("--top", type=int, default=30)
    p.add_argument("--steps", action="store_true",
                   help="+ one B run with thread-CPU timers around the sealing steps")
    a = p.parse_args(argv)
    tmp = Path(tempfile.mkdtemp(prefix="bench-seal-writer-"))
    print(common.header("ingest writer thread: plain (A) vs sealed + keyed ledger (B)",
                        data_dir=tmp))
    try:
        fleet = make_fleet(a.devices, a.per_device, 500, badges=BADGES,
                           max_bytes=SEALED_PLAIN_BYTES)
        key = SealKey.generate()
        sealed = sealed_fleet(fleet, key)
        res: dict[bool, list[tuple[float, float]]] = {False: [], True: []}
        for r in range(a.runs):
            for b in ((False, True) if r % 2 == 0 else (True, False)):
                j, c, n = one_side(tmp / f"run{r}-{'B' if b else 'A'}",
                                   (sealed if b else fleet).envelopes, fleet.clocks,
                                   key if b else None)
                res[b].append((j, c))
                print(f"run {r + 1} {'B' if b else 'A'}: {n:,} punches, judge {j:.1f} µs, "
                      f"commit {c:.1f} µs per punch (thread CPU)", flush=True)
        rows = []
        for b in (False, True):
            rows.append(["B sealed, keyed" if b else "A plain",
                         f"{common.median([j for j, _ in res[b]]):.1f}",
                         f"{common.median([c for _, c in res[b]]):.1f}",
                         f"{min(j for j, _ in res[b]):.1f}", f"{min(c for _, c in res[b]):.1f}"])
        print("\n" + common.table(["side", "judge µs/punch", "writer µs/punch",
                                    "judge (min)", "writer (min)"], rows))
        ca = common.median([c for _, c in res[False]])
        cb = common.median([c for _, c in res[True]])
        print(f"writer thread: B costs {cb - ca:.1f} µs more per punch "
              f"({100 * (cb / ca - 1):.1f} %)")
        if a.steps:
            print("\n" + steps(tmp / "steps", sealed.envelopes, fleet.clocks, key))
        if a.profile:
            prof = cProfile.Profile()
            one_side(tmp / "profile", sealed.envelopes, fleet.clocks, key, profile=prof)
            buf = io.StringIO()
            pstats.Stats(prof, stream=buf).sort_stats("tottime").print_stats(a.top)
            buf.write("\n--- by cumulative time ---\n")
            pstats.Stats(prof, stream=buf).sort_stats("cumulative").print_stats(a.top)
            print("\nB's commits under cProfile:\n" + buf.getvalue().replace(
                str(common.ROOT) + "/", ""))
        return 0
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
