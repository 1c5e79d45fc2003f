"""Retention runs under policy, with legal holds (control D15, docs/operations.md "Retention and
legal holds", docs/protocol.md §7.2).

:func:`make_plan` says what would go at a given time: every punch and rejection whose body is
still in the ledger, recorded (entry ``at``) before the cut-off of the approved policy that
governs its kind at its site (wire.bodies_retention's precedence: the site's policy, else the
longest jurisdiction covering the site, else the policy for all sites), and matched by no
active hold; what each hold keeps; what no policy governs.

:func:`run` executes the plan at the current time as ONE store transaction of ordered steps
(:data:`STEPS`): the evidence ``retention`` entry (the store judges it by the auditor's rules and
deletes the bodies it lists), then the purge of the projections (the personal columns of the
``punches`` rows, the raw bytes and detail of the quarantined rejections). On an encrypted
ledger (DESIGN.md §8.6) the evidence step also destroys the data keys that sealed nothing but
what the run removes (:func:`spent_keys`), named in the entry's informational ``keys`` field.

Invariants: a run commits all its steps or none (a run killed anywhere leaves either nothing or
a complete evidence entry with everything it lists purged); a run with nothing to remove and
nothing left to purge writes nothing (runs are idempotent); the plan is re-made inside the
run's transaction, under the chain lock, so a hold placed a moment before is honoured.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from collector.ledger import body_crypto, retention_tables
from collector.ledger.retention_tables import Decoder, Opener, Record, Rows
from collector.ledger.schema_check import require_current_triggers
from collector.ledger.sqlbase import SQLStore
from wire.bodies_retention import RetentionRules, idx_ranges

STEPS: tuple[str, ...] = ("evidence", "punches", "quarantine")
"""The steps of a run, in order, inside one transaction. "evidence": the ``retention`` entry,
whose append deletes the bodies it lists; "punches" / "quarantine": the projections' purge.
(Encryption at rest: the data keys spent by the run are destroyed inside "evidence", whose
entry names them.)"""

StepHook = Callable[[str], None]
"""Called after each step with its name, inside the transaction (tests stop a run there)."""


@dataclass
class PolicyPlan:
    idx: int
    name: str
    record: str
    scope: str
    period_days: int
    cutoff: int
    remove: Counter[str] = field(default_factory=Counter)     # site -> count

    def to_dict(self) -> dict[str, Any]:
        return {"idx": self.idx, "policy": self.name, "record": self.record,
                "scope": self.scope, "period_days": self.period_days, "cutoff": self.cutoff,
                "remove": dict(sorted(self.remove.items()))}


@dataclass
class HoldPlan:
    idx: int
    name: str
    case: str
    keeps: int = 0

    def to_dict(self) -> dict[str, Any]:
        return {"idx": self.idx, "hold": self.name, "case": self.case, "keeps": self.keeps}


@dataclass
class Plan:
    """What a run at ``at_us`` removes (``remove``), per policy, and what each hold keeps."""

    at_us: int
    policies: list[PolicyPlan]
    holds: list[HoldPlan]
    remove: list[Record]
    ungoverned: Counter[str] = field(default_factory=Counter)  # "kind at site" -> count
    unpurged: tuple[int, int] = (0, 0)   # projection rows whose body an earlier run removed

    def evidence(self) -> dict[str, Any]:
        """The body of the run's ``retention`` entry (docs/protocol.md §7.2)."""
        used = [p for p in self.policies if p.remove]
        idxs = [r.idx for r in self.remove]
        return {"policy": ",".join(p.name for p in used),
                "deleted": [list(r) for r in idx_ranges(idxs)], "count": len(idxs),
                "policies": [{"idx": p.idx, "cutoff": p.cutoff} for p in used],
                "removed": [r.manifest_row() for r in self.remove],
                "steps": list(STEPS)}

    def to_dict(self) -> dict[str, Any]:
        return {"at": self.at_us, "remove": len(self.remove),
                "policies": [p.to_dict() for p in self.policies],
                "holds": [h.to_dict() for h in self.holds],
                "ungoverned": dict(sorted(self.ungoverned.items())),
                "unpurged": {"punches": self.unpurged[0], "quarantine": self.unpurged[1]}}


def _policy_plans(rules: RetentionRules, at_us: int) -> dict[int, PolicyPlan]:
    out: dict[int, PolicyPlan] = {}
    for pidx in sorted(rules.current.values()):
        p = rules.proposals[pidx]
        scope = p.scope if p.scope == "all" else f"{p.scope} {p.site or p.jurisdiction}"
        out[pidx] = PolicyPlan(pidx, p.name, p.record, scope, p.period_days,
                               at_us - p.period_us)
    return out


