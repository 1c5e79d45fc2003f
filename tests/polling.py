"""The one polling helper of the tests: wait for a condition with a deadline, never sleep-and-hope.

Deadlines are generous on purpose (a condition that holds returns at once, so a long deadline
costs nothing on a fast machine and keeps a busy one green); on a miss the AssertionError names
what was awaited and the last value the predicate returned, so a failure says where it stuck.
lab/site.py has its own ``wait_for`` for the demo (lab must not import tests).
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from typing import TypeVar

T = TypeVar("T")

POLL_S = 0.02


def wait_for(predicate: Callable[[], T], timeout_s: float, what: str,
             poll_s: float = POLL_S) -> T:
    """Poll ``predicate`` until it returns a truthy value and return that value; raise
    AssertionError naming ``what`` and the last value once ``timeout_s`` has passed."""
    deadline = time.monotonic() + timeout_s
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() >= deadline:
            raise AssertionError(f"timed out after {timeout_s:g} s waiting for {what} "
                                 f"(last value: {value!r})")
        time.sleep(poll_s)


async def await_for(predicate: Callable[[], T], timeout_s: float, what: str,
                    poll_s: float = POLL_S) -> T:
    """:func:`wait_for` for coroutines: polls without blocking the event loop."""
    deadline = time.monotonic() + timeout_s
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() >= deadline:
            raise AssertionError(f"timed out after {timeout_s:g} s waiting for {what} "
                                 f"(last value: {value!r})")
        await asyncio.sleep(poll_s)
