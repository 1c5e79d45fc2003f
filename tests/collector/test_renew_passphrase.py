"""``device renew --passphrase-file`` against a CA whose key is passphrase-encrypted (issue 15:
"`device renew` as documented lacks --passphrase-file").

The real commands, as docs/operations.md runs them: a collector host made by
``timeclock-collector init --passphrase-file`` (so its CA key is encrypted), a clock made by
``timeclock-agent init`` and enrolled with ``device enroll --passphrase-file``, a renewal CSR for
the clock's own TLS key made with ``openssl req``, then ``device renew``. With the right
passphrase the renewal bundle carries a new certificate of the CA for the same key, and
``timeclock-agent provision`` installs it; without the option, with a wrong passphrase, a
missing file or one others can read, the command exits 2 with one line on stderr that says what
to do, and writes nothing: no bundle, no certificate issued in the CA's index, no ledger entry.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import sqlite3
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import serialization

from tests.collector.init_kit import env, service_user
from tests.fixtures.mosquitto import free_port

DEADLINE_S = 120.0
PASSPHRASE = b"a long CA passphrase\n"
DEVICE = "clock-17"

pytestmark = pytest.mark.subprocess


def run(module: str, *args: str | Path, cwd: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", module, *map(str, args)],
                          capture_output=True, text=True, env=env(), cwd=cwd,
                          timeout=DEADLINE_S, check=False)


def ok(r: subprocess.CompletedProcess[str]) -> str:
    assert r.returncode == 0, f"{r.args[2:5]}: exit {r.returncode}\n{r.stdout}\n{r.stderr}"
    return r.stdout


def digest(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def entries(ledger: Path) -> int:
    db = sqlite3.connect(f"file:{ledger}?mode=ro", uri=True)
    try:
        return int(db.execute("SELECT count(*) FROM entries").fetchone()[0])
    finally:
        db.close()


@dataclass(frozen=True)
class Site:
    root: Path
    etc: Path
    clock: Path
    csr: Path          # the clock's renewal CSR (its own TLS key, CN = device id)
    passphrase: Path   # 0600, the passphrase `init` encrypted the CA key with

    @property
    def ca(self) -> Path:
        return self.etc / "ca"

    def renew(self, *extra: str | Path, out: Path) -> subprocess.CompletedProcess[str]:
        return run("collector.cli.main", "device", "renew", "--config",
                   self.etc / "collector.toml", "--ca", self.ca, *extra, "--csr", self.csr,
                   "--out", out, cwd=self.root)

    @property
    def ledger(self) -> Path:
        return self.root / "state" / "ledger.db"

    def evidence(self) -> tuple[str, int]:
        """What a failed renewal must leave as it was: the CA's index and the ledger."""
        return digest(self.ca / "index.json"), entries(self.ledger)


@pytest.fixture(scope="module")
def site(tmp_path_factory: pytest.TempPathFactory) -> Site:
    root = tmp_path_factory.mktemp("renew")
    etc, clock = root / "etc", root / "clock"
    pw = root / "ca.pass"
    pw.write_bytes(PASSPHRASE)
    os.chmod(pw, 0o600)
    port = free_port()
    ok(run("collector.cli.main", "init", "--etc", etc, "--state", root / "state", "--user",
           service_user(), "--name", "main", "--no-api", "--mqtt-port", str(port),
           "--passphrase-file", pw, cwd=root))
    assert (etc / "ca" / "ca.key").read_bytes().startswith(
        b"-----BEGIN ENCRYPTED PRIVATE KEY-----")
    printed = ok(run("agent.cli", "init", "--device", DEVICE, "--dir", clock, cwd=root))
    m = re.search(r"signing public key:\s+(\S+)", printed)
    assert m is not None, printed
    ok(run("collector.cli.main", "device", "enroll", "--config", etc / "collector.toml",
           "--ca", etc / "ca", "--passphrase-file", pw, "--csr", clock / f"{DEVICE}.csr",
           "--signing-key", m.group(1), "--site", "hq", "--broker", f"127.0.0.1:{port}",
           "--out", root / "enrol.bundle", cwd=root))
    ok(run("agent.provision", "provision", root / "enrol.bundle", "--dir", clock,
           "--state-dir", clock / "state", cwd=root))
    csr = root / f"{DEVICE}-renew.csr"
    r = subprocess.run(["openssl", "req", "-new", "-key", str(clock / "tls.key"), "-subj",
                        f"/CN={DEVICE}", "-out", str(csr)], capture_output=True, text=True,
                       timeout=DEADLINE_S, check=False)
    assert r.returncode == 0, r.stderr
    return Site(root, etc, clock, csr, pw)


