"""Evidence pack (issue 16 item 3): `timeclock-collector evidence` writes one signed, dated
archive with the audit bundle, the full verification, the period's registers, the control
matrix and a report (HTML and, printed by Debian's headless chromium, PDF); `timeclock-verify
--evidence` checks it offline and names what was altered, added or removed."""

from __future__ import annotations

import hashlib
import json
import shutil
import subprocess
import tarfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from collector.cli.main import main as collector_main
from collector.ingest.alerts import SEVERITY_WARNING, Alerts
from collector.ingest.checkpoints import make_checkpoint_v2
from collector.ingest.detectors_webhooks import WebhookEndpoint
from collector.ingest.hr_push import HrPush
from collector.ledger import checkpoint_tables
from collector.ledger.sqlite import SQLiteStore
from collector.ledger.tables import ensure_schema
from collector.records.corrections import Corrections
from tests.collector.api_kit import seed
from tests.collector.ledger_kit import T0, seeded_key
from tests.collector.webhook_kit import SECRET, Receiver
from wire.canonical import canonical
from wire.evidence import signed_message
from wire.keys import SigningKey, save_signing_key
from wire.verify_cli import main as verify_main

FROM, TO = "2025-11-01T00:00:00Z", "2025-12-01T00:00:00Z"     # T0 is 2025-11-26
ORIGIN, W1, W2 = "evidence.example/timeclock", "witness.example/w1", "witness.example/w2"
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
        key = SigningKey.generate()
        _deliveries_and_witnesses(store, key)
    finally:
        store.close()
    save_signing_key(tmp / "log.key", key)
    cfg = tmp / "collector.toml"
    cfg.write_text('[api]\nlisten = "127.0.0.1:8443"\ntoken_secret = "s3cr3t-value"\n')
    out = tmp / "pack"
    assert collector_main(["evidence", "--store", str(db), "--from", FROM, "--to", TO,
                           "--out", str(out), "--log-key", str(tmp / "log.key"),
                           "--config", str(cfg), "--pdf", "on",
                           "--purpose", "SOC 2 Type II, Q4"]) == 0
    return out, key


def _deliveries_and_witnesses(store: SQLiteStore, key: SigningKey) -> None:
    """Two cosigned checkpoints (witness w1 on the first only, w2 on the newest) and the HR
    webhook's record: a delivery given up after one attempt, then one acknowledged, both to
    a real receiver on loopback."""
    checkpoint_tables.ensure_schema(store)
    first = make_checkpoint_v2(store, key, ORIGIN, store.head()[0], T0 + 6500)
    _cosign(store, first, W1, T0 + 6600)
    receiver = Receiver()
    try:
        secret = Path(store.path).parent / "hr.secret"
        secret.write_bytes(SECRET)
        endpoint = WebhookEndpoint("hr", receiver.url, secret, 1, 5.0, 1, 0.01, 0.01)
        clock = iter(range(T0 + 7000, T0 + 8000, 10))
        push = HrPush(store, endpoint, SECRET, "collector.test", batch=100,
                      clock=lambda: next(clock))
        receiver.script = [503]
        assert push.deliver_once() == (0, True)
        assert push.deliver_once() == (8, False)
    finally:
        receiver.stop()
    newest = make_checkpoint_v2(store, key, ORIGIN, store.head()[0], T0 + 8500)
    _cosign(store, newest, W2, T0 + 8600)


