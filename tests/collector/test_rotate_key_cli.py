"""``timeclock-collector device rotate-key --request``: the request file as the agent writes it
(wire.rotation), checked against the registry and the old key, through the real CLI."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from agent.provision import rotation_request
from collector.cli.main import main
from collector.ledger import open_store
from collector.ledger.registry import enroll
from tests.collector.ledger_kit import T0, seeded_key

OLD, NEW, THIEF = seeded_key("old"), seeded_key("new"), seeded_key("thief")


@pytest.fixture
def db(tmp_path: Path) -> Path:
    path = tmp_path / "ledger.db"
    s = open_store(str(path))
    enroll(s, "clock-9", "hq", OLD.verify_key.b64, now_us=T0)
    s.close()
    return path


def _rotate(db: Path, request: Path) -> int:
    return main(["device", "rotate-key", "--store", str(db), "--request", str(request)])


def test_d17_a_request_signed_by_the_current_key_rotates(db: Path, tmp_path: Path,
                                                     capsys: pytest.CaptureFixture[str]) -> None:
    req = tmp_path / "rotate.json"
    req.write_bytes(rotation_request("clock-9", OLD, NEW, 5, at_us=T0).to_bytes())
    assert _rotate(db, req) == 0
    assert f"rotated clock-9: key {NEW.key_id} from seq 5" in capsys.readouterr().out
    s = open_store(str(db))
    assert [(k.key_id, k.from_seq) for k in s.keys("clock-9")] == [(OLD.key_id, 1),
                                                                   (NEW.key_id, 5)]
    (entry,) = s.entries(1, 2)          # D17: the entry carries the request, as the clock made it
    assert json.loads(entry.body or b"{}")["request"] == json.loads(req.read_bytes())
    s.close()
    assert _rotate(db, req) == 2            # replayed: OLD is no longer the current key
    assert f"but clock-9's current key is {NEW.key_id}" in capsys.readouterr().err


@pytest.mark.parametrize(("edit", "message"), [
    ("thief", "not signed by clock-9's current key"),
    ("from_seq", "not signed by clock-9's current key"),
    ("garbage", "not a timeclock key rotation request"),
])
def test_d17_a_forged_or_broken_request_changes_nothing(db: Path, tmp_path: Path, edit: str,
                                                    message: str,
                                                    capsys: pytest.CaptureFixture[str]) -> None:
    doc = rotation_request("clock-9", THIEF if edit == "thief" else OLD, NEW, 5,
                           at_us=T0).to_dict()
    doc["rotation"]["old_key"] = OLD.key_id
    if edit == "from_seq":
        doc["rotation"]["from_seq"] = 1
    req = tmp_path / "rotate.json"
    req.write_bytes(b"{not json" if edit == "garbage" else json.dumps(doc).encode())
    assert _rotate(db, req) == 2
    assert message in capsys.readouterr().err
    s = open_store(str(db))
    assert [k.key_id for k in s.keys("clock-9")] == [OLD.key_id]
    s.close()
