"""A collector host made by ``timeclock-collector init`` and ``serve`` processes on it, for
tests/collector/test_init.py and test_guard_rails.py: real commands, real Mosquitto (the
managed broker), free loopback ports."""

from __future__ import annotations

import getpass
import os
import signal
import subprocess
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO

from tests.fixtures.mosquitto import free_port
from tests.polling import wait_for

REPO = Path(__file__).resolve().parents[2]
READY = "MQTT subscribed"
ORIGIN = "test.example/timeclock"


def env() -> dict[str, str]:
    e = dict(os.environ)
    e["PYTHONPATH"] = str(REPO) + (os.pathsep + e["PYTHONPATH"] if e.get("PYTHONPATH") else "")
    e.pop("NOTIFY_SOCKET", None)
    e.pop("STATE_DIRECTORY", None)
    return e


def cli(*args: str, timeout_s: float = 120.0) -> subprocess.CompletedProcess[str]:
    """``timeclock-collector ARGS`` from this checkout."""
    return subprocess.run([sys.executable, "-m", "collector.cli.main", *args],
                          capture_output=True, text=True, env=env(), cwd=REPO,
                          timeout=timeout_s, check=False)


def service_user() -> str:
    """The --user init gets: root in CI containers (serve runs as root there), else us."""
    return "root" if os.geteuid() == 0 else getpass.getuser()


@dataclass
class Host:
    root: Path
    mqtt_port: int
    api_port: int
    serves: list[subprocess.Popen[bytes]] = field(default_factory=list)
    _logs: list[IO[bytes]] = field(default_factory=list)

    @property
    def etc(self) -> Path:
        return self.root / "etc"

    @property
    def state(self) -> Path:
        return self.root / "state"

    @property
    def config(self) -> Path:
        return self.etc / "collector.toml"

    def init_args(self, *extra: str) -> list[str]:
        return ["init", "--etc", str(self.etc), "--state", str(self.state),
                "--user", service_user(), "--origin", ORIGIN, "--dns", "localhost",
                "--mqtt-port", str(self.mqtt_port), "--api-port", str(self.api_port), *extra]

    def init(self, *extra: str) -> subprocess.CompletedProcess[str]:
        return cli(*self.init_args(*extra))

    def serve(self, config: Path | None = None, name: str = "serve") -> subprocess.Popen[bytes]:
        """Start ``serve --config``; its output goes to ROOT/<name>.log."""
        log = open(self.root / f"{name}.log", "ab")  # noqa: SIM115 - closed in close()
        self._logs.append(log)
        p = subprocess.Popen(  # noqa: S603 - our own CLI
            [sys.executable, "-m", "collector.cli.main", "serve", "--config",
             str(config or self.config)], stdout=log, stderr=log, stdin=subprocess.DEVNULL,
            env=env(), cwd=REPO, start_new_session=True)
        self.serves.append(p)
        return p

    def log(self, name: str = "serve") -> str:
        path = self.root / f"{name}.log"
        return path.read_text(encoding="utf-8", errors="replace") if path.exists() else ""

    def wait_ready(self, p: subprocess.Popen[bytes], name: str = "serve",
                   count: int = 1) -> None:
        def ready() -> bool:
            if p.poll() is not None:
                raise AssertionError(f"serve exited with {p.returncode}:\n{self.log(name)}")
            return self.log(name).count(READY) >= count
        wait_for(ready, 90, f"{name}: {READY!r} in its log")

    def close(self) -> None:
        for p in self.serves:
            if p.poll() is None:
                p.send_signal(signal.SIGTERM)
                try:
                    p.wait(30)
                except subprocess.TimeoutExpired:
                    os.killpg(p.pid, signal.SIGKILL)
                    p.wait(30)
        for f in self._logs:
            f.close()


def new_host(root: Path) -> Host:
    return Host(root, mqtt_port=free_port(), api_port=free_port())


def snapshot(*dirs: Path) -> dict[str, tuple[bytes, int, int, int]]:
    """Every file under ``dirs``: bytes, mtime, mode and owner (what "changes nothing" means)."""
    out: dict[str, tuple[bytes, int, int, int]] = {}
    for d in dirs:
        for p in sorted(d.rglob("*")):
            if p.is_file():
                st = p.stat()
                out[str(p)] = (p.read_bytes(), st.st_mtime_ns, st.st_mode, st.st_uid)
    return out
