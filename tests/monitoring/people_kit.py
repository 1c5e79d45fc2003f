"""Helpers for the per-person detector tests: a people directory imported in one transaction
(collector.people.csv_import) so 200 employees and their badges cost one entry batch."""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path

from collector.ledger.sqlbase import SQLStore
from collector.people.csv_import import import_files
from tests.collector.punch_kit import T0

EMPLOYEE_HEADER = "employee_id,name,department,site,timezone,manager_id\n"
BADGE_HEADER = "credential,employee_id,valid_from,valid_until,status\n"


def badge(n: int) -> str:
    return f"em4100:{n:010d}"


def employee_id(n: int) -> str:
    return f"E{n:05d}"


def import_directory(store: SQLStore, tmp: Path, employees: Iterable[tuple[str, str]],
                     badges: Iterable[tuple[str, str, str]]) -> None:
    """``employees``: (id, site); ``badges``: (credential, employee id, status), each held from
    2025-01-01 (status lost or blocked: ended a day before T0)."""
    emp = EMPLOYEE_HEADER + "".join(f"{e},Person {e},Ops,{site},UTC,\n" for e, site in employees)
    rows = []
    for cred, e, status in badges:
        until = "" if status == "assigned" else str(T0 - 86_400_000_000)
        rows.append(f"{cred},{e},2025-01-01T00:00:00Z,{until},{status}\n")
    (tmp / "employees.csv").write_text(emp)
    (tmp / "badges.csv").write_text(BADGE_HEADER + "".join(rows))
    import_files(store, tmp / "employees.csv", tmp / "badges.csv", now_us=T0 - 3_600_000_000)
