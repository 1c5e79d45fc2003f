"""keyboard: the pure decoder fed with real evdev.InputEvent objects, the thin device loop,
config, and (only where /dev/uinput exists) a real virtual keyboard."""

from __future__ import annotations

import contextlib
import os
import threading
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import evdev
import pytest
from evdev import InputEvent, ecodes

from agent.errors import ConfigError
from agent.readers import build_reader
from agent.readers import keyboard as kb
from agent.readers.keyboard import KeyboardReader, KeyboardSession, KeySequenceDecoder
from tests.agent.readers_kit import DEADLINE_S, TapSink, running, status_is

CHAR_KEYS = {**{str(d): getattr(ecodes, f"KEY_{d}") for d in range(10)},
             **{c: getattr(ecodes, f"KEY_{c}") for c in "ABCDEF"}}


def key(code: int, t: float, value: int = 1) -> InputEvent:
    sec = int(t)
    return InputEvent(sec, round((t - sec) * 1_000_000), ecodes.EV_KEY, code, value)


def typed(text: str, t0: float = 100.0, step: float = 0.01, *, enter: int = ecodes.KEY_ENTER,
          shift: bool = False) -> list[InputEvent]:
    """What a wedge reader sends: per char, (shift down,) key down, key up (, shift up); Enter."""
    events: list[InputEvent] = []
    t = t0
    for ch in [*text, None]:
        code = enter if ch is None else CHAR_KEYS[ch]
        if shift and ch is not None and ch.isalpha():
            events.append(key(ecodes.KEY_LEFTSHIFT, t))
        events.append(key(code, t))
        events.append(InputEvent(int(t), 0, ecodes.EV_SYN, ecodes.SYN_REPORT, 0))
        events.append(key(code, t + step / 2, value=0))
        if shift and ch is not None and ch.isalpha():
            events.append(key(ecodes.KEY_LEFTSHIFT, t + step / 2, value=0))
        t += step
    return events


def decode(decoder: KeySequenceDecoder, events: list[InputEvent]) -> list[str]:
    return [s for s in (decoder.feed(e) for e in events) if s is not None]


# ---- decoder ------------------------------------------------------------------------------

def test_kernel_key_codes_match_evdev_ecodes() -> None:
    assert (kb.EV_KEY, kb.KEY_ENTER, kb.KEY_KPENTER) == \
        (ecodes.EV_KEY, ecodes.KEY_ENTER, ecodes.KEY_KPENTER)
    assert (kb.KEY_LEFTSHIFT, kb.KEY_RIGHTSHIFT, kb.KEY_CAPSLOCK) == \
        (ecodes.KEY_LEFTSHIFT, ecodes.KEY_RIGHTSHIFT, ecodes.KEY_CAPSLOCK)
    expected = {**{v: k for k, v in CHAR_KEYS.items()},
                **{getattr(ecodes, f"KEY_KP{d}"): str(d) for d in range(10)}}
    assert expected == kb.KEY_CHARS


def test_digits_then_enter() -> None:
    d = KeySequenceDecoder()
    assert decode(d, typed("0012345678")) == ["0012345678"]
    assert d.errors == 0


def test_hex_letters_with_and_without_shift_and_keypad_enter() -> None:
    d = KeySequenceDecoder()
    assert decode(d, typed("0A00C0FFEE", shift=True)) == ["0A00C0FFEE"]
    assert decode(d, typed("BEEF01", t0=200.0, enter=ecodes.KEY_KPENTER)) == ["BEEF01"]


def test_keypad_digits() -> None:
    d = KeySequenceDecoder()
    events = [key(getattr(ecodes, f"KEY_KP{c}"), 5.0 + i * 0.01) for i, c in enumerate("907")]
    events.append(key(ecodes.KEY_KPENTER, 5.05))
    assert decode(d, events) == ["907"]


def test_key_up_and_autorepeat_are_ignored() -> None:
    d = KeySequenceDecoder()
    events = [key(ecodes.KEY_1, 1.0), key(ecodes.KEY_1, 1.01, value=2),
              key(ecodes.KEY_1, 1.02, value=2), key(ecodes.KEY_1, 1.03, value=0),
              key(ecodes.KEY_2, 1.04), key(ecodes.KEY_ENTER, 1.05, value=2),
              key(ecodes.KEY_ENTER, 1.06, value=0), key(ecodes.KEY_ENTER, 1.07)]
    assert decode(d, events) == ["12"]


def test_non_key_events_are_ignored() -> None:
    d = KeySequenceDecoder()
    events = [InputEvent(1, 0, ecodes.EV_MSC, ecodes.MSC_SCAN, 458782), key(ecodes.KEY_3, 1.0),
              InputEvent(1, 0, ecodes.EV_SYN, ecodes.SYN_REPORT, 0), key(ecodes.KEY_ENTER, 1.01)]
    assert decode(d, events) == ["3"]


def test_enter_alone_is_nothing() -> None:
    d = KeySequenceDecoder()
    assert decode(d, [key(ecodes.KEY_ENTER, 1.0), key(ecodes.KEY_KPENTER, 1.1)]) == []
    assert d.errors == 0


