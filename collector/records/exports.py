"""Exports from a ledger store: the audit bundle (DESIGN.md §6, §8.2) and payroll extracts.

Both stream: entries and punches are read a page (or a server-side cursor batch) at a time
and written as they come; nothing is materialised. Both are bounded by the ledger size at the
start of the export, so a concurrent append never makes a file disagree with its own header.

A payroll extract is evidence an auditor can test (AT-C 205.36): it names its query, its
ledger snapshot (size and head), the latest signed checkpoint and how many rows it covers,
and ends with the row count and each device's seq range.
"""

from __future__ import annotations

import csv
import dataclasses
import gc
import io
import itertools
import json
import multiprocessing
import operator
import os
import re
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any, TextIO

from collector import CollectorError, KeyringError, LedgerError
from collector.ledger import checkpoint_tables, readers
from collector.ledger.people_tables import BadgeResolver
from collector.ledger.row_check import ProjectionError
from collector.ledger.sqlbase import PunchQuery, PunchRow, SQLStore
from collector.records.export_fields import DEFAULT, FieldSet, Pseudonyms
from wire.bundle import write_bundle
from wire.errors import WireError
from wire.keys import VerifyKey
from wire.ledger import SignedCheckpoint

if TYPE_CHECKING:
    from collector.records.corrections import Applied

FORMATS = ("csv", "ndjson")
COLUMNS = ("device", "site", "seq", "credential", "action", "device_time", "device_time_us",
           "clock", "recorded_at", "recorded_at_us", "ledger_idx", "entry_hash")
EXTRA_COLUMNS = ("reader", "key", "effective_action", "effective_device_time",
                 "effective_device_time_us", "correction_idx", "badge_pseudonym",
                 "employee_id", "badge_status")
PUNCH_COLUMNS = (*COLUMNS, *EXTRA_COLUMNS)     # every column (the investigation set)
CORRECTIONS_NOTE = ("original values in action/device_time; effective_* hold the values after "
                    "approved corrections, correction_idx their ledger entries (the punch "
                    "entry itself is ledger_idx)")
EMPLOYEES_NOTE = ("employee_id: who held the badge at device time per the people directory "
                  "when exported (badge_status assigned); null with badge_status lost, "
                  "blocked or unknown")
PSEUDONYM_NOTE = ("badge_pseudonym: for a row with no employee, bp1: and 16 hex digits of "
                  "HMAC-SHA256 under the ledger's pseudonym key over the badge credential "
                  "(docs/api.md 'Export fields'); the same badge, the same value")
NO_PSEUDONYM_NOTE = "badge_pseudonym: null in every row (no pseudonym key was given)"
Fixed = Mapping[tuple[str, int], Mapping[str, "Applied"]]
Holder = tuple[str | None, str]     # (employee_id, badge_status): people_tables.BadgeResolver


class ExportError(CollectorError):
    """An export could not be written (bad query, existing bundle, I/O error)."""


def parse_time(text: str) -> int:
    """µs since the epoch from an integer or an ISO 8601 time with a UTC offset (or ``Z``)."""
    if re.fullmatch(r"-?\d+", text):
        return int(text)
    try:
        dt = datetime.fromisoformat(text.replace("Z", "+00:00").replace("z", "+00:00"))
    except ValueError as e:
        raise ExportError(f"{text!r} is neither µs since the epoch nor an ISO 8601 time") from e
    if dt.tzinfo is None:
        raise ExportError(f"{text!r} has no UTC offset; add Z or +hh:mm (payroll spans "
                          f"time zones and DST changes)")
    delta = dt - datetime(1970, 1, 1, tzinfo=UTC)
    return (delta.days * 86_400 + delta.seconds) * 1_000_000 + delta.microseconds


def iso(us: int) -> str:
    secs, frac = divmod(us, 1_000_000)
    return datetime.fromtimestamp(secs, UTC).strftime("%Y-%m-%dT%H:%M:%S") + f".{frac:06d}Z"


