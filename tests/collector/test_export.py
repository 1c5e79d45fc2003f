"""Payroll extracts (CSV, NDJSON) and the audit bundle, exported from a real store."""

from __future__ import annotations

import csv
import io
import json
import sqlite3
from pathlib import Path
from typing import Any

import pytest

from collector.cli.main import main
from collector.ingest.checkpoints import make_checkpoint
from collector.ledger import open_store
from collector.ledger.base import EventFact
from collector.ledger.sqlbase import PunchQuery, SQLStore
from collector.records import exports
from collector.records.corrections import Corrections
from collector.records.export_fields import DEFAULT as PAYROLL_FIELDS
from collector.records.export_fields import FieldSet, Pseudonyms
from collector.records.exports import ExportError, export_bundle, export_payroll, iso, parse_time
from tests.collector.ledger_kit import T0, Clock, seeded_key
from wire.bundle import audit_bundle
from wire.keys import save_signing_key

LOG_KEY = seeded_key("log-key")


def _fill(store: SQLStore) -> tuple[Clock, Clock]:
    a, b = Clock("clock-a"), Clock("clock-b", site="plant-2")
    for c in (a, b):
        store.append([EventFact("device", c.enrolled_body())], now_us=T0)
    store.append([a.fact(action="in"), b.fact(action="in"), a.fact(action="out")],
                 now_us=T0 + 5)
    make_checkpoint(store, LOG_KEY, T0 + 6)                    # covers idx 0..4
    store.append([b.fact(action="out", clock="unsynced")], now_us=T0 + 7)   # idx 5
    return a, b


@pytest.fixture(autouse=True)
def _filled(request: pytest.FixtureRequest) -> None:
    """The ``store`` of a test that takes one (both stores, tests/collector/conftest.py)
    holds the entries of :func:`_fill`."""
    if "store" in request.fixturenames:
        _fill(request.getfixturevalue("store"))


def _csv(text: str) -> tuple[dict[str, Any], list[dict[str, str]], dict[str, Any]]:
    lines = text.splitlines()
    assert lines[0].startswith("# ")
    assert lines[-1].startswith("# ")
    header = json.loads(lines[0][2:])["header"]
    trailer = json.loads(lines[-1][2:])["trailer"]
    rows = list(csv.DictReader(io.StringIO("\n".join(lines[1:-1]))))
    return header, rows, trailer


def test_payroll_csv_names_query_rows_and_checkpoint(store: SQLStore) -> None:
    out = io.StringIO()
    summary = export_payroll(store, out, fmt="csv", query=PunchQuery(), now_us=T0 + 100)
    header, rows, trailer = _csv(out.getvalue())
    assert header["ledger"] == {"size": 6, "head": store.head()[1]}
    assert header["checkpoint"]["checkpoint"]["size"] == 5
    assert header["query"]["site"] is None
    assert [(r["device"], r["seq"], r["action"], r["ledger_idx"]) for r in rows] == [
        ("clock-a", "1", "in", "2"), ("clock-b", "1", "in", "3"), ("clock-a", "2", "out", "4"),
        ("clock-b", "2", "out", "5")]
    first = rows[0]
    assert first["site"] == "hq"
    assert "credential" not in first            # D20: the payroll set (default) has no badge
    assert header["field_set"] == "payroll"
    inv = io.StringIO()
    export_payroll(store, inv, fmt="csv", query=PunchQuery(), now_us=T0 + 100,
                   fields=FieldSet.choose("investigation"))
    assert _csv(inv.getvalue())[1][0]["credential"] == "em4100:0012345678"
    assert first["device_time"] == iso(T0 + 1_000_000) == "2025-11-26T07:00:01.000000Z"
    assert first["recorded_at_us"] == str(T0 + 5)
    assert first["entry_hash"] == next(store.entries(2)).hash
    assert rows[3]["clock"] == "unsynced"
    assert trailer == {"rows": 4, "covered_by_checkpoint": 3, "uncovered": 1,
                       "checkpoint_size": 5,
                       "seq_ranges": {"clock-a": [1, 2], "clock-b": [1, 2]}}
    assert summary.rows == 4


