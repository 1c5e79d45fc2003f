"""Break-glass access (CONTROLS.md D11; docs/operations.md "Break-glass access").

A break-glass grant is **sealed** in advance for one named principal: the roles it adds while
open, and a secret printed once (for the envelope or the safe; only its SHA-256 is on the
ledger). It is inactive until **opened** — by that principal, with the secret, a reason and
a case reference — and then adds its roles for at most ``[breakglass] max_duration_s``
(default 1 h; never more than wire.bodies_breakglass.HARD_MAX_S). Opening records, in one
transaction under the chain lock, the ``break_glass`` open entry and a severity-1
``break-glass-open`` ``alert`` entry. Expiry is enforced when a request is authorised
(collector.api.rbac through :class:`BreakGlassView`), not by a timer. An opening stays
``overdue-review`` until a principal other than its user and its opener records the
post-use ``review``; :class:`BreakGlassWatch` (the service's tick) raises one
``break-glass-review-overdue`` alert per opening not reviewed ``review_grace_s`` after it
ended, found again in the ledger after a restart.

MFA: the secret is a second factor beside the principal's own credential; a principal that
signed in with OIDC must also show MFA in its ``amr`` claim, and ``oidc_mfa_only = true``
refuses every opening that is not an OIDC sign-in with MFA (OIDC sign-in is being added in
collector/access/oidc.py; until it is, that flag refuses every opening).

Invariants: a refusal records nothing but an ``access`` refusal entry when a secret was wrong
(someone tried a sealed envelope); a seal opens once; time comes in as ``now_us``.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import logging
import secrets
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any

from collector import ForbiddenError, ReviewError
from collector.access.principals import (
    Principal,
    PrincipalError,
    access_change,
    check_roles,
    get_principal,
)
from collector.ledger import review_rows as R
from collector.ledger.sqlbase import SQLStore
from wire.bodies_breakglass import (
    HARD_MAX_S,
    MIN_S,
    BreakGlassBook,
    BreakGlassState,
    Opened,
    Sealed,
    parse_break_glass,
)
from wire.config import Section
from wire.errors import WireError

log = logging.getLogger("timeclock.breakglass")

KIND = "break_glass"
OPEN_ALERT = "break-glass-open"
OVERDUE_ALERT = "break-glass-review-overdue"
SECRET_PREFIX = "tcb_"  # noqa: S105 - a prefix that makes a leaked secret greppable, no secret
MFA_AMR = frozenset({"mfa", "otp", "hwk", "swk", "sms", "fpt", "face", "pin"})
"""RFC 8176 ``amr`` values that show a second factor (``pwd`` alone does not)."""


@dataclass(frozen=True, slots=True)
class BreakGlassSettings:
    """``[breakglass]`` (docs/operations.md): how long an opening lasts at most, how long
    after it ends its review may take before it alerts, and whether only OIDC sign-ins with
    MFA may open one."""

    max_duration_s: int = 3600
    review_grace_s: int = 86_400
    oidc_mfa_only: bool = False
    check_every_s: int = 60


def read_break_glass_section(sec: Section) -> BreakGlassSettings:
    d = BreakGlassSettings()
    s = BreakGlassSettings(
        max_duration_s=sec.integer("max_duration_s", d.max_duration_s, lo=MIN_S,
                                   hi=HARD_MAX_S),
        review_grace_s=sec.integer("review_grace_s", d.review_grace_s, lo=0,
                                   hi=30 * 86_400),
        oidc_mfa_only=sec.boolean("oidc_mfa_only", d.oidc_mfa_only),
        check_every_s=sec.integer("check_every_s", d.check_every_s, lo=1, hi=86_400))
    sec.finish()
    return s


def secret_hash(secret: str) -> str:
    return hashlib.sha256(secret.encode()).hexdigest()


def _facts(rows: R.Rows) -> Iterable[tuple[int, int, Any]]:
    for r in R.of_kind(rows, KIND):
        if r.body is None:
            continue
        try:
            yield r.idx, r.at, parse_break_glass(json.loads(r.body), r.idx)
        except (ValueError, WireError) as e:   # an edited body: `verify` reports it
            log.warning("break_glass entry %d does not parse (%s); ignored", r.idx, e)


def book(rows: R.Rows) -> BreakGlassBook:
    """Every break-glass seal of the ledger with its opening and review."""
    b = BreakGlassBook()
    for idx, _at, fact in _facts(rows):
        try:
            b.feed(idx, fact)
        except WireError as e:                 # the store judged it on append
            log.warning("break_glass entry %d: %s; ignored", idx, e)
    return b


@dataclass(frozen=True, slots=True)
class IssuedSeal:
    idx: int
    id: str
    secret: str          # shown once
    seal: Sealed


def _state_dict(st: BreakGlassState, now_us: int) -> dict[str, Any]:
    out: dict[str, Any] = {"id": st.seal.id, "principal": st.seal.principal,
                           "roles": list(st.seal.roles), "max_s": st.seal.max_s,
                           "sealed_idx": st.seal_idx, "sealed_by": st.seal.by,
                           "status": st.status(now_us)}
    if st.opened is not None:
        out["opened"] = {"idx": st.open_idx, "by": st.opened.by, "reason": st.opened.reason,
                         "case": st.opened.case, "from": st.opened.from_us,
                         "until": st.opened.until_us, "mfa": st.opened.mfa}
    if st.review is not None:
        out["review"] = {"idx": st.review_idx, "by": st.review.by, "note": st.review.note}
    return out


class BreakGlass:
    """Break-glass grants of one ledger database."""

    def __init__(self, store: SQLStore, settings: BreakGlassSettings | None = None) -> None:
        self.store = store
        self.settings = settings or BreakGlassSettings()

    def list(self, *, now_us: int) -> list[dict[str, Any]]:
        return [_state_dict(st, now_us) for st in book(self.store.query).by_id.values()]

    def seal(self, principal: str, roles: Sequence[str], *, by: str, now_us: int
             ) -> IssuedSeal:
        """Seal a grant of ``roles`` for ``principal`` (which exists and is enabled; its roles
        with these still obey segregation of duties). The secret is returned once."""
        p = get_principal(self.store, principal)
        if p is None or p.disabled_at is not None:
            raise PrincipalError(f"no enabled principal {principal!r} to seal break-glass for")
        rs = check_roles(roles)
        if not rs:
            raise PrincipalError("give at least one --role the break-glass adds")
        check_roles(p.roles | rs)          # SoDError: the opened set must be allowed too
        secret = SECRET_PREFIX + secrets.token_urlsafe(32)
        bg = "bg-" + secrets.token_hex(6)
        body = {"event": "seal", "id": bg, "principal": principal, "roles": sorted(rs),
                "max_s": self.settings.max_duration_s, "by": by,
                "secret_hash": secret_hash(secret)}
        try:
            fact = parse_break_glass(body, 2**53)
        except WireError as e:
            raise PrincipalError(f"break-glass seal: {e}") from e
        assert isinstance(fact, Sealed)  # noqa: S101 - built as a seal just above
        with self.store.transaction(now_us, what="sealing a break-glass grant") as tx:
            idx = tx.record(KIND, body)
        log.info("break-glass %s sealed for %s (%s) by %s", bg, principal,
                 ", ".join(sorted(rs)), by)
        return IssuedSeal(idx, bg, secret, fact)

    def open(self, bg: str, secret: str, *, principal: Principal, by: str, reason: str,
             case: str, now_us: int, amr: Sequence[str] | None = None) -> dict[str, Any]:
        """Open the seal ``bg`` for ``principal`` (who must be the sealed one) with its
        secret; ``amr``: the OIDC sign-in's authentication methods (None: not an OIDC
        sign-in). Records the opening and its severity-1 alert; returns the state."""
        if self.settings.oidc_mfa_only and amr is None:
            raise ForbiddenError("break-glass needs an OIDC sign-in with MFA here "
                                 "([breakglass] oidc_mfa_only = true)")
        if amr is not None and not MFA_AMR & set(amr):
            raise ForbiddenError("break-glass needs MFA: this sign-in's amr "
                                 f"({', '.join(amr) or 'none'}) shows no second factor")
        mfa = "oidc-amr" if amr is not None else "sealed-secret"
        with self.store.transaction(now_us, what="opening break-glass") as tx:
            st = book(tx.rows).by_id.get(bg)
            if st is None:
                raise PrincipalError(f"no break-glass {bg[:40]!r} (see `breakglass list`)")
            if st.opened is not None:
                raise ReviewError(f"break-glass {bg} was opened at idx {st.open_idx}; a seal "
                                  f"opens once (seal a new one)")
            if st.seal.principal != principal.name or principal.disabled_at is not None:
                raise ForbiddenError(f"break-glass {bg} is sealed for {st.seal.principal}, "
                                     f"not {principal.name}")
            if not hmac.compare_digest(st.seal.secret_hash, secret_hash(secret)):
                tx.record("access", access_change(
                    by, "break-glass.open", now_us, outcome="refused", principal=principal.name,
                    break_glass=bg, error="wrong break-glass secret"))
                refused = True
            else:
                refused = False
                until = now_us + min(st.seal.max_s, self.settings.max_duration_s) * 1_000_000
                body = {"event": "open", "id": bg, "seal_idx": st.seal_idx,
                        "principal": principal.name, "by": by, "reason": reason, "case": case,
                        "from": now_us, "until": until, "mfa": mfa}
                try:
                    fact = parse_break_glass(body, 2**53)
                    assert isinstance(fact, Opened)  # noqa: S101 - an open body
                    book(tx.rows).feed(2**53, fact)
                except WireError as e:
                    raise PrincipalError(f"break-glass open: {e}") from e
                open_idx = tx.record(KIND, body)
                alert_idx = tx.record("alert", {
                    "alert": OPEN_ALERT, "severity": 1, "device": None, "at": now_us,
                    "detail": f"break-glass {bg} opened by {principal.name} for case {case} "
                              f"until {until} µs: {reason}"[:1000],
                    "principal": principal.name, "break_glass": bg, "open_idx": open_idx})
        if refused:
            raise ForbiddenError(f"break-glass {bg}: wrong secret (recorded)")
        log.error("ALERT sev=1 kind=%s: break-glass %s opened by %s for case %s (entry %d, "
                  "alert %d)", OPEN_ALERT, bg, principal.name, case, open_idx, alert_idx)
        return _state_dict(book(self.store.query).by_id[bg], now_us)

    def review(self, bg: str, *, by: str, note: str, now_us: int) -> dict[str, Any]:
        """Record the post-use review of ``bg``'s opening by ``by`` (not its user or opener)."""
        with self.store.transaction(now_us, what="reviewing break-glass") as tx:
            st = book(tx.rows).by_id.get(bg)
            if st is None:
                raise PrincipalError(f"no break-glass {bg[:40]!r} (see `breakglass list`)")
            if st.opened is None or st.open_idx is None:
                raise ReviewError(f"break-glass {bg} was never opened: nothing to review")
            body = {"event": "review", "id": bg, "open_idx": st.open_idx, "by": by,
                    "note": note}
            try:
                fact = parse_break_glass(body, 2**53)
                b = book(tx.rows)
                b.feed(2**53, fact)
            except WireError as e:
                if by in (st.opened.principal, st.opened.by):
                    raise ForbiddenError(str(e)) from e
                raise ReviewError(str(e)) from e
            tx.record(KIND, body)
        log.info("break-glass %s reviewed by %s", bg, by)
        return _state_dict(book(self.store.query).by_id[bg], now_us)


