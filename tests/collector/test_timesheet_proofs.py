"""Signed timesheet sidecars with inclusion proofs (issue 16 item 1: "the signed manifest, query
and inclusion proofs go in a sidecar file"; docs/protocol.md §13.18): `timeclock-collector
timesheet --log-key` signs the sidecar and proves every punch and correction the CSV rests on;
`timeclock-verify --timesheet` checks it offline and recomputes the hours, and refuses a changed
row, a removed punch, a forged proof, an edited punch and a wrong key, each with its message."""

from __future__ import annotations

import base64
import hashlib
import json
import os
import shutil
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from collector.cli.main import main as collector_main
from collector.ingest.checkpoints import make_checkpoint_v2
from collector.ledger import checkpoint_tables
from collector.ledger.sqlbase import PunchQuery
from collector.ledger.sqlite import SQLiteStore
from collector.records.corrections import Corrections
from collector.records.timesheet_export import load, proof_size, signed_sidecar
from collector.records.timesheets import Rules, render
from tests.collector import timesheet_kit
from tests.collector.ledger_kit import T0, seeded_key
from wire.canonical import canonical
from wire.keys import SigningKey, VerifyKey, save_signing_key
from wire.timesheet_proofs import sign_sidecar, signed_message, verify_timesheet
from wire.verify_cli import main as verify_main

FROM, TO = "2026-03-01T00:00Z", "2026-04-01T00:00Z"
VECTOR = Path(__file__).resolve().parents[1] / "vectors" / "timesheet-sidecar-v1.json"
LOG_SEED = "timeclock timesheet sidecar vector log key"


@pytest.fixture(scope="module")
def made(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path, SigningKey]:
    tmp = tmp_path_factory.mktemp("signed-timesheet")
    db = timesheet_kit.ledger(tmp)
    key = SigningKey.generate()
    save_signing_key(tmp / "log.key", key)
    out = tmp / "march.csv"
    assert collector_main(["timesheet", "--store", str(db), "--from", FROM, "--to", TO,
                           "--out", str(out), "--log-key", str(tmp / "log.key"),
                           "--purpose", "March payroll, signed"]) == 0
    return out, out.with_name(out.name + ".sidecar.json"), key


def _verify(csv: Path, side: Path, key: SigningKey, capsys: pytest.CaptureFixture[str]
            ) -> tuple[int, str]:
    rc = verify_main(["--timesheet", str(csv), str(side), "--collector-key",
                      key.verify_key.b64])
    return rc, capsys.readouterr().out


def test_d5_signed_sidecar_verifies_offline_and_the_hours_are_recomputed(
        made: tuple[Path, Path, SigningKey], capsys: pytest.CaptureFixture[str]) -> None:
    csv, side, key = made
    rc, text = _verify(csv, side, key, capsys)
    assert rc == 0, text
    assert "proven: 4 punches, 1 corrections" in text
    assert "RESULT: OK" in text
    meta = json.loads(side.read_text())
    assert meta["signature"]["key_id"] == key.key_id
    assert [p["employee_id"] for p in meta["proofs"]["punches"]] == ["E1", "E1", "E2", "E2"]
    assert meta["proofs"]["employees"] == {"E1": {"timezone": "Europe/Berlin"},
                                           "E2": {"timezone": "America/New_York"}}
    assert meta["ledger"]["size"] == int(meta["proofs"]["checkpoint"].splitlines()[1])
    # the CSV itself stays plain and holds no badge; the sidecar holds the signed punches
    assert timesheet_kit.ADA.encode() not in csv.read_bytes()
    assert (side.stat().st_mode & 0o077) == 0
    rc = verify_main(["--timesheet", str(csv), str(side), "--collector-key",
                      key.verify_key.b64, "--json"])
    report = json.loads(capsys.readouterr().out)
    assert (rc, report["ok"], report["rows"], report["punches"]) == (0, True, 2, 4)


def _resign(meta: dict[str, Any], key: SigningKey) -> dict[str, Any]:
    """What an insider holding the log key could write: the checks past the signature must
    still refuse it (the checkpoint is the ledger's, which witnesses hold)."""
    return sign_sidecar(meta, key)


