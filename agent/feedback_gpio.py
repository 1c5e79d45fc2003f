"""GPIO feedback through libgpiod's Python binding (the ``gpiod`` package, v2 API): an LED,
buzzer or relay on one output line, pulsed with a pattern per outcome (agent.feedback)::

    [feedback.gpio]
    recorded = {chip = "/dev/gpiochip0", line = 17, pattern = "on:200"}
    unknown-badge = {chip = "/dev/gpiochip0", line = 27, pattern = "on:200,off:100,on:200",
                     active_low = false}

A pattern is 1 to :data:`MAX_STEPS` comma-separated steps ``on:MS`` or ``off:MS`` (MS an
integer from 1 to :data:`MAX_STEP_MS`); its total may not exceed ``[feedback]
command_timeout_s``, which bounds every feedback run. Each run requests the line as an output
(consumer ``timeclock-agent``, initially inactive), plays the pattern, drives it inactive and
releases it, so other programs (and the next outcome on the same line) can use it between runs.

Invariants: ``gpiod`` is imported only when a run (or :func:`check_line`) needs it, so the agent
imports and its config parses on a laptop without it; a missing chip, a line out of range, a
busy line, missing permission, a missing ``gpiod`` or the v1 binding (Debian's
python3-libgpiod) is one line saying what to do (a run
fails, is logged once and counted: a punch is never held up by it). Tested on this project's
CI without GPIO hardware or gpio-sim: the config, the pattern parsing and the errors for a
missing chip are tested for real; a pulse on a real line is not (docs/operations.md).
"""

from __future__ import annotations

import errno
import re
import time
from dataclasses import dataclass
from typing import Any

from agent.feedback import Backend, Event

MAX_STEPS = 32
MAX_STEP_MS = 10_000
MAX_LINE = 1023
CONSUMER = "timeclock-agent"
_STEP_RE = re.compile(r"^(on|off):([0-9]{1,5})$")
_CHIP_RE = re.compile(r"^/dev/gpiochip[0-9]{1,3}$")
_KEYS = frozenset({"chip", "line", "pattern", "active_low"})


class GpioError(Exception):
    """A GPIO line cannot be used (operator-facing message)."""


def parse_pattern(text: str) -> tuple[tuple[bool, int], ...]:
    """``"on:200,off:100,on:200"`` → ((True, 200), (False, 100), (True, 200)); ValueError
    naming the bad step."""
    if not isinstance(text, str) or not text.strip():
        raise ValueError('expected steps like "on:200,off:100,on:200"')
    steps: list[tuple[bool, int]] = []
    parts = text.split(",")
    if len(parts) > MAX_STEPS:
        raise ValueError(f"at most {MAX_STEPS} steps, got {len(parts)}")
    for i, part in enumerate(parts):
        m = _STEP_RE.fullmatch(part.strip())
        if m is None:
            raise ValueError(f"step {i + 1} {part.strip()[:20]!r}: expected on:MS or off:MS")
        ms = int(m.group(2))
        if not 1 <= ms <= MAX_STEP_MS:
            raise ValueError(f"step {i + 1}: {ms} ms is outside 1..{MAX_STEP_MS}")
        steps.append((m.group(1) == "on", ms))
    return tuple(steps)


@dataclass(frozen=True, slots=True)
class GpioSpec:
    """One outcome's line and pattern (``[feedback.gpio] <outcome> = {...}``)."""

    chip: str
    line: int
    pattern: tuple[tuple[bool, int], ...]
    active_low: bool = False

    @property
    def total_ms(self) -> int:
        return sum(ms for _, ms in self.pattern)

    @property
    def name(self) -> str:
        return f"{self.chip}:{self.line}"


def parse_spec(raw: Any, *, max_total_ms: int) -> tuple[GpioSpec | None, list[str]]:
    """A spec from its inline table, or None and the problems (each ``key: message``)."""
    if not isinstance(raw, dict):
        return None, ['expected an inline table {chip = "/dev/gpiochip0", line = 17, '
                      'pattern = "on:200"}']
    problems = [f"{k}: unknown key (allowed: {', '.join(sorted(_KEYS))})"
                for k in sorted(set(raw) - _KEYS, key=str)]
    chip, line, pattern, active_low = (raw.get("chip"), raw.get("line"), raw.get("pattern"),
                                       raw.get("active_low", False))
    if not isinstance(chip, str) or not _CHIP_RE.fullmatch(chip):
        problems.append(f"chip: expected a GPIO character device like /dev/gpiochip0, got "
                        f"{str(chip)[:60]!r}")
    if isinstance(line, bool) or not isinstance(line, int) or not 0 <= line <= MAX_LINE:
        problems.append(f"line: expected a line offset from 0 to {MAX_LINE}, got "
                        f"{str(line)[:20]!r}")
    steps: tuple[tuple[bool, int], ...] = ()
    try:
        steps = parse_pattern(pattern) if pattern is not None else ()
        if pattern is None:
            problems.append('pattern: required (e.g. "on:200,off:100,on:200")')
    except ValueError as e:
        problems.append(f"pattern: {e}")
    total = sum(ms for _, ms in steps)
    if total > max_total_ms:
        problems.append(f"pattern: lasts {total} ms, longer than [feedback] command_timeout_s "
                        f"({max_total_ms} ms)")
    if not isinstance(active_low, bool):
        problems.append("active_low: expected true or false")
    if problems:
        return None, problems
    return GpioSpec(str(chip), int(str(line)), steps, bool(active_low)), []


