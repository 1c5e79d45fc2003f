"""Reader contract: taps, debounce, registry, config errors, backoff and state, isolation."""

from __future__ import annotations

import logging
import re
import subprocess
import sys
import threading
from collections.abc import Callable
from pathlib import Path

import pytest

from agent.errors import ConfigError
from agent.readers import REGISTRY, Debouncer, Tap, build_reader
from agent.readers.base import Session
from agent.readers.simulated import SimulatedReader
from tests.agent.readers_kit import DEADLINE_S, TapSink, running, status_is


def tap(cred: str = "em4100:0A00C0FFEE", t_s: float = 0.0, reader: str = "front") -> Tap:
    return Tap(reader, cred, "punch", int(t_s * 1_000_000))


# ---- Tap ----------------------------------------------------------------------------------

@pytest.mark.parametrize(("kwargs", "match"), [
    ({"reader": "Front"}, "reader name"),
    ({"reader": "a.b"}, "reader name"),
    ({"credential": "EM4100:1"}, "credential"),
    ({"credential": "em4100:12-34"}, "credential"),
    ({"credential": "em4100:" + "1" * 65}, "credential"),
    ({"action": "lunch"}, "action"),
    ({"mono_us": -1}, "mono_us"),
])
def test_tap_rejects_values_the_wire_contract_rejects(kwargs: dict[str, object],
                                                      match: str) -> None:
    fields: dict[str, object] = {"reader": "front", "credential": "em4100:0A00C0FFEE",
                                 "action": "in", "mono_us": 1}
    fields.update(kwargs)
    with pytest.raises(ValueError, match=match):
        Tap(**fields)  # type: ignore[arg-type]


def test_tap_error_does_not_echo_the_credential() -> None:
    with pytest.raises(ValueError, match="credential") as info:
        Tap("front", "em4100:SECRET-ID", "in", 1)
    assert "SECRET" not in str(info.value)


# ---- Debouncer ----------------------------------------------------------------------------

def test_debounce_same_credential_within_window_is_one_punch() -> None:
    d = Debouncer(3.0)
    assert [d.accept(tap(t_s=t)) for t in (0.0, 0.5, 2.9)] == [True, False, False]


def test_debounce_after_the_window_is_a_new_punch() -> None:
    d = Debouncer(3.0)
    assert d.accept(tap(t_s=10.0)) is True
    assert d.accept(tap(t_s=13.01)) is True


def test_debounce_window_slides_while_a_card_lies_on_the_reader() -> None:
    d = Debouncer(3.0)
    # The RDM6300 repeats the frame while the card stays in the field: one punch, not three.
    results = [d.accept(tap(t_s=t)) for t in (0.0, 2.0, 4.0, 6.0, 8.0)]
    assert results == [True, False, False, False, False]
    assert d.accept(tap(t_s=11.5)) is True


def test_debounce_different_credentials_and_readers_are_independent() -> None:
    d = Debouncer(3.0)
    assert d.accept(tap("em4100:0000000001", 0.0, "front")) is True
    assert d.accept(tap("em4100:0000000002", 0.1, "front")) is True
    assert d.accept(tap("em4100:0000000001", 0.2, "back")) is True
    assert d.accept(tap("em4100:0000000001", 0.3, "front")) is False


def test_debounce_zero_window_accepts_everything() -> None:
    d = Debouncer(0.0)
    assert [d.accept(tap(t_s=0.0)) for _ in range(3)] == [True, True, True]


def test_debounce_prunes_but_still_debounces_recent_credentials() -> None:
    d = Debouncer(1.0)
    for i in range(1100):
        assert d.accept(tap(f"sim:{i}", t_s=i * 0.01)) is True
    assert d.accept(tap("sim:1099", t_s=11.0)) is False
    assert len(d._last_seen) < 1101


# ---- registry and config ------------------------------------------------------------------

def test_registry_lists_every_kind() -> None:
    assert sorted(REGISTRY) == ["keyboard", "rdm6300", "serial-line", "simulated"]
    for kind, cls in REGISTRY.items():
        assert cls.kind == kind


