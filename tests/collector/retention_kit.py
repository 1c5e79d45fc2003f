"""Builders for the retention tests (control D15): a ledger of old punches and a rejection at
two sites, approved policies, holds, and the audit bundle an auditor would verify.

Times: everything "old" is recorded (entry ``at``) 30 days before NOW, one punch a day
before; the policies keep 7 days, so a run at NOW may remove the old records and never the
young one.
"""

from __future__ import annotations

import contextlib
import io
import json
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import psycopg
import pytest

from collector import LedgerError
from collector.ledger import open_store, retention_tables
from collector.ledger.audit import verify_store
from collector.ledger.base import EventFact, RejectionFact
from collector.ledger.sqlbase import SQLStore
from collector.records.exports import export_bundle
from tests.collector.ledger_kit import T0, Clock, seeded_key
from tests.fixtures.postgres import PgDatabase
from tests.wire.bundle_kit import deleted_ranges
from wire import verify_cli
from wire.ledger import Checkpoint
from wire.topics import punches as punches_topic

DAY = 86_400_000_000
NOW = T0
OLD = NOW - 30 * DAY
YOUNG = NOW - DAY
PERIOD_DAYS = 7
HELD_CREDENTIAL = "em4100:0000000777"
LOG_KEY = seeded_key("log-key")
LOG_KEYS = {LOG_KEY.key_id: LOG_KEY.verify_key}


@dataclass
class Site:
    """The ledger a test works on, and the idx of what it holds."""

    store: SQLStore
    punches: dict[str, list[int]] = field(default_factory=dict)   # device -> punch idx
    credentials: dict[int, str] = field(default_factory=dict)     # punch idx -> credential
    ts: dict[int, int] = field(default_factory=dict)              # punch idx -> punch ts
    rejection: int = -1        # an old rejection of clk-c
    young: int = -1            # a punch of clk-a a day old
    policies: dict[str, int] = field(default_factory=dict)        # record -> proposal idx
    access: int = -1           # an access entry (no policy governs it)

    @property
    def old(self) -> set[int]:
        return {i for idxs in self.punches.values() for i in idxs} - {self.young} \
            | {self.rejection}

    def event(self, kind: str, body: dict[str, Any], now: int) -> int:
        return self.store.append([EventFact(kind, body)], now_us=now)[0].idx


CLOCKS = (("clk-a", "hq"), ("clk-b", "hq"), ("clk-c", "plant"))


def build(store: SQLStore, *, policies: bool = True) -> Site:
    """3 clocks (2 at hq, 1 at plant) with 3 old punches each (clk-a's second one by
    HELD_CREDENTIAL), an old rejection of clk-c, an access entry, approved 7-day policies for
    punches and rejections (unless ``policies`` is False) and one young punch of clk-a."""
    site = Site(store)
    clocks = {}
    for name, where in CLOCKS:
        c = Clock(name, site=where)
        clocks[name] = c
        site.event("device", c.enrolled_body(), OLD)
    for name, c in clocks.items():
        for s in (1, 2, 3):
            ts = OLD + s * 1_000_000
            cred = HELD_CREDENTIAL if (name, s) == ("clk-a", 2) else f"em4100:{s:010d}"
            [r] = store.append([c.fact(ts=ts, credential=cred, received_at=OLD)], now_us=OLD)
            site.punches.setdefault(name, []).append(r.idx)
            site.credentials[r.idx] = cred
            site.ts[r.idx] = ts
    [rej] = store.append([RejectionFact("bad-signature", "signature does not verify",
                                        punches_topic("clk-c"), b'{"raw":"em4100:0000009999"}',
                                        OLD, device="clk-c")], now_us=OLD)
    site.rejection = rej.idx
    site.access = site.event("access", {"who": "auditor", "what": "read"}, OLD)
    if policies:
        for record in ("punch", "rejection"):
            site.policies[record] = approve(site, f"{record}-7d", record=record)
    c = clocks["clk-a"]
    [y] = store.append([c.fact(ts=YOUNG, credential="em4100:0000000001", received_at=YOUNG)],
                       now_us=YOUNG)
    site.young = y.idx
    site.punches["clk-a"].append(y.idx)
    site.credentials[y.idx] = "em4100:0000000001"
    site.ts[y.idx] = YOUNG
    return site


def approve(ledger: Site, name: str, *, record: str = "punch", days: int = PERIOD_DAYS,
            now: int = OLD, **scope: Any) -> int:
    """Propose (alice) and approve (bob) a policy; returns the proposal idx."""
    body: dict[str, Any] = {"event": "proposed", "policy": name, "record": record,
                            "period_days": days, "scope": "all", "by": "alice", **scope}
    p = ledger.event("policy", body, now)
    ledger.event("policy", {"event": "approved", "proposal": p, "by": "bob"}, now)
    return p


def hold(ledger: Site, now: int = YOUNG, **criteria: Any) -> int:
    return ledger.event("hold", {"event": "placed", "hold": "smith-v-acme", "case": "2026-CV-1",
                               "reason": "litigation", "by": "carol", **criteria}, now)


def manifest_row(site: Site, idx: int) -> list[Any]:
    """[idx, device, site, ts] of a punch or the rejection, as a run lists it."""
    for name, idxs in site.punches.items():
        if idx in idxs:
            return [idx, name, dict(CLOCKS)[name], site.ts[idx]]
    assert idx == site.rejection
    return [idx, "clk-c", "plant", OLD]


