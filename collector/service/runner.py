"""``timeclock-collector serve``: wires store, log key, verifier, writer thread and MQTT link.

Wiring only (the parts are tested alone). Lifecycle:

    start():  open the store → load the log key (0600 or refuse) → start the writer thread →
              connect to the broker (paho thread; it reconnects by itself).
    stop():   stop taking messages → the writer finishes the batch in flight (commit,
              receipts, PUBACKs) → wait for receipts to leave → disconnect → close the store.

Messages still in the inbox at stop are not PUBACKed: the broker keeps them in the
collector's persistent session (or gives them to another collector of the shared group).

The database may go away (restart, network, a SQLite lock or I/O error). The ingest loop
then stops taking steps and reconnects with back-off (``[ledger] reconnect_initial_ms``
doubling up to ``reconnect_max_ms``): one WARNING when the outage begins, one INFO with its
duration when the ledger is back, ``STATUS=`` to systemd and :meth:`CollectorService.status`
meanwhile. Nothing is acknowledged during the outage: the batch in flight and the inbox stay
un-PUBACKed (the broker stops sending at ``receive_maximum``; clocks resend until receipts
arrive), and the ledger's dedupe plus the in-doubt check of collector.ledger.indoubt keep
every fact recorded once across the reconnect. An outage longer than ``outage_max_s``, a
ledger that refuses appends for another reason, or a writer that fails, stops the collector
with :class:`ServiceError` (``serve`` exits non-zero; the unit restarts it).

systemd (wire.sdnotify, Type=notify): READY=1 once subscribed; WATCHDOG=1 at half of
``$WATCHDOG_USEC`` and only while the ingest loop completed an iteration within the last
``max(interval, STALL_MIN_S)`` seconds (riding out an outage within its limit counts: the
loop is alive and doing what it should), so a blocked loop is restarted by systemd.
"""

from __future__ import annotations

import contextlib
import fcntl
import logging
import os
import queue
import signal
import threading
import time
from collections.abc import Callable
from pathlib import Path
from types import FrameType
from typing import IO, Any, cast

from collector import CollectorError, LedgerError, LedgerUnavailableError
from collector.access.access_reviews import AccessReviewWatch
from collector.access.breakglass import BreakGlassWatch
from collector.ingest import checkpoints
from collector.ingest.alerts import SEVERITY_CRITICAL, Alerts, ChainWatch, GapTracker
from collector.ingest.cosignatures import DeviceWitnesses
from collector.ingest.inclusion_answers import InclusionAnswers
from collector.ingest.pipeline import Inbound, Ingestor, Writer, load_seal
from collector.ingest.punch_verifier import RegistryView
from collector.ingest.resume_answers import ResumeAnswers
from collector.ingest.statuses import StatusTable
from collector.ingest.witness_client import ExternalWitnesses
from collector.ledger import access_tables, checkpoint_tables, open_store
from collector.ledger.registry import RegistrySnapshot
from collector.ledger.schema_check import check_schema
from collector.ledger.sqlbase import SQLStore
from collector.records.reviews import ReviewWatch, review_start_us
from collector.service.config import CollectorConfig, redact_url
from collector.service.log_state import LogState, StateFileError, check_ledger
from collector.service.metrics import ServiceMonitor
from collector.service.mqtt import MqttLink
from wire.clock import now_us
from wire.keys import SigningKey
from wire.sdnotify import Notifier
from wire.topics import CHECKPOINT

log = logging.getLogger("timeclock.collector")

# MQTT v5 reason code 0x8E "Session taken over": another client connected with our client id.
SESSION_TAKEN_OVER = 142
# A session the broker ends sooner than this, TAKEOVER_SESSIONS times in a row: another
# collector with our client id (see CollectorService._watch_takeover). Five, so that a few
# broker crashes or restarts in a row (each also ends the session) are never taken for it.
TAKEOVER_HOLD_S = 5.0
TAKEOVER_SESSIONS = 5
STALL_MIN_S = 2.0     # an ingest iteration older than this (and the watchdog interval) is a stall
BEAT_S = 0.25         # the outage back-off waits in slices this long, beating between them


class ServiceError(CollectorError):
    """The collector stopped itself: the ledger was away too long, refused appends for a reason
    other than an outage, or the ingest writer failed. The service manager restarts it."""


