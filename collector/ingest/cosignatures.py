"""Clocks as witnesses, collector side (DESIGN.md §8.3, docs/protocol.md §13.7).

For each new v2 checkpoint, :meth:`DeviceWitnesses.offer` asks every active clock to cosign it:
a C2SP tlog-witness add-checkpoint body (wire.witness.AddCheckpoint) on the clock's own
``timeclock/v1/devices/{id}/checkpoint`` topic, retained (a clock that was away gets the newest
request when it comes back), carrying the note as the log key signed it and the RFC 9162
consistency proof from the size that clock last cosigned (``SQLStore.consistency_proof``).

:meth:`DeviceWitnesses.receive` takes the clocks' answers (wire.witness.CosignatureReply on
``.../cosignature``) from the MQTT thread; :meth:`DeviceWitnesses.process` handles them on the
ingest thread:

- ``cosigned``: (1) the topic's device is the reply's; (2) the checkpoint is one this ledger
  stored (same body); (3) the cosignature verifies under an active signing key of that device
  in the registry, as a cosignature/v1 (type 0x04) key named ``<origin>/devices/<id>``; then it
  is stored (collector.ledger.checkpoint_tables.add_cosignature) and the size remembered as
  the base of that clock's next proof;
- ``conflict``: the clock holds another size than the one the request started from (a restart
  of the collector, a cosignature lost): remember its size and ask again, once per size;
- ``refused``: the clock says the log shrank or is inconsistent with what it holds. Its
  signature is checked, and it is raised as a critical alert (``witness-refusal``) and kept in
  :meth:`refusals`. Nothing is stored: the clock's status (``witness`` object) makes it
  visible in ``device list``.

Invariants: a cosignature is stored only after it verified; a reply that does not verify is
counted, logged and dropped; the size a clock is believed to hold only ever comes from a
verified cosignature or from the clock itself (a conflict), so a forged reply cannot make
the collector stop asking a clock.
"""

from __future__ import annotations

import logging
import threading
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass

from collector import LedgerError, LedgerUnavailableError
from collector.ingest.alerts import SEVERITY_CRITICAL, SEVERITY_WARNING, Alerts
from collector.ledger import checkpoint_tables
from collector.ledger.sqlbase import SQLStore
from wire.errors import DecodeError, WireError
from wire.keys import VerifyKey
from wire.note import COSIGNATURE_V1, Checkpoint, Note, NoteVerifier
from wire.topics import device_of
from wire.witness import (
    DEVICE_WITNESS_INFIX,
    AddCheckpoint,
    CosignatureReply,
    checkpoint_topic,
    device_witness_name,
)

log = logging.getLogger("timeclock.witnesses")

MAX_PENDING = 10_000      # replies waiting for the ingest thread; more are dropped (counted)


@dataclass(frozen=True, slots=True)
class Refusal:
    """A clock's verified refusal to cosign a checkpoint."""

    device: str
    size: int                 # of the checkpoint refused
    reason: str
    detail: str
    at: int                   # µs, as the clock signed it
    known_size: int | None    # the size the clock holds, from the note it sent


