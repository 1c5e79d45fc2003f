"""What the console's ops and compliance pages read besides the ledger (issue 16 item 2):
the running service's device statuses, the CA's certificate index, the evidence packs made
by ``timeclock-collector evidence`` and the access reviews.

Sources (each optional; a missing one is shown as "unknown", never guessed):
- device statuses: the service's in-memory StatusTable (collector.ingest.statuses; the
  retained ``timeclock/v1/devices/{id}/status`` messages the clocks publish), handed to the
  API by ``serve`` (ApiSettings.statuses). Telemetry, not evidence;
- certificates: ``index.json`` of the CA directory ``[api] ca_dir`` (collector.fleet.pki),
  re-read only when its mtime changes;
- evidence packs: the ``*.tar.gz`` archives in ``[api] evidence_dir`` whose name is a plain
  file name, with the manifest of the pack folder beside each (period, ledger size, whether
  the store verified). The console serves the archive as made: it never rebuilds or edits a
  pack, so the manifest's signature by the log key is the one ``timeclock-verify
  --evidence`` checks.

Invariants: a source that cannot be read makes its columns "unknown" and adds a warning on
the page; it never fails the page.
"""

from __future__ import annotations

import datetime as dt
import json
import os
import re
import threading
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, cast

from collector.access import access_reviews
from collector.api.console_rows import progress_of
from collector.fleet.devices import DeviceRow, StatusReading, fleet_rows
from collector.fleet.pki import INDEX, IndexEntry
from collector.ingest.statuses import StatusRow
from collector.ledger.base import DeviceProgress
from collector.ledger.sqlbase import SQLStore

PACK_NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,120}\.tar\.gz$")
PACKS_LISTED = 50           # newest packs on the compliance page
REVIEWS_LISTED = 20         # newest access reviews on the compliance page
US = 1_000_000


@dataclass(frozen=True, slots=True)
class FleetLine:
    """One clock of the ops page: the fleet row and what the status adds to it."""

    row: DeviceRow
    status_age_s: int | None        # since the collector received the clock's last status
    offset_s: float | None          # the clock's time minus the collector's at receipt
    status_error: str | None        # the last status message did not parse


class CertIndex:
    """The CA's ``index.json``, cached by mtime (a page view does not parse it again)."""

    def __init__(self, ca_dir: Path | None) -> None:
        self.path = None if ca_dir is None else ca_dir / INDEX
        self._lock = threading.Lock()
        self._mtime: int | None = None
        self._entries: list[IndexEntry] = []

    def entries(self) -> tuple[list[IndexEntry], str | None]:
        """The index's entries and a problem reading it (None: read, or not configured)."""
        if self.path is None:
            return [], None
        try:
            mtime = self.path.stat().st_mtime_ns
            with self._lock:
                if mtime != self._mtime:
                    data = json.loads(self.path.read_text(encoding="utf-8"))
                    self._entries = [IndexEntry.from_dict(d) for d in data["certs"]]
                    self._mtime = mtime
                return list(self._entries), None
        except (OSError, ValueError, KeyError, TypeError) as e:
            return [], f"certificate index {self.path}: unreadable ({type(e).__name__})"


