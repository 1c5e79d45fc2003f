"""HR and payroll views: punches (filtered, paged or streamed), one punch with its evidence,
the payroll export, and the correction workflow.

Punch rows come from the store's payroll query (collector.ledger.sqlbase ``PunchQuery`` /
``punch_rows``, shared with collector.records.exports; pages and single punches from
collector.ledger.queries); corrections are overlaid, never written into
the rows: every row shows the original values and, beside them, the effective values with
the ledger idx of the correction entry that set each.

Every view here filters to the caller's scope (collector.access.scopes: its sites, and for
``employee.self``/``supervisor`` its own or its team's punches); an out-of-scope punch or
correction is the same 404 as a missing one.
"""

from __future__ import annotations

import asyncio
import csv
import io
import json
import queue
import threading
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any, TextIO

from aiohttp import web
from multidict import MultiMapping

from collector import ForbiddenError
from collector.access import scopes
from collector.access.principals import stored_scope
from collector.access.scopes import Scope
from collector.api import params as P
from collector.api.errors import BadRequestError, NotAcceptableError, NotFoundError
from collector.api.keys import CLOCK, CORRECTIONS, READER, SETTINGS, STORE, ctx, principal_name
from collector.api.reads import on_reader
from collector.ledger import queries
from collector.ledger.corrections_table import Correction
from collector.ledger.people_tables import BadgeResolver
from collector.ledger.sqlbase import PunchQuery, PunchRow, SQLStore
from collector.records import proofs
from collector.records.corrections import (
    FIELDS,
    REASONS,
    Applied,
    CorrectionNotFoundError,
    Persons,
    check_value,
)
from collector.records.export_fields import (
    SETS,
    FieldsError,
    FieldSet,
    Pseudonyms,
    parse_list,
)
from collector.records.exports import (
    ExportSummary,
    csv_values,
    encode_item,
    latest_checkpoint,
    punch_item,
    select,
    snapshot_rows,
)
from collector.records.payroll_proofs import export_payroll_with_proofs
from wire.errors import WireError
from wire.fields import CREDENTIAL_RE, DEVICE_ID_RE
from wire.grants import DISPUTE_REASON
from wire.punch import SignedPunch

ROWS_PER_CHUNK = 2000
NDJSON_TYPES = ("application/x-ndjson", "application/ndjson", "application/jsonl")
PUNCH_PARAMS = ("since", "until", "site", "device", "credential", "cursor", "limit", "format",
                "field_set", "fields")
PAYROLL_PARAMS = ("since", "until", "site", "device", "format", "proofs", "field_set", "fields")
# Broad roles first: rbac grants the first role the caller holds, and that role's scope
# applies (collector.access.scopes), so an HR reader who is also an employee reads as HR.
PUNCH_READ_ROLES = ("hr.read", "employee.self", "supervisor")
CORRECTION_READ_ROLES = ("hr.correct", "hr.approve", "audit.read", "employee.self",
                         "supervisor")
TEXT_CHUNK = 1 << 16        # bytes of a text producer's output per streamed chunk
TEXT_QUEUE = 8              # chunks a text producer may run ahead of the client


# -- representation -----------------------------------------------------------------------

def negotiate(query: MultiMapping[str], accept: str, *, allowed: tuple[str, ...],
              default: str) -> str:
    fmt = P.choice(query, "format", allowed)
    if fmt is not None:
        return fmt
    for part in (p.split(";")[0].strip().lower() for p in accept.split(",")):
        if part in NDJSON_TYPES and "ndjson" in allowed:
            return "ndjson"
        if part == "text/csv" and "csv" in allowed:
            return "csv"
        if part in ("application/json", "application/*", "*/*", "") and "json" in allowed:
            return "json"
        if part in ("application/json", "application/*", "*/*", ""):
            return default
    raise NotAcceptableError(f"Accept {accept[:100]!r}: this resource is available as "
                             f"{', '.join(allowed)} (or pass ?format=)")


CONTENT_TYPES = {"json": "application/json", "ndjson": "application/x-ndjson",
                 "csv": "text/csv"}


