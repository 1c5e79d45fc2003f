"""The detectors of collector.ingest.detectors, table-tested on real stores (SQLite and
PostgreSQL) with synthetic signed punches: each case fires exactly the alerts it should, as
``alert`` ledger entries, and a normal week of 200 employees fires none."""

from __future__ import annotations

import random
from collections.abc import Callable
from dataclasses import dataclass

import pytest

from collector.ingest.alerts import NOT_RECORDED, Alerts
from collector.ingest.detectors import AuthFailures, Detectors, DetectorSettings
from collector.ingest.metrics import sample_value
from collector.ledger.sqlbase import SQLStore
from tests.collector.punch_kit import T0, SimClock, raw_envelope
from tests.monitoring.monitor_kit import Rig, S
from wire.device_status import DeviceStatus, QueueStatus
from wire.keys import SigningKey

BADGE = "em4100:0000004242"
OTHER = "em4100:0000007777"


def _two_clocks_same_site(rig: Rig) -> None:
    a, b = rig.clock("hq"), rig.clock("hq")
    rig.tap(a, BADGE, ts=T0)
    rig.tap(b, BADGE, ts=T0 + 20 * S)          # 20 s apart at two clocks of one site


def _same_clock_double_tap(rig: Rig) -> None:
    a = rig.clock("hq")
    rig.tap(a, BADGE, ts=T0)
    rig.tap(a, BADGE, ts=T0 + 5 * S)


def _same_site_after_walking(rig: Rig) -> None:
    a, b = rig.clock("hq"), rig.clock("hq")
    rig.tap(a, BADGE, ts=T0)
    rig.tap(b, BADGE, ts=T0 + 5 * 60 * S)


def _two_sites_ten_minutes(rig: Rig) -> None:
    a, b = rig.clock("hq"), rig.clock("plant")
    rig.tap(a, BADGE, ts=T0)
    rig.tap(b, BADGE, ts=T0 + 10 * 60 * S)     # 30 min travel between sites by default


def _two_sites_two_hours(rig: Rig) -> None:
    a, b = rig.clock("hq"), rig.clock("plant")
    rig.tap(a, BADGE, ts=T0)
    rig.tap(b, BADGE, ts=T0 + 2 * 3600 * S)


def _arrives_out_of_order(rig: Rig) -> None:
    a, b = rig.clock("hq"), rig.clock("plant")
    rig.tap(b, BADGE, ts=T0 + 60 * S)           # the later punch is delivered first
    rig.tap(a, BADGE, ts=T0, delay_s=600)       # a backlog: received 10 min late


def _two_badges_two_clocks(rig: Rig) -> None:
    a, b = rig.clock("hq"), rig.clock("hq")
    rig.tap(a, BADGE, ts=T0)
    rig.tap(b, OTHER, ts=T0 + 1 * S)


def _dated_1970(rig: Rig) -> None:
    a = rig.clock()
    rig.send(a, [a.punch(ts=1_000_000, credential=BADGE)], received_at=T0)


def _two_hours_ahead(rig: Rig) -> None:
    a = rig.clock()
    rig.send(a, [a.punch(ts=T0 + 7200 * S, credential=BADGE)], received_at=T0)


def _a_week_ahead(rig: Rig) -> None:
    a = rig.clock()
    rig.send(a, [a.punch(ts=T0 + 7 * 86_400 * S, credential=BADGE)], received_at=T0)


def _backlog_delivered_late(rig: Rig) -> None:
    a = rig.clock()                             # a clock offline for a day: late, not skewed
    rig.send(a, [a.punch(ts=T0 + n * S, credential=f"em4100:{n:010d}") for n in range(5)],
             received_at=T0 + 86_400 * S)


def _replayed_an_hour_later(rig: Rig) -> None:
    a = rig.clock()
    batch = [a.punch(ts=T0 + n * S, credential=f"em4100:{n:010d}") for n in range(10)]
    rig.send(a, batch, received_at=T0 + 10 * S)
    rig.send(a, batch, received_at=T0 + 3600 * S)      # captured an hour ago, sent again


