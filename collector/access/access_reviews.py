"""Periodic access reviews (CONTROLS.md D8, D13; docs/operations.md "Access reviews").

``start`` gives a named reviewer every enabled principal's grant as it stands (principal,
roles, sites, last use) in one ``access_review`` start entry; the reviewer records ``keep``
or ``revoke`` for each (``decide``); ``sign-off`` closes the review once every grant is
decided. Nobody reviews their own access: the reviewer's own grant is decided by another
principal (:class:`~collector.SoDError` otherwise). A revocation is carried out at once as an
ordinary grant change — an ``access`` entry ``roles.set`` to no roles, citing the review and
the decision's idx, with the access tables changed in the same transaction — so the export
an auditor asks for ("proof that revocations were carried out") is the chain itself.

:class:`AccessReviewWatch` (the service's tick, ``[reviews] access_review_days``) raises one
``access-review-overdue`` alert (severity 2) when no access review was signed off within the
cadence plus ``access_review_grace_s``, keyed by the day the review fell due, so it alerts
once per missed review, also after a restart.

Invariants: every check and the entries it allows run in one write transaction under the
chain lock; a refusal records nothing; time comes in as ``now_us``.
"""

from __future__ import annotations

import json
import logging
import secrets
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from collector import ReviewError, SoDError
from collector.access.principals import (
    DAY_US,
    PrincipalError,
    access_change,
    all_principals,
    get_principal,
)
from collector.ledger import access_tables
from collector.ledger import review_rows as R
from collector.ledger.sqlbase import SQLStore
from wire.bodies_access_review import (
    ReviewDecision,
    ReviewSignOff,
    ReviewStarted,
    parse_access_review,
)
from wire.errors import WireError

log = logging.getLogger("timeclock.access_reviews")

KIND = "access_review"
OVERDUE_ALERT = "access-review-overdue"


@dataclass(slots=True)
class ReviewState:
    start_idx: int
    at: int
    started: ReviewStarted
    decisions: dict[str, tuple[int, ReviewDecision]] = field(default_factory=dict)
    signed: tuple[int, int, ReviewSignOff] | None = None     # (idx, at, body)

    @property
    def status(self) -> str:
        if self.signed is not None:
            return "signed-off"
        return "open"

    def undecided(self) -> list[str]:
        return [g.principal for g in self.started.grants
                if g.principal not in self.decisions]

    def to_dict(self) -> dict[str, Any]:
        s = self.started
        return {"review": s.review, "reviewer": s.reviewer, "started_by": s.by,
                "start_idx": self.start_idx, "started_at": self.at, "status": self.status,
                "grants": [{**g.to_dict(),
                            "decision": None if g.principal not in self.decisions else {
                                "idx": self.decisions[g.principal][0],
                                "decision": self.decisions[g.principal][1].decision,
                                "by": self.decisions[g.principal][1].by}}
                           for g in s.grants],
                "signed_off": None if self.signed is None else {
                    "idx": self.signed[0], "at": self.signed[1], "by": self.signed[2].by,
                    "kept": self.signed[2].kept, "revoked": list(self.signed[2].revoked)}}


def reviews(rows: R.Rows) -> dict[str, ReviewState]:
    """Every access review of the ledger with its decisions and sign-off, oldest first."""
    out: dict[str, ReviewState] = {}
    for r in R.of_kind(rows, KIND):
        try:
            fact = parse_access_review(json.loads(r.body or b"null"), r.idx)
        except (ValueError, WireError) as e:   # an edited body: `verify` reports it
            log.warning("access_review entry %d does not parse (%s); ignored", r.idx, e)
            continue
        if isinstance(fact, ReviewStarted):
            out.setdefault(fact.review, ReviewState(r.idx, r.at, fact))
            continue
        st = out.get(fact.review)
        if st is None:
            continue
        if isinstance(fact, ReviewDecision):
            st.decisions.setdefault(fact.principal, (r.idx, fact))
        elif isinstance(fact, ReviewSignOff) and st.signed is None:
            st.signed = (r.idx, r.at, fact)
    return out


def _get(rows: R.Rows, review: str) -> ReviewState:
    st = reviews(rows).get(review)
    if st is None:
        raise PrincipalError(f"no access review {review[:40]!r} (see `access-review list`)")
    return st


def start(store: SQLStore, *, reviewer: str, by: str, now_us: int) -> ReviewState:
    """Start a review of every enabled principal's grant for ``reviewer`` (an enabled
    principal)."""
    rv = get_principal(store, reviewer)
    if rv is None or rv.disabled_at is not None:
        raise PrincipalError(f"no enabled principal {reviewer!r} to review access")
    grants = [{"principal": p.name, "roles": sorted(p.roles),
               "sites": None if p.sites is None else sorted(p.sites),
               "last_used_at": p.last_used_at}
              for p in sorted(all_principals(store), key=lambda p: p.name)
              if p.disabled_at is None and p.roles]
    body = {"event": "start", "review": "arv-" + secrets.token_hex(6), "reviewer": reviewer,
            "by": by, "grants": grants}
    try:
        parse_access_review(body, 2**53)
    except WireError as e:
        raise PrincipalError(f"access review: {e}") from e
    with store.transaction(now_us, what="starting an access review") as tx:
        tx.record(KIND, body)
        st = _get(tx.rows, str(body["review"]))
    log.info("access review %s started for %s: %d grants", st.started.review, reviewer,
             len(grants))
    return st


