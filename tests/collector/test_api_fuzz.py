"""Malformed queries, bodies and credentials generated from the OpenAPI document (hypothesis
strategies driven by docs/openapi.json): the API never answers 5xx and never leaves a
request unaccounted for (its own access entry, or its source's tally). Bounded: 300
examples, a few seconds.

schemathesis was not used: it would pull a large dependency tree into the shared venv (and
pin hypothesis); the document-driven strategies below cover the same ground for this API.
"""

from __future__ import annotations

import asyncio
import collections
import json
import urllib.parse
from pathlib import Path
from typing import Any

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from collector.api import ApiSettings
from collector.ledger.sqlite import SQLiteStore
from tests.collector.api_kit import (
    ROLE_PRINCIPALS,
    access_bodies,
    requests_of,
    seed,
    start_api,
)

ROOT = Path(__file__).resolve().parents[2]
DOC = json.loads((ROOT / "docs" / "openapi.json").read_text())
SCHEMAS = DOC["components"]["schemas"]
OPS = [(path, method.upper(), op) for path, item in sorted(DOC["paths"].items())
       for method, op in sorted(item.items())]

TEXT = st.text(st.characters(exclude_categories=("Cs",)), max_size=40)
JSON_ANY = st.recursive(st.none() | st.booleans() | st.integers() | st.floats(
    allow_nan=False) | TEXT, lambda c: st.lists(c, max_size=3) | st.dictionaries(
    TEXT, c, max_size=3), max_leaves=8)


def from_schema(schema: dict[str, Any]) -> st.SearchStrategy[Any]:  # noqa: PLR0911 - one return per schema form
    """Values valid for ``schema`` (a subset of JSON Schema: what our document uses)."""
    if "$ref" in schema:
        return from_schema(SCHEMAS[schema["$ref"].rsplit("/", 1)[1]])
    if "const" in schema:
        return st.just(schema["const"])
    if "enum" in schema:
        return st.sampled_from(schema["enum"])
    if "oneOf" in schema:
        return st.one_of([from_schema(s) for s in schema["oneOf"]])
    t = schema.get("type", "object")
    if isinstance(t, list):
        return st.one_of([from_schema({**schema, "type": x}) for x in t])
    if t == "string":
        if "pattern" in schema:
            return st.from_regex(schema["pattern"], fullmatch=True).filter(
                lambda s: len(s) <= 64)
        return st.text(max_size=schema.get("maxLength", 40))
    if t == "integer":
        return st.integers(schema.get("minimum", -(2**53)), schema.get("maximum", 2**53))
    if t == "boolean":
        return st.booleans()
    if t == "null":
        return st.none()
    if t == "array":
        return st.lists(from_schema(schema.get("items", {})),
                        max_size=schema.get("maxItems", 3))
    props = schema.get("properties", {})
    return st.fixed_dictionaries(
        {k: from_schema(v) for k, v in props.items() if k in schema.get("required", [])},
        optional={k: from_schema(v) for k, v in props.items()
                  if k not in schema.get("required", [])})


def maybe_bad(schema: dict[str, Any]) -> st.SearchStrategy[Any]:
    return st.one_of(from_schema(schema), JSON_ANY)


@st.composite
def requests(draw: st.DrawFn) -> tuple[str, str, dict[str, str], bytes | None, str | None]:
    path, method, op = draw(st.sampled_from(OPS))
    query: dict[str, str] = {}
    for p in op.get("parameters", []):
        if p["in"] == "path":
            v = draw(maybe_bad(p["schema"]))
            path = path.replace("{" + p["name"] + "}", urllib.parse.quote(str(v), safe="")
                                or "x")
        elif draw(st.booleans()):
            v = draw(maybe_bad(p["schema"]))
            query[p["name"]] = v if isinstance(v, str) else json.dumps(v)
    if draw(st.integers(0, 9)) == 0:
        query[draw(TEXT)] = draw(TEXT)       # unknown parameter
    body: bytes | None = None
    if "requestBody" in op:
        schema = op["requestBody"]["content"]["application/json"]["schema"]
        kind = draw(st.integers(0, 3))
        if kind == 0:
            body = draw(st.binary(max_size=60))
        else:
            value = draw(from_schema(schema) if kind == 1 else JSON_ANY)
            body = json.dumps(value).encode()
    principal = draw(st.sampled_from([*ROLE_PRINCIPALS, None, "garbage", "bad-scheme"]))
    return method, path, query, body, principal


def test_openapi_driven_malformed_requests_never_5xx_and_always_recorded(tmp_path: Path
                                                                          ) -> None:
    store = SQLiteStore(tmp_path / "ledger.db")
    seed(store)
    loop = asyncio.new_event_loop()
    api = loop.run_until_complete(start_api(
        store, settings=ApiSettings(auth_failures_max=1_000_000)))
    sent: list[tuple[str, str, int]] = []

    @settings(max_examples=300, deadline=None, database=None,
              suppress_health_check=[HealthCheck.too_slow, HealthCheck.filter_too_much])
    @given(requests())
    def one(req: tuple[str, str, dict[str, str], bytes | None, str | None]) -> None:
        method, path, query, body, principal = req
        headers = {"Content-Type": "application/json"}
        if principal == "garbage":
            headers["Authorization"] = "Bearer tct_not-a-token"
        elif principal == "bad-scheme":
            headers["Authorization"] = "Token abc"
        elif principal is not None:
            headers.update(api.auth(principal))

        async def go() -> int:
            resp = await api.client.request(method, path, params=query, data=body,
                                            headers=headers)
            await resp.read()
            return resp.status

        status = loop.run_until_complete(go())
        assert status < 500, (method, path, query, body, principal, status)
        sent.append((method, path, status))

    try:
        one()
        loop.run_until_complete(api.client.close())     # flushes, closing the open tallies
        # every request is accounted for (D12): a principal's as its own entry, the others
        # in their (source, minute) tallies; only /healthz is never recorded
        recorded = collections.Counter(r["status"] for r in requests_of(store))
        for t in access_bodies(store):
            if t["type"] == "unauthenticated":
                recorded.update({int(k): v for k, v in t["statuses"].items()})
        assert recorded == collections.Counter(st for _, p, st in sent if p != "/healthz")
        assert len(sent) >= 100
    finally:
        loop.run_until_complete(api.client.close())
        loop.close()
        store.close()