class _Iso:
    """``exports.iso`` with the text up to the minute ("YYYY-MM-DDTHH:MM:") memoised per
    minute and the seconds taken from a table: ``strftime`` per row dominated a stream's
    cost, and a payroll file's rows come in device-time order, so a minute's rows share one
    memo entry. Same text as :func:`iso`. :func:`row_renderer` inlines :meth:`__call__`
    (``heads``, :meth:`head`, ``SECONDS``)."""

    SECONDS = tuple(f"{s:02d}." for s in range(60))

    def __init__(self) -> None:
        self.heads: dict[int, str] = {}     # minute since the epoch → "YYYY-MM-DDTHH:MM:"

    def __call__(self, us: int) -> str:
        minute, rest = divmod(us, 60_000_000)
        head = self.heads.get(minute) or self.head(minute)
        return (head + self.SECONDS[rest // 1_000_000] + str(rest % 1_000_000 + 1_000_000)[1:]
                + "Z")

    def head(self, minute: int) -> str:
        if len(self.heads) > 4096:
            self.heads.clear()
        text = iso(minute * 60_000_000)
        head = self.heads[minute] = text[:text.index("T") + 7]
        return head


_iso = _Iso()
encode_item = json.JSONEncoder(ensure_ascii=False).encode   # keys are built in sorted order


def punch_item(r: PunchRow, fixed: Mapping[str, Applied] | None, holder: Holder,
               pseudonyms: Pseudonyms | None = None) -> dict[str, Any]:
    """A punch as the API shows it: the columns of collector.records.exports (original values) plus
    reader, key, its corrections and the effective values, and who held the badge at device
    time (``holder``, resolved when read: ``employee_id`` and ``badge_status``) or, when it is
    nobody, the badge's keyed ``badge_pseudonym`` (with ``pseudonyms``). Keys in sorted
    order."""
    device_time = _iso(r.ts)
    if fixed:
        ts = fixed["ts"].value if "ts" in fixed else r.ts
        effective = {"action": fixed["action"].value if "action" in fixed else r.action,
                     "device_time": _iso(ts), "device_time_us": ts}
        corrections = {f: a.to_dict() for f, a in sorted(fixed.items())}
    else:
        effective = {"action": r.action, "device_time": device_time, "device_time_us": r.ts}
        corrections = {}
    pseudonym = (pseudonyms.of(r.credential) if pseudonyms is not None and holder[0] is None
                 else None)
    return {"action": r.action, "badge_pseudonym": pseudonym, "badge_status": holder[1],
            "clock": r.clock,
            "corrections": corrections, "credential": r.credential, "device": r.device,
            "device_time": device_time, "device_time_us": r.ts, "effective": effective,
            "employee_id": holder[0], "entry_hash": r.entry_hash,
            "key": r.key_id, "ledger_idx": r.idx, "reader": r.reader,
            "recorded_at": _iso(r.at), "recorded_at_us": r.at, "seq": r.seq, "site": r.site}


def select(item: dict[str, Any], fields: FieldSet) -> dict[str, Any]:
    """``item`` with only the fields of ``fields`` (D20: minimum necessary); keys sorted."""
    return {k: item[k] for k in sorted(fields.fields)}


def csv_values(item: dict[str, Any], fields: FieldSet | None = None) -> list[Any]:
    """The CSV row of a full ``item`` (:func:`punch_item`): the columns of ``fields``
    (None: every column, PUNCH_COLUMNS)."""
    eff = item["effective"]
    idxs = ";".join(str(c["correction_idx"]) for c in item["corrections"].values())
    flat = {**item, "effective_action": eff["action"],
            "effective_device_time": eff["device_time"],
            "effective_device_time_us": eff["device_time_us"], "correction_idx": idxs}
    return [flat[c] for c in (PUNCH_COLUMNS if fields is None else fields.columns())]


def flat_row(r: PunchRow, holder: Holder, pseudonyms: Pseudonyms | None,
             null: Any = None) -> tuple[Any, ...]:
    """:func:`csv_values` of an uncorrected row's :func:`punch_item` over PUNCH_COLUMNS, built
    directly (no intermediate dicts: the payroll CSV's per-row path); ``null`` stands for
    an absent value (the CSV writes "")."""
    device_time = _iso(r.ts)
    pseudonym = (pseudonyms.of(r.credential) if pseudonyms is not None and holder[0] is None
                 else null)
    employee = holder[0]
    return (r.device, r.site, r.seq, r.credential, r.action, device_time, r.ts, r.clock,
            _iso(r.at), r.at, r.idx, r.entry_hash, r.reader, r.key_id, r.action, device_time,
            r.ts, "", pseudonym, null if employee is None else employee, holder[1])


def csv_picker(fields: FieldSet) -> Callable[[tuple[Any, ...]], Sequence[Any]]:
    """The CSV columns of ``fields`` out of a :func:`flat_row` tuple."""
    idxs = [PUNCH_COLUMNS.index(c) for c in fields.columns()]
    if len(idxs) == 1:
        only = idxs[0]
        return lambda t: (t[only],)
    pick: Callable[[tuple[Any, ...]], Sequence[Any]] = operator.itemgetter(*idxs)
    return pick


@dataclass
class ExportSummary:
    query: PunchQuery
    size: int                                  # ledger size the export is bounded by
    head: str
    checkpoint: SignedCheckpoint | None        # latest checkpoint within the snapshot
    rows: int = 0
    uncovered: int = 0                         # rows beyond the checkpoint (not yet signed)
    seq_ranges: dict[str, list[int]] = field(default_factory=dict)   # device -> [min, max]

    def header(self, *, generated_at: int, fmt: str, fields: FieldSet = DEFAULT,
               pseudonyms: bool = False) -> dict[str, Any]:
        cp = self.checkpoint
        return {
            "export": "timeclock payroll v1", "format": fmt, "generated_at": iso(generated_at),
            "query": {"since": self.query.since, "until": self.query.until,
                      "site": self.query.site, "device": self.query.device,
                      "time": "device time (ts), since inclusive, until exclusive",
                      "order": "device time, device, seq"},
            "ledger": {"size": self.size, "head": self.head},
            "checkpoint": None if cp is None else cp.to_dict(),
            "columns": list(fields.columns() if fmt == "csv" else fields.fields),
            "field_set": fields.set_name,
            "corrections": CORRECTIONS_NOTE,
            "employees": EMPLOYEES_NOTE,
            "pseudonyms": PSEUDONYM_NOTE if pseudonyms else NO_PSEUDONYM_NOTE,
        }

    def trailer(self) -> dict[str, Any]:
        cp_size = 0 if self.checkpoint is None else self.checkpoint.checkpoint.size
        return {"rows": self.rows, "covered_by_checkpoint": self.rows - self.uncovered,
                "checkpoint_size": cp_size, "uncovered": self.uncovered,
                "seq_ranges": {d: r for d, r in sorted(self.seq_ranges.items())}}


def latest_checkpoint(store: SQLStore, size: int) -> SignedCheckpoint | None:
    cps = [c for c in store.checkpoints() if c.checkpoint.size <= size]
    return max(cps, key=lambda c: (c.checkpoint.size, c.checkpoint.at), default=None)


def snapshot_rows(store: SQLStore, summary: ExportSummary,
                  keep: Callable[[PunchRow], bool] | None = None,
                  source: Iterable[PunchRow] | None = None) -> Iterator[PunchRow]:
    """The punches of ``summary.query`` recorded within the snapshot (idx < size), counting
    rows, rows beyond the checkpoint and each device's seq range into ``summary`` (the counts
    when the iteration ends).
    ``keep``: the caller's scope (collector.access.scopes); the trailer then counts only the
    rows it keeps, so an extract says nothing of the rows outside it. ``source``: the query's
    rows already being read (SQLStore.punch_chunks), else ``store.punch_rows``."""
    cp_size = 0 if summary.checkpoint is None else summary.checkpoint.checkpoint.size
    size, ranges = summary.size, summary.seq_ranges
    rows = uncovered = 0
    try:
        for r in store.punch_rows(summary.query) if source is None else source:
            if r.idx >= size:
                continue        # appended after the snapshot: belongs to the next export
            if keep is not None and not keep(r):
                continue
            rows += 1
            if r.idx >= cp_size:
                uncovered += 1
            seq = r.seq
            rng = ranges.get(r.device)
            if rng is None:
                ranges[r.device] = [seq, seq]
            elif seq < rng[0]:
                rng[0] = seq
            elif seq > rng[1]:
                rng[1] = seq
            yield r
    finally:
        summary.rows += rows
        summary.uncovered += uncovered


CHUNK_ROWS = 2_000      # rows of one worker's chunk (≈ 0.5 MB of CSV held until written)
JOBS_MAX = 4            # worker processes an export uses at most (``jobs=0``: one per CPU)


def default_jobs() -> int:
    """Worker processes for an export: the CPUs this process may run on, at most JOBS_MAX."""
    return max(1, min(JOBS_MAX, len(os.sched_getaffinity(0))))


def row_renderer(fmt: str, fields: FieldSet, corrections: Fixed | None,
                 pseudonyms: Pseudonyms | None, holders: BadgeResolver
                 ) -> Callable[[PunchRow], str]:
    """The text of one row of the payroll file (CSV line or NDJSON line, newline included).

    CSV: an uncorrected row is one ``str.format`` of its columns, kept only when it is what
    ``csv.writer`` writes (no field needs quoting: no comma, quote or line break, and more
    than one column); any other row is written by ``csv.writer``."""
    resolve = holders.resolve
    if fmt != "csv":
        def ndjson(r: PunchRow) -> str:
            fixed = corrections.get((r.device, r.seq)) if corrections else None
            item = punch_item(r, fixed, resolve(r.credential, r.ts), pseudonyms)
            return encode_item(select(item, fields)) + "\n"
        return ndjson
    buf = io.StringIO()
    writer = csv.writer(buf, lineterminator="\n")
    pick = csv_picker(fields)
    positions = [PUNCH_COLUMNS.index(c) for c in fields.columns()]
    # The columns straight out of the flat_row tuple: "{0},{1},{2},{4},…\n".
    template = ",".join(f"{{{i}}}" for i in positions) + "\n"
    commas = len(positions) - 1
    single = commas < 1     # csv.writer writes a lone empty field as ""

    def by_writer(values: Sequence[Any]) -> str:
        buf.seek(0)
        buf.truncate()
        writer.writerow(values)
        return buf.getvalue()

    # The per-row path, inlined (one frame per row): flat_row's tuple built here, the two
    # times by _iso's memo of minutes, the holder's lookup, then one str.format.
    fixes = corrections or None
    pseudonym_of = None if pseudonyms is None else pseudonyms.of
    heads, head_of, seconds = _iso.heads, _iso.head, _Iso.SECONDS

    def line(r: PunchRow) -> str:
        if fixes is not None:
            fixed = fixes.get((r[0], r[2]))
            if fixed:
                return by_writer(csv_values(punch_item(r, fixed, resolve(r[3], r[5]),
                                                       pseudonyms), fields))
        ts, at = r[5], r[9]
        employee, status = resolve(r[3], ts)
        minute = ts // 60_000_000
        rest = ts - minute * 60_000_000
        device_time = ((heads.get(minute) or head_of(minute)) + seconds[rest // 1_000_000]
                       + str(rest % 1_000_000 + 1_000_000)[1:] + "Z")
        minute = at // 60_000_000
        rest = at - minute * 60_000_000
        recorded = ((heads.get(minute) or head_of(minute)) + seconds[rest // 1_000_000]
                    + str(rest % 1_000_000 + 1_000_000)[1:] + "Z")
        if employee is None:
            pseudonym = "" if pseudonym_of is None else pseudonym_of(r[3])
            employee = ""
        else:
            pseudonym = ""
        flat = (r[0], r[1], r[2], r[3], r[4], device_time, ts, r[6], recorded, at, r[10],
                r[11], r[7], r[8], r[4], device_time, ts, "", pseudonym, employee, status)
        text = template.format(*flat)
        if (single or text.count(",") != commas or '"' in text or "\r" in text
                or text.find("\n") != len(text) - 1 or "None" in text):
            return by_writer(pick(flat))    # a field to quote, or one absent (None)
        return text

    return line


def export_payroll(store: SQLStore, out: TextIO, *, fmt: str, query: PunchQuery,
                   now_us: int, corrections: Fixed | None = None,
                   fields: FieldSet = DEFAULT, pseudonyms: Pseudonyms | None = None,
                   jobs: int = 1) -> ExportSummary:
    """Write one row per recorded punch matching ``query`` to ``out`` as CSV or NDJSON.

    Each row carries only ``fields`` (collector.records.export_fields; default: the payroll
    set, which holds no credential).

    Each row shows the original values and, beside them, the effective values after the
    approved ``corrections`` with the ledger idx of each correction entry (the same
    representation as the API's payroll export).
    CSV: ``#`` comment lines carry the header and trailer (as JSON), then a column row.
    NDJSON: a ``{"header":…}`` line, one object per punch, a ``{"trailer":…}`` line.

    ``jobs``: worker processes that check and format rows side by side (0: one per CPU,
    :func:`default_jobs`); the file is the same byte for byte whatever the number (see
    :func:`_parallel_write`). One process when the store cannot be opened again by a child
    (a PKCS#11 KEK: collector.ledger.readers.forkable) or the export is small.
    """
    if fmt not in FORMATS:
        raise ExportError(f"format {fmt!r}: use one of {', '.join(FORMATS)}")
    if jobs < 0:
        raise ExportError(f"jobs {jobs}: use 0 (one per CPU) or a positive number")
    size, head = store.head()
    summary = ExportSummary(query, size, head, latest_checkpoint(store, size))
    header = summary.header(generated_at=now_us, fmt=fmt, fields=fields,
                            pseudonyms=pseudonyms is not None)
    if fmt == "csv":
        out.write("# " + json.dumps({"header": header}, sort_keys=True) + "\n")
        csv.writer(out, lineterminator="\n").writerow(fields.columns())
    else:
        out.write(json.dumps({"header": header}, sort_keys=True) + "\n")
    holders = BadgeResolver.load(store)       # one query: each row is a lookup in memory
    render = row_renderer(fmt, fields, corrections, pseudonyms, holders)
    jobs = default_jobs() if jobs == 0 else jobs
    reopenable = readers.forkable(store)
    chunks = _chunks(store, query) if jobs > 1 and reopenable else []
    if len(chunks) > 1:
        _parallel_write(store, summary, chunks, render, jobs, out=out)
    else:
        write = out.write
        for text in _one_process_text(store, summary, render, reopenable=reopenable):
            write(text)
    trailer = summary.trailer()
    if fmt == "csv":
        out.write("# " + json.dumps({"trailer": trailer}, sort_keys=True) + "\n")
    else:
        out.write(json.dumps({"trailer": trailer}, sort_keys=True) + "\n")
    return summary


def _one_process_text(store: SQLStore, summary: ExportSummary,
                      render: Callable[[PunchRow], str], *, reopenable: bool) -> Iterator[str]:
    """The rendered rows of ``summary.query``, read here. Through a reader of its own where
    the store can be opened again: a key cache for the whole export, filled a month at a
    time (readers.prefetch_keys)."""
    reader = readers.fresh_reader(store) if reopenable else store
    try:
        if reader is not store:
            readers.prefetch_keys(reader, summary.query, set())
        yield from map(render, snapshot_rows(reader, summary))
    finally:
        if reader is not store:
            reader.close()


def _chunks(store: SQLStore, query: PunchQuery) -> list[PunchQuery]:
    """``query`` cut by device time into runs of about CHUNK_ROWS rows, in export order."""
    cuts = readers.ts_splits(store, query, CHUNK_ROWS)
    bounds = [query.since, *cuts, query.until]
    return [dataclasses.replace(query, since=a, until=b)
            for a, b in itertools.pairwise(bounds)]


def _parallel_write(store: SQLStore, summary: ExportSummary, chunks: Sequence[PunchQuery],
                    render: Callable[[PunchRow], str], jobs: int, *, out: TextIO) -> None:
    """Write the rendered rows of ``chunks`` to ``out`` in order, chunk k made by worker
    k mod ``jobs``.

    Each worker is a forked child with its own store (collector.ledger.readers.fresh_reader)
    that checks every row against the chain exactly as one process would
    (collector.ledger.row_check) and sends, through its own pipe, each chunk's counts (a
    small pickled tuple) and then its text as UTF-8 bytes (``send_bytes``: no pickled copy
    of the text); this process adds the counts to ``summary`` and writes each chunk as it
    arrives, so it holds one chunk at a time. Every chunk is bounded by the same snapshot
    size (idx < summary.size), so the file holds the rows one process would have written. A
    worker's error (a row that fails its check, a missing key) stops the export with that
    error; the workers are stopped. A worker holds at most the chunk it is sending (it
    blocks on its pipe until this process reads it)."""
    ctx = multiprocessing.get_context("fork")
    procs, pipes = [], []
    write = out.write
    try:
        for w in range(jobs):
            recv, send = ctx.Pipe(duplex=False)
            proc = ctx.Process(target=_worker, name=f"timeclock-export-{w}", daemon=True,
                               args=(send, store, summary, chunks[w::jobs], render))
            proc.start()
            send.close()
            procs.append(proc)
            pipes.append(recv)
        ranges = summary.seq_ranges
        for k in range(len(chunks)):
            pipe = pipes[k % jobs]
            try:
                msg = pipe.recv()
                if msg[0] == "error":
                    raise _ERRORS.get(msg[1], ExportError)(msg[2])
                _, rows, uncovered, seqs, size = msg
                data = pipe.recv_bytes()
            except EOFError:
                procs[k % jobs].join(5)
                code = procs[k % jobs].exitcode
                raise ExportError(f"export worker {k % jobs} ended without its chunk "
                                  f"(exit code {code}); nothing more is exported") from None
            if len(data) != size:
                raise ExportError(f"export worker {k % jobs} sent {len(data)} bytes for a "
                                  f"chunk of {size}; nothing more is exported")
            summary.rows += rows
            summary.uncovered += uncovered
            for device, (low, high) in seqs.items():
                rng = ranges.get(device)
                if rng is None:
                    ranges[device] = [low, high]
                else:
                    rng[0], rng[1] = min(rng[0], low), max(rng[1], high)
            write(data.decode("utf-8"))
            del data
    finally:
        for recv in pipes:
            recv.close()
        for proc in procs:
            if proc.is_alive():
                proc.terminate()
            proc.join()


def _worker(send: Any, store: SQLStore, summary: ExportSummary,
            chunks: Sequence[PunchQuery], render: Callable[[PunchRow], str]) -> None:
    """One export worker (a forked child): its chunks' counts and text, or its error.
    Before each chunk it drops the data keys of the months that chunk starts after
    (readers.forget_months: its chunks come in device-time order) and unwraps those of the
    months it spans (readers.prefetch_keys), so it holds about one month of keys."""
    # The objects inherited from the parent (badge table, corrections, the imported
    # modules) into the permanent generation: a full collection in this child would
    # otherwise write to each one's GC header and copy every page they share.
    gc.freeze()
    try:
        reader = readers.fresh_reader(store)
        months: set[str] = set()
        run_keys: dict[bytes, bytes | None] = {}
        # One connection, snapshot and row checker for all this worker's chunks.
        for q, rows in zip(chunks, reader.punch_chunks(chunks, run_keys=run_keys),
                           strict=True):
            readers.forget_months(reader, run_keys, months, q.since)
            readers.prefetch_keys(reader, q, months, run_keys)
            part = ExportSummary(q, summary.size, summary.head, summary.checkpoint)
            data = _chunk_text(part, rows, render).encode()
            send.send(("chunk", part.rows, part.uncovered, part.seq_ranges, len(data)))
            send.send_bytes(data)
            del data
        reader.close()
    except CollectorError as e:
        send.send(("error", type(e).__name__, str(e)))
    except Exception as e:  # noqa: BLE001 - reported to the parent, which raises it
        send.send(("error", "ExportError", f"export worker failed: {type(e).__name__}: {e}"))
    finally:
        send.close()


def _chunk_text(part: ExportSummary, rows: Iterable[PunchRow],
                render: Callable[[PunchRow], str]) -> str:
    """The rendered rows of one worker's chunk, counted into ``part``: what
    ``"".join(map(render, snapshot_rows(…, part, source=rows)))`` gives, in one loop (no
    generator between the checked rows and their text: the per-row cost of a worker)."""
    cp_size = 0 if part.checkpoint is None else part.checkpoint.checkpoint.size
    size, ranges = part.size, part.seq_ranges
    lines: list[str] = []
    append = lines.append
    uncovered = 0
    for r in rows:
        idx = r[10]
        if idx >= size:
            continue        # appended after the snapshot: belongs to the next export
        if idx >= cp_size:
            uncovered += 1
        seq = r[2]
        rng = ranges.get(r[0])
        if rng is None:
            ranges[r[0]] = [seq, seq]
        elif seq < rng[0]:
            rng[0] = seq
        elif seq > rng[1]:
            rng[1] = seq
        append(render(r))
    part.rows += len(lines)
    part.uncovered += uncovered
    return "".join(lines)


_ERRORS: dict[str, type[CollectorError]] = {
    "ProjectionError": ProjectionError, "LedgerError": LedgerError,
    "KeyringError": KeyringError, "ExportError": ExportError}


def export_bundle(store: SQLStore, directory: Path, log_keys: Iterable[VerifyKey], *,
                  sign: Callable[[int], object] | None = None) -> int:
    """Write the audit bundle of the whole ledger into ``directory``; returns entries written.

    Besides the files of DESIGN.md §6 it writes ``checkpoints.v2.ndjson`` (§8.2): one
    ``{"note": <note text with every signature line>}`` per v2 checkpoint within the bundle,
    in size order. When the newest does not cover the bundle's last entry, ``sign(size)``
    (given by a caller holding the log key) first makes a checkpoint of the bundle's size;
    without it the file holds what is stored, and :func:`v2_covered` says whether it covers.
    A ledger without any v2 checkpoint (and no ``sign``) gives a v1 bundle without the file.
    """
    size, _ = store.head()
    checkpoint_tables.ensure_schema(store)
    newest = checkpoint_tables.newest(store, at_most=size)
    if size > 0 and sign is not None and (newest is None or newest.size < size):
        sign(size)
    cps = [c for c in store.checkpoints() if c.checkpoint.size <= size]
    # A ledger from before v2 checkpoints (none stored): a v1 bundle, without the v2 file.
    notes = [c.note for c in checkpoint_tables.all_checkpoints(store, at_most=size)]
    entries = ((se.entry, se.hash, se.body) for se in store.entries(0, size))
    try:
        return write_bundle(directory, entries, cps, log_keys, notes=notes or None)
    except WireError as e:
        raise ExportError(f"audit bundle: {e}") from e


def v2_covered(store: SQLStore, size: int) -> bool:
    """Does a stored v2 checkpoint cover a bundle of ``size`` entries (size 0: trivially)?"""
    newest = checkpoint_tables.newest(store, at_most=size)
    return size == 0 or (newest is not None and newest.size == size)
