"""The SQL of retention under policy (control D15, docs/protocol.md §7.2): what the store reads
to judge a ``policy``, ``hold`` or ``retention`` entry before appending it, what a retention run
may remove, and the purge of the projections after the bodies went.

The rules themselves are ``wire.bodies_retention`` (the auditor applies the same ones); this
module only feeds them the ledger's state, plus what only the store can see: the bodies that
are about to go. So the store checks a retention entry's manifest against the punches it
removes (device, site, time) and the credential of each against the active holds, which an
offline verifier cannot do once the bodies are gone.

Invariants: every statement runs inside the caller's transaction (a ``Rows`` of the append's
cursor or of a :class:`~collector.ledger.sqlbase.Tx`); the purge blanks the personal columns of
``punches`` (credential, action, reader, clock, ts) and the raw bytes and detail of
``quarantine`` only for entries whose body a retention entry already removed — the schemas'
triggers refuse any other UPDATE of those tables.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, replace
from typing import Any

from collector import LedgerError
from collector.ledger.people_tables import BadgePeriod, BadgeResolver
from wire.bodies import Retention, parse_body
from wire.bodies_retention import (
    RECORDS,
    HoldEvent,
    HoldPlaced,
    PolicyApproved,
    PolicyProposed,
    RetentionRules,
)
from wire.canonical import loads
from wire.errors import WireError
from wire.punch import SignedPunch

Rows = Callable[[str, Sequence[Any]], list[tuple[Any, ...]]]
# (idx, body hash, stored body) → plaintext, None once its data key was destroyed: the
# store's SQLStore.plain (DESIGN.md §8.6 bodies at rest; row_check.Opener is the same).
Opener = Callable[[Any, Any, "bytes | None"], "bytes | None"]
Decoder = Callable[[str], str]      # a stored tc_badges.credential → the credential
"""Run one statement (``?`` placeholders) in the caller's transaction; its rows."""

_RULE_KINDS = ("policy", "hold")
JUDGED_KINDS = frozenset({"policy", "hold", "retention"})


@dataclass(frozen=True, slots=True)
class Record:
    """An entry a retention policy governs, as the store sees it before removing its body."""

    idx: int
    kind: str              # punch | rejection
    at: int                # the entry's ``at`` (ages are measured on it)
    device: str | None
    site: str | None
    ts: int                # punch: its ts; rejection: received_at (what holds' ranges match)
    credential: str | None
    employee: str | None = None    # who held the badge at ts (people directory), if resolved
    resolved: bool = False

    def held_by(self, h: HoldPlaced) -> bool:
        """Does ``h`` keep this record, or might it (a criterion the store cannot evaluate)?"""
        return h.matches(self.device, self.site, self.ts, credential=self.credential,
                         employee=self.employee, resolved=self.resolved) is not False

    def manifest_row(self) -> list[Any]:
        return [self.idx, self.device, self.site, self.ts]


def _as_fact(kind: str, body: bytes, idx: int) -> PolicyProposed | PolicyApproved | HoldEvent:
    fact = parse_body(kind, loads(body), idx=idx)
    if not isinstance(fact, PolicyProposed | PolicyApproved | HoldEvent):
        raise LedgerError(f"entry {idx} ({kind}) is not a policy or hold fact")
    return fact


def load_rules(rows: Rows, pending: Iterable[tuple[int, str, bytes]] = ()) -> RetentionRules:
    """The policies and holds the ledger holds (and ``pending`` (idx, kind, body) entries of
    the append in progress), applied in idx order."""
    rules = RetentionRules()
    found = [(int(i), str(k), bytes(b)) for i, k, b in rows(
        "SELECT e.idx, e.kind, b.body FROM entries e JOIN bodies b ON b.idx = e.idx "
        "WHERE e.kind IN ('policy', 'hold') ORDER BY e.idx", ())]
    for idx, kind, body in [*found, *[p for p in pending if p[1] in _RULE_KINDS]]:
        try:
            rules.apply(idx, _as_fact(kind, body, idx))
        except WireError as e:
            raise LedgerError(f"the ledger's {kind} entry {idx} is not valid: {e} "
                              f"(run `timeclock-collector verify`)") from e
    return rules


