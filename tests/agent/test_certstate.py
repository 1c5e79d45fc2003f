"""The clock names its certificate problem (agent.certstate; issue 15 item 5): real certificates
from the session CA (tests/fixtures/pki.py), a real Mosquitto with the real CRL for what the
broker says, the publisher's reported state, ``status`` and ``check-config`` lines, and the
per-outcome feedback commands."""

from __future__ import annotations

import contextlib
import datetime as dt
import json
import os
import socket
import ssl
import subprocess
import sys
import threading
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from cryptography import x509

from agent.certstate import (
    STATES,
    CertProblem,
    check_certificate,
    classify_tls_error,
    probe_broker,
)
from agent.cli import main
from agent.config import parse_config
from agent.feedback import OutcomeFeedback
from agent.publisher import Publisher
from agent.queue import Outbox
from agent.status import certificate_line
from collector.fleet.pki import CertificateAuthority
from tests.agent.receipt_kit import settings
from tests.fixtures.mosquitto import MosquittoBroker
from tests.fixtures.pki import ClientCert, TestPKI
from tests.polling import wait_for
from wire.device_status import CERT_STATES, DeviceStatus
from wire.errors import DecodeError
from wire.keys import SigningKey
from wire.tls import client_context

STATE_S = 60.0    # a reconnect, a diagnosis and a probe handshake on a busy machine
START_S = 120.0   # a Python process start, then a connect: a busy machine is slow at both
REPO = Path(__file__).resolve().parents[2]


def _dates(cert: ClientCert) -> tuple[dt.datetime, dt.datetime]:
    c = x509.load_pem_x509_certificate(cert.cert_file.read_bytes())
    return c.not_valid_before_utc, c.not_valid_after_utc


def _states(found: list[CertProblem]) -> list[str]:
    return [p.state for p in found]


# --- the certificate as the clock sees it -----------------------------------------------------

def test_a_valid_certificate_has_no_problem(pki: TestPKI) -> None:
    c = pki.device("cert-ok")
    assert check_certificate(c.cert_file, c.key_file, c.ca_file, now=dt.datetime.now(dt.UTC)) \
        == []


def test_a_clock_two_hours_behind_says_not_yet_valid_and_why(pki: TestPKI) -> None:
    c = pki.device("cert-ok")
    nb, _ = _dates(c)
    (p,) = check_certificate(c.cert_file, c.key_file, c.ca_file,
                             now=nb - dt.timedelta(hours=2))
    assert p.state == "not-yet-valid"
    assert p.outcome == "not-yet-valid"
    assert "2.0 h later" in p.message
    assert "no RTC, or NTP not synced yet" in p.message
    assert nb.strftime("%Y-%m-%d %H:%M:%S UTC") in p.message


def test_expired_expiring_foreign_ca_and_wrong_key_are_named(pki: TestPKI) -> None:
    now = dt.datetime.now(dt.UTC)
    e = pki.expired_device("cert-expired")
    (p,) = check_certificate(e.cert_file, e.key_file, e.ca_file, now=now)
    assert (p.state, p.outcome) == ("expired", "expired")
    assert "renew" in p.message

    ok = pki.device("cert-ok")
    _, na = _dates(ok)
    (p,) = check_certificate(ok.cert_file, ok.key_file, ok.ca_file,
                             now=na - dt.timedelta(days=5), warn_days=30)
    assert (p.state, p.blocking) == ("expiring", False)
    assert check_certificate(ok.cert_file, ok.key_file, ok.ca_file,
                             now=na - dt.timedelta(days=5), warn_days=3) == []

    f = pki.foreign_device("cert-foreign")
    (p,) = check_certificate(f.cert_file, f.key_file, f.ca_file, now=now)
    assert p.state == "unknown-ca"
    assert "some other CA" in p.message

    other = pki.device("cert-other")
    (p,) = check_certificate(ok.cert_file, other.key_file, ok.ca_file, now=now)
    assert p.state == "key-mismatch"
    assert str(other.key_file) in p.message


def test_status_line_says_what_to_do() -> None:
    line = certificate_line({"state": "revoked", "since_us": 0,
                             "detail": "certificate REVOKED by the site CA (the broker "
                                       "refused it): ask ops to re-provision this clock"},
                            now_us=120_000_000)
    assert line.startswith("certificate:   REVOKED by the site CA since 2min ago")
    assert "ask ops to re-provision" in line
    assert certificate_line({"state": "ok"}, now_us=0) == "certificate:   ok"


