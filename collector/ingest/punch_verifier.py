"""Verification of one MQTT punch message (DESIGN.md §3-4, CONTROLS.md D1/D2): pure, no I/O.

``judge(topic, payload, received_at, registry)`` turns one message into facts for the store:
a :class:`~collector.ledger.base.PunchFact` for each punch that passed steps (1)-(6), a
:class:`~collector.ledger.base.RejectionFact` for everything else. Steps (DESIGN.md §4),
numbered the same in docs, logs and tests:

  (1) size: payload ≤ ``max_bytes`` (256 KiB by default)            → ``oversized``
  (2) strict decode (wire.punch.Envelope.from_bytes)               → ``malformed``
      a sealed envelope (wire.sealed, DESIGN.md §8.6): strict decode of the outer object,
      clear device == topic device, then ONE sealed-box open per message → ``undecryptable``
      and the inner bytes go through (2)-(3) as the payload; a plain envelope while
      ``require_sealed``                                            → ``unsealed``
  (3) topic device == payload device == every punch's device       → ``bad-topic`` /
                                                                     ``device-mismatch``
  (4) device known and active                                      → ``unknown-device`` /
                                                                     ``device-revoked``
  (5) key registered, active, valid from that seq                  → ``unknown-key`` /
                                                                     ``key-revoked`` /
                                                                     ``key-not-valid-for-seq``
  (6) Ed25519 signature over the domain-prefixed canonical punch   → ``bad-signature``
  (7) dedupe on (device, seq)     — in the store's transaction     → DUPLICATE / ``conflict``
      and the link to recorded neighbours (prev == hash(seq-1), hash == prev(seq+1)) → ``fork``
  (8) append                      — in the store's transaction

Invariants:
- Nothing is dropped: every input yields at least one fact; every rejection carries the raw
  bytes, a short stable ``reason`` code and an operator-facing ``detail``.
- Framing failures (1)-(3) reject the message whole, with the payload bytes as raw. With
  valid framing each punch is judged alone: a bad punch in a batch does not sink the good
  ones. A per-punch rejection's raw bytes are the canonical bytes of that signed punch (the
  input was strict JSON, so they carry exactly what was signed) and name its device.
- One exception to "framing rejects whole": when the envelope frame is valid but one punch
  object fails strict decoding, that punch alone is rejected as ``malformed`` (so one buggy
  punch cannot block a clock's whole backlog forever); the others are judged normally.
- ``judge`` raises only on a programming error; the caller quarantines the input as
  ``internal-error`` then (see collector/ingest/pipeline.py).
- A sealed message that fails framing (outer or inner, including an inner device other than
  the clear one: ``device-mismatch``) is rejected whole with the *sealed* payload as raw, so
  quarantine keeps the ciphertext, not the opened envelope; once framing holds, its punches
  are judged one by one exactly as a plain envelope's. Loss reports carry no credential and
  stay plain (also under ``require_sealed``).
- A clock's signed loss report (wire.seqloss, docs/protocol.md §13.11) on its punches topic
  goes through the same steps (1)-(6) and, when valid, becomes a ``seq-loss`` rejection (a
  recorded finding: the gap in its chain, with the reason); an invalid one is rejected for the
  step that failed, like a punch.
- Signature checks (6) of one message may run on two threads at once (PyNaCl releases the
  GIL inside libsodium, so a backlog envelope of 500 punches uses a second core); each punch
  still gets exactly steps (4)-(6) in order, and the facts come out in the payload's order.
"""

from __future__ import annotations

import os
import re
import threading
from collections.abc import Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from typing import Any, Protocol

from collector import RegistryError
from collector.ledger.base import Fact, PunchFact, RejectionFact
from wire.canonical import canonical, loads
from wire.errors import DecodeError, SignatureError, WireError
from wire.fields import DEVICE_ID_RE
from wire.keys import VerifyKey
from wire.punch import MAX_ENVELOPE_BYTES, MAX_ENVELOPE_PUNCHES, Envelope, SignedPunch
from wire.sealed import SealedEnvelope, SealError, SealKey, looks_sealed
from wire.seqloss import MAX_LOSS_BYTES, LossReport, SignedLossReport, looks_like_loss
from wire.topics import device_of

