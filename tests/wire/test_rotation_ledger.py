"""Key-change authority as every verifier judges it (DESIGN.md §8.5; controls D1, D17;
wire.key_changes): the shared auditor fed directly, and ``timeclock-verify`` on real bundles.

A rotation carries the clock's request signed by the key current at that point of the chain;
a forged one, one for another device or one signed by an older or revoked key FAILS at its
entry. A re-enrolment (two principals) and an old rotation body without a request are
reported as findings, not failures.
"""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import pytest

from tests.wire.bundle_kit import (
    COLLECTOR_KEY,
    DEVICE_B_KEY,
    DEVICE_KEY,
    DEVICE_KEY_V2,
    ROGUE_KEY,
    LedgerBuilder,
    seeded_key,
    standard_ledger,
)
from wire.audit import AuditReport, LedgerAuditor
from wire.bodies import BodyError, parse_body
from wire.keys import SigningKey
from wire.rotation import RotationRequest, SignedRotationRequest
from wire.verify_cli import main

LOG_KEYS = {COLLECTOR_KEY.key_id: COLLECTOR_KEY.verify_key}
DEV = "clock-0017"
NEW = seeded_key("clock-0017 v3")


def audit(b: LedgerBuilder) -> AuditReport:
    a = LedgerAuditor(LOG_KEYS)
    for cp in b.checkpoints:
        a.feed_checkpoint(cp)
    for entry, h, body in b.entries:
        a.feed(entry, h, body)
    return a.finish()


def tampers(r: AuditReport) -> list[tuple[int | None, str]]:
    return [(f.idx, f.check) for f in r.findings if f.tamper]


def notes(r: AuditReport) -> list[tuple[int | None, str]]:
    return [(f.idx, f.message) for f in r.findings if not f.tamper]


def enrolled(punches: int = 2) -> LedgerBuilder:
    b = LedgerBuilder()
    b.enrol(DEV, DEVICE_KEY)                                  # 0
    b.enrol("clock-0042", DEVICE_B_KEY)                       # 1
    for _ in range(punches):
        b.punch(b.signed(DEV, DEVICE_KEY))                    # 2, 3
    return b


def request(signer: SigningKey, *, device: str = DEV, old: SigningKey = DEVICE_KEY,
            new: SigningKey = NEW, from_seq: int = 3) -> SignedRotationRequest:
    """A request naming ``old`` as the key it replaces, signed by ``signer``."""
    req = RotationRequest(device, old.key_id, new.key_id, new.verify_key, from_seq, 1)
    return SignedRotationRequest(req, signer.sign(req.signed_message()))


def rotated(signed: SignedRotationRequest, **over: Any) -> dict[str, Any]:
    r = signed.request
    return {"event": "rotated", "device": r.device, "key": r.key,
            "signing_key": r.signing_key.b64, "from_seq": r.from_seq,
            "request": signed.to_dict(), **over}


def reenrol(b: LedgerBuilder, *, key: SigningKey = NEW, by: str = "alice",
            approver: str = "bob", from_seq: int = 3, cite: int | None = None) -> int:
    ridx = b.append("device", {"event": "reenrol-requested", "device": DEV,
                               "key": key.key_id, "signing_key": key.verify_key.b64,
                               "from_seq": from_seq, "requested_by": by, "reason": "lost"})
    return b.append("device", {"event": "reenrolled", "device": DEV, "key": key.key_id,
                               "signing_key": key.verify_key.b64, "from_seq": from_seq,
                               "request_idx": ridx if cite is None else cite,
                               "requested_by": by, "approved_by": approver})


# -- rotations -----------------------------------------------------------------------------

def test_d17_a_rotation_signed_by_the_current_key_verifies() -> None:
    b = enrolled()
    b.append("device", rotated(request(DEVICE_KEY)))             # 4
    b.punch(b.signed(DEV, NEW))                                  # 5: seq 3 under the new key
    r = audit(b)
    assert (r.ok, r.findings, r.punches) == (True, [], 3)