def field_set(request: web.Request) -> FieldSet:
    """``?field_set=`` (default payroll) narrowed by ``?fields=a,b``, checked against the
    principal's roles (403 naming the field and the role it needs); the access entry records
    the fields carried (D20)."""
    q = request.rel_url.query
    principal = ctx(request).principal
    try:
        fs = FieldSet.choose(P.choice(q, "field_set", tuple(SETS)),
                             parse_list(P.string(q, "fields")),
                             roles=() if principal is None else principal.roles)
    except FieldsError as e:
        raise BadRequestError(str(e)) from e
    ctx(request).record.extra.update({"field_set": fs.set_name, "fields": fs.names()})
    return fs


def scope(request: web.Request) -> Scope:
    """The caller's scope for this route (collector.access.scopes); a restricted one is
    noted in the access record."""
    c = ctx(request)
    sc = scopes.scope_for(request.app[STORE], c.principal, c.role,
                          () if c.route is None or c.route.roles is None else c.route.roles)
    if not sc.unrestricted:
        c.record.extra["scope"] = sc.to_dict()
    return sc


async def scope_now(request: web.Request) -> Scope:
    """:func:`scope` without a thread hop unless it reads the directory (a supervisor's
    team): the common unscoped request pays nothing for scopes."""
    if ctx(request).role == "supervisor":
        return await asyncio.to_thread(scope, request)
    return scope(request)


def _holders(store: SQLStore, sc: Scope) -> BadgeResolver:
    """Every badge period when ``sc`` limits persons (each row's holder decides), else none."""
    return BadgeResolver.load(store) if sc.employees is not None else BadgeResolver({})


# -- queries --------------------------------------------------------------------------------

@dataclass(frozen=True)
class PunchFilter:
    query: PunchQuery
    credential: str | None
    cursor: tuple[int, str, int] | None
    limit: int
    stream_limit: int | None = None     # streams are unbounded unless ?limit= is given

    @classmethod
    def parse(cls, q: MultiMapping[str], *, page_max: int) -> PunchFilter:
        cursor = None
        text = P.string(q, "cursor")
        if text is not None:
            v = P.decode_cursor(text)
            ok = (len(v) == 3 and isinstance(v[0], int) and isinstance(v[1], str)
                  and isinstance(v[2], int) and DEVICE_ID_RE.fullmatch(v[1]) is not None
                  and 0 <= v[0] <= 2**53 - 1 and 0 <= v[2] <= 2**53 - 1)
            if not ok:
                raise BadRequestError("cursor: not a cursor returned by this API")
            cursor = (int(v[0]), str(v[1]), int(v[2]))
        query = PunchQuery(since=P.time(q, "since"), until=P.time(q, "until"),
                           site=P.string(q, "site", P.SITE_RE),
                           device=P.string(q, "device", DEVICE_ID_RE))
        limit = P.integer(q, "limit", lo=1, hi=page_max, default=100)
        assert limit is not None  # noqa: S101 - a default was given
        return cls(query, P.string(q, "credential", CREDENTIAL_RE), cursor, limit,
                   limit if "limit" in q else None)

    def page(self, store: SQLStore, sc: Scope = scopes.UNRESTRICTED) -> list[PunchRow]:
        if sc.unrestricted:
            return queries.punch_page(store, self.query, limit=self.limit,
                                      credential=self.credential, after=self.cursor)
        return scopes.page(
            lambda n, after: queries.punch_page(store, self.query, limit=n,
                                                credential=self.credential, after=after),
            sc.rows(_holders(store, sc)), limit=self.limit, after=self.cursor,
            cursor_of=lambda r: (r.ts, r.device, r.seq))

    def stream(self, store: SQLStore) -> Iterator[PunchRow]:
        q = self.query
        if self.cursor is not None and (q.since is None or q.since < self.cursor[0]):
            q = PunchQuery(since=self.cursor[0], until=q.until, site=q.site, device=q.device)
        n = 0
        for r in store.punch_rows(q):
            if self.credential is not None and r.credential != self.credential:
                continue
            if self.cursor is not None and (r.ts, r.device, r.seq) <= self.cursor:
                continue
            if self.stream_limit is not None and n >= self.stream_limit:
                return
            n += 1
            yield r


