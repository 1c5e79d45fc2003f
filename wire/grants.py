"""Who could do what, when: access state re-derived from the chain, and the SoD rules.

The collector's access tables (principals, roles, tokens, pending grants) are projections of
the ledger's ``access`` entries of ``"type": "admin"`` (docs/protocol.md §7.2 ``access``).
:class:`AccessHistory` replays those entries in idx order and holds, after each one, the
state they define; it is what the collector compares its tables with (start-up and
``verify``), and what both verifiers use to report every segregation-of-duties breach in the
ledger's history (DESIGN.md §8.5 "Grants", "Dual control"; CONTROLS.md D6, D7, D8).

This module is the one definition of the rules, shared by the collector (which refuses a
change that breaks them) and the offline verifier (which reports one that was recorded):
- :func:`sod_violation`: nobody holds both ``hr.correct`` and ``hr.approve``; ``admin``
  holds no ``hr.*`` or ``payroll.*`` role;
- widening a principal's access to punch data (:data:`PUNCH_DATA_ROLES`) takes a
  ``grant.request`` by one principal and a ``grant.approve`` by a different one, except while
  the ledger has no admin yet (the host operator's bootstrap, ``"bootstrap": true``);
- a token is issued to the calling principal itself, or by the host operator (an actor
  ``cli:<os user>``) while the ledger has no admin yet (bootstrap) or as the first token of
  a principal that has none (``"handover": true``);
- a correction's subject (the employee whose punch it is), editor and approver are three
  different persons (:func:`three_person_violation`: employee ids where the principals are
  linked to people, principal names otherwise); an employee's dispute of their own punch
  (reason ``employee-dispute``) is the one proposal whose editor is its subject;
- a principal's scope (the person it is linked to, the sites it is limited to) travels in
  every entry that sets its roles (``"employee"``, ``"sites"``; absent: unlinked, every
  site); ``employee.self`` and ``supervisor`` need a linked person, and a scope change that
  widens access to punch data needs a second admin like a role (:func:`widens_scope`).

Pure: no database, network or collector import.
"""

from __future__ import annotations

import hashlib
import hmac
import json
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

PERSON_ROLES = frozenset({"employee.self", "supervisor"})
"""Roles whose data is defined by the person the principal is linked to (own punches, team)."""
PUNCH_DATA_ROLES = frozenset({"hr.read", "payroll.export", "hr.correct", "hr.approve",
                              "hr.people", *PERSON_ROLES})
"""Roles that read or change punch data or who punched (the people directory): granting one
needs a second admin's approval; collector.api.rbac refuses them to admins."""

ROLE_ACTIONS = frozenset({"token.create", "cert.register", "principal.create", "roles.set",
                          "grant.approve", "principal.disable"})
"""Admin actions whose ``roles`` field is the principal's effective role set after them (a
principal's row carries the idx of the last of these: authentication checks it)."""

OPERATOR_PREFIX = "cli:"


def sod_violation(roles: Iterable[str]) -> str | None:
    """The segregation-of-duties rule ``roles`` breaks, in words, or None."""
    rs = frozenset(roles)
    if {"hr.correct", "hr.approve"} <= rs:
        return ("segregation of duties: no principal may hold both hr.correct and "
                "hr.approve (whoever proposes a correction must not approve it)")
    if "hr.correct" in rs and "supervisor" in rs:
        return ("segregation of duties: no principal may hold both hr.correct and "
                "supervisor (a supervisor approves their team's corrections)")
    if "admin" in rs:
        bad = sorted(r for r in rs if r.startswith(("hr.", "payroll.")) or r in PERSON_ROLES)
        if bad:
            return (f"segregation of duties: admin may not also hold {', '.join(bad)} "
                    f"(admins manage access, never punch data)")
    return None


def widens_punch_access(before: Iterable[str], after: Iterable[str]) -> frozenset[str]:
    """The punch-data roles ``after`` holds that ``before`` did not."""
    return (frozenset(after) - frozenset(before)) & PUNCH_DATA_ROLES


@dataclass(frozen=True, slots=True)
class PrincipalScope:
    """Who a principal is (an employee id of the people directory, or None) and the sites its
    roles are limited to (None: every site)."""

    employee: str | None = None
    sites: frozenset[str] | None = None

    def fields(self) -> dict[str, Any]:
        """The fields a roles entry carries for this scope (none when unscoped)."""
        out: dict[str, Any] = {}
        if self.employee is not None:
            out["employee"] = self.employee
        if self.sites is not None:
            out["sites"] = sorted(self.sites)
        return out

    def describe(self) -> str:
        who = f"person {self.employee}" if self.employee is not None else "no person"
        where = "every site" if self.sites is None else "sites " + ", ".join(sorted(self.sites))
        return f"{who}, {where}"


