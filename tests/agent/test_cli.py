"""``timeclock-agent`` init/check-config/run/status, sd_notify over a real AF_UNIX socket, and the
service's wiring points (publisher, watchdog only while healthy)."""

from __future__ import annotations

import contextlib
import json
import logging
import os
import socket
import stat
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

import pytest

from agent.cli import main
from agent.config import AgentConfig, load_config
from agent.queue import Outbox
from agent.service import AgentService, StatusFn
from tests.polling import wait_for
from wire.keys import load_signing_key
from wire.sdnotify import Notifier

REPO = Path(__file__).resolve().parents[2]
# Deadlines are generous (a condition that holds returns at once); the hang guard is above them.
pytestmark = pytest.mark.timeout(300)
DEVICE = "clock-0017"
START_S = 120.0   # a `python -m agent.cli run` start-up, up to its first notification
WAIT_S = 60.0     # anything else a running agent is awaited to do


@pytest.fixture
def keydir(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> Path:
    d = tmp_path / "keys"
    assert main(["init", "--device", DEVICE, "--dir", str(d)]) == 0
    capsys.readouterr()
    return d


def write_config(tmp_path: Path, keydir: Path, *, interval_s: float = 0.05,
                 extra: str = "") -> Path:
    cfg = tmp_path / "agent.toml"
    cfg.write_text(f"""
[device]
id = "{DEVICE}"
state_dir = "state"
[keys]
signing_key = "{keydir / 'signing.key'}"
queue_key = "{keydir / 'queue.key'}"
[status]
interval_s = 0.5
[readers.front]
kind = "simulated"
credentials = ["0012345678", "0087654321"]
format = "em4100"
interval_s = {interval_s}
debounce_s = 0
action = "in"
{extra}""")
    return cfg


# ---- init -------------------------------------------------------------------------------------

def test_init_creates_private_keys_and_prints_registration(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    d = tmp_path / "keys"
    assert main(["init", "--device", DEVICE, "--dir", str(d)]) == 0
    out = capsys.readouterr().out
    sk = load_signing_key(d / "signing.key")
    assert f"device:              {DEVICE}" in out
    assert f"signing key id:      {sk.key_id}" in out
    assert f"signing public key:  {sk.verify_key.b64}" in out
    assert "tls key spki sha256: " in out
    for name in ("signing.key", "tls.key", "queue.key"):
        assert stat.S_IMODE((d / name).stat().st_mode) == 0o600, name
    assert (d / f"{DEVICE}.csr").read_bytes().startswith(b"-----BEGIN CERTIFICATE REQUEST")
    assert b"PRIVATE KEY" in (d / "tls.key").read_bytes()


def test_init_never_overwrites_without_force(keydir: Path,
                                             capsys: pytest.CaptureFixture[str]) -> None:
    before = (keydir / "signing.key").read_bytes()
    assert main(["init", "--device", DEVICE, "--dir", str(keydir)]) == 2
    err = capsys.readouterr().err
    assert "refusing to overwrite existing key file(s)" in err
    assert "Traceback" not in err
    assert (keydir / "signing.key").read_bytes() == before
    assert main(["init", "--device", DEVICE, "--dir", str(keydir), "--force"]) == 0
    assert (keydir / "signing.key").read_bytes() != before


def test_init_rejects_bad_device_id(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["init", "--device", "clock.17", "--dir", str(tmp_path)]) == 2
    assert "device id 'clock.17' does not match" in capsys.readouterr().err


def test_help_teaches_with_examples(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit, match="0"):
        main(["--help"])
    out = capsys.readouterr().out
    assert "timeclock-agent init --device clock-0017 --dir /etc/timeclock" in out
    with pytest.raises(SystemExit, match="0"):
        main(["check-config", "--help"])
    assert 'signing_key = "/etc/timeclock/signing.key"' in capsys.readouterr().out


# ---- check-config -----------------------------------------------------------------------------

def test_check_config_ok(tmp_path: Path, keydir: Path,
                         capsys: pytest.CaptureFixture[str]) -> None:
    cfg = write_config(tmp_path, keydir)
    assert main(["check-config", str(cfg)]) == 0
    out = capsys.readouterr().out
    assert f"{cfg}: OK" in out
    assert "reader front: kind simulated, action in" in out
    assert "store-only" in out


def test_check_config_reports_all_problems_and_key_modes(
        tmp_path: Path, keydir: Path, capsys: pytest.CaptureFixture[str]) -> None:
    cfg = write_config(tmp_path, keydir, extra="colour = 1\n[mqtt]\nport = 0\n")
    assert main(["check-config", str(cfg)]) == 2
    err = capsys.readouterr().err
    for text in ("readers.front.colour: unknown key", "mqtt.host: required",
                 "mqtt.port: must be between 1 and 65535",
                 "keys.tls_key: required when [mqtt] is configured"):
        assert text in err
    assert "Traceback" not in err
    cfg = write_config(tmp_path, keydir)
    (keydir / "queue.key").chmod(0o644)
    assert main(["check-config", str(cfg)]) == 2
    assert "keys.queue_key:" in capsys.readouterr().err


# ---- sd_notify --------------------------------------------------------------------------------

class NotifySocket:
    """A real AF_UNIX datagram socket standing in for systemd's notify socket."""

    def __init__(self, address: str | bytes) -> None:
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self.sock.bind(address)
        self.sock.settimeout(0.05)
        self.messages: list[str] = []

    def collect(self) -> list[str]:
        """Receive what has arrived (returns even while pings keep coming)."""
        end = time.monotonic() + 0.2
        while time.monotonic() < end:
            try:
                self.messages.append(self.sock.recv(4096).decode())
            except TimeoutError:
                break
        return self.messages

    def wait_for(self, text: str, *, since: int = 0, timeout_s: float = WAIT_S) -> None:
        """Wait for a message containing ``text`` among those after index ``since``."""
        wait_for(lambda: any(text in m for m in self.collect()[since:]), timeout_s, repr(text))

    @contextlib.contextmanager
    def mark_on_log(self, text: str) -> Iterator[str]:
        """While active, the thread that logs a record containing ``text`` also sends
        ``MARK=<text>`` to this socket, at that instant. Its pings and the mark then arrive in
        the order it made them, so "no WATCHDOG=1 after it decided" is read from the stream,
        not guessed from a sleep. Yields the mark (see :meth:`after`)."""
        mark = f"MARK={text}"
        address = self.sock.getsockname()

        class Marker(logging.Handler):
            def emit(self, record: logging.LogRecord) -> None:
                if text in record.getMessage():
                    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as s:
                        s.sendto(mark.encode(), address)

        handler = Marker()
        root = logging.getLogger()
        root.addHandler(handler)
        try:
            yield mark
        finally:
            root.removeHandler(handler)

    def after(self, mark: str) -> list[str]:
        """The messages received after ``mark`` (waits for the mark itself first)."""
        self.wait_for(mark)
        return self.messages[self.messages.index(mark) + 1:]

    def close(self) -> None:
        self.sock.close()


@pytest.fixture
def notify_path(tmp_path: Path) -> Iterator[NotifySocket]:
    s = NotifySocket(str(tmp_path / "notify.sock"))
    yield s
    s.close()


def test_sdnotify_path_and_abstract_sockets(notify_path: NotifySocket, tmp_path: Path) -> None:
    n = Notifier({"NOTIFY_SOCKET": str(tmp_path / "notify.sock")})
    assert n.ready("recording") is True
    assert n.watchdog() is True
    assert n.stopping() is True
    assert notify_path.collect() == ["READY=1\nSTATUS=recording", "WATCHDOG=1", "STOPPING=1"]

    name = f"timeclock-test-{uuid.uuid4().hex}"
    abstract = NotifySocket(b"\0" + name.encode())
    try:
        assert Notifier({"NOTIFY_SOCKET": f"@{name}"}).status("hello") is True
        assert abstract.collect() == ["STATUS=hello"]
    finally:
        abstract.close()


def test_sdnotify_disabled_and_watchdog_env(tmp_path: Path) -> None:
    assert Notifier({}).ready() is False
    assert Notifier({"NOTIFY_SOCKET": str(tmp_path / "gone.sock")}).ready() is False
    assert Notifier({"WATCHDOG_USEC": "30000000"}).watchdog_interval_s == 15.0
    other_pid = str(os.getpid() + 1)
    assert Notifier({"WATCHDOG_USEC": "30000000",
                     "WATCHDOG_PID": other_pid}).watchdog_interval_s is None
    assert Notifier({"WATCHDOG_USEC": "x"}).watchdog_interval_s is None


# ---- run + status (real processes) ------------------------------------------------------------

@pytest.mark.subprocess
def test_run_under_notify_socket_status_while_running_and_clean_sigterm(
        tmp_path: Path, keydir: Path, notify_path: NotifySocket,
        capsys: pytest.CaptureFixture[str]) -> None:
    cfg = write_config(tmp_path, keydir)
    env = {**os.environ, "NOTIFY_SOCKET": str(tmp_path / "notify.sock"),
           "WATCHDOG_USEC": "400000", "PYTHONUNBUFFERED": "1"}
    env.pop("WATCHDOG_PID", None)
    proc = subprocess.Popen([sys.executable, "-m", "agent.cli", "run", "--config", str(cfg)],
                            cwd=REPO, env=env, stdout=subprocess.DEVNULL,
                            stderr=subprocess.PIPE, text=True)
    try:
        notify_path.wait_for("READY=1", timeout_s=START_S)
        notify_path.wait_for("WATCHDOG=1")
        config = load_config(cfg)
        wait_for(lambda: config.status.path.exists()
                 and json.loads(config.status.path.read_text())["queue"]["depth"] >= 3,
                 WAIT_S, "3 punches in the status file")
        assert main(["status", "--config", str(cfg)]) == 0
        out = capsys.readouterr().out
        assert "agent:         running" in out
        assert "reader front: open" in out
        assert "publisher:     disabled" in out
        assert main(["status", "--config", str(cfg), "--json"]) == 0
        snap = json.loads(capsys.readouterr().out)
        assert snap["running"] is True
        assert snap["device"] == DEVICE
        assert snap["queue"]["depth"] >= 3
        assert snap["readers"]["front"]["taps"] >= 3
        assert "0012345678" not in json.dumps(snap)
        proc.terminate()
        _, err = proc.communicate(timeout=WAIT_S)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert proc.returncode == 0, err
    assert "agent stopped cleanly" in err
    assert "0012345678" not in err
    notify_path.wait_for("STOPPING=1")
    assert main(["status", "--config", str(cfg)]) == 3
    assert "NOT RUNNING" in capsys.readouterr().out


def test_status_before_first_run(tmp_path: Path, keydir: Path,
                                 capsys: pytest.CaptureFixture[str]) -> None:
    cfg = write_config(tmp_path, keydir)
    assert main(["status", "--config", str(cfg)]) == 3
    out = capsys.readouterr().out
    assert "the agent has not run yet" in out


@pytest.mark.subprocess
def test_status_into_a_closed_pipe_ends_quietly(tmp_path: Path, keydir: Path) -> None:
    """`timeclock-agent status | head -0`: exit 141 like a Unix filter, no traceback."""
    cfg = write_config(tmp_path, keydir)
    r, w = os.pipe()
    os.close(r)   # the reader is gone before the first write: the write must fail
    try:
        p = subprocess.run([sys.executable, "-m", "agent.cli", "status", "--config", str(cfg)],
                           stdout=w, stderr=subprocess.PIPE, text=True, timeout=120, cwd=REPO,
                           check=False)
    finally:
        os.close(w)
    assert (p.returncode, p.stderr) == (141, "")


def test_run_with_unreadable_key_is_a_clear_error(tmp_path: Path, keydir: Path,
                                                  capsys: pytest.CaptureFixture[str]) -> None:
    cfg = write_config(tmp_path, keydir)
    (keydir / "signing.key").chmod(0o644)
    assert main(["run", "--config", str(cfg)]) == 2
    err = capsys.readouterr().err
    assert "chmod 600" in err
    assert "Traceback" not in err


# ---- service wiring (in process) --------------------------------------------------------------

class RecordingPublisher:
    """A publisher double for the wiring: records what the service asks of it."""

    def __init__(self, outbox: Outbox, status: StatusFn) -> None:
        self.outbox = outbox
        self.status_fn = status
        self.events: list[str] = []
        self.wakes = 0
        self.status_requests = 0
        self.is_healthy = True

    def start(self) -> None:
        self.events.append("start")

    def stop(self) -> None:
        self.events.append("stop")

    def wake(self) -> None:
        self.wakes += 1

    def healthy(self) -> bool:
        return self.is_healthy

    def threads(self) -> list[threading.Thread]:
        return []

    def publish_status_soon(self) -> None:
        self.status_requests += 1

    def state(self) -> Mapping[str, Any]:
        return {"status": "connected", "detail": "test", "last_receipt_us": 123}


def test_service_wires_publisher_and_feeds_watchdog_only_while_healthy(
        tmp_path: Path, keydir: Path, notify_path: NotifySocket) -> None:
    config = load_config(write_config(tmp_path, keydir, interval_s=0.02))
    made: list[RecordingPublisher] = []

    def factory(config: AgentConfig, outbox: Outbox, *, status: StatusFn) -> RecordingPublisher:
        made.append(RecordingPublisher(outbox, status))
        return made[0]

    notifier = Notifier({"NOTIFY_SOCKET": str(tmp_path / "notify.sock"),
                         "WATCHDOG_USEC": "200000"})
    service = AgentService(config, notifier=notifier, publisher_factory=factory)
    stop = threading.Event()
    t = threading.Thread(target=service.run, args=(stop,))
    t.start()
    try:
        pub = made[0]
        wait_for(lambda: pub.wakes >= 3, WAIT_S, "publisher woken after commits")
        assert pub.events == ["start"]
        snap = pub.status_fn()
        assert snap["publisher"]["last_receipt_us"] == 123
        assert snap["online"] is True
        notify_path.wait_for("WATCHDOG=1")
        with notify_path.mark_on_log("withholding the watchdog ping") as mark:
            pub.is_healthy = False
            # The mark is sent by the supervisor's tick that saw the publisher unhealthy: pings
            # of earlier ticks come before it, and none may come after it.
            notify_path.after(mark)
        # Four watchdog periods (0.1 s) watched for a ping while the publisher is unhealthy.
        # The window is the property, and short on purpose: a slow machine may tick less often
        # in it (fewer chances to ping wrongly), never ping because it is slow.
        deadline = time.monotonic() + 0.4
        while time.monotonic() < deadline:
            notify_path.collect()
        assert "WATCHDOG=1" not in notify_path.after(mark)
        since = len(notify_path.messages)
        pub.is_healthy = True
        notify_path.wait_for("WATCHDOG=1", since=since)
    finally:
        stop.set()
        t.join(timeout=WAIT_S)
    assert pub.events == ["start", "stop"]
    assert json.loads(config.status.path.read_text())["state"] == "stopped"


def test_check_config_of_a_credentials_config_names_the_sealed_file_the_unit_needs(
        tmp_path: Path, capsys: pytest.CaptureFixture[str],
        monkeypatch: pytest.MonkeyPatch) -> None:
    # issue 15: `provision --credentials` then `check-config` passed, and the unit failed at
    # start because the sealed credentials it loads did not exist yet
    monkeypatch.delenv("CREDENTIALS_DIRECTORY", raising=False)
    cfg = tmp_path / "agent.toml"
    cfg.write_text("""
[device]
id = "clock-cred"
state_dir = "state"
[keys]
signing_key = "credential:signing-key"
queue_key = "credential:queue-key"
[readers.front]
kind = "simulated"
credentials = ["1"]
""")
    capsys.readouterr()
    assert main(["check-config", str(cfg)]) != 0
    err = capsys.readouterr().err
    for name, key in (("signing-key", "signing_key"), ("queue-key", "queue_key")):
        assert (f"keys.{key}: credential:{name} is loaded by the unit from "
                f"{tmp_path / (name + '.cred')} (LoadCredentialEncrypted=), which does not "
                f"exist: seal the key with `systemd-creds encrypt --name={name}") in err, err
    for name in ("signing-key", "queue-key"):
        (tmp_path / f"{name}.cred").write_bytes(b"sealed")
    assert main(["check-config", str(cfg)]) == 0
    assert f"{cfg}: OK" in capsys.readouterr().out
