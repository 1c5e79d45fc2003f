"""D1/D17: re-enrolment — a new key for a clock that cannot sign a rotation request (lost or
broken), under dual control (DESIGN.md §8.5): one principal requests, a second approves; the
store refuses everything else, and the live-store ``verify`` reports each re-enrolment with
both principals. Real SQLite and PostgreSQL (the ``store`` fixture), the real CLI ``main``."""

from __future__ import annotations

from pathlib import Path

import pytest

from collector import RegistryError
from collector.cli.main import main
from collector.ingest.checkpoints import make_checkpoint
from collector.ledger import open_store
from collector.ledger.audit import verify_store
from collector.ledger.base import EventFact
from collector.ledger.registry import (
    approve_reenrolment,
    enroll,
    key_for,
    pending_reenrolment,
    request_reenrolment,
    revoke,
    rotate,
)
from collector.ledger.sqlbase import SQLStore
from tests.collector.ledger_kit import T0, Clock, seeded_key
from wire.canonical import loads
from wire.rotation import RotationRequest

NEW = seeded_key("clock-1 replacement")


@pytest.fixture
def clock(store: SQLStore) -> Clock:
    c = Clock("clock-1")
    enroll(store, "clock-1", "hq", c.key.verify_key.b64, now_us=T0)
    store.append([c.fact() for _ in range(3)], now_us=T0)
    return c


def body(store: SQLStore, idx: int) -> dict[str, object]:
    (e,) = store.entries(idx, idx + 1)
    assert e.body is not None
    value: dict[str, object] = loads(e.body)
    return value


def test_d1_d17_reenrolment_needs_a_second_principal(store: SQLStore, clock: Clock) -> None:
    r = request_reenrolment(store, "clock-1", NEW.verify_key.b64, requested_by="alice",
                            reason="lost", now_us=T0 + 1)
    assert body(store, r.idx) == {
        "event": "reenrol-requested", "device": "clock-1", "key": NEW.key_id,
        "signing_key": NEW.verify_key.b64, "from_seq": 4, "requested_by": "alice",
        "reason": "lost"}
    # a request changes no key: the old one still signs seq 4, the new one nothing yet
    assert key_for(store, "clock-1", clock.key.key_id, 4).key_id == clock.key.key_id
    with pytest.raises(RegistryError, match="not a registered key"):
        key_for(store, "clock-1", NEW.key_id, 4)
    size = store.head()[0]
    with pytest.raises(RegistryError, match="alice requested this re-enrolment .* and may "
                                            "not approve it too"):
        approve_reenrolment(store, "clock-1", approved_by="alice", now_us=T0 + 2)
    assert store.head()[0] == size
    a = approve_reenrolment(store, "clock-1", approved_by="bob", now_us=T0 + 3)
    assert body(store, a.idx) == {
        "event": "reenrolled", "device": "clock-1", "key": NEW.key_id,
        "signing_key": NEW.verify_key.b64, "from_seq": 4, "request_idx": r.idx,
        "requested_by": "alice", "approved_by": "bob", "reason": "lost"}
    assert key_for(store, "clock-1", NEW.key_id, 4).key_id == NEW.key_id
    with pytest.raises(RegistryError, match=r"valid for seq 1\.\.3, not 4"):
        key_for(store, "clock-1", clock.key.key_id, 4)
    with pytest.raises(RegistryError, match="no open re-enrolment request"):
        approve_reenrolment(store, "clock-1", approved_by="carol", now_us=T0 + 4)
    store.append([clock.fact(key=NEW)], now_us=T0 + 5)            # seq 4 under the new key
    result = verify_store(store, {}, full=True)
    assert result.ok, result.report.findings
    (note,) = [f for f in result.report.findings if "RE-ENROLMENT" in f.message]
    assert (note.idx, note.tamper) == (a.idx, False)
    assert f"requested by alice at idx {r.idx}" in note.message
    assert f"approved by bob at idx {a.idx}" in note.message


