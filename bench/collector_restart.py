"""Collector restart time without ``[api]``: exec of ``serve`` → the "MQTT subscribed" log line.

What a restart costs a site (systemd restarting the collector after a database outage or a
watchdog kill): interpreter start, imports, config, opening the SQLite ledger, the log key,
the mTLS connect and the subscription. Measured for two trees in the same run, interleaved
(before, after, before, ...), with the same venv python: ``--before`` (default: the parent
of the commit that made ``serve`` load aiohttp only with ``[api]``) and ``--after`` (default:
HEAD), each checked out into a temporary ``git worktree`` that is removed at the end, and run
as ``python -m collector.cli.main serve --config F`` with ``PYTHONPATH`` and cwd set to the
tree. One broker (tests/fixtures/mosquitto.py: mTLS on a free loopback port) serves all runs;
each tree has its own SQLite ledger, created by a warm-up run that is not counted.

    .venv/bin/python bench/collector_restart.py [--runs 5] [--before REV] [--after REV]
"""

from __future__ import annotations

import argparse
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import common  # sets sys.path to the repository root

from tests.fixtures.mosquitto import MosquittoBroker
from tests.fixtures.pki import TestPKI
from wire.keys import SigningKey, save_signing_key

SUBSCRIBED = "MQTT subscribed"
DEFAULT_BEFORE = "3c33bcc^"     # the commit before "serve without [api] loads no aiohttp"


def worktree(rev: str, path: Path) -> Path:
    subprocess.run(["git", "-C", str(common.ROOT), "worktree", "add", "--detach", "-q",
                    str(path), rev], check=True)
    return path


def remove_worktree(path: Path) -> None:
    subprocess.run(["git", "-C", str(common.ROOT), "worktree", "remove", "--force", str(path)],
                   check=False)


def write_config(d: Path, broker: MosquittoBroker, pki: TestPKI) -> Path:
    d.mkdir(parents=True, exist_ok=True)
    key_file = d / "log.key"
    save_signing_key(key_file, SigningKey.generate())
    cert = pki.collector("main")
    cfg = d / "collector.toml"
    cfg.write_text(f"""[collector]
name = "main"
store = "sqlite://{d / 'ledger.db'}"
log_key = "{key_file}"

[mqtt]
host = "{broker.host}"
port = {broker.port}
ca_cert = "{cert.ca_file}"
cert = "{cert.cert_file}"
key = "{cert.key_file}"
""")
    return cfg


def restart_s(tree: Path, cfg: Path, timeout_s: float) -> float:
    """Seconds from exec to the subscribed line; then SIGTERM and wait for a clean stop."""
    env = dict(os.environ, PYTHONPATH=str(tree))
    t0 = time.perf_counter()
    proc = subprocess.Popen([sys.executable, "-m", "collector.cli.main", "serve", "--config",
                             str(cfg)], cwd=tree, env=env, stderr=subprocess.PIPE, text=True)
    assert proc.stderr is not None
    deadline = time.monotonic() + timeout_s
    seen: list[str] = []
    try:
        for line in proc.stderr:
            seen.append(line)
            if SUBSCRIBED in line:
                return time.perf_counter() - t0
            if time.monotonic() > deadline:
                break
        raise RuntimeError(f"{tree}: no {SUBSCRIBED!r} line; stderr:\n{''.join(seen)[-2000:]}")
    finally:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(30)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(5)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--runs", type=int, default=5)
    ap.add_argument("--before", default=DEFAULT_BEFORE, help="git revision (default: %(default)s)")
    ap.add_argument("--after", default="HEAD", help="git revision (default: %(default)s)")
    ap.add_argument("--timeout", type=float, default=60.0)
    a = ap.parse_args(argv)
    tmp = Path(tempfile.mkdtemp(prefix="tc-restart-"))
    trees: dict[str, Path] = {}
    broker: MosquittoBroker | None = None
    try:
        for label, rev in (("before", a.before), ("after", a.after)):
            trees[label] = worktree(rev, tmp / label)
        revs = {k: subprocess.run(["git", "-C", str(p), "rev-parse", "--short", "HEAD"],
                                  capture_output=True, text=True, check=True).stdout.strip()
                for k, p in trees.items()}
        print(common.header("collector restart without [api]: exec of serve → "
                            f"{SUBSCRIBED!r}", data_dir=tmp))
        print(f"trees   : before={a.before} ({revs['before']}), after={a.after} "
              f"({revs['after']}); {a.runs} runs each, interleaved, after one warm-up each")
        pki = TestPKI(tmp / "pki")
        broker = MosquittoBroker(pki, tmp / "broker", collectors=("main",))
        broker.start()
        cfgs = {k: write_config(tmp / f"site-{k}", broker, pki) for k in trees}
        for k, tree in trees.items():            # creates each ledger; warms the page cache
            restart_s(tree, cfgs[k], a.timeout)
        times: dict[str, list[float]] = {k: [] for k in trees}
        for _ in range(a.runs):
            for k, tree in trees.items():
                times[k].append(restart_s(tree, cfgs[k], a.timeout))
        rows = [(k, revs[k], " ".join(f"{t:.3f}" for t in ts), f"{common.median(ts):.3f}",
                 f"{min(ts):.3f}-{max(ts):.3f}") for k, ts in times.items()]
        print(common.table(["tree", "commit", "runs (s)", "median s", "spread s"], rows))
        b, c = common.median(times["before"]), common.median(times["after"])
        print(f"after/before median: {c / b:.2f} ({(b - c) * 1000:+.0f} ms)")
    finally:
        if broker is not None:
            broker.close()
        for p in trees.values():
            remove_worktree(p)
        shutil.rmtree(tmp, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
