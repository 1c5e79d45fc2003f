"""wire.grants: who could do what, when, re-derived from access and correction bodies alone,
and every segregation-of-duties / dual-control breach named at its entry (controls D6, D7,
D8). Table-driven: each history names the breaches it must produce, an honest one none."""

from __future__ import annotations

from typing import Any

import pytest

from wire.grants import AccessHistory, sod_violation, token_entry_error

H = "ab" * 32


def admin(actor: str, action: str, **what: Any) -> dict[str, Any]:
    return {"type": "admin", "outcome": "done", "actor": actor, "action": action, "at": 1,
            **what}


def token(actor: str, principal: str, tid: str, *, new: bool = False,
          roles: tuple[str, ...] = (), **flags: Any) -> dict[str, Any]:
    return admin(actor, "token.create", principal=principal, token=tid, token_hash=H,
                 expires_at=10**12, roles=list(roles), new_principal=new, **flags)


BOOT = [  # the host operator's bootstrap: nobody to approve yet, so no breach
    ("access", token("cli:op", "hr1", "tok-1", new=True, roles=("hr.read",), bootstrap=True)),
    ("access", token("cli:op", "ed", "tok-2", new=True, roles=("hr.correct",),
                     bootstrap=True)),
    ("access", token("cli:op", "ap", "tok-3", new=True, roles=("hr.approve",),
                     bootstrap=True)),
    ("access", token("cli:op", "root", "tok-4", new=True, roles=("admin",), bootstrap=True)),
    # a second admin once one exists: created by it, first token handed over by the operator
    ("access", admin("root", "principal.create", principal="root2", kind="token",
                     roles=["admin"])),
    ("access", token("cli:op", "root2", "tok-5", handover=True)),
]
# bootstrap claimed after the first admin exists is a breach
LATE = [("access", token("cli:op", "eve", "tok-9", new=True, roles=("hr.read",),
                         bootstrap=True))]

CASES: list[tuple[str, list[tuple[str, dict[str, Any]]], list[tuple[int, str, str]]]] = [
    ("honest history", [
        *BOOT,
        ("access", admin("root", "principal.create", principal="bob", kind="token",
                         roles=[])),
        ("access", admin("root", "grant.request", grant="grt-1", principal="bob",
                         roles=["hr.read"], previous=[])),
        ("access", admin("root2", "grant.approve", grant="grt-1", principal="bob",
                         roles=["hr.read"], requested_by="root")),
        ("access", token("cli:op", "bob", "tok-6", handover=True)),
        ("access", token("bob", "bob", "tok-7")),
        ("access", {"type": "correction", "action": "propose", "actor": "ed",
                    "proposal": "cor-1"}),
        ("correction", {"original_idx": 0, "editor": "ed", "approver": "ap",
                        "subject": "emp-1"}),
        ("access", admin("root", "principal.disable", principal="bob", roles=[])),
        ("access", {"type": "request", "principal": "root", "path": "/v1/x"}),
    ], []),
    ("finding 5: an admin mints a token for someone else", [
        *BOOT, ("access", token("root", "hr1", "tok-6"))],
     [(6, "D7", "root obtained token tok-6 for another principal, hr1")]),
    ("handover of a second token", [
        *BOOT, ("access", token("cli:op", "hr1", "tok-6", handover=True))],
     [(6, "D7", "cli:op obtained token tok-6 for another principal, hr1")]),
    ("bootstrap claimed once an admin exists", [*BOOT, *LATE],
     [(6, "D8", "cli:op gave eve hr.read (punch data) without a second admin's approval"),
      (6, "D7", "cli:op obtained token tok-9 for another principal, eve")]),
    ("punch-data role set without approval", [
        *BOOT, ("access", admin("root", "roles.set", principal="root2", roles=["audit.read",
                                                                              "hr.read"]))],
     [(6, "D8", "root gave root2 hr.read (punch data) without a second admin's approval")]),
    ("grant approved by its requester", [
        *BOOT,
        ("access", admin("root", "grant.request", grant="grt-1", principal="hr1",
                         roles=["hr.read", "payroll.export"])),
        ("access", admin("root", "grant.approve", grant="grt-1", principal="hr1",
                         roles=["hr.read", "payroll.export"]))],
     [(7, "D8", "grant grt-1 for hr1 approved by its requester root"),
      (7, "D8", "root gave hr1 payroll.export (punch data) without a second admin's "
                "approval")]),
    ("a role set that breaks SoD", [
        *BOOT, ("access", admin("root", "roles.set", principal="ed",
                                roles=["hr.approve", "hr.correct"]))],
     [(6, "D8", "ed holds hr.approve, hr.correct: segregation of duties: no principal may "
                "hold both hr.correct and hr.approve"),
      (6, "D8", "root gave ed hr.approve (punch data) without a second admin's approval")]),
    ("correction: editor approves, subject edits, roles not held", [
        *BOOT,
        ("access", {"type": "correction", "action": "propose", "actor": "hr1",
                    "proposal": "cor-1"}),
        ("correction", {"original_idx": 0, "editor": "ed", "approver": "ed"}),
        ("correction", {"original_idx": 0, "editor": "ed", "approver": "ap",
                        "subject": "ap"})],
     [(6, "D6", "correction cor-1 proposed by hr1, who did not hold hr.correct then"),
      (7, "D6", "correction proposed and approved by the same principal ed"),
      (7, "D6", "correction approved by ed, who did not hold hr.approve then"),
      (8, "D6", "correction of ap's own punch approved by ap")]),
    ("a malformed admin entry", [*BOOT, ("access", admin("root", "roles.set"))],
     [(6, "D8", "malformed roles.set entry")]),
]


