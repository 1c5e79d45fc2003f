"""D5: verify the live store incrementally; the CLI; checkpoint making and policy."""

from __future__ import annotations

import sqlite3
from pathlib import Path

import pytest

from collector.cli.main import main
from collector.ingest.checkpoints import (
    CheckpointPolicy,
    LogKeyError,
    load_log_key,
    make_checkpoint,
)
from collector.ledger import open_store
from collector.ledger.audit import VerifyStateError, load_state, save_state, verify_store
from collector.ledger.base import EventFact
from collector.ledger.schema_sqlite import SCHEMA, TRIGGER_NAMES
from collector.ledger.sqlbase import SQLStore
from tests.collector.ledger_kit import T0, Clock, seeded_key
from wire.keys import save_signing_key
from wire.ledger import make_entry

LOG_KEY = seeded_key("log-key")
LOG_KEYS = {LOG_KEY.key_id: LOG_KEY.verify_key}


def _attack(db: Path, *stmts: tuple[str, tuple[object, ...]]) -> None:
    conn = sqlite3.connect(db, isolation_level=None)
    for t in TRIGGER_NAMES:
        conn.execute(f"DROP TRIGGER IF EXISTS {t}")
    for sql, params in stmts:
        conn.execute(sql, params)
    conn.executescript(SCHEMA)
    conn.close()


def test_d5_verify_resumes_from_the_last_verified_checkpoint(store: SQLStore,
                                                             tmp_path: Path) -> None:
    c = Clock("clock-1")
    store.append([EventFact("device", c.enrolled_body())], now_us=T0)
    store.append([c.fact() for _ in range(20)], now_us=T0)
    make_checkpoint(store, LOG_KEY, T0 + 1)                       # size 21
    store.append([c.fact() for _ in range(3)], now_us=T0 + 2)     # 21..23, not checkpointed
    first = verify_store(store, LOG_KEYS)
    assert first.ok
    assert first.state is not None
    assert (first.resumed_from, first.report.entries, first.state.checkpoint.checkpoint.size) \
        == (0, 24, 21)
    state_file = tmp_path / "state.json"
    save_state(state_file, first.state)
    state = load_state(state_file)
    assert state == first.state

    store.append([c.fact() for _ in range(5)], now_us=T0 + 3)
    make_checkpoint(store, LOG_KEY, T0 + 4)                       # size 29
    second = verify_store(store, LOG_KEYS, state=state)
    assert second.ok, second.report.findings
    assert (second.resumed_from, second.report.entries, second.report.punches) == (21, 8, 8)
    assert second.state is not None
    assert second.state.checkpoint.checkpoint.size == 29
    assert [k.key_id for k in second.state.keys] == [c.key.key_id]


def test_d5_incremental_verify_catches_a_replay_across_the_resume_point(
        sqlite_store: SQLStore, sqlite_path: Path) -> None:
    c = Clock("clock-1")
    sqlite_store.append([EventFact("device", c.enrolled_body())], now_us=T0)
    punches = [c.punch() for _ in range(4)]
    sqlite_store.append([c.fact(p) for p in punches], now_us=T0)
    make_checkpoint(sqlite_store, LOG_KEY, T0)
    state = verify_store(sqlite_store, LOG_KEYS).state
    assert state is not None
    # An attacker appends a well-formed entry that replays seq 2 (recorded before the
    # resume point): only the device chain across the resume point can catch it.
    size, head = sqlite_store.head()
    body = punches[1].to_bytes()
    e = make_entry(idx=size, kind="punch", at=T0, body=body, prev=head)
    _attack(sqlite_path, ("INSERT INTO entries VALUES (?, ?, ?, ?, ?, ?)",
                 (e.idx, e.kind, e.at, e.body, e.prev, e.hash())),
            ("INSERT INTO bodies VALUES (?, ?)", (e.idx, body)))
    result = verify_store(sqlite_store, LOG_KEYS, state=state)
    assert result.resumed_from == 5
    first = result.report.first_failure
    assert first is not None
    assert (first.idx, first.check) == (5, "device-chain")
    assert "more than once" in first.message


