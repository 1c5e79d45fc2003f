"""The device status message (DESIGN.md §4, protocol §5.3): a clock's retained health report.

Published by the agent on ``timeclock/v1/devices/{id}/status`` (QoS 1, retained; the same topic
carries its MQTT last will). It is telemetry, not evidence: unsigned, never in the ledger, and it
MUST NOT carry a credential or key material. Version 1, canonical JSON::

    {"v": 1, "device": "clock-0017", "state": "online", "version": "0.1.0",
     "at": 1767225600000000,                              # µs since the epoch
     "queue": {"depth": 3, "oldest_unacked_us": 1767225590000000},
     "clock": "synced",
     "readers": {"front": {"kind": "rdm6300", "status": "open", ...}},
     "storage": {"state": "full", "free_bytes": 0, "refused_taps": 4,
                 "since_us": 1767225599000000, "detail": "..."},
     "reason": "stopped"}

Required: ``v``, ``device``, ``state``, ``version``. An ``online`` status also carries ``at``,
``queue``, ``clock`` and ``readers``; the last will carries only ``reason`` besides the
required four. ``storage`` is optional (agents before it was added do not send it): absent
means unknown. ``witness`` is optional too (DESIGN.md §8.3, protocol §13.7): the clock as a
witness of the log, ``{"state": "none"|"ok"|"refusing"|"broken", "size": n|null,
"cosigned_at": µs|null, "refusals": n, "reason": str|null, "detail": str, "since_us": µs|null}``
— ``refusing`` means the last checkpoint offered was refused (``reason``), since ``since_us``.
``certificate`` is optional (issue 15): the clock's own TLS certificate state when it is not
``ok`` (:data:`CERT_STATES`, e.g. ``expiring``; agent.certstate); absent means ok or unknown.
``readers`` maps reader names to free-form JSON (the agent sends its reader
states). Invariants: a :class:`DeviceStatus` that exists is valid; parsing is strict (unknown
fields, wrong types, floats, oversize input are :class:`wire.errors.DecodeError`), and
``from_bytes(to_bytes(s)) == s``.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from wire.canonical import canonical, loads
from wire.errors import DecodeError, OversizeError
from wire.fields import (
    DEVICE_ID_RE,
    check_version,
    get_choice,
    get_int,
    get_str,
    validate_device_id,
)
from wire.punch import CLOCK_STATES

STATUS_VERSION = 1
MAX_STATUS_BYTES = 16 * 1024          # the collector drops larger status messages
DEVICE_STATES = frozenset({"online", "offline"})
STORAGE_STATES = frozenset({"ok", "low", "full"})
CERT_STATES = frozenset({"ok", "expiring", "not-yet-valid", "expired", "revoked", "unknown-ca",
                         "key-mismatch", "broker-untrusted", "unreadable", "tls-refused"})
VERSION_RE = re.compile(r"^[0-9A-Za-z.+_-]{1,64}$")
REASON_RE = re.compile(r"^[a-z0-9](?:[a-z0-9-]{0,62}[a-z0-9])?$")
MAX_DETAIL_CHARS = 300

_REQUIRED = frozenset({"v", "device", "state", "version"})
_OPTIONAL = frozenset({"at", "queue", "clock", "readers", "storage", "reason", "witness",
                       "certificate"})
_ONLINE = frozenset({"at", "queue", "clock", "readers"})
_QUEUE_KEYS = frozenset({"depth", "oldest_unacked_us"})
_STORAGE_KEYS = frozenset({"state", "free_bytes", "refused_taps", "since_us", "detail"})
_WITNESS_KEYS = frozenset({"state", "size", "cosigned_at", "refusals", "reason", "detail",
                           "since_us"})
WITNESS_STATES = frozenset({"none", "ok", "refusing", "broken"})
WITNESS_REASON_RE = re.compile(r"^[a-z0-9](?:[a-z0-9-]{0,62}[a-z0-9])?$")


def _object(value: Any, name: str, required: frozenset[str],
            optional: frozenset[str] = frozenset()) -> Mapping[str, Any]:
    """``value`` if it is an object with every ``required`` key and nothing unknown."""
    if not isinstance(value, dict):
        raise DecodeError(f"{name}: expected an object", field=name)
    unknown = sorted(set(value) - required - optional)
    if unknown:
        raise DecodeError(f"{name}: unknown field(s) {', '.join(unknown)}", field=unknown[0])
    missing = sorted(required - set(value))
    if missing:
        raise DecodeError(f"{name}: missing field(s) {', '.join(missing)}", field=missing[0])
    return value


def _int_or_none(obj: Mapping[str, Any], key: str, where: str) -> int | None:
    if obj[key] is None:
        return None
    try:
        return get_int(obj, key, minimum=0)
    except DecodeError as e:
        raise DecodeError(f"{where}.{e}", field=key) from None


def _in(where: str, e: DecodeError) -> DecodeError:
    return DecodeError(f"{where}.{e}", field=e.field)


_QueueFields = tuple[int, int | None]
_StorageFields = tuple[str, int | None, int, int | None, str]


def _queue_fields(d: Any) -> _QueueFields:
    obj = _object(d, "queue", _QUEUE_KEYS)
    try:
        depth = get_int(obj, "depth", minimum=0)
    except DecodeError as e:
        raise _in("queue", e) from None
    return depth, _int_or_none(obj, "oldest_unacked_us", "queue")


def _storage_fields(d: Any) -> _StorageFields:
    obj = _object(d, "storage", _STORAGE_KEYS)
    try:
        state = get_choice(obj, "state", STORAGE_STATES)
        refused = get_int(obj, "refused_taps", minimum=0)
        detail = get_str(obj, "detail")
    except DecodeError as e:
        raise _in("storage", e) from None
    if len(detail) > MAX_DETAIL_CHARS:
        raise DecodeError(f"storage.detail: longer than {MAX_DETAIL_CHARS} chars",
                          field="detail")
    return (state, _int_or_none(obj, "free_bytes", "storage"), refused,
            _int_or_none(obj, "since_us", "storage"), detail)


_INCLUSION_KEYS = frozenset({"checked", "pending", "failed", "reason", "detail", "since_us"})


@dataclass(frozen=True, slots=True)
class InclusionStatus:
    """The clock's checks that its own punches are in the log (protocol.md §13.9):
    ``checked`` proofs that verified, ``pending`` leaves waiting, ``failed`` checks (a failure
    stays until the operator clears it), and the last failure's reason, detail and time."""

    checked: int = 0
    pending: int = 0
    failed: int = 0
    reason: str | None = None
    detail: str = ""
    since_us: int | None = None

    def __post_init__(self) -> None:
        _inclusion_fields(self.to_dict())

    @classmethod
    def from_dict(cls, d: Any) -> InclusionStatus:
        return cls(*_inclusion_fields(d))

    def to_dict(self) -> dict[str, Any]:
        return {"checked": self.checked, "pending": self.pending, "failed": self.failed,
                "reason": self.reason, "detail": self.detail, "since_us": self.since_us}


