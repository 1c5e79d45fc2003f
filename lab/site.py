"""A whole site on one machine, for the demo and the end-to-end tests.

:class:`Site` builds everything under one directory with the production code paths: a
throwaway CA, a managed Mosquitto with mTLS (collector.fleet.broker_process), a collector
(``timeclock-collector serve`` as a subprocess; SQLite by default, any store URL works), and
clocks that are real ``timeclock-agent`` processes, each made the way an operator makes one:
``timeclock-agent init`` (keys on the clock) → :func:`collector.fleet.provisioning.enroll_device`
(CSR signed, key registered, bundle) → ``timeclock-agent provision`` → ``timeclock-agent run``.
The site has a seal key (DESIGN.md §8.6) like a host made by ``timeclock-collector init``: the
bundles carry it, so the clocks seal their envelopes and the broker holds no credential.

:func:`run_demo` is ``python -m lab`` (scripts/demo.sh): three clocks with different readers
(simulated; the real rdm6300 plugin fed EM4100 frames through a pty; the serial-line plugin
fed text lines through a pty), a broker outage in the middle, queues drained, a per-clock
summary, ``verify`` of the ledger, an audit bundle checked by ``timeclock-verify``.

Invariants: every child process runs in its own session (a terminal's Ctrl-C reaches only
this process, which then stops children in order: clocks, collector, broker) and
:meth:`Site.close` leaves none running; nothing is written outside the site directory; every
wait is a condition with a deadline.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import os
import re
import shutil
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, TYPE_CHECKING, Any

from collector import CollectorError
from collector.fleet.broker_process import ManagedBroker, prepare_managed_broker, terminate
from collector.fleet.pki import CertificateAuthority
from collector.fleet.provisioning import enroll_device
from collector.ingest.checkpoints import make_checkpoint_v2, resolve_origin
from collector.ledger import open_store
from collector.ledger.audit import verify_store
from collector.ledger.base import DeviceProgress
from collector.records.exports import export_bundle
from wire.clock import now_us
from wire.keys import SigningKey, VerifyKey, save_signing_key
from wire.sealed import SealKey, save_seal_key

if TYPE_CHECKING:
    from lab.extras import Extras

REPO = Path(__file__).resolve().parents[1]
MARKER = ".timeclock-site"
SITE_NAME = "demo"


class SiteError(CollectorError):
    """The site could not be built or run."""


def free_port(host: str = "127.0.0.1") -> int:
    import socket  # noqa: PLC0415

    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind((host, 0))
        return int(s.getsockname()[1])


def wait_for(predicate: Callable[[], bool], timeout_s: float, what: str,
             poll_s: float = 0.05) -> None:
    deadline = time.monotonic() + timeout_s
    while not predicate():
        if time.monotonic() > deadline:
            raise SiteError(f"timed out after {timeout_s:g} s waiting for {what}")
        time.sleep(poll_s)


def _env() -> dict[str, str]:
    env = dict(os.environ)
    env["PYTHONPATH"] = str(REPO) + (os.pathsep + env["PYTHONPATH"]
                                     if env.get("PYTHONPATH") else "")
    env.pop("NOTIFY_SOCKET", None)
    return env


def _run(args: list[str], *, what: str) -> str:
    r = subprocess.run(args, capture_output=True, text=True, env=_env(),  # noqa: S603
                       cwd=REPO, timeout=60, check=False)
    if r.returncode != 0:
        raise SiteError(f"{what} failed ({r.returncode}): {r.stderr.strip()[-2000:]}")
    return r.stdout


def agent_cmd(*args: str) -> list[str]:
    return [sys.executable, "-m", "agent.cli", *args]


def provision_cmd(*args: str) -> list[str]:
    # Same command as `timeclock-agent provision` (agent/provision.py registers it there).
    return [sys.executable, "-m", "agent.provision", *args]


def collector_cmd(*args: str) -> list[str]:
    return [sys.executable, "-m", "collector.cli.main", *args]


class PtyFeed:
    """A pty whose slave the clock's serial reader opens; we write frames into the master."""

    def __init__(self, link: Path) -> None:
        self.master, self._slave = os.openpty()
        self.link = link
        with contextlib.suppress(FileNotFoundError):
            link.unlink()
        link.symlink_to(os.ttyname(self._slave))

    def write(self, data: bytes) -> None:
        view = memoryview(data)
        while view:
            view = view[os.write(self.master, view):]

    def close(self) -> None:
        for fd in (self.master, self._slave):
            with contextlib.suppress(OSError):
                os.close(fd)
        with contextlib.suppress(FileNotFoundError):
            self.link.unlink()


