"""Guard rails (issue 15, item 4), each finding of the issue replayed with real commands and a
real Mosquitto: one collector identity at a time (same host: the state directory's lock;
another host: the broker's "session taken over"), a ``--store`` that names no ledger, an API
or broker port in use, a crash-looping broker, a broker folder the broker's account does not
own. Each either works or ends in one line that says what to do, never a traceback."""

from __future__ import annotations

import os
import pwd
import shutil
import socket
import stat
import sys
import tempfile
import textwrap
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from collector.cli.main import main
from collector.service.runner import TAKEOVER_HOLD_S
from tests.collector.init_kit import READY, Host, cli, new_host
from tests.polling import wait_for

root_only = pytest.mark.skipif(os.geteuid() != 0, reason="file owners: needs root")


def one_line_error(text: str) -> str:
    """The stderr of a refused command: exactly one line, no traceback."""
    lines = [ln for ln in text.splitlines() if ln.strip()]
    assert "Traceback" not in text, text
    assert len(lines) == 1, text
    return lines[0]


@pytest.fixture
def host(tmp_path: Path) -> Iterator[Host]:
    h = new_host(tmp_path)
    r = h.init()
    assert r.returncode == 0, r.stdout + r.stderr
    try:
        yield h
    finally:
        h.close()


def last_error(log: str) -> str:
    """The last line of a serve that refused to run: its one-line error, after no traceback."""
    assert "Traceback" not in log, log
    line = log.rstrip().splitlines()[-1]
    assert line.startswith("timeclock-collector: error: "), log
    return line


def _serve_error(host: Host, config: Path, name: str) -> str:
    p = host.serve(config, name=name)
    wait_for(lambda: p.poll() is not None, 120, f"{name} to exit")
    assert p.returncode == 2, host.log(name)
    return host.log(name)


@pytest.mark.subprocess
def test_a_second_serve_with_the_same_identity_on_this_host_refuses_to_start(
        host: Host) -> None:
    first = host.serve()
    host.wait_ready(first)
    second = host.serve(name="second")
    wait_for(lambda: second.poll() is not None, 120, "the second serve to exit")
    assert second.returncode == 2
    line = one_line_error(host.log("second"))
    assert "collector.main is already running on this host" in line
    assert f"pid {first.pid}" in line
    assert first.poll() is None                    # the live collector is untouched
    assert host.log().count("MQTT connected") == 1  # and never lost its session


@pytest.mark.subprocess
def test_a_second_collector_with_the_same_identity_elsewhere_stops_instead_of_fighting(
        host: Host, tmp_path: Path) -> None:
    # "Another host": the same identity and broker, another state directory (no shared lock).
    other = tmp_path / "other.toml"
    text = host.config.read_text().replace(f'state_dir = "{host.state}"',
                                           f'state_dir = "{tmp_path / "other-state"}"')
    other.write_text(text.split("\n[broker]")[0] + "\n")     # the broker is the first's
    first = host.serve()
    host.wait_ready(first)
    t_ready = time.monotonic()
    # The established collector holds its session for TAKEOVER_HOLD_S before the newcomer.
    wait_for(lambda: time.monotonic() - t_ready > TAKEOVER_HOLD_S + 0.5, TAKEOVER_HOLD_S + 5,
             "the first collector to hold its session")
    second = host.serve(other, name="second")
    procs = {"serve": first, "second": second}
    wait_for(lambda: any(p.poll() is not None for p in procs.values()), 120,
             "one of the two collectors to stop itself")
    stopped = [n for n, p in procs.items() if p.poll() is not None]
    assert len(stopped) == 1, {n: host.log(n)[-2000:] for n in procs}
    log = host.log(stopped[0])
    assert procs[stopped[0]].returncode == 2, log
    assert "Traceback" not in log
    assert ("another collector is connected to the broker as collector.main (MQTT session "
            "taken over") in log.splitlines()[-1]
    survivor = next(n for n in procs if n not in stopped)
    # The other one keeps (or takes back) the session and goes on ingesting.
    wait_for(lambda: host.log(survivor).count(READY) >= 1 and procs[survivor].poll() is None,
             60, "the surviving collector subscribed")
    assert procs[survivor].poll() is None


