"""Retention under policy, with legal holds (DESIGN.md §6 and §8.5, docs/protocol.md §7.2).

Three things live here, so that the collector's store (on append) and the auditor (``wire.audit``,
behind ``timeclock-verify`` and ``ledger verify``) apply one rule with one wording:

- the strict parse of the ``policy`` and ``hold`` bodies and of the fields a ``retention`` body
  gained (``policies``: the approved policies it cites with their cut-offs; ``removed``: one row
  per entry whose body it removed), dispatched from ``wire.bodies.parse_body``;
- :class:`RetentionRules`, the state those entries build (which policy governs which record
  kind at which site, which holds are active), fed in idx order, refusing what breaks dual
  control: a policy applies only once a DIFFERENT principal approved it, a hold is released
  only when a principal other than the one who asked approves the release;
- :meth:`RetentionRules.judge`: is a ``retention`` entry allowed at this point of the ledger —
  every removed entry is a punch or rejection, governed by a cited, approved, current policy
  whose cut-off is no later than the entry's time minus the period, recorded (entry ``at``)
  before that cut-off, and matched by no active hold.

Invariants: nothing here imports from the rest of ``wire.bodies`` (which imports this module;
the field helpers they share live in ``wire.fields``);
ages are measured on the ledger's own ``at`` (what the chain commits to, never the clock's
``ts``); a hold matches on what the manifest row names (device, site, time) and, where the
caller knows them (the store), credential and employee; a criterion nobody can evaluate counts
as a match for the store (it keeps the data) and as a note, not tampering, for the auditor.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

from wire.errors import DecodeError
from wire.fields import (
    CREDENTIAL_RE,
    DEVICE_ID_RE,
    get_choice,
    get_int,
    get_optional_int,
    get_optional_str,
    get_str,
    require_fields,
)

RECORDS = frozenset({"punch", "rejection"})
"""Entry kinds a retention policy governs (whose bodies a run may remove)."""
SCOPES = frozenset({"all", "site", "jurisdiction"})
POLICY_EVENTS = frozenset({"proposed", "approved"})
HOLD_EVENTS = frozenset({"placed", "release-requested", "released"})
DAY_US = 86_400_000_000
NAME_RE = re.compile(r"^[a-z0-9](?:[a-z0-9._-]{0,62}[a-z0-9])?$")
PRINCIPAL_RE = re.compile(r"^[a-z0-9](?:[a-z0-9._@-]{0,62}[a-z0-9])?$")  # access.principals
LABEL_RE = re.compile(r"^\S(?:.{0,126}\S)?$")   # site names, jurisdiction labels, case ids


def _earlier(obj: Mapping[str, Any], key: str, idx: int) -> int:
    v = get_int(obj, key, minimum=0)
    if v >= idx:
        raise DecodeError(f"{key}: {v} is not an earlier entry", field=key)
    return v


# -- policy ----------------------------------------------------------------------------------

@dataclass(frozen=True, slots=True)
class PolicyProposed:
    """A retention period proposed for one record kind in one scope; applies once approved."""

    name: str
    record: str
    period_days: int
    scope: str                        # all | site | jurisdiction
    by: str
    site: str | None = None           # scope site
    jurisdiction: str | None = None   # scope jurisdiction: its label and the sites it covers
    sites: tuple[str, ...] = ()

    @property
    def scope_key(self) -> tuple[str, str]:
        return (self.scope, self.site or self.jurisdiction or "")

    def covers(self, site: str | None) -> bool:
        if self.scope == "all":
            return True
        if self.scope == "site":
            return site is not None and site == self.site
        return site is not None and site in self.sites

    @property
    def period_us(self) -> int:
        return self.period_days * DAY_US


@dataclass(frozen=True, slots=True)
class PolicyApproved:
    proposal: int
    by: str


def parse_policy(value: Any, idx: int) -> PolicyProposed | PolicyApproved:
    obj = require_fields(value, "policy body", ("event", "by"))
    event = get_choice(obj, "event", POLICY_EVENTS)
    by = get_str(obj, "by", PRINCIPAL_RE)
    if event == "approved":
        require_fields(obj, "approved policy body", ("proposal",))
        return PolicyApproved(_earlier(obj, "proposal", idx), by)
    require_fields(obj, "proposed policy body", ("policy", "record", "period_days", "scope"))
    name = get_str(obj, "policy", NAME_RE)
    record = get_choice(obj, "record", RECORDS)
    period = get_int(obj, "period_days", minimum=1)
    scope = get_choice(obj, "scope", SCOPES)
    if scope == "all":
        return PolicyProposed(name, record, period, scope, by)
    if scope == "site":
        require_fields(obj, "site policy body", ("site",))
        return PolicyProposed(name, record, period, scope, by, site=get_str(obj, "site", LABEL_RE))
    require_fields(obj, "jurisdiction policy body", ("jurisdiction", "sites"))
    sites = obj["sites"]
    if (not isinstance(sites, list) or not sites
            or any(not isinstance(s, str) or not LABEL_RE.fullmatch(s) for s in sites)
            or len(set(sites)) != len(sites)):
        raise DecodeError("sites: expected a non-empty array of distinct site names",
                          field="sites")
    return PolicyProposed(name, record, period, scope, by,
                          jurisdiction=get_str(obj, "jurisdiction", LABEL_RE),
                          sites=tuple(sites))


# -- hold ------------------------------------------------------------------------------------

@dataclass(frozen=True, slots=True)
class HoldPlaced:
    """A legal hold: keeps every record that matches ALL the criteria it names (at least one):
    device, site, credential, employee, and the time range ``from_ts <= ts < until_ts`` (the
    punch's own time; a rejection's ``received_at``)."""

    name: str
    case: str
    reason: str
    by: str
    device: str | None = None
    site: str | None = None
    credential: str | None = None
    employee: str | None = None
    from_ts: int | None = None
    until_ts: int | None = None

    def matches(self, device: str | None, site: str | None, ts: int, *,
                credential: str | None = None, employee: str | None = None,
                resolved: bool = False) -> bool | None:
        """True: the hold keeps this record; False: it does not; None: it may (a criterion
        the caller cannot evaluate: a credential or employee it does not know). ``resolved``:
        the caller resolved the record's badge to ``employee`` (None: nobody held it)."""
        unknown = False
        for want, have in ((self.device, device), (self.site, site),
                           (self.credential, credential)):
            if want is None:
                continue
            if have is None:
                unknown = True
            elif want != have:
                return False
        if self.from_ts is not None and ts < self.from_ts:
            return False
        if self.until_ts is not None and ts >= self.until_ts:
            return False
        if self.employee is not None:
            if not resolved:
                unknown = True      # offline, or a record without a credential
            elif employee != self.employee:
                return False
        return None if unknown else True

    def describe(self) -> str:
        return f"hold {self.name!r} (case {self.case})"