def fleet_lines(store: SQLStore, *, now_us: int, certs: CertIndex,
                statuses: Callable[[], Mapping[str, StatusRow]] | None
                ) -> tuple[list[FleetLine], list[str]]:
    """The ops page's fleet: collector.fleet.devices.fleet_rows with the statuses and
    certificates the collector holds, and the problems of its sources."""
    problems: list[str] = []
    entries, problem = certs.entries()
    if problem is not None:
        problems.append(problem)
    got: Mapping[str, StatusRow] = {} if statuses is None else statuses()
    readings: dict[str, StatusReading] = {
        d: (r.status if r.status is not None else r.error or "unreadable")
        for d, r in got.items()}
    lines = []
    memo = cast(SQLStore, _Progress(store, now_us))
    for row in fleet_rows(memo, now_us=now_us, certs=entries, statuses=readings):
        st = got.get(row.device)
        age = offset = None
        if st is not None:
            age = max(0, (now_us - st.received_at) // US)
            if st.status is not None and st.status.at is not None:
                offset = (st.status.at - st.received_at) / US
        lines.append(FleetLine(row, age, offset,
                               None if st is None or st.status is not None else st.error))
    if statuses is None:
        problems.append("device statuses: this API runs without the ingest service (online, "
                        "queue and clock sync are unknown)")
    if certs.path is None:
        problems.append("certificate expiry: [api] ca_dir is not set")
    return lines, problems


class _Progress:
    """``store`` for collector.fleet.devices.fleet_rows, whose per-clock progress (a window
    over every punch of the clock: the page's one costly read) is kept and brought up to
    date from the punches recorded since (collector.api.console_rows.ProgressWindow)."""

    def __init__(self, store: SQLStore, now_us: int) -> None:
        self._store, self._now = store, now_us

    def progress(self, device: str) -> DeviceProgress:
        return progress_of(self._store, device)

    def __getattr__(self, name: str) -> Any:
        return getattr(self._store, name)


# ---- evidence packs ---------------------------------------------------------------------

@dataclass(frozen=True, slots=True)
class PackInfo:
    name: str                   # the archive's file name
    size_bytes: int
    period_from: str | None     # from the pack folder's manifest.json, when beside it
    period_to: str | None
    generated_at: str | None
    ledger_size: int | None
    verified: bool | None


def _manifest(folder: Path) -> dict[str, Any] | None:
    try:
        data = json.loads((folder / "manifest.json").read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    return data if isinstance(data, dict) else None


def packs(evidence_dir: Path | None) -> list[PackInfo]:
    """The newest :data:`PACKS_LISTED` packs of ``evidence_dir`` (by name, newest first)."""
    if evidence_dir is None:
        return []
    try:
        names = sorted((n for n in os.listdir(evidence_dir) if PACK_NAME_RE.fullmatch(n)),
                       reverse=True)[:PACKS_LISTED]
    except OSError:
        return []
    out = []
    for n in names:
        path = evidence_dir / n
        try:
            st = path.stat()
        except OSError:
            continue
        if not path.is_file():
            continue
        m = _manifest(evidence_dir / n[: -len(".tar.gz")]) or {}
        ledger = m.get("ledger") if isinstance(m.get("ledger"), dict) else {}
        out.append(PackInfo(n, st.st_size, m.get("from"), m.get("to"), m.get("generated_at"),
                            ledger.get("size") if ledger else None, m.get("verified")))
    return out


def pack_file(evidence_dir: Path | None, name: str) -> Path | None:
    """The archive ``name`` of ``evidence_dir`` (a plain file name, no path), or None."""
    if evidence_dir is None or not PACK_NAME_RE.fullmatch(name):
        return None
    path = evidence_dir / name
    return path if path.is_file() else None


# ---- access reviews ---------------------------------------------------------------------

def access_review_rows(store: SQLStore) -> list[dict[str, Any]]:
    """The newest :data:`REVIEWS_LISTED` access reviews: who reviews, how many grants are
    decided, kept and revoked, and the sign-off."""
    found = access_reviews.reviews(store.query)
    out = []
    for st in sorted(found.values(), key=lambda s: s.start_idx, reverse=True)[:REVIEWS_LISTED]:
        decisions = [d for _, d in st.decisions.values()]
        out.append({"review": st.started.review, "reviewer": st.started.reviewer,
                    "started_by": st.started.by, "started_at": st.at, "status": st.status,
                    "grants": len(st.started.grants), "undecided": len(st.undecided()),
                    "revoked": sum(1 for d in decisions if d.decision == "revoke"),
                    "signed_by": None if st.signed is None else st.signed[2].by,
                    "signed_at": None if st.signed is None else st.signed[1]})
    return out


def iso_day(us: int | None) -> str:
    if us is None:
        return "–"
    return dt.datetime.fromtimestamp(us / US, dt.UTC).strftime("%Y-%m-%d")
