"""Validation of one ``[readers.<name>]`` config section, collecting every problem at once.

Role: each plugin's ``from_config`` walks its section with a :class:`SectionParser`, which
records a problem (prefixed with the key path ``readers.<name>.<key>``) instead of stopping at
the first one, and :meth:`SectionParser.finish` raises one :class:`ConfigError` listing them all.

Invariants: unknown keys are errors; booleans are never accepted as numbers (TOML ``true`` is
not ``1``); a getter that found a problem returns a harmless placeholder, which is never used
because ``finish`` raises.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from typing import Any

from agent.errors import ConfigError
from agent.readers.base import CommonOptions
from wire.fields import DEVICE_ID_RE
from wire.punch import ACTIONS

COMMON_KEYS = frozenset({"kind", "action", "debounce_s", "reopen_min_s", "reopen_max_s"})
FORMAT_RE = re.compile(r"^[a-z0-9]{1,16}$")   # the part of a credential before the colon
ID_RE = re.compile(r"^[0-9A-Za-z]{1,64}$")    # the part after it


class SectionParser:
    """Typed getters over one reader section that accumulate problems."""

    def __init__(self, name: str, section: object) -> None:
        self.name = name
        self.prefix = f"readers.{name}"
        self.problems: list[str] = []
        self._used: set[str] = set()
        if not DEVICE_ID_RE.fullmatch(name):
            self.problems.append(f"{self.prefix}: reader name must match {DEVICE_ID_RE.pattern} "
                                 "(lowercase letters, digits and inner dashes)")
        self._section: Mapping[str, Any] = {}
        if isinstance(section, Mapping):
            self._section = section
        else:  # TOML gave a scalar where a table belongs
            self.problems.append(f"{self.prefix}: expected a table, got {type(section).__name__}")

    def problem(self, key: str, message: str) -> None:
        self.problems.append(f"{self.prefix}.{key}: {message}")

    def has(self, key: str) -> bool:
        return key in self._section

    def _get(self, key: str) -> Any:
        self._used.add(key)
        return self._section.get(key)

    # ---- getters --------------------------------------------------------------------------

    def string(self, key: str, default: str | None = None, *,
               pattern: re.Pattern[str] | None = None, hint: str = "") -> str:
        """A string; required when ``default`` is None."""
        v = self._get(key)
        if v is None:
            if default is None:
                self.problem(key, "required" + (f" ({hint})" if hint else ""))
                return ""
            return default
        if not isinstance(v, str):
            self.problem(key, f"expected a string, got {type(v).__name__}")
            return default or ""
        if pattern is not None and not pattern.fullmatch(v):
            self.problem(key, f"{v[:60]!r} must match {pattern.pattern}"
                         + (f" ({hint})" if hint else ""))
            return default or ""
        return v

    def optional_string(self, key: str, *, pattern: re.Pattern[str] | None = None,
                        hint: str = "") -> str | None:
        if self._section.get(key) is None:
            self._used.add(key)
            return None
        return self.string(key, "", pattern=pattern, hint=hint) or None

    def choice(self, key: str, default: str, choices: frozenset[str]) -> str:
        v = self.string(key, default)
        if v not in choices:
            self.problem(key, f"{v[:40]!r} is not one of {', '.join(sorted(choices))}")
            return default
        return v

    def integer(self, key: str, default: int | None = None, *, minimum: int | None = None,
                maximum: int | None = None) -> int:
        """An integer; required when ``default`` is None."""
        v = self._get(key)
        if v is None:
            if default is None:
                self.problem(key, "required")
                return 0
            return default
        if isinstance(v, bool) or not isinstance(v, int):
            self.problem(key, f"expected an integer, got {type(v).__name__}")
            return default or 0
        return int(self._bounded(key, v, default or 0, minimum, maximum))

    def number(self, key: str, default: float, *, minimum: float | None = None,
               maximum: float | None = None) -> float:
        """An int or float (TOML ``3`` and ``3.0`` both mean 3 seconds)."""
        v = self._get(key)
        if v is None:
            return default
        if isinstance(v, bool) or not isinstance(v, int | float):
            self.problem(key, f"expected a number, got {type(v).__name__}")
            return default
        return float(self._bounded(key, v, default, minimum, maximum))

    def _bounded(self, key: str, v: Any, fallback: Any, minimum: float | None,
                 maximum: float | None) -> Any:
        if minimum is not None and v < minimum:
            self.problem(key, f"must be ≥ {minimum:g}, got {v}")
            return fallback
        if maximum is not None and v > maximum:
            self.problem(key, f"must be ≤ {maximum:g}, got {v}")
            return fallback
        return v

    def string_list(self, key: str, *, pattern: re.Pattern[str] | None = None,
                    max_items: int = 10_000) -> list[str]:
        """A required, non-empty list of strings; each bad item is its own problem."""
        v = self._get(key)
        if v is None:
            self.problem(key, "required (a non-empty list of strings)")
            return []
        if not isinstance(v, list) or not v:
            self.problem(key, "expected a non-empty list of strings")
            return []
        if len(v) > max_items:
            self.problem(key, f"at most {max_items} items, got {len(v)}")
            return []
        out: list[str] = []
        for i, item in enumerate(v):
            if not isinstance(item, str):
                self.problems.append(f"{self.prefix}.{key}[{i}]: expected a string, "
                                     f"got {type(item).__name__}")
            elif pattern is not None and not pattern.fullmatch(item):
                self.problems.append(f"{self.prefix}.{key}[{i}]: must match {pattern.pattern}")
            else:
                out.append(item)
        return out

    # ---- the keys every kind shares ------------------------------------------------------

    def common(self, kind: str) -> CommonOptions:
        """Parse ``kind`` (must equal ``kind``), ``action``, ``debounce_s``, ``reopen_*_s``."""
        got = self._get("kind")
        if got is not None and got != kind:
            self.problem("kind", f"{got!r} given to the {kind!r} reader")
        action = self.choice("action", "punch", ACTIONS)
        debounce_s = self.number("debounce_s", 3.0, minimum=0.0, maximum=3600.0)
        reopen_min_s = self.number("reopen_min_s", 1.0, minimum=0.01, maximum=3600.0)
        reopen_max_s = self.number("reopen_max_s", 30.0, minimum=0.01, maximum=3600.0)
        if reopen_max_s < reopen_min_s:
            self.problem("reopen_max_s", f"must be ≥ reopen_min_s ({reopen_min_s:g})")
        return CommonOptions(action, debounce_s, reopen_min_s, reopen_max_s)

    def finish(self) -> None:
        """Add unknown keys as problems; raise :class:`ConfigError` if there are any."""
        for key in sorted(set(self._section) - self._used):
            self.problem(key, "unknown key")
        if self.problems:
            raise ConfigError(self.problems)
