"""Issue 10: a payroll export with proofs, produced from a real store, verified alone by
``timeclock-verify --export`` (docs/protocol.md §13.3)."""

from __future__ import annotations

import io
import json
from pathlib import Path
from typing import Any

import pytest

from collector.cli.main import main as collector_main
from collector.ledger import checkpoint_tables
from collector.ledger.base import EventFact
from collector.ledger.sqlbase import PunchQuery, SQLStore
from collector.records.export_fields import FieldSet
from collector.records.exports import ExportError
from collector.records.payroll_proofs import export_payroll_with_proofs
from tests.collector.ledger_kit import T0, Clock, seeded_key
from wire.note import COSIGNATURE_V1, NoteVerifier
from wire.note import Checkpoint as NoteCheckpoint
from wire.verify_cli import main

LOG_KEY = seeded_key("log-key")
ORIGIN = "acme.example/timeclock"
WITNESS = ("witness.hr.acme.example", seeded_key("witness hr"))
WITNESS_VKEY = NoteVerifier(WITNESS[0], WITNESS[1].verify_key, COSIGNATURE_V1).vkey()


def _checkpoint(store: SQLStore, *, cosigned: bool = True) -> int:
    size = store.head()[0]
    cp = NoteCheckpoint(ORIGIN, size, store.merkle_root(size))
    checkpoint_tables.ensure_schema(store)
    checkpoint_tables.add_checkpoint(store, cp.sign(LOG_KEY), made_at=T0 + size)
    if cosigned:
        sig = cp.cosign(WITNESS[1], WITNESS[0], timestamp=1764140500)
        checkpoint_tables.add_cosignature(store, size, sig.line(), WITNESS[0], sig.key_id,
                                          T0 + size)
    return size


def _fill(store: SQLStore) -> None:
    a, b = Clock("clock-a"), Clock("clock-b", site="plant-2")
    for c in (a, b):
        store.append([EventFact("device", c.enrolled_body())], now_us=T0)
    store.append([a.fact(action="in"), b.fact(action="in"), a.fact(action="out")],
                 now_us=T0 + 5)
    _checkpoint(store)                                               # size 5
    store.append([b.fact(action="out")], now_us=T0 + 7)              # idx 5: after it


def _export(store: SQLStore, path: Path, fields: FieldSet | None = None
            ) -> dict[str, object]:
    with path.open("w") as f:
        summary = export_payroll_with_proofs(store, f, query=PunchQuery(), now_us=T0 + 100,
                                             fields=fields or FieldSet.choose())
    return {"rows": summary.rows, "size": summary.size}


def _verify(path: Path, capsys: pytest.CaptureFixture[str]) -> tuple[int, Any]:
    rc = main(["--export", str(path), "--collector-key", LOG_KEY.verify_key.b64,
               "--witness", WITNESS_VKEY, "--quorum", "1", "--json"])
    return rc, json.loads(capsys.readouterr().out)


def test_export_with_proofs_verifies_alone(sqlite_store: SQLStore, tmp_path: Path,
                                           capsys: pytest.CaptureFixture[str]) -> None:
    _fill(sqlite_store)
    path = tmp_path / "payroll.ndjson"
    # bounded by the checkpoint of size 5: the punch at idx 5 waits for the next export;
    # the investigation set carries every field and each row's signed punch (the body)
    assert _export(sqlite_store, path, FieldSet.choose("investigation")) == {"rows": 3,
                                                                             "size": 5}
    lines = [json.loads(x) for x in path.read_text().splitlines()]
    assert lines[0]["header"]["ledger"]["size"] == 5
    assert [r["ledger_idx"] for r in lines[1:-1]] == [2, 3, 4]
    rc, report = _verify(path, capsys)
    assert (rc, report["rows"], report["proven"], report["checkpoint_size"]) == (0, 3, 3, 5)
    assert report["witness"]["cosigned_by"] == [WITNESS[0]]
    # an edited row fails alone, naming its line and the check
    lines[2]["credential"] = "em4100:0000000666"
    path.write_text("".join(json.dumps(x) + "\n" for x in lines))
    rc, report = _verify(path, capsys)
    assert rc == 1
    assert report["first_failure"]["line"] == 3
    assert report["first_failure"]["check"] == "fields"


def test_d20_default_proof_export_carries_no_credential_and_still_verifies(
        sqlite_store: SQLStore, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    _fill(sqlite_store)
    path = tmp_path / "payroll.ndjson"
    assert _export(sqlite_store, path) == {"rows": 3, "size": 5}         # the payroll set
    text = path.read_text()
    lines = [json.loads(x) for x in text.splitlines()]
    assert lines[0]["header"]["field_set"] == "payroll"
    assert [sorted(r["proof"]) for r in lines[1:-1]] == [
        ["entry", "inclusion_path", "leaf_index"]] * 3                   # no body
    assert all("credential" not in r for r in lines[1:-1])
    assert "em4100:" not in text
    rc, report = _verify(path, capsys)
    assert (rc, report["rows"], report["proven"]) == (0, 3, 3)
    notes = [f["message"] for f in report["findings"] if not f["failure"]]
    assert any("3 row(s) carry no punch body" in m for m in notes), notes
    # the entry is still proven: an edited entry_hash fails, and so does a credential that
    # no body proves
    for edit, check in (({"entry_hash": "sha256:" + "0" * 64}, "row"),
                        ({"credential": "em4100:0000000666"}, "fields")):
        changed = [dict(x) for x in lines]
        changed[2].update(edit)
        path.write_text("".join(json.dumps(x) + "\n" for x in changed))
        rc, report = _verify(path, capsys)
        assert (rc, report["first_failure"]["line"], report["first_failure"]["check"]) == (
            1, 3, check), edit


def test_a_checkpoint_without_the_quorum_fails(sqlite_store: SQLStore, tmp_path: Path,
                                               capsys: pytest.CaptureFixture[str]) -> None:
    _fill(sqlite_store)
    _checkpoint(sqlite_store, cosigned=False)                  # size 6, nobody cosigned yet
    path = tmp_path / "payroll.ndjson"
    assert _export(sqlite_store, path) == {"rows": 4, "size": 6}
    rc, report = _verify(path, capsys)
    assert (rc, report["first_failure"]["check"]) == (1, "witness")


def test_no_v2_checkpoint_is_a_clear_error(sqlite_store: SQLStore) -> None:
    c = Clock("clock-a")
    sqlite_store.append([EventFact("device", c.enrolled_body())], now_us=T0)
    sqlite_store.append([c.fact()], now_us=T0 + 1)
    out = io.StringIO()
    with pytest.raises(ExportError, match="no v2 checkpoint is stored yet"):
        export_payroll_with_proofs(sqlite_store, out, query=PunchQuery(), now_us=T0)
    assert out.getvalue() == ""


def test_export_cli_with_proofs(sqlite_store: SQLStore, sqlite_path: Path, tmp_path: Path,
                                capsys: pytest.CaptureFixture[str]) -> None:
    _fill(sqlite_store)
    out = tmp_path / "nov.ndjson"
    args = ["export", "--store", f"sqlite://{sqlite_path}", "--payroll", "--with-proofs",
            "--out", str(out)]
    assert collector_main([*args, "--format", "csv"]) == 2
    assert "--with-proofs needs --format ndjson" in capsys.readouterr().err
    assert not out.exists()
    assert collector_main([*args, "--format", "ndjson"]) == 0
    capsys.readouterr()
    rc, report = _verify(out, capsys)
    assert (rc, report["rows"], report["proven"]) == (0, 3, 3)
