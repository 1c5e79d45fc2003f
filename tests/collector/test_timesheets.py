"""Timesheet golden tests (issue "Answers, not JSON", Build item 1): punches paired into shifts
per employee and local day, DST changes in both directions, an overnight shift, missing and
duplicate punches, a correction's provenance, sites in other time zones, rounding and grace,
pay periods; the CSV is plain RFC 4180 that csv.reader reads as one header and equal rows."""

from __future__ import annotations

import base64
import csv
import hashlib
import io
import json
import stat
from datetime import UTC, date, datetime
from pathlib import Path
from zoneinfo import ZoneInfo

import pytest

from collector.cli.main import main
from collector.ledger.base import EventFact
from collector.ledger.sqlite import SQLiteStore
from collector.people.csv_import import import_files
from collector.records.timesheets import (
    CSV_FIELDS,
    Rules,
    TimePunch,
    TimesheetError,
    build,
    csv_text,
    hours,
    ndjson_items,
    period_of,
    timecard,
)
from tests.collector import timesheet_kit
from tests.collector.ledger_kit import T0, Clock

BERLIN, NEW_YORK, KOLKATA = "Europe/Berlin", "America/New_York", "Asia/Kolkata"


def at(wall: str, tz: str) -> int:
    """UTC µs of a local wall-clock time (``fold=0``: the first of an ambiguous hour)."""
    dt = datetime.fromisoformat(wall).replace(tzinfo=ZoneInfo(tz))
    return int(dt.timestamp()) * 1_000_000


def punches(tz: str, *items: tuple[str, str], device: str = "clock-1",
            corrected: dict[int, int] | None = None) -> list[TimePunch]:
    fixes = corrected or {}
    return [TimePunch(at(wall, tz), action, device, seq, (fixes[seq],) if seq in fixes else ())
            for seq, (wall, action) in enumerate(items, start=1)]


def rows(sheet_csv: str) -> list[dict[str, str]]:
    return list(csv.DictReader(io.StringIO(sheet_csv)))


def test_a_day_shift_with_a_break() -> None:
    sheet = build("e1", BERLIN, punches(BERLIN, ("2026-03-02T08:00", "in"),
                                        ("2026-03-02T12:00", "break-start"),
                                        ("2026-03-02T12:30", "break-end"),
                                        ("2026-03-02T16:30", "out")), Rules())
    assert sheet.exceptions == []
    [r] = rows(csv_text([sheet]))
    assert r == {"employee_id": "e1", "day": "2026-03-02", "start": "2026-03-02T08:00:00+01:00",
                 "end": "2026-03-02T16:30:00+01:00", "worked_hours": "8.00",
                 "break_minutes": "30", "status": "ok", "start_punch": "clock-1/1",
                 "end_punch": "clock-1/4", "corrections": ""}


@pytest.mark.parametrize(("tz", "evening", "morning", "worked"), [
    # spring forward: the clocks skip an hour during the night -> 7 h lived
    (BERLIN, "2026-03-28T22:00", "2026-03-29T06:00", "7.00"),
    (NEW_YORK, "2026-03-07T22:00", "2026-03-08T06:00", "7.00"),
    # fall back: the night has an hour twice -> 9 h lived
    (BERLIN, "2026-10-24T22:00", "2026-10-25T06:00", "9.00"),
    (NEW_YORK, "2026-10-31T22:00", "2026-11-01T06:00", "9.00"),
], ids=["berlin-spring", "new-york-spring", "berlin-fall", "new-york-fall"])
def test_overnight_shifts_across_dst_count_the_hours_lived(tz: str, evening: str,
                                                           morning: str, worked: str) -> None:
    sheet = build("e1", tz, punches(tz, (evening, "in"), (morning, "out")), Rules())
    [r] = rows(csv_text([sheet]))
    assert (r["day"], r["worked_hours"], r["status"]) == (evening[:10], worked, "ok")
    assert sheet.hours_by_day() == {date.fromisoformat(evening[:10]):
                                    int(float(worked) * 3600) * 1_000_000}


def test_missing_punches_are_exceptions_and_count_no_hours_until_corrected() -> None:
    sheet = build("e1", BERLIN, punches(BERLIN, ("2026-03-02T08:00", "in"),
                                        ("2026-03-03T08:05", "in"),
                                        ("2026-03-03T16:00", "out"),
                                        ("2026-03-04T16:00", "out")), Rules())
    assert [(e.day.isoformat(), e.kind, e.punch) for e in sheet.exceptions] == [
        ("2026-03-02", "missing-out", "clock-1/1"), ("2026-03-04", "missing-in", "clock-1/4")]
    assert [(r["day"], r["status"], r["worked_hours"]) for r in rows(csv_text([sheet]))] == [
        ("2026-03-02", "missing-out", "0.00"), ("2026-03-03", "ok", "7.92"),
        ("2026-03-04", "missing-in", "0.00")]


