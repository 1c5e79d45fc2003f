"""Bodies of ``access_review`` ledger entries (docs/protocol.md §7.2 "access_review";
CONTROLS.md D8, D13), parsed strictly in the manner of wire.bodies (which dispatches to them).

An access review ``review`` is three kinds of events:

- ``start``: a named ``reviewer`` is given every grant as it stood (``grants``: principal,
  kind, roles, sites, last use), so the entry alone shows what was reviewed;
- ``decide``: ``keep`` or ``revoke`` of one listed principal's grant by ``by`` — the reviewer,
  except for the reviewer's own grant, which someone else decides (nobody reviews their own
  access). A revocation is carried out as an ordinary ``access`` entry (``roles.set`` to no
  roles) in the same transaction, citing the review and this decision;
- ``sign-off``: the reviewer closes the review once every grant is decided, naming how many
  were kept and which were revoked.

Checked here is what a body says on its own; the order of events (a decision of a listed
grant, once; the sign-off after all) is the collector's (collector.access.access_reviews).
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any

from wire.bodies_breakglass import ACTOR_RE, parse_text
from wire.errors import DecodeError
from wire.fields import get_choice, get_int, get_str, require_fields
from wire.key_changes import PRINCIPAL_RE, parse_principal

EVENTS = frozenset({"start", "decide", "sign-off"})
DECISIONS = frozenset({"keep", "revoke"})
GRANTS_MAX = 10_000
ID_RE = re.compile(r"^arv-[0-9a-f]{12}$")
_ROLE_RE = re.compile(r"^[a-z]+(?:\.[a-z]+)?$")
_SITE_RE = re.compile(r"^[a-z0-9](?:[a-z0-9-]{0,61}[a-z0-9])?$")


@dataclass(frozen=True, slots=True)
class ReviewedGrant:
    principal: str
    roles: tuple[str, ...]
    sites: tuple[str, ...] | None
    last_used_at: int | None

    def to_dict(self) -> dict[str, Any]:
        return {"principal": self.principal, "roles": list(self.roles),
                "sites": None if self.sites is None else list(self.sites),
                "last_used_at": self.last_used_at}


@dataclass(frozen=True, slots=True)
class ReviewStarted:
    review: str
    reviewer: str
    by: str
    grants: tuple[ReviewedGrant, ...]


@dataclass(frozen=True, slots=True)
class ReviewDecision:
    review: str
    start_idx: int
    principal: str
    decision: str
    by: str
    note: str | None


@dataclass(frozen=True, slots=True)
class ReviewSignOff:
    review: str
    start_idx: int
    by: str
    kept: int
    revoked: tuple[str, ...]
    note: str


AccessReviewFact = ReviewStarted | ReviewDecision | ReviewSignOff


def _strings(raw: Any, what: str, pattern: re.Pattern[str], limit: int) -> tuple[str, ...]:
    if (not isinstance(raw, list) or len(raw) > limit
            or any(not isinstance(x, str) or not pattern.fullmatch(x) for x in raw)):
        raise DecodeError(f"{what}: expected an array of at most {limit} names", field=what)
    if list(raw) != sorted(set(raw)):
        raise DecodeError(f"{what}: must be sorted and distinct", field=what)
    return tuple(raw)


def _grant(raw: Any) -> ReviewedGrant:
    obj = require_fields(raw, "grant", ("principal", "roles", "sites", "last_used_at"))
    sites = obj["sites"]
    last = obj["last_used_at"]
    if last is not None and (not isinstance(last, int) or isinstance(last, bool) or last < 0):
        raise DecodeError("last_used_at: µs or null", field="last_used_at")
    return ReviewedGrant(parse_principal(obj, "principal"),
                         _strings(obj["roles"], "roles", _ROLE_RE, 32),
                         None if sites is None else _strings(sites, "sites", _SITE_RE, 1000),
                         last)


def _earlier(obj: Any, idx: int) -> int:
    v = get_int(obj, "start_idx", minimum=0)
    if v >= idx:
        raise DecodeError(f"start_idx {v} is not an earlier entry", field="start_idx")
    return v


def parse_access_review(value: Any, idx: int) -> AccessReviewFact:
    """The ``access_review`` body of the entry at ``idx``, parsed strictly; else
    DecodeError."""
    obj = require_fields(value, "access_review body", ("event", "review", "by"))
    event = get_choice(obj, "event", EVENTS)
    review = get_str(obj, "review", ID_RE)
    if event == "start":
        require_fields(obj, "start body", ("reviewer", "grants"))
        raw = obj["grants"]
        if not isinstance(raw, list) or len(raw) > GRANTS_MAX:
            raise DecodeError(f"grants: expected an array of at most {GRANTS_MAX} grants",
                              field="grants")
        grants = tuple(_grant(g) for g in raw)
        names = [g.principal for g in grants]
        if names != sorted(set(names)):
            raise DecodeError("grants: one per principal, sorted by principal", field="grants")
        return ReviewStarted(review, parse_principal(obj, "reviewer"),
                             get_str(obj, "by", ACTOR_RE), grants)
    by = parse_principal(obj, "by")
    if event == "decide":
        require_fields(obj, "decide body", ("start_idx", "principal", "decision"))
        note = parse_text(obj, "note") if "note" in obj else None
        return ReviewDecision(review, _earlier(obj, idx), parse_principal(obj, "principal"),
                              get_choice(obj, "decision", DECISIONS), by, note)
    require_fields(obj, "sign-off body", ("start_idx", "kept", "revoked", "note"))
    return ReviewSignOff(review, _earlier(obj, idx), by, get_int(obj, "kept", minimum=0),
                         _strings(obj["revoked"], "revoked", PRINCIPAL_RE, GRANTS_MAX),
                         parse_text(obj, "note"))
