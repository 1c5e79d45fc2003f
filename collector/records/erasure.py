"""Erasure for one person by key destruction (DESIGN.md §8.6; issue 12 item 4; control D15;
docs/operations.md "Encryption at rest and erasure").

:func:`erase` runs as ONE store transaction, under the chain lock:

1. the refusals: the same principal asking and approving (dual control), no keyring, an
   active legal hold that keeps the person or any of their punches (collector.records.
   retention's holds: employee, credential, device, site, time range), nothing to erase;
2. the evidence: one ``shred`` entry (wire.bodies_shred) naming the destroyed key ids and
   the idx ranges of every entry whose body they sealed;
3. those bodies deleted (the ``retained`` rows of the shred entry let the triggers allow it,
   as for a retention run), the ``punches`` rows' personal columns blanked (the retention
   purge, which the triggers allow for a removed body);
4. the data keys blanked in ``tc_data_keys`` (``destroyed_idx`` = the shred entry) and
   dropped from the cache.

Invariants: all of it commits or nothing does; afterwards payroll, the API, proofs and the
bundle hold nothing of the person's erased entries, and ``verify --full`` and
``timeclock-verify`` pass (the chain commits to hashes, which stay); the erasure itself is
in the ledger, naming the employee id, never a name. What an operator must still run so the
freed pages leave the files (SQLite ``VACUUM``, PostgreSQL ``VACUUM FULL``; WAL and backups
age out): docs/operations.md.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from collector import ErasureError, KeyringError
from collector.ledger import body_crypto, retention_tables
from collector.ledger.sqlbase import SQLStore, Tx
from wire.bodies_shred import ranges

_IN_CHUNK = 500
ERASED = body_crypto.ERASED


@dataclass(frozen=True)
class ErasureResult:
    entry_idx: int
    keys: tuple[str, ...]
    entries: tuple[tuple[int, int], ...]
    purged_punches: int

    @property
    def count(self) -> int:
        return sum(b - a + 1 for a, b in self.entries)

    def to_dict(self) -> dict[str, Any]:
        return {"entry": self.entry_idx, "keys": list(self.keys),
                "entries": [list(r) for r in self.entries], "count": self.count,
                "purged": {"punches": self.purged_punches}}


def _chunks(values: Sequence[Any]) -> list[Sequence[Any]]:
    return [values[i:i + _IN_CHUNK] for i in range(0, len(values), _IN_CHUNK)]


def _sealed_by(tx: Tx, key_ids: Sequence[str]) -> list[int]:
    """The idx of every stored body sealed under one of ``key_ids`` (a scan of the header)."""
    out: list[int] = []
    for chunk in _chunks(key_ids):
        marks = ", ".join("?" * len(chunk))
        out += [int(r[0]) for r in tx.rows(
            f"SELECT idx FROM bodies WHERE substr(body, 1, 4) = ? AND substr(body, 5, 35) "  # noqa: S608 - placeholders only
            f"IN ({marks}) ORDER BY idx", (body_crypto.MAGIC, *(k.encode() for k in chunk)))]
    return sorted(out)


def _held(tx: Tx, store: SQLStore, employee: str, idxs: Sequence[int]) -> str | None:
    """What an active hold keeps of ``employee``'s erased entries (None: nothing)."""
    rules = retention_tables.load_rules(tx.rows)
    holds = rules.active_holds()
    if not holds:
        return None
    # The rows hold the credential's blind index: a credential hold is matched by its own.
    creds = {store.blind_credential(h.credential) or h.credential: h.credential
             for _, h in holds if h.credential is not None}
    for hidx, h in holds:
        if h.employee == employee:
            return f"hold {h.name} (idx {hidx}, case {h.case}) keeps employee {employee}"
    for chunk in _chunks(list(idxs)):
        rows = tx.rows(f"SELECT idx, device, site, ts, credential FROM punches WHERE idx IN "  # noqa: S608 - placeholders only
                       f"({', '.join('?' * len(chunk))})", chunk)
        for idx, device, site, ts, credential in rows:
            for hidx, h in holds:
                cred = str(credential) if ":" in str(credential) else creds.get(
                    str(credential), "-:-")      # no hold names it: matches no credential
                if h.matches(str(device), str(site), int(ts), credential=cred,
                             employee=employee, resolved=True) is not False:
                    return (f"hold {h.name} (idx {hidx}, case {h.case}) keeps the punch at "
                            f"entry {idx}")
    return None


def erase(store: SQLStore, *, employee: str, reason: str, case: str, by: str,
          approved_by: str, now_us: int) -> ErasureResult:
    """Destroy ``employee``'s data keys and record it (see the module docstring)."""
    if by == approved_by:
        raise ErasureError(f"dual control: {by} asked for the erasure and cannot approve it "
                           f"too (--approved-by names a second principal)")
    if store.sealer is None:
        raise KeyringError(body_crypto.NO_KEK)
    ring = store.sealer.ring
    with store.transaction(now_us, what=f"erasure of employee {employee}") as tx:
        keys = tuple(sorted(k.key_id for k in ring.subject_keys(employee) if not k.destroyed))
        if not keys:
            raise ErasureError(f"employee {employee} has no data keys left to destroy (never "
                               f"recorded under encryption, or already erased): nothing done")
        idxs = _sealed_by(tx, keys)
        held = _held(tx, store, employee, idxs)
        if held is not None:
            raise ErasureError(f"erasure refused: {held}; release the hold first "
                               f"(`timeclock-collector retention hold release`)")
        spans = ranges(idxs)
        body = {"v": 1, "employee": employee, "keys": list(keys),
                "entries": [[a, b] for a, b in spans], "count": len(idxs),
                "reason": reason, "case": case, "by": by, "approved_by": approved_by}
        entry = tx.record("shred", body)
        for a, b in spans:
            tx.execute("INSERT INTO retained (retention_idx, first_idx, last_idx) "
                       "VALUES (?, ?, ?)", (entry, a, b))
            tx.execute("DELETE FROM bodies WHERE idx >= ? AND idx <= ?", (a, b))
        purged, _ = retention_tables.unpurged(tx.rows)
        retention_tables.purge_punches(tx.execute)
        # The directory's row keeps the id (the manager links, the shred entry name it),
        # not the name or department (the trigger allows a later entry's change).
        tx.execute("UPDATE tc_employees SET name = ?, department = ?, changed_idx = ? "
                   "WHERE employee_id = ?", (ERASED, ERASED, entry, employee))
        ring.destroy(tx, keys, idx=entry)
    return ErasureResult(entry, keys, spans, purged)
