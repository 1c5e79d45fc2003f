"""Reads and writes of the access tables (``tc_principals``, ``tc_roles``, ``tc_tokens``,
``tc_grants``), and their check against the chain.

Only rows: which principals, roles, tokens and pending grants exist. The rules (role sets,
segregation of duties, token hashing and expiry) are collector.access's and wire.grants';
every write here runs inside a :class:`~collector.ledger.sqlbase.Tx` whose caller records
the ``access`` entry first and stores its idx in the row (``tc_tokens.entry_idx``: the
``token.create``; ``tc_principals.roles_idx``: the last entry that set its roles).

Invariants:
- the tables are projections of the chain's admin ``access`` entries:
  :func:`check_projection` re-derives them (wire.grants.AccessHistory) and names the first
  row that differs (``serve`` start-up and ``verify``);
- authentication (:func:`token_auth`, :func:`cert_auth`) is one indexed read that also
  returns the entries the rows point at, so a row inserted behind the ledger's back (no
  entry, or an entry that issued something else) never authenticates;
- SQLite triggers (:data:`TRIGGERS`) refuse DELETE of principals, tokens and grants and any
  UPDATE but last use, revocation, disabling and a later roles entry; the schema self-check
  (collector.ledger.schema_check) knows them.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

from collector.ledger.sqlbase import SQLStore, Tx
from wire.grants import AccessHistory, admin_body, body_hash


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


def _bytes(v: Any) -> bytes | None:
    return None if v is None else bytes(v)


# -- schema additions (the tables themselves are in collector.ledger.tables) -----------------

def _forbid(table: str, op: str, when: str = "") -> str:
    name = f"{table}_no_{op.lower()}"
    return (f"CREATE TRIGGER IF NOT EXISTS {name} BEFORE {op} ON {table} {when}"
            f"BEGIN SELECT RAISE(ABORT, 'timeclock: {op} on {table} refused: access rows "
            f"change only with their ledger entry'); END")


TRIGGERS: tuple[str, ...] = (
    _forbid("tc_tokens", "DELETE"),
    _forbid("tc_tokens", "UPDATE",
            "WHEN NEW.id IS NOT OLD.id OR NEW.principal IS NOT OLD.principal "
            "OR NEW.hash IS NOT OLD.hash OR NEW.created_at IS NOT OLD.created_at "
            "OR NEW.created_by IS NOT OLD.created_by OR NEW.expires_at IS NOT OLD.expires_at "
            "OR NEW.entry_idx IS NOT OLD.entry_idx OR (OLD.revoked_at IS NOT NULL AND "
            "(NEW.revoked_at IS NOT OLD.revoked_at OR NEW.revoked_by IS NOT OLD.revoked_by)) "),
    _forbid("tc_principals", "DELETE"),
    _forbid("tc_principals", "UPDATE",
            "WHEN NEW.name IS NOT OLD.name OR NEW.kind IS NOT OLD.kind "
            "OR NEW.created_at IS NOT OLD.created_at OR NEW.created_by IS NOT OLD.created_by "
            "OR (OLD.disabled_at IS NOT NULL AND NEW.disabled_at IS NOT OLD.disabled_at) "
            "OR NEW.roles_idx < OLD.roles_idx "),
    _forbid("tc_grants", "DELETE"),
    _forbid("tc_grants", "UPDATE",
            "WHEN OLD.status <> 'pending' OR NEW.id IS NOT OLD.id "
            "OR NEW.principal IS NOT OLD.principal OR NEW.roles IS NOT OLD.roles "
            "OR NEW.requested_by IS NOT OLD.requested_by "
            "OR NEW.request_idx IS NOT OLD.request_idx "),
)
"""SQLite triggers of the access tables (tc_roles is replaced as a whole by a roles entry;
authentication checks it against that entry)."""
TRIGGER_NAMES: tuple[str, ...] = tuple(t.split()[5] for t in TRIGGERS)
_COLUMNS = (("tc_principals", "roles_idx"), ("tc_tokens", "entry_idx"))


def upgrade_sqlite(store: SQLStore) -> None:
    """Add the entry columns to access tables made before them (their old rows then point
    at no entry and stop authenticating: re-issue those tokens), then the triggers."""
    ddl = [f"ALTER TABLE {t} ADD COLUMN {c} BIGINT" for t, c in _COLUMNS
           if c not in {str(r[1]) for r in store.query(f"PRAGMA table_info({t})")}]
    with store.transaction(0, what="creating the access tables' triggers") as tx:
        for stmt in (*ddl, *TRIGGERS):     # one each: a trigger body holds ';'
            tx.execute(stmt)


_PG_REFUSE = ("RAISE EXCEPTION 'timeclock: % on % refused: access rows change only with "
              "their ledger entry', TG_OP, TG_TABLE_NAME;")


def _pg_guard(table: str, changed: str) -> tuple[str, str]:
    fn = f"tc_{table.removeprefix('tc_')}_guard"
    return (f"CREATE OR REPLACE FUNCTION {fn}() RETURNS trigger LANGUAGE plpgsql AS $$\n"
            f"BEGIN\n"
            f"    IF TG_OP = 'DELETE' OR {changed} THEN\n"
            f"        {_PG_REFUSE}\n"
            f"    END IF;\n"
            f"    RETURN NEW;\n"
            f"END $$",
            f"CREATE OR REPLACE TRIGGER {table}_guard BEFORE UPDATE OR DELETE ON {table}\n"
            f"    FOR EACH ROW EXECUTE FUNCTION {fn}()")


PG_TRIGGERS: tuple[str, ...] = (
    *_pg_guard("tc_tokens",
               "(NEW.id, NEW.principal, NEW.hash, NEW.created_at, NEW.created_by, "
               "NEW.expires_at, NEW.entry_idx) IS DISTINCT FROM (OLD.id, OLD.principal, "
               "OLD.hash, OLD.created_at, OLD.created_by, OLD.expires_at, OLD.entry_idx) "
               "OR (OLD.revoked_at IS NOT NULL AND (NEW.revoked_at, NEW.revoked_by) IS "
               "DISTINCT FROM (OLD.revoked_at, OLD.revoked_by))"),
    *_pg_guard("tc_principals",
               "(NEW.name, NEW.kind, NEW.created_at, NEW.created_by) IS DISTINCT FROM "
               "(OLD.name, OLD.kind, OLD.created_at, OLD.created_by) "
               "OR (OLD.disabled_at IS NOT NULL AND NEW.disabled_at IS DISTINCT FROM "
               "OLD.disabled_at) OR NEW.roles_idx < OLD.roles_idx"),
    *_pg_guard("tc_grants",
               "OLD.status <> 'pending' OR (NEW.id, NEW.principal, NEW.roles, "
               "NEW.requested_by, NEW.request_idx) IS DISTINCT FROM (OLD.id, OLD.principal, "
               "OLD.roles, OLD.requested_by, OLD.request_idx)"),
)
"""PostgreSQL: the same guard as :data:`TRIGGERS` (one function and trigger per table)."""

PG_UPGRADE: tuple[str, ...] = (
    *(f"ALTER TABLE {t} ADD COLUMN IF NOT EXISTS {c} BIGINT" for t, c in _COLUMNS),
    *PG_TRIGGERS)
"""Run by ``migrate`` (the owner) after the tables' DDL, one statement each."""


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


