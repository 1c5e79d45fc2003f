"""``Principals``: the one object the API and the CLI hold for access control over a store.

It only wires collector.access's parts together: principals and their roles
(collector.access.principals), role grants and the access review (collector.access.grants),
tokens and authentication (collector.access.tokens). It creates the access tables in a
SQLite ledger (collector.ledger.tables) when opened.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from collector.access.grants import Grants, ReviewRow
from collector.access.principals import Principal, all_principals, get_principal
from collector.access.tokens import IssuedToken, Tokens
from collector.ledger.access_tables import GrantRow, TokenRecord
from collector.ledger.sqlbase import SQLStore
from collector.ledger.tables import ensure_schema
from wire.grants import UNSCOPED, PrincipalScope


class Principals:
    """Principals, roles and tokens of one ledger database. ``actor`` names who acts
    (an API principal, or ``cli:<os user>``); ``now_us`` is always passed in."""

    def __init__(self, store: SQLStore, *, reader: SQLStore | None = None) -> None:
        """``reader``: a second connection to the same ledger for the lookups of every
        authentication (so they never wait behind a commit on ``store``); default ``store``."""
        ensure_schema(store)
        self.store = store
        self.grants = Grants(store)
        self.token_store = Tokens(store, self.grants, reader=reader)

    # -- reads ------------------------------------------------------------------------------
    def get(self, name: str) -> Principal | None:
        return get_principal(self.store, name)

    def all(self) -> list[Principal]:
        return all_principals(self.store)

    def tokens(self, principal: str | None = None) -> list[TokenRecord]:
        return self.token_store.records(principal)

    def review(self, *, unused_days: int, now_us: int) -> list[ReviewRow]:
        return self.grants.review(unused_days=unused_days, now_us=now_us)

    def drift(self) -> list[str]:
        return self.grants.drift()

    # -- authentication ---------------------------------------------------------------------
    def authenticate_token(self, token: str, *, now_us: int, touch: bool = True) -> Principal:
        return self.token_store.authenticate_token(token, now_us=now_us, touch=touch)

    def authenticate_cert(self, common_name: str, *, now_us: int,
                          touch: bool = True) -> Principal:
        return self.token_store.authenticate_cert(common_name, now_us=now_us, touch=touch)

    def touch_due(self, p: Principal, now_us: int) -> bool:
        return self.token_store.touch_due(p, now_us)

    def touch(self, p: Principal, now_us: int) -> None:
        self.token_store.touch(p, now_us)

    # -- changes (each also an access entry) ------------------------------------------------
    def create_token(self, principal: str, roles: Sequence[str], *, expires_days: int,
                     actor: str, now_us: int, scope: PrincipalScope = UNSCOPED) -> IssuedToken:
        return self.token_store.create(principal, roles, expires_days=expires_days,
                                       actor=actor, now_us=now_us, scope=scope)

    def revoke_token(self, token_id: str, *, actor: str, now_us: int) -> TokenRecord:
        return self.token_store.revoke(token_id, actor=actor, now_us=now_us)

    def register_cert(self, common_name: str, roles: Sequence[str], *, actor: str,
                      now_us: int, scope: PrincipalScope = UNSCOPED) -> Principal:
        return self.grants.create_principal(common_name, "cert", roles, actor=actor,
                                            now_us=now_us, scope=scope)[0]

    def set_roles(self, principal: str, roles: Sequence[str], *, actor: str,
                  now_us: int, scope: PrincipalScope | None = None) -> Principal | GrantRow:
        """The principal as changed, or the pending grant a punch-data role (or a wider
        scope, ``scope`` None: unchanged) waits in."""
        return self.grants.set_roles(principal, roles, actor=actor, now_us=now_us,
                                     scope=scope)

    def create_principal(self, name: str, kind: str, roles: Sequence[str], *, actor: str,
                         now_us: int, scope: PrincipalScope = UNSCOPED
                         ) -> tuple[Principal, GrantRow | None]:
        return self.grants.create_principal(name, kind, roles, actor=actor, now_us=now_us,
                                            scope=scope)

    def pending_grants(self) -> list[GrantRow]:
        return self.grants.pending()

    def decide_grant(self, grant_id: str, *, approve: bool, actor: str,
                     now_us: int) -> GrantRow:
        return self.grants.decide(grant_id, approve=approve, actor=actor, now_us=now_us)

    def disable(self, principal: str, *, actor: str, now_us: int) -> None:
        self.grants.disable(principal, actor=actor, now_us=now_us)

    def record_refusal(self, actor: str, action: str, error: Exception, *, now_us: int,
                       **what: Any) -> None:
        self.grants.record_refusal(actor, action, error, now_us=now_us, **what)