def _inclusion_fields(d: Any) -> tuple[int, int, int, str | None, str, int | None]:
    obj = _object(d, "witness.inclusion", _INCLUSION_KEYS)
    try:
        counts = [get_int(obj, k, minimum=0) for k in ("checked", "pending", "failed")]
        detail = get_str(obj, "detail")
        reason = None if obj["reason"] is None else get_str(obj, "reason", WITNESS_REASON_RE)
    except DecodeError as e:
        raise _in("witness.inclusion", e) from None
    if len(detail) > MAX_DETAIL_CHARS:
        raise DecodeError(f"witness.inclusion.detail: longer than {MAX_DETAIL_CHARS} chars",
                          field="detail")
    return (counts[0], counts[1], counts[2], reason, detail,
            _int_or_none(obj, "since_us", "witness.inclusion"))


_WitnessFields = tuple[str, int | None, int | None, int, str | None, str, int | None,
                       InclusionStatus | None]


def _witness_fields(d: Any) -> _WitnessFields:
    obj = _object(d, "witness", _WITNESS_KEYS, frozenset({"inclusion"}))
    try:
        state = get_choice(obj, "state", WITNESS_STATES)
        refusals = get_int(obj, "refusals", minimum=0)
        detail = get_str(obj, "detail")
        reason = None if obj["reason"] is None else get_str(obj, "reason", WITNESS_REASON_RE)
    except DecodeError as e:
        raise _in("witness", e) from None
    if len(detail) > MAX_DETAIL_CHARS:
        raise DecodeError(f"witness.detail: longer than {MAX_DETAIL_CHARS} chars",
                          field="detail")
    return (state, _int_or_none(obj, "size", "witness"),
            _int_or_none(obj, "cosigned_at", "witness"), refusals, reason, detail,
            _int_or_none(obj, "since_us", "witness"),
            None if obj.get("inclusion") is None else
            InclusionStatus.from_dict(obj["inclusion"]))


