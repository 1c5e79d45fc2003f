"""The ingest pipeline: MQTT message → verify → append → receipt → PUBACK (DESIGN.md §4, §6).

Wiring only; the parts live elsewhere: collector.ingest.punch_verifier (steps 1-6), the store (7-8),
collector.ingest.receipts (the ack rule), collector.ingest.checkpoints (signed checkpoints),
collector.ingest.alerts (gaps, chain breaks, conflicts, forks), collector.service.mqtt (paho).
A punch whose ``prev`` does not link to its recorded neighbours is quarantined by the store as a
fork (``Outcome.FORK``, a ``rejection`` entry with reason ``fork``) and raises a severity-1 alert;
it is never appended as a punch and never acknowledged.

Invariants:
- ONE writer thread owns the store for appends: it takes messages from a bounded queue,
  judges them, and records a batch (≤ ``batch_max`` facts or ``batch_wait_ms``) in one
  ``store.append`` transaction. In the service the next batch is judged on a helper thread
  while one commits (``Writer(judge_ahead=True)``; judged again if the registry changed).
- The metrics and detectors (``Ingestor.observe``) run after a batch's receipts and PUBACKs.
- Order per batch: commit → publish receipts (QoS 1) → the clocks' badge outcomes
  (collector.ingest.badge_outcomes) → PUBACK the messages. A message is
  PUBACKed only after everything it carried is committed (punch or rejection entry); a
  message that could not be committed is never PUBACKed, so the broker redelivers it.
- A rejection identical to one recorded recently (reason, topic, raw bytes: a clock resending
  an unacked rejected punch) is counted (``rejected-repeat:<reason>``), not recorded again:
  its bytes are already in quarantine with a rejection entry.
- Nothing is dropped and no input stops the writer: a message whose judging raises is
  quarantined as ``internal-error`` (logged with its traceback); a batch whose append
  raises is retried message by message, and a message whose append still raises is
  quarantined as ``internal-error``. If even that fails, the store is unavailable: the
  messages stay pending (not PUBACKed) and the writer retries after a back-off.
- A store that is unavailable (LedgerUnavailableError: the database is away) fails the batch
  as a whole: nothing is quarantined for it, every message stays pending (not PUBACKed), and
  the service reconnects (collector.service.runner) before the writer's next step.
"""

from __future__ import annotations

import hashlib
import logging
import queue
import threading
import time
from collections import Counter, OrderedDict
from collections.abc import Callable, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

from collector import CollectorError, LedgerUnavailableError
from collector.ingest.alerts import (
    SEVERITY_CRITICAL,
    SEVERITY_WARNING,
    Alerts,
    ChainWatch,
    GapTracker,
)
from collector.ingest.badge_outcomes import BadgeOutcomes
from collector.ingest.detectors import IngestMonitor
from collector.ingest.punch_verifier import RegistryView, judge
from collector.ingest.receipts import receipts_for
from collector.ledger.base import (
    AppendResult,
    Fact,
    LedgerStore,
    Outcome,
    PunchFact,
    RejectionFact,
)
from collector.ledger.body_crypto import PunchPlanner
from wire.ack import SignedAck
from wire.clock import now_us
from wire.errors import DecodeError, WireError
from wire.keys import SigningKey
from wire.punch import MAX_ENVELOPE_BYTES
from wire.sealed import SealKey, load_seal_key
from wire.topics import device_of

log = logging.getLogger("timeclock.ingest")


@dataclass(frozen=True, slots=True)
class Inbound:
    """One MQTT message as received; ``mid``/``qos`` identify it for the PUBACK."""

    topic: str
    payload: bytes
    received_at: int
    mid: int = 0
    qos: int = 1


@dataclass(slots=True)
class BatchResult:
    committed: list[Inbound] = field(default_factory=list)    # PUBACK these
    pending: list[Inbound] = field(default_factory=list)      # store unavailable: retry
    results: list[AppendResult] = field(default_factory=list)
    receipts: list[tuple[str, SignedAck]] = field(default_factory=list)
    badge_outcomes: list[tuple[str, bytes]] = field(default_factory=list)  # after receipts
    done: list[tuple[Fact, AppendResult]] = field(default_factory=list)   # for the monitor


