"""The project's one wall clock in the contract's unit: integer microseconds since the epoch.

Every timestamp on the wire, in the ledger and in status files is µs (DESIGN.md §3). Code that
needs the time takes a ``now_us`` parameter and defaults it to :func:`now_us`, so tests pass
their own clock instead of sleeping.
"""

from __future__ import annotations

import time

US_PER_S = 1_000_000


def now_us() -> int:
    """Wall-clock time now, in integer µs since 1970-01-01 UTC."""
    return time.time_ns() // 1000


def to_us(seconds: float) -> int:
    """Seconds (a float from time.time() or a config value) as integer µs."""
    return int(seconds * US_PER_S)
