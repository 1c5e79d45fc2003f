"""CSV import of the directory: employees, and optionally badges, all or nothing.

Employees: a header row with ``employee_id,name,department,site,timezone,manager_id`` (in any
order) and optionally ``status`` (active | left), ``active_from`` and ``left_on`` (YYYY-MM-DD).
A new employee without them is active from the import's date; an existing one keeps them.
Managers may come after their reports in the file. Employees missing from the file are left
as they are (mark a leaver with status ``left``).

Badges: ``credential,employee_id,valid_from,valid_until,status``: one row per holding period
``[valid_from, valid_until)``; ``status`` says how it ended: ``assigned`` (still held, or held
until ``valid_until``), ``returned`` at ``valid_until``, or ``lost`` / ``blocked`` at
``valid_until`` (from then on its punches resolve ``lost`` / ``blocked``). Times: ISO 8601
with an offset (``2026-01-05T08:00:00+01:00``), µs since the epoch, or a date, which means
midnight in the employee's time zone.

Every row is checked, then planned against the directory (and the rows before it); any bad
row fails the whole import with every problem listed by line number and nothing recorded.
Re-importing the same files records nothing; a changed row records one entry.
"""

from __future__ import annotations

import csv
import io
import re
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import UTC, date, datetime, time
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo

from collector import DirectoryError
from collector.ledger.sqlbase import SQLStore
from collector.people import directory
from collector.people.rules import Change, State, plan_badge, plan_employee
from wire.bodies_people import EMPLOYEE_ID_RE

EMPLOYEE_COLUMNS = ("employee_id", "name", "department", "site", "timezone", "manager_id")
EMPLOYEE_OPTIONAL = ("status", "active_from", "left_on")
BADGE_COLUMNS = ("credential", "employee_id", "valid_from", "valid_until", "status")
BADGE_STATUSES = ("assigned", "returned", "lost", "blocked")
MAX_ROWS = 1_000_000
MAX_BYTES = 256 << 20


class ImportError_(DirectoryError):  # noqa: N801 - ImportError is a builtin
    """The files are not applied; ``problems`` lists every bad row as ``file:line: why``."""

    def __init__(self, problems: list[str]) -> None:
        shown = problems[:50]
        more = f"\n  … and {len(problems) - 50} more" if len(problems) > 50 else ""
        super().__init__(f"{len(problems)} problem(s), nothing imported:\n  "
                         + "\n  ".join(shown) + more)
        self.problems = problems


@dataclass(frozen=True)
class Row:
    file: str
    line: int
    values: dict[str, str]

    @property
    def where(self) -> str:
        return f"{self.file}:{self.line}"


@dataclass
class ImportResult:
    changes: list[Change] = field(default_factory=list)
    recorded: list[directory.Recorded] = field(default_factory=list)
    employees_rows: int = 0
    badge_rows: int = 0
    dry_run: bool = False


def read_rows(path: Path, required: tuple[str, ...], optional: tuple[str, ...] = ()
              ) -> list[Row]:
    """The data rows of ``path`` (line numbers as an editor shows them), values stripped;
    ImportError_ lists the problems of the file, its header and its rows' shapes."""
    name = path.name
    try:
        if path.stat().st_size > MAX_BYTES:
            raise ImportError_([f"{name}: larger than {MAX_BYTES >> 20} MiB"])
        text = path.read_bytes().decode("utf-8-sig")
    except OSError as e:
        raise ImportError_([f"{name}: cannot read: {e.strerror or e}"]) from e
    except UnicodeDecodeError as e:
        raise ImportError_([f"{name}: not UTF-8 (byte {e.start}): save the file as UTF-8 "
                            f"CSV"]) from e
    reader = csv.reader(io.StringIO(text, newline=""))
    try:
        header = next(reader)
    except StopIteration:
        raise ImportError_([f"{name}: empty file (expected a header row: "
                            f"{','.join(required)})"]) from None
    except csv.Error as e:
        raise ImportError_([f"{name}:1: {e}"]) from e
    cols = [h.strip().lower() for h in header]
    problems = _header_problems(name, cols, required, optional)
    if problems:
        raise ImportError_(problems)
    return _data_rows(name, reader, cols)


