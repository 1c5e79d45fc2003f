"""wire.bodies_people through wire.bodies.parse_body: the ``employee`` and ``badge`` bodies
(docs/protocol.md §7.3), what they parse to and how each bad one fails (named field)."""

from __future__ import annotations

from typing import Any

import pytest

from wire.bodies import BodyError, parse_body
from wire.bodies_people import BadgeEvent, Employee

EMP: dict[str, Any] = {"employee_id": "E1001", "name": "Ada Lovelace",
                       "department": "Operations", "site": "hq", "timezone": "Europe/London",
                       "manager_id": "E1000", "status": "active", "active_from": "2026-01-05",
                       "left_on": None}
BADGE: dict[str, Any] = {"event": "assigned", "credential": "em4100:0012345678",
                         "employee_id": "E1001", "from": 1_767_600_000_000_000, "until": None}


def test_d6_good_bodies_parse_and_extra_fields_are_informational() -> None:
    assert parse_body("employee", {**EMP, "note": "from HR"}, idx=3) == Employee(
        "E1001", "Ada Lovelace", "Operations", "hq", "Europe/London", "E1000", "active",
        "2026-01-05", None)
    left = {**EMP, "status": "left", "left_on": "2026-06-30", "manager_id": None}
    assert parse_body("employee", left, idx=3).left_on == "2026-06-30"  # type: ignore[union-attr]
    assert parse_body("badge", BADGE, idx=3) == BadgeEvent(
        "assigned", "em4100:0012345678", "E1001", 1_767_600_000_000_000, None)
    lost = {**BADGE, "event": "lost", "employee_id": None, "until": BADGE["from"] + 1}
    assert parse_body("badge", lost, idx=3).until_us == BADGE["from"] + 1  # type: ignore[union-attr]


@pytest.mark.parametrize(("kind", "change", "message"), [
    ("employee", {"timezone": "Mars/Olympus"}, r"timezone: 'Mars/Olympus' is not an IANA"),
    ("employee", {"timezone": "../../etc/passwd"}, r"timezone: .* is not an IANA time zone"),
    ("employee", {"timezone": "europe/london"}, r"not an IANA time zone"),
    ("employee", {"employee_id": "E 1"}, r"employee_id: 'E 1' does not match"),
    ("employee", {"manager_id": "E1001"}, r"E1001 cannot be their own manager"),
    ("employee", {"name": ""}, r"name: must not be empty"),
    ("employee", {"name": "A\nB"}, r"name: control characters"),
    ("employee", {"name": "x" * 201}, r"name: at most 200 characters"),
    ("employee", {"status": "gone"}, r"status: 'gone' is not one of"),
    ("employee", {"status": "left"}, r"left_on: a date exactly when status is \"left\""),
    ("employee", {"left_on": "2026-06-30"}, r"left_on: a date exactly when"),
    ("employee", {"status": "left", "left_on": "2025-01-01"}, r"before active_from"),
    ("employee", {"active_from": "2026-02-30"}, r"not a calendar date"),
    ("employee", {"site": 7}, r"site: expected a string"),
    ("badge", {"event": "stolen"}, r"event: 'stolen' is not one of"),
    ("badge", {"credential": "nope"}, r"credential: 'nope' does not match"),
    ("badge", {"employee_id": None}, r"an assigned badge needs its holder"),
    ("badge", {"until": BADGE["from"]}, r"until: .* is not after from"),
    ("badge", {"from": -1}, r"from: must be ≥ 0"),
    ("badge", {"from": True}, r"from: expected an integer"),
    ("badge", {"event": "returned", "until": BADGE["from"] + 5}, r"a return is an instant"),
])
def test_d6_bad_bodies_are_refused_naming_the_field(kind: str, change: dict[str, Any],
                                                     message: str) -> None:
    base = EMP if kind == "employee" else BADGE
    with pytest.raises(BodyError, match=rf"^{kind} body: .*{message}"):
        parse_body(kind, {**base, **change}, idx=3)


@pytest.mark.parametrize("kind", ["employee", "badge"])
def test_d6_every_field_is_required(kind: str) -> None:
    base = EMP if kind == "employee" else BADGE
    for field in base:
        body = {k: v for k, v in base.items() if k != field}
        with pytest.raises(BodyError, match=rf"missing field\(s\) {field}"):
            parse_body(kind, body, idx=3)
