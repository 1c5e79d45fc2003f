"""Accounted before it leaves (issue 13 item 4, control D12): a read of personal data is on the
ledger before the first byte of its answer; a streamed export has its intent entry first and
its record with the row count after; concurrent reads share commits; a failed commit means
503 and no data; other reads never wait for a commit. Then the real thing: ``serve`` killed
with SIGKILL right after an answer (and right after a stream's first byte) keeps the entry.

Every test here sets a batch flush interval far beyond its own duration (10 s), so an entry
that is on the ledger early was put there by the durable path, not by a lucky flush.
"""

from __future__ import annotations

import asyncio
import json
import os
import signal
import ssl
import subprocess
import sys
import threading
import urllib.error
import urllib.request
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any

import pytest
from aiohttp import web
from aiohttp.test_utils import TestClient, TestServer

from collector import LedgerUnavailableError
from collector.api import ApiSettings, make_app
from collector.api.keys import ACCESS_LOG, CTX
from collector.api.routes import ROUTES
from collector.cli.main import main
from collector.ledger.sqlite import SQLiteStore
from tests.collector.api_kit import FakeClock, issue_tokens, seed
from tests.collector.punch_kit import write_collector_config
from tests.fixtures.mosquitto import MosquittoBroker, free_port
from tests.polling import await_for, wait_for

SLOW_FLUSH = ApiSettings(access_flush_ms=10_000, access_batch_max=1000)
REPO = Path(__file__).resolve().parents[2]

PERSONAL = {"listPunches", "getPunch", "payrollExport", "listCorrections", "getCorrection",
            "listPeople", "getPerson", "getBadge", "getTimesheets", "consoleHr",
            "consoleTimesheets", "consoleTeam", "consoleMe", "consoleEvidencePack"}


def committed_access(path: Path) -> list[dict[str, Any]]:
    """The access bodies another connection sees: committed ones only."""
    other = SQLiteStore(path)
    try:
        return [json.loads(se.body) for se in other.entries()
                if se.entry.kind == "access" and se.body is not None]
    finally:
        other.close()


@dataclass
class Live:
    client: TestClient[Any, Any]
    store: SQLiteStore
    path: Path
    tokens: dict[str, str]
    at_prepare: dict[str, list[dict[str, Any]]]   # request id -> access bodies committed then

    def auth(self, who: str) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.tokens[who]}"}


@pytest.fixture
async def live(sqlite_store: SQLiteStore, sqlite_path: Path) -> AsyncIterator[Live]:
    """The real application with a slow batch flush; a last on_response_prepare hook notes,
    for each request, which access entries are committed when its answer is prepared."""
    seed(sqlite_store)
    clock = FakeClock()
    tokens = issue_tokens(sqlite_store, clock.now)
    app = make_app(sqlite_store, settings=SLOW_FLUSH, clock=clock)
    at_prepare: dict[str, list[dict[str, Any]]] = {}

    async def note(request: web.Request, _response: web.StreamResponse) -> None:
        ctx = request.get(CTX)
        if ctx is not None:
            at_prepare[ctx.record.request_id] = committed_access(sqlite_path)

    app.on_response_prepare.append(note)
    client: TestClient[Any, Any] = TestClient(TestServer(app))
    await client.start_server()
    try:
        yield Live(client, sqlite_store, sqlite_path, tokens, at_prepare)
    finally:
        await client.close()


def of_request(bodies: list[dict[str, Any]], rid: str) -> list[tuple[str, Any, Any]]:
    return [(b["type"], b.get("accounted"), b.get("count")) for b in bodies
            if b.get("request_id") == rid]


def only_request_id(live: Live, path: str) -> str:
    rids = [rid for rid, bodies in live.at_prepare.items()
            if any(b.get("request_id") == rid and b.get("path") == path for b in bodies)]
    assert len(rids) == 1, f"{path}: expected one accounted request, got {rids}"
    return rids[0]


def _is_access(facts: Any) -> bool:
    return bool(facts) and all(getattr(f, "kind", None) == "access" for f in facts)


