"""Retention under policy with legal holds (control D15, docs/protocol.md §7.2), against both
real stores: the store refuses a retention entry that cites no approved policy, removes
anything younger than its policy allows or anything under an active hold; policies and hold
releases need a second principal; a run removes exactly what the plan says, purges the
projections (punches, quarantine), leaves one evidence entry, and the ledger and its audit
bundle still verify.
"""

from __future__ import annotations

import io
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from collector import LedgerError
from collector.ledger import retention_tables
from collector.ledger.audit import verify_store
from collector.ledger.sqlbase import PunchQuery, SQLStore
from collector.records import retention
from collector.records.export_fields import FieldSet
from collector.records.exports import export_payroll
from tests.collector.retention_kit import (
    DAY,
    HELD_CREDENTIAL,
    LOG_KEYS,
    NOW,
    OLD,
    PERIOD_DAYS,
    YOUNG,
    Site,
    approve,
    build,
    bundle_verdict,
    first_failure,
    hold,
    retention_body,
)

# -- the store refuses ----------------------------------------------------------------------

Refusal = Callable[[Site], dict[str, Any]]


def _no_policy(site: Site) -> dict[str, Any]:
    a = site.punches["clk-a"][0]
    return {"policy": "punches-6y", "deleted": [[a, a]], "count": 1}


def _younger(site: Site) -> dict[str, Any]:
    return retention_body(site, [site.young])


def _cutoff_too_late(site: Site) -> dict[str, Any]:
    return retention_body(site, [site.punches["clk-a"][0]],
                          cites={site.policies["punch"]: NOW})


def _under_device_hold(site: Site) -> dict[str, Any]:
    hold(site, device="clk-b")
    return retention_body(site, [site.punches["clk-b"][0]])


def _under_credential_hold(site: Site) -> dict[str, Any]:
    hold(site, credential=HELD_CREDENTIAL)
    return retention_body(site, [site.punches["clk-a"][1]])


def _under_employee_hold(site: Site) -> dict[str, Any]:
    _employee_holds_badge(site.store)
    hold(site, employee="E1001")
    return retention_body(site, [site.punches["clk-a"][1]])


def _unapproved_policy(site: Site) -> dict[str, Any]:
    p = site.event("policy", {"event": "proposed", "policy": "punches-1d", "record": "punch",
                              "period_days": 1, "scope": "site", "site": "hq", "by": "alice"},
                   YOUNG)
    return retention_body(site, [site.young], cites={p: NOW - DAY})


def _not_cited(site: Site) -> dict[str, Any]:
    return retention_body(site, [site.rejection],
                          cites={site.policies["punch"]: NOW - PERIOD_DAYS * DAY})


def _false_manifest(site: Site) -> dict[str, Any]:
    body = retention_body(site, [site.punches["clk-b"][0]])
    body["removed"][0][3] += 1      # the punch's time, told wrong (to slip past a time hold)
    return body


def _access_body(site: Site) -> dict[str, Any]:
    body = retention_body(site, [site.punches["clk-a"][0]])
    body["deleted"] = [[site.access, site.access]]
    body["removed"] = [[site.access, None, None, OLD]]
    return body


REFUSALS: list[tuple[str, Refusal, str]] = [
    ("cites-no-policy", _no_policy, "must cite the approved policies"),
    ("younger-than-policy", _younger, "younger than the cut-off"),
    ("cutoff-later-than-period", _cutoff_too_late, "later than its 7-day period allows"),
    ("under-device-hold", _under_device_hold, "hold 'smith-v-acme' .* keeps"),
    ("under-credential-hold", _under_credential_hold, "hold 'smith-v-acme' .* keeps"),
    ("under-employee-hold", _under_employee_hold, "hold 'smith-v-acme' .* keeps"),
    ("unapproved-policy", _unapproved_policy, "which is no approved policy"),
    ("policy-not-cited", _not_cited, "which it does not cite"),
    ("false-manifest", _false_manifest, "is not what the entry holds"),
    ("access-entry", _access_body, "no retention policy governs access entries"),
]


@pytest.mark.parametrize(("case", "make", "error"), REFUSALS, ids=[c[0] for c in REFUSALS])
def test_d15_store_refuses_a_retention_entry(store: SQLStore, case: str, make: Refusal,
                                             error: str) -> None:
    site = build(store)
    body = make(site)
    size = store.head()[0]
    with pytest.raises(LedgerError, match=f"retention refused: .*{error}"):
        site.event("retention", body, NOW)
    assert store.head()[0] == size          # nothing recorded
    removed = [r[0] for r in body.get("removed", [])] or [body["deleted"][0][0]]
    assert all(e.body is not None for e in store.entries() if e.entry.idx in removed)


