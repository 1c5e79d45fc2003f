"""The API's one middleware: throttle → authenticate → authorize → view → problem → record.

It is the only place that turns errors into responses (RFC 9457 problem documents,
``application/problem+json``), and it accounts for every request in ``finally``
(collector.api.access_log): a request of an authenticated principal is one access record;
one without (failed or missing credentials, throttled, unknown route, public document) is
counted in its (source, minute) tally, and a burst of them raises one alert; liveness
probes (:data:`UNRECORDED_ROUTES`) are only counted in the metrics.

Throttling keys on the address and the presented credential (access_log.Throttle): a valid
credential is never refused because others failed from its address. A client certificate
revoked since its connection opened is refused on that connection (collector.api.crl).
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import logging
import secrets
from typing import Any

import aiohttp.web_response
from aiohttp import web
from aiohttp.http_writer import StreamWriter

from collector.access.directory import Principals
from collector.access.oidc import (
    MfaRequiredError,
    OidcAuth,
    OidcError,
    OidcGrant,
    OidcTokenError,
    looks_like_jwt,
    withheld_message,
)
from collector.access.principals import Principal
from collector.access.tokens import TokenError
from collector.api import params as P
from collector.api.access_log import MINUTE_US, AccessCommitError, AccessRecord, clean_query
from collector.api.console import refusal_page
from collector.api.crl import CRL_WATCH
from collector.api.errors import (
    PROBLEM_CONTENT_TYPE,
    RevokedCertificateError,
    ThrottledError,
    UnauthenticatedError,
    UnavailableError,
    classify,
)
from collector.api.keys import (
    ACCESS_LOG,
    CLOCK,
    CTX,
    GATES,
    PRINCIPALS,
    READER,
    SETTINGS,
    STORE,
    THROTTLE,
    RequestContext,
)
from collector.api.metrics import MONITOR
from collector.api.rbac import gated
from collector.api.reads import on_reader
from collector.api.routes import Handler, route_of
from collector.api.sessions import COOKIE
from collector.api.signin import check_mfa, session_principal
from collector.fleet.pki import client_kind
from collector.ingest.alerts import SEVERITY_WARNING

log = logging.getLogger("timeclock.api")

# Liveness/readiness probes: polled by load balancers and monitors, never access entries.
UNRECORDED_ROUTES = frozenset({"/healthz", "/readyz"})
OIDC_GRANT = web.RequestKey("oidc_grant", OidcGrant)   # what a JWT's claims gave (MFA rule)
SERVER = "timeclock"       # the Server header: no product version


async def server_header(_request: web.Request, response: web.StreamResponse) -> None:
    """on_response_prepare: every routed response says ``Server: timeclock``, never
    aiohttp's version."""
    response.headers["Server"] = SERVER


# aiohttp answers a request it cannot parse (bad request line, bad header) itself, before
# any application signal, with its default ``Server: Python/3.x aiohttp/3.y.z``; that
# default is this module attribute (read when each response is prepared). The API is the
# only HTTP server in the collector process. tests/collector/test_api_strict_json.py sends
# such a request and fails if this stops working.
aiohttp.web_response.SERVER_SOFTWARE = SERVER  # type: ignore[attr-defined]


def _client(request: web.Request) -> str:
    return request.remote or "unknown"


def _peercert(request: web.Request) -> dict[str, Any] | None:
    transport = request.transport
    cert: Any = transport.get_extra_info("peercert") if transport is not None else None
    return cert or None


def _credential(request: web.Request) -> str | None:
    """What the throttle keys on besides the address: a hash of the Authorization header
    (never the token), else the client certificate's CN; None without credentials."""
    header = request.headers.get("Authorization")
    if header is not None:
        return "h:" + hashlib.sha256(header.encode("utf-8", "replace")).hexdigest()[:32]
    cn = _peer_cn(request)
    if cn is None and COOKIE in request.cookies:     # a session cookie (collector.api.signin)
        return "s:" + hashlib.sha256(request.cookies[COOKIE].encode("utf-8", "replace")
                                     ).hexdigest()[:32]
    return None if cn is None else "cn:" + cn[:200]


