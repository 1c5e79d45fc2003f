"""Wiring only: keys + outbox + punch maker + reader threads + publisher + status + watchdog.

Parts (each testable alone): :class:`agent.queue.Outbox`, :class:`agent.punches.PunchMaker`,
the readers from :func:`agent.readers.build_reader`, a :class:`Publisher`, and
:mod:`wire.sdnotify`. Invariants: READY=1 is sent only after the queue is open and the readers
run; WATCHDOG=1 is sent only while the supervision loop runs, every reader thread is alive, the
queue answers, and the publisher (if any) says it is healthy, so systemd restarts a wedged agent;
shutdown stops the readers first (no punch is cut in half: ``record`` is one transaction), then
the publisher, then closes the queue.

WATCHDOG=1 is sent only while :func:`agent.health.check_health` says so: every supervised thread
(each reader, the publisher's sender and MQTT network loop) is alive, the queue answers, a punch
can be committed (storage is not ``full``) and the publisher says it is healthy. A dead thread
is logged and the agent exits (status 1) so that the service manager restarts it. A full disk
is a visible state, not a silent failure: every tick probes the queue
(:meth:`Outbox.probe_storage`, which also notices freed space without a tap), and a change of
storage state is logged, sent as sd_notify ``STATUS=``, written to the status file at once and
republished on the retained MQTT status; refused taps are counted in the status.

The queue is opened with its sequence mark (``seqmark`` next to ``queue.db`` in the state
directory, :mod:`agent.seqmark`): a queue behind its mark makes the agent run *refusing* — every
tap refused with feedback, the reason in the log, sd_notify ``STATUS=`` and the status file's
``sequence`` object — until an operator resumes it (``timeclock-agent resume``). At start, each
loss that a resume recorded and the collector has not been sent yet is signed and handed to the
publisher (``send_loss_reports``, wire.seqloss); it is noted as reported once the broker has it.

Feedback at the clock (agent.feedback): :class:`OutcomeFeedback` from ``[feedback]`` and the
:class:`PunchOutcomes` of this clock's punches, wired to the punch maker (``queued-offline``
at once), the publisher's verified receipts (``recorded``), its certificate state and the
collector's signed badge outcomes on the device's own ``badge-outcome`` topic; none of it
runs on the punch path longer than starting a thread.

The publisher plugs in through :data:`PublisherFactory`; by default it is
``agent.publisher.make_publisher`` when ``[mqtt]`` is configured, else nothing is published.
"""

from __future__ import annotations

import functools
import importlib
import logging
import os
import re
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import asdict
from typing import TYPE_CHECKING, Any, Protocol

from agent.certstate import STATES as CERT_STATES
from agent.clock import ClockSource, SystemClock, clock_state
from agent.config import AgentConfig
from agent.errors import AgentError, SeqMarkError
from agent.feedback import CommandFeedback, OutcomeFeedback, PunchOutcomes
from agent.health import HealthReport, check_health
from agent.keystore import load_queue, load_signing
from agent.punches import PunchMaker
from agent.queue import Outbox, StorageState
from agent.readers import build_reader
from agent.readers.base import Reader
from agent.seqmark import LOSS_FILE, MARK_FILE, SeqLoss, SeqMark, mark_reported, read_losses
from agent.status import STATUS_VERSION, agent_version, write_status
from wire import badge_outcome
from wire.clock import now_us
from wire.device_status import StorageStatus
from wire.keys import SigningKey
from wire.punch import SignedPunch
from wire.sdnotify import Notifier
from wire.seqloss import MAX_REASON_CHARS, LossReport

if TYPE_CHECKING:
    from agent.metrics import AgentMetrics

log = logging.getLogger(__name__)

StatusFn = Callable[[], dict[str, Any]]


class Publisher(Protocol):
    """What the service needs of the MQTT publisher (agent/publisher.py).

    The publisher reads ``outbox.pending(...)``, publishes envelopes, verifies each signed
    receipt with ``config.keys.log_public_key`` and only then calls
    ``outbox.delete_acked(seqs)``. It publishes ``status()`` on the retained status topic.
    """

    def start(self) -> None:
        """Start its own thread(s); return at once."""

    def stop(self) -> None:
        """Publish 'offline' if it can, disconnect, join its threads (a few seconds at most)."""

    def wake(self) -> None:
        """A punch was just committed: publish soon (called from a reader thread; cheap)."""

    def healthy(self) -> bool:
        """Its loop is alive (being disconnected and retrying with backoff is healthy)."""

    def threads(self) -> Sequence[threading.Thread]:
        """The threads it runs (sender, network loop): the service supervises them."""

    def publish_status_soon(self) -> None:
        """The agent's health changed: republish the retained status now (cheap)."""

    def state(self) -> Mapping[str, Any]:
        """For status: ``{"status": "connected"|…, "detail": str, "last_receipt_us": int|None}``."""


