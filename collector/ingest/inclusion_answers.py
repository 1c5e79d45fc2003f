"""Answer the clocks' inclusion requests (DESIGN.md §8.4, docs/protocol.md §13.9).

A clock asks, on ``timeclock/v1/devices/{id}/inclusion/request``, for RFC 9162 inclusion
proofs of the leaves that recorded its punches, to a checkpoint size it verified. For each
leaf below that size and the tree size, the answer carries the ledger entry at that index
and ``store.inclusion_proof(index, size)``; other leaves are listed ``missing``. The answer
goes to ``timeclock/v1/devices/{id}/inclusion`` (read only by that clock).

The collector checks nothing the clock relies on: the clock verifies the entry against its own
punch and the path against the root it verified. So an answer is built from the store as it is,
and a request from a device other than the topic's, or that does not parse, is dropped with a
warning. Requests are queued by the MQTT thread (:meth:`InclusionAnswers.receive`, cheap) and
answered on the ingest thread (:meth:`process`), like cosignature replies.
"""

from __future__ import annotations

import logging
import threading
from collections import deque
from collections.abc import Callable

from collector import LedgerError, LedgerUnavailableError
from collector.ledger.sqlbase import SQLStore
from wire.errors import WireError
from wire.inclusion import (
    InclusionAnswer,
    InclusionRequest,
    LeafProof,
    answer_topic,
    device_of_request_topic,
)

log = logging.getLogger(__name__)

MAX_QUEUED = 256

Publish = Callable[[str, bytes], object]


class InclusionAnswers:
    """Builds and publishes answers to the clocks' inclusion requests."""

    def __init__(self, store: SQLStore, publish: Publish) -> None:
        self._store = store
        self._publish = publish
        self._lock = threading.Lock()
        self._inbox: deque[tuple[str, bytes]] = deque()
        self.counts = dict.fromkeys(("answered", "proofs", "missing", "dropped", "bad"), 0)

    def receive(self, topic: str, payload: bytes) -> None:
        """Queue one request (cheap; any thread)."""
        with self._lock:
            if len(self._inbox) >= MAX_QUEUED:
                self.counts["dropped"] += 1
                return
            self._inbox.append((topic, payload))

    def process(self) -> int:
        """Answer the requests received so far; return how many."""
        n = 0
        while True:
            with self._lock:
                if not self._inbox:
                    return n
                topic, payload = self._inbox.popleft()
            n += 1
            try:
                answer = self.answer(topic, payload)
            except LedgerUnavailableError:
                raise               # the ingest loop rides out an outage; the clock asks again
            if answer is not None:
                self._publish(answer_topic(answer.device), answer.to_bytes())

    def answer(self, topic: str, payload: bytes) -> InclusionAnswer | None:
        """The answer to one request, or None (logged) when it is not one."""
        device = device_of_request_topic(topic)
        try:
            req = InclusionRequest.from_bytes(payload)
        except WireError as e:
            self.counts["bad"] += 1
            log.warning("inclusion request on %s ignored: %s", topic[:120], e)
            return None
        if device is None or req.device != device:
            self.counts["bad"] += 1
            log.warning("inclusion request for device %s on %s ignored", req.device,
                        topic[:120])
            return None
        proofs: list[LeafProof] = []
        missing: list[int] = []
        provable = req.size <= self._store.tree_size()
        for leaf in req.leaves:
            if not provable:
                missing.append(leaf)
                continue
            try:
                stored = next(iter(self._store.entries(leaf, leaf + 1)))
                path = self._store.inclusion_proof(leaf, req.size)
            except LedgerUnavailableError:
                raise
            except (LedgerError, StopIteration) as e:
                log.warning("inclusion: leaf %d of size %d for %s not proven: %s", leaf,
                            req.size, device, e)
                missing.append(leaf)
                continue
            proofs.append(LeafProof(leaf, stored.entry, tuple(path)))
        if missing:
            log.warning("inclusion: %s asked for %d leaf/leaves this ledger cannot prove at "
                        "size %d (tree size %d)", device, len(missing), req.size,
                        self._store.tree_size())
        self.counts["answered"] += 1
        self.counts["proofs"] += len(proofs)
        self.counts["missing"] += len(missing)
        return InclusionAnswer(device, req.size, tuple(proofs), tuple(missing))