@pytest.mark.parametrize(("history", "expected"), [(h, e) for _, h, e in CASES],
                         ids=[c[0] for c in CASES])
def test_d8_history_breaches_are_named_at_their_entry(
        history: list[tuple[str, dict[str, Any]]], expected: list[tuple[int, str, str]]
        ) -> None:
    h = AccessHistory()
    for idx, (kind, body) in enumerate(history):
        h.feed(idx, kind, body)
    got = [(b.idx, b.rule, b.message) for b in h.breaches]
    assert len(got) == len(expected), got
    for (idx, rule, msg), (want_idx, want_rule, want) in zip(got, expected, strict=True):
        assert (idx, rule) == (want_idx, want_rule), got
        assert msg.startswith(want), got


def test_d8_state_after_replay_is_the_projection() -> None:
    h = AccessHistory()
    for idx, (kind, body) in enumerate([*BOOT, ("access", admin(
            "root", "token.revoke", token="tok-1")), ("access", admin(  # noqa: S106 - a token id
            "root", "principal.disable", principal="ed", roles=[]))]):
        h.feed(idx, kind, body)
    assert h.principals["hr1"].roles == {"hr.read"}
    assert h.tokens["tok-1"].revoked_at == 1
    assert (h.principals["ed"].disabled_at, h.principals["ed"].roles_idx) == (1, 7)
    assert h.tokens["tok-2"].revoked_at == 1          # disabling revokes its tokens
    assert h.roles_at("ed") == frozenset()


@pytest.mark.parametrize(("roles", "why"), [
    (["hr.correct", "hr.approve"], "both hr.correct and hr.approve"),
    (["admin", "payroll.export"], "admin may not also hold payroll.export"),
    (["admin", "audit.read"], None),
])
def test_d6_d8_one_sod_rule_for_collector_and_verifier(roles: list[str],
                                                       why: str | None) -> None:
    got = sod_violation(roles)
    assert (got is None) == (why is None)
    if why is not None:
        assert got is not None
        assert why in got


def test_d7_token_row_must_match_the_entry_that_issued_it() -> None:
    body = token("cli:op", "hr1", "tok-1", new=True)
    kw = {"token_id": "tok-1", "principal": "hr1", "token_hash": H, "expires_at": 10**12}
    assert token_entry_error(body, **kw) is None  # type: ignore[arg-type]
    assert token_entry_error(None, **kw) == "no ledger entry issued it"  # type: ignore[arg-type]
    assert token_entry_error(body, **{**kw, "token_hash": "cd" * 32}) == (  # type: ignore[arg-type]
        "its hash differs from the entry that issued it")
    assert token_entry_error(body, **{**kw, "principal": "eve"}) == (  # type: ignore[arg-type]
        "its row differs from the entry that issued it")
