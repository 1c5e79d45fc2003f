"""Appends whose commit outcome is unknown: settled after a reconnect, never recorded twice.

A connection can drop while COMMIT is in flight: the server may have committed or not, and the
client cannot tell. The caller (the ingest writer) then retries the same facts. A store keeps
what such a transaction planned (:class:`InDoubt`: its facts, their results and the idx and
hash of its first new entry); after reconnecting it reads the entry at that idx. The append
was one transaction, so that one entry says all: there with the planned hash, everything
committed and the results are kept (:class:`Settled`), so a retry of the same facts gets them
back instead of a second entry; absent or another hash, nothing committed and the retry
appends. Punches are also deduplicated by (device, seq); rejections and events have no natural
key, so this is what keeps them from being recorded twice.
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from dataclasses import dataclass

from collector.ledger.base import AppendResult, Fact, PunchFact, RejectionFact
from wire.canonical import canonical
from wire.errors import WireError

MAX_SETTLED = 100_000   # results kept for retries; a retry comes with the next batch


@dataclass(frozen=True, slots=True)
class InDoubt:
    facts: tuple[Fact, ...]
    results: tuple[AppendResult, ...]
    first_idx: int
    first_hash: str


def fact_key(f: Fact) -> tuple[object, ...] | None:
    """What identifies a fact across a retry (same message, judged again), or None."""
    if isinstance(f, PunchFact):
        return ("punch", f.signed.hash(), f.topic, f.received_at)
    if isinstance(f, RejectionFact):
        return ("rejection", f.reason, f.topic, hashlib.sha256(f.raw).hexdigest(),
                f.received_at, f.device, f.detail)
    try:
        return ("event", f.kind, canonical(f.body))
    except WireError:
        return None


class Settled:
    """Results of in-doubt appends that turned out committed, handed out once each."""

    def __init__(self) -> None:
        self._results: dict[tuple[object, ...], list[AppendResult]] = {}

    def __len__(self) -> int:
        return sum(len(v) for v in self._results.values())

    def add(self, doubt: InDoubt) -> None:
        for f, r in zip(doubt.facts, doubt.results, strict=True):
            key = fact_key(f)
            if key is not None and len(self) < MAX_SETTLED:
                self._results.setdefault(key, []).append(r)

    def split(self, facts: Sequence[Fact]) -> tuple[list[Fact], dict[int, AppendResult]]:
        """(facts still to append, {position: result} of those already recorded). Nothing is
        handed out until :meth:`used` says the append that asked succeeded."""
        if not self._results:
            return list(facts), {}
        todo: list[Fact] = []
        known: dict[int, AppendResult] = {}
        taken: dict[tuple[object, ...], int] = {}
        for i, f in enumerate(facts):
            key = fact_key(f)
            got = self._results.get(key, []) if key is not None else []
            n = taken.get(key, 0) if key is not None else 0
            if key is not None and n < len(got):
                known[i] = got[n]
                taken[key] = n + 1
            else:
                todo.append(f)
        return todo, known

    def used(self, facts: Sequence[Fact], known: dict[int, AppendResult]) -> None:
        """The results at ``known``'s positions went to a caller: forget them."""
        for i in known:
            key = fact_key(facts[i])
            got = self._results.get(key, []) if key is not None else []
            if got:
                got.pop(0)
                if not got and key is not None:
                    del self._results[key]


def merge(n: int, known: dict[int, AppendResult], written: Sequence[AppendResult]
          ) -> list[AppendResult]:
    """One result per fact, in order: ``known`` at their positions, ``written`` between."""
    if not known:
        return list(written)
    it = iter(written)
    return [known[i] if i in known else next(it) for i in range(n)]
