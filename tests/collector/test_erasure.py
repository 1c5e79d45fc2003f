"""Erasure for one person by key destruction (DESIGN.md §8.6; issue 12 item 4), on both stores
(a real SQLite file, a real PostgreSQL database as the app role): one ``shred`` entry, the
person's data keys blanked, their bodies and projection rows gone; payroll and the proofs hold
nothing of them; ``verify --full``, the people projection check and ``timeclock-verify`` on a
fresh bundle pass; every inclusion and consistency proof still verifies; dual control and
legal holds refuse it.

Control: D15 (disposal logged, the chain still verifies, a hold blocks it).
"""

from __future__ import annotations

import io
import json
import unicodedata
from pathlib import Path

import pytest

from collector import ErasureError, KeyDestroyedError
from collector.cli.main import main
from collector.ingest.punch_verifier import judge
from collector.ledger import KEK_ENV, open_store, people_tables, tables
from collector.ledger.audit import verify_store
from collector.ledger.base import EventFact, RejectionFact
from collector.ledger.registry import RegistrySnapshot
from collector.ledger.sqlbase import PunchQuery, SQLStore
from collector.ledger.sqlite import SQLiteStore
from collector.people import directory
from collector.records import erasure
from collector.records.corrections import Corrections
from collector.records.export_fields import FieldSet
from collector.records.exports import export_bundle, export_payroll
from tests.collector.keyring_kit import (
    BADGE,
    LOG_KEY,
    NOW,
    STRANGER,
    checkpoint,
    file_kek_store,
    forms,
    personal_store,
)
from tests.collector.ledger_kit import Clock
from wire import merkle, verify_cli
from wire.topics import punches as punches_topic

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


def test_d15_after_the_erasure_the_badge_is_nobodys(store: SQLStore, tmp_path: Path) -> None:
    """The erased person's badge periods no longer name the badge: a later punch of it is an
    unknown badge's, sealed under the badge's pseudonym subject, never under the person's."""
    ring, c = personal_store(store, tmp_path)
    _erase(store)
    store.append([c.fact(credential=BADGE)], now_us=LATER)
    assert [p.credential for p in store.punch_rows(PunchQuery())] == [STRANGER, BADGE]
    assert directory.holder_at(store, BADGE, NOW) == (None, "unknown")
    assert [k.subject for k in ring.subject_keys("E1001") if not k.destroyed] == []
    assert [k.destroyed for k in ring.subject_keys(ring.badge_subject(BADGE))] == [False]
    with pytest.raises(ErasureError, match="no data keys left"):
        _erase(store)


def _rejected(credential: str, device: str) -> RejectionFact:
    """A quarantined message: a signed punch of ``credential`` the collector refused."""
    raw = Clock(device).punch(credential=credential).to_bytes()
    return RejectionFact(reason="bad-signature", detail="seq 1: bad signature",
                         topic=f"timeclock/v1/{device}/punches", raw=raw, received_at=NOW,
                         device=device)


def _everything(store: SQLStore) -> bytes:
    """Every value of every table, and what the store opens of it: each body, each
    quarantined message, each badge credential and employee record (a keyed ledger seals
    them), as the API, exports and projections would read them."""
    if store.ph == "?":
        names = [str(r[0]) for r in store.query(
            "SELECT name FROM sqlite_master WHERE type = 'table'")]
    else:
        names = [str(r[0]) for r in store.query(
            "SELECT table_name FROM information_schema.tables WHERE table_schema = "
            "current_schema()")]
    out = [repr(store.query(f"SELECT * FROM {n}")).encode() for n in names]  # noqa: S608 - table names from the catalogue
    out += [se.body or b"" for se in store.entries()]
    out += [store.quarantined_raw(q.id) for q in store.quarantine(limit=1000)]
    out += [repr(directory.employee_dict(e, directory.badges_of(store, e.employee_id)))
            .encode() for e in people_tables.employees(store)]
    return b"\n".join(out)