def _queued_resends_after_an_outage(rig: Rig) -> None:
    a = rig.clock()                 # the broker kept 40 resends while the collector was away
    p = a.punch(ts=T0, credential=BADGE)
    for n in range(40):
        rig.send(a, [p], received_at=T0 + 3600 * S + n * 50_000)


def _honest_resends(rig: Rig) -> None:
    a = rig.clock()
    p = a.punch(ts=T0, credential=BADGE)
    for n in range(4):                          # once per resend_after_s (60 s)
        rig.send(a, [p], received_at=T0 + n * 60 * S)


def forged(rig: Rig, clock: SimClock, *, ts: int, received_at: int) -> None:
    """A punch whose content changed after signing (bad-signature)."""
    d = clock.punch(ts=ts, credential=BADGE).to_dict()
    d["punch"]["action"] = "out"
    rig.send(clock, [], received_at=received_at, payload=raw_envelope(clock.device, [d]))


def _bad_signatures(rig: Rig) -> None:
    a = rig.clock()
    for n in range(5):                          # five forgeries: one alert, counts in it
        forged(rig, a, ts=T0 + n * S, received_at=T0 + n * S)


def _unknown_key(rig: Rig) -> None:
    a = rig.clock()
    rig.send(a, [a.punch(ts=T0, credential=BADGE, key=SigningKey.generate())],
             received_at=T0)


def _unknown_device(rig: Rig) -> None:
    a = rig.clock()
    from tests.collector.punch_kit import new_clock  # noqa: PLC0415 - a clock never enrolled

    stranger = new_clock()
    rig.send(stranger, [stranger.punch(ts=T0, credential=BADGE)], received_at=T0)
    rig.tap(a, OTHER, ts=T0)


@dataclass(frozen=True)
class Case:
    name: str
    run: Callable[[Rig], None]
    expect: list[str]


CASES = [
    Case("one badge at two clocks of a site 20 s apart", _two_clocks_same_site,
         ["buddy-punch"]),
    Case("a double tap at one clock", _same_clock_double_tap, []),
    Case("two clocks of a site 5 minutes apart", _same_site_after_walking, []),
    Case("two sites 10 minutes apart", _two_sites_ten_minutes, ["buddy-punch"]),
    Case("two sites 2 hours apart", _two_sites_two_hours, []),
    Case("two sites, delivered out of order", _arrives_out_of_order, ["buddy-punch"]),
    Case("two badges at two clocks at once", _two_badges_two_clocks, []),
    Case("a punch dated 1970", _dated_1970, ["implausible-time"]),
    Case("a clock two hours ahead", _two_hours_ahead, ["clock-skew"]),
    Case("a punch a week in the future", _a_week_ahead, ["implausible-time"]),
    Case("a day-old backlog delivered late", _backlog_delivered_late, []),
    Case("ten punches replayed an hour later", _replayed_an_hour_later, ["replay-burst"]),
    Case("40 resends queued at the broker, delivered at once", _queued_resends_after_an_outage,
         []),
    Case("an honest clock resending once a minute", _honest_resends, []),
    Case("five forged signatures", _bad_signatures, ["verification-failure"]),
    Case("a key the registry does not know", _unknown_key, ["verification-failure"]),
    Case("a device never enrolled", _unknown_device, ["verification-failure"]),
]


@pytest.mark.parametrize("case", CASES, ids=[c.name for c in CASES])
def test_d13_detector_table(store: SQLStore, case: Case) -> None:
    rig = Rig(store)
    before = {k: sample_value("timeclock_alerts_total", {"kind": k, "severity": s}) or 0.0
              for k, s in (("buddy-punch", "2"), ("replay-burst", "1"))}
    case.run(rig)
    bodies = rig.raised
    assert [b["alert"] for b in bodies] == case.expect
    # every kind is an alert entry but those whose evidence is already an entry (a
    # verification failure is a rejection entry): alerts.NOT_RECORDED
    assert [b["alert"] for b in rig.recorded()] == [
        k for k in case.expect if k not in NOT_RECORDED]
    for b in bodies:                              # the entry says what and where
        assert b["severity"] in (1, 2)
        assert isinstance(b["detail"], str)
        assert b["detail"]
        assert BADGE not in repr(b), "an alert entry must not carry the badge"
    for kind, sev in (("buddy-punch", "2"), ("replay-burst", "1")):
        after = sample_value("timeclock_alerts_total", {"kind": kind, "severity": sev})
        assert after == before[kind] + case.expect.count(kind)


