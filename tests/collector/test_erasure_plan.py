"""``timeclock-collector erase --plan`` (issue 12; control D15): the erasure run in its
transaction and rolled back. On both stores: the plan's figures are the run's that follows
it; after the plan the ledger is what it was — a full logical dump (SQLite ``iterdump``, a
plain ``pg_dump``: every table's rows, sequences included), the head and tree size, every
body, quarantined message and directory record as the store opens them with the same
keyring (its cache included), ``verify --full``; a hold or dual control refuses the plan with
the run's own message. Through the CLI in a subprocess: exit codes, the JSON, stderr, and a
ledger that needs ``migrate`` refused by the plan as by the run.
"""

from __future__ import annotations

import json
import os
import re
import sqlite3
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from collector import ErasureError
from collector.ledger import KEK_ENV, open_store, tables
from collector.ledger.audit import verify_store
from collector.ledger.base import EventFact
from collector.ledger.sqlbase import PunchQuery, SQLStore
from collector.ledger.sqlite import SQLiteStore
from collector.records import erasure
from collector.records.corrections import Corrections
from tests.collector.keyring_kit import (
    BADGE,
    LOG_KEY,
    NOW,
    STRANGER,
    checkpoint,
    file_kek_store,
    personal_store,
)
from tests.collector.ledger_kit import sqlite_exec
from tests.collector.test_erasure import _rejected
from tests.collector.test_erasure_quarantine import CURRENT, OLDER, _quarantine, _readable
from tests.fixtures.postgres import PG_BIN
from wire.sealed import save_seal_key

LATER = NOW + 10**6
REPO = Path(__file__).resolve().parents[2]
ARGS = {"employee": "E1001", "reason": "gdpr-17", "case": "DSR-7", "by": "alice",
        "approved_by": "bob"}


def _erase(store: SQLStore, *, plan: bool, **kw: str) -> erasure.ErasureResult:
    return erasure.erase(store, now_us=LATER, seal_keys=[CURRENT, OLDER], plan=plan,
                         **{**ARGS, **kw})


def _dump(store: SQLStore, request: pytest.FixtureRequest) -> bytes:
    """Every table's schema and rows, sequences included, from another connection."""
    if store.ph == "?":
        conn = sqlite3.connect(request.getfixturevalue("sqlite_path"))
        try:
            return "\n".join(conn.iterdump()).encode()
        finally:
            conn.close()
    owner = request.getfixturevalue("pg_ledger").owner_dsn
    dump = subprocess.run([str(PG_BIN / "pg_dump"), "--format=plain", owner],
                          capture_output=True, check=True, timeout=120).stdout
    # (pg_dump ≥ 15.14 brackets its script with \restrict KEY, a random key per dump)
    return b"\n".join(ln for ln in dump.split(b"\n")
                      if not ln.startswith((b"\\restrict ", b"\\unrestrict ")))


def _ledger(store: SQLStore, tmp_path: Path, request: pytest.FixtureRequest) -> None:
    """The keyring kit's ledger, the quarantine kit's messages (one nobody can open), a
    rejection of E1001's badge on another clock, and a correction of her punch."""
    if store.ph != "?":     # the corrections index (the API's tables) on PostgreSQL
        db = request.getfixturevalue("pg_ledger")
        tables.migrate_postgres(db.owner_dsn, db.app_role)
    personal_store(store, tmp_path)
    _quarantine(store)
    store.append([_rejected(BADGE, "clock-9")], now_us=NOW)
    corr = Corrections(store)
    c = corr.propose(device="clock-1", seq=1, field="action", after="out",
                     reason="wrong-action", editor="ed", now_us=NOW, note="pressed twice")
    corr.decide(c.id, approve=True, approver="ann", now_us=NOW)
    checkpoint(store, NOW)


def _state(store: SQLStore, request: pytest.FixtureRequest) -> tuple[Any, ...]:
    return (_dump(store, request), store.head(), store.tree_size(), _readable(store))


def _figures(res: erasure.ErasureResult) -> dict[str, Any]:
    return {k: v for k, v in res.to_dict().items() if k not in ("entry", "plan")}


