"""API principals, their roles and bearer tokens: storage beside the ledger, outside the chain.

Tables (``tc_principals``, ``tc_roles``, ``tc_tokens``; ``tc_corrections`` lives in
collector.records.corrections) sit in the ledger's database (SQLite file or PostgreSQL) but are not
part of the hash chain: they are mutable state (last use, revocation). Every change to them
is recorded as an ``access`` ledger entry IN THE SAME TRANSACTION (who, what), so the chain
is the audit trail of who was granted what, and when.

Invariants:
- a token is shown once, at creation; only SHA-256(token) is stored (a 32-byte random token
  has full entropy, so a fast hash is enough); lookups compare hashes in constant time;
- every token expires (at most ``MAX_TOKEN_DAYS``); revoked and expired tokens never
  authenticate; last use is recorded (coarsely, at most once a minute per token);
- segregation of duties (CONTROLS.md D6, D8) holds for every stored role set: nobody holds
  both ``hr.correct`` and ``hr.approve``; ``admin`` holds no ``hr.*`` or payroll role. A
  refused grant raises :class:`SoDError` and is itself recorded as an ``access`` entry.
"""

from __future__ import annotations

import hashlib
import hmac
import re
import secrets
from collections.abc import Iterable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any

import psycopg
from psycopg import sql as pgsql

from collector import CollectorError, ForbiddenError
from collector.ledger.base import AppendResult, EventFact
from collector.ledger.postgres import redact
from collector.ledger.sqlbase import SQLStore, _Append

ROLES: dict[str, str] = {
    "hr.read": "read punches (with their ledger entry, signature and checkpoint)",
    "payroll.export": "export punches for payroll (CSV/NDJSON with header and trailer)",
    "hr.correct": "propose corrections (amendments) to punches",
    "hr.approve": "approve or reject corrections proposed by someone else",
    "audit.read": "verification status, checkpoints, access log, quarantine, device events",
    "ops.devices": "device registry (no punch data)",
    "admin": "principals, tokens and roles (cannot read punches, correct or approve)",
}
PRINCIPAL_RE = re.compile(r"^[a-z0-9](?:[a-z0-9._@-]{0,62}[a-z0-9])?$")
TOKEN_PREFIX = "tct_"  # noqa: S105 - a prefix that makes leaked tokens greppable, no secret
TOKEN_RE = re.compile(r"^tct_[A-Za-z0-9_-]{43}$")
MAX_TOKEN_DAYS = 365
DAY_US = 86_400 * 1_000_000
LAST_USE_GRANULARITY_US = 60 * 1_000_000
RESERVED = frozenset({"anonymous"})
KINDS = ("token", "cert")

SCHEMA = """
CREATE TABLE IF NOT EXISTS tc_principals (
    name          TEXT PRIMARY KEY,
    kind          TEXT NOT NULL,
    created_at    BIGINT NOT NULL,
    created_by    TEXT NOT NULL,
    last_used_at  BIGINT,
    disabled_at   BIGINT
);
CREATE TABLE IF NOT EXISTS tc_roles (
    principal   TEXT NOT NULL,
    role        TEXT NOT NULL,
    granted_at  BIGINT NOT NULL,
    granted_by  TEXT NOT NULL,
    PRIMARY KEY (principal, role)
);
CREATE TABLE IF NOT EXISTS tc_tokens (
    id            TEXT PRIMARY KEY,
    principal     TEXT NOT NULL,
    hash          TEXT NOT NULL UNIQUE,
    created_at    BIGINT NOT NULL,
    created_by    TEXT NOT NULL,
    expires_at    BIGINT NOT NULL,
    last_used_at  BIGINT,
    revoked_at    BIGINT,
    revoked_by    TEXT
);
CREATE TABLE IF NOT EXISTS tc_corrections (
    id              TEXT PRIMARY KEY,
    device          TEXT NOT NULL,
    seq             BIGINT NOT NULL,
    original_idx    BIGINT NOT NULL,
    field           TEXT NOT NULL,
    before_value    TEXT NOT NULL,
    after_value     TEXT NOT NULL,
    reason          TEXT NOT NULL,
    note            TEXT NOT NULL,
    editor          TEXT NOT NULL,
    proposed_at     BIGINT NOT NULL,
    status          TEXT NOT NULL,
    approver        TEXT,
    decided_at      BIGINT,
    decision_note   TEXT,
    correction_idx  BIGINT
);
CREATE INDEX IF NOT EXISTS tc_corrections_punch ON tc_corrections (device, seq);
CREATE INDEX IF NOT EXISTS tc_corrections_status ON tc_corrections (status, proposed_at);
"""
TABLES = ("tc_principals", "tc_roles", "tc_tokens", "tc_corrections")
# The collector's app role may change these tables (they are state, not the record).
GRANTS = "\n".join(f"GRANT SELECT, INSERT, UPDATE, DELETE ON {t} TO {{role}};" for t in TABLES)


