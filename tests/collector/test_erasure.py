"""Erasure for one person by key destruction (DESIGN.md §8.6; issue 12 item 4), on both stores
(a real SQLite file, a real PostgreSQL database as the app role): one ``shred`` entry, the
person's data keys blanked, their bodies and projection rows gone; payroll and the proofs hold
nothing of them; ``verify --full``, the people projection check and ``timeclock-verify`` on a
fresh bundle pass; every inclusion and consistency proof still verifies; dual control and
legal holds refuse it.

Control: D15 (disposal logged, the chain still verifies, a hold blocks it).
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from collector import ErasureError, KeyDestroyedError
from collector.cli.main import main
from collector.ledger import KEK_ENV, open_store
from collector.ledger.audit import verify_store
from collector.ledger.base import EventFact
from collector.ledger.kek import create_file_kek, load_kek
from collector.ledger.sqlbase import PunchQuery, SQLStore
from collector.ledger.sqlite import SQLiteStore
from collector.people import directory
from collector.records import erasure
from collector.records.exports import export_bundle
from tests.collector.keyring_kit import (
    BADGE,
    LOG_KEY,
    NOW,
    STRANGER,
    checkpoint,
    forms,
    personal_store,
)
from wire import merkle, verify_cli

LATER = NOW + 10**6


def _erase(store: SQLStore, **kw: str) -> erasure.ErasureResult:
    args = {"employee": "E1001", "reason": "gdpr-17", "case": "DSR-7", "by": "alice",
            "approved_by": "bob", **kw}
    return erasure.erase(store, now_us=LATER, **args)


def _proofs_verify(store: SQLStore, old_size: int) -> None:
    size = store.tree_size()
    root = store.merkle_root(size)
    for se in store.entries():
        merkle.verify_inclusion(merkle.entry_leaf_hash(se.entry), se.entry.idx, size,
                                store.inclusion_proof(se.entry.idx, size), root)
    merkle.verify_consistency(old_size, size, store.merkle_root(old_size), root,
                              store.consistency_proof(old_size, size))


def test_d15_an_erasure_leaves_nothing_of_the_person_and_everything_verifies(
        store: SQLStore, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    ring, _ = personal_store(store, tmp_path)
    before = store.tree_size()
    mine = {k.key_id for k in ring.subject_keys("E1001")}
    # November and December 2025, and the directory's (the name in tc_employees)
    assert sorted(k.period for k in ring.subject_keys("E1001")) == [
        "2025-11", "2025-12", "directory"]
    assert store.query("SELECT COUNT(*) FROM punches WHERE credential = ?",
                       (store.blind_credential(BADGE),)) == [(2,)]
    res = _erase(store)
    assert set(res.keys) == mine
    # E1001's employee and badge entries (idx 2, 3) and punches (idx 4, 6); not E1000's
    # (idx 1) nor the stranger's punch (idx 5).
    assert res.entries == ((2, 4), (6, 6))
    assert res.purged_punches == 2
    shred = [se for se in store.entries() if se.entry.kind == "shred"]
    assert len(shred) == 1
    assert json.loads(shred[0].body or b"") == {
        "v": 1, "employee": "E1001", "keys": sorted(mine), "entries": [[2, 4], [6, 6]],
        "count": 4, "reason": "gdpr-17", "case": "DSR-7", "by": "alice",
        "approved_by": "bob"}
    # The keys are gone, in the table and in the cache.
    for k in ring.subject_keys("E1001"):
        assert (k.wrapped, k.destroyed_idx) == (b"", res.entry_idx)
        with pytest.raises(KeyDestroyedError):
            ring.key(k.key_id)
    # Payroll, the API's reads and the projections: nothing of E1001.
    assert [r.credential for r in store.punch_rows(PunchQuery())] == [STRANGER]
    tag = store.blind_credential(BADGE)
    assert store.query("SELECT COUNT(*) FROM punches WHERE credential IN (?, ?)",
                       (BADGE, tag)) == [(0,)]
    assert {se.entry.idx for se in store.entries() if se.body is None} == {2, 3, 4, 6}
    stored = b"".join(bytes(r[0]) for r in store.query("SELECT body FROM bodies"))
    assert [s for s in forms(BADGE, "Ada Lovelace") if s in stored] == []
    e = directory.employee(store, "E1001")
    assert e is not None
    assert (e.name, e.department) == (erasure.ERASED, erasure.ERASED)
    assert directory.employee(store, "E1000").name == "Grace Hopper"  # type: ignore[union-attr]
    assert directory.check_projection(store) == []
    # The chain, tree and proofs are unchanged by it; the auditor reports the shred.
    _proofs_verify(store, before)
    checkpoint(store, LATER)
    result = verify_store(store, {LOG_KEY.key_id: LOG_KEY.verify_key}, full=True)
    assert result.ok, result.report
    assert any(f.message.startswith("shred: 3 data key(s) of employee E1001 destroyed")
               and not f.tamper for f in result.report.findings)
    export_bundle(store, tmp_path / "bundle", [LOG_KEY.verify_key])
    bundle = b"".join(p.read_bytes() for p in (tmp_path / "bundle").iterdir() if p.is_file())
    assert [s for s in forms(BADGE, "Ada Lovelace") if s in bundle] == []
    assert STRANGER.encode() in bundle                  # what is not erased is the evidence
    assert verify_cli.main([str(tmp_path / "bundle"), "--collector-key",
                            LOG_KEY.verify_key.b64]) == 0
    assert "RESULT: OK" in capsys.readouterr().out
    # A second erasure has nothing left to destroy.
    with pytest.raises(ErasureError, match="no data keys left"):
        _erase(store)


def test_d15_erasure_needs_two_principals_and_refuses_a_held_person(
        store: SQLStore, tmp_path: Path) -> None:
    personal_store(store, tmp_path)
    size = store.head()[0]
    with pytest.raises(ErasureError, match="dual control: alice asked"):
        _erase(store, approved_by="alice")
    for criteria in ({"employee": "E1001"}, {"credential": BADGE}, {"device": "clock-1"}):
        hold = store.append([EventFact("hold", {"event": "placed", "hold": "smith-v-acme",
                                                "case": "2026-CV-1", "reason": "litigation",
                                                "by": "carol", **criteria})],
                            now_us=NOW)[0].idx
        with pytest.raises(ErasureError, match=rf"hold smith-v-acme \(idx {hold}, case "
                                               r"2026-CV-1\) keeps"):
            _erase(store)
        rq = store.append([EventFact("hold", {"event": "release-requested", "hold": hold,
                                              "reason": "settled", "by": "carol"})],
                          now_us=NOW)[0].idx
        store.append([EventFact("hold", {"event": "released", "request": rq, "by": "dave"})],
                     now_us=NOW)
    # Nothing was recorded or destroyed by the refusals; the hold entries are all there is.
    assert [se.entry.kind for se in store.entries(size)] == ["hold"] * 9
    assert _erase(store).count == 4


def test_d15_a_punch_after_the_erasure_is_recorded_under_a_new_key(
        store: SQLStore, tmp_path: Path) -> None:
    ring, c = personal_store(store, tmp_path)
    first = _erase(store)
    # E1001's badge punches again in an erased month: recorded, sealed under E1001+<shred>.
    (r,) = store.append([c.fact(credential=BADGE)], now_us=LATER)
    assert [p.credential for p in store.punch_rows(PunchQuery())] == [STRANGER, BADGE]
    subjects = {k.subject for k in ring.subject_keys("E1001") if not k.destroyed}
    assert subjects == {f"E1001+{first.entry_idx}"}
    assert _erase(store).entries == ((r.idx, r.idx),)   # a later erasure takes that too


def test_d15_erase_command_and_verify_full_on_an_encrypted_ledger(
        sqlite_store: SQLiteStore, sqlite_path: Path, tmp_path: Path,
        capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch) -> None:
    create_file_kek(tmp_path / "ledger.kek")
    spec = f"file:{tmp_path / 'ledger.kek'}"
    personal_store(sqlite_store, tmp_path, kek=load_kek(spec), origin=None)
    sqlite_store.close()
    monkeypatch.delenv(KEK_ENV, raising=False)
    db = str(sqlite_path)
    args = ["erase", "--store", db, "--employee", "E1001", "--reason", "gdpr-17", "--case",
            "DSR-7", "--by", "alice"]
    # Without the KEK the encrypted ledger is refused, naming the option; nothing recorded.
    assert main([*args, "--approved-by", "bob"]) == 2
    assert "set [ledger] kek" in capsys.readouterr().err
    assert main([*args, "--approved-by", "alice", "--kek", spec]) == 2
    assert "dual control" in capsys.readouterr().err
    assert main([*args, "--approved-by", "bob", "--kek", spec]) == 0
    out = json.loads(capsys.readouterr().out)
    assert (out["entries"], out["count"], len(out["keys"])) == ([[2, 4], [6, 6]], 4, 3)
    monkeypatch.setenv(KEK_ENV, spec)
    store = open_store(db)
    try:
        checkpoint(store, LATER)
    finally:
        store.close()
    assert main(["verify", "--store", db, "--log-key-pub", LOG_KEY.verify_key.b64, "--full",
                 "--state", str(tmp_path / "vs")]) == 0
    assert capsys.readouterr().out.startswith("OK: idx 0..")
