"""Role grants under segregation of duties and dual control, and the access review
(CONTROLS.md D6, D8; DESIGN.md §8.5).

Every grant, change and refusal is an ``access`` ledger entry written in the same
transaction as the access tables (collector.ledger.access_tables), the entry first so the
rows carry its idx: a refused grant raises :class:`~collector.SoDError` and is itself
recorded, so the chain shows who tried what.

Dual control: a change that gives a principal a punch-data role it does not hold
(wire.grants.PUNCH_DATA_ROLES) is only a pending ``grant.request``; it takes effect with a
``grant.approve`` by a different actor (:meth:`Grants.approve`; the requester's own approval
is refused and recorded). While the ledger has no admin yet, the host operator's changes take
effect at once and say ``"bootstrap": true`` (nobody could approve them).

Scope: who a principal is (``employee``) and where its roles apply (``sites``) travel in each
entry that sets its roles (wire.grants.PrincipalScope); linking it to another person or to
more sites while it holds a punch-data role is dual-controlled like a role
(wire.grants.widens_scope): the ``grant.request`` carries the scope, the approval applies
exactly that scope.
"""

from __future__ import annotations

import json
import secrets
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any

from collector import SoDError
from collector.access.principals import (
    DAY_US,
    Principal,
    PrincipalError,
    access_change,
    all_principals,
    check_name,
    check_roles,
    check_scope,
    get_principal,
)
from collector.ledger import access_tables
from collector.ledger.access_tables import GrantRow
from collector.ledger.sqlbase import SQLStore, Tx
from wire.grants import UNSCOPED, PrincipalScope, scope_of, widens_punch_access, widens_scope


@dataclass(frozen=True, slots=True)
class ReviewRow:
    principal: str
    kind: str
    roles: tuple[str, ...]
    last_used_at: int | None
    active_tokens: int
    unused: bool        # no use (or none ever) within the review window

    def to_dict(self) -> dict[str, Any]:
        return {"principal": self.principal, "kind": self.kind, "roles": list(self.roles),
                "last_used_at": self.last_used_at, "active_tokens": self.active_tokens,
                "unused": self.unused}


