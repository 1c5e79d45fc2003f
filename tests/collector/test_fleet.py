"""Provisioning bundles, rotation requests and the fleet view (controls D1, D3, D17)."""

from __future__ import annotations

import datetime as dt
import json
from dataclasses import replace
from pathlib import Path

import pytest

from agent.config import load_config
from agent.provision import (
    ProvisionError,
    install_bundle,
    read_bundle,
    rotation_request,
)
from collector import RegistryError
from collector.fleet import devices as fleet
from collector.fleet.pki import CertificateAuthority
from collector.fleet.provisioning import Bundle, enroll_device, renew_certificate
from collector.ledger import open_store
from collector.ledger.registry import revoke, verify_request
from collector.ledger.sqlbase import SQLStore
from wire.device_status import (
    DeviceStatus,
    InclusionStatus,
    QueueStatus,
    StorageStatus,
    WitnessStatus,
    parse_status,
)
from wire.keys import SigningKey, save_signing_key, write_private_file
from wire.provisioning import PrivateKeyInBundleError
from wire.rotation import SignedRotationRequest
from wire.tls import make_tls_key_and_csr

NOW = dt.datetime(2026, 1, 5, 12, 0, tzinfo=dt.UTC)
LOG = SigningKey.generate()


class ClockDir:
    """What `timeclock-agent init` leaves on a clock: signing key, TLS key, CSR."""

    def __init__(self, root: Path, device: str) -> None:
        self.device = device
        self.dir = root / device
        self.dir.mkdir(parents=True)
        self.signing = SigningKey.generate()
        save_signing_key(self.dir / "signing.key", self.signing)
        key_pem, self.csr = make_tls_key_and_csr(device)
        write_private_file(self.dir / "tls.key", key_pem)


@pytest.fixture
def env(tmp_path: Path) -> tuple[SQLStore, CertificateAuthority, Path]:
    ca = CertificateAuthority.init(tmp_path / "ca", now=NOW)
    store = open_store(str(tmp_path / "ledger.db"))
    yield store, ca, tmp_path
    store.close()


def _enroll(store: SQLStore, ca: CertificateAuthority, clock: ClockDir, **kw: object) -> Bundle:
    return enroll_device(store, ca, clock.csr, clock.signing.verify_key.b64, site="hq",
                         broker=("mqtt.example.org", 8883), log_public_key=LOG.verify_key,
                         now=NOW, **kw)  # type: ignore[arg-type]


def test_d1_enrol_bundle_has_no_private_key_and_installs(env: tuple[SQLStore,
                                                          CertificateAuthority, Path]) -> None:
    store, ca, root = env
    clock = ClockDir(root, "clock-17")
    bundle = _enroll(store, ca, clock)
    data = bundle.to_bytes()
    assert b"PRIVATE KEY" not in data
    assert clock.signing.seed.hex().encode() not in data
    assert (root / "clock-17" / "tls.key").read_bytes()[30:90] not in data
    rec = store.device("clock-17")
    assert rec is not None
    assert rec.status == "active"
    path = bundle.write(root / "clock-17.bundle")
    done = install_bundle(path, clock.dir, state_dir=root / "state")
    assert done.config_file is not None
    text = done.config_file.read_text()
    assert 'host = "mqtt.example.org"' in text
    assert "port = 8883" in text
    assert LOG.verify_key.b64 in text
    cfg = load_config(done.config_file, check_readers=False)
    assert cfg.device.id == "clock-17"
    assert cfg.mqtt is not None


def test_d1_bundle_with_a_private_key_is_refused(env: tuple[SQLStore, CertificateAuthority,
                                                             Path]) -> None:
    store, ca, root = env
    clock = ClockDir(root, "clock-18")
    d = _enroll(store, ca, clock).to_dict()
    d["site"] = (clock.dir / "tls.key").read_text()
    with pytest.raises(ProvisionError, match="contains a private key"):
        read_bundle(json.dumps(d).encode())
    # the one definition (wire.provisioning) the collector writes with: no such bundle exists
    with pytest.raises(PrivateKeyInBundleError, match="contains a private key"):
        Bundle(**{**_fields(_enroll_again(store, ca, root)), "site": d["site"]})


def _enroll_again(store: SQLStore, ca: CertificateAuthority, root: Path) -> Bundle:
    return _enroll(store, ca, ClockDir(root, "clock-19"))


def _fields(b: Bundle) -> dict[str, object]:
    return {f: getattr(b, f) for f in b.__slots__}  # type: ignore[attr-defined]


