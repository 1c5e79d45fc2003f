"""The agent's MQTT publisher (DESIGN.md §4): outbox → mTLS broker → signed receipts → delete.

Threads: paho's network thread (``loop_start``) does socket I/O and hands received receipts to
the *sender* thread, which does everything else: it reads :meth:`Outbox.pending`, publishes
envelopes (QoS 1), verifies receipts and deletes what they ack. The sender wakes on
:meth:`Publisher.notify_new` (a punch was committed), on a receipt, on (re)connect, or on a timer.

Invariants:
- A row leaves the outbox only through :meth:`Outbox.delete_acked`, and only for seqs that (1)
  a receipt whose signature verifies under the log public key acks, (2) for this device, and
  (3) that this process published and still awaits. Anything else in a receipt is counted and
  ignored: a compromised broker cannot make the clock delete a punch that never reached the
  ledger.
- Every committed punch is published until a receipt covers it: new rows go out in seq order
  from a cursor; an envelope with no receipt after ``resend_after_s`` (monotonic clock) is
  published again, and a sweep re-publishes any pending row below the cursor that is neither
  awaited nor acked. Delivery is at-least-once; the ledger is idempotent on (device, seq).
- At most ``window_punches`` punches await receipts at once, so a backlog drains in a steady
  flow of batches (≤ ``batch_max`` punches, ≤ 256 KiB) instead of flooding the broker.
- Credentials never appear in a log line: logs name seqs and counts only.
- With the bundle's seal key (``[keys] seal_public_key``) every punch envelope is sealed to the
  ledger (wire.sealed, DESIGN.md §8.6) before it reaches paho, so neither the broker nor its
  persistence file holds a credential; without it the clock publishes plain §4 envelopes.
- The retained status is a :class:`wire.device_status.DeviceStatus` (the collector parses the
  same type); it is republished at once when the service says the health changed
  (:meth:`Publisher.publish_status_soon`, e.g. storage became full).
- Witnessing (DESIGN.md §8.3, agent.witness): with a :class:`ClockWitness`, the publisher also
  subscribes to its own ``checkpoint`` topic, hands each request to the witness on the sender
  thread and publishes the answer (cosignature, conflict or signed refusal) on its own
  ``cosignature`` topic; a change of the witness state republishes the retained status.
- The clock's certificate is named (agent.certstate): checked at construction and, after a
  failed connection, by the sender thread (at most every ``diagnose_every_s``: the handshake
  error paho saw, else one probe handshake that sends nothing). A blocking state is left only
  for another blocking state or by a successful connection. A change of state is logged
  once (then at most every :data:`_CERT_LOG_EVERY_S`), republished in the status, and handed to
  ``on_cert_state`` (the per-outcome feedback).
- Feedback hooks (agent.service, agent.feedback): ``on_receipted(seqs)`` after a verified
  receipt deleted those rows (the clock's "recorded"), and :meth:`Publisher.listen` subscribes
  one more of the device's own topics whose messages go to a handler (the badge outcomes);
  handlers run on paho's thread and must be cheap and never raise.
- :meth:`Publisher.threads` names both threads (sender and paho's network loop) so the service
  supervises them: if either dies the watchdog stops and systemd restarts the agent.
"""

from __future__ import annotations

import bisect
import dataclasses
import datetime as dt
import hashlib
import logging
import random
import sys
import threading
import time
from collections import deque
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol, cast

import paho.mqtt.client as mqtt
from paho.mqtt.enums import CallbackAPIVersion
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties
from paho.mqtt.reasoncodes import ReasonCode

from agent import certstate
from agent.certstate import CertProblem
from agent.clock import clock_state
from agent.errors import AgentError, QueueFullError
from agent.inclusion import InclusionChecker, inclusion_path
from agent.remote_config import RemoteConfig, restart_self
from agent.witness import ClockWitness, witness_path
from wire import device_status, topics
from wire import inclusion as inclusion_msgs
from wire import witness as witness_msgs
from wire.ack import Ranges, SignedAck
from wire.clock import to_us
from wire.device_status import DeviceStatus, QueueStatus, StorageStatus, WitnessStatus
from wire.errors import WireError
from wire.keys import VerifyKey
from wire.punch import MAX_ENVELOPE_BYTES, MAX_ENVELOPE_PUNCHES, Envelope, SignedPunch
from wire.sealed import SealedEnvelope, SealPublicKey
from wire.tls import client_context

if TYPE_CHECKING:
    from agent.config import AgentConfig

log = logging.getLogger(__name__)

STATUS_VERSION = device_status.STATUS_VERSION
# While the disk is full, a failed delete of receipted rows is logged at most this often.
_FULL_LOG_EVERY_S = 60.0
# Bytes of signed punches asked from the outbox per envelope: the envelope adds ~60 bytes of
# header and one comma per punch, so 250,000 + 500 + 60 stays under the 256 KiB broker limit.
_PENDING_MAX_BYTES = 250_000
# Pending rows looked at by each sweep for orphans (rows below the cursor nobody awaits).
_SWEEP_ROWS = 64
# A certificate state that does not change is logged again at most this often.
_CERT_LOG_EVERY_S = 600.0


class PublisherError(AgentError):
    """The publisher could not be set up (TLS files, settings)."""


class OutboxLike(Protocol):
    """The part of :class:`agent.queue.Outbox` the publisher uses (thread-safe)."""

    def pending(self, *, limit: int = 500, max_bytes: int = 250_000,
                after_seq: int = 0) -> list[SignedPunch]: ...
    def delete_acked(self, seqs: list[int]) -> int: ...
    def depth(self) -> int: ...
    def oldest_created_us(self) -> int | None: ...