# -- streaming ------------------------------------------------------------------------------

class Counter:
    n = 0


def encode_rows(rows: Iterator[PunchRow], fmt: str, fixed: dict[tuple[str, int],
                dict[str, Applied]], counter: Counter, *, head: bytes = b"",
                tail: Any = None, holders: BadgeResolver, fields: FieldSet,
                pseudonyms: Pseudonyms | None = None) -> Iterator[bytes]:
    """Byte chunks of ``rows`` as NDJSON or CSV (runs in a worker thread), each row with only
    ``fields``; ``holders`` resolves each row's badge (every badge period, loaded once
    before the first row)."""
    buf = io.StringIO()
    writer = csv.writer(buf, lineterminator="\n") if fmt == "csv" else None
    if head:
        yield head
    if writer is not None:
        writer.writerow(fields.columns())
    n = 0
    for r in rows:
        item = punch_item(r, fixed.get((r.device, r.seq)) if fixed else None,
                          holders.resolve(r.credential, r.ts), pseudonyms)
        if writer is not None:
            writer.writerow(csv_values(item, fields))
        else:
            buf.write(encode_item(select(item, fields)))
            buf.write("\n")
        n += 1
        if n % ROWS_PER_CHUNK == 0:
            counter.n = n
            yield buf.getvalue().encode()
            buf.seek(0)
            buf.truncate()
    counter.n = n
    if tail is not None:
        buf.write(tail())
    if buf.tell():
        yield buf.getvalue().encode()


async def stream(request: web.Request, fmt: str, chunks: Iterator[bytes],
                 headers: dict[str, str] | None = None) -> web.StreamResponse:
    resp = web.StreamResponse(headers={"Content-Type": CONTENT_TYPES[fmt] + (
        "; charset=utf-8" if fmt == "csv" else ""), **(headers or {})})
    resp.enable_chunked_encoding()
    loop = asyncio.get_running_loop()
    try:
        first = await loop.run_in_executor(None, next, chunks, None)
        ctx(request).streaming = True
        await resp.prepare(request)
        chunk = first
        while chunk is not None:
            await resp.write(chunk)
            chunk = await loop.run_in_executor(None, next, chunks, None)
    finally:
        close = getattr(chunks, "close", None)
        if close is not None:
            await loop.run_in_executor(None, close)
    await resp.write_eof()
    return resp


# -- views ----------------------------------------------------------------------------------

async def list_punches(request: web.Request) -> web.StreamResponse:
    """GET /v1/punches: JSON pages with a cursor, or the whole selection streamed."""
    store, corr = request.app[STORE], request.app[CORRECTIONS]
    q = request.rel_url.query
    fmt = negotiate(q, request.headers.get("Accept", ""), allowed=("json", "ndjson", "csv"),
                    default="json")
    f = PunchFilter.parse(q, page_max=request.app[SETTINGS].page_max)
    fs = field_set(request)
    sc = await scope_now(request)
    if fmt == "json":
        rows = await asyncio.to_thread(f.page, store, sc)
        fixed = await asyncio.to_thread(corr.applied, {(r.device, r.seq) for r in rows})
        page_holders = await asyncio.to_thread(BadgeResolver.load, store,
                                               {r.credential for r in rows})
        pseudonyms = request.app[SETTINGS].pseudonyms
        items = [select(punch_item(r, fixed.get((r.device, r.seq)),
                                   page_holders.resolve(r.credential, r.ts), pseudonyms), fs)
                 for r in rows]
        nxt = None
        if len(rows) == f.limit:
            last = rows[-1]
            nxt = P.encode_cursor([last.ts, last.device, last.seq])
        ctx(request).record.count = len(items)
        return web.json_response({"items": items, "next": nxt})
    fixed_all = await asyncio.to_thread(corr.applied_complete)
    holders = await asyncio.to_thread(BadgeResolver.load, store)
    counter = Counter()
    keep = sc.rows(holders)
    selected = f.stream(store) if sc.unrestricted else (r for r in f.stream(store) if keep(r))
    try:
        return await stream(request, fmt, encode_rows(selected, fmt, fixed_all, counter,
                                                      holders=holders, fields=fs,
                                                      pseudonyms=request.app[SETTINGS]
                                                      .pseudonyms))
    finally:
        ctx(request).record.count = counter.n