def decide(store: SQLStore, review: str, principal: str, decision: str, *, by: str,
           now_us: int, note: str | None = None) -> ReviewState:
    """Record ``by``'s ``keep``/``revoke`` of ``principal``'s grant in ``review``; a revoke
    sets the principal's roles to none in the same transaction (an access entry citing it)."""
    now_p = get_principal(store, principal)
    with store.transaction(now_us, what="recording an access review decision") as tx:
        st = _get(tx.rows, review)
        if st.signed is not None:
            raise ReviewError(f"access review {review} was signed off at idx "
                              f"{st.signed[0]}; nothing recorded")
        listed = {g.principal: g for g in st.started.grants}
        if principal not in listed:
            raise ReviewError(f"{principal[:64]!r} has no grant in access review {review}")
        if principal in st.decisions:
            d_idx, d = st.decisions[principal]
            raise ReviewError(f"{principal}'s grant was decided ({d.decision}) by {d.by} at "
                              f"idx {d_idx}; nothing recorded")
        if by == principal:
            raise SoDError(f"{by} may not review their own grant (segregation of duties): "
                           f"another principal decides it")
        if st.started.reviewer not in (by, principal):
            raise ReviewError(f"access review {review} is {st.started.reviewer}'s to decide, "
                              f"not {by}'s (only {st.started.reviewer}'s own grant is decided "
                              f"by someone else)")
        body: dict[str, Any] = {"event": "decide", "review": review,
                                "start_idx": st.start_idx, "principal": principal,
                                "decision": decision, "by": by}
        if note is not None:
            body["note"] = note
        try:
            parse_access_review(body, 2**53)
        except WireError as e:
            raise ReviewError(f"access review decision: {e}") from e
        idx = tx.record(KIND, body)
        if decision == "revoke":
            previous = sorted(now_p.roles) if now_p is not None \
                else list(listed[principal].roles)
            roles_idx = tx.record("access", access_change(
                by, "roles.set", now_us, outcome="done", principal=principal, roles=[],
                previous=previous, review=review, decision_idx=idx))
            access_tables.replace_roles(tx, principal, (), actor=by, now_us=now_us,
                                        roles_idx=roles_idx)
        out = _get(tx.rows, review)
    log.info("access review %s: %s %s by %s (idx %d)", review, decision, principal, by, idx)
    return out


def sign_off(store: SQLStore, review: str, *, by: str, note: str, now_us: int) -> ReviewState:
    """Close ``review`` (its reviewer, once every grant is decided)."""
    with store.transaction(now_us, what="signing off an access review") as tx:
        st = _get(tx.rows, review)
        if st.signed is not None:
            raise ReviewError(f"access review {review} was signed off at idx "
                              f"{st.signed[0]}; nothing recorded")
        if by != st.started.reviewer:
            raise ReviewError(f"access review {review} is signed off by its reviewer "
                              f"{st.started.reviewer}, not {by}")
        left = st.undecided()
        if left:
            raise ReviewError(f"access review {review}: {len(left)} grant(s) not decided yet "
                              f"({', '.join(left[:10])})")
        revoked = sorted(p for p, (_, d) in st.decisions.items() if d.decision == "revoke")
        body = {"event": "sign-off", "review": review, "start_idx": st.start_idx, "by": by,
                "kept": len(st.decisions) - len(revoked), "revoked": revoked, "note": note}
        try:
            parse_access_review(body, 2**53)
        except WireError as e:
            raise ReviewError(f"access review sign-off: {e}") from e
        tx.record(KIND, body)
        out = _get(tx.rows, review)
    log.info("access review %s signed off by %s", review, by)
    return out


RaiseAlert = Callable[..., object]


@dataclass
class AccessReviewWatch:
    """One ``access-review-overdue`` alert per missed review: due ``every_days`` after the
    last sign-off (or the ledger's first entry / ``start_us``), overdue ``grace_s`` later."""

    every_days: int
    grace_s: int
    alert: RaiseAlert
    start_us: int | None = None
    check_every_s: int = 60
    _raised: set[int] = field(default_factory=set)
    _loaded: bool = False
    _checked_us: int | None = None

    def due_at(self, store: SQLStore) -> int | None:
        """When the next access review is due (µs), None for an empty ledger."""
        signed = [st.signed[1] for st in reviews(store.query).values()
                  if st.signed is not None]
        base = max(signed) if signed else (self.start_us if self.start_us is not None
                                           else R.first_at(store.query))
        return None if base is None else base + self.every_days * DAY_US

    def tick(self, store: SQLStore, now_us: int) -> int:
        if self.every_days <= 0:
            return 0
        if self._checked_us is not None and \
                now_us - self._checked_us < self.check_every_s * 1_000_000:
            return 0
        self._checked_us = now_us
        if not self._loaded:
            self._raised.update(b["due_at"] for b in R.alerts_named(store.query, OVERDUE_ALERT)
                                if isinstance(b.get("due_at"), int))
            self._loaded = True
        due_at = self.due_at(store)
        if due_at is None or now_us < due_at + self.grace_s * 1_000_000 \
                or due_at in self._raised:
            return 0
        self._raised.add(due_at)
        self.alert(OVERDUE_ALERT, severity=2, device=None,
                   detail=f"no access review signed off since it fell due at {due_at} µs "
                          f"(every {self.every_days} days; `access-review start`)",
                   fields={"due_at": due_at})
        return 1
