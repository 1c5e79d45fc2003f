"""End-to-end ingest throughput: clocks' backlogs → mTLS Mosquitto → collector → SQLite → receipts.

Setup, once per invocation: a test CA (tests/fixtures/pki.py), one device certificate and one
Ed25519 signing key per clock, and each clock's backlog signed in advance (``--per-device``
chained punches, cut into envelopes of ``--batch`` punches and ≤ 250,000 bytes, exactly as
agent/publisher.py cuts a backlog) — signing is the clocks' work, not the collector's.

Each run, on a fresh broker (tests/fixtures/mosquitto.py: mTLS, the generated ACL,
persistence) and a fresh SQLite ledger with the clocks enrolled:

1. broker: a subscriber that only counts punches (``payload.count(b'"sig":')``, no JSON, no
   crypto), in its own process as ``collector.standby``, receives the same envelopes from the
   same publisher: what broker + paho carry. Timed from the first publish to the last punch.
2. end to end: the real collector, ``timeclock-collector serve`` in its own process (the
   production wiring: CollectorService, MqttLink, Writer, SQLiteStore with WAL and
   synchronous=FULL, checkpoints every 1,000 entries), ingests the same envelopes. The
   publisher process connects one MQTT client per clock with the clock's own certificate
   (the ACL lets it publish only its own punches and read only its own receipts), publishes
   every envelope at once with QoS 1 (an agent's default window of 10,000 punches covers a
   10,000-punch backlog), and verifies every receipt with the log's public key. Timed from
   the first publish to the receipt that completes the last clock's seqs. Afterwards the
   ledger must hold exactly the punches sent.
3. bare verify: PyNaCl ``VerifyKey.verify`` over the same signed punches in a loop, in its
   own process, on one core: the ceiling for one verifying process.

4. with ``--tree-ab``: the end-to-end phase twice per run, on two fresh ledgers in alternating
   order: A is the collector as before the Merkle tree (the store's append without leaf
   hashes, ``append_nodes`` or node rows, the leaf trigger dropped, and no v2 checkpoint
   made: bench/merkle.py's ``no_tree``), B the real one. Reported: A and B punches/s and B's
   cost in percent of A (issue: at most 10 %).
5. with ``--monitor-ab``: the end-to-end phase twice per run, alternating order: A without
   monitoring (collector.ingest.detectors' IngestMonitor, the service's detector tick and the
   alert metrics patched out, no ``[metrics]`` listener), B the real collector with
   ``[metrics]`` on and scraped every second. Reported like ``--tree-ab`` (issue 14: ≤ 5 %).
6. with ``--compare-monitoring``: the same alternation, but side A is the collector as an
   operator switches monitoring off, by configuration only: ``[detectors] enabled = false``
   and no ``[metrics]`` (the in-process counters still count; ``--monitor-ab`` patches them
   out too). B as in 5. Medians of ``--runs`` runs, reported like ``--monitor-ab``.

7. with ``--sealing-ab``: the end-to-end phase twice per run, alternating order, on the same
   punches (badges from a pool of 500, so data keys repeat as with a real workforce; plain
   envelopes ≤ 180,000 bytes so that their sealed form fits the 250,000-byte limit): A plain
   envelopes into a plain ledger, B the same envelopes sealed to the ledger's seal key
   (wire.sealed) into a keyed ledger (a file KEK: punch bodies and personal columns sealed
   at rest, DESIGN.md §8.6); ``[detectors] enabled = false`` on both sides. Reported like
   ``--tree-ab`` (issue 12: ≤ 15 %).

8. with ``--baseline-tree DIR``: the end-to-end phase twice per run, alternating order: A is
   the collector of another checkout (``DIR``, e.g. a ``git worktree`` of the commit before a
   change: its own code creates and enrols the ledger and runs ``serve``, with
   ``PYTHONPATH=DIR``), B this tree's; both get the same broker, clocks, envelopes and
   config. Reported like ``--tree-ab`` (issue 11: the insider checks cost ≤ 5 % against
   cc410b2, the parent of the first issue-11 commit).

Targets (docs/performance.md, "Ingest"): median end-to-end ≥ 10,000 punches/s and ≥ 0.4 × the
median bare verify rate of the same invocation; exit status 1 when missed.

    python bench/ingest.py                  # 3 runs, 10 clocks × 10,000 punches
    python bench/ingest.py --quick          # 2 runs, 4 clocks × 2,500 punches
    python bench/ingest.py --profile        # + one profiled run: top functions of the collector
    python bench/ingest.py --tree-ab        # + A (no Merkle tree, no v2 checkpoints) vs B
    python bench/ingest.py --monitor-ab     # + A (no metrics, no detectors) vs B
    python bench/ingest.py --sealing-ab     # + A (plain) vs B (sealed, encrypted at rest)
    python bench/ingest.py --compare-monitoring   # + A ([detectors] enabled = false) vs B
    python bench/ingest.py --baseline-tree /tmp/tc-base   # + A (that checkout) vs B (this)
"""

from __future__ import annotations

import argparse
import base64
import cProfile
import io
import json
import os
import pstats
import shutil
import signal
import sqlite3
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import common  # sets sys.path to the repository root
import paho.mqtt.client as mqtt
from nacl.signing import VerifyKey as NaclVerifyKey
from paho.mqtt.enums import CallbackAPIVersion

from collector.cli.main import main as collector_main
from collector.ledger import open_store, registry
from collector.ledger.kek import create_file_kek
from collector.ledger.sqlbase import PunchQuery
from collector.ledger.sqlite import SQLiteStore
from tests.collector.punch_kit import SimClock, write_collector_config
from tests.fixtures.mosquitto import MosquittoBroker
from tests.fixtures.pki import ClientCert, TestPKI
from wire.ack import SignedAck
from wire.keys import VerifyKey
from wire.punch import Envelope, SignedPunch
from wire.sealed import SealedEnvelope, SealKey, save_seal_key
from wire.topics import ALL_PUNCHES, acks

