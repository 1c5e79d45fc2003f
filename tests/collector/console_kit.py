"""Shared data of the console tests (tests/collector/test_console_pages.py and
test_console_browser.py): a small site with a supervisor's team, an employee who punched
"out" for "in", a device status, a certificate index and an evidence pack.

People (directory, Europe/London): ANN (hq), BOB (plant) and DAN (hq) report to SUE (hq);
CAT (plant) reports to nobody. Punches, relative to ``now``: ANN in since 2 h (present),
BOB in and out (5 h / 4 h ago), CAT only an out 26 h ago (a missing-in), DAN pressed out
10 h ago where he meant in, and out 2 h ago (two missing-ins, resolved by correcting the
first to an in), SUE in since 3 h.
"""

from __future__ import annotations

import datetime as dt
import json
from pathlib import Path

from collector.access.directory import Principals
from collector.fleet.pki import CertificateAuthority
from collector.ingest.statuses import StatusTable
from collector.ledger.base import EventFact, RejectionFact
from collector.ledger.sqlbase import SQLStore
from collector.ledger.tables import ensure_schema
from collector.people.csv_import import import_files
from tests.collector.ledger_kit import T0, Clock
from wire.keys import SigningKey, save_signing_key
from wire.topics import status as status_topic

H = 3600 * 1_000_000
CREDENTIALS = {e: f"em4100:{n:010d}" for n, e in enumerate(("ANN", "BOB", "CAT", "DAN", "SUE"),
                                                          start=1)}
EMPLOYEES = """employee_id,name,department,site,timezone,manager_id
SUE,Sue Stone,Operations,hq,Europe/London,
ANN,Ann Archer,Operations,hq,Europe/London,SUE
BOB,Bob Baker,Operations,plant,Europe/London,SUE
CAT,Cat Cooper,Operations,plant,Europe/London,
DAN,Dan Drake,Operations,hq,Europe/London,SUE
"""
BADGES = "credential,employee_id,valid_from,valid_until,status\n" + "".join(
    f"{c},{e},2025-01-01T00:00:00Z,,assigned\n" for e, c in CREDENTIALS.items())
DAN_WRONG = ("clock-01", 3)     # DAN's out that was meant as an in (clock-01 seq 3)


def seed_site(store: SQLStore, tmp: Path, now: int) -> int:
    """The site of the module doc; returns the seeded alert's idx."""
    hq, plant = Clock("clock-01", site="hq"), Clock("clock-02", site="plant")
    c = CREDENTIALS
    store.append([EventFact("device", k.enrolled_body()) for k in (hq, plant)], now_us=T0)
    store.append([hq.fact(credential=c["ANN"], action="in", ts=now - 2 * H),
                  hq.fact(credential=c["SUE"], action="in", ts=now - 3 * H),
                  hq.fact(credential=c["DAN"], action="out", ts=now - 10 * H),
                  hq.fact(credential=c["DAN"], action="out", ts=now - 2 * H)], now_us=T0 + 1)
    store.append([plant.fact(credential=c["BOB"], action="in", ts=now - 5 * H),
                  plant.fact(credential=c["BOB"], action="out", ts=now - 4 * H),
                  plant.fact(credential=c["CAT"], action="out", ts=now - 26 * H)],
                 now_us=T0 + 2)
    (tmp / "e.csv").write_text(EMPLOYEES, encoding="utf-8")
    (tmp / "b.csv").write_text(BADGES, encoding="utf-8")
    import_files(store, tmp / "e.csv", tmp / "b.csv", now_us=T0 + 3)
    store.append([RejectionFact("bad-signature", "test", "timeclock/v1/clock-01/punches",
                                b"{not a punch", now - H, device="clock-01")], now_us=T0 + 4)
    body = {"alert": "grant-change", "severity": 2, "device": None, "principal": "someone",
            "detail": "a grant by someone", "at": now - H}
    return store.append([EventFact("alert", body)], now_us=now - H)[0].idx


def start_access_review(store: SQLStore, reviewer: str, now: int) -> str:
    """An access review of every grant, for ``reviewer`` (who must be a principal)."""
    from collector.access import access_reviews  # noqa: PLC0415 - only some tests

    ensure_schema(store)
    if Principals(store).get(reviewer) is None:
        Principals(store).create_token(reviewer, ["audit.review"], expires_days=30,
                                       actor="cli:test", now_us=now)
    return access_reviews.start(store, reviewer=reviewer, by="cli:test", now_us=now).started.review


def status_table(now: int) -> StatusTable:
    """The service's status table after clock-01 published an online status (queue 3, clock
    synced, sent 1.5 s before the collector received it); clock-02 never did."""
    table = StatusTable()
    status = {"v": 1, "device": "clock-01", "state": "online", "version": "0.1.0",
              "at": now - 61_500_000,
              "queue": {"depth": 3, "oldest_unacked_us": now - 120 * 10**6}, "clock": "synced",
              "readers": {"front": {"kind": "rdm6300", "status": "open", "taps": 4}}}
    table.update(status_topic("clock-01"), json.dumps(status).encode(), now - 60_000_000)
    return table


def ca_with_device_cert(root: Path, now: int) -> Path:
    """A CA directory whose index holds a device certificate of clock-01 (397 days)."""
    at = dt.datetime.fromtimestamp(now / 1e6, dt.UTC)
    ca = CertificateAuthority.init(root / "ca", now=at)
    ca.issue_client("clock-01", root / "clock-01.key", root / "clock-01.crt", kind="device",
                    now=at, days=397)
    return root / "ca"


PACK_FROM, PACK_TO = "2025-11-01T00:00:00Z", "2026-12-31T00:00:00Z"


def make_pack(root: Path, name: str = "pack-2025-11") -> tuple[Path, str, SigningKey]:
    """An evidence pack made by the real ``timeclock-collector evidence`` (no PDF) of a
    small ledger of its own, in the folder ``root/evidence`` the console serves; returns
    (evidence_dir, archive name, log key)."""
    from collector.cli.main import main as collector_main  # noqa: PLC0415 - only here
    from collector.ledger.sqlite import SQLiteStore  # noqa: PLC0415 - as above

    root.mkdir(parents=True, exist_ok=True)
    db = root / "pack-ledger.db"
    store = SQLiteStore(db)
    try:
        seed_site(store, root, T0 + 10**9)
        ensure_schema(store)
    finally:
        store.close()
    key = SigningKey.generate()
    save_signing_key(root / "log.key", key)
    evidence = root / "evidence"
    evidence.mkdir(mode=0o700)
    rc = collector_main(["evidence", "--store", str(db), "--from", PACK_FROM, "--to", PACK_TO,
                         "--out", str(evidence / name), "--log-key", str(root / "log.key"),
                         "--pdf", "off", "--purpose", "console test"])
    assert rc == 0
    return evidence, f"{name}.tar.gz", key
