"""Alert review over the API (issue 14 item 3; CONTROLS.md D13; docs/api.md "Alerts").

``GET /v1/alerts`` lists ``alert`` entries with their review state (``audit.read`` or
``audit.review``); ``POST /v1/alerts/{idx}/ack`` and ``/resolve`` record a ``review`` entry
naming the calling principal as the reviewer (``audit.review`` only). The rules (resolve
needs an acknowledgement, once each, not one's own action) are collector.records.reviews';
its refusals are 409 problems (collector.api.errors), and nothing is recorded.
"""

from __future__ import annotations

import asyncio

from aiohttp import web

from collector.api import params as P
from collector.api.errors import BadRequestError, NotFoundError
from collector.api.keys import CLOCK, SETTINGS, STORE, ctx, principal_name
from collector.records import reviews
from wire.bodies_review import NOTE_MAX

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
