"""Clocks check their own punches' inclusion on a live site (protocol.md §13.9; lab.site:
broker, collector and real agents as processes): every punch a clock deleted on a receipt is
proven in a checkpoint it verified; then, with punches receipted but not yet covered by a
checkpoint, a database admin re-hashes the ledger without one of clock-1's punches above the
last checkpoint (the prefix the clocks hold is untouched, so they cosign the next checkpoint:
the witness alone cannot see it) — and clock-1 reports the failed inclusion check in its
state, `timeclock-agent status`, its log and `device list`."""

from __future__ import annotations

import json
import signal
import sqlite3
from pathlib import Path
from typing import Any

import pytest

from lab.site import Site
from tests.e2e.attack_kit import (
    drop_triggers,
    restore_triggers,
    rewrite_from,
    without_victim_plus_forgery,
)
from tests.e2e.site_kit import Taps, cli, running_site, tapped_clock, wait_for

pytestmark = [pytest.mark.mqtt, pytest.mark.subprocess]   # a whole site: real processes

INTERVAL_S = 0.2
# A device's punches above the ledger's largest v2 checkpoint.
UNCOVERED = ("SELECT COUNT(*) FROM punches WHERE device = ? AND idx >= "
             "(SELECT COALESCE(MAX(size), 0) FROM tc_checkpoints_v2)")
DEVICES = ("clock-1", "clock-2")


def _checkpoints(site: Site, every_s: int, every_entries: int) -> None:
    cfg = site.collector_config()
    lines = [f"every_s = {every_s}" if line.startswith("every_s = ") else
             f"every_entries = {every_entries}" if line.startswith("every_entries = ") else
             line for line in cfg.read_text().splitlines()]
    cfg.write_text("\n".join(lines) + "\n")


def _inclusion(site: Site, device: str) -> dict[str, Any]:
    p = site.root / "clocks" / device / "state" / "inclusion.json"
    if not p.exists():
        return {"checked": 0, "failed": 0, "pending": {}, "failures": []}
    d: dict[str, Any] = json.loads(p.read_text())
    return d


def _device_list(site: Site) -> dict[str, dict[str, Any]]:
    r = cli("collector.cli.main", "device", "list", "--config", str(site.collector_config()),
            "--json")
    assert r.returncode == 0, r.stderr
    return {row["device"]: row for row in json.loads(r.stdout)}


def _count(site: Site, sql: str, params: tuple[object, ...] = ()) -> int:
    """One number from the site's ledger, read-only (the collector may be running)."""
    conn = sqlite3.connect(f"{(site.root / 'ledger.db').absolute().as_uri()}?mode=ro", uri=True)
    try:
        (n,) = conn.execute(sql, params).fetchone()
    finally:
        conn.close()
    return int(n)


def _rehash_without(db: Path, device: str) -> tuple[int, int]:
    """A database admin, collector stopped: delete ``device``'s first punch above the largest
    checkpoint, re-chain and re-number everything after it, append a forged ``access`` entry
    (same size) and rebuild the tree. Returns (victim idx, largest checkpoint size)."""
    conn = sqlite3.connect(db)
    try:
        saved = drop_triggers(conn)
        (covered,) = conn.execute("SELECT MAX(size) FROM tc_checkpoints_v2").fetchone()
        victim = conn.execute("SELECT MIN(idx) FROM punches WHERE device = ? AND idx >= ?",
                              (device, covered)).fetchone()[0]
        if victim is None:
            sizes = [r[0] for r in conn.execute("SELECT size FROM tc_checkpoints_v2 ORDER BY size")]
            top = conn.execute("SELECT MAX(idx) FROM punches WHERE device = ?", (device,))
            raise AssertionError(f"no punch of {device} above the last checkpoint: v2 sizes "
                                 f"{sizes[-5:]}, its last punch at idx {top.fetchone()[0]}")
        rows = conn.execute("SELECT idx, kind, at, body FROM entries ORDER BY idx").fetchall()
        bodies = dict(conn.execute("SELECT idx, body FROM bodies"))
        kept = without_victim_plus_forgery(rows, bodies, victim)
        for table in ("entries", "bodies", "quarantine"):
            conn.execute(f"DELETE FROM {table} WHERE idx >= ?", (victim,))  # noqa: S608 -- ours
        conn.execute("DELETE FROM punches WHERE idx = ?", (victim,))
        conn.execute("UPDATE punches SET idx = idx - 1 WHERE idx > ?", (victim,))
        conn.execute("DELETE FROM tc_merkle")
        rewrite_from(conn, kept, victim)
        restore_triggers(conn, saved)
        conn.commit()
    finally:
        conn.close()
    return int(victim), int(covered)