@pytest.mark.parametrize(("case", "message"), [
    ("forged: the operator's key signs for the clock's key", "not signed by clock-0017's "
                                                             "current key"),
    ("a request signed by clock-0042 for clock-0042", "its device is clock-0042, the "
                                                      "entry's is clock-0017"),
    ("signed by the old key after a rotation", "signed for key .* but clock-0017's current "
                                               "key is"),
    ("signed by the current key after it was revoked", "is revoked: it authorises nothing"),
])
def test_d17_d1_a_rotation_without_the_current_keys_signature_fails_at_its_entry(
        case: str, message: str) -> None:
    b = enrolled()
    if case.startswith("forged"):
        body = rotated(request(ROGUE_KEY))
    elif case.startswith("a request signed by clock-0042"):
        # a real request of another clock, pasted into a rotation of this one
        other = request(DEVICE_B_KEY, device="clock-0042", old=DEVICE_B_KEY)
        body = rotated(other, device=DEV)
    elif case.startswith("signed by the old key"):
        b.rotate(DEV, DEVICE_KEY_V2, from_seq=3)                  # 4: a valid rotation
        body = rotated(request(DEVICE_KEY, new=NEW, from_seq=5))  # DEVICE_KEY is not current
    else:
        b.append("device", {"event": "revoked", "device": DEV, "reason": "leaked",
                            "key": DEVICE_KEY.key_id})            # 4
        body = rotated(request(DEVICE_KEY))
    idx = b.append("device", body)
    b.punch(b.signed(DEV, NEW, seq=9, action="out"))              # the forged punch
    r = audit(b)
    assert tampers(r)[0] == (idx, "fact")
    assert r.first_failure is not None
    assert r.first_failure.idx == idx
    assert re.search(message, r.first_failure.message), r.first_failure.message


@pytest.mark.parametrize(("edit", "message"), [
    ({"from_seq": 7}, "its from_seq is 3, the entry's is 7"),
    ({"key": DEVICE_KEY_V2.key_id, "signing_key": DEVICE_KEY_V2.verify_key.b64},
     "its key is"),
    ({"request": {"rotation": {}, "sig": "x"}}, "missing field"),
])
def test_d17_the_embedded_request_must_be_for_this_rotation(edit: dict[str, Any],
                                                            message: str) -> None:
    with pytest.raises(BodyError, match=message):
        parse_body("device", rotated(request(DEVICE_KEY), **edit), idx=5)


def test_d17_an_old_rotation_without_a_request_is_reported_not_failed() -> None:
    b = enrolled()
    idx = b.append("device", {"event": "rotated", "device": DEV, "key": NEW.key_id,
                              "signing_key": NEW.verify_key.b64, "from_seq": 3})
    b.punch(b.signed(DEV, NEW))
    r = audit(b)
    assert r.ok
    (note,) = notes(r)
    assert note[0] == idx
    assert note[1].startswith("UNAUTHENTICATED KEY CHANGE: clock-0017 rotated to key "
                              f"{NEW.key_id} from seq 3 without the old key's signed request")


def test_d1_a_second_enrolment_of_an_enrolled_device_is_reported() -> None:
    b = enrolled()
    idx = b.enrol(DEV, NEW)
    r = audit(b)
    assert [(i, m[:60]) for i, m in notes(r)] == [
        (idx, "UNAUTHENTICATED KEY CHANGE: clock-0017 enrolled again with k")]


# -- re-enrolments -------------------------------------------------------------------------

def test_d1_d17_a_reenrolment_is_reported_with_its_two_principals() -> None:
    b = enrolled()
    idx = reenrol(b)                                              # 4 request, 5 approval
    b.punch(b.signed(DEV, NEW))                                   # seq 3 under the new key
    b.punch(b.signed(DEV, DEVICE_KEY, seq=4, action="out"))       # the lost key: refused
    r = audit(b)
    assert tampers(r) == [(7, "fact")]
    (note,) = notes(r)
    assert note[0] == idx
    assert note[1].startswith(f"RE-ENROLMENT of clock-0017: key {NEW.key_id} from seq 3 "
                              f"without the old key's request; requested by alice at idx 4 (")
    assert "approved by bob at idx 5 (" in note[1]


