"""How fast the agent drains a punch backlog through a real mTLS Mosquitto to a receipting peer.

Setup, once per invocation: a test CA (tests/fixtures/pki.py) and a Mosquitto 2 started the
way the test fixture starts it (tests/fixtures/mosquitto.py: mTLS, the generated ACL,
persistence); an encrypted outbox filled with ``--backlog`` signed punches (filled with
``synchronous=OFF`` to save time; the copy each run starts from is an ordinary queue file).

Each run, on a fresh copy of that outbox:

- agent: :class:`agent.publisher.Publisher` (paho, QoS 1, batches) publishes the backlog; a
  receipting stand-in collector in a separate process (tests/agent/receipt_kit.py, so the
  two do not share a GIL) acks every envelope with a signed receipt; the agent verifies each
  receipt and deletes the acked rows. Timed from ``start()`` until every row is deleted.
- baseline: the same envelopes, already serialised, published by a bare paho client (QoS 1,
  max_inflight 100) to a subscriber that only counts punches: what the broker and paho carry
  with no queue, crypto or receipts.

Target: median agent drain ≥ 10,000 punches/s; exit status 1 if missed.

    python bench/agent_drain.py               # 5 runs, 100,000 punches
    python bench/agent_drain.py --quick       # 3 runs, 20,000 punches
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import common  # sets sys.path to the repository root
import paho.mqtt.client as mqtt

from agent.publisher import Publisher, PublisherSettings
from agent.queue import Outbox
from tests.agent.receipt_kit import ReceiptStandin, punch_builder
from tests.fixtures.mosquitto import MosquittoBroker
from tests.fixtures.pki import ClientCert, TestPKI
from wire import topics
from wire.keys import SigningKey
from wire.punch import Envelope

TARGET_RATE = 10_000
DEVICE = "bench-clock"
BASELINE_DEVICE = "bench-baseline"   # its own topic: the receipting peer never sees it


# --- the receipting peer, in its own process ---------------------------------------------------

def serve_receipts(cfg: dict[str, Any]) -> int:
    """Child process: run the stand-in until stdin closes; report counters as JSON lines."""
    cert = ClientCert(cfg["name"], "collector", Path(cfg["key"]), Path(cfg["cert"]),
                      Path(cfg["ca"]), "0")
    standin = ReceiptStandin(cfg["host"], cfg["port"], cert.context(),
                             SigningKey(bytes.fromhex(cfg["log_seed"])),
                             client_id=cfg["name"], validate=cfg["validate"],
                             topic=topics.punches(DEVICE))
    standin.start()
    print(json.dumps({"ready": True}), flush=True)
    for line in sys.stdin:
        if line.strip() == "stats":
            print(json.dumps({"envelopes": standin.envelopes, "punches": standin.punches,
                              "receipts": standin.receipts_sent,
                              "errors": standin.errors[:3]}), flush=True)
    standin.stop()
    return 0


class ReceiptProcess:
    def __init__(self, broker: MosquittoBroker, log_key: SigningKey, *, validate: bool) -> None:
        cert = broker.pki.collector("collector.bench")
        cfg = {"host": broker.host, "port": broker.port, "name": cert.name,
               "key": str(cert.key_file), "cert": str(cert.cert_file), "ca": str(cert.ca_file),
               "log_seed": log_key.seed.hex(), "validate": validate}
        self.proc = subprocess.Popen(
            [sys.executable, __file__, "--serve-receipts", json.dumps(cfg)],
            stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
        assert self.proc.stdout is not None
        ready = self.proc.stdout.readline()
        if not ready:
            raise RuntimeError("receipt stand-in process did not start")

    def stats(self) -> dict[str, Any]:
        assert self.proc.stdin is not None
        assert self.proc.stdout is not None
        self.proc.stdin.write("stats\n")
        self.proc.stdin.flush()
        result: dict[str, Any] = json.loads(self.proc.stdout.readline())
        return result

    def close(self) -> None:
        assert self.proc.stdin is not None
        self.proc.stdin.close()
        self.proc.wait(10)


# --- setup ---------------------------------------------------------------------------------------

def fill_outbox(path: Path, queue_key: bytes, n: int) -> float:
    """Commit ``n`` signed punches (real record(): sign, encrypt, chain); return seconds."""
    signing = SigningKey.generate()
    t0 = time.monotonic()
    with Outbox(path, queue_key, DEVICE) as ob:
        # Fill speed is not what is measured; skip the per-punch fsync here only.
        ob._conn.execute("PRAGMA synchronous=OFF")  # noqa: SLF001 -- bench setup shortcut
        build = punch_builder(signing, DEVICE)
        for _ in range(n):
            ob.record(build)
        ob._conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")  # noqa: SLF001
    return time.monotonic() - t0


def cpu_s(pid: int) -> float:
    """User + system CPU seconds of a process so far (Linux /proc)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def agent_run(master: Path, queue_key: bytes, log_key: SigningKey, n: int, work: Path, *,
              s: PublisherSettings, pids: dict[str, int]) -> tuple[float, dict[str, Any]]:
    db = work / "run.db"
    for suffix in ("", "-wal", "-shm"):
        Path(f"{db}{suffix}").unlink(missing_ok=True)
    shutil.copyfile(master, db)
    with Outbox(db, queue_key, DEVICE) as ob:
        pub = Publisher(ob, DEVICE, log_key=log_key.verify_key, settings=s)
        cpu0 = {k: cpu_s(pid) for k, pid in pids.items()}
        t0 = time.monotonic()
        pub.start()
        common.wait_until(lambda: pub.stats().receipted >= n, 300, "the backlog to drain",
                          interval_s=0.01)
        elapsed = time.monotonic() - t0
        cpu = {k: cpu_s(pid) - cpu0[k] for k, pid in pids.items()}
        st = pub.stats()
        pub.stop()
        depth = ob.depth()
    if depth != 0:
        raise RuntimeError(f"queue not empty after drain: {depth}")
    return elapsed, {"messages": st.sent_messages, "resent": st.resent_punches,
                     "bad": st.bad_receipts + st.unsent_acks, "cpu": cpu}


