"""Bearer tokens (CONTROLS.md D7) and authentication of API callers.

Invariants:
- a token is shown once, at creation; only SHA-256(token) is stored (a 32-byte random token
  has full entropy, so a fast hash is enough); lookups compare hashes in constant time;
- every token expires (at most ``MAX_TOKEN_DAYS``); revoked and expired tokens never
  authenticate, nor do tokens of a disabled principal; last use is recorded (coarsely, at
  most once a minute per token or certificate principal);
- issuing and revoking are ``access`` ledger entries in the same transaction as the rows.
"""

from __future__ import annotations

import hashlib
import hmac
import re
import secrets
from collections.abc import Sequence
from dataclasses import dataclass

from collector import ForbiddenError
from collector.access.grants import Grants
from collector.access.principals import (
    DAY_US,
    PRINCIPAL_RE,
    Principal,
    PrincipalError,
    access_change,
    check_roles,
    check_scope,
    get_principal,
)
from collector.ledger import access_tables
from collector.ledger.access_tables import TokenRecord
from collector.ledger.sqlbase import SQLStore
from wire.grants import (
    OPERATOR_PREFIX,
    UNSCOPED,
    PrincipalScope,
    roles_entry,
    scope_of,
    token_entry_error,
)

TOKEN_PREFIX = "tct_"  # noqa: S105 - a prefix that makes leaked tokens greppable, no secret
TOKEN_RE = re.compile(r"^tct_[A-Za-z0-9_-]{43}$")
MAX_TOKEN_DAYS = 365
LAST_USE_GRANULARITY_US = 60 * 1_000_000


class TokenError(PrincipalError):
    """A presented token is malformed, unknown, expired or revoked (never says which)."""


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


@dataclass(frozen=True, slots=True)
class IssuedToken:
    token: str          # shown once
    record: TokenRecord


def _ledger_principal(auth: access_tables.AuthRow) -> Principal:
    """The principal of ``auth`` with the roles the ledger entry its row points at gives it
    (wire.grants.roles_entry): :class:`TokenError` when no such entry set them or it disabled
    the principal; when the table's roles differ from it, :class:`SoDError` if they break
    segregation of duties, else :class:`ForbiddenError` (roles edited behind the ledger)."""
    got = roles_entry(auth.roles_body, auth.principal)
    if got is None:
        raise TokenError("principal has no ledger entry")
    roles, disabled = got
    if disabled or auth.disabled_at is not None:
        raise TokenError("token's principal is disabled")
    if auth.table_roles != roles:
        check_roles(auth.table_roles)
        raise ForbiddenError(
            f"{auth.principal}'s roles in the access tables "
            f"({', '.join(sorted(auth.table_roles)) or 'none'}) differ from the ledger's "
            f"({', '.join(sorted(roles)) or 'none'}): refused until they match "
            f"(`timeclock-collector verify` names the row)")
    try:       # who the principal is and where: the same entry says (wire.grants.scope_of)
        scope = scope_of(auth.roles_body)
    except ValueError as e:
        raise TokenError("principal's roles entry has a malformed scope") from e
    return Principal(auth.principal, auth.kind, roles, auth.created_at, auth.last_used_at,
                     auth.disabled_at, employee_id=scope.employee, sites=scope.sites)


