"""The Debian packages, end to end on this machine: scripts/build-debs.sh builds the amd64
``timeclock-agent`` and ``timeclock-collector`` from the working tree, ``dpkg -i`` installs
them, ``systemd-analyze verify`` accepts every installed unit, the installed commands run (as
root and as the ``timeclock`` user, with real key generation), and ``dpkg -r`` removes the
programs and units but keeps /etc/timeclock and the state folders with what is in them.

Needs root and dpkg (it skips otherwise); missing ``Depends`` (mosquitto, python3-evdev) are
installed with apt-get. ``systemd-analyze verify`` needs no running systemd (PID 1 here is not
systemd; verify loads the unit files and checks ExecStart programs and the syntax offline).
The test leaves the machine as it found it: packages purged, its marker files removed, and the
folders and the ``timeclock`` user removed if it created them, so it can run again.
"""

from __future__ import annotations

import os
import pwd
import re
import shutil
import stat
import subprocess
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
PACKAGES = ("timeclock-agent", "timeclock-collector")
UNITS = {"timeclock-agent.service": "timeclock-agent",
         "timeclock-collector.service": "timeclock-collector",
         "timeclock-broker.service": "timeclock-collector",
         "timeclock-crl-refresh.service": "timeclock-collector",
         "timeclock-crl-refresh.timer": "timeclock-collector",
         "timeclock-retention.service": "timeclock-collector",
         "timeclock-retention.timer": "timeclock-collector",
         "timeclock-backup.service": "timeclock-collector",
         "timeclock-backup.timer": "timeclock-collector"}
COMMANDS = {"/usr/bin/timeclock-agent": "timeclock-agent",
            "/usr/bin/timeclock-collector": "timeclock-collector",
            "/usr/bin/timeclock-verify": "timeclock-collector"}
UNIT_DIR = Path("/lib/systemd/system")
ETC = Path("/etc/timeclock")
STATE_DIRS = (Path("/var/lib/timeclock"), Path("/var/lib/timeclock-agent"))

pytestmark = [
    pytest.mark.subprocess,   # build script, dpkg, apt-get, systemd-analyze, the commands
    pytest.mark.slow,
    pytest.mark.timeout(1800),   # a first build downloads every wheel from PyPI
    pytest.mark.skipif(os.geteuid() != 0, reason="installs Debian packages: needs root"),
    pytest.mark.skipif(shutil.which("dpkg-deb") is None or shutil.which("systemd-analyze") is None,
                       reason="needs dpkg and systemd-analyze (Debian)"),
]


def run(*argv: str | Path, timeout: float = 300, check: bool = True,
        user: str | None = None, env: dict[str, str] | None = None,
        ) -> subprocess.CompletedProcess[str]:
    cmd = [str(a) for a in argv]
    if user is not None:
        cmd = ["runuser", "-u", user, "--", *cmd]
    r = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, check=False,
                       env=env, cwd="/")
    if check:
        assert r.returncode == 0, (f"{cmd}: exit {r.returncode}\n"
                                   f"{r.stdout[-3000:]}{r.stderr[-3000:]}")
    return r


def installed(package: str) -> bool:
    r = run("dpkg-query", "-W", "-f=${Status}", package, check=False)
    return r.returncode == 0 and r.stdout.endswith(" installed")


def known(package: str) -> bool:   # installed, or removed with its config files kept
    return run("dpkg-query", "-W", "-f=${Status}", package, check=False).stdout not in (
        "", "unknown ok not-installed")


def user_exists(name: str) -> bool:
    try:
        pwd.getpwnam(name)
    except KeyError:
        return False
    return True


def install_missing_depends(debs: list[Path]) -> None:
    names: set[str] = set()
    for deb in debs:
        depends = run("dpkg-deb", "-f", deb, "Depends").stdout
        for alternatives in depends.split(","):
            names.add(re.split(r"[\s(]", alternatives.strip(), maxsplit=1)[0])
    missing = sorted(n for n in names if not installed(n))
    if missing:
        env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
        run("apt-get", "update", "-qq", timeout=900, env=env)
        run("apt-get", "install", "-y", "-qq", "--no-install-recommends", *missing,
            timeout=900, env=env)


@pytest.fixture
def clean_machine() -> Iterator[list[Path]]:
    """Yields a list the test appends its marker files to; afterwards purges the packages and
    removes the markers, and the folders and user the packages made if they were not here."""
    for package in PACKAGES:
        if known(package):   # left by an interrupted earlier run
            run("dpkg", "--purge", package, timeout=300)
    had_user = user_exists("timeclock")
    had_dirs = {d for d in (ETC, *STATE_DIRS) if d.exists()}
    markers: list[Path] = []
    yield markers
    for package in PACKAGES:
        if known(package):
            run("dpkg", "--purge", package, timeout=300, check=False)
    for marker in markers:
        marker.unlink(missing_ok=True)
    for d in (ETC, *STATE_DIRS):
        if d not in had_dirs and d.is_dir() and not any(d.iterdir()):
            d.rmdir()
    if not had_user and user_exists("timeclock"):
        run("userdel", "timeclock", check=False)


