"""D1: the device registry kept in the ledger (enrol, rotate, revoke, key lookup)."""

from __future__ import annotations

from pathlib import Path

import pytest

from collector import RegistryError
from collector.cli.main import main
from collector.ingest.punch_verifier import registry_reason
from collector.ledger import open_store
from collector.ledger.audit import verify_store
from collector.ledger.registry import (
    DeviceRevokedError,
    KeyLookupError,
    KeyNotValidForSeqError,
    KeyRevokedError,
    RegistrySnapshot,
    UnknownDeviceError,
    UnknownKeyError,
    enroll,
    key_for,
    revoke,
    rotate,
)
from collector.ledger.sqlbase import SQLStore
from tests.collector.ledger_kit import T0, Clock, seeded_key
from wire.canonical import loads
from wire.keys import SigningKey
from wire.rotation import RotationRequest, SignedRotationRequest


def b64(name: str) -> str:
    return seeded_key(name).verify_key.b64


def req(device: str, old: str | SigningKey, new: str, from_seq: int) -> SignedRotationRequest:
    """The clock's rotation request (wire.rotation), signed by ``old``."""
    old_key = seeded_key(old) if isinstance(old, str) else old
    new_key = seeded_key(new)
    return RotationRequest(device, old_key.key_id, new_key.key_id, new_key.verify_key,
                           from_seq, T0).sign(old_key)


def test_d1_enroll_records_a_device_entry(store: SQLStore) -> None:
    c = Clock("clock-17")
    r = enroll(store, "clock-17", "hq", c.key.verify_key.b64, now_us=T0, approver="alice")
    body = loads(next(store.entries(r.idx)).body)
    assert body == {"event": "enrolled", "device": "clock-17", "site": "hq",
                    "key": c.key.key_id, "signing_key": c.key.verify_key.b64,
                    "approver": "alice"}
    rec = store.device("clock-17")
    assert rec is not None
    assert (rec.site, rec.status, rec.enrolled_idx) == ("hq", "active", 0)
    assert key_for(store, "clock-17", c.key.key_id, 1).from_seq == 1


@pytest.mark.parametrize(("setup", "device", "key", "message"), [
    ([], "Clock_17", "a", "is not a device id"),
    ([], "clock-1", "not base64!", "not a base64 Ed25519 public key"),
    ([("enroll", "clock-1", "k1")], "clock-1", "k2", "already enrolled"),
    ([("enroll", "clock-1", "k1"), ("revoke", "clock-1")], "clock-1", "k2",
     "never re-enrolled"),
    ([("enroll", "clock-1", "k1")], "clock-2", "k1", "already registered to device clock-1"),
])
def test_d1_enroll_refusals(store: SQLStore, setup: list[tuple[str, ...]], device: str,
                            key: str, message: str) -> None:
    for op, *rest in setup:
        if op == "enroll":
            enroll(store, rest[0], "hq", b64(rest[1]), now_us=T0)
        else:
            revoke(store, rest[0], "stolen", now_us=T0)
    size = store.head()[0]
    key_b64 = key if " " in key or "!" in key else b64(key)
    with pytest.raises(RegistryError, match=message):
        enroll(store, device, "hq", key_b64, now_us=T0)
    assert store.head()[0] == size


def test_d1_d17_rotate_needs_the_current_keys_request_above_recorded_seqs(
        store: SQLStore) -> None:
    c = Clock("clock-1")
    enroll(store, "clock-1", "hq", c.key.verify_key.b64, now_us=T0)
    store.append([c.fact() for _ in range(5)], now_us=T0)
    size = store.head()[0]
    with pytest.raises(RegistryError, match="must be above seq 5"):
        rotate(store, req("clock-1", c.key, "new", 5), now_us=T0)
    with pytest.raises(RegistryError, match="not enrolled"):
        rotate(store, req("clock-9", c.key, "new", 6), now_us=T0)
    with pytest.raises(RegistryError, match="signed for key .*, but clock-1's current key"):
        rotate(store, req("clock-1", "operator", "new", 6), now_us=T0)
    forged = RotationRequest("clock-1", c.key.key_id, seeded_key("new").key_id,
                             seeded_key("new").verify_key, 6, T0)
    with pytest.raises(RegistryError, match="not signed by clock-1's current key"):
        rotate(store, SignedRotationRequest(forged, seeded_key("operator").sign(
            forged.signed_message())), now_us=T0)
    assert store.head()[0] == size                     # nothing recorded
    signed = req("clock-1", c.key, "new", 6)
    r = rotate(store, signed, now_us=T0)
    body = loads(next(store.entries(r.idx)).body)
    assert (body["from_seq"], body["request"]) == (6, signed.to_dict())
    new_id = seeded_key("new").key_id
    assert key_for(store, "clock-1", new_id, 6).key_id == new_id
    assert key_for(store, "clock-1", c.key.key_id, 5).key_id == c.key.key_id
    with pytest.raises(KeyNotValidForSeqError, match=r"valid for seq 1\.\.5, not 6"):
        key_for(store, "clock-1", c.key.key_id, 6)
    with pytest.raises(KeyNotValidForSeqError, match=r"valid for seq 6\.\., not 3"):
        key_for(store, "clock-1", new_id, 3)
    with pytest.raises(RegistryError, match=f"signed for key {c.key.key_id}, but clock-1's "
                                            f"current key is {new_id}"):
        rotate(store, signed, now_us=T0)               # replayed: the old key is not current
    enroll(store, "clock-2", "hq", b64("k2"), now_us=T0)
    with pytest.raises(RegistryError, match="already registered to device clock-2"):
        rotate(store, req("clock-1", "new", "k2", 7), now_us=T0)


