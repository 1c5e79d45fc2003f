"""Computed console views, reused while the ledger has nothing new for them (issue 16: the
console's pages answer in under 300 ms at the 95th percentile with a year of punches for
500 employees; docs/performance.md "Console pages").

A page's expensive part (pairing the punches of the last weeks into timesheets, the fleet's
per-clock progress, the retention plan) reads projection rows that are checked against the
ledger one by one, so it costs per row. It is computed once and kept under a key that holds

- the ledger's newest entry that is not an access entry (:func:`fingerprint`): every punch,
  correction, directory change, alert, review, retention or hold entry is one, so any of them
  makes the next view compute afresh; page views themselves (access entries) do not;
- the minute of the request's clock (presence and "today" move with the time);
- what else the view is of: its scope (sites, employees), date range, and the like.

Invariants: a hit returns exactly what computing it at the same fingerprint and minute
would; what is not in the ledger is never cached (proposals waiting for a decision, device
statuses, the evidence folder: each page reads them on every view); at most :data:`SIZE`
views per store are kept (least recently used go first).
"""

from __future__ import annotations

import threading
import weakref
from collections import OrderedDict
from collections.abc import Callable, Hashable
from typing import Any, TypeVar

from collector.ledger import queries
from collector.ledger.sqlbase import SQLStore

SIZE = 64
MINUTE_US = 60 * 1_000_000
T = TypeVar("T")

def fingerprint(store: SQLStore) -> int:
    """The idx of the ledger's newest entry that is not an access entry (-1: none): walks
    back from the head over page views only, so it is a few rows."""
    return queries.newest_idx_except(store, "access")


class ViewCache:
    def __init__(self, size: int = SIZE) -> None:
        self._lock = threading.Lock()
        self._views: OrderedDict[Hashable, Any] = OrderedDict()
        self.size = size
        self.hits = self.misses = 0

    def get(self, key: Hashable, compute: Callable[[], T]) -> T:
        with self._lock:
            if key in self._views:
                self._views.move_to_end(key)
                self.hits += 1
                found: T = self._views[key]
                return found
            self.misses += 1
        value = compute()       # outside the lock: two first views may both compute it
        with self._lock:
            self._views[key] = value
            self._views.move_to_end(key)
            while len(self._views) > self.size:
                self._views.popitem(last=False)
        return value


_CACHES: weakref.WeakKeyDictionary[SQLStore, ViewCache] = weakref.WeakKeyDictionary()
_CACHES_LOCK = threading.Lock()


def cache_of(store: SQLStore) -> ViewCache:
    with _CACHES_LOCK:
        c = _CACHES.get(store)
        if c is None:
            c = _CACHES[store] = ViewCache()
        return c


def cached(store: SQLStore, name: str, now_us: int, key: Hashable, compute: Callable[[], T]
           ) -> T:
    """``compute()``, or the value it gave for the same ``name``, ``key``, ledger
    :func:`fingerprint` and minute of ``now_us``."""
    full = (name, key, fingerprint(store), now_us // MINUTE_US)
    return cache_of(store).get(full, compute)
