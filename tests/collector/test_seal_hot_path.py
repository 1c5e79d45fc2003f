"""What the append's hot path does for encryption at rest (DESIGN.md §8.6, docs/protocol.md
§13.17), checked against the definitions: a sealed body is the XChaCha20-Poly1305 (IETF) of
the body under its data key, nonce in the header, as nacl's reference binding computes and
opens it; a credential's blind index tag, memoised per keyring, is the HMAC the definition
says under the index key and survives the memo's bound; a device time's data-key period,
memoised per UTC day, is its UTC month on every boundary (month and year ends, before the
epoch)."""

from __future__ import annotations

import datetime as dt
import hashlib
import hmac

import pytest
from nacl import bindings as sodium

from collector import KeyringError, LedgerError
from collector.ledger import body_crypto, keyring
from collector.ledger.keyring import Keyring, period_of
from collector.ledger.sqlbase import SQLStore
from tests.collector.keyring_kit import ORIGIN, MemoryKek


@pytest.mark.parametrize("size", [0, 1, 287, 4096])
def test_a_sealed_body_is_standard_xchacha20_poly1305_under_its_aad(size: int) -> None:
    key, kid, bh = bytes(range(32)), "k" * body_crypto.KEY_ID_BYTES, "ab" * 32
    plain = bytes(i % 251 for i in range(size))
    stored = body_crypto.seal(plain, idx=7, body_hash=bh, key_id=kid, key=key)
    assert stored[:4] == body_crypto.MAGIC
    assert body_crypto.sealed_key_id(stored) == kid
    nonce = stored[4 + body_crypto.KEY_ID_BYTES:body_crypto.HEADER_BYTES]
    ad = body_crypto.body_aad(7, bh, kid)
    assert sodium.crypto_aead_xchacha20poly1305_ietf_decrypt(
        stored[body_crypto.HEADER_BYTES:], ad, nonce, key) == plain
    assert body_crypto.open_body(stored, idx=7, body_hash=bh, key=key) == plain
    with pytest.raises(LedgerError, match="does not open"):     # bound to its entry
        body_crypto.open_body(stored, idx=8, body_hash=bh, key=key)
    again = body_crypto.seal(plain, idx=7, body_hash=bh, key_id=kid, key=key)
    assert again[:body_crypto.HEADER_BYTES] != stored[:body_crypto.HEADER_BYTES]  # fresh nonce
    with pytest.raises(KeyringError, match="32 bytes"):
        body_crypto.seal(plain, idx=7, body_hash=bh, key_id=kid, key=key[:16])


def _definition(ring: Keyring, value: str, purpose: str) -> str:
    sub = hmac.new(ring.index_key(), b"timeclock blind index\x00" + purpose.encode(),
                   hashlib.sha256).digest()
    return hmac.new(sub, value.encode(), hashlib.sha256).hexdigest()


