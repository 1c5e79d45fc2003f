"""HR push (issue 16 item 1, "push as well as pull"): `timeclock-collector hr-push` delivers the
ledger's punches to a real HTTP receiver on loopback, signed, in order, at least once, with
retries and back-off, each delivery recorded on the ledger, which is also the cursor."""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest

from collector.cli.main import main
from collector.ledger.base import EventFact
from collector.ledger.sqlite import SQLiteStore
from collector.people.csv_import import import_files
from collector.records.corrections import Corrections
from collector.records.timesheet_close import parcels
from tests.collector import timesheet_kit
from tests.collector.api_kit import access_bodies, seed
from tests.collector.ledger_kit import T0, Clock
from tests.collector.webhook_kit import SECRET, Receiver
from wire.canonical import canonical

EMPLOYEES = """employee_id,name,department,site,timezone,manager_id
E1,Ada Lovelace,Operations,hq,Europe/London,
"""
BADGES = """credential,employee_id,valid_from,valid_until,status
em4100:0000000001,E1,2025-01-01T00:00:00Z,,assigned
"""


@pytest.fixture
def receiver() -> Iterator[Receiver]:
    r = Receiver()
    yield r
    r.stop()


@pytest.fixture
def ledger(tmp_path: Path) -> Path:
    db = tmp_path / "ledger.db"
    store = SQLiteStore(db)
    try:
        seed(store, devices=2, punches=4)            # 8 punches, em4100:000000000n badges
        (tmp_path / "e.csv").write_text(EMPLOYEES)
        (tmp_path / "b.csv").write_text(BADGES)
        import_files(store, tmp_path / "e.csv", tmp_path / "b.csv", now_us=T0 + 2000)
    finally:
        store.close()
    (tmp_path / "hr.secret").write_bytes(SECRET)
    (tmp_path / "hr.secret").chmod(0o600)
    return db


def _push(db: Path, url: str, *more: str) -> int:
    return main(["hr-push", "--store", str(db), "--url", url, "--secret-file",
                 str(db.parent / "hr.secret"), "--identity", "collector.test", "--once",
                 "--batch", "3", "--backoff-initial-s", "0.01", "--backoff-max-s", "0.05",
                 *more])


def _records(db: Path, kind: str) -> list[dict[str, Any]]:
    store = SQLiteStore(db)
    try:
        return [b for b in access_bodies(store) if b.get("type") == kind]
    finally:
        store.close()


def test_punches_arrive_in_order_once_signed_after_retries(ledger: Path,
                                                          receiver: Receiver) -> None:
    receiver.script = [500, 503]                       # the first batch needs a third attempt
    assert _push(ledger, receiver.url) == 0
    punches = [p for batch in receiver.got for p in batch["punches"]]
    assert len(punches) == 8
    assert [p["idx"] for p in punches] == sorted({p["idx"] for p in punches})
    assert receiver.bad_signatures == 0
    assert len(receiver.deliveries) == len(set(receiver.deliveries)) == 3   # batches of 3
    assert [p["employee_id"] for p in punches if p["employee_id"]] == ["E1", "E1"]
    assert {p["badge_status"] for p in punches} == {"assigned", "unknown"}
    assert all(b"em4100" not in raw for raw in receiver.raw)          # no badge leaves
    done = _records(ledger, "hr-delivery")
    assert [d["attempts"] for d in done] == [3, 1, 1]
    assert [(d["first_idx"], d["last_idx"]) for d in done] == [
        (b["first_idx"], b["last_idx"]) for b in receiver.got]
    assert all("secret" not in json.dumps(d) and d["host"].startswith("127.0.0.1")
               for d in done)
    # the ledger is the cursor: nothing again, then only what is new
    assert _push(ledger, receiver.url) == 0
    assert len(receiver.got) == 3
    store = SQLiteStore(ledger)
    try:
        clock = Clock("clock-09", site="hq")
        store.append([EventFact("device", clock.enrolled_body()),
                      clock.fact(credential="em4100:0000000001", action="out")],
                     now_us=T0 + 9000)
    finally:
        store.close()
    assert _push(ledger, receiver.url) == 0
    assert [p["action"] for p in receiver.got[-1]["punches"]] == ["out"]