def test_payroll_ndjson_filters(store: SQLStore) -> None:
    out = io.StringIO()
    q = PunchQuery(since=T0 + 1_000_000, until=T0 + 2_000_000, site="plant-2")
    export_payroll(store, out, fmt="ndjson", query=q, now_us=T0)
    lines = [json.loads(x) for x in out.getvalue().splitlines()]
    assert lines[0]["header"]["query"]["since"] == T0 + 1_000_000
    assert [(r["device"], r["seq"]) for r in lines[1:-1]] == [("clock-b", 1)]
    assert lines[-1]["trailer"]["rows"] == 1
    out = io.StringIO()
    export_payroll(store, out, fmt="ndjson", query=PunchQuery(device="clock-a"), now_us=T0)
    assert [json.loads(x).get("seq") for x in out.getvalue().splitlines()[1:-1]] == [1, 2]


def test_audit_bundle_verifies_offline(store: SQLStore, tmp_path: Path) -> None:
    # Issue 10: a bundle whose last entry no checkpoint covers fails (coverage), so sign
    # one over idx 5 first, as an export does (DESIGN.md §8.2).
    make_checkpoint(store, LOG_KEY, T0 + 8)
    n = export_bundle(store, tmp_path / "bundle", [LOG_KEY.verify_key])
    assert n == 6
    audit = audit_bundle(tmp_path / "bundle", pinned=[LOG_KEY.verify_key])
    assert audit.ok, audit.report.findings
    assert (audit.report.entries, audit.report.checkpoints) == (6, 2)
    with pytest.raises(ExportError, match="exists"):
        export_bundle(store, tmp_path / "bundle", [LOG_KEY.verify_key])


@pytest.mark.parametrize(("text", "expected"), [
    ("1764140400000000", T0),
    ("2025-11-26T07:00:00Z", T0),
    ("2025-11-26T08:00:00.000001+01:00", T0 + 1),
])
def test_parse_time(text: str, expected: int) -> None:
    assert parse_time(text) == expected


@pytest.mark.parametrize(("text", "message"), [
    ("2025-11-26T07:00:00", "no UTC offset"), ("yesterday", "neither µs"),
])
def test_parse_time_refuses(text: str, message: str) -> None:
    with pytest.raises(ExportError, match=message):
        parse_time(text)


