"""Checkpoints v2 (DESIGN.md §8.2): C2SP notes made on the checkpoint schedule beside v1,
signed with the log key under the origin, whose root is the stored tree's; stored with their
cosignatures (append-only), published retained on the real broker and re-published when a
cosignature arrives; written to bundles as ``checkpoints.v2.ndjson``; and ``serve`` refuses a
ledger smaller than (or rewritten below) the checkpoint in its state file."""

from __future__ import annotations

import json
import shutil
import sqlite3
from pathlib import Path
from typing import Any

import pytest

from collector import ConfigError, LedgerError
from collector.cli.main import main
from collector.ingest import checkpoints
from collector.ledger import checkpoint_tables
from collector.ledger.sqlbase import SQLStore
from collector.ledger.sqlite import SQLiteStore
from collector.records.exports import export_bundle
from collector.service.config import load_config, parse_config
from collector.service.log_state import (
    STATE_FILE,
    LedgerRollbackError,
    LogState,
    StateFileError,
    check_ledger,
)
from collector.service.runner import Checkpointer, CollectorService
from tests.collector.ledger_kit import T0, Clock
from tests.collector.punch_kit import Device, enroll, new_clock, write_collector_config
from tests.fixtures.mosquitto import MosquittoBroker
from tests.polling import wait_for
from wire.bundle import CHECKPOINTS_V2_FILE, audit_bundle
from wire.canonical import loads
from wire.keys import SigningKey, save_signing_key
from wire.ledger import SignedCheckpoint
from wire.merkle import MemoryTree, entry_leaf_hash
from wire.note import Checkpoint, Note, NoteVerifier
from wire.topics import CHECKPOINT

ORIGIN = "acme.example/timeclock"
LOG_KEY = SigningKey(bytes(range(32)))
WITNESS = SigningKey(bytes(range(1, 33)))


def fill(store: SQLStore, n: int, *, device: str = "clock-a") -> Clock:
    from collector.ledger.base import EventFact  # noqa: PLC0415 - local to the helper

    c = Clock(device)
    store.append([EventFact("device", c.enrolled_body())], now_us=T0)
    if n:
        store.append([c.fact() for _ in range(n)], now_us=T0 + 1)
    return c


def reference_root(store: SQLStore, size: int) -> bytes:
    """The root recomputed from the entries with wire.merkle (independent of the store's tree)."""
    tree = MemoryTree()
    tree.append(entry_leaf_hash(se.entry) for se in store.entries(0, size))
    from wire.merkle import root  # noqa: PLC0415 - local to the helper

    return root(tree, size)


def log_verifier(origin: str = ORIGIN, key: SigningKey = LOG_KEY) -> NoteVerifier:
    return NoteVerifier(origin, key.verify_key)


def witness_verifier(name: str = "witness.example") -> NoteVerifier:
    return NoteVerifier(name, WITNESS.verify_key, 0x04)


# -- tables and notes (both stores) ------------------------------------------------------------

def test_d5_v2_checkpoint_root_is_the_reference_root_and_the_note_verifies(
        store: SQLStore) -> None:
    checkpoint_tables.ensure_schema(store)
    fill(store, 6)
    size, _ = store.head()
    stored = checkpoints.make_checkpoint_v2(store, LOG_KEY, ORIGIN, size, T0 + 5)
    assert (stored.size, stored.cosignatures, stored.made_at) == (7, 0, T0 + 5)
    cp = Checkpoint.open(stored.note, log_verifier())
    assert cp == Checkpoint(ORIGIN, 7, reference_root(store, 7))
    assert stored.note == Checkpoint(ORIGIN, 7, reference_root(store, 7)).sign(LOG_KEY)
    # stored and re-read; an earlier size too
    checkpoints.make_checkpoint_v2(store, LOG_KEY, ORIGIN, 3, T0 + 6)
    assert [c.size for c in checkpoint_tables.all_checkpoints(store)] == [3, 7]
    assert checkpoint_tables.checkpoint_note(store, 7) == stored.note
    assert checkpoint_tables.newest(store, at_most=6).size == 3  # type: ignore[union-attr]
    assert checkpoint_tables.covering(store, 6) == checkpoint_tables.get(store, 7)
    assert checkpoint_tables.covering(store, 7) is None
    # the same checkpoint again (another collector of the ledger) is a no-op
    assert checkpoint_tables.add_checkpoint(store, stored.note, made_at=T0 + 9) is False