class Tokens:
    """Tokens of one ledger database, and authentication by token or certificate CN."""

    def __init__(self, store: SQLStore, grants: Grants, *,
                 reader: SQLStore | None = None) -> None:
        self.store = store
        self.reader = reader if reader is not None else store   # authentication lookups
        self.grants = grants
        self._last_use_written: dict[str, int] = {}

    def records(self, principal: str | None = None) -> list[TokenRecord]:
        return access_tables.tokens(self.store, principal)

    # -- authentication -----------------------------------------------------------------------
    def authenticate_token(self, token: str, *, now_us: int, touch: bool = True) -> Principal:
        """The principal a bearer token stands for, or :class:`TokenError`. ``touch=False``:
        reads only (the reader connection); the caller then records the use with
        :meth:`touch_due` and :meth:`touch`."""
        if not TOKEN_RE.fullmatch(token):
            raise TokenError("malformed token")
        h = token_hash(token)
        auth = access_tables.token_auth(self.reader, h)     # one indexed read
        row = None if auth is None else auth.token
        if auth is None or row is None or not hmac.compare_digest(row.hash, h):
            raise TokenError("unknown token")
        if row.revoked_at is not None or now_us >= row.expires_at:
            raise TokenError("token revoked or expired")
        if token_entry_error(auth.token_body, token_id=row.id, principal=row.principal,
                             token_hash=h, expires_at=row.expires_at) is not None:
            raise TokenError("no ledger entry issued this token")
        p = _ledger_principal(auth)
        if p.kind != "token":
            raise TokenError("token's principal is disabled")
        found = Principal(p.name, p.kind, p.roles, p.created_at, p.last_used_at,
                          p.disabled_at, token_id=row.id, employee_id=p.employee_id,
                          sites=p.sites)
        if touch and self.touch_due(found, now_us):
            self.touch(found, now_us)
        return found

    def authenticate_cert(self, common_name: str, *, now_us: int,
                          touch: bool = True) -> Principal:
        """The principal registered for a verified client certificate's CN (``touch``: as
        for :meth:`authenticate_token`)."""
        auth = access_tables.cert_auth(self.reader, common_name) \
            if PRINCIPAL_RE.fullmatch(common_name) else None       # one indexed read
        if auth is None or auth.kind != "cert":
            raise TokenError(f"client certificate {common_name[:80]!r} is not a registered "
                             f"API principal")
        p = _ledger_principal(auth)
        if touch and self.touch_due(p, now_us):
            self.touch(p, now_us)
        return p

    def touch_due(self, p: Principal, now_us: int) -> bool:
        """Whether ``p``'s use must be written now (at most once a minute per token or
        certificate); a True answer claims the write, so a concurrent request does not repeat
        it. Memory only: no I/O."""
        key = p.token_id or f"cert:{p.name}"
        if now_us - self._last_use_written.get(key, -LAST_USE_GRANULARITY_US) \
                < LAST_USE_GRANULARITY_US:
            return False
        self._last_use_written[key] = now_us
        return True

    def touch(self, p: Principal, now_us: int) -> None:
        """Record ``p``'s use (last_used_at) on the writer connection."""
        with self.store.transaction(now_us, what="recording token use") as tx:
            access_tables.touch(tx, p.name, p.token_id, now_us=now_us)

    # -- changes (each also an access entry) ------------------------------------------------
    def create(self, principal: str, roles: Sequence[str], *, expires_days: int, actor: str,
               now_us: int, scope: PrincipalScope = UNSCOPED) -> IssuedToken:
        """Issue a token for ``principal``. No one obtains a credential for another principal
        (DESIGN.md §8.5): an API caller (``actor`` a principal) only for itself; the host
        operator (``actor`` ``cli:<os user>``) only the first token of a principal that has
        none (``handover``), or, while the ledger has no admin yet, a new principal with
        ``roles`` (``bootstrap``). If the principal exists, ``roles`` must be empty or equal to
        its roles (change roles with :meth:`Grants.set_roles`). ``scope``: the new
        principal's person and sites (an existing principal keeps its own)."""
        if not 1 <= expires_days <= MAX_TOKEN_DAYS:
            raise PrincipalError(f"expiry must be 1…{MAX_TOKEN_DAYS} days")
        rs = self.grants.checked_roles(actor, "token.create", now_us, principal, roles)
        existing = get_principal(self.store, principal)
        operator = actor.startswith(OPERATOR_PREFIX)
        refusal: str | None = None
        if not operator and principal != actor:
            refusal = (f"no one obtains a credential for another principal: {actor} may "
                       f"issue tokens only for itself, not for {principal}")
        elif operator and existing is None and self.grants.has_admin():
            refusal = (f"an admin exists, so the host operator creates no principals: an "
                       f"admin creates {principal} (POST /v1/principals; punch-data roles "
                       f"need a second admin), then `token create` hands over its first token")
        elif operator and existing is not None and self.records(principal):
            refusal = (f"{principal} already has a token: only {principal} itself issues more "
                       f"(POST /v1/tokens with its own token)")
        if refusal is not None:
            err = ForbiddenError(refusal)
            self.grants.record_refusal(actor, "token.create", err, now_us=now_us,
                                       principal=principal)
            raise err
        if existing is None and not rs:
            raise PrincipalError(f"principal {principal!r} is new: give at least one --role")
        if existing is None:
            check_scope(rs, scope)
        elif scope not in (UNSCOPED, existing.scope):
            raise PrincipalError(f"principal {principal!r} exists; change its person or sites "
                                 f"with `token roles`")
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
        with self.store.transaction(now_us, what="issuing a token") as tx:
            idx = tx.record("access", access_change(
                actor, "token.create", now_us, outcome="done", principal=principal,
                token=rec.id, token_hash=token_hash(token), expires_at=rec.expires_at,
                roles=sorted(rs) if existing is None else sorted(existing.roles),
                new_principal=existing is None,
                bootstrap=(operator and existing is None) or None,
                handover=(operator and existing is not None) or None,
                **(scope.fields() if existing is None else {})))
            if existing is None:
                access_tables.insert_principal(tx, principal, "token", rs, actor=actor,
                                               now_us=now_us, roles_idx=idx)
            access_tables.insert_token(tx, rec, token_hash(token), entry_idx=idx)
        return IssuedToken(token, rec)

    def revoke(self, token_id: str, *, actor: str, now_us: int) -> TokenRecord:
        rows = [t for t in self.records() if t.id == token_id]
        if not rows:
            raise PrincipalError(f"no token with id {token_id[:40]!r} (see `token list`)")
        if rows[0].revoked_at is not None:
            raise PrincipalError(f"token {token_id} is already revoked")
        with self.store.transaction(now_us, what="revoking a token") as tx:
            access_tables.revoke_token(tx, token_id, actor=actor, now_us=now_us)
            tx.record("access", access_change(actor, "token.revoke", now_us, outcome="done",
                                              principal=rows[0].principal, token=token_id))
        return [t for t in self.records() if t.id == token_id][0]
