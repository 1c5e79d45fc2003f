"""Buddy punching judged per person (collector.ingest.detectors_people), table-tested on both
stores with synthetic signed punches and a people directory: one employee through two badges
at two clocks closer than travel allows (``buddy-punch``, basis employee), and two employees'
badges back to back at one clock on several days (``buddy-pair``); and a normal week of 200
employees with EVERY detector on (directory, statuses, offline checks) that raises nothing,
after which each kind is still found."""

from __future__ import annotations

import logging
import random
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import pytest

from collector.ingest.detectors import AuthFailures, DetectorSettings, read_detector_section
from collector.ingest.metrics import sample_value
from collector.ledger.sqlbase import SQLStore
from tests.collector.punch_kit import T0
from tests.monitoring.monitor_kit import Rig, S
from tests.monitoring.people_kit import badge, employee_id, import_directory
from wire.config import Section
from wire.device_status import DeviceStatus, QueueStatus

DAY = 86_400 * S
HOUR = 3600 * S
A1, A2, B1 = badge(1), badge(2), badge(3)       # E00001 holds two badges; E00002 one


def _rig(store: SQLStore, tmp: Path, settings: DetectorSettings | None = None, *,
         loaded: bool = True) -> Rig:
    rig = Rig(store, settings or DetectorSettings())
    import_directory(store, tmp, [(employee_id(n), "hq") for n in (1, 2, 3)],
                     [(A1, employee_id(1), "assigned"), (A2, employee_id(1), "assigned"),
                      (B1, employee_id(2), "assigned"), (badge(4), employee_id(3), "assigned")])
    assert rig.detectors.badge_scans.refresh(store) is loaded
    return rig


def _two_badges_two_clocks(rig: Rig) -> None:
    a, b = rig.clock("hq"), rig.clock("hq")
    rig.tap(a, A1, ts=T0)
    rig.tap(b, A2, ts=T0 + 20 * S)


def _two_badges_two_sites_minutes_apart(rig: Rig) -> None:
    a, b = rig.clock("hq"), rig.clock("plant")
    rig.tap(a, A1, ts=T0)
    rig.tap(b, A2, ts=T0 + 10 * 60 * S)


def _two_badges_two_sites_hours_apart(rig: Rig) -> None:
    a, b = rig.clock("hq"), rig.clock("plant")
    rig.tap(a, A1, ts=T0)
    rig.tap(b, A2, ts=T0 + 2 * HOUR)


def _two_badges_one_clock(rig: Rig) -> None:
    a = rig.clock("hq")
    for day in range(4):                     # their own two badges, back to back, every day
        rig.tap(a, A1, ts=T0 + day * DAY)
        rig.tap(a, A2, ts=T0 + day * DAY + 2 * S)


def _one_badge_two_clocks(rig: Rig) -> None:
    a, b = rig.clock("hq"), rig.clock("hq")
    rig.tap(a, A1, ts=T0)
    rig.tap(b, A1, ts=T0 + 20 * S)


def _pair(days: int, gap_s: int, *, two_clocks: bool = False) -> Callable[[Rig], None]:
    def run(rig: Rig) -> None:
        a = rig.clock("hq")
        b = rig.clock("hq") if two_clocks else a
        for day in range(days):
            at = T0 + day * DAY + rng_minutes(day) * 60 * S
            rig.tap(a, A1, ts=at)
            rig.tap(b, B1, ts=at + gap_s * S)
    return run


def rng_minutes(day: int) -> int:
    return (day * 37) % 50                   # arrival differs from day to day


@dataclass(frozen=True)
class Case:
    name: str
    run: Callable[[Rig], None]
    expect: list[tuple[str, str | None]]     # (kind, basis)


