"""``ca status`` (issue 15, item 3): the expiry of the CA, server, collector and device
certificates and the CRLs' next update, Nagios-style exit status (0 ok, 1 warning, 2
critical); ``ca crl --broker-dir`` (what the shipped timer runs) against a real Mosquitto; the
shipped timer and service pass ``systemd-analyze verify``."""

from __future__ import annotations

import datetime as dt
import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
from cryptography import x509

from collector.cli.main import main
from collector.fleet.broker_process import ManagedBroker, prepare_managed_broker
from collector.fleet.cert_status import site_status, worst
from collector.fleet.pki import CertificateAuthority
from tests.fixtures.mosquitto import free_port
from tests.polling import wait_for

ROOT = Path(__file__).resolve().parents[2]
NOW = dt.datetime.now(dt.UTC).replace(microsecond=0)
DAY = dt.timedelta(days=1)


def _ca(tmp_path: Path) -> CertificateAuthority:
    ca = CertificateAuthority.init(tmp_path / "ca", now=NOW)        # its CRL: 30 days
    ca.issue_server(dns=["localhost"], ips=["127.0.0.1"], now=NOW, days=397)
    return ca


def _client(ca: CertificateAuthority, tmp_path: Path, cn: str, *, kind: str = "device",
            issued: dt.datetime = NOW, days: int = 397) -> None:
    tag = f"{cn}-{issued:%Y%m%d%H%M%S}-{days}"
    ca.issue_client(cn, tmp_path / f"{tag}.key", tmp_path / f"{tag}.crt", kind=kind,
                    now=issued, days=days)


def _status(ca: CertificateAuthority, capsys: pytest.CaptureFixture[str],
            *extra: str) -> tuple[int, dict[str, object]]:
    capsys.readouterr()
    rc = main(["ca", "status", "--ca", str(ca.directory), "--json", *extra])
    return rc, json.loads(capsys.readouterr().out)


def _levels(doc: dict[str, object]) -> dict[tuple[str, str], str]:
    items = doc["items"]
    assert isinstance(items, list)
    return {(i["kind"], i["name"]): i["level"] for i in items}


def test_d17_a_fresh_site_is_ok_and_exits_0(tmp_path: Path,
                                        capsys: pytest.CaptureFixture[str]) -> None:
    ca = _ca(tmp_path)
    _client(ca, tmp_path, "collector.main", kind="collector")
    _client(ca, tmp_path, "clock-0001")
    rc, doc = _status(ca, capsys)
    assert (rc, doc["level"]) == (0, "ok")
    assert {k for k, _ in _levels(doc)} == {"ca", "server", "collector", "device", "crl"}
    assert main(["ca", "status", "--ca", str(ca.directory)]) == 0
    out = capsys.readouterr().out
    assert re.search(r"^OK\s+device\s+\S+\s+clock-0001\s+expires in 39\d day", out, re.M), out
    assert out.rstrip().endswith("need attention (warning window 30 days, CRLs 7)")