class PrincipalError(CollectorError):
    """A principal or token operation cannot be done (unknown name, bad role, bad expiry)."""


class TokenError(PrincipalError):
    """A presented token is malformed, unknown, expired or revoked (never says which)."""


class SoDError(ForbiddenError):
    """A role grant or an action would break segregation of duties (CONTROLS.md D6/D8)."""


# -- rules -----------------------------------------------------------------------------------

def check_roles(roles: Iterable[str]) -> frozenset[str]:
    """The role set, or :class:`PrincipalError`/:class:`SoDError` naming what is wrong."""
    rs = frozenset(roles)
    unknown = sorted(rs - ROLES.keys())
    if unknown:
        raise PrincipalError(f"unknown role(s) {', '.join(unknown)}; roles are "
                             f"{', '.join(ROLES)}")
    if {"hr.correct", "hr.approve"} <= rs:
        raise SoDError("segregation of duties: no principal may hold both hr.correct and "
                       "hr.approve (whoever proposes a correction must not approve it)")
    if "admin" in rs:
        bad = sorted(r for r in rs if r.startswith(("hr.", "payroll.")))
        if bad:
            raise SoDError(f"segregation of duties: admin may not also hold "
                           f"{', '.join(bad)} (admins manage access, never punch data)")
    return rs


def check_name(name: str) -> str:
    if not PRINCIPAL_RE.fullmatch(name) or name in RESERVED:
        raise PrincipalError(f"principal name {name[:80]!r} must match {PRINCIPAL_RE.pattern} "
                             f"and not be {', '.join(sorted(RESERVED))}")
    return name


def parse_duration_days(text: str) -> int:
    """``90d``, ``12w`` or a plain number of days → days (1 … MAX_TOKEN_DAYS)."""
    m = re.fullmatch(r"(\d{1,4})([dw]?)", text.strip())
    if m is None:
        raise PrincipalError(f"expiry {text[:40]!r}: use a number of days like 90d or 12w")
    days = int(m.group(1)) * (7 if m.group(2) == "w" else 1)
    if not 1 <= days <= MAX_TOKEN_DAYS:
        raise PrincipalError(f"expiry {text!r}: between 1 and {MAX_TOKEN_DAYS} days "
                             f"(tokens are short-lived, CONTROLS.md D7)")
    return days


def token_hash(token: str) -> str:
    return hashlib.sha256(token.encode()).hexdigest()


# -- records ---------------------------------------------------------------------------------

@dataclass(frozen=True, slots=True)
class Principal:
    name: str
    kind: str                      # token | cert
    roles: frozenset[str]
    created_at: int
    last_used_at: int | None
    disabled_at: int | None
    token_id: str | None = None    # the token this request authenticated with

    def to_dict(self) -> dict[str, Any]:
        return {"name": self.name, "kind": self.kind, "roles": sorted(self.roles),
                "created_at": self.created_at, "last_used_at": self.last_used_at,
                "disabled_at": self.disabled_at}


@dataclass(frozen=True, slots=True)
class TokenRecord:
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
class IssuedToken:
    token: str          # shown once
    record: TokenRecord


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


# -- transactions that also append to the chain ----------------------------------------------

@dataclass
class Tx:
    """SQL on the ledger's connection inside one write transaction; :meth:`record` appends a
    ledger fact inside the same transaction (both commit together or neither does)."""

    store: SQLStore
    cur: Any
    now_us: int
    results: list[AppendResult] = field(default_factory=list)

    def x(self, sql: str, params: Sequence[Any] = ()) -> None:
        self.cur.execute(self.store._sql(sql), tuple(params))

    def rows(self, sql: str, params: Sequence[Any] = ()) -> list[tuple[Any, ...]]:
        self.x(sql, params)
        return list(self.cur.fetchall())

    def record(self, kind: str, body: dict[str, Any]) -> int:
        """Append ``body`` as a ``kind`` entry now (same transaction); returns its idx.

        Uses the store's own append planner (sqlbase._Append), so the entry gets exactly
        the bytes ``store.append`` would give it.
        """
        res = _Append(self.store, self.cur, self.now_us).run([EventFact(kind, body)])
        self.results.extend(res)
        return res[0].idx