def test_d13_buddy_punch_entry_names_both_punches(store: SQLStore) -> None:
    rig = Rig(store)
    _two_clocks_same_site(rig)
    (body,) = rig.recorded()
    punches = [e.entry.idx for e in store.entries() if e.entry.kind == "punch"]
    assert body["punch_idx"] == punches
    assert body["apart_us"] == 20 * S
    assert body["device"] == body["devices"][1]


def test_d13_travel_limits_are_configurable(store: SQLStore) -> None:
    rig = Rig(store, DetectorSettings(travel_same_site_s=600))
    _same_site_after_walking(rig)                 # 5 min apart < 10 min configured
    assert rig.kinds() == ["buddy-punch"]


def test_d2_d13_verification_failures_alert_once_per_window_with_the_count(
        store: SQLStore) -> None:
    rig = Rig(store, DetectorSettings(repeat_after_s=60))
    a = rig.clock()
    for n in range(5):                            # t = 0..4 s: one alert
        forged(rig, a, ts=T0 + n * S, received_at=T0 + n * S)
    forged(rig, a, ts=T0 + 5 * S, received_at=T0 + 61 * S)
    bodies = rig.raised
    assert [b["alert"] for b in bodies] == ["verification-failure"] * 2
    assert [(b["reason"], b["count"], b["device"]) for b in bodies] == [
        ("bad-signature", 1, a.device), ("bad-signature", 5, a.device)]


def _status(device: str, at: int | None, state: str = "online") -> DeviceStatus:
    if state == "offline":
        return DeviceStatus(device=device, state="offline", version="0.1.0", reason="stopped")
    return DeviceStatus(device=device, state="online", version="0.1.0", at=at,
                        queue=QueueStatus(0, None), clock="synced", readers={})


@pytest.mark.parametrize(("offset_s", "expect"), [
    (-180, ["clock-skew"]),       # libfaketime 3 min behind
    (7200, ["clock-skew"]),       # 2 h ahead
    (-2, []),                     # transit and scheduling
    (59, []),
])
def test_d14_skew_from_live_status_messages(store: SQLStore, offset_s: int,
                                            expect: list[str]) -> None:
    rig = Rig(store)
    c = rig.clock()
    d = rig.detectors
    # The first status after a start may be the retained copy of an old one: never judged.
    d.observe_status(c.device, _status(c.device, T0 - 86_400 * S), T0)
    for n in range(1, 4):
        recv = T0 + n * 60 * S
        d.observe_status(c.device, _status(c.device, recv + offset_s * S), recv)
    assert rig.kinds() == expect                  # once, not once per status
    gauges = {g.name: g.value for g in d.gauges(now_us=T0)}
    assert gauges["device_clock_skew_seconds"] == pytest.approx(offset_s)


def test_d14_skew_rearms_once_the_clock_is_back(store: SQLStore) -> None:
    rig = Rig(store)
    c = rig.clock()
    d = rig.detectors
    for n, off in enumerate([0, 300, 300, 0, 300]):
        recv = T0 + n * 60 * S
        d.observe_status(c.device, _status(c.device, recv + off * S), recv)
    assert rig.kinds() == ["clock-skew", "clock-skew"]