@dataclass
class Clock:
    device: str
    directory: Path
    readers: dict[str, dict[str, Any]]
    log_file: Path
    process: subprocess.Popen[bytes] | None = None
    feeds: list[PtyFeed] = field(default_factory=list)

    @property
    def config(self) -> Path:
        return self.directory / "agent.toml"

    @property
    def queue(self) -> Path:
        return self.directory / "state" / "queue.db"

    def queue_stats(self) -> tuple[int, int]:
        """(depth, last_seq) from the queue's clear metadata (read-only, no key)."""
        from agent.queue import read_stats  # noqa: PLC0415 -- the site is a lab tool

        if not self.queue.exists():
            return 0, 0
        s = read_stats(self.queue)
        return s.depth, s.last_seq


class Site:
    """A CA, a managed broker, collectors and clocks under ``root`` (see the module doc)."""

    def __init__(self, root: Path, *, store_url: str | None = None,
                 say: Callable[[str], None] = print) -> None:
        self.root = Path(root).absolute()
        self.say = say
        self.store_url = store_url or f"sqlite://{self.root / 'ledger.db'}"
        self.port = free_port()
        self.clocks: list[Clock] = []
        self.collectors: dict[str, subprocess.Popen[bytes]] = {}
        self.broker: ManagedBroker | None = None
        self._logs: list[IO[bytes]] = []
        self.ca: CertificateAuthority | None = None
        self.log_key: SigningKey | None = None
        self.seal_key: SealKey | None = None
        # A lab site recovers in seconds, not the production minute (docs/operations.md).
        self.agent_mqtt: dict[str, Any] = {"resend_after_s": 5.0, "reconnect_max_s": 3.0,
                                           "keepalive_s": 10}

    # ---- building ------------------------------------------------------------------------
    def prepare(self, collectors: tuple[str, ...] = ("main",)) -> None:
        if self.root.exists():
            if not (self.root / MARKER).exists() and any(self.root.iterdir()):
                raise SiteError(f"{self.root} exists and is not a site directory; "
                                f"choose another --dir")
            shutil.rmtree(self.root)
        self.root.mkdir(parents=True, mode=0o700)
        (self.root / MARKER).write_text("generated by python -m lab\n")
        now = dt.datetime.now(dt.UTC)
        self.ca = CertificateAuthority.init(self.root / "ca", now=now,
                                            common_name="timeclock site demo CA")
        self.ca.issue_server(dns=["localhost"], ips=["127.0.0.1"], now=now)
        self.log_key = SigningKey.generate()
        save_signing_key(self.root / "log.key", self.log_key)
        self.seal_key = SealKey.generate()
        save_seal_key(self.root / "seal.key", self.seal_key)
        for name in collectors:
            d = self.root / "collectors" / name
            d.mkdir(parents=True)
            self.ca.issue_client(f"collector.{name}", d / "tls.key", d / "tls.crt",
                                 kind="collector", now=now)
            self._collector_config(name)
        options: dict[str, Any] = {"user": "root"} if os.geteuid() == 0 else {}
        prepare_managed_broker(self.ca, self.root / "broker", port=self.port,
                               collectors=collectors, autosave_interval_s=1, **options)

    def _collector_config(self, name: str) -> Path:
        d = self.root / "collectors" / name
        text = "\n".join([
            "[collector]", f'name = "{name}"', f'store = "{self.store_url}"',
            f'log_key = "{self.root / "log.key"}"', f'seal_key = "{self.root / "seal.key"}"',
            "",
            "[mqtt]", 'host = "127.0.0.1"', f"port = {self.port}",
            f'ca_cert = "{self.root / "ca" / "ca.crt"}"', f'cert = "{d / "tls.crt"}"',
            f'key = "{d / "tls.key"}"', "keepalive_s = 10", "",
            "[ingest]", "batch_wait_ms = 20", "",
            "[checkpoints]", "every_entries = 50", "every_s = 5", "",
            "[broker]", f'dir = "{self.root / "broker"}"', ""])
        (d / "collector.toml").write_text(text)
        return d / "collector.toml"

    def collector_config(self, name: str = "main") -> Path:
        return self.root / "collectors" / name / "collector.toml"

    def _log(self, path: Path) -> IO[bytes]:
        # 0600 whatever the umask, like every file the collector and agent write
        f = os.fdopen(os.open(path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600), "ab")
        self._logs.append(f)
        return f

    def start_broker(self) -> ManagedBroker:
        self.broker = ManagedBroker(self.root / "broker", host="127.0.0.1", port=self.port,
                                    output=self._log(self.root / "broker" / "stderr.log"))
        self.broker.start()
        return self.broker

    def start_collector(self, name: str = "main") -> subprocess.Popen[bytes]:
        log = self._log(self.root / "collectors" / name / "serve.log")
        p = subprocess.Popen(  # noqa: S603 -- our own CLI
            collector_cmd("serve", "--config", str(self.collector_config(name))),
            stdout=log, stderr=log, stdin=subprocess.DEVNULL, env=_env(), cwd=REPO,
            start_new_session=True)
        self.collectors[name] = p
        return p

    def kill_collector(self, name: str = "main", sig: int = signal.SIGKILL) -> None:
        p = self.collectors.pop(name, None)
        if p is not None and p.poll() is None:
            p.send_signal(sig)
            p.wait(20)

    def add_clock(self, device: str, readers: Mapping[str, Mapping[str, Any]], *,
                  start: bool = True) -> Clock:
        """init on the clock → enroll → provision → run (see the module doc)."""
        if self.ca is None or self.log_key is None:
            raise SiteError("prepare() first")
        d = self.root / "clocks" / device
        out = _run(agent_cmd("init", "--device", device, "--dir", str(d)),
                   what=f"timeclock-agent init {device}")
        m = re.search(r"signing public key:\s+(\S+)", out)
        if m is None:
            raise SiteError(f"timeclock-agent init printed no public key:\n{out}")
        store = open_store(self.store_url)
        try:
            bundle = enroll_device(
                store, self.ca, (d / f"{device}.csr").read_bytes(), m.group(1), site=SITE_NAME,
                broker=("127.0.0.1", self.port), log_public_key=self.log_key.verify_key,
                now=dt.datetime.now(dt.UTC), readers=readers, approver="site-demo",
                mqtt_options=self.agent_mqtt,
                seal_public_key=None if self.seal_key is None else self.seal_key.public_key)
        finally:
            store.close()
        bundle_file = bundle.write(self.root / "clocks" / f"{device}.bundle")
        _run(provision_cmd("provision", str(bundle_file), "--dir", str(d), "--state-dir",
                           str(d / "state")), what=f"timeclock-agent provision {device}")
        clock = Clock(device, d, {k: dict(v) for k, v in readers.items()}, d / "agent.log")
        self.clocks.append(clock)
        if start:
            self.start_clock(clock)
        return clock

    def start_clock(self, clock: Clock) -> None:
        log = self._log(clock.log_file)
        clock.process = subprocess.Popen(  # noqa: S603 -- our own CLI
            agent_cmd("run", "--config", str(clock.config)), stdout=log, stderr=log,
            stdin=subprocess.DEVNULL, env=_env(), cwd=REPO, start_new_session=True)

    def stop_clock(self, clock: Clock, timeout_s: float = 20.0) -> None:
        if clock.process is not None:
            terminate(clock.process, timeout_s)
        clock.process = None

    # ---- observing -----------------------------------------------------------------------
    def progress(self) -> dict[str, DeviceProgress]:
        store = open_store(self.store_url)
        try:
            return {c.device: store.progress(c.device) for c in self.clocks}
        finally:
            store.close()

    def drained(self, clocks: list[Clock] | None = None) -> bool:
        """Every clock's queue is empty and the ledger holds its whole sequence."""
        prog = self.progress()
        for c in clocks or self.clocks:
            depth, last = c.queue_stats()
            p = prog[c.device]
            if depth or p.contiguous != last:
                return False
        return True

    def verify_and_export(self, out: Path) -> tuple[bool, str, str]:
        """(ledger verifies, verify summary, timeclock-verify output) and the bundle in out."""
        if self.log_key is None:
            raise SiteError("prepare() first")
        keys: dict[str, VerifyKey] = {self.log_key.key_id: self.log_key.verify_key}
        store = open_store(self.store_url)
        try:
            result = verify_store(store, keys)
            r = result.report
            summary = (f"ledger verify: {'OK' if r.ok else 'FAILED'}: {r.entries} entries, "
                       f"{r.punches} punches, {r.devices} devices, {r.checkpoints} "
                       f"checkpoints" + ("" if r.ok else f"; first failure {r.first_failure}"))
            if out.exists():
                shutil.rmtree(out)
            # The site holds the log key, as an operator does: the export signs a checkpoint
            # of its own size, so the bundle's last entry is covered (DESIGN.md §8.2).
            log_key, origin = self.log_key, resolve_origin(None, store, self.log_key)
            export_bundle(store, out, keys.values(), sign=lambda n: make_checkpoint_v2(
                store, log_key, origin, n, now_us()))
        finally:
            store.close()
        v = subprocess.run(  # noqa: S603 -- our own CLI
            [sys.executable, "-m", "wire.verify_cli", str(out), "--collector-key",
             self.log_key.verify_key.b64], capture_output=True, text=True, env=_env(),
            cwd=REPO, timeout=120, check=False)
        return r.ok and v.returncode == 0, summary, (v.stdout + v.stderr).strip()

    # ---- teardown ------------------------------------------------------------------------
    def close(self) -> None:
        for c in self.clocks:
            with contextlib.suppress(Exception):
                self.stop_clock(c)
            for feed in c.feeds:
                feed.close()
        for name in list(self.collectors):
            with contextlib.suppress(Exception):
                self.kill_collector(name, signal.SIGTERM)
        if self.broker is not None:
            self.broker.stop()
        for f in self._logs:
            f.close()
        self._logs.clear()


