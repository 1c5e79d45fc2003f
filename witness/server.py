"""HTTPS for the witness (aiohttp): ``POST /add-checkpoint`` as C2SP tlog-witness defines it.

The request body is read whole, at most wire.witness.MAX_ADD_CHECKPOINT_BYTES (larger: 413);
the witness's work (which fsyncs its state) runs in a worker thread so the event loop keeps
serving. Responses: 200 with the cosignature line(s) (``text/plain; charset=utf-8``), or the
status and text of a :class:`witness.core.Rejection` (409 carries ``text/x.tlog.size``).
"""

from __future__ import annotations

import asyncio
import logging

from aiohttp import web

from wire.witness import MAX_ADD_CHECKPOINT_BYTES
from witness.core import Rejection, StateError, Witness

log = logging.getLogger("timeclock.witness")

WITNESS_KEY: web.AppKey[Witness] = web.AppKey("witness", Witness)


async def add_checkpoint(request: web.Request) -> web.Response:
    witness = request.app[WITNESS_KEY]
    body = await request.read()
    try:
        line = await asyncio.to_thread(witness.add_checkpoint, body)
    except Rejection as r:
        log.info("add-checkpoint from %s refused: %s", request.remote, r)
        return web.Response(status=r.status, body=r.body.encode("utf-8"),
                            headers={"Content-Type": r.content_type})
    except StateError as e:
        log.error("%s", e)
        return web.Response(status=500, text="the witness cannot persist its state\n")
    return web.Response(text=line, content_type="text/plain", charset="utf-8")


def make_app(witness: Witness) -> web.Application:
    app = web.Application(client_max_size=MAX_ADD_CHECKPOINT_BYTES)
    app[WITNESS_KEY] = witness
    app.router.add_post("/add-checkpoint", add_checkpoint)
    return app