def _header_problems(name: str, cols: list[str], required: tuple[str, ...],
                     optional: tuple[str, ...]) -> list[str]:
    problems: list[str] = []
    missing = [c for c in required if c not in cols]
    unknown = [c for c in cols if c not in required and c not in optional]
    dup = sorted({c for c in cols if cols.count(c) > 1})
    if missing:
        problems.append(f"{name}:1: header lacks column(s) {', '.join(missing)} (expected "
                        f"{','.join(required)})")
    if unknown:
        problems.append(f"{name}:1: unknown column(s) {', '.join(unknown)} (allowed: "
                        f"{', '.join(required + optional)})")
    if dup:
        problems.append(f"{name}:1: column(s) {', '.join(dup)} appear more than once")
    return problems


def _data_rows(name: str, reader: Any, cols: list[str]) -> list[Row]:
    problems: list[str] = []
    rows: list[Row] = []
    try:
        for values in reader:
            line = reader.line_num
            if not any(v.strip() for v in values):
                continue
            if len(rows) >= MAX_ROWS:
                problems.append(f"{name}:{line}: more than {MAX_ROWS} rows")
                break
            if len(values) != len(cols):
                problems.append(f"{name}:{line}: {len(values)} field(s), the header has "
                                f"{len(cols)}")
                continue
            rows.append(Row(name, line, {c: v.strip() for c, v in zip(cols, values,
                                                                        strict=True)}))
    except csv.Error as e:
        problems.append(f"{name}:{reader.line_num}: {e}")
    if problems:
        raise ImportError_(problems)
    return rows


def _today(tz: str, now_us: int) -> str:
    try:
        zone = ZoneInfo(tz)
    except (KeyError, ValueError):
        zone = ZoneInfo("UTC")     # the record's own check names the bad zone
    return datetime.fromtimestamp(now_us / 1e6, zone).date().isoformat()


def employee_record(row: Row, state: State, now_us: int) -> dict[str, Any]:
    v = row.values
    old = state.employees.get(v["employee_id"])
    status = v.get("status") or (old.status if old else "active")
    active_from = v.get("active_from") or (old.active_from if old else
                                           _today(v["timezone"], now_us))
    left_on: str | None = v.get("left_on") or None
    if "left_on" not in v and old is not None and status == old.status:
        left_on = old.left_on
    return {"employee_id": v["employee_id"], "name": v["name"],
            "department": v["department"], "site": v["site"], "timezone": v["timezone"],
            "manager_id": v["manager_id"] or None, "status": status,
            "active_from": active_from, "left_on": left_on}


def parse_instant(text: str, tz: str | None) -> int:
    """µs since the epoch of a CSV time: µs, ISO 8601 with an offset, or a date (midnight in
    ``tz``, the employee's time zone)."""
    if re.fullmatch(r"\d{1,18}", text):
        return int(text)
    if re.fullmatch(r"\d{4}-\d{2}-\d{2}", text):
        if tz is None:
            raise DirectoryError(f"{text!r}: a date needs the employee's time zone (give a time "
                                 f"with an offset instead)")
        dt = datetime.combine(date.fromisoformat(text), time(0), ZoneInfo(tz))
    else:
        try:
            dt = datetime.fromisoformat(text.replace("Z", "+00:00"))
        except ValueError as e:
            raise DirectoryError(f"{text[:40]!r} is not a time (ISO 8601 with an offset, a date "
                                 f"or µs since the epoch)") from e
        if dt.tzinfo is None:
            raise DirectoryError(f"{text[:40]!r} has no UTC offset (add Z or +hh:mm)")
    delta = dt - datetime(1970, 1, 1, tzinfo=UTC)
    return (delta.days * 86_400 + delta.seconds) * 1_000_000 + delta.microseconds


