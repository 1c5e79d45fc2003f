"""The API's access log (every request → an ``access`` ledger entry) and the auth throttle.

Invariants:
- every request, allowed, denied, failing authentication or failing inside, adds exactly one
  record (the middleware adds it in ``finally``);
- records are appended in batches (every ``flush_interval_s`` or ``batch_max`` records) and
  the last batch is flushed on a clean shutdown, so none is lost; a failed append keeps the
  batch for the next attempt, and once ``max_pending`` records wait the API refuses new
  requests (503) rather than serve without an audit trail;
- each record is appended exactly once, whatever is cancelled and when: a batch is taken out
  of the buffer and handed to a worker thread, and only that thread's outcome settles it (a
  done callback on the loop: committed → counted; failed → put back at the front of the
  buffer). A cancelled flush leaves the thread committing; the next flush (and ``close``)
  first awaits that in-flight batch instead of appending the same records again;
- records never hold a credential: no Authorization header, no request body, query values
  truncated, and strings made encodable (a lone surrogate becomes U+FFFD) so that one odd
  request can never make a whole batch fail to append.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import functools
import logging
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

from collector.ledger.base import EventFact
from collector.ledger.sqlbase import SQLStore

log = logging.getLogger("timeclock.api.access")

MAX_QUERY_PARAMS = 20
MAX_VALUE_CHARS = 200
MAX_DETAIL_CHARS = 300
SECRET_PARAMS = frozenset({"token", "access_token", "authorization", "password", "key"})


def clean(text: str, limit: int = MAX_VALUE_CHARS) -> str:
    """A string that canonical JSON can encode, at most ``limit`` characters."""
    t = text[:limit].encode("utf-8", "replace").decode("utf-8")
    return t + "…" if len(text) > limit else t


def clean_query(items: list[tuple[str, str]]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for k, v in items[:MAX_QUERY_PARAMS]:
        key = clean(k, 64)
        val = "***" if key.lower() in SECRET_PARAMS else clean(v)
        if key in out:
            prev = out[key]
            out[key] = [*prev, val] if isinstance(prev, list) else [prev, val]
        else:
            out[key] = val
    if len(items) > MAX_QUERY_PARAMS:
        out["…"] = f"{len(items) - MAX_QUERY_PARAMS} more parameters not recorded"
    return out


@dataclass
class AccessRecord:
    """What one request did; :meth:`body` is the ``access`` entry's body."""

    request_id: str
    at: int
    method: str
    path: str
    query: dict[str, Any]
    client: str
    route: str | None = None
    principal: str = "anonymous"
    auth: str = "none"                 # token | cert | none
    token: str | None = None           # the token's id (never the token)
    role: str | None = None
    status: int = 0
    count: int | None = None           # items returned (rows streamed, list length)
    outcome: str = "allowed"
    detail: str | None = None
    extra: dict[str, Any] = field(default_factory=dict)
    duration_us: int = 0

    def body(self) -> dict[str, Any]:
        b: dict[str, Any] = {
            "type": "request", "request_id": self.request_id, "at": self.at,
            "principal": clean(self.principal, 100), "auth": self.auth, "role": self.role,
            "method": clean(self.method, 16), "route": self.route, "path": clean(self.path),
            "query": self.query, "status": self.status, "count": self.count,
            "outcome": self.outcome, "client": clean(self.client, 64),
            "duration_us": max(0, self.duration_us)}
        if self.token is not None:
            b["token"] = self.token
        if self.detail is not None:
            b["detail"] = clean(self.detail, MAX_DETAIL_CHARS)
        if self.extra:
            b["extra"] = self.extra
        return b