@dataclass(frozen=True, slots=True)
class PublisherSettings:
    """Broker endpoint, TLS files and delivery tuning (units in names)."""

    host: str
    port: int
    ca_file: Path
    cert_file: Path
    key_file: Path
    keepalive_s: int = 60
    connect_timeout_s: float = 10.0
    session_expiry_s: int = 7 * 86400     # the broker keeps our acks while we are away
    batch_max: int = 500                  # punches per envelope (1-500, DESIGN.md §4)
    window_punches: int = 10_000          # punches published and awaiting a receipt
    max_inflight_messages: int = 100      # paho's QoS 1 window (it scans it on every PUBACK)
    resend_after_s: float = 30.0          # republish an envelope with no receipt after this
    reconnect_min_s: float = 1.0
    reconnect_max_s: float = 60.0
    poll_interval_s: float = 5.0          # sender wakes at least this often
    status_interval_s: float = 60.0       # republish the retained status this often
    cert_warn_days: int = 30              # certificate "expiring" this long before notAfter
    diagnose_every_s: float = 30.0        # at most one certificate diagnosis this often
    version: str = "0.1.0"

    def __post_init__(self) -> None:
        problems = []
        if not 1 <= self.batch_max <= MAX_ENVELOPE_PUNCHES:
            problems.append(f"batch_max must be 1-{MAX_ENVELOPE_PUNCHES}, got {self.batch_max}")
        if self.window_punches < self.batch_max:
            problems.append("window_punches must be ≥ batch_max")
        if self.resend_after_s <= 0 or self.poll_interval_s <= 0:
            problems.append("resend_after_s and poll_interval_s must be > 0")
        if not 0 < self.reconnect_min_s <= self.reconnect_max_s:
            problems.append("need 0 < reconnect_min_s ≤ reconnect_max_s")
        if not 0 < self.port < 65536:
            problems.append(f"port {self.port} is not a TCP port")
        if problems:
            raise PublisherError("invalid publisher settings: " + "; ".join(problems))


StatusFn = Callable[[], Mapping[str, Any]]
"""The service's status snapshot; the publisher reads its ``clock``, ``readers``, ``version``
and ``storage`` (a :class:`StorageStatus` dict) for the retained MQTT status (queue figures come
from the outbox itself)."""


@dataclass(frozen=True, slots=True)
class PublisherStats:
    connected: bool
    connects: int
    connect_failures: int               # TCP/TLS/CONNACK failures (TLS refusals included)
    disconnects: int
    last_receipt_at: float | None       # wall clock (``now()``) of the last valid receipt
    sent_messages: int
    sent_punches: int                   # includes resends
    resent_punches: int
    receipts: int                       # valid receipts for this device
    receipted: int                      # rows deleted from the outbox because of receipts
    bad_receipts: int                   # malformed, or signature/log key does not verify
    foreign_receipts: int               # valid signature but another device
    unsent_acks: int                    # seqs acked that this process never published
    duplicate_acks: int                 # seqs acked again after their rows were deleted
    awaiting: int                       # punches published, awaiting a receipt
    cursor: int                         # highest seq published by this process


@dataclass(slots=True)
class _Batch:
    seqs: set[int]
    sent_at: float                      # monotonic
    hashes: dict[int, str] = field(default_factory=dict)   # seq -> punch hash sent
    bodies: dict[int, str] = field(default_factory=dict)   # seq -> SHA-256 of the signed punch


def backoff_delay(attempt: int, min_s: float, max_s: float, rng: random.Random) -> float:
    """Exponential backoff with "equal jitter": half fixed, half random, capped at ``max_s``.

    A fleet that lost its broker at one instant spreads its reconnects over time instead of
    arriving in one burst (attempt counts from 1).
    """
    base: float = min(max_s, min_s * (2 ** min(max(attempt - 1, 0), 30)))
    jitter: float = rng.uniform(0, base / 2)
    return base / 2 + jitter


def _covered(ranges: Ranges, starts: list[int], seq: int) -> bool:
    i = bisect.bisect_right(starts, seq) - 1
    return i >= 0 and ranges[i][0] <= seq <= ranges[i][1]


