"""``timeclock-collector token …`` and ``access-review`` (controls D7, D8): the token is
printed once and stored hashed; changes and refusals are access entries."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from collector.access.directory import Principals
from collector.access.principals import DAY_US
from collector.access.tokens import token_hash
from collector.cli.main import main
from collector.ledger.sqlite import SQLiteStore
from tests.collector.api_kit import access_bodies


def test_d7_token_create_list_revoke_and_review(tmp_path: Path,
                                                capsys: pytest.CaptureFixture[str]) -> None:
    db = str(tmp_path / "ledger.db")
    assert main(["migrate", "--store", db]) == 0   # token commands never create a ledger
    assert main(["token", "create", "--store", db, "--principal", "alice", "--role",
                 "hr.read", "--role", "hr.correct", "--expires", "30d"]) == 0
    token = capsys.readouterr().out.strip()
    assert token.startswith("tct_")
    raw = (tmp_path / "ledger.db").read_bytes()
    assert token.encode() not in raw
    assert token_hash(token).encode() in raw            # only the hash is stored
    assert main(["token", "list", "--store", db, "--json"]) == 0
    listed = json.loads(capsys.readouterr().out)
    assert [(p["name"], p["roles"]) for p in listed] == [("alice", ["hr.correct", "hr.read"])]
    tid = listed[0]["tokens"][0]["id"]
    assert token not in json.dumps(listed)

    assert main(["token", "create", "--store", db, "--principal", "bob", "--role",
                 "hr.correct", "--role", "hr.approve"]) == 2
    assert "segregation of duties" in capsys.readouterr().err
    assert main(["token", "create", "--store", db, "--principal", "root", "--role",
                 "admin", "--role", "payroll.export"]) == 2
    assert main(["token", "create", "--store", db, "--principal", "x", "--role", "hr.read",
                 "--expires", "400d"]) == 2
    assert "between 1 and 365 days" in capsys.readouterr().err

    assert main(["access-review", "--store", db, "--unused-days", "30"]) == 1
    assert "UNUSED" in capsys.readouterr().out
    store = SQLiteStore(tmp_path / "ledger.db")
    p = Principals(store)
    now = p.tokens("alice")[0].created_at
    assert p.authenticate_token(token, now_us=now + 1).name == "alice"
    store.close()
    assert main(["access-review", "--store", db, "--unused-days", "30", "--json"]) == 0
    review = json.loads(capsys.readouterr().out)
    assert [(r["principal"], r["unused"]) for r in review["items"]] == [("alice", False)]

    assert main(["token", "revoke", "--store", db, tid]) == 0
    assert main(["token", "revoke", "--store", db, tid]) == 2
    assert main(["token", "cert", "--store", db, "--principal", "payroll.acme", "--role",
                 "payroll.export"]) == 0
    store = SQLiteStore(tmp_path / "ledger.db")
    with pytest.raises(Exception, match="revoked or expired"):
        Principals(store).authenticate_token(token, now_us=now + 2 * DAY_US)
    changes = [(b["action"], b.get("outcome"), b["principal"]) for b in access_bodies(store)]
    store.close()
    assert changes == [("token.create", "done", "alice"), ("token.create", "refused", "bob"),
                       ("token.create", "refused", "root"), ("token.revoke", "done", "alice"),
                       ("cert.register", "done", "payroll.acme")]
