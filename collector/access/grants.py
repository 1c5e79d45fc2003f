"""Role grants under segregation of duties, and the access review (CONTROLS.md D6, D8).

Every grant, change and refusal is an ``access`` ledger entry written in the same
transaction as the access tables (collector.ledger.access_tables): a refused grant raises
:class:`~collector.SoDError` and is itself recorded, so the chain shows who tried what.
"""

from __future__ import annotations

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
    get_principal,
)
from collector.ledger import access_tables
from collector.ledger.sqlbase import SQLStore


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

    def register_cert(self, common_name: str, roles: Sequence[str], *, actor: str,
                      now_us: int) -> Principal:
        """Accept client certificates of our CA with CN ``common_name`` as this principal."""
        rs = self.checked_roles(actor, "cert.register", now_us, common_name, roles)
        if not rs:
            raise PrincipalError("give at least one --role")
        if get_principal(self.store, common_name) is not None:
            raise PrincipalError(f"principal {common_name!r} exists; change its roles with "
                                 f"`token roles`")
        with self.store.transaction(now_us, what="registering a certificate") as tx:
            access_tables.insert_principal(tx, common_name, "cert", rs, actor=actor,
                                           now_us=now_us)
            tx.record("access", access_change(actor, "cert.register", now_us, outcome="done",
                                              principal=common_name, roles=sorted(rs)))
        p = get_principal(self.store, common_name)
        assert p is not None  # noqa: S101 - just inserted in the same process
        return p

    def set_roles(self, principal: str, roles: Sequence[str], *, actor: str,
                  now_us: int) -> Principal:
        """Replace a principal's roles (SoD checked; the change is an access entry)."""
        rs = self.checked_roles(actor, "roles.set", now_us, principal, roles)
        p = get_principal(self.store, principal)
        if p is None:
            raise PrincipalError(f"no principal {principal!r}")
        with self.store.transaction(now_us, what="setting roles") as tx:
            access_tables.replace_roles(tx, principal, rs, actor=actor, now_us=now_us)
            tx.record("access", access_change(actor, "roles.set", now_us, outcome="done",
                                              principal=principal, roles=sorted(rs),
                                              previous=sorted(p.roles)))
        return get_principal(self.store, principal) or p

    def disable(self, principal: str, *, actor: str, now_us: int) -> None:
        """Disable a principal (leaver): its tokens and certificate stop working at once."""
        if get_principal(self.store, principal) is None:
            raise PrincipalError(f"no principal {principal!r}")
        with self.store.transaction(now_us, what="disabling a principal") as tx:
            access_tables.disable_principal(tx, principal, actor=actor, now_us=now_us)
            tx.record("access", access_change(actor, "principal.disable", now_us,
                                              outcome="done", principal=principal))

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
