"""Where a request's reads run: on the event loop when they cannot wait, else in a thread.

Every hop to a worker thread costs two wake-ups (the worker's, then the loop's through its
self-pipe); on a busy machine each waits for a core, and that wait, not the read, made the
tail of the proof and authentication latency (docs/performance.md, "Proofs through the
API"). A read on the API's own SQLite reader connection never waits for a writer (WAL: a
reader works from its snapshot while the ingest or the access log commits) and is a few
indexed lookups, so it runs inline. Everything else keeps the thread: the writer connection
(it waits for the chain-head lock and an fsync), PostgreSQL (a network round trip) and an
API built without a reader of its own (``make_app(reader=None)``: its reader is the writer).
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import ParamSpec, TypeVar

from aiohttp import web

from collector.api.keys import READER, STORE

_P = ParamSpec("_P")
_T = TypeVar("_T")

INLINE_READS = web.AppKey("inline_reads", bool)


def reads_inline(app: web.Application) -> bool:
    """True when ``app``'s reader is a connection of its own whose reads never wait."""
    reader, store = app[READER], app[STORE]
    return reader is not store and not reader.reads_wait_for_writers


async def on_reader(app: web.Application, fn: Callable[_P, _T], /,
                    *args: _P.args, **kwargs: _P.kwargs) -> _T:
    """``fn(*args, **kwargs)``, a read through ``app[READER]`` only: inline when
    :func:`reads_inline` held when the app was made, else in a worker thread."""
    if app[INLINE_READS]:
        return fn(*args, **kwargs)
    return await asyncio.to_thread(fn, *args, **kwargs)