def badge_bodies(row: Row, state: State) -> list[dict[str, Any]]:
    """The badge entry bodies a badge row stands for (an assignment; a loss or block after)."""
    v = row.values
    status = v["status"] or "assigned"
    if status not in BADGE_STATUSES:
        raise DirectoryError(f"status {status[:20]!r} is not one of {', '.join(BADGE_STATUSES)}")
    emp = v["employee_id"]
    if not EMPLOYEE_ID_RE.fullmatch(emp):
        raise DirectoryError(f"employee_id {emp[:64]!r} is not an employee id")
    holder = state.employees.get(emp)
    if holder is None:
        raise DirectoryError(f"employee {emp} is not in the directory nor in the employees "
                             f"file")
    if not v["valid_from"]:
        raise DirectoryError("valid_from is empty (when the employee got the badge)")
    start = parse_instant(v["valid_from"], holder.timezone)
    until = parse_instant(v["valid_until"], holder.timezone) if v["valid_until"] else None
    if status != "assigned" and until is None:
        raise DirectoryError(f"status {status} needs valid_until (when it was {status})")
    bodies = [{"event": "assigned", "credential": v["credential"], "employee_id": emp,
               "from": start, "until": until}]
    if status in ("lost", "blocked") and until is not None:
        bodies.append({"event": status, "credential": v["credential"], "employee_id": emp,
                       "from": until, "until": None})
    return bodies


def _ordered(rows: list[Row], state: State, problems: list[str]) -> Iterator[Row]:
    """Employee rows with each manager before their reports (file order otherwise)."""
    first: dict[str, Row] = {}
    for r in rows:
        eid = r.values["employee_id"]
        if eid in first:
            problems.append(f"{r.where}: employee {eid[:64]} is also on line {first[eid].line}")
        else:
            first[eid] = r
    pending = list(first.values())
    known = set(state.employees)
    while pending:
        ready = [r for r in pending if not r.values["manager_id"]
                 or r.values["manager_id"] in known
                 or r.values["manager_id"] not in first      # unknown: the rules say so
                 or r.values["manager_id"] == r.values["employee_id"]]
        if not ready:           # every one left waits for another: a cycle in the file
            for r in pending:
                problems.append(f"{r.where}: employee {r.values['employee_id'][:64]}: manager "
                                f"{r.values['manager_id'][:64]} makes a cycle in the file")
            return
        done = {id(r) for r in ready}
        for r in ready:
            known.add(r.values["employee_id"])
            yield r
        pending = [r for r in pending if id(r) not in done]


def plan_files(state: State, employee_rows: list[Row], badge_rows: list[Row],
               problems: list[str], now_us: int) -> list[Change]:
    changes: list[Change] = []
    for r in _ordered(employee_rows, state, problems):
        try:
            ch = plan_employee(state, employee_record(r, state, now_us))
        except DirectoryError as e:
            problems.append(f"{r.where}: {e}")
            continue
        if ch is not None:
            changes.append(ch)
    for r in badge_rows:
        try:
            for body in badge_bodies(r, state):
                ch = plan_badge(state, body)
                if ch is not None:
                    changes.append(ch)
        except DirectoryError as e:
            problems.append(f"{r.where}: {e}")
    return changes


def import_files(store: SQLStore, employees: Path | None, badges: Path | None, *,
                 now_us: int, dry_run: bool = False) -> ImportResult:
    """Import the files (see the module docstring); ImportError_ lists every problem."""
    problems: list[str] = []
    emp_rows: list[Row] = []
    badge_rows: list[Row] = []
    try:
        if employees is not None:
            emp_rows = read_rows(employees, EMPLOYEE_COLUMNS, EMPLOYEE_OPTIONAL)
    except ImportError_ as e:
        problems += e.problems
    try:
        if badges is not None:
            badge_rows = read_rows(badges, BADGE_COLUMNS)
    except ImportError_ as e:
        problems += e.problems
    if problems:
        raise ImportError_(problems)
    creds = {r.values["credential"] for r in badge_rows}
    result = ImportResult(employees_rows=len(emp_rows), badge_rows=len(badge_rows),
                          dry_run=dry_run)

    def plan(state: State) -> list[Change]:
        found: list[str] = []
        changes = plan_files(state, emp_rows, badge_rows, found, now_us)
        if found:
            raise ImportError_(sorted(found, key=_line_key))
        return changes

    if dry_run:
        result.changes = directory.preview(store, plan, credentials=creds)
    else:
        result.recorded = directory.record(store, plan, now_us=now_us, credentials=creds)
        result.changes = [r.change for r in result.recorded]
    return result


def _line_key(problem: str) -> tuple[str, int]:
    m = re.match(r"^(.*?):(\d+):", problem)
    return (m.group(1), int(m.group(2))) if m else (problem, 0)