Step = tuple[str, Callable[[dict[str, int]], dict[str, Any]]]
"""An entry a case appends: kind and body (from the idx of the case's earlier steps)."""
PROPOSE: Step = ("policy", lambda _: {"event": "proposed", "policy": "p", "record": "punch",
                                      "period_days": 1, "scope": "all", "by": "alice"})
PLACE: Step = ("hold", lambda _: {"event": "placed", "hold": "h", "case": "c", "reason": "r",
                                  "by": "carol", "site": "hq"})

DUAL: list[tuple[str, list[Step], str]] = [
    ("policy approved by its proposer",
     [PROPOSE,
      ("policy", lambda ix: {"event": "approved", "proposal": ix["0"], "by": "alice"})],
     "dual control: alice proposed policy 'p' and cannot approve it too"),
    ("policy approved twice",
     [PROPOSE,
      ("policy", lambda ix: {"event": "approved", "proposal": ix["0"], "by": "bob"}),
      ("policy", lambda ix: {"event": "approved", "proposal": ix["0"], "by": "carol"})],
     "is already approved"),
    ("approval of something else",
     [PLACE,
      ("policy", lambda ix: {"event": "approved", "proposal": ix["0"], "by": "bob"})],
     "which is no policy proposal"),
    ("hold released by the one who asked",
     [PLACE,
      ("hold", lambda ix: {"event": "release-requested", "hold": ix["0"], "reason": "done",
                           "by": "dave"}),
      ("hold", lambda ix: {"event": "released", "request": ix["1"], "by": "dave"})],
     "dual control: dave asked for the release"),
    ("release without a request",
     [PLACE,
      ("hold", lambda ix: {"event": "released", "request": ix["0"], "by": "dave"})],
     "is no hold release request"),
    ("hold that keeps nothing",
     [("hold", lambda _: {"event": "placed", "hold": "h", "case": "c", "reason": "r",
                          "by": "carol"})],
     "would keep nothing"),
]


@pytest.mark.parametrize(("case", "steps", "error"), DUAL, ids=[c[0] for c in DUAL])
def test_d15_policies_and_hold_releases_need_a_second_principal(
        store: SQLStore, case: str, steps: list[Step], error: str) -> None:
    site = build(store, policies=False)
    ix: dict[str, int] = {}
    for n, (kind, make) in enumerate(steps):
        if n == len(steps) - 1:
            size = store.head()[0]
            with pytest.raises(LedgerError, match=error):
                site.event(kind, make(ix), YOUNG)
            assert store.head()[0] == size
        else:
            ix[str(n)] = site.event(kind, make(ix), YOUNG)


def test_d15_release_needs_a_second_approver_and_then_frees_the_hold(store: SQLStore) -> None:
    site = build(store)
    h = hold(site, device="clk-b")
    assert retention.plan(store, NOW).holds[0].keeps == 3
    req = site.event("hold", {"event": "release-requested", "hold": h, "reason": "case closed",
                              "by": "carol"}, YOUNG)
    assert retention.plan(store, NOW).holds[0].keeps == 3     # asked, not released
    site.event("hold", {"event": "released", "request": req, "by": "dave"}, YOUNG)
    p = retention.plan(store, NOW)
    assert (p.holds, len(p.remove)) == ([], len(site.old))


# -- a run ----------------------------------------------------------------------------------

def _payroll_text(store: SQLStore) -> str:
    out = io.StringIO()
    export_payroll(store, out, fmt="csv", query=PunchQuery(), now_us=NOW,
                   fields=FieldSet.choose("investigation"))     # shows the credential (D20)
    return out.getvalue()


def _raw_quarantine(store: SQLStore) -> dict[int, tuple[bytes, str]]:
    return {int(i): (bytes(r), str(d)) for i, r, d in store.query(
        "SELECT idx, raw, detail FROM quarantine")}