class IdentityLock:
    """One collector identity at a time (issue 15).

    Same host: an exclusive ``flock`` on ``<state directory>/<identity>.lock`` (held by
    ``serve`` for its whole life; released by the kernel when the process dies, so a crash
    leaves no stale lock), taken before the broker, the API or MQTT start. Other hosts (or
    another state directory): the broker tells a collector that another connected with its
    client id (MQTT v5 "Session taken over"); see :meth:`CollectorService._watch_takeover`.
    """

    def __init__(self, directory: Path, identity: str) -> None:
        self.path = Path(directory) / f"{identity}.lock"
        self.identity = identity
        self._file: IO[str] | None = None

    def acquire(self) -> None:
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
            fd = os.open(self.path, os.O_RDWR | os.O_CREAT | os.O_APPEND, 0o600)
            f = os.fdopen(fd, "a+", encoding="utf-8")  # held until release
        except OSError as e:
            raise ServiceError(f"cannot create the lock file {self.path}: {e.strerror}; set "
                               f"[collector] state_dir to a directory serve can write") from e
        try:
            fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError as e:
            f.seek(0)
            pid = f.read().strip() or "?"
            f.close()
            raise ServiceError(f"{self.identity} is already running on this host (pid {pid}, "
                               f"lock {self.path}): stop it first, or give this collector "
                               f"its own [collector] name and certificate") from e
        f.seek(0)
        f.truncate()
        f.write(f"{os.getpid()}\n")
        f.flush()
        self._file = f

    def release(self) -> None:
        if self._file is not None:
            with contextlib.suppress(OSError):
                self._file.truncate(0)
            self._file.close()          # closing drops the flock
            self._file = None

    def __enter__(self) -> IdentityLock:
        self.acquire()
        return self

    def __exit__(self, *_exc: object) -> None:
        self.release()


class Outage:
    """One database outage: when it began, what it is, the back-off between reconnects."""

    def __init__(self, cause: LedgerError, *, initial_s: float, max_s: float,
                 now: float) -> None:
        self.cause = cause
        self.since = now
        self.attempts = 0
        self._delay = initial_s
        self._max = max_s

    def next_delay(self) -> float:
        d = self._delay
        self._delay = min(self._delay * 2, self._max)
        return d


class Checkpointer:
    """Makes checkpoints when collector.ingest.checkpoints.CheckpointPolicy says they are due
    (every ``every_entries`` entries or ``every_s`` seconds, only if the log grew): a v1
    checkpoint and, for the same size, a v2 note (§8.2), both stored. The v2 note, with every
    signature gathered for it, is published retained on ``timeclock/v1/log/checkpoint``
    and kept in the state file (collector.service.log_state); it is published again, and
    the state file rewritten, whenever the newest checkpoint gains a cosignature (whichever
    collector of the ledger received it: the tables are polled every ``poll_s``)."""

    def __init__(self, store: SQLStore, log_key: SigningKey,
                 publish: Callable[[str, bytes], None], *, every_entries: int,
                 every_s: int, origin: str, state: LogState | None = None,
                 poll_s: float = 1.0) -> None:
        self.store = store
        self.log_key = log_key
        self.publish = publish
        self.origin = origin
        self.state = state
        self.poll_s = poll_s
        self.policy = checkpoints.CheckpointPolicy.from_store(
            store, every_entries=every_entries, every_s=every_s)
        self.made = 0
        self.published: tuple[int, int] | None = None   # (size, cosignatures) on the topic
        self._polled_at: int | None = None
        self._started = False
        # Called with each checkpoint of a new (larger) size once it is published: where
        # witnesses are asked to cosign it (collector.ingest.cosignatures, witness_client).
        self.on_checkpoint: list[Callable[[checkpoint_tables.StoredCheckpoint], None]] = []

    def maybe(self, now_us: int) -> bool:
        size, _ = self.store.head()
        made = False
        if self.policy.due(size, now_us):
            signed = checkpoints.make_checkpoint(self.store, self.log_key, now_us)
            self.policy.made(signed)
            size = signed.checkpoint.size
            made = True
            log.info("checkpoint: size %d head %s…", size, signed.checkpoint.head[:16])
        first, self._started = not self._started, True
        # v2 for the v1 size; also once at start when the v2 checkpoints lag behind (a
        # ledger from before v2, or entries appended while no collector ran)
        lagging = False
        if first and not made and size > 0:
            top = checkpoint_tables.newest_size(self.store)
            lagging = top is None or top[0] < size
        if size > 0 and (made or lagging):
            checkpoints.make_checkpoint_v2(self.store, self.log_key, self.origin, size, now_us)
            self.made += 1
            made = True
        if made or first or now_us - (self._polled_at or 0) >= self.poll_s * 1_000_000:
            # One cheap query per poll; the note is read only when there is news. The newest
            # stored may have been made (or cosigned) through another collector of the
            # ledger; the retained message never goes back to a smaller checkpoint.
            self._polled_at = now_us
            top = checkpoint_tables.newest_size(self.store)
            if top is not None and (self.published is None or top > self.published):
                newest = checkpoint_tables.get(self.store, top[0])
                if newest is not None:
                    self._announce(newest)
        return made

    def _announce(self, cp: checkpoint_tables.StoredCheckpoint) -> None:
        """Publish ``cp``'s full note (retained) and keep it in the state file."""
        if self.published is not None and (cp.size, cp.cosignatures) <= self.published:
            return
        new_size = self.published is None or cp.size > self.published[0]
        self.publish(CHECKPOINT, cp.note.encode("utf-8"))
        self.published = (cp.size, cp.cosignatures)
        if new_size:
            for listener in self.on_checkpoint:
                listener(cp)
        if self.state is not None:
            try:
                self.state.save(cp.size, cp.note)
            except StateFileError as e:
                # Ingest goes on (the clocks' punches matter more); the next checkpoint or
                # cosignature tries again, and until then a rollback below it goes unnoticed
                # at restart, so say so loudly.
                log.error("%s; a truncated ledger would not be refused at the next start "
                          "until it is written", e)
        log.info("checkpoint v2: %s size %d root %s… (%d cosignature(s))", cp.checkpoint.origin,
                 cp.size, cp.checkpoint.root.hex()[:16], cp.cosignatures)


