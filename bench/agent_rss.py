"""Idle resident memory of a running agent with two readers, connected over mTLS.

Each run starts the real ``timeclock-agent run`` (own process) with an ``rdm6300`` reader on a
pty (the real pyserial path) and a ``simulated`` reader, both idle, and ``[mqtt]`` pointing at a
real Mosquitto with mTLS (tests/fixtures/mosquitto.py, a test CA). One tap is sent through the
pty so every code path of a punch (sign, encrypt, commit, publish, receipt handling) has run;
then VmRSS is sampled every 0.2 s for ``--sample-s`` seconds once the status file says the
publisher is connected. Baseline, same run: a bare interpreter (``python -c`` sleeping) and an
interpreter that only imports the agent's modules and libraries, so the agent's own share is
visible.

Target: median idle RSS ≤ 60 MB; exit status 1 if missed.

    python bench/agent_rss.py            # 3 runs
    python bench/agent_rss.py --quick    # 1 run, 2 s of samples
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path

import common  # sets sys.path to the repository root

from agent.keystore import save_queue_key
from agent.readers.rdm6300 import em4100_frame
from tests.fixtures.mosquitto import MosquittoBroker
from tests.fixtures.pki import TestPKI
from wire.keys import SigningKey, save_signing_key

TARGET_MB = 60.0
DEVICE = "rss-clock"
IMPORTS = ("import agent.service, agent.publisher, agent.readers.rdm6300, "
           "agent.readers.simulated, serial, paho.mqtt.client, nacl.bindings, sqlite3, time")


def rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    raise RuntimeError(f"no VmRSS for pid {pid}")


def sample(pid: int, seconds: float) -> list[float]:
    out = []
    end = time.monotonic() + seconds
    while time.monotonic() < end:
        out.append(rss_mb(pid))
        time.sleep(0.2)
    return out


def idle_python(code: str, seconds: float) -> float:
    """Median RSS of ``python -c code`` after it has settled."""
    proc = subprocess.Popen([sys.executable, "-c", f"{code}\nimport time; time.sleep(600)"],
                            cwd=common.ROOT)
    try:
        time.sleep(1.0)   # let the imports finish; we measure a sleeping process
        return common.median(sample(proc.pid, seconds))
    finally:
        proc.kill()
        proc.wait(5)


def write_config(work: Path, broker: MosquittoBroker, log_key: SigningKey, pty: str) -> Path:
    cert = broker.pki.device(DEVICE)
    save_signing_key(work / "signing.key", SigningKey.generate(), force=True)
    save_queue_key(work / "queue.key", os.urandom(32), force=True)
    cfg = work / "agent.toml"
    cfg.write_text(f"""
[device]
id = "{DEVICE}"
state_dir = "{work / 'state'}"

[keys]
signing_key = "{work / 'signing.key'}"
queue_key = "{work / 'queue.key'}"
tls_key = "{cert.key_file}"
tls_cert = "{cert.cert_file}"
ca_cert = "{cert.ca_file}"
log_public_key = "{log_key.verify_key.b64}"

[mqtt]
host = "{broker.host}"
port = {broker.port}

[status]
interval_s = 0.5

[readers.front]
kind = "rdm6300"
port = "{pty}"

[readers.back]
kind = "simulated"
credentials = ["1001", "1002"]
interval_s = 3600.0
""")
    return cfg


def one_run(broker: MosquittoBroker, work: Path, seconds: float) -> tuple[float, float]:
    work.mkdir(parents=True, exist_ok=True)
    master, slave = os.openpty()
    try:
        cfg = write_config(work, broker, SigningKey.generate(), os.ttyname(slave))
        proc = subprocess.Popen([sys.executable, "-m", "agent.cli", "run", "--config", str(cfg)],
                                cwd=common.ROOT, stdout=subprocess.DEVNULL,
                                stderr=subprocess.DEVNULL)
        try:
            status = work / "state" / "status.json"

            def connected() -> bool:
                try:
                    snap = json.loads(status.read_text())
                except (OSError, ValueError):
                    return False
                return bool(snap.get("publisher", {}).get("status") == "connected")

            common.wait_until(connected, 30, "the agent to connect")
            os.write(master, em4100_frame("0012345678"))
            common.wait_until(lambda: json.loads(status.read_text()).get("queue", {})
                              .get("depth", 0) >= 1, 10, "the tap to be recorded")
            samples = sample(proc.pid, seconds)
            return common.median(samples), max(samples)
        finally:
            proc.terminate()
            proc.wait(15)
    finally:
        os.close(master)
        os.close(slave)


def main(argv: Sequence[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--runs", type=int, default=3, help="runs (default 3)")
    ap.add_argument("--sample-s", type=float, default=5.0, help="seconds of samples per run")
    ap.add_argument("--quick", action="store_true", help="1 run, 2 s of samples")
    args = ap.parse_args(argv)
    if args.quick:
        args.runs, args.sample_s = 1, 2.0
    work = Path(tempfile.mkdtemp(prefix="tc-rss-"))
    print(common.header("agent idle RSS", data_dir=work))
    pki = TestPKI(work / "pki")
    broker = MosquittoBroker(pki, work / "broker", collectors=("bench",),
                             **({"user": "root"} if os.geteuid() == 0 else {}))
    rows = []
    try:
        broker.start()
        for i in range(args.runs):
            bare = idle_python("pass", args.sample_s)
            imports = idle_python(IMPORTS, args.sample_s)
            med, peak = one_run(broker, work / f"run{i}", args.sample_s)
            rows.append((i + 1, f"{bare:.1f}", f"{imports:.1f}", f"{med:.1f}", f"{peak:.1f}"))
    finally:
        broker.close()
    agent = common.median([float(r[3]) for r in rows])
    rows.append(("median", f"{common.median([float(r[1]) for r in rows]):.1f}",
                 f"{common.median([float(r[2]) for r in rows]):.1f}", f"{agent:.1f}",
                 f"{max(float(r[4]) for r in rows):.1f}"))
    print(common.table(("run", "bare python MB", "imports only MB", "agent idle MB (median)",
                        "agent peak MB"), rows))
    verdict = "PASS" if agent <= TARGET_MB else "FAIL"
    print(f"target: agent idle RSS ≤ {TARGET_MB:.0f} MB → {verdict} ({agent:.1f} MB)")
    return 0 if agent <= TARGET_MB else 1


if __name__ == "__main__":
    sys.exit(main())