REASONS = frozenset({
    "oversized", "malformed", "bad-topic", "device-mismatch", "unknown-device",
    "device-revoked", "unknown-key", "key-revoked", "key-not-valid-for-seq",
    "bad-signature", "conflict", "fork", "internal-error", "registry-error", "seq-loss",
    "undecryptable", "unsealed"})
_REGISTRY_REASONS = frozenset({"unknown-device", "device-revoked", "unknown-key",
                               "key-revoked", "key-not-valid-for-seq"})


class RegistryView(Protocol):
    """What the verifier needs from the device registry (a projection of ``device`` entries).

    ``key_for`` returns the verify key registered as ``key_id`` for ``device`` and valid for
    ``seq``, or raises :class:`~collector.RegistryError` whose ``reason`` is one of
    unknown-device, device-revoked, unknown-key, key-revoked, key-not-valid-for-seq.
    """

    def key_for(self, device: str, key_id: str, seq: int) -> VerifyKey: ...


def registry_reason(e: RegistryError) -> str:
    """Map a registry error to a stable reason code (its ``reason``, else its class name)."""
    reason = getattr(e, "reason", None)
    if isinstance(reason, str) and reason in _REGISTRY_REASONS:
        return reason
    name = re.sub(r"Error$", "", type(e).__name__)
    kebab = re.sub(r"(?<!^)(?=[A-Z])", "-", name).lower()
    return kebab if kebab in _REGISTRY_REASONS else "registry-error"


def _topic_device(topic: str) -> str | None:
    try:
        return device_of(topic, "punches")
    except DecodeError:
        return None


class _FramingError(Exception):
    """Steps (1)-(3) failed: the whole message is rejected with this reason."""

    def __init__(self, reason: str, detail: str) -> None:
        super().__init__(detail)
        self.reason = reason


def _salvage(payload: bytes) -> tuple[str, list[SignedPunch | tuple[bytes, str]]] | None:
    """Re-read an envelope whose strict decode failed: valid frame → per-punch results.

    Returns None if the frame itself is bad; else the envelope device and, per punch, the
    decoded signed punch or ``(canonical bytes, error)`` for a punch that fails decoding.
    """
    try:
        obj = loads(payload)
    except DecodeError:
        return None
    if (not isinstance(obj, dict) or set(obj) != {"v", "device", "punches"}
            or obj["v"] != 1 or isinstance(obj["v"], bool)
            or not isinstance(obj["device"], str) or not DEVICE_ID_RE.fullmatch(obj["device"])
            or not isinstance(obj["punches"], list)
            or not 1 <= len(obj["punches"]) <= MAX_ENVELOPE_PUNCHES):
        return None
    out: list[SignedPunch | tuple[bytes, str]] = []
    for i, p in enumerate(obj["punches"]):
        try:
            out.append(SignedPunch.from_dict(p))
        except DecodeError as e:
            out.append((canonical(p), f"punches[{i}]: {e}"))
    return obj["device"], out


def _claimed_device(value: Any) -> str | None:
    """The device a malformed punch claims, if it names a valid one (for the rejection)."""
    if isinstance(value, dict):
        punch = value.get("punch")
        if isinstance(punch, dict):
            d = punch.get("device")
            if isinstance(d, str) and DEVICE_ID_RE.fullmatch(d):
                return d
    return None


def judge(topic: str, payload: bytes, received_at: int, registry: RegistryView, *,
          max_bytes: int = MAX_ENVELOPE_BYTES, seal_key: SealKey | None = None,
          require_sealed: bool = False) -> list[Fact]:
    """Judge one message from ``timeclock/v1/devices/{id}/punches``; see the module doc.

    ``seal_key`` opens sealed envelopes (none: they are ``undecryptable``); with
    ``require_sealed`` a plain envelope is quarantined as ``unsealed``."""
    topic_device = _topic_device(topic)
    if looks_like_loss(payload):
        return [_judge_loss(topic, topic_device, payload, received_at, registry)]
    try:
        if looks_sealed(payload):
            inner = _unseal(topic, topic_device, payload, max_bytes, seal_key)
            items = _frame(topic, topic_device, inner, max_bytes, sealed=True)
        elif require_sealed:
            raise _FramingError("unsealed", "a plain envelope, and [ingest] require_sealed is "
                                            "on: clocks must seal to the ledger's key (§8.6)")
        else:
            items = _frame(topic, topic_device, payload, max_bytes)
    except _FramingError as e:
        return [RejectionFact(reason=e.reason, detail=str(e)[:500], topic=topic,
                              raw=bytes(payload), received_at=received_at, device=topic_device)]
    facts: list[Fact | None] = []
    to_verify: list[tuple[int, SignedPunch, VerifyKey]] = []
    for item in items:
        if isinstance(item, SignedPunch):
            judged = _lookup_key(item, topic, received_at, registry)
            if isinstance(judged, VerifyKey):
                to_verify.append((len(facts), item, judged))
                facts.append(None)
            else:
                facts.append(judged)
        else:
            raw, detail = item
            facts.append(RejectionFact(reason="malformed", detail=detail[:500], topic=topic,
                                       raw=raw, received_at=received_at, device=topic_device))
    for (i, signed, _), error in zip(to_verify, _verify_all(to_verify), strict=True):
        facts[i] = (PunchFact(signed=signed, topic=topic, received_at=received_at)
                    if error is None else _reject(signed, topic, received_at, *error))
    return [f for f in facts if f is not None]


