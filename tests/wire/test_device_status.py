"""The device status message (wire/device_status.py): round trips, what older agents and the
last will send, and strict parsing that names the failing field."""

from __future__ import annotations

import json
from typing import Any

import pytest

from wire.device_status import (
    MAX_STATUS_BYTES,
    DeviceStatus,
    QueueStatus,
    StorageStatus,
)
from wire.errors import DecodeError, OversizeError

ONLINE: dict[str, Any] = {
    "v": 1, "device": "clock-0017", "state": "online", "version": "0.1.0",
    "at": 1_767_225_600_000_000,
    "queue": {"depth": 3, "oldest_unacked_us": 1_767_225_590_000_000},
    "clock": "synced",
    "readers": {"front": {"kind": "rdm6300", "status": "open", "taps": 4}},
    "storage": {"state": "full", "free_bytes": 0, "refused_taps": 2,
                "since_us": 1_767_225_599_000_000, "detail": "/var/lib/timeclock-agent: full"},
}


def test_online_status_round_trips_through_canonical_bytes() -> None:
    st = DeviceStatus.from_bytes(json.dumps(ONLINE).encode())
    assert st.storage == StorageStatus("full", 0, 2, 1_767_225_599_000_000,
                                       "/var/lib/timeclock-agent: full")
    assert st.storage.full is True
    assert st.queue == QueueStatus(3, 1_767_225_590_000_000)
    assert st.to_dict() == ONLINE
    assert DeviceStatus.from_bytes(st.to_bytes()) == st
    assert st.to_bytes() == json.dumps(ONLINE, sort_keys=True, separators=(",", ":")).encode()


def test_status_without_storage_from_an_older_agent_parses_as_unknown() -> None:
    old = {k: v for k, v in ONLINE.items() if k != "storage"}
    old["readers"] = {"front": "ok"}
    st = DeviceStatus.from_dict(old)
    assert st.storage is None
    assert st.readers == {"front": "ok"}


def test_last_will_carries_only_the_offline_fields() -> None:
    will = DeviceStatus("clock-0017", "offline", "0.1.0", reason="connection-lost")
    assert json.loads(will.to_bytes()) == {"v": 1, "device": "clock-0017", "state": "offline",
                                           "version": "0.1.0", "reason": "connection-lost"}
    assert DeviceStatus.from_bytes(will.to_bytes()) == will


@pytest.mark.parametrize(("change", "match"), [
    ({"colour": "red"}, "status: unknown field"),
    ({"v": 2}, "unsupported version"),
    ({"state": "sleeping"}, "state: 'sleeping' is not one of"),
    ({"device": "Clock.17"}, "device id 'Clock.17' does not match"),
    ({"clock": "roughly"}, "clock: 'roughly' is not one of"),
    ({"queue": {"depth": -1, "oldest_unacked_us": None}}, "queue.depth: must be ≥ 0"),
    ({"queue": {"depth": 1}}, "queue: missing field"),
    ({"storage": {**ONLINE["storage"], "state": "fine"}}, "storage.state: 'fine' is not one"),
    ({"storage": {**ONLINE["storage"], "refused_taps": True}},
     "storage.refused_taps: expected an integer"),
    ({"storage": {**ONLINE["storage"], "spare": 1}}, "storage: unknown field"),
    ({"storage": {**ONLINE["storage"], "detail": "x" * 301}}, "longer than 300"),
    ({"readers": {"Front Door": {}}}, "is not a reader name"),
    ({"readers": {"front": {"temp": 1.5}}}, "floats are not allowed"),
    ({"reason": "Stopped by operator"}, "reason: .* does not match"),
    ({"at": "now"}, "at: expected an integer"),
])
def test_strict_parse_names_what_is_wrong(change: dict[str, Any], match: str) -> None:
    with pytest.raises(DecodeError, match=match):
        DeviceStatus.from_dict({**ONLINE, **change})


def test_online_status_needs_its_health_fields() -> None:
    with pytest.raises(DecodeError, match="an online status needs clock, queue"):
        DeviceStatus.from_dict({k: v for k, v in ONLINE.items()
                                if k not in ("queue", "clock")})


def test_objects_that_exist_are_valid() -> None:
    with pytest.raises(DecodeError, match="storage.state"):
        StorageStatus("nearly-full", 10, 0, None)
    with pytest.raises(DecodeError, match="queue.oldest_unacked_us: must be ≥ 0"):
        QueueStatus(1, -5)
    with pytest.raises(DecodeError, match="an online status needs"):
        DeviceStatus("clock-0017", "online", "0.1.0")


def test_oversize_and_non_canonical_json_are_refused() -> None:
    with pytest.raises(OversizeError, match=f"more than {MAX_STATUS_BYTES}"):
        DeviceStatus.from_bytes(b" " * (MAX_STATUS_BYTES + 1))
    with pytest.raises(DecodeError, match="duplicate key"):
        DeviceStatus.from_bytes(b'{"v":1,"v":1}')
    with pytest.raises(DecodeError, match="expected an object"):
        DeviceStatus.from_bytes(b"[]")
