"""Remote configuration of a clock (issue 15 item 6; docs/protocol.md §13.14): the signed
change the collector publishes and the signed result the clock answers. One definition for
both sides.

A change, retained on ``timeclock/v1/devices/{id}/config`` (only collectors write it, only
that device reads it)::

    {"change": {"v": 1, "device": id, "serial": n, "at": µs, "set": {KEY: value, …},
                "log": <log key id>},
     "sig": b64(Ed25519_log(b"timeclock/config/v1\\n" + canonical(change)))}

``set`` is the WHOLE remote overlay (not a delta): the clock's effective configuration is its
base file plus the ``set`` of the newest change it applied; an empty ``set`` returns it to the
base file. Each KEY is a dotted setting of :data:`ALLOWED` (an explicit allow-list, checked
by both sides: nothing that names a key, a path, a program, the broker or TLS), each value an
integer or a string as that key requires (canonical JSON has no floats). ``serial`` is
strictly increasing per device (the ledger's ``config`` entries number them).

The result, retained on ``…/{id}/config-result`` (only that device writes it)::

    {"result": {"v": 1, "device": id, "serial": n, "status": "applied" | "refused",
                "reason": text},
     "sig": b64(Ed25519_device(b"timeclock/config-result/v1\\n" + canonical(result)))}

Invariants: an object that exists is valid (its keys allowed, its values typed); ``verify``
raises :class:`wire.errors.SignatureError` unless the key given signed exactly these bytes.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any

from wire.canonical import canonical_trusted, loads
from wire.errors import DecodeError, KeyMismatchError, OversizeError
from wire.fields import (
    B64_SIG_RE,
    DEVICE_ID_RE,
    KEY_ID_RE,
    check_version,
    get_choice,
    get_int,
    get_str,
    require_object,
)
from wire.key_changes import PRINCIPAL_RE
from wire.keys import SigningKey, VerifyKey

CONFIG_DOMAIN = b"timeclock/config/v1\n"
RESULT_DOMAIN = b"timeclock/config-result/v1\n"
VERSION = 1
MAX_CHANGE_BYTES = 16 * 1024
MAX_SETTINGS = 32
MAX_STRING = 64
MAX_REASON = 1000
STATUSES = frozenset({"applied", "refused"})

# The allow-list: dotted agent settings a signed remote change may set, and the JSON type
# of each value (the agent's config loader then checks ranges and choices, and its message
# is the refusal's reason). Feedback *commands* are deliberately absent: a log-key signature
# must never become a program run on every clock.
ALLOWED: dict[str, type] = {
    "status.interval_s": int,
    "mqtt.batch_max": int,
    "mqtt.resend_after_s": int,
    "mqtt.cert_warn_days": int,
    "feedback.command_timeout_s": int,
    "witness.check_inclusion": str,
    "witness.inclusion_deadline_s": int,
    "witness.inclusion_retry_s": int,
}
READER_NAME_RE = re.compile(r"[A-Za-z0-9_-]{1,64}")
READER_SETTINGS: dict[str, type] = {"action": str, "debounce_s": int}
_CHANGE_KEYS = frozenset({"v", "device", "serial", "at", "set", "log"})
_RESULT_KEYS = frozenset({"v", "device", "serial", "status", "reason"})


def setting_type(key: str) -> type:
    """The value type of allowed setting ``key``; raise :class:`DecodeError` if not allowed."""
    if key in ALLOWED:
        return ALLOWED[key]
    parts = key.split(".")
    if (len(parts) == 3 and parts[0] == "readers" and READER_NAME_RE.fullmatch(parts[1])
            and parts[2] in READER_SETTINGS):
        return READER_SETTINGS[parts[2]]
    allowed = ", ".join([*ALLOWED, *(f"readers.<name>.{k}" for k in READER_SETTINGS)])
    raise DecodeError(f"set: {key[:80]!r} may not be changed remotely (allowed: {allowed})",
                      field="set")


def check_settings(value: Any) -> dict[str, int | str]:
    """``set`` checked against the allow-list and its types; a copy."""
    if not isinstance(value, dict):
        raise DecodeError("set: expected an object of setting: value", field="set")
    if len(value) > MAX_SETTINGS:
        raise DecodeError(f"set: more than {MAX_SETTINGS} settings", field="set")
    out: dict[str, int | str] = {}
    for key, v in value.items():
        want = setting_type(key)
        if want is int and (isinstance(v, bool) or not isinstance(v, int)):
            raise DecodeError(f"set.{key}: expected an integer", field="set")
        if want is str and (not isinstance(v, str) or not v or len(v) > MAX_STRING):
            raise DecodeError(f"set.{key}: expected a string of 1-{MAX_STRING} characters",
                              field="set")
        out[key] = v
    return out


def parse_value(key: str, text: str) -> int | str:
    """A command-line ``KEY=VALUE``'s value in the type ``key`` takes."""
    if setting_type(key) is int:
        try:
            return int(text)
        except ValueError:
            raise DecodeError(f"set.{key}: expected an integer, got {text[:40]!r}",
                              field="set") from None
    return text