TARGET_RATE = 10_000
TARGET_RATIO = 0.4
MAX_ENVELOPE_BYTES = 250_000      # agent/publisher.py _PENDING_MAX_BYTES
SEALED_PLAIN_BYTES = 180_000      # --sealing-ab: a plain envelope whose sealed form fits
BADGES = 500                      # --sealing-ab: badges drawn from a pool (data keys repeat)
T0_US = 1_764_140_400_000_000


# --- pre-signed backlogs ---------------------------------------------------------------------

@dataclass
class Fleet:
    clocks: list[SimClock]
    envelopes: list[tuple[str, str, bytes, int]]   # (device, topic, payload, punches)
    messages: list[tuple[bytes, bytes, str]]       # (signed message, raw sig, public b64)

    @property
    def total(self) -> int:
        return sum(n for *_, n in self.envelopes)


def make_fleet(devices: int, per_device: int, batch: int, *, badges: int = 0,
               max_bytes: int = MAX_ENVELOPE_BYTES) -> Fleet:
    """Pre-signed backlogs; ``badges``: credentials drawn from that many (0: one per punch)."""
    clocks: list[SimClock] = []
    per_clock: list[list[tuple[str, str, bytes, int]]] = []
    messages: list[tuple[bytes, bytes, str]] = []
    k = 0
    for i in range(devices):
        c = SimClock(f"bench-clock-{i:03d}")
        if badges:
            punches = []
            for _ in range(per_device):
                punches.append(c.punch(credential=f"em4100:{k % badges:010d}"))
                k += 7
        else:
            punches = c.batch(per_device)
        clocks.append(c)
        if i == 0:
            messages = [(p.punch.signed_message(), _raw_sig(p), c.key.verify_key.b64)
                        for p in punches]
        per_clock.append([(c.device, c.topic, payload, n)
                          for payload, n in _envelopes(c.device, punches, batch, max_bytes)])
    # Interleave the clocks' envelopes, as a fleet draining at once would send them.
    envelopes = [e for group in _interleave(per_clock) for e in group]
    return Fleet(clocks, envelopes, messages)


def sealed_fleet(fleet: Fleet, key: SealKey) -> Fleet:
    """The same envelopes sealed to ``key`` (wire.sealed, DESIGN.md §8.6), as a clock with the
    bundle's seal public key sends them."""
    pub = key.public_key
    sealed = [(device, topic, SealedEnvelope.seal(Envelope.from_bytes(payload), pub).to_bytes(),
               n) for device, topic, payload, n in fleet.envelopes]
    return Fleet(fleet.clocks, sealed, fleet.messages)


def _raw_sig(p: SignedPunch) -> bytes:
    return base64.b64decode(p.sig)