def test_inside_the_warning_window_exits_1_and_warn_days_moves_it(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    ca = _ca(tmp_path)
    _client(ca, tmp_path, "clock-0001", days=10)
    rc, doc = _status(ca, capsys)
    assert (rc, _levels(doc)[("device", "clock-0001")]) == (1, "warning")
    rc, doc = _status(ca, capsys, "--warn-days", "5")
    assert (rc, _levels(doc)[("device", "clock-0001")]) == (0, "ok")


def test_d17_an_expired_certificate_exits_2_unless_renewed_or_revoked(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    ca = _ca(tmp_path)
    _client(ca, tmp_path, "clock-0001", issued=NOW - 12 * DAY, days=10)   # expired 2 days ago
    _client(ca, tmp_path, "clock-0002", issued=NOW - 12 * DAY, days=10)
    rc, doc = _status(ca, capsys)
    assert rc == 2
    assert _levels(doc)[("device", "clock-0001")] == "critical"
    # clock-0001 renewed: its old certificate no longer counts; clock-0002 revoked: neither.
    _client(ca, tmp_path, "clock-0001")
    ca.revoke(cn="clock-0002", reason="cessation-of-operation", now=NOW)
    rc, doc = _status(ca, capsys)
    assert (rc, doc["level"]) == (0, "ok")
    assert ("device", "clock-0002") not in _levels(doc)


def test_the_crl_next_update_counts_and_the_broker_copy_too(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    ca = _ca(tmp_path)
    broker = tmp_path / "broker"
    prepare_managed_broker(ca, broker, port=free_port(), collectors=["main"])
    ca.write_crl(now=NOW, days=3)                # the CA's copy: < 7 days (--crl-warn-days)
    rc, doc = _status(ca, capsys, "--broker-dir", str(broker))
    levels = _levels(doc)
    assert levels[("crl", str(ca.crl_file))] == "warning"
    assert levels[("crl", f"{broker}/crl.pem")] == "ok"   # the copy from init: 30 days
    assert rc == 1
    assert _status(ca, capsys, "--crl-warn-days", "2")[0] == 0
    ca.write_crl(now=NOW - 5 * DAY, days=2, out=broker / "crl.pem")   # the broker's: stale
    rc, doc = _status(ca, capsys, "--broker-dir", str(broker))
    assert (rc, _levels(doc)[("crl", f"{broker}/crl.pem")]) == (2, "critical")


def test_an_unreadable_file_is_critical_not_a_traceback(tmp_path: Path) -> None:
    ca = _ca(tmp_path)
    ca.crl_file.write_bytes(b"not a crl")
    rows = site_status(ca, now=NOW)
    assert worst(rows) == "critical"
    assert [r.detail for r in rows if r.kind == "crl"] == [f"{ca.crl_file}: not a PEM CRL"]


@pytest.mark.subprocess
def test_d3_ca_crl_broker_dir_installs_the_crl_and_the_running_broker_reloads_it(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    ca = _ca(tmp_path)
    _client(ca, tmp_path, "clock-0001")
    ca.revoke(cn="clock-0001", reason="key-compromise", now=NOW)
    broker_dir = tmp_path / "broker"
    port = free_port()
    options: dict[str, Any] = {"user": "root"} if os.geteuid() == 0 else {}
    prepare_managed_broker(ca, broker_dir, port=port, collectors=["main"], **options)
    argv = ["ca", "crl", "--ca", str(ca.directory), "--broker-dir", str(broker_dir)]
    assert main(argv) == 0                                 # the broker is not running yet
    assert "the broker is not running" in capsys.readouterr().out
    broker = ManagedBroker(broker_dir, host="127.0.0.1", port=port)
    broker.start()
    try:
        before = (broker_dir / "mosquitto.log").read_text().count("Reloading config.")
        assert main(argv) == 0
        assert "the broker reloaded it (SIGHUP)" in capsys.readouterr().out
        wait_for(lambda: (broker_dir / "mosquitto.log").read_text().count(
            "Reloading config.") > before, 30, "the reload in mosquitto.log")
        crl = x509.load_pem_x509_crl((broker_dir / "crl.pem").read_bytes())
        assert (broker_dir / "crl.pem").read_bytes() == ca.crl_file.read_bytes()
        assert len(list(crl)) == 1
    finally:
        broker.stop()
    assert main(["ca", "crl", "--ca", str(ca.directory), "--broker-dir",
                 str(tmp_path / "nowhere")]) == 2
    assert "no mosquitto.conf" in capsys.readouterr().err


@pytest.mark.subprocess
@pytest.mark.skipif(shutil.which("systemd-analyze") is None, reason="needs systemd-analyze")
def test_the_crl_refresh_timer_and_service_verify(tmp_path: Path) -> None:
    # Installed, ExecStart is /usr/bin/timeclock-collector (tests/packaging/test_debs.py
    # verifies the installed units); here it points at this checkout's command.
    command = Path(sys.executable).parent / "timeclock-collector"
    assert command.is_file(), command
    for name in ("timeclock-crl-refresh.service", "timeclock-crl-refresh.timer"):
        text = (ROOT / "systemd" / name).read_text(encoding="utf-8")
        (tmp_path / name).write_text(text.replace("/usr/bin/timeclock-collector", str(command)),
                                     encoding="utf-8")
    service = (tmp_path / "timeclock-crl-refresh.service").read_text(encoding="utf-8")
    assert "ca crl --ca /etc/timeclock/ca --broker-dir /var/lib/timeclock/broker" in service
    assert "ca status --ca /etc/timeclock/ca" in service
    r = subprocess.run(["systemd-analyze", "verify", str(tmp_path / "timeclock-crl-refresh.timer"),
                        str(tmp_path / "timeclock-crl-refresh.service")],
                       capture_output=True, text=True, timeout=120, check=False)
    assert (r.returncode, r.stdout + r.stderr) == (0, "")