def test_d15_an_erasure_leaves_no_badge_quarantined_message_or_correction_of_the_person(
        store: SQLStore, tmp_path: Path, request: pytest.FixtureRequest) -> None:
    """Issue 12 acceptance, byte-checked: after the erasure nothing any read returns holds
    E1001's badge, name or correction note — not the badge periods (their deterministic
    ciphertext), not a quarantined message of the badge, not the correction index — while
    the stranger's rejected message and correction stay; the ledger verifies; a hold that
    names only the quarantined message's device keeps the erasure from running."""
    if store.ph != "?":     # the corrections index (the API's tables) on PostgreSQL
        db = request.getfixturevalue("pg_ledger")
        tables.migrate_postgres(db.owner_dsn, db.app_role)
    ring, _ = personal_store(store, tmp_path)
    note = "Ada said she pressed in twice"
    store.append([_rejected(BADGE, "clock-9"), _rejected(STRANGER, "clock-8")], now_us=NOW)
    corr = Corrections(store)
    for seq, text in ((1, note), (2, "the stranger's")):
        c = corr.propose(device="clock-1", seq=seq, field="action", after="out",
                         reason="wrong-action", editor="ed", now_us=NOW, note=text)
        corr.decide(c.id, approve=True, approver="ann", now_us=NOW)
    assert len(corr.applied_complete()) == 2
    mine = next(se.entry.idx for se in store.entries() if se.entry.kind == "correction")
    secrets = forms(BADGE, "Ada Lovelace", note)
    before = _everything(store)
    assert [x for x in secrets if x in before] == secrets[::3]      # each one readable
    assert directory.holder_at(store, BADGE, NOW) == ("E1001", "assigned")
    # A hold on the quarantined message's clock alone keeps the erasure from running.
    hold = store.append([EventFact("hold", {"event": "placed", "hold": "q-case", "case": "C-9",
                                            "reason": "litigation", "by": "carol",
                                            "device": "clock-9"})], now_us=NOW)[0].idx
    with pytest.raises(ErasureError, match=r"hold q-case \(idx \d+, case C-9\) keeps the "
                                           r"quarantined message of entry 7"):
        _erase(store)
    rq = store.append([EventFact("hold", {"event": "release-requested", "hold": hold,
                                          "reason": "settled", "by": "carol"})], now_us=NOW)
    store.append([EventFact("hold", {"event": "released", "request": rq[0].idx,
                                     "by": "dave"})], now_us=NOW)
    # As in a fresh `erase` process: no key cached, the quarantine's unwrapped in the erasure
    ring.forget(str(r[0]) for r in store.query("SELECT key_id FROM tc_data_keys"))
    assert ring.cached == 0
    res = _erase(store)
    assert (res.purged_punches, res.purged_quarantine, res.erased_badges,
            res.deleted_corrections) == (2, 1, 1, 1)
    # idx 7 the rejection of E1001's badge; then the correction entry of E1001's punch
    assert res.entries == ((2, 4), (6, 7), (mine, mine))
    # What every read returns now: the stranger's, nothing of E1001.
    left = _everything(store)
    assert [x for x in (*secrets, b"0012345678") if x in left] == []
    assert STRANGER.encode() in left
    assert b"the stranger's" in left
    assert [p.credential for p in directory.badges_of(store, "E1001")] == ["(erased) 3"]
    assert directory.holder_at(store, BADGE, NOW) == (None, "unknown")
    assert [(c.seq, c.note) for c in corr.find()] == [(2, "the stranger's")]
    assert list(corr.applied_complete()) == [("clock-1", 2)]
    raws = [store.quarantined_raw(q.id) for q in store.quarantine()]
    assert [len(r) > 0 and STRANGER.encode() in r for r in raws] == [False, True]
    assert [q.detail for q in store.quarantine()] == ["", "seq 1: bad signature"]
    out = io.StringIO()
    export_payroll(store, out, fmt="csv", query=PunchQuery(), now_us=LATER,
                   corrections=corr.applied_complete(),
                   fields=FieldSet.choose("investigation"))
    assert [x for x in (*secrets, b"0012345678") if x in out.getvalue().encode()] == []
    assert STRANGER in out.getvalue()
    assert directory.check_projection(store) == []
    checkpoint(store, LATER)
    result = verify_store(store, {LOG_KEY.key_id: LOG_KEY.verify_key}, full=True)
    assert result.ok, result.report


