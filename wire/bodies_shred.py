"""The ``shred`` entry body (DESIGN.md §8.6; docs/protocol.md §7.2 ``shred``): the evidence
of an erasure by key destruction.

A shred entry names the data keys the collector destroyed (blanked in its key table in the
same transaction) and the entries whose bodies they sealed; from that entry on, verifiers
accept those bodies as missing (as under §6's ``retention``), and only those. Body::

    {"v": 1, "employee": E, "keys": ["dk-…", …], "entries": [[first, last], …],
     "count": N, "reason": R, "case": C, "by": P, "approved_by": Q}

- ``keys``: the destroyed key ids, strictly ascending, at least one;
- ``entries``: inclusive idx ranges, strictly ascending and not touching (``[1, 3], [5, 5]``,
  never ``[1, 3], [4, 5]``), each below the shred entry's own idx; ``count`` their total;
- ``by`` asked, ``approved_by`` approved: two different principals (dual control, as for
  policies and hold releases);
- ``employee``: the directory's employee id (a pseudonymous reference, never a name);
  ``reason`` and ``case``: free labels.

Parse strictly (every field required, no other field), then verify; nothing here imports the
rest of ``wire.bodies`` (which imports this module).
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any

from wire.bodies_people import EMPLOYEE_ID_RE
from wire.bodies_retention import LABEL_RE, PRINCIPAL_RE
from wire.errors import DecodeError
from wire.fields import check_version, get_int, get_str, require_object

DATA_KEY_ID_RE = re.compile(r"^dk-[0-9a-f]{32}$")
SHRED_FIELDS = frozenset({"v", "employee", "keys", "entries", "count", "reason", "case", "by",
                          "approved_by"})
MAX_KEYS = 100_000


@dataclass(frozen=True, slots=True)
class Shred:
    employee: str
    keys: tuple[str, ...]
    entries: tuple[tuple[int, int], ...]
    reason: str
    case: str
    by: str
    approved_by: str

    @property
    def count(self) -> int:
        return sum(b - a + 1 for a, b in self.entries)

    def covers(self, idx: int) -> bool:
        return any(a <= idx <= b for a, b in self.entries)

    def to_dict(self) -> dict[str, Any]:
        return {"v": 1, "employee": self.employee, "keys": list(self.keys),
                "entries": [[a, b] for a, b in self.entries], "count": self.count,
                "reason": self.reason, "case": self.case, "by": self.by,
                "approved_by": self.approved_by}


def ranges(idxs: list[int]) -> tuple[tuple[int, int], ...]:
    """Sorted distinct idxs as the body's inclusive, non-touching ranges."""
    out: list[list[int]] = []
    for i in sorted(set(idxs)):
        if out and out[-1][1] == i - 1:
            out[-1][1] = i
        else:
            out.append([i, i])
    return tuple((a, b) for a, b in out)


def _keys(value: Any) -> tuple[str, ...]:
    if not isinstance(value, list) or not value:
        raise DecodeError("keys: expected a non-empty list of data key ids", field="keys")
    if len(value) > MAX_KEYS:
        raise DecodeError(f"keys: more than {MAX_KEYS} keys", field="keys")
    for k in value:
        if not isinstance(k, str) or not DATA_KEY_ID_RE.match(k):
            raise DecodeError("keys: each key id is 'dk-' and 32 lowercase hex digits",
                              field="keys")
    if any(a >= b for a, b in zip(value, value[1:], strict=False)):
        raise DecodeError("keys: must be strictly ascending (sorted, no repeats)", field="keys")
    return tuple(value)


def _entries(value: Any, idx: int) -> tuple[tuple[int, int], ...]:
    if not isinstance(value, list):
        raise DecodeError("entries: expected a list of [first, last] idx ranges",
                          field="entries")
    out: list[tuple[int, int]] = []
    for r in value:
        if (not isinstance(r, list) or len(r) != 2
                or not all(isinstance(x, int) and not isinstance(x, bool) for x in r)):
            raise DecodeError("entries: each range is [first, last], two integers",
                              field="entries")
        a, b = r
        if a < 0 or b < a:
            raise DecodeError(f"entries: range [{a}, {b}] is not first ≤ last, both ≥ 0",
                              field="entries")
        if b >= idx:
            raise DecodeError(f"entries: range [{a}, {b}] reaches the shred entry's own idx "
                              f"{idx} or beyond (it may name only earlier entries)",
                              field="entries")
        if out and a <= out[-1][1] + 1:
            raise DecodeError("entries: ranges must be ascending and neither overlap nor touch",
                              field="entries")
        out.append((a, b))
    return tuple(out)


def parse_shred(value: Any, idx: int) -> Shred:
    """The body of the ``shred`` entry at ``idx``, strictly; else DecodeError."""
    obj = require_object(value, "shred body", SHRED_FIELDS)
    check_version(obj)
    s = Shred(employee=get_str(obj, "employee", EMPLOYEE_ID_RE), keys=_keys(obj["keys"]),
              entries=_entries(obj["entries"], idx), reason=get_str(obj, "reason", LABEL_RE),
              case=get_str(obj, "case", LABEL_RE), by=get_str(obj, "by", PRINCIPAL_RE),
              approved_by=get_str(obj, "approved_by", PRINCIPAL_RE))
    count = get_int(obj, "count", minimum=0)
    if count != s.count:
        raise DecodeError(f"count: {count}, but the ranges name {s.count} entries",
                          field="count")
    if s.by == s.approved_by:
        raise DecodeError("approved_by: the erasure needs a second principal, not the one "
                          "who asked (dual control)", field="approved_by")
    return s