CASES = [
    Case("one employee, two badges, two clocks of a site 20 s apart", _two_badges_two_clocks,
         [("buddy-punch", "employee")]),
    Case("one employee, two badges, two sites 10 minutes apart",
         _two_badges_two_sites_minutes_apart, [("buddy-punch", "employee")]),
    Case("one employee, two badges, two sites 2 hours apart",
         _two_badges_two_sites_hours_apart, []),
    Case("one employee's two badges back to back at one clock for 4 days",
         _two_badges_one_clock, []),
    Case("one badge at two clocks: the badge rule, once", _one_badge_two_clocks,
         [("buddy-punch", "badge")]),
    Case("two employees back to back on 4 days", _pair(4, 2), [("buddy-pair", None)]),
    Case("two employees back to back on 3 days", _pair(3, 2), []),
    Case("two employees 4 s apart on 4 days", _pair(4, 4), [("buddy-pair", None)]),
    Case("two employees 10 s apart on 5 days", _pair(5, 10), []),
    Case("two employees at two clocks of a site on 5 days", _pair(5, 2, two_clocks=True),
         []),
]


@pytest.mark.parametrize("case", CASES, ids=[c.name for c in CASES])
def test_d13_people_detector_table(store: SQLStore, tmp_path: Path, case: Case,
                                   caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO)
    before = sample_value("timeclock_alerts_total", {"kind": "buddy-pair", "severity": "2"})
    rig = _rig(store, tmp_path)
    case.run(rig)
    assert [(b["alert"], b.get("basis")) for b in rig.raised] == case.expect
    assert [b["alert"] for b in rig.recorded()] == [k for k, _ in case.expect]
    after = sample_value("timeclock_alerts_total", {"kind": "buddy-pair", "severity": "2"})
    assert after == (before or 0.0) + [k for k, _ in case.expect].count("buddy-pair")
    for text in [*(repr(b) for b in rig.raised), caplog.text]:
        for cred in (A1, A2, B1, "0000000001", "0000000002", "0000000003", "Person"):
            assert cred not in text, "no credential and no name in an alert or log line"


def test_d13_employee_buddy_punch_names_the_employee_and_both_punches(
        store: SQLStore, tmp_path: Path) -> None:
    rig = _rig(store, tmp_path)
    _two_badges_two_clocks(rig)
    (body,) = rig.recorded()
    punches = [e.entry.idx for e in store.entries() if e.entry.kind == "punch"]
    assert (body["basis"], body["employee_id"], body["punch_idx"], body["apart_us"]) == (
        "employee", employee_id(1), punches, 20 * S)


def test_d13_buddy_pair_entry_names_both_employees_and_the_days(
        store: SQLStore, tmp_path: Path) -> None:
    rig = _rig(store, tmp_path)
    _pair(5, 2)(rig)                         # alerted on day 4, not again on day 5
    (body,) = rig.recorded()
    assert body["employee_ids"] == [employee_id(1), employee_id(2)]
    assert body["days"] == 4
    punches = [e.entry.idx for e in store.entries() if e.entry.kind == "punch"]
    assert body["punch_idx"] == punches[1:8:2]        # B1's punches of days 1-4


def test_d13_buddy_pair_without_a_directory_names_badges_by_tag(store: SQLStore) -> None:
    rig = Rig(store)
    a = rig.clock("hq")
    for day in range(4):
        rig.tap(a, badge(7), ts=T0 + day * DAY)
        rig.tap(a, badge(8), ts=T0 + day * DAY + S)
    (body,) = rig.recorded()
    assert body["alert"] == "buddy-pair"
    assert "employee_ids" not in body
    assert "0000000007" not in repr(body)
    assert body["detail"].count("<redacted 17 chars #") == 2