# --- what the broker says (real Mosquitto, real CRL) ------------------------------------------

def test_d3_broker_alerts_are_classified(pki: TestPKI, broker: MosquittoBroker) -> None:
    now = dt.datetime.now(dt.UTC)
    ok = pki.device("cert-ok")
    assert probe_broker(broker.host, broker.port, ok.context(), timeout_s=STATE_S) is None
    cases = [(pki.expired_device("cert-expired"), "expired"),
             (pki.foreign_device("cert-foreign"), "unknown-ca")]
    revoked = pki.fresh_device("cert-rv")
    pki.revoke(revoked)
    broker.reload_crl()
    cases.append((revoked, "revoked"))
    for cert, state in cases:
        # an alert slower than the probe's read is a None: probe again
        err = wait_for(lambda c=cert: probe_broker(broker.host, broker.port, c.context(),
                                                   timeout_s=STATE_S),
                       STATE_S, f"a refused handshake for {cert.name}")
        found = classify_tls_error(err, now=now)
        assert found is not None, repr(err)
        assert found.state == state, (cert.name, repr(err))
    # a clock that does not trust the broker (wrong CA file): our own verification fails
    untrusting = client_context(pki.foreign_ca_file, ok.cert_file, ok.key_file)
    found = classify_tls_error(probe_broker(broker.host, broker.port, untrusting,
                                            timeout_s=STATE_S), now=now)
    assert found is not None
    assert found.state == "broker-untrusted"


@pytest.fixture
def run_publisher(broker: MosquittoBroker, tmp_path: Path
                  ) -> Iterator[Callable[..., Publisher]]:
    started: list[tuple[Publisher, Outbox]] = []

    def make(cert: ClientCert, **kw: Any) -> Publisher:
        ob = Outbox(tmp_path / f"{cert.name}.db", os.urandom(32), cert.name)
        seen = kw.pop("seen", None)
        warn = kw.pop("warn_days", 30)
        pub = Publisher(ob, cert.name, log_key=SigningKey.generate().verify_key,
                        settings=settings(broker, cert.name, cert_file=cert.cert_file,
                                          key_file=cert.key_file, diagnose_every_s=0.5,
                                          cert_warn_days=warn),
                        on_cert_state=None if seen is None else seen.append, **kw)
        pub.start()
        started.append((pub, ob))
        return pub

    yield make
    for pub, ob in started:
        pub.stop()
        ob.close()


def test_d3_a_revoked_clock_reports_revoked_not_cannot_reach_broker(
        pki: TestPKI, broker: MosquittoBroker,
        run_publisher: Callable[..., Publisher]) -> None:
    cert = pki.fresh_device("clk-rv")
    pki.revoke(cert)
    broker.reload_crl()
    seen: list[CertProblem] = []
    pub = run_publisher(cert, seen=seen)
    wait_for(lambda: pub.cert_state().state == "revoked", STATE_S, "state revoked")
    st = pub.state()
    assert st["status"] == "connecting"
    assert st["certificate"]["state"] == "revoked"
    assert "re-provision" in st["certificate"]["detail"]
    assert st["certificate"]["since_us"] is not None
    wait_for(lambda: pub.stats().connect_failures >= 3, STATE_S, "more failed connections")
    assert [p.state for p in seen] == ["revoked"]     # signalled once, not at every retry
    assert not pub.stats().connected
    # The broker goes away too: connections now fail without any alert, and the known cause
    # stands (no flapping to ok and back, no second signal).
    broker.stop()
    before = pub.cert_diagnoses
    wait_for(lambda: pub.cert_diagnoses >= before + 2, STATE_S,
             "two diagnoses with the broker down")
    assert pub.cert_state().state == "revoked"
    assert [p.state for p in seen] == ["revoked"]


def test_expired_and_behind_clocks_report_their_state(
        pki: TestPKI, run_publisher: Callable[..., Publisher]) -> None:
    expired = run_publisher(pki.expired_device("clk-expired"))
    assert expired.cert_state().state == "expired"
    ok = pki.device("clk-behind")
    nb, _ = _dates(ok)
    behind = run_publisher(ok, now=(nb - dt.timedelta(hours=2)).timestamp)
    assert behind.cert_state().state == "not-yet-valid"
    good = run_publisher(pki.device("clk-good"))
    wait_for(lambda: good.stats().connected, STATE_S, "the valid clock connects")
    assert good.cert_state().state == "ok"
    assert expired.state()["certificate"]["state"] == "expired"


