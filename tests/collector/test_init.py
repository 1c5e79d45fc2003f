"""``timeclock-collector init`` (issue 15, item 2): one idempotent command prepares a collector
host that ``serve`` runs (real commands, real Mosquitto as the managed broker); ``init --check``
changes nothing and names what is missing or wrong; the broker folder it makes is ready for
revocation (the issue's first finding, replayed: ``device revoke`` step 3 cuts a connected
clock off instead of failing with "no running broker … pid file")."""

from __future__ import annotations

import datetime as dt
import os
import pwd
import re
import ssl
import stat
import threading
from pathlib import Path

import paho.mqtt.client as mqtt
import pytest
from paho.mqtt.enums import CallbackAPIVersion

from collector.cli.main import main
from collector.fleet.pki import CertificateAuthority
from collector.ingest.checkpoints import load_log_key
from collector.ledger import open_store
from collector.ledger.kek import load_kek
from collector.service.config import load_config
from tests.collector.init_kit import ORIGIN, cli, new_host, service_user, snapshot
from tests.fixtures.mosquitto import mqtt_probe
from tests.polling import wait_for
from wire.tls import client_context

root_only = pytest.mark.skipif(os.geteuid() != 0, reason="file owners: needs root")


def _init_argv(root: Path, *extra: str) -> list[str]:
    return ["init", "--etc", str(root / "etc"), "--state", str(root / "state"),
            "--origin", ORIGIN, "--dns", "localhost", "--mqtt-port", "18883",
            "--api-port", "18443", *extra]


@pytest.mark.subprocess
def test_init_prepares_a_host_that_serve_runs_and_a_second_run_changes_nothing(
        tmp_path: Path) -> None:
    host = new_host(tmp_path)
    try:
        r = host.init()
        assert r.returncode == 0, r.stdout + r.stderr
        # The log public key and the origin every verifier needs, printed.
        key = load_log_key(host.etc / "log.key")
        assert f"out of band): {key.verify_key.b64}\n" in r.stdout
        assert f"key id {key.key_id}, origin {ORIGIN}" in r.stdout
        assert r.stdout.rstrip().endswith("change(s) made")
        cfg = load_config(host.config)
        assert (cfg.collector.identity, cfg.collector.origin) == ("collector.main", ORIGIN)
        assert cfg.broker.managed
        assert cfg.api is not None
        assert cfg.api.port == host.api_port
        assert "# " in host.config.read_text()               # commented
        conf = (host.state / "broker" / "mosquitto.conf").read_text()
        assert f"pid_file {host.state / 'broker' / 'mosquitto.pid'}" in conf

        before = snapshot(host.etc, host.state)
        again = host.init()
        assert again.returncode == 0, again.stdout + again.stderr
        assert again.stdout.rstrip().endswith("nothing changed: everything was already in place")
        assert not re.search(r"^\s+(created|fixed)\s", again.stdout, re.M), again.stdout
        check = host.init("--check")
        assert (check.returncode, check.stdout.rstrip().splitlines()[-1]) == (
            0, "everything is in place"), check.stdout
        assert snapshot(host.etc, host.state) == before

        r = cli("serve", "--check-config", str(host.config))
        assert r.returncode == 0, r.stderr
        serve = host.serve()
        host.wait_ready(serve)
        assert "broker running" in host.log()
        assert f"HTTPS API listening on 127.0.0.1:{host.api_port}" in host.log()
    finally:
        host.close()


class Clock:
    """A device's live MQTT session (paho), to watch it being cut."""

    def __init__(self, port: int, ctx: ssl.SSLContext) -> None:
        self.connected = threading.Event()
        self.dropped = threading.Event()
        self.client = mqtt.Client(CallbackAPIVersion.VERSION2, client_id="clock-0001",
                                  protocol=mqtt.MQTTv5)
        self.client.tls_set_context(ctx)
        self.client.on_connect = lambda *_a: self.connected.set()
        self.client.on_disconnect = lambda *_a: self.dropped.set()
        self.client.connect("127.0.0.1", port)
        self.client.loop_start()

    def close(self) -> None:
        self.client.disconnect()
        self.client.loop_stop()