def test_d5_clocks_prove_their_punches_then_catch_a_dropped_one(tmp_path: Path) -> None:
    with running_site(tmp_path / "site") as site:
        site.prepare()
        _checkpoints(site, every_s=2, every_entries=50)
        site.start_broker()
        site.start_collector()
        for d in DEVICES:
            tapped_clock(site, d)
        taps = Taps(site.clocks, interval_s=INTERVAL_S)

        # -- every punch deleted on a receipt is proven ------------------------------------
        wait_for(lambda: all(_inclusion(site, d)["checked"] >= 10 for d in DEVICES), 120,
                 "every clock proving 10 of its punches in the log")
        sent = taps.stop_and_drain(site)
        wait_for(lambda: all(not _inclusion(site, d)["pending"] for d in DEVICES), 120,
                 "every clock proving all its receipted punches")
        for d in DEVICES:
            st = _inclusion(site, d)
            assert st["failed"] == 0, st
            assert st["checked"] >= min(sent, 10), st
        def status_says(text: str) -> bool:
            out = cli("agent.cli", "status", "--config", str(site.clocks[0].config)).stdout
            return text in out
        wait_for(lambda: status_says("punch(es) proven in the log, 0 pending"), 60,
                 "timeclock-agent status showing every punch proven")
        assert not status_says("INCLUSION")
        rows = _device_list(site)
        assert all(r["witness"] == "ok" for r in rows.values()), rows
        assert not any("INCLUSION" in w for r in rows.values() for w in r["warnings"]), rows

        # -- punches receipted, not yet covered by a checkpoint ----------------------------
        site.kill_collector("main", signal.SIGTERM)
        _checkpoints(site, every_s=86_400, every_entries=10_000_000)
        stopped_size = _count(site, "SELECT COUNT(*) FROM entries")
        site.start_collector()
        # Its first tick makes a v2 checkpoint of whatever the v2 ones lag behind (entries
        # appended after the last one, before the stop); a busy machine can delay that tick
        # past the first new punches, and it would cover them. Wait for it before tapping, so
        # every punch tapped now stays uncovered.
        wait_for(lambda: _count(site, "SELECT COALESCE(MAX(size), 0) FROM tc_checkpoints_v2")
                 >= stopped_size, 120, "the collector's start-up checkpoint")
        taps = Taps(site.clocks, interval_s=INTERVAL_S)
        # Counted in the ledger too: a clock may still count as pending punches of the phase
        # above that the start-up checkpoint already covers (it has not seen it yet).
        wait_for(lambda: all(len(_inclusion(site, d)["pending"]) >= 5
                             and _count(site, UNCOVERED, (d,)) >= 5 for d in DEVICES), 120,
                 "every clock holding receipted punches not yet covered by a checkpoint")
        taps.stop()
        wait_for(site.drained, 120, "every clock's queue drained (all receipted)")
        site.kill_collector("main", signal.SIGTERM)
        victim, covered = _rehash_without(site.root / "ledger.db", "clock-1")
        assert str(victim) in _inclusion(site, "clock-1")["pending"]

        # -- the next checkpoint extends what the clocks hold; clock-1 catches the drop ----
        _checkpoints(site, every_s=2, every_entries=50)
        site.start_collector()
        wait_for(lambda: _inclusion(site, "clock-1")["failed"] >= 1, 120,
                 "clock-1 reporting a failed inclusion check")
        st = _inclusion(site, "clock-1")
        failure = next(f for f in st["failures"] if f["leaf"] == victim)
        assert failure["reason"] in ("wrong-entry", "bad-proof", "missing"), failure
        assert "INCLUSION CHECK FAILED" in site.clocks[0].log_file.read_text()
        witness = json.loads((site.root / "clocks" / "clock-1" / "state" / "witness.json"
                              ).read_text())
        assert witness["refusing"] is None     # the witness alone saw nothing wrong
        assert int(witness["note"].split("\n")[1]) > covered
        wait_for(lambda: status_says("INCLUSION CHECK FAILED"), 60,
                 "timeclock-agent status showing the failed inclusion check")

        def listed() -> bool:
            row = _device_list(site)["clock-1"]
            return row["witness"] == "inclusion-failed" and any(
                "INCLUSION CHECK FAILED" in w for w in row["warnings"])
        wait_for(listed, 60, "device list showing clock-1's failed inclusion check")
