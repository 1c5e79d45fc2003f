"""No credential in a log line or a rejection detail (issue 12 item 6; controls D12, D20).

Real SQLite ledger and registry, the real Ingestor and its loggers (captured at DEBUG). Bad
credentials of every kind the decoder can meet — one that fails its pattern, a number too large
for JSON, a float, a credential in a payload that is not JSON at all, a good credential in a
punch whose signature fails, on an unknown device, in a sealed envelope to another key — are
judged and recorded; then neither the log text nor any quarantine detail holds the credential
bytes, while the rejection is still there with its reason (and the raw bytes, for the record).
"""

from __future__ import annotations

import logging

import pytest

from agent.readers.base import Tap
from collector.ingest.alerts import Alerts
from collector.ingest.pipeline import Inbound, Ingestor
from collector.ledger.registry import RegistrySnapshot
from collector.ledger.sqlite import SQLiteStore
from tests.collector.punch_kit import T0, SimClock, enroll, envelope, new_clock, raw_envelope
from wire.errors import DecodeError
from wire.keys import SigningKey
from wire.punch import Envelope, Punch
from wire.redact import redact
from wire.sealed import SealedEnvelope, SealKey

SECRET = "0099887766"  # noqa: S105 - a made-up badge number that every case carries


def _bad_punch(clock: SimClock, credential: object) -> dict[str, object]:
    d = clock.punch().to_dict()
    d["punch"]["credential"] = credential  # type: ignore[index]
    return d


def _forged(clock: SimClock) -> dict[str, object]:
    d = clock.punch(credential=f"em4100:{SECRET}").to_dict()
    d["punch"]["action"] = "out"  # type: ignore[index]   # changed after signing
    return d


def test_d12_d20_bad_credentials_never_reach_a_log_line_or_a_detail(
        sqlite_store: SQLiteStore, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.DEBUG)
    clock, stranger = new_clock(), new_clock()
    enroll(sqlite_store, clock)
    seal = SealKey.generate()
    cases: list[tuple[str, bytes, str]] = [
        ("pattern", raw_envelope(clock.device, [_bad_punch(clock, f"EM4100:{SECRET}-X")]),
         "malformed"),
        ("json-number", raw_envelope(clock.device, [clock.punch().to_dict()]).replace(
            b'"credential":"em4100:', b'"credential":1' + SECRET.encode() * 2 + b',"x":"'),
         "malformed"),
        ("float", raw_envelope(clock.device, [clock.punch().to_dict()]).replace(
            b'"credential":"em4100:', b'"credential":1' + SECRET.encode() + b'.5,"x":"'),
         "malformed"),
        ("not-json", b'{"v":1,"device":"' + clock.device.encode() + b'","credential":"em4100:'
         + SECRET.encode() + b'"', "malformed"),
        ("bad-signature", raw_envelope(clock.device, [_forged(clock)]), "bad-signature"),
        ("unknown-device", envelope(stranger.device, [
            stranger.punch(credential=f"hid:{SECRET}")]), "unknown-device"),
        ("sealed-other-key", SealedEnvelope.seal(
            Envelope(clock.device, (clock.punch(credential=f"em4100:{SECRET}"),)),
            SealKey.generate().public_key).to_bytes(), "undecryptable"),
    ]
    ing = Ingestor(sqlite_store, lambda: RegistrySnapshot.load(sqlite_store), SigningKey.generate(),
                   Alerts(), seal_key=seal)
    topics = {"unknown-device": stranger.topic}
    res = ing.process([Inbound(topics.get(name, clock.topic), payload, T0, mid=i)
                       for i, (name, payload, _) in enumerate(cases, start=1)], now_us=T0)
    assert len(res.committed) == len(cases)
    quarantined = sqlite_store.quarantine()
    assert [q.reason for q in quarantined] == [reason for _, _, reason in cases]
    # the search can fail: the raw bytes kept for the record do hold the badge number
    assert any(SECRET.encode() in sqlite_store.quarantined_raw(q.id) for q in quarantined)
    logged = caplog.text
    assert "quarantined (malformed)" in logged            # the lines we search were written
    for q in quarantined:
        assert SECRET not in q.detail, (q.reason, q.detail)
    assert SECRET not in logged
    for e in sqlite_store.entries():         # rejection bodies name the raw bytes by their hash
        assert SECRET.encode() not in (e.body or b""), e.entry.kind


def test_d12_a_decode_error_names_length_and_a_keyed_tag_never_the_value() -> None:
    clock = new_clock()
    d = clock.punch().to_dict()["punch"]
    d["credential"] = f"EM4100:{SECRET}"
    with pytest.raises(DecodeError, match=r"credential: <redacted 17 chars #[0-9a-f]{8}> does "
                                          r"not match") as e:
        Punch.from_dict(d)
    assert SECRET not in str(e.value)
    assert redact(d["credential"]) == redact(d["credential"])     # one badge, one tag
    assert redact(d["credential"]) != redact(f"EM4100:{SECRET}1")
    assert SECRET not in repr(clock.punch(credential=f"em4100:{SECRET}").punch)
    tap = Tap(reader="front", credential=f"em4100:{SECRET}", action="in", mono_us=1)
    assert SECRET not in repr(tap)
    assert tap.credential == f"em4100:{SECRET}"