@pytest.mark.parametrize(("make", "message"), [
    (lambda s: Checkpoint(ORIGIN, 4, bytes(32)).sign(LOG_KEY), "does not match this ledger"),
    (lambda s: Checkpoint(ORIGIN, 99, bytes(32)).sign(LOG_KEY), "beyond this ledger"),
    (lambda s: Checkpoint("other.example/log", 4, s.merkle_root(4)).sign(LOG_KEY),
     "another checkpoint note is stored for size 4"),
    (lambda s: "not a note\n", "malformed"),
], ids=["forged-root", "beyond-size", "other-origin", "malformed"])
def test_d5_add_checkpoint_refuses(store: SQLStore, make: Any, message: str) -> None:
    checkpoint_tables.ensure_schema(store)
    fill(store, 4)
    checkpoints.make_checkpoint_v2(store, LOG_KEY, ORIGIN, 4, T0)
    with pytest.raises(LedgerError, match=message):
        checkpoint_tables.add_checkpoint(store, make(store), made_at=T0)
    assert [c.size for c in checkpoint_tables.all_checkpoints(store)] == [4]


def test_d5_cosignatures_are_stored_once_and_gathered_into_the_note(store: SQLStore) -> None:
    checkpoint_tables.ensure_schema(store)
    fill(store, 3)
    stored = checkpoints.make_checkpoint_v2(store, LOG_KEY, ORIGIN, 4, T0)
    cp = stored.checkpoint
    w = witness_verifier()
    line = cp.cosign(WITNESS, w.name, timestamp=1_764_140_500).line()
    assert checkpoint_tables.add_cosignature(store, 4, line, w.name, w.key_id, T0 + 1)
    # the same witness again (a later timestamp): the first one is kept
    again = cp.cosign(WITNESS, w.name, timestamp=1_764_140_600).line()
    assert not checkpoint_tables.add_cosignature(store, 4, again, w.name, w.key_id.hex(),
                                                 T0 + 2)
    note = checkpoint_tables.checkpoint_note(store, 4)
    assert note == stored.note + line
    parsed = Note.from_text(note)
    assert Checkpoint.open(note, log_verifier()) == cp
    assert cp.verify_cosignature(parsed, w) == 1_764_140_500
    assert checkpoint_tables.signature_count(store, 4) == 1
    assert checkpoint_tables.get(store, 4).cosignatures == 1  # type: ignore[union-attr]


@pytest.mark.parametrize(("size", "name", "kid", "message"), [
    (5, "witness.example", None, "no checkpoint of size 5"),
    (4, "other.example", None, "not 'other.example'"),
    (4, "witness.example", "00000000", "with key id 00000000"),
    (4, ORIGIN, None, "the log's own name"),
], ids=["unknown-size", "other-name", "other-key-id", "log-name"])
def test_d5_add_cosignature_refuses(store: SQLStore, size: int, name: str, kid: str | None,
                                 message: str) -> None:
    checkpoint_tables.ensure_schema(store)
    fill(store, 3)
    cp = checkpoints.make_checkpoint_v2(store, LOG_KEY, ORIGIN, 4, T0).checkpoint
    signer = name if name != "other.example" else "witness.example"
    w = NoteVerifier(signer, WITNESS.verify_key, 0x04)
    line = cp.cosign(WITNESS, signer, timestamp=1).line()
    with pytest.raises(LedgerError, match=message):
        checkpoint_tables.add_cosignature(store, size, line, name, kid or w.key_id, T0)
    assert checkpoint_tables.signature_count(store, 4) == 0


