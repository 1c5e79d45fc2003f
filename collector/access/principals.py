"""API principals and their roles: who may do what, and the rules every role set obeys.

A principal authenticates with bearer tokens (collector.access.tokens) or a client
certificate whose CN is its name; its roles are granted and reviewed in
collector.access.grants. The rows live in the ledger's access tables
(collector.ledger.access_tables), outside the chain; every change is an ``access`` entry.

Invariant: segregation of duties (CONTROLS.md D6, D8) holds for every stored role set:
nobody holds both ``hr.correct`` and ``hr.approve``; ``admin`` holds no ``hr.*`` or payroll
role (the rules are wire.grants', which the verifier applies to the chain's history).
:func:`check_roles` says so with :class:`~collector.SoDError`, and the API checks it
again on every request, so a role set edited in the database behind its back is refused.
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

from collector import CollectorError, SoDError
from collector.ledger import access_tables
from collector.ledger.sqlbase import SQLStore
from wire.bodies_people import EMPLOYEE_ID_RE
from wire.grants import UNSCOPED, PrincipalScope, scope_of, scope_violation, sod_violation

ROLES: dict[str, str] = {
    "hr.read": "read punches (with their ledger entry, signature and checkpoint)",
    "payroll.export": "export punches for payroll (CSV/NDJSON with header and trailer)",
    "hr.correct": "propose corrections (amendments) to punches",
    "hr.approve": "approve or reject corrections proposed by someone else",
    "hr.people": "keep the people directory: employees and badges (read it: hr.read too)",
    "audit.read": "verification status, checkpoints, access log, quarantine, device events",
    "audit.review": "acknowledge and resolve alerts (review entries; list them: this or "
                    "audit.read)",
    "ops.devices": "device registry (no punch data)",
    "admin": "principals, tokens and roles (cannot read punches, correct or approve)",
    "employee.self": "read one's own punches (the badge was one's own at punch time) and "
                     "their corrections; dispute them (needs --employee)",
    "supervisor": "read the punches and corrections of one's team (everyone reporting to "
                  "one, directly or not, per the people directory); approve or reject "
                  "their corrections, never one's own (needs --employee)",
}
PRINCIPAL_RE = re.compile(r"^[a-z0-9](?:[a-z0-9._@-]{0,62}[a-z0-9])?$")
RESERVED = frozenset({"anonymous"})
KINDS = ("token", "cert")
SITE_RE = re.compile(r"^[A-Za-z0-9._-]{1,64}$")      # collector.api.params' site rule
DAY_US = 86_400 * 1_000_000


class PrincipalError(CollectorError):
    """A principal or token operation cannot be done (unknown name, bad role, bad expiry)."""


def check_roles(roles: Iterable[str]) -> frozenset[str]:
    """The role set, or :class:`PrincipalError`/:class:`SoDError` naming what is wrong."""
    rs = frozenset(roles)
    unknown = sorted(rs - ROLES.keys())
    if unknown:
        raise PrincipalError(f"unknown role(s) {', '.join(unknown)}; roles are "
                             f"{', '.join(ROLES)}")
    why = sod_violation(rs)           # the one definition, shared with the verifier
    if why is not None:
        raise SoDError(why)
    return rs


def check_scope(roles: Iterable[str], scope: PrincipalScope) -> PrincipalScope:
    """``scope`` for a principal holding ``roles``, or :class:`PrincipalError` naming what is
    wrong (a person role without a person, a malformed employee id or site)."""
    if scope.employee is not None and not EMPLOYEE_ID_RE.fullmatch(scope.employee):
        raise PrincipalError(f"employee {scope.employee[:64]!r}: not an employee id "
                             f"({EMPLOYEE_ID_RE.pattern})")
    for site in sorted(scope.sites or ()):
        if not SITE_RE.fullmatch(site):
            raise PrincipalError(f"site {site[:64]!r}: must match {SITE_RE.pattern}")
    why = scope_violation(roles, scope)
    if why is not None:
        raise PrincipalError(why)
    return scope


def parse_sites(text: str | None) -> frozenset[str] | None:
    """``--sites S1,S2`` → the set; None or ``all`` → None (every site)."""
    if text is None or text.strip() == "all":
        return None
    sites = frozenset(s.strip() for s in text.split(",") if s.strip())
    if not sites:
        raise PrincipalError("--sites: a comma-separated list of sites, or all")
    return sites


def check_name(name: str) -> str:
    if not PRINCIPAL_RE.fullmatch(name) or name in RESERVED:
        raise PrincipalError(f"principal name {name[:80]!r} must match {PRINCIPAL_RE.pattern} "
                             f"and not be {', '.join(sorted(RESERVED))}")
    return name


@dataclass(frozen=True, slots=True)
class Principal:
    name: str
    kind: str                      # token | cert
    roles: frozenset[str]
    created_at: int
    last_used_at: int | None
    disabled_at: int | None
    token_id: str | None = None    # the token this request authenticated with
    # The person behind the principal (an employee id of the people directory), when there is
    # one: employee-self and supervisor scopes key on it. None: a machine or unlinked principal.
    employee_id: str | None = None
    # Sites the principal's roles are limited to; None: every site.
    sites: frozenset[str] | None = None

    @property
    def scope(self) -> PrincipalScope:
        return PrincipalScope(self.employee_id, self.sites)

    def to_dict(self) -> dict[str, Any]:
        return {"name": self.name, "kind": self.kind, "roles": sorted(self.roles),
                "created_at": self.created_at, "last_used_at": self.last_used_at,
                "disabled_at": self.disabled_at, "employee": self.employee_id,
                "sites": None if self.sites is None else sorted(self.sites)}


def stored_scope(store: SQLStore, name: str) -> PrincipalScope:
    """The scope the entry that last set ``name``'s roles gives it (wire.grants.scope_of)."""
    auth = access_tables.cert_auth(store, name)
    try:
        return scope_of(None if auth is None else auth.roles_body)
    except ValueError:
        return UNSCOPED


def get_principal(store: SQLStore, name: str) -> Principal | None:
    r = access_tables.principal(store, name)
    if r is None:
        return None
    sc = stored_scope(store, name)
    return Principal(r.name, r.kind, r.roles, r.created_at, r.last_used_at, r.disabled_at,
                     employee_id=sc.employee, sites=sc.sites)


def all_principals(store: SQLStore) -> list[Principal]:
    out = []
    for name in access_tables.principal_names(store):
        p = get_principal(store, name)
        if p is not None:
            out.append(p)
    return out


def access_change(actor: str, action: str, at: int, **what: Any) -> dict[str, Any]:
    """Body of an ``access`` entry recording a change to principals, roles or tokens."""
    return {"type": "admin", "actor": actor, "action": action, "at": at,
            **{k: v for k, v in what.items() if v is not None}}