def _change_fields(d: Any) -> tuple[str, int, int, dict[str, int | str], str]:
    obj = require_object(d, "config change", _CHANGE_KEYS)
    check_version(obj, expected=VERSION)
    return (get_str(obj, "device", DEVICE_ID_RE), get_int(obj, "serial", minimum=1),
            get_int(obj, "at", minimum=0), check_settings(obj["set"]),
            get_str(obj, "log", KEY_ID_RE))


def _result_fields(d: Any) -> tuple[str, int, str, str]:
    obj = require_object(d, "config result", _RESULT_KEYS)
    check_version(obj, expected=VERSION)
    reason = get_str(obj, "reason")
    if len(reason) > MAX_REASON:
        raise DecodeError(f"reason: more than {MAX_REASON} characters", field="reason")
    return (get_str(obj, "device", DEVICE_ID_RE), get_int(obj, "serial", minimum=0),
            get_choice(obj, "status", STATUSES), reason)


@dataclass(frozen=True, slots=True)
class ConfigChange:
    """What the collector asks ``device`` to run with (its base file + ``settings``)."""

    device: str
    serial: int
    at: int
    settings: dict[str, int | str]
    log: str
    v: int = VERSION

    def __post_init__(self) -> None:
        _change_fields(self.to_dict())

    @classmethod
    def from_dict(cls, d: Any) -> ConfigChange:
        return cls(*_change_fields(d))

    def to_dict(self) -> dict[str, Any]:
        return {"v": self.v, "device": self.device, "serial": self.serial, "at": self.at,
                "set": dict(self.settings), "log": self.log}

    def signed_message(self) -> bytes:
        return CONFIG_DOMAIN + canonical_trusted(self.to_dict())

    def sign(self, log_key: SigningKey) -> SignedConfigChange:
        if log_key.key_id != self.log:
            raise KeyMismatchError(f"the change names log key {self.log}, the signing key is "
                                   f"{log_key.key_id}", field="log")
        return SignedConfigChange(self, log_key.sign(self.signed_message()))


@dataclass(frozen=True, slots=True)
class SignedConfigChange:
    change: ConfigChange
    sig: str

    def __post_init__(self) -> None:
        if not B64_SIG_RE.fullmatch(self.sig):
            raise DecodeError("sig: expected 64 bytes of standard base64", field="sig")

    @classmethod
    def from_dict(cls, d: Any) -> SignedConfigChange:
        obj = require_object(d, "signed config change", frozenset({"change", "sig"}))
        return cls(ConfigChange.from_dict(obj["change"]), get_str(obj, "sig"))

    @classmethod
    def from_bytes(cls, data: bytes) -> SignedConfigChange:
        if len(data) > MAX_CHANGE_BYTES:
            raise OversizeError(f"config change: {len(data)} bytes, more than "
                                f"{MAX_CHANGE_BYTES}")
        return cls.from_dict(loads(data))

    def to_dict(self) -> dict[str, Any]:
        return {"change": self.change.to_dict(), "sig": self.sig}

    def to_bytes(self) -> bytes:
        return canonical_trusted(self.to_dict())

    def verify(self, log_key: VerifyKey) -> ConfigChange:
        """The change, if ``log_key`` is the key it names and signed it; else raise."""
        if log_key.key_id != self.change.log:
            raise KeyMismatchError(f"the change names log key {self.change.log}, not "
                                   f"{log_key.key_id}", field="log")
        log_key.verify(self.change.signed_message(), self.sig)
        return self.change