@pytest.mark.subprocess
def test_d3_device_revoke_on_an_init_host_cuts_off_a_connected_clock(tmp_path: Path) -> None:
    host = new_host(tmp_path)
    clock: Clock | None = None
    try:
        assert host.init("--no-api").returncode == 0
        serve = host.serve()
        host.wait_ready(serve)
        ca = CertificateAuthority.open(host.etc / "ca")
        key, crt = tmp_path / "clock.key", tmp_path / "clock.crt"
        ca.issue_client("clock-0001", key, crt, kind="device", now=dt.datetime.now(dt.UTC))
        r = cli("device", "register", "--config", str(host.config), "--device", "clock-0001",
                "--site", "hq", "--signing-key", "A6EHv/POEL4dcN0Y50vAmWfk1jCbpQ1fHdyGZBJVMbg=")
        assert r.returncode == 0, r.stderr
        ctx = client_context(host.etc / "ca.crt", crt, key)
        clock = Clock(host.mqtt_port, ctx)
        assert clock.connected.wait(60), "the clock did not connect"
        r = cli("device", "revoke", "--config", str(host.config), "--ca", str(host.etc / "ca"),
                "--device", "clock-0001", "--reason", "stolen", "--cert-reason",
                "key-compromise")
        assert r.returncode == 0, r.stdout + r.stderr
        assert "no running broker" not in r.stdout + r.stderr
        assert re.search(r"broker: CRL reloaded and session cut \((disable-client|restart)\)",
                         r.stdout), r.stdout
        assert clock.dropped.wait(60), "the clock's session was not cut"
        wait_for(lambda: not mqtt_probe("127.0.0.1", host.mqtt_port, ctx,
                                        client_id="clock-0001").accepted,
                 60, "the broker refusing the revoked certificate")
    finally:
        if clock is not None:
            clock.close()
        host.close()