def test_a_receiver_that_stays_down_is_recorded_and_retried_next_run(
        ledger: Path, receiver: Receiver) -> None:
    receiver.script = [503] * 3
    assert _push(ledger, receiver.url, "--attempts", "3") == 1
    [failed] = _records(ledger, "hr-delivery-failed")
    assert (failed["attempts"], failed["error"], failed["punches"]) == (3, "HTTP 503", 3)
    assert _records(ledger, "hr-delivery") == []
    assert receiver.got == []
    assert _push(ledger, receiver.url) == 0            # back up: from the start
    assert len([p for b in receiver.got for p in b["punches"]]) == 8


def test_hr_push_refuses_unsafe_settings(ledger: Path, capsys: pytest.CaptureFixture[str]
                                         ) -> None:
    assert _push(ledger, "http://hr.example/punches") != 0
    assert "must be https://" in capsys.readouterr().err
    short = ledger.parent / "short.secret"
    short.write_bytes(b"tiny")
    short.chmod(0o600)
    assert main(["hr-push", "--store", str(ledger), "--url", "https://hr.example/p",
                 "--secret-file", str(short), "--once"]) != 0
    assert "at least 16 bytes" in capsys.readouterr().err


# -- closed pay periods (issue 16 item 1: "signed webhooks deliver … closed timecards") ------

@pytest.fixture
def timesheet_ledger(tmp_path: Path) -> Path:
    db = timesheet_kit.ledger(tmp_path)
    (tmp_path / "hr.secret").write_bytes(SECRET)
    (tmp_path / "hr.secret").chmod(0o600)
    return db


def _close(db: Path, day: str, *more: str) -> int:
    return main(["timesheet-close", "--store", str(db), "--period", day, "--by", "hr-anna",
                 "--approved-by", "payroll-ben", "--reason", "week checked", *more])


def test_d6_closing_a_pay_period_is_dual_control_once_and_only_when_over(
        timesheet_ledger: Path, capsys: pytest.CaptureFixture[str]) -> None:
    db = timesheet_ledger
    assert main(["timesheet-close", "--store", str(db), "--period", "2026-03-28", "--by",
                 "hr-anna", "--approved-by", "hr-anna"]) != 0
    assert "dual control: hr-anna asked to close the period" in capsys.readouterr().err
    today = datetime.now(UTC).date().isoformat()
    assert _close(db, today) != 0
    assert "has not ended everywhere yet" in capsys.readouterr().err
    assert _close(db, "2026-03-28") == 0
    out = json.loads(capsys.readouterr().out)
    assert out["period"] == {"first": "2026-03-23", "last": "2026-03-29", "kind": "weekly"}
    [close] = _records(db, "timesheet-close")
    assert (close["by"], close["approved_by"], close["reason"]) == ("hr-anna", "payroll-ben",
                                                                    "week checked")
    [card] = close["timecards"]
    assert (card["employee_id"], card["total_hours"], card["hours_by_day"]) == (
        "E1", "7.00", {"2026-03-28": "7.00"})
    assert close["digests"] == {"E1": card["digest"]} == out["digests"]
    assert _close(db, "2026-03-25") != 0
    assert "was closed already (ledger idx" in capsys.readouterr().err