@contextmanager
def transaction(store: SQLStore, now_us: int) -> Iterator[Tx]:
    """One write transaction on the ledger's connection, holding the chain-head lock."""
    with store._lock:
        try:
            with store._write() as cur:
                yield Tx(store, cur, now_us)
        except store.db_errors as e:
            raise store._fail(e, "access tables: transaction failed") from e


def read(store: SQLStore, sql: str, params: Sequence[Any] = ()) -> list[tuple[Any, ...]]:
    return store._q(sql, params)


def ensure_schema(store: SQLStore) -> None:
    """Create the access tables in a SQLite ledger (PostgreSQL: :func:`migrate_postgres`)."""
    if store.ph != "?":
        have = read(store, "SELECT COUNT(*) FROM information_schema.tables "
                           "WHERE table_name = ANY(?)", (list(TABLES),))
        if int(have[0][0]) != len(TABLES):
            raise PrincipalError("the access tables are missing in this PostgreSQL ledger: run "
                                 "collector.access.principals.migrate_postgres as the owner role")
        return
    with store._lock:
        try:
            store._conn.executescript("BEGIN IMMEDIATE;" + SCHEMA + "COMMIT;")  # type: ignore[attr-defined]
        except store.db_errors as e:
            raise store._fail(e, "creating the access tables failed") from e


def migrate_postgres(owner_dsn: str, app_role: str | None = None) -> None:
    """Create the access tables as the owner role and let ``app_role`` use them."""
    try:
        with psycopg.connect(owner_dsn, autocommit=True) as conn, conn.transaction():
            for stmt in SCHEMA.split(";"):
                if stmt.strip():
                    conn.execute(stmt)
            if app_role is not None:
                for g in GRANTS.splitlines():
                    conn.execute(pgsql.SQL(g.rstrip(";")).format(
                        role=pgsql.Identifier(app_role)))
    except psycopg.Error as e:
        raise PrincipalError(f"creating the access tables in {redact(owner_dsn)} failed: "
                             f"{e}") from e


# -- the registry of principals ----------------------------------------------------------------

def _change(actor: str, action: str, at: int, **what: Any) -> dict[str, Any]:
    """Body of an ``access`` entry recording a change to principals, roles or tokens."""
    return {"type": "admin", "actor": actor, "action": action, "at": at,
            **{k: v for k, v in what.items() if v is not None}}


