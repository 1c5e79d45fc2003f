"""AccessLog records every request exactly once, whatever is cancelled and when (control D12).

The race is forced, not hoped for: the store's write transaction is held open after its
inserts and before COMMIT (``MidCommit``, on the real SQLite and PostgreSQL stores) while the
flush that handed the batch to its worker thread is cancelled (by ``close()`` or directly);
then the commit is let go (or made to fail) and the ledger must hold each request id once.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import json
import threading
from collections.abc import Iterator
from typing import Any

import pytest

from collector.api.access_log import AccessLog
from collector.ledger.sqlbase import SQLStore
from tests.collector.ledger_kit import T0
from tests.polling import await_for

HOLD_S = 60.0


class MidCommit:
    """Holds the store's next write transaction open after its inserts, before COMMIT, until
    :meth:`let_go`; with ``fail`` the transaction then raises and rolls back instead."""

    def __init__(self, store: SQLStore, monkeypatch: pytest.MonkeyPatch, *,
                 fail: bool = False) -> None:
        self.inside = threading.Event()
        self._go = threading.Event()
        self._armed = True
        real = store._write    # noqa: SLF001 -- the seam between the inserts and the COMMIT

        @contextlib.contextmanager
        def write() -> Iterator[Any]:
            with real() as cur:
                yield cur
                if self._armed:
                    self._armed = False
                    self.inside.set()
                    if not self._go.wait(HOLD_S):
                        raise RuntimeError("MidCommit was never let go")
                    if fail:
                        raise RuntimeError("injected failure at COMMIT")
        monkeypatch.setattr(store, "_write", write)

    async def entered(self) -> None:
        assert await asyncio.to_thread(self.inside.wait, HOLD_S), "no write reached COMMIT"

    def let_go(self) -> None:
        self._go.set()


def body(n: int) -> dict[str, Any]:
    return {"type": "request", "request_id": f"req-{n:04d}", "at": T0 + n, "status": 200}


def recorded_ids(store: SQLStore) -> collections.Counter[str]:
    return collections.Counter(
        json.loads(se.body)["request_id"] for se in store.entries()
        if se.entry.kind == "access" and se.body is not None)


def clock() -> int:
    return T0


def assert_once(store: SQLStore, n: int) -> None:
    ids = recorded_ids(store)
    twice = {i: c for i, c in ids.items() if c != 1}
    assert twice == {}, f"request ids recorded more than once: {twice}"
    assert sorted(ids) == [body(i)["request_id"] for i in range(n)]


async def test_d12_close_while_a_batch_commits_records_each_request_once(
        store: SQLStore, monkeypatch: pytest.MonkeyPatch) -> None:
    gate = MidCommit(store, monkeypatch)
    alog = AccessLog(store, clock, flush_interval_s=0.01)
    alog.start()
    for i in range(5):
        alog.add(body(i))
    await gate.entered()                       # the periodic flush's thread holds 0..4
    for i in range(5, 8):
        alog.add(body(i))                      # requests that arrive meanwhile
    assert alog.pending == 8                   # the in-flight batch still counts
    closing = asyncio.create_task(alog.close())
    # close() has cancelled the periodic flush (its thread still commits) and moved on.
    await await_for(lambda: alog._task is None, 30,   # noqa: SLF001
                    "close() to cancel the periodic flush")
    for _ in range(5):
        await asyncio.sleep(0)                 # let close() reach its own flush
    assert not closing.done()                  # it waits for the in-flight batch
    gate.let_go()
    await asyncio.wait_for(closing, 60)
    assert (alog.pending, alog.appended, alog.failures) == (0, 8, 0)
    assert_once(store, 8)


async def test_d12_a_cancelled_flush_is_settled_by_the_next_one(
        store: SQLStore, monkeypatch: pytest.MonkeyPatch) -> None:
    gate = MidCommit(store, monkeypatch)
    alog = AccessLog(store, clock)             # not started: flushes are called directly
    for i in range(4):
        alog.add(body(i))
    first = asyncio.create_task(alog.flush())
    await gate.entered()
    first.cancel()
    with pytest.raises(asyncio.CancelledError):
        await first
    alog.add(body(4))
    second = asyncio.create_task(alog.flush())
    for _ in range(5):
        await asyncio.sleep(0)
    assert not second.done()                   # it awaits the batch the first one left
    gate.let_go()
    assert await asyncio.wait_for(second, 60) == 1
    assert (alog.pending, alog.appended) == (0, 5)
    await alog.close()
    assert_once(store, 5)


async def test_d12_a_batch_failing_after_its_flush_was_cancelled_is_retried_once(
        store: SQLStore, monkeypatch: pytest.MonkeyPatch,
        caplog: pytest.LogCaptureFixture) -> None:
    gate = MidCommit(store, monkeypatch, fail=True)
    alog = AccessLog(store, clock, flush_interval_s=0.01)
    alog.start()
    for i in range(3):
        alog.add(body(i))
    await gate.entered()
    alog.add(body(3))
    closing = asyncio.create_task(alog.close())
    await await_for(lambda: alog._task is None, 30,   # noqa: SLF001
                    "close() to cancel the periodic flush")
    gate.let_go()                              # the in-flight COMMIT fails and rolls back
    await asyncio.wait_for(closing, 60)
    assert (alog.pending, alog.appended, alog.failures) == (0, 4, 1)
    assert "appending 3 access records failed; will retry" in caplog.text
    assert_once(store, 4)
