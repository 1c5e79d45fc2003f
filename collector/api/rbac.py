"""Role-based access control: which role a principal uses for a route, or why it may not.

Roles and segregation-of-duties rules live in collector.access.principals (shared with the CLI);
this module applies them per request. A principal whose stored roles break segregation of
duties (e.g. granted behind the API's back) is refused everything until fixed.
"""

from __future__ import annotations

from collector import ForbiddenError
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