def test_d15_run_removes_exactly_the_plan_and_the_ledger_still_verifies(
        store: SQLStore, tmp_path: Path) -> None:
    site = build(store)
    before = _payroll_text(store)
    assert HELD_CREDENTIAL in before
    p = retention.plan(store, NOW)
    assert {r.idx for r in p.remove} == site.old
    by_policy = {pp.name: dict(pp.remove) for pp in p.policies}
    assert by_policy == {"punch-7d": {"hq": 6, "plant": 3}, "rejection-7d": {"plant": 1}}

    result = retention.run(store, NOW)
    assert result.entry_idx == store.head()[0] - 1        # ONE evidence entry, the last one
    assert (result.purged_punches, result.purged_quarantine) == (9, 1)
    gone = {e.entry.idx for e in store.entries() if e.body is None}
    assert gone == site.old
    # the projections hold nothing of what went: payroll, the API's reads, quarantine
    rows = list(store.punch_rows(PunchQuery()))
    assert [r.idx for r in rows] == [site.young]
    after = _payroll_text(store)
    assert HELD_CREDENTIAL not in after
    assert "em4100:0000000003" not in after
    assert _raw_quarantine(store)[site.rejection] == (b"", "")
    assert store.query("SELECT COUNT(*) FROM punches WHERE credential = ''")[0][0] == 9
    # (device, seq) stay known: the same punch again is a duplicate, not a new entry
    assert retention_tables.unpurged(store.query) == (0, 0)
    # idempotent: a second run removes nothing and writes nothing
    size = store.head()[0]
    again = retention.run(store, NOW + DAY)
    assert (again.entry_idx, store.head()[0]) == (None, size)
    # both verifiers: the live store (full) and timeclock-verify on the audit bundle
    result_v = verify_store(store, LOG_KEYS, full=True)
    assert result_v.ok, result_v.report.findings
    rc, printed = bundle_verdict(store, tmp_path / "bundle")
    assert (rc, first_failure(printed)) == (0, None), printed


HOLDS: list[tuple[str, dict[str, Any], Callable[[Site], set[int]]]] = [
    ("device", {"device": "clk-b"}, lambda s: set(s.punches["clk-b"])),
    ("site", {"site": "plant"}, lambda s: set(s.punches["clk-c"]) | {s.rejection}),
    ("time-range", {"from_ts": OLD + 2_000_000, "until_ts": OLD + 3_000_000},
     lambda s: {i for i in s.old if s.ts.get(i) == OLD + 2_000_000}),
    ("credential", {"credential": HELD_CREDENTIAL},
     lambda s: {s.punches["clk-a"][1]} | {s.rejection}),
    ("device-and-time", {"device": "clk-a", "until_ts": OLD + 2_000_000},
     lambda s: {s.punches["clk-a"][0]}),
    # E1001 held HELD_CREDENTIAL (people directory); a rejection has no badge to resolve
    ("employee", {"employee": "E1001"}, lambda s: {s.punches["clk-a"][1]} | {s.rejection}),
]


def _employee_holds_badge(store: SQLStore) -> None:
    from collector.people import directory  # noqa: PLC0415 - only this case needs it

    directory.set_employee(store, {"employee_id": "E1001", "name": "Ada Lovelace",
                                   "department": "Ops", "site": "hq",
                                   "timezone": "Europe/London", "manager_id": None,
                                   "status": "active", "active_from": "2024-01-01",
                                   "left_on": None}, now_us=YOUNG)
    directory.badge_event(store, "assigned", HELD_CREDENTIAL, start_us=OLD - DAY,
                          employee_id="E1001", now_us=YOUNG)


@pytest.mark.parametrize(("case", "criteria", "kept"), HOLDS, ids=[c[0] for c in HOLDS])
def test_d15_a_hold_keeps_exactly_what_it_names(store: SQLStore, case: str,
                                                criteria: dict[str, Any],
                                                kept: Callable[[Site], set[int]]) -> None:
    site = build(store)
    if "employee" in criteria:
        _employee_holds_badge(store)
    hold(site, **criteria)
    want_kept = kept(site)
    assert want_kept
    assert want_kept < site.old
    p = retention.plan(store, NOW)
    assert p.holds[0].keeps == len(want_kept)
    retention.run(store, NOW)
    gone = {e.entry.idx for e in store.entries() if e.body is None}
    assert gone == site.old - want_kept
    assert {r.idx for r in store.punch_rows(PunchQuery())} == \
        (want_kept | {site.young}) - {site.rejection}
    assert verify_store(store, LOG_KEYS, full=True).ok