def test_d15_a_plan_changes_nothing_and_the_run_after_it_does_what_it_said(
        store: SQLStore, tmp_path: Path, request: pytest.FixtureRequest) -> None:
    _ledger(store, tmp_path, request)
    ring = store.sealer.ring if store.sealer is not None else None
    assert ring is not None
    before = _state(store, request)
    plan = _erase(store, plan=True)
    assert plan.entry_idx is None
    out = plan.to_dict()
    assert out["plan"] is True
    assert "entry" not in out
    # What it says it would do: her 3 keys, her entries, 7 quarantined messages of hers
    # (one on clock-9), the unopenable one kept, her badge period and her correction.
    assert len(plan.keys) == 3
    assert (plan.purged_punches, plan.purged_quarantine, plan.erased_badges,
            plan.deleted_corrections) == (2, 8, 1, 1)
    assert len(plan.quarantine_entries) == plan.purged_quarantine
    covered = {i for a, b in plan.entries for i in range(a, b + 1)}
    assert set(plan.quarantine_entries) <= covered
    assert [i for i, _ in plan.unjudged] != []
    assert not covered & {i for i, _ in plan.unjudged}
    # … and nothing of it happened: same rows, head, tree, readable bodies and messages.
    assert _state(store, request) == before
    for k in ring.subject_keys("E1001"):
        assert (k.destroyed_idx, len(k.wrapped) > 0) == (None, True)
        assert len(ring.key(k.key_id)) == 32                  # the key still opens
    assert [r.credential for r in store.punch_rows(PunchQuery())] == [BADGE, STRANGER, BADGE]
    assert all(se.body is not None for se in store.entries())
    result = verify_store(store, {LOG_KEY.key_id: LOG_KEY.verify_key}, full=True)
    assert result.ok, result.report
    assert not [f for f in result.report.findings if "shred" in f.message]
    # A second plan says the same; the run then does exactly what the plan said.
    assert _figures(_erase(store, plan=True)) == _figures(plan)
    run = _erase(store, plan=False)
    assert run.entry_idx == before[1][0]           # the next idx: the plan took none
    assert run.to_dict()["plan"] is False
    assert _figures(run) == _figures(plan)
    assert _state(store, request)[0] != before[0]   # (the dump does see a change)
    with pytest.raises(ErasureError, match="no data keys left"):
        _erase(store, plan=True)


HOLDS = {"employee": {"employee": "E1001"}, "credential": {"credential": BADGE},
         "device of a quarantined message": {"device": "clock-9"}}


@pytest.mark.parametrize("held", sorted(HOLDS))
def test_d15_a_hold_refuses_the_plan_with_the_runs_message(
        held: str, store: SQLStore, tmp_path: Path, request: pytest.FixtureRequest) -> None:
    _ledger(store, tmp_path, request)
    hold = store.append([EventFact("hold", {"event": "placed", "hold": "smith-v-acme",
                                            "case": "2026-CV-1", "reason": "litigation",
                                            "by": "carol", **HOLDS[held]})], now_us=NOW)[0].idx
    before = _state(store, request)
    messages = []
    for plan in (True, False):
        with pytest.raises(ErasureError, match=rf"erasure refused: hold smith-v-acme \(idx "
                                               rf"{hold}, case 2026-CV-1\) keeps") as e:
            _erase(store, plan=plan)
        messages.append(str(e.value))
    assert messages[0] == messages[1]
    with pytest.raises(ErasureError, match="dual control") as plan_e:
        _erase(store, plan=True, approved_by="alice")
    with pytest.raises(ErasureError, match="dual control") as run_e:
        _erase(store, plan=False, approved_by="alice")
    assert str(plan_e.value) == str(run_e.value)
    assert _state(store, request) == before


# -- the command, in a subprocess --------------------------------------------------------------

def _cli(*args: str) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if k != KEK_ENV}
    env["PYTHONPATH"] = str(REPO) + (os.pathsep + env["PYTHONPATH"]
                                     if env.get("PYTHONPATH") else "")
    return subprocess.run([sys.executable, "-m", "collector.cli.main", "erase", *args],
                          capture_output=True, text=True, env=env, cwd=REPO, timeout=120,
                          check=False)


@pytest.fixture
def ledger(tmp_path: Path, sqlite_store: SQLiteStore, sqlite_path: Path
           ) -> tuple[list[str], str]:
    """A keyed SQLite ledger (the kits' people, punches and quarantine) closed, with its
    KEK in a file, the seal keys saved; the erase arguments and the KEK spec."""
    spec = file_kek_store(sqlite_store, tmp_path)
    _quarantine(sqlite_store)
    sqlite_store.close()
    for name, key in (("seal.key", CURRENT), ("seal-2025.key", OLDER)):
        save_seal_key(tmp_path / name, key)
    return ["--store", str(sqlite_path), "--kek", spec, "--employee", "E1001", "--reason",
            "gdpr-17", "--case", "DSR-7", "--by", "alice", "--seal-key",
            str(tmp_path / "seal.key"), "--seal-key", str(tmp_path / "seal-2025.key")], spec


def _sqlite_dump(db: Path) -> str:
    conn = sqlite3.connect(db)
    try:
        return "\n".join(conn.iterdump())
    finally:
        conn.close()