def test_inter_key_timeout_discards_the_partial_read() -> None:
    errors: list[str] = []
    d = KeySequenceDecoder(timeout_s=0.5, on_error=errors.append)
    events = [key(ecodes.KEY_1, 10.0), key(ecodes.KEY_2, 10.4),   # 0.4 s gap: still one read
              key(ecodes.KEY_3, 11.0),                             # 0.6 s gap: "12" discarded
              key(ecodes.KEY_4, 11.1), key(ecodes.KEY_ENTER, 11.2)]
    assert decode(d, events) == ["34"]
    assert errors == ["partial read (2 chars), no Enter within 0.5s"]
    assert d.errors == 1


def test_timeout_with_no_further_key_via_expire() -> None:
    errors: list[str] = []
    d = KeySequenceDecoder(timeout_s=0.5, on_error=errors.append)
    assert decode(d, [key(ecodes.KEY_7, 0.0)]) == []
    d.expire(0.5)
    assert errors == []
    d.expire(0.51)
    assert errors == ["partial read (1 chars), no Enter within 0.5s"]
    assert decode(d, [key(ecodes.KEY_ENTER, 0.6)]) == []  # the Enter alone is nothing


def test_device_loop_time_overrides_event_time() -> None:
    d = KeySequenceDecoder(timeout_s=0.5)
    # Event stamps are far apart (CLOCK_REALTIME jumped), the loop's monotonic times are not.
    assert d.feed(key(ecodes.KEY_1, 0.0), now=50.0) is None
    assert d.feed(key(ecodes.KEY_ENTER, 9999.0), now=50.1) == "1"


def test_unexpected_key_poisons_the_read_until_enter() -> None:
    errors: list[str] = []
    d = KeySequenceDecoder(on_error=errors.append)
    events = [key(ecodes.KEY_1, 1.0), key(ecodes.KEY_MINUS, 1.01), key(ecodes.KEY_2, 1.02),
              key(ecodes.KEY_ENTER, 1.03), *typed("42", t0=1.1)]
    assert decode(d, events) == ["42"]
    assert errors == [f"unexpected key code {ecodes.KEY_MINUS} in a read"]


def test_read_longer_than_64_chars_is_an_error() -> None:
    errors: list[str] = []
    d = KeySequenceDecoder(on_error=errors.append)
    assert decode(d, typed("1" * 65, step=0.001)) == []
    assert errors == ["read longer than 64 chars"]
    assert decode(d, typed("1" * 64, t0=200.0, step=0.001)) == ["1" * 64]


# ---- config -------------------------------------------------------------------------------

def test_config_by_vendor_product_and_name() -> None:
    r = build_reader("wedge", {"kind": "keyboard", "vendor_product": "FFFF:0035",
                               "name": "Sycreader RFID Technology Co., Ltd SYC ID&IC USB Reader",
                               "format": "em4100dec"})
    assert isinstance(r, KeyboardReader)
    assert (r.path, r.vendor_product, r.format, r.inter_key_timeout_s) == \
        (None, (0xFFFF, 0x0035), "em4100dec", 0.5)
    assert r.describe() == ("input device ffff:0035 "
                            "'Sycreader RFID Technology Co., Ltd SYC ID&IC USB Reader'")


def test_config_by_path_defaults() -> None:
    r = build_reader("wedge", {"kind": "keyboard", "path": "/dev/timeclock/wedge"})
    assert isinstance(r, KeyboardReader)
    assert (r.path, r.format, r.describe()) == ("/dev/timeclock/wedge", "kbd",
                                                "/dev/timeclock/wedge")


@pytest.mark.parametrize(("section", "problems"), [
    ({}, ["readers.wedge.path: give path, or vendor_product and/or name, to choose the device"]),
    ({"path": "/dev/input/event3", "vendor_product": "ffff:0035", "format": "EM",
      "inter_key_timeout_s": 0, "grab": False},
     ["readers.wedge.path: give either path or vendor_product/name, not both",
      "readers.wedge.format: 'EM' must match ^[a-z0-9]{1,16}$",
      "readers.wedge.inter_key_timeout_s: must be between 0.01 and 10, got 0",
      "readers.wedge.grab: unknown key (allowed: action, debounce_s, format, "
      "inter_key_timeout_s, kind, name, path, reopen_max_s, reopen_min_s, vendor_product)"]),
    ({"vendor_product": "ffff-0035", "name": 3},
     ["readers.wedge.vendor_product: 'ffff-0035' must match ^[0-9a-fA-F]{4}:[0-9a-fA-F]{4}$ "
      "(USB ids in hex, \"vendor:product\", as lsusb prints them)",
      "readers.wedge.name: expected a string, got int"]),
])
def test_config_problems(section: dict[str, Any], problems: list[str]) -> None:
    with pytest.raises(ConfigError) as info:
        build_reader("wedge", {"kind": "keyboard", **section})
    assert info.value.problems == problems