@pytest.mark.parametrize(("settings", "fill", "expect"), [
    (DetectorSettings(pair_min_days=1), 0, [(1, [(0, 0)])]),     # the first time is enough
    (DetectorSettings(pair_min_days=2), 0, [(2, [(0, 1), (1, 0)])]),   # 2 taps a day: 1 day
    (DetectorSettings(pair_min_days=2, pairs_max=100), 99, [(2, [(0, 1), (1, 0)])]),
    (DetectorSettings(pair_min_days=2, pairs_max=100), 100, []),  # forgotten in between
])
def test_d13_buddy_pair_counts_distinct_days_within_its_pairs_bound(
        store: SQLStore, settings: DetectorSettings, fill: int,
        expect: list[tuple[int, list[tuple[int, int]]]]) -> None:
    """The pair's days through a pair's first sighting, a second one the same day, the next
    day, and the LRU bound of ``pairs_max`` pairs (``fill`` other pairs after day 0)."""
    rig = Rig(store, settings)
    a, b = rig.clock("hq"), rig.clock("hq")
    second: dict[tuple[int, int], int] = {}      # (day, tap of the day) → idx of badge 8
    for day in (0, 1):
        for rep in (0, 1):                       # back to back twice a day, an hour apart
            at = T0 + day * DAY + rep * HOUR
            rig.tap(a, badge(7), ts=at)
            res = rig.send(a, [a.punch(ts=at + S, credential=badge(8))],
                           received_at=at + 2 * S)
            second[(day, rep)] = res.results[0].idx
        if day == 0 and fill:                    # fill new pairs back to back at clock b
            at = T0 + 3 * HOUR
            rig.send(b, [b.punch(ts=at + i * S, credential=badge(100 + i))
                         for i in range(fill + 1)], received_at=at + (fill + 2) * S)
    assert [(x["alert"], x["days"], x["punch_idx"]) for x in rig.raised] == [
        ("buddy-pair", days, [second[t] for t in taps]) for days, taps in expect]


@pytest.mark.parametrize(("settings", "days", "expect"), [
    (DetectorSettings(), 4, ["buddy-punch", "buddy-pair"]),
    (DetectorSettings(), 3, ["buddy-punch"]),
    (DetectorSettings(people_buddy=False), 4, ["buddy-pair"]),
    (DetectorSettings(pair_window_s=0), 4, ["buddy-punch"]),
    (DetectorSettings(pair_min_days=2), 2, ["buddy-punch", "buddy-pair"]),
    (DetectorSettings(pair_window_s=1), 4, ["buddy-punch"]),        # 2 s apart > 1 s
    (DetectorSettings(travel_same_site_s=10), 4, ["buddy-pair"]),   # 20 s apart > 10 s
    (DetectorSettings(pair_lookback_days=2), 4, ["buddy-punch"]),   # 4 days never in 2
])
def test_d13_people_detectors_are_configurable(store: SQLStore, tmp_path: Path,
                                               settings: DetectorSettings, days: int,
                                               expect: list[str]) -> None:
    rig = _rig(store, tmp_path, settings)
    _two_badges_two_clocks(rig)
    c = rig.clock("hq")
    for day in range(1, days + 1):
        rig.tap(c, A1, ts=T0 + day * DAY)
        rig.tap(c, B1, ts=T0 + day * DAY + 2 * S)
    assert [b["alert"] for b in rig.raised] == expect


def test_d13_the_directory_is_not_loaded_when_every_badge_detector_is_off(
        store: SQLStore, tmp_path: Path) -> None:
    rig = _rig(store, tmp_path, DetectorSettings(badge_scans=False, people_buddy=False,
                                                 pair_window_s=0), loaded=False)
    _two_badges_two_clocks(rig)
    rig.tap(rig.clock("hq"), badge(9999), ts=T0 + HOUR)
    assert rig.kinds() == []


# -- a normal week of 200 employees, every detector on -------------------------------------

def _status(device: str, at: int) -> DeviceStatus:
    return DeviceStatus(device=device, state="online", version="0.1.0", at=at,
                        queue=QueueStatus(0, None), clock="synced", readers={})