def test_a_store_that_names_no_ledger_is_refused_by_token_and_device_commands(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    typo = tmp_path / "ledgr.db"
    for argv in (["token", "create", "--store", str(typo), "--principal", "alice",
                  "--role", "hr.read"],
                 ["token", "list", "--store", f"sqlite://{typo}"],
                 ["access-review", "--store", str(typo)],
                 ["device", "list", "--store", str(typo), "--no-status"],
                 ["verify", "--store", str(typo), "--log-key-pub",
                  "A6EHv/POEL4dcN0Y50vAmWfk1jCbpQ1fHdyGZBJVMbg="]):
        assert main(argv) == 2, argv
        line = one_line_error(capsys.readouterr().err)
        assert f"{typo}: no such ledger file (a typo in --store?)" in line, argv
        assert "`timeclock-collector init` or `migrate --store URL` creates one" in line
        assert not typo.exists(), argv
    assert main(["migrate", "--store", str(typo)]) == 0     # the commands that create one do
    assert main(["token", "list", "--store", str(typo)]) == 0


@pytest.mark.subprocess
def test_an_api_port_in_use_is_one_line_and_stops_the_broker_it_started(host: Host) -> None:
    with socket.socket() as busy:
        busy.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        busy.bind(("127.0.0.1", host.api_port))
        busy.listen()
        log = _serve_error(host, host.config, "serve")
    line = last_error(log)
    assert f"[api] port {host.api_port} on 127.0.0.1 is already in use by another program" \
        in line
    assert "change [api] port" in line
    # The managed broker was stopped: its port is free again.
    with socket.socket() as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        s.bind(("127.0.0.1", host.mqtt_port))


@pytest.mark.subprocess
def test_a_broker_port_in_use_is_one_line(host: Host) -> None:
    with socket.socket() as busy:
        busy.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        busy.bind(("127.0.0.1", host.mqtt_port))
        busy.listen()
        log = _serve_error(host, host.config, "serve")
    line = last_error(log)
    assert f"127.0.0.1:{host.mqtt_port} is already in use by another program" in line
    assert "broker running" not in log


@pytest.mark.subprocess
def test_a_crash_looping_broker_stops_serve_with_one_line(host: Host, tmp_path: Path) -> None:
    # A broker that comes up (it listens, so "broker running" is logged) and then dies, again
    # and again: serve must not go on as if the clocks could connect.
    fake = tmp_path / "mosquitto-that-dies"
    fake.write_text(textwrap.dedent(f"""\
        #!{sys.executable}
        import socket, sys, time
        s = socket.socket()
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        s.bind(("127.0.0.1", {host.mqtt_port}))
        s.listen()
        time.sleep(0.3)
        sys.exit(3)
        """))
    fake.chmod(0o755)
    config = tmp_path / "crashing.toml"
    config.write_text(host.config.read_text().replace(
        "managed = true\n", f'managed = true\nmosquitto = "{fake}"\n'))
    log = _serve_error(host, config, "crash")
    last = last_error(log)
    assert "broker running" in log          # it did come up each time
    assert last.startswith("timeclock-collector: error: the managed broker keeps exiting "), log
    assert "mosquitto.log" in last
    assert "init --check" in last


@root_only
@pytest.mark.subprocess
def test_broker_config_as_root_without_user_gives_a_broker_that_runs(host: Host) -> None:
    # The issue: as root, broker-config without --user left Mosquitto (which switches to the
    # `mosquitto` account) unable to read its folder, crash-looping while serve said "broker
    # running". Now the folder is given to that account and serve's broker comes up.
    base = Path(tempfile.mkdtemp(prefix="tc-broker-"))   # /tmp: searchable by mosquitto
    try:
        os.chmod(base, 0o755)  # noqa: S103 - the mosquitto account must reach the folder
        out = base / "broker"
        r = cli("broker-config", "--ca", str(host.etc / "ca"), "--out", str(out), "--port",
                str(host.mqtt_port), "--collector", "main")
        assert r.returncode == 0, r.stderr
        assert "owned by mosquitto" in r.stdout
        uid = pwd.getpwnam("mosquitto").pw_uid
        assert {p.stat().st_uid for p in (out, *out.rglob("*"))} == {uid}
        config = host.root / "rootless.toml"
        config.write_text(host.config.read_text().replace(str(host.state / "broker"), str(out)))
        assert cli("serve", "--check-config", str(config)).returncode == 0
        p = host.serve(config, name="rootless")
        host.wait_ready(p, name="rootless")
        assert "broker running" in host.log("rootless")
        assert (out / "mosquitto.pid").is_file()
    finally:
        host.close()
        shutil.rmtree(base, ignore_errors=True)


@root_only
@pytest.mark.subprocess
def test_wrong_owners_and_an_unreachable_folder_are_one_line_errors(host: Host,
                                                                   tmp_path: Path) -> None:
    broker = host.state / "broker"
    nobody = pwd.getpwnam("nobody")
    os.chown(broker / "server.key", nobody.pw_uid, nobody.pw_gid)
    r = cli("serve", "--check-config", str(host.config))
    line = one_line_error(r.stderr)
    assert r.returncode == 2
    assert f"{broker / 'server.key'} is owned by nobody" in line
    assert "timeclock-collector init --user root" in line
    assert last_error(_serve_error(host, host.config, "serve")) == line
    os.chown(broker / "server.key", 0, 0)
    # A folder whose parents the broker's account cannot search (the tmp_path case).
    conf = broker / "mosquitto.conf"
    conf.write_text(conf.read_text().replace("user root\n", "user nobody\n"))
    assert stat.S_IMODE(tmp_path.stat().st_mode) & 0o001 == 0
    r = cli("serve", "--check-config", str(host.config))
    line = one_line_error(r.stderr)
    assert "is not searchable by nobody" in line
    assert "chmod o+x" in line
