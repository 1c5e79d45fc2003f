"""The collector's anomaly detectors (issue 14 item 2; CONTROLS.md D13, D14, §5).

Each detector watches what ingest already has in hand (committed punches with their receive
time, rejections, device status messages, API authentication failures) and raises through
the :class:`~collector.ingest.alerts.Alerts` sink: a structured log line, the
``timeclock_alerts_total`` metric and, in ``serve``, an ``alert`` ledger entry (not for
``verification-failure``, whose evidence is the rejection entry: alerts.NOT_RECORDED).
Detection never blocks, deletes or delays a punch: it runs after the commit, and what it
judges is already recorded.

Kinds (``[detectors]`` keys in docs/operations.md "Monitoring", with the rationale of each
default):

- ``clock-offline`` (sev 2): a device whose last word is an ``offline`` status (a clean stop
  or its last will) for ``offline_after_s`` (a restart or an upgrade takes less), or that
  said nothing at all (no online status, no punch) for ``silent_after_s`` (clocks republish
  their status every minute, so ten missed ones). Re-armed when it speaks again.
- ``clock-skew`` (sev 2): a device's wall time differs from the collector's receive time by
  more than ``skew_max_s``: measured on live status messages (published every minute with
  the device's time; the first one after the collector starts may be the retained copy of an
  old one and is not used) and on punches dated ahead of their receive time (a backlog makes
  a punch late, never early). Re-armed once back within the limit.
- ``implausible-time`` (sev 2): a punch dated before 2020-01-01 or more than a day after its
  receive time (a 1970 RTC, a clock without battery), or, with ``max_backlog_s`` set (default
  0: off, since a clock kept offline for months delivers an honest old backlog), more than
  that before its receive time. One alert per device per ``repeat_after_s``.
- ``replay-burst`` (sev 1): more than ``replay_max`` copies, within ``replay_window_s``, of
  a device's punches that the ledger recorded at least ``replay_min_age_s`` before they
  arrived again. An honest clock only resends punches it holds no receipt for: copies queued
  at the broker while the collector was away arrive together but right after the first copy
  was recorded, so they do not count; old punches arriving again are captured traffic
  replayed (or a clock that gets no receipts at all: queue-age says which).
- ``buddy-punch`` (sev 2): the same badge at two different clocks closer in device time than
  travel between them allows: ``travel_same_site_s`` within one site, ``travel_other_site_s``
  between sites. It covers badge cloning (two copies used in two places) as well as one
  person tapping several badges. A double tap at one clock is never an alert.
- ``verification-failure`` (sev 2): punches or messages quarantined as failing verification
  (bad signature, unknown or revoked device or key, malformed, …), per device (or topic) and
  reason at most once per ``repeat_after_s`` with the count since the last alert; every one
  of them is already a ``rejection`` entry.
- ``auth-failure-burst`` (sev 2): more than ``[api] auth_failures_max`` failed API
  authentications from one client address within ``[api] auth_failures_window_s``: the
  address the API's throttle locks out (collector.api.metrics raises it).
- ``queue-age`` (sev 2): a clock's live status says its oldest unreceipted punch is older
  than ``queue_age_max_s`` (an hour: the punches are not in the ledger, so not in payroll;
  0: off). Re-armed once its queue is younger again.
- ``badge-blocked`` (sev 2) / ``badge-unknown`` (sev 3): a punch whose badge the people
  directory resolves at its device time to a lost or blocked badge, or to nobody
  (collector.ingest.badge_scans; ``badge_scans = false`` turns it off; silent while the
  directory has no badge periods).
- ``buddy-punch`` by employee and ``buddy-pair`` (sev 2): one employee through two of their
  badges at two clocks closer than travel allows, and two employees' badges tapped back to
  back at one clock on several days (collector.ingest.detectors_people, with the directory's
  badge periods; ``people_buddy``, ``pair_window_s``, ``pair_min_days``,
  ``pair_lookback_days``, ``pairs_max``).
- ``grant-change`` (sev 3), ``export-volume`` and ``after-hours-read`` (sev 2): over the
  access entries (collector.ingest.detectors_access; ``grant_changes``, ``export_rows_max``,
  ``export_window_s``, ``business_hours``, ``business_days``, ``business_timezone``).
- ``witness-refusal`` is raised by collector.ingest.cosignatures and witness_client.

``enabled = false`` turns every detector of this module off (the alert sink, the chain-break,
conflict and gap detectors of collector.ingest.alerts and the API's auth-failure-burst stay):
what bench/ingest.py ``--compare-monitoring`` measures against.

Invariants: every detector's state is bounded (per device, per badge with an LRU bound, per
address with an LRU bound); time comes in as a parameter (``now_us``), so tests never sleep.
"""

