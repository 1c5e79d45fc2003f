"""Acceptance: a real ``timeclock-agent run`` whose state folder is a 2 MiB disk that fills up.

The agent runs as a process under a real AF_UNIX notify socket (systemd's stand-in, watchdog
200 ms), publishing to the REAL mTLS Mosquitto of the fixture, with a simulated reader tapping
every 50 ms and a refused-tap feedback command. The state folder is a real 2 MiB tmpfs; a
filler file takes every free byte, and is deleted again. What must hold:

- while full, taps are refused (a clear log line each, rate-limited, counted) and the state is
  visible: ``storage.state == "full"`` in the status file, in ``timeclock-agent status``
  (exit 4, "storage: FULL", the agent still "running") and in the retained MQTT status;
  the feedback command runs; no WATCHDOG=1 is sent;
- once space returns the agent records again by itself, the watchdog is fed again, and every
  punch it reported as recorded is in the queue exactly once, seqs 1..N without holes, the
  chain linked and signed; refused taps used no seq.
"""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from agent.cli import main
from agent.keystore import load_queue_key, new_queue_key, save_queue_key
from agent.queue import Outbox
from tests.agent.disk_kit import fill
from tests.agent.receipt_kit import DEVICE
from tests.agent.test_cli import START_S, NotifySocket
from tests.fixtures.mosquitto import MosquittoBroker
from tests.polling import wait_for
from wire import topics
from wire.chain import verify_device_chain
from wire.device_status import DeviceStatus
from wire.keys import SigningKey, save_signing_key

REPO = Path(__file__).resolve().parents[2]
RECORDED_RE = re.compile(r"recorded seq=(\d+) ")
# Deadlines are generous (a condition that holds returns at once); the hang guard is above them.
pytestmark = pytest.mark.timeout(600)
WAIT_S = 60.0   # generous: both cores may be busy with other tests


class Agent:
    """A running agent; its stderr is collected line by line by a thread."""

    def __init__(self, config: Path, env: dict[str, str]) -> None:
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "agent.cli", "run", "--config", str(config)],
            cwd=REPO, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True, env=env)
        self._lock = threading.Lock()
        self.lines: list[str] = []
        self.seqs: list[int] = []
        self._t = threading.Thread(target=self._pump, daemon=True)
        self._t.start()

    def _pump(self) -> None:
        assert self.proc.stderr is not None
        for line in self.proc.stderr:
            with self._lock:
                self.lines.append(line)
                m = RECORDED_RE.search(line)
                if m:
                    self.seqs.append(int(m.group(1)))

    def count(self, text: str) -> int:
        with self._lock:
            return sum(text in line for line in self.lines)

    def recorded(self) -> list[int]:
        with self._lock:
            return list(self.seqs)

    def tail(self) -> str:
        with self._lock:
            return "".join(self.lines[-30:])

    def stop(self) -> int:
        self.proc.send_signal(signal.SIGTERM)
        rc = self.proc.wait(timeout=WAIT_S)
        self._t.join(timeout=WAIT_S)
        return rc


def wait_until(cond: Callable[[], bool], what: str, agent: Agent,
               timeout_s: float = WAIT_S) -> None:
    """tests.polling.wait_for that also stops at once if the agent exits; both failures end
    with the agent's last log lines."""
    try:
        wait_for(lambda: cond() or agent.proc.poll() is not None, timeout_s, what)
    except AssertionError as e:
        raise AssertionError(f"{e}:\n{agent.tail()}") from None
    if not cond():
        raise AssertionError(f"the agent exited ({agent.proc.returncode}) while waiting for "
                             f"{what}:\n{agent.tail()}")


def storage_in_file(path: Path) -> dict[str, Any]:
    try:
        snap = json.loads(path.read_text())
    except (FileNotFoundError, ValueError):
        return {}   # not written yet, or an in-place rewrite caught half-way
    storage = snap.get("storage")
    return storage if isinstance(storage, dict) else {}