class AccessLog:
    """Buffers access bodies and appends them to the ledger in batches (see module doc)."""

    def __init__(self, store: SQLStore, clock: Callable[[], int], *,
                 flush_interval_s: float = 0.1, batch_max: int = 200,
                 max_pending: int = 50_000) -> None:
        self.store = store
        self.clock = clock
        self.flush_interval_s = flush_interval_s
        self.batch_max = batch_max
        self.max_pending = max_pending
        self._buf: list[dict[str, Any]] = []
        self._inflight: asyncio.Future[Any] | None = None   # the batch a thread is appending
        self._inflight_n = 0
        self._kick = asyncio.Event()
        self._flush_lock = asyncio.Lock()
        self._task: asyncio.Task[None] | None = None
        self.appended = 0
        self.failures = 0

    @property
    def pending(self) -> int:
        """Records not yet committed: buffered, plus the batch a thread is appending."""
        return len(self._buf) + self._inflight_n

    @property
    def overloaded(self) -> bool:
        return self.pending >= self.max_pending

    def add(self, body: dict[str, Any]) -> None:
        self._buf.append(body)
        if len(self._buf) >= self.batch_max:
            self._kick.set()

    def _hand_over(self, batch: list[dict[str, Any]]) -> asyncio.Future[Any]:
        """Give ``batch`` (already out of the buffer) to a worker thread; the done callback,
        not whoever awaits, settles it, so a cancelled awaiter cannot lose or repeat it."""
        facts = [EventFact("access", b) for b in batch]
        fut = asyncio.get_running_loop().run_in_executor(
            None, functools.partial(self.store.append, facts, now_us=self.clock()))
        self._inflight, self._inflight_n = fut, len(batch)

        def settled(f: asyncio.Future[Any]) -> None:
            if self._inflight is f:
                self._inflight, self._inflight_n = None, 0
            # Nothing cancels fut (it is only awaited through shield/wait), so cancelled is
            # not expected; it would mean an unknown outcome, kept as a failure.
            exc = f.exception() if not f.cancelled() else asyncio.CancelledError()
            if exc is None:
                self.appended += len(batch)
                return
            # Keep the batch, in order: the next flush retries; overloaded → the API answers 503.
            self._buf[:0] = batch
            self.failures += 1
            log.error("appending %d access records failed; will retry", len(batch),
                      exc_info=exc)
        fut.add_done_callback(settled)
        return fut

    @staticmethod
    async def _settled(fut: asyncio.Future[Any]) -> bool:
        """Wait for ``fut`` without ever cancelling it (even if we are cancelled) and for its
        done callback; True when its batch committed."""
        if not fut.done():
            await asyncio.wait({fut})
        await asyncio.sleep(0)          # a just-finished fut's done callback runs first
        return not fut.cancelled() and fut.exception() is None

    async def flush(self) -> int:
        """Append everything buffered now; returns how many records were appended."""
        async with self._flush_lock:
            if self._inflight is not None:
                # A cancelled flush left its batch with a thread: await its outcome rather
                # than append those records again (failed → they are back in the buffer).
                await self._settled(self._inflight)
            total = 0
            while self._buf:
                batch = self._buf[:self.batch_max * 10]
                del self._buf[:len(batch)]
                fut = self._hand_over(batch)
                # shield: cancelling this flush must not cancel fut (the thread commits anyway,
                # and a cancelled fut would lose the outcome the done callback settles on).
                with contextlib.suppress(Exception):
                    await asyncio.shield(fut)
                if not await self._settled(fut):
                    return total
                total += len(batch)
            return total

    async def _run(self) -> None:
        while True:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._kick.wait(), self.flush_interval_s)
            self._kick.clear()
            await self.flush()

    def start(self) -> None:
        if self._task is None:
            self._task = asyncio.get_running_loop().create_task(self._run())

    async def close(self) -> None:
        """Stop the periodic flush and flush what is left (clean shutdown)."""
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None
        # flush() first awaits a batch the cancelled task left with its thread, then appends
        # the rest once (a failed in-flight batch is back in the buffer and retried here).
        await self.flush()
        if self._buf:
            log.error("%d access records could not be appended at shutdown", len(self._buf))


class Throttle:
    """After ``max_failures`` refused credentials (a token or client certificate presented
    and rejected; a request without credentials does not count) from one address within
    ``window_s``, that address gets 429 on every authenticated route until the oldest
    failure leaves the window. Time is a parameter; memory is bounded (``max_tracked``)."""

    def __init__(self, *, max_failures: int = 10, window_s: int = 300,
                 max_tracked: int = 10_000) -> None:
        self.max_failures = max_failures
        self.window_us = window_s * 1_000_000
        self.max_tracked = max_tracked
        self._fails: collections.OrderedDict[str, collections.deque[int]] = \
            collections.OrderedDict()

    def _recent(self, addr: str, now_us: int) -> collections.deque[int]:
        q = self._fails.get(addr)
        if q is None:
            return collections.deque()
        while q and q[0] <= now_us - self.window_us:
            q.popleft()
        if not q:
            del self._fails[addr]
        return q

    def retry_after_s(self, addr: str, now_us: int) -> int | None:
        """Seconds until ``addr`` may try again, or None when it is not throttled."""
        q = self._recent(addr, now_us)
        if len(q) < self.max_failures:
            return None
        return max(1, (q[-self.max_failures] + self.window_us - now_us + 999_999) // 1_000_000)

    def failed(self, addr: str, now_us: int) -> None:
        q = self._fails.setdefault(addr, collections.deque(maxlen=self.max_failures))
        q.append(now_us)
        self._fails.move_to_end(addr)
        while len(self._fails) > self.max_tracked:
            self._fails.popitem(last=False)

    def snapshot(self) -> Mapping[str, int]:
        return {a: len(q) for a, q in self._fails.items()}