def test_missing_input_device_is_retried_with_reason(tmp_path: Path) -> None:
    r = build_reader("wedge", {"kind": "keyboard", "path": str(tmp_path / "event99"),
                               "reopen_min_s": 5, "reopen_max_s": 5})
    with running(r, TapSink()):
        assert r.wait_for(status_is("reopening"), DEADLINE_S)
        assert "No such file or directory" in r.state.detail


def test_no_matching_input_device_is_retried_with_reason() -> None:
    r = build_reader("wedge", {"kind": "keyboard", "vendor_product": "ffff:0035",
                               "reopen_min_s": 5, "reopen_max_s": 5})
    with running(r, TapSink()):
        assert r.wait_for(status_is("reopening"), DEADLINE_S)
        assert r.state.detail == ("cannot open input device ffff:0035: no readable input "
                                  "device ffff:0035 (plugged in? in group input?); retry in 5s")


# ---- the device loop, with a pipe standing in for the event device ------------------------

class PipeDevice:
    """The hardware edge only: an fd that select() sees and a read() of InputEvents."""

    def __init__(self) -> None:
        self._r, self._w = os.pipe()
        os.set_blocking(self._r, False)
        self.fd = self._r
        self._lock = threading.Lock()
        self._pending: list[InputEvent] = []
        self.unplugged = False
        self.grabbed = True

    def send(self, events: list[InputEvent]) -> None:
        with self._lock:
            self._pending.extend(events)
        os.write(self._w, b"x")

    def unplug(self) -> None:
        self.unplugged = True
        os.write(self._w, b"x")

    def read(self) -> Iterator[InputEvent]:
        if self.unplugged:
            raise OSError(19, "No such device")
        with contextlib.suppress(BlockingIOError):
            os.read(self._r, 4096)
        with self._lock:
            events, self._pending = self._pending, []
        if not events:
            raise BlockingIOError
        return iter(events)

    def ungrab(self) -> None:
        self.grabbed = False

    def close(self) -> None:
        for fd in (self._r, self._w):
            with contextlib.suppress(OSError):
                os.close(fd)


class PipeKeyboard(KeyboardReader):
    def __init__(self, *args: Any, **kw: Any) -> None:
        super().__init__(*args, **kw)
        self.devices: list[PipeDevice] = []
        self.opened = threading.Condition()

    def _open(self, on_error: Any) -> KeyboardSession:
        dev = PipeDevice()
        with self.opened:
            self.devices.append(dev)
            self.opened.notify_all()
        decoder = KeySequenceDecoder(timeout_s=self.inter_key_timeout_s, on_error=on_error)
        return KeyboardSession(dev, decoder, self.format)


def test_device_loop_reads_taps_counts_errors_and_reopens_after_unplug() -> None:
    reader = PipeKeyboard.from_config("wedge", {
        "kind": "keyboard", "path": "/dev/null", "format": "em4100dec", "reopen_min_s": 0.01,
        "inter_key_timeout_s": 0.05})
    assert isinstance(reader, PipeKeyboard)
    sink = TapSink()
    with running(reader, sink):
        assert reader.wait_for(status_is("open"), DEADLINE_S)
        dev = reader.devices[0]
        dev.send(typed("0012345678", t0=0.0, step=0.0))
        assert sink.wait_count(1)
        dev.send([key(ecodes.KEY_9, 0.0)])  # a partial read, then nothing: expires as an error
        assert reader.wait_for(lambda s: s.read_errors == 1, DEADLINE_S)
        dev.unplug()
        assert reader.wait_for(lambda s: s.reopens == 1 and s.status == "open", DEADLINE_S)
        assert dev.grabbed is False
        reader.devices[1].send(typed("77", t0=0.0, step=0.0))
        assert sink.wait_count(2)
    assert sink.credentials == ["em4100dec:0012345678", "em4100dec:77"]


# ---- a real virtual keyboard, where the kernel offers uinput ------------------------------

@pytest.mark.skipif(not os.path.exists("/dev/uinput"),
                    reason="/dev/uinput absent (no uinput in this kernel/container); the "
                           "decoder is covered by the InputEvent tests above")
def test_uinput_keyboard_is_grabbed_and_read() -> None:  # pragma: no cover - needs uinput
    caps: dict[int, Sequence[int]] = {ecodes.EV_KEY: [*CHAR_KEYS.values(), ecodes.KEY_ENTER]}
    with evdev.UInput(caps, name="timeclock-test-wedge", vendor=0xFFFF, product=0x0035) as ui:
        reader = build_reader("wedge", {"kind": "keyboard", "vendor_product": "ffff:0035",
                                        "name": "timeclock-test-wedge"})
        sink = TapSink()
        with running(reader, sink):
            assert reader.wait_for(status_is("open"), DEADLINE_S)
            for ch in "0A00C0FFEE":
                ui.write(ecodes.EV_KEY, CHAR_KEYS[ch], 1)
                ui.write(ecodes.EV_KEY, CHAR_KEYS[ch], 0)
            ui.write(ecodes.EV_KEY, ecodes.KEY_ENTER, 1)
            ui.write(ecodes.EV_KEY, ecodes.KEY_ENTER, 0)
            ui.syn()
            assert sink.wait_count(1)
        assert sink.credentials == ["kbd:0A00C0FFEE"]