def test_d1_revocations(store: SQLStore) -> None:
    a = seeded_key("a")
    enroll(store, "clock-1", "hq", a.verify_key.b64, now_us=T0)
    rotate(store, req("clock-1", "a", "b", 10), now_us=T0)
    with pytest.raises(RegistryError, match="needs a reason"):
        revoke(store, "clock-1", " ", now_us=T0)
    with pytest.raises(RegistryError, match="not a key of device clock-1"):
        revoke(store, "clock-1", "lost", key_id="0" * 16, now_us=T0)
    revoke(store, "clock-1", "compromised", key_id=a.key_id, now_us=T0)
    with pytest.raises(KeyRevokedError, match="revoked"):
        key_for(store, "clock-1", a.key_id, 3)
    with pytest.raises(RegistryError, match="already revoked"):
        revoke(store, "clock-1", "again", key_id=a.key_id, now_us=T0)
    revoke(store, "clock-1", "decommissioned", now_us=T0)
    with pytest.raises(DeviceRevokedError, match="clock-1 is revoked"):
        key_for(store, "clock-1", seeded_key("b").key_id, 10)
    with pytest.raises(RegistryError, match="already revoked"):
        revoke(store, "clock-1", "again", now_us=T0)
    with pytest.raises(RegistryError, match="cannot be rotated"):
        rotate(store, req("clock-1", "b", "c", 11), now_us=T0)


@pytest.mark.parametrize("case", [
    ("clock-9", "a", 1, UnknownDeviceError, "unknown-device"),
    ("clock-2", "b", 1, DeviceRevokedError, "device-revoked"),
    ("clock-1", "b", 1, UnknownKeyError, "unknown-key"),
    ("clock-1", "a", 7, KeyNotValidForSeqError, "key-not-valid-for-seq"),
    ("clock-3", "c", 1, KeyRevokedError, "key-revoked"),
])
def test_d1_key_for_names_each_reason(
        store: SQLStore, case: tuple[str, str, int, type[KeyLookupError], str]) -> None:
    device, key, seq, error, reason = case
    enroll(store, "clock-1", "hq", b64("a"), now_us=T0)
    rotate(store, req("clock-1", "a", "a2", 5), now_us=T0)
    enroll(store, "clock-2", "hq", b64("b"), now_us=T0)
    revoke(store, "clock-2", "stolen", now_us=T0)
    enroll(store, "clock-3", "hq", b64("c"), now_us=T0)
    revoke(store, "clock-3", "leaked", key_id=seeded_key("c").key_id, now_us=T0)
    kid = seeded_key(key).key_id
    for lookup in (lambda: key_for(store, device, kid, seq),
                   lambda: RegistrySnapshot.load(store).key_for(device, kid, seq)):
        with pytest.raises(error) as info:
            lookup()
        assert info.value.reason == reason
        assert registry_reason(info.value) == reason


def test_snapshot_answers_from_memory(store: SQLStore) -> None:
    enroll(store, "clock-1", "hq", b64("a"), now_us=T0)
    snap = RegistrySnapshot.load(store)
    enroll(store, "clock-2", "hq", b64("b"), now_us=T0)
    assert snap.key_for("clock-1", seeded_key("a").key_id, 1) == seeded_key("a").verify_key
    with pytest.raises(UnknownDeviceError):
        snap.key_for("clock-2", seeded_key("b").key_id, 1)
    assert RegistrySnapshot.load(store).record_for("clock-2", seeded_key("b").key_id, 1)


def test_d1_registry_entries_satisfy_the_shared_auditor(store: SQLStore) -> None:
    c = Clock("clock-1")
    enroll(store, "clock-1", "hq", c.key.verify_key.b64, now_us=T0)
    store.append([c.fact() for _ in range(3)], now_us=T0)
    new = seeded_key("clock-1-v2")
    rotate(store, req("clock-1", c.key, "clock-1-v2", 4), now_us=T0)
    store.append([c.fact(key=new) for _ in range(2)], now_us=T0)
    revoke(store, "clock-1", "lost", key_id=c.key.key_id, now_us=T0)
    revoke(store, "clock-1", "decommissioned", now_us=T0)
    result = verify_store(store, {})
    assert result.ok, result.report.findings
    assert (result.report.devices, result.report.punches) == (1, 5)


def test_device_register_cli(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    db = tmp_path / "ledger.db"
    assert main(["migrate", "--store", str(db)]) == 0   # device commands never create one
    assert main(["device", "register", "--store", str(db), "--device", "clock-17",
                 "--site", "hq", "--signing-key", b64("a"), "--approver", "bob"]) == 0
    assert "enrolled clock-17 at hq: ledger entry 0" in capsys.readouterr().out
    assert main(["device", "register", "--store", str(db), "--device", "clock-17",
                 "--site", "hq", "--signing-key", b64("b")]) == 2
    assert "already enrolled" in capsys.readouterr().err
    assert main(["device", "revoke", "--store", str(db), "--device", "clock-17",
                 "--reason", "stolen"]) == 0
    s = open_store(str(db))
    assert s.device("clock-17").status == "revoked"  # type: ignore[union-attr]
    s.close()
