"""Admin views (principals, tokens, roles; never punch data), the access review, and the
public endpoints (/healthz, the OpenAPI document)."""

from __future__ import annotations

import asyncio
from typing import Any

from aiohttp import web

from collector.access.principals import KINDS, PRINCIPAL_RE, Principal
from collector.access.scopes import scope_from_body
from collector.access.tokens import MAX_TOKEN_DAYS
from collector.api import params as P
from collector.api.errors import BadRequestError
from collector.api.keys import CLOCK, PRINCIPALS, SETTINGS, STORE, ctx, principal_name
from collector.ledger import access_tables
from collector.ledger.access_tables import GrantRow
from wire.grants import UNSCOPED


async def healthz(request: web.Request) -> web.Response:
    """GET /healthz: minimal liveness (no auth, no details beyond ok)."""
    await asyncio.to_thread(request.app[STORE].head)
    return web.json_response({"status": "ok"})


async def openapi(request: web.Request) -> web.Response:
    from collector.api.openapi import document  # noqa: PLC0415 - openapi imports routes → views
    return web.json_response(document())


async def list_principals(request: web.Request) -> web.Response:
    principals, now = request.app[PRINCIPALS], request.app[CLOCK]()

    def load() -> list[dict[str, Any]]:
        return [{**p.to_dict(), "tokens": [t.to_dict(now) for t in principals.tokens(p.name)]}
                for p in principals.all()]

    items = await asyncio.to_thread(load)
    ctx(request).record.count = len(items)
    return web.json_response({"items": items})


async def access_review(request: web.Request) -> web.Response:
    days = P.integer(request.rel_url.query, "unused_days", lo=1, hi=3650, default=90) or 90
    rows = await asyncio.to_thread(request.app[PRINCIPALS].review, unused_days=days,
                                   now_us=request.app[CLOCK]())
    drift = await asyncio.to_thread(request.app[PRINCIPALS].drift)
    ctx(request).record.count = len(rows)
    return web.json_response({"unused_days": days, "items": [r.to_dict() for r in rows],
                              "flagged": sum(r.unused for r in rows), "drift": drift})


def _roles(body: dict[str, Any]) -> list[str]:
    roles = body.get("roles", [])
    if not isinstance(roles, list) or len(roles) > 10 or not all(
            isinstance(r, str) and len(r) <= 40 for r in roles):
        raise BadRequestError("roles: a list of role names")
    return [str(r) for r in roles]


async def create_token(request: web.Request) -> web.Response:
    """POST /v1/tokens: a token for the caller itself (``principal``, if given, must be the
    caller: no one obtains a credential for another principal; refused and recorded)."""
    body = await P.json_body(request, required=(),
                             optional=("principal", "roles", "expires_days"),
                             max_bytes=request.app[SETTINGS].body_max_bytes)
    caller = principal_name(request)
    name = P.field_str(body, "principal", max_len=64, pattern=PRINCIPAL_RE) \
        if "principal" in body else caller
    days = P.field_int(body, "expires_days", lo=1, hi=MAX_TOKEN_DAYS, default=90)
    issued = await asyncio.to_thread(
        request.app[PRINCIPALS].create_token, name, _roles(body), expires_days=days,
        actor=caller, now_us=request.app[CLOCK]())
    rec = ctx(request).record
    rec.count, rec.extra = 1, {"principal": name, "token": issued.record.id}
    now = request.app[CLOCK]()
    return web.json_response({"token": issued.token, **issued.record.to_dict(now)},
                             status=201, headers={"Cache-Control": "no-store"})


async def create_principal(request: web.Request) -> web.Response:
    """POST /v1/principals: a principal without a credential; punch-data roles are a
    pending grant until a second admin approves them (DESIGN.md §8.5 dual control)."""
    body = await P.json_body(request, required=("principal", "roles"),
                             optional=("kind", "employee", "sites"),
                             max_bytes=request.app[SETTINGS].body_max_bytes)
    name = P.field_str(body, "principal", max_len=64, pattern=PRINCIPAL_RE)
    kind = body.get("kind", "token")
    if kind not in KINDS:
        raise BadRequestError(f"kind: one of {', '.join(KINDS)}")
    rec = ctx(request).record
    rec.extra = {"principal": name}
    p, pending = await asyncio.to_thread(
        request.app[PRINCIPALS].create_principal, name, str(kind), _roles(body),
        actor=principal_name(request), now_us=request.app[CLOCK](),
        scope=scope_from_body(body, None) or UNSCOPED)
    rec.count = 1
    return web.json_response({"principal": p.to_dict(),
                              "pending": None if pending is None else pending.to_dict()},
                             status=201)


async def list_grants(request: web.Request) -> web.Response:
    rows = await asyncio.to_thread(access_tables.grants, request.app[STORE])
    ctx(request).record.count = len(rows)
    return web.json_response({"items": [g.to_dict() for g in rows]})


async def _decide(request: web.Request, *, approve: bool) -> web.Response:
    gid = request.match_info["id"]
    rec = ctx(request).record
    rec.extra = {"grant": gid[:40]}
    g = await asyncio.to_thread(request.app[PRINCIPALS].decide_grant, gid, approve=approve,
                                actor=principal_name(request), now_us=request.app[CLOCK]())
    rec.count = 1
    return web.json_response(g.to_dict())


async def approve_grant(request: web.Request) -> web.Response:
    """POST /v1/grants/{id}/approve: only an admin other than the requester (SoD, recorded)."""
    return await _decide(request, approve=True)


async def reject_grant(request: web.Request) -> web.Response:
    return await _decide(request, approve=False)


async def revoke_token(request: web.Request) -> web.Response:
    tid = request.match_info["id"]
    rec = ctx(request).record
    rec.extra = {"token": tid[:40]}
    t = await asyncio.to_thread(request.app[PRINCIPALS].revoke_token, tid,
                                actor=principal_name(request), now_us=request.app[CLOCK]())
    rec.count = 1
    return web.json_response(t.to_dict(request.app[CLOCK]()))


async def set_roles(request: web.Request) -> web.Response:
    name = request.match_info["name"]
    body = await P.json_body(request, required=("roles",), optional=("employee", "sites"),
                             max_bytes=request.app[SETTINGS].body_max_bytes)
    rec = ctx(request).record
    rec.extra = {"principal": name[:64]}
    principals = request.app[PRINCIPALS]

    def change() -> Principal | GrantRow:
        cur = principals.get(name)
        return principals.set_roles(name, _roles(body), actor=principal_name(request),
                                    now_us=request.app[CLOCK](),
                                    scope=scope_from_body(body, None if cur is None
                                                          else cur.scope))

    p = await asyncio.to_thread(change)
    rec.count = 1
    if isinstance(p, GrantRow):      # a punch-data role: waits for a second admin
        return web.json_response({"pending": p.to_dict()}, status=202)
    return web.json_response(p.to_dict())
