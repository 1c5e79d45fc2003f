"""The API's one middleware: throttle → authenticate → authorize → view → problem → record.

It is the only place that turns errors into responses (RFC 9457 problem documents,
``application/problem+json``), and it records every request, whatever happened, as one
access record in ``finally`` (collector.api.access_log).
"""

from __future__ import annotations

import asyncio
import json
import logging
import secrets
from typing import Any

from aiohttp import web

from collector.access.directory import Principals
from collector.access.principals import Principal
from collector.access.tokens import TokenError
from collector.api import params as P
from collector.api.access_log import AccessRecord, clean_query
from collector.api.errors import (
    PROBLEM_CONTENT_TYPE,
    ThrottledError,
    UnauthenticatedError,
    UnavailableError,
    classify,
)
from collector.api.keys import ACCESS_LOG, CLOCK, CTX, PRINCIPALS, THROTTLE, RequestContext
from collector.api.metrics import MONITOR
from collector.api.rbac import authorize
from collector.api.reads import on_reader
from collector.api.routes import Handler, route_of
from collector.fleet.pki import client_kind

log = logging.getLogger("timeclock.api")


def _client(request: web.Request) -> str:
    return request.remote or "unknown"


def _peer_cn(request: web.Request) -> str | None:
    """CN of a client certificate that the TLS layer verified against our CA."""
    transport = request.transport
    cert: Any = transport.get_extra_info("peercert") if transport is not None else None
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
    raise UnauthenticatedError("send 'Authorization: Bearer <token>' or a client certificate "
                               "of the timeclock CA", presented=False)


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
    return web.Response(status=p.status, headers=headers,
                        text=json.dumps(p.to_dict(request.path[:200], rec.request_id)))


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
        if route is not None and route.roles is not None:
            throttle, now = app[THROTTLE], clock()
            wait = throttle.retry_after_s(rec.client, now)
            if wait is not None:
                raise ThrottledError(f"too many failed authentications from {rec.client}; "
                                     f"retry in {wait} s", wait)
            try:
                context.principal = await authenticate(request, rec)
            except UnauthenticatedError as e:
                if e.presented:
                    throttle.failed(rec.client, now)
                    app[MONITOR].auth_failed(rec.auth, rec.client, now_us=now)
                raise
            rec.principal = context.principal.name
            context.role = rec.role = authorize(context.principal, route)
            P.check_known(request.rel_url.query, route.params)
        response = await handler(request)
        rec.status = response.status
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
        app[ACCESS_LOG].add(rec.body())
        app[MONITOR].request(rec.route, rec.method, rec.status or 0, rec.duration_us)

