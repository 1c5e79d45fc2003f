"""The API's share of monitoring: request and authentication-failure metrics
(collector.ingest.metrics) and the ``auth-failure-burst`` detector, whose alerts the API
records as ``alert`` entries through its own store connection.

Wiring only: :func:`install` puts an :class:`ApiMonitor` on the application and a cleanup
context that flushes its alerts into the ledger every ``flush_s`` (off the event loop, in a
thread) and once more on shutdown. The middleware (collector.api.middlewares) calls
:meth:`ApiMonitor.request` for every request and :meth:`ApiMonitor.auth_failed` for every
refused credential. The burst threshold is the API's throttle (``[api] auth_failures_max``
within ``auth_failures_window_s``): the alert says that an address was locked out.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator, Callable

from aiohttp import web

from collector.ingest import metrics
from collector.ingest.alerts import Alerts
from collector.ingest.detectors import AuthFailures
from collector.ledger.sqlbase import SQLStore

log = logging.getLogger("timeclock.api")


class ApiMonitor:
    def __init__(self, *, max_failures: int, window_s: int) -> None:
        self.alerts = Alerts(record=True)
        self.auth = AuthFailures(self.alerts, max_failures=max_failures, window_s=window_s)

    def request(self, route: str | None, method: str, status: int, duration_us: int) -> None:
        metrics.observe_api(route, method, status, duration_us / 1_000_000)

    def auth_failed(self, method: str | None, client: str, *, now_us: int) -> None:
        metrics.API_AUTH_FAILURES.labels(method or "none").inc()
        self.auth.failed(client, now_us=now_us)

    def flush(self, store: SQLStore, now_us: int) -> int:
        return self.alerts.flush(lambda facts: store.append(facts, now_us=now_us))


MONITOR = web.AppKey("monitor", ApiMonitor)


def install(app: web.Application, store: SQLStore, clock: Callable[[], int], *,
            max_failures: int, window_s: int, flush_s: float = 1.0) -> None:
    monitor = ApiMonitor(max_failures=max_failures, window_s=window_s)
    app[MONITOR] = monitor

    async def flushing(app: web.Application) -> AsyncIterator[None]:
        async def loop() -> None:
            while True:
                await asyncio.sleep(flush_s)
                await _flush(monitor, store, clock)

        task = asyncio.create_task(loop())
        yield
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)
        await _flush(monitor, store, clock)

    app.cleanup_ctx.append(flushing)


async def _flush(monitor: ApiMonitor, store: SQLStore, clock: Callable[[], int]) -> None:
    if not monitor.alerts.unrecorded():
        return
    try:
        await asyncio.to_thread(monitor.flush, store, clock())
    except Exception:  # top of a long-running loop: the alerts stay queued for the next one
        log.exception("recording the API's alerts in the ledger failed; retrying")
