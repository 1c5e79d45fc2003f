"""Test helpers for reader plugins: real pty "serial devices" that can be unplugged and
replugged behind a stable path, a thread-safe tap sink, and a reader-in-a-thread context.

Waits are conditions with deadlines, never fixed sleeps. ``DEADLINE_S`` is generous on purpose:
a condition that already holds returns at once, so it costs nothing on a fast machine and keeps
a busy one green. Polling (state with no condition to wait on) goes through tests.polling.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import struct
import termios
import threading
from collections.abc import Callable, Iterator
from pathlib import Path

from agent.readers.base import Reader, ReaderState, Tap
from tests.polling import wait_for

DEADLINE_S = 60.0
# A reader must stop within this after stop is set: the bound IS the property (stop interrupts
# a reopen backoff instead of waiting it out), so it stays below the 5 s backoffs the tests set
# (and far below the 600 s of test_stop_returns_promptly_during_a_long_backoff).
STOP_WITHIN_S = 4.0


class PtyPort:
    """A pty pair whose slave is reachable at ``link`` (like /dev/timeclock/<name>).

    ``unplug()`` removes the link and closes the master (the reader's reads fail with EIO, as
    when a USB adapter is pulled); ``plug()`` creates a fresh pty and points the link at it.
    A probe fd on the slave stays open so the test can see how many bytes are unread.
    """

    def __init__(self, link: Path) -> None:
        self.link = link
        self.master = -1
        self._probe = -1
        self.plug()

    def plug(self) -> None:
        master, slave = os.openpty()
        self.master, self._probe = master, slave
        tmp = self.link.with_name(self.link.name + ".new")
        with contextlib.suppress(FileNotFoundError):
            tmp.unlink()
        tmp.symlink_to(os.ttyname(slave))
        tmp.replace(self.link)  # atomic re-point

    def unplug(self) -> None:
        with contextlib.suppress(FileNotFoundError):
            self.link.unlink()
        for fd in (self.master, self._probe):
            with contextlib.suppress(OSError):
                os.close(fd)
        self.master = self._probe = -1

    def write(self, data: bytes) -> None:
        view = memoryview(data)
        while view:
            n = os.write(self.master, view)
            view = view[n:]

    def unread(self) -> int:
        """Bytes written to the master that no one has read from the slave yet."""
        buf = fcntl.ioctl(self._probe, termios.FIONREAD, struct.pack("i", 0))
        return int(struct.unpack("i", buf)[0])

    def wait_drained(self, timeout_s: float = DEADLINE_S) -> None:
        """Wait until the reader has read every byte written (fails the test at the deadline)."""
        wait_for(lambda: self.unread() == 0, timeout_s, f"the reader to drain {self.link.name}")

    def close(self) -> None:
        self.unplug()


class TapSink:
    """A thread-safe ``emit`` that records taps and lets tests wait for them."""

    def __init__(self) -> None:
        self.taps: list[Tap] = []
        self._cond = threading.Condition()

    def __call__(self, tap: Tap) -> None:
        with self._cond:
            self.taps.append(tap)
            self._cond.notify_all()

    def wait_count(self, n: int, timeout_s: float = DEADLINE_S) -> bool:
        with self._cond:
            return self._cond.wait_for(lambda: len(self.taps) >= n, timeout_s)

    @property
    def credentials(self) -> list[str]:
        with self._cond:
            return [t.credential for t in self.taps]


@contextlib.contextmanager
def running(reader: Reader, emit: Callable[[Tap], None]) -> Iterator[threading.Event]:
    """Run ``reader`` in its own thread; on exit stop it and check it returned promptly."""
    stop = threading.Event()
    thread = threading.Thread(target=reader.run, args=(emit, stop), daemon=True,
                              name=f"reader-{reader.name}")
    thread.start()
    try:
        yield stop
    finally:
        stop.set()
        thread.join(timeout=STOP_WITHIN_S)
        assert not thread.is_alive(), \
            f"reader {reader.name} did not stop within {STOP_WITHIN_S:g} s"
        assert reader.state.status == "closed"


def status_is(status: str) -> Callable[[ReaderState], bool]:
    return lambda s: s.status == status
