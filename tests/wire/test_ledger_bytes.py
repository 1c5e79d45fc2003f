"""wire.ledger.entry_leaf_bytes, the store's fast path for an entry's bytes, is byte-identical to
the canonical form of :class:`wire.ledger.Entry` (DESIGN.md §6): on the vectors and on
seeded random fields of every kind, and it refuses a kind the contract does not know."""

from __future__ import annotations

import hashlib
import json
import random
from pathlib import Path

import pytest

from wire.errors import DecodeError
from wire.ledger import KINDS, LEDGER_DOMAIN, Entry, entry_leaf_bytes

VECTORS = Path(__file__).resolve().parents[1] / "vectors" / "punch-v1.json"


def _vectors() -> list[dict[str, object]]:
    ledger: list[dict[str, object]] = json.loads(VECTORS.read_text())["ledger"]
    return ledger


def test_the_vectors_entries_byte_for_byte() -> None:
    rows = _vectors()
    assert rows, "the vectors hold ledger entries"
    for row in rows:
        e = row["entry"]
        assert isinstance(e, dict)
        data = entry_leaf_bytes(idx=e["idx"], kind=e["kind"], at=e["at"], body=e["body"],
                                prev=e["prev"])
        assert data == LEDGER_DOMAIN + str(row["canonical"]).encode()
        assert hashlib.sha256(data).hexdigest() == row["entry_hash"]


def test_random_fields_of_every_kind_match_the_entry_dataclass() -> None:
    rng = random.Random(20261201)  # noqa: S311 - reproducible: the same fields every run
    for i in range(2000):
        kind = sorted(KINDS)[i % len(KINDS)]
        idx = rng.choice([0, 1, rng.randrange(10**9), 2**53 - 1])
        at = rng.choice([0, rng.randrange(2**53)])
        body = rng.randbytes(32).hex()
        prev = rng.randbytes(32).hex()
        want = LEDGER_DOMAIN + Entry(idx=idx, kind=kind, at=at, body=body, prev=prev).to_bytes()
        assert entry_leaf_bytes(idx=idx, kind=kind, at=at, body=body, prev=prev) == want


def test_an_unknown_kind_is_refused() -> None:
    with pytest.raises(DecodeError, match="kind"):
        entry_leaf_bytes(idx=1, kind="payroll", at=1, body="0" * 64, prev="0" * 64)
