"""The people directory on a ledger store: record changes, look people and badges up.

Every change is an ``employee`` or ``badge`` ledger entry (docs/protocol.md §7.2) recorded in
one store transaction with the projection rows it implies (collector.ledger.people_tables), so
the tables never say what the chain does not. The rules (collector.people.rules) are checked
inside that transaction, against the projection read under the chain lock: two collectors
changing the same badge at once cannot both succeed.

Names are personal data: nothing here logs, and messages name employees by id only.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass, replace
from typing import Any

from collector import DirectoryError, DirectoryNotFoundError, LedgerError
from collector.ledger import keyring
from collector.ledger import people_tables as T
from collector.ledger.people_tables import BadgePeriod, BadgeResolver, EmployeeRow
from collector.ledger.sqlbase import SQLStore, Tx
from collector.people.rules import PENDING, Change, State, plan_badge, plan_employee
from wire.bodies_people import EMPLOYEE_FIELDS
from wire.canonical import loads


@dataclass(frozen=True)
class Recorded:
    """A change and the idx of the entry that recorded it."""

    change: Change
    idx: int


def record(store: SQLStore, plan: Callable[[State], list[Change]], *, now_us: int,
           credentials: Iterable[str] = ()) -> list[Recorded]:
    """Plan against the projection under the chain lock and record every change, or none
    (a DirectoryError from ``plan`` rolls the transaction back)."""
    T.ensure_schema(store)
    with store.transaction(now_us, what="recording a directory change") as tx:
        state = State(T.tx_employees(tx), T.tx_periods(tx, credentials))
        return [Recorded(ch, _write(tx, ch)) for ch in plan(state)]


def preview(store: SQLStore, plan: Callable[[State], list[Change]], *,
            credentials: Iterable[str] = ()) -> list[Change]:
    """What ``record`` would append now (a dry run: nothing is written)."""
    T.ensure_schema(store)
    employees = {e.employee_id: e for e in T.employees(store)}
    periods: dict[str, list[BadgePeriod]] = {}
    for c in set(credentials):
        periods[c] = T.periods(store, credential=c)
    return plan(State(employees, periods))


def _write(tx: Tx, ch: Change) -> int:
    idx = tx.record(ch.kind, ch.body)
    if ch.put is not None:
        created = idx if ch.put.created_idx == PENDING else ch.put.created_idx
        T.put_employee(tx, replace(ch.put, created_idx=created, changed_idx=idx),
                       exists=ch.exists)
    if ch.end is not None:
        c, start, until = ch.end
        T.set_period_end(tx, c, start, until, changed_idx=idx)
    if ch.insert is not None:
        T.insert_period(tx, replace(ch.insert, idx=idx, changed_idx=idx))
    return idx


def _one(change: Callable[[State], Change | None]) -> Callable[[State], list[Change]]:
    def plan(state: State) -> list[Change]:
        ch = change(state)
        return [] if ch is None else [ch]
    return plan


# -- single changes (CLI `badge …`, the API) -------------------------------------------------

def set_employee(store: SQLStore, record_: dict[str, Any], *, now_us: int) -> Recorded | None:
    """Record ``record_`` (every field of wire.bodies_people.EMPLOYEE_FIELDS); None when the
    directory already holds exactly it."""
    missing = [f for f in EMPLOYEE_FIELDS if f not in record_]
    if missing:
        raise DirectoryError(f"employee: missing field(s) {', '.join(missing)}")
    done = record(store, _one(lambda s: plan_employee(s, record_)), now_us=now_us)
    return done[0] if done else None


def badge_event(store: SQLStore, event: str, credential: str, *, start_us: int,
                until_us: int | None = None, employee_id: str | None = None,
                now_us: int) -> Recorded | None:
    """Record one badge event (assigned / lost / blocked / returned); None when already so."""
    body = {"event": event, "credential": credential, "employee_id": employee_id,
            "from": start_us, "until": until_us}
    done = record(store, _one(lambda s: plan_badge(s, body)), now_us=now_us,
                  credentials=[credential])
    return done[0] if done else None


# -- lookups ------------------------------------------------------------------------------------

def employee(store: SQLStore, employee_id: str) -> EmployeeRow:
    T.ensure_schema(store)
    e = T.employee(store, employee_id)
    if e is None:
        raise DirectoryNotFoundError(f"no employee {employee_id[:64]} in the directory")
    return e


def badges_of(store: SQLStore, employee_id: str) -> list[BadgePeriod]:
    return T.periods(store, employee_id=employee_id)


def badge_periods(store: SQLStore, credential: str) -> list[BadgePeriod]:
    T.ensure_schema(store)
    return T.periods(store, credential=credential)


def holder_at(store: SQLStore, credential: str, ts: int) -> tuple[str | None, str]:
    """(employee_id, badge_status) of ``credential`` at device time ``ts``."""
    T.ensure_schema(store)
    return BadgeResolver.load(store, [credential]).resolve(credential, ts)


def employee_dict(e: EmployeeRow, badges: list[BadgePeriod] | None = None) -> dict[str, Any]:
    out: dict[str, Any] = {**e.record(), "created_idx": e.created_idx,
                           "changed_idx": e.changed_idx}
    if badges is not None:
        out["badges"] = [period_dict(p) for p in badges]
    return out


def period_dict(p: BadgePeriod) -> dict[str, Any]:
    return {"credential": p.credential, "employee_id": p.employee_id, "status": p.status,
            "valid_from": p.valid_from, "valid_until": p.valid_until, "idx": p.idx,
            "changed_idx": p.changed_idx}


# -- the projection is the chain's ---------------------------------------------------------------

def replay(store: SQLStore) -> State:
    """The directory the chain's ``employee`` and ``badge`` entries give, from scratch."""
    state = State({})
    for se in store.entries():
        if se.entry.kind not in ("employee", "badge") or se.body is None:
            continue
        body = loads(se.body)
        ch = plan_employee(state, body) if se.entry.kind == "employee" else \
            plan_badge(state, body)
        if ch is None:
            continue
        i = se.entry.idx
        if ch.put is not None:
            p = ch.put
            state.employees[p.employee_id] = replace(
                p, created_idx=i if p.created_idx == PENDING else p.created_idx, changed_idx=i)
        if ch.end is not None:
            c, start, until = ch.end
            state.periods[c] = [replace(q, changed_idx=i) if q.valid_from == start else q
                                for q in state.periods[c]]
        if ch.insert is not None:
            c = ch.insert.credential
            state.periods[c] = [replace(q, idx=i, changed_idx=i)
                                if q.valid_from == ch.insert.valid_from else q
                                for q in state.periods[c]]
    return state


