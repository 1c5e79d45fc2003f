"""The badge-scan detector (issue 14 item 2; CONTROLS.md D13, §5) on both stores: punches
whose badge the people directory resolves, at the punch's device time, to nobody
(``badge-unknown``) or to a lost or blocked badge (``badge-blocked``) raise an alert entry, a
metric and a log line that never hold the credential; silent without a directory, reloaded
only when a badge entry changes it, once per badge and kind per ``repeat_after_s``."""

from __future__ import annotations

import logging

import pytest

from collector.ingest.detectors import DetectorSettings
from collector.ingest.metrics import sample_value
from collector.ledger.sqlbase import SQLStore
from collector.people import directory
from tests.collector.punch_kit import T0
from tests.monitoring.monitor_kit import Rig, S

HELD = "em4100:0000001001"
LOST = "em4100:0000001002"
BLOCKED = "em4100:0000001003"
STRANGER = "em4100:0000009999"
DAY = 86_400 * S
EMP = {"employee_id": "E1", "name": "Ada Lovelace", "department": "Ops", "site": "hq",
       "timezone": "Europe/London", "manager_id": None, "status": "active",
       "active_from": "2025-01-01", "left_on": None}


def _directory(store: SQLStore) -> None:
    directory.set_employee(store, EMP, now_us=T0)
    start = T0 - 30 * DAY
    for c in (HELD, LOST, BLOCKED):
        directory.badge_event(store, "assigned", c, start_us=start, employee_id="E1",
                              now_us=T0)
    directory.badge_event(store, "lost", LOST, start_us=T0 - DAY, employee_id="E1", now_us=T0)
    directory.badge_event(store, "blocked", BLOCKED, start_us=T0 - DAY, employee_id="E1",
                          now_us=T0)


def test_d13_unknown_and_blocked_badge_scans_alert_without_the_credential(
        store: SQLStore, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO)
    rig = Rig(store)
    c = rig.clock()
    _directory(store)
    assert rig.detectors.badge_scans.refresh(store) is True
    before = sample_value("timeclock_alerts_total", {"kind": "badge-blocked", "severity": "2"})
    rig.tap(c, HELD, ts=T0 + 60 * S)                        # assigned: nothing
    rig.tap(c, LOST, ts=T0 - 40 * DAY)                      # before it was anyone's: unknown
    rig.tap(c, LOST, ts=T0 + 120 * S)
    rig.tap(c, BLOCKED, ts=T0 + 180 * S)
    rig.tap(c, STRANGER, ts=T0 + 240 * S)
    assert rig.kinds() == ["badge-unknown", "badge-blocked", "badge-blocked", "badge-unknown"]
    recorded = rig.recorded()
    assert [(b["alert"], b["severity"], b["status"], b["device"]) for b in recorded] == [
        ("badge-unknown", 3, "unknown", c.device), ("badge-blocked", 2, "lost", c.device),
        ("badge-blocked", 2, "blocked", c.device), ("badge-unknown", 3, "unknown", c.device)]
    punch_idx = {i for b in recorded for i in b["punch_idx"]}
    kinds = {se.entry.idx: se.entry.kind for se in store.entries()}
    assert {kinds[i] for i in punch_idx} == {"punch"}
    assert sample_value("timeclock_alerts_total",
                        {"kind": "badge-blocked", "severity": "2"}) == before + 2
    for text in [*(str(b) for b in recorded), caplog.text]:
        for credential in (LOST, BLOCKED, STRANGER, "0000001002", "0000001003", "0000009999"):
            assert credential not in text


def test_d13_a_badge_alerts_once_per_repeat_window(store: SQLStore) -> None:
    rig = Rig(store, DetectorSettings(repeat_after_s=600))
    c = rig.clock()
    _directory(store)
    rig.detectors.badge_scans.refresh(store)
    for n in range(5):                                      # five scans within ten minutes
        rig.tap(c, BLOCKED, ts=T0 + n * 60 * S)
    rig.tap(c, BLOCKED, ts=T0 + 700 * S)                     # the window has passed
    assert rig.kinds() == ["badge-blocked", "badge-blocked"]
    assert rig.alerts.counts()["alert:badge-blocked"] == 2
    assert rig.alerts.counts()["badge-blocked-repeat"] == 4


def test_d13_badge_scans_are_silent_without_a_directory_and_follow_its_changes(
        store: SQLStore) -> None:
    rig = Rig(store)
    c = rig.clock()
    assert rig.detectors.badge_scans.refresh(store) is False     # no badge periods at all
    rig.tap(c, STRANGER, ts=T0)
    assert rig.kinds() == []
    _directory(store)
    assert rig.detectors.badge_scans.refresh(store) is True
    assert rig.detectors.badge_scans.refresh(store) is False     # unchanged: not reloaded
    rig.tap(c, HELD, ts=T0 + 10 * S)
    directory.badge_event(store, "returned", HELD, start_us=T0 + 20 * S, employee_id="E1",
                          now_us=T0 + 20 * S)
    assert rig.detectors.badge_scans.refresh(store) is True
    rig.tap(c, HELD, ts=T0 + 30 * S)                         # returned: nobody's now
    assert rig.kinds() == ["badge-unknown"]


def test_d13_badge_scans_can_be_turned_off(store: SQLStore) -> None:
    rig = Rig(store, DetectorSettings(badge_scans=False))
    c = rig.clock()
    _directory(store)
    # the periods are still loaded for the per-person buddy-punch detectors
    # (collector.ingest.detectors_people), but no badge scan is judged
    assert rig.detectors.badge_scans.refresh(store) is True
    rig.tap(c, BLOCKED, ts=T0)
    rig.tap(c, STRANGER, ts=T0 + S)
    assert rig.kinds() == []
    off = Rig(store, DetectorSettings(badge_scans=False, people_buddy=False, pair_window_s=0))
    assert off.detectors.badge_scans.refresh(store) is False     # nothing needs them