from __future__ import annotations

import datetime as dt
import logging
import threading
from collections import Counter, OrderedDict, deque
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from collector.ingest import metrics
from collector.ingest.alerts import SEVERITY_CRITICAL, SEVERITY_WARNING, Alert, Alerts
from collector.ingest.badge_scans import BadgeScans
from collector.ingest.detectors_access import AccessSettings, AccessWatch, days_of, hours_of
from collector.ingest.detectors_people import PeopleDetectors, PeopleSettings
from collector.ingest.metrics import Gauge
from collector.ledger.base import AppendResult, Fact, Outcome, PunchFact, RejectionFact
from wire.config import Section
from wire.device_status import DeviceStatus

log = logging.getLogger("timeclock.detectors")

# Rejection reasons that raise an alert of their own (severity 1 conflict and fork in the
# pipeline, seq-loss for a clock's loss report): not a verification-failure as well.
OWN_ALERTS = frozenset({"conflict", "fork", "seq-loss"})
EPOCH_FLOOR_US = int(dt.datetime(2020, 1, 1, tzinfo=dt.UTC).timestamp() * 1_000_000)
FUTURE_MAX_US = 86_400 * 1_000_000
_US = 1_000_000
_NONE: tuple[Alert, ...] = ()     # no alert: one shared empty result, none built per punch


@dataclass(frozen=True, slots=True)
class DetectorSettings:
    """``[detectors]``: the thresholds (module doc and docs/operations.md say why these)."""

    enabled: bool = True                  # false: no ingest-side detector runs at all
    offline_after_s: int = 300            # an offline status this long: not a restart
    silent_after_s: int = 600             # ten missed status messages (every 60 s)
    skew_max_s: int = 60                  # NTP keeps clocks within ms; a minute is payroll
    max_backlog_s: int = 0                # 0: off (a clock may hold a long backlog)
    replay_max: int = 5                   # copies of old punches, more than this …
    replay_window_s: int = 60             # … within this …
    replay_min_age_s: int = 600           # … "old": recorded this long before (resend: 30 s)
    travel_same_site_s: int = 60          # walking between two clocks of one site
    travel_other_site_s: int = 1800       # driving between sites
    repeat_after_s: int = 3600            # re-alert a lasting condition this often
    queue_age_max_s: int = 3600           # unreceipted punches this old: payroll at risk
    badges_max: int = 200_000             # badges remembered for buddy-punch (LRU)
    badge_scans: bool = True              # badge-unknown / badge-blocked (badge_scans.py)
    people_buddy: bool = True             # one employee, two badges (detectors_people.py)
    pair_window_s: int = 4                # buddy-pair: two badges back to back at a clock …
    pair_min_days: int = 4                # … on this many distinct days …
    pair_lookback_days: int = 14          # … within this many (0 s window: off)
    pairs_max: int = 100_000              # pairs and employees remembered (LRU)
    grant_changes: bool = True            # grant-change (detectors_access.py)
    export_rows_max: int = 100_000        # export-volume: rows of personal data …
    export_window_s: int = 3600           # … per principal within this (0 rows: off)
    business_hours: str = ""              # after-hours-read: "06:00-20:00" ("": off) …
    business_days: str = "mon-sun"        # … on these days …
    business_timezone: str = "UTC"        # … in this time zone

    def people(self) -> PeopleSettings:
        return PeopleSettings(
            people_buddy=self.people_buddy, travel_same_site_s=self.travel_same_site_s,
            travel_other_site_s=self.travel_other_site_s, pair_window_s=self.pair_window_s,
            pair_min_days=self.pair_min_days, pair_lookback_days=self.pair_lookback_days,
            pairs_max=self.pairs_max)

    def access(self) -> AccessSettings:
        return AccessSettings(
            grant_changes=self.grant_changes, export_rows_max=self.export_rows_max,
            export_window_s=self.export_window_s, business_hours=self.business_hours,
            business_days=self.business_days, business_timezone=self.business_timezone)


