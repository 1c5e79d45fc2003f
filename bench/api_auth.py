"""An authenticated API read: today's opaque token against an OIDC JWT (issue 13: ≤ 20 % slower).

Setup, once: a real OIDC provider (tests/fixtures/oidc_kit.py: the certified ``oidc-provider``
for Node.js on loopback, `npm ci` by scripts/bootstrap.sh), a SQLite ledger seeded as the API
tests seed it (2 clocks, 5 punches each), its token principal ``hr-reader`` and a machine
client ``bench-app`` mapped to ``hr.read`` in ``[oidc] client_roles``.

Measured: the real application (collector.api.make_app) through aiohttp's test server on
loopback (plain HTTP: TLS costs both paths the same), one keep-alive client in this process.
Each run sends ``--requests`` sequential ``GET /v1/punches?limit=1`` with the opaque token and
as many with the JWT, interleaved one by one (so load drifts hit both alike), after a warm-up
that fetched the provider's keys and recorded the JWT's ``oidc-roles`` entry; each request is
timed from send to the last body byte. Reported: per run the median of each, and the median of
the runs' ratios JWT/opaque. Exit status 1 if that ratio exceeds 1.20.

    python bench/api_auth.py                    # 3 runs of 500 requests each way
    python bench/api_auth.py --runs 5 --requests 1000
"""

from __future__ import annotations

import argparse
import asyncio
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import common  # sets sys.path to the repository root

from collector.access.oidc import OidcAuth, read_oidc_section
from collector.api import ApiSettings
from collector.ledger.sqlite import SQLiteStore
from tests.collector.api_kit import seed, start_api
from tests.fixtures.oidc_kit import CLIENTS, start_provider

TARGET_RATIO = 1.20
PATH = "/v1/punches?limit=1"


async def timed(client: Any, headers: dict[str, str]) -> float:
    t0 = time.perf_counter()
    async with client.get(PATH, headers=headers) as r:
        await r.read()
        if r.status != 200:
            raise SystemExit(f"{PATH} answered {r.status}: {await r.text()}")
    return time.perf_counter() - t0


async def bench(args: argparse.Namespace, work: Path) -> int:
    provider = start_provider(work / "oidc", clients=(
        *CLIENTS, {"client_id": "bench-app", "client_secret": "bench-app-secret",
                   "kind": "machine"}), ttl_s=3600)
    try:
        problems: list[str] = []
        section = read_oidc_section({"issuer": provider.issuer, "audience": provider.audience,
                                     "client_roles": {"bench-app": ["hr.read"]}}, problems)
        assert section is not None, problems
        store = SQLiteStore(work / "ledger.db")
        api = await start_api(store, settings=ApiSettings(oidc=OidcAuth(section)),
                              clocks=seed(store))
        opaque = api.auth("hr-reader")                # api_kit's token principal: hr.read
        jwt = {"Authorization": "Bearer " + provider.machine_token("bench-app")}
        try:
            for _ in range(50):                       # warm-up: keys fetched, entry recorded
                await timed(api.client, opaque)
                await timed(api.client, jwt)
            rows, ratios = [], []
            for run in range(1, args.runs + 1):
                a: list[float] = []
                b: list[float] = []
                for i in range(args.requests):
                    first, second = (opaque, jwt) if i % 2 == 0 else (jwt, opaque)
                    t1 = await timed(api.client, first)
                    t2 = await timed(api.client, second)
                    a.append(t1 if first is opaque else t2)
                    b.append(t2 if first is opaque else t1)
                ma, mb = common.median(a) * 1000, common.median(b) * 1000
                ratios.append(mb / ma)
                rows.append((run, f"{ma:.3f}", f"{mb:.3f}", f"{mb / ma:.3f}"))
        finally:
            await api.client.close()
            store.close()
    finally:
        provider.stop()
    ratio = common.median(ratios)
    print(common.header("API read: opaque token vs OIDC JWT"))
    print(common.table(("run", "opaque median ms", "JWT median ms", "JWT/opaque"), rows))
    print(f"median ratio over {args.runs} run(s): {ratio:.3f} (target ≤ {TARGET_RATIO:.2f}); "
          f"{args.requests} requests each way per run")
    return 0 if ratio <= TARGET_RATIO else 1


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--runs", type=int, default=3)
    ap.add_argument("--requests", type=int, default=500)
    args = ap.parse_args(argv)
    with tempfile.TemporaryDirectory(prefix="bench-auth-") as d:
        return asyncio.run(bench(args, Path(d)))


if __name__ == "__main__":
    sys.exit(main())