def _judge_loss(topic: str, topic_device: str | None, payload: bytes, received_at: int,
                registry: RegistryView) -> RejectionFact:
    """Steps (1)-(6) for a clock's loss report; valid or not, it is one rejection fact."""
    try:
        r = _check_loss(topic, topic_device, payload, registry)
        what = f"seqs {r.first}..{r.last} ({r.lost})" if r.lost else "no seq"
        reason, detail = "seq-loss", (f"the clock reports {what} committed and lost from its "
                                      f"queue; its chain continues at seq {r.last + 1}; "
                                      f"reason: {r.reason}")
    except _FramingError as e:
        reason, detail = e.reason, f"loss report: {e}"
    return RejectionFact(reason=reason, detail=detail[:500], topic=topic, raw=bytes(payload),
                         received_at=received_at, device=topic_device)


def _check_loss(topic: str, topic_device: str | None, payload: bytes,
                registry: RegistryView) -> LossReport:
    # (1) size, (2) strict decode, (3) topic device == report device.
    if len(payload) > MAX_LOSS_BYTES:
        raise _FramingError("oversized", f"{len(payload)} bytes, limit {MAX_LOSS_BYTES}")
    try:
        signed = SignedLossReport.from_bytes(payload)
    except DecodeError as e:
        raise _FramingError("malformed", str(e)) from e
    r = signed.report
    if topic_device is None:
        raise _FramingError("bad-topic", f"topic {topic[:120]!r} is not a device punches topic")
    if r.device != topic_device:
        raise _FramingError("device-mismatch", f"report of {r.device!r} published on the "
                                               f"topic of {topic_device!r}")
    # (4)-(5) the key that signs the clock's punch at next_seq; (6) its signature.
    try:
        signed.verify(registry.key_for(r.device, r.key, r.last + 1))
    except RegistryError as e:
        raise _FramingError(registry_reason(e), str(e)) from e
    except WireError as e:
        raise _FramingError("bad-signature", str(e)) from e
    return r


# -- (6) signatures, on up to two threads ---------------------------------------------------

PARALLEL_MIN = 32          # below this many signatures, one thread is faster
_pool: list[ThreadPoolExecutor] = []     # created on first use, at most one
_pool_lock = threading.Lock()


def _helpers() -> ThreadPoolExecutor | None:
    """One helper thread when the process may use more than one core, else None."""
    if not _pool and len(os.sched_getaffinity(0)) > 1:
        with _pool_lock:
            if not _pool:
                _pool.append(ThreadPoolExecutor(max_workers=1, thread_name_prefix="verify"))
    return _pool[0] if _pool else None


def _verify_all(items: Sequence[tuple[int, SignedPunch, VerifyKey]]
                ) -> list[tuple[str, str] | None]:
    """Per item: None if its signature verifies, else (reason, detail) of the rejection."""
    pool = _helpers() if len(items) >= PARALLEL_MIN else None
    if pool is None:
        return _verify_chunk(items)
    half = len(items) // 2
    other: Future[list[tuple[str, str] | None]] = pool.submit(_verify_chunk, items[half:])
    mine = _verify_chunk(items[:half])
    return mine + other.result()