def test_d1_reenrolment_refusals(store: SQLStore, clock: Clock) -> None:
    size = store.head()[0]
    with pytest.raises(RegistryError, match="must be above seq 3"):
        request_reenrolment(store, "clock-1", NEW.verify_key.b64, requested_by="alice",
                            reason="lost", from_seq=2, now_us=T0)
    with pytest.raises(RegistryError, match="needs a reason"):
        request_reenrolment(store, "clock-1", NEW.verify_key.b64, requested_by="alice",
                            reason=" ", now_us=T0)
    with pytest.raises(RegistryError, match="is not a principal id"):
        request_reenrolment(store, "clock-1", NEW.verify_key.b64, requested_by="Alice Smith",
                            reason="lost", now_us=T0)
    with pytest.raises(RegistryError, match="already registered to device clock-1"):
        request_reenrolment(store, "clock-1", clock.key.verify_key.b64, requested_by="alice",
                            reason="lost", now_us=T0)
    with pytest.raises(RegistryError, match="not enrolled"):
        request_reenrolment(store, "clock-9", NEW.verify_key.b64, requested_by="alice",
                            reason="lost", now_us=T0)
    with pytest.raises(RegistryError, match="no open re-enrolment request"):
        approve_reenrolment(store, "clock-1", approved_by="bob", now_us=T0)
    assert store.head()[0] == size
    # a request goes stale when the keys change before it is approved
    request_reenrolment(store, "clock-1", NEW.verify_key.b64, requested_by="alice",
                        reason="broken", now_us=T0)
    v2 = seeded_key("clock-1 v2")
    rotate(store, RotationRequest("clock-1", clock.key.key_id, v2.key_id, v2.verify_key, 5,
                                  T0).sign(clock.key), now_us=T0)
    assert pending_reenrolment(store, "clock-1") is None
    with pytest.raises(RegistryError, match="no open re-enrolment request"):
        approve_reenrolment(store, "clock-1", approved_by="bob", now_us=T0)
    revoke(store, "clock-1", "stolen", now_us=T0)
    with pytest.raises(RegistryError, match="revoked; its keys cannot be re-enrolled"):
        request_reenrolment(store, "clock-1", NEW.verify_key.b64, requested_by="alice",
                            reason="lost", now_us=T0)


