"""The offline verifier's retention judgement (control D15, docs/protocol.md §7.2): ``policy``
and ``hold`` bodies parse strictly, dual control holds, and a ``retention`` entry is
tampering where it removes anything younger than its cited approved policy allows, anything
under an active hold, or cites no policy once the ledger has policies; a retention entry from
before policies is a finding. Fed through the same LedgerAuditor as ``timeclock-verify``.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pytest

from tests.wire.bundle_kit import COLLECTOR_KEY, DEVICE_KEY, LedgerBuilder, deleted_ranges
from wire.audit import AuditReport, LedgerAuditor
from wire.bodies import BodyError, parse_body

LOG_KEYS = {COLLECTOR_KEY.key_id: COLLECTOR_KEY.verify_key}
DAY = 86_400_000_000
RUN_AT = 30 * DAY


def audit(b: LedgerBuilder) -> AuditReport:
    a = LedgerAuditor(LOG_KEYS)
    for entry, h, body in b.entries:
        a.feed(entry, h, body)
    return a.finish()


def ledger() -> tuple[LedgerBuilder, int]:
    """clock-0017 (site hq) with 3 punches (idx 1-3) recorded at about 0, a 7-day policy for
    all sites proposed by alice (idx 4) and approved by bob (idx 5); returns (builder, 4)."""
    b = LedgerBuilder()
    b.enrol("clock-0017", DEVICE_KEY, at=1000)
    for _ in range(3):
        b.punch(b.signed("clock-0017", DEVICE_KEY))
    p = b.append("policy", {"event": "proposed", "policy": "punches-7d", "record": "punch",
                            "period_days": 7, "scope": "all", "by": "alice"})
    b.append("policy", {"event": "approved", "proposal": p, "by": "bob"})
    return b, p


def retention(b: LedgerBuilder, idxs: list[int], cites: list[dict[str, int]], *,
              at: int = RUN_AT, ts: int = 5, site: str = "hq") -> int:
    r = b.append("retention", {"policy": "punches-7d", "deleted": deleted_ranges(idxs),
                               "count": len(idxs), "policies": cites,
                               "removed": [[i, "clock-0017", site, ts] for i in idxs]}, at=at)
    b.delete_bodies(idxs)
    return r


def _valid(b: LedgerBuilder, p: int) -> int:
    return retention(b, [1, 2], [{"idx": p, "cutoff": RUN_AT - 7 * DAY}])


def _younger(b: LedgerBuilder, p: int) -> int:
    young = b.punch(b.signed("clock-0017", DEVICE_KEY), at=RUN_AT - DAY)
    return retention(b, [1, young], [{"idx": p, "cutoff": RUN_AT - 7 * DAY}])


def _cutoff_too_late(b: LedgerBuilder, p: int) -> int:
    return retention(b, [1], [{"idx": p, "cutoff": RUN_AT - DAY}])


def _no_citation(b: LedgerBuilder, p: int) -> int:
    r = b.append("retention", {"policy": "punches-7d", "deleted": [[1, 1]], "count": 1},
                 at=RUN_AT)
    b.delete_bodies([1])
    return r


def _under_hold(b: LedgerBuilder, p: int) -> int:
    b.append("hold", {"event": "placed", "hold": "h", "case": "C-1", "reason": "suit",
                      "by": "carol", "device": "clock-0017"})
    return _valid(b, p)


def _under_time_hold(b: LedgerBuilder, p: int) -> int:
    b.append("hold", {"event": "placed", "hold": "h", "case": "C-1", "reason": "suit",
                      "by": "carol", "from_ts": 0, "until_ts": 10})
    return _valid(b, p)


def _released_hold(b: LedgerBuilder, p: int) -> int:
    h = b.append("hold", {"event": "placed", "hold": "h", "case": "C-1", "reason": "suit",
                          "by": "carol", "device": "clock-0017"})
    q = b.append("hold", {"event": "release-requested", "hold": h, "reason": "closed",
                          "by": "carol"})
    b.append("hold", {"event": "released", "request": q, "by": "dave"})
    return _valid(b, p)


def _unapproved(b: LedgerBuilder, p: int) -> int:
    q = b.append("policy", {"event": "proposed", "policy": "punches-1d", "record": "punch",
                            "period_days": 1, "scope": "all", "by": "alice"})
    return retention(b, [1], [{"idx": q, "cutoff": RUN_AT - DAY}])


def _self_approved(b: LedgerBuilder, p: int) -> int:
    q = b.append("policy", {"event": "proposed", "policy": "punches-1d", "record": "punch",
                            "period_days": 1, "scope": "all", "by": "alice"})
    return b.append("policy", {"event": "approved", "proposal": q, "by": "alice"})


def _replaced(b: LedgerBuilder, p: int) -> int:
    q = b.append("policy", {"event": "proposed", "policy": "punches-20d", "record": "punch",
                            "period_days": 20, "scope": "all", "by": "alice"})
    b.append("policy", {"event": "approved", "proposal": q, "by": "bob"})
    return _valid(b, p)         # still cites the 7-day policy the 20-day one replaced


def _wrong_site(b: LedgerBuilder, p: int) -> int:
    return retention(b, [1], [{"idx": p, "cutoff": RUN_AT - 7 * DAY}], site="plant")


def _device_body(b: LedgerBuilder, p: int) -> int:
    return b.append("retention", {"policy": "x", "deleted": [[0, 0]], "count": 1,
                               "policies": [{"idx": p, "cutoff": RUN_AT - 7 * DAY}],
                               "removed": [[0, None, None, 0]]}, at=RUN_AT)


Case = Callable[[LedgerBuilder, int], int]
CASES: list[tuple[str, Case, str | None]] = [
    ("valid", _valid, None),
    ("younger-than-policy", _younger, "younger than the cut-off"),
    ("cutoff-later-than-period", _cutoff_too_late, "later than its 7-day period allows"),
    ("no-citation", _no_citation, "cites no approved policy"),
    ("under-device-hold", _under_hold, "hold 'h' (case C-1) at idx 6 keeps"),
    ("under-time-hold", _under_time_hold, "hold 'h' (case C-1) at idx 6 keeps"),
    ("released-hold", _released_hold, None),
    ("unapproved-policy", _unapproved, "which is no approved policy"),
    ("self-approved-policy", _self_approved, "dual control: alice proposed"),
    ("replaced-policy", _replaced, "which a later approved policy for the same scope replaced"),
    ("site-not-the-enrolled-one", _wrong_site, "enrolled at 'hq'"),
    ("device-body", _device_body, "a device entry"),
]


@pytest.mark.parametrize(("case", "make", "error"), CASES, ids=[c[0] for c in CASES])
def test_d15_verifier_judges_retention_at_its_entry(case: str, make: Case,
                                                    error: str | None) -> None:
    b, p = ledger()
    at_idx = make(b, p)
    r = audit(b)
    if error is None:
        assert r.ok, r.findings
        assert not [f for f in r.findings if f.check == "fact"]
        return
    first = r.first_failure
    assert first is not None
    assert (first.idx, first.check) == (at_idx, "fact"), r.findings
    assert error in first.message


def test_d15_credential_hold_is_a_finding_offline_and_pre_policy_retention_too() -> None:
    b, p = ledger()
    b.append("hold", {"event": "placed", "hold": "h", "case": "C-1", "reason": "suit",
                      "by": "carol", "credential": "em4100:0012345678"})
    r_idx = _valid(b, p)
    r = audit(b)
    assert r.ok
    [note] = [f for f in r.findings if f.idx == r_idx]
    assert not note.tamper
    assert "cannot be checked against it offline" in note.message
    old = LedgerBuilder()
    old.enrol("clock-0017", DEVICE_KEY, at=1000)
    old.punch(old.signed("clock-0017", DEVICE_KEY))
    old.append("retention", {"policy": "6y", "deleted": [[1, 1]], "count": 1})
    old.delete_bodies([1])
    r2 = audit(old)
    assert r2.ok
    assert [(f.idx, f.tamper) for f in r2.findings if f.check == "fact"] == [(2, False)]


BAD: list[tuple[str, dict[str, Any], str]] = [
    ("policy", {"event": "proposed", "policy": "p", "record": "access", "period_days": 1,
                "scope": "all", "by": "a"}, "record"),
    ("policy", {"event": "proposed", "policy": "p", "record": "punch", "period_days": 0,
                "scope": "all", "by": "a"}, "period_days: must be ≥ 1"),
    ("policy", {"event": "proposed", "policy": "p", "record": "punch", "period_days": 1,
                "scope": "site", "by": "a"}, r"missing field\(s\) site"),
    ("policy", {"event": "proposed", "policy": "p", "record": "punch", "period_days": 1,
                "scope": "jurisdiction", "jurisdiction": "ES", "sites": [], "by": "a"},
     "sites: expected a non-empty array"),
    ("policy", {"event": "approved", "proposal": 9, "by": "b"}, "not an earlier entry"),
    ("hold", {"event": "placed", "hold": "h", "case": "c", "reason": "r", "by": "a",
              "credential": "not a badge"}, "credential"),
    ("hold", {"event": "placed", "hold": "h", "case": "c", "reason": "r", "by": "a",
              "from_ts": 5, "until_ts": 5}, "until_ts must be after from_ts"),
    ("retention", {"policy": "p", "deleted": [[1, 2]], "count": 2, "policies": [],
                   "removed": []}, "policies: expected a non-empty array"),
    ("retention", {"policy": "p", "deleted": [[1, 2]], "count": 2,
                   "policies": [{"idx": 0, "cutoff": 1}],
                   "removed": [[1, "d", "hq", 1]]}, "exactly the idx of the removed rows"),
]


@pytest.mark.parametrize(("kind", "body", "error"), BAD, ids=[f"{k}-{e}" for k, _, e in BAD])
def test_d15_bad_bodies_are_refused_with_their_reason(kind: str, body: dict[str, Any],
                                                      error: str) -> None:
    with pytest.raises(BodyError, match=error):
        parse_body(kind, body, idx=5)
