"""Bodies of ``break_glass`` ledger entries (docs/protocol.md §7.2 "break_glass"; CONTROLS.md
D11), parsed strictly in the manner of wire.bodies (which dispatches to them), and
:class:`BreakGlassBook`, the replay that both the collector and the auditor use to say which
break-glass openings still lack their post-use review.

A ``break_glass`` body is one of three events of one sealed break-glass grant ``id``:

- ``seal``: the grant is prepared in advance for the named ``principal``: the pre-approved
  ``roles`` it adds while open, the longest it may stay open (``max_s``), who sealed it
  (``by``) and SHA-256 of the sealed secret (printed once, for the envelope or the safe);
- ``open``: the seal at ``seal_idx`` is opened once, with a ``reason``, a ``case`` (ticket or
  incident reference), the window ``[from, until)`` in µs (at most ``max_s`` and never more
  than :data:`HARD_MAX_S`) and the second factor shown (``mfa``: ``sealed-secret`` or
  ``oidc-amr``);
- ``review``: the post-use review of the opening at ``open_idx`` by ``by``, who is neither
  the principal that used it nor whoever opened it, with a note.

Checked here is what a body says on its own. What needs the rest of the ledger (the seal
exists, is opened once, the opener is its principal, the reviewer is someone else) is
checked by the collector (collector.access.breakglass) before it appends and replayed by
:class:`BreakGlassBook` for the auditor.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from wire.errors import DecodeError
from wire.fields import HASH_RE, get_choice, get_int, get_str, require_fields
from wire.key_changes import parse_principal

EVENTS = frozenset({"seal", "open", "review"})
MFA_KINDS = frozenset({"sealed-secret", "oidc-amr"})
HARD_MAX_S = 4 * 3600
"""No break-glass opening lasts longer than this, whatever the configuration says."""
MIN_S = 60
TEXT_MAX = 1000
ID_RE = re.compile(r"^bg-[0-9a-f]{12}$")
CASE_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._:/#-]{0,63}$")
ACTOR_RE = re.compile(r"^(?:cli:[A-Za-z0-9._@-]{1,64}|[a-z0-9](?:[a-z0-9._@-]{0,62}[a-z0-9])?)$")
ROLE_RE = re.compile(r"^[a-z]+(?:\.[a-z]+)?$")
_CONTROL = re.compile(r"[\x00-\x08\x0b-\x1f\x7f]")


def parse_text(obj: Mapping[str, Any], key: str) -> str:
    """A required human text: not blank, at most TEXT_MAX characters, no control characters
    other than newline and tab."""
    v = get_str(obj, key)
    if not v.strip():
        raise DecodeError(f"{key}: must not be empty", field=key)
    if len(v) > TEXT_MAX:
        raise DecodeError(f"{key}: at most {TEXT_MAX} characters, got {len(v)}", field=key)
    if _CONTROL.search(v):
        raise DecodeError(f"{key}: control characters other than newline and tab are not "
                          f"allowed", field=key)
    return v


def parse_roles(obj: Mapping[str, Any], key: str = "roles") -> tuple[str, ...]:
    raw = obj[key]
    if (not isinstance(raw, list) or not raw or len(raw) > 32
            or any(not isinstance(r, str) or not ROLE_RE.fullmatch(r) for r in raw)):
        raise DecodeError(f"{key}: expected a non-empty array of role names", field=key)
    if list(raw) != sorted(set(raw)):
        raise DecodeError(f"{key}: roles must be sorted and distinct", field=key)
    return tuple(raw)


def _earlier(obj: Mapping[str, Any], key: str, idx: int) -> int:
    v = get_int(obj, key, minimum=0)
    if v >= idx:
        raise DecodeError(f"{key} {v} is not an earlier entry", field=key)
    return v


@dataclass(frozen=True, slots=True)
class Sealed:
    id: str
    principal: str
    roles: tuple[str, ...]
    max_s: int
    by: str
    secret_hash: str


@dataclass(frozen=True, slots=True)
class Opened:
    id: str
    seal_idx: int
    principal: str
    by: str
    reason: str
    case: str
    from_us: int
    until_us: int
    mfa: str


@dataclass(frozen=True, slots=True)
class Reviewed:
    id: str
    open_idx: int
    by: str
    note: str


BreakGlassFact = Sealed | Opened | Reviewed


def parse_break_glass(value: Any, idx: int) -> BreakGlassFact:
    """The ``break_glass`` body of the entry at ``idx``, parsed strictly; else DecodeError."""
    obj = require_fields(value, "break_glass body", ("event", "id"))
    event = get_choice(obj, "event", EVENTS)
    bg = get_str(obj, "id", ID_RE)
    if event == "seal":
        require_fields(obj, "seal body", ("principal", "roles", "max_s", "by", "secret_hash"))
        max_s = get_int(obj, "max_s", minimum=MIN_S)
        if max_s > HARD_MAX_S:
            raise DecodeError(f"max_s: at most {HARD_MAX_S} s (the hard maximum)",
                              field="max_s")
        return Sealed(bg, parse_principal(obj, "principal"), parse_roles(obj), max_s,
                      get_str(obj, "by", ACTOR_RE), get_str(obj, "secret_hash", HASH_RE))
    if event == "open":
        require_fields(obj, "open body", ("seal_idx", "principal", "by", "reason", "case",
                                          "from", "until", "mfa"))
        first, until = get_int(obj, "from", minimum=0), get_int(obj, "until", minimum=0)
        if not first < until <= first + HARD_MAX_S * 1_000_000:
            raise DecodeError(f"from/until: a window of more than 0 and at most {HARD_MAX_S} "
                              f"s", field="until")
        return Opened(bg, _earlier(obj, "seal_idx", idx), parse_principal(obj, "principal"),
                      get_str(obj, "by", ACTOR_RE), parse_text(obj, "reason"),
                      get_str(obj, "case", CASE_RE), first, until,
                      get_choice(obj, "mfa", MFA_KINDS))
    require_fields(obj, "review body", ("open_idx", "by", "note"))
    return Reviewed(bg, _earlier(obj, "open_idx", idx), parse_principal(obj, "by"),
                    parse_text(obj, "note"))


@dataclass(slots=True)
class BreakGlassState:
    """One seal and what became of it."""

    seal_idx: int
    seal: Sealed
    open_idx: int | None = None
    opened: Opened | None = None
    review_idx: int | None = None
    review: Reviewed | None = None

    def status(self, now_us: int | None = None) -> str:
        """sealed | open | overdue-review | reviewed (``now_us`` None: open until reviewed)."""
        if self.opened is None:
            return "sealed"
        if self.review is not None:
            return "reviewed"
        if now_us is not None and now_us < self.opened.until_us:
            return "open"
        return "overdue-review"


class BreakGlassBook:
    """Replays ``break_glass`` facts in ledger order; :meth:`feed` raises DecodeError for a
    fact the ledger before it does not allow (an opening of an unknown or spent seal, by
    another principal, longer than its seal allows; a review by the user or the opener, or
    a second one). A fact that refers to an entry this replay did not see (an audit resumed
    after it) is kept without judging it."""

    def __init__(self) -> None:
        self.by_id: dict[str, BreakGlassState] = {}

    def feed(self, idx: int, fact: BreakGlassFact) -> None:
        st = self.by_id.get(fact.id)
        if isinstance(fact, Sealed):
            if st is not None:
                raise DecodeError(f"break-glass {fact.id} is sealed twice (first at idx "
                                  f"{st.seal_idx})", field="id")
            self.by_id[fact.id] = BreakGlassState(idx, fact)
            return
        if st is None:
            return                                   # sealed before a resumed audit's start
        if isinstance(fact, Opened):
            if fact.seal_idx != st.seal_idx:
                raise DecodeError(f"seal_idx {fact.seal_idx}: {fact.id} was sealed at idx "
                                  f"{st.seal_idx}", field="seal_idx")
            if st.opened is not None:
                raise DecodeError(f"break-glass {fact.id} was opened at idx {st.open_idx}; a "
                                  f"seal opens once", field="id")
            if fact.principal != st.seal.principal:
                raise DecodeError(f"break-glass {fact.id} is sealed for {st.seal.principal}, "
                                  f"not {fact.principal}", field="principal")
            if fact.until_us - fact.from_us > st.seal.max_s * 1_000_000:
                raise DecodeError(f"break-glass {fact.id} opened for longer than its seal's "
                                  f"{st.seal.max_s} s", field="until")
            st.open_idx, st.opened = idx, fact
            return
        if st.opened is None or st.open_idx != fact.open_idx:
            raise DecodeError(f"open_idx {fact.open_idx} is not the opening of {fact.id}",
                              field="open_idx")
        if st.review is not None:
            raise DecodeError(f"break-glass {fact.id} was reviewed at idx {st.review_idx}",
                              field="id")
        if fact.by in (st.opened.principal, st.opened.by):
            raise DecodeError(f"{fact.by} used or opened break-glass {fact.id}: another "
                              f"principal reviews it (segregation of duties)", field="by")
        st.review_idx, st.review = idx, fact

    def unreviewed(self) -> list[tuple[int, str]]:
        """(open idx, what is missing) of every opening without its review entry."""
        return [(st.open_idx, f"break-glass {st.seal.id} opened by {st.opened.principal} "
                              f"(case {st.opened.case}) has no post-use review entry")
                for st in self.by_id.values()
                if st.opened is not None and st.open_idx is not None and st.review is None]
