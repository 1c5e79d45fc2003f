"""The whole state directory lost, keys kept (issue 11 item 2, finding 3 with the mark gone too):
an agent whose configuration says provisioning seeded its state (``[device] seeded_state``)
and that finds neither ``queue.db`` nor ``seqmark`` refuses every tap (``state-lost``), keeps
refusing across restarts, and resumes only after the seq the collector recorded last; it
never starts again at seq 1. A seeded first start (the mark at seq 0, no queue) records seq 1.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import subprocess
import sys
import threading
from pathlib import Path

import pytest

from agent.errors import QueueError, SequenceRefusedError
from agent.keystore import save_queue_key
from agent.queue import Outbox
from agent.seqmark import LOSS_FILE, Mark, SeqMark, read_losses
from agent.status import sequence_line
from tests.agent.test_queue import DEVICE, KEY, SK, fill
from tests.polling import wait_for
from wire import ZERO_HASH
from wire.keys import save_signing_key

REPO = Path(__file__).resolve().parents[2]
START_S = 120.0        # a `python -m agent.cli run` start-up on a loaded machine
RECORDED_RE = re.compile(r"recorded seq=(\d+) ")


def _open(state: Path, *, seeded: bool = True) -> Outbox:
    return Outbox(state / "queue.db", KEY, DEVICE,
                  mark=SeqMark(state / "seqmark", KEY, DEVICE), seeded=seeded)


def _seed(state: Path) -> None:
    """What ``timeclock-agent provision`` does on a first enrolment."""
    state.mkdir(parents=True)
    SeqMark(state / "seqmark", KEY, DEVICE).create()


def test_d4_seeded_first_start_records_seq_1(tmp_path: Path) -> None:
    _seed(tmp_path / "state")
    with _open(tmp_path / "state") as box:
        assert box.sequence().state == "ok"
        [p] = fill(box, 1)
    assert (p.punch.seq, p.punch.prev) == (1, ZERO_HASH)


def test_d4_whole_state_lost_refuses_until_resumed_after_the_collectors_seq(
        tmp_path: Path) -> None:
    state = tmp_path / "state"
    _seed(state)
    with _open(state) as box:
        recorded = fill(box, 5)
    shutil.rmtree(state)                        # the SD card is replaced; the keys are kept
    for _ in range(2):                          # a restart does not forget the refusal
        with _open(state) as box:
            st = box.sequence()
            assert (st.state, st.reason, st.queue_seq) == ("refusing", "state-lost", 0)
            with pytest.raises(SequenceRefusedError, match="state-lost"):
                fill(box, 1)
            assert box.last_seq() == 0
    with _open(state) as box:
        with pytest.raises(QueueError, match="only the collector knows this clock's last seq"):
            box.resume(reason="card swapped")
        assert box.sequence().state == "refusing"
        # The collector recorded 1..4 (5 never left the clock): resume after 4 with its hash.
        loss = box.resume(reason="card swapped", after_seq=4, after_hash=recorded[3].hash())
        assert (loss.first, loss.last) == (1, 4)
        [p] = fill(box, 1)
    assert (p.punch.seq, p.punch.prev) == (5, recorded[3].hash())
    assert SeqMark(state / "seqmark", KEY, DEVICE).read() == Mark(5, p.hash())
    assert [(x.first, x.last) for x in read_losses(state / LOSS_FILE)] == [(1, 4)]
    with _open(state) as box:                   # resumed for good
        assert box.sequence().state == "ok"


def test_d4_unseeded_state_dir_is_a_first_start(tmp_path: Path) -> None:
    """A hand-written configuration without ``seeded_state``: no queue and no mark is a first
    start (the documented behaviour before provisioning seeded the state)."""
    with _open(tmp_path / "state", seeded=False) as box:
        assert box.sequence().state == "ok"
        [p] = fill(box, 1)
    assert p.punch.seq == 1


class _Agent:
    """``timeclock-agent run`` with its stderr read line by line."""

    def __init__(self, config: Path) -> None:
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "agent.cli", "run", "--config", str(config)],
            cwd=REPO, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True,
            env={**os.environ, "PYTHONUNBUFFERED": "1"})
        self.lines: list[str] = []
        self._t = threading.Thread(target=self._pump, daemon=True)
        self._t.start()

    def _pump(self) -> None:
        assert self.proc.stderr is not None
        for line in self.proc.stderr:
            self.lines.append(line)

    def text(self) -> str:
        return "".join(self.lines)

    def seqs(self) -> list[int]:
        return [int(m.group(1)) for m in RECORDED_RE.finditer(self.text())]

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout=60)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(timeout=60)
        self._t.join(timeout=60)


def _resume(config: Path, *extra: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "agent.cli", "resume", "--config", str(config), "--reason",
         "SD card replaced", *extra], cwd=REPO, capture_output=True, text=True, timeout=120,
        check=False)


@pytest.mark.subprocess
def test_d4_agent_process_with_keys_but_no_state_refuses_and_never_restarts_at_seq_1(
        tmp_path: Path) -> None:
    save_signing_key(tmp_path / "signing.key", SK)
    save_queue_key(tmp_path / "queue.key", KEY)
    hook_out = tmp_path / "refused.txt"
    config = tmp_path / "agent.toml"
    config.write_text(f"""
