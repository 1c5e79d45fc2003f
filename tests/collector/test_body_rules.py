"""One rule for ledger bodies: what the store refuses on append, the auditor reports, alike.

Each bad body is offered to a real SQLite store (``append`` must refuse it, with the error
type callers rely on, and record nothing) and, as the next entry of that very ledger, to the
auditor (``wire.audit``, the core of ``timeclock-verify`` and ``verify``), which must report
exactly one tampering finding at that idx with the store's message, word for word.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from collector import LedgerError, RegistryError
from collector.ledger import open_store
from collector.ledger.audit import verify_store
from collector.ledger.base import EventFact, Outcome
from collector.ledger.sqlbase import SQLStore
from tests.collector.ledger_kit import T0, Clock, seeded_key
from wire.audit import AuditReport, LedgerAuditor
from wire.canonical import canonical
from wire.keys import SigningKey
from wire.ledger import make_entry
from wire.rotation import RotationRequest, SignedRotationRequest

NEW = seeded_key("new key")
CLOCK = Clock("clock-1").key


def _enrolled(**over: Any) -> dict[str, Any]:
    return {"event": "enrolled", "device": "clock-2", "site": "hq", "key": NEW.key_id,
            "signing_key": NEW.verify_key.b64, **over}


def _request(signer: SigningKey) -> dict[str, Any]:
    """clock-1's rotation request to NEW from seq 4 (wire.rotation), signed by ``signer``."""
    req = RotationRequest("clock-1", CLOCK.key_id, NEW.key_id, NEW.verify_key, 4, T0)
    return SignedRotationRequest(req, signer.sign(req.signed_message())).to_dict()


def _rotated(**over: Any) -> dict[str, Any]:
    return {"event": "rotated", "device": "clock-1", "key": NEW.key_id,
            "signing_key": NEW.verify_key.b64, "from_seq": 4, "request": _request(CLOCK),
            **over}


def _without(body: dict[str, Any], key: str) -> dict[str, Any]:
    return {k: v for k, v in body.items() if k != key}


def _noncanonical_b64(key: SigningKey) -> str:
    """The same 32 bytes in base64 whose unused low bits are not zero."""
    b64 = key.verify_key.b64
    alphabet = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/"
    last = alphabet.index(b64[-2])
    return b64[:-2] + alphabet[last | 1 if last % 2 == 0 else last & ~1] + "="


# (case, kind, body, store error, the message both give)
# The ledger below has idx 0 (clock-1 enrolled) and 1..3 (its punches): a bad body is idx 4.
BAD: list[tuple[str, str, dict[str, Any], type[Exception], str]] = [
    ("unknown event", "device", {"event": "exploded", "device": "clock-1"}, RegistryError,
     "device body: event: 'exploded' is not one of ['enrolled', 'reenrol-requested', "
     "'reenrolled', 'revoked', 'rotated']"),
    ("device id", "device", _enrolled(device="Clock_2"), RegistryError,
     "device body: device: 'Clock_2' does not match"),
    ("key id of another key", "device", _enrolled(key=CLOCK.key_id), RegistryError,
     f"device body: key {CLOCK.key_id} is not the key id of signing_key ({NEW.key_id})"),
    ("enrolled without site", "device", _without(_enrolled(), "site"), RegistryError,
     "device body: enrolled device body: missing field(s) site"),
    ("enrolled from_seq 0", "device", _enrolled(from_seq=0), RegistryError,
     "device body: from_seq: must be ≥ 1, got 0"),
    ("signing key not canonical base64", "device",
     _enrolled(signing_key=_noncanonical_b64(NEW)), RegistryError,
     "device body: signing_key: base64 is not in canonical form"),
    ("rotated without from_seq", "device", _without(_rotated(), "from_seq"), RegistryError,
     "device body: rotated device body: missing field(s) from_seq"),
    ("rotated from_seq true", "device", _rotated(from_seq=True), RegistryError,
     "device body: from_seq: expected an integer"),
    ("rotated with a forged request", "device", _rotated(request=_request(NEW)), RegistryError,
     f"device body: the rotation request is not signed by clock-1's current key "
     f"{CLOCK.key_id}"),
    ("revoked without reason", "device", {"event": "revoked", "device": "clock-1"},
     RegistryError, "device body: revoked device body: missing field(s) reason"),
    # the auditor used to read "key": null as "every key"; the store refused it
    ("revoked key null", "device",
     {"event": "revoked", "device": "clock-1", "reason": "lost", "key": None},
     RegistryError, "device body: key: expected a string"),
    # the store used to accept these four; the auditor reported them
    ("retention without policy", "retention", {"deleted": [[1, 1]], "count": 1}, LedgerError,
     "retention body: retention body: missing field(s) policy"),
    ("retention count beyond ranges", "retention",
     {"policy": "p", "deleted": [[1, 1]], "count": 2}, LedgerError,
     "retention body: count 2 exceeds the 1 idx the ranges cover"),
    ("retention ranges overlap", "retention",
     {"policy": "p", "deleted": [[1, 2], [2, 3]], "count": 2}, LedgerError,
     "retention body: deleted: ranges must be sorted and disjoint"),
    ("retention of a later idx", "retention",
     {"policy": "p", "deleted": [[3, 4]], "count": 1}, LedgerError,
     "retention body: deleted: range [3,4] is not below this entry's idx"),
    ("retention ranges not pairs", "retention",
     {"policy": "p", "deleted": [[1, 2, 3]], "count": 1}, LedgerError,
     "retention body: deleted: each range is [first_idx,last_idx] integers"),
    ("correction without original", "correction", {"editor": "bob"}, LedgerError,
     "correction body: correction body: missing field(s) original_idx"),
    ("correction of a later idx", "correction", {"original_idx": 4}, LedgerError,
     "correction body: original_idx 4 is not an earlier entry"),
    ("correction of idx -1", "correction", {"original_idx": -1}, LedgerError,
     "correction body: original_idx: must be ≥ 0, got -1"),
]


