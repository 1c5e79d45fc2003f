"""Auditor and operations views: checkpoints (v1 list, the newest v2 note, consistency
proofs), verification status, the access log, quarantine, device events (audit.read) and the
device registry (ops.devices, no punch data)."""

from __future__ import annotations

import asyncio
import json
from typing import Any

from aiohttp import web

from collector.api import params as P
from collector.api.errors import BadRequestError
from collector.api.keys import READER, SETTINGS, STORE, VERIFY_STATE, ctx
from collector.api.reads import on_reader
from collector.ledger import queries
from collector.ledger.audit import verify_store
from collector.ledger.sqlbase import SQLStore
from collector.records import proofs


def _limit(request: web.Request) -> int:
    n = P.integer(request.rel_url.query, "limit", lo=1, hi=request.app[SETTINGS].page_max,
                  default=100)
    return 100 if n is None else n


def entries_of_kind(store: SQLStore, kind: str, after: int, limit: int
                    ) -> list[dict[str, Any]]:
    return [{"idx": e.idx, "at": e.at, "hash": e.hash,
             "body": None if e.body is None else json.loads(e.body)}
            for e in queries.entries_of_kind(store, kind, after, limit)]


async def _kind_page(request: web.Request, kind: str) -> web.Response:
    after = P.integer(request.rel_url.query, "after", lo=0, hi=2**53 - 1, default=-1)
    limit = _limit(request)
    items = await asyncio.to_thread(entries_of_kind, request.app[STORE], kind,
                                    -1 if after is None else after, limit)
    ctx(request).record.count = len(items)
    nxt = items[-1]["idx"] if len(items) == limit else None
    return web.json_response({"items": items, "next_after": nxt})


async def access_log(request: web.Request) -> web.Response:
    """GET /v1/access-log: ``access`` ledger entries (requests and access changes)."""
    return await _kind_page(request, "access")


async def device_events(request: web.Request) -> web.Response:
    """GET /v1/device-events: ``device`` ledger entries (enrolments, rotations, revocations)."""
    return await _kind_page(request, "device")


async def checkpoints(request: web.Request) -> web.Response:
    cps = await asyncio.to_thread(request.app[STORE].checkpoints)
    ctx(request).record.count = len(cps)
    return web.json_response({"items": [c.to_dict() for c in cps]})


async def log_checkpoint(request: web.Request) -> web.Response:
    """GET /v1/log/checkpoint: the newest v2 checkpoint note with every cosignature."""
    doc = await on_reader(request.app, proofs.newest_checkpoint, request.app[READER])
    ctx(request).record.count = 1
    return web.json_response(doc)


async def log_consistency(request: web.Request) -> web.Response:
    """GET /v1/log/consistency?from=N&to=M: RFC 9162 consistency proof (``to`` defaults to
    the newest checkpoint's size)."""
    q = request.rel_url.query
    old = P.integer(q, "from", lo=0, hi=2**53 - 1)
    new = P.integer(q, "to", lo=0, hi=2**53 - 1)
    if old is None:
        raise BadRequestError("from: required (the tree size of the checkpoint you hold)")
    store = request.app[READER]

    def load() -> dict[str, Any]:
        to = new
        if to is None:
            to = proofs.newest_size(store)
        return proofs.consistency(store, old, to)

    doc = await on_reader(request.app, load)
    ctx(request).record.count = 1
    return web.json_response(doc)


async def quarantine(request: web.Request) -> web.Response:
    after = P.integer(request.rel_url.query, "after", lo=0, hi=2**53 - 1, default=0) or 0
    limit = _limit(request)
    recs = await asyncio.to_thread(request.app[STORE].quarantine, limit=limit, after_id=after)
    ctx(request).record.count = len(recs)
    items = [{"id": r.id, "idx": r.idx, "received_at": r.received_at, "topic": r.topic,
              "reason": r.reason, "detail": r.detail, "raw_sha256": r.raw_sha256,
              "size": r.size} for r in recs]
    return web.json_response({"items": items,
                              "next_after": items[-1]["id"] if len(items) == limit else None})


async def devices(request: web.Request) -> web.Response:
    """GET /v1/devices: the registry projection (devices and their keys), no punch data."""
    store = request.app[STORE]

    def load() -> list[dict[str, Any]]:
        keys: dict[str, list[dict[str, Any]]] = {}
        for k in store.all_keys():
            keys.setdefault(k.device, []).append(
                {"key": k.key_id, "public": k.public_b64, "from_seq": k.from_seq,
                 "until_seq": k.until_seq, "status": k.status,
                 "registered_idx": k.registered_idx})
        return [{"device": d.device, "site": d.site, "status": d.status,
                 "enrolled_idx": d.enrolled_idx, "changed_idx": d.changed_idx,
                 "keys": keys.get(d.device, [])} for d in store.devices()]

    items = await asyncio.to_thread(load)
    ctx(request).record.count = len(items)
    return web.json_response({"items": items})


async def verification(request: web.Request) -> web.Response:
    """GET /v1/verification: re-verify the ledger (incrementally from the last clean
    checkpoint this process verified) with the shared auditor and report."""
    app = request.app
    box = app[VERIFY_STATE]
    async with box.lock:
        result = await asyncio.to_thread(verify_store, app[STORE], app[SETTINGS].log_keys,
                                         state=box.state)
        if result.state is not None:
            box.state = result.state
    rep = result.report
    first = rep.first_failure
    ctx(request).record.count = rep.entries
    return web.json_response({
        "ok": rep.ok, "size": result.size, "resumed_from": result.resumed_from,
        "entries_checked": rep.entries, "punches": rep.punches, "devices": rep.devices,
        "checkpoints": rep.checkpoints, "head": rep.head,
        "log_keys": sorted(app[SETTINGS].log_keys),
        "first_failure": None if first is None else first.to_dict(),
        "findings": [f.to_dict() for f in rep.findings[:100]],
        "findings_total": len(rep.findings) + rep.omitted})
