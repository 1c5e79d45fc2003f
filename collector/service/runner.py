"""``timeclock-collector serve``: wires store, log key, verifier, writer thread and MQTT link.

Wiring only (the parts are tested alone). Lifecycle:

    start():  open the store → load the log key (0600 or refuse) → start the writer thread →
              connect to the broker (paho thread; it reconnects by itself).
    stop():   stop taking messages → the writer finishes the batch in flight (commit,
              receipts, PUBACKs) → wait for receipts to leave → disconnect → close the store.

Messages still in the inbox at stop are not PUBACKed: the broker keeps them in the
collector's persistent session (or gives them to another collector of the shared group).
"""

from __future__ import annotations

import logging
import queue
import signal
import threading
import time
from collections.abc import Callable
from types import FrameType

from collector import CollectorError
from collector.ingest import checkpoints
from collector.ingest.alerts import Alerts, ChainWatch, GapTracker
from collector.ingest.pipeline import Inbound, Ingestor, StatusTable, Writer, now_us
from collector.ingest.punch_verifier import RegistryView
from collector.ledger import open_store
from collector.ledger.base import LedgerStore
from collector.ledger.registry import RegistrySnapshot
from collector.ledger.sqlbase import SQLStore
from collector.service.config import CollectorConfig, redact_url
from collector.service.mqtt import MqttLink
from wire.keys import SigningKey
from wire.topics import CHECKPOINT

log = logging.getLogger("timeclock.collector")


class Checkpointer:
    """Makes a checkpoint when collector.ingest.checkpoints.CheckpointPolicy says it is due (every
    ``every_entries`` entries or ``every_s`` seconds, only if the log grew); the store keeps
    it and it is published retained on ``timeclock/v1/log/checkpoint``."""

    def __init__(self, store: LedgerStore, log_key: SigningKey,
                 publish: Callable[[str, bytes], None], *, every_entries: int,
                 every_s: int) -> None:
        self.store = store
        self.log_key = log_key
        self.publish = publish
        self.policy = checkpoints.CheckpointPolicy.from_store(
            store, every_entries=every_entries, every_s=every_s)
        self.made = 0

    def maybe(self, now_us: int) -> bool:
        size, _ = self.store.head()
        if not self.policy.due(size, now_us):
            return False
        signed = checkpoints.make_checkpoint(self.store, self.log_key, now_us)
        self.policy.made(signed)
        self.made += 1
        self.publish(CHECKPOINT, signed.to_bytes())
        log.info("checkpoint: size %d head %s…", signed.checkpoint.size,
                 signed.checkpoint.head[:16])
        return True


class CollectorService:
    """One running collector. ``start``/``stop`` from one thread; see the module doc."""

    def __init__(self, cfg: CollectorConfig, *, store: SQLStore | None = None,
                 clock: Callable[[], int] = now_us,
                 registry: Callable[[SQLStore], RegistryView] = RegistrySnapshot.load) -> None:
        self.cfg = cfg
        self.clock = clock
        self._own_store = store is None
        self._store = store
        self._registry = registry
        self.alerts = Alerts()
        self.statuses = StatusTable()
        self.inbox: queue.Queue[Inbound] = queue.Queue(maxsize=cfg.ingest.queue_max)
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self.link: MqttLink | None = None
        self.writer: Writer | None = None
        self.ingestor: Ingestor | None = None
        self.checkpointer: Checkpointer | None = None

    @property
    def store(self) -> SQLStore:
        if self._store is None:
            raise CollectorError("the collector is not started")
        return self._store

    def start(self) -> None:
        cfg = self.cfg
        log_key = checkpoints.load_log_key(cfg.collector.log_key)
        if self._store is None:
            log.info("opening ledger %s", redact_url(cfg.collector.store))
            self._store = open_store(cfg.collector.store)
        store = self._store

        def lookup(device: str, seq: int) -> str | None:
            found = store.punch_hash(device, seq)
            return found[0] if found is not None else None

        self.ingestor = Ingestor(
            store, lambda: self._registry(store), log_key, self.alerts,
            max_payload_bytes=cfg.ingest.max_payload_bytes,
            gaps=GapTracker(cfg.gaps.report_after_s, self.alerts),
            chain=ChainWatch(self.alerts, lookup=lookup))
        self.link = MqttLink(cfg.mqtt, cfg.collector.identity, self.inbox,
                             on_status=self._on_status, clock=self.clock)
        link = self.link
        self.checkpointer = Checkpointer(
            store, log_key, lambda t, b: link.publish(t, b, qos=1, retain=True),
            every_entries=cfg.checkpoints.every_entries, every_s=cfg.checkpoints.every_s)
        self.writer = Writer(self.ingestor, self.inbox, link,
                             batch_max=cfg.ingest.batch_max,
                             batch_wait_ms=cfg.ingest.batch_wait_ms, clock=self.clock,
                             tick=self._tick)
        self._thread = threading.Thread(target=self.writer.run, args=(self._stop,),
                                        name="ingest-writer", daemon=True)
        self._thread.start()
        log.info("collector %s: log key %s, broker %s:%d", cfg.collector.identity,
                 log_key.key_id, cfg.mqtt.host, cfg.mqtt.port)
        link.start()

    def _on_status(self, msg: Inbound) -> None:
        self.statuses.update(msg.topic, msg.payload, msg.received_at)

    def _tick(self, now: int, _handled: int) -> None:
        if self.checkpointer is not None:
            self.checkpointer.maybe(now)
        if self.ingestor is not None:
            self.ingestor.report_gaps(now_us=now)

    def wait_ready(self, timeout_s: float = 10.0) -> bool:
        return self.link is not None and self.link.wait_ready(timeout_s)

    def stop(self, timeout_s: float = 10.0) -> None:
        """Finish the batch in flight, send its receipts and PUBACKs, disconnect."""
        if self.link is not None:
            self.link.pause()
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout_s)
            if self._thread.is_alive():
                log.error("the ingest writer did not finish within %.0f s", timeout_s)
        if self.link is not None:
            if not self.link.flush(timeout_s):
                log.warning("some receipts were not confirmed by the broker before "
                            "disconnecting (clocks will resend; the ledger dedupes)")
            self.link.stop()
        if self._own_store and self._store is not None:
            self._store.close()
        log.info("collector %s stopped", self.cfg.collector.identity)

    def serve_forever(self, stop: threading.Event | None = None) -> None:
        """Run until SIGTERM/SIGINT (or ``stop`` is set), then stop cleanly."""
        stop = stop or threading.Event()

        def handler(signum: int, _frame: FrameType | None) -> None:
            log.info("signal %d: stopping after the batch in flight", signum)
            stop.set()

        previous = {s: signal.signal(s, handler) for s in (signal.SIGTERM, signal.SIGINT)}
        try:
            self.start()
            while not stop.wait(1.0):
                pass
        finally:
            self.stop()
            for s, h in previous.items():
                signal.signal(s, h)


def wait_for(predicate: Callable[[], bool], timeout_s: float, poll_s: float = 0.01) -> bool:
    """Poll ``predicate`` until true or the deadline; for tests and the CLI."""
    deadline = time.monotonic() + timeout_s
    while not predicate():
        if time.monotonic() > deadline:
            return False
        time.sleep(poll_s)
    return True
