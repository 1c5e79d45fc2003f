"""Punch reads: filters, cursor pagination, content negotiation (JSON, NDJSON, CSV) and one
punch with its evidence (entry, signature, key, covering checkpoint)."""

from __future__ import annotations

import csv
import io
import json

import pytest

from tests.collector.api_kit import Api
from wire.keys import SigningKey, VerifyKey
from wire.ledger import Checkpoint, SignedCheckpoint
from wire.punch import SignedPunch


async def test_cursor_pages_cover_the_selection_once(api: Api) -> None:
    seen: list[tuple[str, int]] = []
    url = "/v1/punches?limit=3"
    while url:
        page = await (await api.call("GET", url, "hr-reader")).json()
        seen += [(p["device"], p["seq"]) for p in page["items"]]
        url = f"/v1/punches?limit=3&cursor={page['next']}" if page["next"] else ""
    streamed = (await (await api.call("GET", "/v1/punches?format=ndjson", "hr-reader")
                       ).text()).splitlines()
    assert seen == [(json.loads(x)["device"], json.loads(x)["seq"]) for x in streamed]
    assert len(seen) == 10
    assert len(set(seen)) == 10


@pytest.mark.parametrize(("query", "expect"), [
    ("device=clock-01", {("clock-01", s) for s in range(1, 6)}),
    ("site=hq", {("clock-00", s) for s in range(1, 6)}),
    ("credential=em4100:0000000002", {("clock-00", 3), ("clock-01", 3)}),
    ("since=1764140403000000&until=2025-11-26T07:00:05Z",
     {(d, s) for d in ("clock-00", "clock-01") for s in (3, 4)}),
])
async def test_filters(api: Api, query: str, expect: set[tuple[str, int]]) -> None:
    for fmt in ("json", "ndjson", "csv"):
        resp = await api.call("GET", f"/v1/punches?{query}&format={fmt}", "hr-reader")
        text = await resp.text()
        if fmt == "json":
            got = {(p["device"], p["seq"]) for p in json.loads(text)["items"]}
        elif fmt == "ndjson":
            got = {(json.loads(x)["device"], json.loads(x)["seq"]) for x in text.splitlines()}
        else:
            got = {(r["device"], int(r["seq"])) for r in csv.DictReader(io.StringIO(text))}
        assert got == expect, fmt


async def test_content_negotiation(api: Api) -> None:
    resp = await api.call("GET", "/v1/punches", "hr-reader",
                          headers={"Accept": "application/x-ndjson"})
    assert resp.headers["Content-Type"].startswith("application/x-ndjson")
    resp = await api.call("GET", "/v1/punches", "hr-reader", headers={"Accept": "text/csv"})
    assert resp.headers["Content-Type"].startswith("text/csv")
    resp = await api.call("GET", "/v1/punches", "hr-reader", headers={"Accept": "image/png"})
    assert resp.status == 406
    resp = await api.call("GET", "/v1/punches?cursor=bm9wZQ", "hr-reader")
    assert resp.status == 400


async def test_one_punch_with_entry_signature_key_and_checkpoint(api: Api) -> None:
    log_key = SigningKey.generate()
    size, head = api.store.head()
    api.store.add_checkpoint(Checkpoint(log=log_key.key_id, size=size, head=head,
                                        at=api.clock()).sign(log_key))
    doc = await (await api.call("GET", "/v1/punches/clock-01/4", "hr-reader")).json()
    signed = SignedPunch.from_dict(doc["signed"])
    signed.verify(VerifyKey.from_b64(doc["key"]["public"]))
    assert signed.hash() == doc["punch_hash"]
    assert doc["entry"]["entry"]["idx"] == doc["punch"]["ledger_idx"]
    cp = SignedCheckpoint.from_dict(doc["checkpoint"])
    cp.verify(log_key.verify_key)
    assert cp.checkpoint.size > doc["punch"]["ledger_idx"]
    resp = await api.call("GET", "/v1/punches/clock-01/99", "hr-reader")
    assert resp.status == 404