def _week_taps(rng: random.Random, home: dict[int, str], second: dict[int, int],  # noqa: PLR0917 - the week's parameters
               pools: list[tuple[int, int]], roams: set[int]
               ) -> list[tuple[int, int, str, bool, int]]:
    """Five days of four taps each, sorted: (ts, employee, site, double tap, badge)."""
    taps: list[tuple[int, int, str, bool, int]] = []    # (ts, employee, site, double, badge)
    for d in range(5):                                  # Monday to Friday
        pooled = {e: p for p in pools for e in p} if d in (1, 3) else {}
        for e in range(200):
            site = home[e]
            if e in roams and d % 2 and e not in pooled:
                site = "plant" if site == "hq" else "hq"
            b = second[e] if e in second and d >= 3 else e   # a second badge, used later
            start = T0 + d * DAY + (e % 3) * HOUR
            for at_h in (0.0, 4.0, 4.5, 8.5):
                jitter = rng.randint(-15 * 60, 15 * 60) * S
                if e in pooled and at_h == 0.0:   # the pair arrives together, 2 s apart
                    first = pooled[e][0]
                    jitter = ((e != first) * 2 + (d * 7919 + first * 211) % 1800 - 900) * S
                taps.append((start + int(at_h * HOUR) + jitter, e, site, False, b))
                if rng.random() < 0.05:
                    taps.append((taps[-1][0] + rng.randint(1, 4) * S, e, site, True, b))
    taps.sort()
    return taps


def test_d13_a_normal_week_of_200_employees_raises_no_alert_of_any_detector(  # noqa: PLR0914, PLR0915 - one scenario
        store: SQLStore, tmp_path: Path) -> None:
    """200 employees in the directory (20 with a second badge they use on some days), four
    clocks at two sites, five shifts of four taps with minutes of jitter in three start
    groups (so queues at shift changes), double taps, a fifth working at the other site on
    some days, 10 car-pool pairs arriving back to back on two days of the week, a resend now
    and then after a lost receipt, a few mistyped API tokens a day, every clock's status every
    10 minutes and the offline check after each: no alert of any kind. Then one
    case of each person/badge kind among them is found."""
    rng = random.Random(1413)  # noqa: S311 - a reproducible shift pattern, not a secret
    rig = Rig(store)
    sites = {"hq": [rig.clock("hq"), rig.clock("hq")],
             "plant": [rig.clock("plant"), rig.clock("plant")]}
    home = {e: "hq" if e % 2 else "plant" for e in range(200)}
    second = {e: 1000 + e for e in range(0, 200, 10)}       # 20 employees with two badges
    import_directory(
        store, tmp_path, [(employee_id(e), home[e]) for e in range(200)],
        [*((badge(e), employee_id(e), "assigned") for e in range(200)),
         *((badge(b), employee_id(e), "assigned") for e, b in second.items()),
         (badge(5000), employee_id(7), "blocked")])
    assert rig.detectors.badge_scans.refresh(store) is True
    roams = set(rng.sample(range(200), 40))
    pools = [(e, e + 6) for e in range(1, 41, 4)]             # same site, same start group
    taps = _week_taps(rng, home, second, pools, roams)
    last_clock: dict[tuple[int, str], int] = {}
    batch: dict[str, list[tuple[int, str]]] = {}
    for ts, e, site, double, b in taps:
        key = (e, site)
        pooled_now = any(e in p for p in pools)
        i = last_clock[key] if double else (0 if pooled_now else rng.randint(0, 1))
        last_clock[key] = i
        batch.setdefault(sites[site][i].device, []).append((ts, badge(b)))
    clocks = {c.device: c for cs in sites.values() for c in cs}
    for device, items in batch.items():
        c = clocks[device]
        for n in range(0, len(items), 250):
            chunk = items[n:n + 250]
            signed = [c.punch(ts=ts, credential=cred) for ts, cred in chunk]
            recv = chunk[-1][0] + 2 * S
            rig.send(c, signed, received_at=recv)
            if n % 1000 == 0:           # a lost receipt now and then: resent 30 s later
                rig.send(c, signed[-20:], received_at=recv + 30 * S)
    det = rig.detectors
    auth = AuthFailures(rig.alerts, max_failures=10, window_s=300)   # [api] defaults
    for day in range(5):                # a few mistyped tokens a day from a few desks
        for desk in range(3):
            for k in range(3):
                assert auth.failed(f"192.0.2.{desk}", now_us=T0 + day * DAY + k * 60 * S
                                   + desk * HOUR) is None
    devices = sorted(clocks)
    for n in range(5 * 144):                            # statuses every 10 min for 5 days
        now = T0 + n * 600 * S
        for dev in devices:
            det.observe_status(dev, _status(dev, now + rng.randint(-2, 2) * S), now + S)
        det.check(devices, now_us=now + 2 * S, started_us=T0)
    assert len(taps) > 4000
    assert rig.kinds() == []
    assert rig.recorded() == []

    # -- the same detectors still find one of each, among them ------------------------------
    sat = T0 + 5 * DAY + 12 * HOUR
    hq0, hq1, plant0 = sites["hq"][0], sites["hq"][1], sites["plant"][0]
    rig.tap(hq0, badge(1), ts=sat)                          # one badge, two sites
    rig.tap(plant0, badge(1), ts=sat + 300 * S)
    rig.tap(hq0, badge(second[10]), ts=sat + HOUR)          # E00010: two badges, two clocks
    rig.tap(hq1, badge(10), ts=sat + HOUR + 30 * S)
    rig.tap(hq0, badge(5000), ts=sat + 2 * HOUR)            # a blocked badge
    rig.tap(hq0, badge(9999), ts=sat + 3 * HOUR)            # nobody's badge
    for day in range(4):                                    # back to back on four days
        at = sat + (4 + day * 24) * HOUR
        rig.tap(hq1, badge(51), ts=at)
        rig.tap(hq1, badge(53), ts=at + 2 * S)
    got = [(b["alert"], b.get("basis")) for b in rig.raised]
    assert got == [("buddy-punch", "badge"), ("buddy-punch", "employee"),
                   ("badge-blocked", None), ("badge-unknown", None), ("buddy-pair", None)]


