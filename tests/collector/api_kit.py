"""Shared helpers of the API tests: a ledger seeded with enrolled clocks and signed punches,
principals with tokens for every role, an injected clock, and an aiohttp test client over the
real application (collector.api.make_app). The ``api`` fixture is in tests/collector/conftest.py."""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Any

from aiohttp.test_utils import TestClient, TestServer

from collector.access.directory import Principals
from collector.api import ApiSettings, make_app
from collector.api.keys import ACCESS_LOG
from collector.ledger.base import EventFact
from collector.ledger.sqlbase import SQLStore
from collector.ledger.tables import ensure_schema
from tests.collector.ledger_kit import T0, Clock

ROLE_PRINCIPALS: dict[str, tuple[str, ...]] = {
    "hr-reader": ("hr.read",),
    "payroll": ("payroll.export",),
    "editor": ("hr.read", "hr.correct"),
    "editor2": ("hr.correct",),
    "approver": ("hr.read", "hr.approve"),
    "auditor": ("audit.read",),
    "ops": ("ops.devices",),
    "admin": ("admin",),
}


class FakeClock:
    """µs clock for the app; tests move it explicitly (no sleeping)."""

    def __init__(self, start: int = T0 + 10**9) -> None:
        self.now = start

    def __call__(self) -> int:
        self.now += 1
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += int(seconds * 1_000_000)


def seed(store: SQLStore, *, devices: int = 2, punches: int = 5) -> list[Clock]:
    clocks = [Clock(f"clock-{i:02d}", site="hq" if i % 2 == 0 else "plant")
              for i in range(devices)]
    store.append([EventFact("device", c.enrolled_body()) for c in clocks], now_us=T0)
    for c in clocks:
        store.append([c.fact(credential=f"em4100:{n:010d}", action="in" if n % 2 else "out")
                      for n in range(punches)], now_us=T0 + 1000)
    return clocks


def access_bodies(store: SQLStore) -> list[dict[str, Any]]:
    return [json.loads(se.body) for se in store.entries() if se.entry.kind == "access"
            and se.body is not None]


def requests_of(store: SQLStore) -> list[dict[str, Any]]:
    return [b for b in access_bodies(store) if b.get("type") == "request"]


@dataclass
class Api:
    client: TestClient[Any, Any]
    store: SQLStore
    clock: FakeClock
    tokens: dict[str, str] = field(default_factory=dict)
    clocks: list[Clock] = field(default_factory=list)

    def auth(self, principal: str) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.tokens[principal]}"}

    async def flush(self) -> None:
        await self.client.server.app[ACCESS_LOG].flush()

    async def call(self, method: str, path: str, principal: str | None = None,
                   **kw: Any) -> Any:
        headers = dict(kw.pop("headers", {}))
        if principal is not None:
            headers.update(self.auth(principal))
        return await self.client.request(method, path, headers=headers, **kw)


def issue_tokens(store: SQLStore, now_us: int,
                 roles: dict[str, tuple[str, ...]] = ROLE_PRINCIPALS) -> dict[str, str]:
    principals = Principals(store)
    return {name: principals.create_token(name, list(rs), expires_days=30, actor="cli:test",
                                          now_us=now_us).token
            for name, rs in roles.items()}


async def start_api(store: SQLStore, *, settings: ApiSettings | None = None,
                    clocks: list[Clock] | None = None, reader: SQLStore | None = None) -> Api:
    """The real application over ``store``; ``reader``: a second connection, as serve
    gives it (collector.api.reads: its reads then run inline on the loop)."""
    clock = FakeClock()
    ensure_schema(store)
    tokens = issue_tokens(store, clock.now)
    app = make_app(store, settings=settings or ApiSettings(), clock=clock, reader=reader)
    client: TestClient[Any, Any] = TestClient(TestServer(app))
    await client.start_server()
    return Api(client, store, clock, tokens, clocks or [])