# ---- the demo ---------------------------------------------------------------------------------

def demo_readers(i: int, clock_dir: Path, interval_s: float, count: int
                 ) -> tuple[dict[str, dict[str, Any]], str]:
    """Reader sections for clock ``i`` and what drives it (three kinds, then simulated)."""
    if i == 1:
        return ({"entrance": {"kind": "rdm6300", "port": str(clock_dir / "rdm6300.tty"),
                              "action": "in", "debounce_s": 0.0}},
                "rdm6300 plugin, EM4100 frames written into a pty")
    if i == 2:
        return ({"exit": {"kind": "serial-line", "port": str(clock_dir / "serial.tty"),
                          "format": "wiegand26", "regex": r"W26:([0-9]{1,10})",
                          "action": "out", "debounce_s": 0.0}},
                "serial-line plugin, text lines written into a pty")
    return ({"desk": {"kind": "simulated", "credentials": [f"{n:08d}" for n in range(1, 9)],
                      "interval_s": interval_s, "count": count, "format": "sim",
                      "action": "punch" if i == 0 else "break-start", "debounce_s": 0.0}},
            f"simulated reader, a badge every {interval_s:g} s")


class Tapper:
    """Writes badge frames into the clocks' ptys, one every ``interval_s``, until stopped."""

    def __init__(self, feeds: list[tuple[PtyFeed, str]], interval_s: float) -> None:
        self.feeds = feeds
        self.interval_s = interval_s
        self.stop = threading.Event()
        self.sent = 0
        self.thread = threading.Thread(target=self._run, name="tapper", daemon=True)

    def _run(self) -> None:
        from agent.readers.rdm6300 import em4100_frame  # noqa: PLC0415 -- lab tool

        n = 0
        while not self.stop.wait(self.interval_s):
            n += 1
            for feed, kind in self.feeds:
                with contextlib.suppress(OSError):
                    if kind == "rdm6300":
                        feed.write(em4100_frame(f"{0x12000000 + n:010X}"))
                    else:
                        feed.write(f"W26:{1000 + n}\r\n".encode())
            self.sent = n