def test_d1_d17_reenrol_cli_and_no_registry_only_rotate(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    db = tmp_path / "ledger.db"
    c = Clock("clock-17")
    s = open_store(str(db))
    enroll(s, "clock-17", "hq", c.key.verify_key.b64, now_us=T0)
    s.close()
    pub = tmp_path / "new.pub"
    pub.write_text(NEW.verify_key.b64 + "\n")
    with pytest.raises(SystemExit) as gone:       # the registry-only path is gone
        main(["device", "rotate", "--store", str(db), "--device", "clock-17",
              "--signing-key", NEW.verify_key.b64, "--from-seq", "1"])
    assert gone.value.code == 2
    assert "invalid choice: 'rotate'" in capsys.readouterr().err
    base = ["--store", str(db)]
    assert main(["device", "reenrol", "clock-17", *base, "--key", str(pub),
                 "--requested-by", "alice", "--reason", "lost"]) == 0
    assert "re-enrolment of clock-17 requested by alice: ledger entry 1" in \
        capsys.readouterr().out
    assert main(["device", "approve-reenrol", "clock-17", *base, "--by", "alice"]) == 2
    assert "may not approve it too" in capsys.readouterr().err
    assert main(["device", "approve-reenrol", "clock-17", *base, "--by", "bob"]) == 0
    assert (f"re-enrolled clock-17: key {NEW.key_id} from seq 2, requested by alice (idx 1), "
            f"approved by bob (ledger entry 2)") in capsys.readouterr().out
    s = open_store(str(db))
    assert [(k.key_id, k.from_seq, k.until_seq) for k in s.keys("clock-17")] == [
        (c.key.key_id, 1, 2), (NEW.key_id, 2, None)]
    s.close()


def test_d1_d17_the_store_itself_refuses_an_unauthorised_key_change(store: SQLStore,
                                                                    clock: Clock) -> None:
    """What ``store.append`` is handed directly, past the registry: a re-enrolment that cites
    no open request, or a second approval of one, is refused with the auditor's words."""
    approval = {"event": "reenrolled", "device": "clock-1", "key": NEW.key_id,
                "signing_key": NEW.verify_key.b64, "from_seq": 4, "request_idx": 1,
                "requested_by": "alice", "approved_by": "bob"}
    size = store.head()[0]
    with pytest.raises(RegistryError, match="request_idx 1 is not an open re-enrolment"):
        store.append([EventFact("device", approval)], now_us=T0)    # idx 1 is a punch
    r = request_reenrolment(store, "clock-1", NEW.verify_key.b64, requested_by="alice",
                            reason="lost", now_us=T0)
    with pytest.raises(RegistryError, match=f"the request at idx {r.idx} has key"):
        store.append([EventFact("device", {**approval, "request_idx": r.idx,
                                           "key": seeded_key("x").key_id,
                                           "signing_key": seeded_key("x").verify_key.b64})],
                     now_us=T0)
    assert store.head()[0] == size + 1
    store.append([EventFact("device", {**approval, "request_idx": r.idx})], now_us=T0)
    other = seeded_key("clock-1 another")
    with pytest.raises(RegistryError, match=f"request_idx {r.idx} is not an open"):
        store.append([EventFact("device", {**approval, "request_idx": r.idx,
                                           "key": other.key_id,
                                           "signing_key": other.verify_key.b64})],
                     now_us=T0)
    revoke(store, "clock-1", "stolen", now_us=T0)
    with pytest.raises(RegistryError, match="clock-1 is revoked: it cannot be re-enrolled"):
        store.append([EventFact("device", {"event": "reenrol-requested", "device": "clock-1",
                                           "key": other.key_id,
                                           "signing_key": other.verify_key.b64,
                                           "from_seq": 9, "requested_by": "alice",
                                           "reason": "x"})], now_us=T0)


def test_d1_d17_incremental_verify_judges_key_changes_after_its_resume_point(
        store: SQLStore, clock: Clock) -> None:
    """A resumed run knows the keys at its checkpoint (verify state): it reports a
    re-enrolment whose request came before that point; after it, the store refuses a rotation
    signed by the key the clock had before (lost, so possibly in someone else's hands)."""
    log_key = seeded_key("log")
    log_keys = {log_key.key_id: log_key.verify_key}
    r = request_reenrolment(store, "clock-1", NEW.verify_key.b64, requested_by="alice",
                            reason="lost", now_us=T0)
    make_checkpoint(store, log_key, T0 + 1)                # the request is below the resume
    first = verify_store(store, log_keys)
    assert first.ok, first.report.findings
    a = approve_reenrolment(store, "clock-1", approved_by="bob", now_us=T0 + 2)
    make_checkpoint(store, log_key, T0 + 3)
    second = verify_store(store, log_keys, state=first.state, sample=0)
    assert second.ok, second.report.findings
    assert second.resumed_from == r.idx + 1
    (note,) = [f for f in second.report.findings if "RE-ENROLMENT" in f.message]
    assert (note.idx, note.tamper) == (a.idx, False)
    assert f"requested by alice (idx {r.idx}, before this run), approved by bob" in \
        note.message
    # a rotation the old (lost) key signed, appended behind the store's back
    v3 = seeded_key("clock-1 v3")
    stale = RotationRequest("clock-1", clock.key.key_id, v3.key_id, v3.verify_key, 9, T0)
    body = {"event": "rotated", "device": "clock-1", "key": v3.key_id,
            "signing_key": v3.verify_key.b64, "from_seq": 9,
            "request": stale.sign(clock.key).to_dict()}
    with pytest.raises(RegistryError, match=f"signed for key {clock.key.key_id}, but "
                                            f"clock-1's current key is {NEW.key_id}"):
        store.append([EventFact("device", body)], now_us=T0 + 4)