def make_plan(rows: Rows, at_us: int, plain: Opener | None = None,
              credential_of: Decoder | None = None) -> Plan:
    """What a run at ``at_us`` would remove and keep (reads only); ``plain``: the store's
    opener of sealed bodies (DESIGN.md §8.6)."""
    rules = retention_tables.load_rules(rows)
    plans = _policy_plans(rules, at_us)
    active = rules.active_holds()
    holds = {i: HoldPlan(i, h.name, h.case) for i, h in active}
    plan = Plan(at_us, list(plans.values()), list(holds.values()), [],
                unpurged=retention_tables.unpurged(rows))
    if not plans:
        return plan
    # Only what the most generous cut-off could allow is read (and parsed).
    horizon = max(p.cutoff for p in plans.values())
    found = retention_tables.candidates(rows, horizon, plain)
    for rec in retention_tables.resolve_employees(rows, found, (h for _, h in active),
                                                  credential_of):
        pidx = rules.policy_for(rec.kind, rec.site)
        if pidx is None:
            plan.ungoverned[f"{rec.kind} at {rec.site or '?'}"] += 1
            continue
        pp = plans[pidx]
        if rec.at >= pp.cutoff:
            continue
        keeping = [i for i, h in active if rec.held_by(h)]
        for i in keeping:
            holds[i].keeps += 1
        if not keeping:
            pp.remove[rec.site or "?"] += 1
            plan.remove.append(rec)
    return plan


def plan(store: SQLStore, at_us: int) -> Plan:
    return make_plan(store.query, at_us, store.plain, store.credential_of)


def load_rules(store: SQLStore) -> RetentionRules:
    """The policies and holds recorded in ``store``'s ledger."""
    return retention_tables.load_rules(store.query)


@dataclass(frozen=True)
class RunResult:
    plan: Plan
    entry_idx: int | None          # the evidence entry; None when nothing was removed
    purged_punches: int
    purged_quarantine: int

    def to_dict(self) -> dict[str, Any]:
        return {"entry": self.entry_idx, "removed": len(self.plan.remove),
                "purged": {"punches": self.purged_punches,
                           "quarantine": self.purged_quarantine},
                "plan": self.plan.to_dict()}


def spent_keys(rows: Rows, removed: list[int]) -> list[str]:
    """The data key ids every one of whose sealed bodies is among ``removed`` (DESIGN.md
    §8.6): nothing they sealed stays, so destroying them loses nothing else."""
    magic = body_crypto.MAGIC
    gone: Counter[str] = Counter()
    for i in range(0, len(removed), 500):
        chunk = removed[i:i + 500]
        for k, n in rows("SELECT substr(body, 5, 35), COUNT(*) FROM bodies WHERE "  # noqa: S608 - placeholders only
                         f"substr(body, 1, 4) = ? AND idx IN ({', '.join('?' * len(chunk))}) "
                         "GROUP BY substr(body, 5, 35)", (magic, *chunk)):
            gone[bytes(k).decode("ascii", "replace")] += int(n)
    if not gone:
        return []
    total = {bytes(k).decode("ascii", "replace"): int(n) for k, n in rows(
        "SELECT substr(body, 5, 35), COUNT(*) FROM bodies WHERE substr(body, 1, 4) = ? "
        "GROUP BY substr(body, 5, 35)", (magic,))}
    return sorted(k for k, n in gone.items() if total.get(k) == n)


def run(store: SQLStore, now_us: int, *, hook: StepHook | None = None) -> RunResult:
    """Execute the plan at ``now_us`` in one transaction (see the module docstring); refused up
    front on a ledger whose triggers are not the schema's (an older collector's refuse the
    purge: schema_check.require_current_triggers names ``migrate``)."""
    require_current_triggers(store, what="retention run")
    with store.transaction(now_us, what="retention run") as tx:
        p = make_plan(tx.rows, now_us, store.plain, store.credential_of)
        entry: int | None = None
        if p.remove:
            body = p.evidence()
            # DESIGN.md §8.6: the data keys that sealed nothing but what this run removes go
            # with it, named in the entry (an informational field) and destroyed under it.
            keys = [] if store.sealer is None else spent_keys(tx.rows, [r.idx for r in p.remove])
            if keys:
                body["keys"] = keys
            entry = tx.record("retention", body)
            if keys and store.sealer is not None:
                store.sealer.ring.destroy(tx, keys, idx=entry)
        if hook is not None:
            hook("evidence")
        todo_p, todo_q = retention_tables.unpurged(tx.rows)
        retention_tables.purge_punches(tx.execute)
        if hook is not None:
            hook("punches")
        retention_tables.purge_quarantine(tx.execute)
        if hook is not None:
            hook("quarantine")
    return RunResult(p, entry, todo_p, todo_q)