def _summary(site: Site) -> list[str]:
    prog = site.progress()
    lines = [f"{'CLOCK':<10} {'READER':<12} {'RECORDED':>8} {'RECEIPTED':>9} {'QUEUE':>5} "
             f"{'GAPS':>4}"]
    for c in site.clocks:
        depth, last = c.queue_stats()
        p = prog[c.device]
        kind = next(iter(c.readers.values()))["kind"]
        lines.append(f"{c.device:<10} {kind:<12} {last:>8} {p.contiguous:>9} {depth:>5} "
                     f"{len(p.gaps):>4}")
    return lines


@contextlib.contextmanager
def _sigterm_as_interrupt() -> Iterator[None]:
    def handler(_s: int, _f: object) -> None:
        raise KeyboardInterrupt
    old = signal.signal(signal.SIGTERM, handler)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, old)


def _build(site: Site, clocks: int, interval_s: float, count: int,
           step: Callable[[str], None], *, extras: Extras | None = None
           ) -> list[tuple[PtyFeed, str]]:
    step(f"building the site in {site.root}")
    if extras is None:
        site.prepare()
    else:                   # lab/extras.py: --api, --postgres, --collectors, --witness
        site.prepare(collectors=extras.options.names)
        extras.configure(site, step)
    site.start_broker()
    step(f"broker: Mosquitto with mTLS on 127.0.0.1:{site.port} (managed; dir "
         f"{site.root / 'broker'})")
    if extras is None:
        site.start_collector()
        step(f"collector: `timeclock-collector serve` (SQLite {site.root / 'ledger.db'})")
    else:
        extras.start_collectors(site, step)
    feeds: list[tuple[PtyFeed, str]] = []
    for i in range(clocks):
        device = f"clock-{i + 1}"
        d = site.root / "clocks" / device
        d.mkdir(parents=True, exist_ok=True)
        readers, how = demo_readers(i, d, interval_s, count)
        spec = next(iter(readers.values()))
        feed = None
        if spec["kind"] in ("rdm6300", "serial-line"):
            feed = PtyFeed(Path(spec["port"]))
            feeds.append((feed, spec["kind"]))
        clock = site.add_clock(device, readers)
        if feed is not None:
            clock.feeds.append(feed)
        step(f"{device}: enrolled, provisioned, running — {how}, action {spec['action']}")
    return feeds