def test_closed_timecards_are_pushed_once_and_a_later_correction_as_an_amendment(
        timesheet_ledger: Path, receiver: Receiver) -> None:
    db = timesheet_ledger
    assert _close(db, "2026-03-28") == 0
    assert _push(db, receiver.url) == 0
    cards = [b for b in receiver.got if b["type"] == "timecards"]
    [sent] = cards
    [card] = sent["timecards"]
    assert (card["employee_id"], card["total_hours"]) == ("E1", "7.00")
    assert card["digest"] == hashlib.sha256(canonical(
        {k: v for k, v in card.items() if k != "digest"})).hexdigest()
    assert receiver.bad_signatures == 0
    assert receiver.got.index(sent) == len(receiver.got) - 1      # after the punches
    [close] = _records(db, "timesheet-close")
    assert receiver.deliveries[-1] == f"hr:close-{sent['close_idx']}"
    done = [d for d in _records(db, "hr-delivery") if d.get("what") == "timecards"]
    assert [(d["close_idx"], d["digests"]) for d in done] == [
        (sent["close_idx"], close["digests"])]
    # nothing again
    assert _push(db, receiver.url) == 0
    assert len(receiver.got) == len(cards) + [b["type"] for b in receiver.got].count("punches")
    # a correction after the close: Ada left an hour later (clock error), approved by another
    store = SQLiteStore(db)
    try:
        fixes = Corrections(store)
        c = fixes.propose(device="clock-01", seq=2, field="ts",
                          after=timesheet_kit.at("2026-03-29T07:00", timesheet_kit.BERLIN),
                          reason="clock-error", editor="hr-anna", now_us=T0 + 9000)
        fixes.decide(c.id, approve=True, approver="hr-ben", now_us=T0 + 9100)
        correction_idx = max(se.entry.idx for se in store.entries()
                             if se.entry.kind == "correction")
    finally:
        store.close()
    before = len(receiver.got)
    receiver.script = [500]                       # the amendment needs a second attempt
    assert _push(db, receiver.url) == 0
    [amend] = receiver.got[before:]
    assert amend["type"] == "timecard-amendments"
    [a] = amend["amendments"]
    assert (a["employee_id"], a["amends"], a["timecard"]["total_hours"], a["corrections"]) == (
        "E1", card["digest"], "8.00", [correction_idx])
    key = receiver.attempted[-1]
    assert receiver.attempted[-2:] == [key, key]   # the retry carries the same key
    assert key.startswith(f"hr:close-{sent['close_idx']}:amend-")
    [rec] = [d for d in _records(db, "hr-delivery") if d.get("what") == "timecard-amendments"]
    assert (rec["amends"], rec["digests"], rec["attempts"]) == (
        {"E1": card["digest"]}, {"E1": a["timecard"]["digest"]}, 2)
    # the close entry still holds the card as closed; nothing more is owed
    [close] = _records(db, "timesheet-close")
    assert close["timecards"][0]["total_hours"] == "7.00"
    assert _push(db, receiver.url) == 0
    assert len(receiver.got) == before + 1


def test_a_running_push_recomputes_only_periods_that_later_entries_touch(
        timesheet_ledger: Path, receiver: Receiver) -> None:
    db = timesheet_ledger
    assert _close(db, "2026-03-28") == 0                   # E1's week
    assert _close(db, "2026-03-30") == 0                   # E2's week
    assert _push(db, receiver.url) == 0
    assert [b["timecards"][0]["employee_id"] for b in receiver.got
            if b["type"] == "timecards"] == ["E1", "E2"]
    store = SQLiteStore(db)
    try:
        size = store.head()[0]
        fixes = Corrections(store)
        c = fixes.propose(device="clock-01", seq=3, field="ts",
                          after=timesheet_kit.at("2026-03-30T08:30", timesheet_kit.NEW_YORK),
                          reason="clock-error", editor="hr-anna", now_us=T0 + 9000)
        fixes.decide(c.id, approve=True, approver="hr-ben", now_us=T0 + 9100)
        applied = Corrections(store).applied_complete
        [owed] = parcels(store, "hr", applied, since_idx=size)
        assert (owed.kind, [a["employee_id"] for a in owed.body["amendments"]]) == (
            "timecard-amendments", ["E2"])
        assert owed.body["amendments"][0]["timecard"]["total_hours"] == "8.50"
        # from the head on nothing touches a closed period: nothing is recomputed
        assert parcels(store, "hr", applied, since_idx=store.head()[0]) == []
        assert [p.kind for p in parcels(store, "other-endpoint", applied)] == [
            "timecards", "timecards"]
    finally:
        store.close()
