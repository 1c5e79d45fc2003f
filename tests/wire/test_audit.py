"""Unit tests of the verification core (wire/audit.py), fed directly, as the live-store verify
of the collector feeds it."""

from __future__ import annotations

import re
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from tests.wire.bundle_kit import (
    COLLECTOR_KEY,
    DEVICE_B_KEY,
    DEVICE_KEY,
    DEVICE_KEY_V2,
    LedgerBuilder,
    make_punch,
    standard_ledger,
)
from wire import ZERO_HASH
from wire.audit import AuditReport, Check, Finding, KeyState, LedgerAuditor, _Findings
from wire.canonical import canonical
from wire.chain import check_device_chain
from wire.ledger import make_entry
from wire.punch import Punch, SignedPunch

LOG_KEYS = {COLLECTOR_KEY.key_id: COLLECTOR_KEY.verify_key}


def audit(b: LedgerBuilder, **kw: Any) -> AuditReport:
    start = kw.get("start_idx", 0)
    a = LedgerAuditor(LOG_KEYS, **kw)
    for cp in b.checkpoints:
        a.feed_checkpoint(cp)
    for entry, h, body in b.entries[start:]:
        a.feed(entry, h, body)
    return a.finish()


def tampers(r: AuditReport) -> list[tuple[int | None, str]]:
    return [(f.idx, f.check) for f in r.findings if f.tamper]


def test_standard_ledger_is_clean() -> None:
    r = audit(standard_ledger())
    # its retention entry (idx 14) is from before policies: a finding, not tampering (D15)
    assert (r.ok, [(f.idx, f.check, f.tamper) for f in r.findings], r.entries, r.punches,
            r.devices, r.checkpoints) == (True, [(14, "fact", False)], 18, 10, 2, 4)
    assert "from before retention policies" in r.findings[0].message
    assert r.first_failure is None


def test_step_numbers_match_the_docs() -> None:
    assert [(c.number, c.value) for c in Check] == [
        (0, "keys"), (1, "entry"), (2, "entry-hash"), (3, "prev"), (4, "body"), (5, "fact"),
        (6, "device-chain"), (7, "checkpoint"), (8, "checkpoint-v2"),
        (9, "trusted-checkpoint"), (10, "witness"), (11, "coverage")]   # v2: issue 10


def enrolled(*, seed_punches: int = 0) -> LedgerBuilder:
    b = LedgerBuilder()
    b.enrol("clock-0017", DEVICE_KEY)
    for _ in range(seed_punches):
        b.punch(b.signed("clock-0017", DEVICE_KEY))
    return b


def test_rotation_old_key_only_below_from_seq() -> None:
    b = enrolled(seed_punches=2)
    b.rotate("clock-0017", DEVICE_KEY_V2, from_seq=3)
    b.punch(b.signed("clock-0017", DEVICE_KEY))              # seq 3 under the old key
    r = audit(b)
    assert tampers(r) == [(4, "fact")]
    assert "valid for seq 1..2, not seq 3" in r.findings[0].message


def test_enrolled_from_seq_and_revoked_single_key() -> None:
    b = enrolled(seed_punches=1)
    b.append("device", {"event": "revoked", "device": "clock-0017", "reason": "leaked",
                        "key": DEVICE_KEY.key_id})
    b.append("device", {"event": "enrolled", "device": "clock-0017", "site": "hq",
                        "key": DEVICE_KEY_V2.key_id,
                        "signing_key": DEVICE_KEY_V2.verify_key.b64, "from_seq": 2})
    b.punch(b.signed("clock-0017", DEVICE_KEY_V2))           # seq 2: fine
    b.punch(b.signed("clock-0017", DEVICE_KEY))              # seq 3 under the revoked key
    r = audit(b)
    assert tampers(r) == [(5, "fact")]


@pytest.mark.parametrize(("body", "message"), [
    ({"event": "enrolled", "device": "clock-0018", "site": "hq", "key": DEVICE_KEY.key_id,
      "signing_key": DEVICE_KEY.verify_key.b64, "x": 1}, "already registered for clock-0017"),
    ({"event": "enrolled", "device": "clock-0017", "site": "hq", "key": "0" * 16,
      "signing_key": DEVICE_KEY.verify_key.b64}, "is not the key id of signing_key"),
    ({"event": "enrolled", "device": "Clock_17", "site": "hq", "key": DEVICE_KEY.key_id,
      "signing_key": DEVICE_KEY.verify_key.b64}, "device"),
    ({"event": "rotated", "device": "clock-0099", "key": DEVICE_KEY.key_id,
      "signing_key": DEVICE_KEY.verify_key.b64, "from_seq": 2}, "never enrolled"),
    ({"event": "revoked", "device": "clock-0099", "reason": "x"}, "never enrolled"),
    ({"event": "revoked", "device": "clock-0017"}, "missing field"),
    ({"event": "rotated", "device": "clock-0017", "key": DEVICE_KEY.key_id,
      "signing_key": DEVICE_KEY.verify_key.b64, "from_seq": 2}, "already registered"),
    ({"event": "renamed", "device": "clock-0017"}, "is not one of"),
])
def test_bad_device_bodies(body: dict[str, Any], message: str) -> None:
    b = enrolled()
    b.append("device", body)
    r = audit(b)
    assert tampers(r) == [(1, "fact")]
    assert re.search(message, r.findings[0].message)


