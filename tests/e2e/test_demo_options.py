"""The demo shows the whole product (issue 15, item 7): ``bash scripts/demo.sh`` with ``--api``,
``--postgres``, ``--collectors 2`` and ``--witness`` (lab/extras.py), each run for a short
duration through the script itself (``TIMECLOCK_DEMO_NO_BOOTSTRAP=1``: no install step in the
suite), checked by its exit status and what it printed. The default run stays tests/e2e/
test_site.py's."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
DEMO = REPO / "scripts" / "demo.sh"
HAVE_POSTGRES = any(Path("/usr/lib/postgresql").glob("*/bin/initdb"))

pytestmark = [pytest.mark.subprocess]


def _demo(tmp_path: Path, *args: str) -> str:
    env = {**os.environ, "TIMECLOCK_DEMO_NO_BOOTSTRAP": "1"}
    env.pop("NOTIFY_SOCKET", None)
    r = subprocess.run(["bash", str(DEMO), "--dir", str(tmp_path / "site"),  # noqa: S603,S607
                        "--duration-s", "10", "--clocks", "2", *args],
                       capture_output=True, text=True, env=env, cwd=tmp_path, timeout=480,
                       check=False)
    out = r.stdout + r.stderr
    assert r.returncode == 0, out[-6000:]
    assert "RESULT: OK" in r.stdout, r.stdout[-4000:]
    return r.stdout


def test_demo_help_lists_the_options() -> None:
    r = subprocess.run(["bash", str(DEMO), "--help"], capture_output=True,  # noqa: S603,S607
                       text=True, timeout=120, check=False, cwd=REPO,
                       env={**os.environ, "TIMECLOCK_DEMO_NO_BOOTSTRAP": "1"})
    assert r.returncode == 0, r.stderr
    for option in ("--api", "--postgres", "--collectors N", "--witness", "--duration-s"):
        assert option in r.stdout, r.stdout


@pytest.mark.mqtt
@pytest.mark.timeout(600)
def test_demo_api_shows_one_authenticated_request(tmp_path: Path) -> None:
    out = _demo(tmp_path, "--api")
    assert re.search(r"^  API: GET /v1/punches\?limit=5 as hr-demo \(Bearer token, hr\.read\): "
                     r"HTTP 200, [1-5] punch\(es\)$", out, re.M), out
    assert re.search(r"^    clock-\d seq \d+ ", out, re.M), out
    assert "API: the same request without the token: HTTP 401" in out


@pytest.mark.mqtt
@pytest.mark.postgres
@pytest.mark.timeout(600)
@pytest.mark.skipif(not HAVE_POSTGRES, reason="needs the PostgreSQL server (initdb)")
def test_demo_postgres_keeps_the_ledger_in_postgresql(tmp_path: Path) -> None:
    out = _demo(tmp_path, "--postgres")
    m = re.search(r"ledger: PostgreSQL on 127\.0\.0\.1:\d+ \(initdb/pg_ctl in (\S+); migrated "
                  r"by tc_owner, collectors connect as tc_app\)", out)
    assert m, out
    assert "collector: `timeclock-collector serve` (PostgreSQL)" in out
    assert not (tmp_path / "site" / "ledger.db").exists()
    cluster = Path(m.group(1))
    if os.geteuid() == 0:           # the postgres user's own temp directory, removed at the end
        assert not cluster.exists(), f"{cluster} was left behind"
    else:
        assert cluster == tmp_path / "site" / "postgres"
        assert not (cluster / "data" / "postmaster.pid").exists(), "the cluster still runs"
    shutil.rmtree(cluster, ignore_errors=True)


@pytest.mark.mqtt
@pytest.mark.timeout(600)
def test_demo_two_collectors_share_the_subscription(tmp_path: Path) -> None:
    out = _demo(tmp_path, "--collectors", "2")
    assert "collectors: main, main-2 (`timeclock-collector serve` each) on the shared " in out
    appended = {name: int(n) for name, n in re.findall(
        r"^  collector (main(?:-2)?): (\d+) punch\(es\) appended", out, re.M)}
    assert set(appended) == {"main", "main-2"}, out
    punches = int(re.search(r"^  punches: (\d+)", out, re.M).group(1))  # type: ignore[union-attr]
    assert sum(appended.values()) == punches, out       # each punch appended exactly once


@pytest.mark.mqtt
@pytest.mark.timeout(600)
def test_demo_witness_cosigns_the_collectors_checkpoints(tmp_path: Path) -> None:
    out = _demo(tmp_path, "--witness")
    assert re.search(r"^\[ *[\d.]+s\] witness: timeclock-witness witness\.demo\.example/witness "
                     r"on https://127\.0\.0\.1:\d+", out, re.M), out
    m = re.search(r"^  witness witness\.demo\.example/witness: cosigned (\d+) checkpoint\(s\), "
                  r"the largest of size (\d+)$", out, re.M)
    assert m, out
    assert int(m.group(1)) >= 1
    assert int(m.group(2)) >= 1