class BreakGlassView:
    """What request-time authorisation needs: the roles an open break-glass adds to a
    principal, and the expired opening that explains a refusal. Fed incrementally with the
    ``break_glass`` entries appended since the last request (collector.access.gates)."""

    def __init__(self) -> None:
        self.book = BreakGlassBook()

    def feed(self, idx: int, body: bytes | None) -> None:
        if body is None:
            return
        try:
            self.book.feed(idx, parse_break_glass(json.loads(body), idx))
        except (ValueError, WireError) as e:     # the store judged it on append
            log.warning("break_glass entry %d: %s; ignored", idx, e)

    def roles(self, principal: str, now_us: int
              ) -> tuple[frozenset[str], BreakGlassState | None]:
        """(roles added now, the latest expired opening of ``principal`` or None)."""
        added: set[str] = set()
        expired: BreakGlassState | None = None
        for st in self.book.by_id.values():
            o = st.opened
            if o is None or o.principal != principal:
                continue
            if o.from_us <= now_us < o.until_us:
                added.update(st.seal.roles)
            elif now_us >= o.until_us and (expired is None or expired.opened is None
                                           or o.until_us > expired.opened.until_us):
                expired = st
        return frozenset(added), expired


RaiseAlert = Callable[..., object]


@dataclass
class BreakGlassWatch:
    """Raises one ``break-glass-review-overdue`` alert per opening without a review
    ``review_grace_s`` after it ended (``alert`` is collector.ingest.alerts.Alerts.alert)."""

    settings: BreakGlassSettings
    alert: RaiseAlert
    _raised: set[str] = field(default_factory=set)
    _loaded: bool = False
    _checked_us: int | None = None

    def tick(self, store: SQLStore, now_us: int) -> int:
        if self._checked_us is not None and \
                now_us - self._checked_us < self.settings.check_every_s * 1_000_000:
            return 0
        self._checked_us = now_us
        if not self._loaded:
            self._raised.update(b["break_glass"] for b in R.alerts_named(store.query, OVERDUE_ALERT)
                                if isinstance(b.get("break_glass"), str))
            self._loaded = True
        raised = 0
        grace = self.settings.review_grace_s * 1_000_000
        for st in book(store.query).by_id.values():
            o = st.opened
            if o is None or st.review is not None or st.seal.id in self._raised \
                    or now_us < o.until_us + grace:
                continue
            self._raised.add(st.seal.id)
            self.alert(OVERDUE_ALERT, severity=2, device=None,
                       detail=f"break-glass {st.seal.id} used by {o.principal} (case "
                              f"{o.case}) has no post-use review",
                       fields={"break_glass": st.seal.id, "open_idx": st.open_idx,
                               "principal": o.principal})
            raised += 1
        return raised