def test_d15_site_policy_takes_precedence_over_the_policy_for_all(store: SQLStore) -> None:
    site = build(store)
    approve(site, "plant-60d", days=60, scope="site", site="plant", now=YOUNG)
    approve(site, "es-45d", days=45, scope="jurisdiction", jurisdiction="ES",
            sites=["hq"], now=YOUNG)
    p = retention.plan(store, NOW)
    assert {r.idx for r in p.remove} == {site.rejection}   # punches: 30 days < 45 and 60
    assert {pp.name: sum(pp.remove.values()) for pp in p.policies} == \
        {"punch-7d": 0, "rejection-7d": 1, "plant-60d": 0, "es-45d": 0}
    # citing the policy for all sites for an hq punch is refused: the jurisdiction's governs
    with pytest.raises(LedgerError, match="governed by policy 'es-45d'"):
        site.event("retention", retention_body(site, [site.punches["clk-a"][0]]), NOW)


def test_d15_retention_entry_from_before_policies_is_a_finding(store: SQLStore,
                                                                tmp_path: Path,
                                                                monkeypatch: pytest.MonkeyPatch
                                                                ) -> None:
    """An old ledger's retention entry (no policy existed, none cited) is reported, not a
    crash, and not tampering."""
    site = build(store, policies=False)
    monkeypatch.setattr(retention_tables, "check_append", lambda *a, **k: None)  # the old code
    a = site.punches["clk-a"][0]
    r = site.event("retention", {"policy": "punches-6y", "deleted": [[a, a]], "count": 1}, NOW)
    monkeypatch.undo()
    result = verify_store(store, LOG_KEYS, full=True)
    assert result.ok
    notes = [f for f in result.report.findings if f.idx == r]
    assert [f.tamper for f in notes] == [False]
    assert "from before retention policies" in notes[0].message
    rc, printed = bundle_verdict(store, tmp_path / "bundle")
    assert rc == 0, printed


async def test_d15_after_a_run_the_api_serves_nothing_of_what_went(sqlite_store: SQLStore
                                                                   ) -> None:
    from collector.ledger.tables import ensure_schema  # noqa: PLC0415 - as below
    from tests.collector.api_kit import (  # noqa: PLC0415 - the API's imports, here only
        issue_tokens,
        start_api,
    )
    from tests.collector.ledger_kit import T0  # noqa: PLC0415 - as above

    site = build(sqlite_store)
    # principals that may see badges (D20: the default field set shows no credential), made
    # before start_api's admin exists
    ensure_schema(sqlite_store)
    mine = issue_tokens(sqlite_store, T0 + 10**9, {"hr-badges": ("hr.read", "hr.people"),
                                                   "pay-badges": ("payroll.export",
                                                                  "hr.people")})
    api = await start_api(sqlite_store)
    api.tokens.update(mine)
    try:
        before = await api.call("GET", "/v1/punches?field_set=investigation", "hr-badges")
        assert before.status == 200
        text = await before.text()
        assert HELD_CREDENTIAL in text
        assert "em4100:0000000003" in text
        retention.run(sqlite_store, NOW)
        after = await api.call("GET", "/v1/punches?field_set=investigation", "hr-badges")
        text = await after.text()
        assert after.status == 200
        assert HELD_CREDENTIAL not in text
        assert "em4100:0000000003" not in text
        assert site.credentials[site.young] in text           # the young punch stays
        export = await api.call("GET", "/v1/exports/payroll?field_set=investigation",
                                "pay-badges")
        body = await export.text()
        assert export.status == 200
        assert HELD_CREDENTIAL not in body
        assert site.credentials[site.young] in body
    finally:
        await api.client.close()


def test_d15_incremental_verify_judges_a_retention_after_its_resume_point(
        store: SQLStore, monkeypatch: pytest.MonkeyPatch) -> None:
    """A verify resumed from a checkpoint still knows the policies, holds and entry times
    below it (read from the store), so a bad retention entry after it fails at that entry."""
    from tests.collector.retention_kit import LOG_KEY  # noqa: PLC0415
    from wire.ledger import Checkpoint  # noqa: PLC0415

    site = build(store)
    hold(site, device="clk-b")
    size, head = store.head()
    store.add_checkpoint(Checkpoint(log=LOG_KEY.key_id, size=size, head=head,
                                    at=YOUNG).sign(LOG_KEY))
    first = verify_store(store, LOG_KEYS)
    assert first.ok
    assert first.state is not None
    monkeypatch.setattr(retention_tables, "check_append", lambda *a, **k: None)
    bad = site.event("retention", retention_body(site, [site.punches["clk-b"][0]]), NOW)
    monkeypatch.undo()
    again = verify_store(store, LOG_KEYS, state=first.state)
    assert again.resumed_from == size                         # resumed, not from idx 0
    ff = again.report.first_failure
    assert ff is not None
    assert ff.idx == bad
    assert "hold 'smith-v-acme' (case 2026-CV-1) at idx" in ff.message
