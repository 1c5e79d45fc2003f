"""The clock's metrics (agent.metrics): ``[metrics]`` config, loopback only, and a real
scrape of the listener that ``promtool check metrics`` accepts, with the figures of the
status snapshot it was read from."""

from __future__ import annotations

import datetime as dt
import subprocess
import urllib.request
from pathlib import Path
from typing import Any

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from agent.config import parse_config
from agent.errors import AgentError, ConfigError
from agent.metrics import AgentCollector, AgentMetrics
from tests.fixtures.prometheus import PROMTOOL

BASE: dict[str, Any] = {
    "device": {"id": "clock-0017", "state_dir": "state"},
    "keys": {"signing_key": "keys/signing.key", "queue_key": "keys/queue.key"},
    "readers": {"front": {"kind": "simulated", "credentials": ["1"], "action": "in"}},
}
NOW = 1_767_225_600_000_000


def test_d13_metrics_are_off_by_default_and_loopback_only(tmp_path: Path) -> None:
    assert parse_config(BASE, base_dir=tmp_path).metrics.port == 0
    cfg = parse_config({**BASE, "metrics": {"port": 9465}}, base_dir=tmp_path)
    assert (cfg.metrics.port, cfg.metrics.listen) == (9465, "127.0.0.1")
    with pytest.raises(ConfigError) as e:
        parse_config({**BASE, "metrics": {"port": 70000, "listen": "0.0.0.0",  # noqa: S104 - refused
                                          "textfile": "x"}}, base_dir=tmp_path)
    text = str(e.value)
    assert "metrics.port" in text
    assert "metrics.listen" in text
    assert "metrics.textfile: unknown key" in text
    with pytest.raises(AgentError, match="not a loopback address"):
        AgentMetrics(0, AgentCollector(dict, {}, lambda: NOW), host="192.0.2.1")


def _cert(path: Path, not_after: dt.datetime) -> Path:
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "clock-0017")])
    cert = (x509.CertificateBuilder().subject_name(name).issuer_name(name)
            .public_key(key.public_key()).serial_number(1)
            .not_valid_before(not_after - dt.timedelta(days=365)).not_valid_after(not_after)
            .sign(key, hashes.SHA256()))
    path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    return path


@pytest.mark.subprocess
def test_d13_a_scrape_of_the_agent_passes_promtool(tmp_path: Path) -> None:
    expiry = dt.datetime(2027, 6, 1, tzinfo=dt.UTC)
    snapshot = {
        "state": "running", "clock": "synced",
        "queue": {"depth": 3, "oldest_created_us": NOW - 90_000_000, "last_seq": 41},
        "publisher": {"status": "connected", "last_receipt_us": NOW - 1_000_000,
                      "receipted": 38, "resent_punches": 2, "bad_receipts": 0},
        "recorded_since_start": 41,
        "storage": {"state": "ok", "refused_taps": 0},
        "readers": {"front": {"kind": "rdm6300", "status": "open"},
                    "back": {"kind": "serial-line", "status": "reopening"}},
        "credential": "em4100:0000000042",   # never exposed: no metric reads it
    }
    server = AgentMetrics(0, AgentCollector(lambda: snapshot, {
        "client": _cert(tmp_path / "client.crt", expiry), "ca": tmp_path / "missing.crt"},
        lambda: NOW))
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{server.port}/metrics",  # noqa: S310 - loopback
                                    timeout=10) as r:
            text = r.read().decode()
    finally:
        server.stop()
    r2 = subprocess.run([PROMTOOL, "check", "metrics"], input=text, capture_output=True,  # noqa: S603 - the packaged promtool
                        text=True, timeout=60, check=False)
    assert r2.returncode == 0, r2.stdout + r2.stderr
    samples = {line.rsplit(" ", 1)[0]: float(line.rsplit(" ", 1)[1])
               for line in text.splitlines() if line.startswith("timeclock_agent_")}
    assert samples["timeclock_agent_queue_depth"] == 3
    assert samples["timeclock_agent_oldest_unacked_age_seconds"] == 90
    assert samples["timeclock_agent_clock_synced"] == 1
    assert samples["timeclock_agent_broker_connected"] == 1
    assert samples["timeclock_agent_punches_recorded_total"] == 41
    assert samples["timeclock_agent_punches_resent_total"] == 2
    assert samples['timeclock_agent_reader_open{reader="front"}'] == 1
    assert samples['timeclock_agent_reader_open{reader="back"}'] == 0
    assert samples['timeclock_agent_certificate_expiry_timestamp_seconds{certificate="client"}'
                   ] == expiry.timestamp()
    assert not any('certificate="ca"' in k for k in samples), "an unreadable file: no sample"
    assert "0000000042" not in text
