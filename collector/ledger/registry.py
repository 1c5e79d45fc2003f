"""The device registry (controls D1, D17): enrol, rotate, re-enrol and revoke device keys as
``device`` entries.

The ledger is the registry: each operation validates against the store's projection and then
appends one ``device`` entry (DESIGN.md §6), in whose transaction the store updates the
projection. Rules: a device id is enrolled once, ever (a revoked id is never reused, so old
punches keep one meaning); a key id belongs to one device, ever; a rotation takes effect
from a seq above every seq already recorded and only with the clock's request signed by its
current key, which the entry carries (DESIGN.md §8.5, wire.key_changes: the rule verifiers
apply); a new key without that request is a re-enrolment, requested by one principal and
approved by another; revocation is final.

``key_for`` answers "may this key sign this seq of this device?" with a distinct error per
reason, which ingest maps to quarantine reasons (collector.ingest.punch_verifier.registry_reason).
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

from collector import RegistryError
from collector.ledger.base import AppendResult, DeviceRecord, EventFact, KeyRecord
from collector.ledger.queries import entries_of_kind
from collector.ledger.sqlbase import SQLStore
from wire.canonical import loads
from wire.errors import WireError
from wire.fields import DEVICE_ID_RE, KEY_ID_RE
from wire.key_changes import PRINCIPAL_RE, KeyChangeError, verify_rotation
from wire.keys import VerifyKey
from wire.rotation import RotationRequest, SignedRotationRequest


class KeyLookupError(RegistryError):
    """A punch's key may not be used; ``reason`` is the quarantine reason code."""

    reason = "registry-error"


class UnknownDeviceError(KeyLookupError):
    reason = "unknown-device"


class DeviceRevokedError(KeyLookupError):
    reason = "device-revoked"


class UnknownKeyError(KeyLookupError):
    reason = "unknown-key"


class KeyRevokedError(KeyLookupError):
    reason = "key-revoked"


class KeyNotValidForSeqError(KeyLookupError):
    reason = "key-not-valid-for-seq"


def _check_device_id(device: str) -> None:
    if not DEVICE_ID_RE.fullmatch(device):
        raise RegistryError(f"{device!r} is not a device id (lowercase letters, digits and "
                            f"inner hyphens, 1-63 characters, no dots)")


def _verify_key(signing_key_b64: str) -> VerifyKey:
    try:
        return VerifyKey.from_b64(signing_key_b64)
    except WireError as e:
        raise RegistryError(f"signing key is not a base64 Ed25519 public key: {e}") from e


def _check_key_unused(store: SQLStore, vk: VerifyKey) -> None:
    owner = store.key_owner(vk.key_id)
    if owner is not None:
        raise RegistryError(f"key {vk.key_id} is already registered to device {owner}; "
                            f"each device needs its own key")


def _known(store: SQLStore, device: str) -> DeviceRecord:
    _check_device_id(device)
    rec = store.device(device)
    if rec is None:
        raise RegistryError(f"device {device} is not enrolled")
    return rec


def _append(store: SQLStore, body: dict[str, Any], now_us: int) -> AppendResult:
    return store.append([EventFact("device", body)], now_us=now_us)[0]


def enroll(store: SQLStore, device: str, site: str, signing_key_b64: str, *, now_us: int,
           approver: str | None = None) -> AppendResult:
    """Record ``{"event":"enrolled",…}``: the device and its first key (valid from seq 1)."""
    _check_device_id(device)
    if not site or not site.strip() or len(site) > 128:
        raise RegistryError("site must be a non-empty name of at most 128 characters")
    existing = store.device(device)
    if existing is not None:
        if existing.status == "revoked":
            raise RegistryError(f"device {device} was revoked at idx {existing.changed_idx}; "
                                f"a revoked id is never re-enrolled: give the device a new id")
        raise RegistryError(f"device {device} is already enrolled (idx "
                            f"{existing.enrolled_idx}); use rotate for a new key")
    vk = _verify_key(signing_key_b64)
    _check_key_unused(store, vk)
    body: dict[str, Any] = {"event": "enrolled", "device": device, "site": site,
                            "key": vk.key_id, "signing_key": vk.b64}
    if approver is not None:
        body["approver"] = approver
    return _append(store, body, now_us)


def _current(store: SQLStore, device: str) -> KeyRecord:
    """The device's current key: the one without an upper seq bound, if it is not revoked."""
    current = [k for k in store.keys(device) if k.until_seq is None]
    if not current:
        raise RegistryError(f"device {device} has no current key")
    return current[-1]


