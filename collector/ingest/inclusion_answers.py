"""Answer the clocks' inclusion requests (DESIGN.md §8.4, docs/protocol.md §13.9).

A clock asks, on ``timeclock/v1/devices/{id}/inclusion/request``, for RFC 9162 inclusion
proofs of the leaves that recorded its punches, to a checkpoint size it verified. For each
leaf below that size and the tree size, the answer carries the ledger entry at that index
and ``store.inclusion_proof(index, size)``; other leaves are listed ``missing``. The answer
goes to ``timeclock/v1/devices/{id}/inclusion`` (read only by that clock).

The collector checks nothing the clock relies on: the clock verifies the entry against its own
punch and the path against the root it verified. So an answer is built from the store as it is,
queued and checked against the topic's device by collector.ingest.device_requests, and
answered on the ingest thread like cosignature replies.
"""

from __future__ import annotations

import logging

from collector import LedgerError, LedgerUnavailableError
from collector.ingest.device_requests import DeviceRequests, Publish
from collector.ledger.sqlbase import SQLStore
from wire.inclusion import (
    InclusionAnswer,
    InclusionRequest,
    LeafProof,
    answer_topic,
    device_of_request_topic,
)

log = logging.getLogger(__name__)


class InclusionAnswers(DeviceRequests[InclusionRequest, InclusionAnswer]):
    """Builds and publishes answers to the clocks' inclusion requests."""

    what = "inclusion"

    def __init__(self, store: SQLStore, publish: Publish) -> None:
        super().__init__(publish, counts=("proofs", "missing"))
        self._store = store

    def parse(self, payload: bytes) -> InclusionRequest:
        return InclusionRequest.from_bytes(payload)

    def device_of(self, topic: str) -> str | None:
        return device_of_request_topic(topic)

    def outgoing(self, answer: InclusionAnswer) -> tuple[str, bytes]:
        return answer_topic(answer.device), answer.to_bytes()

    def build(self, device: str, req: InclusionRequest) -> InclusionAnswer:
        """Each asked leaf's entry and inclusion proof to ``req.size``, or it is missing."""
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
