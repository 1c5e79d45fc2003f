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
from typing import Any

from agent.errors import ConfigError
from agent.readers.base import CommonOptions
from wire.config import Section
from wire.fields import DEVICE_ID_RE
from wire.punch import ACTIONS

COMMON_KEYS = frozenset({"kind", "action", "debounce_s", "reopen_min_s", "reopen_max_s"})
FORMAT_RE = re.compile(r"^[a-z0-9]{1,16}$")   # the part of a credential before the colon
ID_RE = re.compile(r"^[0-9A-Za-z]{1,64}$")    # the part after it


class SectionParser:
    """Typed getters over one reader section that accumulate problems.

    The checks and their wording are :class:`wire.config.Section`'s (the project's one
    config-section reader); this adds the reader conventions: a getter that found a problem
    returns a placeholder ("" or 0), and :meth:`finish` raises.
    """

    def __init__(self, name: str, section: object) -> None:
        self.name = name
        self.prefix = f"readers.{name}"
        self.problems: list[str] = []
        if not DEVICE_ID_RE.fullmatch(name):
            self.problems.append(f"{self.prefix}: reader name must match {DEVICE_ID_RE.pattern} "
                                 "(lowercase letters, digits and inner dashes)")
        self._s = Section(self.prefix, section, self.problems)

    def problem(self, key: str, message: str) -> None:
        self._s.problem(key, message)

    def has(self, key: str) -> bool:
        return self._s.has(key)

    def _get(self, key: str) -> Any:
        return self._s.raw(key)

    # ---- getters --------------------------------------------------------------------------

    def string(self, key: str, default: str | None = None, *,
               pattern: re.Pattern[str] | None = None, hint: str = "") -> str:
        """A string; required when ``default`` is None."""
        v = self._s.string(key, default, required=default is None, pattern=pattern, hint=hint)
        return "" if v is None else v

    def optional_string(self, key: str, *, pattern: re.Pattern[str] | None = None,
                        hint: str = "") -> str | None:
        return self._s.string(key, None, pattern=pattern, hint=hint)

    def choice(self, key: str, default: str, choices: frozenset[str]) -> str:
        return self._s.choice(key, default, choices)

    def integer(self, key: str, default: int | None = None, *, minimum: int | None = None,
                maximum: int | None = None) -> int:
        """An integer; required when ``default`` is None."""
        v = self._s.integer(key, default, lo=minimum, hi=maximum, required=default is None)
        return 0 if v is None else v

    def number(self, key: str, default: float, *, minimum: float | None = None,
               maximum: float | None = None) -> float:
        """An int or float (TOML ``3`` and ``3.0`` both mean 3 seconds)."""
        v = self._s.number(key, default, lo=minimum, hi=maximum)
        return default if v is None else v

    def string_list(self, key: str, *, pattern: re.Pattern[str] | None = None,
                    max_items: int = 10_000) -> list[str]:
        """A required, non-empty list of strings; each bad item is its own problem."""
        return self._s.string_list(key, pattern=pattern, required=True,
                                   max_items=max_items) or []

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
        self._s.finish()
        if self.problems:
            raise ConfigError(self.problems)