def test_a_shift_left_open_past_the_maximum_is_a_missing_out() -> None:
    sheet = build("e1", BERLIN, punches(BERLIN, ("2026-03-02T08:00", "in"),
                                        ("2026-03-03T10:00", "out")), Rules(max_shift_h=16))
    assert [e.kind for e in sheet.exceptions] == ["missing-out", "missing-in"]


def test_a_double_tap_is_a_duplicate_and_changes_nothing() -> None:
    sheet = build("e1", BERLIN, punches(BERLIN, ("2026-03-02T08:00", "in"),
                                        ("2026-03-02T08:00:40", "in"),
                                        ("2026-03-02T16:00", "out")), Rules(duplicate_s=120))
    assert [(e.kind, e.punch) for e in sheet.exceptions] == [("duplicate", "clock-1/2")]
    assert [r["worked_hours"] for r in rows(csv_text([sheet]))] == ["8.00"]


def test_toggle_readers_pair_in_order() -> None:
    sheet = build("e1", BERLIN, punches(BERLIN, ("2026-03-02T08:00", "punch"),
                                        ("2026-03-02T12:00", "punch"),
                                        ("2026-03-02T13:00", "punch"),
                                        ("2026-03-02T17:00", "punch")), Rules())
    assert [r["worked_hours"] for r in rows(csv_text([sheet]))] == ["4.00", "4.00"]


def test_a_correction_is_applied_with_its_provenance() -> None:
    # the out punch (seq 2) carries the value of approved correction entry 42
    sheet = build("e1", BERLIN, punches(BERLIN, ("2026-03-02T08:00", "in"),
                                        ("2026-03-02T17:00", "out"), corrected={2: 42}),
                  Rules())
    [r] = rows(csv_text([sheet]))
    assert (r["worked_hours"], r["corrections"], r["end_punch"]) == ("9.00", "42", "clock-1/2")


def test_a_site_in_another_time_zone_books_its_local_day() -> None:
    # 20:00 UTC on 2 March is 01:30 on 3 March in Kolkata (+05:30)
    start = int(datetime(2026, 3, 2, 20, 0, tzinfo=UTC).timestamp()) * 1_000_000
    p = [TimePunch(start, "in", "clock-9", 1),
         TimePunch(start + 8 * 3600 * 1_000_000, "out", "clock-9", 2)]
    [r] = rows(csv_text([build("e7", KOLKATA, p, Rules())]))
    assert (r["day"], r["start"], r["end"]) == ("2026-03-03", "2026-03-03T01:30:00+05:30",
                                                "2026-03-03T09:30:00+05:30")


@pytest.mark.parametrize(("rules", "start", "end"), [
    (Rules(round_minutes=15), "08:00", "16:15"),                        # 08:07 down, 16:08 up
    (Rules(round_minutes=15, rounding="down"), "08:00", "16:00"),
    (Rules(round_minutes=15, rounding="up"), "08:15", "16:15"),
    (Rules(round_minutes=15, rounding="up", grace_minutes=7), "08:00", "16:15"),
], ids=["nearest", "down", "up", "up-with-grace"])
def test_rounding_and_grace_in_local_minutes(rules: Rules, start: str, end: str) -> None:
    # Kolkata's +05:30 offset: a 15-minute grid in UTC and in local time differ by nothing,
    # an hourly grid would differ by 30 minutes; rounding is done on the local grid
    sheet = build("e1", KOLKATA, punches(KOLKATA, ("2026-03-02T08:07", "in"),
                                         ("2026-03-02T16:08", "out")), rules)
    [r] = rows(csv_text([sheet]))
    assert (r["start"][11:16], r["end"][11:16]) == (start, end)


def test_hourly_rounding_uses_the_local_grid() -> None:
    sheet = build("e1", KOLKATA, punches(KOLKATA, ("2026-03-02T08:20", "in"),
                                         ("2026-03-02T16:40", "out")),
                  Rules(round_minutes=60))
    [r] = rows(csv_text([sheet]))
    assert (r["start"][11:16], r["end"][11:16], r["worked_hours"]) == ("08:00", "17:00", "9.00")