def test_blind_tags_are_the_hmac_of_the_definition_before_and_after_the_memo_bound(
        store: SQLStore, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(keyring, "BLINDS_MAX", 8)
    ring = Keyring(store, MemoryKek(), origin=ORIGIN)
    values = [f"em4100:{i:010d}" for i in range(20)]
    first = [ring.blind(v) for v in values]          # fills and clears the memo twice
    assert first == [_definition(ring, v, "credential") for v in values]
    assert [ring.blind(v) for v in values] == first   # the same tags from the memo
    assert ring.blind(values[0], purpose="other") == _definition(ring, values[0], "other")
    assert ring.blind(values[0], purpose="other") != first[0]
    assert len(ring._blinds) <= 8                     # noqa: SLF001 - the bound itself


@pytest.mark.parametrize("when", [
    "1969-12-31T23:59:59.999999", "1970-01-01T00:00:00", "2026-01-31T23:59:59.999999",
    "2026-02-01T00:00:00", "2026-12-31T23:59:59.999999", "2027-01-01T00:00:00",
    "2028-02-29T12:00:00"])
def test_period_of_is_the_utc_month_on_every_boundary(when: str) -> None:
    t = dt.datetime.fromisoformat(when).replace(tzinfo=dt.UTC)
    us = (t - dt.datetime(1970, 1, 1, tzinfo=dt.UTC)) // dt.timedelta(microseconds=1)
    assert period_of(us) == t.strftime("%Y-%m")
    assert period_of(us) == t.strftime("%Y-%m")       # from the memo


def test_a_batch_is_sealed_body_by_body_as_seal_defines_it() -> None:
    """seal_many (the append's batch form): each output is seal's format under its own entry's
    aad and key, opened by nacl's reference binding; every nonce is fresh; a bad key is
    refused for the whole batch, as seal refuses it."""
    keys = [bytes(range(32)), bytes(range(1, 33))]
    kids = ["dk-" + "a" * 32, "dk-" + "b" * 32]
    items = [(idx, bytes(i % 251 for i in range(size)), f"{idx:064x}", kids[idx % 2],
              keys[idx % 2]) for idx, size in enumerate([287, 0, 1, 4096, 300, 287])]
    out = body_crypto.seal_many(items)
    assert len(out) == len(items)
    nonces = set()
    for (idx, plain, bh, kid, key), stored in zip(items, out, strict=True):
        assert stored[:4] == body_crypto.MAGIC
        assert body_crypto.sealed_key_id(stored) == kid
        assert len(stored) == body_crypto.HEADER_BYTES + len(plain) + body_crypto.TAG_BYTES
        nonce = stored[4 + body_crypto.KEY_ID_BYTES:body_crypto.HEADER_BYTES]
        nonces.add(nonce)
        assert sodium.crypto_aead_xchacha20poly1305_ietf_decrypt(
            stored[body_crypto.HEADER_BYTES:], body_crypto.body_aad(idx, bh, kid), nonce,
            key) == plain
        assert body_crypto.open_body(stored, idx=idx, body_hash=bh, key=key) == plain
    assert len(nonces) == len(items)
    assert body_crypto.seal_many([]) == []
    with pytest.raises(KeyringError, match="32 bytes"):
        body_crypto.seal_many([*items, (9, b"{}", "00" * 32, kids[0], keys[0][:16])])
    with pytest.raises(KeyringError, match="35 characters"):
        body_crypto.seal_many([(9, b"{}", "00" * 32, "dk-short", keys[0])])


def test_data_keys_of_a_batch_are_data_key_of_each_pair_cold_and_warm(store: SQLStore) -> None:
    """Keyring.data_keys (one query per period; cached keys in one pass): the keys data_key
    gives each pair, unwrapping each stored key once with a cold cache and never when warm;
    a pair without a key gets one created in the transaction. (A destroyed pair's next key:
    tests/collector/test_erasure.py.)"""
    kek = MemoryKek()
    ring = Keyring(store, kek, origin=ORIGIN)
    pairs = {(f"E{i:04d}", "2026-01"): 10 + i for i in range(12)} | {("E0000", "2026-02"): 40}
    with store.transaction(1) as tx:
        made = {p: ring.data_key(tx, *p, idx=idx) for p, idx in pairs.items()}
    cold = Keyring(store, kek, origin=ORIGIN)
    before = kek.unwraps
    new = ("E9999", "2026-01")
    with store.transaction(2) as tx:
        got = cold.data_keys(tx, {**pairs, new: 60})
    assert kek.unwraps - before == len(pairs)                # each stored key once
    assert {p: got[p] for p in pairs} == made
    assert store.query("SELECT subject, period, created_idx FROM tc_data_keys WHERE "
                       "key_id = ?", (got[new].key_id,)) == [("E9999", "2026-01", 60)]
    with store.transaction(3) as tx:
        warm = cold.data_keys(tx, {**pairs, new: 61})
        assert {p: cold.data_key(tx, *p, idx=0) for p in [*pairs, new]} == warm
    assert warm == got
    assert kek.unwraps - before == len(pairs)                # nothing unwrapped again