def test_build_install_verify_run_remove(tmp_path: Path, clean_machine: list[Path]) -> None:
    # (1) build: amd64 only (this machine), xz -1 to keep the test quick.
    out = tmp_path / "debs"
    env = {**os.environ, "DEB_COMPRESSION_LEVEL": "1"}
    run(ROOT / "scripts" / "build-debs.sh", "--arch", "amd64", "--worktree", "--out", out,
        timeout=1500, env=env)
    debs = sorted(out.glob("*.deb"))
    assert [d.name.split("_")[0] for d in debs] == list(PACKAGES), debs
    assert all(d.name.endswith("_amd64.deb") for d in debs), debs
    for deb in debs:
        listing = run("dpkg-deb", "-c", deb).stdout
        assert ".whl" not in listing   # the wheels are installed, not shipped
        assert "/__pycache__/" in listing   # and byte-compiled
        assert re.search(r"\./usr/share/doc/timeclock-\w+/operations\.md", listing)

    # (2) install with dpkg, after the Debian packages they depend on.
    install_missing_depends(debs)
    run("dpkg", "-i", *debs, timeout=300)
    assert all(installed(p) for p in PACKAGES)
    run("dpkg", "-i", *debs, timeout=300)   # again, as an upgrade: the scripts are idempotent
    account = pwd.getpwnam("timeclock")
    assert account.pw_shell in ("/usr/sbin/nologin", "/sbin/nologin")
    for d in STATE_DIRS:
        st = d.stat()
        assert (stat.S_IMODE(st.st_mode), st.st_uid) == (0o700, account.pw_uid), d
    assert ETC.is_dir()

    # (3) every installed unit verifies, and what it names exists.
    units = sorted(p.name for p in UNIT_DIR.glob("timeclock-*"))
    assert units == sorted(UNITS)
    for name in units:
        unit = UNIT_DIR / name
        r = run("systemd-analyze", "verify", unit, check=False, timeout=120)
        assert (r.returncode, r.stdout + r.stderr) == (0, ""), f"{name}: {r.stdout}{r.stderr}"
        text = unit.read_text(encoding="utf-8")
        for program in re.findall(r"^Exec\w+=[-@:+!]*(/\S+)", text, flags=re.MULTILINE):
            assert os.access(program, os.X_OK), f"{name}: {program}"
        for doc in re.findall(r"^Documentation=file://(\S+)", text, flags=re.MULTILINE):
            assert Path(doc).is_file(), f"{name}: {doc}"

    # (4) the installed commands run, as root and as the service user.
    for command, _package in COMMANDS.items():
        prog = Path(command).name
        for user in (None, "timeclock"):
            r = run(command, "--help", user=user, timeout=120)
            assert r.stdout.startswith(f"usage: {prog} "), r.stdout[:300]
            assert r.stderr == ""
    keys = tmp_path / "keys"
    run("/usr/bin/timeclock-agent", "init", "--device", "clock-0001", "--dir", keys)
    assert stat.S_IMODE((keys / "signing.key").stat().st_mode) == 0o600
    run("/usr/bin/timeclock-collector", "ca", "init", tmp_path / "ca")
    assert (tmp_path / "ca" / "ca.crt").is_file()
    # The agent's libraries load with Debian's python3: vendored paho/pyserial, Debian's evdev.
    run("/usr/bin/python3", "-IB", "-c",
        "import sys; sys.path.insert(0, '/opt/timeclock/agent/lib'); "
        "import paho.mqtt.client, serial, evdev, nacl.bindings, cryptography.x509")

    # (5) what an operator and the services leave in /etc/timeclock and the state folders.
    tag = uuid.uuid4().hex[:8]
    markers = [ETC / f"test-{tag}.toml", *(d / f"test-{tag}.db" for d in STATE_DIRS)]
    clean_machine.extend(markers)
    for marker in markers:
        marker.write_text("kept\n", encoding="utf-8")

    # (6) dpkg -r: programs, units and vendored libraries gone; config and data kept.
    run("dpkg", "-r", *PACKAGES, timeout=300)
    assert not any(installed(p) for p in PACKAGES)
    for command in COMMANDS:
        assert not Path(command).exists(), command
    assert not any(UNIT_DIR.glob("timeclock-*.service"))
    assert not Path("/opt/timeclock").exists()   # nothing was written beside the package's files
    for marker in markers:
        assert marker.read_text(encoding="utf-8") == "kept\n", marker

    # (7) purge keeps them too: keys, configs and ledgers are evidence, never deleted for you.
    run("dpkg", "--purge", *PACKAGES, timeout=300)
    assert not any(known(p) for p in PACKAGES)
    for marker in markers:
        assert marker.is_file(), marker
