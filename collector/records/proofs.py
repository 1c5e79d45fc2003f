"""Proofs for everyone who holds a piece of the ledger (DESIGN.md §8.1–8.2): what the API
(``/v1/punches/{device}/{seq}/proof``, ``/v1/log/consistency``, ``/v1/log/checkpoint``) and
the CLI (``timeclock-collector proof …``) return, built in one place.

- A punch proof is the punch's ledger entry, its leaf index, an RFC 9162 inclusion proof
  (wire.merkle.InclusionProof JSON) and the newest v2 checkpoint note that covers it, with
  every cosignature gathered: whoever holds the punch checks ``entry.body`` against its
  hash, the leaf against the proof, the proof against the note's root, and the note against
  the log key and the witnesses they trust.
- A consistency proof (wire.merkle.ConsistencyProof JSON) between two tree sizes lets the
  holder of an older checkpoint check that a newer one extends it.

Every proof is read from the stored tree in O(log n) (collector.ledger); nothing here
recomputes hashes. Requests the ledger cannot answer raise :class:`ProofRequestError`
(400) or :class:`ProofNotFoundError` (404), never a LedgerError (which means "unavailable").
"""

from __future__ import annotations

from typing import Any

from collector import CollectorError
from collector.ledger import checkpoint_tables
from collector.ledger.sqlbase import SQLStore
from wire.merkle import ConsistencyProof, InclusionProof


class ProofRequestError(CollectorError):
    """A proof was asked for sizes or positions this ledger does not have."""


class ProofNotFoundError(ProofRequestError):
    """No such punch, or no checkpoint covers it yet."""


def punch_proof(store: SQLStore, device: str, seq: int, *, size: int | None = None
                ) -> dict[str, Any]:
    """``{"entry","punch_hash","leaf_index","inclusion_proof","checkpoint"}`` of a punch.

    The proof leads to the stored checkpoint of ``size`` when given (e.g. the one a clock
    holds), else to the newest checkpoint covering the punch that carries a cosignature, or,
    while none does, to the newest covering it."""
    found = store.punch_hash(device, seq)
    if found is None:
        raise ProofNotFoundError(f"no recorded punch {device}#{seq}")
    punch_hash, idx = found
    se = next(store.entries(idx, idx + 1), None)
    if se is None:
        raise ProofNotFoundError(f"no ledger entry {idx} for punch {device}#{seq}")
    if size is not None:
        cp = checkpoint_tables.get(store, size)
        if cp is None:
            raise ProofNotFoundError(f"no checkpoint of size {size} is stored")
        if size <= idx:
            raise ProofRequestError(f"the checkpoint of size {size} does not include punch "
                                    f"{device}#{seq} (entry {idx}); ask for a size > {idx}")
    else:
        cp = checkpoint_tables.covering(store, idx, cosigned=True)
    if cp is None:
        newest = checkpoint_tables.newest(store)
        raise ProofNotFoundError(
            f"punch {device}#{seq} (entry {idx}) is not covered by a checkpoint yet (newest: "
            f"{'none' if newest is None else f'size {newest.size}'}); ask again after the "
            f"next checkpoint")
    proof = InclusionProof(idx, cp.size, tuple(store.inclusion_proof(idx, cp.size)))
    return {"entry": {"entry": se.entry.to_dict(), "hash": se.hash},
            "punch_hash": punch_hash, "leaf_index": idx,
            "inclusion_proof": proof.to_dict(), "checkpoint": cp.note}


def consistency(store: SQLStore, old_size: int, new_size: int) -> dict[str, Any]:
    """The RFC 9162 consistency proof from tree size ``old_size`` to ``new_size``."""
    size = store.tree_size()
    if not 0 <= old_size <= new_size:
        raise ProofRequestError(f"from={old_size} and to={new_size}: need 0 ≤ from ≤ to")
    if new_size > size:
        raise ProofRequestError(f"to={new_size} is beyond this ledger's {size} entries")
    proof = ConsistencyProof(old_size, new_size,
                             tuple(store.consistency_proof(old_size, new_size)))
    return proof.to_dict()


def newest_size(store: SQLStore) -> int:
    """The size of the newest v2 checkpoint (ProofNotFoundError if there is none)."""
    cp = checkpoint_tables.newest(store)
    if cp is None:
        raise ProofNotFoundError("this ledger has no v2 checkpoint yet")
    return cp.size


def newest_checkpoint(store: SQLStore) -> dict[str, Any]:
    """``{"note": <newest v2 checkpoint note with every signature line>}``."""
    cp = checkpoint_tables.newest(store)
    if cp is None:
        raise ProofNotFoundError("this ledger has no v2 checkpoint yet")
    return {"note": cp.note}