def _serial_hex(value: object) -> str:
    """A certificate serial as the CA's index writes it (lowercase hex, no leading zeros;
    the TLS layer's form pads to whole bytes)."""
    try:
        return f"{int(str(value), 16):x}"
    except ValueError:
        return str(value)[:64].lower()


def _peer_cn(request: web.Request) -> str | None:
    """CN of a client certificate that the TLS layer verified against our CA."""
    cert = _peercert(request)
    if not cert:
        return None
    for rdn in cert.get("subject", ()):
        for key, value in rdn:
            if key == "commonName":
                return str(value)
    return None


async def _touch(principals: Principals, p: Principal, now: int) -> None:
    """Record a use (at most once a minute per credential): a write, so in a thread."""
    if principals.touch_due(p, now):
        await asyncio.to_thread(principals.touch, p, now)


async def authenticate(request: web.Request, rec: AccessRecord) -> Principal:
    """The caller: authentication reads on the reader (collector.api.reads), inline where
    they cannot wait."""
    principals, now = request.app[PRINCIPALS], request.app[CLOCK]()
    header = request.headers.get("Authorization")
    if header is not None:
        rec.auth = "token"
        scheme, _, token = header.partition(" ")
        if scheme.lower() != "bearer" or not token.strip():
            raise UnauthenticatedError("Authorization must be 'Bearer <token>'")
        oidc = request.app[SETTINGS].oidc
        if oidc is not None and looks_like_jwt(token.strip()):
            rec.auth = "oidc"
            return await _authenticate_jwt(request, oidc, token.strip(), now)
        try:
            p = await on_reader(request.app, principals.authenticate_token, token.strip(),
                                now_us=now, touch=False)
        except TokenError as e:
            raise UnauthenticatedError(f"invalid token ({e})") from e
        rec.token = p.token_id
        await _touch(principals, p, now)
        return p
    cn = _peer_cn(request)
    if cn is not None:
        rec.auth = "cert"
        if client_kind(cn) != "api-client":
            # A clock's or collector's certificate is an MQTT identity, never an API one.
            raise UnauthenticatedError(f"client certificate {cn[:80]!r} is a "
                                       f"{client_kind(cn) or 'unknown'} certificate; the API "
                                       f"accepts only api-client certificates (CN api.<name>)")
        try:
            p = await on_reader(request.app, principals.authenticate_cert, cn, now_us=now,
                                touch=False)
        except TokenError as e:
            raise UnauthenticatedError(str(e)) from e
        await _touch(principals, p, now)
        return p
    cookie = request.cookies.get(COOKIE)
    if cookie is not None:              # a person signed in through OIDC: kind "oidc"
        return await session_principal(request, rec, cookie)
    raise UnauthenticatedError("send 'Authorization: Bearer <token>', a client certificate "
                               "of the timeclock CA or a session cookie (sign in at "
                               "/auth/login)", presented=False)


async def _authenticate_jwt(request: web.Request, oidc: OidcAuth, token: str, now: int
                            ) -> Principal:
    """A JWT access token of the ``[oidc]`` provider (collector.access.oidc): verified on
    the event loop when the cached keys suffice (pure CPU), else in a thread (the JWKS
    fetch); its principal is read on the reader, and recorded in a thread when the ledger
    does not yet say what its claims give (an ``oidc-roles`` entry)."""
    app = request.app
    try:
        if oidc.verifier.cached_for(token):
            ident = oidc.verifier.verify(token, now_s=oidc.wall())
        else:
            ident = await asyncio.to_thread(oidc.verifier.verify, token, now_s=oidc.wall())
        grant = oidc.section.grant(ident)
        request[OIDC_GRANT] = grant
        store = oidc.principals(app[STORE], app[READER])
        p = await on_reader(app, store.current, grant)
        if p is None:
            p = await asyncio.to_thread(store.record, grant, now_us=now)
    except OidcTokenError as e:
        raise UnauthenticatedError(f"invalid token ({e})") from e
    except OidcError as e:
        raise UnavailableError(f"the identity provider cannot be used: {e}") from e
    await _touch(app[PRINCIPALS], p, now)
    return p