class FailingCommits:
    """While armed, the store refuses appends of access records as a database that is away
    does (LedgerUnavailableError, nothing appended); every other write goes through."""

    def __init__(self, store: SQLiteStore, monkeypatch: pytest.MonkeyPatch) -> None:
        self.armed = False
        real = store.append

        def append(facts: Any, *, now_us: int) -> Any:
            if self.armed and _is_access(facts):
                raise LedgerUnavailableError("ledger append failed: the database is "
                                             "unavailable: disk I/O error (injected)")
            return real(facts, now_us=now_us)
        monkeypatch.setattr(store, "append", append)


class HeldCommit:
    """The store's next append of access records waits until :meth:`let_go` (a slow disk,
    made deterministic), then commits."""

    def __init__(self, store: SQLiteStore, monkeypatch: pytest.MonkeyPatch) -> None:
        self.inside, self._go, self._armed = threading.Event(), threading.Event(), True
        real = store.append

        def append(facts: Any, *, now_us: int) -> Any:
            if self._armed and _is_access(facts):
                self._armed = False
                self.inside.set()
                if not self._go.wait(60):
                    raise RuntimeError("HeldCommit was never let go")
            return real(facts, now_us=now_us)
        monkeypatch.setattr(store, "append", append)

    def let_go(self) -> None:
        self._go.set()


# -- the route table ---------------------------------------------------------------------------

def test_d12_personal_routes_are_marked_in_the_route_table() -> None:
    marked = {r.name for r in ROUTES if r.personal}
    assert marked == PERSONAL
    assert all(r.method == "GET" and r.roles is not None for r in ROUTES if r.personal)
    proofs = {r.name for r in ROUTES if "proof" in r.path or "checkpoint" in r.path
              or r.roles is None}
    assert proofs.isdisjoint(marked)     # the proof path never waits for a commit


# -- in process: the order, the batch, the failure ---------------------------------------------

async def test_d12_personal_read_is_committed_before_its_answer(live: Live) -> None:
    resp = await live.client.get("/v1/punches?limit=3", headers=live.auth("hr-reader"))
    assert resp.status == 200
    assert len((await resp.json())["items"]) == 3
    rid = only_request_id(live, "/v1/punches")
    # (1) when the answer was prepared, its one record was committed, with status and count
    assert of_request(live.at_prepare[rid], rid) == [("request", "before", 3)]
    # (2) and it stays one record: the batch (flushed at shutdown) does not add it again
    await live.client.server.app[ACCESS_LOG].flush()
    assert of_request(committed_access(live.path), rid) == [("request", "before", 3)]


async def test_d12_stream_has_its_intent_first_and_its_count_after(live: Live) -> None:
    resp = await live.client.get("/v1/punches?format=ndjson",
                                 headers=live.auth("hr-reader"))
    assert resp.status == 200
    rows = (await resp.read()).splitlines()
    assert len(rows) == 10
    rid = only_request_id(live, "/v1/punches")
    assert of_request(live.at_prepare[rid], rid) == [("request-intent", None, None)]
    intent = next(b for b in live.at_prepare[rid] if b.get("request_id") == rid)
    assert (intent["principal"], intent["role"], intent["query"]) == \
        ("hr-reader", "hr.read", {"format": "ndjson"})
    # the stream's record joins the batch once its view returns, which may be just after the
    # client read the last byte (it is the only record this test batches)
    alog = live.client.server.app[ACCESS_LOG]
    await await_for(lambda: alog.pending == 1 or len(of_request(committed_access(live.path),
                                                                rid)) == 2,
                    60, "the stream's record in the batch (or flushed already)")
    await alog.flush()
    assert of_request(committed_access(live.path), rid) == \
        [("request-intent", None, None), ("request", "intent", 10)]


async def test_d12_payroll_export_stream_is_accounted_by_intent(live: Live) -> None:
    resp = await live.client.get("/v1/exports/payroll?format=csv",
                                 headers=live.auth("payroll"))
    assert resp.status == 200
    await resp.read()
    rid = only_request_id(live, "/v1/exports/payroll")
    assert of_request(live.at_prepare[rid], rid) == [("request-intent", None, None)]


