"""Evidence pack (issue 16 item 3): `timeclock-collector evidence` writes one signed, dated
archive with the audit bundle, the full verification, the period's registers, the control
matrix and a report (HTML and, printed by Debian's headless chromium, PDF); `timeclock-verify
--evidence` checks it offline and names what was altered, added or removed."""

from __future__ import annotations

import json
import shutil
import subprocess
import tarfile
from pathlib import Path

import pytest

from collector.cli.main import main as collector_main
from collector.ingest.alerts import SEVERITY_WARNING, Alerts
from collector.ledger.sqlite import SQLiteStore
from collector.ledger.tables import ensure_schema
from collector.records.corrections import Corrections
from tests.collector.api_kit import seed
from tests.collector.ledger_kit import T0
from wire.keys import SigningKey, save_signing_key
from wire.verify_cli import main as verify_main

FROM, TO = "2025-11-01T00:00:00Z", "2025-12-01T00:00:00Z"     # T0 is 2025-11-26
CREDENTIAL_PREFIX = b"em4100:"


@pytest.fixture(scope="module")
def made(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, SigningKey]:
    tmp = tmp_path_factory.mktemp("evidence")
    db = tmp / "ledger.db"
    store = SQLiteStore(db)
    try:
        seed(store, devices=2, punches=4)
        ensure_schema(store)
        fixes = Corrections(store)
        c = fixes.propose(device="clock-00", seq=2, field="action", after="break-start",
                          reason="wrong-action", editor="hr-anna", now_us=T0 + 3000)
        fixes.decide(c.id, approve=True, approver="hr-ben", now_us=T0 + 4000)
        alerts = Alerts(record=True, clock=lambda: T0 + 5000)
        alerts.alert("clock-offline", severity=SEVERITY_WARNING, device="clock-01",
                     detail="clock-01 silent for 2 h")
        alerts.flush(lambda facts: store.append(facts, now_us=T0 + 6000))
    finally:
        store.close()
    key = SigningKey.generate()
    save_signing_key(tmp / "log.key", key)
    cfg = tmp / "collector.toml"
    cfg.write_text('[api]\nlisten = "127.0.0.1:8443"\ntoken_secret = "s3cr3t-value"\n')
    out = tmp / "pack"
    assert collector_main(["evidence", "--store", str(db), "--from", FROM, "--to", TO,
                           "--out", str(out), "--log-key", str(tmp / "log.key"),
                           "--config", str(cfg), "--pdf", "on",
                           "--purpose", "SOC 2 Type II, Q4"]) == 0
    return out, key


def _verify(pack: Path, key: SigningKey, capsys: pytest.CaptureFixture[str]) -> tuple[int, str]:
    rc = verify_main(["--evidence", str(pack), "--collector-key", key.verify_key.b64])
    return rc, capsys.readouterr().out


@pytest.mark.subprocess          # chromium prints the PDF
def test_the_pack_verifies_offline_folder_and_archive(made: tuple[Path, SigningKey],
                                                       capsys: pytest.CaptureFixture[str]
                                                       ) -> None:
    out, key = made
    for pack in (out, out.with_name(out.name + ".tar.gz")):
        rc, text = _verify(pack, key, capsys)
        assert rc == 0, text
        assert "manifest: signed by log key" in text
        assert "RESULT: OK" in text
    manifest = json.loads((out / "manifest.json").read_text())
    for name in ("bundle/ledger.ndjson", "verify.json", "registers/grants.json",
                 "registers/access.json", "registers/reviews.json", "registers/alerts.json",
                 "registers/quarantine.json", "registers/retention.json",
                 "registers/configuration.json", "registers/configuration/collector.toml",
                 "controls.json", "report.html", "report.pdf"):
        assert name in manifest["files"], name
    assert json.loads((out / "verify.json").read_text())["first_failure"] is None
    alerts = json.loads((out / "registers" / "alerts.json").read_text())
    assert [a["kind"] for a in alerts["listed"]] == ["clock-offline"]
    cfg = (out / "registers" / "configuration" / "collector.toml").read_text()
    assert "s3cr3t-value" not in cfg
    assert 'token_secret = "<redacted>"' in cfg
    controls = {c["control"]: c for c in json.loads((out / "controls.json").read_text())}
    assert controls["D13"]["artefacts"] == ["registers/alerts.json", "registers/reviews.json"]
    for f in [*(out / "registers").rglob("*.json"), out / "report.html"]:
        assert CREDENTIAL_PREFIX not in f.read_bytes(), f
    for f in out.rglob("*"):
        assert (f.stat().st_mode & 0o077) == 0, f


