"""wire.remote_config: the signed configuration change and the clock's signed result (D18, D19;
docs/protocol.md §13.14), and the ledger's ``config`` body."""

from __future__ import annotations

import base64
from typing import Any

import pytest

from wire.bodies import BodyError, parse_body
from wire.canonical import canonical
from wire.errors import DecodeError, KeyMismatchError, OversizeError, SignatureError
from wire.keys import SigningKey
from wire.remote_config import (
    CONFIG_DOMAIN,
    RESULT_DOMAIN,
    ConfigChange,
    ConfigResult,
    SignedConfigChange,
    SignedConfigResult,
    parse_config_entry,
    parse_value,
)

LOG = SigningKey.generate()
DEVICE_KEY = SigningKey.generate()


def change(**over: Any) -> dict[str, Any]:
    d: dict[str, Any] = {"v": 1, "device": "clock-1", "serial": 1, "at": 1_700_000_000_000_000,
                         "set": {"status.interval_s": 2, "readers.desk.action": "in"},
                         "log": LOG.key_id}
    d.update(over)
    return d


def test_d19_a_change_is_signed_over_its_domain_and_canonical_bytes() -> None:
    signed = ConfigChange.from_dict(change()).sign(LOG)
    msg = CONFIG_DOMAIN + canonical(change())
    assert signed.change.signed_message() == msg
    LOG.verify_key.verify(msg, signed.sig)
    again = SignedConfigChange.from_bytes(signed.to_bytes())
    assert again == signed
    assert again.verify(LOG.verify_key).settings == {"status.interval_s": 2,
                                                     "readers.desk.action": "in"}


def test_d19_a_change_signed_by_another_key_or_altered_does_not_verify() -> None:
    other = SigningKey.generate()
    forged = SignedConfigChange(ConfigChange.from_dict(change(log=other.key_id)),
                                other.sign(CONFIG_DOMAIN + canonical(change(log=other.key_id))))
    with pytest.raises(KeyMismatchError, match="names log key"):
        forged.verify(LOG.verify_key)
    # the same change, the log key id claimed, signed by another key
    claimed = SignedConfigChange(ConfigChange.from_dict(change()),
                                 other.sign(CONFIG_DOMAIN + canonical(change())))
    with pytest.raises(SignatureError):
        claimed.verify(LOG.verify_key)
    good = ConfigChange.from_dict(change()).sign(LOG)
    altered = SignedConfigChange(ConfigChange.from_dict(change(serial=2)), good.sig)
    with pytest.raises(SignatureError):
        altered.verify(LOG.verify_key)


def test_d19_a_change_signature_is_not_a_result_or_receipt_signature() -> None:
    """Domain separation: the same key over the same object under another domain fails."""
    c = ConfigChange.from_dict(change())
    sig = LOG.sign(RESULT_DOMAIN + canonical(change()))
    with pytest.raises(SignatureError):
        SignedConfigChange(c, sig).verify(LOG.verify_key)
    ack_sig = LOG.sign(b"timeclock/ack/v1\n" + canonical(change()))
    with pytest.raises(SignatureError):
        SignedConfigChange(c, ack_sig).verify(LOG.verify_key)


