"""Which fields of a punch an export carries, by purpose (D20, minimum necessary; issue 12).

A punch row (collector.records.exports.punch_item) has these fields; every export chooses a
named *field set* and may narrow it further with an explicit list:

==============  =====================================================================  ==========
set             fields                                                                 who
==============  =====================================================================  ==========
payroll         employee_id, badge_status, site, device, seq, action, device_time(_us),  default
                clock, recorded_at(_us), effective, corrections, ledger_idx, entry_hash
audit           payroll + key (device key id), reader                                  any
investigation   audit + credential (the badge UID)                                     hr.people
==============  =====================================================================  ==========

Invariants: the default of the CLI and the API is the payroll set, which holds no credential
and no employee name (names are never in a punch row); a field outside the chosen set, or one
the caller's roles may not see (``credential`` needs ``hr.people``), is refused naming the
field and the role it needs, before anything is read; the export's ``access`` entry lists
exactly the fields it carried (:func:`FieldSet.names`).
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

from collector import CollectorError, ForbiddenError

PAYROLL = ("employee_id", "badge_status", "site", "device", "seq", "action", "device_time",
           "device_time_us", "clock", "recorded_at", "recorded_at_us", "effective",
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
         "effective", "corrections", "employee_id", "badge_status")


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
