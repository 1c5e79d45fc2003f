"""Answer the clocks' resume requests (DESIGN.md §8.5, docs/protocol.md §13.13).

A clock that lost its sequence state asks, on ``timeclock/v1/devices/{id}/resume/request``, for
the ledger's last recorded (seq, hash) of its own chain; the answer, signed with the log key
like a receipt (wire.resume_answer), goes to ``timeclock/v1/devices/{id}/resume`` (read only
by that clock). The clock continues after ``last_seq`` with ``prev = last_hash``, so its next
punch links to what the ledger holds (no fork, no reused seq).

Only the topic names the device (the broker's ACL lets a device write only its own request
topic), so a request whose body names another device, or that does not parse, is dropped
with a warning and answered with nothing. Requests are queued by the MQTT thread
(:meth:`ResumeAnswers.receive`, cheap) and answered on the ingest thread (:meth:`process`),
after the punches already handed to the store: the answer is what the ledger holds then.
"""

from __future__ import annotations

import logging
import threading
from collections import deque
from collections.abc import Callable

from collector.ledger.sqlbase import SQLStore
from wire import ZERO_HASH
from wire.errors import WireError
from wire.keys import SigningKey
from wire.resume_answer import (
    ResumeAnswer,
    ResumeRequest,
    SignedResumeAnswer,
    answer_topic,
    device_of_request_topic,
)

log = logging.getLogger(__name__)

MAX_QUEUED = 256

Publish = Callable[[str, bytes], object]


class ResumeAnswers:
    """Builds, signs and publishes answers to the clocks' resume requests."""

    def __init__(self, store: SQLStore, log_key: SigningKey, publish: Publish,
                 now: Callable[[], int]) -> None:
        self._store = store
        self._log_key = log_key
        self._publish = publish
        self._now = now
        self._lock = threading.Lock()
        self._inbox: deque[tuple[str, bytes]] = deque()
        self.counts = dict.fromkeys(("answered", "dropped", "bad"), 0)

    def receive(self, topic: str, payload: bytes) -> None:
        """Queue one request (cheap; any thread)."""
        with self._lock:
            if len(self._inbox) >= MAX_QUEUED:
                self.counts["dropped"] += 1
                return
            self._inbox.append((topic, payload))

    def process(self) -> int:
        """Answer the requests received so far; return how many. A ledger outage propagates
        (the ingest loop rides it out; the clock asks again)."""
        n = 0
        while True:
            with self._lock:
                if not self._inbox:
                    return n
                topic, payload = self._inbox.popleft()
            n += 1
            signed = self.answer(topic, payload)
            if signed is not None:
                self._publish(answer_topic(signed.answer.device), signed.to_bytes())

    def answer(self, topic: str, payload: bytes) -> SignedResumeAnswer | None:
        """The signed answer to one request, or None (logged) when it is not one."""
        device = device_of_request_topic(topic)
        try:
            req = ResumeRequest.from_bytes(payload)
        except WireError as e:
            self.counts["bad"] += 1
            log.warning("resume request on %s ignored: %s", topic[:120], e)
            return None
        if device is None or req.device != device:
            self.counts["bad"] += 1
            log.warning("resume request for device %s on %s ignored", req.device, topic[:120])
            return None
        last = self._store.progress(device).highest
        found = self._store.punch_hash(device, last) if last else None
        if last and found is None:       # pragma: no cover -- MAX(seq) names a recorded row
            log.error("resume: %s seq %d has no recorded hash; not answered", device, last)
            return None
        answer = ResumeAnswer(device, req.nonce, last, found[0] if found else ZERO_HASH,
                              self._now(), self._log_key.key_id)
        self.counts["answered"] += 1
        log.warning("resume: %s asked for its last recorded seq (it lost its sequence state); "
                    "answered seq %d", device, last)
        return answer.sign(self._log_key)
