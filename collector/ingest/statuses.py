"""Device statuses (``timeclock/v1/devices/{id}/status``): the last word of every clock.

Statuses are telemetry, not evidence: unsigned, never in the ledger, used by ``device list``
and monitoring. Each is parsed strictly with wire.device_status; an invalid one is kept with
its error rather than dropped.
"""

from __future__ import annotations

import threading
from dataclasses import dataclass

from wire.device_status import DeviceStatus, parse_status
from wire.errors import DecodeError, WireError
from wire.topics import device_of


@dataclass(frozen=True, slots=True)
class StatusRow:
    """The last status message of one device: ``status`` as the clock published it
    (wire.device_status), or None with ``error`` saying why the message was not one."""

    device: str
    received_at: int
    status: DeviceStatus | None
    size: int
    error: str | None = None


class StatusTable:
    """Last status message per device (``timeclock/v1/devices/{id}/status``), in memory.

    Statuses are telemetry, not evidence: they are not signed, not recorded in the ledger,
    and only used for ``device list`` and monitoring. An invalid message replaces the last
    status too (with its error): the clock's last word is that it sent something unreadable.
    Thread-safe.
    """

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._rows: dict[str, StatusRow] = {}

    def update(self, topic: str, payload: bytes, received_at: int) -> StatusRow | None:
        try:
            device = device_of(topic, "status")
        except DecodeError:
            return None
        try:
            row = StatusRow(device, received_at, parse_status(device, payload), len(payload))
        except WireError as e:
            row = StatusRow(device, received_at, None, len(payload), str(e))
        with self._lock:
            self._rows[device] = row
        return row

    def get(self, device: str) -> StatusRow | None:
        with self._lock:
            return self._rows.get(device)

    def snapshot(self) -> dict[str, StatusRow]:
        with self._lock:
            return dict(self._rows)
