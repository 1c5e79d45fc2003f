"""Alert review and scheduled reviews, recorded as ``review`` ledger entries (issue 14 item 3;
CONTROLS.md D13; docs/protocol.md §7.2 "review", docs/operations.md "Reviewing alerts and
scheduled reviews").

- An ``alert`` entry is **open** until a named reviewer resolves it; it is **acknowledged**
  once one acknowledges it. Resolving needs an acknowledgement first; an alert is
  acknowledged and resolved once each. An alert whose body names a ``principal`` (the actor
  it is about) may not be resolved by that principal (it may be acknowledged by them).
- Scheduled reviews: ``daily-alerts`` (the alerts of each UTC day) and ``access-sample``
  (each ISO week, ``sample_size`` access entries of the week drawn with :mod:`secrets`). A
  period is **due** once it has ended and **overdue** ``grace_s`` after that, until its
  sign-off entry exists. The access sample's entry holds the idx drawn and the population
  they were drawn from, so an auditor re-performs it from the entry (:func:`check_sample`).
- :class:`ReviewWatch` (the service's tick) raises one ``review-overdue`` alert (severity 2)
  per overdue period: it remembers what it raised and, after a restart, finds the alert
  entries it raised before, so a period is alerted once however often the tick runs. Only
  the newest :data:`ALERT_RECENT` periods of each kind are alerted (reviews enabled on an
  old ledger do not raise a year of alerts at once; ``reviews due`` lists up to
  :data:`DUE_MAX`, and ``[reviews] start`` says from which day reviews are owed).

Invariants: every check and the entry it allows run in one write transaction under the
chain-head lock (two reviewers cannot both resolve one alert); a refusal is a
:class:`~collector.ReviewError` and records nothing; time comes in as ``now_us``.
"""

from __future__ import annotations

import json
import logging
import secrets
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any

from collector import ReviewError, SoDError
from collector.ledger import review_rows as R
from collector.ledger.sqlbase import SQLStore
from wire.bodies_review import (
    REVIEW_KINDS,
    AlertReview,
    SignOff,
    parse_review,
    period_bounds,
    period_of,
)
from wire.config import Section
from wire.errors import WireError

log = logging.getLogger("timeclock.reviews")

OVERDUE_KIND = "review-overdue"
STATUSES = ("open", "acknowledged", "resolved")
DUE_MAX = 366            # periods listed per review kind, newest first
ALERT_RECENT = 7         # ReviewWatch alerts for overdue periods among the newest 7 per kind
_DAY_S = 86_400


@dataclass(frozen=True, slots=True)
class ReviewSettings:
    """``[reviews]``: the schedule (docs/operations.md). ``enabled``: the service raises
    ``review-overdue`` alerts; ``start``: periods before this day (YYYY-MM-DD) are not
    due (default: the day of the ledger's first entry)."""

    enabled: bool = True
    daily_alerts: bool = True
    daily_grace_s: int = _DAY_S              # a day's alerts are signed off the next day
    access_sample: bool = True
    access_grace_s: int = 3 * _DAY_S         # a week's sample by its Wednesday
    sample_size: int = 25
    start: str | None = None
    check_every_s: int = 60
    # access reviews (collector.access.access_reviews): one signed off every N days (0: off)
    access_review_days: int = 90
    access_review_grace_s: int = 14 * _DAY_S

    def kinds(self) -> tuple[str, ...]:
        return tuple(k for k, on in (("daily-alerts", self.daily_alerts),
                                     ("access-sample", self.access_sample)) if on)

    def grace_us(self, review: str) -> int:
        s = self.daily_grace_s if review == "daily-alerts" else self.access_grace_s
        return s * 1_000_000


def read_review_section(sec: Section) -> ReviewSettings:
    d = ReviewSettings()
    start = sec.string("start", pattern=None)
    if start is not None:
        try:
            period_bounds("daily-alerts", start)
        except WireError:
            sec.problem("start", f"{start[:20]!r} is not a date (YYYY-MM-DD)")
            start = None
    s = ReviewSettings(
        enabled=sec.boolean("enabled", d.enabled),
        daily_alerts=sec.boolean("daily_alerts", d.daily_alerts),
        daily_grace_s=sec.integer("daily_grace_s", d.daily_grace_s, lo=0, hi=30 * _DAY_S),
        access_sample=sec.boolean("access_sample", d.access_sample),
        access_grace_s=sec.integer("access_grace_s", d.access_grace_s, lo=0, hi=30 * _DAY_S),
        sample_size=sec.integer("sample_size", d.sample_size, lo=1, hi=1000),
        start=start,
        check_every_s=sec.integer("check_every_s", d.check_every_s, lo=1, hi=_DAY_S),
        access_review_days=sec.integer("access_review_days", d.access_review_days, lo=0,
                                       hi=366),
        access_review_grace_s=sec.integer("access_review_grace_s", d.access_review_grace_s,
                                          lo=0, hi=90 * _DAY_S))
    sec.finish()
    return s