def read_detector_section(sec: Section) -> DetectorSettings:
    d = DetectorSettings()
    day = 86_400
    s = DetectorSettings(
        offline_after_s=sec.integer("offline_after_s", d.offline_after_s, lo=1, hi=30 * day),
        silent_after_s=sec.integer("silent_after_s", d.silent_after_s, lo=1, hi=30 * day),
        skew_max_s=sec.integer("skew_max_s", d.skew_max_s, lo=1, hi=day),
        max_backlog_s=sec.integer("max_backlog_s", d.max_backlog_s, lo=0, hi=3650 * day),
        replay_max=sec.integer("replay_max", d.replay_max, lo=1, hi=1_000_000),
        replay_window_s=sec.integer("replay_window_s", d.replay_window_s, lo=1, hi=day),
        replay_min_age_s=sec.integer("replay_min_age_s", d.replay_min_age_s, lo=1,
                                     hi=30 * day),
        travel_same_site_s=sec.integer("travel_same_site_s", d.travel_same_site_s, lo=0,
                                       hi=day),
        travel_other_site_s=sec.integer("travel_other_site_s", d.travel_other_site_s, lo=0,
                                        hi=7 * day),
        repeat_after_s=sec.integer("repeat_after_s", d.repeat_after_s, lo=1, hi=30 * day),
        queue_age_max_s=sec.integer("queue_age_max_s", d.queue_age_max_s, lo=0,
                                    hi=30 * day),
        badges_max=sec.integer("badges_max", d.badges_max, lo=100, hi=10_000_000),
        enabled=sec.boolean("enabled", d.enabled),
        badge_scans=sec.boolean("badge_scans", d.badge_scans),
        people_buddy=sec.boolean("people_buddy", d.people_buddy),
        pair_window_s=sec.integer("pair_window_s", d.pair_window_s, lo=0, hi=600),
        pair_min_days=sec.integer("pair_min_days", d.pair_min_days, lo=1, hi=366),
        pair_lookback_days=sec.integer("pair_lookback_days", d.pair_lookback_days, lo=1,
                                       hi=366),
        pairs_max=sec.integer("pairs_max", d.pairs_max, lo=100, hi=10_000_000),
        grant_changes=sec.boolean("grant_changes", d.grant_changes),
        export_rows_max=sec.integer("export_rows_max", d.export_rows_max, lo=0,
                                    hi=1_000_000_000),
        export_window_s=sec.integer("export_window_s", d.export_window_s, lo=1, hi=30 * day),
        **_business(sec, d))
    sec.finish()
    return s


def _business(sec: Section, d: DetectorSettings) -> dict[str, str]:
    """``business_hours``, ``business_days``, ``business_timezone``, each checked."""
    hours = sec.string("business_hours", d.business_hours, pattern=None) or ""
    if hours and hours_of(hours) is None:
        sec.problem("business_hours", f"{hours[:20]!r} is not HH:MM-HH:MM (start before end)")
        hours = ""
    days = sec.string("business_days", d.business_days, pattern=None) or d.business_days
    if days_of(days) is None:
        sec.problem("business_days", f"{days[:20]!r} is not a day range such as mon-fri")
        days = d.business_days
    tz = sec.string("business_timezone", d.business_timezone, pattern=None) \
        or d.business_timezone
    try:
        ZoneInfo(tz)
    except (ValueError, ZoneInfoNotFoundError):
        sec.problem("business_timezone", f"{tz[:40]!r} is not a time zone (e.g. Europe/Paris)")
        tz = d.business_timezone
    return {"business_hours": hours, "business_days": days, "business_timezone": tz}