@dataclass(frozen=True, slots=True)
class AuthRow:
    """What authentication needs, with the admin bodies of the entries the rows point at
    (None: no such entry, or one whose body does not hash to the entry's body hash)."""

    principal: str
    kind: str
    created_at: int
    last_used_at: int | None
    disabled_at: int | None
    table_roles: frozenset[str]
    roles_body: dict[str, Any] | None
    token: TokenHashRow | None = None
    token_body: dict[str, Any] | None = None


def _agg(store: SQLStore) -> str:
    return "group_concat(role, ',')" if store.ph == "?" else "string_agg(role, ',')"


_PRINCIPAL_COLS = ("p.name, p.kind, p.created_at, p.last_used_at, p.disabled_at, "
                   "pe.body, pb.body, (SELECT {agg} FROM tc_roles r WHERE r.principal = p.name)")
_PRINCIPAL_JOIN = ("LEFT JOIN entries pe ON pe.idx = p.roles_idx AND pe.kind = 'access' "
                   "LEFT JOIN bodies pb ON pb.idx = p.roles_idx")


def _auth_row(r: tuple[Any, ...], token: TokenHashRow | None = None,
              token_body: dict[str, Any] | None = None) -> AuthRow:
    name, kind, created, last, disabled, ph, pbody, roles = r[:8]
    return AuthRow(str(name), str(kind), int(created), _opt(last), _opt(disabled),
                   frozenset(str(roles).split(",")) if roles else frozenset(),
                   admin_body(ph, _bytes(pbody)), token, token_body)