class DeviceWitnesses:
    """Asks the clocks to cosign checkpoints and takes their cosignatures (see module doc).

    ``publish(topic, payload, retain)`` sends a request. ``offer`` and ``process`` run on one
    thread (the ingest thread); ``receive`` may be called from any.
    """

    def __init__(self, store: SQLStore, origin: str,
                 publish: Callable[[str, bytes, bool], None], *,
                 alerts: Alerts | None = None) -> None:
        self.store = store
        self.origin = origin
        self.publish = publish
        self.alerts = alerts if alerts is not None else Alerts()
        self._lock = threading.Lock()
        self._inbox: deque[tuple[str, bytes, int]] = deque()
        self._refusals: dict[str, Refusal] = {}
        self._sizes: dict[str, int] = self._cosigned_sizes()
        self._asked: dict[str, tuple[int, int]] = {}    # device -> (checkpoint size, old size)
        self._newest: checkpoint_tables.StoredCheckpoint | None = None
        self.counts: dict[str, int] = dict.fromkeys(
            ("requests", "cosignatures", "conflicts", "refusals", "bad_replies", "dropped"), 0)

    def _cosigned_sizes(self) -> dict[str, int]:
        """The largest size each clock cosigned, from the stored cosignatures."""
        prefix = f"{self.origin}{DEVICE_WITNESS_INFIX}"
        rows = self.store.query("SELECT name, MAX(size) FROM tc_cosignatures GROUP BY name")
        return {str(name)[len(prefix):]: int(size) for name, size in rows
                if str(name).startswith(prefix)}

    # -- asking -------------------------------------------------------------------------------
    def _active_devices(self) -> list[str]:
        return sorted(d.device for d in self.store.devices() if d.status == "active")

    def _device_keys(self, device: str) -> list[VerifyKey]:
        return [VerifyKey.from_b64(k.public_b64) for k in self.store.keys(device)
                if k.status == "active"]

    def offer(self, cp: checkpoint_tables.StoredCheckpoint) -> int:
        """Ask every active clock to cosign ``cp``; return how many were asked."""
        self._newest = cp
        note = _log_note(cp)
        asked = 0
        bodies: dict[int, bytes | None] = {}    # most clocks share their old size: one proof
        for device in self._active_devices():
            if self._ask(device, cp, note, bodies):
                asked += 1
        return asked

    def _request(self, old: int, cp: checkpoint_tables.StoredCheckpoint,
                 note: str) -> bytes | None:
        if old > cp.size:
            # The clock holds more than this ledger has: there is no proof to give. Ask anyway;
            # the clock refuses (shrinking), and that refusal is the alarm.
            proof: list[bytes] = []
        else:
            try:
                proof = self.store.consistency_proof(old, cp.size)
            except LedgerUnavailableError:
                raise                       # an outage: the ingest loop rides it out
            except LedgerError as e:
                log.error("cannot build a consistency proof %d -> %d: %s", old, cp.size, e)
                return None
        try:
            return AddCheckpoint(old, tuple(proof), note).to_bytes()
        except WireError as e:
            log.error("cannot ask to cosign size %d from %d: %s", cp.size, old, e)
            return None

    def _ask(self, device: str, cp: checkpoint_tables.StoredCheckpoint, note: str,
             bodies: dict[int, bytes | None] | None = None) -> bool:
        old = self._sizes.get(device, 0)
        bodies = {} if bodies is None else bodies
        if old not in bodies:
            bodies[old] = self._request(old, cp, note)
        body = bodies[old]
        if body is None:
            return False
        self._asked[device] = (cp.size, old)
        self.publish(checkpoint_topic(device), body, True)
        self._count("requests")
        return True

    # -- answers ------------------------------------------------------------------------------
    def receive(self, topic: str, payload: bytes, received_at: int) -> None:
        """Queue one reply (cheap; any thread)."""
        with self._lock:
            if len(self._inbox) >= MAX_PENDING:
                self.counts["dropped"] += 1
                return
            self._inbox.append((topic, payload, received_at))

    def process(self) -> int:
        """Handle the replies received so far; return how many."""
        n = 0
        while True:
            with self._lock:
                if not self._inbox:
                    return n
                topic, payload, received_at = self._inbox.popleft()
            n += 1
            try:
                self.handle(topic, payload, received_at)
            except LedgerUnavailableError:
                raise               # the ingest loop rides out an outage; the reply is lost
            except LedgerError as e:
                # e.g. two collectors of one ledger storing the same cosignature at once: the
                # reply is dropped, the next checkpoint asks again; ingest goes on.
                log.warning("witness reply on %s not stored: %s", topic[:120], e)
            except WireError as e:
                self._bad(topic, f"{e}")

    def handle(self, topic: str, payload: bytes, received_at: int) -> None:
        # (1) the clock that published is the one the reply names
        device = device_of(topic, "cosignature")
        reply = CosignatureReply.from_bytes(payload)
        if reply.device != device:
            raise DecodeError(f"reply names device {reply.device}, published on the topic of "
                              f"{device}", field="device")
        cp = Checkpoint.from_body(reply.checkpoint)
        if reply.result == "conflict":
            self._conflict(device, cp, reply)
        elif reply.result == "refused":
            self._refused(device, cp, reply)
        else:
            self._cosigned(device, cp, reply, received_at)

    def _bad(self, where: str, why: str) -> None:
        self._count("bad_replies")
        log.warning("ignored a witness reply on %s: %s", where[:120], why)

    def _cosigned(self, device: str, cp: Checkpoint, reply: CosignatureReply,
                  received_at: int) -> None:
        # (2) a checkpoint this ledger stored
        stored = checkpoint_tables.get(self.store, cp.size)
        if stored is None or stored.checkpoint != cp:
            self._bad(device, f"cosignature of a checkpoint of size {cp.size} that this "
                      "ledger does not hold")
            return
        # (3) under the device's registered key, as <origin>/devices/<id>
        name = device_witness_name(self.origin, device)
        line = reply.cosignature_line()
        note = Note(cp.body_text(), (line,))
        for key in self._device_keys(device):
            verifier = NoteVerifier(name, key, COSIGNATURE_V1)
            if verifier.matches(line):
                cp.verify_cosignature(note, verifier)
                break
        else:
            self._bad(device, f"cosignature line by {line.name[:80]!r} matches no active key of "
                      f"{device} under {name[:80]!r}")
            return
        if checkpoint_tables.add_cosignature(self.store, cp.size, reply.cosignature or "",
                                             name, line.key_id, received_at):
            log.info("clock %s cosigned checkpoint size %d", device, cp.size)
        self._sizes[device] = max(self._sizes.get(device, 0), cp.size)
        self._count("cosignatures")
        with self._lock:
            self._refusals.pop(device, None)

    def _conflict(self, device: str, cp: Checkpoint, reply: CosignatureReply) -> None:
        known = reply.known_size
        assert known is not None  # noqa: S101 - a conflict reply always carries it
        self._count("conflicts")
        asked = self._asked.get(device)
        log.info("clock %s holds size %d (asked from %s); asking again", device, known,
                 "?" if asked is None else asked[1])
        self._sizes[device] = known
        newest = self._newest
        if newest is None or (asked is not None and asked == (newest.size, known)):
            return        # asked from that size already: no loop
        self._ask(device, newest, _log_note(newest))

    def _refused(self, device: str, cp: Checkpoint, reply: CosignatureReply) -> None:
        for key in self._device_keys(device):
            try:
                reply.verify_refusal(key)
                break
            except WireError:
                continue
        else:
            self._bad(device, "a refusal whose signature matches no active key of the device")
            return
        known_size = None
        if reply.known is not None:
            try:
                known_size = Checkpoint.from_body(Note.from_text(reply.known).body).size
            except WireError:
                known_size = None
        refusal = Refusal(device, cp.size, reply.reason or "?", reply.detail, reply.at or 0,
                          known_size)
        with self._lock:
            first = device not in self._refusals
            self._refusals[device] = refusal
        self._count("refusals")
        self.alerts.alert("witness-refusal",
                          severity=SEVERITY_CRITICAL if first else SEVERITY_WARNING,
                          device=device,
                          detail=f"clock REFUSES to cosign checkpoint size {cp.size}: "
                                 f"{refusal.reason} ({refusal.detail}); it holds size "
                                 f"{known_size}")

    def refusals(self) -> dict[str, Refusal]:
        """The clocks whose last answer was a refusal."""
        with self._lock:
            return dict(self._refusals)

    def cosigned_size(self, device: str) -> int:
        return self._sizes.get(device, 0)

    def _count(self, name: str) -> None:
        with self._lock:
            self.counts[name] += 1


def _log_note(cp: checkpoint_tables.StoredCheckpoint) -> str:
    """The note with the log's signature only: clocks need no one else's cosignature, and the
    request stays small however many witnesses signed."""
    note = Note.from_text(cp.note)
    own = tuple(s for s in note.signatures if s.name == cp.checkpoint.origin)
    return Note(note.body, own).to_text()
