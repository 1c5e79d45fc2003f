"""Who may change a clock's signing key (DESIGN.md §8.5, docs/protocol.md §7.2; controls D1, D17).

The one rule for the store (collector.ledger.registry, before it appends) and for every verifier
(wire.audit, so ``timeclock-verify`` and the live-store ``verify``):

- a ``rotated`` device entry carries ``request``: the clock's own SignedRotationRequest
  (wire.rotation), which names this device, this new key and this from_seq and is signed by the
  key that is the device's current (latest, unrevoked) key at that point of the chain;
  anything else — a forged signature, another device's request, a request signed by an older
  or revoked key — is tampering, named at the entry;
- a key change without the old key's request is a re-enrolment (a lost or broken clock): a
  ``reenrol-requested`` entry (who asked, ``requested_by``), then a ``reenrolled`` entry that
  cites it (``request_idx``) and is approved by a second, different principal
  (``approved_by``), with no other key change or revocation of the device in between; every
  verifier reports each re-enrolment as a finding (not a failure) with both principals;
- an old ``rotated`` body without ``request`` (written before the collector embedded it) or a
  second ``enrolled`` entry for a device that has keys is an unauthenticated key change: a
  finding, never a crash, so old ledgers still verify.

Invariants: :func:`verify_rotation` raises unless the request verifies under the current key;
:class:`KeyChanges` holds only pending re-enrolment requests and per-device markers (bounded by
the number of devices and open requests, not by the ledger's size).
"""

from __future__ import annotations

import datetime as dt
import re
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from wire.errors import DecodeError, WireError
from wire.fields import get_int, get_str
from wire.keys import VerifyKey
from wire.rotation import SignedRotationRequest

if TYPE_CHECKING:
    from collections.abc import Mapping

    from wire.bodies import DeviceEvent

PRINCIPAL_RE = re.compile(r"^[a-z0-9](?:[a-z0-9._@-]{0,62}[a-z0-9])?$")
"""A principal id (the pattern of collector.access.principals)."""

KEY_EVENTS = frozenset({"enrolled", "rotated", "reenrolled"})
"""Device events that register a key."""


class KeyChangeError(WireError):
    """A key change whose authority does not hold (tampering when a verifier sees it)."""

    reason = "key-change"


# -- parsing (wire.bodies.parse_device calls these for the device body's own fields) ---------

def parse_request(obj: Mapping[str, Any], device: str, key: str, signing_key: VerifyKey,
                  from_seq: int) -> SignedRotationRequest | None:
    """The ``request`` field of a ``rotated`` body, which must be the clock's request for
    exactly this rotation (None when absent: an old body)."""
    if "request" not in obj:
        return None
    signed = SignedRotationRequest.from_dict(obj["request"])
    req = signed.request
    for what, got, want in (("device", req.device, device), ("key", req.key, key),
                            ("signing_key", req.signing_key.b64, signing_key.b64),
                            ("from_seq", req.from_seq, from_seq)):
        if got != want:
            raise DecodeError(f"request: its {what} is {got}, the entry's is {want}: the "
                              f"request is not for this rotation", field="request")
    return signed


def parse_principal(obj: Mapping[str, Any], name: str) -> str:
    return get_str(obj, name, PRINCIPAL_RE)


def parse_approval(obj: Mapping[str, Any], idx: int) -> tuple[int, str, str]:
    """(request_idx, requested_by, approved_by) of a ``reenrolled`` body at ``idx``."""
    request_idx = get_int(obj, "request_idx", minimum=0)
    if request_idx >= idx:
        raise DecodeError(f"request_idx {request_idx} is not an earlier entry",
                          field="request_idx")
    requested_by = parse_principal(obj, "requested_by")
    approved_by = parse_principal(obj, "approved_by")
    if approved_by == requested_by:
        raise DecodeError(f"approved_by: {approved_by} requested this re-enrolment and may "
                          f"not approve it too (two principals, DESIGN.md §8.5)",
                          field="approved_by")
    return request_idx, requested_by, approved_by


# -- the rule ---------------------------------------------------------------------------------