class Principals:
    """Principals, roles and tokens of one ledger database. ``actor`` names who acts
    (an API principal, or ``cli:<os user>``); ``now_us`` is always passed in."""

    def __init__(self, store: SQLStore) -> None:
        ensure_schema(store)
        self.store = store
        self._last_use_written: dict[str, int] = {}

    # -- reads ------------------------------------------------------------------------------
    def _roles(self, name: str) -> frozenset[str]:
        return frozenset(str(r[0]) for r in read(
            self.store, "SELECT role FROM tc_roles WHERE principal = ?", (name,)))

    def get(self, name: str) -> Principal | None:
        rows = read(self.store, "SELECT name, kind, created_at, last_used_at, disabled_at "
                                "FROM tc_principals WHERE name = ?", (name,))
        if not rows:
            return None
        n, kind, created, last, disabled = rows[0]
        return Principal(str(n), str(kind), self._roles(name), int(created),
                         None if last is None else int(last),
                         None if disabled is None else int(disabled))

    def all(self) -> list[Principal]:
        out = []
        for (name,) in read(self.store, "SELECT name FROM tc_principals ORDER BY name"):
            p = self.get(str(name))
            if p is not None:
                out.append(p)
        return out

    def tokens(self, principal: str | None = None) -> list[TokenRecord]:
        sql = ("SELECT id, principal, created_at, created_by, expires_at, last_used_at, "
               "revoked_at FROM tc_tokens")
        params: tuple[Any, ...] = ()
        if principal is not None:
            sql += " WHERE principal = ?"
            params = (principal,)
        return [TokenRecord(*r) for r in read(self.store, sql + " ORDER BY created_at, id",
                                              params)]

    # -- authentication -----------------------------------------------------------------------
    def authenticate_token(self, token: str, *, now_us: int) -> Principal:
        """The principal a bearer token stands for, or :class:`TokenError`."""
        if not TOKEN_RE.fullmatch(token):
            raise TokenError("malformed token")
        h = token_hash(token)
        rows = read(self.store, "SELECT t.id, t.hash, t.expires_at, t.revoked_at, "
                                "t.last_used_at, t.principal FROM tc_tokens t WHERE t.hash = ?",
                    (h,))
        if not rows or not hmac.compare_digest(str(rows[0][1]), h):
            raise TokenError("unknown token")
        tid, _, expires, revoked, _last, name = rows[0]
        if revoked is not None or now_us >= int(expires):
            raise TokenError("token revoked or expired")
        p = self.get(str(name))
        if p is None or p.disabled_at is not None or p.kind != "token":
            raise TokenError("token's principal is disabled")
        self._touch(str(name), str(tid), now_us)
        return Principal(p.name, p.kind, p.roles, p.created_at, p.last_used_at,
                         p.disabled_at, token_id=str(tid))

    def authenticate_cert(self, common_name: str, *, now_us: int) -> Principal:
        """The principal registered for a verified client certificate's CN."""
        p = self.get(common_name) if PRINCIPAL_RE.fullmatch(common_name) else None
        if p is None or p.kind != "cert" or p.disabled_at is not None:
            raise TokenError(f"client certificate {common_name[:80]!r} is not a registered "
                             f"API principal")
        self._touch(p.name, None, now_us)
        return p

    def _touch(self, name: str, token_id: str | None, now_us: int) -> None:
        key = token_id or f"cert:{name}"
        if now_us - self._last_use_written.get(key, -LAST_USE_GRANULARITY_US) \
                < LAST_USE_GRANULARITY_US:
            return
        self._last_use_written[key] = now_us
        with self.store._lock:
            try:
                with self.store._write() as cur:
                    cur.execute(self.store._sql(
                        "UPDATE tc_principals SET last_used_at = ? WHERE name = ?"),
                        (now_us, name))
                    if token_id is not None:
                        cur.execute(self.store._sql(
                            "UPDATE tc_tokens SET last_used_at = ? WHERE id = ?"),
                            (now_us, token_id))
            except self.store.db_errors as e:
                raise self.store._fail(e, "recording token use failed") from e

    # -- changes (each also an access entry) ------------------------------------------------
    def _refused(self, actor: str, action: str, now_us: int, error: Exception,
                 **what: Any) -> None:
        with transaction(self.store, now_us) as tx:
            tx.record("access", _change(actor, action, now_us, outcome="refused",
                                        error=str(error), **what))

    def _create_principal(self, tx: Tx, name: str, kind: str, roles: frozenset[str], *,
                          actor: str, now_us: int) -> None:
        tx.x("INSERT INTO tc_principals (name, kind, created_at, created_by) "
             "VALUES (?, ?, ?, ?)", (name, kind, now_us, actor))
        for r in sorted(roles):
            tx.x("INSERT INTO tc_roles (principal, role, granted_at, granted_by) "
                 "VALUES (?, ?, ?, ?)", (name, r, now_us, actor))

    def _validated(self, actor: str, action: str, now_us: int, name: str,
                   roles: Iterable[str]) -> frozenset[str]:
        check_name(name)
        try:
            return check_roles(roles)
        except SoDError as e:
            self._refused(actor, action, now_us, e, principal=name, roles=sorted(set(roles)))
            raise

    def create_token(self, principal: str, roles: Sequence[str], *, expires_days: int,
                     actor: str, now_us: int) -> IssuedToken:
        """Issue a token for ``principal`` (created with ``roles`` if new). If the principal
        exists, ``roles`` must be empty or equal to its roles (change roles with
        :meth:`set_roles`)."""
        if not 1 <= expires_days <= MAX_TOKEN_DAYS:
            raise PrincipalError(f"expiry must be 1…{MAX_TOKEN_DAYS} days")
        rs = self._validated(actor, "token.create", now_us, principal, roles)
        existing = self.get(principal)
        if existing is None and not rs:
            raise PrincipalError(f"principal {principal!r} is new: give at least one --role")
        if existing is not None:
            if existing.kind != "token":
                raise PrincipalError(f"principal {principal!r} authenticates with a client "
                                     f"certificate, not tokens")
            if rs and rs != existing.roles:
                raise PrincipalError(f"principal {principal!r} already has roles "
                                     f"{', '.join(sorted(existing.roles)) or '(none)'}; "
                                     f"change them with `token roles`")
        token = TOKEN_PREFIX + secrets.token_urlsafe(32)
        rec = TokenRecord(id="tok-" + secrets.token_hex(6), principal=principal,
                          created_at=now_us, created_by=actor,
                          expires_at=now_us + expires_days * DAY_US, last_used_at=None,
                          revoked_at=None)
        with transaction(self.store, now_us) as tx:
            if existing is None:
                self._create_principal(tx, principal, "token", rs, actor=actor, now_us=now_us)
            tx.x("INSERT INTO tc_tokens (id, principal, hash, created_at, created_by, "
                 "expires_at) VALUES (?, ?, ?, ?, ?, ?)",
                 (rec.id, principal, token_hash(token), now_us, actor, rec.expires_at))
            tx.record("access", _change(
                actor, "token.create", now_us, outcome="done", principal=principal,
                token=rec.id, expires_at=rec.expires_at,
                roles=sorted(rs) if existing is None else sorted(existing.roles),
                new_principal=existing is None))
        return IssuedToken(token, rec)

    def register_cert(self, common_name: str, roles: Sequence[str], *, actor: str,
                      now_us: int) -> Principal:
        """Accept client certificates of our CA with CN ``common_name`` as this principal."""
        rs = self._validated(actor, "cert.register", now_us, common_name, roles)
        if not rs:
            raise PrincipalError("give at least one --role")
        if self.get(common_name) is not None:
            raise PrincipalError(f"principal {common_name!r} exists; change its roles with "
                                 f"`token roles`")
        with transaction(self.store, now_us) as tx:
            self._create_principal(tx, common_name, "cert", rs, actor=actor, now_us=now_us)
            tx.record("access", _change(actor, "cert.register", now_us, outcome="done",
                                        principal=common_name, roles=sorted(rs)))
        p = self.get(common_name)
        assert p is not None  # noqa: S101 - just inserted in the same process
        return p

    def set_roles(self, principal: str, roles: Sequence[str], *, actor: str,
                  now_us: int) -> Principal:
        """Replace a principal's roles (SoD checked; the change is an access entry)."""
        rs = self._validated(actor, "roles.set", now_us, principal, roles)
        p = self.get(principal)
        if p is None:
            raise PrincipalError(f"no principal {principal!r}")
        with transaction(self.store, now_us) as tx:
            tx.x("DELETE FROM tc_roles WHERE principal = ?", (principal,))
            for r in sorted(rs):
                tx.x("INSERT INTO tc_roles (principal, role, granted_at, granted_by) "
                     "VALUES (?, ?, ?, ?)", (principal, r, now_us, actor))
            tx.record("access", _change(actor, "roles.set", now_us, outcome="done",
                                        principal=principal, roles=sorted(rs),
                                        previous=sorted(p.roles)))
        return self.get(principal) or p

    def revoke_token(self, token_id: str, *, actor: str, now_us: int) -> TokenRecord:
        rows = [t for t in self.tokens() if t.id == token_id]
        if not rows:
            raise PrincipalError(f"no token with id {token_id[:40]!r} (see `token list`)")
        if rows[0].revoked_at is not None:
            raise PrincipalError(f"token {token_id} is already revoked")
        with transaction(self.store, now_us) as tx:
            tx.x("UPDATE tc_tokens SET revoked_at = ?, revoked_by = ? WHERE id = ?",
                 (now_us, actor, token_id))
            tx.record("access", _change(actor, "token.revoke", now_us, outcome="done",
                                        principal=rows[0].principal, token=token_id))
        return [t for t in self.tokens() if t.id == token_id][0]

    def disable(self, principal: str, *, actor: str, now_us: int) -> None:
        """Disable a principal (leaver): its tokens and certificate stop working at once."""
        if self.get(principal) is None:
            raise PrincipalError(f"no principal {principal!r}")
        with transaction(self.store, now_us) as tx:
            tx.x("UPDATE tc_principals SET disabled_at = ? WHERE name = ?", (now_us, principal))
            tx.x("UPDATE tc_tokens SET revoked_at = ?, revoked_by = ? WHERE principal = ? "
                 "AND revoked_at IS NULL", (now_us, actor, principal))
            tx.record("access", _change(actor, "principal.disable", now_us, outcome="done",
                                        principal=principal))

    def record_refusal(self, actor: str, action: str, error: Exception, *, now_us: int,
                       **what: Any) -> None:
        """Record a refused action (e.g. a segregation-of-duties violation) in the chain."""
        self._refused(actor, action, now_us, error, **what)

    # -- access review (CONTROLS.md D8) --------------------------------------------------------
    def review(self, *, unused_days: int, now_us: int) -> list[ReviewRow]:
        cutoff = now_us - unused_days * DAY_US
        out = []
        for p in self.all():
            if p.disabled_at is not None:
                continue
            toks = [t for t in self.tokens(p.name) if t.status(now_us) == "active"]
            out.append(ReviewRow(p.name, p.kind, tuple(sorted(p.roles)), p.last_used_at,
                                 len(toks), p.last_used_at is None or p.last_used_at < cutoff))
        return out