def _tap_with_outage(site: Site, feeds: list[tuple[PtyFeed, str]], *, interval_s: float,
                     duration_s: float, outage_s: float, step: Callable[[str], None]) -> None:
    tapper = Tapper(feeds, interval_s)
    tapper.thread.start()
    start = time.monotonic()
    outage_at = start + max(3.0, duration_s / 3)
    end = start + duration_s
    outage_done = False
    while time.monotonic() < end:
        if not outage_done and time.monotonic() >= outage_at and site.broker:
            step(f"broker outage: stopping Mosquitto for {outage_s:.1f} s (clocks keep "
                 f"recording into their encrypted queues)")
            site.broker.pause()
            time.sleep(outage_s)  # the deliberate outage
            queued = sum(c.queue_stats()[0] for c in site.clocks)
            site.broker.start()
            step(f"broker back; {queued} punches queued on the clocks drain now")
            outage_done = True
        time.sleep(0.2)
    tapper.stop.set()
    tapper.thread.join(5)


def _finish(site: Site, *, drain_timeout_s: float, step: Callable[[str], None],
            say: Callable[[str], None], extras: Extras | None = None) -> int:
    step("taps stopped; waiting for every queue to drain")
    wait_for(site.drained, drain_timeout_s, "the clocks' queues to drain")
    step("all queues empty; every recorded punch is receipted")
    for line in _summary(site):
        say("  " + line)
    extras_ok = True
    if extras is not None:
        step(f"the options ({extras.options.describe()}):")
        extras_ok = extras.report(site, say)
    ok, summary, verify_out = site.verify_and_export(site.root / "audit-bundle")
    step(summary)
    step(f"audit bundle: {site.root / 'audit-bundle'}; timeclock-verify says:")
    for line in verify_out.splitlines():
        say("  " + line)
    say("")
    say(f"where things are: {site.root}")
    say("  ca/ (CA, CRL)  broker/ (mosquitto.conf, acl, mosquitto.log)  "
        "collectors/main/ (collector.toml, serve.log)")
    say("  clocks/<id>/ (keys 0600, agent.toml, state/queue.db, agent.log)  "
        "ledger.db  audit-bundle/")
    bindir = Path(sys.executable).parent     # the venv's scripts, activated or not
    try_ = "  try:"
    if extras is None or not extras.options.postgres:   # that cluster stops with the demo
        say(f"{try_} {bindir / 'timeclock-collector'} device list --store {site.store_url} "
            f"--ca {site.root / 'ca'}")
        try_ = " " * len(try_)
    say(f"{try_} {bindir / 'timeclock-verify'} {site.root / 'audit-bundle'} --collector-key "
        f"{site.log_key.verify_key.b64 if site.log_key else '<log key>'}")
    return 0 if ok and extras_ok else 1


def run_demo(root: Path, *, duration_s: float = 60.0, clocks: int = 3,
             outage_s: float = 10.0, drain_timeout_s: float = 90.0,
             say: Callable[[str], None] = print, extras: Extras | None = None) -> int:
    """The README's first command (see the module doc). Returns 0 if everything verified."""
    site = Site(root, say=say)
    t0 = time.monotonic()

    def step(msg: str) -> None:
        say(f"[{time.monotonic() - t0:5.1f}s] {msg}")

    interval_s = 1.0 if duration_s >= 30 else 0.5
    count = max(1, int(duration_s / interval_s))
    with _sigterm_as_interrupt():
        try:
            feeds = _build(site, clocks, interval_s, count, step, extras=extras)
            _tap_with_outage(site, feeds, interval_s=interval_s, duration_s=duration_s,
                             outage_s=min(outage_s, duration_s / 3), step=step)
            return _finish(site, drain_timeout_s=drain_timeout_s, step=step, say=say,
                           extras=extras)
        except KeyboardInterrupt:
            say("\ninterrupted: stopping clocks, collector and broker")
            return 130
        finally:
            site.close()
            if extras is not None:
                extras.close()