def test_verify_state_of_another_ledger_is_refused(store: SQLStore, tmp_path: Path) -> None:
    c = Clock("clock-1")
    store.append([EventFact("device", c.enrolled_body())], now_us=T0)
    make_checkpoint(store, LOG_KEY, T0)
    state = verify_store(store, LOG_KEYS).state
    other = open_store(str(tmp_path / "other.db"))
    other.append([EventFact("device", Clock("clock-2").enrolled_body())], now_us=T0)
    with pytest.raises(VerifyStateError, match="another ledger"):
        verify_store(other, LOG_KEYS, state=state)
    other.close()


def test_verify_cli(sqlite_store: SQLStore, sqlite_path: Path, tmp_path: Path,
                    capsys: pytest.CaptureFixture[str]) -> None:
    c = Clock("clock-1")
    sqlite_store.append([EventFact("device", c.enrolled_body())], now_us=T0)
    sqlite_store.append([c.fact() for _ in range(5)], now_us=T0)
    make_checkpoint(sqlite_store, LOG_KEY, T0)
    state = tmp_path / "vs.json"
    pub = LOG_KEY.verify_key.b64
    args = ["verify", "--store", f"sqlite://{sqlite_path}", "--log-key-pub", pub,
            "--state", str(state)]
    assert main([*args, "--progress"]) == 0
    out = capsys.readouterr()
    assert out.out.startswith("OK: idx 0..5 verified: 6 entries, 5 punches, 1 devices")
    assert "verify [##############################] 6/6 entries (100%)" in out.err
    assert state.exists()
    sqlite_store.append([c.fact()], now_us=T0)
    assert main(args) == 0
    assert capsys.readouterr().out.startswith("OK: idx 6..6 verified: 1 entries")
    _attack(sqlite_path, ("UPDATE bodies SET body = ? WHERE idx = 3", (b"{}",)))
    assert main([*args, "--sample", "0"]) == 0  # unsampled, below the resume point: attested
    capsys.readouterr()                             # by the checkpoint
    assert main(args) == 1          # D5: the 6 older entries are fewer than --sample: all read
    assert "TAMPER at idx 3, check (4) body: sampled entry 3" in capsys.readouterr().out
    assert main([*args, "--full"]) == 1
    out = capsys.readouterr()
    assert out.out.startswith("TAMPERED: idx 0..6: TAMPER at idx 3, check (4) body")
    assert main(["verify", "--store", str(sqlite_path)]) == 2
    assert "needs the collector log public key" in capsys.readouterr().err
    key_file = tmp_path / "log.key"
    save_signing_key(key_file, LOG_KEY)
    assert main(["verify", "--store", str(sqlite_path), "--log-key", str(key_file), "--full",
                 "--json", "--state", str(state)]) == 1
    assert '"first_failure"' in capsys.readouterr().out


def test_log_key_file_must_be_private(tmp_path: Path) -> None:
    path = tmp_path / "log.key"
    save_signing_key(path, LOG_KEY)
    assert load_log_key(path).key_id == LOG_KEY.key_id
    path.chmod(0o644)
    with pytest.raises(LogKeyError, match="chmod 600"):
        load_log_key(path)


def test_checkpoint_policy_every_n_entries_or_t_seconds(store: SQLStore) -> None:
    p = CheckpointPolicy(every_entries=10, every_s=60)
    assert not p.due(0, T0)
    assert p.due(1, T0)                       # never checkpointed: the first entry is due
    p.made(make_checkpoint(store, LOG_KEY, T0))
    p.last_size = 1                           # as if the ledger held one entry then
    assert not p.due(1, T0 + 10**9)           # nothing new: no checkpoint
    assert not p.due(5, T0 + 59_999_999)
    assert p.due(5, T0 + 60_000_000)          # T seconds
    assert p.due(11, T0 + 1)                  # N entries
    restored = CheckpointPolicy.from_store(store, every_entries=10, every_s=60)
    assert (restored.last_size, restored.last_at) == (0, T0)
    with pytest.raises(ValueError, match="every_entries"):
        CheckpointPolicy(every_entries=0)