@pytest.mark.subprocess
def test_the_pdf_renders_to_page_images(made: tuple[Path, SigningKey], tmp_path: Path) -> None:
    out, _ = made
    subprocess.run(["pdftoppm", "-png", "-r", "40", str(out / "report.pdf"),
                    str(tmp_path / "page")], check=True, timeout=120, capture_output=True)
    pages = sorted(tmp_path.glob("page*.png"))
    assert pages
    first = pages[0].read_bytes()
    assert first.startswith(b"\x89PNG")
    assert len(first) > 2000             # a page with text and plots, not a blank sheet
    artefacts = Path(__file__).resolve().parents[1] / "artifacts"
    artefacts.mkdir(exist_ok=True)
    shutil.copy(pages[0], artefacts / "evidence-report-page1.png")


@pytest.mark.parametrize("damage", ["altered", "added", "removed", "wrong-key"])
def test_a_damaged_pack_fails_naming_what(made: tuple[Path, SigningKey], tmp_path: Path,
                                          capsys: pytest.CaptureFixture[str],
                                          damage: str) -> None:
    out, key = made
    copy = tmp_path / "pack"
    shutil.copytree(out, copy)
    if damage == "altered":
        (copy / "registers" / "alerts.json").write_text('{"count": 0, "listed": []}\n')
    elif damage == "added":
        (copy / "registers" / "extra.json").write_text("{}\n")
    elif damage == "removed":
        (copy / "registers" / "reviews.json").unlink()
    else:
        key = SigningKey.generate()
    rc, text = _verify(copy, key, capsys)
    assert rc == 1, text
    want = {"altered": "registers/alerts.json: SHA-256 differs from the manifest (altered)",
            "added": "registers/extra.json: in the pack but not in the manifest (added)",
            "removed": "registers/reviews.json: in the manifest but missing from the pack",
            "wrong-key": "the manifest is not signed by any pinned log key"}[damage]
    assert want in text
    assert "RESULT: FAILED" in text


def test_an_archive_with_a_path_outside_is_refused(tmp_path: Path,
                                                   capsys: pytest.CaptureFixture[str]) -> None:
    evil = tmp_path / "evil.tar.gz"
    (tmp_path / "x").write_text("x")
    with tarfile.open(evil, "w:gz") as tar:
        tar.add(tmp_path / "x", arcname="../x")
    rc = verify_main(["--evidence", str(evil), "--collector-key",
                      SigningKey.generate().verify_key.b64])
    assert rc == 2
    assert "is not a plain file or folder inside the pack" in capsys.readouterr().err


def test_evidence_refuses_an_existing_folder_and_a_backwards_period(
        made: tuple[Path, SigningKey], capsys: pytest.CaptureFixture[str]) -> None:
    out, _ = made
    db, key = out.parent / "ledger.db", out.parent / "log.key"
    assert collector_main(["evidence", "--store", str(db), "--from", FROM, "--to", TO,
                           "--out", str(out), "--log-key", str(key)]) != 0
    assert "exists; choose a new --out" in capsys.readouterr().err
    assert collector_main(["evidence", "--store", str(db), "--from", TO, "--to", FROM,
                           "--out", str(out.parent / "new"), "--log-key", str(key)]) != 0
    assert "the period must end after it starts" in capsys.readouterr().err
