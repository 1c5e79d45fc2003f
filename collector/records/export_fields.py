"""Which fields of a punch an export carries, by purpose (D20, minimum necessary; issue 12).

A punch row (collector.records.exports.punch_item) has these fields; every export chooses a
named *field set* and may narrow it further with an explicit list:

==============  =====================================================================  ==========
set             fields                                                                 who
==============  =====================================================================  ==========
payroll         employee_id, badge_status, badge_pseudonym, site, device, seq, action, default
                device_time(_us), clock, recorded_at(_us), effective, corrections,
                ledger_idx, entry_hash
audit           payroll + key (device key id), reader                                  any
investigation   audit + credential (the badge UID)                                     hr.people
==============  =====================================================================  ==========

Invariants: the default of the CLI and the API is the payroll set, which holds no credential
and no employee name (names are never in a punch row); a field outside the chosen set, or one
the caller's roles may not see (``credential`` needs ``hr.people``), is refused naming the
field and the role it needs, before anything is read; the export's ``access`` entry lists
exactly the fields it carried (:func:`FieldSet.names`).

``badge_pseudonym`` lets a payroll clerk group the punches of a badge that resolves to no
employee (unknown, lost, blocked) without seeing it: ``bp1:`` and the first 16 hex digits
(64 bits) of HMAC-SHA256(pseudonym key, ``timeclock badge pseudonym v1\n`` ‖ credential), under
the ledger's 32-byte secret key file (``[collector] pseudonym_key``, 0600, made by ``init``).
Null for a row with an employee, and for every row when no key is given (the header says so).
The same badge always gets the same pseudonym under one key; without the key it cannot be
reversed or recomputed from a guessed badge UID.
"""

from __future__ import annotations

import hashlib
import hmac
import secrets
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path

from collector import CollectorError, ForbiddenError
from wire.errors import KeyFileError
from wire.keys import read_key_file, write_key_file

PAYROLL = ("employee_id", "badge_status", "badge_pseudonym", "site", "device", "seq", "action",
           "device_time", "device_time_us", "clock", "recorded_at", "recorded_at_us", "effective",
           "corrections", "ledger_idx", "entry_hash")
AUDIT = (*PAYROLL, "key", "reader")
INVESTIGATION = (*AUDIT, "credential")
SETS: dict[str, tuple[str, ...]] = {"payroll": PAYROLL, "audit": AUDIT,
                                    "investigation": INVESTIGATION}
DEFAULT_SET = "payroll"
# A field only some roles may see (API): the roles, any one of which is enough.
FIELD_ROLES: dict[str, frozenset[str]] = {"credential": frozenset({"hr.people"})}
# Flat CSV columns of each item field (the nested effective/corrections members flattened).
CSV_COLUMNS: dict[str, tuple[str, ...]] = {
    "effective": ("effective_action", "effective_device_time", "effective_device_time_us"),
    "corrections": ("correction_idx",)}
# The order of every export's columns (the historical order of collector.records.exports).
ORDER = ("device", "site", "seq", "credential", "action", "device_time", "device_time_us",
         "clock", "recorded_at", "recorded_at_us", "ledger_idx", "entry_hash", "reader", "key",
         "effective", "corrections", "badge_pseudonym", "employee_id", "badge_status")


class FieldsError(CollectorError):
    """An export's field set or field list cannot be used (unknown name, not in the set)."""


@dataclass(frozen=True)
class FieldSet:
    """The fields one export carries: a named set, optionally narrowed."""

    set_name: str
    fields: tuple[str, ...]          # in ORDER

    @classmethod
    def choose(cls, set_name: str | None = None, fields: Iterable[str] | None = None, *,
               roles: Iterable[str] | None = None) -> FieldSet:
        """The fields of ``set_name`` (default payroll), narrowed to ``fields`` when given.

        ``roles`` (the API principal's): a field in FIELD_ROLES needs one of its roles
        (:class:`~collector.ForbiddenError` naming the field and the role); None (the CLI,
        run by the ledger's operator) skips that check. A field outside the set is a
        FieldsError naming the set that has it."""
        name = DEFAULT_SET if set_name is None else set_name
        if name not in SETS:
            raise FieldsError(f"field set {name!r}: use one of {', '.join(SETS)}")
        allowed = SETS[name]
        chosen = list(allowed)
        if fields is not None:
            asked = [f for f in fields if f]
            if not asked:
                raise FieldsError("fields: name at least one field")
            for f in asked:
                if f not in ORDER:
                    raise FieldsError(f"field {f!r} does not exist; fields are "
                                      f"{', '.join(ORDER)}")
                if f not in allowed:
                    need = next(s for s in SETS if f in SETS[s])
                    raise FieldsError(f"field {f!r} is not in the {name} set; it is in the "
                                      f"{need} set (ask for that set"
                                      + (f", which needs role {_roles(f)})" if f in FIELD_ROLES
                                         else ")"))
            chosen = asked
        if roles is not None:
            held = set(roles)
            for f in chosen:
                need_roles = FIELD_ROLES.get(f)
                if need_roles is not None and not need_roles & held:
                    raise ForbiddenError(f"field {f!r} ({name} set) needs role {_roles(f)}; "
                                         f"the caller holds {', '.join(sorted(held)) or 'none'}")
        return cls(name, tuple(f for f in ORDER if f in set(chosen)))

    def names(self) -> list[str]:
        """The fields carried, as the access entry records them."""
        return list(self.fields)

    def columns(self) -> tuple[str, ...]:
        """The CSV columns of these fields (effective and corrections flattened)."""
        out: list[str] = []
        for f in self.fields:
            out.extend(CSV_COLUMNS.get(f, (f,)))
        return tuple(out)

    @property
    def credential(self) -> bool:
        return "credential" in self.fields


def parse_list(text: str | None) -> list[str] | None:
    """``a,b,c`` (``--fields`` / ``?fields=``) into names; None stays None."""
    if text is None:
        return None
    return [p.strip() for p in text.split(",")]


def _roles(field: str) -> str:
    return " or ".join(sorted(FIELD_ROLES[field]))


DEFAULT = FieldSet.choose()

PSEUDONYM_KEY_HEADER = b"timeclock-badge-pseudonym-key-v1\n"
PSEUDONYM_CONTEXT = b"timeclock badge pseudonym v1\n"
PSEUDONYM_HEX = 16


def create_pseudonym_key(path: Path) -> None:
    """A new 0600 pseudonym key file (32 random bytes); refuses to overwrite one."""
    write_key_file(path, PSEUDONYM_KEY_HEADER, secrets.token_bytes(32))


@dataclass
class Pseudonyms:
    """The keyed pseudonym of a badge credential (module doc); memoised per export."""

    key: bytes = field(repr=False)
    _memo: dict[str, str] = field(default_factory=dict, repr=False)

    @classmethod
    def load(cls, path: Path) -> Pseudonyms:
        try:
            return cls(read_key_file(path, PSEUDONYM_KEY_HEADER, what="badge pseudonym key",
                                     length=32))
        except (KeyFileError, OSError) as e:
            raise FieldsError(f"pseudonym key: {e}") from e

    def of(self, credential: str) -> str:
        p = self._memo.get(credential)
        if p is None:
            if len(self._memo) > 65_536:
                self._memo.clear()
            mac = hmac.new(self.key, PSEUDONYM_CONTEXT + credential.encode(), hashlib.sha256)
            p = self._memo[credential] = "bp1:" + mac.hexdigest()[:PSEUDONYM_HEX]
        return p