# -- alerts ------------------------------------------------------------------------------

@dataclass(slots=True)
class AlertState:
    """One ``alert`` entry and what reviewers did about it."""

    idx: int
    at: int
    body: dict[str, Any]
    acked: AlertReview | None = None
    acked_idx: int | None = None
    resolved: AlertReview | None = None
    resolved_idx: int | None = None

    @property
    def status(self) -> str:
        if self.resolved is not None:
            return "resolved"
        return "acknowledged" if self.acked is not None else "open"

    def apply(self, idx: int, rv: AlertReview) -> None:
        """Fold in the review entry ``idx`` (the first ack and the first resolve count)."""
        if rv.event == "ack" and self.acked is None:
            self.acked, self.acked_idx = rv, idx
        elif rv.event == "resolve" and self.resolved is None:
            self.resolved, self.resolved_idx = rv, idx

    def to_dict(self) -> dict[str, Any]:
        b = self.body
        out: dict[str, Any] = {
            "idx": self.idx, "at": self.at, "alert": b.get("alert"),
            "severity": b.get("severity"), "device": b.get("device"),
            "detail": b.get("detail"), "status": self.status}
        if "principal" in b:
            out["principal"] = b["principal"]
        for name, r, i in (("acknowledged", self.acked, self.acked_idx),
                           ("resolved", self.resolved, self.resolved_idx)):
            out[name] = None if r is None else {"idx": i, "by": r.by, "note": r.note}
        return out


def _json(raw: bytes | None) -> dict[str, Any] | None:
    if raw is None:
        return None
    try:
        value = json.loads(raw)
    except ValueError:              # an edited body: `ledger verify` names it
        return None
    return value if isinstance(value, dict) else None


def _reviews(rows: R.Rows) -> Iterable[tuple[int, AlertReview | SignOff]]:
    for r in R.of_kind(rows, "review"):
        body = _json(r.body)
        if body is None:
            continue
        try:
            yield r.idx, parse_review(body, r.idx)  # the store parsed it on append
        except WireError as e:      # so only an edited body fails: verify reports it
            log.warning("review entry %d does not parse (%s); it is not counted", r.idx, e)


def alerts(store: SQLStore, *, status: str | None = None) -> list[AlertState]:
    """Every alert entry with its review state (``status``: only those; ``open`` means not
    resolved, so acknowledged ones too), oldest first."""
    if status is not None and status not in STATUSES:
        raise ReviewError(f"status: one of {', '.join(STATUSES)}, got {status[:20]!r}")
    found: dict[int, AlertState] = {}
    for r in R.of_kind(store.query, "alert"):
        body = _json(r.body)
        found[r.idx] = AlertState(r.idx, r.at, body if body is not None else {})
    for idx, rv in _reviews(store.query):
        a = found.get(rv.alert_idx) if isinstance(rv, AlertReview) else None
        if a is not None and isinstance(rv, AlertReview):
            a.apply(idx, rv)
    out = list(found.values())
    if status == "open":
        return [a for a in out if a.status != "resolved"]
    if status is not None:
        return [a for a in out if a.status == status]
    return out


def _judge(state: AlertState, event: str, by: str) -> None:
    """ReviewError when ``by`` may not ``event`` the alert as it stands."""
    i = state.idx
    if state.resolved is not None:
        raise ReviewError(f"alert {i} was resolved by {state.resolved.by} "
                          f"(idx {state.resolved_idx}); nothing recorded")
    if event == "ack" and state.acked is not None:
        raise ReviewError(f"alert {i} was acknowledged by {state.acked.by} "
                          f"(idx {state.acked_idx}); nothing recorded")
    if event == "resolve" and state.acked is None:
        raise ReviewError(f"alert {i} is not acknowledged: acknowledge it "
                          f"(`alerts ack {i}`) before resolving it")
    if event == "resolve" and state.body.get("principal") == by:
        raise SoDError(f"alert {i} is about {by}'s own action: another reviewer "
                       f"resolves it (segregation of duties)")