def verify_rotation(signed: SignedRotationRequest, device: str, current_key: str | None,
                    current: VerifyKey | None, *, current_revoked: bool = False) -> None:
    """Raise unless ``signed`` is a request of ``device`` signed by its current key."""
    req = signed.request
    if req.device != device:
        raise KeyChangeError(f"the rotation request is for {req.device}, not {device}")
    if current_key is None or current is None:
        raise KeyChangeError(f"{device} has no current key to rotate from")
    if current_revoked:
        raise KeyChangeError(f"{device}'s current key {current_key} is revoked: it authorises "
                             f"nothing (a new key needs a re-enrolment)")
    if req.old_key != current_key:
        raise KeyChangeError(f"the rotation request is signed for key {req.old_key}, but "
                             f"{device}'s current key is {current_key}")
    try:
        signed.verify(current)
    except WireError as e:
        raise KeyChangeError(f"the rotation request is not signed by {device}'s current key "
                             f"{current_key}: {e}") from e


def _iso(at_us: int) -> str:
    t = dt.datetime.fromtimestamp(at_us / 1e6, dt.UTC)
    return t.strftime("%Y-%m-%dT%H:%M:%SZ")


@dataclass(frozen=True, slots=True)
class _Request:
    idx: int
    at: int
    ev: DeviceEvent


@dataclass
class KeyChanges:
    """The verifier's state for key-change authority, fed every device entry in idx order.

    ``start_idx``: the first idx fed (a resumed audit cannot check a re-enrolment request made
    before it; the earlier run did)."""

    start_idx: int = 0
    _pending: dict[int, _Request] = field(default_factory=dict)
    _last_change: dict[str, int] = field(default_factory=dict)
    _revoked: set[str] = field(default_factory=set)

    def revoked(self, idx: int, ev: DeviceEvent) -> None:
        self._last_change[ev.device] = idx
        if ev.key is None:
            self._revoked.add(ev.device)

    def check(self, idx: int, at: int, ev: DeviceEvent, *, known: bool,
              current_key: str | None, current: VerifyKey | None,
              current_revoked: bool) -> str | None:
        """Check a key-registering or re-enrolment event; raise KeyChangeError (tampering) or
        return the finding line to report (None: nothing to report)."""
        device = ev.device
        note: str | None = None
        if ev.event == "enrolled":
            if known:
                note = (f"UNAUTHENTICATED KEY CHANGE: {device} enrolled again with key "
                        f"{ev.key}, without its old key's request or two approvers")
        elif ev.event == "rotated":
            if ev.request is None:
                note = (f"UNAUTHENTICATED KEY CHANGE: {device} rotated to key {ev.key} from "
                        f"seq {ev.from_seq} without the old key's signed request (an entry "
                        f"written before requests were recorded, or forged)")
            else:
                verify_rotation(ev.request, device, current_key, current,
                                current_revoked=current_revoked)
        elif ev.event == "reenrol-requested":
            if device in self._revoked:
                raise KeyChangeError(f"{device} is revoked: it cannot be re-enrolled")
            self._pending[idx] = _Request(idx, at, ev)
            return None
        elif ev.event == "reenrolled":
            note = self._approve(idx, at, ev)
        self._last_change[device] = idx
        return note

    def _approve(self, idx: int, at: int, ev: DeviceEvent) -> str:
        device, ridx = ev.device, ev.request_idx
        assert ridx is not None  # noqa: S101 - parse_device sets it for reenrolled
        if device in self._revoked:
            raise KeyChangeError(f"{device} is revoked: it cannot be re-enrolled")
        head = (f"RE-ENROLMENT of {device}: key {ev.key} from seq {ev.from_seq} without the "
                f"old key's request")
        if ridx < self.start_idx:
            return (f"{head}; requested by {ev.requested_by} (idx {ridx}, before this run), "
                    f"approved by {ev.approved_by} at idx {idx} ({_iso(at)})")
        req = self._pending.pop(ridx, None)
        if req is None:
            raise KeyChangeError(f"request_idx {ridx} is not an open re-enrolment request "
                                 f"(none, or approved already)")
        r = req.ev
        for what, got, want in (("device", r.device, device), ("key", r.key, ev.key),
                                ("from_seq", r.from_seq, ev.from_seq),
                                ("requested_by", r.requested_by, ev.requested_by)):
            if got != want:
                raise KeyChangeError(f"the request at idx {ridx} has {what} {got}, this "
                                     f"re-enrolment {want}")
        last = self._last_change.get(device)
        if last is not None and last > ridx:
            raise KeyChangeError(f"the request at idx {ridx} is stale: {device}'s keys "
                                 f"changed at idx {last} after it")
        return (f"{head}; requested by {r.requested_by} at idx {ridx} ({_iso(req.at)}), "
                f"approved by {ev.approved_by} at idx {idx} ({_iso(at)})")