@dataclass(frozen=True, slots=True)
class HoldReleaseRequested:
    hold: int
    by: str
    reason: str


@dataclass(frozen=True, slots=True)
class HoldReleased:
    request: int
    by: str


HoldEvent = HoldPlaced | HoldReleaseRequested | HoldReleased


def parse_hold(value: Any, idx: int) -> HoldEvent:
    obj = require_fields(value, "hold body", ("event", "by"))
    event = get_choice(obj, "event", HOLD_EVENTS)
    by = get_str(obj, "by", PRINCIPAL_RE)
    if event == "release-requested":
        require_fields(obj, "hold release request body", ("hold", "reason"))
        return HoldReleaseRequested(_earlier(obj, "hold", idx), by, get_str(obj, "reason",
                                                                            LABEL_RE))
    if event == "released":
        require_fields(obj, "hold release body", ("request",))
        return HoldReleased(_earlier(obj, "request", idx), by)
    require_fields(obj, "placed hold body", ("hold", "case", "reason"))
    h = HoldPlaced(get_str(obj, "hold", NAME_RE), get_str(obj, "case", LABEL_RE),
                   get_str(obj, "reason", LABEL_RE), by,
                   device=get_optional_str(obj, "device", DEVICE_ID_RE),
                   site=get_optional_str(obj, "site", LABEL_RE),
                   credential=get_optional_str(obj, "credential", CREDENTIAL_RE),
                   employee=get_optional_str(obj, "employee", LABEL_RE),
                   from_ts=get_optional_int(obj, "from_ts", minimum=0),
                   until_ts=get_optional_int(obj, "until_ts", minimum=0))
    if all(v is None for v in (h.device, h.site, h.credential, h.employee, h.from_ts,
                               h.until_ts)):
        raise DecodeError("a hold names at least one of device, site, credential, employee, "
                          "from_ts, until_ts (it would keep nothing)")
    if h.from_ts is not None and h.until_ts is not None and h.until_ts <= h.from_ts:
        raise DecodeError("until_ts must be after from_ts", field="until_ts")
    return h


