"""``rdm6300``: 125 kHz EM4100 reader modules (RDM6300 and clones) on a UART, 9600 8N1.

Frame (14 bytes): STX 0x02, 10 ASCII hex data chars, 2 ASCII hex checksum chars, ETX 0x03.
The checksum is the XOR of the 5 data bytes the 10 chars encode. The module repeats the frame
several times a second while a card is in the field; the base debounce folds the repeats.

Canonical credential: ``em4100:`` + the 10 data chars in UPPERCASE hex, exactly as the module
sends them (lowercase input is upper-cased), e.g. ``em4100:0A00C0FFEE``. The first two chars are
the EM4100 version/customer byte; the number printed on many cards is ``int(last 8, 16)`` in
decimal — converting is a reporting concern, the raw 40 bits are what the punch records.

Invariants: a punch comes only from a complete frame whose checksum verifies. Truncated
frames, bytes outside frames, non-hex chars, a missing ETX and bad checksums each count as one
read error (one per run of garbage, not one per byte) and never produce a credential; the
parser resynchronises on the next STX. A frame left incomplete for ``frame_timeout_s`` is
discarded as truncated.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Mapping
from typing import Any

from agent.readers.base import CommonOptions, Reader, Session
from agent.readers.options import SectionParser
from agent.readers.serialport import SerialSession, SerialSettings, baud_option

log = logging.getLogger("agent.readers")

STX, ETX = 0x02, 0x03
_HEX = frozenset(b"0123456789ABCDEFabcdef")
_PAYLOAD_LEN = 12  # 10 data + 2 checksum chars between STX and ETX


class Em4100Parser:
    """Pure byte-stream parser for RDM6300 frames."""

    def __init__(self, on_error: Callable[[str], None], *,
                 frame_timeout_us: int = 250_000) -> None:
        self._on_error = on_error
        self._timeout_us = frame_timeout_us
        self._buf = bytearray()
        self._in_frame = False
        self._in_garbage = False
        self._last_us = 0

    def feed(self, data: bytes, now_us: int) -> list[str]:
        self.expire(now_us)
        out: list[str] = []
        for b in data:
            if b == STX:
                if self._in_frame:
                    self._on_error(f"truncated frame ({len(self._buf)} of 12 chars before STX)")
                self._in_frame, self._in_garbage = True, False
                self._buf.clear()
            elif not self._in_frame:
                if not self._in_garbage:
                    self._on_error("bytes outside a frame")
                    self._in_garbage = True
            elif len(self._buf) < _PAYLOAD_LEN:
                if b in _HEX:
                    self._buf.append(b)
                else:
                    self._drop(f"non-hex byte 0x{b:02x} inside a frame")
            elif b == ETX:
                cred = self._finish()
                if cred is not None:
                    out.append(cred)
            else:
                self._drop(f"byte 0x{b:02x} where ETX was expected")
        if data:
            self._last_us = now_us
        return out

    def expire(self, now_us: int) -> None:
        if self._in_frame and now_us - self._last_us > self._timeout_us:
            self._on_error(f"truncated frame ({len(self._buf)} of 12 chars, then silence)")
            self._in_frame = False
            self._buf.clear()

    def _drop(self, reason: str) -> None:
        self._on_error(reason)
        self._in_frame, self._in_garbage = False, True  # the rest of this run is the same error
        self._buf.clear()

    def _finish(self) -> str | None:
        text = self._buf.decode("ascii").upper()
        self._in_frame = False
        self._buf.clear()
        data = bytes.fromhex(text[:10])
        check = 0
        for byte in data:
            check ^= byte
        if check != int(text[10:], 16):
            self._on_error("bad checksum")
            return None
        return f"em4100:{text[:10]}"


def em4100_frame(data_hex: str, *, checksum: int | None = None) -> bytes:
    """Build a frame for ``data_hex`` (10 hex chars); tests and bench tools use it."""
    data = bytes.fromhex(data_hex)
    if len(data) != 5:
        raise ValueError("EM4100 data is 5 bytes (10 hex chars)")
    if checksum is None:
        checksum = 0
        for byte in data:
            checksum ^= byte
    body = data_hex.encode("ascii") + f"{checksum:02X}".encode("ascii")
    return bytes([STX]) + body + bytes([ETX])


class Rdm6300Reader(Reader):
    """Config: ``port`` (required), ``baud`` (9600), ``frame_timeout_s`` (0.25)."""

    kind = "rdm6300"

    def __init__(self, name: str, common: CommonOptions, *, port: str, baud: int = 9600,
                 frame_timeout_s: float = 0.25) -> None:
        super().__init__(name, common)
        self.settings = SerialSettings(port=port, baud=baud)
        self.frame_timeout_s = frame_timeout_s

    @classmethod
    def from_config(cls, name: str, section: Mapping[str, Any]) -> Rdm6300Reader:
        p = SectionParser(name, section)
        common = p.common(cls.kind)
        port = p.string("port", hint="e.g. /dev/serial0 or /dev/timeclock/<name>")
        baud = baud_option(p)
        frame_timeout_s = p.number("frame_timeout_s", 0.25, minimum=0.02, maximum=10.0)
        p.finish()
        return cls(name, common, port=port, baud=baud, frame_timeout_s=frame_timeout_s)

    def describe(self) -> str:
        return self.settings.port

    def _open(self, on_error: Callable[[str], None]) -> Session:
        parser = Em4100Parser(on_error, frame_timeout_us=int(self.frame_timeout_s * 1e6))
        return SerialSession(self.settings, parser)