async def test_d12_failed_commit_means_503_and_no_data(
        live: Live, monkeypatch: pytest.MonkeyPatch) -> None:
    fail = FailingCommits(live.store, monkeypatch)
    before = len(committed_access(live.path))
    fail.armed = True
    for path in ("/v1/punches?limit=5", "/v1/punches?format=ndjson",
                 "/v1/punches?format=csv", "/v1/people"):
        resp = await live.client.get(path, headers=live.auth("hr-reader"))
        text = await resp.text()
        assert resp.status == 503, f"{path}: {resp.status} {text[:200]}"
        assert resp.headers["Content-Type"].startswith("application/problem+json")
        assert "could not be committed" in json.loads(text)["detail"]
        assert "em4100" not in text                 # no punch data
        assert "clock-0" not in text
    # a read that is not of personal data never waits for a commit: it is still served
    resp = await live.client.get("/v1/devices", headers=live.auth("auditor"))
    assert resp.status == 200
    assert len(committed_access(live.path)) == before
    fail.armed = False
    resp = await live.client.get("/v1/punches?limit=2", headers=live.auth("hr-reader"))
    assert resp.status == 200
    # the refused reads are recorded, as 503s, in the batch
    await live.client.server.app[ACCESS_LOG].flush()
    statuses = [(b["path"], b["status"], b.get("accounted")) for b in
                committed_access(live.path)[before:] if b.get("type") == "request"]
    # (in any order: the last read's record was committed before its answer, the others
    # ride the batch, whenever it flushes)
    assert sorted(statuses) == sorted([("/v1/punches", 200, "before"),
                                       *[("/v1/punches", 503, None)] * 3,
                                       ("/v1/people", 503, None), ("/v1/devices", 200, None)])


async def test_d12_concurrent_personal_reads_share_one_commit(
        live: Live, monkeypatch: pytest.MonkeyPatch) -> None:
    alog = live.client.server.app[ACCESS_LOG]
    commits_before = alog.commits
    held = HeldCommit(live.store, monkeypatch)
    first = asyncio.ensure_future(live.client.get("/v1/punches?limit=1",
                                                  headers=live.auth("hr-reader")))
    assert await asyncio.to_thread(held.inside.wait, 60), "no commit started"
    others = [asyncio.ensure_future(live.client.get(f"/v1/punches?limit={n}",
                                                    headers=live.auth("hr-reader")))
              for n in range(2, 22)]
    # all 20 arrive while the first commit is in flight: they wait for the next one
    await await_for(lambda: alog.waiting == 20, 60, "20 reads waiting for a commit")
    assert not any(t.done() for t in [first, *others])     # no answer before its commit
    held.let_go()
    answers = await asyncio.gather(first, *others)
    assert [a.status for a in answers] == [200] * 21
    assert alog.commits - commits_before == 2               # 21 records, two commits
    limits = sorted(int(b["query"]["limit"]) for b in committed_access(live.path)
                    if b.get("accounted") == "before")
    assert limits == list(range(1, 22))


async def test_d12_non_personal_reads_never_wait_for_a_commit(
        live: Live, monkeypatch: pytest.MonkeyPatch) -> None:
    alog = live.client.server.app[ACCESS_LOG]
    commits_before = alog.commits
    held = HeldCommit(live.store, monkeypatch)
    personal = asyncio.ensure_future(live.client.get("/v1/punches?limit=1",
                                                     headers=live.auth("hr-reader")))
    assert await asyncio.to_thread(held.inside.wait, 60), "no commit started"
    # while that read's commit is held, reads of no personal data are answered
    for path, who in (("/v1/log/checkpoint", "hr-reader"), ("/v1/checkpoints", "auditor"),
                      ("/v1/devices", "ops"), ("/healthz", None)):
        resp = await live.client.get(path, headers=live.auth(who) if who else {})
        assert resp.status in (200, 404), path
    assert not personal.done()
    held.let_go()
    assert (await personal).status == 200
    assert alog.commits - commits_before == 1           # the personal read's, only


# -- the real process, killed ------------------------------------------------------------------

class Serve:
    """``timeclock-collector serve`` as a process of its own, its output in a file."""

    def __init__(self, cfg: Path, log: Path) -> None:
        self._log: IO[bytes] = open(log, "ab")  # noqa: SIM115 - closed in stop()
        self.log_path = log
        self.proc = subprocess.Popen(  # noqa: S603 - our own CLI
            [sys.executable, "-m", "collector.cli.main", "serve", "--config", str(cfg)],
            stdout=self._log, stderr=self._log, stdin=subprocess.DEVNULL, cwd=REPO,
            env={**os.environ, "PYTHONPATH": str(REPO)})

    def output(self) -> str:
        return self.log_path.read_text(encoding="utf-8", errors="replace")

    def kill(self) -> None:
        self.proc.send_signal(signal.SIGKILL)
        self.proc.wait(60)

    def stop(self) -> int:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(60)
            except subprocess.TimeoutExpired:
                self.kill()
        self._log.close()
        return self.proc.returncode