@dataclass(frozen=True, slots=True)
class WitnessStatus:
    """The clock as a witness of the log (DESIGN.md §8.3): ``none`` (no checkpoint yet),
    ``ok`` (it cosigned the last checkpoint offered), ``refusing`` (it refused it: the log
    shrank or is inconsistent with the largest checkpoint it holds, or the note did not
    verify), ``broken`` (its witness state file is unreadable: it cosigns nothing)."""

    state: str
    size: int | None = None           # the largest checkpoint it verified
    cosigned_at: int | None = None    # µs of its last cosignature
    refusals: int = 0                 # refusals since the state file was created
    reason: str | None = None         # of the current (or last) refusal
    detail: str = ""
    since_us: int | None = None       # when the current refusing/broken state began
    inclusion: InclusionStatus | None = None   # its own punches' inclusion checks (§13.9)

    def __post_init__(self) -> None:
        _witness_fields(self.to_dict())

    @property
    def alarm(self) -> bool:
        return self.state in ("refusing", "broken") or self.inclusion_failed

    @property
    def inclusion_failed(self) -> bool:
        return self.inclusion is not None and self.inclusion.failed > 0

    @classmethod
    def from_dict(cls, d: Any) -> WitnessStatus:
        return cls(*_witness_fields(d))

    def to_dict(self) -> dict[str, Any]:
        return {"state": self.state, "size": self.size, "cosigned_at": self.cosigned_at,
                "refusals": self.refusals, "reason": self.reason, "detail": self.detail,
                "since_us": self.since_us} | (
                    {} if self.inclusion is None else {"inclusion": self.inclusion.to_dict()})


@dataclass(frozen=True, slots=True)
class QueueStatus:
    """The clock's outbox: punches committed and not yet receipted."""

    depth: int
    oldest_unacked_us: int | None

    def __post_init__(self) -> None:
        _queue_fields(self.to_dict())

    @classmethod
    def from_dict(cls, d: Any) -> QueueStatus:
        return cls(*_queue_fields(d))

    def to_dict(self) -> dict[str, Any]:
        return {"depth": self.depth, "oldest_unacked_us": self.oldest_unacked_us}


@dataclass(frozen=True, slots=True)
class StorageStatus:
    """Whether the clock can commit punches: ``ok``; ``low`` (little free space, still
    recording); ``full`` (the last commit failed for lack of space: taps are refused)."""

    state: str
    free_bytes: int | None            # free space of the queue's filesystem, None = unknown
    refused_taps: int                 # taps refused for lack of space since the agent started
    since_us: int | None              # when ``state`` began (µs since the epoch)
    detail: str = ""                  # one line for the operator

    def __post_init__(self) -> None:
        _storage_fields(self.to_dict())

    @property
    def full(self) -> bool:
        return self.state == "full"

    @classmethod
    def from_dict(cls, d: Any) -> StorageStatus:
        return cls(*_storage_fields(d))

    def to_dict(self) -> dict[str, Any]:
        return {"state": self.state, "free_bytes": self.free_bytes,
                "refused_taps": self.refused_taps, "since_us": self.since_us,
                "detail": self.detail}


def _readers(value: Any) -> dict[str, Any]:
    if not isinstance(value, dict):
        raise DecodeError("readers: expected an object", field="readers")
    for name, state in value.items():
        if not isinstance(name, str) or not DEVICE_ID_RE.fullmatch(name):
            raise DecodeError(f"readers: {str(name)[:70]!r} is not a reader name",
                              field="readers")
        try:
            canonical(state)
        except DecodeError as e:
            raise DecodeError(f"readers.{name}: {e}", field="readers") from None
    return dict(value)