def test_d13_offline_clock(store: SQLStore) -> None:
    settings = DetectorSettings(offline_after_s=300, silent_after_s=600)
    rig = Rig(store, settings)
    stopped, silent, healthy = rig.clock(), rig.clock(), rig.clock()
    d = rig.detectors
    start = T0
    d.observe_status(stopped.device, _status(stopped.device, T0), T0)
    d.observe_status(stopped.device, _status(stopped.device, None, "offline"), T0 + 10 * S)
    devices = [stopped.device, silent.device, healthy.device]
    for minute in range(0, 16):
        now = T0 + minute * 60 * S
        d.observe_status(healthy.device, _status(healthy.device, now), now)
        d.check(devices, now_us=now, started_us=start)
    bodies = rig.recorded()
    assert sorted((b["alert"], b["device"]) for b in bodies) == sorted(
        [("clock-offline", stopped.device), ("clock-offline", silent.device)])
    # back online: re-armed, and a second outage alerts again
    now = T0 + 20 * 60 * S
    d.observe_status(stopped.device, _status(stopped.device, now), now)
    d.check(devices, now_us=now + S, started_us=start)
    assert len(rig.recorded()) == 2
    d.observe_status(stopped.device, _status(stopped.device, None, "offline"), now + S)
    d.check([stopped.device], now_us=now + 200 * S, started_us=start)
    assert len(rig.recorded()) == 2                 # not yet: a restart takes less
    d.check([stopped.device], now_us=now + 302 * S, started_us=start)
    assert [b["device"] for b in rig.recorded()][2:] == [stopped.device]


def test_d13_offline_is_not_raised_before_the_limit(store: SQLStore) -> None:
    rig = Rig(store, DetectorSettings(silent_after_s=600))
    c = rig.clock()
    rig.detectors.check([c.device], now_us=T0 + 599 * S, started_us=T0)
    assert rig.kinds() == []
    rig.detectors.check([c.device], now_us=T0 + 600 * S, started_us=T0)
    assert rig.kinds() == ["clock-offline"]


def test_d13_auth_failure_burst() -> None:
    alerts = Alerts()
    auth = AuthFailures(alerts, max_failures=3, window_s=60)
    fired = [auth.failed("192.0.2.7", now_us=T0 + n * S) for n in range(6)]
    assert [f is not None for f in fired] == [False, False, True, False, False, False]
    assert auth.failed("198.51.100.1", now_us=T0) is None      # per address
    assert auth.failed("192.0.2.7", now_us=T0 + 200 * S) is None   # the window moved on
    later = [auth.failed("192.0.2.7", now_us=T0 + (200 + n) * S) for n in range(2)]
    assert later[-1] is not None
    assert [a.kind for a in alerts.recent()] == ["auth-failure-burst"] * 2


def test_d13_a_normal_week_of_200_employees_raises_nothing(store: SQLStore) -> None:
    """Four clocks at two sites; 200 employees, five shifts each (in, lunch out, lunch in,
    out) with minutes of jitter, at either clock of their site, some double taps, and a
    fifth of them working at the other site on some days (hours between sites). No buddy
    punch, no skew, nothing: and then one real buddy punch is found among them."""
    rng = random.Random(14)  # noqa: S311 - a reproducible shift pattern, not a secret
    rig = Rig(store)
    sites = {"hq": [rig.clock("hq"), rig.clock("hq")],
             "plant": [rig.clock("plant"), rig.clock("plant")]}
    home = {e: "hq" if e % 2 else "plant" for e in range(200)}
    roams = set(rng.sample(range(200), 40))
    day = 86_400 * S
    taps: list[tuple[int, int, str, bool]] = []   # (ts, employee, site, double tap)
    for d in range(7):
        if d in (5, 6):
            continue                               # weekend
        for e in range(200):
            site = home[e]
            if e in roams and d % 2:
                site = "plant" if site == "hq" else "hq"
            start = T0 + d * day + (6 + e % 3) * 3600 * S     # three shift starts
            for at_h in (0.0, 4.0, 4.5, 8.5):
                ts = start + int(at_h * 3600 * S) + rng.randint(-15 * 60, 15 * 60) * S
                taps.append((ts, e, site, False))
                if rng.random() < 0.05:
                    taps.append((ts + rng.randint(1, 4) * S, e, site, True))
    taps.sort()
    last_clock: dict[tuple[int, str], int] = {}
    batch: dict[str, list[tuple[int, str]]] = {}
    for ts, e, site, double in taps:
        # a double tap lands on the clock just used; otherwise either clock of the site
        key = (e, site)
        i = last_clock[key] if double else rng.randint(0, 1)
        last_clock[key] = i
        batch.setdefault(sites[site][i].device, []).append((ts, f"em4100:{e:010d}"))
    clocks = {c.device: c for cs in sites.values() for c in cs}
    for device, items in batch.items():
        c = clocks[device]
        for n in range(0, len(items), 200):
            chunk = items[n:n + 200]
            rig.send(c, [c.punch(ts=ts, credential=b) for ts, b in chunk],
                     received_at=chunk[-1][0] + 2 * S)
    assert len(taps) > 4000
    assert rig.kinds() == []
    # the same detectors still see one badge used at two sites five minutes apart
    friday = T0 + 4 * day + 12 * 3600 * S
    rig.tap(sites["hq"][0], "em4100:0000000001", ts=friday)
    rig.tap(sites["plant"][1], "em4100:0000000001", ts=friday + 300 * S)
    assert rig.kinds() == ["buddy-punch"]