[device]
id = "{DEVICE}"
state_dir = "state"
seeded_state = true
[keys]
signing_key = "signing.key"
queue_key = "queue.key"
[readers.front]
kind = "simulated"
credentials = ["0012345678", "0087654321"]
format = "em4100"
interval_s = 0.05
debounce_s = 0
[feedback]
refused_command = ["/bin/sh", "-c", "echo $TIMECLOCK_REASON >> {hook_out}"]
""")
    state = tmp_path / "state"
    _seed(state)
    agent = _Agent(config)
    try:
        wait_for(lambda: len(agent.seqs()) >= 3, START_S, "three recorded punches")
    finally:
        agent.stop()
    first_run = agent.seqs()
    assert first_run[:3] == [1, 2, 3]
    shutil.rmtree(state)                          # keys kept, the whole state directory gone
    for run in range(2):                          # refused again after a restart
        agent = _Agent(config)
        try:
            wait_for(lambda a=agent: a.text().count("tap REFUSED") >= 2, START_S,
                     f"run {run}: two taps refused")
            wait_for(lambda: _status(state).get("sequence", {}).get("state") == "refusing",
                     START_S, "the status file to say refusing")
            # The feedback command sounded at the reader (at most one runs at a time).
            wait_for(lambda r=run: hook_out.exists()
                     and hook_out.read_text().count("sequence") >= r + 1,
                     START_S, f"run {run}: the refused-tap feedback command")
        finally:
            agent.stop()
        assert agent.seqs() == [], agent.text()[-2000:]
        assert "sequence REFUSING (state-lost)" in agent.text()
        assert _status(state)["sequence"]["reason"] == "state-lost"
        assert "run `timeclock-agent resume --from-collector`" in sequence_line(
            _status(state)["sequence"], now_us=0)
    r = _resume(config)
    assert r.returncode == 2, r.stdout + r.stderr
    assert "only the collector knows this clock's last seq" in r.stderr
    last = max(first_run)
    r = _resume(config, "--after-seq", str(last))
    assert r.returncode == 0, r.stdout + r.stderr
    assert f"The next punch is seq {last + 1}" in r.stdout
    agent = _Agent(config)
    try:
        wait_for(lambda: len(agent.seqs()) >= 1, START_S, "a punch after the resume")
    finally:
        agent.stop()
    assert agent.seqs()[0] == last + 1


def _status(state: Path) -> dict[str, object]:
    try:
        data: dict[str, object] = json.loads((state / "status.json").read_text())
    except (OSError, ValueError):
        return {}
    return data


def test_d4_first_enrolment_seeds_the_state_and_a_reprovision_does_not(tmp_path: Path) -> None:
    """``timeclock-agent provision`` seeds an empty state directory with a mark at seq 0 and
    writes ``seeded_state = true``; installing the bundle again (agent.toml there) seeds
    nothing, so a lost state stays lost."""
    from agent.config import load_config  # noqa: PLC0415 -- this test only
    from agent.keystore import load_queue_key  # noqa: PLC0415
    from agent.provision import install_bundle  # noqa: PLC0415
    from collector.fleet.pki import CertificateAuthority  # noqa: PLC0415
    from collector.ledger import open_store  # noqa: PLC0415
    from tests.collector.test_fleet import NOW, ClockDir, _enroll  # noqa: PLC0415

    ca = CertificateAuthority.init(tmp_path / "ca", now=NOW)
    store = open_store(str(tmp_path / "ledger.db"))
    try:
        clock = ClockDir(tmp_path, "clock-17")
        save_queue_key(clock.dir / "queue.key", KEY)           # what `init` writes too
        bundle = _enroll(store, ca, clock).write(tmp_path / "clock-17.bundle")
    finally:
        store.close()
    state = tmp_path / "state"
    done = install_bundle(bundle, clock.dir, state_dir=state)
    assert done.config_file is not None
    cfg = load_config(done.config_file, check_readers=False)
    assert cfg.device.seeded_state is True
    key = load_queue_key(clock.dir / "queue.key")
    assert SeqMark(state / "seqmark", key, "clock-17").read() == Mark(0, ZERO_HASH)
    assert (state / "seqmark").stat().st_mode & 0o777 == 0o600
    shutil.rmtree(state)                                      # the state is lost later
    install_bundle(bundle, clock.dir, state_dir=state)        # the same bundle again
    assert not (state / "seqmark").exists()
    with Outbox(state / "queue.db", key, "clock-17",
                mark=SeqMark(state / "seqmark", key, "clock-17"),
                seeded=cfg.device.seeded_state) as box:
        assert box.sequence().reason == "state-lost"