def baseline_run(broker: MosquittoBroker, payloads: list[bytes], n: int) -> float:
    counted = [0]
    done = threading.Event()

    def on_message(_c: mqtt.Client, _u: Any, msg: mqtt.MQTTMessage) -> None:
        counted[0] += msg.payload.count(b'"sig":')
        if counted[0] >= n:
            done.set()

    topic = topics.punches(BASELINE_DEVICE)
    sub = broker.subscribe("collector.counter", topic,
                           client_id=f"counter-{time.monotonic_ns()}",
                           configure=lambda c: setattr(c, "on_message", on_message))
    pub = broker.client(BASELINE_DEVICE,
                        configure=lambda c: c.max_inflight_messages_set(100))
    t0 = time.monotonic()
    for p in payloads:
        pub.publish(topic, p, qos=1)
    if not done.wait(300):
        raise RuntimeError(f"baseline subscriber counted {counted[0]} of {n}")
    elapsed = time.monotonic() - t0
    for c in (pub, sub.client):
        c.disconnect()
        c.loop_stop()
    return elapsed


def envelopes_of(master: Path, queue_key: bytes, work: Path, batch: int) -> list[bytes]:
    db = work / "payloads.db"
    shutil.copyfile(master, db)
    out = []
    with Outbox(db, queue_key, DEVICE) as ob:
        after = 0
        while rows := ob.pending(limit=batch, after_seq=after):
            out.append(Envelope(DEVICE, tuple(rows)).to_bytes())
            after = rows[-1].punch.seq
    return out