def log_checks(cfg: CollectorConfig, store: SQLStore, log_key: SigningKey
               ) -> tuple[str, LogState]:
    """v2 checkpoints before anything is served: the tables exist, the origin is the ledger's
    own (collector.ingest.checkpoints.resolve_origin), and the ledger extends the largest
    checkpoint this collector made or saw cosigned (collector.service.log_state; raises
    LedgerRollbackError). Returns the origin and the state file."""
    checkpoint_tables.ensure_schema(store)
    origin = checkpoints.resolve_origin(cfg.collector.origin, store, log_key)
    state = LogState(cfg.collector.state_directory, checkpoints.note_verifier(origin, log_key))
    check_ledger(store, state)
    return origin, state


def schema_checks(cfg: CollectorConfig, store: SQLStore, alerts: Alerts | None) -> None:
    """Control D5: the append-only triggers and the app role's grants are still what
    ``migrate`` created (collector.ledger.schema_check). On a finding, raise LedgerError
    (``[ledger] on_schema_drift = "refuse"``, the default) or, with "alert", raise one
    severity-1 ``schema-drift`` alert on ``alerts`` (None: the preflight, which only refuses)."""
    check = check_schema(store)
    if not check.ok:
        if cfg.ledger.on_schema_drift == "refuse":
            raise LedgerError(f"refusing to start: {check.message()} (or set [ledger] "
                              f"on_schema_drift = \"alert\" to start and alert)")
        if alerts is not None:
            alerts.alert("schema-drift", severity=SEVERITY_CRITICAL, device=None,
                         detail=check.message(), fields={"findings": list(check.findings)})
    # Control D8: the access tables are the projection of the chain's access entries
    # (collector.ledger.access_tables); same setting, same refusal or alert.
    drift = access_tables.check_projection(store) if access_tables.present(store) else []
    if not drift:
        return
    detail = (f"the access tables differ from the ledger's access entries: {'; '.join(drift)}"
              f" — a row was written behind the ledger; find who with `timeclock-collector "
              f"verify --full`, then restore the tables from a backup")
    if cfg.ledger.on_schema_drift == "refuse":
        raise LedgerError(f"refusing to start: {detail} (or set [ledger] on_schema_drift = "
                          f"\"alert\" to start and alert)")
    if alerts is not None:
        alerts.alert("access-drift", severity=SEVERITY_CRITICAL, device=None, detail=detail,
                     fields={"findings": drift})