@dataclass
class Site:
    db: Path
    cfg: Path
    log_pub: str
    token: str
    port: int
    tls: ssl.SSLContext
    root: Path

    def serve(self, name: str) -> Serve:
        s = Serve(self.cfg, self.root / f"{name}.log")

        def healthy() -> bool:
            if s.proc.poll() is not None:
                raise AssertionError(f"serve exited {s.proc.returncode}:\n{s.output()[-3000:]}")
            try:
                with urllib.request.urlopen(  # noqa: S310 - our own https URL
                        f"https://127.0.0.1:{self.port}/healthz", context=self.tls,
                        timeout=10) as r:
                    return bool(r.status == 200)
            except (urllib.error.URLError, ConnectionError, TimeoutError):
                return False
        wait_for(healthy, 90, f"{name}: the API answering /healthz")
        return s

    def get(self, path: str) -> Any:
        req = urllib.request.Request(f"https://127.0.0.1:{self.port}{path}",
                                     headers={"Authorization": f"Bearer {self.token}"})
        return urllib.request.urlopen(req, context=self.tls, timeout=30)  # noqa: S310

    def verify(self) -> int:
        return main(["verify", "--store", f"sqlite://{self.db}", "--log-key-pub",
                     self.log_pub])


@pytest.fixture
def site(mosquitto: MosquittoBroker, tmp_path: Path,
         capsys: pytest.CaptureFixture[str]) -> Site:
    db = tmp_path / "ledger.db"
    store = SQLiteStore(db)
    seed(store)                                   # 2 clocks, 10 signed punches
    store.close()
    assert main(["token", "create", "--store", f"sqlite://{db}", "--principal", "pat",
                 "--role", "hr.read", "--expires", "1d"]) == 0
    token = capsys.readouterr().out.split()[-1]
    port = free_port()
    pki = mosquitto.pki
    cfg, log_key = write_collector_config(
        tmp_path / "c", mosquitto, store_url=f"sqlite://{db}",
        extra=f'[api]\ncert = "{pki.server_cert_file}"\nkey = "{pki.server_key_file}"\n'
              f'port = {port}\naccess_flush_ms = 10000\n')
    return Site(db, cfg, log_key.verify_key.b64, token, port,
                ssl.create_default_context(cafile=str(pki.ca_file)), tmp_path)


def recorded(db: Path, **match: Any) -> list[dict[str, Any]]:
    return [b for b in committed_access(db) if all(b.get(k) == v for k, v in match.items())]


@pytest.mark.subprocess
def test_d12_sigkill_right_after_an_answer_keeps_its_access_entry(site: Site) -> None:
    serve = site.serve("killed")
    with site.get("/v1/punches?limit=7") as resp:
        items = json.loads(resp.read())["items"]
    serve.kill()                                  # at once: the batch never flushed
    serve.stop()
    assert len(items) == 7
    again = site.serve("restarted")
    try:
        entries = recorded(site.db, principal="pat", path="/v1/punches",
                           query={"limit": "7"})
        assert [(e["type"], e["status"], e["count"], e["accounted"]) for e in entries] == \
            [("request", 200, 7, "before")]
    finally:
        assert again.stop() == 0, again.output()[-3000:]
    assert site.verify() == 0


@pytest.mark.subprocess
def test_d12_sigkill_after_the_first_byte_of_a_stream_keeps_its_intent(site: Site) -> None:
    serve = site.serve("killed")
    with site.get("/v1/punches?format=ndjson&limit=9") as resp:
        first = resp.read(1)
        serve.kill()                              # mid-stream, as far as the client knows
    serve.stop()
    assert first == b"{"
    again = site.serve("restarted")
    try:
        intents = recorded(site.db, type="request-intent", principal="pat",
                           path="/v1/punches")
        assert [(e["role"], e["query"]) for e in intents] == \
            [("hr.read", {"format": "ndjson", "limit": "9"})]
    finally:
        assert again.stop() == 0, again.output()[-3000:]
    assert site.verify() == 0