@pytest.mark.subprocess
def test_d15_erase_plan_command_prints_the_plan_then_the_run_matches_it(
        ledger: tuple[list[str], str], sqlite_path: Path) -> None:
    args, spec = ledger
    r = _cli("--help")
    assert r.returncode == 0, r.stderr
    for text in ("--plan", "records and changes nothing", '"plan": true', "purged_quarantine"):
        assert text in r.stdout, text
    before = _sqlite_dump(sqlite_path)
    r = _cli(*args, "--approved-by", "bob", "--plan")
    assert r.returncode == 0, r.stderr
    plan = json.loads(r.stdout)
    assert (plan["plan"], "entry" in plan, len(plan["keys"])) == (True, False, 3)
    assert plan["purged"] == {"punches": 2, "quarantine": 7, "badge_periods": 1,
                              "corrections": 0}
    assert len(plan["purged_quarantine"]) == 7
    assert [u["entry"] for u in plan["unjudged_quarantine"]] != []
    lines = r.stderr.splitlines()
    assert [ln.startswith("would keep the quarantined message of entry ") for ln in lines] \
        == [True] * len(plan["unjudged_quarantine"]) + [False]
    assert lines[-1] == (
        f"plan, nothing recorded or changed: the erasure of employee E1001 would destroy 3 "
        f"data key(s), remove the bodies of {plan['count']} entries "
        f"({', '.join(f'{a}..{b}' if a != b else str(a) for a, b in plan['entries'])}), "
        f"purge 2 punch(es), 1 badge period(s), 0 correction(s) and 7 quarantined "
        f"message(s) (rejection entries {', '.join(map(str, plan['purged_quarantine']))}), "
        f"and keep 1 quarantined message(s) it cannot judge; run the same command without "
        f"--plan to erase")
    for ch in (BADGE, "0012345678", "Lovelace"):      # figures and idx, never her data
        assert ch not in r.stdout + r.stderr
    assert _sqlite_dump(sqlite_path) == before
    # Refused as the run is refused: dual control, then a hold; the same line, exit 2.
    refusals = [_cli(*args, "--approved-by", "alice", *p) for p in (["--plan"], [])]
    assert [x.returncode for x in refusals] == [2, 2]
    assert refusals[0].stderr == refusals[1].stderr != ""
    assert "dual control" in refusals[0].stderr
    store = open_store(str(sqlite_path), kek=spec)
    try:
        hold = store.append([EventFact("hold", {
            "event": "placed", "hold": "q-case", "case": "C-9", "reason": "litigation",
            "by": "carol", "employee": "E1001"})], now_us=NOW)[0].idx
    finally:
        store.close()
    held = _sqlite_dump(sqlite_path)
    refusals = [_cli(*args, "--approved-by", "bob", *p) for p in (["--plan"], [])]
    assert [(x.returncode, x.stdout) for x in refusals] == [(2, ""), (2, "")]
    assert refusals[0].stderr == refusals[1].stderr
    assert re.fullmatch(rf"timeclock-collector: error: erasure refused: hold q-case \(idx "
                        rf"{hold}, case C-9\) keeps [^\n]+; release the hold first "
                        r"\(`timeclock-collector retention hold release`\)\n",
                        refusals[0].stderr), refusals[0].stderr
    assert _sqlite_dump(sqlite_path) == held
    store = open_store(str(sqlite_path), kek=spec)
    try:
        rq = store.append([EventFact("hold", {"event": "release-requested", "hold": hold,
                                              "reason": "settled", "by": "carol"})],
                          now_us=NOW)[0].idx
        store.append([EventFact("hold", {"event": "released", "request": rq, "by": "dave"})],
                     now_us=NOW)
    finally:
        store.close()
    r = _cli(*args, "--approved-by", "bob", "--plan")
    assert r.returncode == 0, r.stderr
    plan = json.loads(r.stdout)
    r = _cli(*args, "--approved-by", "bob")
    assert r.returncode == 0, r.stderr
    run = json.loads(r.stdout)
    assert (run["plan"], isinstance(run["entry"], int)) == (False, True)
    assert {k: v for k, v in run.items() if k not in ("entry", "plan")} == \
        {k: v for k, v in plan.items() if k != "plan"}
    assert not r.stderr.startswith("plan")


@pytest.mark.subprocess
def test_d15_erase_plan_on_a_ledger_that_needs_migrate_is_refused_as_the_run_is(
        ledger: tuple[list[str], str], sqlite_path: Path) -> None:
    args, _ = ledger
    sqlite_exec(sqlite_path, "DROP TRIGGER tc_badges_update")
    before = _sqlite_dump(sqlite_path)
    refusals = [_cli(*args, "--approved-by", "bob", *p) for p in (["--plan"], [])]
    assert [(x.returncode, x.stdout) for x in refusals] == [(2, ""), (2, "")]
    assert refusals[0].stderr == refusals[1].stderr
    assert "run `timeclock-collector migrate --store" in refusals[0].stderr
    assert len(refusals[0].stderr.splitlines()) == 1
    assert _sqlite_dump(sqlite_path) == before