def review_alert(store: SQLStore, event: str, alert_idx: int, *, by: str, note: str,
                 now_us: int) -> tuple[int, AlertState]:
    """Record ``event`` (``ack`` or ``resolve``) of the alert at ``alert_idx`` by ``by``;
    (the review entry's idx, the alert's state after it). ReviewError when refused."""
    if event not in ("ack", "resolve"):
        raise ReviewError(f"event: ack or resolve, got {event[:20]!r}")
    body = {"event": event, "alert_idx": alert_idx, "by": by, "note": note}
    try:
        parse_review(body, alert_idx + 1)
    except WireError as e:
        raise ReviewError(f"{event} of alert {alert_idx}: {e}") from e
    verb = "acknowledge" if event == "ack" else "resolve"
    with store.transaction(now_us, what=f"recording an alert {event}") as tx:
        got = R.entry(tx.rows, alert_idx)
        if got is None or got[0] != "alert":
            what = "no entry" if got is None else f"a {got[0]} entry"
            raise ReviewError(f"idx {alert_idx} is {what}, not an alert: nothing to {verb}")
        state = AlertState(alert_idx, got[1], _json(got[2]) or {})
        for idx, rv in _reviews(tx.rows):
            if isinstance(rv, AlertReview) and rv.alert_idx == alert_idx:
                state.apply(idx, rv)
        _judge(state, event, by)
        idx = tx.record("review", body)
    state.apply(idx, AlertReview(event, alert_idx, by, note))
    log.info("alert %d %s by %s (review entry %d)", alert_idx,
             "acknowledged" if event == "ack" else "resolved", by, idx)
    return idx, state


# -- scheduled reviews -------------------------------------------------------------------

@dataclass(frozen=True, slots=True)
class Due:
    """One period of a scheduled review that has ended and is not signed off."""

    review: str
    period: str
    from_us: int
    until_us: int
    overdue_at_us: int
    overdue: bool

    def to_dict(self) -> dict[str, Any]:
        return {"review": self.review, "period": self.period, "from": self.from_us,
                "until": self.until_us, "overdue_at": self.overdue_at_us,
                "status": "overdue" if self.overdue else "due"}


def signed_off(rows: R.Rows) -> dict[tuple[str, str], int]:
    """{(review, period): idx of its first sign-off entry}."""
    out: dict[tuple[str, str], int] = {}
    for idx, rv in _reviews(rows):
        if isinstance(rv, SignOff):
            out.setdefault((rv.review, rv.period), idx)
    return out


def review_start_us(settings: ReviewSettings) -> int | None:
    """``[reviews] start`` in µs (None: from the ledger's first entry)."""
    return None if settings.start is None else period_bounds("daily-alerts", settings.start)[0]


def _start_us(rows: R.Rows, settings: ReviewSettings) -> int | None:
    if settings.start is not None:
        return period_bounds("daily-alerts", settings.start)[0]
    return R.first_at(rows)


def _periods(review: str, start_us: int, now_us: int, limit: int
             ) -> list[tuple[str, int, int]]:
    """(period, from, until) of every period of ``review`` that holds an instant at or after
    ``start_us`` and has ended by ``now_us``, newest first, at most ``limit``."""
    out: list[tuple[str, int, int]] = []
    first, until = period_bounds(review, period_of(review, now_us))
    while len(out) < limit:
        # step back one period from the one holding ``now`` (or the previous step)
        first, until = period_bounds(review, period_of(review, first - 1))
        if until <= start_us:
            break
        out.append((period_of(review, first), first, until))
    return out


def due(store: SQLStore, settings: ReviewSettings, *, now_us: int,
        recent: int = DUE_MAX) -> list[Due]:
    """The periods of the configured reviews that are due or overdue at ``now_us`` (ended,
    not signed off) among the ``recent`` newest periods of each kind, oldest first per
    kind."""
    start = _start_us(store.query, settings)
    if start is None:
        return []
    done = signed_off(store.query)
    out: list[Due] = []
    for review in settings.kinds():
        grace = settings.grace_us(review)
        for period, first, until in reversed(_periods(review, start, now_us, recent)):
            if (review, period) not in done:
                out.append(Due(review, period, first, until, until + grace,
                               now_us >= until + grace))
    return out


def draw_sample(population: list[int], size: int) -> list[int]:
    """``size`` distinct idx of ``population`` (all of them when fewer), drawn with the
    operating system's CSPRNG (:mod:`secrets`), ascending."""
    if len(population) <= size:
        return sorted(population)
    return sorted(secrets.SystemRandom().sample(population, size))


@dataclass(frozen=True, slots=True)
class SignedOff:
    idx: int
    body: dict[str, Any]


