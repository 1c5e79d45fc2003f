"""Acceptance of ``timeclock-verify`` (DESIGN.md §6 audit bundle, CONTROLS.md D5/D15).

Each attack edits a real, validly signed bundle the way an attacker with file or database
access would, then runs the real CLI ``main()``: the exit code must be 1 and the report must
name the first failing idx and check.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from tests.wire.bundle_kit import (
    COLLECTOR_KEY,
    DEVICE_B_KEY,
    DEVICE_KEY_V2,
    ROGUE_KEY,
    VECTORS,
    append_line,
    make_punch,
    read_lines,
    rechain,
    rehash,
    standard_ledger,
    vector_ledger,
    write_lines,
)
from wire.bundle import BundleError, ledger_line
from wire.ledger import Checkpoint
from wire.punch import Punch
from wire.verify_cli import main

PINNED = COLLECTOR_KEY.verify_key.b64
LAST_AT = 1764140470000000

Lines = list[dict[str, Any]]


def run(bundle: Path, capsys: pytest.CaptureFixture[str], *extra: str) -> tuple[int, Any]:
    rc = main([str(bundle), "--collector-key", PINNED, "--json", *extra])
    return rc, json.loads(capsys.readouterr().out)


@pytest.fixture
def bundle(tmp_path: Path) -> Path:
    return standard_ledger().write(tmp_path / "bundle")


def test_d5_valid_bundle_passes(bundle: Path, capsys: pytest.CaptureFixture[str]) -> None:
    rc = main([str(bundle), "--collector-key", PINNED])
    out = capsys.readouterr()
    assert rc == 0
    assert "RESULT: OK" in out.out
    assert "entries: 18" in out.out
    assert "punches: 10  devices: 2  checkpoints: 4" in out.out
    assert "NOT pinned" not in out.err
    rc, report = run(bundle, capsys)
    # one finding: the retention entry at idx 14 is from before policies (D15)
    assert (rc, report["ok"], [(f["idx"], f["tamper"]) for f in report["findings"]],
            report["size"]) == (0, True, [(14, False)], 18)


def test_vector_ledger_and_checkpoint_verify(tmp_path: Path,
                                             capsys: pytest.CaptureFixture[str]) -> None:
    b = vector_ledger()
    assert [h for _, h, _ in b.entries] == [v["entry_hash"] for v in VECTORS["ledger"]]
    assert b.checkpoints[0].sig == VECTORS["checkpoint"]["sig"]
    rc, report = run(b.write(tmp_path / "v"), capsys)
    assert (rc, report["entries"], report["punches"], report["checkpoints"]) == (0, 4, 3, 1)
    assert report["head"] == VECTORS["ledger"][-1]["entry_hash"]


def test_unpinned_key_warns_loudly(bundle: Path, capsys: pytest.CaptureFixture[str]) -> None:
    rc = main([str(bundle)])
    out = capsys.readouterr()
    assert rc == 0
    assert "WARNING: the collector key was NOT pinned out of band" in out.err
    assert "UNPINNED" in out.out


def test_gaps_are_findings_not_failures(bundle: Path,
                                        capsys: pytest.CaptureFixture[str]) -> None:
    lines = read_lines(bundle)
    skipped = make_punch("clock-0042", DEVICE_B_KEY, 7, "ab" * 32, ts=LAST_AT)
    append_line(lines, "punch", skipped.to_dict(), LAST_AT)
    write_lines(bundle, lines)
    # Issue 10 (coverage): a tail no checkpoint covers now fails, so the collector signs a
    # checkpoint over the new entry, as an export does; the gap stays a finding only.
    cps = read_lines(bundle, "checkpoints.ndjson")
    cps.append(Checkpoint(log=COLLECTOR_KEY.key_id, size=len(lines), head=lines[-1]["hash"],
                          at=LAST_AT).sign(COLLECTOR_KEY).to_dict())
    write_lines(bundle, cps, "checkpoints.ndjson")
    rc, report = run(bundle, capsys)
    assert rc == 0
    assert [(f["idx"], f["check"], f["tamper"]) for f in report["findings"]] == [
        (14, "fact", False), (18, "device-chain", False)]   # 14: a pre-policy retention (D15)
    assert "clock-0042: seq 6 missing before seq 7" in report["findings"][1]["message"]


# -- attacks: (edit, expected first failing idx, expected check) ---------------------------

def edit_body(lines: Lines) -> None:
    lines[5]["body"]["punch"]["credential"] = "em4100:9999999999"


def edit_entry_field(lines: Lines) -> None:
    lines[6]["entry"]["at"] += 1


def edit_entry_and_its_hash(lines: Lines) -> None:
    lines[6]["entry"]["at"] += 1
    rehash(lines[6])


def delete_entry(lines: Lines) -> None:
    del lines[7]


def delete_entry_and_rehash(lines: Lines) -> None:
    del lines[13]          # clock-0042 #4; the forger renumbers and re-links the rest
    rechain(lines, 13)


def swap_entries(lines: Lines) -> None:
    lines[6], lines[7] = lines[7], lines[6]


def truncate_tail(lines: Lines) -> None:
    del lines[16:]


def replay_punch(lines: Lines) -> None:
    append_line(lines, "punch", lines[5]["body"], LAST_AT)


def punch_under_unregistered_key(lines: Lines) -> None:
    sp = make_punch("clock-0042", ROGUE_KEY, 6, lines[16]["body"]["punch"]["prev"], ts=LAST_AT)
    append_line(lines, "punch", sp.to_dict(), LAST_AT)


def remove_body_without_retention(lines: Lines) -> None:
    lines[10]["body"] = None


def reuse_device_seq(lines: Lines) -> None:
    orig = lines[15]["body"]["punch"]      # clock-0017 #5, signed by the current key
    sp = make_punch("clock-0017", DEVICE_KEY_V2, 5, orig["prev"], ts=LAST_AT,
                    credential="em4100:0000000666")
    append_line(lines, "punch", sp.to_dict(), LAST_AT)


def punch_after_revocation(lines: Lines) -> None:
    append_line(lines, "device", {"event": "revoked", "device": "clock-0042",
                                  "reason": "stolen"}, LAST_AT)
    prev = Punch.from_dict(lines[16]["body"]["punch"]).hash()       # clock-0042 #5
    sp = make_punch("clock-0042", DEVICE_B_KEY, 6, prev, ts=LAST_AT)
    append_line(lines, "punch", sp.to_dict(), LAST_AT + 1)


def delete_device_body(lines: Lines) -> None:
    lines[4]["body"] = None


def garbage_line(lines: Lines) -> None:
    lines[3] = {"entry": lines[3]["entry"], "hash": lines[3]["hash"], "body": lines[3]["body"],
                "extra": 1}


def correction_of_non_punch(lines: Lines) -> None:
    append_line(lines, "correction", {"original_idx": 4, "editor": "x"}, LAST_AT)


def retention_of_later_idx(lines: Lines) -> None:
    append_line(lines, "retention", {"policy": "p", "deleted": [[17, 18]], "count": 2}, LAST_AT)


ATTACKS: list[tuple[str, Callable[[Lines], None], int, str]] = [
    ("edited-body", edit_body, 5, "body"),
    ("edited-entry-field", edit_entry_field, 6, "entry-hash"),
    ("edited-entry-rehashed", edit_entry_and_its_hash, 7, "prev"),
    ("deleted-entry", delete_entry, 7, "entry"),
    ("deleted-entry-rehashed", delete_entry_and_rehash, 14, "checkpoint"),
    ("swapped-entries", swap_entries, 6, "entry"),
    ("tail-truncated-under-checkpoint", truncate_tail, 16, "checkpoint"),
    ("replayed-punch", replay_punch, 18, "device-chain"),
    ("punch-under-unregistered-key", punch_under_unregistered_key, 18, "fact"),
    ("body-removed-without-retention", remove_body_without_retention, 10, "body"),
    ("device-seq-reused", reuse_device_seq, 18, "device-chain"),
    ("punch-after-revocation", punch_after_revocation, 19, "fact"),
    ("device-body-deleted", delete_device_body, 4, "body"),
    ("undecodable-line", garbage_line, 3, "entry"),
    ("correction-of-non-punch", correction_of_non_punch, 18, "fact"),
    ("retention-of-later-idx", retention_of_later_idx, 18, "fact"),
]


@pytest.mark.parametrize("case", ATTACKS, ids=[a[0] for a in ATTACKS])
def test_d5_attack_names_first_failing_idx(
        case: tuple[str, Callable[[Lines], None], int, str], bundle: Path,
        capsys: pytest.CaptureFixture[str]) -> None:
    name, attack, idx, check = case
    lines = read_lines(bundle)
    attack(lines)
    write_lines(bundle, lines)
    rc, report = run(bundle, capsys)
    assert rc == 1, name
    first = report["first_failure"]
    assert (first["idx"], first["check"], first["tamper"]) == (idx, check, True), first
    rc = main([str(bundle), "--collector-key", PINNED])
    text = capsys.readouterr().out
    assert rc == 1
    assert f"RESULT: FAILED at idx {idx}, check (" in text
    assert f") {check}: " in text


def test_d5_forged_checkpoint(bundle: Path, capsys: pytest.CaptureFixture[str]) -> None:
    cps = read_lines(bundle, "checkpoints.ndjson")
    # The forger cannot sign with the log key: sign a checkpoint naming it with another key.
    forged = Checkpoint(log=ROGUE_KEY.key_id, size=10, head=cps[1]["checkpoint"]["head"],
                        at=LAST_AT).sign(ROGUE_KEY).to_dict()
    forged["checkpoint"]["log"] = COLLECTOR_KEY.key_id
    cps[1] = forged
    write_lines(bundle, cps, "checkpoints.ndjson")
    rc, report = run(bundle, capsys)
    assert rc == 1
    first = report["first_failure"]
    assert (first["idx"], first["check"]) == (9, "checkpoint")
    assert "forged or corrupted" in first["message"]


def test_d5_checkpoint_by_unknown_log_key(bundle: Path,
                                          capsys: pytest.CaptureFixture[str]) -> None:
    cps = read_lines(bundle, "checkpoints.ndjson")
    cps.append(Checkpoint(log=ROGUE_KEY.key_id, size=18, head=cps[3]["checkpoint"]["head"],
                          at=LAST_AT).sign(ROGUE_KEY).to_dict())
    write_lines(bundle, cps, "checkpoints.ndjson")
    rc, report = run(bundle, capsys)
    assert (rc, report["first_failure"]["idx"], report["first_failure"]["check"]) == (
        1, 17, "checkpoint")
    assert "not a trusted collector key" in report["first_failure"]["message"]


def test_d5_keys_json_disagrees_with_pinned_key(bundle: Path,
                                                 capsys: pytest.CaptureFixture[str]) -> None:
    # A forger rebuilds the whole bundle under their own log key and ships that key.
    b = standard_ledger()
    b.log_key = ROGUE_KEY
    b.checkpoints.clear()
    b.checkpoint()
    forged = b.write(bundle.parent / "forged")
    assert main([str(forged)]) == 0          # self-consistent: only pinning catches it
    capsys.readouterr()
    rc, report = run(forged, capsys)
    assert rc == 1
    first = report["first_failure"]
    assert (first["idx"], first["check"]) == (None, "keys")
    assert any(f["check"] == "checkpoint" and "not a trusted" in f["message"]
               for f in report["findings"])


@pytest.mark.parametrize(("argv", "message"), [
    (["{missing}"], "missing"),
    (["{bundle}", "--collector-key", "not-base64"], "not a base64 Ed25519 public key"),
    (["{nokeys}"], "keys.json: missing"),
])
def test_usage_and_io_errors_exit_2(argv: list[str], message: str, bundle: Path,
                                    capsys: pytest.CaptureFixture[str]) -> None:
    nokeys = bundle.parent / "nokeys"
    nokeys.mkdir()
    for name in ("ledger.ndjson", "checkpoints.ndjson"):
        (nokeys / name).write_bytes((bundle / name).read_bytes())
    args = [a.format(bundle=bundle, missing=bundle.parent / "absent", nokeys=nokeys)
            for a in argv]
    assert main(args) == 2
    assert message in capsys.readouterr().err


def test_help_teaches(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit, match="0"):
        main(["--help"])
    text = capsys.readouterr().out
    assert "--collector-key" in text
    assert "out of band" in text
    assert "(6) device-chain" in text


def test_malformed_checkpoint_line_fails(bundle: Path,
                                         capsys: pytest.CaptureFixture[str]) -> None:
    with (bundle / "checkpoints.ndjson").open("ab") as f:
        f.write(b'{"checkpoint":{"v":1},"sig":"x"}\n')
    rc, report = run(bundle, capsys)
    first = report["first_failure"]
    assert (rc, first["idx"], first["check"]) == (1, None, "checkpoint")
    assert "checkpoints.ndjson line 5" in first["message"]


def test_keys_json_with_wrong_key_id_is_unreadable(bundle: Path,
                                                    capsys: pytest.CaptureFixture[str]) -> None:
    (bundle / "keys.json").write_text(json.dumps(
        {"collector": [{"key": "0" * 16, "public": PINNED}]}))
    assert main([str(bundle)]) == 2
    assert "is not the key id of its public key" in capsys.readouterr().err


def test_writer_refuses_to_overwrite_or_to_export_a_damaged_body(bundle: Path) -> None:
    b = standard_ledger()
    with pytest.raises(BundleError, match="exists; refusing to overwrite"):
        b.write(bundle)
    entry, h, _ = b.entries[0]
    with pytest.raises(BundleError, match="entry 0: stored body is not JSON"):
        ledger_line(entry, h, b"\xff not json")