@dataclass(slots=True)
class _Device:
    last_seen_us: int | None = None      # an online status or a punch message
    online: bool | None = None           # the last status said so
    offline_since_us: int | None = None  # the last status said offline, since
    statuses: int = 0
    skew_s: float | None = None
    skewed: bool = False
    offline_alerted: bool = False
    implausible_at_us: int | None = None
    queue_alerted: bool = False
    replays: deque[int] = field(default_factory=deque)   # arrivals of old copies
    replay_alerted_us: int | None = None
    young: tuple[int, int] | None = None   # (idx, recorded at) of a recent entry


class Detectors:
    """The ingest-side detectors (see the module doc). ``observe`` runs on the writer thread
    after each commit; ``observe_status`` on the MQTT thread; ``check`` on the writer's tick.
    Thread-safe."""

    def __init__(self, alerts: Alerts, settings: DetectorSettings | None = None, *,
                 site_of: Callable[[str], str | None] | None = None,
                 recorded_at: Callable[[int], int | None] | None = None) -> None:
        self.alerts = alerts
        # When the entry at an idx was recorded (µs): how old a punch arriving again is.
        # Without it (or when it answers None) copies are not judged.
        self.recorded_at = recorded_at
        self.s = settings or DetectorSettings()
        self.site_of = site_of or (lambda _d: None)
        self._lock = threading.Lock()
        self._devices: dict[str, _Device] = {}
        self._badges: dict[str, tuple[tuple[str, int, int], ...]] = {}
        # precomputed for the hot path: a punch dated after 2020 and within [receive - lo,
        # receive + skew] needs no time check (lo: the backlog limit, if any)
        self._skew_us = self.s.skew_max_s * _US
        self._lo_us = -(self.s.max_backlog_s * _US) if self.s.max_backlog_s else -(1 << 62)
        self._travel_max_us = max(self.s.travel_same_site_s, self.s.travel_other_site_s) * _US
        self._buddy_on = self._travel_max_us > 0
        self.enabled = self.s.enabled
        self._failures: dict[tuple[str, str], tuple[int, int]] = {}   # (who, reason) → n, at
        # unknown and lost/blocked badges (collector.ingest.badge_scans; the service's tick
        # gives it the directory's badge periods)
        self.people = PeopleDetectors(alerts, self.s.people(), site_of=self.site_of)
        self._people_on = self.enabled and self.people.active
        # over the access entries (grant changes, export volume, after-hours reads): the
        # service's ledger read calls access.tick
        self.access = AccessWatch(alerts, self.s.access(), enabled=self.enabled)
        self.badge_scans = BadgeScans(alerts, enabled=self.enabled and self.s.badge_scans,
                                      repeat_after_s=self.s.repeat_after_s,
                                      badges_max=self.s.badges_max,
                                      load=self._people_on)

    def _dev(self, device: str) -> _Device:
        d = self._devices.get(device)
        if d is None:
            d = self._devices[device] = _Device()
        return d

    # -- punches and rejections (writer thread, after the commit) --------------------------
    def observe(self, done: Sequence[tuple[Fact, AppendResult]], *, now_us: int) -> list[Alert]:
        if not self.enabled:
            return []
        out: list[Alert] = []
        appended = Outcome.APPENDED
        skew_us, lo_us = self._skew_us, self._lo_us
        devices = self._devices
        with self._lock:
            # per batch, not per punch: which detectors judge appended punches (the badge
            # periods are swapped only by the writer's tick, never during a batch)
            buddy = self._buddy if self._buddy_on else None
            held = self._held if self.badge_scans.loaded else None
            pair = self.people.observe_badge if held is None and self._people_on \
                and self.people.pairs_on else None
            last_device: str | None = None
            d = _Device()
            for fact, r in done:
                if type(fact) is PunchFact:
                    if r.outcome is appended:       # the hot path: one per new punch
                        p = fact.signed.punch
                        device = p.device
                        if device != last_device:   # a batch holds runs of one device
                            d = devices.get(device) or self._dev(device)
                            last_device = device
                        recv = fact.received_at
                        if d.last_seen_us is None or recv > d.last_seen_us:
                            d.last_seen_us = recv
                        ts = p.ts
                        if ts < EPOCH_FLOOR_US or not lo_us <= ts - recv <= skew_us:
                            out.extend(self._time(device, d, ts, recv, r.idx))
                        if buddy is not None and (found := buddy(p.credential, device, ts,
                                                                 r.idx)):
                            out.extend(found)
                        if held is not None:
                            out.extend(held(p.credential, device, ts, r.idx))
                        elif pair is not None and (found := pair(p.credential, device, ts,
                                                                 r.idx)):
                            out.extend(found)    # no directory: pairs judged by badge
                    else:
                        out.extend(self._punch(fact, r))
                elif isinstance(fact, RejectionFact) and fact.reason not in OWN_ALERTS:
                    out.extend(self._rejection(fact.device or fact.topic[:120], fact.reason,
                                               now_us, fact.detail))
        return out

    def _held(self, credential: str, device: str, ts: int, idx: int) -> list[Alert]:
        """The directory's detectors: badge scans and the per-person ones, one resolve."""
        scans = self.badge_scans
        held = scans.resolve(credential, ts)
        out = scans.judge(held, credential, device, ts, idx) if scans.enabled else []
        if self._people_on:
            out.extend(self.people.observe(held[0], credential, device, ts, idx))
        return out

    def _punch(self, fact: PunchFact, r: AppendResult) -> list[Alert]:
        """A punch that was not appended: a duplicate or conflict counts toward replays."""
        p = fact.signed.punch
        d = self._dev(p.device)
        recv = fact.received_at
        if d.last_seen_us is None or recv > d.last_seen_us:
            d.last_seen_us = recv
        if r.outcome in (Outcome.DUPLICATE, Outcome.CONFLICT):
            return self._replay(p.device, d, p.seq, recv, r.idx)
        return []

    def _time(self, device: str, d: _Device, ts: int, recv: int, idx: int) -> list[Alert]:
        """A punch dated outside [receive - max_backlog, receive + skew_max]: implausible
        (before 2020, more than a day ahead, beyond the backlog limit) or skewed ahead."""
        ahead = ts - recv
        backlog = self.s.max_backlog_s
        if ts < EPOCH_FLOOR_US or ahead > FUTURE_MAX_US \
                or (backlog and recv - ts > backlog * _US):
            if d.implausible_at_us is None \
                    or recv - d.implausible_at_us >= self.s.repeat_after_s * _US:
                d.implausible_at_us = recv
                when = dt.datetime.fromtimestamp(ts / _US, dt.UTC).isoformat(
                    timespec="seconds") if ts >= 0 else str(ts)
                return [self.alerts.alert(
                    "implausible-time", severity=SEVERITY_WARNING, device=device,
                    detail=f"punch at idx {idx} is dated {when}, {(recv - ts) / _US:.0f} s "
                           f"from its receive time: the clock's time cannot be trusted",
                    fields={"punch_idx": idx, "device_time_us": ts, "received_at": recv})]
            return []
        if ahead > self.s.skew_max_s * _US:
            return self._skew(device, d, ahead / _US, f"punch at idx {idx}")
        return []

    def _skew(self, device: str, d: _Device, skew_s: float, what: str) -> list[Alert]:
        d.skew_s = skew_s
        if abs(skew_s) <= self.s.skew_max_s:
            if d.skewed:
                log.info("%s: clock within %d s of the collector again (%+.1f s)", device,
                         self.s.skew_max_s, skew_s)
            d.skewed = False
            return []
        if d.skewed:
            return []
        d.skewed = True
        side = "ahead of" if skew_s > 0 else "behind"
        return [self.alerts.alert(
            "clock-skew", severity=SEVERITY_WARNING, device=device,
            detail=f"device time {abs(skew_s):.0f} s {side} the collector's receive time "
                   f"({what}; limit {self.s.skew_max_s} s)",
            fields={"skew_us": round(skew_s * _US)})]

    def _replay(self, device: str, d: _Device, seq: int, recv: int, idx: int
                ) -> list[Alert]:
        window = self.s.replay_window_s * _US
        if d.replay_alerted_us is not None and recv - d.replay_alerted_us < window:
            return []                       # already alerted: no more lookups this window
        if not self._old(d, idx, recv):
            return []
        q = d.replays
        q.append(recv)
        while q and recv - q[0] > window:
            q.popleft()
        if len(q) <= self.s.replay_max:
            return []
        d.replay_alerted_us = recv
        n = len(q)
        q.clear()
        return [self.alerts.alert(
            "replay-burst", severity=SEVERITY_CRITICAL, device=device,
            detail=f"{n} copies of punches recorded more than {self.s.replay_min_age_s} s "
                   f"earlier arrived within {self.s.replay_window_s} s (last: seq {seq}, "
                   f"entry {idx}): replayed traffic, or a clock that gets no receipts",
            fields={"seq": seq, "punch_idx": idx, "count": n})]

    def _old(self, d: _Device, idx: int, recv: int) -> bool:
        """Was entry ``idx`` recorded ``replay_min_age_s`` or more before ``recv``? One
        lookup at most per copy; none for copies above a recent entry already looked up
        (entries are recorded in idx order)."""
        min_age = self.s.replay_min_age_s * _US
        if d.young is not None and idx >= d.young[0] and recv - d.young[1] < min_age:
            return False
        at = self.recorded_at(idx) if self.recorded_at is not None else None
        if at is None:
            return False
        if recv - at < min_age:
            if d.young is None or idx < d.young[0] or recv - d.young[1] >= min_age:
                d.young = (idx, at)
            return False
        return True

    def _buddy(self, credential: str, device: str, ts: int, idx: int) -> Sequence[Alert]:
        # Recent sightings of each badge: (device, ts, idx), newest last, at most 8 and only
        # within the longest travel time; the dict is an LRU (re-inserted on each sighting).
        # Tuples of plain values, which the garbage collector stops tracking (there may be
        # badges_max of them); a badge seen for the first time costs one pop and one insert.
        badges = self._badges
        recent = badges.pop(credential, None)
        if recent is None:
            if len(badges) >= self.s.badges_max:
                del badges[next(iter(badges))]
            badges[credential] = ((device, ts, idx),)
            return _NONE
        out: Sequence[Alert] = _NONE
        for other, other_ts, other_idx in recent:
            if other == device:
                continue
            apart = abs(ts - other_ts)
            if apart >= self._travel_max_us:
                continue
            site, other_site = self.site_of(device), self.site_of(other)
            same_site = site is not None and site == other_site
            travel = self.s.travel_same_site_s if same_site else self.s.travel_other_site_s
            if apart < travel * _US:
                out = [self._buddy_alert(other, other_idx, device, idx, apart, travel,
                                         f"site {site}" if same_site else "two sites")]
                break
        if len(recent) >= 8 or abs(ts - recent[0][1]) >= self._travel_max_us:
            recent = tuple([x for x in recent if abs(ts - x[1]) < self._travel_max_us][-7:])
        badges[credential] = (*recent, (device, ts, idx))
        return out

    def _buddy_alert(self, other: str, other_idx: int, device: str, idx: int, apart: int,  # noqa: PLR0913, PLR0917 - the two sightings
                     travel: int, where: str) -> Alert:
        return self.alerts.alert(
            "buddy-punch", severity=SEVERITY_WARNING, device=device,
            detail=f"one badge at {other} (idx {other_idx}) and {device} (idx {idx}) "
                   f"{apart / _US:.0f} s apart, {where}: closer than the {travel} s travel "
                   f"allows (buddy punching or a cloned badge)",
            fields={"basis": "badge", "punch_idx": [other_idx, idx],
                    "devices": [other, device], "apart_us": apart})

    def _rejection(self, who: str, reason: str, now_us: int, detail: str) -> list[Alert]:
        key = (who, reason)
        n, at = self._failures.get(key, (0, 0))
        n += 1
        if at and now_us - at < self.s.repeat_after_s * _US:
            self._failures[key] = (n, at)
            return []
        self._failures[key] = (0, now_us)
        if len(self._failures) > 10_000:
            for k in sorted(self._failures, key=lambda k: self._failures[k][1])[:5_000]:
                del self._failures[k]
        device = who if "/" not in who else None
        return [self.alerts.alert(
            "verification-failure", severity=SEVERITY_WARNING, device=device,
            detail=f"{n} message(s) quarantined as {reason} from {who}"
                   + (" since the last alert" if at else "") + f": {detail[:200]}",
            fields={"reason": reason, "count": n})]

    # -- statuses (MQTT thread) ----------------------------------------------------------------
    def observe_status(self, device: str, status: DeviceStatus | None, received_at: int
                       ) -> list[Alert]:
        if not self.enabled:
            return []
        with self._lock:
            d = self._dev(device)
            d.statuses += 1
            if status is None:
                return []
            if status.state == "offline":
                if d.online is not False:
                    d.offline_since_us = received_at
                d.online = False
                return []
            d.online, d.offline_since_us, d.last_seen_us = True, None, received_at
            if d.offline_alerted:
                d.offline_alerted = False
                log.info("%s: online again", device)
            at = status.at
            if d.statuses == 1 or at is None:   # the first may be an old retained copy
                return []
            return [*self._skew(device, d, (at - received_at) / _US, "status message"),
                    *self._queue_age(device, d, status, at)]

    def _queue_age(self, device: str, d: _Device, status: DeviceStatus, at: int
                   ) -> list[Alert]:
        oldest = status.queue.oldest_unacked_us if status.queue is not None else None
        limit = self.s.queue_age_max_s
        age_s = (at - oldest) / _US if oldest is not None else 0.0
        if not limit or age_s <= limit:
            d.queue_alerted = False
            return []
        if d.queue_alerted:
            return []
        d.queue_alerted = True
        depth = status.queue.depth if status.queue is not None else 0
        return [self.alerts.alert(
            "queue-age", severity=SEVERITY_WARNING, device=device,
            detail=f"{depth} punch(es) on the clock without a receipt, the oldest for "
                   f"{age_s:.0f} s (limit {limit} s): they are not in the ledger yet",
            fields={"depth": depth, "oldest_unacked_us": oldest})]

    # -- periodic (writer tick) ------------------------------------------------------------------
    def check(self, devices: Iterable[str], *, now_us: int, started_us: int) -> list[Alert]:
        """``clock-offline`` for each of ``devices`` (the active ones) offline for
        ``offline_after_s`` or silent for ``silent_after_s``; a device never heard of counts
        from ``started_us``."""
        if not self.enabled:
            return []
        out: list[Alert] = []
        with self._lock:
            for device in devices:
                d = self._dev(device)
                if d.offline_alerted:
                    continue
                if d.online is False and d.offline_since_us is not None:
                    since, why = d.offline_since_us, "its last status says offline"
                    limit_s = self.s.offline_after_s
                else:
                    since = d.last_seen_us if d.last_seen_us is not None else started_us
                    why = "nothing heard from it"
                    if d.last_seen_us is None:
                        why += " since the collector started"
                    limit_s = self.s.silent_after_s
                limit = limit_s * _US
                if now_us - since < limit:
                    continue
                d.offline_alerted = True
                out.append(self.alerts.alert(
                    "clock-offline", severity=SEVERITY_WARNING, device=device,
                    detail=f"offline for {(now_us - since) // _US} s ({why}; limit "
                           f"{limit_s} s)",
                    fields={"since_us": since}))
        return out

    def gauges(self, *, now_us: int) -> list[Gauge]:
        out: list[Gauge] = []
        with self._lock:
            for device, d in sorted(self._devices.items()):
                lab = {"device": device}
                if d.last_seen_us is not None:
                    out.append(Gauge("device_last_seen_timestamp_seconds",
                                     "When the collector last heard from a clock (an online "
                                     "status or a punch).", d.last_seen_us / _US, lab))
                if d.online is not None:
                    out.append(Gauge("device_online", "1 while a clock's last status says "
                                     "online, 0 after its offline status or last will.",
                                     1.0 if d.online else 0.0, lab))
                if d.skew_s is not None:
                    out.append(Gauge("device_clock_skew_seconds",
                                     "A clock's wall time minus the collector's receive time "
                                     "(last live status, or a punch dated ahead).",
                                     d.skew_s, lab))
        return out