def _envelopes(device: str, punches: list[SignedPunch], batch: int,
               max_bytes: int = MAX_ENVELOPE_BYTES) -> list[tuple[bytes, int]]:
    out: list[tuple[bytes, int]] = []
    i = 0
    while i < len(punches):
        n = min(batch, len(punches) - i)
        while True:
            payload = Envelope(device, tuple(punches[i:i + n])).to_bytes()
            if len(payload) <= max_bytes or n == 1:
                break
            n = max(1, n * max_bytes // len(payload) - 1)
        out.append((payload, n))
        i += n
    return out


def _interleave(groups: list[list[Any]]) -> list[list[Any]]:
    out: list[list[Any]] = []
    for k in range(max(len(g) for g in groups)):
        out.append([g[k] for g in groups if k < len(g)])
    return out


# --- child processes ---------------------------------------------------------------------------

def child_counter(cfg: dict[str, Any]) -> int:
    """Child: subscribe to all punches as a collector, count punches, report the last time."""
    cert = ClientCert(cfg["name"], "collector", Path(cfg["key"]), Path(cfg["cert"]),
                      Path(cfg["ca"]), "0")
    expected = int(cfg["expected"])
    state = {"punches": 0, "messages": 0, "last": 0.0}
    done = threading.Event()
    ready = threading.Event()

    def on_message(_c: mqtt.Client, _u: Any, msg: mqtt.MQTTMessage) -> None:
        state["punches"] += msg.payload.count(b'"sig":')
        state["messages"] += 1
        if state["punches"] >= expected:
            state["last"] = time.monotonic()
            done.set()

    c = mqtt.Client(CallbackAPIVersion.VERSION2, client_id="bench-counter",
                    protocol=mqtt.MQTTv5)
    c.tls_set_context(cert.context())
    c.max_inflight_messages_set(100)
    c.on_message = on_message
    c.on_subscribe = lambda *_a: ready.set()
    c.on_connect = lambda cl, *_a: cl.subscribe(ALL_PUNCHES, qos=1)
    c.connect(cfg["host"], cfg["port"])
    c.loop_start()
    if not ready.wait(10):
        print(json.dumps({"error": "counter did not subscribe"}), flush=True)
        return 1
    print(json.dumps({"ready": True}), flush=True)
    ok = done.wait(float(cfg["timeout_s"]))
    print(json.dumps({"last": state["last"], "punches": state["punches"],
                      "messages": state["messages"], "ok": ok}), flush=True)
    c.disconnect()
    c.loop_stop()
    return 0


def child_verify(cfg: dict[str, Any]) -> int:
    """Child: PyNaCl verify loop over the given signed messages on one core; print the rate."""
    with open(cfg["file"], "rb") as f:
        data = json.loads(f.read())
    vk = NaclVerifyKey(VerifyKey.from_b64(data["public"]).raw)
    items = [(bytes.fromhex(m), bytes.fromhex(s)) for m, s in data["items"]]
    os.sched_setaffinity(0, {sorted(os.sched_getaffinity(0))[0]})  # one core, as asked
    n = 0
    t0 = time.perf_counter()
    while time.perf_counter() - t0 < float(cfg["seconds"]):
        for m, s in items:
            vk.verify(m, s)
        n += len(items)
    el = time.perf_counter() - t0
    print(json.dumps({"rate": n / el, "n": n}), flush=True)
    return 0


def child_collector(config: str, profile_out: str) -> int:
    """Child (--profile only): ``serve`` with every thread under cProfile; stats to a file.

    cProfile follows one thread; the collector's work happens in the ingest writer and
    paho's network thread, so each thread gets its own profiler, merged at exit.
    """
    profiles: list[cProfile.Profile] = []
    lock = threading.Lock()
    original_run = threading.Thread.run

    def run(self: threading.Thread) -> None:
        p = cProfile.Profile()
        with lock:
            profiles.append(p)
        p.enable()
        try:
            original_run(self)
        finally:
            p.disable()

    threading.Thread.run = run  # type: ignore[method-assign]
    rc = collector_main(["serve", "--config", config])
    stats: pstats.Stats | None = None
    for p in profiles:
        try:
            stats = pstats.Stats(p) if stats is None else stats.add(p)
        except TypeError:   # a thread that never ran any Python
            continue
    if stats is not None:
        stats.dump_stats(profile_out)
    return rc


def child_collector_without_monitoring(config: str) -> int:
    """Child (--monitor-ab, side A): ``serve`` with the ingest metrics, the detectors and the
    service's monitoring tick patched out (the listener is off: A's config has no [metrics])."""
    from collector.ingest import detectors  # noqa: PLC0415
    from collector.service import metrics as service_metrics  # noqa: PLC0415

    def off(*_args: Any, **_kwargs: Any) -> None:
        return None

    for name in ("appended", "repeat", "committed"):
        setattr(detectors.IngestMonitor, name, off)
    service_metrics.ServiceMonitor.tick = off  # type: ignore[method-assign]
    service_metrics.ServiceMonitor.status = off  # type: ignore[method-assign]
    return collector_main(["serve", "--config", config])


class Scraper:
    """Side B of --monitor-ab: GET /metrics every second, as a Prometheus would."""

    def __init__(self, port: int) -> None:
        self.url = f"http://127.0.0.1:{port}/metrics"
        self.scrapes = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        import urllib.request  # noqa: PLC0415

        while not self._stop.wait(1.0):
            try:
                with urllib.request.urlopen(self.url, timeout=5) as r:  # noqa: S310 - loopback
                    r.read()
                self.scrapes += 1
            except OSError:
                pass

    def stop(self) -> int:
        self._stop.set()
        self._thread.join(10)
        if not self.scrapes:
            print("warning: --monitor-ab side B was never scraped", flush=True)
        return self.scrapes


def child_collector_without_tree(config: str) -> int:
    """Child (--tree-ab, side A): ``serve`` with the append of version 1 (no leaf hash, no
    ``append_nodes``, no node rows) and no v2 checkpoint made; v1 checkpoints and receipts as
    in B."""
    import merkle as merkle_bench  # noqa: PLC0415 - bench/merkle.py, side A only

    from collector.ingest import checkpoints  # noqa: PLC0415

    opened = SQLiteStore.__init__

    def open_without_tree(self: SQLiteStore, *args: Any, **kwargs: Any) -> None:
        opened(self, *args, **kwargs)
        merkle_bench.no_tree(self)

    def no_v2(*_args: Any, **_kwargs: Any) -> None:
        return None

    SQLiteStore.__init__ = open_without_tree  # type: ignore[method-assign]
    checkpoints.make_checkpoint_v2 = no_v2  # type: ignore[assignment]
    return collector_main(["serve", "--config", config])


# --- one run --------------------------------------------------------------------------------------

class Publisher:
    """One MQTT client per clock (its own certificate), each subscribed to its receipts."""

    def __init__(self, broker: MosquittoBroker, fleet: Fleet, log_key: VerifyKey | None
                 ) -> None:
        self.fleet = fleet
        self.log_key = log_key
        self.lock = threading.Lock()
        self.wanted = {c.device: c.seq for c in fleet.clocks}
        self.acked: dict[str, set[int]] = {c.device: set() for c in fleet.clocks}
        self.complete: set[str] = set()
        self.done = threading.Event()
        self.last = 0.0
        self.receipts = 0
        self.errors: list[str] = []
        self.clients: dict[str, mqtt.Client] = {}
        for c in fleet.clocks:
            sub = broker.subscribe(c.device, acks(c.device),
                                   configure=self._configure)
            self.clients[c.device] = sub.client

    def _configure(self, c: mqtt.Client) -> None:
        c.max_inflight_messages_set(100)   # agent default (DESIGN.md §4)

    def arm(self) -> None:
        for device, c in self.clients.items():
            c.on_message = lambda _c, _u, m, d=device: self._receipt(d, m)

    def _receipt(self, device: str, msg: mqtt.MQTTMessage) -> None:
        if self.log_key is None:
            return
        try:
            r = SignedAck.from_bytes(bytes(msg.payload))
            r.verify(self.log_key)
        except Exception as e:  # a bench: report, do not crash paho's thread
            self.errors.append(f"{device}: bad receipt: {e}")
            return
        with self.lock:
            self.receipts += 1
            got = self.acked[device]
            got.update(r.ack.seqs())
            if device not in self.complete and len(got) >= self.wanted[device]:
                self.complete.add(device)
                if len(self.complete) == len(self.wanted):
                    self.last = time.monotonic()
                    self.done.set()

    def publish_all(self) -> float:
        t0 = time.monotonic()
        infos = [self.clients[d].publish(topic, payload, qos=1)
                 for d, topic, payload, _ in self.fleet.envelopes]
        for info in infos:
            info.wait_for_publish(120)
        return t0

    def close(self) -> None:
        for c in self.clients.values():
            c.disconnect()
            c.loop_stop()


@dataclass
class RunResult:
    e2e: float
    broker: float
    verify: float
    receipts: int
    entries: int
    profile: str = ""


def start_broker(pki: TestPKI, d: Path) -> MosquittoBroker:
    b = MosquittoBroker(pki, d, collectors=("main", "standby"))
    b.start()
    return b


def broker_phase(pki: TestPKI, d: Path, fleet: Fleet, timeout_s: float) -> float:
    broker = start_broker(pki, d / "broker-count")
    try:
        cert = pki.collector("standby")
        cfg = {"host": broker.host, "port": broker.port, "name": cert.name,
               "key": str(cert.key_file), "cert": str(cert.cert_file), "ca": str(cert.ca_file),
               "expected": fleet.total, "timeout_s": timeout_s}
        proc = subprocess.Popen([sys.executable, __file__, "--child-counter", json.dumps(cfg)],
                                stdout=subprocess.PIPE, text=True)
        assert proc.stdout is not None
        if not json.loads(proc.stdout.readline() or '{"error": "no output"}').get("ready"):
            raise RuntimeError("counting subscriber did not start")
        pub = Publisher(broker, fleet, None)
        t0 = pub.publish_all()
        out = json.loads(proc.stdout.readline() or "{}")
        proc.wait(30)
        pub.close()
        if not out.get("ok"):
            raise RuntimeError(f"counting subscriber got {out.get('punches')} of {fleet.total}")
        return fleet.total / (float(out["last"]) - t0)
    finally:
        broker.close()


def _collector_cmd(cfg_file: Path, profile_out: Path | None, *, without_tree: bool,
                   monitoring: bool | None) -> list[str]:
    if monitoring is False:
        return [sys.executable, __file__, "--child-collector-without-monitoring", str(cfg_file)]
    if without_tree:
        return [sys.executable, __file__, "--child-collector-without-tree", str(cfg_file)]
    if profile_out is None:
        return [sys.executable, "-m", "collector.cli.main", "serve", "--config", str(cfg_file)]
    return [sys.executable, __file__, "--child-collector", str(cfg_file), str(profile_out)]


def e2e_phase(pki: TestPKI, d: Path, fleet: Fleet, timeout_s: float, *,  # noqa: PLR0912, PLR0915 - one phase, in order
              profile_out: Path | None, without_tree: bool = False,
              monitoring: bool | None = None,
              baseline: Path | None = None,
              sealing: SealKey | None = None, plain: bool = False) -> tuple[float, int, int]:
    """``monitoring`` (--monitor-ab): False patches it out, True adds a scraped [metrics].
    ``baseline`` (--baseline-tree): that checkout's code makes the ledger and runs serve.
    ``sealing`` (--sealing-ab, B): the collector opens sealed envelopes with this key and
    keeps a keyed ledger (a file KEK: personal bodies sealed at rest); ``plain`` (A): neither.
    Both sides of --sealing-ab run without detectors (their alerts on a badge pool would
    measure the detectors, not the encryption)."""
    broker = start_broker(pki, d / "broker-e2e")
    db = d / "ledger.db"
    warm = SimClock("bench-warmup")
    kek: str | None = None
    if sealing is not None:
        create_file_kek(d / "ledger.kek")
        kek = f"file:{d / 'ledger.kek'}"
        save_seal_key(d / "seal.key", sealing)
    if baseline is not None:
        _baseline_enroll(baseline, db, [(c.device, c.key.verify_key.b64)
                                        for c in [warm, *fleet.clocks]])
    else:
        store = open_store(f"sqlite://{db}", kek=kek) if kek else SQLiteStore(db)
        for c in [warm, *fleet.clocks]:
            registry.enroll(store, c.device, "hq", c.key.verify_key.b64, now_us=T0_US)
        store.close()
    if without_tree:
        conn = sqlite3.connect(db, isolation_level=None)
        conn.execute("DROP TRIGGER entries_need_leaf")
        conn.close()
    metrics_port = common_free_port() if monitoring else None
    by_config = monitoring is False and COMPARE_BY_CONFIG
    cfg_file, log_key = write_collector_config(
        d / "collector", broker, store_url=f"sqlite://{db}",
        extra=(f"[metrics]\nport = {metrics_port}\n" if metrics_port else "")
        # side A of --compare-monitoring: the operator's switch, nothing patched
        + ("[detectors]\nenabled = false\n" if by_config else "")
        # side A of --tree-ab dropped the leaf trigger on purpose: start, and alert
        + ("[ledger]\non_schema_drift = \"alert\"\n" if without_tree else "")
        + (f"[ledger]\nkek = \"{kek}\"\n" if kek else "")
        + ("[detectors]\nenabled = false\n" if sealing is not None or plain else ""))
    if sealing is not None:          # [collector] seal_key: in the file's first table
        text = cfg_file.read_text()
        cfg_file.write_text(text.replace("\nlog_key = ", f"\nseal_key = \"{d / 'seal.key'}\""
                                         f"\nlog_key = ", 1))
    cmd = _collector_cmd(cfg_file, profile_out, without_tree=without_tree,
                         monitoring=None if by_config else monitoring)
    env = None
    if baseline is not None:
        cmd = [sys.executable, "-m", "collector.cli.main", "serve", "--config", str(cfg_file)]
        env = {**os.environ, "PYTHONPATH": str(baseline)}
    with open(d / "collector.log", "wb") as logf:
        proc = subprocess.Popen(cmd, stdout=logf, stderr=logf, cwd=baseline or common.ROOT,
                                env=env)
    pub: Publisher | None = None
    scraper: Scraper | None = None
    try:
        warm_up(broker, warm, log_key.verify_key, d / "collector.log")
        scraper = Scraper(metrics_port) if metrics_port else None
        pub = Publisher(broker, fleet, log_key.verify_key)
        pub.arm()
        cpu0 = _cpu_s(proc.pid)
        t0 = pub.publish_all()
        if not pub.done.wait(timeout_s):
            raise RuntimeError(f"receipts incomplete after {timeout_s:.0f} s: "
                               f"{ {k: len(v) for k, v in pub.acked.items()} } "
                               f"errors={pub.errors[:3]}")
        if pub.errors:
            raise RuntimeError(f"bad receipts: {pub.errors[:3]}")
        rate = fleet.total / (pub.last - t0)
        cpu_us = (_cpu_s(proc.pid) - cpu0) * 1e6 / fleet.total
        LAST_CPU_US[0] = cpu_us
        if monitoring is not None:
            MONITOR_CPU_US[monitoring].append(cpu_us)
        if without_tree or profile_out is None:
            TREE_CPU_US[without_tree].append(cpu_us)
        BASE_CPU_US[baseline is not None].append(cpu_us)
        receipts = pub.receipts
    finally:
        if scraper is not None:
            scraper.stop()
        if pub is not None:
            pub.close()
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(60)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(10)
        broker.close()
    if baseline is not None:     # counted without this tree's schema checks
        conn = sqlite3.connect(db)
        try:
            n = int(conn.execute("SELECT COUNT(*) FROM punches").fetchone()[0])
        finally:
            conn.close()
    else:
        check = open_store(f"sqlite://{db}", kek=kek) if kek else SQLiteStore(db)
        try:
            n = sum(1 for _ in check.punch_rows(PunchQuery()))
        finally:
            check.close()
    if n != fleet.total + 1:
        raise RuntimeError(f"ledger holds {n} punches, expected {fleet.total + 1}")
    return rate, receipts, n


def tree_ab_phase(pki: TestPKI, d: Path, fleet: Fleet, timeout_s: float, *, a_first: bool
                  ) -> tuple[float, int, int, float]:
    """B (the real collector) and A (without the tree) on fresh ledgers, A first when
    ``a_first``; returns B's (rate, receipts, punches) and A's rate."""
    da, db = d / "without-tree", d / "with-tree"
    da.mkdir()
    db.mkdir()
    out: dict[bool, tuple[float, int, int]] = {}
    for without in ((True, False) if a_first else (False, True)):
        out[without] = e2e_phase(pki, da if without else db, fleet, timeout_s,
                                 profile_out=None, without_tree=without)
    rate_a, _, n_a = out[True]
    if n_a != out[False][2]:
        raise RuntimeError(f"A recorded {n_a} punches, B {out[False][2]}")
    return (*out[False], rate_a)


def monitor_ab_phase(pki: TestPKI, d: Path, fleet: Fleet, timeout_s: float, *, a_first: bool
                     ) -> tuple[float, int, int, float]:
    """B (monitoring on, scraped) and A (monitoring off) on fresh ledgers, A first when
    ``a_first``; returns B's (rate, receipts, punches) and A's rate."""
    out: dict[bool, tuple[float, int, int]] = {}
    for on in ((False, True) if a_first else (True, False)):
        sub = d / ("with-monitoring" if on else "without-monitoring")
        sub.mkdir()
        out[on] = e2e_phase(pki, sub, fleet, timeout_s, profile_out=None, monitoring=on)
    if out[False][2] != out[True][2]:
        raise RuntimeError(f"A recorded {out[False][2]} punches, B {out[True][2]}")
    return (*out[True], out[False][0])


def sealing_ab_phase(pki: TestPKI, d: Path, fleets: tuple[Fleet, Fleet], timeout_s: float, *,
                     a_first: bool) -> tuple[float, int, int, float]:
    """B (sealed envelopes, keyed ledger) and A (plain envelopes, plain ledger) on fresh
    ledgers and the same punches, A first when ``a_first``; returns B's (rate, receipts,
    punches) and A's rate."""
    out: dict[bool, tuple[float, int, int]] = {}
    for on in ((False, True) if a_first else (True, False)):
        sub = d / ("sealed" if on else "plain")
        sub.mkdir()
        out[on] = e2e_phase(pki, sub, fleets[on], timeout_s, profile_out=None,
                            sealing=SEAL_KEY if on else None, plain=not on)
        SEAL_CPU_US[on].append(LAST_CPU_US[0])
    if out[False][2] != out[True][2]:
        raise RuntimeError(f"A recorded {out[False][2]} punches, B {out[True][2]}")
    return (*out[True], out[False][0])


_ENROL = """
import json, sys
from collector.ledger import registry
from collector.ledger.sqlite import SQLiteStore
a = json.loads(sys.argv[1])
store = SQLiteStore(a["db"])
for device, key in a["clocks"]:
    registry.enroll(store, device, "hq", key, now_us=a["t0"])
store.close()
"""


def _baseline_enroll(tree: Path, db: Path, clocks: list[tuple[str, str]]) -> None:
    """The ledger made and the clocks enrolled by the baseline checkout's own code."""
    subprocess.run([sys.executable, "-c", _ENROL, json.dumps(
        {"db": str(db), "clocks": clocks, "t0": T0_US})], check=True, cwd=tree,
        env={**os.environ, "PYTHONPATH": str(tree)})


def baseline_ab_phase(pki: TestPKI, d: Path, fleet: Fleet, timeout_s: float, tree: Path, *,
                      a_first: bool) -> tuple[float, int, int, float]:
    """B (this tree) and A (the collector of ``tree``) on fresh ledgers, A first when
    ``a_first``; returns B's (rate, receipts, punches) and A's rate."""
    out: dict[bool, tuple[float, int, int]] = {}
    for base in ((True, False) if a_first else (False, True)):
        sub = d / ("baseline" if base else "this-tree")
        sub.mkdir()
        out[base] = e2e_phase(pki, sub, fleet, timeout_s, profile_out=None,
                              baseline=tree if base else None)
    if out[True][2] != out[False][2]:
        raise RuntimeError(f"A recorded {out[True][2]} punches, B {out[False][2]}")
    return (*out[False], out[True][0])


BASE_CPU_US: dict[bool, list[float]] = {False: [], True: []}
"""The collector's CPU time per punch of every end-to-end phase: this tree (False) and the
--baseline-tree (True)."""

TREE_CPU_US: dict[bool, list[float]] = {False: [], True: []}
"""--tree-ab: the collector's CPU time per punch of each phase, B (False) and A (True)."""

SEAL_CPU_US: dict[bool, list[float]] = {False: [], True: []}
"""--sealing-ab: the collector's CPU time per punch of each phase, A (False) and B (True)."""

SEAL_KEY = SealKey.generate()
"""--sealing-ab: the ledger's seal key B's envelopes are sealed to."""

LAST_CPU_US = [0.0]
"""The collector's CPU time per punch of the last end-to-end phase."""

COMPARE_BY_CONFIG = False
"""--compare-monitoring: side A of the monitoring A/B is switched off by configuration."""

MONITOR_CPU_US: dict[bool, list[float]] = {False: [], True: []}
"""--monitor-ab: the collector process's CPU time per punch over each ingest window (user +
system, /proc/<pid>/stat), A (False) and B (True): less sensitive to a loaded machine than
the wall-clock rate."""


def _cpu_s(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def common_free_port() -> int:
    import socket  # noqa: PLC0415

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def warm_up(broker: MosquittoBroker, warm: SimClock, log_key: VerifyKey, log_file: Path) -> None:
    """Return once a warm-up clock's punch was receipted through the whole path.

    Resent until receipted (as a clock does): the collector subscribes some time after its
    process starts, and a punch published before that reaches no one.
    """
    first = warm.punch()
    pub = Publisher(broker, Fleet([warm], [(warm.device, warm.topic, Envelope(
        warm.device, (first,)).to_bytes(), 1)], []), log_key)
    pub.arm()
    deadline = time.monotonic() + 30
    while not pub.done.is_set() and time.monotonic() < deadline:
        pub.publish_all()
        pub.done.wait(0.5)
    pub.close()
    if not pub.done.is_set():
        raise RuntimeError(f"collector did not receipt a warm-up punch; see {log_file}")


def verify_phase(d: Path, fleet: Fleet, seconds: float) -> float:
    f = d / "verify.json"
    f.write_text(json.dumps({"public": fleet.messages[0][2],
                             "items": [(m.hex(), s.hex()) for m, s, _ in fleet.messages]}))
    out = subprocess.run([sys.executable, __file__, "--child-verify",
                          json.dumps({"file": str(f), "seconds": seconds})],
                         capture_output=True, text=True, check=True)
    return float(json.loads(out.stdout)["rate"])


def profile_summary(path: Path, top: int) -> str:
    buf = io.StringIO()
    st = pstats.Stats(str(path), stream=buf)
    st.sort_stats("tottime").print_stats(top)
    buf.write("\n--- by cumulative time ---\n")
    st.sort_stats("cumulative").print_stats(top)
    text = buf.getvalue()
    return text.replace(str(common.ROOT) + "/", "")


# --- main ----------------------------------------------------------------------------------------

def parse(argv: Sequence[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(
        description="End-to-end ingest throughput (clocks → Mosquitto → collector → SQLite → "
                    "receipts) against a counting subscriber and a bare Ed25519 verify loop "
                    "measured in the same run.",
        epilog=__doc__.split("Targets", 1)[1] if __doc__ else None,
        formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--devices", type=int, default=10, help="clocks (default 10)")
    p.add_argument("--per-device", type=int, default=10_000,
                   help="backlog per clock in punches (default 10,000)")
    p.add_argument("--batch", type=int, default=500,
                   help="punches per envelope, 1-500 (agent default 500)")
    p.add_argument("--runs", type=int, default=None,
                   help="runs; medians are reported (default 3, --quick 2)")
    p.add_argument("--quick", action="store_true", help="2 runs of 4 clocks × 2,500 punches")
    p.add_argument("--profile", action="store_true",
                   help="afterwards, one more end-to-end run with the collector under cProfile "
                        "(all threads); prints its top functions")
    p.add_argument("--top", type=int, default=25, help="functions shown with --profile")
    p.add_argument("--verify-seconds", type=float, default=3.0,
                   help="duration of the bare verify loop per run")
    p.add_argument("--timeout", type=float, default=300.0, help="seconds per phase")
    p.add_argument("--tree-ab", action="store_true",
                   help="also run the end-to-end phase without the Merkle tree and v2 "
                        "checkpoints (A) beside the real collector (B), alternating, and "
                        "report the tree's cost in percent")
    p.add_argument("--monitor-ab", action="store_true",
                   help="also run each end-to-end phase without metrics and detectors (A) "
                        "and with them, scraped every second (B); report B's cost")
    p.add_argument("--compare-monitoring", action="store_true",
                   help="also run each end-to-end phase with [detectors] enabled = false and "
                        "no [metrics] (A, by configuration only) against the default with "
                        "[metrics] scraped (B), alternating; medians (issue 14: ≤ 5 %%)")
    p.add_argument("--baseline-tree", type=Path, metavar="DIR",
                   help="also run another checkout's collector (A) against this one (B), "
                        "alternating, on the same workload")
    p.add_argument("--sealing-ab", action="store_true",
                   help="also run each end-to-end phase with plain envelopes into a plain "
                        "ledger (A) and with the same punches sealed to the ledger's key into "
                        "a keyed ledger (B: file KEK, bodies sealed at rest), alternating; "
                        f"badges from a pool of {BADGES}, envelopes ≤ {SEALED_PLAIN_BYTES:,} "
                        "bytes before sealing, detectors off on both sides (issue 12: ≤ 15 %%)")
    p.add_argument("--keep", action="store_true", help="keep the temporary directory")
    p.add_argument("--child-counter", help=argparse.SUPPRESS)
    p.add_argument("--child-verify", help=argparse.SUPPRESS)
    p.add_argument("--child-collector", nargs=2, help=argparse.SUPPRESS)
    p.add_argument("--child-collector-without-tree", help=argparse.SUPPRESS)
    p.add_argument("--child-collector-without-monitoring", help=argparse.SUPPRESS)
    a = p.parse_args(argv)
    if a.quick:
        a.devices, a.per_device = 4, 2_500
        a.runs = 2 if a.runs is None else a.runs
    a.runs = 3 if a.runs is None else a.runs
    if not 1 <= a.batch <= 500 or a.devices < 1 or a.per_device < 1 or a.runs < 1:
        p.error("--batch must be 1-500; --devices, --per-device and --runs at least 1")
    if a.baseline_tree is not None and not (a.baseline_tree / "collector" / "cli"
                                            / "main.py").is_file():
        p.error(f"--baseline-tree {a.baseline_tree}: no collector/cli/main.py there")
    return a


def run_child(a: argparse.Namespace) -> int | None:
    """The exit status of a child role this process was started for, else None."""
    if a.child_counter:
        return child_counter(json.loads(a.child_counter))
    if a.child_verify:
        return child_verify(json.loads(a.child_verify))
    if a.child_collector:
        return child_collector(*a.child_collector)
    if a.child_collector_without_tree:
        return child_collector_without_tree(a.child_collector_without_tree)
    if a.child_collector_without_monitoring:
        return child_collector_without_monitoring(a.child_collector_without_monitoring)
    return None


def report_ab(ab: Sequence[tuple[float, float]], cpu: dict[bool, list[float]], *,
              a_is: bool, labels: tuple[str, str], target: str, limit: float) -> None:
    """One A/B table: per-run rates and B's cost in percent of A, the median of the per-run
    costs against ``limit``, and the collector's CPU time per punch of each side (``cpu[a_is]``
    is A's list)."""
    cost = common.median([100 * (1 - y / x) for x, y in ab])
    print("\n" + common.table(
        ["run", f"A: {labels[0]} /s", f"B: {labels[1]} /s", "cost"],
        [*[[k + 1, f"{x:,.0f}", f"{y:,.0f}", f"{100 * (1 - y / x):.1f} %"]
           for k, (x, y) in enumerate(ab)],
         ["median", f"{common.median([x for x, _ in ab]):,.0f}",
          f"{common.median([y for _, y in ab]):,.0f}", f"{cost:.1f} %"]]))
    print(f"target: {target} ≤ {limit:g} %: {'met' if cost <= limit else 'MISSED'} "
          f"(median of the per-run costs)")
    a_runs, b_runs = cpu[a_is], cpu[not a_is]
    a_cpu, b_cpu = common.median(a_runs), common.median(b_runs)
    print(f"collector CPU per punch, per run: A {[round(x, 1) for x in a_runs]} µs, "
          f"B {[round(x, 1) for x in b_runs]} µs")
    print(f"collector CPU per punch (median): A {a_cpu:.1f} µs, B {b_cpu:.1f} µs: "
          f"B costs {100 * (b_cpu / a_cpu - 1):.1f} % more CPU per punch")


def run_all(a: argparse.Namespace, pki: TestPKI, fleet: Fleet, tmp: Path
            ) -> tuple[list[list[object]], list[RunResult], list[tuple[float, float]]]:
    """Every run: table rows, results, and (A, B) rates when ``--tree-ab``."""
    rows: list[list[object]] = []
    results: list[RunResult] = []
    ab: list[tuple[float, float]] = []
    for i in range(a.runs):
        d = tmp / f"run{i + 1}"
        d.mkdir()
        br = broker_phase(pki, d, fleet, a.timeout)
        if a.sealing_ab:
            e2e, receipts, entries, without = sealing_ab_phase(
                pki, d, (fleet, sealed_fleet(fleet, SEAL_KEY)), a.timeout, a_first=i % 2 == 0)
            ab.append((without, e2e))
            print(f"run {i + 1}: A plain {without:,.0f}/s, B sealed and encrypted at rest "
                  f"{e2e:,.0f}/s: cost {100 * (1 - e2e / without):.1f} %", flush=True)
        elif a.monitor_ab:
            e2e, receipts, entries, without = monitor_ab_phase(pki, d, fleet, a.timeout,
                                                               a_first=i % 2 == 0)
            ab.append((without, e2e))
            print(f"run {i + 1}: A without monitoring {without:,.0f}/s, B with metrics and "
                  f"detectors {e2e:,.0f}/s: cost {100 * (1 - e2e / without):.1f} %",
                  flush=True)
        elif a.baseline_tree is not None:
            e2e, receipts, entries, base = baseline_ab_phase(
                pki, d, fleet, a.timeout, a.baseline_tree.resolve(), a_first=i % 2 == 0)
            ab.append((base, e2e))
            print(f"run {i + 1}: A {a.baseline_tree} {base:,.0f}/s, B this tree "
                  f"{e2e:,.0f}/s: cost {100 * (1 - e2e / base):.1f} %", flush=True)
        elif a.tree_ab:
            e2e, receipts, entries, without = tree_ab_phase(pki, d, fleet, a.timeout,
                                                            a_first=i % 2 == 0)
            ab.append((without, e2e))
            print(f"run {i + 1}: A without tree {without:,.0f}/s, B with tree "
                  f"{e2e:,.0f}/s: cost {100 * (1 - e2e / without):.1f} %", flush=True)
        else:
            e2e, receipts, entries = e2e_phase(pki, d, fleet, a.timeout, profile_out=None)
        vr = verify_phase(d, fleet, a.verify_seconds)
        r = RunResult(e2e, br, vr, receipts, entries)
        results.append(r)
        rows.append([i + 1, f"{e2e:,.0f}", f"{br:,.0f}", f"{vr:,.0f}",
                     f"{e2e / vr:.2f}", receipts])
        print(f"run {i + 1}: end-to-end {e2e:,.0f}/s, counting subscriber {br:,.0f}/s, "
              f"bare verify {vr:,.0f}/s", flush=True)
    return rows, results, ab


def main(argv: Sequence[str] | None = None) -> int:
    global COMPARE_BY_CONFIG  # noqa: PLW0603 - the one switch the phases read
    a = parse(argv)
    child = run_child(a)
    if child is not None:
        return child
    if a.compare_monitoring:          # the monitoring A/B, side A by configuration
        a.monitor_ab = COMPARE_BY_CONFIG = True
    tmp = Path(tempfile.mkdtemp(prefix="bench-ingest-"))
    print(common.header("ingest: clocks → Mosquitto (mTLS) → collector → SQLite → receipts",
                        data_dir=tmp))
    print(f"workload: {a.devices} clocks × {a.per_device:,} punches, envelopes of "
          f"≤ {a.batch} punches and ≤ {MAX_ENVELOPE_BYTES:,} bytes, {a.runs} run(s)")
    try:
        t = time.monotonic()
        pki = TestPKI(tmp / "pki")
        fleet = (make_fleet(a.devices, a.per_device, a.batch, badges=BADGES,
                            max_bytes=SEALED_PLAIN_BYTES) if a.sealing_ab
                 else make_fleet(a.devices, a.per_device, a.batch))
        for c in fleet.clocks:
            pki.device(c.device)
        pki.device("bench-warmup")
        sizes = [len(p) for _, _, p, _ in fleet.envelopes]
        print(f"setup   : {fleet.total:,} punches signed in {len(fleet.envelopes)} envelopes "
              f"(mean {sum(sizes) // len(sizes):,} bytes) in {time.monotonic() - t:.1f} s\n")
        rows, results, ab = run_all(a, pki, fleet, tmp)
        med_e2e = common.median([r.e2e for r in results])
        med_br = common.median([r.broker for r in results])
        med_vr = common.median([r.verify for r in results])
        ratio = common.median([r.e2e / r.verify for r in results])
        rows.append(["median", f"{med_e2e:,.0f}", f"{med_br:,.0f}", f"{med_vr:,.0f}",
                     f"{ratio:.2f}", ""])
        print()
        print(common.table(["run", "end-to-end punches/s", "counting subscriber punches/s",
                            "bare verify /s (1 core)", "e2e / verify", "receipts"], rows))
        if ab and a.sealing_ab:
            report_ab(ab, SEAL_CPU_US, a_is=False, limit=15,
                      labels=("plain envelopes, plain ledger", "sealed envelopes, keyed ledger"),
                      target="(issue 12) encryption and sealing cost of end-to-end ingest")
        elif ab and a.monitor_ab:
            report_ab(ab, MONITOR_CPU_US, a_is=False, limit=5,
                      labels=("[detectors] enabled = false, no [metrics]" if COMPARE_BY_CONFIG
                              else "no metrics, no detectors",
                              "metrics (scraped) + detectors"),
                      target="(issue 14) metrics and detectors cost of end-to-end ingest")
        elif ab and a.baseline_tree is not None:
            report_ab(ab, BASE_CPU_US, a_is=True, limit=5,
                      labels=(str(a.baseline_tree), "this tree"),
                      target="(issue 11, against the tree before its checks) the cost")
        elif ab:
            report_ab(ab, TREE_CPU_US, a_is=True, limit=10,
                      labels=("no tree, no v2 checkpoints", "real collector"),
                      target="the tree and v2 checkpoints cost of end-to-end ingest")
        ok_rate = med_e2e >= TARGET_RATE
        ok_ratio = ratio >= TARGET_RATIO
        print(f"\ntarget: end-to-end ≥ {TARGET_RATE:,}/s: {'met' if ok_rate else 'MISSED'}; "
              f"≥ {TARGET_RATIO} × bare verify: {'met' if ok_ratio else 'MISSED'}")
        if a.profile:
            d = tmp / "profile"
            d.mkdir()
            prof = d / "collector.prof"
            rate, _, _ = e2e_phase(pki, d, fleet, a.timeout, profile_out=prof)
            print(f"\nprofiled run (cProfile slows Python code, not C): {rate:,.0f} punches/s; "
                  f"stats in {prof}\n")
            print(profile_summary(prof, a.top))
        return 0 if ok_rate and ok_ratio else 1
    finally:
        if a.keep:
            print(f"kept {tmp}")
        else:
            shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
