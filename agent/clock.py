"""Time facts a punch carries (DESIGN.md §3): wall clock, kernel sync state, boot id, monotonic.

Pis have no RTC, so a punch says whether the kernel clock was disciplined when it was made.
``clock`` is "synced" only if a read-only ``adjtimex`` (modes = 0) returns a state other than
TIME_ERROR and STA_UNSYNC is clear. If the call is refused (a seccomp filter such as systemd's
ProtectClock=), the state falls back to systemd-timesyncd's flag file; with no evidence the
clock is "unsynced": never claim a sync that was not observed.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import functools
import os
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

from wire.clock import now_us as wall_us

BOOT_ID_PATH = Path("/proc/sys/kernel/random/boot_id")
TIMESYNCD_FLAG = Path("/run/systemd/timesync/synchronized")
STA_UNSYNC = 0x0040
TIME_ERROR = 5


class _Timeval(ctypes.Structure):
    _fields_ = [("tv_sec", ctypes.c_long), ("tv_usec", ctypes.c_long)]


class _Timex(ctypes.Structure):
    # struct timex of <sys/timex.h> for the classic (non-time64) ABI of the `adjtimex` symbol;
    # c_long/c_int give the right sizes and padding on x86_64, aarch64 and armhf.
    _fields_ = [
        ("modes", ctypes.c_uint), ("offset", ctypes.c_long), ("freq", ctypes.c_long),
        ("maxerror", ctypes.c_long), ("esterror", ctypes.c_long), ("status", ctypes.c_int),
        ("constant", ctypes.c_long), ("precision", ctypes.c_long),
        ("tolerance", ctypes.c_long), ("time", _Timeval), ("tick", ctypes.c_long),
        ("ppsfreq", ctypes.c_long), ("jitter", ctypes.c_long), ("shift", ctypes.c_int),
        ("stabil", ctypes.c_long), ("jitcnt", ctypes.c_long), ("calcnt", ctypes.c_long),
        ("errcnt", ctypes.c_long), ("stbcnt", ctypes.c_long), ("tai", ctypes.c_int),
        ("_reserved", ctypes.c_int * 11), ("_slack", ctypes.c_char * 64),
    ]


@dataclass(frozen=True, slots=True)
class KernelClock:
    """Result of one adjtimex read: ``state`` is the return value, ``status`` the flags."""

    state: int
    status: int
    maxerror_us: int

    @property
    def synced(self) -> bool:
        return self.state != TIME_ERROR and not self.status & STA_UNSYNC


@functools.cache
def _libc() -> ctypes.CDLL:
    # The libc this interpreter already runs on (dlopen(NULL)): no search, no process.
    # find_library would run ldconfig -p, a fork+exec at the first punch.
    libc = ctypes.CDLL(None, use_errno=True)
    if hasattr(libc, "adjtimex"):
        return libc
    return ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6", use_errno=True)


def read_adjtimex() -> KernelClock:
    """Read the kernel clock discipline state; raise ``OSError`` if the call is refused."""
    libc = _libc()
    tx = _Timex()
    tx.modes = 0  # read only: needs no privilege and changes nothing
    rc = libc.adjtimex(ctypes.byref(tx))
    if rc == -1:
        err = ctypes.get_errno()
        raise OSError(err, f"adjtimex: {os.strerror(err)}")
    return KernelClock(int(rc), int(tx.status), int(tx.maxerror))


def clock_state() -> str:
    """``"synced"`` or ``"unsynced"`` (DESIGN.md §3 ``clock``)."""
    try:
        return "synced" if read_adjtimex().synced else "unsynced"
    except (OSError, AttributeError):
        return "synced" if TIMESYNCD_FLAG.exists() else "unsynced"


def read_boot_id(path: Path = BOOT_ID_PATH) -> str:
    return path.read_text(encoding="ascii").strip().lower()


def monotonic_us() -> int:
    return time.clock_gettime_ns(time.CLOCK_MONOTONIC) // 1000



@dataclass(frozen=True, slots=True)
class ClockSample:
    ts_us: int
    mono_us: int
    clock: str
    boot: str


class ClockSource(Protocol):
    def sample(self) -> ClockSample: ...


class SystemClock:
    """The real clocks of this machine. The boot id is read once: it is fixed per boot."""

    def __init__(self, boot_id_path: Path = BOOT_ID_PATH) -> None:
        self.boot = read_boot_id(boot_id_path)

    def sample(self) -> ClockSample:
        return ClockSample(wall_us(), monotonic_us(), clock_state(), self.boot)