# --- feedback per outcome --------------------------------------------------------------------

@pytest.mark.subprocess
def test_feedback_outcomes_run_their_command_once_per_signal(tmp_path: Path) -> None:
    out = tmp_path / "signals"
    script = tmp_path / "beep"
    script.write_text(f'#!/bin/sh\necho "$TIMECLOCK_OUTCOME $1" >> {out}\n')
    script.chmod(0o755)
    cfg = parse_config({
        "device": {"id": "clock-fb"}, "keys": {"signing_key": "/k", "queue_key": "/q"},
        "readers": {"a": {"kind": "simulated"}},
        "feedback": {"outcomes": {"revoked": [str(script), "3"]}}},
        base_dir=tmp_path, check_readers=False)
    fb = OutcomeFeedback(cfg.feedback.outcomes, timeout_s=cfg.feedback.command_timeout_s)
    assert fb.signal("revoked") is True
    assert fb.commands["revoked"].wait_idle(STATE_S)
    assert fb.signal("expired") is False       # no command configured: nothing runs
    assert out.read_text() == "revoked 3\n"
    assert fb.signalled == ["revoked", "expired"]


def test_feedback_outcomes_config_errors_name_the_key(tmp_path: Path) -> None:
    from agent.errors import ConfigError  # noqa: PLC0415 -- only here

    with pytest.raises(ConfigError, match=r"feedback\.outcomes\.beeped: unknown key") as ei:
        parse_config({"device": {"id": "clock-fb"},
                      "keys": {"signing_key": "/k", "queue_key": "/q"},
                      "readers": {"a": {"kind": "simulated"}},
                      "feedback": {"outcomes": {"beeped": ["/bin/true"],
                                                "expired": ["beep"]}}},
                     base_dir=tmp_path, check_readers=False)
    assert "feedback.outcomes.expired: the program must be an absolute path" in str(ei.value)


# --- check-config ----------------------------------------------------------------------------

def _config(tmp_path: Path, cert: ClientCert, key_file: Path | None = None) -> Path:
    keys = tmp_path / "keys"
    assert main(["init", "--device", "clock-cc", "--dir", str(keys)]) == 0
    cfg = tmp_path / "agent.toml"
    cfg.write_text(f"""
[device]
id = "clock-cc"
state_dir = "state"
[keys]
signing_key = "{keys / 'signing.key'}"
queue_key = "{keys / 'queue.key'}"
tls_key = "{key_file or cert.key_file}"
tls_cert = "{cert.cert_file}"
ca_cert = "{cert.ca_file}"
log_public_key = "{SigningKey.generate().verify_key.b64}"
[mqtt]
host = "localhost"
[readers.front]
kind = "simulated"
credentials = ["0012345678"]
format = "em4100"
action = "in"
""")
    return cfg


@pytest.mark.parametrize(("kind", "expect"), [
    ("expired", "certificate EXPIRED on"),
    ("foreign", "certificate not issued by the configured CA"),
    ("wrong-key", "does not match certificate"),
])
def test_check_config_reports_certificate_problems_one_line_each(
        tmp_path: Path, pki: TestPKI, capsys: pytest.CaptureFixture[str],
        kind: str, expect: str) -> None:
    cert = {"expired": pki.expired_device("cc-expired"),
            "foreign": pki.foreign_device("cc-foreign"),
            "wrong-key": pki.device("cc-ok")}[kind]
    key = pki.device("cc-other").key_file if kind == "wrong-key" else None
    cfg = _config(tmp_path, cert, key)
    capsys.readouterr()
    assert main(["check-config", str(cfg)]) != 0
    err = capsys.readouterr().err
    lines = [ln for ln in err.splitlines() if "keys.tls_cert:" in ln]
    assert len(lines) == 1, err
    assert expect in lines[0]


def test_check_config_passes_a_valid_certificate(
        tmp_path: Path, pki: TestPKI, capsys: pytest.CaptureFixture[str]) -> None:
    cfg = _config(tmp_path, pki.device("cc-ok"))
    capsys.readouterr()
    assert main(["check-config", str(cfg)]) == 0
    assert f"{cfg}: OK" in capsys.readouterr().out


@pytest.mark.subprocess
def test_check_config_as_a_command_names_the_expired_certificate(
        tmp_path: Path, pki: TestPKI) -> None:
    cfg = _config(tmp_path, pki.expired_device("cc-expired"))
    r = subprocess.run([sys.executable, "-m", "agent.cli", "check-config", str(cfg)],
                       capture_output=True, text=True, timeout=120, check=False)
    assert r.returncode != 0
    assert "keys.tls_cert: certificate EXPIRED on" in r.stderr
    assert "Traceback" not in r.stderr


