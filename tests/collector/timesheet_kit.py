"""A small ledger for timesheet tests: two employees in two time zones, an overnight shift
across the spring DST change, a pressed-in-for-out punch corrected (approved by a second
person), and a badge held by nobody."""

from __future__ import annotations

from datetime import datetime
from pathlib import Path
from zoneinfo import ZoneInfo

from collector.ledger.base import EventFact
from collector.ledger.sqlite import SQLiteStore
from collector.ledger.tables import ensure_schema
from collector.people.csv_import import import_files
from collector.records.corrections import Corrections
from tests.collector.ledger_kit import T0, Clock

BERLIN, NEW_YORK = "Europe/Berlin", "America/New_York"
EMPLOYEES = """employee_id,name,department,site,timezone,manager_id
E1,Ada Lovelace,Operations,hq,Europe/Berlin,
E2,Grace Hopper,Engineering,hq,America/New_York,E1
"""
ADA, GRACE, NOBODY = "em4100:8675309123", "em4100:5550001234", "em4100:9990001111"
BADGES = f"""credential,employee_id,valid_from,valid_until,status
{ADA},E1,2025-01-01T00:00:00Z,,assigned
{GRACE},E2,2025-01-01T00:00:00Z,,assigned
"""


def ledger(tmp: Path) -> Path:
    path = tmp / "ledger.db"
    store = SQLiteStore(path)
    try:
        clock = Clock("clock-01", site="hq")
        store.append([EventFact("device", clock.enrolled_body())], now_us=T0)
        taps = [(ADA, "in", at("2026-03-28T22:00", BERLIN)),      # overnight across DST
                (ADA, "out", at("2026-03-29T06:00", BERLIN)),
                (GRACE, "in", at("2026-03-30T09:00", NEW_YORK)),
                (GRACE, "in", at("2026-03-30T17:00", NEW_YORK)),   # pressed in for out
                (NOBODY, "in", at("2026-03-30T10:00", BERLIN))]
        store.append([clock.fact(credential=c, action=a, ts=ts) for c, a, ts in taps],
                     now_us=T0 + 1000)
        (tmp / "e.csv").write_text(EMPLOYEES, encoding="utf-8")
        (tmp / "b.csv").write_text(BADGES, encoding="utf-8")
        import_files(store, tmp / "e.csv", tmp / "b.csv", now_us=T0 + 2000)
        ensure_schema(store)
        fixes = Corrections(store)
        c = fixes.propose(device="clock-01", seq=4, field="action", after="out",
                          reason="wrong-action", editor="hr-anna", now_us=T0 + 3000)
        fixes.decide(c.id, approve=True, approver="hr-ben", now_us=T0 + 4000)
    finally:
        store.close()
    return path


def at(wall: str, tz: str) -> int:
    """UTC µs of a local wall-clock time (``fold=0``)."""
    return int(datetime.fromisoformat(wall).replace(tzinfo=ZoneInfo(tz)).timestamp()) * 1_000_000