def retention_body(site: Site, idxs: list[int], *, cites: dict[int, int] | None = None,
                   at: int = NOW) -> dict[str, Any]:
    """A retention body removing ``idxs`` that cites ``cites`` (policy idx -> cut-off;
    default: both policies at at - 7 days)."""
    if cites is None:
        cites = {p: at - PERIOD_DAYS * DAY for p in site.policies.values()}
    idxs = sorted(idxs)
    return {"policy": "test", "deleted": deleted_ranges(idxs), "count": len(idxs),
            "policies": [{"idx": p, "cutoff": c} for p, c in cites.items()],
            "removed": [manifest_row(site, i) for i in idxs]}


def bundle_verdict(store: SQLStore, directory: Path) -> tuple[int, str]:
    """Sign a checkpoint of the whole ledger, export the audit bundle, run timeclock-verify
    on it (in-process, its main): (exit status, what it printed)."""
    size, head = store.head()
    store.add_checkpoint(Checkpoint(log=LOG_KEY.key_id, size=size, head=head,
                                    at=NOW + DAY).sign(LOG_KEY))
    export_bundle(store, directory, [LOG_KEY.verify_key])
    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        rc = verify_cli.main([str(directory), "--collector-key", LOG_KEY.verify_key.b64,
                              "--json"])
    return rc, out.getvalue()


def first_failure(printed: str) -> dict[str, Any] | None:
    ff: dict[str, Any] | None = json.loads(printed)["first_failure"]
    return ff


# -- insider retention (issue 11, finding 6): tests/collector/test_attacks.py and the findings
# table (tests/e2e/test_insider_findings.py) run these cases. Anything that can append (the
# PostgreSQL app role included) used to be able to write a retention entry and delete punch
# bodies, and both verifiers accepted it. Now: through the store it is refused; written into
# the database anyway (the store's judgement bypassed, the guarding triggers disabled by a DB
# admin for the write and put back), both verifiers fail at that entry.

def _f6_no_policy(site: Site) -> dict[str, Any]:
    a = site.punches["clk-a"][0]
    return {"policy": "punches-6y", "deleted": [[a, a]], "count": 1}


def _f6_younger(site: Site) -> dict[str, Any]:
    return retention_body(site, [site.punches["clk-a"][0], site.young])


def _f6_under_hold(site: Site) -> dict[str, Any]:
    hold(site, site="plant")
    return retention_body(site, sorted(site.old))


@dataclass(frozen=True)
class F6Case:
    id: str
    make: Callable[[Site], dict[str, Any]]
    refused: str                # what the store says
    tamper: str                 # what both verifiers say at the entry


F6_CASES = [
    F6Case("f6-retention-citing-no-policy", _f6_no_policy, "must cite the approved policies",
           "cites no approved policy"),
    F6Case("f6-retention-younger-than-policy", _f6_younger, "younger than the cut-off",
           "younger than the cut-off"),
    F6Case("f6-retention-under-a-hold", _f6_under_hold, "keeps", "hold 'smith-v-acme'"),
]


def f6_refused_by_store(store: SQLStore, case: F6Case) -> str:
    """The store refuses the retention entry, records nothing and deletes no body; returns the
    refusal's message."""
    site = build(store)
    body = case.make(site)
    size = store.head()[0]
    with pytest.raises(LedgerError, match=f"retention refused: .*{case.refused}") as e:
        site.event("retention", body, NOW)
    assert store.head()[0] == size
    assert not [e for e in store.entries() if e.body is None]      # no body deleted
    return str(e.value)


def _pg_triggers(db: PgDatabase, action: str) -> None:
    with psycopg.connect(db.admin_dsn, autocommit=True) as conn:
        for table in ("bodies", "punches", "quarantine"):
            conn.execute(f"ALTER TABLE {table} {action} TRIGGER USER")


def f6_written_fails_both_verifiers(db: PgDatabase, bundle: Path,
                                    monkeypatch: pytest.MonkeyPatch, case: F6Case) -> int:
    """The retention entry written by the app role with the store's judgement bypassed and the
    guards disabled by the superuser (then put back): ``verify --full`` and
    ``timeclock-verify`` on a bundle both fail at that entry, check (5). Returns its idx."""
    store = open_store(db.app_dsn)
    try:
        site = build(store)
        body = case.make(site)
        _pg_triggers(db, "DISABLE")
        monkeypatch.setattr(retention_tables, "check_append", lambda *a, **k: None)
        idx = site.event("retention", body, NOW)       # the app role's own SQL, unjudged
        monkeypatch.undo()
        _pg_triggers(db, "ENABLE")                     # tracks covered
        live = verify_store(store, LOG_KEYS, full=True).report
        assert live.first_failure is not None
        assert (live.first_failure.idx, live.first_failure.check) == (idx, "fact")
        assert case.tamper in live.first_failure.message
        rc, printed = bundle_verdict(store, bundle)
        offline = first_failure(printed)
        assert rc == 1
        assert offline is not None
        assert (offline["idx"], offline["check"]) == (idx, "fact")
        assert case.tamper in offline["message"]
    finally:
        store.close()
    return idx
