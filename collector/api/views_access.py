"""Break-glass, access reviews and policy acknowledgements over the API (issue 13 items
7–9; CONTROLS.md D8, D11, D13; docs/api.md).

- ``POST /v1/breakglass/open`` opens a sealed break-glass grant as the calling principal
  (any role; the seal names who may open it, and its secret is the second factor; a
  principal signed in with OIDC must also have signed in with MFA). ``GET /v1/breakglass``
  lists seals and openings; ``POST /v1/breakglass/{id}/review`` records the post-use review
  (``audit.review``; never by the principal that used or opened it).
- ``/v1/access-reviews``: start one for a named reviewer (``admin``, ``audit.review``),
  decide keep/revoke per grant and sign off as the calling principal (the reviewer).
- ``GET /v1/policy-docs`` (any role) and ``POST /v1/acknowledgements``: the caller
  acknowledges the current version of a document for itself; ``GET /v1/policy-docs/due``
  reports who is due (``audit.read``, ``admin``).

The rules are collector.access's; refusals are problems (collector.api.errors) and record
nothing, except a wrong break-glass secret, which is an ``access`` refusal entry.
"""

from __future__ import annotations

import asyncio
from typing import Any

from aiohttp import web

from collector.access import access_reviews, policy_docs
from collector.access.breakglass import OPEN_ALERT, BreakGlass
from collector.access.principals import Principal
from collector.api import params as P
from collector.api.errors import BadRequestError
from collector.api.keys import CLOCK, SETTINGS, STORE, ctx, principal_name
from collector.ingest.metrics import ALERTS
from wire.bodies_access_review import DECISIONS
from wire.bodies_breakglass import CASE_RE, ID_RE, TEXT_MAX
from wire.bodies_policy_doc import NAME_RE
from wire.fields import HASH_RE


def _principal(request: web.Request) -> Principal:
    p = ctx(request).principal
    if p is None:
        raise RuntimeError("view reached without an authenticated principal")
    return p


def _amr(request: web.Request, p: Principal) -> list[str] | None:
    """The second factor an OIDC sign-in showed (None: not an OIDC sign-in)."""
    if p.kind != "oidc":
        return None
    try:
        from collector.api.signin import SESSION  # type: ignore[attr-defined,unused-ignore]  # noqa: PLC0415 - sign-in is optional
    except ImportError:
        return []
    session: Any = request.get(SESSION)
    return ["mfa"] if session is not None and getattr(session, "mfa", False) else ["pwd"]


async def _body(request: web.Request, required: tuple[str, ...],
                optional: tuple[str, ...] = ()) -> dict[str, Any]:
    return await P.json_body(request, required=required, optional=optional,
                             max_bytes=request.app[SETTINGS].body_max_bytes)


def _text(body: dict[str, Any], name: str) -> str:
    v = P.field_str(body, name, max_len=TEXT_MAX)
    if not v.strip():
        raise BadRequestError(f"{name}: must not be empty")
    return v


def _bg(request: web.Request) -> BreakGlass:
    return BreakGlass(request.app[STORE], request.app[SETTINGS].gates.breakglass)


# -- break-glass -------------------------------------------------------------------------

async def list_break_glass(request: web.Request) -> web.Response:
    found = await asyncio.to_thread(_bg(request).list, now_us=request.app[CLOCK]())
    ctx(request).record.count = len(found)
    return web.json_response({"items": found})


async def open_break_glass(request: web.Request) -> web.Response:
    body = await _body(request, ("id", "secret", "reason", "case"))
    bg = P.field_str(body, "id", max_len=40, pattern=ID_RE)
    secret = P.field_str(body, "secret", max_len=200)
    reason, case = _text(body, "reason"), P.field_str(body, "case", max_len=64,
                                                      pattern=CASE_RE)
    p = _principal(request)
    rec = ctx(request).record
    rec.extra = {"break_glass": bg, "case": case}
    state = await asyncio.to_thread(
        _bg(request).open, bg, secret, principal=p, by=p.name, reason=reason, case=case,
        now_us=request.app[CLOCK](), amr=_amr(request, p))
    rec.count = 1
    # the alert entry is written with the opening (collector.access.breakglass); the counter
    # is what Prometheus rules see of it
    ALERTS.labels(OPEN_ALERT, "1").inc()
    return web.json_response(state, status=201)