def test_d13_detector_state_is_bounded(store: SQLStore) -> None:
    rig = Rig(store, DetectorSettings(badges_max=100))
    c = rig.clock()
    rig.send(c, [c.punch(ts=T0 + n * S, credential=f"em4100:{n:010d}") for n in range(300)],
             received_at=T0 + 301 * S)
    assert rig.kinds() == []
    d: Detectors = rig.detectors
    assert len(d._badges) == 100  # noqa: SLF001 - the bound is the point of the test


def test_d13_ingest_counters_count_each_outcome_and_rejection(store: SQLStore) -> None:
    """The monitor counts per batch (one update per label): the totals are still exact."""
    names = {"messages": ("timeclock_ingest_messages_total", {}),
             "appended": ("timeclock_ingest_punches_total", {"outcome": "appended"}),
             "duplicate": ("timeclock_ingest_punches_total", {"outcome": "duplicate"}),
             "bad-signature": ("timeclock_ingest_rejections_total",
                               {"reason": "bad-signature"})}

    def values() -> dict[str, float]:
        return {k: sample_value(n, labels) or 0.0 for k, (n, labels) in names.items()}

    before = values()
    rig = Rig(store)
    c = rig.clock()
    punches = [c.punch(ts=T0 + n * S) for n in range(3)]
    rig.send(c, punches, received_at=T0 + 4 * S)
    rig.send(c, punches, received_at=T0 + 5 * S)            # a resend: three duplicates
    forged(rig, c, ts=T0 + 6 * S, received_at=T0 + 7 * S)
    after = values()
    assert {k: after[k] - before[k] for k in names} == {
        "messages": 3.0, "appended": 3.0, "duplicate": 3.0, "bad-signature": 1.0}


def _queued(device: str, at: int, oldest: int | None, depth: int = 3) -> DeviceStatus:
    return DeviceStatus(device=device, state="online", version="0.1.0", at=at,
                        queue=QueueStatus(depth if oldest else 0, oldest), clock="synced",
                        readers={})


def test_d13_queue_age_from_status_messages(store: SQLStore) -> None:
    rig = Rig(store, DetectorSettings(queue_age_max_s=3600))
    c = rig.clock()
    d = rig.detectors
    stuck = T0 - 2 * 3600 * S
    for n, oldest in enumerate([stuck, None, stuck + 3000 * S, stuck, stuck, None, stuck]):
        recv = T0 + n * 60 * S       # the first (maybe retained) status is never judged
        d.observe_status(c.device, _queued(c.device, recv, oldest), recv)
    bodies = rig.recorded()
    # n=2: 3000 s younger than stuck → 7200 - 3000 + 120 s ≈ 72 min: alert; n=3, 4 still old:
    # once; n=5 drained: re-armed; n=6 old again: a second alert
    assert [b["alert"] for b in bodies] == ["queue-age", "queue-age"]
    assert bodies[0]["depth"] == 3


def test_d13_rejections_with_an_alert_of_their_own_are_not_verification_failures(
        store: SQLStore) -> None:
    rig = Rig(store)
    c = rig.clock()
    p = c.punch(ts=T0, credential=BADGE)
    rig.send(c, [p], received_at=T0)
    c.seq, c.prev = 0, "0" * 64                  # the same seq 1 again, other content
    rig.send(c, [c.punch(ts=T0 + S, credential=OTHER)], received_at=T0 + S)
    assert rig.kinds() == ["conflict"]          # the pipeline's own sev-1 alert, only
