"""wire.bodies_review through wire.bodies.parse_body: the ``review`` bodies (docs/protocol.md
§7.2 "review"), what they parse to and how each bad one fails (named field); the exact bytes
of the protocol's examples."""

from __future__ import annotations

from typing import Any

import pytest

from wire.bodies import BodyError, parse_body
from wire.bodies_review import AlertReview, SignOff, period_bounds, period_of
from wire.canonical import canonical

ACK: dict[str, Any] = {"event": "ack", "alert_idx": 812, "by": "alice",
                       "note": "clock-0017 moved; checking"}
W48 = period_bounds("access-sample", "2025-W48")
SAMPLE: dict[str, Any] = {"event": "sign-off", "review": "access-sample", "period": "2025-W48",
                          "from": W48[0], "until": W48[1], "by": "alice", "note": "5 checked",
                          "sampled": [40, 41, 97], "population": 60}


def test_d13_good_bodies_parse_and_extra_fields_are_informational() -> None:
    assert parse_body("review", {**ACK, "ticket": "T-1"}, idx=900) == AlertReview(
        "ack", 812, "alice", "clock-0017 moved; checking")
    assert parse_body("review", {**ACK, "event": "resolve"}, idx=813).event == "resolve"  # type: ignore[union-attr]
    assert parse_body("review", SAMPLE, idx=98) == SignOff(
        "access-sample", "2025-W48", W48[0], W48[1], "alice", "5 checked", (40, 41, 97), 60)
    day = period_bounds("daily-alerts", "2025-11-26")
    daily = {"event": "sign-off", "review": "daily-alerts", "period": "2025-11-26",
             "from": day[0], "until": day[1], "by": "bob", "note": "ok\nall resolved",
             "alerts": 3, "unresolved": []}
    assert parse_body("review", daily, idx=5).period == "2025-11-26"  # type: ignore[union-attr]


def test_d13_periods_are_utc_days_and_iso_weeks() -> None:
    assert period_bounds("daily-alerts", "2025-11-26") == (1_764_115_200_000_000,
                                                           1_764_201_600_000_000)
    assert W48 == (1_763_942_400_000_000, 1_764_547_200_000_000)   # Mon 11-24 .. Mon 12-01
    assert period_of("access-sample", W48[1] - 1) == "2025-W48"
    assert period_of("access-sample", W48[1]) == "2025-W49"
    assert period_of("access-sample", period_bounds("daily-alerts", "2026-01-01")[0]) \
        == "2026-W01"
    assert period_of("daily-alerts", W48[0]) == "2025-11-24"


def test_d13_protocol_example_bytes() -> None:
    assert canonical(ACK) == (b'{"alert_idx":812,"by":"alice","event":"ack",'
                              b'"note":"clock-0017 moved; checking"}')
    assert canonical(SAMPLE) == (
        b'{"by":"alice","event":"sign-off","from":1763942400000000,"note":"5 checked",'
        b'"period":"2025-W48","population":60,"review":"access-sample",'
        b'"sampled":[40,41,97],"until":1764547200000000}')


@pytest.mark.parametrize(("base", "change", "idx", "message"), [
    (ACK, {"event": "close"}, 900, r"event: 'close' is not one of"),
    (ACK, {"alert_idx": 900}, 900, r"alert_idx 900 is not an earlier entry"),
    (ACK, {"alert_idx": -1}, 900, r"alert_idx"),
    (ACK, {"alert_idx": True}, 900, r"alert_idx"),
    (ACK, {"by": "Alice Smith"}, 900, r"by: 'Alice Smith' does not match"),
    (ACK, {"note": " "}, 900, r"note: must not be empty"),
    (ACK, {"note": "x" * 1001}, 900, r"note: at most 1000 characters"),
    (ACK, {"note": "a\x1bb"}, 900, r"note: control characters"),
    (ACK, {"note": None}, 900, r"note: expected a string"),
    (SAMPLE, {"review": "monthly"}, 98, r"review: 'monthly' is not one of"),
    (SAMPLE, {"period": "2025-48"}, 98, r"period: '2025-48' is not a YYYY-Www"),
    (SAMPLE, {"period": "2025-W54"}, 98, r"period: '2025-W54' is not a YYYY-Www"),
    (SAMPLE, {"from": W48[0] + 1}, 98, r"from/until: period 2025-W48 is"),
    (SAMPLE, {"sampled": [41, 40]}, 98, r"sampled: idx must be ascending and distinct"),
    (SAMPLE, {"sampled": [40, 40]}, 98, r"sampled: idx must be ascending and distinct"),
    (SAMPLE, {"sampled": [40, 98]}, 98, r"sampled: every idx is an earlier entry"),
    (SAMPLE, {"sampled": [-1, 40]}, 98, r"sampled: every idx is an earlier entry"),
    (SAMPLE, {"sampled": [1.5]}, 98, r"sampled: expected an array"),
    (SAMPLE, {"sampled": list(range(1001))}, 2000, r"sampled: expected an array of at most"),
    (SAMPLE, {"population": 2}, 98, r"sampled: 3 idx drawn from a population of 2"),
])
def test_d13_bad_bodies_fail_naming_the_field(base: dict[str, Any], change: dict[str, Any],
                                              idx: int, message: str) -> None:
    with pytest.raises(BodyError, match=r"^review body: " + message):
        parse_body("review", {**base, **change}, idx=idx)


@pytest.mark.parametrize(("base", "missing"), [
    (ACK, "alert_idx"), (ACK, "by"), (ACK, "note"), (ACK, "event"),
    (SAMPLE, "period"), (SAMPLE, "until"), (SAMPLE, "sampled"), (SAMPLE, "population")])
def test_d13_missing_fields_are_named(base: dict[str, Any], missing: str) -> None:
    body = {k: v for k, v in base.items() if k != missing}
    with pytest.raises(BodyError, match=f"missing field\\(s\\) {missing}") as e:
        parse_body("review", body, idx=900)
    assert e.value.field == missing