def test_rejection_body_fields() -> None:
    b = LedgerBuilder()
    good = {"reason": "malformed", "topic": "t", "raw_sha256": "a" * 64, "received_at": 1}
    b.append("rejection", good)
    b.append("rejection", {**good, "detail": "x", "device": None, "note": "informational"})
    b.append("rejection", {**good, "raw_sha256": "xyz"})
    b.append("rejection", {k: v for k, v in good.items() if k != "topic"})
    r = audit(b)
    assert tampers(r) == [(2, "fact"), (3, "fact")]


def test_retention_count_cannot_exceed_ranges() -> None:
    b = enrolled(seed_punches=1)
    b.append("retention", {"policy": "p", "deleted": [[1, 1]], "count": 2})
    assert tampers(audit(b)) == [(2, "fact")]


def test_retention_deleting_punch_bodies_mentions_it_in_gaps() -> None:
    b = enrolled(seed_punches=3)
    b.append("retention", {"policy": "6y", "deleted": [[1, 1]], "count": 1})
    b.delete_bodies([1])
    r = audit(b)
    assert r.ok
    # (4: the retention entry is from before policies, a finding: D15)
    assert [(f.idx, f.tamper) for f in r.findings] == [(2, False), (4, False)]
    assert "seq 1 missing before seq 2 (or among the 1 punch bodies retention deleted)" \
        in r.findings[0].message


def test_live_store_bytes_must_be_canonical() -> None:
    raw = b'{"principal": "x"}'
    entry = make_entry(idx=0, kind="access", at=1, body=raw, prev=ZERO_HASH)
    a = LedgerAuditor(LOG_KEYS)
    a.feed(entry, entry.hash(), raw)
    r = a.finish()
    assert tampers(r) == [(0, "body")]
    assert "not canonical" in r.findings[0].message


def test_resume_from_trusted_checkpoint() -> None:
    b = standard_ledger()
    start = 10
    punches: dict[tuple[str, int], str] = {}
    kinds: dict[int, str] = {}
    for entry, _, body in b.entries[:start]:
        kinds[entry.idx] = entry.kind
        if entry.kind == "punch" and body is not None:
            p = SignedPunch.from_bytes(body).punch
            punches[(p.device, p.seq)] = p.hash()
    prior_keys = [
        KeyState("clock-0017", DEVICE_KEY.key_id, DEVICE_KEY.verify_key, until_seq=4),
        KeyState("clock-0017", DEVICE_KEY_V2.key_id, DEVICE_KEY_V2.verify_key, from_seq=4),
        KeyState("clock-0042", DEVICE_B_KEY.key_id, DEVICE_B_KEY.verify_key)]
    kw: dict[str, Any] = {"start_idx": start, "start_head": b.entries[start - 1][1],
                          "prior_keys": prior_keys, "prior_entry_kind": kinds.get,
                          "prior_punch_hash": lambda d, s: punches.get((d, s))}
    r = audit(b, **kw)
    assert (r.ok, [f.idx for f in r.findings], r.entries, r.size) == (True, [14], 8, 18)
    # a punch recorded before the resume point, replayed after it
    replay = b.entries[5][2]
    assert replay is not None
    b.punch(SignedPunch.from_bytes(replay))
    r = audit(b, **kw)
    assert tampers(r) == [(18, "device-chain")]


def test_resume_head_must_match_checkpoint() -> None:
    b = standard_ledger()
    r = audit(b, start_idx=10, start_head="ab" * 32,
              prior_keys=[KeyState("clock-0042", DEVICE_B_KEY.key_id, DEVICE_B_KEY.verify_key),
                          KeyState("clock-0017", DEVICE_KEY_V2.key_id,
                                   DEVICE_KEY_V2.verify_key, from_seq=4)])
    assert (9, "checkpoint") in tampers(r)
    assert (10, "prev") in tampers(r)


def test_checkpoint_fed_after_its_entries_is_a_usage_error() -> None:
    b = standard_ledger()
    a = LedgerAuditor(LOG_KEYS)
    for entry, h, body in b.entries:
        a.feed(entry, h, body)
    a.feed_checkpoint(b.checkpoints[-1])           # the current head: still checkable
    with pytest.raises(ValueError, match="feed checkpoints first"):
        a.feed_checkpoint(b.checkpoints[1])
    assert a.finish().ok
    with pytest.raises(ValueError, match="the audit is finished"):
        a.feed(*b.entries[0])


def test_findings_keep_the_lowest_idx_when_capped() -> None:
    sink = _Findings(2)
    for idx in (5, 3, 9, 1, None):
        sink.add(Finding(idx, "body", "x", True))
    assert [f.idx for f in sink.sorted()] == [1, 3]
    assert sink.omitted == 3


