"""The ``shred`` body (DESIGN.md §8.6, docs/protocol.md §7.2 shred), parsed strictly, and the
auditor's rule: a missing body is accepted only under a shred (or retention) entry that names
it, never for a kind verification needs; the shred is reported, not called tampering.

Control: D15 (disposal is logged; the chain still verifies).
"""

from __future__ import annotations

from typing import Any

import pytest

from tests.wire.bundle_kit import COLLECTOR_KEY, DEVICE_KEY, LedgerBuilder
from wire.audit import AuditReport, LedgerAuditor
from wire.bodies import BodyError, parse_body
from wire.bodies_shred import Shred, ranges

K1, K2 = "dk-" + "1" * 32, "dk-" + "a" * 32
GOOD: dict[str, Any] = {"v": 1, "employee": "E1001", "keys": [K1, K2],
                        "entries": [[1, 2], [4, 4]], "count": 3, "reason": "gdpr art. 17",
                        "case": "DSR-2026-7", "by": "alice", "approved_by": "bob"}


def _with(**kw: Any) -> dict[str, Any]:
    body = dict(GOOD)
    for k, v in kw.items():
        if v is None:
            body.pop(k)
        else:
            body[k] = v
    return body


def test_d15_a_good_shred_body_round_trips() -> None:
    s = parse_body("shred", GOOD, idx=9)
    assert isinstance(s, Shred)
    assert (s.employee, s.keys, s.entries, s.count) == ("E1001", (K1, K2), ((1, 2), (4, 4)), 3)
    assert s.to_dict() == GOOD
    assert s.covers(2)
    assert not s.covers(3)
    assert ranges([4, 1, 2, 2]) == ((1, 2), (4, 4))


@pytest.mark.parametrize(("body", "why"), [
    (_with(v=2), "v: unsupported version"),
    (_with(extra=1), "unknown field"),
    (_with(case=None), "missing field.*case"),
    (_with(keys=[]), "non-empty list"),
    (_with(keys=[K2, K1]), "strictly ascending"),
    (_with(keys=[K1, K1]), "strictly ascending"),
    (_with(keys=["dk-XYZ"]), "32 lowercase hex"),
    (_with(entries=[[2, 1]]), r"\[2, 1\] is not first ≤ last"),
    (_with(entries=[[1, 2], [3, 4]], count=4), "neither overlap nor touch"),
    (_with(entries=[[4, 4], [1, 2]]), "ascending"),
    (_with(entries=[[1, 9]], count=9), "own idx 9 or beyond"),
    (_with(entries=[[1, True]]), "two integers"),
    (_with(count=4), "count: 4, but the ranges name 3"),
    (_with(approved_by="alice"), "second principal"),
    (_with(employee="Ada Lovelace"), "employee"),
    (_with(by="Alice!"), "by"),
])
def test_d15_bad_shred_bodies_are_refused_with_their_reason(body: dict[str, Any],
                                                             why: str) -> None:
    with pytest.raises(BodyError, match=why):
        parse_body("shred", body, idx=9)


def _audit(b: LedgerBuilder) -> AuditReport:
    a = LedgerAuditor({COLLECTOR_KEY.key_id: COLLECTOR_KEY.verify_key})
    for entry, h, body in b.entries:
        a.feed(entry, h, body)
    return a.finish()


def _ledger() -> LedgerBuilder:
    """clock-0017 enrolled (idx 0) and 4 punches (idx 1-4)."""
    b = LedgerBuilder()
    b.enrol("clock-0017", DEVICE_KEY, at=1000)
    for _ in range(4):
        b.punch(b.signed("clock-0017", DEVICE_KEY))
    return b


def test_d15_missing_bodies_under_a_shred_verify_and_the_shred_is_reported() -> None:
    b = _ledger()
    b.append("shred", _with(entries=[[1, 2], [4, 4]], count=3))
    b.delete_bodies([1, 2, 4])
    report = _audit(b)
    assert report.ok, report.findings
    assert [f.message for f in report.findings if "shred" in f.message] == [
        "shred: 2 data key(s) of employee E1001 destroyed, the bodies of 3 entries erased "
        "(case DSR-2026-7; asked by alice, approved by bob)"]


@pytest.mark.parametrize(("missing", "why"), [
    ([3], "body of idx 3 is missing and no later retention entry lists it"),
    ([0], "the body of a device entry is missing"),
    ([5], "the body of a shred entry is missing"),
])
def test_d15_a_missing_body_the_shred_does_not_cover_is_tampering(missing: list[int],
                                                                   why: str) -> None:
    b = _ledger()
    b.append("shred", _with(entries=[[1, 2], [4, 4]], count=3))
    b.delete_bodies([1, 2, 4, *missing])
    report = _audit(b)
    assert not report.ok
    assert any(why in f.message and f.tamper for f in report.findings), report.findings


def test_d15_a_shred_before_the_missing_body_does_not_cover_later_deletions() -> None:
    b = _ledger()
    b.append("shred", _with(entries=[[1, 1]], count=1))
    late = b.punch(b.signed("clock-0017", DEVICE_KEY))
    b.delete_bodies([1, late])
    report = _audit(b)
    assert any(f"body of idx {late} is missing" in f.message and f.tamper
               for f in report.findings), report.findings
