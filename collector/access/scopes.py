"""What part of the data a principal's role lets it see: the filtering rules, as one module
(CONTROLS.md D8; docs/api.md "Roles").

A :class:`Scope` is worked out per request from the principal (its linked person and sites,
collector.access.principals.Principal) and the role the route grants it
(collector.api.rbac):

- sites: a principal limited to sites sees only punches whose device is at one of them and
  only employees whose directory ``site`` is one of them, whatever its role;
- ``employee.self``: only punches whose badge resolved to the principal's own employee at
  punch time (collector.ledger.people_tables.BadgeResolver), and their corrections;
- ``supervisor``: only punches, corrections and records of the principal's team: every
  employee whose ``manager_id`` chain in the directory leads to the principal's employee,
  directly or through other managers (transitive; never the supervisor themself, whose own
  punches are ``employee.self``'s);
- any other role: every person (within the sites).

Invariant: out-of-scope rows are indistinguishable from missing ones: filtered lists count
only what is in scope and a single out-of-scope row is the same 404 as an absent one, so a
scoped principal learns neither counts nor existence of the rest.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from typing import Any

from collector.access.principals import Principal, PrincipalError
from collector.ledger import people_tables
from collector.ledger.people_tables import BadgeResolver, EmployeeRow
from collector.ledger.sqlbase import PunchRow, SQLStore
from wire.grants import PERSON_ROLES, UNSCOPED, PrincipalScope

TEAM_MAX = 100_000          # employees a team walk visits at most (a directory cycle ends it)


@dataclass(frozen=True, slots=True)
class Scope:
    """The rows one request may see. ``employees`` None: anyone's; ``sites`` None: anywhere."""

    sites: frozenset[str] | None = None
    employees: frozenset[str] | None = None
    person_role: str | None = None       # employee.self | supervisor when it limits persons

    @property
    def unrestricted(self) -> bool:
        return self.sites is None and self.employees is None

    def site_ok(self, site: str | None) -> bool:
        return self.sites is None or (site is not None and site in self.sites)

    def person_ok(self, employee_id: str | None) -> bool:
        return self.employees is None or (employee_id is not None
                                          and employee_id in self.employees)

    def punch_ok(self, site: str, holder: str | None) -> bool:
        """A punch at a device of ``site`` whose badge ``holder`` held at punch time."""
        return self.site_ok(site) and self.person_ok(holder)

    def row_ok(self, store: SQLStore, r: PunchRow) -> bool:
        """:meth:`punch_ok` for a punch row, reading its badge's holder only when persons
        matter."""
        return self.site_ok(r.site) and (self.employees is None
                                         or holder_of(store, r) in self.employees)

    def employee_ok(self, e: EmployeeRow) -> bool:
        return self.site_ok(e.site) and self.person_ok(e.employee_id)

    def rows(self, holders: BadgeResolver) -> Callable[[PunchRow], bool]:
        """A filter of punch rows; ``holders`` resolves each row's badge."""
        def keep(r: PunchRow) -> bool:
            if self.sites is not None and r.site not in self.sites:
                return False
            return self.employees is None or holders.resolve(r.credential, r.ts)[0] \
                in self.employees
        return keep

    def to_dict(self) -> dict[str, Any]:
        """What an export header and access record say of the scope (no employee list)."""
        return {"sites": None if self.sites is None else sorted(self.sites),
                "persons": self.person_role or "all"}


UNRESTRICTED = Scope()


def team(store: SQLStore, manager_id: str) -> frozenset[str]:
    """Everyone whose manager chain leads to ``manager_id`` (not ``manager_id`` itself)."""
    people_tables.ensure_schema(store)
    seen: set[str] = set()
    todo = [manager_id]
    while todo and len(seen) < TEAM_MAX:
        m = todo.pop()
        for e in people_tables.employees(store, manager_id=m):
            if e.employee_id not in seen and e.employee_id != manager_id:
                seen.add(e.employee_id)
                todo.append(e.employee_id)
    return frozenset(seen)


def scope_for(store: SQLStore, principal: Principal | None, role: str | None,
              route_roles: Iterable[str] = ()) -> Scope:
    """The scope of ``principal`` calling a route with ``role``. A person role limits the
    persons to its own (employee.self) or team's (supervisor) — to both when the principal
    holds both and the route (``route_roles``) takes both."""
    if principal is None:
        return UNRESTRICTED
    sites = principal.sites
    if role not in PERSON_ROLES:
        return Scope(sites)
    held = {role} | (principal.roles & PERSON_ROLES & set(route_roles))
    me = principal.employee_id
    persons: set[str] = set()
    if me is not None and "employee.self" in held:
        persons.add(me)
    if me is not None and "supervisor" in held:
        persons |= team(store, me)
    return Scope(sites, frozenset(persons), "+".join(sorted(held)))


def holder_of(store: SQLStore, r: PunchRow) -> str | None:
    """The employee who held ``r``'s badge at its device time (None: nobody)."""
    return BadgeResolver.load(store, [r.credential]).resolve(r.credential, r.ts)[0]


def page(fetch: Callable[[int, Any], list[Any]], keep: Callable[[Any], bool], *,
         limit: int, cursor_of: Callable[[Any], Any], after: Any = None) -> list[Any]:
    """Up to ``limit`` rows that ``keep`` accepts, read ``limit`` at a time with
    ``fetch(limit, after)`` (rows after a cursor, in order) until a short read: a filtered
    page is as full as an unfiltered one, and its last row is the next cursor."""
    out: list[Any] = []
    while len(out) < limit:
        rows = fetch(limit, after)
        out.extend(r for r in rows if keep(r))
        if len(rows) < limit:
            break
        after = cursor_of(rows[-1])
    return out[:limit]


def scope_from_body(body: Mapping[str, Any], current: PrincipalScope | None
                    ) -> PrincipalScope | None:
    """The scope an API request body's optional ``employee`` (an id, or null: unlinked) and
    ``sites`` (a list, or null: every site) ask for over ``current``; None when it names
    neither (the scope stays). :class:`PrincipalError` for anything else."""
    if "employee" not in body and "sites" not in body:
        return None
    base = current or UNSCOPED
    emp, sites = body.get("employee", base.employee), body.get("sites", base.sites)
    if emp is not None and not isinstance(emp, str):
        raise PrincipalError("employee: an employee id of the people directory, or null")
    if sites is not None and (not isinstance(sites, list | frozenset) or not sites
                              or len(sites) > 100
                              or not all(isinstance(s, str) for s in sites)):
        raise PrincipalError("sites: a non-empty list of sites, or null (every site)")
    return PrincipalScope(emp, None if sites is None else frozenset(sites))
