"""sd_notify(3) without dependencies: READY=1, WATCHDOG=1, STOPPING=1, STATUS= to systemd.

Shared by the collector (collector.service.runner) and the agent (agent.service): stdlib only,
no hardware, database or network code (one AF_UNIX datagram per call).

``$NOTIFY_SOCKET`` names an AF_UNIX datagram socket: a path, or ``@name`` for the abstract
namespace (a leading NUL byte). Without it (not started by systemd with Type=notify) every call
is a no-op returning False, so a service runs the same under a shell, in tests and in systemd.
The watchdog interval is ``$WATCHDOG_USEC`` (only when ``$WATCHDOG_PID`` is unset or is us); a
service pings at half of it, and only while its loops are healthy.
"""

from __future__ import annotations

import logging
import os
import socket
from collections.abc import Mapping

log = logging.getLogger(__name__)


def _address(value: str) -> str | bytes | None:
    if not value:
        return None
    if value.startswith("@"):
        return b"\0" + value[1:].encode()
    if value.startswith("/"):
        return value
    return None  # vsock and other schemes are not used on our machines


class Notifier:
    """Sends state lines to the service manager; failures are logged, never raised."""

    def __init__(self, env: Mapping[str, str] | None = None) -> None:
        env = os.environ if env is None else env
        self.address = _address(env.get("NOTIFY_SOCKET", ""))
        self.watchdog_usec = _watchdog_usec(env)

    @property
    def enabled(self) -> bool:
        return self.address is not None

    @property
    def watchdog_interval_s(self) -> float | None:
        """How often to send WATCHDOG=1 (half the configured timeout), or None."""
        return None if self.watchdog_usec is None else self.watchdog_usec / 2_000_000

    def notify(self, *lines: str) -> bool:
        if self.address is None:
            return False
        msg = "\n".join(lines).encode()
        try:
            with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC) as s:
                s.connect(self.address)
                s.sendall(msg)
        except OSError as e:
            log.warning("sd_notify failed: %s", e)
            return False
        return True

    def ready(self, status: str | None = None) -> bool:
        return self.notify("READY=1", *([f"STATUS={status}"] if status else []))

    def watchdog(self) -> bool:
        return self.notify("WATCHDOG=1")

    def stopping(self) -> bool:
        return self.notify("STOPPING=1")

    def status(self, text: str) -> bool:
        return self.notify(f"STATUS={text}")


def _watchdog_usec(env: Mapping[str, str]) -> int | None:
    raw = env.get("WATCHDOG_USEC", "")
    pid = env.get("WATCHDOG_PID", "")
    if pid and pid != str(os.getpid()):
        return None
    try:
        usec = int(raw)
    except ValueError:
        return None
    return usec if usec > 0 else None