def badge_resolver(rows: Rows, credential_of: Decoder | None = None) -> BadgeResolver:
    """Every badge period of the people directory (one query), to resolve employee holds
    (``credential_of``: the store's decoder of a sealed ``tc_badges.credential``)."""
    out: dict[str, list[BadgePeriod]] = {}
    for c0, vf, vu, emp, status, idx, changed in rows(
            "SELECT credential, valid_from, valid_until, employee_id, status, idx, changed_idx "
            "FROM tc_badges ORDER BY credential, valid_from", ()):
        c = str(c0) if credential_of is None else credential_of(str(c0))
        out.setdefault(c, []).append(BadgePeriod(
            c, int(vf), None if vu is None else int(vu), None if emp is None else str(emp),
            str(status), int(idx), int(changed)))
    return BadgeResolver(out)


def resolve_employees(rows: Rows, records: list[Record], holds: Iterable[HoldPlaced],
                      credential_of: Decoder | None = None) -> list[Record]:
    """``records`` with the employee who held each punch's badge at its ts, when a hold names
    an employee (only then is the directory read)."""
    if not any(h.employee is not None for h in holds):
        return records
    resolver = badge_resolver(rows, credential_of)
    out: list[Record] = []
    for r in records:
        if r.credential is None:
            out.append(r)
            continue
        emp, _ = resolver.resolve(r.credential, r.ts)
        out.append(replace(r, employee=emp, resolved=True))
    return out


def sites(rows: Rows) -> dict[str, str]:
    return {str(d): str(s) for d, s in rows("SELECT device, site FROM devices", ())}


def record_of(idx: int, kind: str, at: int, body: bytes, site_of: Mapping[str, str]
              ) -> Record | None:
    """The Record of a punch or rejection entry with its body; None for other kinds."""
    if kind == "punch":
        p = SignedPunch.from_bytes(body).punch
        return Record(idx, kind, at, p.device, site_of.get(p.device), p.ts, p.credential)
    if kind == "rejection":
        v = loads(body)
        device = v.get("device") if isinstance(v.get("device"), str) else None
        return Record(idx, kind, at, device, site_of.get(device) if device else None,
                      int(v.get("received_at", 0)), None)
    return None


def candidates(rows: Rows, before_at: int, plain: Opener | None = None) -> list[Record]:
    """Punches and rejections recorded before ``before_at`` whose bodies are still here
    (``plain``: the store's opener of sealed bodies, DESIGN.md §8.6)."""
    site_of = sites(rows)
    out: list[Record] = []
    for idx, kind, at, bh, body in rows(
            "SELECT e.idx, e.kind, e.at, e.body, b.body FROM entries e JOIN bodies b "
            "ON b.idx = e.idx WHERE e.kind IN ('punch', 'rejection') AND e.at < ? "
            "ORDER BY e.idx", (before_at,)):
        raw = bytes(body) if plain is None else plain(idx, bh, bytes(body))
        r = None if raw is None else record_of(int(idx), str(kind), int(at), raw, site_of)
        if r is not None:
            out.append(r)
    return out


_Held = dict[int, tuple[str, int, "bytes | None"]]


def _entries_in(rows: Rows, ranges: Iterable[tuple[int, int]], plain: Opener | None = None
                ) -> _Held:
    out: _Held = {}
    for a, b in ranges:
        for idx, kind, at, bh, body in rows(
                "SELECT e.idx, e.kind, e.at, e.body, b.body FROM entries e LEFT JOIN bodies b "
                "ON b.idx = e.idx WHERE e.idx >= ? AND e.idx <= ?", (a, b)):
            raw = None if body is None else bytes(body)
            out[int(idx)] = (str(kind), int(at), raw if plain is None else plain(idx, bh, raw))
    return out


def check_append(rows: Rows, kind: str, fact: object, *, idx: int, at: int,
                 pending: Sequence[tuple[int, str, bytes]], plain: Opener | None = None,
                 credential_of: Decoder | None = None) -> None:
    """Refuse (LedgerError) a ``policy``, ``hold`` or ``retention`` entry about to be appended
    at ``idx`` that the rules do not allow; other kinds pass."""
    if kind in _RULE_KINDS:
        rules = load_rules(rows, pending)
        try:
            rules.apply(idx, fact)   # type: ignore[arg-type]  # parse_body gave this kind's fact
        except WireError as e:
            raise LedgerError(f"{kind} refused: {e}") from e
        return
    if kind != "retention" or not isinstance(fact, Retention):
        return
    if fact.cites is None:
        raise LedgerError("retention refused: a retention entry must cite the approved policies "
                          "it runs under and list what it removes (`timeclock-collector "
                          "retention run` writes it)")
    rules = load_rules(rows, pending)
    held = _entries_in(rows, fact.deleted, plain)
    site_of = sites(rows)

    def info(i: int) -> tuple[str, int] | None:
        got = held.get(i)
        return None if got is None else (got[0], got[1])

    j = rules.judge(idx, at, fact.cites, entry_info=info, site_of=site_of.get)
    problems = list(j.problems)
    active = rules.active_holds()
    records: list[Record] = []
    for row in fact.cites.removed:
        have = held.get(row.idx)
        if have is None or have[0] not in RECORDS:
            continue
        if have[2] is None:
            problems.append(f"idx {row.idx}: its body is already gone")
            continue
        rec = record_of(row.idx, have[0], have[1], have[2], site_of)
        if rec is None or rec.manifest_row() != [row.idx, row.device, row.site, row.ts]:
            said = [row.idx, row.device, row.site, row.ts]
            problems.append(f"idx {row.idx}: the manifest row {said} is not what the entry "
                            f"holds")
            continue
        records.append(rec)
    for rec in resolve_employees(rows, records, (h for _, h in active), credential_of):
        for hidx, h in active:
            if rec.held_by(h):
                problems.append(f"removes idx {rec.idx}, which {h.describe()} at idx {hidx} "
                                f"keeps")
    if problems:
        more = f" (and {len(problems) - 1} more)" if len(problems) > 1 else ""
        raise LedgerError(f"retention refused: {problems[0]}{more}")