def test_pay_periods() -> None:
    d = date(2026, 3, 18)    # a Wednesday
    assert period_of(d, Rules(period="weekly")) == (date(2026, 3, 16), date(2026, 3, 22))
    assert period_of(d, Rules(period="weekly", week_start=6)) == (date(2026, 3, 15),
                                                                  date(2026, 3, 21))
    assert period_of(d, Rules(period="biweekly", period_anchor=date(2026, 1, 5))) == (
        date(2026, 3, 16), date(2026, 3, 29))
    assert period_of(d, Rules(period="semimonthly")) == (date(2026, 3, 16), date(2026, 3, 31))
    assert period_of(date(2026, 2, 3), Rules(period="semimonthly")) == (date(2026, 2, 1),
                                                                        date(2026, 2, 15))
    assert period_of(date(2028, 2, 20), Rules(period="monthly")) == (date(2028, 2, 1),
                                                                     date(2028, 2, 29))


def test_week_and_period_totals_and_the_timecard() -> None:
    items = []
    for day in ("2026-03-16", "2026-03-17", "2026-03-18", "2026-03-23"):
        items += [(f"{day}T09:00", "in"), (f"{day}T17:00", "out")]
    items.append(("2026-03-24T09:00", "in"))              # still open: an exception
    rules = Rules(period="biweekly", period_anchor=date(2026, 1, 5))
    sheet = build("e1", BERLIN, punches(BERLIN, *items), rules)
    assert {k.isoformat(): hours(v) for k, v in sheet.hours_by_week(rules).items()} == {
        "2026-03-16": "24.00", "2026-03-23": "8.00"}
    assert {(a.isoformat(), b.isoformat()): hours(v)
            for (a, b), v in sheet.hours_by_period(rules).items()} == {
        ("2026-03-16", "2026-03-29"): "32.00"}
    card = timecard(sheet, (date(2026, 3, 16), date(2026, 3, 29)), rules)
    assert "period total: 32.00 h" in card
    assert "week of 2026-03-16: 24.00 h" in card
    assert "week of 2026-03-23: 8.00 h" in card
    assert "2026-03-24 missing-out at clock-1/9" in card


def test_csv_is_plain_and_ndjson_carries_exceptions() -> None:
    a = build("e1", BERLIN, punches(BERLIN, ("2026-03-02T08:00", "in"),
                                    ("2026-03-02T16:00", "out")), Rules())
    b = build("e2", NEW_YORK, punches(NEW_YORK, ("2026-03-02T08:00", "in")), Rules())
    text = csv_text([a, b])
    table = list(csv.reader(io.StringIO(text)))
    assert table[0] == list(CSV_FIELDS)
    assert len(table) == 3
    assert all(len(r) == len(CSV_FIELDS) for r in table)
    assert not text.startswith("#")
    items = list(ndjson_items([a, b]))
    assert [i["type"] for i in items] == ["shift", "shift", "exception"]
    assert items[-1]["kind"] == "missing-out"


def test_bad_rules_and_zones_say_what_is_wrong() -> None:
    with pytest.raises(TimesheetError, match="rounding 'sideways' must be one of"):
        Rules(rounding="sideways")
    with pytest.raises(TimesheetError, match="unknown time zone 'Mars/Olympus'"):
        build("e1", "Mars/Olympus", [], Rules())


# -- from the ledger, through the CLI -----------------------------------------------------------

ADA, GRACE, NOBODY = timesheet_kit.ADA, timesheet_kit.GRACE, timesheet_kit.NOBODY
EMPLOYEES, BADGES = timesheet_kit.EMPLOYEES, timesheet_kit.BADGES
_ledger = timesheet_kit.ledger


def test_cli_timesheet_csv_with_its_sidecar_and_access_entry(tmp_path: Path,
                                                             capsys: pytest.CaptureFixture[str]
                                                             ) -> None:
    db = _ledger(tmp_path)
    out = tmp_path / "march.csv"
    assert main(["timesheet", "--store", str(db), "--from", "2026-03-01T00:00Z",
                 "--to", "2026-04-01T00:00Z", "--out", str(out),
                 "--purpose", "March payroll"]) == 0
    assert "2 employee(s), 2 csv row(s) from 5 punch(es); 1 punch(es) of badges held by " \
           "nobody" in capsys.readouterr().err
    text = out.read_bytes()
    got = [(r["employee_id"], r["day"], r["worked_hours"], r["status"], r["corrections"])
           for r in rows(text.decode())]
    store = SQLiteStore(db)
    try:
        correction_idx = next(se.entry.idx for se in store.entries()
                              if se.entry.kind == "correction")
        access = [json.loads(se.body) for se in store.entries()
                  if se.entry.kind == "access" and se.body is not None]
    finally:
        store.close()
    assert got == [("E1", "2026-03-28", "7.00", "ok", ""),
                   ("E2", "2026-03-30", "8.00", "ok", str(correction_idx))]
    for secret in (ADA, GRACE, NOBODY, "Ada Lovelace", "Grace Hopper"):
        assert secret.encode() not in text
    side = json.loads((tmp_path / "march.csv.sidecar.json").read_text())
    assert side["sha256"] == hashlib.sha256(text).hexdigest()
    assert (side["rows"], side["punches"], side["unassigned_punches"]) == (2, 5, {"unknown": 1})
    assert side["ledger"]["size"] > 0
    for f in (out, tmp_path / "march.csv.sidecar.json"):
        assert stat.S_IMODE(f.stat().st_mode) == 0o600
    [entry] = [a for a in access if a.get("what") == "timesheet"]
    assert (entry["purpose"], entry["rows"], entry["format"]) == ("March payroll", 2, "csv")