def _write(path: Path, data: bytes, mode: int) -> Path:
    path.write_bytes(data)
    os.chmod(path, mode)
    return path


# (case, --passphrase-file argument or None, what the one line must say)
REFUSALS = [
    ("no option", None, r"the CA key is passphrase-encrypted; give --passphrase-file$"),
    ("wrong passphrase", "wrong.pass",
     r"cannot decrypt or parse the CA key \(wrong passphrase\?\): give --passphrase-file the "
     r"file with the passphrase the CA key was made with$"),
    ("missing file", "missing.pass",
     r"passphrase file \S+missing\.pass does not exist: give --passphrase-file the file "
     r"\(0600\) that holds the CA key's passphrase$"),
    ("readable by others", "open.pass", r"mode 0644 .*; run: chmod 600 \S+open\.pass$"),
]


@pytest.mark.parametrize(("case", "name", "message"), REFUSALS, ids=[c[0] for c in REFUSALS])
def test_d17_renew_without_the_right_passphrase_is_one_line_and_writes_nothing(
        site: Site, tmp_path: Path, case: str, name: str | None, message: str) -> None:
    _write(tmp_path / "wrong.pass", b"not the CA passphrase\n", 0o600)
    _write(tmp_path / "open.pass", PASSPHRASE, 0o644)
    before = site.evidence()
    out = tmp_path / "renew.bundle"
    extra = () if name is None else ("--passphrase-file", tmp_path / name)
    r = site.renew(*extra, out=out)
    assert (r.returncode, r.stdout) == (2, ""), f"{case}: {r.stdout}{r.stderr}"
    lines = r.stderr.splitlines()
    assert len(lines) == 1, r.stderr
    assert lines[0].startswith("timeclock-collector: error: "), lines[0]
    assert re.search(message, lines[0]), lines[0]
    assert not out.exists()
    assert site.evidence() == before   # no certificate issued, no ledger entry


def test_d17_renew_with_the_passphrase_file_issues_and_installs_a_new_certificate(
        site: Site, tmp_path: Path) -> None:
    index = json.loads((site.ca / "index.json").read_text(encoding="utf-8"))
    old = {c["serial"] for c in index["certs"] if c["cn"] == DEVICE}
    assert len(old) == 1, index
    ledger_before = entries(site.ledger)
    out = tmp_path / "renew.bundle"
    r = site.renew("--passphrase-file", site.passphrase, out=out)
    printed = ok(r)
    assert r.stderr == ""
    assert printed.startswith(f"renewed {DEVICE}: certificate "), printed
    bundle = json.loads(out.read_text(encoding="utf-8"))
    assert (bundle["purpose"], bundle["device"]) == ("renew", DEVICE)
    cert = x509.load_pem_x509_certificate(bundle["device_cert"].encode())
    assert bundle["cert_serial"] == f"{cert.serial_number:x}"
    ca = x509.load_pem_x509_certificate((site.ca / "ca.crt").read_bytes())
    cert.verify_directly_issued_by(ca)
    assert cert.subject.rfc4514_string() == f"CN={DEVICE}"
    tls_key = serialization.load_pem_private_key((site.clock / "tls.key").read_bytes(), None)
    assert cert.public_key() == tls_key.public_key()   # the clock's own key, renewed
    index = json.loads((site.ca / "index.json").read_text(encoding="utf-8"))
    serials = {c["serial"] for c in index["certs"] if c["cn"] == DEVICE}
    assert serials - old == {f"{cert.serial_number:x}"}, (serials, old)
    assert entries(site.ledger) == ledger_before   # a renewal is the CA's, not the ledger's
    # on the clock, as the command says: the renewal bundle installs the new certificate
    ok(run("agent.provision", "provision", out, "--dir", site.clock, "--state-dir",
           site.clock / "state", cwd=site.root))
    installed = x509.load_pem_x509_certificate((site.clock / "tls.crt").read_bytes())
    assert installed.serial_number == cert.serial_number