UNSCOPED = PrincipalScope()


def scope_of(body: Mapping[str, Any] | None) -> PrincipalScope:
    """The scope a roles entry (or grant) body gives; ValueError when its fields are not a
    string ``employee`` and a non-empty list of string ``sites``."""
    if body is None:
        return UNSCOPED
    emp, sites = body.get("employee"), body.get("sites")
    if emp is not None and (not isinstance(emp, str) or not emp):
        raise ValueError("employee must be a non-empty string")
    if sites is not None and (not isinstance(sites, list) or not sites
                              or not all(isinstance(s, str) and s for s in sites)):
        raise ValueError("sites must be a non-empty list of site names")
    return PrincipalScope(emp, None if sites is None else frozenset(sites))


def scope_violation(roles: Iterable[str], scope: PrincipalScope) -> str | None:
    """Why ``roles`` cannot be held with ``scope`` (a person role without a person), or None."""
    person = sorted(frozenset(roles) & PERSON_ROLES)
    if person and scope.employee is None:
        return (f"{', '.join(person)} need{'s' if len(person) == 1 else ''} the principal "
                f"linked to a person of the people directory (--employee)")
    return None


def widens_scope(roles: Iterable[str], before: PrincipalScope, after: PrincipalScope) -> bool:
    """Whether moving from ``before`` to ``after`` lets a principal holding ``roles`` see
    punch data it could not: more sites, or (with a person role) another person."""
    rs = frozenset(roles)
    if not rs & PUNCH_DATA_ROLES:
        return False
    more_sites = after.sites is None and before.sites is not None or (
        after.sites is not None and before.sites is not None and not after.sites <= before.sites)
    other_person = bool(rs & PERSON_ROLES) and after.employee is not None \
        and after.employee != before.employee
    return more_sites or other_person


DISPUTE_REASON = "employee-dispute"


def three_person_violation(*, subject: str | None, editor: str, approver: str | None,
                           editor_employee: str | None = None,
                           approver_employee: str | None = None,
                           reason: str | None = None) -> str | None:
    """The three-person rule of a correction (CONTROLS.md D6, D8), in words, or None.

    The persons: ``subject`` is the employee whose punch it is (None: the badge resolved to
    nobody); the editor and approver are their linked employees, or their principal names
    when not linked. ``approver`` None: only the proposal is judged. An employee's dispute
    (``reason`` employee-dispute) is raised by its subject and decided by someone else."""
    ed = editor_employee if editor_employee is not None else editor
    ap = None if approver is None else (
        approver_employee if approver_employee is not None else approver)
    dispute = reason == DISPUTE_REASON
    if dispute and (subject is None or ed != subject):
        return ("three-person rule: only the employee whose punch it is raises a dispute "
                "(reason employee-dispute)")
    if not dispute and subject is not None and ed == subject:
        return (f"three-person rule: {ed} may not propose a correction of their own punch "
                f"(raise a dispute: reason employee-dispute)")
    if ap is None:
        return None
    if subject is not None and ap == subject:
        return f"three-person rule: {ap} may not approve or reject a correction of their own punch"
    if ap == ed:
        return (f"three-person rule: {ap} proposed this correction and may not approve or "
                f"reject it")
    return None


def body_hash(body: bytes) -> str:
    return hashlib.sha256(body).hexdigest()


def admin_body(entry_body_hash: str | None, body: bytes | None) -> dict[str, Any] | None:
    """The admin ``access`` body behind an entry, or None unless ``body`` hashes to the entry's
    body hash (constant-time compare) and is an object of ``"type": "admin"``."""
    if entry_body_hash is None or body is None:
        return None
    if not hmac.compare_digest(body_hash(bytes(body)), str(entry_body_hash)):
        return None
    try:
        obj = json.loads(bytes(body))
    except (ValueError, UnicodeDecodeError):
        return None
    if not isinstance(obj, dict) or obj.get("type") != "admin" or obj.get("outcome") != "done":
        return None
    return obj


def token_entry_error(body: Mapping[str, Any] | None, *, token_id: str, principal: str,
                      token_hash: str, expires_at: int) -> str | None:
    """Why a token row is not the token its creating entry issued (None: it is)."""
    if body is None:
        return "no ledger entry issued it"
    if body.get("action") != "token.create":
        return "its entry is not a token.create"
    if (body.get("token"), body.get("principal"), body.get("expires_at")) != (
            token_id, principal, expires_at):
        return "its row differs from the entry that issued it"
    if not hmac.compare_digest(str(body.get("token_hash", "")), token_hash):
        return "its hash differs from the entry that issued it"
    return None


