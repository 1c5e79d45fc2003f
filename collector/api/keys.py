"""Typed application and request keys (aiohttp ``AppKey``/``RequestKey``) of the API."""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

from aiohttp import web

from collector.access.directory import Principals
from collector.access.gates import Gates, GateSettings
from collector.access.oidc import OidcAuth
from collector.access.principals import Principal
from collector.api.access_log import AccessLog, AccessRecord, Throttle
from collector.ingest.statuses import StatusRow
from collector.ledger.audit import VerifyState
from collector.ledger.sqlbase import SQLStore
from collector.records.corrections import Corrections
from collector.records.export_fields import Pseudonyms
from collector.records.reviews import ReviewSettings
from wire.keys import VerifyKey

if TYPE_CHECKING:
    from collector.api.routes import Route


@dataclass(frozen=True)
class ApiSettings:
    """Runtime knobs of the API application (see ``[api]`` in docs/api.md)."""

    log_keys: Mapping[str, VerifyKey] = field(default_factory=dict)
    pseudonyms: Pseudonyms | None = None    # [api] pseudonym_key: exports' badge_pseudonym
    access_flush_ms: int = 100
    access_batch_max: int = 200
    access_max_pending: int = 50_000
    auth_failures_max: int = 10
    auth_failures_window_s: int = 300
    page_max: int = 1000
    body_max_bytes: int = 64 * 1024
    reviews: ReviewSettings | None = None   # [reviews]: the schedule /v1/reviews follows
    gates: GateSettings = field(default_factory=GateSettings)   # [breakglass], [policies]
    oidc: OidcAuth | None = None        # [oidc]: JWT access tokens (collector.access.oidc)
    # the console's ops and compliance pages (collector.api.console_sources): the running
    # service's device statuses, the CA directory (index.json: certificate expiry) and the
    # folder of evidence packs made by `timeclock-collector evidence` ([api] ca_dir,
    # evidence_dir); None: shown as unknown / no packs
    statuses: Callable[[], Mapping[str, StatusRow]] | None = None
    ca_dir: Path | None = None
    evidence_dir: Path | None = None


@dataclass
class RequestContext:
    """Who is calling, with which role, and the access record being filled in."""

    record: AccessRecord
    route: Route | None = None
    principal: Principal | None = None
    role: str | None = None
    streaming: bool = False         # a response started streaming (no problem possible)


@dataclass
class VerifyBox:
    """The last clean verification state of this process (resume point) and its lock."""

    lock: asyncio.Lock = field(default_factory=asyncio.Lock)
    state: VerifyState | None = None


STORE = web.AppKey("store", SQLStore)
# Proof reads go through their own connection when one is given (make_app(reader=)), so they
# never queue behind the access log's batched commits on STORE's connection.
READER = web.AppKey("reader", SQLStore)
PRINCIPALS = web.AppKey("principals", Principals)
GATES = web.AppKey("gates", Gates)     # request-time break-glass and acknowledgement gates
CORRECTIONS = web.AppKey("corrections", Corrections)
ACCESS_LOG = web.AppKey("access_log", AccessLog)
THROTTLE = web.AppKey("throttle", Throttle)
SETTINGS = web.AppKey("settings", ApiSettings)
CLOCK = web.AppKey[Callable[[], int]]("clock")
VERIFY_STATE = web.AppKey("verify_state", VerifyBox)
CTX = web.RequestKey("ctx", RequestContext)


def ctx(request: web.Request) -> RequestContext:
    return request[CTX]


def principal_name(request: web.Request) -> str:
    p = request[CTX].principal
    if p is None:
        raise RuntimeError("view reached without an authenticated principal")
    return p.name