@dataclass(frozen=True, slots=True)
class ConfigResult:
    device: str
    serial: int            # 0: the change was unreadable (no serial to name)
    status: str
    reason: str
    v: int = VERSION

    def __post_init__(self) -> None:
        _result_fields(self.to_dict())

    @classmethod
    def from_dict(cls, d: Any) -> ConfigResult:
        return cls(*_result_fields(d))

    def to_dict(self) -> dict[str, Any]:
        return {"v": self.v, "device": self.device, "serial": self.serial,
                "status": self.status, "reason": self.reason}

    def signed_message(self) -> bytes:
        return RESULT_DOMAIN + canonical_trusted(self.to_dict())

    def sign(self, device_key: SigningKey) -> SignedConfigResult:
        return SignedConfigResult(self, device_key.sign(self.signed_message()))


@dataclass(frozen=True, slots=True)
class SignedConfigResult:
    result: ConfigResult
    sig: str

    def __post_init__(self) -> None:
        if not B64_SIG_RE.fullmatch(self.sig):
            raise DecodeError("sig: expected 64 bytes of standard base64", field="sig")

    @classmethod
    def from_dict(cls, d: Any) -> SignedConfigResult:
        obj = require_object(d, "signed config result", frozenset({"result", "sig"}))
        return cls(ConfigResult.from_dict(obj["result"]), get_str(obj, "sig"))

    @classmethod
    def from_bytes(cls, data: bytes) -> SignedConfigResult:
        if len(data) > MAX_CHANGE_BYTES:
            raise OversizeError(f"config result: {len(data)} bytes, more than "
                                f"{MAX_CHANGE_BYTES}")
        return cls.from_dict(loads(data))

    def to_dict(self) -> dict[str, Any]:
        return {"result": self.result.to_dict(), "sig": self.sig}

    def to_bytes(self) -> bytes:
        return canonical_trusted(self.to_dict())

    def verify(self, device_key: VerifyKey) -> ConfigResult:
        device_key.verify(self.result.signed_message(), self.sig)
        return self.result


# ---- the ledger's ``config`` entries (docs/protocol.md §7.2) ----------------------------------

ENTRY_EVENTS = frozenset({"change", "result"})


@dataclass(frozen=True, slots=True)
class ConfigEntry:
    """A ``config`` body: ``{"event": "change", "device", "serial", "by": <principal>,
    "change": <signed>}`` or ``{"event": "result", "device", "serial", "result": <signed>}``."""

    event: str
    device: str
    serial: int
    change: SignedConfigChange | None = None
    result: SignedConfigResult | None = None
    by: str | None = None            # a change: the principal who made it (not authenticated)


def parse_config_entry(value: Any) -> ConfigEntry:
    """The one strict parse of a ``config`` entry body (store on append, every verifier)."""
    if not isinstance(value, dict) or "event" not in value:
        raise DecodeError("config body: expected an object with an event", field="event")
    event = get_choice(value, "event", ENTRY_EVENTS)
    keys = {"event", "device", "serial", event} | ({"by"} if event == "change" else set())
    obj = require_object(value, "config body", frozenset(keys))
    device = get_str(obj, "device", DEVICE_ID_RE)
    serial = get_int(obj, "serial", minimum=0)
    if event == "change":
        change = SignedConfigChange.from_dict(obj["change"])
        inner = (change.change.device, change.change.serial)
        entry = ConfigEntry(event, device, serial, change=change,
                            by=get_str(obj, "by", PRINCIPAL_RE))
    else:
        result = SignedConfigResult.from_dict(obj["result"])
        inner = (result.result.device, result.result.serial)
        entry = ConfigEntry(event, device, serial, result=result)
    if inner != (device, serial):
        raise DecodeError(f"config body: device/serial {device}/{serial} differ from the "
                          f"{event}'s {inner[0]}/{inner[1]}", field=event)
    return entry