def test_cli_timecard_for_one_employee(tmp_path: Path,
                                       capsys: pytest.CaptureFixture[str]) -> None:
    db = _ledger(tmp_path)
    assert main(["timesheet", "--store", str(db), "--from", "2026-03-23T00:00Z",
                 "--to", "2026-03-30T00:00Z", "--format", "timecard",
                 "--employee", "E1"]) == 0
    card = capsys.readouterr().out
    assert card.startswith("Timecard E1  2026-03-23 – 2026-03-29  (Europe/Berlin)")
    assert "2026-03-28  22:00–06:00    7.00 h" in card
    assert "period total: 7.00 h" in card


def test_cli_timesheet_refuses_what_it_cannot_do(tmp_path: Path,
                                                 capsys: pytest.CaptureFixture[str]) -> None:
    db = _ledger(tmp_path)
    assert main(["timesheet", "--store", str(db), "--from", "2026-03-02",
                 "--to", "2026-04-01T00:00Z"]) != 0
    assert "has no UTC offset" in capsys.readouterr().err
    assert main(["timesheet", "--store", str(tmp_path / "typo.db"), "--from",
                 "2026-03-01T00:00Z", "--to", "2026-04-01T00:00Z"]) != 0
    assert "no such ledger file" in capsys.readouterr().err
    out = tmp_path / "x.csv"
    out.write_text("keep me")
    assert main(["timesheet", "--store", str(db), "--from", "2026-03-01T00:00Z",
                 "--to", "2026-04-01T00:00Z", "--out", str(out)]) != 0
    assert "exists; use --force" in capsys.readouterr().err
    assert out.read_text() == "keep me"


# -- the API -----------------------------------------------------------------------------------

async def test_api_timesheets_json_csv_and_roles(sqlite_store: SQLiteStore, tmp_path: Path
                                                 ) -> None:
    from tests.collector.api_kit import access_bodies, start_api  # noqa: PLC0415

    clock = Clock("clock-01", site="hq")
    sqlite_store.append([EventFact("device", clock.enrolled_body())], now_us=T0)
    sqlite_store.append([clock.fact(credential=ADA, action="in",
                                    ts=at("2026-03-02T08:00", BERLIN)),
                         clock.fact(credential=ADA, action="out",
                                    ts=at("2026-03-02T16:30", BERLIN))], now_us=T0 + 1000)
    (tmp_path / "e.csv").write_text(EMPLOYEES, encoding="utf-8")
    (tmp_path / "b.csv").write_text(BADGES, encoding="utf-8")
    import_files(sqlite_store, tmp_path / "e.csv", tmp_path / "b.csv", now_us=T0 + 2000)
    api = await start_api(sqlite_store)
    try:
        path = "/v1/timesheets?since=2026-03-01T00:00:00Z&until=2026-04-01T00:00:00Z"
        resp = await api.call("GET", path, "hr-reader")
        assert resp.status == 200, await resp.text()
        body = await resp.json()
        [e1] = body["employees"]
        assert (e1["employee_id"], e1["hours_by_day"]) == ("E1", {"2026-03-02": "8.50"})
        assert body["sidecar"]["punches"] == 2
        resp = await api.call("GET", path + "&format=csv&round_minutes=60", "payroll")
        assert resp.status == 200
        text = await resp.text()
        assert text.splitlines()[0] == ",".join(CSV_FIELDS)
        side = json.loads(base64.b64decode(resp.headers["X-Timeclock-Sidecar"]))
        assert side["sha256"] == hashlib.sha256(text.encode()).hexdigest()
        assert ADA not in text
        assert (await api.call("GET", path, "auditor")).status == 403
        assert (await api.call("GET", "/v1/timesheets?since=2026-03-01T00:00:00Z",
                               "hr-reader")).status == 400
        assert (await api.call("GET", path + "&rounding=sideways", "hr-reader")).status == 400
        reads = [b for b in access_bodies(sqlite_store)
                 if b.get("route") == "/v1/timesheets" and b.get("status") == 200]
        assert len(reads) == 2
    finally:
        await api.client.close()