@pytest.mark.subprocess
def test_importing_readers_loads_no_hardware_library() -> None:
    code = ("import sys, agent.readers; "
            "print(sorted(m for m in ('serial', 'evdev') if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         check=True, cwd=Path(__file__).parents[2])
    assert out.stdout.strip() == "[]"


def test_build_reader_common_defaults() -> None:
    r = build_reader("demo", {"kind": "simulated", "credentials": ["1"]})
    assert (r.name, r.kind, r.action, r.debounce_s) == ("demo", "simulated", "punch", 3.0)
    assert (r.reopen_min_s, r.reopen_max_s) == (1.0, 30.0)
    assert r.state.status == "closed"


@pytest.mark.parametrize(("section", "match"), [
    ({}, r"readers\.x\.kind: required, one of keyboard, rdm6300, serial-line, simulated"),
    ({"kind": "rfid"}, r"readers\.x\.kind: 'rfid' is not one of"),
    ({"kind": 3}, r"readers\.x\.kind: 3 is not one of"),
])
def test_build_reader_needs_a_known_kind(section: dict[str, object], match: str) -> None:
    with pytest.raises(ConfigError, match=match):
        build_reader("x", section)


def test_config_errors_are_listed_all_at_once_with_key_paths() -> None:
    section = {"kind": "rdm6300", "action": "lunch", "debounce_s": -1, "reopen_min_s": "1",
               "baud": 9601, "colour": "red", "frame_timeout_s": True}
    with pytest.raises(ConfigError) as info:
        build_reader("Front", section)
    assert info.value.problems == [
        "readers.Front: reader name must match ^[a-z0-9](?:[a-z0-9-]{0,61}[a-z0-9])?$ "
        "(lowercase letters, digits and inner dashes)",
        "readers.Front.action: 'lunch' is not one of break-end, break-start, in, out, punch",
        "readers.Front.debounce_s: must be between 0 and 3600, got -1",
        "readers.Front.reopen_min_s: expected a number, got str",
        "readers.Front.port: required (e.g. /dev/serial0 or /dev/timeclock/<name>)",
        "readers.Front.baud: 9601 is not one of 1200, 2400, 4800, 9600, 19200, 38400, 57600, "
        "115200, 230400",
        "readers.Front.frame_timeout_s: expected a number, got bool",
        "readers.Front.colour: unknown key (allowed: action, baud, debounce_s, "
        "frame_timeout_s, kind, port, reopen_max_s, reopen_min_s)",
    ]
    assert str(info.value).startswith("invalid configuration:\n  readers.Front: ")


def test_config_reopen_max_below_min_is_an_error() -> None:
    with pytest.raises(ConfigError, match=r"readers\.a\.reopen_max_s: must be ≥ reopen_min_s"):
        build_reader("a", {"kind": "simulated", "credentials": ["1"], "reopen_min_s": 5,
                           "reopen_max_s": 2})


def test_config_kind_mismatch_when_calling_a_class_directly() -> None:
    with pytest.raises(ConfigError, match=r"readers\.a\.kind: 'keyboard' given to the "
                                          r"'simulated' reader"):
        REGISTRY["simulated"].from_config("a", {"kind": "keyboard", "credentials": ["1"]})


def test_config_section_must_be_a_table() -> None:
    with pytest.raises(ConfigError, match=r"readers\.a: expected a table, got str"):
        build_reader("a", "rdm6300")  # type: ignore[arg-type]


# ---- run loop: backoff, state, isolation, emit failures ---------------------------------

def test_missing_device_is_retried_with_exponential_backoff_capped(
        tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.WARNING, logger="agent.readers")
    reader = build_reader("gone", {"kind": "rdm6300", "port": str(tmp_path / "nothing"),
                                   "reopen_min_s": 0.01, "reopen_max_s": 0.04})
    with running(reader, TapSink()):
        assert reader.wait_for(lambda s: s.detail.endswith("retry in 0.04s"), DEADLINE_S)
        state = reader.state
        assert state.status == "reopening"
        assert re.fullmatch(r"cannot open .*nothing: .*No such file or directory.*; "
                            r"retry in 0\.04s", state.detail)
        # Five failures: 0.01, 0.02, 0.04 (cap), 0.04, 0.04.
        # The log line is written before the state changes, so a notify means it is there.
        assert reader.wait_for(lambda s: caplog.text.count("retry in") >= 5, DEADLINE_S)
    delays = re.findall(r"retry in ([0-9.]+)s", caplog.text)
    assert delays[:5] == ["0.01", "0.02", "0.04", "0.04", "0.04"]
    assert reader.state.reopens == 0


def test_a_failing_reader_does_not_affect_another(tmp_path: Path) -> None:
    broken = build_reader("broken", {"kind": "rdm6300", "port": str(tmp_path / "no-such-tty"),
                                     "reopen_min_s": 0.01, "reopen_max_s": 0.02})
    demo = build_reader("demo", {"kind": "simulated", "credentials": ["1", "2"],
                                 "interval_s": 0.01, "count": 5, "debounce_s": 0})
    sink = TapSink()
    with running(broken, sink), running(demo, sink):
        assert sink.wait_count(5)
        assert broken.state.status == "reopening"
    assert {t.reader for t in sink.taps} == {"demo"}


def test_stop_returns_promptly_during_a_long_backoff(tmp_path: Path) -> None:
    reader = build_reader("slow", {"kind": "rdm6300", "port": str(tmp_path / "none"),
                                   "reopen_min_s": 600, "reopen_max_s": 600})
    with running(reader, TapSink()):  # on exit, joins within STOP_WITHIN_S
        assert reader.wait_for(status_is("reopening"), DEADLINE_S)


def test_emit_failure_is_visible_and_the_reader_keeps_reading() -> None:
    reader = build_reader("demo", {"kind": "simulated", "credentials": ["1", "2"],
                                   "interval_s": 0.01, "count": 3, "debounce_s": 0})
    calls: list[Tap] = []
    first = threading.Event()

    def emit(t: Tap) -> None:
        calls.append(t)
        if not first.is_set():
            first.set()
            raise OSError("disk full")

    with running(reader, emit):
        assert reader.wait_for(lambda s: s.taps == 2, DEADLINE_S)
        assert reader.state.status == "open"
    assert len(calls) == 3


def test_emit_failure_state_says_why() -> None:
    reader = build_reader("demo", {"kind": "simulated", "credentials": ["1"],
                                   "interval_s": 0.01, "count": 1})

    def emit(t: Tap) -> None:
        raise OSError("disk full")

    with running(reader, emit):
        assert reader.wait_for(status_is("error"), DEADLINE_S)
        assert reader.state.detail == "last tap not recorded: disk full"
        assert reader.state.taps == 0


class _NoLibrary(SimulatedReader):
    def _open(self, on_error: Callable[[str], None]) -> Session:
        raise ImportError("No module named 'serial'")


class _Buggy(SimulatedReader):
    opens = 0

    def _open(self, on_error: Callable[[str], None]) -> Session:
        type(self).opens += 1
        session = super()._open(on_error)
        session.poll = lambda stop: 1 / 0  # type: ignore[method-assign,assignment,return-value]
        return session


def test_missing_hardware_library_is_an_error_state_not_a_crash() -> None:
    reader = _NoLibrary.from_config("nolib", {"kind": "simulated", "credentials": ["1"],
                                              "reopen_min_s": 5, "reopen_max_s": 5})
    with running(reader, TapSink()):
        assert reader.wait_for(status_is("error"), DEADLINE_S)
        assert reader.state.detail == ("hardware library missing: No module named 'serial'; "
                                       "retry in 5s")


def test_a_plugin_bug_is_logged_with_traceback_and_retried(
        caplog: pytest.LogCaptureFixture) -> None:
    reader = _Buggy.from_config("buggy", {"kind": "simulated", "credentials": ["1"],
                                          "reopen_min_s": 0.01, "reopen_max_s": 0.01})
    with running(reader, TapSink()):
        assert reader.wait_for(lambda s: s.reopens >= 2, DEADLINE_S)
        assert reader.state.status in {"error", "open"}
    assert "unexpected error while reading simulated badges every 5s: " \
           "ZeroDivisionError('division by zero')" in caplog.text
    assert "Traceback" in caplog.text
