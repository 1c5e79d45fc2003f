"""Periodic access reviews (issue 13 item 8; CONTROLS.md D8, D13) on both stores (real SQLite
file, real PostgreSQL as the app role), through collector.access.access_reviews, the API and
the CLI: every grant listed for a named reviewer, keep or revoke per grant, a revocation
applied at once as an access entry citing the review (and the revoked token stops working),
nobody reviewing their own grant, sign-off only when all are decided, and one overdue alert
from the service's tick when no review was signed off in time.
The API and the service's tick: tests/collector/test_access_controls_api.py."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from collector import ReviewError, SoDError
from collector.access import access_reviews as AR
from collector.access.directory import Principals
from collector.cli.main import main
from collector.ledger.sqlbase import SQLStore
from collector.ledger.tables import ensure_schema
from collector.records.exports import export_bundle
from tests.collector.access_kit import access_store, bodies
from tests.collector.api_kit import issue_tokens
from tests.collector.ledger_kit import T0, seeded_key
from wire import verify_cli
from wire.ledger import Checkpoint

S = 1_000_000
DAY = 86_400 * S
PEOPLE = {"carol": ("audit.review",), "dave": ("audit.review",), "alice": ("hr.read",),
          "mallory": ("hr.read", "hr.correct")}


@pytest.fixture
def astore(store_kind: str, sqlite_path: Path, request: pytest.FixtureRequest
           ) -> Iterator[SQLStore]:
    with access_store(store_kind, sqlite_path, request) as s:
        yield s


def test_d8_access_review_keep_and_revoke_applied_on_the_chain(astore: SQLStore) -> None:
    store = astore
    tokens = issue_tokens(store, T0, PEOPLE)
    st = AR.start(store, reviewer="carol", by="cli:test", now_us=T0 + S)
    assert [(g.principal, g.roles) for g in st.started.grants] == [
        ("alice", ("hr.read",)), ("carol", ("audit.review",)), ("dave", ("audit.review",)),
        ("mallory", ("hr.correct", "hr.read"))]
    rid = st.started.review
    AR.decide(store, rid, "alice", "keep", by="carol", now_us=T0 + 2 * S)
    size = store.head()[0]
    with pytest.raises(SoDError, match="carol may not review their own grant"):
        AR.decide(store, rid, "carol", "keep", by="carol", now_us=T0 + 3 * S)
    with pytest.raises(ReviewError, match="is carol's to decide, not alice's"):
        AR.decide(store, rid, "dave", "keep", by="alice", now_us=T0 + 3 * S)
    with pytest.raises(ReviewError, match="has no grant in access review"):
        AR.decide(store, rid, "nobody", "keep", by="carol", now_us=T0 + 3 * S)
    with pytest.raises(ReviewError, match="alice's grant was decided"):
        AR.decide(store, rid, "alice", "revoke", by="carol", now_us=T0 + 3 * S)
    with pytest.raises(ReviewError, match="3 grant"):
        AR.sign_off(store, rid, by="carol", note="n", now_us=T0 + 3 * S)
    assert store.head()[0] == size                                # refusals record nothing

    AR.decide(store, rid, "carol", "keep", by="dave", now_us=T0 + 4 * S)   # someone else
    before = store.head()[0]
    st = AR.decide(store, rid, "mallory", "revoke", by="carol", now_us=T0 + 5 * S,
                   note="left the team")
    [decision] = bodies(store, "access_review", before)
    [change] = bodies(store, "access", before)
    assert (decision["event"], decision["principal"], decision["decision"]) == (
        "decide", "mallory", "revoke")
    assert (change["action"], change["principal"], change["roles"], change["review"],
            change["actor"]) == ("roles.set", "mallory", [], rid, "carol")
    assert change["previous"] == ["hr.correct", "hr.read"]
    p = Principals(store)
    assert p.authenticate_token(tokens["mallory"], now_us=T0 + 6 * S, touch=False).roles \
        == frozenset()                                            # revoked: no roles left
    assert p.drift() == []                                        # tables == the chain
    with pytest.raises(ReviewError, match="sign"):
        AR.sign_off(store, rid, by="dave", note="n", now_us=T0 + 6 * S)
    with pytest.raises(ReviewError, match="1 grant"):
        AR.sign_off(store, rid, by="carol", note="n", now_us=T0 + 6 * S)
    AR.decide(store, rid, "dave", "keep", by="carol", now_us=T0 + 7 * S)
    st = AR.sign_off(store, rid, by="carol", note="4 grants: 3 kept, 1 revoked",
                     now_us=T0 + 8 * S)
    assert st.signed is not None
    assert (st.signed[2].kept, st.signed[2].revoked) == (3, ("mallory",))
    with pytest.raises(ReviewError, match="was signed off at idx"):
        AR.decide(store, rid, "alice", "keep", by="carol", now_us=T0 + 9 * S)
    assert [r.status for r in AR.reviews(store.query).values()] == ["signed-off"]


def test_d8_access_review_cli_and_the_entries_verify(
        sqlite_store: SQLStore, sqlite_path: Path, tmp_path: Path,
        capsys: pytest.CaptureFixture[str]) -> None:
    ensure_schema(sqlite_store)
    issue_tokens(sqlite_store, T0, {"carol": ("audit.review",), "dave": ("audit.review",),
                                    "alice": ("hr.read",)})
    db = str(sqlite_path)
    assert main(["access-review", "--store", db, "--unused-days", "30"]) == 1   # as before
    capsys.readouterr()
    assert main(["access-review", "start", "--store", db, "--reviewer", "carol"]) == 0
    rid = capsys.readouterr().out.split()[0]
    assert rid.startswith("arv-")
    assert main(["access-review", "decide", "--store", db, "--review", rid, "--grant",
                 "carol", "keep", "--by", "carol"]) == 2
    assert "may not review their own grant" in capsys.readouterr().err
    for grant, by, what in (("carol", "dave", "keep"), ("dave", "carol", "keep"),
                            ("alice", "carol", "revoke")):
        assert main(["access-review", "decide", "--store", db, "--review", rid, "--grant",
                     grant, what, "--by", by]) == 0
    assert main(["access-review", "sign-off", "--store", db, "--review", rid, "--by",
                 "carol", "--note", "3 grants"]) == 0
    assert "2 kept, 1 revoked" in capsys.readouterr().out
    assert main(["access-review", "show", "--store", db, "--review", rid]) == 0
    assert "[signed-off]" in capsys.readouterr().out
    log_key = seeded_key("log-key")
    size, head = sqlite_store.head()
    sqlite_store.add_checkpoint(Checkpoint(log=log_key.key_id, size=size, head=head,
                                           at=T0 + 1).sign(log_key))
    export_bundle(sqlite_store, tmp_path / "bundle", [log_key.verify_key])
    assert verify_cli.main([str(tmp_path / "bundle"), "--collector-key",
                            log_key.verify_key.b64]) == 0
    out = capsys.readouterr().out
    assert "RESULT: OK" in out
    assert "D8" not in out                                        # the revoke breaks no rule