class Publisher:
    """Publishes an outbox's punches and deletes them on verified receipts.

    ``now`` is the wall clock (status timestamps, ``last_receipt_at``); ``monotonic`` times
    resends, so a clock step after NTP sync never delays or floods them.
    """

    def __init__(self, outbox: OutboxLike, device: str, *, log_key: VerifyKey,
                 settings: PublisherSettings, status: StatusFn | None = None,
                 now: Callable[[], float] = time.time,
                 monotonic: Callable[[], float] = time.monotonic,
                 witness: ClockWitness | None = None,
                 inclusion: InclusionChecker | None = None,
                 on_cert_state: Callable[[CertProblem], None] | None = None,
                 seal_key: SealPublicKey | None = None,
                 remote_config: RemoteConfig | None = None,
                 on_config_applied: Callable[[], None] = restart_self) -> None:
        self._outbox = outbox
        self.device = device
        self._log_key = log_key
        self._seal_key = seal_key      # the bundle's: envelopes sealed (wire.sealed, §8.6)
        self._s = settings
        self._status = status if status is not None else self._default_status
        self._now = now
        self._mono = monotonic
        self._rng = random.SystemRandom()
        self._punch_topic = topics.punches(device)
        self._ack_topic = topics.acks(device)
        self._status_topic = topics.status(device)
        self._witness = witness
        self._checkpoint_topic = witness_msgs.checkpoint_topic(device)
        self._cosignature_topic = witness_msgs.cosignature_topic(device)
        self._checkpoints: deque[bytes] = deque(maxlen=16)   # newest requests win
        # Inclusion checks of our own punches (agent.inclusion): only with a witness, whose
        # verified checkpoint the proofs are checked against.
        self._inclusion = inclusion if witness is not None else None
        self._inclusion_request_topic = inclusion_msgs.request_topic(device)
        self._inclusion_answer_topic = inclusion_msgs.answer_topic(device)
        self._inclusion_answers: deque[bytes] = deque(maxlen=64)
        self._next_inclusion = 0.0
        # Signed configuration changes (agent.remote_config): judged on the sender thread,
        # answered on config-result; an applied one restarts the agent (on_config_applied).
        self._remote_config, self._on_config_applied = remote_config, on_config_applied
        self._config_topic, self._config_result_topic = (topics.config(device),
                                                         topics.config_result(device))
        self._config_changes: deque[bytes] = deque(maxlen=8)
        # Signed loss reports (wire.seqloss) to publish on the punches topic, and those sent
        # whose PUBACK has not come yet: (payload, on_delivered, message info).
        self._losses: list[tuple[bytes, Callable[[], None]]] = []
        self._losses_sent: list[tuple[bytes, Callable[[], None], Any]] = []

        self._lock = threading.Lock()          # counters and the receipt inbox
        self._wake = threading.Event()
        self._stopping = threading.Event()
        self._receipts: deque[bytes] = deque()
        self._connected = False
        self._reconnected = False              # set by on_connect, consumed by the sender
        self._session_lost = False
        self._attempt = 0
        self._connack_refused = False
        self._sender: threading.Thread | None = None
        self._network: threading.Thread | None = None
        self._status_due = False               # publish_status_soon() was called
        self._next_full_log = 0.0
        self._c: dict[str, int] = dict.fromkeys(
            ("connects", "connect_failures", "disconnects", "sent_messages", "sent_punches",
             "resent_punches", "receipts", "receipted", "bad_receipts", "foreign_receipts",
             "unsent_acks", "duplicate_acks", "foreign_punch_acks"), 0)
        self._last_receipt_at: float | None = None

        # Sender-thread state (no lock: only the sender touches it).
        self._cursor = 0
        self._batches: dict[int, _Batch] = {}  # insertion order = publish order
        self._owner: dict[int, int] = {}       # seq -> batch id
        self._next_batch = 0
        self._next_status = 0.0
        self._next_sweep = 0.0

        self._client = self._make_client()
        self._init_cert_state(on_cert_state)

    def _init_cert_state(self, on_cert_state: Callable[[CertProblem], None] | None) -> None:
        # The certificate state (agent.certstate), written by the sender thread; the other
        # feedback hooks (set_feedback, listen) live beside it.
        self._on_cert_state = on_cert_state
        self._listeners: dict[str, Callable[[bytes], None]] = {}
        self._on_receipted: Callable[[Sequence[int]], None] | None = None
        self._cert = CertProblem("ok", "certificate valid")
        self._cert_since: float | None = None
        self._cert_logged = float("-inf")
        self._tls_error: BaseException | None = None   # set by on_connect_fail
        self._diagnose_due = False
        self._next_diagnose = 0.0
        self.cert_diagnoses = 0      # diagnoses after failed connections (sender thread)
        self._set_cert(self._check_local())

    # --- setup ------------------------------------------------------------------------------

    def _make_client(self) -> mqtt.Client:
        s = self._s
        try:
            ctx = client_context(s.ca_file, s.cert_file, s.key_file)
        except WireError as e:
            raise PublisherError(f"MQTT TLS setup failed: {e}") from e
        c = mqtt.Client(CallbackAPIVersion.VERSION2, client_id=self.device,
                        protocol=mqtt.MQTTv5)
        c.tls_set_context(ctx)
        c.connect_timeout = s.connect_timeout_s
        c.max_inflight_messages_set(s.max_inflight_messages)
        c.max_queued_messages_set(0)           # unbounded: the window bounds what we queue
        self._set_reconnect_delay(c, s.reconnect_min_s)
        c.will_set(self._status_topic, self._offline_payload("connection-lost"), qos=1,
                   retain=True)
        c.on_connect = self._on_connect
        c.on_connect_fail = self._on_connect_fail
        c.on_disconnect = self._on_disconnect
        c.on_message = self._on_message
        return c

    @staticmethod
    def _set_reconnect_delay(c: mqtt.Client, delay_s: float) -> None:
        # paho doubles its delay up to max; min == max == our jittered delay makes paho wait
        # exactly that long. paho annotates int seconds but uses them as float.
        setter = cast(Callable[[float, float], None], c.reconnect_delay_set)
        setter(delay_s, delay_s)

    # --- lifecycle --------------------------------------------------------------------------

    def start(self) -> None:
        """Connect in the background (retrying with backoff) and start the sender thread."""
        if self._sender is not None:
            raise PublisherError("publisher already started")
        props = Properties(PacketTypes.CONNECT)  # type: ignore[no-untyped-call]
        props.SessionExpiryInterval = self._s.session_expiry_s
        self._client.connect_async(self._s.host, self._s.port, keepalive=self._s.keepalive_s,
                                   clean_start=False, properties=props)
        self._client.loop_start()
        # paho keeps its loop thread in a private attribute; holding our own reference lets
        # the service see it die (it once did, unnoticed, while the sender looked fine).
        net = getattr(self._client, "_thread", None)
        self._network = net if isinstance(net, threading.Thread) else None
        if self._network is None:
            log.warning("paho's network thread is not visible; only the sender is supervised")
        self._sender = threading.Thread(target=self._sender_main,
                                        name=f"publisher-{self.device}", daemon=True)
        self._sender.start()

    def stop(self, timeout: float = 5.0) -> None:
        """Stop sending, publish a retained "offline" status if connected, disconnect."""
        self._stopping.set()
        self._wake.set()
        if self._sender is not None:
            self._sender.join(timeout)
        if self._connected:
            try:
                info = self._client.publish(self._status_topic,
                                            self._status_payload("offline", "stopped"),
                                            qos=1, retain=True)
                info.wait_for_publish(timeout)
            except (RuntimeError, ValueError, AgentError, WireError) as e:
                log.warning("could not publish offline status: %s", e)
        self._client.disconnect()
        self._client.loop_stop()

    def notify_new(self) -> None:
        """A punch was committed: wake the sender (cheap; call from any thread)."""
        self._wake.set()

    wake = notify_new

    def publish_status_soon(self) -> None:
        """The agent's health changed (storage full or writable again): republish the retained
        status at the sender's next step instead of at the next status interval."""
        with self._lock:
            self._status_due = True
        self._wake.set()

    def threads(self) -> list[threading.Thread]:
        """The threads this publisher runs (sender, paho network loop) once started."""
        return [t for t in (self._sender, self._network) if t is not None]

    def healthy(self) -> bool:
        """Sender and network loops run (disconnected and retrying with backoff is healthy)."""
        return (self._sender is not None and not self._stopping.is_set()
                and all(t.is_alive() for t in self.threads()))

    def state(self) -> dict[str, Any]:
        """For the service's status: connection state, a one-line detail, receipt figures."""
        st = self.stats()
        with self._lock:
            cert, since = self._cert, self._cert_since
        if self._stopping.is_set() or self._sender is None:
            status = "stopped"
        else:
            status = "connected" if st.connected else "connecting"
        return {
            "status": status,
            "detail": (f"{self._s.host}:{self._s.port}; {st.awaiting} awaiting receipt; "
                       f"{st.receipted} receipted, {st.bad_receipts + st.foreign_receipts} "
                       f"receipts ignored"),
            "last_receipt_us": (None if st.last_receipt_at is None
                                else to_us(st.last_receipt_at)),
            "awaiting": st.awaiting, "receipted": st.receipted,
            "bad_receipts": st.bad_receipts, "foreign_receipts": st.foreign_receipts,
            "unsent_acks": st.unsent_acks, "resent_punches": st.resent_punches,
            "foreign_punch_acks": self._c["foreign_punch_acks"],
            "witness": None if self._witness is None else self.witness_status().to_dict(),
            "certificate": {"state": cert.state, "detail": cert.message,
                            "since_us": None if since is None else to_us(since)},
        }

    def stats(self) -> PublisherStats:
        with self._lock:
            c = dict(self._c)
            last = self._last_receipt_at
            connected = self._connected
        return PublisherStats(
            connected=connected, connects=c["connects"],
            connect_failures=c["connect_failures"], disconnects=c["disconnects"],
            last_receipt_at=last, sent_messages=c["sent_messages"],
            sent_punches=c["sent_punches"], resent_punches=c["resent_punches"],
            receipts=c["receipts"], receipted=c["receipted"], bad_receipts=c["bad_receipts"],
            foreign_receipts=c["foreign_receipts"], unsent_acks=c["unsent_acks"],
            duplicate_acks=c["duplicate_acks"], awaiting=len(self._owner), cursor=self._cursor)

    def _count(self, name: str, n: int = 1) -> None:
        with self._lock:
            self._c[name] += n

    # --- paho callbacks (network thread) ----------------------------------------------------

    def _on_connect(self, client: mqtt.Client, _userdata: Any, flags: mqtt.ConnectFlags,
                    reason: ReasonCode, _props: Properties | None) -> None:
        if reason.is_failure:
            with self._lock:
                self._c["connect_failures"] += 1
                self._connack_refused = True     # the disconnect that follows is not counted
            log.warning("broker refused connection: %s", reason)
            return
        client.subscribe(self._ack_topic, qos=1)
        if self._witness is not None:
            client.subscribe(self._checkpoint_topic, qos=1)
        if self._inclusion is not None:
            client.subscribe(self._inclusion_answer_topic, qos=1)
        if self._remote_config is not None:
            client.subscribe(self._config_topic, qos=1)
        for topic in self._listeners:
            client.subscribe(topic, qos=1)
        with self._lock:
            self._connected = True
            self._reconnected = True
            self._session_lost = not flags.session_present
            self._c["connects"] += 1
            self._attempt = 0
            self._diagnose_due = False
            self._tls_error = None
        self._set_reconnect_delay(client, self._s.reconnect_min_s)
        log.info("connected to %s:%d (session %s)", self._s.host, self._s.port,
                 "resumed" if flags.session_present else "new")
        self._wake.set()

    def _next_backoff(self, client: mqtt.Client) -> float:
        with self._lock:
            self._attempt += 1
            attempt = self._attempt
        delay = backoff_delay(attempt, self._s.reconnect_min_s, self._s.reconnect_max_s,
                              self._rng)
        self._set_reconnect_delay(client, delay)
        return delay

    def _on_connect_fail(self, client: mqtt.Client, _userdata: Any) -> None:
        # paho calls this inside its ``except OSError``: the exception is the handshake's
        err = sys.exc_info()[1]
        with self._lock:
            self._c["connect_failures"] += 1
            self._tls_error = err
            self._diagnose_due = True
            cert = self._cert
        self._wake.set()
        delay = self._next_backoff(client)
        # While the certificate is the known cause, its own line says so (rate-limited).
        log.log(logging.DEBUG if cert.blocking else logging.WARNING,
                "cannot reach broker %s:%d; retrying in %.1f s", self._s.host, self._s.port,
                delay)

    def _on_disconnect(self, client: mqtt.Client, _userdata: Any,
                       _flags: mqtt.DisconnectFlags, reason: ReasonCode,
                       _props: Properties | None) -> None:
        with self._lock:
            was = self._connected
            self._connected = False
            if was:
                self._c["disconnects"] += 1
            else:
                # Lost before CONNACK: with TLS 1.3 a refused certificate ends here (the
                # broker's alert comes after our side of the handshake is done).
                if not self._connack_refused:
                    self._c["connect_failures"] += 1
                self._diagnose_due = True
            self._connack_refused = False
            cert = self._cert
        self._wake.set()
        if self._stopping.is_set():
            return
        delay = self._next_backoff(client)
        log.log(logging.DEBUG if cert.blocking and not was else logging.WARNING,
                "disconnected from broker (%s); reconnecting in %.1f s", reason, delay)

    def _on_message(self, _client: mqtt.Client, _userdata: Any,
                    msg: mqtt.MQTTMessage) -> None:
        if msg.topic == self._checkpoint_topic and self._witness is not None:
            with self._lock:
                self._checkpoints.append(bytes(msg.payload))
            self._wake.set()
            return
        if msg.topic == self._inclusion_answer_topic and self._inclusion is not None:
            with self._lock:
                self._inclusion_answers.append(bytes(msg.payload))
            self._wake.set()
            return
        if msg.topic == self._config_topic and self._remote_config is not None:
            with self._lock:
                self._config_changes.append(bytes(msg.payload))
            self._wake.set()
            return
        if (handler := self._listeners.get(msg.topic)) is not None:
            try:
                handler(bytes(msg.payload))
            except Exception:
                log.exception("handling a message on %s failed", msg.topic)
            return
        if msg.topic != self._ack_topic:
            return
        with self._lock:
            self._receipts.append(bytes(msg.payload))
        self._wake.set()

    # --- sender thread ----------------------------------------------------------------------

    def _sender_main(self) -> None:
        while not self._stopping.is_set():
            try:
                self._step()
            except QueueFullError as e:
                # Receipted rows cannot be deleted while the disk is full; they stay queued,
                # are published again and deleted by a later receipt.
                if self._mono() >= self._next_full_log:
                    self._next_full_log = self._mono() + _FULL_LOG_EVERY_S
                    log.warning("publisher: %s; receipted rows stay queued until space is "
                                "freed", e)
                self._stopping.wait(1.0)
            except Exception:
                # Top of a long-running loop: log with the traceback and keep going; a
                # transient queue error must not stop delivery for good.
                log.exception("publisher step failed")
                self._stopping.wait(1.0)
            self._wake.wait(self._sleep_for())
            self._wake.clear()

    def _sleep_for(self) -> float:
        t = self._s.poll_interval_s
        # Disconnected, nothing can be resent: on_connect wakes us.
        if self._batches and self._connected:
            oldest = next(iter(self._batches.values()))
            t = min(t, max(0.0, oldest.sent_at + self._s.resend_after_s - self._mono()))
        return max(t, 0.005)

    def _step(self) -> None:
        self._process_receipts()
        with self._lock:
            connected = self._connected
            reconnected, self._reconnected = self._reconnected, False
            session_lost, self._session_lost = self._session_lost, False
            status_due, self._status_due = self._status_due, False
        if self._stopping.is_set():
            return
        if not connected:
            self._maybe_diagnose()
            return
        mono = self._mono()
        if reconnected:
            self._set_cert(self._check_local())
            self._next_status = 0.0
            if session_lost:
                # The broker forgot our session: receipts sent while we were away are gone.
                # Expire everything awaited so it goes out again now.
                for b in self._batches.values():
                    b.sent_at = float("-inf")
        if self._process_checkpoints():
            status_due = True
        if self._process_inclusion(mono):
            status_due = True
        self._process_config()
        if status_due or mono >= self._next_status:
            self._publish_status()
            self._next_status = mono + self._s.status_interval_s
        self._send_losses(reconnected)
        self._resend_expired(mono)
        if mono >= self._next_sweep:
            self._sweep()
            self._next_sweep = mono + min(self._s.resend_after_s, self._s.poll_interval_s)
        self._send_new()

    def _process_config(self) -> None:
        """Answer each configuration change received (agent.remote_config); after one was
        applied, wait for the broker to take the answer, then restart."""
        rc = self._remote_config
        while rc is not None:
            with self._lock:
                if not self._config_changes:
                    return
                payload = self._config_changes.popleft()
            outcome = rc.handle(payload)
            info = self._client.publish(self._config_result_topic, outcome.result.to_bytes(),
                                        qos=1, retain=True)
            if outcome.applied:
                try:
                    info.wait_for_publish(timeout=10.0)
                except (RuntimeError, ValueError) as e:
                    # The retained change is redelivered after the restart and answered
                    # again ("already applied"): the answer is not lost for good.
                    log.warning("configuration result not acknowledged before restart: %s", e)
                self._on_config_applied()
                return

    def send_loss_reports(self, reports: Sequence[tuple[bytes, Callable[[], None]]]) -> None:
        """Publish these signed loss reports (wire.seqloss) on the punches topic, QoS 1, before
        new punches; call each one's ``on_delivered()`` once the broker acknowledged it (it is
        published again after a reconnect until then)."""
        with self._lock:
            self._losses.extend(reports)
        self._wake.set()

    def _send_losses(self, reconnected: bool) -> None:
        with self._lock:
            todo, self._losses = self._losses, []
        if reconnected:
            todo += [(p, cb) for p, cb, _ in self._losses_sent]
            self._losses_sent = []
        for payload, cb in todo:
            info = self._client.publish(self._punch_topic, payload, qos=1)
            self._losses_sent.append((payload, cb, info))
            log.warning("published the clock's loss report to the collector (%d bytes)",
                        len(payload))
        still: list[tuple[bytes, Callable[[], None], Any]] = []
        for payload, cb, info in self._losses_sent:
            if info.is_published():
                try:
                    cb()
                except Exception:
                    log.exception("loss report delivered, but noting it failed")
            else:
                still.append((payload, cb, info))
        self._losses_sent = still

    def _send_new(self) -> None:
        while not self._stopping.is_set() and self._connected:
            room = self._s.window_punches - len(self._owner)
            if room <= 0:
                return
            rows = self._outbox.pending(limit=min(self._s.batch_max, room),
                                        max_bytes=_PENDING_MAX_BYTES, after_seq=self._cursor)
            if not rows:
                return
            self._publish(rows, resend=False)
            self._cursor = max(self._cursor, rows[-1].punch.seq)
            # Receipts for earlier batches free room in the window while we send.
            if self._receipts:
                self._process_receipts()

    def _resend_expired(self, mono: float) -> None:
        due = self._s.resend_after_s
        while self._batches:
            bid, batch = next(iter(self._batches.items()))
            if batch.sent_at + due > mono:
                return
            del self._batches[bid]
            for s in batch.seqs:
                del self._owner[s]
            lo, hi = min(batch.seqs), max(batch.seqs)
            # A batch was a run of consecutive pending rows; the rows left of it are a subset.
            rows = [r for r in self._outbox.pending(limit=MAX_ENVELOPE_PUNCHES,
                                                    max_bytes=_PENDING_MAX_BYTES,
                                                    after_seq=lo - 1)
                    if r.punch.seq <= hi and r.punch.seq in batch.seqs]
            if rows:
                log.info("no receipt for seqs %d-%d after %.0f s; publishing %d again",
                         lo, hi, due, len(rows))
                self._publish(rows, resend=True)

    def _sweep(self) -> None:
        """Re-publish pending rows below the cursor that nobody awaits (e.g. a failed delete,
        or a row committed out of order): every committed punch must reach a receipt."""
        rows = [r for r in self._outbox.pending(limit=_SWEEP_ROWS, max_bytes=_PENDING_MAX_BYTES)
                if r.punch.seq <= self._cursor and r.punch.seq not in self._owner]
        if rows:
            log.info("publishing %d pending row(s) below the cursor again", len(rows))
            self._publish(rows, resend=True)

    def _publish(self, rows: list[SignedPunch], *, resend: bool) -> None:
        envelope = Envelope(self.device, tuple(rows))
        payload = (envelope.to_bytes() if self._seal_key is None
                   else SealedEnvelope.seal(envelope, self._seal_key).to_bytes())
        if len(payload) > MAX_ENVELOPE_BYTES and len(rows) > 1:
            half = len(rows) // 2
            self._publish(rows[:half], resend=resend)
            self._publish(rows[half:], resend=resend)
            return
        bid = self._next_batch
        self._next_batch += 1
        seqs = {r.punch.seq for r in rows}
        self._batches[bid] = _Batch(seqs, self._mono(),
                                    {r.punch.seq: r.punch.hash() for r in rows},
                                    {r.punch.seq: hashlib.sha256(r.to_bytes()).hexdigest()
                                     for r in rows} if self._inclusion is not None else {})
        for s in seqs:
            self._owner[s] = bid
        # Not connected: paho queues the message and sends it after reconnecting; the batch
        # is awaited either way, and republished if no receipt comes.
        self._client.publish(self._punch_topic, payload, qos=1)
        with self._lock:
            self._c["sent_messages"] += 1
            self._c["sent_punches"] += len(rows)
            if resend:
                self._c["resent_punches"] += len(rows)

    # receipts

    def _process_receipts(self) -> None:
        while True:
            with self._lock:
                if not self._receipts:
                    return
                payload = self._receipts.popleft()
            self._handle_receipt(payload)

    def _handle_receipt(self, payload: bytes) -> None:
        # (1) parse strictly, (2) signature under the log key, (3) this device,
        # (4) delete exactly the acked seqs that we published and still await, and (5) below.
        try:
            receipt = SignedAck.from_bytes(payload)
            receipt.verify(self._log_key)
        except WireError as e:
            self._count("bad_receipts")
            log.warning("ignored a receipt that does not verify (%s): %s", e.reason, e)
            return
        ack = receipt.ack
        if ack.device != self.device:
            self._count("foreign_receipts")
            log.warning("ignored a receipt for device %s on our acks topic", ack.device)
            return
        hits, duplicate, unsent = self._classify(ack.acked)
        # (5) receipts v2 name the punch the ledger holds for each seq: a row is deleted only
        # when that is this clock's own punch (DESIGN.md §8.4)
        committed = ack.punch_hashes()
        if committed is not None:
            foreign = {s for s in hits
                       if committed.get(s) != self._batches[self._owner[s]].hashes.get(s)}
            if foreign:
                hits = [s for s in hits if s not in foreign]
                self._count("foreign_punch_acks", len(foreign))
                log.error("receipt acks seq(s) %s with ANOTHER punch than this clock's (the "
                          "ledger holds a conflicting punch: cloned key or restored clock?); "
                          "keeping ours", ", ".join(map(str, sorted(foreign)[:20])))
            if self._inclusion is not None and hits and ack.punches is not None:
                # kept before the rows go: (seq, leaf index, our signed punch's body hash)
                leaves = {seq: leaf for seq, _h, leaf in ack.punches}
                self._inclusion.record([
                    (s, leaves[s], self._batches[self._owner[s]].bodies[s]) for s in hits
                    if s in self._batches[self._owner[s]].bodies])
        for s in hits:
            bid = self._owner.pop(s)
            batch = self._batches[bid]
            batch.seqs.discard(s)
            if not batch.seqs:
                del self._batches[bid]
        deleted = self._outbox.delete_acked(hits) if hits else 0
        with self._lock:
            self._c["receipts"] += 1
            self._c["receipted"] += deleted
            self._c["duplicate_acks"] += duplicate
            self._c["unsent_acks"] += unsent
            self._last_receipt_at = self._now()
        if unsent:
            log.warning("receipt acks %d seq(s) this agent never published; ignored them",
                        unsent)
        if hits and self._on_receipted is not None:
            try:
                self._on_receipted(hits)
            except Exception:
                log.exception("receipt feedback failed")

    def _classify(self, ranges: Ranges) -> tuple[list[int], int, int]:
        """Split acked seqs into (awaited seqs, count already deleted, count never published)."""
        total = sum(b - a + 1 for a, b in ranges)
        unsent = sum(max(0, b - max(a, self._cursor + 1) + 1) for a, b in ranges)
        if total <= len(self._owner):
            hits = [s for a, b in ranges for s in range(a, b + 1) if s in self._owner]
        else:
            starts = [a for a, _ in ranges]
            hits = sorted(s for s in self._owner if _covered(ranges, starts, s))
        return hits, total - unsent - len(hits), unsent

    # certificate state (agent.certstate)

    def _check_local(self) -> CertProblem:
        s = self._s
        now = dt.datetime.fromtimestamp(self._now(), dt.UTC)
        found = certstate.check_certificate(s.cert_file, s.key_file, s.ca_file, now=now,
                                            warn_days=s.cert_warn_days)
        blocking = [p for p in found if p.blocking]
        return (blocking or found or [CertProblem("ok", "certificate valid")])[0]

    def _maybe_diagnose(self) -> None:
        mono = self._mono()
        with self._lock:
            if not self._diagnose_due or mono < self._next_diagnose:
                return
            self._diagnose_due = False
            err, self._tls_error = self._tls_error, None
        self._next_diagnose = mono + self._s.diagnose_every_s
        self.cert_diagnoses += 1
        s = self._s
        probe = None
        if certstate.classify_tls_error(err, now=dt.datetime.now(dt.UTC)) is None:
            try:
                ctx = client_context(s.ca_file, s.cert_file, s.key_file)
            except WireError as e:
                log.debug("no TLS context for the certificate probe: %s", e)
            else:
                probe = (s.host, s.port, ctx)
        found = certstate.diagnose(s.cert_file, s.key_file, s.ca_file,
                                   now=dt.datetime.fromtimestamp(self._now(), dt.UTC),
                                   warn_days=s.cert_warn_days, error=err, probe=probe)
        if not found.blocking and self.cert_state().blocking:
            # Still not connected and nothing new found (a probe that saw no alert in time,
            # a network fault): the known cause stands until a connection succeeds, so the
            # state and its feedback do not flap.
            return
        self._set_cert(found)

    def _set_cert(self, found: CertProblem) -> None:
        with self._lock:
            before = self._cert
            changed = found.state != before.state
            self._cert = found
            if changed:
                self._cert_since = self._now()
        mono = self._mono()
        if changed or (found.blocking and mono >= self._cert_logged + _CERT_LOG_EVERY_S):
            self._cert_logged = mono
            if found.state == "ok":
                log.info("certificate: ok again (was %s)", before.state)
            else:
                log.log(logging.ERROR if found.blocking else logging.WARNING,
                        "certificate: %s", found.message)
        if changed:
            if found.outcome is not None and self._on_cert_state is not None:
                try:
                    self._on_cert_state(found)
                except Exception:
                    log.exception("certificate feedback failed")
            self.publish_status_soon()

    def set_feedback(self, *, on_cert_state: Callable[[CertProblem], None] | None = None,
                     on_receipted: Callable[[Sequence[int]], None] | None = None) -> None:
        """Install the feedback hooks (before :meth:`start`); a blocking certificate state
        found at construction is handed to ``on_cert_state`` at once."""
        self._on_receipted = on_receipted
        self._on_cert_state = on_cert_state
        cert = self.cert_state()
        if on_cert_state is not None and cert.outcome is not None:
            on_cert_state(cert)

    def listen(self, topic: str, handler: Callable[[bytes], None]) -> None:
        """Subscribe ``topic`` (one of this device's own; before :meth:`start`) and hand
        each message's payload to ``handler`` on paho's thread."""
        if self._sender is not None:
            raise PublisherError("listen() after start()")
        self._listeners[topic] = handler

    def cert_state(self) -> CertProblem:
        """The certificate state last found (agent.certstate)."""
        with self._lock:
            return self._cert

    # witness

    def _process_checkpoints(self) -> bool:
        """Answer the checkpoint requests received; True if the witness state changed."""
        w = self._witness
        if w is None:
            return False
        before = w.status()
        while True:
            with self._lock:
                if not self._checkpoints:
                    break
                payload = self._checkpoints.popleft()
            reply = w.handle(payload)
            if reply is not None:
                self._client.publish(self._cosignature_topic, reply.to_bytes(), qos=1)
        after = w.status()
        return (after.state, after.size, after.reason) != (before.state, before.size,
                                                            before.reason)

    # inclusion of our own punches

    def _process_inclusion(self, mono: float) -> bool:
        """Verify the answers received, ask for the proofs due (at most once a second);
        True if the inclusion state changed."""
        checker, w = self._inclusion, self._witness
        if checker is None or w is None:
            return False
        before = checker.status()
        while True:
            with self._lock:
                if not self._inclusion_answers:
                    break
                payload = self._inclusion_answers.popleft()
            checker.handle(payload)
        if mono >= self._next_inclusion:
            self._next_inclusion = mono + 1.0
            for req in checker.requests(w.checkpoint):
                self._client.publish(self._inclusion_request_topic, req.to_bytes(), qos=1)
        after = checker.status()
        return (after.failed, after.checked) != (before.failed, before.checked)

    def witness_status(self) -> WitnessStatus:
        """The witness state with the inclusion checks (requires a witness)."""
        if self._witness is None:
            raise PublisherError("no witness configured")
        st = self._witness.status()
        if self._inclusion is None:
            return st
        return dataclasses.replace(st, inclusion=self._inclusion.status())

    # status

    def _default_status(self) -> Mapping[str, Any]:
        return {"clock": clock_state(), "readers": {}, "version": self._s.version}

    def device_status(self, state: str, reason: str | None = None) -> DeviceStatus:
        """The status message as it is published now (state ``online`` or ``offline``)."""
        snap = self._status()
        cert = self.cert_state()
        storage = None
        raw = snap.get("storage")
        if raw is not None:
            try:
                storage = StorageStatus.from_dict(dict(raw))
            except (WireError, TypeError, ValueError) as e:
                log.warning("status: storage state left out: %s", e)
        common: dict[str, Any] = {
            "device": self.device, "state": state, "at": to_us(self._now()),
            "version": str(snap.get("version", self._s.version)),
            "queue": QueueStatus(self._outbox.depth(), self._outbox.oldest_created_us()),
            "clock": snap.get("clock", "unsynced"), "storage": storage, "reason": reason,
            "witness": None if self._witness is None else self.witness_status(),
            "certificate": None if cert.state == "ok" else cert.state}
        readers = snap.get("readers", {})
        try:
            return DeviceStatus(**common, readers=dict(readers))
        except (WireError, TypeError, ValueError) as e:
            # Never let one odd reader field kill the status: send it without reader states.
            log.warning("status: reader states left out: %s", e)
            return DeviceStatus(**common, readers={})

    def _status_payload(self, state: str, reason: str | None = None) -> bytes:
        return self.device_status(state, reason).to_bytes()

    def _offline_payload(self, reason: str) -> bytes:
        return DeviceStatus(self.device, "offline", self._s.version, reason=reason).to_bytes()

    def _publish_status(self) -> None:
        self._client.publish(self._status_topic, self._status_payload("online"), qos=1,
                             retain=True)