def _check_oidc_mfa(request: web.Request, roles: tuple[str, ...] | None) -> None:
    """Before rbac: a JWT whose claims map to one of ``roles`` but that was withheld for
    want of MFA is told so (collector.access.oidc.MfaRequiredError, 403)."""
    grant = request.get(OIDC_GRANT)
    oidc = request.app[SETTINGS].oidc
    if grant is None or oidc is None or roles is None or grant.roles & set(roles):
        return
    if grant.withheld & set(roles):
        raise MfaRequiredError(withheld_message(grant, roles, oidc.section))


def problem_response(request: web.Request, e: BaseException, rec: AccessRecord
                     ) -> web.Response:
    p = classify(e)
    if p.status >= 500 and p.slug == "internal":
        log.error("request %s %s failed", request.method, request.path, exc_info=e)
    elif p.slug == "integrity":
        # Stored data that disagrees with the ledger: refused, and the operator must look.
        log.error("request %s %s refused: %s", request.method, request.path, e)
    rec.status, rec.outcome, rec.detail = p.status, p.outcome, p.detail
    headers = {"Content-Type": PROBLEM_CONTENT_TYPE}
    if isinstance(e, ThrottledError):
        headers["Retry-After"] = str(e.retry_after_s)
    if p.status == 401:
        headers["WWW-Authenticate"] = 'Bearer realm="timeclock"'
    if isinstance(e, web.HTTPMethodNotAllowed):
        headers["Allow"] = ", ".join(sorted(e.allowed_methods))
    page = None if p.status == 401 else refusal_page(request, p.status, p.title, p.detail)
    if page is not None:
        return page     # a browser's console page: the refusal as HTML (collector.api.console)
    resp = web.Response(status=p.status, headers=headers,
                        text=json.dumps(p.to_dict(request.path[:200], rec.request_id)))
    if isinstance(e, RevokedCertificateError):
        resp.force_close()      # the connection's identity is revoked: no further requests
    return resp


async def _authenticate_throttled(request: web.Request, rec: AccessRecord) -> Principal:
    """:func:`authenticate` behind the throttle (see module doc and access_log.Throttle)."""
    app = request.app
    throttle, now = app[THROTTLE], app[CLOCK]()
    credential = _credential(request)
    if credential is not None:
        wait = throttle.retry_after_s(rec.client, credential, now)
        if wait is not None:
            raise ThrottledError(f"this credential failed too often from {rec.client}; "
                                 f"retry in {wait} s", wait)
    address_wait = throttle.address_retry_after_s(rec.client, now)
    try:
        return await authenticate(request, rec)
    except UnauthenticatedError as e:
        if not e.presented or credential is None:
            raise
        throttle.failed(rec.client, credential, now)
        app[MONITOR].auth_failed(rec.auth, rec.client, now_us=now)
        if address_wait is not None:
            # Many credentials failed from this address: no diagnostic for this one either.
            raise ThrottledError(f"too many failed authentications from {rec.client}; "
                                 f"retry in {address_wait} s", address_wait) from e
        raise


