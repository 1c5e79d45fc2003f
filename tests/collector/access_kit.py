"""Shared helpers of the break-glass, access-review and acknowledgement tests: a ledger with
the access tables on either store (PostgreSQL: migrated by the owner role, opened as the app
role), and the bodies of one entry kind; and issue 11 finding 7's forged access rows (what an
insider with write access inserts), shared by tests/collector/test_grants_chain.py and the
findings table (tests/e2e/test_insider_findings.py)."""

from __future__ import annotations

import contextlib
import hashlib
import io
import json
import re
import secrets
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pytest

from collector.cli.main import main as cli_main
from collector.ingest.checkpoints import make_checkpoint_v2
from collector.ledger import checkpoint_tables
from collector.ledger.base import EventFact
from collector.ledger.postgres import PostgresStore
from collector.ledger.sqlbase import SQLStore
from collector.ledger.sqlite import SQLiteStore
from collector.ledger.tables import ensure_schema, migrate_postgres
from collector.records.exports import export_bundle
from wire.keys import SigningKey, save_signing_key
from wire.verify_cli import main as verify_main

if TYPE_CHECKING:
    from tests.collector.api_kit import Api


@contextmanager
def access_store(store_kind: str, sqlite_path: Path, request: pytest.FixtureRequest
                 ) -> Iterator[SQLStore]:
    store: SQLStore
    if store_kind == "sqlite":
        store = SQLiteStore(sqlite_path)
    else:
        pg = request.getfixturevalue("pg_ledger")
        migrate_postgres(pg.owner_dsn, pg.app_role)        # the access tables
        store = PostgresStore(pg.app_dsn)
    try:
        ensure_schema(store)
        yield store
    finally:
        store.close()


def bodies(store: SQLStore, kind: str, since: int = 0) -> list[dict[str, Any]]:
    return [json.loads(se.body) for se in store.entries(since)
            if se.entry.kind == kind and se.body is not None]


# -- finding 7 (issue 11): access rows written behind the ledger ------------------------------

FORGED = "tct_" + "A" * 43          # a well-formed token the attacker knows


def token_hash(token: str) -> str:
    return hashlib.sha256(token.encode()).hexdigest()


def token_entry_idx(store: SQLStore, principal: str) -> int:
    return next(int(r[0]) for r in store.query(
        "SELECT entry_idx FROM tc_tokens WHERE principal = ?", (principal,)))


def forged_access_rows(store: SQLStore) -> list[tuple[str, tuple[Any, ...]]]:
    """What an insider with write access inserts: a principal with roles, and a token for it
    that points at another token's real entry (so only the entry's body betrays it)."""
    idx = token_entry_idx(store, "hr-reader")
    return [
        ("INSERT INTO tc_principals (name, kind, created_at, created_by, roles_idx) "
         "VALUES (?, 'token', 1, 'cli:x', ?)", ("mallory", idx)),
        ("INSERT INTO tc_roles (principal, role, granted_at, granted_by) "
         "VALUES ('mallory', 'hr.read', 1, 'cli:x')", ()),
        ("INSERT INTO tc_tokens (id, principal, hash, created_at, created_by, expires_at, "
         "entry_idx) VALUES ('tok-mallory000', 'mallory', ?, 1, 'cli:x', ?, ?)",
         (token_hash(FORGED), 2**62, idx)),
    ]


async def bearer_status(api: Api, path: str, token: str) -> tuple[int, str]:
    resp = await api.client.get(path, headers={"Authorization": f"Bearer {token}"})
    return resp.status, await resp.text()


# -- finding 5 (issue 11): what the verifiers re-derive of an insider's admin entries ---------

def insider_append(store: SQLStore, body: dict[str, Any], at: int) -> int:
    """An insider with append rights (the app role) writes an admin entry, no rows."""
    return store.append([EventFact("access", {"type": "admin", "outcome": "done", "at": at,
                                              **body})], now_us=at)[0].idx


def sod_breaches_are_findings(store: SQLStore, store_arg: str, now: int, directory: Path
                              ) -> tuple[int, int]:
    """The app role appends a punch-data grant without a second admin and a token for another
    principal: ``verify --full`` exits 1 with ACCESS DRIFT (the entries made no rows) and names
    each segregation-of-duties breach at its entry; ``timeclock-verify`` on a bundle lists both
    as findings, not tampering. Returns (grant idx, token idx)."""
    grant_idx = insider_append(store, {
        "actor": "admin", "action": "roles.set", "principal": "ops",
        "roles": ["hr.read", "ops.devices"], "previous": ["ops.devices"]}, now)
    token_idx = insider_append(store, {
        "actor": "admin", "action": "token.create", "principal": "hr-reader",
        "token": "tok-" + secrets.token_hex(6), "token_hash": token_hash(FORGED),
        "expires_at": now + 10**9, "roles": ["hr.read"], "new_principal": False}, now + 1)
    log_key = SigningKey.generate()
    key_file = directory / "log.key"
    save_signing_key(key_file, log_key)
    printed = io.StringIO()
    with contextlib.redirect_stdout(printed):
        rc = cli_main(["verify", "--store", store_arg, "--log-key", str(key_file), "--full",
                       "--state", str(directory / "vs.json")])
    out = printed.getvalue()
    assert rc == 1, out
    assert out.startswith("OK: ")            # the chain is intact: what it says was not allowed
    assert "ACCESS DRIFT: 2 finding(s)" in out   # and the entries made no rows
    assert "tc_principals/tc_roles: principal ops: roles is {ops.devices} in the table but " \
           "{hr.read, ops.devices} in the ledger" in out
    assert re.search(rf"finding at idx {grant_idx}, check \(5\) fact: segregation of duties "
                     rf"\(D8\): admin gave ops hr.read \(punch data\) without a second "
                     rf"admin's approval", out), out
    assert f"finding at idx {token_idx}, check (5) fact: segregation of duties (D7): admin " \
           f"obtained token" in out
    checkpoint_tables.ensure_schema(store)
    export_bundle(store, directory / "bundle", [log_key.verify_key],
                  sign=lambda size: make_checkpoint_v2(store, log_key, "timeclock.test/g",
                                                       size, now + 2))
    printed = io.StringIO()
    with contextlib.redirect_stdout(printed):
        rc = verify_main([str(directory / "bundle"), "--collector-key", log_key.verify_key.b64,
                          "--json"])
    report = json.loads(printed.getvalue())
    breaches = [(f["idx"], f["tamper"]) for f in report["findings"]
                if "segregation of duties" in f["message"]]
    assert breaches == [(grant_idx, False), (token_idx, False)]
    assert (rc, report["ok"]) == (0, True), report   # breaches are findings, not tampering
    return grant_idx, token_idx
