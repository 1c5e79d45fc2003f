"""wire.config.Section: the one config-section reader (agent, collector, API) and its wording."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from wire.config import Section, unknown_key, unknown_section


def test_every_problem_is_collected_with_its_path_and_one_wording() -> None:
    s = Section("mqtt", {"host": "", "port": 0, "keepalive_s": True, "ratio": "x",
                         "tls": "yes", "names": ["a", 3, "B"]})
    assert s.string("host", required=True) is None
    assert s.integer("port", 8883, lo=1, hi=65535) == 8883
    assert s.integer("keepalive_s", 30, lo=1, hi=3600) == 30
    assert s.number("ratio", 0.5, lo=0.0, hi=1.0) == 0.5
    assert s.string_list("names", pattern=re.compile(r"[a-z]+")) == ["a"]
    assert s.integer("batch_max", required=True) is None
    problems = s.finish()
    assert problems == [
        "mqtt.host: expected a non-empty string",
        "mqtt.port: must be between 1 and 65535, got 0",
        "mqtt.keepalive_s: expected an integer, got bool",
        "mqtt.ratio: expected a number, got str",
        "mqtt.names[1]: expected a string, got int",
        "mqtt.names[2]: must match [a-z]+",
        "mqtt.batch_max: required",
        "mqtt.tls: unknown key (allowed: batch_max, host, keepalive_s, names, port, ratio)",
    ]


def test_unknown_keys_list_what_is_allowed_and_tables_are_sections() -> None:
    top = Section("", {"device": {}, "colour": {"a": 1}, "bogus": 1})
    top.section("device", required=True)
    top.section("keys", required=True)
    assert top.finish() == [
        "keys: required (a [keys] table)",
        "bogus: unknown key (allowed: device, keys)",
        "colour: unknown section (allowed: device, keys)",
    ]
    assert unknown_key("a.b", []) == "a.b: unknown key (allowed: none)"
    assert unknown_section("x", ["b", "a"]) == "x: unknown section (allowed: a, b)"


def test_shared_problem_list_and_explicit_allowed_set() -> None:
    problems: list[str] = []
    a = Section("a", {"x": 1, "y": 2}, problems)
    b = Section("b", "not a table", problems)
    a.finish(allowed={"x"})
    b.finish()
    assert problems == ["b: expected a table, got str", "a.y: unknown key (allowed: x)"]


def test_paths_are_relative_to_the_config_file_and_values_keep_their_types(
        tmp_path: Path) -> None:
    s = Section("keys", {"rel": "k/signing.key", "abs": "/etc/x", "on": True, "n": 3,
                         "mode": "fast"})
    assert s.path("rel", tmp_path) == tmp_path / "k" / "signing.key"
    assert s.path("abs", tmp_path) == Path("/etc/x")
    assert s.path("missing", tmp_path) is None
    assert s.boolean("on", False) is True
    assert s.number("n", 1.0, lo=0) == 3.0
    assert s.choice("mode", "slow", {"slow", "fast"}) == "fast"
    assert s.finish() == []


@pytest.mark.parametrize(("value", "message"), [
    (-1, "keys.n: must be ≥ 0, got -1"),
    (11, "keys.n: must be ≤ 10, got 11"),
])
def test_one_sided_bounds(value: int, message: str) -> None:
    lo = Section("keys", {"n": value})
    lo.integer("n", 0, lo=0) if value < 0 else lo.integer("n", 0, hi=10)
    assert lo.problems == [message]


def test_choice_and_boolean_refuse_other_values() -> None:
    s = Section("r", {"mode": "warp", "on": 1})
    assert s.choice("mode", "slow", {"slow", "fast"}) == "slow"
    assert s.boolean("on", False) is False
    assert s.problems == ["r.mode: 'warp' is not one of fast, slow",
                          "r.on: expected true or false, got int"]


def test_a_missing_required_table_is_reported_once_not_key_by_key() -> None:
    top = Section("", {})
    c = top.section("collector", required=True)
    assert c.string("name", required=True) is None
    assert c.integer("port", required=True) is None
    present = top.section("mqtt")          # absent but optional: its required keys still count
    present.string("host", required=True)
    top.finish()
    assert top.problems == ["collector: required (a [collector] table)", "mqtt.host: required"]