async def review_break_glass(request: web.Request) -> web.Response:
    bg = request.match_info["id"]
    if not ID_RE.fullmatch(bg):
        raise BadRequestError(f"no break-glass {bg[:40]!r}")
    body = await _body(request, ("note",))
    note = _text(body, "note")
    ctx(request).record.extra = {"break_glass": bg}
    state = await asyncio.to_thread(_bg(request).review, bg, by=principal_name(request),
                                    note=note, now_us=request.app[CLOCK]())
    ctx(request).record.count = 1
    return web.json_response(state)


# -- access reviews ----------------------------------------------------------------------

async def list_access_reviews(request: web.Request) -> web.Response:
    found = await asyncio.to_thread(access_reviews.reviews, request.app[STORE].query)
    ctx(request).record.count = len(found)
    return web.json_response({"items": [st.to_dict() for st in found.values()]})


async def start_access_review(request: web.Request) -> web.Response:
    body = await _body(request, ("reviewer",))
    reviewer = P.field_str(body, "reviewer", max_len=64)
    st = await asyncio.to_thread(access_reviews.start, request.app[STORE], reviewer=reviewer,
                                 by=principal_name(request), now_us=request.app[CLOCK]())
    ctx(request).record.count = len(st.started.grants)
    return web.json_response(st.to_dict(), status=201)


def _review_id(request: web.Request) -> str:
    rid = request.match_info["id"]
    if not rid.startswith("arv-") or len(rid) > 40:
        raise BadRequestError(f"no access review {rid[:40]!r}")
    return rid


async def decide_access_review(request: web.Request) -> web.Response:
    rid = _review_id(request)
    body = await _body(request, ("principal", "decision"), ("note",))
    principal = P.field_str(body, "principal", max_len=64)
    decision = P.field_str(body, "decision", max_len=10)
    if decision not in DECISIONS:
        raise BadRequestError(f"decision: one of {', '.join(sorted(DECISIONS))}")
    note = _text(body, "note") if "note" in body else None
    st = await asyncio.to_thread(access_reviews.decide, request.app[STORE], rid, principal,
                                 decision, by=principal_name(request),
                                 now_us=request.app[CLOCK](), note=note)
    ctx(request).record.extra = {"review": rid, "principal": principal, "decision": decision}
    return web.json_response(st.to_dict())


async def sign_off_access_review(request: web.Request) -> web.Response:
    rid = _review_id(request)
    body = await _body(request, ("note",))
    st = await asyncio.to_thread(access_reviews.sign_off, request.app[STORE], rid,
                                 by=principal_name(request), note=_text(body, "note"),
                                 now_us=request.app[CLOCK]())
    return web.json_response(st.to_dict())


# -- policy documents --------------------------------------------------------------------

async def list_policy_docs(request: web.Request) -> web.Response:
    docs = await asyncio.to_thread(policy_docs.documents, request.app[STORE])
    ctx(request).record.count = len(docs)
    return web.json_response({"items": docs})


async def acknowledge(request: web.Request) -> web.Response:
    body = await _body(request, ("name",), ("sha256",))
    name = P.field_str(body, "name", max_len=64, pattern=NAME_RE)
    sha = P.field_str(body, "sha256", max_len=64, pattern=HASH_RE) if "sha256" in body \
        else None
    me = principal_name(request)
    idx, ack = await asyncio.to_thread(policy_docs.acknowledge, request.app[STORE], me, name,
                                       by=me, now_us=request.app[CLOCK](), sha256=sha)
    ctx(request).record.extra = {"document": name, "version": ack.version}
    return web.json_response({"idx": idx, "principal": me, "name": name,
                              "version": ack.version, "sha256": ack.sha256, "at": ack.at},
                             status=201)


async def policy_docs_due(request: web.Request) -> web.Response:
    rows = await asyncio.to_thread(policy_docs.due, request.app[STORE],
                                   request.app[SETTINGS].gates.policies,
                                   now_us=request.app[CLOCK]())
    ctx(request).record.count = len(rows)
    return web.json_response({"items": [r.to_dict() for r in rows]})