def token_auth(store: SQLStore, token_hash: str) -> AuthRow | None:
    """The token stored under ``token_hash`` and its principal, in one indexed read."""
    rows = store.query(
        f"SELECT {_PRINCIPAL_COLS.format(agg=_agg(store))}, t.id, t.hash, t.expires_at, "  # noqa: S608 - constants only
        f"t.revoked_at, te.body, tb.body FROM tc_tokens t "
        f"JOIN tc_principals p ON p.name = t.principal {_PRINCIPAL_JOIN} "
        f"LEFT JOIN entries te ON te.idx = t.entry_idx AND te.kind = 'access' "
        f"LEFT JOIN bodies tb ON tb.idx = t.entry_idx WHERE t.hash = ?", (token_hash,))
    if not rows:
        return None
    r = rows[0]
    tid, h, expires, revoked, th, tbody = r[8:]
    tok = TokenHashRow(str(tid), str(h), int(expires), _opt(revoked), str(r[0]))
    return _auth_row(r, tok, admin_body(th, _bytes(tbody)))


def cert_auth(store: SQLStore, name: str) -> AuthRow | None:
    """Principal ``name`` with the entry that set its roles, in one indexed read."""
    rows = store.query(f"SELECT {_PRINCIPAL_COLS.format(agg=_agg(store))} "  # noqa: S608 - constants only
                       f"FROM tc_principals p {_PRINCIPAL_JOIN} WHERE p.name = ?", (name,))
    return _auth_row(rows[0]) if rows else None


# -- writes (inside a transaction that records the access entry first) ------------------------

def insert_principal(tx: Tx, name: str, kind: str, roles: Iterable[str], *, actor: str,
                     now_us: int, roles_idx: int) -> None:
    tx.execute("INSERT INTO tc_principals (name, kind, created_at, created_by, roles_idx) "
               "VALUES (?, ?, ?, ?, ?)", (name, kind, now_us, actor, roles_idx))
    grant_roles(tx, name, roles, actor=actor, now_us=now_us)


def grant_roles(tx: Tx, name: str, roles: Iterable[str], *, actor: str, now_us: int) -> None:
    for r in sorted(roles):
        tx.execute("INSERT INTO tc_roles (principal, role, granted_at, granted_by) "
                   "VALUES (?, ?, ?, ?)", (name, r, now_us, actor))


def replace_roles(tx: Tx, name: str, roles: Iterable[str], *, actor: str, now_us: int,
                  roles_idx: int) -> None:
    tx.execute("DELETE FROM tc_roles WHERE principal = ?", (name,))
    grant_roles(tx, name, roles, actor=actor, now_us=now_us)
    tx.execute("UPDATE tc_principals SET roles_idx = ? WHERE name = ?", (roles_idx, name))


def insert_token(tx: Tx, record: TokenRecord, token_hash: str, *, entry_idx: int) -> None:
    tx.execute("INSERT INTO tc_tokens (id, principal, hash, created_at, created_by, "
               "expires_at, entry_idx) VALUES (?, ?, ?, ?, ?, ?, ?)",
               (record.id, record.principal, token_hash, record.created_at, record.created_by,
                record.expires_at, entry_idx))


def revoke_token(tx: Tx, token_id: str, *, actor: str, now_us: int) -> None:
    tx.execute("UPDATE tc_tokens SET revoked_at = ?, revoked_by = ? WHERE id = ?",
               (now_us, actor, token_id))


