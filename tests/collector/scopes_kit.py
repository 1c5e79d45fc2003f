"""A ledger with people, badges, person-linked and site-scoped principals, for the D8 scope
tests (tests/collector/test_scoped_roles.py, tests/collector/test_api_rbac.py).

seed() gives clock-00 (site hq) and clock-01 (site plant) five punches each: seq n carries
badge em4100:000000000(n-1). The directory (a real CSV import) says who held each badge:

    seq 1 ANN (hq, reports to BOSS)   seq 2 BOB (plant, reports to ANN)
    seq 3 CAT (plant, no manager)     seq 4 BOSS (hq)       seq 5 nobody

so BOSS's team is ANN and BOB (BOB through ANN: transitive).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from collector.access.directory import Principals
from collector.ledger.sqlbase import SQLStore
from collector.ledger.tables import ensure_schema
from collector.people.csv_import import import_files
from tests.collector.api_kit import Api, seed, start_api
from tests.collector.ledger_kit import T0
from wire.grants import AccessHistory, Breach, PrincipalScope

EMPLOYEES = """employee_id,name,department,site,timezone,manager_id
BOSS,Bea Boss,Operations,hq,Europe/London,
ANN,Ann Archer,Operations,hq,Europe/London,BOSS
BOB,Bob Baker,Operations,plant,Europe/London,ANN
CAT,Cat Cooper,Operations,plant,Europe/London,
HAL,Hal Reed,HR,hq,Europe/London,
"""
HOLDERS = {1: "ANN", 2: "BOB", 3: "CAT", 4: "BOSS", 5: None}     # seq -> holder
BADGES = "credential,employee_id,valid_from,valid_until,status\n" + "".join(
    f"em4100:{seq - 1:010d},{emp},2025-01-01T00:00:00Z,,assigned\n"
    for seq, emp in HOLDERS.items() if emp is not None)
SITE_OF = {"clock-00": "hq", "clock-01": "plant"}

# principal -> (roles, person, sites); created while the ledger has no admin (bootstrap)
SCOPED: dict[str, tuple[tuple[str, ...], str | None, frozenset[str] | None]] = {
    "ann": (("employee.self",), "ANN", None),
    "boss": (("employee.self", "supervisor"), "BOSS", None),
    "hr-hq": (("hr.read", "hr.approve"), None, frozenset({"hq"})),
    "hr-plant": (("hr.read", "hr.correct"), None, frozenset({"plant"})),
    "pay-hq": (("payroll.export",), None, frozenset({"hq"})),
    "people-hq": (("hr.people",), None, frozenset({"hq"})),
    "audit-plant": (("audit.read",), None, frozenset({"plant"})),
    "hr-ann": (("hr.read", "hr.correct"), "ANN", None),        # Ann also works in HR
    "approve-ann": (("hr.approve",), "ANN", None),             # a second principal of Ann
    "approve-bob": (("hr.approve",), "BOB", None),
}


def visible(principal: str) -> set[tuple[str, int]]:
    """The punches (device, seq) ``principal`` of SCOPED may read, written out by hand."""
    every = {(d, s) for d in SITE_OF for s in HOLDERS}
    persons = {"ann": {"ANN"}, "boss": {"BOSS", "ANN", "BOB"}}.get(principal)
    sites = SCOPED[principal][2]
    return {(d, s) for d, s in every
            if (sites is None or SITE_OF[d] in sites)
            and (persons is None or HOLDERS[s] in persons)}


def add_people(store: SQLStore, tmp: Path) -> None:
    (tmp / "e.csv").write_text(EMPLOYEES, encoding="utf-8")
    (tmp / "b.csv").write_text(BADGES, encoding="utf-8")
    import_files(store, tmp / "e.csv", tmp / "b.csv", now_us=T0 + 2000)


async def start_scoped(store: SQLStore, tmp: Path) -> Api:
    """seed() + the directory + SCOPED principals + api_kit's ROLE_PRINCIPALS, served."""
    clocks = seed(store)
    add_people(store, tmp)
    ensure_schema(store)
    principals = Principals(store)
    mine = {name: principals.create_token(
        name, list(roles), expires_days=30, actor="cli:test", now_us=T0 + 10**9,
        scope=PrincipalScope(emp, sites)).token for name, (roles, emp, sites) in SCOPED.items()}
    api = await start_api(store, clocks=clocks)
    # a second admin (dual control): created by the first, its first token handed over
    principals.create_principal("admin2", "token", ["admin"], actor="admin",
                                now_us=api.clock())
    mine["admin2"] = principals.create_token("admin2", [], expires_days=30,
                                             actor="cli:test", now_us=api.clock()).token
    api.tokens.update(mine)
    return api


def chain_breaches(store: SQLStore) -> list[Breach]:
    """Every breach the verifiers' replay of the chain (wire.grants.AccessHistory) reports."""
    history = AccessHistory()
    for se in store.entries():
        if se.entry.kind in ("access", "correction") and se.body is not None:
            body: Any = json.loads(se.body)
            history.feed(se.entry.idx, se.entry.kind, body)
    return history.breaches
