"""rdm6300: the EM4100 frame parser, then the reader through real pty pairs and pyserial."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from agent.errors import ConfigError
from agent.readers import build_reader
from agent.readers.rdm6300 import Em4100Parser, Rdm6300Reader, em4100_frame
from tests.agent.readers_kit import DEADLINE_S, PtyPort, TapSink, running, status_is

CARD = "0A00C0FFEE"   # checksum 0A^00^C0^FF^EE = 0xDB
CARD2 = "1234567890"  # checksum 12^34^56^78^90 = 0x98


class Parser:
    def __init__(self, timeout_us: int = 250_000) -> None:
        self.errors: list[str] = []
        self.p = Em4100Parser(self.errors.append, frame_timeout_us=timeout_us)

    def feed(self, data: bytes, now_us: int = 0) -> list[str]:
        return self.p.feed(data, now_us)


# ---- parser -------------------------------------------------------------------------------

def test_frame_builder_matches_the_datasheet_layout() -> None:
    assert em4100_frame(CARD) == b"\x020A00C0FFEEDB\x03"
    assert em4100_frame(CARD2) == b"\x02123456789098\x03"
    with pytest.raises(ValueError, match="5 bytes"):
        em4100_frame("0A00")


def test_good_frames_give_uppercase_canonical_credentials() -> None:
    p = Parser()
    assert p.feed(em4100_frame(CARD) + em4100_frame(CARD2)) == ["em4100:0A00C0FFEE",
                                                               "em4100:1234567890"]
    assert p.feed(b"\x020a00c0ffeedb\x03") == ["em4100:0A00C0FFEE"]
    assert p.errors == []


def test_frame_split_into_single_bytes_is_reassembled() -> None:
    p = Parser()
    out: list[str] = []
    for i, b in enumerate(em4100_frame(CARD)):
        out += p.feed(bytes([b]), now_us=i * 1000)
    assert out == ["em4100:0A00C0FFEE"]
    assert p.errors == []


@pytest.mark.parametrize(("data", "reason"), [
    (em4100_frame(CARD, checksum=0xDC), "bad checksum"),
    (b"\x020A00C0\x02", "truncated frame (6 of 12 chars before STX)"),
    (b"\x020A00C0FFEEDBX", "byte 0x58 where ETX was expected"),
    (b"\x020A00G0FFEEDB\x03", "non-hex byte 0x47 inside a frame"),
    (b"hello\r\n", "bytes outside a frame"),
])
def test_bad_input_is_one_read_error_and_never_a_credential(data: bytes, reason: str) -> None:
    p = Parser()
    assert p.feed(data) == []
    assert p.errors == [reason]


def test_resync_on_the_next_stx_after_garbage() -> None:
    p = Parser()
    data = (b"\xff\xfe" + em4100_frame(CARD)[:5] + em4100_frame(CARD2) + b"noise"
            + em4100_frame(CARD, checksum=0) + em4100_frame(CARD))
    assert p.feed(data) == ["em4100:1234567890", "em4100:0A00C0FFEE"]
    assert p.errors == ["bytes outside a frame", "truncated frame (4 of 12 chars before STX)",
                        "bytes outside a frame", "bad checksum"]


def test_partial_frame_followed_by_silence_expires_as_truncated() -> None:
    p = Parser(timeout_us=250_000)
    assert p.feed(em4100_frame(CARD)[:8], now_us=1_000_000) == []
    p.p.expire(1_200_000)
    assert p.errors == []
    p.p.expire(1_250_001)
    assert p.errors == ["truncated frame (7 of 12 chars, then silence)"]
    # The rest of the frame arriving late is garbage, not a credential.
    assert p.feed(em4100_frame(CARD)[8:], now_us=1_300_000) == []
    assert p.errors[-1] == "bytes outside a frame"


# ---- config -------------------------------------------------------------------------------

def test_config_keys_and_defaults() -> None:
    r = build_reader("front", {"kind": "rdm6300", "port": "/dev/serial0", "action": "in"})
    assert isinstance(r, Rdm6300Reader)
    assert (r.settings.port, r.settings.baud, r.frame_timeout_s, r.action) == \
        ("/dev/serial0", 9600, 0.25, "in")


def test_config_every_problem_at_once() -> None:
    with pytest.raises(ConfigError) as info:
        build_reader("front", {"kind": "rdm6300", "port": 5, "baud": "fast", "parity": "E"})
    assert info.value.problems == [
        "readers.front.port: expected a string, got int",
        "readers.front.baud: expected an integer, got str",
        "readers.front.parity: unknown key (allowed: action, baud, debounce_s, "
        "frame_timeout_s, kind, port, reopen_max_s, reopen_min_s)",
    ]


# ---- through a real pty -------------------------------------------------------------------

@pytest.fixture
def port(tmp_path: Path) -> Iterator[PtyPort]:
    p = PtyPort(tmp_path / "rfid")
    yield p
    p.close()


def make_reader(port: PtyPort, **extra: object) -> Rdm6300Reader:
    section: dict[str, object] = {"kind": "rdm6300", "port": str(port.link),
                                  "reopen_min_s": 0.02, "reopen_max_s": 0.1, **extra}
    r = build_reader("front", section)
    assert isinstance(r, Rdm6300Reader)
    return r


def test_pty_good_frames_become_taps(port: PtyPort) -> None:
    reader, sink = make_reader(port, action="in"), TapSink()
    with running(reader, sink):
        assert reader.wait_for(status_is("open"), DEADLINE_S)
        port.write(em4100_frame(CARD) + em4100_frame(CARD2))
        assert sink.wait_count(2)
    assert [(t.reader, t.credential, t.action) for t in sink.taps] == [
        ("front", "em4100:0A00C0FFEE", "in"), ("front", "em4100:1234567890", "in")]
    assert sink.taps[0].mono_us <= sink.taps[1].mono_us
    assert reader.state.taps == 2
    assert reader.state.read_errors == 0


def test_pty_frame_arriving_in_pieces(port: PtyPort) -> None:
    reader, sink = make_reader(port, frame_timeout_s=5.0), TapSink()
    frame = em4100_frame(CARD)
    with running(reader, sink):
        assert reader.wait_for(status_is("open"), DEADLINE_S)
        for piece in (frame[:1], frame[1:6], frame[6:13], frame[13:]):
            port.write(piece)
            port.wait_drained()  # the reader consumed this piece on its own
        assert sink.wait_count(1)
    assert sink.credentials == ["em4100:0A00C0FFEE"]
    assert reader.state.read_errors == 0


def test_pty_bad_checksum_truncated_and_noise_are_errors_not_punches(port: PtyPort) -> None:
    reader, sink = make_reader(port), TapSink()
    with running(reader, sink):
        assert reader.wait_for(status_is("open"), DEADLINE_S)
        port.write(em4100_frame(CARD, checksum=0x00))        # bad checksum
        port.write(em4100_frame(CARD)[:7])                    # truncated by the next STX
        port.write(em4100_frame(CARD2))                       # good
        port.write(b"\x00\xffNOISE\r\n")                      # noise between frames
        port.write(em4100_frame(CARD))                        # resync: good
        assert sink.wait_count(2)
        assert reader.wait_for(lambda s: s.read_errors == 3, DEADLINE_S)
    assert sink.credentials == ["em4100:1234567890", "em4100:0A00C0FFEE"]
    assert reader.state.taps == 2


def test_pty_truncated_frame_then_silence(port: PtyPort) -> None:
    reader, sink = make_reader(port, frame_timeout_s=0.05), TapSink()
    with running(reader, sink):
        assert reader.wait_for(status_is("open"), DEADLINE_S)
        port.write(em4100_frame(CARD)[:9])
        assert reader.wait_for(lambda s: s.read_errors == 1, DEADLINE_S)
    assert sink.taps == []


def test_pty_repeated_frames_of_a_resting_card_are_one_punch(port: PtyPort) -> None:
    reader, sink = make_reader(port), TapSink()
    with running(reader, sink):
        assert reader.wait_for(status_is("open"), DEADLINE_S)
        port.write(em4100_frame(CARD) * 5 + em4100_frame(CARD2))
        assert sink.wait_count(2)
        port.wait_drained()
    assert sink.credentials == ["em4100:0A00C0FFEE", "em4100:1234567890"]


def test_pty_unplug_and_replug_reopens_with_backoff_and_resumes(tmp_path: Path) -> None:
    front = PtyPort(tmp_path / "front")
    back = PtyPort(tmp_path / "back")
    r_front = make_reader(front, frame_timeout_s=1.0)
    r_back = build_reader("back", {"kind": "rdm6300", "port": str(back.link)})
    sink = TapSink()
    try:
        with running(r_front, sink), running(r_back, sink):
            assert r_front.wait_for(status_is("open"), DEADLINE_S)
            assert r_back.wait_for(status_is("open"), DEADLINE_S)
            front.write(em4100_frame(CARD))
            assert sink.wait_count(1)

            front.unplug()  # the USB adapter is pulled
            assert r_front.wait_for(
                lambda s: s.status == "reopening" and "cannot open" in s.detail, DEADLINE_S)
            detail = r_front.state.detail
            assert "No such file or directory" in detail
            assert "retry in" in detail

            # Meanwhile the other reader keeps working.
            back.write(em4100_frame(CARD2))
            assert sink.wait_count(2)
            assert sink.taps[1].reader == "back"

            front.plug()  # plugged back: a new tty behind the same stable name
            assert r_front.wait_for(lambda s: s.status == "open" and s.reopens == 1, DEADLINE_S)
            front.write(em4100_frame(CARD2))
            assert sink.wait_count(3)
    finally:
        front.close()
        back.close()
    assert [(t.reader, t.credential) for t in sink.taps] == [
        ("front", "em4100:0A00C0FFEE"), ("back", "em4100:1234567890"),
        ("front", "em4100:1234567890")]
    assert r_front.state.taps == 2
    assert r_back.state.reopens == 0


def test_pty_device_vanishing_while_open_is_reported(port: PtyPort) -> None:
    reader = make_reader(port, reopen_min_s=5, reopen_max_s=5)
    with running(reader, TapSink()):
        assert reader.wait_for(status_is("open"), DEADLINE_S)
        port.unplug()
        assert reader.wait_for(status_is("reopening"), DEADLINE_S)
        assert reader.state.detail.startswith(f"{port.link} vanished: ")
        assert reader.state.detail.endswith("; retry in 5s")


def test_pty_port_is_opened_exclusively(port: PtyPort) -> None:
    first = make_reader(port)
    second = build_reader("second", {"kind": "rdm6300", "port": str(port.link),
                                     "reopen_min_s": 5, "reopen_max_s": 5})
    with running(first, TapSink()):
        assert first.wait_for(status_is("open"), DEADLINE_S)
        with running(second, TapSink()):
            assert second.wait_for(status_is("reopening"), DEADLINE_S)
            assert "cannot open" in second.state.detail