def preflight(cfg: CollectorConfig) -> None:
    """:func:`log_checks` on a connection of its own, for ``serve`` to run before it starts
    the broker or the API (a refused ledger is never served, not even briefly)."""
    log_key = checkpoints.load_log_key(cfg.collector.log_key)
    store = open_store(cfg.collector.store, kek=cfg.ledger.kek)
    try:
        log_checks(cfg, store, log_key)
        schema_checks(cfg, store, None)
    finally:
        store.close()


class CollectorService:
    """One running collector. ``start``/``stop`` from one thread; see the module doc."""

    def __init__(self, cfg: CollectorConfig, *, store: SQLStore | None = None,
                 clock: Callable[[], int] = now_us,
                 registry: Callable[[SQLStore], RegistryView] = RegistrySnapshot.load,
                 notifier: Notifier | None = None) -> None:
        self.cfg = cfg
        self.notifier = notifier if notifier is not None else Notifier()
        self.failure: str | None = None          # why the collector stopped itself
        self.outage: Outage | None = None
        self._failed = threading.Event()
        self._beat = time.monotonic()            # the ingest loop's last sign of life
        self.clock = clock
        self._own_store = store is None
        self._store = store
        self._registry = registry
        self.alerts = Alerts(record=True, clock=clock)   # each alert is an `alert` entry
        self.statuses = StatusTable()
        self.inbox: queue.Queue[Inbound] = queue.Queue(maxsize=cfg.ingest.queue_max)
        self.monitor = ServiceMonitor(cfg, self.alerts, self.statuses, clock=clock,
                                      pending=self._pending_count, state=self.status)
        # [reviews]: one review-overdue alert per overdue period (collector.records.reviews)
        self.reviews = ReviewWatch(cfg.reviews, self.alerts.alert) if cfg.reviews else None
        # break-glass openings without a review, access reviews not signed off (D11, D8)
        self.break_glass = BreakGlassWatch(cfg.breakglass, self.alerts.alert)
        self.access_reviews = None if cfg.reviews is None else AccessReviewWatch(
            cfg.reviews.access_review_days, cfg.reviews.access_review_grace_s,
            self.alerts.alert, start_us=review_start_us(cfg.reviews),
            check_every_s=cfg.reviews.check_every_s)
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self.link: MqttLink | None = None
        self.writer: Writer | None = None
        self.ingestor: Ingestor | None = None
        self.checkpointer: Checkpointer | None = None
        # Witnesses (DESIGN.md §8.3): the clocks, and any [[witnesses]], are asked to cosign
        # each new v2 checkpoint, and once at start.
        self.device_witnesses: DeviceWitnesses | None = None
        self.inclusion_answers: InclusionAnswers | None = None
        self.resume_answers: ResumeAnswers | None = None
        self.external_witnesses: ExternalWitnesses | None = None
        self._witnesses_asked_at: int | None = None

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
            self._store = open_store(cfg.collector.store, kek=cfg.ledger.kek)
        store = self._store
        origin, state = log_checks(cfg, store, log_key)
        schema_checks(cfg, store, self.alerts)
        store.auto_reconnect = False     # reconnects follow the back-off of _ride_out only

        def lookup(device: str, seq: int) -> str | None:
            found = store.punch_hash(device, seq)
            return found[0] if found is not None else None

        self.ingestor = Ingestor(
            store, lambda: self._registry(store), log_key, self.alerts,
            max_payload_bytes=cfg.ingest.max_payload_bytes,
            gaps=GapTracker(cfg.gaps.report_after_s, self.alerts),
            chain=ChainWatch(self.alerts, lookup=lookup), monitor=self.monitor.ingest,
            seal_key=load_seal(cfg.collector.seal_key), require_sealed=cfg.ingest.require_sealed)
        self.link = MqttLink(cfg.mqtt, cfg.collector.identity, self.inbox,
                             on_status=self._on_status, clock=self.clock,
                             on_cosignature=self._on_cosignature,
                             on_inclusion_request=self._on_inclusion_request,
                             on_resume_request=self._on_resume_request)
        link = self.link
        self._watch_takeover(link)
        self.inclusion_answers = InclusionAnswers(
            store, lambda t, b: link.publish(t, b, qos=1))
        self.resume_answers = ResumeAnswers(
            store, log_key, lambda t, b: link.publish(t, b, qos=1), now=self.clock)
        self.device_witnesses = DeviceWitnesses(
            store, origin, lambda t, b, r: link.publish(t, b, qos=1, retain=r),
            alerts=self.alerts)
        self.external_witnesses = ExternalWitnesses(store, cfg.witnesses, alerts=self.alerts)
        self.external_witnesses.start()
        self.checkpointer = Checkpointer(
            store, log_key, lambda t, b: link.publish(t, b, qos=1, retain=True),
            every_entries=cfg.checkpoints.every_entries, every_s=cfg.checkpoints.every_s,
            origin=origin, state=state)
        self.writer = Writer(self.ingestor, self.inbox, link,
                             batch_max=cfg.ingest.batch_max,
                             batch_wait_ms=cfg.ingest.batch_wait_ms, clock=self.clock,
                             tick=self._tick, judge_ahead=True)
        self._beat = time.monotonic()
        self._thread = threading.Thread(target=self._ingest, name="ingest-writer",
                                        daemon=True)
        self._thread.start()
        self.monitor.start()
        log.info("collector %s: log key %s, broker %s:%d", cfg.collector.identity,
                 log_key.key_id, cfg.mqtt.host, cfg.mqtt.port)
        link.start()

    def _watch_takeover(self, link: MqttLink) -> None:
        """Fail loudly instead of fighting over the session with another collector of the
        same identity (client id). Mosquitto closes the older connection of a client id when
        a new one connects: with MQTT v5 "Session taken over" (0x8E) from 2.0.12 on, by just
        closing the socket before (2.0.11, Debian 12), which looks like a broker restart.
        So the collector stops when a session it held for less than ``TAKEOVER_HOLD_S`` ends
        with 0x8E (the newcomer: the established collector, whose session was long, takes it
        back), or when ``TAKEOVER_SESSIONS`` sessions in a row end that soon (the two take it
        from each other about once per reconnect delay; the newcomer's count leads by one,
        so it stops first and the established collector keeps the session)."""
        client = link.client
        # paho's properties are typed loosely; these are MqttLink's own callbacks
        on_connect = cast("Callable[..., None]", client.on_connect)
        on_disconnect = cast("Callable[..., None]", client.on_disconnect)
        since: list[float | None] = [None]
        short = [0]

        def connected(*a: Any) -> None:
            if not a[3].is_failure:
                since[0] = time.monotonic()
            on_connect(*a)

        def disconnected(*a: Any) -> None:
            reason = a[3]
            start, since[0] = since[0], None
            if start is None or self._stop.is_set() or not reason.is_failure:
                on_disconnect(*a)
                return
            held = time.monotonic() - start
            short[0] = short[0] + 1 if held < TAKEOVER_HOLD_S else 0
            who = self.cfg.collector.identity
            taken = reason.value == SESSION_TAKEN_OVER
            if (taken and held < TAKEOVER_HOLD_S) or short[0] >= TAKEOVER_SESSIONS:
                link.pause()
                client.disconnect()     # no reconnect: do not take the session back
                on_disconnect(*a)
                self._give_up(f"another collector is connected to the broker as {who} (MQTT "
                              f"session taken over, {short[0]} session(s) ended within "
                              f"{TAKEOVER_HOLD_S:g} s): two collectors must not share an "
                              f"identity; stop the other one, or give this one its own "
                              f"[collector] name and certificate")
                return
            if taken or short[0] > 1:
                log.error("the broker ended this collector's session after %.1f s (%s): if "
                          "another collector connects as %s, one of the two stops", held,
                          "session taken over" if taken else f"{short[0]} short sessions in "
                          f"a row", who)
            on_disconnect(*a)

        client.on_connect = connected
        client.on_disconnect = disconnected

    def _on_status(self, msg: Inbound) -> None:
        self.monitor.status(self.statuses.update(msg.topic, msg.payload, msg.received_at))

    def _pending_count(self) -> int:
        return self.inbox.qsize() + (self.writer.pending if self.writer is not None else 0)

    def _on_cosignature(self, msg: Inbound) -> None:
        if self.device_witnesses is not None:
            self.device_witnesses.receive(msg.topic, msg.payload, msg.received_at)

    def _on_inclusion_request(self, msg: Inbound) -> None:
        if self.inclusion_answers is not None:
            self.inclusion_answers.receive(msg.topic, msg.payload)

    def _on_resume_request(self, msg: Inbound) -> None:
        if self.resume_answers is not None:
            self.resume_answers.receive(msg.topic, msg.payload)

    def _ask_witnesses(self, now: int) -> None:
        """Offer the newest v2 checkpoint to the clocks and the external witnesses."""
        newest = checkpoint_tables.newest(self.store)
        self._witnesses_asked_at = now
        if newest is None:
            return
        if self.device_witnesses is not None:
            self.device_witnesses.offer(newest)
        if self.external_witnesses is not None:
            self.external_witnesses.offer(newest)

    def _tick(self, now: int, _handled: int) -> None:
        if self._store is not None and self._store.unavailable is not None:
            return                       # the outage is reported once, by _ride_out
        try:
            if self.checkpointer is not None and (self.checkpointer.maybe(now)
                                                  or self._witnesses_asked_at is None):
                self._ask_witnesses(now)
            if self.device_witnesses is not None:
                self.device_witnesses.process()
            if self.inclusion_answers is not None:
                self.inclusion_answers.process()
            if self.resume_answers is not None:
                self.resume_answers.process()
            if self.ingestor is not None:
                self.ingestor.report_gaps(now_us=now)
            if self.reviews is not None:
                self.reviews.tick(self.store, now)
            self.break_glass.tick(self.store, now)
            if self.access_reviews is not None:
                self.access_reviews.tick(self.store, now)
            self.monitor.tick(self.store, now)
        except LedgerUnavailableError:
            pass                         # the ingest loop notices and rides it out

    # -- the ingest loop (writer thread) --------------------------------------------------
    def _ingest(self) -> None:
        """Writer steps while the ledger is there; reconnects while it is not; see the
        module doc. Ends on stop or by :meth:`_give_up`."""
        assert self.writer is not None  # noqa: S101 - started by start()
        writer, store, stop = self.writer, self.store, self._stop
        def away() -> bool:              # a call, so that checks are not narrowed away
            return store.unavailable is not None

        while not stop.is_set():
            self._beat = time.monotonic()
            if away():
                self._ride_out(store, stop)
                continue
            try:
                writer.step(stop)
            except Exception:   # top of the long-running loop
                if away():
                    continue                     # an outage: reported by _ride_out
                log.exception("the ingest writer failed")
                self._give_up("the ingest writer failed (traceback above)")
                return
            if store.last_error is not None:
                self._give_up(f"the ledger refuses appends ({store.last_error}); the "
                              f"messages stay unacknowledged for a restarted collector")
                return

    def _ride_out(self, store: SQLStore, stop: threading.Event) -> None:
        """Reconnect with back-off until the ledger is back, the collector stops, or the
        outage is over ``[ledger] outage_max_s`` (then :meth:`_give_up`)."""
        lim = self.cfg.ledger
        cause = store.unavailable
        assert cause is not None  # noqa: S101 - checked by the caller
        outage = Outage(cause, initial_s=lim.reconnect_initial_ms / 1000,
                        max_s=lim.reconnect_max_ms / 1000, now=time.monotonic())
        self.outage = outage
        log.warning("ledger unavailable (%s): the batch in flight and %d queued message(s) "
                    "stay unacknowledged (the broker keeps them, clocks resend); reconnecting "
                    "every %.1f-%.1f s for up to %d s", cause, self.inbox.qsize(),
                    lim.reconnect_initial_ms / 1000, lim.reconnect_max_ms / 1000,
                    lim.outage_max_s)
        self.notifier.status(f"ledger unavailable, reconnecting: {cause}"[:200])
        while not stop.is_set():
            end = time.monotonic() + outage.next_delay()
            while (left := end - time.monotonic()) > 0:
                if stop.wait(min(left, BEAT_S)):
                    return
                self._beat = time.monotonic()    # waiting by policy is a sign of life
            away = time.monotonic() - outage.since
            if away > lim.outage_max_s:
                self._give_up(f"the ledger has been unavailable for {away:.0f} s, beyond "
                              f"[ledger] outage_max_s = {lim.outage_max_s} "
                              f"({outage.attempts} reconnect attempts; last: {outage.cause})")
                return
            outage.attempts += 1
            try:
                store.reconnect()
            except LedgerUnavailableError as e:
                outage.cause = e
                continue
            except LedgerError as e:
                self._give_up(f"the ledger is back but unusable: {e}")
                return
            log.info("ledger available again after %.1f s (%d reconnect attempt(s)); ingest "
                     "resumes", time.monotonic() - outage.since, outage.attempts)
            self.outage = None
            self.notifier.status("ingesting")
            return

    def _give_up(self, why: str) -> None:
        self.failure = why
        log.error("%s: stopping the collector (exit status non-zero; the service manager "
                  "restarts it)", why)
        self.notifier.status(f"failed: {why}"[:200])
        self._failed.set()
        self._stop.set()

    # -- health -------------------------------------------------------------------------
    def stall_s(self) -> float:
        return max(self.notifier.watchdog_interval_s or 0.0, STALL_MIN_S)

    def healthy(self) -> bool:
        """True while the ingest loop is alive and recent (what WATCHDOG=1 vouches for)."""
        alive = self._thread is not None and self._thread.is_alive()
        return (alive and not self._failed.is_set()
                and time.monotonic() - self._beat < self.stall_s())

    def status(self) -> dict[str, object]:
        """State for operators: ``ingesting``, ``ledger-unavailable`` (with how long, how many
        reconnect attempts, what), ``stalled`` or ``failed`` (with why)."""
        out: dict[str, object] = {"queued": self.inbox.qsize()}
        outage = self.outage
        if self.failure is not None:
            out |= {"state": "failed", "failure": self.failure}
        elif outage is not None:
            out |= {"state": "ledger-unavailable", "outage_s": round(
                time.monotonic() - outage.since, 1), "reconnect_attempts": outage.attempts,
                "cause": str(outage.cause)}
        elif self._thread is not None and not self.healthy():
            out |= {"state": "stalled", "last_iteration_s": round(
                time.monotonic() - self._beat, 1)}
        else:
            out["state"] = "ingesting" if self._thread is not None else "stopped"
        return out

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
        if self.writer is not None:
            self.writer.close()        # its judge-ahead helper (what it holds stays unacked)
        if self.external_witnesses is not None:
            self.external_witnesses.stop()
        self.monitor.stop()
        if self.link is not None:
            if not self.link.flush(timeout_s):
                log.warning("some receipts were not confirmed by the broker before "
                            "disconnecting (clocks will resend; the ledger dedupes)")
            self.link.stop()
        if self._own_store and self._store is not None:
            self._store.close()
        log.info("collector %s stopped", self.cfg.collector.identity)

    def serve_forever(self, stop: threading.Event | None = None) -> None:
        """Run until SIGTERM/SIGINT (or ``stop`` is set), then stop cleanly; raise
        ServiceError if the collector stopped itself (see :meth:`_give_up`)."""
        stop = stop or threading.Event()

        def handler(signum: int, _frame: FrameType | None) -> None:
            log.info("signal %d: stopping after the batch in flight", signum)
            stop.set()

        previous = {s: signal.signal(s, handler) for s in (signal.SIGTERM, signal.SIGINT)}
        try:
            self.start()
            self._supervise(stop)
        finally:
            self.notifier.stopping()
            self.stop()
            for s, h in previous.items():
                signal.signal(s, h)
        if self.failure is not None:
            raise ServiceError(self.failure)

    def _supervise(self, stop: threading.Event) -> None:
        """READY=1 once subscribed; WATCHDOG=1 while :meth:`healthy`; until stop or failure."""
        wd = self.notifier.watchdog_interval_s
        tick = min(0.5, wd / 2) if wd else 0.5
        ready, was_ok, next_wd = False, True, 0.0
        while not stop.wait(tick) and not self._failed.is_set():
            if not ready and self.link is not None and self.link.subscribed.is_set():
                ready = True
                self.notifier.ready("ingesting")
            ok = self.healthy()
            if not ok and was_ok and not self._failed.is_set():
                log.warning("the ingest loop has not completed an iteration for %.0f s; "
                            "withholding the watchdog ping", time.monotonic() - self._beat)
            elif ok and not was_ok:
                log.info("the ingest loop is running again")
            was_ok = ok
            if ready and ok and wd is not None and time.monotonic() >= next_wd:
                self.notifier.watchdog()
                next_wd = time.monotonic() + wd


def wait_for(predicate: Callable[[], bool], timeout_s: float, poll_s: float = 0.01) -> bool:
    """Poll ``predicate`` until true or the deadline; for tests and the CLI."""
    deadline = time.monotonic() + timeout_s
    while not predicate():
        if time.monotonic() > deadline:
            return False
        time.sleep(poll_s)
    return True