@pytest.mark.parametrize(("setup", "message", "at"), [
    ("same principal", "alice requested this re-enrolment and may not approve it", 5),
    ("cites a punch", "request_idx 2 is not an open re-enrolment request", 5),
    ("approved twice", "request_idx 4 is not an open re-enrolment request", 6),
    ("stale: rotated in between", "the request at idx 4 is stale", 6),
    ("other key", "has key", 5),
    ("revoked device", "clock-0017 is revoked", 5),
])
def test_d1_d17_a_reenrolment_without_its_authority_fails(setup: str, message: str,
                                                          at: int) -> None:
    b = enrolled()
    if setup == "same principal":
        reenrol(b, approver="alice")
    elif setup == "cites a punch":
        reenrol(b, cite=2)
    elif setup == "approved twice":
        approval = reenrol(b)
        b.append("device", {**json.loads(b.entries[approval][2] or b"{}"),
                            "key": DEVICE_KEY_V2.key_id,
                            "signing_key": DEVICE_KEY_V2.verify_key.b64})
    elif setup == "stale: rotated in between":
        b.append("device", {"event": "reenrol-requested", "device": DEV, "key": NEW.key_id,
                            "signing_key": NEW.verify_key.b64, "from_seq": 5,
                            "requested_by": "alice", "reason": "lost"})       # 4
        b.rotate(DEV, DEVICE_KEY_V2, from_seq=3)                                # 5
        b.append("device", {"event": "reenrolled", "device": DEV, "key": NEW.key_id,
                            "signing_key": NEW.verify_key.b64, "from_seq": 5,
                            "request_idx": 4, "requested_by": "alice",
                            "approved_by": "bob"})                              # 6
    elif setup == "other key":
        ridx = b.append("device", {"event": "reenrol-requested", "device": DEV,
                                   "key": NEW.key_id, "signing_key": NEW.verify_key.b64,
                                   "from_seq": 3, "requested_by": "alice", "reason": "x"})
        b.append("device", {"event": "reenrolled", "device": DEV,
                            "key": DEVICE_KEY_V2.key_id,
                            "signing_key": DEVICE_KEY_V2.verify_key.b64, "from_seq": 3,
                            "request_idx": ridx, "requested_by": "alice",
                            "approved_by": "bob"})
    else:
        b.append("device", {"event": "revoked", "device": DEV, "reason": "stolen"})
        reenrol(b)
    r = audit(b)
    assert r.first_failure is not None
    assert (r.first_failure.idx, r.first_failure.check) == (at, "fact")
    assert message in r.first_failure.message


# -- timeclock-verify on a bundle ------------------------------------------------------------

def verify(b: LedgerBuilder, directory: Path, capsys: pytest.CaptureFixture[str]
           ) -> tuple[int, Any, str]:
    b.checkpoint()
    path = b.write(directory)
    rc = main([str(path), "--collector-key", COLLECTOR_KEY.verify_key.b64])
    text = capsys.readouterr().out
    main([str(path), "--collector-key", COLLECTOR_KEY.verify_key.b64, "--json"])
    return rc, json.loads(capsys.readouterr().out), text


def test_d17_verify_cli_fails_a_bundle_with_a_forged_rotation(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    b = standard_ledger()
    idx = b.append("device", rotated(request(ROGUE_KEY, old=DEVICE_KEY_V2, from_seq=6)))
    b.punch(b.signed(DEV, NEW, seq=6, action="out"))
    rc, report, text = verify(b, tmp_path / "bundle", capsys)
    assert (rc, report["ok"]) == (1, False)
    first = next(f for f in report["findings"] if f["tamper"])
    assert (first["idx"], first["check"]) == (idx, "fact")
    assert "not signed by clock-0017's current key" in first["message"]
    assert f"TAMPER at idx {idx}, check (5) fact" in text


def test_d1_verify_cli_reports_a_reenrolment_and_passes(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    b = standard_ledger()
    idx = reenrol(b, from_seq=6)
    b.punch(b.signed(DEV, NEW, seq=6))
    rc, report, text = verify(b, tmp_path / "bundle", capsys)
    assert (rc, report["ok"]) == (0, True)
    mine = [f for f in report["findings"] if f["message"].startswith("RE-ENROLMENT")]
    assert [(f["idx"], f["tamper"]) for f in mine] == [(idx, False)]
    assert "requested by alice at idx 18" in mine[0]["message"]
    assert f"finding at idx {idx}, check (5) fact: RE-ENROLMENT of clock-0017" in text
