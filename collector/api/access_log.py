"""The API's access log (``access`` ledger entries) and the authentication throttle.

Invariants:
- every request of an authenticated principal, allowed, denied or failing inside, adds
  exactly one record (the middleware adds it in ``finally``); every request without one
  (failed or missing credentials, throttled, unknown route, public document) is counted in
  the :class:`Aggregates` tally of its source address and minute, one entry per tally, at most
  ``sources_max + 1`` entries a minute; liveness probes (``/healthz``) are never recorded;
- records are appended in batches (every ``flush_interval_s`` or ``batch_max`` records) and
  the last batch is flushed on a clean shutdown, so none is lost; a failed append keeps the
  batch for the next attempt, and once ``max_pending`` records wait the API refuses new
  requests (503) rather than serve without an audit trail;
- each record is appended exactly once, whatever is cancelled and when: a batch is taken out
  of the buffer and handed to a worker thread, and only that thread's outcome settles it (a
  done callback on the loop: committed → counted; failed → put back at the front of the
  buffer). A cancelled flush leaves the thread committing; the next flush (and ``close``)
  first awaits that in-flight batch instead of appending the same records again;
- a read of personal data (a route marked ``personal``, collector.api.routes) is on the
  ledger before the first byte of its answer is sent: :meth:`AccessLog.commit` appends its
  record and returns only once the store's commit returned (fsync'd as the store commits),
  and the answer is sent only then; an answer built in full (JSON) gets one record, with its
  status and count, committed before it is sent (``"accounted": "before"``); a streamed
  export gets a ``request-intent`` entry committed before the first byte, then its
  ``request`` record (rows streamed, or the error; ``"accounted": "intent"``) in the next
  batch. A failed commit gets the request 503 and no data. Records that wait while a commit
  is in flight share the next one (group commit: one commit per batch under load, however
  many requests). Other requests (proofs, checkpoints, health, metrics) never wait for a
  commit;
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

from collector import CollectorError
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
    accounted: str | None = None       # "before" | "intent" (see module doc); None: batched
    committed: bool = False            # this record is on the ledger already (not batched)

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
        if self.accounted is not None:
            b["accounted"] = self.accounted
        return b

    def intent_body(self) -> dict[str, Any]:
        """The ``request-intent`` body: who starts streaming what, before its first byte (its
        ``request`` record, with the row count or the error, follows)."""
        b = {k: v for k, v in self.body().items()
             if k in ("request_id", "at", "principal", "auth", "token", "role", "method",
                      "route", "path", "query", "client")}
        return {"type": "request-intent", **b}


class AccessCommitError(CollectorError):
    """An access record that must be on the ledger before its answer could not be committed;
    the answer is not sent (503)."""


class AccessLog:
    """Buffers access bodies and appends them to the ledger in batches (see module doc)."""

    def __init__(self, store: SQLStore, clock: Callable[[], int], *,
                 flush_interval_s: float = 0.1, batch_max: int = 200,
                 max_pending: int = 50_000, aggregates: Aggregates | None = None) -> None:
        self.store = store
        self.aggregates = aggregates or Aggregates()
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
        self._waiting: list[tuple[dict[str, Any], asyncio.Future[None]]] = []
        self._committer: asyncio.Task[None] | None = None
        self.commits = 0                # group commits of records that must precede answers
        self.committed = 0              # records they held
        self.commit_failures = 0

    @property
    def pending(self) -> int:
        """Records not yet committed: buffered, plus the batch a thread is appending."""
        return len(self._buf) + self._inflight_n

    @property
    def waiting(self) -> int:
        """Records waiting for a commit that must precede their answers (not yet in one)."""
        return len(self._waiting)

    @property
    def overloaded(self) -> bool:
        return self.pending >= self.max_pending

    def add(self, body: dict[str, Any]) -> None:
        self._buf.append(body)
        if len(self._buf) >= self.batch_max:
            self._kick.set()

    async def commit(self, body: dict[str, Any]) -> None:
        """Append ``body`` and return once its commit returned (durable as the store's commits
        are); raise :class:`AccessCommitError` when it failed. Bodies that arrive while a
        commit is in flight wait and share the next one (group commit). Cancelling the
        caller does not cancel the commit: the record is appended once either way."""
        loop = asyncio.get_running_loop()
        fut: asyncio.Future[None] = loop.create_future()
        # (an outcome nobody awaits any more, the caller cancelled, is still retrieved)
        fut.add_done_callback(lambda f: f.cancelled() or f.exception())
        self._waiting.append((body, fut))
        if self._committer is None or self._committer.done():
            self._committer = loop.create_task(self._commit_waiting())
        await asyncio.shield(fut)

    async def _commit_waiting(self) -> None:
        """Commit what waits, one transaction per batch, until nothing waits."""
        loop = asyncio.get_running_loop()
        while self._waiting:
            batch = self._waiting[:self.batch_max * 10]
            del self._waiting[:len(batch)]
            facts = [EventFact("access", b) for b, _ in batch]
            try:
                # shield: the thread commits whatever happens to this task (see close()).
                await asyncio.shield(loop.run_in_executor(None, functools.partial(
                    self.store.append, facts, now_us=self.clock())))
            except Exception as e:
                self.commit_failures += 1
                log.error("committing %d access records before their answers failed; those "
                          "requests get 503", len(batch), exc_info=e)
                for _, f in batch:
                    if not f.done():
                        f.set_exception(AccessCommitError(
                            f"the access entry of this read could not be committed "
                            f"({type(e).__name__}); no data is sent until it can be"))
                continue
            self.commits += 1
            self.committed += len(batch)
            for _, f in batch:
                if not f.done():
                    f.set_result(None)

    def add_unauthenticated(self, rec: AccessRecord) -> bool:
        """Count ``rec`` in its (source, minute) tally; True when it starts a burst."""
        return self.aggregates.add(rec)

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
            self._buf.extend(self.aggregates.due(self.clock()))
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
        if self._committer is not None:
            # Reads waiting for their commit are still being answered: let it finish.
            await asyncio.wait({self._committer})
            self._committer = None
        # flush() first awaits a batch the cancelled task left with its thread, then appends
        # the rest once (a failed in-flight batch is back in the buffer and retried here).
        self._buf.extend(self.aggregates.drain())
        await self.flush()
        if self._buf:
            log.error("%d access records could not be appended at shutdown", len(self._buf))


MINUTE_US = 60_000_000
OTHERS = "others"


@dataclass
class _Tally:
    first_at: int
    last_at: int = 0
    count: int = 0
    statuses: collections.Counter[str] = field(default_factory=collections.Counter)
    outcomes: collections.Counter[str] = field(default_factory=collections.Counter)
    auth: collections.Counter[str] = field(default_factory=collections.Counter)
    routes: collections.Counter[str] = field(default_factory=collections.Counter)
    sources: set[str] = field(default_factory=set)      # the "others" tally only
    sources_capped: bool = False


class Aggregates:
    """Requests without an authenticated principal (failed or missing credentials, throttled,
    unknown routes, public documents), tallied per (source address, minute answered) into
    one ``access`` body each (``"type": "unauthenticated"``, docs/api.md "What is recorded").

    Bounded: at most ``sources_max`` addresses per minute get a tally of their own; every
    further address of that minute is counted in one ``"client": "others"`` tally (with how
    many distinct addresses, exactly up to ``others_sources_max``). So a minute yields at most
    ``sources_max + 1`` entries, whatever arrives. Route templates, never raw paths, are
    counted (the set of templates is fixed). A tally is closed when its minute is over
    (:meth:`due`) or at shutdown (:meth:`drain`).

    A minute whose tallies reach ``burst_per_minute`` requests is a burst: :meth:`add` returns
    True once for it, unless the previous minute was a burst too (one burst, one alert).
    """

    def __init__(self, *, sources_max: int = 100, others_sources_max: int = 10_000,
                 burst_per_minute: int = 600) -> None:
        self.sources_max = sources_max
        self.others_sources_max = others_sources_max
        self.burst_per_minute = burst_per_minute
        self._minutes: dict[int, dict[str, _Tally]] = {}
        self._totals: collections.Counter[int] = collections.Counter()
        self._bursts: set[int] = set()

    @property
    def open_requests(self) -> int:
        return sum(self._totals.values())

    def add(self, rec: AccessRecord) -> bool:
        # The minute the request was answered in (not started): once :meth:`due` closed a
        # minute no later request can fall into it, so a (source, minute) is one entry.
        done = rec.at + max(0, rec.duration_us)
        minute = done - done % MINUTE_US
        tallies = self._minutes.setdefault(minute, {})
        client = clean(rec.client, 64)
        key = client
        if client not in tallies and len(tallies) - (OTHERS in tallies) >= self.sources_max:
            key = OTHERS
        t = tallies.get(key)
        if t is None:
            t = tallies[key] = _Tally(first_at=rec.at)
        t.count += 1
        t.first_at, t.last_at = min(t.first_at, rec.at), max(t.last_at, rec.at)
        t.statuses[str(rec.status)] += 1
        t.outcomes[rec.outcome] += 1
        t.auth[rec.auth] += 1
        t.routes[rec.route or "unmatched"] += 1
        if key == OTHERS:
            if len(t.sources) < self.others_sources_max:
                t.sources.add(client)
            elif client not in t.sources:
                t.sources_capped = True
        self._totals[minute] += 1
        if self._totals[minute] != self.burst_per_minute:
            return False
        self._bursts = {m for m in self._bursts if m >= minute - MINUTE_US} | {minute}
        return minute - MINUTE_US not in self._bursts

    def due(self, now_us: int) -> list[dict[str, Any]]:
        """Bodies of the tallies of every minute before the one of ``now_us``."""
        current = now_us - now_us % MINUTE_US
        return self._close([m for m in self._minutes if m < current])

    def drain(self) -> list[dict[str, Any]]:
        return self._close(list(self._minutes))

    def _close(self, minutes: list[int]) -> list[dict[str, Any]]:
        out: list[dict[str, Any]] = []
        for minute in sorted(minutes):
            tallies = self._minutes.pop(minute)
            del self._totals[minute]
            for client, t in tallies.items():
                b: dict[str, Any] = {
                    "type": "unauthenticated", "minute": minute, "client": client,
                    "count": t.count, "first_at": t.first_at, "last_at": t.last_at,
                    "statuses": dict(sorted(t.statuses.items())),
                    "outcomes": dict(sorted(t.outcomes.items())),
                    "auth": dict(sorted(t.auth.items())),
                    "routes": dict(sorted(t.routes.items()))}
                if client == OTHERS:
                    b["sources"] = len(t.sources)
                    if t.sources_capped:
                        b["sources_capped"] = True
                out.append(b)
        return out


class Throttle:
    """Failed authentications, keyed on the address *and* the presented credential.

    - A credential (a hash of the Authorization header, or a client certificate's CN) that
      failed ``max_failures`` times from one address within ``window_s`` gets 429 from that
      address without being looked up, until its oldest failure leaves the window: the same
      bad token, retried, is slowed.
    - An address with ``max_failures`` failures of any credentials within the window is
      throttled: a credential presented from it is still looked up, and a valid one is served
      (a valid token is never throttled by someone else's failures behind the same NAT or
      proxy), but a failing one gets 429 instead of 401, with no diagnostic.
    A request without credentials does not count. Time is a parameter; memory is bounded
    (``max_tracked`` addresses and as many (address, credential) pairs, least recent first
    out)."""

    def __init__(self, *, max_failures: int = 10, window_s: int = 300,
                 max_tracked: int = 10_000) -> None:
        self.max_failures = max_failures
        self.window_us = window_s * 1_000_000
        self.max_tracked = max_tracked
        self._by_addr: collections.OrderedDict[str, collections.deque[int]] = \
            collections.OrderedDict()
        self._by_pair: collections.OrderedDict[str, collections.deque[int]] = \
            collections.OrderedDict()

    @staticmethod
    def _pair(addr: str, credential: str) -> str:
        return f"{addr}\x00{credential}"

    def _wait(self, table: collections.OrderedDict[str, collections.deque[int]], key: str,
              now_us: int) -> int | None:
        q = table.get(key)
        if q is None:
            return None
        while q and q[0] <= now_us - self.window_us:
            q.popleft()
        if not q:
            del table[key]
            return None
        if len(q) < self.max_failures:
            return None
        return max(1, (q[-self.max_failures] + self.window_us - now_us + 999_999) // 1_000_000)

    def retry_after_s(self, addr: str, credential: str, now_us: int) -> int | None:
        """Seconds until ``credential`` may be tried again from ``addr``, or None."""
        return self._wait(self._by_pair, self._pair(addr, credential), now_us)

    def address_retry_after_s(self, addr: str, now_us: int) -> int | None:
        """Seconds until ``addr`` is no longer throttled, or None when it is not."""
        return self._wait(self._by_addr, addr, now_us)

    def failed(self, addr: str, credential: str, now_us: int) -> None:
        for table, key in ((self._by_addr, addr),
                           (self._by_pair, self._pair(addr, credential))):
            q = table.get(key)
            if q is None:
                q = table[key] = collections.deque(maxlen=self.max_failures)
            q.append(now_us)
            table.move_to_end(key)
            while len(table) > self.max_tracked:
                table.popitem(last=False)

    def snapshot(self) -> Mapping[str, int]:
        """Recent failures per address (tests, diagnostics)."""
        return {a: len(q) for a, q in self._by_addr.items()}
