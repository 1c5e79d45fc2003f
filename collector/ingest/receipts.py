"""Signed receipts (DESIGN.md §4): which seqs a clock may delete, signed with the log key.

A receipt tells a clock "delete these seqs from your queue". Acking a seq whose genuine
punch is not durably recorded would lose that punch for good, so the rule is narrower than
"anything with an entry":

    A collector acks (device, seq) only after ``store.append`` has returned (committed), and
    only when the ledger durably holds, for that (device, seq), a punch whose Ed25519
    signature verified under the key the registry names for that device and seq:
      - APPENDED  : this punch is now a ``punch`` entry;
      - DUPLICATE : a punch with the same hash is already a ``punch`` entry;
      - CONFLICT  : a *verified* punch with another hash is recorded, and this one (verified
                    too, steps 4-6 passed) is in quarantine with a ``rejection`` entry.
    Rejected punches (REJECTED: bad signature, unknown/revoked device or key, key not valid
    for the seq, malformed...) are never acked, even though they are quarantined with a
    rejection entry.

Why: a rejected punch's (device, seq) is only a claim. A forged or mis-signed punch, or one
signed by a revoked (possibly stolen) key, could carry the seq of a genuine punch that has
not reached the ledger yet; acking it would make the genuine clock delete that unrecorded
punch. The quarantined bytes could not replace it (they are not a valid punch of that
device). Not acking also lets a clock retry: a punch signed with a rotated key that the
operator registers a bit late is accepted on a later delivery. The cost is that a clock
whose punches keep failing keeps resending them (each delivery is quarantined again and
counted) until an operator acts — visible, never silent. A CONFLICT is acked because both
versions are validly signed by the device's key and both are durably kept; the alert, not
the clock's queue, is where a cloned key or restored device gets resolved.

Receipts are version 2 (DESIGN.md §8.4) when the caller says where each acked punch landed
(``landed``: (device, seq) -> (the hash of the punch the ledger holds for that seq, its
entry idx, which is its Merkle leaf index)): for a CONFLICT that is the recorded punch, not
the one just quarantined, so the clock that sent the other one keeps it.

``acked`` ranges are sorted, disjoint and merged (wire.ack.ranges_from_seqs); a receipt
never carries more than ``MAX_ACK_RANGES`` ranges (more seqs are split over receipts).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence

from collector.ledger.base import AppendResult, Outcome
from wire.ack import MAX_ACK_PUNCHES, MAX_ACK_RANGES, Ack, SignedAck, ranges_from_seqs
from wire.keys import SigningKey
from wire.topics import acks

ACKABLE = frozenset({Outcome.APPENDED, Outcome.DUPLICATE, Outcome.CONFLICT})


def ackable_seqs(results: Iterable[AppendResult]) -> dict[str, set[int]]:
    """Per device, the seqs that the receipt rule allows acking (see the module doc)."""
    out: dict[str, set[int]] = {}
    for r in results:
        if r.outcome in ACKABLE and r.device is not None and r.seq is not None:
            out.setdefault(r.device, set()).add(r.seq)
    return out


Landed = Mapping[tuple[str, int], tuple[str, int]]
"""(device, seq) -> (punch hash the ledger holds, entry idx = leaf index)."""


def build_receipts(seqs_by_device: Mapping[str, Iterable[int]], log_key: SigningKey, *,
                   now_us: int, landed: Landed | None = None) -> list[tuple[str, SignedAck]]:
    """Signed receipts, as ``(acks topic, receipt)``, one or more per device, sorted by device;
    v2 (with each punch's hash and leaf) when ``landed`` names every acked seq."""
    out: list[tuple[str, SignedAck]] = []
    for device in sorted(seqs_by_device):
        seqs = sorted(set(seqs_by_device[device]))
        if landed is not None and all((device, s) in landed for s in seqs):
            for i in range(0, len(seqs), MAX_ACK_PUNCHES):
                part = tuple((s, *landed[(device, s)]) for s in seqs[i:i + MAX_ACK_PUNCHES])
                ack = Ack.landed(device, part, at=now_us, log=log_key.key_id)
                out.append((acks(device), ack.sign(log_key)))
            continue
        ranges = ranges_from_seqs(seqs_by_device[device])
        for i in range(0, len(ranges), MAX_ACK_RANGES):
            ack = Ack(device=device, acked=ranges[i:i + MAX_ACK_RANGES], at=now_us,
                      log=log_key.key_id)
            out.append((acks(device), ack.sign(log_key)))
    return out


def receipts_for(results: Sequence[AppendResult], log_key: SigningKey, *,
                 now_us: int, landed: Landed | None = None) -> list[tuple[str, SignedAck]]:
    """Receipts for the ackable outcomes of one committed ``append``."""
    return build_receipts(ackable_seqs(results), log_key, now_us=now_us, landed=landed)
