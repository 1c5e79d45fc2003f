"""The store's own check of a key change's authority, inside the append transaction (D1, D17).

Whatever appends a ``device`` entry (collector.ledger.registry, or anything calling
``store.append`` directly), the store refuses a key change that a verifier would call
tampering or an unauthenticated key change (DESIGN.md §8.5, wire.key_changes): a ``rotated``
entry needs the clock's request signed by the device's current, unrevoked key; a
``reenrolled`` entry needs the open ``reenrol-requested`` entry it cites; a revoked device is
never re-enrolled. It reads the registry projection through the transaction's cursor, so an
entry earlier in the same batch counts.

Invariant: it raises RegistryError with the auditor's wording (``device body: …``) and
changes nothing.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

from collector import RegistryError
from wire.bodies import BodyError, DeviceEvent, parse_body
from wire.canonical import loads
from wire.errors import WireError
from wire.key_changes import KeyChangeError, verify_rotation
from wire.keys import VerifyKey

Rows = Callable[[str, Sequence[Any]], list[tuple[Any, ...]]]


def _refuse(message: str) -> RegistryError:
    return RegistryError(f"device body: {message}")


def authorise(rows: Rows, body_of: Callable[[int], bytes | None], ev: DeviceEvent) -> None:
    """Raise unless the key change ``ev`` is authorised by the ledger so far."""
    if ev.event not in ("rotated", "reenrol-requested", "reenrolled"):
        return
    status = rows("SELECT status, changed_idx FROM devices WHERE device = ?", (ev.device,))
    if not status:
        return                      # the auditor's "never enrolled" (and the registry's)
    if status[0][0] == "revoked" and ev.event != "rotated":
        raise _refuse(f"{ev.device} is revoked: it cannot be re-enrolled")
    if ev.event == "rotated":
        _rotation(rows, ev)
    elif ev.event == "reenrolled":
        _approval(body_of, ev, int(status[0][1]))


def _rotation(rows: Rows, ev: DeviceEvent) -> None:
    if ev.request is None:
        raise _refuse(f"a rotation of {ev.device} without its old key's signed request is "
                      f"refused: a key change without one is a re-enrolment (two approvers)")
    current = rows("SELECT key_id, public_b64, status FROM keys WHERE device = ? AND "
                   "until_seq IS NULL ORDER BY registered_idx", (ev.device,))
    key_id, public, key_status = current[-1] if current else (None, None, None)
    try:
        verify_rotation(ev.request, ev.device, key_id,
                        VerifyKey.from_b64(public) if public else None,
                        current_revoked=key_status not in (None, "active"))
    except KeyChangeError as e:
        raise _refuse(str(e)) from e


def _approval(body_of: Callable[[int], bytes | None], ev: DeviceEvent, changed_idx: int
              ) -> None:
    ridx = ev.request_idx
    assert ridx is not None  # noqa: S101 - parse_device sets it for reenrolled
    raw = body_of(ridx)
    try:
        req = parse_body("device", loads(raw), idx=ridx) if raw is not None else None
    except (BodyError, WireError):
        req = None
    if not isinstance(req, DeviceEvent) or req.event != "reenrol-requested" or \
            ridx <= changed_idx:
        raise _refuse(f"request_idx {ridx} is not an open re-enrolment request (none, "
                      f"approved already, or stale)")
    for what, got, want in (("device", req.device, ev.device), ("key", req.key, ev.key),
                            ("from_seq", req.from_seq, ev.from_seq),
                            ("requested_by", req.requested_by, ev.requested_by)):
        if got != want:
            raise _refuse(f"the request at idx {ridx} has {what} {got}, this re-enrolment "
                          f"{want}")