def disable_principal(tx: Tx, name: str, *, actor: str, now_us: int, roles_idx: int) -> None:
    """Mark the principal disabled (its roles entry is now the disabling one, which gives it
    none) and revoke its tokens that are not revoked yet."""
    tx.execute("UPDATE tc_principals SET disabled_at = ?, roles_idx = ? WHERE name = ?",
               (now_us, roles_idx, name))
    tx.execute("DELETE FROM tc_roles WHERE principal = ?", (name,))
    tx.execute("UPDATE tc_tokens SET revoked_at = ?, revoked_by = ? WHERE principal = ? "
               "AND revoked_at IS NULL", (now_us, actor, name))


def touch(tx: Tx, name: str, token_id: str | None, *, now_us: int) -> None:
    """Record the last use of a principal (and of the token it used)."""
    tx.execute("UPDATE tc_principals SET last_used_at = ? WHERE name = ?", (now_us, name))
    if token_id is not None:
        tx.execute("UPDATE tc_tokens SET last_used_at = ? WHERE id = ?", (now_us, token_id))


# -- pending grants (dual control, DESIGN.md §8.5) --------------------------------------------

@dataclass(frozen=True, slots=True)
class GrantRow:
    id: str
    principal: str
    roles: frozenset[str]
    requested_by: str
    requested_at: int
    request_idx: int
    status: str                   # pending | approved | rejected
    decided_by: str | None
    decided_at: int | None

    def to_dict(self) -> dict[str, Any]:
        return {"id": self.id, "principal": self.principal, "roles": sorted(self.roles),
                "requested_by": self.requested_by, "requested_at": self.requested_at,
                "status": self.status, "decided_by": self.decided_by,
                "decided_at": self.decided_at}


_GRANT_COLS = ("id, principal, roles, requested_by, requested_at, request_idx, status, "
               "decided_by, decided_at")


def _grant(r: tuple[Any, ...]) -> GrantRow:
    gid, name, roles, by, at, idx, status, dby, dat = r
    return GrantRow(str(gid), str(name), frozenset(str(roles).split(",")) - {""}, str(by),
                    int(at), int(idx), str(status), None if dby is None else str(dby),
                    _opt(dat))


def grants(store: SQLStore, *, status: str | None = None) -> list[GrantRow]:
    sql = f"SELECT {_GRANT_COLS} FROM tc_grants"  # noqa: S608 - constants only
    params: tuple[str, ...] = ()
    if status is not None:
        sql, params = sql + " WHERE status = ?", (status,)
    return [_grant(r) for r in store.query(sql + " ORDER BY requested_at, id", params)]


def grant(store: SQLStore, grant_id: str) -> GrantRow | None:
    rows = store.query(f"SELECT {_GRANT_COLS} FROM tc_grants WHERE id = ?",  # noqa: S608 - constants only
                       (grant_id,))
    return _grant(rows[0]) if rows else None


def insert_grant(tx: Tx, grant_id: str, principal: str, roles: Iterable[str], *, actor: str,
                 now_us: int, request_idx: int) -> None:
    tx.execute("INSERT INTO tc_grants (id, principal, roles, requested_by, requested_at, "
               "request_idx, status) VALUES (?, ?, ?, ?, ?, ?, 'pending')",
               (grant_id, principal, ",".join(sorted(roles)), actor, now_us, request_idx))


def decide_grant(tx: Tx, grant_id: str, *, status: str, actor: str, now_us: int,
                 decided_idx: int) -> None:
    tx.execute("UPDATE tc_grants SET status = ?, decided_by = ?, decided_at = ?, "
               "decided_idx = ? WHERE id = ? AND status = 'pending'",
               (status, actor, now_us, decided_idx, grant_id))


# -- the tables checked against the chain ----------------------------------------------------