def test_d15_erase_command_and_verify_full_on_an_encrypted_ledger(
        sqlite_store: SQLiteStore, sqlite_path: Path, tmp_path: Path,
        capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch) -> None:
    spec = file_kek_store(sqlite_store, tmp_path)
    sqlite_store.close()
    monkeypatch.delenv(KEK_ENV, raising=False)
    db = str(sqlite_path)
    args = ["erase", "--store", db, "--employee", "E1001", "--reason", "gdpr-17", "--case",
            "DSR-7", "--by", "alice"]
    # Without the KEK the encrypted ledger is refused, naming the option; nothing recorded.
    assert main([*args, "--approved-by", "bob"]) == 2
    assert "this ledger is encrypted at rest; give its KEK with --kek SPEC" in \
        capsys.readouterr().err
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


# Bytes no decoder reads (a reader's line noise, a truncated frame, a wrong protocol), each
# carrying something of a person: the quarantine keeps them whole, naming no badge.
UNDECODABLE = {
    "credential": b"\xff\xfe\x00 garbage em4100:0012345678 \x00\x02",
    "digits": b"\x02 0012345678\r\n\x03\xfa",           # RDM6300-style: the value alone
    "name": b"\x80{not json: Ada Lovelace pressed}\x9c",
    "stranger": b"\xff\xfe\x00 garbage em4100:0000000077 \x00\x02",      # nobody's badge
    "other person": b"\x80{not json: Grace Hopper pressed}\x9c",
}


def test_d15_an_erasure_purges_quarantined_bytes_that_never_decoded(
        sqlite_store: SQLiteStore, sqlite_path: Path, tmp_path: Path,
        monkeypatch: pytest.MonkeyPatch) -> None:
    """Issue 12 item 3: a quarantined message that never decoded names no badge; the erasure
    opens every quarantined message and purges those carrying E1001's badge, its digits or
    her name (their rejection entries' bodies go under the shred entry, as a retention run
    purges them), and keeps the stranger's and Grace Hopper's; nothing of
    her is left in what the store reads or in the database files; the ledger verifies."""
    spec = file_kek_store(sqlite_store, tmp_path)
    topic = punches_topic("clock-1")
    for raw in UNDECODABLE.values():        # the ingest verifier's own judgement of each
        (fact,) = judge(topic, raw, NOW, RegistrySnapshot.load(sqlite_store))
        assert isinstance(fact, RejectionFact)
        assert (fact.raw, fact.reason) == (raw, "malformed")
        sqlite_store.append([fact], now_us=NOW)
    rejections = [se.entry.idx for se in sqlite_store.entries() if se.entry.kind == "rejection"]
    assert len(rejections) == len(UNDECODABLE)
    secrets = [*forms(BADGE, "Ada Lovelace"), b"0012345678"]
    before = _everything(sqlite_store)
    assert [x for x in secrets if x in before] == [BADGE.encode(), b"Ada Lovelace",
                                                   b"0012345678"]
    sqlite_store.close()
    monkeypatch.delenv(KEK_ENV, raising=False)
    store = open_store(str(sqlite_path), kek=spec)     # a fresh process's keyring: no cache
    try:
        res = _erase(store)
        # The three messages of hers, by the idx of their rejection entries.
        assert res.purged_quarantine == 3
        # (idx 6 her December punch; the rejections follow it at 7..9: one range)
        assert rejections[:3] == [7, 8, 9]
        assert res.entries == ((2, 4), (6, 9))
        shred = next(se for se in store.entries() if se.entry.kind == "shred")
        assert shred.body is not None
        assert json.loads(shred.body)["count"] == 7            # 4 of hers + 3 quarantined
        left = _everything(store)
        assert [x for x in secrets if x in left] == []
        raws = {q.idx: store.quarantined_raw(q.id) for q in store.quarantine()}
        assert [raws[i] for i in rejections] == [b"", b"", b"", *list(UNDECODABLE.values())[3:]]
        store.query("PRAGMA wal_checkpoint(TRUNCATE)")
        store.query("VACUUM")          # what docs/operations.md tells the operator to run
        checkpoint(store, LATER)
        result = verify_store(store, {LOG_KEY.key_id: LOG_KEY.verify_key}, full=True)
        assert result.ok, result.report
    finally:
        store.close()
    files = b"".join(p.read_bytes() for p in tmp_path.iterdir()
                     if p.name.startswith(sqlite_path.name) and p.is_file())
    assert files
    assert [x for x in secrets if x in files] == []