# -- what a retention entry cites -------------------------------------------------------------

@dataclass(frozen=True, slots=True)
class Citation:
    """An approved policy (its proposal's idx) and the cut-off the run used under it."""

    idx: int
    cutoff: int


@dataclass(frozen=True, slots=True)
class Removed:
    """One entry whose body the run removed: what a hold can be checked against offline."""

    idx: int
    device: str | None
    site: str | None
    ts: int


@dataclass(frozen=True, slots=True)
class RetentionCites:
    policies: tuple[Citation, ...]
    removed: tuple[Removed, ...]


def idx_ranges(idxs: list[int]) -> list[tuple[int, int]]:
    """Sorted distinct idx as merged inclusive ranges."""
    out: list[tuple[int, int]] = []
    for i in idxs:
        if out and i == out[-1][1] + 1:
            out[-1] = (out[-1][0], i)
        else:
            out.append((i, i))
    return out


def parse_cites(obj: Mapping[str, Any], idx: int, deleted: tuple[tuple[int, int], ...],
                count: int) -> RetentionCites:
    """The ``policies`` and ``removed`` fields of a retention body at ``idx``."""
    require_fields(obj, "retention body", ("policies", "removed"))
    pol = obj["policies"]
    if not isinstance(pol, list) or not pol:
        raise DecodeError("policies: expected a non-empty array of {idx, cutoff}",
                          field="policies")
    cites: list[Citation] = []
    for c in pol:
        if not isinstance(c, dict) or set(c) != {"idx", "cutoff"}:
            raise DecodeError("policies: each is {\"idx\": <policy proposal>, \"cutoff\": µs}",
                              field="policies")
        cites.append(Citation(_earlier(c, "idx", idx), get_int(c, "cutoff", minimum=0)))
    if len({c.idx for c in cites}) != len(cites):
        raise DecodeError("policies: a policy is cited twice", field="policies")
    rows = obj["removed"]
    if not isinstance(rows, list):
        raise DecodeError("removed: expected an array of [idx, device, site, ts]",
                          field="removed")
    removed: list[Removed] = []
    for r in rows:
        if (not isinstance(r, list) or len(r) != 4
                or not isinstance(r[0], int) or isinstance(r[0], bool)
                or not isinstance(r[3], int) or isinstance(r[3], bool)
                or not (r[1] is None or (isinstance(r[1], str) and DEVICE_ID_RE.fullmatch(r[1])))
                or not (r[2] is None or isinstance(r[2], str))):
            raise DecodeError("removed: each row is [idx, device|null, site|null, ts]",
                              field="removed")
        if removed and r[0] <= removed[-1].idx:
            raise DecodeError("removed: rows must be in increasing idx order", field="removed")
        removed.append(Removed(r[0], r[1], r[2], r[3]))
    if idx_ranges([r.idx for r in removed]) != list(deleted):
        raise DecodeError("deleted: the ranges must be exactly the idx of the removed rows",
                          field="deleted")
    if count != len(removed):
        raise DecodeError(f"count {count} is not the {len(removed)} removed rows", field="count")
    return RetentionCites(tuple(cites), tuple(removed))


