"""GPIO feedback (agent.feedback_gpio; issue 15 item 5) through libgpiod's Python binding.

This machine has no GPIO chip and no gpio-sim module: what is tested for real is the config
(every problem named with its key path), the pattern parsing, that the installed ``gpiod``
package is the v2 API the backend calls, and the clear errors for a chip that does not exist
— from ``check-config`` and from a run, which fails, is counted and logged once, and never
holds anything up. A pulse on a real line is NOT exercised here (no mock chip stands in for
hardware); docs/operations.md says so. What a clock without the v2 binding is told (the armhf
package cannot ship it, docs/operations.md "Installing from packages") is tested with ``gpiod``
hidden from the import, and with a module of the v1 binding's surface (Debian bookworm's
python3-libgpiod 1.6: ``Chip``, ``find_line``, ``LINE_REQ_DIR_OUT``, no ``request_lines``)."""

from __future__ import annotations

import logging
import sys
import types
from pathlib import Path
from typing import Any

import pytest

from agent.cli import main
from agent.config import parse_config
from agent.errors import ConfigError
from agent.feedback import OutcomeFeedback
from agent.feedback_gpio import (
    INSTALL_HINT,
    GpioFeedback,
    GpioSpec,
    check_line,
    parse_pattern,
    parse_spec,
)

MISSING = "/dev/gpiochip97"
IDLE_S = 30.0


def test_the_installed_gpiod_is_the_v2_api_the_backend_uses() -> None:
    gpiod = pytest.importorskip("gpiod")
    from gpiod.line import Direction, Value  # noqa: PLC0415 -- what _do imports

    assert int(gpiod.api_version.split(".")[0]) >= 2
    assert callable(gpiod.request_lines)
    settings = gpiod.LineSettings(direction=Direction.OUTPUT, output_value=Value.INACTIVE,
                                  active_low=True)
    assert (settings.direction, settings.output_value, settings.active_low) == (
        Direction.OUTPUT, Value.INACTIVE, True)
    assert Value.ACTIVE != Value.INACTIVE
    assert not Path(MISSING).exists()


@pytest.mark.parametrize(("text", "steps"), [
    ("on:200", ((True, 200),)),
    ("on:200,off:100,on:200", ((True, 200), (False, 100), (True, 200))),
    (" off:1 , on:10000 ", ((False, 1), (True, 10000))),
])
def test_patterns_parse(text: str, steps: tuple[tuple[bool, int], ...]) -> None:
    assert parse_pattern(text) == steps