def test_export_cli(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    db = tmp_path / "ledger.db"
    s = open_store(str(db))
    _fill(s)
    s.close()
    out = tmp_path / "nov.csv"
    args = ["export", "--store", str(db), "--payroll", "--format", "csv", "--since",
            "2025-11-26T00:00:00Z", "--site", "hq", "--out", str(out)]
    assert main(args) == 0
    _, rows, trailer = _csv(out.read_text())
    assert trailer["rows"] == len(rows) == 2
    assert main(args) == 2
    assert "exists; use --force" in capsys.readouterr().err
    assert main([*args, "--force"]) == 0
    key_file = tmp_path / "log.key"
    save_signing_key(key_file, LOG_KEY)
    assert main(["export", "--store", str(db), "--bundle", str(tmp_path / "b"),
                 "--log-key", str(key_file)]) == 0
    assert audit_bundle(tmp_path / "b", pinned=[LOG_KEY.verify_key]).ok
    assert main(["export", "--store", str(db), "--bundle", str(tmp_path / "c")]) == 2
    assert "--log-key-pub" in capsys.readouterr().err
    assert main(["export", "--store", str(tmp_path / "missing.db"), "--payroll"]) == 2
    assert "no such ledger file" in capsys.readouterr().err


def test_d20_every_cli_export_is_an_access_entry(tmp_path: Path) -> None:
    db = tmp_path / "ledger.db"
    s = open_store(str(db))
    _fill(s)
    s.close()
    assert main(["export", "--store", str(db), "--payroll", "--format", "ndjson", "--site",
                 "hq", "--purpose", "November payroll run", "--out",
                 str(tmp_path / "p.ndjson")]) == 0
    key_file = tmp_path / "log.key"
    save_signing_key(key_file, LOG_KEY)
    assert main(["export", "--store", str(db), "--bundle", str(tmp_path / "b"),
                 "--log-key", str(key_file)]) == 0
    s = open_store(str(db))
    exports = [json.loads(se.body or b"{}") for se in s.entries()
               if se.entry.kind == "access"]
    s.close()
    assert [(e["type"], e["what"], e["purpose"], e["query"]) for e in exports] == [
        ("export", "payroll", "November payroll run", {"site": "hq"}),
        ("export", "bundle", "not stated", {})]
    assert exports[0]["principal"].startswith("os:")
    assert exports[0]["rows"] == 2
    assert exports[0]["fields"] == list(PAYROLL_FIELDS.fields)      # exactly what it carried
    assert "credential" not in exports[0]["fields"]
    assert (exports[0]["field_set"], exports[1]["fields"]) == ("payroll", [])


def _approved_correction(db: Path, *, device: str, seq: int, after: str) -> tuple[str, int]:
    """A filled ledger at ``db`` with one approved correction: (proposal id, its entry idx)."""
    s = open_store(str(db))
    _fill(s)
    corr = Corrections(s)
    c = corr.propose(device=device, seq=seq, field="action", after=after,
                     reason="wrong-action", editor="ed", now_us=T0 + 50)
    corr.decide(c.id, approve=True, approver="ann", now_us=T0 + 60)
    cidx = next(se.entry.idx for se in s.entries() if se.entry.kind == "correction")
    s.close()
    return c.id, cidx


def _raw_sql(db: Path, sql: str, params: tuple[str, ...]) -> None:
    """An attacker with write access to the access tables (not to the chain)."""
    raw = sqlite3.connect(db)
    raw.execute(sql, params)
    raw.commit()
    raw.close()


def test_d6_cli_payroll_export_shows_corrected_value_beside_the_original(
        tmp_path: Path) -> None:
    db = tmp_path / "ledger.db"
    _, cidx = _approved_correction(db, device="clock-a", seq=2, after="break-start")
    out = tmp_path / "p.csv"
    assert main(["export", "--store", str(db), "--payroll", "--format", "csv",
                 "--device", "clock-a", "--out", str(out)]) == 0
    header, rows, _ = _csv(out.read_text())
    assert "effective_action" in header["columns"]
    assert [(r["seq"], r["action"], r["effective_action"], r["correction_idx"])
            for r in rows] == [("1", "in", "in", ""),
                               ("2", "out", "break-start", str(cidx))]
    assert rows[1]["ledger_idx"] == "4"     # the original punch entry, untouched


def test_d6_an_edited_corrections_table_cannot_change_an_export(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    db = tmp_path / "ledger.db"
    cid, _ = _approved_correction(db, device="clock-a", seq=2, after="break-start")
    _raw_sql(db, "UPDATE tc_corrections SET after_value = '\"in\"' WHERE id = ?", (cid,))
    assert main(["export", "--store", str(db), "--payroll", "--out",
                 str(tmp_path / "p.csv")]) == 2
    err = capsys.readouterr().err
    assert "the corrections table says clock-a#2 action = 'in', ledger entry" in err
    assert "was altered outside timeclock (the ledger is authoritative)" in err


def test_d6_a_deleted_corrections_row_cannot_hide_a_correction_from_an_export(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    db = tmp_path / "ledger.db"
    cid, cidx = _approved_correction(db, device="clock-b", seq=1, after="out")
    _raw_sql(db, "DELETE FROM tc_corrections WHERE id = ?", (cid,))
    assert main(["export", "--store", str(db), "--payroll", "--out",
                 str(tmp_path / "p.csv")]) == 2
    assert (f"ledger correction entry {cidx} has no approved row in the corrections table"
            in capsys.readouterr().err)


@pytest.mark.parametrize("us", [0, 1, 999_999, 86_399_999_999, 86_400_000_000, -1,
                                -86_400_000_001, T0, T0 + 3_599_999_999, 4_102_444_800_123_456])
def test_the_memoised_row_time_is_iso(us: int) -> None:
    """The per-row time of the exports (day prefix memoised, time of day in integers) is
    the text of exports.iso, on both sides of midnight and of the epoch."""
    iso_of_row = exports.__dict__["_iso"]
    assert iso_of_row(us) == iso(us)
    assert iso_of_row(us + 1) == iso(us + 1)       # again, with the day's prefix cached


@pytest.mark.parametrize("set_name", ["payroll", "audit", "investigation"])
@pytest.mark.parametrize("fields", [None, "employee_id", "device,seq,effective,corrections"])
def test_the_fast_csv_row_is_the_row_of_punch_item(store: SQLStore, set_name: str,
                                                   fields: str | None) -> None:
    """The payroll CSV builds an uncorrected row without its dicts (exports.flat_row): the
    same values, in the same columns, as csv_values(punch_item(...)) of every field set."""
    fs = FieldSet.choose(set_name, None if fields is None else fields.split(","))
    pick = exports.csv_picker(fs)
    holders = [("E1", "assigned"), (None, "unknown")]
    pseudo = Pseudonyms(b"k" * 32)
    rows = list(store.punch_rows(PunchQuery()))
    assert len(rows) == 4
    for r in rows:
        for holder in holders:
            for p in (None, pseudo):
                want = exports.csv_values(exports.punch_item(r, None, holder, p), fs)
                assert list(pick(exports.flat_row(r, holder, p))) == want