class AuthFailures:
    """``auth-failure-burst``: failed API authentications per client address in a window
    (the API's throttle refuses; this raises the alert). Bounded LRU of addresses."""

    def __init__(self, alerts: Alerts, *, max_failures: int, window_s: int,
                 addresses_max: int = 10_000) -> None:
        self.alerts = alerts
        self.max_failures = max_failures
        self.window_us = window_s * _US
        self.addresses_max = addresses_max
        self._lock = threading.Lock()
        self._seen: OrderedDict[str, tuple[deque[int], int | None]] = OrderedDict()

    def failed(self, client: str, *, now_us: int) -> Alert | None:
        with self._lock:
            q, alerted = self._seen.pop(client, (deque(), None))
            q.append(now_us)
            while q and now_us - q[0] > self.window_us:
                q.popleft()
            fire = len(q) >= self.max_failures and (
                alerted is None or now_us - alerted >= self.window_us)
            if fire:
                alerted = now_us
            self._seen[client] = (q, alerted)
            while len(self._seen) > self.addresses_max:
                self._seen.popitem(last=False)
            n = len(q)
        if not fire:
            return None
        return self.alerts.alert(
            "auth-failure-burst", severity=SEVERITY_WARNING, device=None,
            detail=f"{n} failed API authentications from {client} within "
                   f"{self.window_us // _US} s (limit {self.max_failures})",
            fields={"client": client, "count": n})


