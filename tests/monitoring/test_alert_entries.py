"""The ``alert`` entry kind (docs/protocol.md §7.2): parsed strictly by wire.bodies, appended by
the store only when valid, and a ledger holding alerts verifies (the auditor reads them as
informational)."""

from __future__ import annotations

from typing import Any

import pytest

from collector import LedgerError
from collector.ingest.alerts import NOT_RECORDED, Alerts
from collector.ledger.audit import verify_store
from collector.ledger.base import EventFact
from collector.ledger.sqlbase import SQLStore
from tests.collector.punch_kit import T0
from tests.monitoring.monitor_kit import Rig, S
from wire.bodies import Alert, BodyError, parse_body

GOOD: dict[str, Any] = {"alert": "buddy-punch", "severity": 2, "detail": "one badge twice",
                        "device": "clock-0001", "punch_idx": [3, 4], "at": T0}


def test_d13_alert_body_parses() -> None:
    assert parse_body("alert", GOOD, idx=9) == Alert("buddy-punch", 2, "one badge twice",
                                                     "clock-0001")
    assert parse_body("alert", {**GOOD, "device": None}, idx=9) == Alert(
        "buddy-punch", 2, "one badge twice", None)


@pytest.mark.parametrize(("change", "message"), [
    ({"alert": "Buddy Punch"}, "alert"),
    ({"severity": 0}, "severity"),
    ({"severity": 4}, "severity"),
    ({"severity": True}, "severity"),
    ({"detail": 7}, "detail"),
    ({"device": "no spaces allowed"}, "device"),
])
def test_d13_bad_alert_bodies_are_refused(change: dict[str, Any], message: str) -> None:
    with pytest.raises(BodyError, match=f"alert body: .*{message}"):
        parse_body("alert", {**GOOD, **change}, idx=9)


def test_d13_missing_fields_are_refused() -> None:
    with pytest.raises(BodyError, match="missing field"):
        parse_body("alert", {"alert": "x", "severity": 2}, idx=9)


def test_d13_store_refuses_a_bad_alert_and_records_nothing(store: SQLStore) -> None:
    size = store.head()[0]
    with pytest.raises(LedgerError, match="alert body"):
        store.append([EventFact("alert", {**GOOD, "severity": 9})], now_us=T0)
    assert store.head()[0] == size


def test_d13_a_ledger_with_alerts_verifies(store: SQLStore) -> None:
    rig = Rig(store)
    a, b = rig.clock(), rig.clock()
    rig.tap(a, "em4100:0000000001", ts=T0)
    rig.tap(b, "em4100:0000000001", ts=T0 + 3 * S)
    rig.alerts.alert("chain-break", severity=1, device=a.device, detail="a broken link")
    assert [x["alert"] for x in rig.recorded()] == ["buddy-punch", "chain-break"]
    result = verify_store(store, {})
    assert result.ok, result.report


def test_d13_a_failed_flush_keeps_the_alerts_for_the_next() -> None:
    alerts = Alerts(record=True, clock=lambda: T0)
    alerts.alert("clock-offline", severity=2, device="clock-0001", detail="gone")

    def away(_facts: object) -> None:
        raise LedgerError("the database is away")
    with pytest.raises(LedgerError):
        alerts.flush(away)
    assert alerts.unrecorded() == 1
    got: list[EventFact] = []
    assert alerts.flush(got.extend) == 1
    assert [f.body["alert"] for f in got] == ["clock-offline"]
    assert alerts.unrecorded() == 0


def test_d13_the_unrecorded_queue_is_bounded() -> None:
    alerts = Alerts(record=True, max_unrecorded=3, clock=lambda: T0)
    for n in range(5):
        alerts.alert("gap", severity=2, device=None, detail=f"gap {n}")
    got: list[EventFact] = []
    alerts.flush(got.extend)
    assert [f.body["detail"] for f in got] == ["gap 2", "gap 3", "gap 4"]


@pytest.mark.parametrize("kind", sorted(NOT_RECORDED))
def test_d13_kinds_whose_evidence_is_elsewhere_are_not_entries(kind: str) -> None:
    alerts = Alerts(record=True, clock=lambda: T0)
    seen: list[dict[str, Any]] = []
    alerts.listeners.append(seen.append)
    alerts.alert(kind, severity=1, device=None, detail="x")
    alerts.alert("gap", severity=2, device=None, detail="y")
    got: list[EventFact] = []
    alerts.flush(got.extend)
    assert [f.body["alert"] for f in got] == ["gap"]
    assert [b["alert"] for b in seen] == [kind, "gap"]       # raised all the same
