"""MQTT topics of DESIGN.md §4."""

from __future__ import annotations

from wire.errors import DecodeError
from wire.fields import DEVICE_ID_RE

PREFIX = "timeclock/v1/devices/"
SHARED_PUNCHES = "$share/collectors/timeclock/v1/devices/+/punches"
ALL_PUNCHES = "timeclock/v1/devices/+/punches"
ALL_STATUS = "timeclock/v1/devices/+/status"
CHECKPOINT = "timeclock/v1/log/checkpoint"
ALL_CONFIG_RESULTS = "timeclock/v1/devices/+/config-result"


def punches(device: str) -> str:
    return f"{PREFIX}{device}/punches"


def acks(device: str) -> str:
    return f"{PREFIX}{device}/acks"


def status(device: str) -> str:
    return f"{PREFIX}{device}/status"


def config(device: str) -> str:
    """A clock's signed configuration change (wire.remote_config), retained."""
    return f"{PREFIX}{device}/config"


def config_result(device: str) -> str:
    """The clock's signed answer to its newest configuration change, retained."""
    return f"{PREFIX}{device}/config-result"


def device_of(topic: str, leaf: str) -> str:
    """The device id of ``timeclock/v1/devices/{id}/{leaf}``; raise if the topic is not one."""
    if not topic.startswith(PREFIX) or not topic.endswith("/" + leaf):
        raise DecodeError(f"topic {topic[:120]!r} is not a {leaf} topic", field="topic")
    device = topic[len(PREFIX):-len(leaf) - 1]
    if not DEVICE_ID_RE.fullmatch(device):
        raise DecodeError(f"topic {topic[:120]!r} names no valid device id", field="topic")
    return device