def derive(store: SQLStore) -> tuple[AccessHistory, list[str]]:
    """The access state the chain's admin ``access`` entries define (wire.grants), and a
    finding per such entry whose body does not hash to its entry."""
    history, bad = AccessHistory(), []
    admin = ("CAST(b.body AS TEXT) LIKE '%\"type\":\"admin\"%'" if store.ph == "?" else
             "position('\"type\":\"admin\"'::bytea in b.body) > 0")
    for idx, h, body in store.query(
            "SELECT e.idx, e.body, b.body FROM entries e JOIN bodies b ON b.idx = e.idx "  # noqa: S608 - constants only
            f"WHERE e.kind = 'access' AND {admin} ORDER BY e.idx"):
        raw = _bytes(body) or b""
        if b'"type":"admin"' not in raw:
            continue          # request logs and correction steps: not access state
        parsed = admin_body(h, raw)
        if parsed is None and body_hash(raw) != str(h):
            bad.append(f"access entry {idx}: its body does not hash to the entry")
        elif parsed is not None:
            history.feed_access(int(idx), parsed)
    return history, bad


def present(store: SQLStore) -> bool:
    """Whether the access tables exist (a SQLite ledger gets them when first opened by the
    API or ``migrate``)."""
    if store.ph == "?":
        return bool(store.query("SELECT 1 FROM sqlite_master WHERE type = 'table' "
                                "AND name = 'tc_grants'"))
    return bool(store.query("SELECT 1 FROM information_schema.tables "
                            "WHERE table_name = 'tc_grants'"))


def check_projection(store: SQLStore) -> list[str]:
    """Findings where the access tables differ from the state re-derived from the chain's
    admin ``access`` entries: each names the first differing row of its table (empty: they
    match)."""
    history, out = derive(store)
    want_p = {n: (p.kind, p.roles, p.disabled_at, p.roles_idx)
              for n, p in history.principals.items()}
    have_p = {}
    for n, kind, disabled, ridx in store.query(
            "SELECT name, kind, disabled_at, roles_idx FROM tc_principals ORDER BY name"):
        have_p[str(n)] = (str(kind), roles_of(store, str(n)), _opt(disabled), _opt(ridx))
    out += _first_diff("tc_principals/tc_roles", "principal", want_p, have_p,
                       ("kind", "roles", "disabled_at", "roles entry"))
    want_t = {t.id: (t.principal, t.hash, t.expires_at, t.revoked_at, t.entry_idx)
              for t in history.tokens.values()}
    have_t = {str(i): (str(p), str(h), int(e), _opt(r), _opt(x)) for i, p, h, e, r, x in
              store.query("SELECT id, principal, hash, expires_at, revoked_at, entry_idx "
                          "FROM tc_tokens ORDER BY id")}
    for tid, want in want_t.items():       # entries older than token_hash do not bind it
        if want[1] is None and tid in have_t:
            want_t[tid] = (want[0], have_t[tid][1], *want[2:])
    out += _first_diff("tc_tokens", "token", want_t, have_t,
                       ("principal", "hash", "expires_at", "revoked_at", "entry"))
    want_g = {g.id: (g.principal, g.roles, g.requested_by, g.status)
              for g in history.grants.values()}
    have_g = {g.id: (g.principal, g.roles, g.requested_by, g.status) for g in grants(store)}
    out += _first_diff("tc_grants", "grant", want_g, have_g,
                       ("principal", "roles", "requested_by", "status"))
    return out


def _show(v: Any) -> str:
    if isinstance(v, frozenset):
        return "{" + ", ".join(sorted(v)) + "}"
    return "none" if v is None else str(v)[:80]


def _first_diff(table: str, what: str, want: dict[str, tuple[Any, ...]],
                have: dict[str, tuple[Any, ...]], cols: tuple[str, ...]) -> list[str]:
    for key in sorted(set(want) | set(have)):
        w, h = want.get(key), have.get(key)
        if w == h:
            continue
        if w is None:
            return [f"{table}: {what} {key} has a row but no ledger entry made it"]
        if h is None:
            return [f"{table}: {what} {key} is in the ledger but has no row"]
        col = next(c for c, a, b in zip(cols, w, h, strict=True) if a != b)
        i = cols.index(col)
        return [f"{table}: {what} {key}: {col} is {_show(h[i])} in the table but "
                f"{_show(w[i])} in the ledger"]
    return []
