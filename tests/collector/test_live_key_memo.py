"""The keyring's memo of live data keys on the append path (collector.ledger.keyring
``Keyring.data_keys``, SQLiteStore.write_stamp): a batch whose (subject, month) keys the
writer's connection found alive in an earlier transaction takes them without reading
``tc_data_keys`` again, and never once anything could have changed them — another
connection's commit (an erasure by the CLI, an insider's ``sqlite3`` shell), a rollback of
the transaction that read them, or a key destroyed through this very connection. A key handed
out after its destruction would seal new punches under a key nobody holds: lost data."""

from __future__ import annotations

import sqlite3
from pathlib import Path

import pytest

from collector.ledger.body_crypto import sealed_key_id
from collector.ledger.keyring import DataKey, Keyring
from collector.ledger.sqlite import SQLiteStore
from collector.records import erasure
from tests.collector.keyring_kit import BADGE, NOW, ORIGIN, MemoryKek, personal_store
from tests.collector.ledger_kit import Clock

LATER = NOW + 10**6
PAIR = ("E1001", "2025-11")     # E1001's November: personal_store's first punch


Keyed = tuple[SQLiteStore, Keyring, MemoryKek, Clock]


@pytest.fixture
def keyed(sqlite_store: SQLiteStore, tmp_path: Path) -> Keyed:
    kek = MemoryKek()
    ring, clock = personal_store(sqlite_store, tmp_path, kek=kek)
    return sqlite_store, ring, kek, clock


def _key_table_statements(store: SQLiteStore) -> list[str]:
    seen: list[str] = []
    store._conn.set_trace_callback(  # noqa: SLF001 - the statements this connection runs
        lambda sql: seen.append(sql) if "tc_data_keys" in sql else None)
    return seen


def _warm(store: SQLiteStore, ring: Keyring, pairs: dict[tuple[str, str], int]
          ) -> dict[tuple[str, str], DataKey]:
    with store.transaction(LATER) as tx:
        return ring.data_keys(tx, pairs)


def _erase(store: SQLiteStore) -> erasure.ErasureResult:
    return erasure.erase(store, now_us=LATER, employee="E1001", reason="gdpr-17",
                         case="DSR-7", by="alice", approved_by="bob")


def _newest_body_key(store: SQLiteStore, ring: Keyring) -> tuple[str, bool]:
    """(subject, destroyed) of the data key the newest body is sealed under."""
    ((body,),) = store.query("SELECT body FROM bodies ORDER BY idx DESC LIMIT 1")
    (row,) = ring.rows([sealed_key_id(bytes(body))]).values()
    return row.subject, row.destroyed


def test_a_warm_batch_reads_no_key_row_while_nothing_changed(
        keyed: Keyed) -> None:
    store, ring, kek, _ = keyed
    pairs = {PAIR: 100, ("E1001", "2025-12"): 101}
    first = _warm(store, ring, pairs)
    seen = _key_table_statements(store)
    unwraps = kek.unwraps
    assert _warm(store, ring, pairs) == first
    assert seen == []                   # the memo: no query on tc_data_keys
    assert kek.unwraps == unwraps
    # A pair not in the memo is read (only it), and then remembered too.
    new = {**pairs, ("E1000", "2025-11"): 102}
    got = _warm(store, ring, new)
    assert {p: got[p] for p in pairs} == first
    assert seen != []
    assert [s for s in seen if "E1001" in s] == []      # only E1000's row was read
    seen.clear()
    assert _warm(store, ring, new) == got
    assert seen == []


def test_another_connections_erasure_is_seen_by_the_next_batch(
        keyed: Keyed, sqlite_path: Path) -> None:
    store, ring, kek, _ = keyed
    warm = _warm(store, ring, {PAIR: 100})[PAIR]
    other = SQLiteStore(sqlite_path)           # as `timeclock-collector erase` would
    try:
        other.use_keyring(Keyring(other, kek, origin=ORIGIN))
        res = _erase(other)
    finally:
        other.close()
    assert warm.key_id in res.keys
    seen = _key_table_statements(store)
    again = _warm(store, ring, {PAIR: 200})[PAIR]
    assert seen != []                          # read again: another connection committed
    assert again.key_id != warm.key_id
    assert [r.subject for r in ring.rows([again.key_id]).values()] == [
        f"E1001+{res.entry_idx}"]


def test_a_key_destroyed_by_another_process_is_seen_by_the_next_batch(
        keyed: Keyed, sqlite_path: Path) -> None:
    """The memo's stamp is what catches a commit by a connection outside this process (here
    an insider's plain sqlite3, destroying a live key under the shred entry of an earlier
    erasure, which the table's trigger allows): no Keyring.destroy ran here."""
    store, ring, _, _ = keyed
    shred = _erase(store).entry_idx
    pair = ("E1000", "2025-11")
    _warm(store, ring, {pair: 100})               # created
    warm = _warm(store, ring, {pair: 101})[pair]  # read: remembered
    insider = sqlite3.connect(sqlite_path)
    try:
        insider.execute("UPDATE tc_data_keys SET wrapped = x'', destroyed_idx = ? "
                        "WHERE key_id = ?", (shred, warm.key_id))
        insider.commit()
    finally:
        insider.close()
    again = _warm(store, ring, {pair: 102})[pair]
    assert again.key_id != warm.key_id
    assert [(r.subject, r.destroyed) for r in ring.rows([again.key_id]).values()] == [
        (f"E1000+{shred}", False)]


def test_an_erasure_through_the_same_connection_voids_the_memo(keyed: Keyed) -> None:
    store, ring, _, clock = keyed
    warm = _warm(store, ring, {PAIR: 100})[PAIR]
    res = _erase(store)                        # this store's own connection: same version
    assert warm.key_id in res.keys
    again = _warm(store, ring, {PAIR: 200})[PAIR]
    assert [(r.subject, r.destroyed) for r in ring.rows([again.key_id]).values()] == [
        (f"E1001+{res.entry_idx}", False)]
    # And the writer's path after it: a new punch of that badge seals under a live key.
    store.append([clock.fact(credential=BADGE)], now_us=LATER + 1)
    assert _newest_body_key(store, ring)[1] is False


def test_keys_read_in_a_transaction_that_rolled_back_are_not_remembered(
        keyed: Keyed) -> None:
    store, ring, _, _ = keyed
    pair = ("E1001", "2026-03")                # no key yet
    with pytest.raises(RuntimeError, match="rolled back"), \
            store.transaction(LATER) as tx:     # noqa: PT012 - the whole transaction
        made = ring.data_keys(tx, {pair: 100})[pair]            # created in this transaction
        assert ring.data_keys(tx, {pair: 101})[pair] == made    # found: remembered
        raise RuntimeError("rolled back")
    assert ring.rows([made.key_id]) == {}
    kept = _warm(store, ring, {pair: 102})[pair]
    assert kept.key_id != made.key_id
    assert [r.subject for r in ring.rows([kept.key_id]).values()] == ["E1001"]