def _check_from_seq(store: SQLStore, device: str, from_seq: int) -> None:
    highest = store.progress(device).highest
    if from_seq <= highest:
        raise RegistryError(f"from_seq {from_seq} must be above seq {highest}, the highest "
                            f"already recorded for {device}")
    current = [k for k in store.keys(device) if k.until_seq is None]
    if any(from_seq <= k.from_seq for k in current):
        raise RegistryError(f"from_seq {from_seq} must be above the current key's from_seq "
                            f"{max(k.from_seq for k in current)}")


def _active(store: SQLStore, device: str, what: str) -> DeviceRecord:
    rec = _known(store, device)
    if rec.status == "revoked":
        raise RegistryError(f"device {device} is revoked; its keys cannot be {what}")
    return rec


def verify_request(store: SQLStore, signed: SignedRotationRequest) -> RotationRequest:
    """The request, if it replaces its device's current key and that key signed it: the rule
    every verifier applies to the recorded entry (wire.key_changes.verify_rotation)."""
    req = signed.request
    _active(store, req.device, "rotated")
    cur = _current(store, req.device)
    try:
        verify_rotation(signed, req.device, cur.key_id, _verify_key(cur.public_b64),
                        current_revoked=cur.status != "active")
    except KeyChangeError as e:
        raise RegistryError(f"rotation of {req.device} refused: {e}") from e
    return req


def rotate(store: SQLStore, signed: SignedRotationRequest, *, now_us: int,
           approver: str | None = None) -> AppendResult:
    """Record ``{"event":"rotated",…,"from_seq":n,"request":…}``: punches with seq ≥ n use the
    new key. Only with the clock's request signed by its current key (DESIGN.md §8.5), for a
    from_seq above every seq recorded; the request goes into the entry, so verifiers check it.
    A new key without that request is a re-enrolment (:func:`request_reenrolment`)."""
    req = verify_request(store, signed)
    _check_key_unused(store, req.signing_key)
    _check_from_seq(store, req.device, req.from_seq)
    body: dict[str, Any] = {"event": "rotated", "device": req.device, "key": req.key,
                            "signing_key": req.signing_key.b64, "from_seq": req.from_seq,
                            "request": signed.to_dict()}
    if approver is not None:
        body["approver"] = approver
    return _append(store, body, now_us)


def _principal(who: str, what: str) -> str:
    if not PRINCIPAL_RE.fullmatch(who):
        raise RegistryError(f"{what} {who!r} is not a principal id (lowercase letters, digits, "
                            f"'.', '_', '@', '-')")
    return who


def pending_reenrolment(store: SQLStore, device: str) -> tuple[int, dict[str, Any]] | None:
    """(idx, body) of the newest ``reenrol-requested`` entry of ``device`` that is still open:
    after the device's last key change or revocation and not approved."""
    rec = _known(store, device)
    found: tuple[int, dict[str, Any]] | None = None
    after = rec.changed_idx
    while True:
        page = entries_of_kind(store, "device", after, 500)
        for e in page:
            body = loads(e.body) if e.body is not None else None
            if isinstance(body, dict) and body.get("device") == device and \
                    body.get("event") == "reenrol-requested":
                found = (e.idx, body)
        if len(page) < 500:
            return found
        after = page[-1].idx


def request_reenrolment(store: SQLStore, device: str, new_key_b64: str, *, requested_by: str,
                        reason: str, now_us: int, from_seq: int | None = None
                        ) -> AppendResult:
    """Record ``{"event":"reenrol-requested",…}``: a new key for an active device whose old key
    cannot sign a rotation request (lost or broken clock). It changes nothing until a second
    principal approves it (:func:`approve_reenrolment`). ``from_seq`` defaults to one above the
    highest seq recorded and the current key's from_seq."""
    _active(store, device, "re-enrolled")
    _principal(requested_by, "requested_by")
    if not reason or not reason.strip():
        raise RegistryError("a re-enrolment needs a reason (e.g. lost, broken, sd-card-failed)")
    vk = _verify_key(new_key_b64)
    _check_key_unused(store, vk)
    if from_seq is None:
        from_seq = max([store.progress(device).highest,
                        *(k.from_seq for k in store.keys(device) if k.until_seq is None)]) + 1
    _check_from_seq(store, device, from_seq)
    body: dict[str, Any] = {"event": "reenrol-requested", "device": device, "key": vk.key_id,
                            "signing_key": vk.b64, "from_seq": from_seq,
                            "requested_by": requested_by, "reason": reason}
    return _append(store, body, now_us)