async def get_punch(request: web.Request) -> web.Response:
    """GET /v1/punches/{device}/{seq}: the punch, its ledger entry, signature, key and the
    latest checkpoint covering it, and its corrections."""
    store, corr = request.app[STORE], request.app[CORRECTIONS]
    device = request.match_info["device"]
    seq_text = request.match_info["seq"]
    if not DEVICE_ID_RE.fullmatch(device) or not seq_text.isdigit() or len(seq_text) > 16:
        raise NotFoundError(f"no punch {device[:80]}#{seq_text[:20]}")
    seq = int(seq_text)
    sc = await scope_now(request)

    def load() -> dict[str, Any]:
        found = store.punch_hash(device, seq)
        if found is None:
            raise NotFoundError(f"no recorded punch {device}#{seq}")
        phash, idx = found
        r = queries.punch_row(store, device, seq)
        if r is None or not sc.row_ok(store, r):
            raise NotFoundError(f"no recorded punch {device}#{seq}")
        se = next(store.entries(idx, idx + 1))
        signed: dict[str, Any] | None = None
        if se.body is not None:
            try:
                signed = SignedPunch.from_bytes(se.body).to_dict()
            except WireError:
                signed = None
        key = next((k for k in store.keys(device) if k.key_id == r.key_id), None)
        cps = [c for c in store.checkpoints() if c.checkpoint.size > idx]
        cp = max(cps, key=lambda c: (c.checkpoint.size, c.checkpoint.at), default=None)
        fixed = corr.applied({(device, seq)}).get((device, seq))
        return {
            "punch": punch_item(r, fixed, BadgeResolver.load(store, [r.credential]).resolve(
                r.credential, r.ts)), "signed": signed, "punch_hash": phash,
            "entry": {"entry": se.entry.to_dict(), "hash": se.hash},
            "key": None if key is None else {"key": key.key_id, "public": key.public_b64,
                                              "from_seq": key.from_seq,
                                              "until_seq": key.until_seq,
                                              "status": key.status,
                                              "registered_idx": key.registered_idx},
            "checkpoint": None if cp is None else cp.to_dict(),
            "corrections": [c.to_dict() for c in corr.find(device=device, seq=seq,
                                                           limit=1000)],
        }

    doc = await asyncio.to_thread(load)
    ctx(request).record.count = 1
    return web.json_response(doc)


async def punch_proof(request: web.Request) -> web.Response:
    """GET /v1/punches/{device}/{seq}/proof: entry, leaf index, inclusion proof and the
    newest v2 checkpoint covering the punch (collector.records.proofs)."""
    device = request.match_info["device"]
    seq_text = request.match_info["seq"]
    if not DEVICE_ID_RE.fullmatch(device) or not seq_text.isdigit() or len(seq_text) > 16:
        raise NotFoundError(f"no punch {device[:80]}#{seq_text[:20]}")
    size = P.integer(request.rel_url.query, "size", lo=1, hi=2**53 - 1)
    sc = await scope_now(request)
    if not sc.unrestricted:
        await asyncio.to_thread(_in_scope, request, sc, device, int(seq_text))
    doc = await on_reader(request.app, proofs.punch_proof, request.app[READER], device,
                          int(seq_text), size=size)
    ctx(request).record.count = 1
    return web.json_response(doc)


def _in_scope(request: web.Request, sc: Scope, device: str, seq: int) -> PunchRow | None:
    """The punch ``device#seq`` when scope ``sc`` holds it (None: there is no such punch);
    an out-of-scope punch raises the 404 of a missing one."""
    store = request.app[STORE]
    r = queries.punch_row(store, device, seq)
    if r is not None and not sc.row_ok(store, r):
        raise NotFoundError(f"no recorded punch {device}#{seq}")
    return r