def check_projection(store: SQLStore) -> list[str]:
    """Differences between the tables and :func:`replay` (empty: the projection is the
    chain's), one line each, by id and credential (no names). ``verify --full`` runs it."""
    if not T.present(store):
        return []
    try:
        chain = replay(store)
    except (DirectoryError, LedgerError) as e:
        # the chain's own directory entries break the rules: written behind the collector
        return [f"the ledger's employee/badge entries do not replay: {e}"]
    out: list[str] = []
    # An erased person's entries have no body left (DESIGN.md §8.6): their rows are not
    # the chain's to replay (collector.records.erasure blanks what they held).
    erased = keyring.erased_subjects(store)
    tables = {e.employee_id: e for e in T.employees(store) if e.employee_id not in erased}
    for eid in sorted((set(tables) | set(chain.employees)) - erased):
        if tables.get(eid) != chain.employees.get(eid):
            out.append(f"employee {eid}: the table differs from the ledger's entries")
    have: dict[str, list[BadgePeriod]] = {}
    for p in T.periods(store):
        if p.employee_id not in erased:
            have.setdefault(p.credential, []).append(p)
    want = {c: ps for c, ps in chain.periods.items() if ps}
    for c in sorted(set(have) | set(want)):
        if have.get(c, []) != want.get(c, []):
            out.append(f"badge {c}: the table's periods differ from the ledger's entries")
    return out
