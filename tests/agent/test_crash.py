"""Crash safety: kill -9 a real ``timeclock-agent run`` at random moments, many times.

Afterwards every punch the agent reported as recorded is in the queue exactly once, seqs have
no holes or repeats, every ``prev`` links, and the queue opens cleanly (DESIGN.md §5: a punch
is committed before it is reported).
"""

from __future__ import annotations

import os
import random
import re
import signal
import sqlite3
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from agent.keystore import load_queue_key, new_queue_key, save_queue_key
from agent.queue import Outbox
from wire.chain import verify_device_chain
from wire.keys import SigningKey, save_signing_key

REPO = Path(__file__).resolve().parents[2]
DEVICE = "clock-crash"
KILLS = 50
RECORDED_RE = re.compile(r"recorded seq=(\d+) ")
START_S = 120.0   # a `python -m agent.cli run` start-up, up to its first recorded punch
# 50 process starts: a hang guard well above what a busy machine needs, not a speed bound.
pytestmark = pytest.mark.timeout(600)


class AgentProcess:
    """A running agent whose stderr is collected line by line by a thread."""

    def __init__(self, config: Path) -> None:
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "agent.cli", "run", "--config", str(config)],
            cwd=REPO, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True,
            env={**os.environ, "PYTHONUNBUFFERED": "1"})
        self.seqs: list[int] = []
        self.lines: list[str] = []
        self.first = threading.Event()
        self._t = threading.Thread(target=self._pump, daemon=True)
        self._t.start()

    def _pump(self) -> None:
        assert self.proc.stderr is not None
        for line in self.proc.stderr:
            self.lines.append(line)
            m = RECORDED_RE.search(line)
            if m:
                self.seqs.append(int(m.group(1)))
                self.first.set()

    def kill(self) -> None:
        self.proc.send_signal(signal.SIGKILL)
        self.proc.wait(timeout=60)
        self._t.join(timeout=60)  # EOF: every line written before the kill is read


@pytest.mark.subprocess
def test_kill_9_at_random_moments_loses_and_repeats_nothing(tmp_path: Path) -> None:
    sk = SigningKey.generate()
    save_signing_key(tmp_path / "signing.key", sk)
    save_queue_key(tmp_path / "queue.key", new_queue_key())
    config = tmp_path / "agent.toml"
    config.write_text(f"""
[device]
id = "{DEVICE}"
state_dir = "state"
[keys]
signing_key = "signing.key"
queue_key = "queue.key"
[readers.front]
kind = "simulated"
credentials = ["0012345678", "0087654321", "0011223344"]
format = "em4100"
interval_s = 0.002
debounce_s = 0
""")
    rng = random.Random(20251126)  # noqa: S311 -- kill timing, not security
    reported: list[int] = []
    started = time.monotonic()
    # Each run waits for its own first "recorded" line before its kill: the faults never
    # outrun the work, however slow the machine.
    for i in range(KILLS):
        agent = AgentProcess(config)
        try:
            if not agent.first.wait(timeout=START_S):
                agent.kill()
                raise AssertionError(f"run {i}: no 'recorded' line; stderr:\n"
                                     + "".join(agent.lines[-20:]))
            time.sleep(rng.uniform(0.0, 0.05))  # the random moment of the crash
        finally:
            if agent.proc.poll() is None:
                agent.kill()
        assert agent.proc.returncode == -signal.SIGKILL, "".join(agent.lines[-20:])
        assert agent.seqs, f"run {i} reported nothing"
        reported.extend(agent.seqs)
    elapsed = time.monotonic() - started

    qpath = tmp_path / "state" / "queue.db"
    with sqlite3.connect(qpath) as c:
        assert c.execute("PRAGMA integrity_check").fetchone()[0] == "ok"
    with Outbox(qpath, load_queue_key(tmp_path / "queue.key"), DEVICE) as box:
        punches = box.pending(limit=10**9, max_bytes=10**12)
        assert box.set_aside_count() == 0
        last = box.last_seq()
    seqs = [p.punch.seq for p in punches]
    assert seqs == list(range(1, last + 1)), "holes or repeats in seq"
    assert len(reported) == len(set(reported)), "a seq was reported twice"
    assert set(reported) <= set(seqs), f"lost: {sorted(set(reported) - set(seqs))[:10]}"
    report = verify_device_chain(DEVICE, [p.punch for p in punches])
    assert report.gaps == []
    for p in punches:
        p.verify(sk.verify_key)
    assert len(reported) >= KILLS
    # How long 50 start/kill cycles take is the machine's speed, not crash safety: reported only.
    print(f"{KILLS} kills, {len(reported)} reported, {last} in queue, {elapsed:.1f}s")