Execute = Callable[[str, Sequence[Any]], None]
"""Run one statement that returns no rows, in the caller's transaction."""

_GONE_P = ("credential <> '' AND NOT EXISTS (SELECT 1 FROM bodies b WHERE b.idx = punches.idx) "
           "AND EXISTS (SELECT 1 FROM retained r WHERE punches.idx BETWEEN r.first_idx "
           "AND r.last_idx)")
_GONE_Q = ("(length(raw) > 0 OR detail <> '') "
           "AND NOT EXISTS (SELECT 1 FROM bodies b WHERE b.idx = quarantine.idx) "
           "AND EXISTS (SELECT 1 FROM retained r WHERE quarantine.idx BETWEEN r.first_idx "
           "AND r.last_idx)")


def unpurged(rows: Rows) -> tuple[int, int]:
    """(punch rows, quarantine rows) whose body retention removed but whose personal columns
    are still there (a ledger from before the purge, or what a run is about to purge).

    Only rows inside a ``retained`` range can be such rows: none without a retention run
    (one row read), else the punches of those ranges through their idx index, never a scan
    of the whole table (the compliance page reads this on every view, issue 16)."""
    if not rows("SELECT 1 FROM retained LIMIT 1", ()):
        return 0, 0
    p = int(rows("SELECT COUNT(*) FROM punches WHERE idx IN (SELECT p.idx FROM retained r "  # noqa: S608 - constants
                 f"JOIN punches p ON p.idx BETWEEN r.first_idx AND r.last_idx) AND {_GONE_P}",
                 ())[0][0])
    q = int(rows(f"SELECT COUNT(*) FROM quarantine WHERE {_GONE_Q}", ())[0][0])  # noqa: S608 - constants
    return p, q


def purge_punches(execute: Execute) -> None:
    """Blank the personal columns of every punch whose body retention removed (the trigger
    allows exactly this UPDATE, docs/protocol.md §7.2)."""
    execute("UPDATE punches SET credential = '', action = '', reader = '', clock = '', "  # noqa: S608 - constants
            f"ts = 0 WHERE {_GONE_P}", ())


def purge_quarantine(execute: Execute) -> None:
    """Blank the raw bytes and detail of every rejection whose body retention removed."""
    execute(f"UPDATE quarantine SET raw = ?, detail = '' WHERE {_GONE_Q}", (b"",))  # noqa: S608 - constants


def prior_entry(rows: Rows) -> Callable[[int], tuple[str, int] | None]:
    """idx → (kind, at) of a stored entry (for an audit resumed after idx 0)."""
    def lookup(idx: int) -> tuple[str, int] | None:
        found = rows("SELECT kind, at FROM entries WHERE idx = ?", (idx,))
        return (str(found[0][0]), int(found[0][1])) if found else None
    return lookup


def prior_rules(rows: Rows, start: int) -> list[tuple[int, str, Any]]:
    """(idx, kind, body value) of every policy and hold entry below ``start``, as stored."""
    out: list[tuple[int, str, Any]] = []
    for idx, kind, body in rows(
            "SELECT e.idx, e.kind, b.body FROM entries e JOIN bodies b ON b.idx = e.idx "
            "WHERE e.kind IN ('policy', 'hold') AND e.idx < ? ORDER BY e.idx", (start,)):
        try:
            out.append((int(idx), str(kind), loads(bytes(body))))
        except WireError:
            out.append((int(idx), str(kind), None))    # the auditor reports it
    return out