def _verify_chunk(items: Sequence[tuple[int, SignedPunch, VerifyKey]]
                  ) -> list[tuple[str, str] | None]:
    out: list[tuple[str, str] | None] = []
    for _, signed, key in items:
        # (6) signature over b"timeclock/punch/v1\n" + canonical(punch), under that key.
        try:
            signed.verify(key)
        except SignatureError as e:
            out.append(("bad-signature", str(e)))
            continue
        except WireError as e:  # key id mismatch: the registry returned another key
            out.append(("bad-signature", str(e)))
            continue
        out.append(None)
    return out


def _unseal(topic: str, topic_device: str | None, payload: bytes, max_bytes: int,
            seal_key: SealKey | None) -> bytes:
    """Steps (1)-(3) of the sealed outer object, then the one open: the inner payload."""
    # (1) size of what the broker carried; (2) strict decode of the outer object.
    if len(payload) > max_bytes:
        raise _FramingError("oversized", f"payload is {len(payload)} bytes, limit {max_bytes}")
    try:
        sealed = SealedEnvelope.from_bytes(payload, max_bytes=max_bytes)
    except DecodeError as e:
        raise _FramingError("malformed", f"sealed envelope: {e}") from e
    # (3) clear device == topic device, before spending an open on it.
    if topic_device is None:
        raise _FramingError("bad-topic", f"topic {topic[:120]!r} is not a device punches topic")
    if sealed.device != topic_device:
        raise _FramingError("device-mismatch", f"sealed envelope of {sealed.device!r} published "
                                               f"on the topic of {topic_device!r}")
    if seal_key is None:
        raise _FramingError("undecryptable", f"sealed to seal key {sealed.to}; this collector "
                                             f"has no [collector] seal_key")
    try:
        return sealed.open(seal_key)
    except SealError as e:
        raise _FramingError("undecryptable", str(e)) from e


def _frame(topic: str, topic_device: str | None, payload: bytes,
           max_bytes: int, *, sealed: bool = False) -> Sequence[SignedPunch | tuple[bytes, str]]:
    """Steps (1)-(3); raise _FramingError to reject the whole message.

    ``sealed``: ``payload`` is what a sealed envelope held (its clear device already matched
    the topic); per-punch results are judged as for a plain envelope."""
    # (1) size: before parsing anything, so a huge payload costs nothing.
    if len(payload) > max_bytes:
        raise _FramingError("oversized", f"payload is {len(payload)} bytes, limit {max_bytes}")
    # (2) strict decode.
    items: Sequence[SignedPunch | tuple[bytes, str]]
    try:
        env = Envelope.from_bytes(payload, max_bytes=max_bytes)
        device, items = env.device, env.punches
    except DecodeError as e:  # OversizeError cannot happen: (1) bounds the size
        salvaged = _salvage(payload)
        if salvaged is None:
            raise _FramingError("malformed", f"sealed envelope holds: {e}" if sealed
                                else str(e)) from e
        device, items = salvaged
    # (3) topic device == payload device == every punch's device.
    if topic_device is None:
        raise _FramingError("bad-topic", f"topic {topic[:120]!r} is not a device punches topic")
    if device != topic_device:
        raise _FramingError("device-mismatch", (
            f"the sealed envelope of {topic_device!r} holds an envelope of {device!r}"
            if sealed else
            f"payload device {device!r} published on the topic of {topic_device!r}"))
    for item in items:
        claimed = (item.punch.device if isinstance(item, SignedPunch)
                   else _claimed_device(loads(item[0])))
        if claimed is not None and claimed != topic_device:
            raise _FramingError("device-mismatch", f"a punch names device {claimed!r} on the "
                                                   f"topic of {topic_device!r}")
    return items


def _reject(signed: SignedPunch, topic: str, received_at: int, reason: str,
            detail: str) -> RejectionFact:
    p = signed.punch
    return RejectionFact(reason=reason, detail=f"seq {p.seq}: {detail}"[:500], topic=topic,
                         raw=signed.to_bytes(), received_at=received_at, device=p.device)


def _lookup_key(signed: SignedPunch, topic: str, received_at: int,
                registry: RegistryView) -> VerifyKey | RejectionFact:
    """Steps (4)-(5): the key that must have signed this punch, or its rejection."""
    p = signed.punch
    # (4) device known and active; (5) key registered, active, valid from that seq.
    try:
        return registry.key_for(p.device, p.key, p.seq)
    except RegistryError as e:
        return _reject(signed, topic, received_at, registry_reason(e), str(e))