def test_init_check_changes_nothing_and_names_what_is_missing(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main([*_init_argv(tmp_path, "--check"), "--user", service_user()]) == 1
    out = capsys.readouterr().out
    for what in ("CA", "log key", "ledger", "config"):
        assert re.search(rf"^\s+missing\s+{what}\s", out, re.M), out
    assert out.rstrip().endswith("fix what is wrong by hand")
    assert list(tmp_path.iterdir()) == []


def test_init_check_and_init_name_what_is_wrong_and_overwrite_nothing(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    argv = [*_init_argv(tmp_path), "--user", service_user()]
    assert main(argv) == 0
    etc = tmp_path / "etc"
    os.chmod(etc / "log.key", 0o644)
    (etc / "collector.crt").write_bytes(b"not a certificate")
    capsys.readouterr()
    before = snapshot(tmp_path)
    assert main([*argv, "--check"]) == 1
    out = capsys.readouterr().out
    assert re.search(r"^\s+wrong\s+log key\s.*chmod 600", out, re.M), out
    assert re.search(r"^\s+wrong\s+MQTT client certificate collector.main\s.*not a readable",
                     out, re.M), out
    assert re.search(r"^\s+wrong\s+config\s.*collector.log_key: .*chmod 600", out, re.M), out
    assert "3 problem(s)" in out
    assert main(argv) == 1               # init itself never overwrites: it says what to fix
    assert "init does not overwrite" in capsys.readouterr().out
    assert snapshot(tmp_path) == before


def test_init_adopts_an_existing_ca(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["ca", "init", str(tmp_path / "site-ca")]) == 0
    assert main([*_init_argv(tmp_path, "--ca", str(tmp_path / "site-ca"), "--no-api"),
                 "--user", service_user()]) == 0
    out = capsys.readouterr().out
    assert re.search(r"^\s+ok\s+CA\s+\S+site-ca\s+\(adopted", out, re.M), out
    assert not (tmp_path / "etc" / "ca").exists()
    assert (tmp_path / "etc" / "ca.crt").read_bytes() == (
        tmp_path / "site-ca" / "ca.crt").read_bytes()
    assert "[api]" not in (tmp_path / "etc" / "collector.toml").read_text()


def test_d17_init_makes_a_file_kek_names_it_in_the_config_and_keeps_it(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """Encryption at rest by default (issue 12): init makes ETC/ledger.kek (0600) and writes
    ``[ledger] kek = "file:…"``; a second run keeps the same key; --check checks it."""
    argv = [*_init_argv(tmp_path), "--user", service_user()]
    assert main(argv) == 0
    out = capsys.readouterr().out
    kek_file = tmp_path / "etc" / "ledger.kek"
    assert re.search(rf"^\s+created\s+ledger KEK \(encryption at rest\)\s+{kek_file}\s", out,
                     re.M), out
    assert stat.S_IMODE(kek_file.stat().st_mode) == 0o600
    cfg = load_config(tmp_path / "etc" / "collector.toml")
    assert cfg.ledger.kek == f"file:{kek_file}"
    first = kek_file.read_bytes()
    kek_id = load_kek(cfg.ledger.kek).kek_id
    # serve's open of the ledger with it: personal bodies are sealed from the first append
    store = open_store(cfg.collector.store, kek=cfg.ledger.kek)
    try:
        assert store.sealer is not None
        assert store.sealer.ring.kek.kek_id == kek_id
    finally:
        store.close()
    assert main(argv) == 0
    assert re.search(r"^\s+ok\s+ledger KEK", capsys.readouterr().out, re.M)
    assert kek_file.read_bytes() == first                    # kept, never replaced
    assert main([*argv, "--check"]) == 0
    capsys.readouterr()
    os.chmod(kek_file, 0o644)
    assert main([*argv, "--check"]) == 1
    assert re.search(r"^\s+wrong\s+ledger KEK .*chmod 600", capsys.readouterr().out, re.M)
    os.chmod(kek_file, 0o600)
    kek_file.unlink()
    assert main([*argv, "--check"]) == 1
    assert re.search(r"^\s+missing\s+ledger KEK", capsys.readouterr().out, re.M)
    assert not kek_file.exists()                             # --check changes nothing


@pytest.mark.parametrize(("spec", "line"), [
    ("credential:timeclock-kek", 'kek = "credential:timeclock-kek"'),
    ("none", '# kek = "file:/etc/timeclock/ledger.kek"'),
])
def test_d17_init_kek_option_chooses_another_source_or_none(
        tmp_path: Path, capsys: pytest.CaptureFixture[str], spec: str, line: str) -> None:
    argv = [*_init_argv(tmp_path, "--kek", spec), "--user", service_user()]
    assert main(argv) == 0
    assert not (tmp_path / "etc" / "ledger.kek").exists()    # no file KEK made
    text = (tmp_path / "etc" / "collector.toml").read_text()
    assert line in text
    cfg = load_config(tmp_path / "etc" / "collector.toml")
    assert cfg.ledger.kek == (None if spec == "none" else spec)
    assert main([*argv, "--check"]) == 0
    capsys.readouterr()
    # The config is never rewritten: asking for another KEK names the difference.
    assert main([*_init_argv(tmp_path, "--check"), "--user", service_user()]) == 1
    assert re.search(r"^\s+wrong\s+config\s.*\[ledger\] kek is .*init was asked for file:",
                     capsys.readouterr().out, re.M)


def test_d17_init_refuses_a_kek_spec_it_cannot_read(tmp_path: Path,
                                                capsys: pytest.CaptureFixture[str]) -> None:
    assert main([*_init_argv(tmp_path, "--kek", "vault:x"), "--user", service_user()]) == 2
    assert "--kek 'vault:x': expected file:/path, credential:NAME" in capsys.readouterr().err
    assert main([*_init_argv(tmp_path, "--kek", "credential:a/b"), "--user",
                 service_user()]) == 1
    assert re.search(r"^\s+wrong\s+ledger KEK .*a credential name is", capsys.readouterr().out,
                     re.M)


@root_only
def test_init_as_root_needs_the_service_user(tmp_path: Path,
                                             capsys: pytest.CaptureFixture[str]) -> None:
    assert main(_init_argv(tmp_path)) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1
    assert "running as root: give --user ACCOUNT" in err
    assert list(tmp_path.iterdir()) == []


@root_only
def test_init_gives_every_file_to_the_service_user(tmp_path: Path,
                                                   capsys: pytest.CaptureFixture[str]) -> None:
    nobody = pwd.getpwnam("nobody").pw_uid
    assert main([*_init_argv(tmp_path), "--user", "nobody"]) == 0
    files = [p for d in ("etc/ca", "state") for p in (tmp_path / d).rglob("*")]
    files += [p for p in (tmp_path / "etc").iterdir() if p.is_file()]
    assert files
    assert {p for p in files if p.lstat().st_uid != nobody} == set()
    assert "user nobody" in (tmp_path / "state" / "broker" / "mosquitto.conf").read_text()
    capsys.readouterr()
    assert main([*_init_argv(tmp_path, "--check"), "--user", "root"]) == 1
    assert re.search(r"^\s+wrong\s+owner root\s.*not owned by root", capsys.readouterr().out,
                     re.M)
    assert main([*_init_argv(tmp_path), "--user", "root"]) == 0
    assert re.search(r"^\s+fixed\s+owner root\s", capsys.readouterr().out, re.M)
    assert main([*_init_argv(tmp_path, "--check"), "--user", "root"]) == 0