def test_d1_bundle_for_another_clock_is_refused(env: tuple[SQLStore, CertificateAuthority,
                                                            Path]) -> None:
    store, ca, root = env
    a, b = ClockDir(root, "clock-a"), ClockDir(root, "clock-b")
    bundle = _enroll(store, ca, a).write(root / "a.bundle")
    with pytest.raises(ProvisionError, match="another TLS key"):
        install_bundle(bundle, b.dir, state_dir=root / "state")


def test_d1_enrol_twice_issues_no_certificate(env: tuple[SQLStore, CertificateAuthority,
                                                          Path]) -> None:
    store, ca, root = env
    clock = ClockDir(root, "clock-20")
    _enroll(store, ca, clock)
    issued = len(ca.entries())
    with pytest.raises(RegistryError, match="already enrolled"):
        _enroll(store, ca, clock)
    assert len(ca.entries()) == issued


def test_d3_renewal_only_for_active_devices(env: tuple[SQLStore, CertificateAuthority,
                                                        Path]) -> None:
    store, ca, root = env
    clock = ClockDir(root, "clock-21")
    _enroll(store, ca, clock)
    renewal = renew_certificate(store, ca, clock.csr, now=NOW)
    assert renewal.purpose == "renew"
    assert "readers" not in renewal.to_dict()
    done = install_bundle(renewal.write(root / "r.bundle"), clock.dir, state_dir=root / "s")
    assert done.config_file is None
    revoke(store, "clock-21", "stolen", now_us=1)
    with pytest.raises(RegistryError, match="revoked"):
        renew_certificate(store, ca, clock.csr, now=NOW)


def test_d17_rotation_request_must_be_signed_by_the_current_key(
        env: tuple[SQLStore, CertificateAuthority, Path]) -> None:
    store, ca, root = env
    clock = ClockDir(root, "clock-22")
    _enroll(store, ca, clock)
    new = SigningKey.generate()
    good = rotation_request("clock-22", clock.signing, new, 1, at_us=5)
    assert verify_request(store, good).key == new.key_id
    thief = SigningKey.generate()
    stolen = rotation_request("clock-22", thief, new, 1, at_us=5)
    forged = SignedRotationRequest(replace(stolen.request, old_key=clock.signing.key_id),
                                   stolen.sig)
    with pytest.raises(RegistryError, match="not signed by clock-22's current key"):
        verify_request(store, forged)


def test_fleet_rows_warn_on_expiry_gaps_and_unsynced_clock(
        env: tuple[SQLStore, CertificateAuthority, Path]) -> None:
    store, ca, root = env
    clock = ClockDir(root, "clock-23")
    _enroll(store, ca, clock, days=40)
    now_us = int((NOW + dt.timedelta(days=15)).timestamp() * 1e6)
    statuses: dict[str, fleet.StatusReading] = {"clock-23": DeviceStatus(
        device="clock-23", state="online", version="0.1.0", at=now_us,
        queue=QueueStatus(7, now_us - 10**6), clock="unsynced", readers={})}
    rows = fleet.fleet_rows(store, now_us=now_us, certs=ca.entries(), statuses=statuses)
    assert [r.device for r in rows] == ["clock-23"]
    r = rows[0]
    assert (r.online, r.queue_depth, r.clock, r.key_id) == ("online", 7, "unsynced",
                                                           clock.signing.key_id)
    assert any("expires in 25 days" in w for w in r.warnings), r.warnings
    assert "clock unsynced" in r.warnings
    assert not any("storage" in w for w in r.warnings)
    assert "clock-23" in fleet.render_table(rows, now_us=now_us)


@pytest.mark.parametrize(("storage", "warning", "column"), [
    (StorageStatus("full", 0, 12, 0, "No space left on device"),
     "storage FULL for 60s: the clock refuses taps (12 refused, 0 bytes free): No space left "
     "on device", "FULL"),
    (StorageStatus("low", 4096, 0, None), "storage low, 4096 bytes free", "low"),
    (StorageStatus("ok", 10**9, 0, None), None, "ok"),
    (None, None, "?"),
])
def test_device_list_warns_when_a_clock_reports_storage_full(
        env: tuple[SQLStore, CertificateAuthority, Path], storage: StorageStatus | None,
        warning: str | None, column: str) -> None:
    store, ca, root = env
    _enroll(store, ca, ClockDir(root, "clock-24"))
    now_us = 60 * 10**6
    status = DeviceStatus(device="clock-24", state="online", version="0.1.0", at=now_us,
                          queue=QueueStatus(3, None), clock="synced", readers={},
                          storage=storage)
    # what read_retained_statuses gives for the retained message the agent published
    reading = parse_status("clock-24", status.to_bytes())
    [r] = fleet.fleet_rows(store, now_us=now_us, statuses={"clock-24": reading})
    assert [w for w in r.warnings if "storage" in w] == ([warning] if warning else [])
    assert (r.storage, r.to_dict()["storage"]) == ((storage.state,) * 2 if storage
                                                   else (None, None))
    table = fleet.render_table([r], now_us=now_us).splitlines()
    assert table[0].split()[-1] == "DISK"
    assert table[1].split()[-1] == column
    if warning:
        assert f"  ! {warning}" in table


