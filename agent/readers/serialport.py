"""A serial-port session shared by the serial reader kinds (``rdm6300``, ``serial-line``).

Role: open the port with pyserial (imported here, at open time, so the agent imports on a
laptop without it), read whatever bytes arrived, and hand them to a pure byte parser that turns
them into credentials and counts malformed input as read errors.

Invariants: the port is opened with ``exclusive=True`` (an advisory flock), so two agents
never split one reader's bytes between them; every pyserial failure surfaces as
:class:`ReaderError`, which the reopen loop treats as "device vanished".
"""

from __future__ import annotations

import contextlib
import threading
from dataclasses import dataclass
from typing import Any, Protocol

from agent.errors import ReaderError
from agent.readers.base import POLL_S, Read, Session, mono_us
from agent.readers.options import SectionParser

BAUD_RATES = (1200, 2400, 4800, 9600, 19200, 38400, 57600, 115200, 230400)


def baud_option(p: SectionParser, default: int = 9600) -> int:
    """The ``baud`` key of a serial reader's section, one of :data:`BAUD_RATES`."""
    baud = p.integer("baud", default)
    if baud not in BAUD_RATES:
        p.problem("baud", f"{baud} is not one of {', '.join(map(str, BAUD_RATES))}")
    return baud


class ByteParser(Protocol):
    """Pure: bytes in, credentials out; malformed input goes to its error callback."""

    def feed(self, data: bytes, now_us: int) -> list[str]: ...

    def expire(self, now_us: int) -> None:
        """Discard a partial frame/line that has been incomplete for too long."""


@dataclass(frozen=True, slots=True)
class SerialSettings:
    port: str
    baud: int = 9600
    bytesize: int = 8
    parity: str = "N"
    stopbits: float = 1


class SerialSession(Session):
    def __init__(self, settings: SerialSettings, parser: ByteParser) -> None:
        import serial  # noqa: PLC0415 - hardware library: imported only when a reader opens

        self._serial: Any = serial
        self._parser = parser
        try:
            self._port = serial.Serial(
                port=settings.port, baudrate=settings.baud, bytesize=settings.bytesize,
                parity=settings.parity, stopbits=settings.stopbits, timeout=POLL_S,
                exclusive=True)
        except (serial.SerialException, ValueError) as e:
            raise ReaderError(str(e)) from e

    def poll(self, stop: threading.Event) -> list[Read]:
        try:
            # Block up to POLL_S for the first byte, then take whatever else is buffered.
            data: bytes = self._port.read(max(1, self._port.in_waiting))
        except self._serial.SerialException as e:
            raise ReaderError(str(e)) from e
        now = mono_us()
        creds = self._parser.feed(data, now) if data else []
        self._parser.expire(now)
        return [Read(c, now) for c in creds]

    def close(self) -> None:
        # The device may already be gone; nothing is left to release then.
        with contextlib.suppress(OSError, self._serial.SerialException):
            self._port.close()
