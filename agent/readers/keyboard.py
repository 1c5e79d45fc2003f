"""``keyboard``: USB HID keyboard-wedge badge readers, read through evdev.

The reader "types" the badge id (digits, or hex letters A-F) and presses Enter. The device is
grabbed exclusively (EVIOCGRAB), so a tap never types into a console or a login prompt.

Split: :class:`KeySequenceDecoder` is pure (events and times in, ids out) and carries all the
logic; :class:`KeyboardSession` only selects, reads and feeds it. evdev is imported only when a
reader opens; the decoder uses the key codes of the kernel ABI (linux/input-event-codes.h),
which tests check against ``evdev.ecodes``.

Invariants: only key-down events (value 1) count; key-up (0) and autorepeat (2) are ignored, as
are Shift and Caps Lock (hex letters are taken as uppercase either way). A read ends at
KEY_ENTER or KEY_KPENTER. A partial read is discarded, as one read error, when the next key
comes more than ``inter_key_timeout_s`` after the previous one or when the timeout passes with
no key at all; an unexpected key or an id longer than 64 chars poisons the read until Enter
(one read error). Credential: ``<format>:<id as typed>``.
"""

from __future__ import annotations

import contextlib
import logging
import re
import select
import threading
import time
from collections.abc import Callable, Mapping
from typing import TYPE_CHECKING, Any

from agent.errors import ReaderError
from agent.readers.base import POLL_S, CommonOptions, Read, Reader, Session, mono_us
from agent.readers.options import FORMAT_RE, SectionParser

if TYPE_CHECKING:
    from evdev import InputEvent

log = logging.getLogger("agent.readers")

# linux/input-event-codes.h (stable kernel ABI)
EV_KEY = 1
KEY_ENTER, KEY_KPENTER = 28, 96
KEY_1 = 2
KEY_LEFTSHIFT, KEY_RIGHTSHIFT, KEY_CAPSLOCK = 42, 54, 58
KEY_DOWN = 1
KEY_CHARS: dict[int, str] = {
    11: "0", 2: "1", 3: "2", 4: "3", 5: "4", 6: "5", 7: "6", 8: "7", 9: "8", 10: "9",
    82: "0", 79: "1", 80: "2", 81: "3", 75: "4", 76: "5", 77: "6", 71: "7", 72: "8", 73: "9",
    30: "A", 48: "B", 46: "C", 32: "D", 18: "E", 33: "F",
}
MAX_ID_LEN = 64
_IGNORED = frozenset({KEY_LEFTSHIFT, KEY_RIGHTSHIFT, KEY_CAPSLOCK})
_VP_RE = re.compile(r"^[0-9a-fA-F]{4}:[0-9a-fA-F]{4}$")


class KeySequenceDecoder:
    """Pure: key events → badge ids. Times are seconds on any one clock, passed in."""

    def __init__(self, *, timeout_s: float = 0.5,
                 on_error: Callable[[str], None] | None = None) -> None:
        self.timeout_s = timeout_s
        self.errors = 0
        self._on_error = on_error
        self._buf: list[str] = []
        self._poisoned = False
        self._last: float | None = None

    def feed(self, event: InputEvent, now: float | None = None) -> str | None:
        """Feed one event; return the id when it completes a read.

        ``now`` defaults to the event's own timestamp; the device loop passes a monotonic time.
        """
        if event.type != EV_KEY or event.value != KEY_DOWN or event.code in _IGNORED:
            return None
        t = event.timestamp() if now is None else now
        self.expire(t)
        self._last = t
        code = event.code
        if code in (KEY_ENTER, KEY_KPENTER):
            ident = "".join(self._buf) if not self._poisoned else ""
            self._reset()
            return ident or None
        if self._poisoned:
            return None
        ch = KEY_CHARS.get(code)
        if ch is None:
            self._error(f"unexpected key code {code} in a read")
        elif len(self._buf) >= MAX_ID_LEN:
            self._error(f"read longer than {MAX_ID_LEN} chars")
        else:
            self._buf.append(ch)
        return None

    def expire(self, now: float) -> None:
        """Discard a partial read whose last key is older than the timeout."""
        if self._last is None or now - self._last <= self.timeout_s:
            return
        if self._buf and not self._poisoned:
            self._error(f"partial read ({len(self._buf)} chars), no Enter within "
                        f"{self.timeout_s:g}s")
        self._reset()

    def _error(self, reason: str) -> None:
        self.errors += 1
        self._poisoned = True
        self._buf.clear()
        if self._on_error is not None:
            self._on_error(reason)

    def _reset(self) -> None:
        self._buf.clear()
        self._poisoned = False
        self._last = None