@pytest.mark.parametrize(("raw", "hit"), [
    (b"\xff em4100:0012345678\x00", True),
    (b'{"credential":"em4100:0012345678"}', True),
    (b"\x020012345678\r\n", True),
    (b"ada: Ada Lovelace.", True),
    # the same credential or name written another way
    (b'{"credential":"EM4100:0012345678"}', True),           # upper case
    (b"em4100 : 0012345678", True),
    (b"\x02 0x0012345678\r\n", True),                        # a 0x prefix
    (b"\x02 0X0012345678\r\n", True),
    (b"badge 00:12:34:56:78 read", True),                     # separators
    (b"badge 0012-3456-78 read", True),
    (b'{"c":"em4100:\\u0030\\u003012345678"}', True),          # JSON escapes
    (b'{"n":"Ada\\u0020Lovelace"}', True),
    (b"ADA LOVELACE", True),                                  # case
    (b"ada \t lovelace", True),                               # other white space
    ("\uff21\uff44\uff41 Lovelace".encode(), True),          # full-width (NFKC)
    (b"\xc1da Lovelace", False),                              # another name (Latin-1 \xc1)
    # not hers
    (b"\xff em4100:00123456789 \xfe", False),      # a longer badge that starts with hers
    (b"\x02100123456780\r\n", False),            # her digits inside a longer number
    (b"\x02 0x00123456789\r\n", False),
    (b"Ada Lovelaceworth", False),
    (b"seq 2025 of 1234", False),
    (b"00:12:34:56:79", False),
])
def test_a_quarantined_message_is_hers_only_for_a_whole_token(raw: bytes, hit: bool) -> None:
    needles = erasure._needles({BADGE}, {"Ada Lovelace"})      # noqa: SLF001 - the matcher alone
    assert (erasure.carrier(needles, erasure._views(raw, "")) is not None) is hit  # noqa: SLF001


@pytest.mark.parametrize(("raw", "hit"), [
    ("Zoë Ångström".encode(), True),                              # NFC
    (unicodedata.normalize("NFD", "Zoë Ångström").encode(), True),  # NFD
    ("ZOË ÅNGSTRÖM".encode(), True),
    ("Zoë Ångström".encode("latin-1"), True),                     # not UTF-8: read as Latin-1
    (b'"Zo\\u00eb \\u00c5ngstr\\u00f6m"', True),
    (b"Zoe Angstrom", False),                             # another spelling: not found
])
def test_a_name_is_found_in_any_case_or_normalisation(raw: bytes, hit: bool) -> None:
    needles = erasure._needles({BADGE}, {unicodedata.normalize("NFD", "Zoë Ångström")})  # noqa: SLF001
    assert (erasure.carrier(needles, erasure._views(raw, "")) is not None) is hit  # noqa: SLF001
