"""The collector as a client of external witnesses (DESIGN.md §8.3, C2SP tlog-witness).

Configured as ``[[witnesses]]`` tables (:func:`parse_witnesses`)::

    [[witnesses]]
    url = "https://witness.auditor.example:8443"   # POST <url>/add-checkpoint
    name = "auditor.example/witness"
    key = "auditor.example/witness+1a2b3c4d+BAb..."  # the witness's vkey (type 0x04)
    ca_cert = "/etc/timeclock/auditor-ca.crt"       # optional: else the system trust store

:class:`ExternalWitnesses` posts each new checkpoint (:meth:`offer`, the newest wins) to every
witness from a worker thread: ``old <size>``, the RFC 9162 consistency proof from the size that
witness last cosigned (``SQLStore.consistency_proof``) and the note as the log key signed it.

  200: (1) the cosignature line named for the witness verifies under its configured key over
  the checkpoint sent, then it is stored (collector.ledger.checkpoint_tables.add_cosignature)
  and that size becomes the witness's; 409 (``text/x.tlog.size``): the witness holds another
  size: ask again once, with a proof from that size; a witness that holds a larger size than
  the checkpoint offered has cosigned a larger log than this one (truncated?) and is a
  critical alert; 422 (the witness finds the log inconsistent) too; any other answer or a
  network error is a warning, and the next checkpoint tries again.

Invariants: nothing a witness returns is stored unless it verified; the size a witness is
believed to hold comes from stored cosignatures or from the witness itself; requests time out
(``timeout_s``), so a dead witness never holds up ingest (it runs on its own thread).
"""

from __future__ import annotations

import logging
import re
import threading
import urllib.error
import urllib.request
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from collector import LedgerError
from collector.ingest.alerts import SEVERITY_CRITICAL, SEVERITY_WARNING, Alerts
from collector.ledger import checkpoint_tables
from collector.ledger.sqlbase import SQLStore
from wire.clock import now_us
from wire.config import Section
from wire.errors import WireError
from wire.note import COSIGNATURE_V1, Note, NoteSignature, NoteVerifier
from wire.tls import https_client_context
from wire.witness import AddCheckpoint

log = logging.getLogger("timeclock.witnesses")

SIZE_CONTENT_TYPE = "text/x.tlog.size"
MAX_RESPONSE_BYTES = 64 * 1024
_SIZE_RE = re.compile(r"(0|[1-9][0-9]{0,15})\n")


@dataclass(frozen=True, slots=True)
class WitnessEndpoint:
    """One external witness: where it listens, its cosignature key, whom to trust for TLS."""

    url: str
    verifier: NoteVerifier
    ca_cert: Path | None = None
    timeout_s: float = 10.0

    @property
    def name(self) -> str:
        return self.verifier.name


def parse_witnesses(value: object, base: Path, problems: list[str]
                    ) -> tuple[WitnessEndpoint, ...]:
    """The ``[[witnesses]]`` array of tables (absent: none); problems are appended."""
    if value is None:
        return ()
    if not isinstance(value, list):
        problems.append("witnesses: expected [[witnesses]] tables")
        return ()
    out: list[WitnessEndpoint] = []
    names: set[str] = set()
    for i, table in enumerate(value):
        s = Section(f"witnesses[{i}]", table, problems)
        url = s.string("url", required=True, hint="https://host:port")
        name = s.string("name", required=True)
        vkey = s.string("key", required=True, hint="the witness's vkey, name+id+base64")
        ca = s.path("ca_cert", base)
        timeout = s.number("timeout_s", 10.0, lo=0.1, hi=300.0)
        s.finish()
        if url is not None and not url.startswith("https://"):
            s.problem("url", f"{url[:80]!r}: witnesses are reached over https:// only")
            url = None
        verifier = None
        if vkey is not None:
            try:
                verifier = NoteVerifier.from_vkey(vkey)
            except WireError as e:
                s.problem("key", str(e))
        if verifier is not None and (verifier.kind != COSIGNATURE_V1 or verifier.name != name):
            s.problem("key", f"must be a cosignature/v1 (type 0x04) key named {name!r}")
            verifier = None
        if name is not None and name in names:
            s.problem("name", f"{name!r} is listed twice")
            verifier = None
        if name is not None:
            names.add(name)
        if url is not None and verifier is not None:
            out.append(WitnessEndpoint(url.rstrip("/"), verifier, ca, timeout))
    return tuple(out)


