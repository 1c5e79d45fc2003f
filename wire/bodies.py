"""Ledger entry bodies (DESIGN.md §6, docs/protocol.md §7.2): one strict parse per entry kind.

The collector's store parses every body it appends with :func:`parse_body` and the auditor
(``wire.audit``, so also ``timeclock-verify`` and the live-store verify) parses every body it
reads with the same function, so a body the store refuses is exactly a body the auditor
reports, with the same message (``"<kind> body: <what is wrong>"``).

What is checked here is what a body says on its own (its fields, their types and patterns,
idx it refers to being below its own). What needs the rest of the ledger (a device enrolled
earlier, a key registered once, a correction's original being a punch) is checked by each
reader against its own state: the auditor against the entries before, the store against its
registry tables.

Invariants: bodies are JSON objects; every kind but ``punch`` has required fields and may
carry more, which are informational and never change the meaning of the required ones
(protocol §7.2); a parsed body exists only if it is valid (build them with the parsers).
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass, replace
from typing import Any

from wire.bodies_access_review import AccessReviewFact, parse_access_review
from wire.bodies_breakglass import BreakGlassFact, parse_break_glass
from wire.bodies_people import PEOPLE_KINDS, BadgeEvent, Employee, parse_people
from wire.bodies_policy_doc import (
    Acknowledgement,
    PolicyDoc,
    parse_acknowledgement,
    parse_policy_doc,
)
from wire.bodies_retention import (
    HoldEvent,
    PolicyApproved,
    PolicyProposed,
    RetentionCites,
    parse_cites,
    parse_hold,
    parse_policy,
)
from wire.bodies_review import AlertReview, SignOff, parse_review
from wire.bodies_shred import Shred, parse_shred
from wire.errors import DecodeError, WireError
from wire.fields import (
    DEVICE_ID_RE,
    HASH_RE,
    KEY_ID_RE,
    get_choice,
    get_int,
    get_optional_str,
    get_str,
    require_fields,
)
from wire.key_changes import parse_approval, parse_principal, parse_request
from wire.keys import VerifyKey
from wire.ledger import KINDS
from wire.punch import SignedPunch
from wire.remote_config import ConfigEntry, parse_config_entry
from wire.rotation import SignedRotationRequest

DEVICE_EVENTS = frozenset({"enrolled", "rotated", "revoked", "reenrol-requested", "reenrolled"})
UNDELETABLE_KINDS = frozenset({"device", "retention", "policy", "hold", "shred"})
"""Kinds whose bodies are needed to verify the rest of the ledger: retention never deletes
them."""


class BodyError(DecodeError):
    """A body that is not valid for its entry kind; the message starts ``<kind> body:``."""

    reason = "bad-body"

    def __init__(self, kind: str, message: str, *, field: str | None = None) -> None:
        super().__init__(f"{kind} body: {message}", field=field)
        self.kind = kind


@dataclass(frozen=True, slots=True)
class DeviceEvent:
    """A ``device`` body. ``key``: the key registered (enrolled, rotated) or the one key
    revoked (revoked; None revokes every key of the device). ``from_seq``: the first seq the
    registered key signs (enrolled: 1 unless given; revoked: None). ``request``: the old key's
    signed rotation request (rotated; None in a body written before it was recorded).
    ``requested_by``/``approved_by``/``request_idx``: a re-enrolment's two principals and the
    ``reenrol-requested`` entry it approves (wire.key_changes)."""

    event: str
    device: str
    key: str | None = None
    signing_key: VerifyKey | None = None
    from_seq: int | None = None
    site: str | None = None
    reason: str | None = None
    request: SignedRotationRequest | None = None
    requested_by: str | None = None
    approved_by: str | None = None
    request_idx: int | None = None


@dataclass(frozen=True, slots=True)
class Rejection:
    """A ``rejection`` body; the raw bytes stay in quarantine (``raw_sha256`` names them)."""

    reason: str
    topic: str
    raw_sha256: str
    received_at: int
    detail: str | None = None
    device: str | None = None


@dataclass(frozen=True, slots=True)
class Retention:
    """A ``retention`` body: the idx ranges whose bodies it deleted, sorted and disjoint;
    ``cites``: the approved policies it ran under and one row per removed entry
    (wire.bodies_retention; None in a retention entry from before policies)."""

    policy: str
    deleted: tuple[tuple[int, int], ...]
    count: int
    cites: RetentionCites | None = None


@dataclass(frozen=True, slots=True)
class Correction:
    """A ``correction`` body: an amendment of the punch at ``original_idx`` (never an edit)."""

    original_idx: int


@dataclass(frozen=True, slots=True)
class Alert:
    """An ``alert`` body: what a detector saw (collector.ingest.alerts); informational for the
    verifier, which checks only its shape (protocol §7.2)."""

    alert: str
    severity: int
    detail: str
    device: str | None = None


@dataclass(frozen=True, slots=True)
class Access:
    """An ``access`` body: any object (who read or exported what), informational."""

    fields: Mapping[str, Any]


Body = (Shred | SignedPunch | DeviceEvent | Rejection | Retention | Correction | Access | Alert
        | Employee | BadgeEvent | PolicyProposed | PolicyApproved | HoldEvent | ConfigEntry
        | AlertReview | SignOff | BreakGlassFact | AccessReviewFact | PolicyDoc
        | Acknowledgement)


def parse_device(value: Any, idx: int = 0) -> DeviceEvent:
    obj = require_fields(value, "device body", ("event", "device"))
    event = get_choice(obj, "event", DEVICE_EVENTS)
    device = get_str(obj, "device", DEVICE_ID_RE)
    if event == "revoked":
        require_fields(obj, "revoked device body", ("reason",))
        reason = get_str(obj, "reason")
        # ``key`` absent revokes every key; present it must name one (null is not a key id).
        key = get_str(obj, "key", KEY_ID_RE) if "key" in obj else None
        return DeviceEvent(event, device, key=key, reason=reason)
    site = None
    if event == "enrolled":
        require_fields(obj, "enrolled device body", ("key", "signing_key", "site"))
        site = get_str(obj, "site")
        from_seq = get_int(obj, "from_seq", minimum=1) if "from_seq" in obj else 1
    else:
        require_fields(obj, f"{event} device body", ("key", "signing_key", "from_seq"))
        from_seq = get_int(obj, "from_seq", minimum=1)
    kid = get_str(obj, "key", KEY_ID_RE)
    vk = VerifyKey.from_b64(get_str(obj, "signing_key"))
    if vk.key_id != kid:
        raise DecodeError(f"key {kid} is not the key id of signing_key ({vk.key_id})",
                          field="key")
    ev = DeviceEvent(event, device, key=kid, signing_key=vk, from_seq=from_seq, site=site)
    if event == "rotated":
        return replace(ev, request=parse_request(obj, device, kid, vk, from_seq))
    if event == "reenrol-requested":
        require_fields(obj, "reenrol-requested device body", ("requested_by", "reason"))
        return replace(ev, requested_by=parse_principal(obj, "requested_by"),
                       reason=get_str(obj, "reason"))
    if event == "reenrolled":
        require_fields(obj, "reenrolled device body",
                       ("request_idx", "requested_by", "approved_by"))
        ridx, by, approver = parse_approval(obj, idx)
        return replace(ev, request_idx=ridx, requested_by=by, approved_by=approver)
    return ev


def parse_rejection(value: Any) -> Rejection:
    obj = require_fields(value, "rejection body", ("reason", "topic", "raw_sha256", "received_at"))
    detail = get_str(obj, "detail") if "detail" in obj else None
    device = get_optional_str(obj, "device", DEVICE_ID_RE)
    return Rejection(get_str(obj, "reason"), get_str(obj, "topic"),
                     get_str(obj, "raw_sha256", HASH_RE),
                     get_int(obj, "received_at", minimum=0), detail, device)


def parse_retention(value: Any, idx: int) -> Retention:
    obj = require_fields(value, "retention body", ("policy", "deleted", "count"))
    policy = get_str(obj, "policy")
    count = get_int(obj, "count", minimum=0)
    ranges = obj["deleted"]
    if not isinstance(ranges, list):
        raise DecodeError("deleted: expected an array of [first_idx,last_idx]", field="deleted")
    parsed: list[tuple[int, int]] = []
    for r in ranges:
        if (not isinstance(r, list) or len(r) != 2
                or any(not isinstance(x, int) or isinstance(x, bool) for x in r)):
            raise DecodeError("deleted: each range is [first_idx,last_idx] integers",
                              field="deleted")
        a, b = r
        if not 0 <= a <= b < idx:
            raise DecodeError(f"deleted: range [{a},{b}] is not below this entry's idx",
                              field="deleted")
        if parsed and a <= parsed[-1][1]:
            raise DecodeError("deleted: ranges must be sorted and disjoint", field="deleted")
        parsed.append((a, b))
    span = sum(b - a + 1 for a, b in parsed)
    if count > span:
        raise DecodeError(f"count {count} exceeds the {span} idx the ranges cover",
                          field="count")
    cites = None
    if "policies" in obj or "removed" in obj:
        cites = parse_cites(obj, idx, tuple(parsed), count)
    return Retention(policy, tuple(parsed), count, cites)


def parse_correction(value: Any, idx: int) -> Correction:
    obj = require_fields(value, "correction body", ("original_idx",))
    original = get_int(obj, "original_idx", minimum=0)
    if original >= idx:
        raise DecodeError(f"original_idx {original} is not an earlier entry",
                          field="original_idx")
    return Correction(original)


def parse_access(value: Any) -> Access:
    return Access(require_fields(value, "access body", ()))


ALERT_RE = re.compile(r"^[a-z0-9](?:[a-z0-9-]{0,62}[a-z0-9])?$")


def parse_alert(value: Any) -> Alert:
    obj = require_fields(value, "alert body", ("alert", "severity", "detail"))
    severity = get_int(obj, "severity", minimum=1)
    if severity > 3:
        raise DecodeError("severity: expected 1 (critical), 2 (warning) or 3 (info)",
                          field="severity")
    device = get_optional_str(obj, "device", DEVICE_ID_RE)
    return Alert(get_str(obj, "alert", ALERT_RE), severity, get_str(obj, "detail"), device)


def parse_body(kind: str, value: Any, *, idx: int) -> Body:  # noqa: PLR0911, PLR0912 - one per kind
    """The body of a ``kind`` entry at ``idx``, parsed strictly; else :class:`BodyError`."""
    try:
        if kind == "punch":
            return SignedPunch.from_dict(value)
        if kind == "device":
            return parse_device(value, idx)
        if kind == "rejection":
            return parse_rejection(value)
        if kind == "retention":
            return parse_retention(value, idx)
        if kind == "correction":
            return parse_correction(value, idx)
        if kind == "access":
            return parse_access(value)
        if kind == "alert":
            return parse_alert(value)
        if kind == "policy":
            return parse_policy(value, idx)
        if kind == "hold":
            return parse_hold(value, idx)
        if kind == "config":
            return parse_config_entry(value)
        if kind in PEOPLE_KINDS:
            return parse_people(kind, value)
        if kind == "review":
            return parse_review(value, idx)
        if kind == "shred":
            return parse_shred(value, idx)
        if kind == "break_glass":
            return parse_break_glass(value, idx)
        if kind == "access_review":
            return parse_access_review(value, idx)
        if kind == "policy_doc":
            return parse_policy_doc(value)
        if kind == "acknowledgement":
            return parse_acknowledgement(value)
    except BodyError:
        raise
    except WireError as e:
        raise BodyError(kind, str(e), field=e.field) from e
    raise BodyError(kind, f"{kind!r} is not an entry kind (one of {sorted(KINDS)})",
                    field="kind")
