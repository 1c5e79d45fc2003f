"""Answer the clocks' resume requests (DESIGN.md §8.5, docs/protocol.md §13.13).

A clock that lost its sequence state asks, on ``timeclock/v1/devices/{id}/resume/request``, for
the ledger's last recorded (seq, hash) of its own chain; the answer, signed with the log key
like a receipt (wire.resume_answer), goes to ``timeclock/v1/devices/{id}/resume`` (read only
by that clock). The clock continues after ``last_seq`` with ``prev = last_hash``, so its next
punch links to what the ledger holds (no fork, no reused seq).

Queueing and the checks on the request's device are collector.ingest.device_requests'; a
request is answered on the ingest thread after the punches already handed to the store, so the
answer is what the ledger holds then.
"""

from __future__ import annotations

import logging
from collections.abc import Callable

from collector.ingest.device_requests import DeviceRequests, Publish
from collector.ledger.sqlbase import SQLStore
from wire import ZERO_HASH
from wire.keys import SigningKey
from wire.resume_answer import (
    ResumeAnswer,
    ResumeRequest,
    SignedResumeAnswer,
    answer_topic,
    device_of_request_topic,
)

log = logging.getLogger(__name__)


class ResumeAnswers(DeviceRequests[ResumeRequest, SignedResumeAnswer]):
    """Builds, signs and publishes answers to the clocks' resume requests."""

    what = "resume"

    def __init__(self, store: SQLStore, log_key: SigningKey, publish: Publish,
                 now: Callable[[], int]) -> None:
        super().__init__(publish)
        self._store = store
        self._log_key = log_key
        self._now = now

    def parse(self, payload: bytes) -> ResumeRequest:
        return ResumeRequest.from_bytes(payload)

    def device_of(self, topic: str) -> str | None:
        return device_of_request_topic(topic)

    def outgoing(self, answer: SignedResumeAnswer) -> tuple[str, bytes]:
        return answer_topic(answer.answer.device), answer.to_bytes()

    def build(self, device: str, req: ResumeRequest) -> SignedResumeAnswer | None:
        """The signed answer: the ledger's last recorded (seq, hash) of ``device``."""
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
