"""What request-time authorisation asks of the ledger beyond a principal's own roles
(collector.api.rbac): the roles an open break-glass adds (CONTROLS.md D11;
collector.access.breakglass) and the policy acknowledgements a punch-data role needs
(collector.access.policy_docs).

Both are replays of the chain kept in memory and fed, before each check, with the entries of
their kinds appended since the previous check (collector.ledger.gate_rows: one read of the
head idx, and a primary-key range read when it moved), so a break-glass that expired or an
acknowledgement just recorded counts at the next request, in every API process.
"""

from __future__ import annotations

import threading
from dataclasses import dataclass, field, replace

from collector import ForbiddenError
from collector.access.breakglass import KIND as BREAK_GLASS
from collector.access.breakglass import BreakGlassSettings, BreakGlassView
from collector.access.policy_docs import AckView, PolicySettings
from collector.access.principals import Principal
from collector.ledger import gate_rows
from collector.ledger.sqlbase import SQLStore

_KINDS = (BREAK_GLASS, "policy_doc", "acknowledgement")


@dataclass(frozen=True, slots=True)
class GateSettings:
    breakglass: BreakGlassSettings = field(default_factory=BreakGlassSettings)
    policies: PolicySettings = field(default_factory=PolicySettings)


class Gates:
    """The request-time checks over one ledger (``store``: the API's reader connection)."""

    def __init__(self, store: SQLStore, settings: GateSettings | None = None) -> None:
        self.store = store
        self.settings = settings or GateSettings()
        self.break_glass = BreakGlassView()
        self.acks = AckView(self.settings.policies)
        self._head = -1
        self._lock = threading.Lock()

    def refresh(self) -> None:
        """Feed the replays with what was appended since the last call."""
        with self._lock:
            head = gate_rows.head(self.store.query)
            if head <= self._head:
                return
            for r in gate_rows.kinds_between(self.store.query, _KINDS, self._head, head):
                if r.kind == BREAK_GLASS:
                    self.break_glass.feed(r.idx, r.body)
                else:
                    self.acks.feed(r.idx, r.at, r.kind, r.body)
            self._head = head

    def with_break_glass(self, p: Principal, wanted: tuple[str, ...], now_us: int
                         ) -> Principal:
        """``p`` with the roles of its open break-glass; ForbiddenError when only a
        break-glass that has expired would have given a role of ``wanted``."""
        added, expired = self.break_glass.roles(p.name, now_us)
        if added - p.roles:
            return replace(p, roles=p.roles | added)
        if (expired is not None and expired.opened is not None
                and set(wanted) & set(expired.seal.roles) and not set(wanted) & p.roles):
            raise ForbiddenError(
                f"break-glass {expired.seal.id} of {p.name} expired at "
                f"{expired.opened.until_us} µs (it lasts at most "
                f"{expired.seal.max_s} s); its roles are gone: seal and open a new one")
        return p

    def check_acknowledgements(self, p: Principal, role: str, now_us: int) -> None:
        self.acks.check(p.name, role, now_us)
