"""Tap → signed, committed punch; the clock facts a punch carries."""

from __future__ import annotations

import logging
import re
import threading
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from agent.clock import (
    STA_UNSYNC,
    TIME_ERROR,
    ClockSample,
    KernelClock,
    SystemClock,
    clock_state,
    monotonic_us,
    read_adjtimex,
    read_boot_id,
)
from agent.errors import QueueError, ReaderError
from agent.punches import PunchMaker
from agent.queue import Outbox
from agent.readers.base import Tap
from wire import ZERO_HASH
from wire.chain import verify_device_chain
from wire.fields import UUID_RE
from wire.keys import SigningKey
from wire.punch import SignedPunch

DEVICE = "clock-0017"
SK = SigningKey(bytes(range(32)))
BOOT = "6b2f1e0c-3c4d-4e8a-9f1a-2b3c4d5e6f70"


@dataclass
class FixedClock:
    ts_us: int = 1_764_140_400_000_000
    mono_us: int = 91_000_000
    clock: str = "synced"

    def sample(self) -> ClockSample:
        return ClockSample(self.ts_us, self.mono_us, self.clock, BOOT)


@dataclass(frozen=True)
class RawTap:
    """A tap that skipped the reader's validation (the maker must still refuse it)."""

    reader: str
    credential: str
    action: str
    mono_us: int


@pytest.fixture
def outbox(tmp_path: Path) -> Iterator[Outbox]:
    box = Outbox(tmp_path / "queue.db", bytes(32), DEVICE)
    yield box
    box.close()


def test_tap_becomes_signed_committed_punch(outbox: Outbox) -> None:
    clock = FixedClock()
    maker = PunchMaker(outbox, SK, clock=clock)
    tap = Tap("front", "em4100:0012345678", "in", clock.mono_us - 250_000)
    sp = maker.record(tap)
    p = sp.punch
    assert (p.device, p.seq, p.prev, p.reader, p.credential, p.action, p.key) == (
        DEVICE, 1, ZERO_HASH, "front", "em4100:0012345678", "in", SK.key_id)
    # ts and mono both name the moment of the tap, 250 ms before the sample.
    assert p.mono == clock.mono_us - 250_000
    assert p.ts == clock.ts_us - 250_000
    assert (p.clock, p.boot) == ("synced", BOOT)
    sp.verify(SK.verify_key)
    assert outbox.pending() == [sp]
    assert maker.recorded == 1
    assert maker.last_recorded == sp


def test_unsynced_clock_is_recorded_as_such(outbox: Outbox) -> None:
    maker = PunchMaker(outbox, SK, clock=FixedClock(clock="unsynced"))
    assert maker.record(Tap("front", "em4100:1", "out", 1)).punch.clock == "unsynced"


def test_log_line_after_commit_without_credential(outbox: Outbox,
                                                  caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, logger="agent.punches")
    seen: list[int] = []

    def hook(sp: SignedPunch) -> None:
        # The hook (buzzer/LED, publisher wake-up) runs only after the commit.
        seen.append(outbox.depth())

    maker = PunchMaker(outbox, SK, clock=FixedClock(), on_recorded=hook)
    for _ in range(3):
        maker.record(Tap("front", "em4100:0012345678", "in", 5))
    assert seen == [1, 2, 3]
    assert re.findall(r"recorded seq=(\d+) reader=front action=in", caplog.text) == [
        "1", "2", "3"]
    assert "0012345678" not in caplog.text


def test_failing_hook_does_not_undo_the_punch(outbox: Outbox,
                                              caplog: pytest.LogCaptureFixture) -> None:
    def hook(sp: SignedPunch) -> None:
        raise RuntimeError("buzzer unplugged")

    maker = PunchMaker(outbox, SK, clock=FixedClock(), on_recorded=hook)
    assert maker.record(Tap("front", "em4100:1", "in", 5)).punch.seq == 1
    assert "on_recorded hook failed for seq=1" in caplog.text
    assert outbox.depth() == 1


def test_invalid_tap_is_refused_without_echoing_the_credential(outbox: Outbox) -> None:
    maker = PunchMaker(outbox, SK, clock=FixedClock())
    with pytest.raises(ReaderError, match="field credential is invalid") as ei:
        maker.record(RawTap("front", "em4100:00123456789-secret", "in", 5))
    assert "00123456789" not in str(ei.value)
    assert ei.value.__cause__ is None
    assert outbox.last_seq() == 0  # nothing consumed


def test_punch_on_closed_queue_raises_queue_error(tmp_path: Path) -> None:
    box = Outbox(tmp_path / "q.db", bytes(32), DEVICE)
    maker = PunchMaker(box, SK, clock=FixedClock())
    box.close()
    with pytest.raises(QueueError, match="cannot start a transaction"):
        maker.record(Tap("front", "em4100:1", "in", 5))


def test_many_reader_threads_share_one_chain(outbox: Outbox) -> None:
    maker = PunchMaker(outbox, SK, clock=FixedClock())

    def reader(name: str) -> None:
        for i in range(20):
            maker(Tap(name, f"em4100:{i}", "punch", 5))

    threads = [threading.Thread(target=reader, args=(f"r{i}",)) for i in range(3)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    got = outbox.pending()
    assert [p.punch.seq for p in got] == list(range(1, 61))
    assert verify_device_chain(DEVICE, [p.punch for p in got]).gaps == []


def test_system_clock_sample_is_real() -> None:
    s = SystemClock().sample()
    assert UUID_RE.fullmatch(s.boot)
    assert s.clock in {"synced", "unsynced"}
    assert s.mono_us <= monotonic_us()
    assert s.ts_us > 1_600_000_000_000_000


def test_adjtimex_reads_kernel_state_and_maps_flags() -> None:
    k = read_adjtimex()
    assert 0 <= k.state <= TIME_ERROR
    assert clock_state() == ("synced" if k.synced else "unsynced")
    assert KernelClock(0, 0, 0).synced is True
    assert KernelClock(0, STA_UNSYNC, 0).synced is False
    assert KernelClock(TIME_ERROR, 0, 0).synced is False


def test_boot_id_is_lowercased(tmp_path: Path) -> None:
    f = tmp_path / "boot_id"
    f.write_text("6B2F1E0C-3C4D-4E8A-9F1A-2B3C4D5E6F70\n")
    assert read_boot_id(f) == BOOT
    assert SystemClock(f).sample().boot == BOOT