async def payroll_export(request: web.Request) -> web.StreamResponse:
    """GET /v1/exports/payroll: collector.records.exports's payroll extract (header, rows, trailer),
    streamed, with the corrected values and their correction idx beside the originals."""
    store, corr, clock = request.app[STORE], request.app[CORRECTIONS], request.app[CLOCK]
    q = request.rel_url.query
    fmt = negotiate(q, request.headers.get("Accept", ""), allowed=("ndjson", "csv"),
                    default="ndjson")
    query = PunchQuery(since=P.time(q, "since"), until=P.time(q, "until"),
                       site=P.string(q, "site", P.SITE_RE),
                       device=P.string(q, "device", DEVICE_ID_RE))
    fs = field_set(request)
    sc = await scope_now(request)
    if P.choice(q, "proofs", ("0", "1")) == "1":
        if fmt != "ndjson":
            raise BadRequestError("proofs=1 needs format=ndjson (CSV rows carry no proofs)")
        if not sc.unrestricted:
            raise ForbiddenError(f"{principal_name(request)} is limited to sites or persons: "
                                 f"proofs=1 exports are for principals of every site (export "
                                 f"without proofs; ask an auditor for a punch's proof)")
        return await _payroll_with_proofs(request, query, fs)

    def prepare() -> tuple[ExportSummary, dict[tuple[str, int], dict[str, Applied]],
                           BadgeResolver]:
        size, head = store.head()
        summary = ExportSummary(query, size, head, latest_checkpoint(store, size))
        return summary, corr.applied_complete(), BadgeResolver.load(store)

    summary, fixed, holders = await asyncio.to_thread(prepare)
    pseudonyms = request.app[SETTINGS].pseudonyms
    header = summary.header(generated_at=clock(), fmt=fmt, fields=fs,
                            pseudonyms=pseudonyms is not None)
    header["requested_by"] = principal_name(request)
    if not sc.unrestricted:
        header["scope"] = sc.to_dict()
    def tail() -> str:
        t = json.dumps({"trailer": summary.trailer()}, sort_keys=True)
        return ("# " + t if fmt == "csv" else t) + "\n"

    h = json.dumps({"header": header}, sort_keys=True)
    head = (("# " + h) if fmt == "csv" else h) + "\n"
    counter = Counter()
    try:
        rows = snapshot_rows(store, summary, None if sc.unrestricted else sc.rows(holders))
        return await stream(request, fmt, encode_rows(rows, fmt, fixed, counter,
                                                      head=head.encode(), tail=tail,
                                                      holders=holders, fields=fs,
                                                      pseudonyms=pseudonyms),
                            {"Content-Disposition": f"attachment; filename=payroll.{fmt}"})
    finally:
        ctx(request).record.count = counter.n


async def _payroll_with_proofs(request: web.Request, query: PunchQuery, fields: FieldSet
                               ) -> web.StreamResponse:
    """The payroll export that carries proofs (collector.records.payroll_proofs, docs/
    protocol.md §13.3): bounded by the newest v2 checkpoint, its note in the header, each
    row's entry, body and inclusion path; streamed as it is written."""
    store, corr, clock = request.app[STORE], request.app[CORRECTIONS], request.app[CLOCK]
    fixed = await asyncio.to_thread(corr.applied_complete)
    counter = Counter()

    def produce(out: TextIO) -> None:
        summary = export_payroll_with_proofs(store, out, query=query, now_us=clock(),
                                             corrections=fixed, fields=fields,
                                             pseudonyms=request.app[SETTINGS].pseudonyms)
        counter.n = summary.rows

    try:
        return await stream(request, "ndjson", text_chunks(produce),
                            {"Content-Disposition": "attachment; filename=payroll.ndjson"})
    finally:
        ctx(request).record.count = counter.n


class _Cancelled(Exception):
    """The client went away: the producer stops at its next write."""


