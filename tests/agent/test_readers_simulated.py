"""simulated: a deterministic schedule, the reader end to end, and its config."""

from __future__ import annotations

import itertools

import pytest

from agent.errors import ConfigError
from agent.readers import build_reader
from agent.readers.simulated import SimulatedReader, schedule
from tests.agent.readers_kit import DEADLINE_S, TapSink, running, status_is


def test_schedule_is_deterministic_with_a_seed() -> None:
    a = list(schedule(["1", "2", "3"], interval_s=2.0, jitter_s=0.5, count=50, seed=7))
    b = list(schedule(["1", "2", "3"], interval_s=2.0, jitter_s=0.5, count=50, seed=7))
    c = list(schedule(["1", "2", "3"], interval_s=2.0, jitter_s=0.5, count=50, seed=8))
    assert a == b
    assert a != c
    assert len(a) == 50
    assert all(1.5 <= delay <= 2.5 for delay, _ in a)
    assert {cred for _, cred in a} == {"1", "2", "3"}


def test_schedule_never_repeats_a_credential_back_to_back() -> None:
    reads = [cred for _, cred in schedule(["1", "2"], interval_s=1.0, count=20, seed=1)]
    assert all(x != y for x, y in itertools.pairwise(reads))


def test_schedule_single_credential_and_forever() -> None:
    reads = list(itertools.islice(schedule(["9"], interval_s=0.5, count=0, seed=1), 1000))
    assert reads == [(0.5, "9")] * 1000


def test_reader_emits_count_taps_then_idles_open() -> None:
    reader = build_reader("demo", {"kind": "simulated", "credentials": ["1001", "1002", "A7"],
                                   "interval_s": 0.005, "count": 6, "seed": 3,
                                   "format": "em4100", "action": "in", "debounce_s": 0})
    sink = TapSink()
    with running(reader, sink):
        assert sink.wait_count(6)
        assert reader.state.status == "open"
        # count reached: nothing more. A short look on purpose: a slow machine can only miss
        # an extra tap here, never fail a correct reader.
        assert not sink.wait_count(7, timeout_s=0.1)
    expected = [f"em4100:{c}" for _, c in schedule(["1001", "1002", "A7"], interval_s=0.005,
                                                    count=6, seed=3)]
    assert sink.credentials == expected
    assert {(t.reader, t.action) for t in sink.taps} == {("demo", "in")}
    assert reader.state.taps == 6


def test_reader_taps_go_through_the_debounce() -> None:
    reader = build_reader("demo", {"kind": "simulated", "credentials": ["5"],
                                   "interval_s": 0.005, "count": 10, "debounce_s": 60})
    sink = TapSink()
    with running(reader, sink):
        assert reader.wait_for(status_is("open"), DEADLINE_S)
        assert sink.wait_count(1)
        assert not sink.wait_count(2, timeout_s=0.2)  # short on purpose, as above
    assert sink.credentials == ["sim:5"]


def test_config_defaults() -> None:
    r = build_reader("demo", {"kind": "simulated", "credentials": ["1"]})
    assert isinstance(r, SimulatedReader)
    assert (r.credentials, r.interval_s, r.count, r.jitter_s, r.seed) == \
        (["sim:1"], 5.0, 0, 0.0, None)


def test_config_every_problem_at_once() -> None:
    section = {"kind": "simulated", "credentials": ["ok", "not ok", 7], "interval_s": 0,
               "count": -1, "format": "SIM", "jitter_s": 10, "seed": "x"}
    with pytest.raises(ConfigError) as info:
        build_reader("demo", section)
    assert info.value.problems == [
        "readers.demo.credentials[1]: must match ^[0-9A-Za-z]{1,64}$",
        "readers.demo.credentials[2]: expected a string, got int",
        "readers.demo.interval_s: must be between 0.001 and 86400, got 0",
        "readers.demo.count: must be ≥ 0, got -1",
        "readers.demo.format: 'SIM' must match ^[a-z0-9]{1,16}$",
        "readers.demo.jitter_s: must be ≤ interval_s (5)",
        "readers.demo.seed: expected an integer, got str",
    ]


@pytest.mark.parametrize("credentials", [None, [], "1"])
def test_config_credentials_must_be_a_non_empty_list(credentials: object) -> None:
    section: dict[str, object] = {"kind": "simulated"}
    if credentials is not None:
        section["credentials"] = credentials
    with pytest.raises(ConfigError, match=r"readers\.demo\.credentials: .*non-empty list"):
        build_reader("demo", section)
