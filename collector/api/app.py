"""The API application factory and its HTTPS server (``[api]`` section of the collector
config).

``make_app(store, settings=..., clock=...)`` builds the aiohttp application (tests use it
directly through aiohttp's test client); ``start_api``/``run_api`` serve it over HTTPS with
the server certificate from our CA (TLS ≥ 1.2 via wire.tls.server_context) and, when
``client_ca`` is set, accept client certificates of that CA as principals (CN = principal).
``ApiThread`` runs it beside the threaded ingest service.

Invariant: the access log is flushed on shutdown (cleanup context) before the store closes.
"""

from __future__ import annotations

import asyncio
import logging
import ssl
import threading
from collections.abc import AsyncIterator, Callable, Mapping

from aiohttp import web

from collector import ConfigError
from collector.access.directory import Principals
from collector.access.gates import Gates
from collector.api import crl
from collector.api import metrics as api_metrics
from collector.api.access_log import AccessLog, Throttle
from collector.api.config import ApiSection
from collector.api.keys import (
    ACCESS_LOG,
    CLOCK,
    CORRECTIONS,
    GATES,
    PRINCIPALS,
    READER,
    SETTINGS,
    STORE,
    THROTTLE,
    VERIFY_STATE,
    ApiSettings,
    VerifyBox,
)
from collector.api.middlewares import account_stream, guard, server_header
from collector.api.reads import INLINE_READS, reads_inline
from collector.api.routes import add_routes
from collector.api.signin import SignIn, SigninConfig
from collector.api.signin import install as install_signin
from collector.ingest.statuses import StatusRow
from collector.ledger import checkpoint_tables
from collector.ledger.sqlbase import SQLStore
from collector.ledger.tables import ensure_schema
from collector.records.corrections import Corrections
from wire.clock import now_us
from wire.errors import WireError
from wire.keys import VerifyKey
from wire.tls import server_context

log = logging.getLogger("timeclock.api")



def make_app(store: SQLStore, *, settings: ApiSettings | None = None,
             clock: Callable[[], int] = now_us,
             reader: SQLStore | None = None, signin: SignIn | None = None) -> web.Application:
    """The API application over ``store`` (access tables created if SQLite). ``reader``, a
    second connection to the same ledger, serves the proof reads and the lookups of every
    authentication (default: ``store``). ``signin``: people sign in through OIDC and hold
    sessions (collector.api.signin; its sessions live in this process's memory)."""
    settings = settings or ApiSettings()
    ensure_schema(store)
    checkpoint_tables.ensure_schema(store)
    app = web.Application(middlewares=[guard], client_max_size=settings.body_max_bytes)
    app.on_response_prepare.append(server_header)
    app.on_response_prepare.append(account_stream)     # personal streams: intent first
    app[STORE] = store
    app[READER] = reader if reader is not None else store
    app[INLINE_READS] = reads_inline(app)
    app[SETTINGS] = settings
    app[CLOCK] = clock
    app[PRINCIPALS] = Principals(store, reader=reader)
    app[GATES] = Gates(reader if reader is not None else store, settings.gates)
    app[CORRECTIONS] = Corrections(store)
    app[THROTTLE] = Throttle(max_failures=settings.auth_failures_max,
                             window_s=settings.auth_failures_window_s)
    app[VERIFY_STATE] = VerifyBox()
    add_routes(app)
    app.cleanup_ctx.append(_access_log)
    if signin is None and settings.oidc is not None:
        config = SigninConfig.load(settings.oidc.section)    # None: no sign-in keys
        signin = None if config is None else SignIn(config, settings.oidc)
    if signin is not None:
        install_signin(app, signin)     # after the access log: its sweep records into it
    api_metrics.install(app, store, clock, max_failures=settings.auth_failures_max,
                        window_s=settings.auth_failures_window_s)
    return app


async def _access_log(app: web.Application) -> AsyncIterator[None]:
    s = app[SETTINGS]
    alog = AccessLog(app[STORE], app[CLOCK], flush_interval_s=s.access_flush_ms / 1000,
                     batch_max=s.access_batch_max, max_pending=s.access_max_pending)
    app[ACCESS_LOG] = alog
    alog.start()
    yield
    await alog.close()