def _changed_row(csv: Path, meta: dict[str, Any], key: SigningKey) -> tuple[dict[str, Any], str]:
    text = csv.read_text(encoding="utf-8").replace(",7.00,", ",9.00,")
    csv.write_text(text, encoding="utf-8", newline="")
    return meta, "line 2 of the timesheet is not what the proven punches give"


def _removed_punch(csv: Path, meta: dict[str, Any], key: SigningKey) -> tuple[dict[str, Any],
                                                                               str]:
    meta["proofs"]["punches"].pop(1)                     # Ada's out punch
    return _resign(meta, key), "line 2 of the timesheet is not what the proven punches give"


def _forged_proof(csv: Path, meta: dict[str, Any], key: SigningKey) -> tuple[dict[str, Any],
                                                                              str]:
    path = meta["proofs"]["punches"][0]["inclusion_path"]
    path[0] = base64.b64encode(bytes(32)).decode()
    return _resign(meta, key), "the inclusion proof does not lead to the checkpoint's root"


def _edited_punch(csv: Path, meta: dict[str, Any], key: SigningKey) -> tuple[dict[str, Any],
                                                                              str]:
    meta["proofs"]["punches"][1]["body"]["punch"]["ts"] += 3_600_000_000
    return _resign(meta, key), "the body does not hash to the entry's body hash"


def _wrong_key(csv: Path, meta: dict[str, Any], key: SigningKey) -> tuple[dict[str, Any], str]:
    return sign_sidecar(meta, SigningKey.generate()), \
        "the sidecar is not signed by any pinned log key"


def _tampered_unsigned(csv: Path, meta: dict[str, Any], key: SigningKey
                       ) -> tuple[dict[str, Any], str]:
    meta["proofs"]["employees"]["E1"]["timezone"] = "America/New_York"
    return meta, "the sidecar is not signed by any pinned log key"


ATTACKS: dict[str, Callable[[Path, dict[str, Any], SigningKey], tuple[dict[str, Any], str]]] = {
    "changed-csv-row": _changed_row, "removed-punch": _removed_punch,
    "forged-proof": _forged_proof, "edited-punch": _edited_punch, "wrong-key": _wrong_key,
    "unsigned-change": _tampered_unsigned}


@pytest.mark.parametrize("attack", sorted(ATTACKS))
def test_d5_a_changed_timesheet_or_sidecar_is_refused_naming_what(
        made: tuple[Path, Path, SigningKey], tmp_path: Path,
        capsys: pytest.CaptureFixture[str], attack: str) -> None:
    csv, side, key = made
    csv2, side2 = tmp_path / csv.name, tmp_path / side.name
    shutil.copy(csv, csv2)
    meta, want = ATTACKS[attack](csv2, json.loads(side.read_text()), key)
    side2.write_text(json.dumps(meta, indent=2, sort_keys=True))
    rc, text = _verify(csv2, side2, key, capsys)
    assert rc == 1, text
    assert want in text
    assert "RESULT: FAILED" in text
    if attack == "changed-csv-row":
        assert "the file's SHA-256 is not the sidecar's sha256" in text


def test_signed_timesheet_refuses_what_it_cannot_do(made: tuple[Path, Path, SigningKey],
                                                    capsys: pytest.CaptureFixture[str]) -> None:
    csv, side, key = made
    db, log_key = csv.parent / "ledger.db", csv.parent / "log.key"
    assert collector_main(["timesheet", "--store", str(db), "--from", FROM, "--to", TO,
                           "--log-key", str(log_key)]) != 0
    assert "--log-key signs the sidecar of a csv or ndjson file" in capsys.readouterr().err
    assert verify_main(["--timesheet", str(csv), str(side)]) == 2
    assert "--timesheet needs --collector-key" in capsys.readouterr().err
    plain = csv.parent / "plain.csv"
    assert collector_main(["timesheet", "--store", str(db), "--from", FROM, "--to", TO,
                           "--out", str(plain)]) == 0
    capsys.readouterr()
    assert verify_main(["--timesheet", str(plain), str(plain) + ".sidecar.json",
                        "--collector-key", key.verify_key.b64]) == 2
    assert "the sidecar carries no proofs" in capsys.readouterr().err


