"""Reading one TOML config table with every problem collected at once (agent, collector, API).

Role: the one config-section reader of the project. Each getter reads a key, records a problem
prefixed with the key's path (``mqtt.port: must be between 1 and 65535, got 0``) instead of
stopping at the first one, and returns a harmless placeholder that is never used because the
caller raises its own ``ConfigError`` when :attr:`Section.problems` is not empty.

Invariants: one wording everywhere; unknown keys are problems that list the allowed keys;
booleans are never accepted as numbers (TOML ``true`` is not ``1``); a relative path is made
absolute against the config file's directory.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any, overload


def unknown_key(path: str, allowed: Iterable[str]) -> str:
    """The one wording of an unknown key: its path and every key allowed there."""
    names = sorted(allowed)
    return f"{path}: unknown key (allowed: {', '.join(names) if names else 'none'})"


def unknown_section(name: str, allowed: Iterable[str]) -> str:
    """The wording of an unknown top-level table, with every section allowed."""
    names = sorted(allowed)
    return f"{name}: unknown section (allowed: {', '.join(names) if names else 'none'})"


class Section:
    """Typed getters over one table that collect problems with their key paths.

    ``prefix`` is the table's path (``"mqtt"``, ``"readers.door"``; ``""`` for the document's
    top level). ``problems`` may be shared by several sections so that one error lists all.
    """

    def __init__(self, prefix: str, table: object, problems: list[str] | None = None, *,
                 absent: bool = False) -> None:
        self.prefix = prefix
        self.problems: list[str] = [] if problems is None else problems
        self.used: set[str] = set()
        # A required table that is missing was reported once; its keys are not reported again.
        self.absent = absent
        self.table: Mapping[str, Any] = {}
        if isinstance(table, Mapping):
            self.table = table
        else:  # TOML gave a scalar where a table belongs
            self.problems.append(f"{prefix or '(top level)'}: expected a table, "
                                 f"got {type(table).__name__}")

    def path_of(self, key: str) -> str:
        return f"{self.prefix}.{key}" if self.prefix else key

    def problem(self, key: str, message: str) -> None:
        self.problems.append(f"{self.path_of(key)}: {message}")

    def missing(self, key: str, hint: str = "") -> None:
        """A required key is absent (not reported again inside a table that is absent)."""
        if not self.absent:
            self.problem(key, "required" + (f" ({hint})" if hint else ""))

    def has(self, key: str) -> bool:
        return key in self.table

    def raw(self, key: str) -> Any:
        """The value as TOML gave it (None when absent); marks the key as known."""
        self.used.add(key)
        return self.table.get(key)

    # ---- getters ----------------------------------------------------------------------------

    def section(self, key: str, *, required: bool = False) -> Section:
        """A sub-table as its own :class:`Section` (empty when absent)."""
        v = self.raw(key)
        if v is None:
            if required:
                self.problem(key, f"required (a [{self.path_of(key)}] table)")
            return Section(self.path_of(key), {}, self.problems, absent=required)
        return Section(self.path_of(key), v, self.problems)

    @overload
    def string(self, key: str, default: str, *, required: bool = False,
               pattern: re.Pattern[str] | None = None, hint: str = "") -> str: ...
    @overload
    def string(self, key: str, default: None = None, *, required: bool = False,
               pattern: re.Pattern[str] | None = None, hint: str = "") -> str | None: ...

    def string(self, key: str, default: str | None = None, *, required: bool = False,
               pattern: re.Pattern[str] | None = None, hint: str = "") -> str | None:
        """A non-empty string, or ``default`` when absent (a problem when ``required``)."""
        v = self.raw(key)
        if v is None:
            if required:
                self.missing(key, hint)
            return default
        if not isinstance(v, str):
            self.problem(key, f"expected a string, got {_kind(v)}")
            return default
        if not v:
            self.problem(key, "expected a non-empty string")
            return default
        if pattern is not None and not pattern.fullmatch(v):
            self.problem(key, f"{v[:60]!r} must match {pattern.pattern}"
                         + (f" ({hint})" if hint else ""))
            return default
        return v

    def choice(self, key: str, default: str, choices: Iterable[str]) -> str:
        allowed = frozenset(choices)
        v: str = self.string(key, default)
        if v not in allowed:
            self.problem(key, f"{str(v)[:40]!r} is not one of {', '.join(sorted(allowed))}")
            return default
        return v

    @overload
    def integer(self, key: str, default: int, *, lo: int | None = None,
                hi: int | None = None, required: bool = False) -> int: ...
    @overload
    def integer(self, key: str, default: None = None, *, lo: int | None = None,
                hi: int | None = None, required: bool = False) -> int | None: ...

    def integer(self, key: str, default: int | None = None, *, lo: int | None = None,
                hi: int | None = None, required: bool = False) -> int | None:
        """An integer within [lo, hi], or ``default`` when absent."""
        v = self.raw(key)
        if v is None:
            if required:
                self.missing(key)
            return default
        if isinstance(v, bool) or not isinstance(v, int):
            self.problem(key, f"expected an integer, got {_kind(v)}")
            return default
        if not _within(v, lo, hi):
            self.problem(key, _range_message(v, lo, hi))
            return default
        return v

    @overload
    def number(self, key: str, default: float, *, lo: float | None = None,
               hi: float | None = None, required: bool = False) -> float: ...
    @overload
    def number(self, key: str, default: None = None, *, lo: float | None = None,
               hi: float | None = None, required: bool = False) -> float | None: ...

    def number(self, key: str, default: float | None = None, *, lo: float | None = None,
               hi: float | None = None, required: bool = False) -> float | None:
        """An int or float within [lo, hi] (TOML ``3`` and ``3.0`` both mean 3)."""
        v = self.raw(key)
        if v is None:
            if required:
                self.missing(key)
            return default
        if isinstance(v, bool) or not isinstance(v, int | float):
            self.problem(key, f"expected a number, got {_kind(v)}")
            return default
        if not _within(v, lo, hi):
            self.problem(key, _range_message(v, lo, hi))
            return default
        return float(v)

    def boolean(self, key: str, default: bool) -> bool:
        v = self.raw(key)
        if v is None:
            return default
        if not isinstance(v, bool):
            self.problem(key, f"expected true or false, got {_kind(v)}")
            return default
        return v

    def path(self, key: str, base: Path, *, required: bool = False) -> Path | None:
        """A path; a relative one is taken against ``base`` (the config file's directory)."""
        s = self.string(key, required=required, hint="a path")
        if s is None:
            return None
        p = Path(s).expanduser()
        return p if p.is_absolute() else base / p

    def string_list(self, key: str, *, pattern: re.Pattern[str] | None = None,
                    required: bool = False, max_items: int = 10_000) -> list[str] | None:
        """A non-empty list of strings (None when absent); each bad item is its own problem."""
        v = self.raw(key)
        if v is None:
            if required:
                self.missing(key, "a non-empty list of strings")
            return None
        if not isinstance(v, list) or not v:
            self.problem(key, "expected a non-empty list of strings")
            return None
        if len(v) > max_items:
            self.problem(key, f"at most {max_items} items, got {len(v)}")
            return None
        out: list[str] = []
        for i, item in enumerate(v):
            if not isinstance(item, str):
                self.problem(f"{key}[{i}]", f"expected a string, got {_kind(item)}")
            elif pattern is not None and not pattern.fullmatch(item):
                self.problem(f"{key}[{i}]", f"must match {pattern.pattern}")
            else:
                out.append(item)
        return out

    # ---- the end ----------------------------------------------------------------------------

    def finish(self, allowed: Iterable[str] | None = None) -> list[str]:
        """Record every key that was never read (or is not in ``allowed``) as unknown; return
        the shared problem list. At the top level a table is an unknown *section*."""
        known = set(self.used if allowed is None else allowed)
        for k in sorted(set(self.table) - known, key=str):
            if not self.prefix and isinstance(self.table[k], Mapping):
                self.problems.append(unknown_section(str(k), known))
            else:
                self.problems.append(unknown_key(self.path_of(str(k)), known))
        return self.problems


def _kind(v: object) -> str:
    """The TOML value's Python type name (``got bool``, ``got str``): short and exact."""
    return type(v).__name__


def _within(v: float, lo: float | None, hi: float | None) -> bool:
    return (lo is None or v >= lo) and (hi is None or v <= hi)


def _range_message(v: float, lo: float | None, hi: float | None) -> str:
    if lo is not None and hi is not None:
        return f"must be between {lo:g} and {hi:g}, got {v:g}"
    if lo is not None:
        return f"must be ≥ {lo:g}, got {v:g}"
    return f"must be ≤ {hi:g}, got {v:g}"