def make_publisher(config: AgentConfig, outbox: OutboxLike, *, status: StatusFn,
                   env: Mapping[str, str] | None = None) -> Publisher:
    """Build the publisher from the agent config (``agent.service`` calls this when
    ``[mqtt]`` is configured). TLS key paths may be systemd credentials."""
    from agent.status import agent_version  # noqa: PLC0415 -- keeps this module light

    m, k = config.mqtt, config.keys
    if m is None:
        raise PublisherError("no [mqtt] section: nothing to publish to")
    ca, cert, key, log_key = k.ca_cert, k.tls_cert, k.tls_key, k.log_public_key
    if ca is None or cert is None or key is None or log_key is None:
        missing = [name for name, v in (("ca_cert", ca), ("tls_cert", cert), ("tls_key", key),
                                        ("log_public_key", log_key)) if v is None]
        raise PublisherError(f"[mqtt] needs keys.{', keys.'.join(missing)}")
    settings = PublisherSettings(
        host=m.host, port=m.port, ca_file=ca, cert_file=cert, key_file=key.resolve(env),
        keepalive_s=m.keepalive_s, batch_max=m.batch_max,
        resend_after_s=m.resend_after_s, reconnect_min_s=m.reconnect_min_s,
        reconnect_max_s=m.reconnect_max_s, cert_warn_days=m.cert_warn_days,
        version=agent_version())
    from agent.keystore import load_signing  # noqa: PLC0415 -- as above

    signing = load_signing(config.keys.signing_key, env)
    witness = ClockWitness(witness_path(config.device.state_dir), config.device.id,
                           signing, log_key)
    remote = (RemoteConfig(config.source, config.device.state_dir, config.device.id, log_key,
                           signing) if config.source is not None else None)
    wc = config.witness
    inclusion = InclusionChecker(
        inclusion_path(config.device.state_dir), config.device.id, mode=wc.check_inclusion,
        sample_rate=wc.sample_rate, deadline_s=wc.inclusion_deadline_s,
        retry_s=wc.inclusion_retry_s)
    # the feedback hooks are the service's (Publisher.set_feedback, agent.service)
    return Publisher(outbox, config.device.id, log_key=log_key, settings=settings,
                     status=status, witness=witness, inclusion=inclusion,
                     seal_key=k.seal_public_key, remote_config=remote)
