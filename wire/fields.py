"""Strict field access for decoded objects: exact key sets, exact types, named failures."""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping
from typing import Any

from wire.errors import DecodeError

DEVICE_ID_RE = re.compile(r"^[a-z0-9](?:[a-z0-9-]{0,61}[a-z0-9])?$")
COLLECTOR_ID_RE = re.compile(r"^collector\.[a-z0-9](?:[a-z0-9-]{0,61}[a-z0-9])?$")
HASH_RE = re.compile(r"^[0-9a-f]{64}$")
KEY_ID_RE = re.compile(r"^[0-9a-f]{16}$")
UUID_RE = re.compile(r"^[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}$")
CREDENTIAL_RE = re.compile(r"^[a-z0-9]{1,16}:[0-9A-Za-z]{1,64}$")
B64_SIG_RE = re.compile(r"^[A-Za-z0-9+/]{86}==$")


def require_object(value: Any, name: str, keys: frozenset[str]) -> Mapping[str, Any]:
    """Return ``value`` if it is an object with exactly ``keys``; else name what differs."""
    if not isinstance(value, dict):
        raise DecodeError(f"{name}: expected an object", field=name)
    present = set(value)
    unknown = sorted(present - keys)
    if unknown:
        raise DecodeError(f"{name}: unknown field(s) {', '.join(unknown)}", field=unknown[0])
    missing = sorted(keys - present)
    if missing:
        raise DecodeError(f"{name}: missing field(s) {', '.join(missing)}", field=missing[0])
    return value


def require_fields(value: Any, what: str, required: Iterable[str]) -> Mapping[str, Any]:
    """An object holding at least ``required``; other fields are informational (allowed)."""
    if not isinstance(value, dict):
        raise DecodeError(f"{what}: expected a JSON object")
    missing = sorted(set(required) - set(value))
    if missing:
        raise DecodeError(f"{what}: missing field(s) {', '.join(missing)}", field=missing[0])
    return value


def get_int(obj: Mapping[str, Any], key: str, *, minimum: int | None = None) -> int:
    v = obj[key]
    # bool is an int subclass in Python; JSON true is not an integer.
    if not isinstance(v, int) or isinstance(v, bool):
        raise DecodeError(f"{key}: expected an integer", field=key)
    if minimum is not None and v < minimum:
        raise DecodeError(f"{key}: must be ≥ {minimum}, got {v}", field=key)
    return v


def get_str(obj: Mapping[str, Any], key: str, pattern: re.Pattern[str] | None = None) -> str:
    v = obj[key]
    if not isinstance(v, str):
        raise DecodeError(f"{key}: expected a string", field=key)
    if pattern is not None and not pattern.fullmatch(v):
        raise DecodeError(f"{key}: {v[:80]!r} does not match {pattern.pattern}", field=key)
    return v


def get_optional_str(obj: Mapping[str, Any], key: str,
                     pattern: re.Pattern[str] | None = None) -> str | None:
    """``get_str`` of ``key``, or None when it is absent or null."""
    return get_str(obj, key, pattern) if obj.get(key) is not None else None


def get_optional_int(obj: Mapping[str, Any], key: str, *, minimum: int | None = None
                     ) -> int | None:
    """``get_int`` of ``key``, or None when it is absent or null."""
    return get_int(obj, key, minimum=minimum) if obj.get(key) is not None else None


def get_choice(obj: Mapping[str, Any], key: str, choices: frozenset[str]) -> str:
    v = get_str(obj, key)
    if v not in choices:
        raise DecodeError(f"{key}: {v[:40]!r} is not one of {sorted(choices)}", field=key)
    return v


def check_version(obj: Mapping[str, Any], key: str = "v", expected: int = 1) -> None:
    if get_int(obj, key) != expected:
        raise DecodeError(f"{key}: unsupported version {obj[key]!r}", field=key)


def validate_device_id(device: str) -> str:
    if not isinstance(device, str) or not DEVICE_ID_RE.fullmatch(device):
        raise DecodeError(f"device id {device!r} does not match {DEVICE_ID_RE.pattern}",
                          field="device")
    return device
