"""``timeclock-collector retention`` in a subprocess (control D15): policy and hold commands
with dual control, ``plan`` and ``run`` as an operator (and the systemd timer) runs them, and a
run killed (SIGKILL) between its steps leaves either nothing or a complete evidence entry.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from collector.cli.retention import STALL_ENV
from collector.ledger.audit import verify_store
from collector.ledger.sqlbase import PunchQuery
from collector.ledger.sqlite import SQLiteStore
from collector.records.retention import STEPS
from tests.collector.retention_kit import LOG_KEYS, build
from tests.polling import wait_for

CLI = [sys.executable, "-m", "collector.cli.main", "retention"]


def cli(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run([*CLI, *args], capture_output=True, text=True, check=False,
                          timeout=120, env=env)


@pytest.fixture
def ledger(tmp_path: Path) -> Path:
    """The retention kit's ledger (policies approved) in a SQLite file, closed."""
    path = tmp_path / "ledger.db"
    store = SQLiteStore(path)
    try:
        build(store)
    finally:
        store.close()
    return path


@pytest.mark.subprocess
def test_d15_help_teaches_policies_holds_plan_and_run() -> None:
    r = cli("--help")
    assert r.returncode == 0, r.stderr
    for text in ("retention policy propose", "retention policy approve", "hold place",
                 "approve-release", "retention plan", "retention run", "second principal",
                 "timeclock-retention.timer"):
        assert text in r.stdout, text


@pytest.mark.subprocess
def test_d15_cli_policy_and_hold_need_two_principals(tmp_path: Path) -> None:
    path = tmp_path / "ledger.db"
    SQLiteStore(path).close()
    store = f"sqlite://{path}"
    r = cli("policy", "propose", "--store", store, "--name", "punches-6y", "--record",
            "punch", "--by", "alice")                  # --days: the 6-year default
    assert (r.returncode, r.stdout.strip()) == (0, "recorded policy entry 0"), r.stderr
    r = cli("policy", "approve", "--store", store, "--proposal", "0", "--by", "alice")
    assert r.returncode != 0
    assert "dual control: alice proposed policy 'punches-6y' and cannot approve it too" \
        in r.stderr
    assert "Traceback" not in r.stderr
    assert cli("policy", "approve", "--store", store, "--proposal", "0",
               "--by", "bob").returncode == 0
    r = cli("hold", "place", "--store", store, "--name", "smith-v-acme", "--case", "C-1",
            "--reason", "litigation", "--site", "hq", "--from", "2025-01-01T00:00:00Z",
            "--by", "carol")
    assert r.stdout.strip() == "recorded hold entry 2", r.stderr
    assert cli("hold", "release", "--store", store, "--hold", "2", "--reason", "closed",
               "--by", "carol").returncode == 0
    r = cli("hold", "approve-release", "--store", store, "--request", "3", "--by", "carol")
    assert "dual control: carol asked for the release" in r.stderr
    listed = json.loads(cli("list", "--store", store, "--json").stdout)
    assert [(p["policy"], p["period_days"], p["current"]) for p in listed["policies"]] == [
        ("punches-6y", 2192, True)]
    assert [(h["hold"], h["criteria"], h["released_idx"]) for h in listed["holds"]] == [
        ("smith-v-acme", {"site": "hq", "from_ts": 1_735_689_600_000_000}, None)]


def _state(path: Path) -> tuple[int, int, int]:
    """(entries, bodies, punches with a credential) of the ledger file."""
    store = SQLiteStore(path)
    try:
        return (store.head()[0], int(store.query("SELECT COUNT(*) FROM bodies")[0][0]),
                sum(1 for _ in store.punch_rows(PunchQuery())))
    finally:
        store.close()


@pytest.mark.subprocess
@pytest.mark.parametrize("step", STEPS)
def test_d15_run_killed_after_a_step_leaves_nothing_then_completes(ledger: Path,
                                                                   step: str) -> None:
    before = _state(ledger)
    env = dict(os.environ, **{STALL_ENV: step})
    proc = subprocess.Popen([*CLI, "run", "--store", str(ledger)], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, env=env)
    try:
        assert proc.stderr is not None
        line = wait_for(proc.stderr.readline, 60, f"the run to stall after {step}")
        assert line.strip() == f"stalled after {step}"
        proc.send_signal(signal.SIGKILL)
        proc.wait(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(timeout=60)
    assert _state(ledger) == before             # killed inside the transaction: nothing
    r = cli("run", "--store", str(ledger), "--json")
    assert r.returncode == 0, r.stderr
    out = json.loads(r.stdout)
    entries, bodies, readable = _state(ledger)
    assert out["entry"] == entries - 1 == before[0]   # one evidence entry, the last
    assert (bodies, readable) == (before[1] - out["removed"] + 1, 0)   # + its own body
    assert out["purged"] == {"punches": 10, "quarantine": 1}
    store = SQLiteStore(ledger)
    try:
        assert verify_store(store, LOG_KEYS, full=True).ok
    finally:
        store.close()
    again = cli("run", "--store", str(ledger))
    assert "nothing to remove: no entry written" in again.stdout
    assert _state(ledger)[0] == entries


@pytest.mark.subprocess
def test_d15_plan_says_what_goes_per_policy_and_what_a_hold_keeps(ledger: Path) -> None:
    store = f"sqlite://{ledger}"
    assert cli("hold", "place", "--store", store, "--name", "plant-case", "--case", "C-9",
               "--reason", "audit", "--site", "plant", "--by", "carol").returncode == 0
    r = cli("plan", "--store", store)
    assert r.returncode == 0, r.stderr
    assert "policy punch-7d" in r.stdout
    assert "removes 7 recorded before" in r.stdout      # hq: 6 old + 1 young punch
    assert "hold plant-case (case C-9" in r.stdout
    assert "keeps 4" in r.stdout                         # clk-c's 3 punches and its rejection
    planned = json.loads(cli("plan", "--store", store, "--at", "2000-01-01T00:00:00Z",
                             "--json").stdout)
    assert planned["remove"] == 0                        # nothing is old enough in 2000
    r = cli("run", "--store", store)
    assert r.returncode == 0, r.stderr
    assert "removed 7 bodies" in r.stdout
