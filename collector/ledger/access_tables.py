"""Reads and writes of the access tables (``tc_principals``, ``tc_roles``, ``tc_tokens``).

Only rows: which principals, roles and tokens exist. The rules (role sets, segregation of
duties, token hashing and expiry) are collector.access's; every write here runs inside a
:class:`~collector.ledger.sqlbase.Tx` whose caller also records the ``access`` entry.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

from collector.ledger.sqlbase import SQLStore, Tx


@dataclass(frozen=True, slots=True)
class PrincipalRow:
    name: str
    kind: str                      # token | cert
    roles: frozenset[str]
    created_at: int
    last_used_at: int | None
    disabled_at: int | None


@dataclass(frozen=True, slots=True)
class TokenRecord:
    """A token as stored (never the token itself: only its hash is kept)."""

    id: str
    principal: str
    created_at: int
    created_by: str
    expires_at: int
    last_used_at: int | None
    revoked_at: int | None

    def status(self, now_us: int) -> str:
        if self.revoked_at is not None:
            return "revoked"
        return "expired" if now_us >= self.expires_at else "active"

    def to_dict(self, now_us: int) -> dict[str, Any]:
        return {"id": self.id, "principal": self.principal, "created_at": self.created_at,
                "created_by": self.created_by, "expires_at": self.expires_at,
                "last_used_at": self.last_used_at, "revoked_at": self.revoked_at,
                "status": self.status(now_us)}


@dataclass(frozen=True, slots=True)
class TokenHashRow:
    """What authentication needs of the token stored under one hash."""

    id: str
    hash: str
    expires_at: int
    revoked_at: int | None
    principal: str


def _opt(v: Any) -> int | None:
    return None if v is None else int(v)


# -- reads ---------------------------------------------------------------------------------

def roles_of(store: SQLStore, name: str) -> frozenset[str]:
    return frozenset(str(r[0]) for r in store.query(
        "SELECT role FROM tc_roles WHERE principal = ?", (name,)))


def principal(store: SQLStore, name: str) -> PrincipalRow | None:
    rows = store.query("SELECT name, kind, created_at, last_used_at, disabled_at "
                       "FROM tc_principals WHERE name = ?", (name,))
    if not rows:
        return None
    n, kind, created, last, disabled = rows[0]
    return PrincipalRow(str(n), str(kind), roles_of(store, name), int(created), _opt(last),
                        _opt(disabled))


def principal_names(store: SQLStore) -> list[str]:
    return [str(r[0]) for r in store.query("SELECT name FROM tc_principals ORDER BY name")]


def tokens(store: SQLStore, principal: str | None = None) -> list[TokenRecord]:
    """Tokens (of ``principal``, or all) ordered by creation."""
    sql = ("SELECT id, principal, created_at, created_by, expires_at, last_used_at, "
           "revoked_at FROM tc_tokens")
    params: tuple[Any, ...] = ()
    if principal is not None:
        sql += " WHERE principal = ?"
        params = (principal,)
    return [TokenRecord(str(i), str(p), int(c), str(by), int(e), _opt(last), _opt(rev))
            for i, p, c, by, e, last, rev in store.query(sql + " ORDER BY created_at, id",
                                                         params)]


def token_by_hash(store: SQLStore, token_hash: str) -> TokenHashRow | None:
    rows = store.query("SELECT id, hash, expires_at, revoked_at, principal FROM tc_tokens "
                       "WHERE hash = ?", (token_hash,))
    if not rows:
        return None
    tid, h, expires, revoked, name = rows[0]
    return TokenHashRow(str(tid), str(h), int(expires), _opt(revoked), str(name))


# -- writes (inside a transaction that also records the access entry) ------------------------

def insert_principal(tx: Tx, name: str, kind: str, roles: Iterable[str], *, actor: str,
                     now_us: int) -> None:
    tx.execute("INSERT INTO tc_principals (name, kind, created_at, created_by) "
               "VALUES (?, ?, ?, ?)", (name, kind, now_us, actor))
    grant_roles(tx, name, roles, actor=actor, now_us=now_us)


def grant_roles(tx: Tx, name: str, roles: Iterable[str], *, actor: str, now_us: int) -> None:
    for r in sorted(roles):
        tx.execute("INSERT INTO tc_roles (principal, role, granted_at, granted_by) "
                   "VALUES (?, ?, ?, ?)", (name, r, now_us, actor))


def replace_roles(tx: Tx, name: str, roles: Iterable[str], *, actor: str, now_us: int) -> None:
    tx.execute("DELETE FROM tc_roles WHERE principal = ?", (name,))
    grant_roles(tx, name, roles, actor=actor, now_us=now_us)


def insert_token(tx: Tx, record: TokenRecord, token_hash: str) -> None:
    tx.execute("INSERT INTO tc_tokens (id, principal, hash, created_at, created_by, "
               "expires_at) VALUES (?, ?, ?, ?, ?, ?)",
               (record.id, record.principal, token_hash, record.created_at, record.created_by,
                record.expires_at))


def revoke_token(tx: Tx, token_id: str, *, actor: str, now_us: int) -> None:
    tx.execute("UPDATE tc_tokens SET revoked_at = ?, revoked_by = ? WHERE id = ?",
               (now_us, actor, token_id))


def disable_principal(tx: Tx, name: str, *, actor: str, now_us: int) -> None:
    """Mark the principal disabled and revoke its tokens that are not revoked yet."""
    tx.execute("UPDATE tc_principals SET disabled_at = ? WHERE name = ?", (now_us, name))
    tx.execute("UPDATE tc_tokens SET revoked_at = ?, revoked_by = ? WHERE principal = ? "
               "AND revoked_at IS NULL", (now_us, actor, name))


def touch(tx: Tx, name: str, token_id: str | None, *, now_us: int) -> None:
    """Record the last use of a principal (and of the token it used)."""
    tx.execute("UPDATE tc_principals SET last_used_at = ? WHERE name = ?", (now_us, name))
    if token_id is not None:
        tx.execute("UPDATE tc_tokens SET last_used_at = ? WHERE id = ?", (now_us, token_id))