@pytest.mark.parametrize(("over", "error", "match"), [
    ({"set": {"keys.signing_key": "/tmp/k"}}, DecodeError, "may not be changed remotely"),
    ({"set": {"keys.log_public_key": "AAAA"}}, DecodeError, "may not be changed remotely"),
    ({"set": {"mqtt.host": "evil.example"}}, DecodeError, "may not be changed remotely"),
    ({"set": {"mqtt.port": 1883}}, DecodeError, "may not be changed remotely"),
    ({"set": {"device.state_dir": "/tmp"}}, DecodeError, "may not be changed remotely"),
    ({"set": {"feedback.refused_command": "/bin/sh"}}, DecodeError,
     "may not be changed remotely"),
    ({"set": {"feedback.outcomes.revoked": "/bin/sh"}}, DecodeError,
     "may not be changed remotely"),
    ({"set": {"readers.desk.port": "/dev/ttyS0"}}, DecodeError, "may not be changed remotely"),
    ({"set": {"readers.desk.kind": "keyboard"}}, DecodeError, "may not be changed remotely"),
    ({"set": {"readers.a.b.action": "in"}}, DecodeError, "may not be changed remotely"),
    ({"set": {"status.interval_s": "2"}}, DecodeError, "expected an integer"),
    ({"set": {"status.interval_s": True}}, DecodeError, "expected an integer"),
    ({"set": {"witness.check_inclusion": 1}}, DecodeError, "expected a string"),
    ({"set": {"witness.check_inclusion": ""}}, DecodeError, "expected a string"),
    ({"set": ["status.interval_s"]}, DecodeError, "expected an object"),
    ({"set": {f"readers.r{i}.action": "in" for i in range(33)}}, DecodeError,
     "more than 32"),
    ({"serial": 0}, DecodeError, "serial"),
    ({"device": "Clock.1"}, DecodeError, "device"),
    ({"v": 2}, DecodeError, "v"),
    ({"extra": 1}, DecodeError, "extra"),
    ({"log": "not-a-key-id"}, DecodeError, "log"),
])
def test_d18_a_change_outside_the_allow_list_or_badly_typed_is_refused(
        over: dict[str, Any], error: type[Exception], match: str) -> None:
    with pytest.raises(error, match=match):
        ConfigChange.from_dict(change(**over))


def test_d18_an_empty_set_returns_to_the_base_file_and_is_valid() -> None:
    assert ConfigChange.from_dict(change(set={})).settings == {}


def test_d19_a_change_is_refused_before_parsing_when_oversized() -> None:
    with pytest.raises(OversizeError, match="more than"):
        SignedConfigChange.from_bytes(b" " * (16 * 1024 + 1))


def test_d19_parse_value_types_a_command_line_value() -> None:
    assert parse_value("mqtt.batch_max", "50") == 50
    assert parse_value("readers.desk.action", "out") == "out"
    with pytest.raises(DecodeError, match="expected an integer"):
        parse_value("mqtt.batch_max", "fifty")
    with pytest.raises(DecodeError, match="may not be changed remotely"):
        parse_value("mqtt.host", "x")


def test_d19_a_result_is_signed_by_the_device_key() -> None:
    r = ConfigResult("clock-1", 3, "refused", "replay: serial 3 is not above 4")
    signed = r.sign(DEVICE_KEY)
    assert SignedConfigResult.from_bytes(signed.to_bytes()).verify(DEVICE_KEY.verify_key) == r
    with pytest.raises(SignatureError):
        signed.verify(LOG.verify_key)
    with pytest.raises(DecodeError, match="status"):
        ConfigResult("clock-1", 3, "maybe", "")
    with pytest.raises(DecodeError, match="reason"):
        ConfigResult("clock-1", 3, "refused", "x" * 1001)
    bad_sig = {"result": r.to_dict(), "sig": base64.b64encode(b"x" * 10).decode()}
    with pytest.raises(DecodeError, match="sig"):
        SignedConfigResult.from_dict(bad_sig)


def test_d19_the_config_ledger_body_parses_strictly() -> None:
    signed = ConfigChange.from_dict(change(serial=4)).sign(LOG)
    body = {"event": "change", "device": "clock-1", "serial": 4, "by": "alice",
            "change": signed.to_dict()}
    entry = parse_body("config", body, idx=7)
    assert entry == parse_config_entry(body)
    assert parse_config_entry(body).by == "alice"
    res = ConfigResult("clock-1", 4, "applied", "ok").sign(DEVICE_KEY)
    rbody = {"event": "result", "device": "clock-1", "serial": 4, "result": res.to_dict()}
    assert parse_config_entry(rbody).result == res
    for bad, match in [
        ({**body, "serial": 5}, "differ"),
        ({**body, "device": "clock-2"}, "differ"),
        ({**body, "extra": 1}, "extra"),
        ({**body, "event": "deleted"}, "event"),
        ({"event": "change", "device": "clock-1", "serial": 4, "by": "alice"}, "change"),
        ({k: v for k, v in body.items() if k != "by"}, "by"),
        ({**body, "by": "Not A Principal"}, "by"),
        ({**rbody, "by": "alice"}, "by"),
        ({**rbody, "result": {**res.to_dict(), "sig": "nope"}}, "sig"),
    ]:
        with pytest.raises(BodyError, match=match):
            parse_body("config", bad, idx=7)