def text_chunks(produce: Callable[[TextIO], object]) -> Iterator[bytes]:
    """Byte chunks of what ``produce`` writes to a text stream, as it writes them.

    ``produce`` runs in a thread of its own and may run at most TEXT_QUEUE chunks ahead; an
    error it raises is raised here (before the first chunk, it becomes a problem response).
    Closing the iterator (the client went away) stops the producer at its next write."""
    chunks: queue.Queue[bytes | BaseException | None] = queue.Queue(maxsize=TEXT_QUEUE)
    cancel = threading.Event()

    def put(item: bytes | BaseException | None) -> None:
        while not cancel.is_set():
            try:
                chunks.put(item, timeout=0.2)
                return
            except queue.Full:
                continue

    class Writer(io.StringIO):
        def write(self, s: str) -> int:
            if cancel.is_set():
                raise _Cancelled
            n = super().write(s)
            if self.tell() >= TEXT_CHUNK:
                put(self.getvalue().encode("utf-8"))
                self.seek(0)
                self.truncate()
            return n

    def run() -> None:
        w = Writer()
        try:
            produce(w)
            if w.tell():
                put(w.getvalue().encode("utf-8"))
            put(None)
        except _Cancelled:
            return
        except BaseException as e:  # handed to the consumer, which raises it
            put(e)

    threading.Thread(target=run, name="text-export", daemon=True).start()
    try:
        while True:
            item = chunks.get()
            if item is None:
                return
            if isinstance(item, BaseException):
                raise item
            yield item
    finally:
        cancel.set()


# -- corrections ----------------------------------------------------------------------------

async def list_corrections(request: web.Request) -> web.Response:
    q = request.rel_url.query
    status = P.choice(q, "status", ("proposed", "approved", "rejected"))
    device = P.string(q, "device", DEVICE_ID_RE)
    cursor = P.string(q, "cursor")
    if cursor is not None and (len(cursor) > 40 or not cursor.startswith("cor-")):
        raise BadRequestError("cursor: not a cursor returned by this API")
    limit = P.integer(q, "limit", lo=1, hi=request.app[SETTINGS].page_max, default=100) or 100
    corr = request.app[CORRECTIONS]

    def load() -> list[Correction]:
        sc = scope(request)
        if sc.unrestricted:
            return corr.find(status=status, device=device, after=cursor, limit=limit)
        return scopes.page(
            lambda n, after: corr.find(status=status, device=device, after=after, limit=n),
            lambda c: _correction_ok(request, sc, c), limit=limit, after=cursor,
            cursor_of=lambda c: c.id)

    items = await asyncio.to_thread(load)
    ctx(request).record.count = len(items)
    nxt = items[-1].id if len(items) == limit else None
    return web.json_response({"items": [c.to_dict() for c in items], "next": nxt,
                              "reasons": REASONS})


def _cid(request: web.Request) -> str:
    cid = request.match_info["id"]
    if len(cid) > 40 or not cid.startswith("cor-"):
        raise NotFoundError(f"no correction {cid[:40]!r}")
    return cid


def _correction_ok(request: web.Request, sc: Scope, c: Correction) -> bool:
    """Whether the punch ``c`` corrects is in the caller's scope ``sc``."""
    if sc.unrestricted:
        return True
    store = request.app[STORE]
    r = queries.punch_row(store, c.device, c.seq)
    return r is not None and sc.row_ok(store, r)


def _scoped_correction(request: web.Request, cid: str) -> Correction:
    """Correction ``cid`` if the caller's scope holds its punch; else the 404 of a missing
    one."""
    c = request.app[CORRECTIONS].get(cid)
    if not _correction_ok(request, scope(request), c):
        raise CorrectionNotFoundError(f"no correction {cid[:40]!r}")
    return c


def _subject(request: web.Request, device: str, seq: int) -> str | None:
    """The employee who held the badge of punch ``device#seq`` at punch time."""
    store = request.app[STORE]
    r = queries.punch_row(store, device, seq)
    return None if r is None else scopes.holder_of(store, r)


async def get_correction(request: web.Request) -> web.Response:
    c = await asyncio.to_thread(_scoped_correction, request, _cid(request))
    ctx(request).record.count = 1
    return web.json_response(c.to_dict())