def sites(devices: Mapping[str, str]) -> Callable[[str], str | None]:
    return devices.get


class IngestMonitor:
    """What the ingest pipeline reports after each commit: the ingest metrics
    (collector.ingest.metrics) and, if given, the :class:`Detectors`. One object, so the
    pipeline has one optional hook (``Ingestor(monitor=)``) and a bench can turn it off."""

    def __init__(self, detectors: Detectors | None = None) -> None:
        self.detectors = detectors

    def appended(self, seconds: float) -> None:
        metrics.STORE_APPEND.observe(seconds)

    def repeat(self, reason: str) -> None:
        metrics.INGEST_REPEATS.labels(reason).inc()

    def committed(self, received_at: Sequence[int],
                  done: Sequence[tuple[Fact, AppendResult]], *, now_us: int) -> None:
        # One counter update per label and batch, never per punch; a histogram observation
        # per message (an envelope of up to 500 punches), as its meaning says.
        metrics.INGEST_MESSAGES.inc(len(received_at))
        observe = metrics.INGEST_LATENCY.observe
        for r in received_at:
            observe(max(now_us - r, 0) / _US)
        outcomes = [res.outcome for fact, res in done if type(fact) is not RejectionFact]
        if len(outcomes) < len(done):
            reasons = Counter([f.reason for f, _ in done if type(f) is RejectionFact])
            for reason, n in reasons.items():
                metrics.INGEST_REJECTIONS.labels(reason).inc(n)
        # list.count compares by identity first; Outcome's own hash is Python code
        appended = outcomes.count(Outcome.APPENDED)
        if appended:
            metrics.INGEST_PUNCHES.labels(Outcome.APPENDED.value).inc(appended)
        if appended < len(outcomes):
            for outcome, n in Counter(o for o in outcomes if o is not Outcome.APPENDED).items():
                metrics.INGEST_PUNCHES.labels(outcome.value).inc(n)
        if self.detectors is not None:
            self.detectors.observe(done, now_us=now_us)
