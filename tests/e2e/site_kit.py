"""Helpers for the end-to-end tests: real processes built by lab.site.Site."""

from __future__ import annotations

import subprocess
import sys
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from collector.ledger import open_store
from collector.ledger.sqlbase import PunchQuery
from lab.site import REPO, Clock, PtyFeed, Site, _env
from tests.polling import wait_for

__all__ = ["Site", "Taps", "assert_exactly_once", "bundle_verifies", "cli", "running_site",
           "simulated", "tapped_clock", "wait_for"]


def simulated(*, interval_s: float, count: int, action: str = "punch",
              name: str = "desk") -> dict[str, dict[str, Any]]:
    """A simulated reader section (real plugin, no hardware)."""
    return {name: {"kind": "simulated", "credentials": [f"{n:06d}" for n in range(1, 7)],
                   "interval_s": interval_s, "count": count, "action": action,
                   "debounce_s": 0.0}}


def tapped_clock(site: Site, device: str) -> Clock:
    """A clock whose serial-line reader (real plugin) reads the lines :class:`Taps` writes
    into a pty: the test, not a fixed reader count, decides how long the clock produces."""
    d = site.root / "clocks" / device
    d.mkdir(parents=True, exist_ok=True)
    feed = PtyFeed(d / "reader.tty")
    readers = {"desk": {"kind": "serial-line", "port": str(feed.link), "format": "wiegand26",
                        "regex": r"W26:([0-9]{1,10})", "action": "punch", "debounce_s": 0.0}}
    try:
        clock = site.add_clock(device, readers)
    except BaseException:
        feed.close()
        raise
    clock.feeds.append(feed)
    return clock


class Taps:
    """Writes one badge line into every tapped clock's pty each ``interval_s`` until stopped,
    at most ``max_taps`` times: the producer of a fault loop keeps producing until the loop is
    done however long its faults take, and stays bounded in count (and the waits in time)."""

    def __init__(self, clocks: list[Clock], *, interval_s: float, max_taps: int = 100_000
                 ) -> None:
        self.feeds = [f for c in clocks for f in c.feeds]
        if len(self.feeds) != len(clocks):
            raise ValueError("every clock needs exactly one pty feed (tapped_clock)")
        self.interval_s = interval_s
        self.max_taps = max_taps
        self.sent = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="taps", daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while self.sent < self.max_taps and not self._stop.wait(self.interval_s):
            n = self.sent + 1
            for feed in self.feeds:
                feed.write(f"W26:{n}\r\n".encode())
            self.sent = n

    def stop(self) -> int:
        """Stop tapping; returns how many badges every clock was shown."""
        self._stop.set()
        self._thread.join(30)
        assert not self._thread.is_alive(), "the tap thread did not stop"
        return self.sent

    def stop_and_drain(self, site: Site, timeout_s: float = 180.0) -> int:
        """Stop tapping, wait until every clock recorded its last tap and drained, and check
        that each clock recorded every tap once, in order: ``k..sent`` for some ``k`` (taps
        written before its reader opened the pty are flushed by the open, never recorded)."""
        sent = self.stop()
        assert sent > 0, "no tap was written"
        last = f"wiegand26:{sent}"

        def done() -> bool:
            return site.drained() and all(
                (ns := recorded_credentials(site, c)) and ns[-1] == last for c in site.clocks)
        try:
            wait_for(done, timeout_s, f"every clock to record tap {sent} and drain")
        except AssertionError as e:
            state = {c.device: (c.queue_stats(), recorded_credentials(site, c)[-1:])
                     for c in site.clocks}
            raise AssertionError(f"{e}; (queue depth, last seq), last recorded: {state}") from e
        for c in site.clocks:
            ns = [int(x.split(":", 1)[1]) for x in recorded_credentials(site, c)]
            assert ns == list(range(ns[0], sent + 1)), \
                f"{c.device}: taps recorded {ns[:3]}..{ns[-3:]} ({len(ns)}), not k..{sent} once"
        return sent


def recorded_credentials(site: Site, clock: Clock) -> list[str]:
    """The clock's recorded credentials in the ledger, in seq order."""
    store = open_store(site.store_url)
    try:
        rows = sorted(store.punch_rows(PunchQuery(device=clock.device)), key=lambda r: r.seq)
    finally:
        store.close()
    return [r.credential for r in rows]


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