class Ingestor:
    """Judge → append → receipts for one batch of messages. Used by one thread at a time."""

    REPEAT_MEMORY = 10_000

    def __init__(self, store: LedgerStore, registry: Callable[[], RegistryView],
                 log_key: SigningKey, alerts: Alerts, *,
                 max_payload_bytes: int = MAX_ENVELOPE_BYTES,
                 gaps: GapTracker | None = None, chain: ChainWatch | None = None,
                 monitor: IngestMonitor | None = None, seal_key: SealKey | None = None,
                 require_sealed: bool = False) -> None:
        self.store = store
        self.seal_key = seal_key            # opens sealed envelopes (wire.sealed, §8.6)
        self.require_sealed = require_sealed
        self.monitor = monitor      # metrics and detectors (collector.ingest.detectors)
        self.registry = registry
        self.log_key = log_key
        self.alerts = alerts
        self.max_payload_bytes = max_payload_bytes
        self.gaps = gaps
        self.chain = chain
        self._contiguous: dict[str, int] = {}
        self._recent_rejections: OrderedDict[tuple[str, str, bytes], None] = OrderedDict()
        # unknown/blocked badges told to the clock (badge_outcomes.py), judged by the
        # monitor's badge-scan detector; None without detectors
        dets = monitor.detectors if monitor is not None else None
        self.badge_outcomes = (None if dets is None else BadgeOutcomes(
            log_key, lambda: dets.badge_scans.resolver if dets.badge_scans.active else None))

    def planner(self) -> PunchPlanner | None:
        """On a keyed ledger, the people directory's snapshot that plans each judged punch's
        sealing (SQLStore.punch_planner): read by the thread that owns the store."""
        get = getattr(self.store, "punch_planner", None)
        return None if get is None else get()

    def judge(self, msg: Inbound, registry: RegistryView,
              planner: PunchPlanner | None = None) -> list[Fact]:
        """Steps (1)-(6) for one message; never raises. With ``planner`` each punch carries
        its SealPlan (the blind tag and data-key subject the append would derive)."""
        try:
            facts = judge(msg.topic, msg.payload, msg.received_at, registry,
                          max_bytes=self.max_payload_bytes, seal_key=self.seal_key,
                          require_sealed=self.require_sealed)
            if planner is not None:
                plan = planner.plan
                facts = [PunchFact(f.signed, f.topic, f.received_at, plan(f.signed.punch))
                         if isinstance(f, PunchFact) else f for f in facts]
            return facts
        except Exception as e:  # top of the per-message loop: quarantine, never crash
            log.exception("judging a message on %s failed; quarantining it", msg.topic[:120])
            return [internal_error(msg, e)]

    def process(self, batch: Sequence[Inbound], *, now_us: int) -> BatchResult:
        """Judge, commit, and build receipts for ``batch``; see the module invariants."""
        registry, planner = self.registry(), self.planner()
        groups = [(m, self.judge(m, registry, planner)) for m in batch]
        out = self.commit(groups, now_us=now_us)
        self.observe(out, now_us=now_us)
        return out

    def _repeat(self, f: Fact) -> bool:
        """A rejection already recorded recently (same reason, topic and raw bytes)?"""
        if not isinstance(f, RejectionFact) or f.reason == "internal-error":
            return False
        key = (f.reason, f.topic, hashlib.sha256(f.raw).digest())
        if key in self._recent_rejections:
            self._recent_rejections.move_to_end(key)
            self.alerts.count(f"rejected-repeat:{f.reason}")
            if self.monitor is not None:
                self.monitor.repeat(f.reason)
            return True
        return False

    def _remember(self, facts: Sequence[Fact]) -> None:
        for f in facts:
            if isinstance(f, RejectionFact) and f.reason != "internal-error":
                key = (f.reason, f.topic, hashlib.sha256(f.raw).digest())
                self._recent_rejections[key] = None
                self._recent_rejections.move_to_end(key)
        while len(self._recent_rejections) > self.REPEAT_MEMORY:
            self._recent_rejections.popitem(last=False)

    def commit(self, groups: Sequence[tuple[Inbound, list[Fact]]], *,
               now_us: int) -> BatchResult:
        out = BatchResult()
        # A clock resends what was not acked (rejected punches are never acked): the same
        # bytes rejected for the same reason are already in quarantine, so a resend is
        # counted, not recorded again (bounded memory; after a restart, once more).
        groups = [(m, [f for f in fs if not self._repeat(f)]) for m, fs in groups]
        facts = [f for _, fs in groups for f in fs]
        try:
            t0 = time.perf_counter()
            results = self.store.append(facts, now_us=now_us)
            if self.monitor is not None:
                self.monitor.appended(time.perf_counter() - t0)
            out.committed = [m for m, _ in groups]
            out.results = results
            done = list(zip(facts, results, strict=True))
        except LedgerUnavailableError:
            out.pending = [m for m, _ in groups]    # the database is away, not these facts
            return out
        except Exception:
            log.exception("appending a batch of %d facts failed; retrying message by message",
                          len(facts))
            done = self._isolate(groups, out, now_us=now_us)
        self._remember([f for f, _ in done])
        self._after_commit(done, now_us=now_us)
        out.done = done
        out.receipts = receipts_for(out.results, self.log_key, now_us=now_us,
                                    landed=self._landed(done))
        if self.badge_outcomes is not None:
            out.badge_outcomes = self.badge_outcomes.for_batch(done, now_us=now_us)
        return out

    def observe(self, out: BatchResult, *, now_us: int) -> None:
        """Metrics and detectors over a committed batch (the monitor), once its receipts and
        PUBACKs are out: nothing a clock waits for waits for the monitor (Writer.step)."""
        if self.monitor is not None and (out.committed or out.done):
            self.monitor.committed([m.received_at for m in out.committed], out.done,
                                   now_us=now_us)

    def _landed(self, done: Sequence[tuple[Fact, AppendResult]]
                ) -> dict[tuple[str, int], tuple[str, int]]:
        """Receipts v2: where each ackable punch landed (hash and leaf of the recorded one)."""
        out: dict[tuple[str, int], tuple[str, int]] = {}
        for fact, r in done:
            if not isinstance(fact, PunchFact) or r.device is None or r.seq is None:
                continue
            if r.outcome in (Outcome.APPENDED, Outcome.DUPLICATE):
                out[(r.device, r.seq)] = (fact.signed.punch.hash(), r.idx)
            elif r.outcome is Outcome.CONFLICT and (lookup := getattr(
                    self.store, "punch_hash", None)) is not None:
                # the punch recorded for that seq, not the one just quarantined; a store
                # without the lookup gets a v1 receipt for that device
                found = lookup(r.device, r.seq)
                if found is not None:
                    out[(r.device, r.seq)] = (str(found[0]), int(found[1]))
        return out

    def _isolate(self, groups: Sequence[tuple[Inbound, list[Fact]]], out: BatchResult, *,
                 now_us: int) -> list[tuple[Fact, AppendResult]]:
        done: list[tuple[Fact, AppendResult]] = []
        for i, (msg, judged) in enumerate(groups):
            fs = judged
            try:
                rs = self.store.append(fs, now_us=now_us)
            except LedgerUnavailableError:
                out.pending = [m for m, _ in groups[i:]]
                return done
            except Exception as e:
                log.exception("appending the facts of a message on %s failed; quarantining "
                              "it as internal-error", msg.topic[:120])
                fs = [internal_error(msg, e)]
                try:
                    rs = self.store.append(fs, now_us=now_us)
                except Exception:
                    log.exception("the ledger store is unavailable; %d message(s) stay "
                                  "pending (not acknowledged)", len(groups) - i)
                    out.pending = [m for m, _ in groups[i:]]
                    return done
            out.committed.append(msg)
            out.results.extend(rs)
            done.extend(zip(fs, rs, strict=True))
        return done

    def _after_commit(self, done: Sequence[tuple[Fact, AppendResult]], *, now_us: int) -> None:
        appended: dict[str, list[int]] = {}
        outcomes: Counter[Outcome] = Counter()
        for fact, r in done:
            if isinstance(fact, RejectionFact) and fact.reason == "seq-loss":
                # A clock's signed loss report (protocol §13.11): the reason of a gap.
                self.alerts.alert("seq-loss", severity=SEVERITY_WARNING, device=fact.device,
                                  detail=f"{fact.detail[:300]} [idx {r.idx}]")
            elif isinstance(fact, RejectionFact):
                self.alerts.count(f"rejected:{fact.reason}")
                log.warning("quarantined (%s) from %s: %s [idx %d]", fact.reason,
                            fact.device or fact.topic[:120], fact.detail[:200], r.idx)
            elif isinstance(fact, PunchFact):
                p = fact.signed.punch
                outcomes[r.outcome] += 1
                if r.outcome is Outcome.CONFLICT:
                    self.alerts.alert(
                        "conflict", severity=SEVERITY_CRITICAL, device=p.device,
                        detail=f"seq {p.seq} arrived with another punch hash than the "
                               f"recorded one (cloned key or restored device?); quarantined "
                               f"at idx {r.idx}")
                elif r.outcome is Outcome.FORK:
                    # DESIGN.md §8.5 "Forks": quarantined by the store, never a punch entry.
                    self.alerts.alert(
                        "fork", severity=SEVERITY_CRITICAL, device=p.device,
                        detail=f"seq {p.seq} does not link to the recorded neighbouring "
                               f"punches (cloned key, or a clock that restarted its chain?); "
                               f"quarantined at idx {r.idx}, not appended, not acknowledged")
                elif r.outcome is Outcome.REJECTED:
                    # The registry changed between verification and the commit (revoked or
                    # rotated meanwhile): the store quarantined it under the chain lock.
                    log.warning("quarantined %s#%d at commit: its device or key is no longer "
                                "valid [idx %d]", p.device, p.seq, r.idx)
                elif r.outcome is Outcome.APPENDED:
                    appended.setdefault(p.device, []).append(p.seq)
                    if self.chain is not None:
                        self.chain.observe(p.device, p.seq, fact.signed.hash(), p.prev)
        for outcome, n in outcomes.items():   # one counter update per outcome and batch
            self.alerts.count(f"punch:{outcome.value}", n)
        if self.gaps is not None:
            for device, seqs in appended.items():
                self._track_gaps(device, seqs, now_us=now_us)

    def _track_gaps(self, device: str, seqs: list[int], *, now_us: int) -> None:
        # Cheap path: the device's seqs simply extend its known contiguous prefix.
        assert self.gaps is not None  # noqa: S101 - checked by the caller
        known = self._contiguous.get(device)
        s = sorted(seqs)
        if (known is not None and not self.gaps.open_gaps(device)
                and s == list(range(known + 1, known + 1 + len(s)))):
            self._contiguous[device] = s[-1]
            return
        progress = self.store.progress(device)
        self._contiguous[device] = progress.contiguous
        self.gaps.observe(device, progress.gaps, now_us=now_us)

    def report_gaps(self, *, now_us: int) -> None:
        if self.gaps is not None:
            self.gaps.report_due(now_us=now_us,
                                 refresh=lambda d: self.store.progress(d).gaps)


