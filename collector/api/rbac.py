"""Role-based access control: which role a principal uses for a route, or why it may not.

Roles and segregation-of-duties rules live in collector.access.principals (shared with the CLI);
this module applies them per request. A principal whose stored roles break segregation of
duties (e.g. granted behind the API's back) is refused everything until fixed.
"""

from __future__ import annotations

from collector import ForbiddenError
from collector.access.gates import Gates
from collector.access.principals import Principal, check_roles
from collector.api.routes import Route
from wire.grants import PUNCH_DATA_ROLES


def authorize(principal: Principal, route: Route) -> str | None:
    """The role ``principal`` uses for ``route`` (None for public routes)."""
    if route.roles is None:
        return None
    check_roles(principal.roles)         # SoDError if the stored role set is not allowed
    for role in route.roles:
        if role in principal.roles:
            return role
    held = ", ".join(sorted(principal.roles)) or "no roles"
    why = ""
    if "admin" in principal.roles and PUNCH_DATA_ROLES & set(route.roles):
        why = " (admins manage access; they never read, correct or approve punch data)"
    raise ForbiddenError(f"{principal.name} ({held}) may not {route.method} {route.path}: "
                         f"it needs one of {', '.join(route.roles)}{why}")


GATE_EXEMPT = frozenset({"acknowledge", "listPolicyDocs", "openBreakGlass"})
"""Routes a missing policy acknowledgement never blocks: acknowledging itself, reading what
to acknowledge, and opening break-glass in an emergency."""


def gated(gates: Gates | None, principal: Principal, route: Route, now_us: int
          ) -> tuple[Principal, str | None]:
    """:func:`authorize` after the ledger's request-time gates (collector.access.gates;
    ``gates.refresh()`` has run): an open break-glass adds its roles (an expired one says so
    in the refusal, D11), and a punch-data role needs the principal's acknowledgement of
    every current required policy document (the refusal names the document)."""
    if gates is None or route.roles is None:
        return principal, authorize(principal, route)
    p = gates.with_break_glass(principal, route.roles, now_us)
    role = authorize(p, route)
    if role is not None and route.name not in GATE_EXEMPT:
        gates.check_acknowledgements(p, role, now_us)
    return p, role
