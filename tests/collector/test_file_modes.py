"""Files 0600 and folders 0700 whatever the umask (issue 12 item 6; controls D4, D20).

The real commands, each in a subprocess started with umask 022 and with 000: a collector host
made by ``timeclock-collector init``, a clock made by ``timeclock-agent init``, its enrolment
(``device enroll``) and ``provision`` — which also shows that the bundle carries the ledger's
seal public key into ``agent.toml`` (DESIGN.md §8.6) —, an audit bundle and a payroll export,
and the agent running store-only with a simulated reader until it has
recorded punches (its queue, WAL, sequence mark, status file). Then every key, ledger, export,
bundle and state file is 0600 and every folder they live in 0700. Certificates, the CA copy and
the configs are public by design and not checked here.
"""

from __future__ import annotations

import json
import re
import signal
import stat
import subprocess
import sys
from pathlib import Path

import pytest

from collector.ledger import KEK_ENV
from tests.collector.init_kit import REPO, env, service_user
from tests.fixtures.mosquitto import free_port
from tests.polling import wait_for

DEADLINE_S = 120.0
UMASKED = ["bash", "-c", 'umask "$0" && exec "$@"']


def _env(tmp_path: Path) -> dict[str, str]:
    e = env()
    e["XDG_STATE_HOME"] = str(tmp_path / "xdg")      # nothing is written outside tmp_path
    # init's file KEK: the ledger is encrypted at rest once serve or `device enroll --config`
    # opened it with [ledger] kek; the --store commands read the same KEK from here.
    e[KEK_ENV] = f"file:{tmp_path / 'etc' / 'ledger.kek'}"
    return e


def run(umask: str, tmp_path: Path, *args: str) -> str:
    r = subprocess.run([*UMASKED, umask, sys.executable, "-m", *args], capture_output=True,
                       text=True, env=_env(tmp_path), cwd=REPO, timeout=DEADLINE_S,
                       check=False)
    assert r.returncode == 0, f"{' '.join(args[:3])}: {r.stdout}\n{r.stderr}"
    return r.stdout


def mode(path: Path) -> int:
    return stat.S_IMODE(path.lstat().st_mode)


def _store_only_config(clock: Path) -> Path:
    cfg = clock / "store-only.toml"
    cfg.write_text(f"""
[device]
id = "clock-1"
state_dir = "{clock / 'state'}"

[keys]
signing_key = "{clock / 'signing.key'}"
queue_key = "{clock / 'queue.key'}"

[status]
interval_s = 0.2

[readers.desk]
kind = "simulated"
credentials = ["0012345678", "0087654321"]
interval_s = 0.05
count = 5
debounce_s = 0.0
""")
    return cfg


def _run_agent(umask: str, tmp_path: Path, cfg: Path) -> None:
    status = cfg.parent / "state" / "status.json"
    p = subprocess.Popen([*UMASKED, umask, sys.executable, "-m", "agent.cli", "run",  # noqa: S603
                          "--config", str(cfg)], stdout=subprocess.DEVNULL,
                         stderr=subprocess.DEVNULL, env=_env(tmp_path), cwd=REPO,
                         start_new_session=True)
    try:
        def recorded() -> bool:
            try:
                return int(json.loads(status.read_text()).get("queue", {}).get("depth", 0)) >= 5
            except (OSError, ValueError, AttributeError):
                return False
        wait_for(recorded, DEADLINE_S, "the store-only agent to record 5 punches")
    finally:
        p.send_signal(signal.SIGTERM)
        p.wait(DEADLINE_S)


@pytest.mark.subprocess
@pytest.mark.parametrize("umask", ["022", "000"])
def test_d4_d20_files_0600_and_folders_0700_whatever_the_umask(umask: str,
                                                              tmp_path: Path) -> None:
    etc, state, clock, out = (tmp_path / n for n in ("etc", "state", "clock", "out"))
    out.mkdir(mode=0o700)
    port = free_port()
    run(umask, tmp_path, "collector.cli.main", "init", "--etc", str(etc), "--state",
        str(state), "--user", service_user(), "--name", "main", "--no-api", "--mqtt-port",
        str(port))
    printed = run(umask, tmp_path, "agent.cli", "init", "--device", "clock-1", "--dir",
                  str(clock))
    m = re.search(r"signing public key:\s+(\S+)", printed)
    assert m is not None, printed
    bundle = out / "clock-1.bundle"
    run(umask, tmp_path, "collector.cli.main", "device", "enroll", "--config",
        str(etc / "collector.toml"), "--ca", str(etc / "ca"), "--csr",
        str(clock / "clock-1.csr"), "--signing-key", m.group(1), "--site", "hq", "--broker",
        f"127.0.0.1:{port}", "--out", str(bundle))
    run(umask, tmp_path, "agent.provision", "provision", str(bundle), "--dir", str(clock),
        "--state-dir", str(clock / "state"))
    # the seal key travelled: collector init → bundle → the clock's agent.toml
    assert json.loads(bundle.read_text())["seal_public_key"] in (clock / "agent.toml").read_text()
    store = f"sqlite://{state / 'ledger.db'}"
    run(umask, tmp_path, "collector.cli.main", "export", "--store", store, "--bundle",
        str(out / "audit"), "--log-key", str(etc / "log.key"), "--purpose", "mode test")
    run(umask, tmp_path, "collector.cli.main", "export", "--store", store, "--payroll",
        "--out", str(out / "payroll.csv"), "--purpose", "mode test")
    _run_agent(umask, tmp_path, _store_only_config(clock))

    private = [etc / "log.key", etc / "seal.key", etc / "ledger.kek", etc / "collector.key",
               etc / "ca" / "ca.key",
               state / "ledger.db", bundle, out / "payroll.csv",
               clock / "signing.key", clock / "tls.key", clock / "queue.key"]
    private += sorted((out / "audit").iterdir())
    private += sorted(p for p in state.glob("ledger.db-*"))
    private += sorted(p for p in (clock / "state").rglob("*") if p.is_file())
    folders = [state, etc / "ca", out / "audit", clock, clock / "state"]
    names = {p.name for p in private}
    assert {"queue.db", "status.json", "ledger.db"} <= names, sorted(names)
    wrong = {str(p.relative_to(tmp_path)): f"{mode(p):04o}" for p in private
             if mode(p) != 0o600}
    wrong |= {str(p.relative_to(tmp_path)) + "/": f"{mode(p):04o}" for p in folders
              if mode(p) != 0o700}
    assert wrong == {}, f"umask {umask}: {wrong}"