async def propose_correction(request: web.Request) -> web.Response:
    body = await P.json_body(request, required=("device", "seq", "field", "after", "reason"),
                             optional=("note", "before"),
                             max_bytes=request.app[SETTINGS].body_max_bytes)
    device = P.field_str(body, "device", max_len=63, pattern=DEVICE_ID_RE)
    seq = P.field_int(body, "seq", lo=1, hi=2**53 - 1)
    field = P.field_str(body, "field", max_len=10)
    if field not in FIELDS:
        raise BadRequestError(f"field: one of {', '.join(FIELDS)}")
    reason = P.field_str(body, "reason", max_len=40)
    note = P.field_str(body, "note", default="")
    c = await propose(request, device=device, seq=seq, field=field, after=body["after"],
                      reason=reason, note=note, before=body.get("before"))
    return web.json_response(c.to_dict(), status=201,
                             headers={"Location": f"/v1/corrections/{c.id}"})


async def propose(request: web.Request, *, device: str, seq: int, field: str, after: Any,
                  reason: str, note: str, before: Any = None) -> Correction:
    """A proposal by the caller under the rules of ``POST /v1/corrections`` (scope, the
    employee's dispute, collector.records.corrections); the console's form calls it too."""
    after = check_value(field, after)
    if before is not None:
        check_value(field, before)
    editor = principal_name(request)
    me = ctx(request).principal
    if ctx(request).role == "employee.self" and reason != DISPUTE_REASON:
        raise ForbiddenError(f"{editor} (employee.self) may only dispute their own punches: "
                             f"reason {DISPUTE_REASON}")

    def run() -> Correction:
        store = request.app[STORE]
        r = queries.punch_row(store, device, seq)
        if r is None or not scope(request).row_ok(store, r):
            raise CorrectionNotFoundError(f"no recorded punch {device}#{seq}")
        persons = Persons(subject=_subject(request, device, seq),
                          editor=None if me is None else me.employee_id)
        return request.app[CORRECTIONS].propose(
            device=device, seq=seq, field=field, after=after, reason=reason, note=note,
            before=before, editor=editor, now_us=request.app[CLOCK](), persons=persons)

    c = await asyncio.to_thread(run)
    rec = ctx(request).record
    rec.count = 1
    rec.extra["proposal"] = c.id
    return c


async def _decide(request: web.Request, approve: bool) -> web.Response:
    cid = _cid(request)
    rec = ctx(request).record
    rec.extra = {"proposal": cid}
    body = await P.json_body(request, required=(), optional=("note",),
                             max_bytes=request.app[SETTINGS].body_max_bytes)
    note = P.field_str(body, "note", default="")
    c = await decide(request, cid, approve=approve, note=note)
    return web.json_response(c.to_dict())


async def decide(request: web.Request, cid: str, *, approve: bool, note: str) -> Correction:
    """Approve or reject proposal ``cid`` as the caller under the rules of ``POST
    /v1/corrections/{id}/approve`` (scope, disputes, the three-person rule of
    collector.records.corrections); the console's form calls it too."""
    rec = ctx(request).record
    rec.extra["proposal"] = cid
    me, role = ctx(request).principal, ctx(request).role

    def run() -> Correction:
        c = _scoped_correction(request, cid)
        if role == "supervisor" and c.reason == DISPUTE_REASON:
            raise ForbiddenError(f"correction {cid} is an employee's dispute: HR decides "
                                 f"disputes (hr.approve), not supervisors")
        persons = Persons(subject=_subject(request, c.device, c.seq),
                          editor=stored_scope(request.app[STORE], c.editor).employee,
                          approver=None if me is None else me.employee_id)
        return request.app[CORRECTIONS].decide(cid, approve=approve,
                                               approver=principal_name(request), note=note,
                                               now_us=request.app[CLOCK](), persons=persons)

    c = await asyncio.to_thread(run)
    rec.count = 1
    if c.correction_idx is not None:
        rec.extra["correction_idx"] = c.correction_idx
    return c


async def approve_correction(request: web.Request) -> web.Response:
    return await _decide(request, True)


async def reject_correction(request: web.Request) -> web.Response:
    return await _decide(request, False)
