"""``serial-line``: readers that print one ASCII line per badge (USB-serial readers,
Wiegand-to-serial converters).

Each line (ended by LF; a CR before it is dropped, blank lines are ignored) must match
``regex`` as a whole (``re.fullmatch``); the regex's one capturing group is the id, and the
credential is ``<format>:<id>`` with the id kept exactly as read. Example for a converter that
prints ``W26:1234567``: ``regex = 'W26:([0-9]+)'``, ``format = "wiegand26"``.

Invariants: the regex compiles and has exactly one group (checked at config time). A line that
does not match, an id outside ``[0-9A-Za-z]{1,64}``, non-ASCII bytes, a line longer than
``max_line_bytes`` and a partial line followed by ``line_timeout_s`` of silence are each one read
error and never a punch.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Mapping
from typing import Any

from agent.readers.base import CommonOptions, Reader, Session
from agent.readers.options import FORMAT_RE, ID_RE, SectionParser
from agent.readers.serialport import SerialSession, SerialSettings, baud_option


class LineParser:
    """Pure byte-stream parser: lines → credentials."""

    def __init__(self, regex: re.Pattern[str], fmt: str, on_error: Callable[[str], None], *,
                 max_line_bytes: int = 128, line_timeout_us: int = 1_000_000) -> None:
        self._regex = regex
        self._format = fmt
        self._on_error = on_error
        self._max = max_line_bytes
        self._timeout_us = line_timeout_us
        self._buf = bytearray()
        self._overlong = False
        self._last_us = 0

    def feed(self, data: bytes, now_us: int) -> list[str]:
        self.expire(now_us)
        out: list[str] = []
        for b in data:
            if b == 0x0A:
                cred = self._line()
                if cred is not None:
                    out.append(cred)
            elif self._overlong:
                continue
            elif len(self._buf) >= self._max:
                self._on_error(f"line longer than {self._max} bytes")
                self._overlong = True
                self._buf.clear()
            else:
                self._buf.append(b)
        if data:
            self._last_us = now_us
        return out

    def expire(self, now_us: int) -> None:
        if (self._buf or self._overlong) and now_us - self._last_us > self._timeout_us:
            if self._buf:
                self._on_error("partial line, then silence")
            self._buf.clear()
            self._overlong = False

    def _line(self) -> str | None:
        raw = bytes(self._buf).rstrip(b"\r")
        self._buf.clear()
        if self._overlong:
            self._overlong = False
            return None
        if not raw.strip():
            return None
        try:
            text = raw.decode("ascii")
        except UnicodeDecodeError:
            self._on_error("non-ASCII bytes in a line")
            return None
        m = self._regex.fullmatch(text)
        if m is None:
            self._on_error(f"line of {len(text)} chars does not match the regex")
            return None
        ident = m.group(1)
        if ident is None or not ID_RE.fullmatch(ident):
            self._on_error(f"extracted id is not {ID_RE.pattern}")
            return None
        return f"{self._format}:{ident}"


def compile_id_regex(p: SectionParser, key: str, source: str) -> re.Pattern[str]:
    """Compile a user regex that must have exactly one capturing group (named or not)."""
    try:
        rx = re.compile(source)
    except re.error as e:
        p.problem(key, f"does not compile: {e}")
        return re.compile("(x)")
    if rx.groups != 1:
        p.problem(key, f"must have exactly one capturing group (the id), has {rx.groups}; "
                       "use (?:...) for other groups")
    return rx


class SerialLineReader(Reader):
    """Config: port, format, regex (required); baud 9600, bytesize 8, parity "N", stopbits 1,
    max_line_bytes 128, line_timeout_s 1.0."""

    kind = "serial-line"

    def __init__(self, name: str, common: CommonOptions, *, settings: SerialSettings,
                 regex: re.Pattern[str], fmt: str, max_line_bytes: int = 128,
                 line_timeout_s: float = 1.0) -> None:
        super().__init__(name, common)
        self.settings = settings
        self.regex = regex
        self.format = fmt
        self.max_line_bytes = max_line_bytes
        self.line_timeout_s = line_timeout_s

    @classmethod
    def from_config(cls, name: str, section: Mapping[str, Any]) -> SerialLineReader:
        p = SectionParser(name, section)
        common = p.common(cls.kind)
        port = p.string("port", hint="e.g. /dev/ttyUSB0 or /dev/timeclock/<name>")
        baud = baud_option(p)
        bytesize = p.integer("bytesize", 8, minimum=5, maximum=8)
        parity = p.choice("parity", "N", frozenset({"N", "E", "O", "M", "S"}))
        stopbits = p.number("stopbits", 1.0)
        if stopbits not in (1.0, 1.5, 2.0):
            p.problem("stopbits", f"must be 1, 1.5 or 2, got {stopbits:g}")
        fmt = p.string("format", pattern=FORMAT_RE, hint='the credential prefix, e.g. "wiegand26"')
        source = p.string("regex", hint="a regex with one group capturing the id")
        raw = section.get("regex") if isinstance(section, Mapping) else None
        # "" is a string too: compile it so that the missing group is reported.
        regex = compile_id_regex(p, "regex", source) if isinstance(raw, str) else re.compile("(x)")
        max_line_bytes = p.integer("max_line_bytes", 128, minimum=1, maximum=4096)
        line_timeout_s = p.number("line_timeout_s", 1.0, minimum=0.05, maximum=60.0)
        p.finish()
        stop = 1.5 if stopbits == 1.5 else int(stopbits)
        settings = SerialSettings(port, baud, bytesize, parity, stop)
        return cls(name, common, settings=settings, regex=regex, fmt=fmt,
                   max_line_bytes=max_line_bytes, line_timeout_s=line_timeout_s)

    def describe(self) -> str:
        return self.settings.port

    def _open(self, on_error: Callable[[str], None]) -> Session:
        parser = LineParser(self.regex, self.format, on_error,
                            max_line_bytes=self.max_line_bytes,
                            line_timeout_us=int(self.line_timeout_s * 1e6))
        return SerialSession(self.settings, parser)