# --- the retained MQTT status (wire.device_status, optional field) ---------------------------

def test_status_message_carries_a_certificate_state_that_is_not_ok(
        pki: TestPKI, run_publisher: Callable[..., Publisher]) -> None:
    assert set(STATES) == set(CERT_STATES)
    pub = run_publisher(pki.device("clk-expiring"))
    assert pub.device_status("online").certificate is None      # ok: the field is left out
    assert "certificate" not in pub.device_status("online").to_dict()
    soon = run_publisher(pki.device("clk-expiring2"), warn_days=1000)
    status = soon.device_status("online")
    assert status.certificate == "expiring"
    assert DeviceStatus.from_bytes(status.to_bytes()) == status
    old = DeviceStatus("clock-0017", "offline", "0.1.0", reason="stopped").to_dict()
    assert DeviceStatus.from_dict(old).certificate is None      # statuses before it still parse
    with pytest.raises(DecodeError, match="certificate"):
        DeviceStatus.from_dict({**old, "certificate": "stolen"})


# --- the agent as a process: a revoked clock says so ------------------------------------------

@pytest.mark.subprocess
def test_d3_a_revoked_clock_agent_says_revoked_in_status_and_signals_feedback(
        tmp_path: Path, pki: TestPKI, broker: MosquittoBroker,
        capsys: pytest.CaptureFixture[str]) -> None:
    cert = pki.fresh_device("agent-rv")
    pki.revoke(cert)
    broker.reload_crl()
    signals = tmp_path / "signals"
    beep = tmp_path / "beep"
    beep.write_text(f'#!/bin/sh\necho "$TIMECLOCK_OUTCOME ${{TIMECLOCK_SEQ:-state}}" >> '
                    f'{signals}\n')
    beep.chmod(0o755)
    keys = tmp_path / "keys"
    assert main(["init", "--device", cert.name, "--dir", str(keys)]) == 0
    cfg = tmp_path / "agent.toml"
    cfg.write_text(f"""
[device]
id = "{cert.name}"
state_dir = "state"
[keys]
signing_key = "{keys / 'signing.key'}"
queue_key = "{keys / 'queue.key'}"
tls_key = "{cert.key_file}"
tls_cert = "{cert.cert_file}"
ca_cert = "{cert.ca_file}"
log_public_key = "{SigningKey.generate().verify_key.b64}"
[mqtt]
host = "{broker.host}"
port = {broker.port}
reconnect_min_s = 0.2
reconnect_max_s = 1.0
[status]
interval_s = 0.5
[feedback.outcomes]
revoked = ["{beep}"]
[readers.front]
kind = "simulated"
credentials = ["0012345678"]
format = "em4100"
interval_s = 0.2
debounce_s = 0
action = "in"
""")
    status_file = tmp_path / "state" / "status.json"

    def cert_state() -> str | None:
        try:
            snap = json.loads(status_file.read_text())
        except (OSError, ValueError):
            return None
        c = (snap.get("publisher") or {}).get("certificate") or {}
        return c.get("state") if snap.get("queue", {}).get("depth", 0) >= 2 else None

    proc = subprocess.Popen([sys.executable, "-m", "agent.cli", "run", "--config", str(cfg)],
                            cwd=REPO, env={**os.environ, "PYTHONUNBUFFERED": "1"},
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    try:
        wait_for(lambda: cert_state() == "revoked", START_S,
                 "the status file to name the revoked certificate while taps queue")
        wait_for(signals.exists, STATE_S, "the revoked feedback command")
        capsys.readouterr()
        assert main(["status", "--config", str(cfg)]) == 4
        out = capsys.readouterr().out
        assert "certificate:   REVOKED by the site CA since" in out
        assert "ask ops to re-provision this clock" in out
        proc.terminate()
        _, err = proc.communicate(timeout=START_S)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    # once when the state began, not at every retry; then for each tap while it lasts
    # (instead of queued-offline), at most one run at a time
    lines = signals.read_text().splitlines()
    assert lines.count("revoked state") == 1, lines
    taps = [x for x in lines if x != "revoked state"]
    assert all(x.split()[0] == "revoked" and x.split()[1].isdigit() for x in taps), lines
    assert len(set(taps)) == len(taps), lines
    assert err.count("certificate REVOKED by the site CA") == 1, err


@pytest.mark.parametrize(("shift_days", "state", "says"), [
    (1, "not-yet-valid", "the clock is probably behind"),      # the broker's cert is "future"
    (-30, "broker-untrusted", "has EXPIRED at the clock's time"),
])
def test_the_broker_certificate_as_the_clock_sees_it_is_classified(
        tmp_path: Path, shift_days: int, state: str, says: str) -> None:
    """A real handshake with a loopback TLS server whose certificate is not valid *now*."""
    now = dt.datetime.now(dt.UTC)
    ca = CertificateAuthority.init(tmp_path / "ca", now=now - dt.timedelta(days=60))
    server = ca.issue_server(dns=["localhost"], ips=["127.0.0.1"],
                             now=now + dt.timedelta(days=shift_days), days=1)
    ca.issue_client("clock-bt", tmp_path / "c.key", tmp_path / "c.crt",
                             kind="device", now=now)
    sctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    sctx.load_cert_chain(server.cert_file, server.key_file)
    with socket.create_server(("127.0.0.1", 0)) as listener:
        port = listener.getsockname()[1]

        def serve_one() -> None:
            conn, _ = listener.accept()
            with conn, contextlib.suppress(OSError):
                sctx.wrap_socket(conn, server_side=True).close()

        t = threading.Thread(target=serve_one, daemon=True)
        t.start()
        err = probe_broker("127.0.0.1", port,
                           client_context(ca.cert_file, tmp_path / "c.crt", tmp_path / "c.key"),
                           timeout_s=STATE_S)
        t.join(STATE_S)
    assert isinstance(err, ssl.SSLCertVerificationError), repr(err)
    found = classify_tls_error(err, now=now)
    assert found is not None
    assert found.state == state
    assert says in found.message


def test_check_config_warns_inside_the_warning_window(
        tmp_path: Path, pki: TestPKI, capsys: pytest.CaptureFixture[str]) -> None:
    cfg = _config(tmp_path, pki.device("cc-ok"))
    cfg.write_text(cfg.read_text().replace('host = "localhost"\n',
                                           'host = "localhost"\ncert_warn_days = 1000\n'))
    capsys.readouterr()
    assert main(["check-config", str(cfg)]) == 0
    out = capsys.readouterr().out
    assert "warning: keys.tls_cert: certificate expires on" in out
    assert "renew it soon" in out


# --- a certificate issued for a later time (the CA's own date option) ------------------------

def _future_device(pki: TestPKI, tmp_path: Path, name: str, *, hours: float) -> ClientCert:
    """A device certificate of the session CA whose validity begins ``hours`` from now: what
    a clock booting that many hours behind sees of a certificate issued just now."""
    key_file, cert_file = tmp_path / f"{name}.key", tmp_path / f"{name}.crt"
    issued = pki.ca.issue_client(name, key_file, cert_file, kind="device",
                                 now=dt.datetime.now(dt.UTC) + dt.timedelta(hours=hours))
    return ClientCert(name, "device", key_file, cert_file, pki.ca_file, issued.entry.serial)


def test_d3_a_not_yet_valid_certificate_is_named_by_check_config_status_and_the_publisher(
        tmp_path: Path, pki: TestPKI, capsys: pytest.CaptureFixture[str],
        run_publisher: Callable[..., Publisher]) -> None:
    cert = _future_device(pki, tmp_path, "clk-future", hours=2)
    cfg = _config(tmp_path, cert)
    capsys.readouterr()
    assert main(["check-config", str(cfg)]) != 0
    lines = [x for x in capsys.readouterr().err.splitlines() if "keys.tls_cert:" in x]
    assert len(lines) == 1, lines
    assert "certificate NOT YET VALID" in lines[0]
    assert "h later): the clock is probably behind (no RTC, or NTP not synced yet)" in lines[0]
    # against the real broker: the clock names it instead of "cannot reach broker"
    pub = run_publisher(cert)
    wait_for(lambda: pub.stats().connect_failures >= 2, STATE_S, "two failed connections")
    assert pub.cert_state().state == "not-yet-valid"
    st = pub.state()
    assert st["status"] == "connecting"
    assert not pub.stats().connected
    line = certificate_line(st["certificate"], now_us=int(dt.datetime.now(dt.UTC).timestamp()
                                                          * 1_000_000))
    assert line.startswith("certificate:   NOT YET VALID (clock behind?) since"), line
    assert "the clock cannot connect and keeps queueing" in line