def test_d13_detector_keys_are_read_strictly() -> None:
    problems: list[str] = []
    read_detector_section(Section("detectors", {
        "pair_window_s": 601, "pair_min_days": 0, "people_buddy": "yes", "enabled": 1,
        "pairs_max": 5, "bogus": 1}, problems))
    text = "\n".join(problems)
    for key in ("pair_window_s", "pair_min_days", "people_buddy", "enabled", "pairs_max",
                "bogus"):
        assert f"detectors.{key}" in text, key
    good = Section("detectors", {"pair_window_s": 0, "pair_min_days": 2,
                                 "pair_lookback_days": 7, "people_buddy": False,
                                 "enabled": False})
    assert read_detector_section(good) == DetectorSettings(
        pair_window_s=0, pair_min_days=2, pair_lookback_days=7, people_buddy=False,
        enabled=False)


def test_d13_enabled_false_turns_every_ingest_detector_off(store: SQLStore,
                                                           tmp_path: Path) -> None:
    rig = _rig(store, tmp_path, DetectorSettings(enabled=False), loaded=False)
    _two_badges_two_clocks(rig)                      # employee buddy punch
    _one_badge_two_clocks(rig)                       # badge buddy punch
    _pair(4, 2)(rig)                                 # buddy pair
    c = rig.clock()
    rig.tap(c, badge(9999), ts=T0)                   # unknown badge
    rig.send(c, [c.punch(ts=1_000_000, credential=A1)], received_at=T0)   # dated 1970
    d = rig.detectors
    for n in range(3):                               # two hours ahead
        d.observe_status(c.device, _status(c.device, T0 + n * 60 * S + 2 * HOUR),
                         T0 + n * 60 * S)
    d.check([c.device], now_us=T0 + DAY, started_us=T0)   # silent for a day
    assert rig.kinds() == []
    assert d.gauges(now_us=T0) == []
