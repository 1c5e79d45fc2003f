"""Helpers for the end-to-end tests: real processes built by lab.site.Site."""

from __future__ import annotations

import subprocess
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from collector.ledger import open_store
from collector.ledger.sqlbase import PunchQuery
from lab.site import REPO, Site, _env, wait_for

__all__ = ["Site", "assert_exactly_once", "bundle_verifies", "cli", "running_site",
           "simulated", "wait_for"]


def simulated(*, interval_s: float, count: int, action: str = "punch",
              name: str = "desk") -> dict[str, dict[str, Any]]:
    """A simulated reader section (real plugin, no hardware)."""
    return {name: {"kind": "simulated", "credentials": [f"{n:06d}" for n in range(1, 7)],
                   "interval_s": interval_s, "count": count, "action": action,
                   "debounce_s": 0.0}}


def cli(*args: str, timeout_s: float = 60.0) -> subprocess.CompletedProcess[str]:
    """Run ``python -m <module> args`` (collector.cli.main, agent.provision, wire.verify_cli)."""
    return subprocess.run([sys.executable, "-m", *args], capture_output=True, text=True,
                          env=_env(), cwd=REPO, timeout=timeout_s, check=False)


@contextmanager
def running_site(root: Path, **kw: Any) -> Iterator[Site]:
    site = Site(root, say=lambda _m: None, **kw)
    try:
        yield site
    finally:
        site.close()


def assert_exactly_once(site: Site) -> None:
    """Every clock's queue is empty and the ledger holds seq 1..last once each, no gaps."""
    store = open_store(site.store_url)
    try:
        for c in site.clocks:
            depth, last = c.queue_stats()
            seqs = [r.seq for r in store.punch_rows(PunchQuery(device=c.device))]
            assert depth == 0, f"{c.device}: {depth} punches still queued"
            assert sorted(seqs) == list(range(1, last + 1)), \
                f"{c.device}: ledger seqs != 1..{last} (count {len(seqs)})"
            assert store.progress(c.device).gaps == ()
    finally:
        store.close()


def bundle_verifies(site: Site, out: Path) -> str:
    ok, summary, verify_out = site.verify_and_export(out)
    assert ok, f"{summary}\n{verify_out}"
    assert "RESULT: OK" in verify_out
    return verify_out