# -- the state and the judgement ------------------------------------------------------------

@dataclass
class Judgement:
    """What :meth:`RetentionRules.judge` found: ``problems`` make the entry invalid (the store
    refuses it, the auditor reports tampering at it); ``notes`` are findings."""

    problems: list[str] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)


EntryInfo = Callable[[int], "tuple[str, int] | None"]
"""idx → (kind, at) of an earlier entry, or None if unknown."""


@dataclass
class RetentionRules:
    """Policies and holds as the ledger's ``policy``/``hold`` entries built them so far."""

    proposals: dict[int, PolicyProposed] = field(default_factory=dict)
    approvals: dict[int, int] = field(default_factory=dict)        # proposal idx → approval idx
    current: dict[tuple[str, tuple[str, str]], int] = field(default_factory=dict)
    holds: dict[int, HoldPlaced] = field(default_factory=dict)
    requests: dict[int, HoldReleaseRequested] = field(default_factory=dict)
    released: dict[int, int] = field(default_factory=dict)         # hold idx → released idx
    policy_entries: int = 0

    def apply(self, idx: int, fact: PolicyProposed | PolicyApproved | HoldEvent) -> None:
        """Take the entry at ``idx`` into account; DecodeError if it breaks the rules."""
        if isinstance(fact, PolicyProposed):
            self.policy_entries += 1
            self.proposals[idx] = fact
        elif isinstance(fact, PolicyApproved):
            self._approve(idx, fact)
        elif isinstance(fact, HoldPlaced):
            self.holds[idx] = fact
        elif isinstance(fact, HoldReleaseRequested):
            if fact.hold not in self.holds:
                raise DecodeError(f"entry {fact.hold} is no placed hold", field="hold")
            if fact.hold in self.released:
                raise DecodeError(f"hold at idx {fact.hold} is already released", field="hold")
            self.requests[idx] = fact
        else:
            self._release(idx, fact)

    def _approve(self, idx: int, fact: PolicyApproved) -> None:
        self.policy_entries += 1
        p = self.proposals.get(fact.proposal)
        if p is None:
            raise DecodeError(f"approves entry {fact.proposal}, which is no policy proposal",
                              field="proposal")
        if fact.proposal in self.approvals:
            raise DecodeError(f"policy proposal {fact.proposal} is already approved (at idx "
                              f"{self.approvals[fact.proposal]})", field="proposal")
        if fact.by == p.by:
            raise DecodeError(f"dual control: {fact.by} proposed policy {p.name!r} and cannot "
                              f"approve it too", field="by")
        self.approvals[fact.proposal] = idx
        self.current[(p.record, p.scope_key)] = fact.proposal

    def _release(self, idx: int, fact: HoldReleased) -> None:
        req = self.requests.get(fact.request)
        if req is None:
            raise DecodeError(f"entry {fact.request} is no hold release request",
                              field="request")
        if req.hold in self.released:
            raise DecodeError(f"hold at idx {req.hold} is already released", field="request")
        if fact.by == req.by:
            raise DecodeError(f"dual control: {fact.by} asked for the release of hold at idx "
                              f"{req.hold} and cannot approve it too", field="by")
        self.released[req.hold] = idx

    def active_holds(self) -> list[tuple[int, HoldPlaced]]:
        return [(i, h) for i, h in sorted(self.holds.items()) if i not in self.released]

    def policy_for(self, record: str, site: str | None) -> int | None:
        """The proposal idx of the approved, current policy that governs ``record`` at
        ``site``: the site's own, else the longest of the jurisdictions covering it, else
        the policy for all sites; None if none does (then nothing may be removed)."""
        mine = [(i, self.proposals[i]) for (rec, _), i in self.current.items() if rec == record]
        for scope in ("site", "jurisdiction", "all"):
            found = [(p.period_days, i) for i, p in mine if p.scope == scope and p.covers(site)]
            if found:
                return max(found)[1]
        return None

    def judge(self, idx: int, at: int, cites: RetentionCites | None, *,
              entry_info: EntryInfo | None, site_of: Callable[[str], str | None] | None = None
              ) -> Judgement:
        """May a retention entry at ``idx`` (recorded at ``at``) remove what ``cites`` lists?"""
        j = Judgement()
        if cites is None:
            if self.policy_entries:
                j.problems.append("it cites no approved policy (a retention entry must name "
                                  "its policies and cut-offs once the ledger has policies)")
            else:
                j.notes.append("a retention entry from before retention policies: it cites no "
                               "policy, so what it removed cannot be judged")
            return j
        cutoffs = self._cutoffs(at, cites, j)
        holds = self.active_holds()
        unsure: set[int] = set()
        for r in cites.removed:
            info = entry_info(r.idx) if entry_info is not None else None
            if info is None:
                if entry_info is not None:
                    j.problems.append(f"removes idx {r.idx}, which the ledger does not hold")
                continue
            self._judge_row(r, info, cutoffs, j, site_of)
            for hidx, h in holds:
                m = h.matches(r.device, r.site, r.ts)
                if m is True:
                    j.problems.append(f"removes idx {r.idx}, which {h.describe()} at idx "
                                      f"{hidx} keeps")
                elif m is None:
                    unsure.add(hidx)
        for hidx in sorted(unsure):
            j.notes.append(f"{self.holds[hidx].describe()} at idx {hidx} names a credential or "
                           f"employee; a removed body cannot be checked against it offline "
                           f"(the store checked it)")
        return j

    def _cutoffs(self, at: int, cites: RetentionCites, j: Judgement) -> dict[int, int]:
        """Policy idx → cut-off of each cited policy that is approved and current."""
        cutoffs: dict[int, int] = {}
        for c in cites.policies:
            p = self.proposals.get(c.idx)
            if p is None or c.idx not in self.approvals:
                j.problems.append(f"cites entry {c.idx}, which is no approved policy")
                continue
            if self.current.get((p.record, p.scope_key)) != c.idx:
                j.problems.append(f"cites policy {p.name!r} (idx {c.idx}), which a later "
                                  f"approved policy for the same scope replaced")
                continue
            if c.cutoff > at - p.period_us:
                j.problems.append(f"cut-off {c.cutoff} under policy {p.name!r} is later than "
                                  f"its {p.period_days}-day period allows at {at} "
                                  f"({at - p.period_us})")
            cutoffs[c.idx] = c.cutoff
        return cutoffs

    def _judge_row(self, r: Removed, info: tuple[str, int], cutoffs: Mapping[int, int],
                   j: Judgement, site_of: Callable[[str], str | None] | None) -> None:
        kind, entry_at = info
        if kind not in RECORDS:
            j.problems.append(f"removes the body of idx {r.idx}, a {kind} entry: no retention "
                              f"policy governs {kind} entries")
            return
        if site_of is not None and r.device is not None:
            known = site_of(r.device)
            if known is not None and known != r.site:
                j.problems.append(f"idx {r.idx}: names site {r.site!r} for {r.device}, "
                                  f"enrolled at {known!r}")
        pidx = self.policy_for(kind, r.site)
        if pidx is None:
            j.problems.append(f"removes idx {r.idx} ({kind} at site {r.site!r}), which no "
                              f"approved policy governs")
        elif pidx not in cutoffs:
            j.problems.append(f"removes idx {r.idx} ({kind} at site {r.site!r}), governed by "
                              f"policy {self.proposals[pidx].name!r} (idx {pidx}), which it "
                              f"does not cite")
        elif entry_at >= cutoffs[pidx]:
            j.problems.append(f"removes idx {r.idx}, recorded at {entry_at}: younger than the "
                              f"cut-off {cutoffs[pidx]} of policy "
                              f"{self.proposals[pidx].name!r}")