def tls_context(section: ApiSection) -> ssl.SSLContext:
    """The HTTPS context: our server certificate, TLS ≥ 1.2; client certificates of
    ``client_ca`` are optional (tokens are the other way in) but verified when presented,
    against the CRL when one is configured."""
    try:
        if section.client_ca is None:
            return server_context(section.cert, section.cert, section.key,
                                  require_client_cert=False)
        ctx = server_context(section.client_ca, section.cert, section.key,
                             require_client_cert=True, crl_file=section.crl)
    except WireError as e:
        raise ConfigError([f"api: {e}"]) from e
    ctx.verify_mode = ssl.CERT_OPTIONAL
    return ctx


async def start_api(section: ApiSection, store: SQLStore, *,
                    log_keys: Mapping[str, VerifyKey],
                    clock: Callable[[], int] = now_us,
                    reader: SQLStore | None = None,
                    signin: SignIn | None = None,
                    statuses: Callable[[], Mapping[str, StatusRow]] | None = None
                    ) -> web.AppRunner:
    """Start serving on ``section.listen:port`` over HTTPS; ``await runner.cleanup()`` stops
    it (in-flight requests finish, the access log is flushed). ``statuses``: the running
    service's device statuses, for the console's fleet page."""
    app = make_app(store, settings=section.settings(log_keys, statuses), clock=clock,
                   reader=reader, signin=signin)
    ssl_context = tls_context(section)
    if section.crl is not None and section.client_ca is not None:
        # A revoked API client certificate is refused within crl.poll_s of the CRL file
        # changing, without a restart (collector.api.crl).
        try:
            watch = crl.CrlWatch(section.crl, section.client_ca, ssl_context,
                                 lambda: tls_context(section))
        except crl.CrlError as e:
            raise ConfigError([f"api.crl: {e}"]) from e
        crl.install(app, watch)
    runner = web.AppRunner(app, access_log=None, shutdown_timeout=10.0)
    await runner.setup()
    site = web.TCPSite(runner, section.listen, section.port, ssl_context=ssl_context)
    await site.start()
    log.info("API listening on https://%s:%d", section.listen, section.port)
    return runner


async def run_api(section: ApiSection, store: SQLStore, *,
                  log_keys: Mapping[str, VerifyKey], stop: asyncio.Event,
                  clock: Callable[[], int] = now_us) -> None:
    """Serve until ``stop`` is set, then shut down cleanly."""
    runner = await start_api(section, store, log_keys=log_keys, clock=clock)
    try:
        await stop.wait()
    finally:
        await runner.cleanup()


class ApiThread:
    """The API in its own thread and event loop, for the threaded ``serve`` command:
    ``start()`` returns once the socket listens (or raises), ``stop()`` shuts it down."""

    def __init__(self, section: ApiSection, store: SQLStore, *,
                 log_keys: Mapping[str, VerifyKey], clock: Callable[[], int] = now_us,
                 reader: SQLStore | None = None, signin: SignIn | None = None,
                 statuses: Callable[[], Mapping[str, StatusRow]] | None = None) -> None:
        self.section, self.store, self.log_keys, self.clock = section, store, log_keys, clock
        self.reader, self.signin, self.statuses = reader, signin, statuses
        self._loop: asyncio.AbstractEventLoop | None = None
        self._stop: asyncio.Event | None = None
        self._ready = threading.Event()
        self._error: BaseException | None = None
        self._thread = threading.Thread(target=self._main, name="timeclock-api", daemon=True)

    def _main(self) -> None:
        asyncio.run(self._serve())

    async def _serve(self) -> None:
        self._loop = asyncio.get_running_loop()
        self._stop = asyncio.Event()
        try:
            runner = await start_api(self.section, self.store, log_keys=self.log_keys,
                                     clock=self.clock, reader=self.reader,
                                     signin=self.signin, statuses=self.statuses)
        except BaseException as e:
            self._error = e
            self._ready.set()
            return
        self._ready.set()
        try:
            await self._stop.wait()
        finally:
            await runner.cleanup()

    def start(self, timeout_s: float = 30.0) -> None:
        self._thread.start()
        if not self._ready.wait(timeout_s):
            raise RuntimeError("the API did not start in time")
        if self._error is not None:
            raise self._error

    def stop(self, timeout_s: float = 30.0) -> None:
        if self._loop is not None and self._stop is not None:
            self._loop.call_soon_threadsafe(self._stop.set)
        self._thread.join(timeout_s)