def _account(request: web.Request, context: RequestContext) -> None:
    """Record (or tally) the finished request; see the module doc."""
    app, rec = request.app, context.record
    app[MONITOR].request(rec.route, rec.method, rec.status or 0, rec.duration_us)
    if rec.route in UNRECORDED_ROUTES:
        return
    if context.principal is not None or rec.outcome == "denied" or \
            "revoked_certificate" in rec.extra:
        # A principal's request, a valid credential refused (a disabled or tampered
        # principal) or a revoked certificate on an open connection: attributable, so an
        # entry of its own (unless it is on the ledger already: a personal read's).
        if not rec.committed:
            app[ACCESS_LOG].add(rec.body())
        return
    alog = app[ACCESS_LOG]
    if alog.add_unauthenticated(rec):
        agg = alog.aggregates
        app[MONITOR].alerts.alert(
            "api-unauthenticated-burst", severity=SEVERITY_WARNING, device=None,
            detail=f"{agg.burst_per_minute} API requests without a valid credential within "
                   f"one minute (the latest from {rec.client[:64]}); tallied per source and "
                   f"minute, at most {agg.sources_max} sources a minute",
            fields={"client": rec.client[:64], "count": agg.burst_per_minute,
                    "minute": (rec.at + rec.duration_us) // MINUTE_US * MINUTE_US})


def _personal_answer(context: RequestContext, response: web.StreamResponse) -> bool:
    """A principal's answer of personal data (a ``personal`` route, 2xx) not accounted yet."""
    route, rec = context.route, context.record
    return (route is not None and route.personal and context.principal is not None
            and 200 <= response.status < 300 and rec.accounted is None
            and not rec.committed)


async def account_before_answer(request: web.Request, context: RequestContext,
                                response: web.StreamResponse) -> None:
    """(guard, after the view) A personal read answered in full: its record, with its status
    and count, is committed before the answer is prepared (collector.api.access_log); a
    streamed one was accounted by its intent entry before its first byte."""
    if response.prepared or not _personal_answer(context, response):
        return
    rec = context.record
    rec.accounted, rec.duration_us = "before", request.app[CLOCK]() - rec.at
    try:
        await request.app[ACCESS_LOG].commit(rec.body())
    except AccessCommitError as e:
        rec.accounted = None
        raise UnavailableError(str(e)) from e
    rec.committed = True


async def account_stream(request: web.Request, response: web.StreamResponse) -> None:
    """on_response_prepare, before any byte of a response is written: a personal read whose
    view streams (prepares its response itself) gets its ``request-intent`` entry committed
    first; when that fails nothing was sent, and the guard answers 503."""
    context = request.get(CTX)
    if context is None or not _personal_answer(context, response):
        return
    rec = context.record
    try:
        await request.app[ACCESS_LOG].commit(rec.intent_body())
    except AccessCommitError as e:
        # No byte has left, so a problem document is still possible: but the failed prepare
        # switched the request's writer to chunked framing for the stream; the problem
        # document is framed by its own Content-Length.
        context.streaming = False
        writer = request.writer
        if isinstance(writer, StreamWriter):
            writer.chunked = False
        raise UnavailableError(str(e)) from e
    rec.accounted = "intent"


@web.middleware
async def guard(request: web.Request, handler: Handler) -> web.StreamResponse:
    app = request.app
    clock = app[CLOCK]
    rec = AccessRecord(request_id=secrets.token_hex(8), at=clock(), method=request.method,
                       path=request.path, query=clean_query(list(request.rel_url.query.items())),
                       client=_client(request))
    context = RequestContext(rec)
    request[CTX] = context
    response: web.StreamResponse | None = None
    try:
        route = route_of(request)
        context.route = route
        if route is not None:
            rec.route = route.path
        if app[ACCESS_LOG].overloaded:
            raise UnavailableError("the access log cannot be written; refusing requests "
                                   "until it can (no request goes unrecorded)")
        watch = app.get(CRL_WATCH)
        if watch is not None:
            cert = _peercert(request)
            if cert is not None and watch.is_revoked(cert):
                rec.auth = "cert"
                # Attributable (our CA issued it to someone) and at most one request per
                # connection opened before the revocation: an entry of its own.
                rec.extra["revoked_certificate"] = {
                    "cn": (_peer_cn(request) or "")[:100],
                    "serial": _serial_hex(cert.get("serialNumber"))}
                raise RevokedCertificateError("the client certificate of this connection "
                                              "has been revoked (CRL)")
        if route is not None and route.roles is not None:
            context.principal = await _authenticate_throttled(request, rec)
            rec.principal = context.principal.name
            check_mfa(request, route.roles)      # a session's role withheld for want of MFA
            _check_oidc_mfa(request, route.roles)   # the same for a JWT's
            gates = app.get(GATES)             # break-glass roles, acknowledgements (rbac)
            if gates is not None:
                await on_reader(app, gates.refresh)
            context.principal, context.role = gated(gates, context.principal, route, clock())
            rec.role = context.role
            P.check_known(request.rel_url.query, route.params)
        response = await handler(request)
        rec.status = response.status
        await account_before_answer(request, context, response)
        return response
    except Exception as e:
        if context.streaming:
            # A stream already started: the status line is gone, so no problem document;
            # the connection is cut and the record says so.
            rec.status, rec.outcome, rec.detail = 500, "aborted", f"{type(e).__name__}: {e}"
            log.warning("stream %s aborted: %s", request.path, e)
            raise
        return problem_response(request, e, rec)
    except BaseException as e:
        rec.status, rec.outcome = rec.status or 499, "aborted"
        rec.detail = type(e).__name__
        raise
    finally:
        rec.duration_us = clock() - rec.at
        _account(request, context)

