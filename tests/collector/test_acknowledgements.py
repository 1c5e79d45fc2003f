"""Training and acknowledgement (issue 13 item 9; CONTROLS.md D8: least privilege needs a
current policy acknowledgement for punch-data roles) on both stores (real SQLite file, real
PostgreSQL as the app role), through collector.access.policy_docs, the API and the CLI:
policy documents versioned by the SHA-256 of their bytes, acknowledgements of the current
version, a punch-data request refused at request time with the document to acknowledge
(missing, another version, too old), and the report of who is due.
The API and the service's tick: tests/collector/test_access_controls_api.py."""

from __future__ import annotations

import hashlib
from collections.abc import Iterator
from pathlib import Path

import pytest

from collector import ReviewError
from collector.access import policy_docs as PD
from collector.access.principals import PrincipalError
from collector.cli.main import main
from collector.ledger.sqlbase import SQLStore
from collector.ledger.tables import ensure_schema
from tests.collector.access_kit import access_store, bodies
from tests.collector.api_kit import issue_tokens
from tests.collector.ledger_kit import T0
from tests.collector.test_reviews import CONFIG

ROOT = Path(__file__).resolve().parents[2]
POLICY = ROOT / "docs" / "policies" / "access-control.md"
DAY = 86_400 * 1_000_000


@pytest.fixture
def astore(store_kind: str, sqlite_path: Path, request: pytest.FixtureRequest
           ) -> Iterator[SQLStore]:
    with access_store(store_kind, sqlite_path, request) as s:
        yield s


def test_d8_acknowledgement_documents_are_versioned_by_hash(astore: SQLStore,
                                                            tmp_path: Path) -> None:
    store = astore
    issue_tokens(store, T0, {"alice": ("hr.read",), "bob": ("audit.read",)})
    v1 = PD.publish(store, POLICY, by="cli:test", now_us=T0 + 1)
    assert (v1.doc.name, v1.doc.version, v1.doc.sha256, v1.doc.size) == (
        "access-control", 1, hashlib.sha256(POLICY.read_bytes()).hexdigest(),
        len(POLICY.read_bytes()))
    with pytest.raises(ReviewError, match="has these bytes already"):
        PD.publish(store, POLICY, by="cli:test", now_us=T0 + 2)
    with pytest.raises(PrincipalError, match="cannot read"):
        PD.publish(store, tmp_path / "missing.md", by="cli:test", now_us=T0 + 2)
    edited = tmp_path / "access-control.md"
    edited.write_bytes(POLICY.read_bytes() + b"\nRevised: MFA for every role.\n")
    v2 = PD.publish(store, edited, by="cli:test", now_us=T0 + 3)
    assert (v2.doc.version, v2.doc.sha256) == (2, hashlib.sha256(edited.read_bytes()
                                                                 ).hexdigest())
    assert [(b["name"], b["version"]) for b in bodies(store, "policy_doc")] == [
        ("access-control", 1), ("access-control", 2)]
    with pytest.raises(ReviewError, match="is not the current v2"):
        PD.acknowledge(store, "alice", "access-control", by="alice", now_us=T0 + 4,
                       sha256=v1.doc.sha256)
    with pytest.raises(PrincipalError, match="no policy document 'retention'"):
        PD.acknowledge(store, "alice", "retention", by="alice", now_us=T0 + 4)
    idx, ack = PD.acknowledge(store, "alice", "access-control", by="alice", now_us=T0 + 5,
                              sha256=v2.doc.sha256)
    assert (ack.version, ack.sha256, ack.at) == (2, v2.doc.sha256, T0 + 5)
    [body] = bodies(store, "acknowledgement")
    assert body == {"principal": "alice", "name": "access-control", "version": 2,
                    "sha256": v2.doc.sha256, "at": T0 + 5, "by": "alice"}
    settings = PD.PolicySettings(max_ack_age_days=30)
    assert PD.due(store, settings, now_us=T0 + 6) == []           # bob: no punch-data role
    [late] = PD.due(store, settings, now_us=T0 + 31 * DAY)
    assert (late.principal, late.name) == ("alice", "access-control")
    assert "older than 30 days" in late.problem


def test_d8_acknowledgement_cli_publish_acknowledge_and_due(
        sqlite_store: SQLStore, sqlite_path: Path, tmp_path: Path,
        capsys: pytest.CaptureFixture[str]) -> None:
    ensure_schema(sqlite_store)
    issue_tokens(sqlite_store, T0, {"alice": ("hr.read",), "bob": ("payroll.export",),
                                    "carol": ("ops.devices",)})
    db = str(sqlite_path)
    assert main(["policy-doc", "due", "--store", db]) == 0        # nothing published
    assert main(["policy-doc", "publish", "--store", db, str(POLICY)]) == 0
    assert "access-control v1 sha256" in capsys.readouterr().out
    assert main(["policy-doc", "due", "--store", db]) == 1
    out = capsys.readouterr().out
    assert "DUE  alice [hr.read] access-control: never acknowledged" in out
    assert "bob" in out
    assert "carol" not in out                                     # no punch-data role
    assert main(["policy-doc", "acknowledge", "--store", db, "--principal", "alice",
                 "--name", "access-control"]) == 0
    assert main(["policy-doc", "acknowledge", "--store", db, "--principal", "bob",
                 "--name", "access-control"]) == 0
    capsys.readouterr()
    assert main(["policy-doc", "due", "--store", db, "--json"]) == 0
    assert '"items": []' in capsys.readouterr().out
    path = tmp_path / "collector.toml"
    path.write_text(CONFIG + "\n[policies]\nrequired = [\"access-control\", \"retention\"]\n")
    assert main(["policy-doc", "due", "--store", db, "--config", str(path)]) == 1
    assert "'retention' is required" in capsys.readouterr().out