class KeyboardSession(Session):
    """The thin device loop: select, read, feed the decoder."""

    def __init__(self, device: Any, decoder: KeySequenceDecoder, fmt: str) -> None:
        self._dev = device
        self._decoder = decoder
        self._format = fmt

    def poll(self, stop: threading.Event) -> list[Read]:
        ready, _, _ = select.select([self._dev.fd], [], [], POLL_S)
        out: list[Read] = []
        if ready:
            try:
                for event in self._dev.read():  # OSError ENODEV when unplugged: device lost
                    ident = self._decoder.feed(event, now=time.monotonic())
                    if ident is not None:
                        out.append(Read(f"{self._format}:{ident}", mono_us()))
            except BlockingIOError:
                pass
        self._decoder.expire(time.monotonic())
        return out

    def close(self) -> None:
        for release in (self._dev.ungrab, self._dev.close):
            with contextlib.suppress(OSError):  # already gone with the device
                release()


class KeyboardReader(Reader):
    """Config: ``path``, or ``vendor_product`` ("ffff:0035") and/or ``name``; ``format``
    ("kbd"), ``inter_key_timeout_s`` (0.5)."""

    kind = "keyboard"

    def __init__(self, name: str, common: CommonOptions, *, path: str | None = None,
                 vendor_product: tuple[int, int] | None = None, device_name: str | None = None,
                 fmt: str = "kbd", inter_key_timeout_s: float = 0.5) -> None:
        super().__init__(name, common)
        if path is None and vendor_product is None and device_name is None:
            raise ValueError("keyboard reader needs path, vendor_product or name")
        self.path = path
        self.vendor_product = vendor_product
        self.device_name = device_name
        self.format = fmt
        self.inter_key_timeout_s = inter_key_timeout_s

    @classmethod
    def from_config(cls, name: str, section: Mapping[str, Any]) -> KeyboardReader:
        p = SectionParser(name, section)
        common = p.common(cls.kind)
        path = p.optional_string("path")
        vp_text = p.optional_string("vendor_product", pattern=_VP_RE,
                                    hint='USB ids in hex, "vendor:product", as lsusb prints them')
        device_name = p.optional_string("name")
        if path is None and vp_text is None and device_name is None and not p.problems:
            p.problem("path", "give path, or vendor_product and/or name, to choose the device")
        if path is not None and (vp_text is not None or device_name is not None):
            p.problem("path", "give either path or vendor_product/name, not both")
        fmt = p.string("format", "kbd", pattern=FORMAT_RE)
        timeout_s = p.number("inter_key_timeout_s", 0.5, minimum=0.01, maximum=10.0)
        p.finish()
        vp = None
        if vp_text is not None:
            v, _, pr = vp_text.partition(":")
            vp = (int(v, 16), int(pr, 16))
        return cls(name, common, path=path, vendor_product=vp, device_name=device_name,
                   fmt=fmt, inter_key_timeout_s=timeout_s)

    def describe(self) -> str:
        if self.path is not None:
            return self.path
        parts = []
        if self.vendor_product is not None:
            parts.append("{:04x}:{:04x}".format(*self.vendor_product))
        if self.device_name is not None:
            parts.append(repr(self.device_name))
        return "input device " + " ".join(parts)

    def _open(self, on_error: Callable[[str], None]) -> Session:
        import evdev  # noqa: PLC0415 - hardware library: imported only when a reader opens

        path = self.path if self.path is not None else self._find(evdev)
        device = evdev.InputDevice(path)
        try:
            device.grab()  # EVIOCGRAB: taps must never type into a console
        except OSError as e:
            device.close()
            raise ReaderError(f"cannot grab {path} exclusively (another process holds it?): "
                              f"{e}") from e
        decoder = KeySequenceDecoder(timeout_s=self.inter_key_timeout_s, on_error=on_error)
        return KeyboardSession(device, decoder, self.format)

    def _find(self, evdev: Any) -> str:
        """The matching device that can type digits and Enter (wedges often expose more)."""
        matches: list[tuple[bool, str]] = []
        for candidate in sorted(evdev.list_devices()):
            try:
                dev = evdev.InputDevice(candidate)
            except OSError:
                continue
            try:
                if self.vendor_product is not None and \
                        (dev.info.vendor, dev.info.product) != self.vendor_product:
                    continue
                if self.device_name is not None and dev.name != self.device_name:
                    continue
                keys = dev.capabilities().get(EV_KEY, [])
                matches.append((KEY_ENTER in keys and KEY_1 in keys, candidate))
            finally:
                dev.close()
        if not matches:
            raise ReaderError(f"no readable {self.describe()} (plugged in? in group input?)")
        matches.sort(key=lambda m: (not m[0], m[1]))
        return matches[0][1]