def roles_entry(body: Mapping[str, Any] | None, principal: str
                ) -> tuple[frozenset[str], bool] | None:
    """(roles, disabled) the entry a principal row points at gives it, or None when that entry
    is not one that sets this principal's roles."""
    if body is None or body.get("action") not in ROLE_ACTIONS \
            or body.get("principal") != principal:
        return None
    roles = body.get("roles")
    if not isinstance(roles, list) or not all(isinstance(r, str) for r in roles):
        return None
    return frozenset(roles), body.get("action") == "principal.disable"


@dataclass
class PrincipalState:
    name: str
    kind: str
    roles: frozenset[str]
    roles_idx: int
    created_at: int
    disabled_at: int | None = None
    scope: PrincipalScope = UNSCOPED


@dataclass
class TokenState:
    id: str
    principal: str
    hash: str | None
    expires_at: int
    revoked_at: int | None
    entry_idx: int


@dataclass
class GrantState:
    id: str
    principal: str
    roles: frozenset[str]
    requested_by: str
    request_idx: int
    status: str = "pending"       # pending | approved | rejected
    scope: PrincipalScope = UNSCOPED
    decided_by: str | None = None
    decided_idx: int | None = None


@dataclass(frozen=True, slots=True)
class Breach:
    """A segregation-of-duties (or authority) rule the recorded history broke at ``idx``."""

    idx: int
    rule: str            # D6 | D7 | D8
    message: str

    def __str__(self) -> str:
        return f"entry {self.idx}: {self.rule} {self.message}"