class Grants:
    """Role grants of one ledger database. ``actor`` names who acts (an API principal, or
    ``cli:<os user>``); ``now_us`` is always passed in."""

    def __init__(self, store: SQLStore) -> None:
        self.store = store

    def record_refusal(self, actor: str, action: str, error: Exception, *, now_us: int,
                       **what: Any) -> None:
        """Record a refused action (e.g. a segregation-of-duties violation) in the chain."""
        with self.store.transaction(now_us, what="recording a refusal") as tx:
            tx.record("access", access_change(actor, action, now_us, outcome="refused",
                                              error=str(error), **what))

    def checked_roles(self, actor: str, action: str, now_us: int, name: str,
                      roles: Iterable[str]) -> frozenset[str]:
        """``roles`` for principal ``name``, checked; a segregation-of-duties refusal is
        recorded before :class:`SoDError` propagates."""
        check_name(name)
        roles = list(roles)
        try:
            return check_roles(roles)
        except SoDError as e:
            self.record_refusal(actor, action, e, now_us=now_us, principal=name,
                                roles=sorted(set(roles)))
            raise

    def has_admin(self) -> bool:
        """Whether an enabled principal holds ``admin`` (after that: no more bootstrap)."""
        return any("admin" in p.roles and p.disabled_at is None
                   for p in all_principals(self.store))

    def register_cert(self, common_name: str, roles: Sequence[str], *, actor: str,
                      now_us: int) -> Principal:
        """Accept client certificates of our CA with CN ``common_name`` as this principal."""
        return self.create_principal(common_name, "cert", roles, actor=actor,
                                     now_us=now_us)[0]

    def create_principal(self, name: str, kind: str, roles: Sequence[str], *, actor: str,
                         now_us: int, scope: PrincipalScope = UNSCOPED
                         ) -> tuple[Principal, GrantRow | None]:
        """A new principal (``kind`` token or cert) without a credential, linked to
        ``scope``'s person and sites. Punch-data roles wait for a second admin (the pending
        grant is returned); the others apply now."""
        action = "cert.register" if kind == "cert" else "principal.create"
        rs = self.checked_roles(actor, action, now_us, name, roles)
        if not rs:
            raise PrincipalError("give at least one --role")
        check_scope(rs, scope)
        if get_principal(self.store, name) is not None:
            raise PrincipalError(f"principal {name!r} exists; change its roles with "
                                 f"`token roles`")
        bootstrap = not self.has_admin()
        now_roles = rs if bootstrap else rs - widens_punch_access((), rs)
        pending: GrantRow | None = None
        with self.store.transaction(now_us, what="creating a principal") as tx:
            idx = tx.record("access", access_change(
                actor, action, now_us, outcome="done", principal=name, kind=kind,
                roles=sorted(now_roles), bootstrap=bootstrap or None, **scope.fields()))
            access_tables.insert_principal(tx, name, kind, now_roles, actor=actor,
                                           now_us=now_us, roles_idx=idx)
            if now_roles != rs:
                gid = self._request(tx, name, rs, previous=now_roles, actor=actor,
                                    now_us=now_us, scope=scope)
        if now_roles != rs:
            pending = access_tables.grant(self.store, gid)
        p = get_principal(self.store, name)
        assert p is not None  # noqa: S101 - just inserted in the same process
        return p, pending

    def set_roles(self, principal: str, roles: Sequence[str], *, actor: str,
                  now_us: int, scope: PrincipalScope | None = None) -> Principal | GrantRow:
        """Replace a principal's roles and (``scope`` not None) its person and sites (SoD
        checked; the change is an access entry). A change that adds a punch-data role, or
        widens the scope of one, becomes a pending grant (returned) once an admin exists."""
        rs = self.checked_roles(actor, "roles.set", now_us, principal, roles)
        p = get_principal(self.store, principal)
        if p is None:
            raise PrincipalError(f"no principal {principal!r}")
        sc = check_scope(rs, p.scope if scope is None else scope)
        bootstrap = not self.has_admin()
        if (widens_punch_access(p.roles, rs) or widens_scope(rs, p.scope, sc)) \
                and not bootstrap:
            with self.store.transaction(now_us, what="requesting a grant") as tx:
                gid = self._request(tx, principal, rs, previous=p.roles, actor=actor,
                                    now_us=now_us, scope=sc)
            g = access_tables.grant(self.store, gid)
            assert g is not None  # noqa: S101 - just inserted in the same process
            return g
        with self.store.transaction(now_us, what="setting roles") as tx:
            idx = tx.record("access", access_change(
                actor, "roles.set", now_us, outcome="done", principal=principal,
                roles=sorted(rs), previous=sorted(p.roles),
                bootstrap=(bootstrap and bool(widens_punch_access(p.roles, rs)
                                              or widens_scope(rs, p.scope, sc))) or None,
                **sc.fields()))
            access_tables.replace_roles(tx, principal, rs, actor=actor, now_us=now_us,
                                        roles_idx=idx)
        return get_principal(self.store, principal) or p

    @staticmethod
    def _request(tx: Tx, principal: str, roles: frozenset[str], *,
                 previous: Iterable[str], actor: str, now_us: int,
                 scope: PrincipalScope = UNSCOPED) -> str:
        gid = "grt-" + secrets.token_hex(6)
        idx = tx.record("access", access_change(
            actor, "grant.request", now_us, outcome="done", grant=gid, principal=principal,
            roles=sorted(roles), previous=sorted(previous), **scope.fields()))
        access_tables.insert_grant(tx, gid, principal, roles, actor=actor, now_us=now_us,
                                   request_idx=idx)
        return gid

    def requested_scope(self, g: GrantRow) -> PrincipalScope:
        """The scope grant ``g``'s request entry asks for (the ledger holds it, not the row)."""
        se = next(iter(self.store.entries(g.request_idx, g.request_idx + 1)), None)
        try:
            body = None if se is None or se.body is None else json.loads(se.body)
            return scope_of(body if isinstance(body, dict) else None)
        except ValueError as e:
            raise PrincipalError(f"grant {g.id}: its request entry {g.request_idx} has a "
                                 f"malformed scope") from e

    def pending(self) -> list[GrantRow]:
        return access_tables.grants(self.store, status="pending")

    def decide(self, grant_id: str, *, approve: bool, actor: str, now_us: int) -> GrantRow:
        """Approve (the roles take effect) or reject a pending grant. Its requester may
        reject (withdraw) it but never approve it (:class:`SoDError`, recorded)."""
        action = "grant.approve" if approve else "grant.reject"
        g = access_tables.grant(self.store, grant_id)
        if g is None:
            raise PrincipalError(f"no grant {grant_id[:40]!r} (see `token grants`)")
        if g.status != "pending":
            raise PrincipalError(f"grant {g.id} is already {g.status}")
        if approve and actor == g.requested_by:
            err = SoDError(f"segregation of duties: {actor} requested grant {g.id} and may "
                           f"not approve it (a second admin must)")
            self.record_refusal(actor, action, err, now_us=now_us, grant=g.id,
                                principal=g.principal, roles=sorted(g.roles))
            raise err
        p = get_principal(self.store, g.principal)
        if p is None or p.disabled_at is not None:
            raise PrincipalError(f"principal {g.principal!r} is gone or disabled")
        rs = self.checked_roles(actor, action, now_us, g.principal, g.roles)
        sc = self.requested_scope(g) if approve else p.scope
        with self.store.transaction(now_us, what="deciding a grant") as tx:
            idx = tx.record("access", access_change(
                actor, action, now_us, outcome="done", grant=g.id, principal=g.principal,
                requested_by=g.requested_by, roles=sorted(rs if approve else p.roles),
                **sc.fields()))
            if approve:
                access_tables.replace_roles(tx, g.principal, rs, actor=actor, now_us=now_us,
                                            roles_idx=idx)
            access_tables.decide_grant(tx, g.id, status="approved" if approve else "rejected",
                                       actor=actor, now_us=now_us, decided_idx=idx)
        out = access_tables.grant(self.store, g.id)
        assert out is not None  # noqa: S101 - read back in the same process
        return out

    def disable(self, principal: str, *, actor: str, now_us: int) -> None:
        """Disable a principal (leaver): its tokens and certificate stop working at once."""
        if get_principal(self.store, principal) is None:
            raise PrincipalError(f"no principal {principal!r}")
        with self.store.transaction(now_us, what="disabling a principal") as tx:
            idx = tx.record("access", access_change(actor, "principal.disable", now_us,
                                                    outcome="done", principal=principal,
                                                    roles=[]))
            access_tables.disable_principal(tx, principal, actor=actor, now_us=now_us,
                                            roles_idx=idx)

    def drift(self) -> list[str]:
        """Where the access tables differ from the chain's access entries (a row written
        behind the ledger); the review shows it, so such a grant never looks normal."""
        return access_tables.check_projection(self.store)

    def review(self, *, unused_days: int, now_us: int) -> list[ReviewRow]:
        """Every enabled principal with its roles, last use and active tokens; ``unused``
        flags those not used within ``unused_days`` (CONTROLS.md D8)."""
        cutoff = now_us - unused_days * DAY_US
        out = []
        for p in all_principals(self.store):
            if p.disabled_at is not None:
                continue
            toks = [t for t in access_tables.tokens(self.store, p.name)
                    if t.status(now_us) == "active"]
            out.append(ReviewRow(p.name, p.kind, tuple(sorted(p.roles)), p.last_used_at,
                                 len(toks), p.last_used_at is None or p.last_used_at < cutoff))
        return out
