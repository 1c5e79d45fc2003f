"""Helpers of the database-outage and watchdog tests: a real sd_notify socket, a clock that
keeps publishing, and the exactly-once check of a ledger (punch rows, entries, audit)."""

from __future__ import annotations

import socket
import tempfile
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

from collector.ledger.audit import verify_store
from collector.ledger.sqlbase import SQLStore
from tests.collector.punch_kit import Device, SimClock
from wire.keys import SigningKey
from wire.punch import SignedPunch


@dataclass
class NotifySocket:
    """An AF_UNIX datagram socket standing in for systemd's $NOTIFY_SOCKET; every datagram
    is kept with the monotonic time it arrived."""

    path: Path
    messages: list[tuple[float, str]] = field(default_factory=list)

    def __post_init__(self) -> None:
        self._sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self._sock.bind(str(self.path))
        self._sock.settimeout(0.2)
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    @classmethod
    def create(cls) -> NotifySocket:
        # sun_path is limited to 108 bytes: a short directory, not pytest's tmp_path.
        return cls(Path(tempfile.mkdtemp(prefix="tc-ntfy-")) / "notify")

    def _run(self) -> None:
        while not self._stop.is_set():
            try:
                data = self._sock.recv(4096)
            except TimeoutError:
                continue
            except OSError:
                return
            with self._lock:
                for line in data.decode(errors="replace").splitlines():
                    self.messages.append((time.monotonic(), line))

    def lines(self, prefix: str, since: float = 0.0) -> list[float]:
        """Arrival times of the lines starting with ``prefix`` that arrived after ``since``."""
        with self._lock:
            return [t for t, line in self.messages if line.startswith(prefix) and t > since]

    def close(self) -> None:
        self._stop.set()
        self._thread.join(5)
        self._sock.close()
        self.path.unlink(missing_ok=True)


class Publisher:
    """A clock that publishes one signed punch per message every ``every_s`` until stopped."""

    def __init__(self, dev: Device, clock: SimClock, every_s: float = 0.1) -> None:
        self.dev, self.clock, self.every_s = dev, clock, every_s
        self.sent = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        while not self._stop.wait(self.every_s):
            self.dev.send(self.clock.batch(1))
            self.sent = self.clock.seq

    def start(self) -> Publisher:
        self._thread.start()
        return self

    def stop(self) -> int:
        self._stop.set()
        self._thread.join(15)
        return self.clock.seq


def assert_exactly_once(store: SQLStore, clock: SimClock, n: int, log_key: SigningKey) -> None:
    """Seqs 1..n of ``clock`` recorded once each, in one unbroken and verified chain."""
    entries = list(store.entries())
    seqs = sorted(SignedPunch.from_bytes(e.body or b"").punch.seq for e in entries
                  if e.entry.kind == "punch")
    assert seqs == list(range(1, n + 1)), f"not each of 1..{n} exactly once: {seqs}"
    assert [e.entry.kind for e in entries if e.entry.kind == "rejection"] == []
    assert store.progress(clock.device).contiguous == n
    assert store.quarantine() == []
    result = verify_store(store, {log_key.key_id: log_key.verify_key})
    assert result.ok, result.report.findings
    assert result.report.punches == n