def test_d5_v2_tables_are_append_only(store: SQLStore) -> None:
    checkpoint_tables.ensure_schema(store)
    fill(store, 3)
    cp = checkpoints.make_checkpoint_v2(store, LOG_KEY, ORIGIN, 4, T0).checkpoint
    w = witness_verifier()
    checkpoint_tables.add_cosignature(store, 4, cp.cosign(WITNESS, w.name, timestamp=1).line(),
                                      w.name, w.key_id, T0)
    for stmt in ("UPDATE tc_checkpoints_v2 SET note = 'x'", "DELETE FROM tc_checkpoints_v2",
                 "UPDATE tc_cosignatures SET line = 'x'", "DELETE FROM tc_cosignatures"):
        with pytest.raises(LedgerError, match="append-only|permission denied"), \
                store.transaction(T0) as tx:
            tx.execute(stmt)
    assert checkpoint_tables.get(store, 4).cosignatures == 1  # type: ignore[union-attr]


# -- origin and config ---------------------------------------------------------------------------

def _cfg(tmp_path: Path, **collector: str) -> dict[str, Any]:
    return {"collector": {"name": "a", "store": f"sqlite://{tmp_path}/l.db",
                          "log_key": str(tmp_path / "log.key"), **collector},
            "mqtt": {"host": "localhost", "port": 8883, "ca_cert": "ca.pem",
                     "cert": "c.pem", "key": "c.key"}}


@pytest.mark.parametrize(("origin", "message"), [
    ("timeclock/ledger", "reserved for v1"),
    ("https://acme.example/timeclock", "schema-less URL"),
    ("acme example", "no spaces"),
], ids=["reserved-prefix", "scheme", "space"])
def test_d5_config_refuses_a_bad_origin(tmp_path: Path, origin: str, message: str) -> None:
    with pytest.raises(ConfigError, match=message) as e:
        parse_config(_cfg(tmp_path, origin=origin), base=tmp_path)
    assert "collector.origin" in str(e.value)