@dataclass
class AccessHistory:
    """Access state replayed from the chain (see the module docstring). Feed every ``access``
    and ``correction`` body in idx order; :attr:`breaches` lists what broke a rule."""

    principals: dict[str, PrincipalState] = field(default_factory=dict)
    tokens: dict[str, TokenState] = field(default_factory=dict)
    grants: dict[str, GrantState] = field(default_factory=dict)
    breaches: list[Breach] = field(default_factory=list)
    entries: int = 0
    oidc_subjects: dict[str, str] = field(default_factory=dict)   # oidc principal → subject

    def _breach(self, idx: int, rule: str, message: str) -> None:
        self.breaches.append(Breach(idx, rule, message[:500]))

    def has_admin(self) -> bool:
        return any("admin" in p.roles and p.disabled_at is None
                   for p in self.principals.values())

    def roles_at(self, name: str) -> frozenset[str]:
        p = self.principals.get(name)
        return frozenset() if p is None or p.disabled_at is not None else p.roles

    def person_of(self, name: str) -> str | None:
        p = self.principals.get(name)
        return None if p is None else p.scope.employee

    def feed(self, idx: int, kind: str, body: Any) -> list[Breach]:
        """One entry's body (only ``access`` and ``correction`` entries matter); returns the
        breaches it adds."""
        before = len(self.breaches)
        if isinstance(body, Mapping):
            if kind == "access":
                self.feed_access(idx, body)
            elif kind == "correction":
                self.feed_correction(idx, body)
        return self.breaches[before:]

    def feed_correction(self, idx: int, body: Mapping[str, Any]) -> None:
        """A ``correction`` entry (an approved amendment): subject, editor and approver are
        three different persons (:func:`three_person_violation`; the persons are the
        principals' linked employees per the ledger's grants, or the body's ``subject``), and
        the approver held ``hr.approve`` (or ``supervisor``, not for a dispute) when it was
        recorded (judged once the ledger records grants at all: a ledger from before grants
        were entries cannot say who held what)."""
        editor, approver = body.get("editor"), body.get("approver")
        if not isinstance(editor, str) or not isinstance(approver, str):
            return
        # the same rule as three_person_violation, worded for the verifier's report
        ed, ap = self.person_of(editor) or editor, self.person_of(approver) or approver
        if editor == approver:
            self._breach(idx, "D6", f"correction proposed and approved by the same "
                         f"principal {editor}")
        elif ed == ap:
            self._breach(idx, "D6", f"correction proposed by {editor} and approved by "
                         f"{approver}, both the person {ed}")
        subject = body.get("subject")
        dispute = body.get("reason") == DISPUTE_REASON
        if isinstance(subject, str) and subject == ap:
            self._breach(idx, "D6", f"correction of {subject}'s own punch approved by "
                         f"{approver}")
        elif isinstance(subject, str) and subject == ed and not dispute:
            self._breach(idx, "D6", f"correction of {subject}'s own punch proposed by "
                         f"{editor}")
        elif dispute and subject != ed:
            self._breach(idx, "D6", f"dispute {body.get('proposal')} raised by {editor}, "
                         f"not by the employee whose punch it is")
        held = self.roles_at(approver)
        may = "hr.approve" in held or ("supervisor" in held
                                       and body.get("reason") != DISPUTE_REASON)
        if self.principals and not may:
            self._breach(idx, "D6", f"correction approved by {approver}, who did not hold "
                         f"hr.approve then (per the ledger's grants)")

    def feed_access(self, idx: int, body: Mapping[str, Any]) -> None:
        """One ``access`` body: admin changes apply; a correction proposal is checked against
        the proposer's roles then; request logs and refusals change nothing."""
        if body.get("outcome", "done") != "done":
            return
        if body.get("type") == "correction" and body.get("action") == "propose":
            actor = str(body.get("actor", ""))
            held = self.roles_at(actor)
            may = "hr.correct" in held or ("employee.self" in held
                                           and body.get("reason") == DISPUTE_REASON)
            if self.principals and not may:
                self._breach(idx, "D6", f"correction {body.get('proposal')} proposed by "
                             f"{actor}, who did not hold hr.correct then (per the ledger's "
                             f"grants)")
            return
        if body.get("type") != "admin":
            return
        self.entries += 1
        action, actor = body.get("action"), str(body.get("actor", ""))
        try:
            at = int(body.get("at", 0))
            name = _HANDLERS.get(str(action))
            if name is not None:
                getattr(self, name)(idx, body, actor, at)
        except (KeyError, TypeError, ValueError) as e:
            self._breach(idx, "D8", f"malformed {action} entry ({e})")

    # -- one handler per action ----------------------------------------------------------------
    def _set_roles(self, idx: int, name: str, roles: frozenset[str], actor: str,
                   *, approved: bool, bootstrap: bool,
                   scope: PrincipalScope = UNSCOPED) -> None:
        p = self.principals[name]
        why = sod_violation(roles) or scope_violation(roles, scope)
        if why is not None:
            self._breach(idx, "D8", f"{name} holds {', '.join(sorted(roles))}: {why}")
        wider: Iterable[str] = widens_punch_access(p.roles, roles)
        if not wider and widens_scope(roles, p.scope, scope):
            wider = [f"scope {scope.describe()}"]
        if wider and not approved:
            if bootstrap and not self.has_admin():
                pass      # the host operator's bootstrap: no admin exists to approve yet
            else:
                self._breach(idx, "D8", f"{actor} gave {name} {', '.join(sorted(wider))} "
                             f"(punch data) without a second admin's approval")
        p.roles, p.roles_idx, p.scope = roles, idx, scope

    def _new_principal(self, idx: int, body: Mapping[str, Any], actor: str, at: int,
                       kind: str) -> None:
        name = str(body["principal"])
        if name in self.principals:
            self._breach(idx, "D8", f"principal {name} created twice")
        self.principals[name] = PrincipalState(name, kind, frozenset(), idx, at)
        self._set_roles(idx, name, frozenset(body["roles"]), actor, approved=False,
                        bootstrap=bool(body.get("bootstrap")), scope=scope_of(body))

    def _token_create(self, idx: int, body: Mapping[str, Any], actor: str, at: int) -> None:
        name, tid = str(body["principal"]), str(body["token"])
        had_token = any(t.principal == name for t in self.tokens.values())
        admin_before = self.has_admin()
        if body.get("new_principal"):
            self._new_principal(idx, body, actor, at, "token")
        elif name not in self.principals:
            self._breach(idx, "D7", f"token {tid} issued to unknown principal {name}")
            self.principals[name] = PrincipalState(name, "token", frozenset(), idx, at)
        if actor != name:
            operator = actor.startswith(OPERATOR_PREFIX)
            if not operator or not ((body.get("bootstrap") and not admin_before)
                                    or (body.get("handover") and not had_token)):
                self._breach(idx, "D7", f"{actor} obtained token {tid} for another "
                             f"principal, {name}")
        th = body.get("token_hash")
        self.tokens[tid] = TokenState(tid, name, None if th is None else str(th),
                                      int(body["expires_at"]), None, idx)

    def _token_revoke(self, idx: int, body: Mapping[str, Any], actor: str, at: int) -> None:
        t = self.tokens.get(str(body["token"]))
        if t is not None and t.revoked_at is None:
            t.revoked_at = at

    def _cert_register(self, idx: int, body: Mapping[str, Any], actor: str, at: int) -> None:
        self._new_principal(idx, body, actor, at, "cert")

    def _principal_create(self, idx: int, body: Mapping[str, Any], actor: str,
                          at: int) -> None:
        self._new_principal(idx, body, actor, at, str(body.get("kind", "token")))

    def _roles_set(self, idx: int, body: Mapping[str, Any], actor: str, at: int) -> None:
        name = str(body["principal"])
        if name not in self.principals:
            self._breach(idx, "D8", f"roles set for unknown principal {name}")
            return
        self._set_roles(idx, name, frozenset(body["roles"]), actor, approved=False,
                        bootstrap=bool(body.get("bootstrap")), scope=scope_of(body))

    def _disable(self, idx: int, body: Mapping[str, Any], actor: str, at: int) -> None:
        p = self.principals.get(str(body["principal"]))
        if p is None:
            return
        p.disabled_at, p.roles, p.roles_idx = at, frozenset(body.get("roles", [])), idx
        for t in self.tokens.values():
            if t.principal == p.name and t.revoked_at is None:
                t.revoked_at = at

    def _oidc_roles(self, idx: int, body: Mapping[str, Any], actor: str, at: int) -> None:
        """An OIDC principal's roles as the provider's claims map them under the collector's
        ``[oidc]`` config (collector.access.oidc): the first sighting creates the principal
        (kind ``oidc``), bound to its ``subject``; no second admin approves it (the mapping
        is the authority), but the set obeys segregation of duties and the name is never
        taken over by another subject or from a token/cert principal."""
        name, subject = str(body["principal"]), str(body["subject"])
        roles, scope = frozenset(body["roles"]), scope_of(body)
        why = sod_violation(roles) or scope_violation(roles, scope)
        if why is not None:
            self._breach(idx, "D8", f"{name} holds {', '.join(sorted(roles))}: {why}")
        p = self.principals.get(name)
        if p is None:
            self.principals[name] = PrincipalState(name, "oidc", roles, idx, at, scope=scope)
            self.oidc_subjects[name] = subject
        elif p.kind != "oidc" or self.oidc_subjects.get(name) != subject:
            self._breach(idx, "D7", f"oidc-roles entry for {name}, a {p.kind} principal of "
                         f"another subject: a name is never taken over")
        else:
            p.roles, p.roles_idx, p.scope = roles, idx, scope

    def _grant_request(self, idx: int, body: Mapping[str, Any], actor: str, at: int) -> None:
        gid = str(body["grant"])
        self.grants[gid] = GrantState(gid, str(body["principal"]), frozenset(body["roles"]),
                                      actor, idx, scope=scope_of(body))

    def _grant_decide(self, idx: int, body: Mapping[str, Any], actor: str, at: int) -> None:
        gid = str(body["grant"])
        g = self.grants.get(gid)
        approve = body.get("action") == "grant.approve"
        if g is None or g.status != "pending":
            self._breach(idx, "D8", f"grant {gid} decided but it is not pending")
            if not approve or str(body["principal"]) not in self.principals:
                return
        else:
            g.status, g.decided_by, g.decided_idx = (
                "approved" if approve else "rejected"), actor, idx
            if actor == g.requested_by:
                self._breach(idx, "D8", f"grant {gid} for {g.principal} approved by its "
                             f"requester {actor}")
        if approve:
            name = str(body["principal"])
            if name not in self.principals:
                self._breach(idx, "D8", f"grant {gid} approved for unknown principal {name}")
                return
            scope = scope_of(body)
            if g is not None and scope != g.scope:
                self._breach(idx, "D8", f"grant {gid} approved with scope {scope.describe()}, "
                             f"not the requested {g.scope.describe()}")
            self._set_roles(idx, name, frozenset(body["roles"]), actor,
                            approved=g is not None and g.requested_by != actor
                            and scope == g.scope, bootstrap=False, scope=scope)


_HANDLERS = {          # action → the AccessHistory method that applies it
    "token.create": "_token_create", "token.revoke": "_token_revoke",
    "cert.register": "_cert_register", "principal.create": "_principal_create",
    "roles.set": "_roles_set", "principal.disable": "_disable",
    "grant.request": "_grant_request", "grant.approve": "_grant_decide",
    "grant.reject": "_grant_decide", "oidc-roles": "_oidc_roles",
}