def test_key_state_validity() -> None:
    k = KeyState("d", "k", DEVICE_KEY.verify_key, from_seq=3, until_seq=6, revoked_at_idx=10)
    assert k.invalid_for(3, 5) is None
    assert k.invalid_for(5, 10) is None
    assert "valid for seq 3..5, not seq 6" in (k.invalid_for(6, 5) or "")
    assert "revoked at idx 10" in (k.invalid_for(4, 11) or "")


# -- device chains: the incremental tracker agrees with wire.chain on any arrival order -----

@st.composite
def arrivals(draw: st.DrawFn) -> list[tuple[int, bool]]:
    """(seq, forked) in arrival order: some seqs missing, some repeated, some forked."""
    n = draw(st.integers(1, 12))
    seqs = [s for s in range(1, n + 1) if draw(st.booleans()) or s == n]
    items = [(s, draw(st.integers(0, 5)) == 0) for s in seqs]
    items += [(s, f) for s, f in draw(st.lists(st.sampled_from(items), max_size=3))]
    return draw(st.permutations(items))


def _punches(order: list[tuple[int, bool]]) -> list[Punch]:
    honest: dict[int, Punch] = {}
    prev = ZERO_HASH
    for s in range(1, max(s for s, _ in order) + 1):
        honest[s] = Punch(device="clock-0017", seq=s, prev=prev, ts=s, clock="synced",
                          boot="6b2f1e0c-3c4d-4e8a-9f1a-2b3c4d5e6f70", mono=s, reader="front",
                          credential="em4100:1", action="in", key=DEVICE_KEY.key_id)
        prev = honest[s].hash()
    out = []
    for s, forked in order:
        p = honest[s]
        if forked and s > 1:
            p = Punch.from_dict({**p.to_dict(), "prev": "f" * 64})
        out.append(p)
    return out


@settings(max_examples=60, deadline=None)
@given(arrivals())
def test_chain_tracker_agrees_with_wire_chain(order: list[tuple[int, bool]]) -> None:
    punches = _punches(order)
    expected = check_device_chain("clock-0017", punches)
    b = enrolled()
    for p in punches:
        b.punch(p.sign(DEVICE_KEY))
    r = audit(b)
    chain = [f for f in r.findings if f.check == "device-chain"]
    dups = sorted(int(m.group(1)) for f in chain
                  if (m := re.search(r"#(\d+) is recorded more than once", f.message)))
    broken = set()
    for f in chain:
        if m := re.search(r"#(\d+): prev does not match", f.message):
            broken.add(int(m.group(1)))
        if m := re.search(r"#\d+: seq (\d+) \(idx \d+\) does not link", f.message):
            broken.add(int(m.group(1)))
    gaps = []
    for f in chain:
        if m := re.search(r"seqs? (\d+)(?:\.\.(\d+))? missing", f.message):
            gaps.append((int(m.group(1)), int(m.group(2) or m.group(1))))
    assert dups == expected.duplicates
    assert broken == set(expected.breaks)
    assert sorted(gaps) == expected.gaps
    assert all(f.tamper == (f.message.find("missing") < 0) for f in chain)


def test_punch_body_must_be_the_signed_punch() -> None:
    b = enrolled()
    sp = make_punch("clock-0017", DEVICE_KEY, 1, ZERO_HASH, ts=1)
    b.append("punch", canonical({"punch": sp.punch.to_dict(), "sig": sp.sig, "x": 1}))
    r = audit(b)
    assert tampers(r) == [(1, "fact")]
    assert "unknown field" in r.findings[0].message


def test_missing_and_undecodable_entries_under_checkpoints() -> None:
    b = standard_ledger()
    a = LedgerAuditor(LOG_KEYS)
    for cp in b.checkpoints:
        a.feed_checkpoint(cp)
    for entry, h, body in b.entries:
        if entry.idx == 9:          # the entry checkpoint size 10 covers is gone
            continue
        if entry.idx == 14:         # the entry checkpoint size 15 covers does not decode
            a.feed_malformed("line 15: not JSON")
            continue
        a.feed(entry, h, body)
    r = a.finish()
    # idx 14 was the retention entry: without it the bodies of 8 and 11 are unaccounted for
    # idx 9 was the key rotation: the punches of clock-0017 at 10 and 15 lack their key
    assert tampers(r) == [(8, "body"), (9, "entry"), (9, "checkpoint"), (10, "fact"),
                          (11, "body"), (14, "entry"), (15, "fact")]
    assert "covers entry 9, which is not in the ledger" in r.findings[2].message


def test_swapped_entries_name_their_positions() -> None:
    b = standard_ledger()
    entries = list(b.entries)
    entries[6], entries[7] = entries[7], entries[6]
    a = LedgerAuditor(LOG_KEYS)
    for entry, h, body in entries:
        a.feed(entry, h, body)
    r = a.finish()
    assert [(f.idx, f.check) for f in r.findings if f.check == "entry"] == [
        (6, "entry"), (7, "entry")]
    assert "position 7 holds idx 6, expected 8" in r.findings[1].message
