"""Alert review over the API (issue 14 item 3; CONTROLS.md D13; docs/api.md "Alerts").

``GET /v1/alerts`` lists ``alert`` entries with their review state (``audit.read`` or
``audit.review``); ``POST /v1/alerts/{idx}/ack`` and ``/resolve`` record a ``review`` entry
naming the calling principal as the reviewer (``audit.review`` only). The rules (resolve
needs an acknowledgement, once each, not one's own action) are collector.records.reviews';
its refusals are 409 problems (collector.api.errors), and nothing is recorded.

Scheduled reviews: ``GET /v1/reviews/due`` lists the periods of the configured reviews
(``[reviews]``, ApiSettings.reviews; the defaults without it, as the CLI's ``reviews due``)
that have ended and are not signed off, each ``due`` or ``overdue``; ``POST
/v1/reviews/{kind}/sign-off`` records the sign-off of one period (``period``, default: the
oldest due) by the calling principal (``audit.review``), with the same checks as ``reviews
sign-off``: the period is over, signed off once; an access sample is drawn in the entry.
"""

from __future__ import annotations

import asyncio

from aiohttp import web

from collector.api import params as P
from collector.api.errors import BadRequestError, NotFoundError
from collector.api.keys import CLOCK, SETTINGS, STORE, ctx, principal_name
from collector.records import reviews
from wire.bodies_review import NOTE_MAX, REVIEW_KINDS, period_bounds
from wire.errors import WireError

ALERT_PARAMS = ("status",)


async def list_alerts(request: web.Request) -> web.Response:
    """GET /v1/alerts?status=open|acknowledged|resolved (open: not resolved)."""
    q = request.rel_url.query
    P.check_known(q, ALERT_PARAMS)
    status = P.choice(q, "status", reviews.STATUSES)
    found = await asyncio.to_thread(reviews.alerts, request.app[STORE], status=status)
    ctx(request).record.count = len(found)
    return web.json_response({"items": [a.to_dict() for a in found]})


def _idx(request: web.Request) -> int:
    raw = request.match_info["idx"]
    if not raw.isdigit() or len(raw) > 16:
        raise NotFoundError(f"no alert {raw[:20]!r}")
    return int(raw)


async def _review(request: web.Request, event: str) -> web.Response:
    idx = _idx(request)
    rec = ctx(request).record
    rec.extra = {"alert_idx": idx}
    body = await P.json_body(request, required=("note",),
                             max_bytes=request.app[SETTINGS].body_max_bytes)
    note = P.field_str(body, "note", max_len=NOTE_MAX)
    if not note.strip():
        raise BadRequestError("note: must not be empty (say what was checked)")
    review_idx, state = await asyncio.to_thread(
        reviews.review_alert, request.app[STORE], event, idx, by=principal_name(request),
        note=note, now_us=request.app[CLOCK]())
    rec.count = 1
    rec.extra["review_idx"] = review_idx
    return web.json_response(state.to_dict())


async def ack_alert(request: web.Request) -> web.Response:
    return await _review(request, "ack")


async def resolve_alert(request: web.Request) -> web.Response:
    return await _review(request, "resolve")


def _schedule(request: web.Request) -> reviews.ReviewSettings:
    # getattr: ApiSettings gains ``reviews`` in a change landing separately; until then
    # (and without [reviews]) the CLI's defaults
    found = getattr(request.app[SETTINGS], "reviews", None)
    return found if isinstance(found, reviews.ReviewSettings) else reviews.ReviewSettings()


async def due_reviews(request: web.Request) -> web.Response:
    """GET /v1/reviews/due: the periods due or overdue for sign-off, oldest first per review."""
    P.check_known(request.rel_url.query, ())
    found = await asyncio.to_thread(reviews.due, request.app[STORE], _schedule(request),
                                    now_us=request.app[CLOCK]())
    ctx(request).record.count = len(found)
    return web.json_response({"items": [d.to_dict() for d in found]})


async def sign_off(request: web.Request) -> web.Response:
    """POST /v1/reviews/{kind}/sign-off {"note", "period"?}: a sign-off entry (201)."""
    kind = request.match_info["kind"]
    if kind not in REVIEW_KINDS:
        raise NotFoundError(f"no scheduled review {kind[:30]!r} (one of "
                            f"{', '.join(sorted(REVIEW_KINDS))})")
    rec = ctx(request).record
    rec.extra = {"review": kind}
    body = await P.json_body(request, required=("note",), optional=("period",),
                             max_bytes=request.app[SETTINGS].body_max_bytes)
    note = P.field_str(body, "note", max_len=NOTE_MAX)
    if not note.strip():
        raise BadRequestError("note: must not be empty (say what was reviewed)")
    period = P.field_str(body, "period", max_len=10) if "period" in body else None
    if period is not None:
        try:
            period_bounds(kind, period)
        except WireError as e:
            raise BadRequestError(str(e)) from e
    done = await asyncio.to_thread(
        reviews.sign_off, request.app[STORE], kind, by=principal_name(request), note=note,
        now_us=request.app[CLOCK](), settings=_schedule(request), period=period)
    rec.count = 1
    rec.extra["review_idx"] = done.idx
    return web.json_response({"idx": done.idx, **done.body}, status=201)