# -- the golden vector ----------------------------------------------------------------------------

def _vector_sidecar(tmp: Path) -> tuple[str, dict[str, Any]]:
    """The sidecar of timesheet_kit's ledger, made deterministically: seeded keys, fixed times,
    a fixed correction proposal id."""
    db = timesheet_kit.ledger(tmp)
    key = seeded_key(LOG_SEED)
    store = SQLiteStore(db)
    try:
        checkpoint_tables.ensure_schema(store)
        make_checkpoint_v2(store, key, "vector.example/timeclock", store.head()[0], T0 + 9000)
        rules = Rules(round_minutes=15, grace_minutes=5)
        sheets = load(store, PunchQuery(since=timesheet_kit.at("2026-03-01T00:00", "UTC"),
                                        until=timesheet_kit.at("2026-04-01T00:00", "UTC")),
                      rules, Corrections(store).applied_complete(), size=proof_size(store))
        text, rows = render(sheets.sheets, "csv")
        meta = signed_sidecar(store, sheets, csv_bytes=text.encode(), rows=rows, rules=rules,
                              generated_at=T0 + 10_000, fmt="csv", key=key)
    finally:
        store.close()
    return text, meta


def test_d5_timesheet_sidecar_golden_vector(tmp_path: Path, monkeypatch: pytest.MonkeyPatch
                                            ) -> None:
    """tests/vectors/timesheet-sidecar-v1.json: the CSV, the sidecar and the SHA-256 of the
    signed message are reproduced byte for byte, and the vector verifies on its own
    (TIMECLOCK_WRITE_VECTORS=1 rewrites it after a deliberate format change)."""
    monkeypatch.setattr("collector.records.corrections.secrets.token_hex",
                        lambda n: "ab" * n)
    text, meta = _vector_sidecar(tmp_path)
    got = {"log_public_b64": seeded_key(LOG_SEED).verify_key.b64, "csv": text,
           "signed_message_sha256": hashlib.sha256(
               signed_message(meta)).hexdigest(), "sidecar": meta}
    if os.environ.get("TIMECLOCK_WRITE_VECTORS") == "1":
        VECTOR.write_text(json.dumps(got, indent=2, sort_keys=True) + "\n")
    want = json.loads(VECTOR.read_text())
    assert got["csv"] == want["csv"]
    assert canonical(got["sidecar"]) == canonical(want["sidecar"])
    assert got["signed_message_sha256"] == want["signed_message_sha256"]
    # the vector alone, as a third party holds it
    (tmp_path / "v.csv").write_bytes(want["csv"].encode())
    (tmp_path / "v.json").write_text(json.dumps(want["sidecar"]))
    audit = verify_timesheet(tmp_path / "v.csv", tmp_path / "v.json",
                             [VerifyKey.from_b64(want["log_public_b64"])])
    assert audit.problems == []
    assert (audit.rows, audit.punches, audit.corrections) == (2, 4, 1)


def test_an_ndjson_timesheet_with_exceptions_verifies_too(made: tuple[Path, Path, SigningKey],
                                                          capsys: pytest.CaptureFixture[str]
                                                          ) -> None:
    csv, _, key = made
    db, log_key = csv.parent / "ledger.db", csv.parent / "log.key"
    out = csv.parent / "e2.ndjson"
    assert collector_main(["timesheet", "--store", str(db), "--from", FROM, "--to", TO,
                           "--format", "ndjson", "--employee", "E2", "--round-minutes", "15",
                           "--out", str(out), "--log-key", str(log_key)]) == 0
    capsys.readouterr()
    rc, text = _verify(out, out.with_name(out.name + ".sidecar.json"), key, capsys)
    assert rc == 0, text
    assert "proven: 2 punches, 1 corrections" in text
    meta = json.loads(out.with_name(out.name + ".sidecar.json").read_text())
    assert (meta["format"], meta["query"]["employee"], meta["rules"]["round_minutes"]) == (
        "ndjson", "E2", 15)