def approve_reenrolment(store: SQLStore, device: str, *, approved_by: str, now_us: int
                        ) -> AppendResult:
    """Record ``{"event":"reenrolled",…,"request_idx":i}``: the open request of ``device``
    approved by a principal other than the one who asked (DESIGN.md §8.5 "Dual control")."""
    _active(store, device, "re-enrolled")
    _principal(approved_by, "approved_by")
    pending = pending_reenrolment(store, device)
    if pending is None:
        raise RegistryError(f"device {device} has no open re-enrolment request (request one "
                            f"with `device reenrol`)")
    ridx, req = pending
    if req["requested_by"] == approved_by:
        raise RegistryError(f"{approved_by} requested this re-enrolment (idx {ridx}) and may "
                            f"not approve it too: a second principal must")
    vk = _verify_key(req["signing_key"])
    _check_key_unused(store, vk)
    _check_from_seq(store, device, req["from_seq"])
    body: dict[str, Any] = {"event": "reenrolled", "device": device, "key": vk.key_id,
                            "signing_key": vk.b64, "from_seq": req["from_seq"],
                            "request_idx": ridx, "requested_by": req["requested_by"],
                            "approved_by": approved_by, "reason": req["reason"]}
    return _append(store, body, now_us)


def revoke(store: SQLStore, device: str, reason: str, *, now_us: int,
           key_id: str | None = None, approver: str | None = None) -> AppendResult:
    """Record ``{"event":"revoked",…}``: the whole device, or only ``key_id`` of it.

    Punches recorded after this entry under a revoked key are quarantined; earlier ones
    stay valid (they were signed while the key was trusted).
    """
    rec = _known(store, device)
    if not reason or not reason.strip():
        raise RegistryError("a revocation needs a reason (e.g. lost, stolen, decommissioned)")
    if rec.status == "revoked":
        raise RegistryError(f"device {device} is already revoked (idx {rec.changed_idx})")
    body: dict[str, Any] = {"event": "revoked", "device": device, "reason": reason}
    if key_id is not None:
        if not KEY_ID_RE.fullmatch(key_id):
            raise RegistryError(f"{key_id!r} is not a key id (16 lowercase hex characters)")
        key = next((k for k in store.keys(device) if k.key_id == key_id), None)
        if key is None:
            raise RegistryError(f"key {key_id} is not a key of device {device}")
        if key.status == "revoked":
            raise RegistryError(f"key {key_id} of {device} is already revoked")
        body["key"] = key_id
    if approver is not None:
        body["approver"] = approver
    return _append(store, body, now_us)


def _select(device: str, rec: DeviceRecord | None, keys: Iterable[KeyRecord], key_id: str,
            seq: int) -> KeyRecord:
    if rec is None:
        raise UnknownDeviceError(f"device {device} is not enrolled")
    if rec.status != "active":
        raise DeviceRevokedError(f"device {device} is {rec.status} (idx {rec.changed_idx})")
    key = next((k for k in keys if k.key_id == key_id), None)
    if key is None:
        raise UnknownKeyError(f"key {key_id} is not a registered key of {device}")
    if key.status != "active":
        raise KeyRevokedError(f"key {key_id} of {device} is {key.status}")
    if seq < key.from_seq or (key.until_seq is not None and seq >= key.until_seq):
        upper = "" if key.until_seq is None else str(key.until_seq - 1)
        raise KeyNotValidForSeqError(f"key {key_id} of {device} is valid for seq "
                                     f"{key.from_seq}..{upper}, not {seq}")
    return key


def key_for(store: SQLStore, device: str, key_id: str, seq: int) -> KeyRecord:
    """The key record that may sign ``seq`` of ``device``; else a KeyLookupError subclass."""
    return _select(device, store.device(device), store.keys(device), key_id, seq)


@dataclass(frozen=True)
class RegistrySnapshot:
    """The registry read once (two queries), answering ``key_for`` from memory.

    Implements collector.ingest.punch_verifier.RegistryView: ingest takes one snapshot per batch.
    """

    devices: dict[str, DeviceRecord]
    keys: dict[str, list[KeyRecord]]

    @classmethod
    def load(cls, store: SQLStore) -> RegistrySnapshot:
        keys: dict[str, list[KeyRecord]] = {}
        for k in store.all_keys():
            keys.setdefault(k.device, []).append(k)
        return cls({d.device: d for d in store.devices()}, keys)

    def record_for(self, device: str, key_id: str, seq: int) -> KeyRecord:
        return _select(device, self.devices.get(device), self.keys.get(device, ()), key_id,
                       seq)

    def key_for(self, device: str, key_id: str, seq: int) -> VerifyKey:
        return _verify_key_cached(self.record_for(device, key_id, seq).public_b64)


_VK_CACHE: dict[str, VerifyKey] = {}


def _verify_key_cached(b64: str) -> VerifyKey:
    vk = _VK_CACHE.get(b64)
    if vk is None:
        if len(_VK_CACHE) > 100_000:
            _VK_CACHE.clear()
        vk = _VK_CACHE[b64] = VerifyKey.from_b64(b64)
    return vk
