"""Checkpoints v2 (DESIGN.md §8.2) and their cosignatures (§8.3), stored beside the chain.

Tables (both append-only: SQLite triggers; PostgreSQL triggers, and the app role may only
SELECT and INSERT them):

- ``tc_checkpoints_v2 (size PRIMARY KEY, note, made_at)``: the C2SP checkpoint note exactly as
  the log key signed it (body and the one log signature line), one per tree size. Every
  collector of a ledger shares the log key and the origin, and Ed25519 is deterministic, so
  two collectors checkpointing the same size write the same note; a different note for a
  stored size is refused (a misconfigured origin or log key).
- ``tc_cosignatures (size, name, key_id, line, received_at, PRIMARY KEY (size, name))``: one
  cosignature line (``— <name> <base64>``, without its newline) per witness and checkpoint;
  the first one a witness gave is kept, later ones for the same size are ignored.

The full note of a checkpoint (:func:`checkpoint_note`) is the stored note followed by its
cosignature lines in the order they were received (at most wire.note.MAX_SIGNATURES lines in
all; later cosignatures stay in the table): what is published on
``timeclock/v1/log/checkpoint``, served by the API and written to ``checkpoints.v2.ndjson``.

Invariant: a stored note's root is the store's Merkle root at its size (checked on insert
against ``SQLStore.merkle_root``), so every proof the store serves leads to a stored note.
Cosignatures are verified by their receiver (collector.ingest.cosignatures) before
:func:`add_cosignature`; this module only checks that a line is well formed and names the
witness and key id it is stored under.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

import psycopg
from psycopg import sql as pgsql

from collector import LedgerError
from collector.ledger.postgres import redact
from collector.ledger.sqlbase import SQLStore
from wire.errors import WireError
from wire.merkle import InclusionProof
from wire.note import MAX_SIGNATURES, Checkpoint, Note, NoteSignature

TABLES = ("tc_checkpoints_v2", "tc_cosignatures")

_SQLITE = [
    """CREATE TABLE IF NOT EXISTS tc_checkpoints_v2 (
    size     INTEGER PRIMARY KEY,
    note     TEXT NOT NULL,
    made_at  INTEGER NOT NULL
)""",
    """CREATE TABLE IF NOT EXISTS tc_cosignatures (
    size         INTEGER NOT NULL,
    name         TEXT NOT NULL,
    key_id       TEXT NOT NULL,
    line         TEXT NOT NULL,
    received_at  INTEGER NOT NULL,
    PRIMARY KEY (size, name)
)""",
    *(f"CREATE TRIGGER IF NOT EXISTS {t}_no_{op.lower()} BEFORE {op} ON {t} BEGIN SELECT "
      f"RAISE(ABORT, 'timeclock: {op} on {t} refused: the ledger is append-only'); END"
      for t in TABLES for op in ("UPDATE", "DELETE")),
]

_SQLITE_TRIGGERS = tuple(f"{t}_no_{op}" for t in TABLES for op in ("update", "delete"))

_POSTGRES = [
    """CREATE TABLE IF NOT EXISTS tc_checkpoints_v2 (
    size     BIGINT PRIMARY KEY,
    note     TEXT NOT NULL,
    made_at  BIGINT NOT NULL
)""",
    """CREATE TABLE IF NOT EXISTS tc_cosignatures (
    size         BIGINT NOT NULL,
    name         TEXT NOT NULL,
    key_id       TEXT NOT NULL,
    line         TEXT NOT NULL,
    received_at  BIGINT NOT NULL,
    PRIMARY KEY (size, name)
)""",
    # tc_append_only() is created by the ledger schema (schema_postgres), migrated first.
    *(f"CREATE OR REPLACE TRIGGER {t}_append_only BEFORE UPDATE OR DELETE ON {t} "
      f"FOR EACH ROW EXECUTE FUNCTION tc_append_only()" for t in TABLES),
    *(f"CREATE OR REPLACE TRIGGER {t}_no_truncate BEFORE TRUNCATE ON {t} "
      f"FOR EACH STATEMENT EXECUTE FUNCTION tc_append_only()" for t in TABLES),
]
_GRANTS = [f"GRANT SELECT, INSERT ON {t} TO {{role}}" for t in TABLES]


@dataclass(frozen=True, slots=True)
class StoredCheckpoint:
    """A v2 checkpoint as stored, with its full note (every signature line gathered)."""

    checkpoint: Checkpoint
    note: str
    made_at: int
    cosignatures: int          # how many cosignature lines the note carries

    @property
    def size(self) -> int:
        return self.checkpoint.size


# -- schema -----------------------------------------------------------------------------------

def ensure_schema(store: SQLStore) -> None:
    """Create the tables in a SQLite ledger; check they exist in a PostgreSQL one."""
    if store.ph != "?":
        have = store.query("SELECT COUNT(*) FROM information_schema.tables "
                           "WHERE table_name = ANY(?)", (list(TABLES),))
        if int(have[0][0]) != len(TABLES):
            raise LedgerError("the checkpoint v2 tables are missing in this PostgreSQL "
                              "ledger: run `timeclock-collector migrate` as the owner role")
        return
    # Read first: an auditor's read-only copy that has the tables needs no write lock.
    have = store.query("SELECT COUNT(*) FROM sqlite_master WHERE name IN "
                       "(?, ?, ?, ?, ?, ?)", (*TABLES, *_SQLITE_TRIGGERS))
    if int(have[0][0]) == len(TABLES) + len(_SQLITE_TRIGGERS):
        return
    with store.transaction(0, what="creating the checkpoint v2 tables") as tx:
        for stmt in _SQLITE:
            tx.execute(stmt)


def migrate_postgres(owner_dsn: str, app_role: str | None = None) -> None:
    """Create the tables as the owner role; ``app_role`` may only SELECT and INSERT them."""
    try:
        with psycopg.connect(owner_dsn, autocommit=True) as conn, conn.transaction():
            for stmt in _POSTGRES:
                conn.execute(stmt)
            if app_role is not None:
                for g in _GRANTS:
                    conn.execute(pgsql.SQL(g).format(
                        role=pgsql.Identifier(app_role)))
    except psycopg.Error as e:
        raise LedgerError(f"creating the checkpoint v2 tables in {redact(owner_dsn)} "
                          f"failed: {e}") from e


# -- writes -----------------------------------------------------------------------------------

def add_checkpoint(store: SQLStore, note: str, *, made_at: int) -> bool:
    """Store a log-signed checkpoint note (body and the log's signature only).

    Refused (LedgerError) unless its root is this store's Merkle root at its size, or when
    another note is stored for that size. True if it was new, False if already stored.
    """
    try:
        parsed = Note.from_text(note)
        cp = Checkpoint.from_body(parsed.body)
    except WireError as e:
        raise LedgerError(f"checkpoint note is malformed: {e}") from e
    if len(parsed.signatures) != 1 or parsed.signatures[0].name != cp.origin:
        raise LedgerError("a checkpoint is stored with exactly one signature, the log's "
                          "under its origin; cosignatures are stored apart")
    if cp.size > store.tree_size():
        raise LedgerError(f"checkpoint of size {cp.size} is beyond this ledger's "
                          f"{store.tree_size()} entries")
    if store.merkle_root(cp.size) != cp.root:
        raise LedgerError(f"checkpoint of size {cp.size} does not match this ledger's "
                          f"Merkle root at that size")
    with store.transaction(made_at, what="storing a checkpoint") as tx:
        rows = tx.rows("SELECT note FROM tc_checkpoints_v2 WHERE size = ?", (cp.size,))
        if rows:
            if str(rows[0][0]) != note:
                raise LedgerError(f"another checkpoint note is stored for size {cp.size}: "
                                  "do the collectors of this ledger share one origin and "
                                  "one log key?")
            return False
        tx.execute("INSERT INTO tc_checkpoints_v2 (size, note, made_at) VALUES (?, ?, ?)",
                   (cp.size, note, made_at))
    return True


def _key_id_hex(key_id: bytes | str) -> str:
    if isinstance(key_id, bytes | bytearray):
        return bytes(key_id).hex()
    return key_id.lower()


def add_cosignature(store: SQLStore, size: int, line: str, name: str,  # noqa: PLR0917 - the signature fixed in the issue plan, called by collector.ingest.cosignatures
                    key_id: bytes | str, received_at: int) -> bool:
    """Store witness ``name``'s cosignature ``line`` of the checkpoint of ``size``.

    The caller has verified it (with the witness key whose note key id is ``key_id``, 4
    bytes or 8 hex digits). Refused when no checkpoint of that size is stored, when the line
    is malformed or names another witness or key id, or when ``name`` is the log's own.
    True if stored, False if that witness had already cosigned this checkpoint.
    """
    text = line[:-1] if line.endswith("\n") else line
    try:
        sig = NoteSignature.from_line(text)
    except WireError as e:
        raise LedgerError(f"cosignature line of {name[:80]!r} is malformed: {e}") from e
    kid = _key_id_hex(key_id)
    if sig.name != name or sig.key_id.hex() != kid:
        raise LedgerError(f"cosignature line is by {sig.name[:80]!r} with key id "
                          f"{sig.key_id.hex()}, not {name[:80]!r} with key id {kid[:16]}")
    with store.transaction(received_at, what="storing a cosignature") as tx:
        rows = tx.rows("SELECT note FROM tc_checkpoints_v2 WHERE size = ?", (size,))
        if not rows:
            raise LedgerError(f"no checkpoint of size {size} is stored to cosign")
        if Checkpoint.from_body(Note.from_text(str(rows[0][0])).body).origin == name:
            raise LedgerError(f"{name[:80]!r} is the log's own name, not a witness")
        if tx.rows("SELECT 1 FROM tc_cosignatures WHERE size = ? AND name = ?", (size, name)):
            return False
        tx.execute("INSERT INTO tc_cosignatures (size, name, key_id, line, received_at) "
                   "VALUES (?, ?, ?, ?, ?)", (size, name, kid, text, received_at))
    return True


# -- reads ------------------------------------------------------------------------------------

def _full(note: str, lines: list[str]) -> str:
    # A note holds at most MAX_SIGNATURES lines (wire.note): the log's and the first
    # cosignatures received; any beyond stay in the table.
    return note + "".join(f"{ln}\n" for ln in lines[:MAX_SIGNATURES - 1])


def _stored(size: int, note: str, made_at: int, lines: list[str]) -> StoredCheckpoint:
    full = _full(note, lines)
    try:
        cp = Checkpoint.from_body(Note.from_text(full).body)
    except WireError as e:
        raise LedgerError(f"stored checkpoint of size {size} is malformed: {e}") from e
    if cp.size != size:
        raise LedgerError(f"stored checkpoint under size {size} is of size {cp.size}")
    return StoredCheckpoint(cp, full, int(made_at), min(len(lines), MAX_SIGNATURES - 1))


def _lines(store: SQLStore, size: int) -> list[str]:
    return [str(r[0]) for r in store.query(
        "SELECT line FROM tc_cosignatures WHERE size = ? ORDER BY received_at, name",
        (size,))]


def checkpoint_note(store: SQLStore, size: int) -> str:
    """The note of the checkpoint of ``size`` with every signature line gathered for it."""
    found = get(store, size)
    if found is None:
        raise LedgerError(f"no checkpoint of size {size} is stored")
    return found.note


def get(store: SQLStore, size: int) -> StoredCheckpoint | None:
    rows = store.query("SELECT size, note, made_at FROM tc_checkpoints_v2 WHERE size = ?",
                       (size,))
    if not rows:
        return None
    s, note, made_at = rows[0]
    return _stored(int(s), str(note), int(made_at), _lines(store, int(s)))


def newest(store: SQLStore, *, at_most: int | None = None) -> StoredCheckpoint | None:
    """The largest stored checkpoint (of size ≤ ``at_most`` when given)."""
    if at_most is None:
        rows = store.query("SELECT MAX(size) FROM tc_checkpoints_v2")
    else:
        rows = store.query("SELECT MAX(size) FROM tc_checkpoints_v2 WHERE size <= ?",
                           (at_most,))
    if not rows or rows[0][0] is None:
        return None
    return get(store, int(rows[0][0]))


def newest_size(store: SQLStore) -> tuple[int, int] | None:
    """(size, cosignatures in its note) of the largest stored checkpoint, in one query (for
    polling: the note is read only when this changed)."""
    rows = store.query("SELECT c.size, (SELECT COUNT(*) FROM tc_cosignatures s "
                       "WHERE s.size = c.size) FROM tc_checkpoints_v2 c "
                       "ORDER BY c.size DESC LIMIT 1")
    if not rows:
        return None
    return int(rows[0][0]), min(int(rows[0][1]), MAX_SIGNATURES - 1)


def covering(store: SQLStore, idx: int, *, cosigned: bool = False
             ) -> StoredCheckpoint | None:
    """The newest checkpoint that includes entry ``idx`` (size > idx), if any; with
    ``cosigned``, the newest such one that carries a cosignature, if there is one."""
    if cosigned:
        rows = store.query("SELECT MAX(c.size) FROM tc_checkpoints_v2 c WHERE c.size > ? AND "
                           "EXISTS (SELECT 1 FROM tc_cosignatures s WHERE s.size = c.size)",
                           (idx,))
        if rows and rows[0][0] is not None:
            return get(store, int(rows[0][0]))
    cp = newest(store)
    return cp if cp is not None and cp.size > idx else None


def all_checkpoints(store: SQLStore, *, at_most: int | None = None) -> list[StoredCheckpoint]:
    """Every stored checkpoint (of size ≤ ``at_most``), in size order, with full notes."""
    limit = 2**63 - 1 if at_most is None else at_most
    lines: dict[int, list[str]] = {}
    for size, line in store.query(
            "SELECT size, line FROM tc_cosignatures WHERE size <= ? "
            "ORDER BY size, received_at, name", (limit,)):
        lines.setdefault(int(size), []).append(str(line))
    return [_stored(int(s), str(n), int(m), lines.get(int(s), [])) for s, n, m in store.query(
        "SELECT size, note, made_at FROM tc_checkpoints_v2 WHERE size <= ? ORDER BY size",
        (limit,))]


def signature_count(store: SQLStore, size: int) -> int:
    """How many cosignatures are stored for the checkpoint of ``size`` (cheap; for polling)."""
    rows = store.query("SELECT COUNT(*) FROM tc_cosignatures WHERE size = ?", (size,))
    return int(rows[0][0]) if rows else 0


# -- proofs (for the API, the CLI and payroll exports with proofs) ----------------------------

def inclusion_proofs(store: SQLStore, indices: Iterable[int], size: int
                     ) -> dict[int, InclusionProof]:
    """RFC 9162 inclusion proofs of the entries ``indices`` in the tree of ``size`` leaves
    (the size of one stored checkpoint, so that each proof leads to its signed root).

    Raises LedgerError for an index not below ``size`` or a size no checkpoint has.
    """
    if get(store, size) is None:
        raise LedgerError(f"no checkpoint of size {size} is stored; proofs lead to a "
                          f"checkpoint's root")
    out: dict[int, InclusionProof] = {}
    for i in sorted(set(indices)):
        if not 0 <= i < size:
            raise LedgerError(f"entry {i} is not in the checkpoint of size {size}")
        out[i] = InclusionProof(i, size, tuple(store.inclusion_proof(i, size)))
    return out