class PublisherFactory(Protocol):
    def __call__(self, config: AgentConfig, outbox: Outbox, *,
                 status: StatusFn) -> Publisher | None: ...


def open_outbox(config: AgentConfig, queue_key: bytes, *,
                now: Callable[[], int] = now_us) -> Outbox:
    """The outbox of ``config`` with its sequence mark (in the state directory)."""
    mark = SeqMark(config.device.state_dir / MARK_FILE, queue_key, config.device.id)
    return Outbox(config.queue_path, queue_key, config.device.id, now=now, mark=mark,
                  seeded=config.device.seeded_state)


def default_publisher_factory(config: AgentConfig, outbox: Outbox, *,
                              status: StatusFn) -> Publisher | None:
    if config.mqtt is None:
        log.warning("no [mqtt] section: punches are recorded and kept, but not published")
        return None
    try:
        mod = importlib.import_module("agent.publisher")
    except ImportError as e:
        raise AgentError(f"[mqtt] is configured but the publisher cannot load: {e}") from e
    pub: Publisher = mod.make_publisher(config, outbox, status=status)
    return pub


class AgentService:
    """Owns the parts while the agent runs; ``run(stop)`` blocks until ``stop`` is set."""

    tick_s = 0.5

    def __init__(self, config: AgentConfig, *, env: Mapping[str, str] | None = None,
                 notifier: Notifier | None = None, clock: ClockSource | None = None,
                 publisher_factory: PublisherFactory = default_publisher_factory,
                 readers: Sequence[Reader] | None = None,
                 now_us: Callable[[], int] = now_us) -> None:
        self.config = config
        self.notifier = notifier if notifier is not None else Notifier(env)
        self._now_us = now_us
        self._state = "starting"
        signing = load_signing(config.keys.signing_key, env)
        queue_key = load_queue(config.keys.queue_key, env)
        self.readers: list[Reader] = (list(readers) if readers is not None else
                                      [build_reader(r.name, r.section) for r in config.readers])
        self.outbox = open_outbox(config, queue_key, now=now_us)
        try:
            self.punch_maker = PunchMaker(self.outbox, signing,
                                          clock=clock if clock is not None else SystemClock())
            self.publisher = publisher_factory(config, self.outbox, status=self.snapshot)
        except BaseException:
            self.outbox.close()
            raise
        if self.publisher is not None:
            self.punch_maker.add_hook(lambda _p: self._wake_publisher())
        self._loss_lock = threading.Lock()
        self._report_losses(signing)
        self.feedback: CommandFeedback | None = None
        if config.feedback.refused_command:
            self.feedback = CommandFeedback(config.feedback.refused_command,
                                            timeout_s=config.feedback.command_timeout_s)
            self.punch_maker.add_refused_hook(self.feedback)
        self.outcomes = PunchOutcomes(
            OutcomeFeedback.from_config(config.feedback, device=config.device.id),
            config.device.id, config.keys.log_public_key, connection=self._connection)
        self.punch_maker.add_hook(lambda p: self.outcomes.recorded(
            p.punch.seq, p.punch.hash(), p.punch.reader))
        set_feedback = getattr(self.publisher, "set_feedback", None)
        if set_feedback is not None:
            set_feedback(on_cert_state=lambda c: self.outcomes.feedback.signal(c.outcome),
                         on_receipted=self.outcomes.receipted)
        listen = getattr(self.publisher, "listen", None)
        if listen is not None:
            listen(badge_outcome.topic(config.device.id), self.outcomes.badge_message)
        self.key_id = signing.key_id
        self._threads: list[threading.Thread] = []
        self._last_written: dict[str, Any] | None = None
        self._last_write_mono = 0.0
        self._status_in_place = False
        self.metrics: AgentMetrics | None = None      # [metrics] listener, while running

    def _report_losses(self, signing: SigningKey) -> None:
        """Hand the publisher a signed report (wire.seqloss) of each loss in ``seqloss.json``
        that the collector has not been sent yet (docs/protocol.md §13.11)."""
        send = getattr(self.publisher, "send_loss_reports", None)
        if send is None:
            return
        path = self.config.device.state_dir / LOSS_FILE
        try:
            losses = read_losses(path)
        except SeqMarkError as e:
            log.error("%s; the loss record is not reported to the collector", e)
            return
        reports = []
        for loss in losses:
            if loss.reported_us is not None:
                continue
            reason = re.sub(r"[\x00-\x1f\x7f]", " ", loss.reason)[:MAX_REASON_CHARS]
            signed = LossReport(self.config.device.id, signing.key_id, loss.first, loss.last,
                                reason, loss.at_us).sign(signing)
            reports.append((signed.to_bytes(), functools.partial(self._loss_reported, loss)))
        if reports:
            log.warning("%d loss record(s) of this clock will be reported to the collector",
                        len(reports))
            send(reports)

    def _loss_reported(self, loss: SeqLoss) -> None:
        with self._loss_lock:
            try:
                mark_reported(self.config.device.state_dir / LOSS_FILE, loss, self._now_us())
            except SeqMarkError as e:
                log.error("%s", e)
                return
        log.info("loss of seqs %d..%d reported to the collector", loss.first, loss.last)

    def _connection(self) -> tuple[bool, str | None]:
        """(connected, the certificate's outcome while it keeps the clock off) for the
        feedback of a punch just committed."""
        if self.publisher is None:
            return True, None      # store-only by configuration: nothing to say "offline"
        st = self.publisher.state()
        if st.get("status") == "connected":
            return True, None
        cert = (st.get("certificate") or {}).get("state")
        return False, CERT_STATES.get(str(cert)) if cert else None

    def _wake_publisher(self) -> None:
        if self.publisher is not None:
            self.publisher.wake()

    # ---- observation ------------------------------------------------------------------------

    def snapshot(self) -> dict[str, Any]:
        """The status dict (also for the MQTT status topic). Never contains a credential."""
        try:
            queue: dict[str, Any] = self.outbox.stats().to_dict()
        except AgentError as e:
            queue = {"error": str(e)}
        readers: dict[str, Any] = {}
        for r in self.readers:
            readers[r.name] = {"kind": r.kind, **asdict(r.state)}
        pub: dict[str, Any] = ({"status": "disabled", "detail": "no [mqtt] section"}
                               if self.publisher is None else dict(self.publisher.state()))
        last: SignedPunch | None = self.punch_maker.last_recorded
        storage = self.storage_status(self.outbox.storage())
        sequence = self.outbox.sequence().to_dict()
        sequence["refused_taps"] = self.punch_maker.refused_sequence
        try:
            losses = read_losses(self.config.device.state_dir / LOSS_FILE)
            sequence["losses"] = [x.to_dict() for x in losses[-10:]]
        except SeqMarkError as e:
            sequence["losses_error"] = str(e)
        return {
            "v": STATUS_VERSION, "device": self.config.device.id, "key": self.key_id,
            "version": agent_version(), "pid": os.getpid(), "state": self._state,
            "online": self._state == "running", "at_us": self._now_us(),
            "clock": clock_state(), "queue": queue, "readers": readers, "publisher": pub,
            "storage": storage.to_dict(),
            "sequence": sequence,
            "recorded_since_start": self.punch_maker.recorded,
            "feedback": self.outcomes.stats(),
            "last_recorded_seq": None if last is None else last.punch.seq,
        }

    def _write_status(self, *, force: bool = False) -> None:
        snap = self.snapshot()
        comparable = {k: v for k, v in snap.items() if k != "at_us"}
        due = time.monotonic() - self._last_write_mono >= self.config.status.interval_s
        if not (force or due or comparable != self._last_written):
            return
        try:
            how = write_status(self.config.status.path, snap)
        except AgentError as e:
            log.warning("%s", e)
            return
        if (how == "in-place") != self._status_in_place:
            self._status_in_place = how == "in-place"
            if self._status_in_place:
                log.warning("%s: disk full; the status file is now rewritten in place",
                            self.config.status.path)
        self._last_written = comparable
        self._last_write_mono = time.monotonic()

    def storage_status(self, storage: StorageState) -> StorageStatus:
        """The outbox's storage state with the refused-tap count (status file and MQTT)."""
        return StorageStatus(storage.state, storage.free_bytes, self.punch_maker.refused,
                             storage.since_us, storage.detail[:300])

    def supervised_threads(self) -> list[threading.Thread]:
        """Reader threads, then the publisher's threads."""
        pub = [] if self.publisher is None else list(self.publisher.threads())
        return [*self._threads, *pub]

    def health(self, storage: StorageState | None = None) -> HealthReport:
        """What the watchdog vouches for, now (``storage``: a state just probed, if any)."""
        storage = self.outbox.storage() if storage is None else storage
        try:
            self.outbox.stats()
            queue_error = None
        except AgentError as e:
            queue_error = str(e)
        return check_health({t.name: t.is_alive() for t in self.supervised_threads()},
                            storage_state=storage.state, storage_detail=storage.detail,
                            queue_error=queue_error,
                            publisher_ok=None if self.publisher is None
                            else self.publisher.healthy())

    def healthy(self) -> bool:
        """True while everything the watchdog vouches for works."""
        return self.health().ok

    # ---- life cycle -------------------------------------------------------------------------

    def run(self, stop: threading.Event) -> int:
        """Run until ``stop`` is set; return 0 after a clean shutdown, 1 if a part died."""
        rc = 0
        try:
            for r in self.readers:
                t = threading.Thread(target=r.run, args=(self.punch_maker.record, stop),
                                     name=f"reader-{r.name}", daemon=True)
                t.start()
                self._threads.append(t)
            if self.publisher is not None:
                self.publisher.start()
            self._state = "running"
            self._write_status(force=True)
            if self.config.metrics.port:
                # prometheus-client only when [metrics] asks for it
                from agent.metrics import start_for  # noqa: PLC0415

                self.metrics = start_for(self.config, self.snapshot, now_us=self._now_us)
            seq = self.outbox.sequence()
            if seq.state == "refusing":
                self.notifier.ready(f"REFUSING TAPS: sequence {seq.reason}; run "
                                    f"timeclock-agent resume ({seq.detail})"[:200])
            else:
                self.notifier.ready(f"recording; queue depth {self.outbox.depth()}")
            log.info("agent %s running: key %s, %d reader(s), queue seq %d, publisher %s",
                     self.config.device.id, self.key_id, len(self.readers),
                     self.outbox.last_seq(), "on" if self.publisher else "off")
            rc = self._supervise(stop)
        finally:
            self._shutdown(stop)
        return rc

    def _supervise(self, stop: threading.Event) -> int:
        wd = self.notifier.watchdog_interval_s
        next_wd = time.monotonic()
        tick = min(self.tick_s, wd / 2) if wd else self.tick_s
        was_ok = True
        storage_state = "ok"
        while not stop.wait(tick):
            storage = self.outbox.probe_storage()
            if storage.state != storage_state:
                self._storage_changed(storage_state, storage)
                storage_state = storage.state
            report = self.health(storage)
            if stop.is_set():
                break   # threads return once stop is set: that is no death
            if report.dead_threads:
                # Supervised threads never return before stop: one that did is a bug; let
                # systemd restart us rather than run without a reader or a publisher.
                log.error("thread(s) died: %s; no more watchdog pings, exiting so the service "
                          "manager restarts the agent", ", ".join(report.dead_threads))
                return 1
            if not report.ok and was_ok:
                log.warning("agent unhealthy (%s); withholding the watchdog ping",
                            report.summary())
            elif report.ok and not was_ok:
                log.info("agent healthy again")
            was_ok = report.ok
            if report.ok and wd is not None and time.monotonic() >= next_wd:
                self.notifier.watchdog()
                next_wd = time.monotonic() + wd
            self._write_status()
        return 0

    def _storage_changed(self, before: str, storage: StorageState) -> None:
        if storage.state == "full":
            self.notifier.status(f"STORAGE FULL: taps are refused ({storage.detail})"[:200])
        elif before == "full":
            log.info("storage writable again (%s); recording resumes", storage.detail)
            self.notifier.status(f"recording; storage {storage.state}")
        elif storage.state == "low":
            log.warning("storage low: %s", storage.detail)
        if self.publisher is not None:
            self.publisher.publish_status_soon()
        self._write_status(force=True)

    def _shutdown(self, stop: threading.Event) -> None:
        self._state = "stopping"
        stop.set()
        self.notifier.stopping()
        for t in self._threads:
            t.join(timeout=5.0)
            if t.is_alive():
                log.error("%s did not stop within 5s", t.name)
        if self.publisher is not None:
            try:
                self.publisher.stop()
            except Exception:
                log.exception("publisher stop failed")
        self._state = "stopped"
        self._write_status(force=True)
        if self.metrics is not None:
            self.metrics.stop()
        self.outbox.close()
        log.info("agent stopped cleanly")