def load_seal(path: Path | None) -> SealKey | None:
    """The ``[collector] seal_key`` (X25519, 0600) that opens sealed envelopes, or None."""
    if path is None:
        return None
    try:
        return load_seal_key(path)
    except (WireError, OSError) as e:
        raise CollectorError(f"seal key: {e}") from e


def internal_error(msg: Inbound, e: BaseException) -> RejectionFact:
    try:
        device: str | None = device_of(msg.topic, "punches")
    except DecodeError:
        device = None
    return RejectionFact(reason="internal-error",
                         detail=f"{type(e).__name__}: {str(e)[:300]}", topic=msg.topic,
                         raw=bytes(msg.payload), received_at=msg.received_at, device=device)


class Publisher:
    """What the writer needs from the MQTT link (collector.service.mqtt.MqttLink implements it)."""

    def publish(self, topic: str, payload: bytes, *, qos: int = 1,
                retain: bool = False) -> None:
        raise NotImplementedError

    def ack(self, msg: Inbound) -> None:
        raise NotImplementedError


class Writer:
    """The single writer thread: batches the inbox into transactions, then receipts, PUBACKs.

    ``tick`` (if given) runs after every batch and on idle wake-ups (time-based checkpoints,
    gap reports). On ``stop`` the batch in flight is finished (commit, receipts, PUBACKs);
    messages still in the inbox are left unacknowledged for the broker to redeliver.

    With ``judge_ahead`` (the service's default) the next batch is collected and judged
    (steps 1-6: parsing and the Ed25519 checks, which release the GIL) on a helper thread
    while this one commits, publishes and runs the monitor: the store is still touched by
    this thread only. The registry snapshot the next batch is judged with is read here,
    before this batch's commit; when that batch's turn comes, the snapshot is read again
    (as without judging ahead: once a message is at hand) and, if it differs (an enrolment,
    rotation or revocation meanwhile), the batch is judged again with the new one, so no
    punch is judged against an outdated registry. (A change committed by another process
    during the commit itself is caught by the store's own check under the chain lock,
    ``Outcome.REJECTED``, as always.) Messages judged ahead are PUBACKed only after their
    own commit; if the store is away they join the pending ones.

    On a keyed ledger the judging also plans each punch's sealing (``SealPlan``: its blind
    index tag and the data-key subject its badge resolves to) from a snapshot of the people
    directory read here with the registry's (``Ingestor.planner``). That snapshot is not
    re-read before the commit: the store itself compares the directory version a plan was
    made against with the one in its transaction, under the chain lock, and resolves the
    punches of a stale plan again (a badge entry or erasure committed meanwhile by anyone,
    including this batch), so no punch is sealed against an outdated directory.
    """

    def __init__(self, ingestor: Ingestor, inbox: queue.Queue[Inbound], link: Publisher, *,
                 batch_max: int = 2000, batch_wait_ms: int = 50,
                 clock: Callable[[], int] = now_us,
                 tick: Callable[[int, int], None] | None = None,
                 idle_wake_s: float = 0.5, retry_s: float = 1.0,
                 judge_ahead: bool = False) -> None:
        self.ingestor = ingestor
        self.inbox = inbox
        self.link = link
        self.batch_max = batch_max
        self.batch_wait_s = batch_wait_ms / 1000
        self.clock = clock
        self.tick = tick
        self.idle_wake_s = idle_wake_s
        self.retry_s = retry_s
        self.batches = 0
        self._pending: list[Inbound] = []
        self._ahead_pool = (ThreadPoolExecutor(max_workers=1, thread_name_prefix="judge-ahead")
                            if judge_ahead else None)
        self._ahead: tuple[RegistryView, PunchPlanner | None,
                           Future[list[tuple[Inbound, list[Fact]]]]] | None = None

    @property
    def pending(self) -> int:
        """Messages held for a retry (the batch the store could not take)."""
        return len(self._pending)

    def run(self, stop: threading.Event) -> None:
        try:
            while not stop.is_set():
                try:
                    self.step(stop)
                except Exception:  # top of the long-running loop: log and go on
                    log.exception("ingest writer step failed")
                    stop.wait(self.retry_s)
        finally:
            self.close()

    def close(self) -> None:
        """End the judge-ahead helper; what it collected stays unacknowledged (the broker
        redelivers it to the next session)."""
        if self._ahead_pool is not None:
            self._ahead_pool.shutdown(wait=True, cancel_futures=True)

    def _collect(self, first: list[Inbound], registry: RegistryView,
                 planner: PunchPlanner | None) -> list[tuple[Inbound, list[Fact]]]:
        """Judge ``first`` and what arrives within ``batch_wait_ms``, up to ``batch_max``
        facts."""
        groups: list[tuple[Inbound, list[Fact]]] = []
        nfacts = 0
        for m in first:
            fs = self.ingestor.judge(m, registry, planner)
            groups.append((m, fs))
            nfacts += len(fs)
        deadline = time.monotonic() + self.batch_wait_s
        while nfacts < self.batch_max:
            left = deadline - time.monotonic()
            try:
                m = self.inbox.get(timeout=left) if left > 0 else self.inbox.get_nowait()
            except queue.Empty:
                break
            fs = self.ingestor.judge(m, registry, planner)
            groups.append((m, fs))
            nfacts += len(fs)
        return groups

    def _judge_ahead(self, registry: RegistryView, planner: PunchPlanner | None,
                     stop: threading.Event) -> list[tuple[Inbound, list[Fact]]]:
        """Helper thread: the next batch, as :meth:`step` would collect it."""
        deadline = time.monotonic() + self.idle_wake_s
        while not stop.is_set():
            try:
                first = self.inbox.get(timeout=max(min(deadline - time.monotonic(), 0.1), 0))
            except queue.Empty:
                if time.monotonic() >= deadline:
                    return []
                continue
            return self._collect([first], registry, planner)
        return []

    def _take_ahead(self) -> tuple[list[tuple[Inbound, list[Fact]]], RegistryView | None]:
        """What the helper judged, and the registry snapshot it judged with."""
        ahead, self._ahead = self._ahead, None
        if ahead is None:
            return [], None
        registry, _, fut = ahead
        try:
            return fut.result(), registry
        except Exception:  # judge never raises: a bug of the helper itself
            log.exception("judging ahead failed")
            return [], None

    def _next(self) -> list[tuple[Inbound, list[Fact]]]:
        """The next batch, judged: what was judged ahead, else the pending messages or the
        inbox's (waiting up to ``idle_wake_s``); empty if nothing arrived."""
        if self._ahead is not None:
            groups, judged_with = self._take_ahead()
            if not groups:
                return []
            try:
                registry = self.ingestor.registry()
            except Exception:
                self._pending = [m for m, _ in groups]
                raise
            if registry == judged_with:
                return groups
            # the registry changed since (an enrolment, rotation or revocation): judge these
            # again with the snapshot of now, as if nothing had been judged ahead
            planner = self.ingestor.planner()
            return [(m, self.ingestor.judge(m, registry, planner)) for m, _ in groups]
        first: list[Inbound] = self._pending
        self._pending = []
        if not first:
            try:
                first = [self.inbox.get(timeout=self.idle_wake_s)]
            except queue.Empty:
                return []
        # One registry snapshot per batch, read once a message is at hand, so a revocation
        # committed before this batch applies to all of it.
        try:
            registry, planner = self.ingestor.registry(), self.ingestor.planner()
        except Exception:
            self._pending = first       # e.g. the database is away: keep them for the retry
            raise
        return self._collect(first, registry, planner)

    def step(self, stop: threading.Event) -> int:
        """Collect one batch and process it; returns the number of messages handled."""
        groups = self._next()
        if not groups:
            self._tick(0)
            return 0
        if self._ahead_pool is not None and not stop.is_set():
            try:
                # read before this batch's commit, by this thread (it owns the store)
                ahead, planner = self.ingestor.registry(), self.ingestor.planner()
            except Exception:  # the database is away: the commit below will say so
                log.debug("no registry snapshot for judging ahead", exc_info=True)
            else:
                self._ahead = (ahead, planner, self._ahead_pool.submit(
                    self._judge_ahead, ahead, planner, stop))
        res = self.ingestor.commit(groups, now_us=self.clock())
        self.batches += 1
        for topic, receipt in res.receipts:
            self.link.publish(topic, receipt.to_bytes(), qos=1)
        for topic, payload in res.badge_outcomes:
            self.link.publish(topic, payload, qos=1)
        for m in res.committed:
            self.link.ack(m)
        self.ingestor.observe(res, now_us=self.clock())
        if res.pending:
            # the judged-ahead messages wait behind these, to be judged again
            self._pending = res.pending + [m for m, _ in self._take_ahead()[0]]
            stop.wait(self.retry_s)
        self._tick(len(res.committed))
        return len(res.committed)

    def _tick(self, handled: int) -> None:
        if self.tick is not None:
            try:
                self.tick(self.clock(), handled)
            except Exception:
                log.exception("periodic ingest work failed")
