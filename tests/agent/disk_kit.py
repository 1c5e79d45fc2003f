"""A tiny real filesystem for full-disk tests: a 2 MiB tmpfs mounted for one test, and a filler
file that takes every free byte (removing it gives the space back).

mount(2)/umount2(2) are called through libc (ctypes), not mount(8): mounting starts no
process, so the tests that only need the small disk stay outside the ``subprocess`` marker.
"""

from __future__ import annotations

import contextlib
import ctypes
import errno
import os
from collections.abc import Iterator
from pathlib import Path

import pytest

TINY_FS_BYTES = 2 * 1024 * 1024
_MNT_DETACH = 2
_libc = ctypes.CDLL(None, use_errno=True)   # the libc this interpreter already runs on


def _check(rc: int, what: str, path: Path) -> None:
    if rc != 0:
        err = ctypes.get_errno()
        raise OSError(err, f"{what} {path}: {os.strerror(err)}")


@contextlib.contextmanager
def tmpfs(directory: Path, size_bytes: int = TINY_FS_BYTES) -> Iterator[Path]:
    """Mount a ``size_bytes`` tmpfs on ``directory`` (root only: skip otherwise)."""
    if os.geteuid() != 0:
        pytest.skip("mounting a tmpfs needs root (CI and the dev box run tests as root)")
    directory.mkdir(parents=True, exist_ok=True)
    target = os.fsencode(directory)
    _check(_libc.mount(b"tmpfs", target, b"tmpfs", 0,
                       f"size={size_bytes},mode=0700".encode()), "mount tmpfs on", directory)
    try:
        yield directory
    finally:
        if _libc.umount2(target, 0) != 0:
            # Something still holds a file open (a killed agent's last fds): detach anyway.
            _check(_libc.umount2(target, _MNT_DETACH), "umount -l", directory)


def fill(directory: Path, name: str = "filler") -> Path:
    """Write ``directory/name`` until ENOSPC, down to single bytes; return its path."""
    path = directory / name
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)
    try:
        for chunk in (1 << 16, 1 << 12, 1 << 9, 1):
            block = b"\0" * chunk
            while True:
                try:
                    os.write(fd, block)
                except OSError as e:
                    if e.errno != errno.ENOSPC:
                        raise
                    break
    finally:
        os.close(fd)
    return path


def free_bytes(directory: Path) -> int:
    st = os.statvfs(directory)
    return st.f_bavail * st.f_frsize