# What to do without libgpiod's v2 binding: the amd64 and arm64 packages vendor PyPI's gpiod
# wheel; the armhf one cannot (PyPI has no armv7l wheel, bookworm's python3-libgpiod is v1).
INSTALL_HINT = ("GPIO feedback needs it: on the clock run sudo pip install "
                "--break-system-packages 'gpiod>=2.1' (on armhf it builds from source: apt "
                "install gcc python3-dev first), or signal with a command backend "
                "([feedback.outcomes]) instead")


def _gpiod() -> Any:
    try:
        import gpiod  # noqa: PLC0415 -- hardware library, only when a line is used
    except ImportError as e:
        raise GpioError("the gpiod package (>= 2.1, libgpiod's v2 Python binding) is not "
                        "installed where the agent's Python finds it (the armhf package does "
                        f"not ship it); {INSTALL_HINT}") from e
    # Debian's python3-libgpiod (1.6 in bookworm) is the v1 API under the same module name:
    # it has no request_lines, and would fail at the first pulse instead of here.
    if not callable(getattr(gpiod, "request_lines", None)):
        where = getattr(gpiod, "__file__", None) or "?"
        raise GpioError(f"the gpiod module found ({where}) is not libgpiod's v2 Python binding "
                        f"(Debian's python3-libgpiod is v1); {INSTALL_HINT}")
    return gpiod


def _oserror(spec: GpioSpec, e: OSError) -> GpioError:
    if isinstance(e, FileNotFoundError):
        return GpioError(f"GPIO chip {spec.chip} does not exist: check [feedback.gpio] chip "
                         "(gpiodetect lists the chips and gpioinfo their lines)")
    if isinstance(e, PermissionError):
        return GpioError(f"no permission to open {spec.chip}: add the agent's user to the "
                         "gpio group (or a udev rule)")
    if e.errno == errno.EBUSY:
        return GpioError(f"GPIO line {spec.line} of {spec.chip} is in use by another program "
                         "(gpioinfo names it)")
    if e.errno in (errno.ENODEV, errno.ENOTTY):
        return GpioError(f"{spec.chip} is not a GPIO chip: check [feedback.gpio] chip")
    if e.errno == errno.EINVAL:
        return GpioError(f"GPIO line {spec.line} does not exist on {spec.chip} (gpioinfo "
                         "lists its lines)")
    return GpioError(f"GPIO {spec.name}: {e.strerror or e}")


def check_line(spec: GpioSpec) -> str | None:
    """What is wrong with ``spec``'s chip and line on this machine, or None (check-config)."""
    try:
        gpiod = _gpiod()
        with gpiod.Chip(spec.chip) as chip:
            lines = chip.get_info().num_lines
    except GpioError as e:
        return str(e)
    except OSError as e:
        return str(_oserror(spec, e))
    if spec.line >= lines:
        return f"GPIO line {spec.line} does not exist on {spec.chip} ({lines} lines)"
    return None


class GpioFeedback(Backend):
    """Plays ``spec``'s pattern on its line, one run at a time."""

    kind = "gpio"

    def __init__(self, spec: GpioSpec) -> None:
        super().__init__(spec.name, timeout_s=spec.total_ms / 1000)
        self.spec = spec

    def _do(self, event: Event) -> bool:
        s = self.spec
        try:
            gpiod = _gpiod()
            from gpiod.line import Direction, Value  # noqa: PLC0415 -- as above

            settings = gpiod.LineSettings(direction=Direction.OUTPUT,
                                          output_value=Value.INACTIVE, active_low=s.active_low)
            with gpiod.request_lines(s.chip, consumer=CONSUMER,
                                     config={s.line: settings}) as req:
                for on, ms in s.pattern:
                    req.set_value(s.line, Value.ACTIVE if on else Value.INACTIVE)
                    time.sleep(ms / 1000)    # the pattern's own timing, on its own thread
                req.set_value(s.line, Value.INACTIVE)
        except GpioError as e:
            self.failed(f"cannot pulse: {e}")
            return False
        except OSError as e:
            self.failed(f"cannot pulse: {_oserror(s, e)}")
            return False
        return True