@pytest.mark.subprocess
@pytest.mark.mqtt
def test_agent_on_a_2mib_disk_refuses_visibly_while_full_and_recovers_by_itself(
        tmp_path: Path, tiny_fs: Path, broker: MosquittoBroker, log_key: SigningKey,
        capsys: pytest.CaptureFixture[str]) -> None:
    sk = SigningKey.generate()
    save_signing_key(tmp_path / "signing.key", sk)
    save_queue_key(tmp_path / "queue.key", new_queue_key())
    cert = broker.pki.device(DEVICE)
    beeps = tmp_path / "beeps.txt"
    cfg = tmp_path / "agent.toml"
    cfg.write_text(f"""
[device]
id = "{DEVICE}"
state_dir = "{tiny_fs}"
[keys]
signing_key = "signing.key"
queue_key = "queue.key"
tls_key = "{cert.key_file}"
tls_cert = "{cert.cert_file}"
ca_cert = "{cert.ca_file}"
log_public_key = "{log_key.verify_key.b64}"
[mqtt]
host = "{broker.host}"
port = {broker.port}
resend_after_s = 3600
reconnect_min_s = 0.1
reconnect_max_s = 1
[status]
interval_s = 0.2
[feedback]
refused_command = ["/bin/sh", "-c", 'echo "$TIMECLOCK_REASON $TIMECLOCK_READER" >> "$0"',
                   "{beeps}"]
[readers.front]
kind = "simulated"
credentials = ["0012345678", "0087654321"]
format = "em4100"
interval_s = 0.05
debounce_s = 0
action = "in"
""")
    status_path = tiny_fs / "status.json"
    sub = broker.subscribe("collector.test", topics.status(DEVICE), client_id="status-reader")

    def mqtt_storage(state: str) -> DeviceStatus:
        msg = sub.get_until(lambda m: json.loads(m.payload).get("storage", {}).get("state")
                            == state, WAIT_S)[-1]
        return DeviceStatus.from_bytes(msg.payload)

    notify = NotifySocket(str(tmp_path / "notify.sock"))
    env = {**os.environ, "NOTIFY_SOCKET": str(tmp_path / "notify.sock"),
           "WATCHDOG_USEC": "400000", "PYTHONUNBUFFERED": "1"}
    env.pop("WATCHDOG_PID", None)
    agent = Agent(cfg, env)
    filler: Path | None = None
    try:
        # (1) healthy: recording, fed watchdog, storage ok everywhere.
        notify.wait_for("READY=1", timeout_s=START_S)
        wait_until(lambda: len(agent.recorded()) >= 5, "5 recorded punches", agent)
        wait_until(lambda: storage_in_file(status_path).get("state") == "ok",
                   "storage ok in the status file", agent)
        notify.wait_for("WATCHDOG=1", timeout_s=WAIT_S)
        online = mqtt_storage("ok")
        assert online.state == "online"

        # (2) the disk fills up.
        filler = fill(tiny_fs)
        wait_until(lambda: storage_in_file(status_path).get("state") == "full",
                   "storage full in the status file", agent)
        notify.wait_for("STATUS=STORAGE FULL", timeout_s=WAIT_S)
        # Sent by the supervisor's tick that saw the disk full, before that tick's (withheld)
        # ping: no WATCHDOG=1 may follow it in the stream while the disk stays full.
        since_full = next(i for i, m in enumerate(notify.messages)
                          if m.startswith("STATUS=STORAGE FULL")) + 1
        wait_until(lambda: agent.count("tap REFUSED on reader front") >= 3,
                   "refused taps in the log", agent)
        wait_until(lambda: storage_in_file(status_path).get("refused_taps", 0) >= 3,
                   "refused taps counted in the status file", agent)
        full = mqtt_storage("full")
        assert full.state == "online"
        assert full.storage is not None
        assert full.storage.refused_taps >= 1
        assert full.storage.free_bytes is not None
        assert full.storage.free_bytes < 64 * 1024
        capsys.readouterr()
        assert main(["status", "--config", str(cfg)]) == 4
        out = capsys.readouterr().out
        assert "agent:         running" in out, out
        assert "storage:       FULL since" in out, out
        assert "taps are REFUSED" in out
        assert "NOT RUNNING" not in out
        assert main(["status", "--config", str(cfg), "--json"]) == 4
        snap = json.loads(capsys.readouterr().out)
        assert (snap["running"], snap["storage"]["state"]) == (True, "full")
        wait_until(lambda: beeps.exists() and "storage-full front" in beeps.read_text(),
                   "the refused-tap feedback command", agent)
        # Three watchdog periods while full: not one ping. The window is the property and short
        # on purpose: a slow machine may tick less often in it, never ping because it is slow.
        deadline = time.monotonic() + 1.2
        while time.monotonic() < deadline:
            notify.collect()
        assert "WATCHDOG=1" not in notify.messages[since_full:]
        recorded_while_full = len(agent.recorded())
        assert agent.count("Traceback") == 0, agent.tail()

        # (3) space returns: recording resumes without a restart.
        filler.unlink()
        filler = None
        wait_until(lambda: storage_in_file(status_path).get("state") == "ok",
                   "storage ok again in the status file", agent)
        wait_until(lambda: len(agent.recorded()) >= recorded_while_full + 5,
                   "5 punches recorded after space returned", agent)
        notify.wait_for("WATCHDOG=1", since=since_full, timeout_s=WAIT_S)
        assert mqtt_storage("ok").storage is not None
        capsys.readouterr()
        assert main(["status", "--config", str(cfg)]) == 0
        assert "storage:       ok" in capsys.readouterr().out
        assert agent.proc.poll() is None, "the agent must not have restarted"
        rc = agent.stop()
    finally:
        if agent.proc.poll() is None:
            agent.proc.kill()
            agent.proc.wait()
        notify.close()
        if filler is not None:
            filler.unlink()
    assert rc == 0, agent.tail()
    assert "agent stopped cleanly" in "".join(agent.lines)
    reported = agent.recorded()
    assert len(reported) == len(set(reported)), "a seq was reported twice"
    with Outbox(tiny_fs / "queue.db", load_queue_key(tmp_path / "queue.key"), DEVICE) as box:
        punches = box.pending(limit=10**6, max_bytes=10**9)
        assert box.set_aside_count() == 0
    seqs = [p.punch.seq for p in punches]
    assert seqs == list(range(1, len(seqs) + 1)), "holes or repeats: a refused tap used a seq?"
    assert sorted(reported) == seqs, "every reported punch is in the queue exactly once"
    assert verify_device_chain(DEVICE, [p.punch for p in punches]).gaps == []
    for p in punches:
        p.verify(sk.verify_key)
    final = json.loads(status_path.read_text())
    assert final["state"] == "stopped"
    assert final["storage"]["refused_taps"] >= 3
    for name in ("queue.db", "queue.db-wal"):
        if (tiny_fs / name).exists():
            assert b"0012345678" not in (tiny_fs / name).read_bytes(), name