def _cosign(store: SQLiteStore, cp: checkpoint_tables.StoredCheckpoint, name: str,
            at: int) -> None:
    sig = cp.checkpoint.cosign(seeded_key(name), name, timestamp=at // 1_000_000)
    assert checkpoint_tables.add_cosignature(store, cp.size, sig.line(), name, sig.key_id,
                                             received_at=at)


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
        assert "registers: 2 HR deliveries (1 acknowledged) and 2 witnesses (1 current), " \
               "checked against the bundle" in text
        assert "RESULT: OK" in text
    manifest = json.loads((out / "manifest.json").read_text())
    for name in ("bundle/ledger.ndjson", "verify.json", "registers/grants.json",
                 "registers/access.json", "registers/reviews.json", "registers/alerts.json",
                 "registers/quarantine.json", "registers/retention.json",
                 "registers/configuration.json", "registers/configuration/collector.toml",
                 "registers/hr-deliveries.json", "registers/witnesses.json",
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


def test_d5_d20_the_pack_holds_the_delivery_record_and_witness_status(
        made: tuple[Path, SigningKey]) -> None:
    out, _ = made
    hr = json.loads((out / "registers" / "hr-deliveries.json").read_text())
    assert (hr["count"], hr["acknowledged"], hr["failed"], hr["endpoints"]) == (2, 1, 1, ["hr"])
    failed, done = hr["listed"]
    assert (failed["acknowledged"], failed["error"], failed["attempts"]) == (False, "HTTP 503", 1)
    assert (done["acknowledged"], done["what"], done["punches"], done["delivery"]) == (
        True, "punches", 8, "hr:2-9")
    assert done["host"].startswith("127.0.0.1:")
    assert done["at"].startswith("2025-11-26T07:00")
    wit = json.loads((out / "registers" / "witnesses.json").read_text())
    newest = wit["newest_checkpoint"]["size"]
    assert [(w["name"], w["current"], w["behind_entries"] > 0) for w in wit["witnesses"]] == [
        (W1, False, True), (W2, True, False)]
    assert wit["witnesses"][1]["latest_size"] == newest
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["hr_deliveries"] == {"count": 2, "acknowledged": 1, "failed": 1}
    assert manifest["witnesses"] == [
        {"name": W1, "latest_size": wit["witnesses"][0]["latest_size"], "current": False},
        {"name": W2, "latest_size": newest, "current": True}]
    report = (out / "report.html").read_text()
    assert "HR webhook deliveries (2)" in report
    assert "1 acknowledged, 1 given up" in report
    assert f"<td>{W1}</td>" in report
    assert "NO (behind by" in report


def _resign(copy: Path, key: SigningKey, rel: str, change: Callable[[Any], None]) -> None:
    """An insider with the log key rewrites a register and re-signs the manifest: the pack's
    signature holds, and only the check against the bundle can tell."""
    reg = json.loads((copy / rel).read_text())
    change(reg)
    (copy / rel).write_text(json.dumps(reg))
    manifest = json.loads((copy / "manifest.json").read_text())
    manifest["files"][rel] = hashlib.sha256((copy / rel).read_bytes()).hexdigest()
    (copy / "manifest.json").write_bytes(canonical(manifest))
    (copy / "manifest.sig").write_text(key.sign(signed_message(manifest)) + "\n")


Change = tuple[str, Callable[[Any], None], str]


@pytest.mark.parametrize("case", [
    ("registers/hr-deliveries.json",
     lambda r: r["listed"][0].update(acknowledged=True),
     "delivery at idx {idx} differs from its ledger entry in acknowledged"),
    ("registers/hr-deliveries.json",
     lambda r: r.update(count=1, listed=r["listed"][1:]),
     "counts 1 deliveries; the bundle holds 2 of the period"),
    ("registers/witnesses.json",
     lambda r: r["witnesses"][0].update(current=True),
     "'witness.example/w1' is said to be current"),
    ("registers/witnesses.json",
     lambda r: r["witnesses"][1].update(line=r["witnesses"][0]["line"]),
     "'witness.example/w2''s latest cosignature is not on the bundle's checkpoint"),
], ids=["failed-shown-acknowledged", "delivery-left-out", "stale-witness-shown-current",
        "cosignature-not-in-bundle"])
def test_d5_d20_registers_that_disagree_with_the_bundle_fail(
        made: tuple[Path, SigningKey], tmp_path: Path, capsys: pytest.CaptureFixture[str],
        case: Change) -> None:
    rel, change, want = case
    out, key = made
    copy = tmp_path / "pack"
    shutil.copytree(out, copy)
    idx = json.loads((out / "registers" / "hr-deliveries.json").read_text())["listed"][0]["idx"]
    _resign(copy, key, rel, change)
    rc, text = _verify(copy, key, capsys)
    assert rc == 1, text
    assert "manifest: signed by log key" in text
    assert want.format(idx=idx) in text
    assert "RESULT: FAILED: the registers disagree with the bundle" in text


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