def sign_off(store: SQLStore, review: str, *, by: str, note: str, now_us: int,
             settings: ReviewSettings, period: str | None = None,
             draw: Callable[[list[int], int], list[int]] = draw_sample) -> SignedOff:
    """Record the sign-off of ``period`` of ``review`` (default: its oldest period that is
    due) by ``by``. ReviewError: unknown review, period not over yet, already signed off."""
    if review not in REVIEW_KINDS:
        raise ReviewError(f"review: one of {', '.join(sorted(REVIEW_KINDS))}, "
                          f"got {review[:30]!r}")
    if period is None:
        pending = [d for d in due(store, settings, now_us=now_us) if d.review == review]
        if not pending:
            raise ReviewError(f"no {review} period is due: nothing to sign off "
                              f"(`reviews due` lists them; --period names one)")
        period = pending[0].period
    try:
        first, until = period_bounds(review, period)
    except WireError as e:
        raise ReviewError(f"{review}: {e}") from e
    if until > now_us:
        raise ReviewError(f"{review} {period} is not over yet: it ends at {until} µs "
                          f"(UTC {period_of('daily-alerts', until)}); sign it off then")
    body: dict[str, Any] = {"event": "sign-off", "review": review, "period": period,
                            "from": first, "until": until, "by": by, "note": note}
    if review == "access-sample":
        population = R.idxs_in_window(store.query, "access", first, until)
        body["sampled"] = draw(population, settings.sample_size)
        body["population"] = len(population)
    else:
        mine = [a for a in alerts(store) if first <= a.at < until]
        body["alerts"] = len(mine)
        body["unresolved"] = [a.idx for a in mine if a.status != "resolved"][:1000]
    try:
        parse_review(body, 2**53)
    except WireError as e:
        raise ReviewError(f"sign-off of {review} {period}: {e}") from e
    with store.transaction(now_us, what="recording a review sign-off") as tx:
        done = signed_off(tx.rows)
        if (review, period) in done:
            raise ReviewError(f"{review} {period} was signed off at idx "
                              f"{done[(review, period)]}; nothing recorded")
        idx = tx.record("review", body)
    log.info("%s %s signed off by %s (review entry %d)", review, period, by, idx)
    return SignedOff(idx, body)


@dataclass(frozen=True, slots=True)
class SampleCheck:
    """What re-performing an access sample found (``ok`` when nothing)."""

    problems: tuple[str, ...]

    @property
    def ok(self) -> bool:
        return not self.problems


def check_sample(store: SQLStore, idx: int) -> SampleCheck:
    """Re-perform the access-sample sign-off at ``idx`` from its entry: every idx sampled is
    an ``access`` entry recorded in the period, and the population it names is the number
    of access entries recorded in the period."""
    got = R.entry(store.query, idx)
    if got is None or got[0] != "review" or got[2] is None:
        return SampleCheck((f"idx {idx} is not a review entry with a body",))
    rv = parse_review(json.loads(got[2]), idx)
    if not isinstance(rv, SignOff) or rv.review != "access-sample":
        return SampleCheck((f"idx {idx} is not an access-sample sign-off",))
    population = R.idxs_in_window(store.query, "access", rv.from_us, rv.until_us)
    members = set(population)
    problems = [f"sampled idx {i} is not an access entry of {rv.period}"
                for i in rv.sampled if i not in members]
    if rv.population != len(population):
        problems.append(f"population {rv.population} recorded, {len(population)} access "
                        f"entries in {rv.period}")
    return SampleCheck(tuple(problems))


# -- overdue alerts (the service's tick) -------------------------------------------------

RaiseAlert = Callable[..., object]


@dataclass
class ReviewWatch:
    """Raises one ``review-overdue`` alert per overdue period (``alert`` is
    collector.ingest.alerts.Alerts.alert); ``tick`` runs on the service's writer tick and
    reads the ledger at most once per ``check_every_s``."""

    settings: ReviewSettings
    alert: RaiseAlert
    _raised: set[tuple[str, str]] = field(default_factory=set)
    _loaded: bool = False
    _checked_us: int | None = None

    def _load(self, store: SQLStore) -> None:
        for body in R.alerts_named(store.query, OVERDUE_KIND):
            review, period = body.get("review"), body.get("period")
            if isinstance(review, str) and isinstance(period, str):
                self._raised.add((review, period))
        self._loaded = True

    def tick(self, store: SQLStore, now_us: int) -> int:
        """Alert every overdue period not alerted before; how many were raised."""
        if not self.settings.enabled:
            return 0
        if self._checked_us is not None and \
                now_us - self._checked_us < self.settings.check_every_s * 1_000_000:
            return 0
        self._checked_us = now_us
        if not self._loaded:
            self._load(store)
        raised = 0
        for d in due(store, self.settings, now_us=now_us, recent=ALERT_RECENT):
            if not d.overdue or (d.review, d.period) in self._raised:
                continue
            self._raised.add((d.review, d.period))
            self.alert(OVERDUE_KIND, severity=2, device=None,
                       detail=f"{d.review} review of {d.period} is not signed off "
                              f"(overdue since {d.overdue_at_us} µs)",
                       fields={"review": d.review, "period": d.period})
            raised += 1
        return raised