@pytest.fixture
def store(tmp_path: Path) -> Iterator[SQLStore]:
    s = open_store(str(tmp_path / "ledger.db"))
    c = Clock("clock-1")
    s.append([EventFact("device", c.enrolled_body())], now_us=T0)
    s.append([c.fact() for _ in range(3)], now_us=T0 + 1)
    yield s
    s.close()


def _audit_with(store: SQLStore, kind: str, body: dict[str, Any]) -> AuditReport:
    """The auditor's report on the store's ledger plus ``body`` as its next entry."""
    a = LedgerAuditor({})
    head = ""
    for se in store.entries():
        a.feed(se.entry, se.hash, se.body)
        head = se.hash
    size, at = store.head()[0], T0 + 2
    raw = canonical(body)
    entry = make_entry(idx=size, kind=kind, at=at, body=raw, prev=head)
    a.feed(entry, entry.hash(), raw)
    return a.finish()


@pytest.mark.parametrize(("kind", "body", "error", "message"),
                         [case[1:] for case in BAD], ids=[case[0] for case in BAD])
def test_bad_body_is_refused_by_the_store_and_reported_by_the_auditor_alike(
        store: SQLStore, kind: str, body: dict[str, Any], error: type[Exception],
        message: str) -> None:
    before = store.head()
    with pytest.raises(error) as refused:
        store.append([EventFact(kind, body)], now_us=T0 + 2)
    assert str(refused.value).startswith(message), str(refused.value)
    assert store.head() == before           # nothing recorded
    report = _audit_with(store, kind, body)
    assert [(f.idx, f.check, f.tamper) for f in report.findings] == [(4, "fact", True)]
    assert report.findings[0].message == str(refused.value)


@pytest.mark.parametrize(("kind", "body"), [
    ("device", _enrolled()),
    ("device", _rotated()),
    ("device", {"event": "revoked", "device": "clock-1", "reason": "lost",
                "key": CLOCK.key_id, "approver": "alice"}),
    # a retention body needs an approved policy before it (D15): tests/collector/test_retention
    ("policy", {"event": "proposed", "policy": "punches-6y", "record": "punch",
                "period_days": 2192, "scope": "all", "by": "alice"}),
    ("hold", {"event": "placed", "hold": "h", "case": "C-1", "reason": "suit", "by": "carol",
              "device": "clock-1"}),
    ("correction", {"original_idx": 2, "editor": "bob"}),
    ("access", {"type": "export", "rows": 3}),
])
def test_good_body_is_appended_and_verifies(store: SQLStore, kind: str,
                                            body: dict[str, Any]) -> None:
    [r] = store.append([EventFact(kind, body)], now_us=T0 + 2)
    assert (r.outcome, r.idx) == (Outcome.APPENDED, 4)
    report = verify_store(store, {}).report
    assert (report.ok, [f for f in report.findings if f.tamper]) == (True, [])


def test_enrolled_from_seq_is_honoured_by_the_store_as_by_the_auditor(
        store: SQLStore) -> None:
    """protocol §7.2: an ``enrolled`` key is valid from ``from_seq`` (default 1). The store
    used to register it from seq 1 whatever the body said, so it accepted punches the auditor
    then reported as tampering."""
    c = Clock("clock-2", key=NEW)
    store.append([EventFact("device", _enrolled(from_seq=3))], now_us=T0 + 2)
    assert [k.from_seq for k in store.keys("clock-2")] == [3]
    [early] = store.append([c.fact()], now_us=T0 + 3)           # seq 1: before from_seq
    assert early.outcome is Outcome.REJECTED
    assert store.quarantine()[-1].reason == "key-not-valid-for-seq"
    report = verify_store(store, {}).report
    assert (report.ok, [f.tamper for f in report.findings]) == (True, [])


@pytest.mark.parametrize("kind", ["punch", "rejection"])
def test_punches_and_rejections_are_not_event_facts(store: SQLStore, kind: str) -> None:
    """A punch appended as an EventFact would skip the registry re-check and the punch
    index; a rejection would have no quarantined bytes."""
    before = store.head()
    body = {"reason": "malformed", "topic": "t", "raw_sha256": "a" * 64, "received_at": 1}
    with pytest.raises(LedgerError, match=f"a {kind} entry is appended as a "):
        store.append([EventFact(kind, body)], now_us=T0 + 2)
    assert store.head() == before