def _status_fields(d: Any) -> tuple[str, str, str, int | None, _QueueFields | None, str | None,
                                    dict[str, Any] | None, _StorageFields | None, str | None,
                                    _WitnessFields | None, str | None]:
    obj = _object(d, "status", _REQUIRED, _OPTIONAL)
    check_version(obj, expected=STATUS_VERSION)
    device = validate_device_id(get_str(obj, "device"))
    state = get_choice(obj, "state", DEVICE_STATES)
    version = get_str(obj, "version", VERSION_RE)
    if state == "online":
        missing = sorted(_ONLINE - set(obj))
        if missing:
            raise DecodeError(f"status: an online status needs {', '.join(missing)}",
                              field=missing[0])
    return (device, state, version,
            get_int(obj, "at", minimum=0) if "at" in obj else None,
            _queue_fields(obj["queue"]) if "queue" in obj else None,
            get_choice(obj, "clock", CLOCK_STATES) if "clock" in obj else None,
            _readers(obj["readers"]) if "readers" in obj else None,
            _storage_fields(obj["storage"]) if "storage" in obj else None,
            get_str(obj, "reason", REASON_RE) if "reason" in obj else None,
            _witness_fields(obj["witness"]) if "witness" in obj else None,
            get_choice(obj, "certificate", CERT_STATES) if "certificate" in obj else None)


@dataclass(frozen=True, slots=True)
class DeviceStatus:
    """One status message. Build it with keywords; ``from_bytes`` parses what a clock sent."""

    device: str
    state: str                        # "online" | "offline"
    version: str                      # agent software version
    at: int | None = None             # µs since the epoch when the clock sent it
    queue: QueueStatus | None = None
    clock: str | None = None          # "synced" | "unsynced"
    readers: Mapping[str, Any] | None = None
    storage: StorageStatus | None = None
    reason: str | None = None         # why offline: "stopped", "connection-lost", …
    v: int = STATUS_VERSION
    witness: WitnessStatus | None = None
    certificate: str | None = None    # the clock certificate's state when not ok

    def __post_init__(self) -> None:
        _status_fields(self.to_dict())

    @classmethod
    def from_dict(cls, d: Any) -> DeviceStatus:
        (device, state, version, at, queue, clock, readers, storage,
         reason, witness, certificate) = _status_fields(d)
        return cls(device, state, version, at,
                   None if queue is None else QueueStatus(*queue), clock, readers,
                   None if storage is None else StorageStatus(*storage), reason,
                   witness=None if witness is None else WitnessStatus(*witness),
                   certificate=certificate)

    @classmethod
    def from_bytes(cls, data: bytes) -> DeviceStatus:
        if len(data) > MAX_STATUS_BYTES:
            raise OversizeError(f"status: {len(data)} bytes, more than {MAX_STATUS_BYTES}")
        return cls.from_dict(loads(data))

    def to_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {"v": self.v, "device": self.device, "state": self.state,
                               "version": self.version}
        if self.at is not None:
            out["at"] = self.at
        if self.queue is not None:
            out["queue"] = self.queue.to_dict()
        if self.clock is not None:
            out["clock"] = self.clock
        if self.readers is not None:
            out["readers"] = dict(self.readers)
        if self.storage is not None:
            out["storage"] = self.storage.to_dict()
        if self.reason is not None:
            out["reason"] = self.reason
        if self.witness is not None:
            out["witness"] = self.witness.to_dict()
        if self.certificate is not None:
            out["certificate"] = self.certificate
        return out

    def to_bytes(self) -> bytes:
        data = canonical(self.to_dict())
        if len(data) > MAX_STATUS_BYTES:
            raise OversizeError(f"status: {len(data)} bytes, more than {MAX_STATUS_BYTES}")
        return data


def parse_status(topic_device: str, payload: bytes) -> DeviceStatus:
    """A status message published on ``topic_device``'s topic, parsed strictly; a status naming
    another device than its topic is refused (the ACL lets a clock publish only on its own
    topic, so such a message is not what it claims)."""
    status = DeviceStatus.from_bytes(payload)
    if status.device != topic_device:
        raise DecodeError(f"status names device {status.device}, published on the topic of "
                          f"{topic_device}", field="device")
    return status