def test_d5_config_origin_and_state_dir(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("STATE_DIRECTORY", raising=False)
    cfg = parse_config(_cfg(tmp_path, origin=ORIGIN, state_dir="state"), base=tmp_path)
    assert (cfg.collector.origin, cfg.collector.state_directory) == (ORIGIN, tmp_path / "state")
    cfg = parse_config(_cfg(tmp_path), base=tmp_path)
    assert (cfg.collector.origin, cfg.collector.state_directory) == (None, tmp_path)
    # under systemd (StateDirectory=timeclock): /var/lib/timeclock, writable where /etc is not
    monkeypatch.setenv("STATE_DIRECTORY", "/var/lib/timeclock:/var/lib/other")
    assert cfg.collector.state_directory == Path("/var/lib/timeclock")


def test_d5_default_origin_is_the_log_keys_and_a_ledger_keeps_its_origin(
        sqlite_store: SQLiteStore) -> None:
    checkpoint_tables.ensure_schema(sqlite_store)
    fill(sqlite_store, 2)
    default = checkpoints.resolve_origin(None, sqlite_store, LOG_KEY)
    assert default == f"timeclock.invalid/{LOG_KEY.key_id}"
    checkpoints.make_checkpoint_v2(sqlite_store, LOG_KEY, default, 3, T0)
    with pytest.raises(checkpoints.OriginError, match=f"set \\[collector\\] origin = "
                                                       f"'{default}'"):
        checkpoints.resolve_origin(ORIGIN, sqlite_store, LOG_KEY)
    assert checkpoints.resolve_origin(default, sqlite_store, LOG_KEY) == default


# -- the state file and the refusal to start on a truncated or rewritten ledger ------------------

def _checkpointed(db: Path, state_dir: Path, entries: int) -> tuple[SQLiteStore, LogState]:
    """A SQLite ledger at ``db`` with ``entries`` punches checkpointed by a Checkpointer that
    keeps its state in ``state_dir``."""
    store = SQLiteStore(db)
    checkpoint_tables.ensure_schema(store)
    fill(store, entries)
    state = LogState(state_dir, log_verifier())
    published: list[bytes] = []
    cpr = Checkpointer(store, LOG_KEY, lambda _t, b: published.append(b), every_entries=1000,
                       every_s=60, origin=ORIGIN, state=state)
    assert cpr.maybe(T0 + 10)
    assert published[-1].decode() == checkpoint_tables.checkpoint_note(store, entries + 1)
    return store, state


def _truncated_copy(src: Path, dst: Path, keep: int) -> None:
    """What a database admin can do: copy the file, drop the triggers, delete every entry
    from ``keep`` on (with its body, punch row, tree nodes and v2 checkpoints)."""
    shutil.copy(src, dst)
    conn = sqlite3.connect(dst)
    for (name,) in conn.execute("SELECT name FROM sqlite_master WHERE type = 'trigger'"
                                ).fetchall():
        conn.execute(f'DROP TRIGGER "{name}"')
    conn.execute("DELETE FROM bodies WHERE idx >= ?", (keep,))
    conn.execute("DELETE FROM punches WHERE idx >= ?", (keep,))
    conn.execute("DELETE FROM entries WHERE idx >= ?", (keep,))
    # a complete subtree (L, k) covers leaves k·2^L … (k+1)·2^L − 1
    conn.execute("DELETE FROM tc_merkle WHERE (idx + 1) * (1 << level) > ?", (keep,))
    conn.execute("DELETE FROM tc_cosignatures WHERE size > ?", (keep,))
    conn.execute("DELETE FROM tc_checkpoints_v2 WHERE size > ?", (keep,))
    conn.execute("DELETE FROM checkpoints WHERE size > ?", (keep,))
    conn.commit()
    conn.close()


def _service(tmp_path: Path, db: Path, state_dir: Path) -> CollectorService:
    key_file = tmp_path / "log.key"
    if not key_file.exists():
        save_signing_key(key_file, LOG_KEY)
    cfg = parse_config(_cfg(tmp_path, store=f"sqlite://{db}", origin=ORIGIN,
                            state_dir=str(state_dir)), base=tmp_path)
    return CollectorService(cfg)


def test_d5_serve_refuses_a_truncated_ledger_naming_both_sizes(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    db, state_dir = tmp_path / "ledger.db", tmp_path / "state"
    store, _ = _checkpointed(db, state_dir, 9)        # checkpoint of size 10 in the state file
    store.close()
    state_file = state_dir / STATE_FILE
    assert Checkpoint.open(state_file.read_text(), log_verifier()).size == 10
    assert state_file.stat().st_mode & 0o777 == 0o600
    assert state_dir.stat().st_mode & 0o777 == 0o700
    cut = tmp_path / "cut.db"
    _truncated_copy(db, cut, keep=6)
    truncated = SQLiteStore(cut)     # the chain and the tree of what remains still agree
    assert (truncated.tree_size(), truncated.head()[0]) == (6, 6)
    assert truncated.merkle_root(6) == reference_root(truncated, 6)
    truncated.close()
    svc = _service(tmp_path, cut, state_dir)
    with pytest.raises(LedgerRollbackError, match="the ledger has 6 entries but this "
                                                  "collector made .* size 10"):
        svc.start()
    svc.stop()
    assert svc.link is None          # refused before connecting anywhere
    # `serve` refuses it before it starts a broker or the API, and says why (exit 2)
    for name in ("ca.pem", "c.pem", "c.key"):
        (tmp_path / name).write_text("unused: refused before any connection\n")
    (tmp_path / "c.key").chmod(0o600)
    cfg_file = tmp_path / "collector.toml"
    cfg_file.write_text(f"""[collector]
name = "a"
store = "sqlite://{cut}"
log_key = "{tmp_path / 'log.key'}"
origin = "{ORIGIN}"
state_dir = "{state_dir}"

[mqtt]
host = "localhost"
port = 8883
ca_cert = "ca.pem"
cert = "c.pem"
key = "c.key"

[api]
cert = "c.pem"
key = "c.key"
port = 1
""")
    assert main(["serve", "--config", str(cfg_file)]) == 2
    err = capsys.readouterr().err
    assert "the ledger has 6 entries" in err
    assert "size 10" in err
    # the untouched ledger starts past the check (and would go on to connect)
    ok = SQLiteStore(db)
    assert check_ledger(ok, LogState(state_dir, log_verifier())).size == 10  # type: ignore[union-attr]
    ok.close()


def test_d5_serve_refuses_a_ledger_rewritten_below_its_checkpoint(tmp_path: Path) -> None:
    db, state_dir = tmp_path / "ledger.db", tmp_path / "state"
    store, _ = _checkpointed(db, state_dir, 5)        # size 6
    store.close()
    # Same size, other history: a ledger of 6 entries built from another clock's punches.
    other = SQLiteStore(tmp_path / "other.db")
    fill(other, 5, device="clock-z")
    other.close()
    svc = _service(tmp_path, tmp_path / "other.db", state_dir)
    with pytest.raises(LedgerRollbackError, match="root at size 6 is not the root"):
        svc.start()
    svc.stop()


def test_d5_state_file_only_grows_and_must_verify(tmp_path: Path) -> None:
    store, state = _checkpointed(tmp_path / "ledger.db", tmp_path / "state", 3)   # size 4
    small = checkpoints.make_checkpoint_v2(store, LOG_KEY, ORIGIN, 2, T0)
    assert not state.save(small.size, small.note)
    assert Checkpoint.open(state.path.read_text(), log_verifier()).size == 4
    store.close()
    forged = LogState(tmp_path / "state", log_verifier(key=WITNESS))
    with pytest.raises(StateFileError, match="not a checkpoint of origin"):
        forged.load()


# -- on the real broker -----------------------------------------------------------------------

def test_d5_v2_note_on_schedule_published_retained_and_republished_with_a_cosignature(
        mosquitto: MosquittoBroker, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("STATE_DIRECTORY", raising=False)
    db = tmp_path / "ledger.db"
    store = SQLiteStore(db)
    clock = new_clock()
    enroll(store, clock)
    cfg_file, log_key = write_collector_config(
        tmp_path / "main", mosquitto, store_url=f"sqlite://{db}",
        extra='[checkpoints]\nevery_entries = 3\n')
    text = cfg_file.read_text().replace("[mqtt]", f'origin = "{ORIGIN}"\n\n[mqtt]')
    cfg_file.write_text(text)
    topic = mosquitto.subscribe("fixture-probe", CHECKPOINT)
    svc = CollectorService(load_config(cfg_file))
    svc.start()
    try:
        assert svc.wait_ready(60)
        dev = Device(mosquitto, clock)
        dev.send(clock.batch(3))
        assert dev.acked_until(log_key, {1, 2, 3}) == {1, 2, 3}
        verifier = NoteVerifier(ORIGIN, log_key.verify_key)
        msgs = topic.get_until(lambda m: Checkpoint.open(m.payload, verifier).size == 4, 60)
        for m in msgs:
            Checkpoint.open(m.payload, verifier)
        cp = Checkpoint.open(msgs[-1].payload, verifier)
        assert cp.root == reference_root(store, 4) == store.merkle_root(4)
        assert msgs[-1].payload.decode() == checkpoint_tables.checkpoint_note(store, 4)
        # v1 is still made for the same size, and stored
        assert store.checkpoints()[-1].checkpoint.size == 4
        state_file = tmp_path / "main" / STATE_FILE     # default: beside the log key
        wait_for(lambda: state_file.exists() and state_file.read_bytes() == msgs[-1].payload,
                 30, "the state file to hold the published note")
        late = mosquitto.subscribe("late-reader", CHECKPOINT)
        retained = late.get(30)
        assert (retained.retain, retained.payload) == (True, msgs[-1].payload)
        # a witness cosigns (stored by whoever received it): published again, state rewritten
        w = witness_verifier()
        line = cp.cosign(WITNESS, w.name, timestamp=1_764_140_500).line()
        checkpoint_tables.add_cosignature(store, 4, line, w.name, w.key_id, T0)
        again = topic.get_until(lambda m: len(Note.from_text(m.payload).signatures) == 2, 60)
        note = again[-1].payload.decode()
        assert note == msgs[-1].payload.decode() + line
        assert cp.verify_cosignature(note, w) == 1_764_140_500
        wait_for(lambda: state_file.read_text() == note, 30,
                 "the state file to hold the cosigned note")
    finally:
        svc.stop()
        store.close()


# -- bundles --------------------------------------------------------------------------------

def _v2_lines(bundle: Path) -> list[dict[str, Any]]:
    return [loads(line) for line in (bundle / CHECKPOINTS_V2_FILE).read_bytes().splitlines()]


def test_d5_bundle_has_checkpoints_v2_covering_its_last_entry(tmp_path: Path,
                                                          capsys: pytest.CaptureFixture[str]
                                                          ) -> None:
    db = tmp_path / "ledger.db"
    store, _ = _checkpointed(db, tmp_path / "state", 4)             # v1 and v2 at size 5
    w = witness_verifier()
    cp5 = checkpoint_tables.get(store, 5).checkpoint                 # type: ignore[union-attr]
    checkpoint_tables.add_cosignature(store, 5, cp5.cosign(WITNESS, w.name, timestamp=7).line(),
                                      w.name, w.key_id, T0)
    fill(store, 0, device="clock-b")                                 # size 6: not covered
    store.close()
    key_file = tmp_path / "log.key"
    save_signing_key(key_file, LOG_KEY)
    assert main(["export", "--store", str(db), "--bundle", str(tmp_path / "b"),
                 "--log-key", str(key_file)]) == 0
    lines = _v2_lines(tmp_path / "b")
    assert [set(d) for d in lines] == [{"note"}, {"note"}]
    cps = [Checkpoint.open(d["note"], log_verifier()) for d in lines]
    assert [c.size for c in cps] == [5, 6]                           # in size order
    entries = (tmp_path / "b" / "ledger.ndjson").read_bytes().splitlines()
    assert len(entries) == 6                                         # the last one is covered
    # the offline verifier (wire.bundle) accepts it, pinned to the log key and the origin
    audit = audit_bundle(tmp_path / "b", pinned=[LOG_KEY.verify_key], origin=ORIGIN)
    assert (audit.ok, audit.v2, audit.origin) == (True, True, ORIGIN), audit.report.findings
    assert cp5.verify_cosignature(lines[0]["note"], w) == 7          # with its cosignatures
    reopened = SQLiteStore(db)
    assert cps[1].root == reference_root(reopened, 6)
    # and the export's own checkpoint is stored (the collector publishes it on its next poll)
    assert checkpoint_tables.newest(reopened).size == 6             # type: ignore[union-attr]
    v1 = [SignedCheckpoint.from_dict(json.loads(x)) for x in
          (tmp_path / "b" / "checkpoints.ndjson").read_bytes().splitlines()]
    assert [c.checkpoint.size for c in v1] == [5]                    # v1 as it was
    reopened.close()
    capsys.readouterr()
    # without the signing key: what is stored, and a warning when it does not cover
    s = SQLiteStore(db)
    fill(s, 0, device="clock-c")
    s.close()
    assert main(["export", "--store", str(db), "--bundle", str(tmp_path / "c"),
                 "--log-key-pub", LOG_KEY.verify_key.b64]) == 0
    assert "no v2 checkpoint covers the bundle's last entry" in capsys.readouterr().err
    assert [Checkpoint.open(d["note"], log_verifier()).size
            for d in _v2_lines(tmp_path / "c")] == [5, 6]


def test_d5_export_bundle_api_writes_v2_lines(sqlite_store: SQLiteStore, tmp_path: Path) -> None:
    checkpoint_tables.ensure_schema(sqlite_store)
    fill(sqlite_store, 3)
    made: list[int] = []

    def sign(size: int) -> object:
        made.append(size)
        return checkpoints.make_checkpoint_v2(sqlite_store, LOG_KEY, ORIGIN, size, T0)

    export_bundle(sqlite_store, tmp_path / "b", [LOG_KEY.verify_key], sign=sign)
    assert made == [4]
    export_bundle(sqlite_store, tmp_path / "c", [LOG_KEY.verify_key], sign=sign)
    assert made == [4]                           # covered already: no second checkpoint
    assert _v2_lines(tmp_path / "b") == _v2_lines(tmp_path / "c")
    with pytest.raises(Exception, match="exists"):
        export_bundle(sqlite_store, tmp_path / "c", [LOG_KEY.verify_key])


def test_d5_a_state_file_that_cannot_be_written_is_logged_and_ingest_goes_on(
        tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    blocker = tmp_path / "not-a-dir"
    blocker.write_text("a file where the state directory should be")
    store = SQLiteStore(tmp_path / "ledger.db")
    checkpoint_tables.ensure_schema(store)
    fill(store, 2)
    published: list[bytes] = []
    cpr = Checkpointer(store, LOG_KEY, lambda _t, b: published.append(b), every_entries=1000,
                       every_s=60, origin=ORIGIN, state=LogState(blocker, log_verifier()))
    assert cpr.maybe(T0)
    assert Checkpoint.open(published[-1], log_verifier()).size == 3
    assert "cannot write" in caplog.text
    assert "would not be refused at the next start" in caplog.text
    store.close()


def test_d5_a_note_holds_at_most_max_signatures_lines(sqlite_store: SQLiteStore) -> None:
    """A fleet of clocks can cosign more often than one note may carry lines (wire.note
    allows MAX_SIGNATURES): the first ones received are in the note, all are stored."""
    from wire.note import MAX_SIGNATURES  # noqa: PLC0415 - local to this test

    checkpoint_tables.ensure_schema(sqlite_store)
    fill(sqlite_store, 1)
    cp = checkpoints.make_checkpoint_v2(sqlite_store, LOG_KEY, ORIGIN, 2, T0).checkpoint
    def line(i: int) -> tuple[str, str, bytes]:
        name = f"{ORIGIN}/devices/clock-{i:04d}"
        w = NoteVerifier(name, WITNESS.verify_key, 0x04)
        return name, cp.cosign(WITNESS, name, timestamp=i).line(), w.key_id

    # most rows in one transaction (the cap is the point here, not 1,000 commits) ...
    with sqlite_store.transaction(T0) as tx:
        for i in range(MAX_SIGNATURES - 2):
            name, text, kid = line(i)
            tx.execute("INSERT INTO tc_cosignatures (size, name, key_id, line, received_at) "
                       "VALUES (?, ?, ?, ?, ?)", (2, name, kid.hex(), text[:-1], T0 + i))
    # ... and the last ones as a receiver stores them
    for i in range(MAX_SIGNATURES - 2, MAX_SIGNATURES):
        name, text, kid = line(i)
        assert checkpoint_tables.add_cosignature(sqlite_store, 2, text, name, kid, T0 + i)
    assert checkpoint_tables.signature_count(sqlite_store, 2) == MAX_SIGNATURES
    note = Note.from_text(checkpoint_tables.checkpoint_note(sqlite_store, 2))
    assert len(note.signatures) == MAX_SIGNATURES
    assert note.signatures[-1].name == f"{ORIGIN}/devices/clock-{MAX_SIGNATURES - 2:04d}"
    assert checkpoint_tables.newest_size(sqlite_store) == (2, MAX_SIGNATURES - 1)


def test_d5_listeners_hear_each_new_checkpoint_once_and_cosignatures_republish(
        sqlite_store: SQLiteStore) -> None:
    checkpoint_tables.ensure_schema(sqlite_store)
    c = fill(sqlite_store, 2)
    published: list[str] = []
    cpr = Checkpointer(sqlite_store, LOG_KEY, lambda _t, b: published.append(b.decode()),
                       every_entries=2, every_s=3600, origin=ORIGIN, poll_s=0)
    heard: list[int] = []
    cpr.on_checkpoint.append(lambda cp: heard.append(cp.size))
    assert cpr.maybe(T0)
    assert not cpr.maybe(T0 + 1)                      # nothing new: nothing published
    assert (heard, len(published)) == ([3], 1)
    w = witness_verifier()
    cp = checkpoint_tables.get(sqlite_store, 3).checkpoint  # type: ignore[union-attr]
    checkpoint_tables.add_cosignature(sqlite_store, 3, cp.cosign(WITNESS, w.name,
                                                                 timestamp=5).line(),
                                      w.name, w.key_id, T0)
    assert not cpr.maybe(T0 + 2)
    assert (heard, len(published)) == ([3], 2)        # republished, not a new checkpoint
    assert cp.verify_cosignature(published[-1], w) == 5
    sqlite_store.append([c.fact() for _ in range(2)], now_us=T0 + 3)
    assert cpr.maybe(T0 + 4)
    assert heard == [3, 5]
    assert Checkpoint.open(published[-1], log_verifier()).size == 5
