"""The README's first command: `python -m lab` completes, leaves an audit bundle
that `timeclock-verify` accepts, and stops every process it started."""

from __future__ import annotations

import signal
import subprocess
import sys
from pathlib import Path

import pytest

from lab.site import REPO, _env
from tests.e2e.site_kit import cli, wait_for

pytestmark = [pytest.mark.mqtt, pytest.mark.subprocess]   # a whole site: real processes


def _children_of(pid: int) -> list[int]:
    out = []
    for d in Path("/proc").iterdir():
        if d.name.isdigit():
            try:
                stat = (d / "stat").read_text()
            except OSError:
                continue
            if int(stat.rsplit(")", 1)[1].split()[1]) == pid:
                out.append(int(d.name))
    return out


def test_site_demo_short_run_verifies(tmp_path: Path) -> None:
    root = tmp_path / "site"
    r = cli("lab", "--dir", str(root), "--duration-s", "15",
            "--outage-s", "4", timeout_s=170)
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    assert "broker outage" in r.stdout
    assert "RESULT: OK" in r.stdout
    assert (root / "audit-bundle" / "ledger.ndjson").is_file()
    key = next(line.split("--collector-key ")[1] for line in r.stdout.splitlines()
               if "--collector-key " in line)
    v = cli("wire.verify_cli", str(root / "audit-bundle"), "--collector-key", key.strip())
    assert v.returncode == 0, v.stdout + v.stderr


def test_site_ctrl_c_leaves_no_process(tmp_path: Path) -> None:
    p = subprocess.Popen([sys.executable, "-m", "lab", "--dir",
                          str(tmp_path / "site"), "--duration-s", "60"], env=_env(), cwd=REPO,
                         stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    lines: list[str] = []
    assert p.stdout is not None
    for line in p.stdout:
        lines.append(line)
        if "clock-3: enrolled" in line:
            break
    kids = _children_of(p.pid)
    assert len(kids) >= 5, lines  # broker, collector, three clocks
    p.send_signal(signal.SIGINT)
    rest, _ = p.communicate(timeout=60)
    assert p.returncode == 130, "".join(lines) + rest
    wait_for(lambda: not any(Path(f"/proc/{k}").exists() and
                             "Z" not in Path(f"/proc/{k}/stat").read_text().split()[2]
                             for k in kids), 30, "every child to exit")
