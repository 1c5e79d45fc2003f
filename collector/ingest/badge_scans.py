"""Unknown and blocked badge scans (issue 14 item 2; CONTROLS.md D13, §5): a recorded punch
whose credential the people directory resolves, at the punch's device time, to no holder
(``unknown``: never assigned then, or returned) or to a badge reported ``lost`` or
``blocked``.

- ``badge-blocked`` (severity 2): a lost or blocked badge was used: a stolen badge, or one a
  leaver kept. The alert's ``status`` field says which.
- ``badge-unknown`` (severity 3): a badge nobody held then: a new hire not yet in the
  directory, a visitor, or a cloned or made-up credential.

Each is an ``alert`` entry, ``timeclock_alerts_total{kind}`` and a log line through
collector.ingest.alerts, and names the punch by idx and device: never the credential (the
detail carries wire.redact's per-process tag, so an operator sees that two alerts are of one
badge). One alert per badge and kind per ``repeat_after_s`` of device time; the badges
remembered are an LRU of ``badges_max``.

The directory is read when it changes, not per punch: :meth:`BadgeScans.refresh` (the
service's tick) compares a cheap version of ``tc_badges`` and reloads every period
(collector.ledger.people_tables.BadgeResolver, one query) only when a badge entry was
recorded. A ledger without badge periods (no directory yet) raises nothing: every punch
would be ``unknown``. Detection runs after the commit: it never delays or refuses a punch.
The same periods serve the per-person buddy-punch detectors (collector.ingest.detectors_people):
they are loaded when either is on (``load=``), and :meth:`resolve` answers for both, once per
punch.
"""

from __future__ import annotations

import logging
import threading
from collections import OrderedDict
from collections.abc import Callable

from collector.ingest.alerts import SEVERITY_INFO, SEVERITY_WARNING, Alert, Alerts
from collector.ledger import people_tables
from collector.ledger.badge_scan_rows import badges_version
from collector.ledger.sqlbase import SQLStore
from wire.redact import redact

log = logging.getLogger("timeclock.detectors")

Resolve = Callable[[str, int], tuple[str | None, str]]
_US = 1_000_000


class BadgeScans:
    """The badge-scan detector; ``observe`` on the writer thread after a commit (under the
    Detectors' lock), ``refresh`` on the writer's tick."""

    def __init__(self, alerts: Alerts, *, enabled: bool = True, repeat_after_s: int = 3600,  # noqa: PLR0913 - the detector's settings
                 badges_max: int = 200_000, load: bool = False) -> None:
        self.alerts = alerts
        self.enabled = enabled
        # load the badge periods even with this detector off: the per-person buddy-punch
        # detectors (collector.ingest.detectors_people) resolve each punch through them
        self.load = enabled or load
        self.repeat_after_us = repeat_after_s * _US
        self.badges_max = badges_max
        self._resolve: Resolve | None = None
        self._version: tuple[int, int] | None = None
        self._last: OrderedDict[tuple[str, str], int] = OrderedDict()   # (credential, kind) → ts
        self._lock = threading.Lock()

    @property
    def active(self) -> bool:
        return self.enabled and self._resolve is not None

    @property
    def loaded(self) -> bool:
        """Are badge periods loaded (a directory with badges exists)?"""
        return self._resolve is not None

    def resolve(self, credential: str, ts: int) -> tuple[str | None, str]:
        """(employee id or None, badge status) at device time ``ts``; unknown when nothing
        is loaded."""
        resolve = self._resolve
        return (None, "unknown") if resolve is None else resolve(credential, ts)

    @property
    def resolver(self) -> Resolve | None:
        """The current badge resolution (None while silent); collector.ingest.badge_outcomes."""
        return self._resolve if self.enabled else None

    def set_resolver(self, resolve: Resolve | None) -> None:
        """Judge punches with ``resolve`` from now on (None: judge nothing)."""
        self._resolve = resolve

    def refresh(self, store: SQLStore) -> bool:
        """Reload the badge periods if a badge entry changed them; True when reloaded."""
        if not self.load:
            return False
        version = badges_version(store)
        if version == self._version:
            return False
        self._version = version
        self._resolve = (None if version is None
                         else people_tables.BadgeResolver.load(store).resolve)
        return True

    def observe(self, credential: str, device: str, ts: int, idx: int) -> list[Alert]:
        """Judge one appended punch; at most one alert."""
        if not self.enabled or self._resolve is None:
            return []
        return self.judge(self._resolve(credential, ts), credential, device, ts, idx)

    def judge(self, held: tuple[str | None, str], credential: str, device: str, ts: int,  # noqa: PLR0913, PLR0917 - one punch, already resolved
              idx: int) -> list[Alert]:
        """Judge one appended punch whose badge resolved to ``held``; at most one alert."""
        if not self.enabled or self._resolve is None:
            return []
        status = held[1]
        if status == "assigned":
            return []
        kind = "badge-unknown" if status == "unknown" else "badge-blocked"
        key = (credential, kind)
        with self._lock:
            last = self._last.pop(key, None)
            if last is not None and abs(ts - last) < self.repeat_after_us:
                self._last[key] = last
                self.alerts.count(f"{kind}-repeat")
                return []
            self._last[key] = ts
            while len(self._last) > self.badges_max:
                self._last.popitem(last=False)
        what = ("nobody held at its device time" if status == "unknown"
                else f"reported {status} at its device time")
        return [self.alerts.alert(
            kind, severity=SEVERITY_INFO if status == "unknown" else SEVERITY_WARNING,
            device=device,
            detail=f"punch idx {idx} at {device}: a badge {what} (credential "
                   f"{redact(credential)})",
            fields={"punch_idx": [idx], "status": status})]
