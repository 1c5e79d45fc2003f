"""serial-line: config-time regex checks, the line parser, and the reader through a real pty."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from agent.errors import ConfigError
from agent.readers import build_reader
from agent.readers.serial_line import LineParser, SerialLineReader
from tests.agent.readers_kit import DEADLINE_S, PtyPort, TapSink, running, status_is

BASE = {"kind": "serial-line", "port": "/dev/ttyUSB0", "format": "wiegand26",
        "regex": "W26:([0-9]+)"}


class Lines:
    def __init__(self, regex: str = r"W26:([0-9]+)", **kw: int) -> None:
        self.errors: list[str] = []
        self.p = LineParser(re.compile(regex), "wiegand26", self.errors.append, **kw)

    def feed(self, data: bytes, now_us: int = 0) -> list[str]:
        return self.p.feed(data, now_us)


# ---- parser -------------------------------------------------------------------------------

def test_matching_lines_give_credentials_with_the_id_as_read() -> None:
    p = Lines()
    assert p.feed(b"W26:0012345\r\nW26:7\n\r\n\n") == ["wiegand26:0012345", "wiegand26:7"]
    assert p.errors == []


def test_line_split_across_reads() -> None:
    p = Lines()
    assert p.feed(b"W2", 0) == []
    assert p.feed(b"6:99", 1000) == []
    assert p.feed(b"\r\n", 2000) == ["wiegand26:99"]


@pytest.mark.parametrize(("data", "reason"), [
    (b"W26:12a\n", "line of 7 chars does not match the regex"),
    (b"hello\n", "line of 5 chars does not match the regex"),
    (b"W26:\xff\n", "non-ASCII bytes in a line"),
])
def test_non_matching_lines_are_read_errors(data: bytes, reason: str) -> None:
    p = Lines()
    assert p.feed(data) == []
    assert p.errors == [reason]


def test_extracted_id_must_be_in_the_credential_charset() -> None:
    p = Lines(r"ID=(.+)")
    assert p.feed(b"ID=12-34\nID=" + b"7" * 65 + b"\nID=AbC9\n") == ["wiegand26:AbC9"]
    assert p.errors == ["extracted id is not ^[0-9A-Za-z]{1,64}$"] * 2


def test_overlong_line_is_one_error_and_the_next_line_reads() -> None:
    p = Lines(max_line_bytes=10)
    assert p.feed(b"W26:" + b"1" * 50 + b"\nW26:5\n") == ["wiegand26:5"]
    assert p.errors == ["line longer than 10 bytes"]


def test_partial_line_then_silence_is_discarded() -> None:
    p = Lines(line_timeout_us=1_000_000)
    assert p.feed(b"W26:123", now_us=0) == []
    p.p.expire(1_000_000)
    assert p.errors == []
    p.p.expire(1_000_001)
    assert p.errors == ["partial line, then silence"]
    assert p.feed(b"W26:4\n", now_us=1_100_000) == ["wiegand26:4"]


# ---- config -------------------------------------------------------------------------------

def test_config_defaults() -> None:
    r = build_reader("door", dict(BASE))
    assert isinstance(r, SerialLineReader)
    s = r.settings
    assert (s.port, s.baud, s.bytesize, s.parity, s.stopbits) == ("/dev/ttyUSB0", 9600, 8, "N", 1)
    assert (r.format, r.regex.pattern, r.max_line_bytes, r.line_timeout_s) == \
        ("wiegand26", "W26:([0-9]+)", 128, 1.0)


@pytest.mark.parametrize(("regex", "match"), [
    ("W26:([0-9]+", r"readers\.door\.regex: does not compile: missing \), unterminated"),
    ("W26:[0-9]+", r"readers\.door\.regex: must have exactly one capturing group \(the id\), "
                   r"has 0"),
    ("(W26):([0-9]+)", r"readers\.door\.regex: must have exactly one capturing group .* has 2"),
    ("", r"readers\.door\.regex: must have exactly one capturing group .* has 0"),
    (7, r"readers\.door\.regex: expected a string, got int"),
])
def test_config_regex_compiles_and_has_one_group(regex: object, match: str) -> None:
    with pytest.raises(ConfigError, match=match):
        build_reader("door", {**BASE, "regex": regex})


def test_config_non_capturing_and_named_groups_are_fine() -> None:
    r = build_reader("door", {**BASE, "regex": r"(?:W26|W34):(?P<id>[0-9]+)"})
    assert isinstance(r, SerialLineReader)
    assert r.regex.groups == 1


def test_config_every_problem_at_once() -> None:
    section = {"kind": "serial-line", "baud": 9600, "bytesize": 9, "parity": "X",
               "stopbits": 3, "format": "Wiegand-26", "max_line_bytes": 0,
               "line_timeout_s": 0, "debounce_s": "3"}
    with pytest.raises(ConfigError) as info:
        build_reader("door", section)
    assert info.value.problems == [
        "readers.door.debounce_s: expected a number, got str",
        "readers.door.port: required (e.g. /dev/ttyUSB0 or /dev/timeclock/<name>)",
        "readers.door.bytesize: must be between 5 and 8, got 9",
        "readers.door.parity: 'X' is not one of E, M, N, O, S",
        "readers.door.stopbits: must be 1, 1.5 or 2, got 3",
        "readers.door.format: 'Wiegand-26' must match ^[a-z0-9]{1,16}$ "
        '(the credential prefix, e.g. "wiegand26")',
        "readers.door.regex: required (a regex with one group capturing the id)",
        "readers.door.max_line_bytes: must be between 1 and 4096, got 0",
        "readers.door.line_timeout_s: must be between 0.05 and 60, got 0",
    ]


# ---- through a real pty -------------------------------------------------------------------

def test_pty_lines_become_taps_and_bad_lines_errors(tmp_path: Path) -> None:
    port = PtyPort(tmp_path / "door")
    reader = build_reader("door", {**BASE, "port": str(port.link), "bytesize": 7,
                                   "parity": "E", "stopbits": 1, "baud": 19200,
                                   "action": "out"})
    sink = TapSink()
    try:
        with running(reader, sink):
            assert reader.wait_for(status_is("open"), DEADLINE_S)
            port.write(b"W26:00123\r\n")
            port.write(b"garbage\r\n")
            port.write(b"W2")
            port.wait_drained()
            port.write(b"6:456\r\n")
            assert sink.wait_count(2)
            assert reader.wait_for(lambda s: s.read_errors == 1, DEADLINE_S)
    finally:
        port.close()
    assert [(t.reader, t.credential, t.action) for t in sink.taps] == [
        ("door", "wiegand26:00123", "out"), ("door", "wiegand26:456", "out")]


def test_pty_unplug_replug_resumes(tmp_path: Path) -> None:
    port = PtyPort(tmp_path / "door")
    reader = build_reader("door", {**BASE, "port": str(port.link), "reopen_min_s": 0.02,
                                   "reopen_max_s": 0.05, "debounce_s": 60})
    sink = TapSink()
    try:
        with running(reader, sink):
            assert reader.wait_for(status_is("open"), DEADLINE_S)
            port.write(b"W26:1\n")
            assert sink.wait_count(1)
            port.unplug()
            assert reader.wait_for(lambda s: "cannot open" in s.detail, DEADLINE_S)
            port.plug()
            assert reader.wait_for(lambda s: s.status == "open" and s.reopens == 1, DEADLINE_S)
            port.write(b"W26:1\n")  # a repeat: the debounce spans the reopen
            port.write(b"W26:2\n")
            assert sink.wait_count(2)
            port.wait_drained()
    finally:
        port.close()
    assert sink.credentials == ["wiegand26:1", "wiegand26:2"]