@pytest.mark.parametrize(("text", "message"), [
    ("", "expected steps like"),
    ("on", r"step 1 'on': expected on:MS or off:MS"),
    ("on:200,blink:3", r"step 2 'blink:3': expected on:MS or off:MS"),
    ("on:0", r"step 1: 0 ms is outside 1\.\.10000"),
    ("on:10001", r"step 1: 10001 ms is outside"),
    ("on:-5", "expected on:MS or off:MS"),
    (",".join(["on:1"] * 33), "at most 32 steps, got 33"),
])
def test_bad_patterns_say_what_is_wrong(text: str, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        parse_pattern(text)


@pytest.mark.parametrize(("raw", "problems"), [
    ({"chip": "/dev/gpiochip0", "line": 17, "pattern": "on:200"}, []),
    ("on:200", ['expected an inline table {chip = "/dev/gpiochip0", line = 17, '
                'pattern = "on:200"}']),
    ({"chip": "/dev/ttyAMA0", "line": 17, "pattern": "on:1"},
     ["chip: expected a GPIO character device like /dev/gpiochip0, got '/dev/ttyAMA0'"]),
    ({"chip": "/dev/gpiochip0", "line": -1, "pattern": "on:1"},
     ["line: expected a line offset from 0 to 1023, got '-1'"]),
    ({"chip": "/dev/gpiochip0", "line": True, "pattern": "on:1"},
     ["line: expected a line offset from 0 to 1023, got 'True'"]),
    ({"chip": "/dev/gpiochip0", "line": 4},
     ['pattern: required (e.g. "on:200,off:100,on:200")']),
    ({"chip": "/dev/gpiochip0", "line": 4, "pattern": "on:4000,off:2000"},
     ["pattern: lasts 6000 ms, longer than [feedback] command_timeout_s (5000 ms)"]),
    ({"chip": "/dev/gpiochip0", "line": 4, "pattern": "on:1", "active_low": "yes",
      "colour": "red"},
     ["colour: unknown key (allowed: active_low, chip, line, pattern)",
      "active_low: expected true or false"]),
])
def test_gpio_specs_are_checked(raw: Any, problems: list[str]) -> None:
    spec, found = parse_spec(raw, max_total_ms=5000)
    assert found == problems
    assert (spec is None) == bool(problems)


def test_gpio_config_errors_carry_their_key_path(tmp_path: Path) -> None:
    with pytest.raises(ConfigError) as ei:
        parse_config({"device": {"id": "clock-gpio"},
                      "keys": {"signing_key": "/k", "queue_key": "/q"},
                      "readers": {"a": {"kind": "simulated"}},
                      "feedback": {"gpio": {
                          "recorded": {"chip": "/dev/gpiochip0", "line": 2000,
                                       "pattern": "on:x"}}}},
                     base_dir=tmp_path, check_readers=False)
    assert ei.value.problems == [
        "feedback.gpio.recorded: line: expected a line offset from 0 to 1023, got '2000'",
        "feedback.gpio.recorded: pattern: step 1 'on:x': expected on:MS or off:MS"]


def test_a_missing_chip_is_one_clear_line() -> None:
    pytest.importorskip("gpiod")
    spec = GpioSpec(MISSING, 17, ((True, 10),))
    assert check_line(spec) == (
        f"GPIO chip {MISSING} does not exist: check [feedback.gpio] chip (gpiodetect lists "
        "the chips and gpioinfo their lines)")


def test_a_run_on_a_missing_chip_fails_is_counted_and_logged_once(
        caplog: pytest.LogCaptureFixture) -> None:
    pytest.importorskip("gpiod")
    caplog.set_level(logging.DEBUG, logger="agent.feedback")
    fb = OutcomeFeedback({}, gpio={"recorded": GpioFeedback(
        GpioSpec(MISSING, 17, ((True, 10), (False, 10))))})
    backend = fb.gpio["recorded"]
    for _ in range(3):
        assert fb.signal("recorded", seq=1) is True
        assert backend.wait_idle(IDLE_S)
    assert (backend.runs, backend.failures, backend.skipped) == (3, 3, 0)
    warnings = [r for r in caplog.records if r.levelno == logging.WARNING]
    assert [r.getMessage() for r in warnings] == [
        f"feedback gpio {MISSING}:17 cannot pulse: GPIO chip {MISSING} does not exist: check "
        "[feedback.gpio] chip (gpiodetect lists the chips and gpioinfo their lines)"]
    assert fb.stats()["backends"] == [{"outcome": "recorded", "kind": "gpio", "runs": 3,
                                       "failures": 3, "skipped": 0, "busy": False}]


def test_check_config_names_the_missing_chip_and_a_missing_program(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    pytest.importorskip("gpiod")
    keys = tmp_path / "keys"
    assert main(["init", "--device", "clock-gpio", "--dir", str(keys)]) == 0
    cfg = tmp_path / "agent.toml"
    cfg.write_text(f"""
[device]
id = "clock-gpio"
state_dir = "state"
[keys]
signing_key = "{keys / 'signing.key'}"
queue_key = "{keys / 'queue.key'}"
[feedback.outcomes]
unknown-badge = ["/nonexistent/clock-beep", "3"]
[feedback.gpio]
recorded = {{chip = "{MISSING}", line = 17, pattern = "on:200,off:100,on:200"}}
[readers.front]
kind = "simulated"
credentials = ["1"]
""")
    capsys.readouterr()
    assert main(["check-config", str(cfg)]) != 0
    err = capsys.readouterr().err
    assert "feedback.outcomes.unknown-badge: /nonexistent/clock-beep does not exist or is " \
           "not executable" in err
    assert f"feedback.gpio.recorded: GPIO chip {MISSING} does not exist" in err
    assert "Traceback" not in err


HINT = ("GPIO feedback needs it: on the clock run sudo pip install --break-system-packages "
        "'gpiod>=2.1' (on armhf it builds from source: apt install gcc python3-dev first), or "
        "signal with a command backend ([feedback.outcomes]) instead")


def _v1_binding() -> types.ModuleType:
    """A module with the surface of libgpiod 1.6's binding (Debian's python3-libgpiod)."""
    v1 = types.ModuleType("gpiod")
    v1.__file__ = "/usr/lib/python3/dist-packages/gpiod.cpython-311-arm-linux-gnueabihf.so"
    for name in ("Chip", "Line", "LineBulk", "find_line"):
        setattr(v1, name, type(name, (), {}))
    v1.LINE_REQ_DIR_OUT = 3   # type: ignore[attr-defined]
    return v1


@pytest.mark.parametrize(("module", "problem"), [
    (None, "the gpiod package (>= 2.1, libgpiod's v2 Python binding) is not installed where "
           f"the agent's Python finds it (the armhf package does not ship it); {HINT}"),
    (_v1_binding(), "the gpiod module found (/usr/lib/python3/dist-packages/gpiod.cpython-311-"
                    "arm-linux-gnueabihf.so) is not libgpiod's v2 Python binding (Debian's "
                    f"python3-libgpiod is v1); {HINT}"),
], ids=["no gpiod", "v1 binding"])
def test_check_config_says_how_to_get_gpio_feedback_without_the_v2_binding(
        tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch,
        module: types.ModuleType | None, problem: str) -> None:
    assert INSTALL_HINT == HINT
    keys = tmp_path / "keys"
    assert main(["init", "--device", "clock-gpio", "--dir", str(keys)]) == 0
    cfg = tmp_path / "agent.toml"
    cfg.write_text(f"""
[device]
id = "clock-gpio"
state_dir = "state"
[keys]
signing_key = "{keys / 'signing.key'}"
queue_key = "{keys / 'queue.key'}"
[feedback.gpio]
recorded = {{chip = "/dev/gpiochip0", line = 17, pattern = "on:200"}}
[readers.front]
kind = "simulated"
credentials = ["1"]
""")
    # None in sys.modules makes `import gpiod` raise ImportError, as on a clock without it.
    monkeypatch.setitem(sys.modules, "gpiod", module)
    capsys.readouterr()
    assert main(["check-config", str(cfg)]) == 2
    err = capsys.readouterr().err
    assert f"feedback.gpio.recorded: {problem}\n" in err, err
    assert "Traceback" not in err
    # and a run says the same, once, instead of failing at the first pulse
    backend = GpioFeedback(GpioSpec("/dev/gpiochip0", 17, ((True, 10),)))
    fb = OutcomeFeedback({}, gpio={"recorded": backend})
    assert fb.signal("recorded", seq=1) is True
    assert backend.wait_idle(IDLE_S)
    assert (backend.runs, backend.failures) == (1, 1)