@dataclass(frozen=True, slots=True)
class Answer:
    status: int
    body: str
    content_type: str


def post_add_checkpoint(ep: WitnessEndpoint, body: bytes) -> Answer:
    """One HTTPS ``POST <url>/add-checkpoint``; OSError (and URLError) on network failure."""
    ctx = https_client_context(ep.ca_cert)
    req = urllib.request.Request(f"{ep.url}/add-checkpoint", data=body,  # noqa: S310 -- https only (parse_witnesses)
                                 method="POST", headers={"Content-Type": "text/plain"})
    try:
        with urllib.request.urlopen(req, context=ctx, timeout=ep.timeout_s) as r:  # noqa: S310 -- https only
            data = r.read(MAX_RESPONSE_BYTES + 1)
            return Answer(r.status, data.decode("utf-8", "replace"),
                          r.headers.get("Content-Type", ""))
    except urllib.error.HTTPError as e:
        data = e.read(MAX_RESPONSE_BYTES + 1)
        return Answer(e.code, data.decode("utf-8", "replace"),
                      e.headers.get("Content-Type", "") if e.headers else "")


class ExternalWitnesses:
    """Asks every configured witness to cosign each new checkpoint (see the module doc)."""

    def __init__(self, store: SQLStore, endpoints: tuple[WitnessEndpoint, ...], *,
                 alerts: Alerts | None = None,
                 post: Callable[[WitnessEndpoint, bytes], Answer] = post_add_checkpoint,
                 clock: Callable[[], int] = now_us) -> None:
        self.store = store
        self.endpoints = endpoints
        self.alerts = alerts if alerts is not None else Alerts()
        self._post = post
        self._clock = clock
        self._sizes: dict[str, int] = {}
        self._pending: checkpoint_tables.StoredCheckpoint | None = None
        self._cond = threading.Condition()
        self._stopping = False
        self._busy = False
        self._thread: threading.Thread | None = None
        self.cosigned: dict[str, int] = {}      # witness -> largest size it cosigned for us

    # -- lifecycle ----------------------------------------------------------------------------
    def start(self) -> None:
        if not self.endpoints or self._thread is not None:
            return
        self._thread = threading.Thread(target=self._run, name="witness-client", daemon=True)
        self._thread.start()

    def stop(self, timeout_s: float = 15.0) -> None:
        with self._cond:
            self._stopping = True
            self._cond.notify_all()
        if self._thread is not None:
            self._thread.join(timeout_s)

    def offer(self, cp: checkpoint_tables.StoredCheckpoint) -> None:
        """Ask the witnesses to cosign ``cp`` (cheap; replaces any checkpoint not yet sent)."""
        if not self.endpoints:
            return
        with self._cond:
            if self._pending is None or cp.size >= self._pending.size:
                self._pending = cp
            self._cond.notify_all()

    def wait_idle(self, timeout_s: float) -> bool:
        """True once nothing is pending or being sent (for tests and shutdown)."""
        with self._cond:
            return self._cond.wait_for(lambda: self._pending is None and not self._busy,
                                       timeout_s)

    def _run(self) -> None:
        while True:
            with self._cond:
                self._cond.wait_for(lambda: self._stopping or self._pending is not None)
                if self._stopping:
                    return
                cp, self._pending = self._pending, None
                self._busy = True
            try:
                if cp is not None:
                    self.send(cp)
            except Exception:   # top of a long-running loop: the next checkpoint tries again
                log.exception("asking the witnesses to cosign failed")
            finally:
                with self._cond:
                    self._busy = False
                    self._cond.notify_all()

    # -- one round ----------------------------------------------------------------------------
    def _held(self, ep: WitnessEndpoint) -> int:
        if ep.name not in self._sizes:
            rows = self.store.query("SELECT MAX(size) FROM tc_cosignatures WHERE name = ?",
                                    (ep.name,))
            self._sizes[ep.name] = int(rows[0][0]) if rows and rows[0][0] is not None else 0
        return self._sizes[ep.name]

    def send(self, cp: checkpoint_tables.StoredCheckpoint) -> dict[str, str]:
        """Ask every witness now (on the calling thread); return witness -> outcome."""
        note = _log_note(cp)
        out: dict[str, str] = {}
        for ep in self.endpoints:
            try:
                out[ep.name] = self._ask(ep, cp, note, self._held(ep), retry=True)
            except (OSError, LedgerError, WireError) as e:
                out[ep.name] = "error"
                log.warning("witness %s (%s): %s", ep.name, ep.url, e)
        return out

    def _ask(self, ep: WitnessEndpoint, cp: checkpoint_tables.StoredCheckpoint, note: str,
             old: int, *, retry: bool) -> str:
        proof = [] if old > cp.size else self.store.consistency_proof(old, cp.size)
        answer = self._post(ep, AddCheckpoint(old, tuple(proof), note).to_bytes())
        if answer.status == 200:
            return self._cosigned(ep, cp, answer.body)
        if answer.status == 409 and answer.content_type.split(";")[0].strip() == \
                SIZE_CONTENT_TYPE and (m := _SIZE_RE.fullmatch(answer.body)):
            held = int(m.group(1))
            self._sizes[ep.name] = held
            if held > cp.size:
                self._alarm(ep, cp, f"the witness has cosigned size {held}, larger than this "
                            f"ledger's newest checkpoint (size {cp.size}): was the ledger "
                            "truncated?")
                return "refused"
            if retry and held != old:
                return self._ask(ep, cp, note, held, retry=False)
        if answer.status in (409, 422) or (answer.status == 400 and old > cp.size):
            self._alarm(ep, cp, f"HTTP {answer.status}: {answer.body.strip()[:200]}")
            return "refused"
        self.alerts.alert("witness-error", severity=SEVERITY_WARNING, device=None,
                          detail=f"witness {ep.name} ({ep.url}) answered HTTP {answer.status} "
                                 f"to size {cp.size}: {answer.body.strip()[:200]}")
        return "error"

    def _alarm(self, ep: WitnessEndpoint, cp: checkpoint_tables.StoredCheckpoint,
               why: str) -> None:
        self.alerts.alert("witness-refusal", severity=SEVERITY_CRITICAL, device=None,
                          detail=f"witness {ep.name} REFUSES to cosign size {cp.size}: {why}")

    def _cosigned(self, ep: WitnessEndpoint, cp: checkpoint_tables.StoredCheckpoint,
                  body: str) -> str:
        # (1) the line named for the witness, verified under its configured key
        lines = [ln for ln in body.split("\n") if ln]
        for text in lines:
            try:
                sig = NoteSignature.from_line(text)
            except WireError:
                continue
            if not ep.verifier.matches(sig):
                continue
            cp.checkpoint.verify_cosignature(Note(cp.checkpoint.body_text(), (sig,)),
                                             ep.verifier)
            checkpoint_tables.add_cosignature(self.store, cp.size, text, ep.name, sig.key_id,
                                              self._clock())
            self._sizes[ep.name] = cp.size
            self.cosigned[ep.name] = max(self.cosigned.get(ep.name, 0), cp.size)
            log.info("witness %s cosigned checkpoint size %d", ep.name, cp.size)
            return "cosigned"
        self.alerts.alert("witness-error", severity=SEVERITY_WARNING, device=None,
                          detail=f"witness {ep.name} answered 200 without a cosignature "
                                 f"by its configured key for size {cp.size}")
        return "error"


def _log_note(cp: checkpoint_tables.StoredCheckpoint) -> str:
    """The note with only the log's signature (what a witness needs; small)."""
    note = Note.from_text(cp.note)
    own = tuple(s for s in note.signatures if s.name == cp.checkpoint.origin)
    return Note(note.body, own).to_text()