def test_device_list_warns_about_an_unreadable_status(
        env: tuple[SQLStore, CertificateAuthority, Path]) -> None:
    store, ca, root = env
    _enroll(store, ca, ClockDir(root, "clock-25"))
    [r] = fleet.fleet_rows(store, now_us=1, statuses={"clock-25": "status: missing field(s) v"})
    assert "status message invalid: status: missing field(s) v" in r.warnings
    assert r.online is None


@pytest.mark.parametrize(("witness", "warning", "column"), [
    (WitnessStatus("refusing", 40, None, 2, "shrinking", "the log offers size 31", 0),
     "WITNESS REFUSES to cosign for 60s: shrinking (the log offers size 31); it holds a "
     "checkpoint of size 40", "REFUSING"),
    (WitnessStatus("broken", None, None, 0, "state-unreadable", "bad json", 0),
     "WITNESS BROKEN for 60s: the clock cosigns nothing (bad json)", "broken"),
    (WitnessStatus("ok", 40, 10, 0), None, "ok"),
    (None, None, "?"),
])
def test_device_list_shows_a_clock_refusing_to_cosign(
        env: tuple[SQLStore, CertificateAuthority, Path], witness: WitnessStatus | None,
        warning: str | None, column: str) -> None:
    store, ca, root = env
    _enroll(store, ca, ClockDir(root, "clock-26"))
    now_us = 60 * 10**6
    status = DeviceStatus(device="clock-26", state="online", version="0.1.0", at=now_us,
                          queue=QueueStatus(0, None), clock="synced", readers={},
                          witness=witness)
    reading = parse_status("clock-26", status.to_bytes())
    [r] = fleet.fleet_rows(store, now_us=now_us, statuses={"clock-26": reading})
    assert [w for w in r.warnings if "WITNESS" in w] == ([warning] if warning else [])
    assert r.to_dict()["witness"] == (None if witness is None else witness.state)
    table = fleet.render_table([r], now_us=now_us).splitlines()
    assert table[0].split()[-2:] == ["WITNESS", "DISK"]
    assert table[1].split()[-2] == column


def test_device_list_shows_a_failed_inclusion_check(
        env: tuple[SQLStore, CertificateAuthority, Path]) -> None:
    """protocol.md §13.9: a clock whose check of its own punches failed is INCL-BAD with a
    warning; a refusing clock keeps REFUSING and its warning names the failure too."""
    store, ca, root = env
    _enroll(store, ca, ClockDir(root, "clock-27"))
    now_us = 60 * 10**6
    inc = InclusionStatus(5, 1, 1, "wrong-entry", "seq 3 (leaf 9): not this clock's punch", 0)
    for witness, column, listed in (
            (WitnessStatus("ok", 40, 10, 0, inclusion=inc), "INCL-BAD", "inclusion-failed"),
            (WitnessStatus("refusing", 40, None, 1, "inconsistent", "size 40 -> 50", 0,
                           inclusion=inc), "REFUSING", "refusing")):
        status = DeviceStatus(device="clock-27", state="online", version="0.1.0", at=now_us,
                              queue=QueueStatus(0, None), clock="synced", readers={},
                              witness=witness)
        reading = parse_status("clock-27", status.to_bytes())
        [r] = fleet.fleet_rows(store, now_us=now_us, statuses={"clock-27": reading})
        [w] = [w for w in r.warnings if "INCLUSION CHECK FAILED x1" in w]
        assert "wrong-entry 60s ago (seq 3 (leaf 9): not this clock's punch)" in w
        assert ("WITNESS REFUSES" in w) == (witness.state == "refusing")
        assert r.to_dict()["witness"] == listed
        assert fleet.render_table([r], now_us=now_us).splitlines()[1].split()[-2] == column