def main(argv: Sequence[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--runs", type=int, default=5, help="runs (default 5)")
    ap.add_argument("--backlog", type=int, default=100_000, help="punches (default 100000)")
    ap.add_argument("--batch", type=int, default=500, help="punches per envelope (default 500)")
    ap.add_argument("--window", type=int, default=10_000,
                    help="punches awaiting receipts at once (default 10000)")
    ap.add_argument("--validate", action="store_true",
                    help="the receipting peer parses envelopes strictly (wire.punch.Envelope) "
                         "instead of reading seqs with json")
    ap.add_argument("--quick", action="store_true", help="3 runs of 20,000 punches")
    ap.add_argument("--serve-receipts", metavar="JSON", help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    if args.serve_receipts:
        return serve_receipts(json.loads(args.serve_receipts))
    if args.quick:
        args.runs, args.backlog = 3, 20_000
    if args.runs < 1 or args.backlog < 1:
        ap.error("need --runs ≥ 1 and --backlog ≥ 1")

    work = Path(tempfile.mkdtemp(prefix="agent-drain-"))
    print(common.header("agent backlog drain through mTLS Mosquitto", data_dir=work))
    pki = TestPKI(work / "pki")
    broker = MosquittoBroker(pki, work / "broker", collectors=("bench", "counter"),
                             **({"user": "root"} if os.geteuid() == 0 else {}))
    try:
        broker.start()
        ma, mb = measure(args, broker, work)
    finally:
        broker.close()
        shutil.rmtree(work, ignore_errors=True)
    ok = ma >= TARGET_RATE
    print(f"agent drain median {ma:,.0f} punches/s (target ≥ {TARGET_RATE:,}); "
          f"broker-only baseline {mb:,.0f} punches/s: {'PASS' if ok else 'FAIL'}")
    return 0 if ok else 1


def measure(args: argparse.Namespace, broker: MosquittoBroker, work: Path
            ) -> tuple[float, float]:
    """Fill the master outbox, run agent + baseline ``args.runs`` times; print the table and
    return the median rates (agent, baseline)."""
    queue_key, log_key = os.urandom(32), SigningKey.generate()
    master = work / "master.db"
    fill_s = fill_outbox(master, queue_key, args.backlog)
    print(f"filled {args.backlog} punches in {fill_s:.1f} s; batch={args.batch} "
          f"window={args.window} peer={'strict Envelope parse' if args.validate else 'json'}")
    payloads = envelopes_of(master, queue_key, work, args.batch)
    cert = broker.pki.device(DEVICE)
    s = PublisherSettings(host=broker.host, port=broker.port, ca_file=cert.ca_file,
                          cert_file=cert.cert_file, key_file=cert.key_file,
                          batch_max=args.batch, window_punches=args.window,
                          reconnect_min_s=0.1, reconnect_max_s=1.0)
    peer = ReceiptProcess(broker, log_key, validate=args.validate)
    try:
        assert broker.process is not None
        pids = {"agent": os.getpid(), "broker": broker.process.pid, "peer": peer.proc.pid}
        rows, agent_rates, base_rates = [], [], []
        for r in range(args.runs):
            a_s, info = agent_run(master, queue_key, log_key, args.backlog, work, s=s,
                                  pids=pids)
            b_s = baseline_run(broker, payloads, args.backlog)
            agent_rates.append(args.backlog / a_s)
            base_rates.append(args.backlog / b_s)
            cpu = info["cpu"]
            rows.append([f"run {r + 1}", f"{a_s:.2f}", f"{agent_rates[-1]:,.0f}",
                         info["messages"], info["resent"],
                         f"{cpu['agent']:.2f}/{cpu['broker']:.2f}/{cpu['peer']:.2f}",
                         f"{b_s:.2f}", f"{base_rates[-1]:,.0f}"])
        errors = peer.stats()["errors"]
    finally:
        peer.close()
    if errors:
        raise RuntimeError(f"receipting peer could not parse envelopes: {errors}")
    ma, mb = common.median(agent_rates), common.median(base_rates)
    rows.append(["median", "", f"{ma:,.0f}", "", "", "", "", f"{mb:,.0f}"])
    print(f"{args.runs} runs x {args.backlog} punches; rates in punches/s; cpu = CPU seconds "
          "used during the agent run by the agent process, Mosquitto and the receipting peer")
    print(common.table(["", "agent s", "agent rate", "messages", "resent",
                        "cpu s agent/broker/peer", "baseline s", "baseline rate"], rows))
    return ma, mb


if __name__ == "__main__":
    sys.exit(main())
