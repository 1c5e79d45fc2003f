"""SQLite schema of the ledger (version 2), applied by ``SQLiteStore`` when it opens a file.

Version 2 adds the Merkle tree's node table ``tc_merkle`` (collector.ledger.tree): opening a
version 1 file upgrades it in one transaction (:data:`TREE_DDL`, then the tree is built from
the entries, then ``meta.schema`` becomes 2). :data:`SCHEMA_V1` is kept for that test.

Tables: ``entries`` (the chain) and ``bodies`` are the record; ``punches``, ``devices``,
``keys`` are projections of it (derived, rebuilt-able); ``quarantine``, ``retained`` and
``checkpoints`` are append-only side records.

Invariants enforced by the database itself (triggers), not only by the code:
- an entry is inserted only at idx = size with prev = hash of entry size-1 (one chain);
- UPDATE/DELETE of entries, punches, quarantine, retained, checkpoints, tc_merkle raises; so
  does UPDATE of bodies and DELETE of devices/keys;
- an entry is inserted only when its Merkle leaf (tc_merkle level 0, same idx) already is, so
  the append writes the nodes first and the tree covers every entry;
- a body may be deleted only when a ``retention`` entry (recorded in ``retained``, joined to
  an entry of kind ``retention`` after it) covers its idx, and never the body of a ``device``
  or ``retention`` entry (verifying the rest of the ledger needs them).
"""

from __future__ import annotations

from collector.ledger import keyring, people_tables

SCHEMA_VERSION = 2

_ZERO = "0" * 64


def _forbid(table: str, op: str) -> str:
    return (f"CREATE TRIGGER IF NOT EXISTS {table}_no_{op.lower()} BEFORE {op} ON {table} "
            f"BEGIN SELECT RAISE(ABORT, 'timeclock: {op} on {table} refused: the ledger is "
            f"append-only'); END;")


# D15 retention purge (collector.ledger.retention_tables): the one UPDATE of punches and of
# quarantine allowed, blanking the personal columns / raw bytes of an entry whose body a
# ``retention`` entry (joined through ``retained``) has removed; every other column unchanged.
# An erasure (``shred``, DESIGN.md §8.6: collector.records.erasure) removes bodies the same way.
_REMOVED = ("NOT EXISTS (SELECT 1 FROM bodies WHERE idx = OLD.idx) AND EXISTS (SELECT 1 FROM "
            "retained r JOIN entries e ON e.idx = r.retention_idx "
            "AND e.kind IN ('retention', 'shred') "
            "WHERE OLD.idx BETWEEN r.first_idx AND r.last_idx)")
_PURGE_ONLY_PUNCHES = f"""CREATE TRIGGER IF NOT EXISTS punches_no_update BEFORE UPDATE ON punches
WHEN NOT (NEW.device IS OLD.device AND NEW.seq IS OLD.seq AND NEW.punch_hash IS OLD.punch_hash
  AND NEW.idx IS OLD.idx AND NEW.key_id IS OLD.key_id AND NEW.site IS OLD.site
  AND NEW.credential = '' AND NEW.action = '' AND NEW.reader = '' AND NEW.clock = ''
  AND NEW.ts = 0 AND {_REMOVED})
BEGIN SELECT RAISE(ABORT, 'timeclock: UPDATE on punches refused: only the retention purge of a \
removed body may blank its personal columns (the ledger is append-only)'); END;"""
_PURGE_ONLY_QUARANTINE = f"""CREATE TRIGGER IF NOT EXISTS quarantine_no_update BEFORE UPDATE
ON quarantine
WHEN NOT (NEW.id IS OLD.id AND NEW.idx IS OLD.idx AND NEW.received_at IS OLD.received_at
  AND NEW.topic IS OLD.topic AND NEW.reason IS OLD.reason AND NEW.device IS OLD.device
  AND NEW.raw_sha256 IS OLD.raw_sha256 AND NEW.size IS OLD.size AND length(NEW.raw) = 0
  AND NEW.detail = '' AND {_REMOVED})
BEGIN SELECT RAISE(ABORT, 'timeclock: UPDATE on quarantine refused: only the retention purge \
of a removed body may blank its raw bytes (the ledger is append-only)'); END;"""

TRIGGER_NAMES: tuple[str, ...] = (
    "entries_chain", "bodies_need_entry", "bodies_delete_needs_retention",
    "entries_no_update", "entries_no_delete", "punches_no_update", "punches_no_delete",
    "quarantine_no_update", "quarantine_no_delete", "retained_no_update",
    "retained_no_delete", "checkpoints_no_update", "checkpoints_no_delete",
    "bodies_no_update", "devices_no_delete", "keys_no_delete",
    "entries_need_leaf", "tc_merkle_no_update", "tc_merkle_no_delete",
    *people_tables.SQLITE_TRIGGERS,
)

_V1 = f"""
CREATE TABLE IF NOT EXISTS meta (
    key   TEXT PRIMARY KEY,
    value TEXT NOT NULL
);
CREATE TABLE IF NOT EXISTS entries (
    idx   INTEGER PRIMARY KEY,
    kind  TEXT NOT NULL,
    at    INTEGER NOT NULL,
    body  TEXT NOT NULL,          -- sha256 hex of the body bytes
    prev  TEXT NOT NULL,
    hash  TEXT NOT NULL
);
CREATE TABLE IF NOT EXISTS bodies (
    idx   INTEGER PRIMARY KEY,
    body  BLOB NOT NULL           -- canonical JSON bytes of the fact
);
CREATE TABLE IF NOT EXISTS punches (
    device      TEXT NOT NULL,
    seq         INTEGER NOT NULL,
    punch_hash  TEXT NOT NULL,
    idx         INTEGER NOT NULL,
    key_id      TEXT NOT NULL,
    ts          INTEGER NOT NULL,
    clock       TEXT NOT NULL,
    credential  TEXT NOT NULL,
    action      TEXT NOT NULL,
    reader      TEXT NOT NULL,
    site        TEXT NOT NULL,
    PRIMARY KEY (device, seq)
) WITHOUT ROWID;
CREATE INDEX IF NOT EXISTS punches_ts ON punches (ts);
CREATE TABLE IF NOT EXISTS devices (
    device        TEXT PRIMARY KEY,
    site          TEXT NOT NULL,
    status        TEXT NOT NULL,
    enrolled_idx  INTEGER NOT NULL,
    changed_idx   INTEGER NOT NULL
);
CREATE TABLE IF NOT EXISTS keys (
    key_id          TEXT PRIMARY KEY,
    device          TEXT NOT NULL,
    public_b64      TEXT NOT NULL,
    from_seq        INTEGER NOT NULL,
    until_seq       INTEGER,
    status          TEXT NOT NULL,
    registered_idx  INTEGER NOT NULL
);
CREATE INDEX IF NOT EXISTS keys_device ON keys (device);
CREATE TABLE IF NOT EXISTS quarantine (
    id           INTEGER PRIMARY KEY AUTOINCREMENT,
    idx          INTEGER NOT NULL,
    received_at  INTEGER NOT NULL,
    topic        TEXT NOT NULL,
    reason       TEXT NOT NULL,
    detail       TEXT NOT NULL,
    device       TEXT,
    raw          BLOB NOT NULL,
    raw_sha256   TEXT NOT NULL,
    size         INTEGER NOT NULL
);
CREATE TABLE IF NOT EXISTS retained (
    retention_idx  INTEGER NOT NULL,
    first_idx      INTEGER NOT NULL,
    last_idx       INTEGER NOT NULL,
    CHECK (first_idx <= last_idx AND last_idx < retention_idx)
);
CREATE INDEX IF NOT EXISTS retained_range ON retained (first_idx, last_idx);
CREATE TABLE IF NOT EXISTS checkpoints (
    id     INTEGER PRIMARY KEY AUTOINCREMENT,
    log    TEXT NOT NULL,
    size   INTEGER NOT NULL,
    head   TEXT NOT NULL,
    at     INTEGER NOT NULL,
    sig    TEXT NOT NULL,
    UNIQUE (log, size, at, sig)
);

CREATE TRIGGER IF NOT EXISTS entries_chain BEFORE INSERT ON entries
WHEN NEW.idx IS NOT COALESCE((SELECT MAX(idx) FROM entries), -1) + 1
  OR NEW.prev IS NOT COALESCE((SELECT hash FROM entries WHERE idx = NEW.idx - 1), '{_ZERO}')
BEGIN SELECT RAISE(ABORT,
    'timeclock: entry refused: idx must be the next one and prev the hash of the last entry');
END;
CREATE TRIGGER IF NOT EXISTS bodies_need_entry BEFORE INSERT ON bodies
WHEN NOT EXISTS (SELECT 1 FROM entries WHERE idx = NEW.idx)
BEGIN SELECT RAISE(ABORT, 'timeclock: body refused: no entry has this idx'); END;
CREATE TRIGGER IF NOT EXISTS bodies_delete_needs_retention BEFORE DELETE ON bodies
WHEN NOT EXISTS (
    SELECT 1 FROM retained r JOIN entries e ON e.idx = r.retention_idx
    AND e.kind IN ('retention', 'shred') WHERE OLD.idx BETWEEN r.first_idx AND r.last_idx)
  OR EXISTS (SELECT 1 FROM entries WHERE idx = OLD.idx AND kind IN ('device', 'retention'))
BEGIN SELECT RAISE(ABORT,
    'timeclock: DELETE on bodies refused: no retention entry covers this idx (append-only)');
END;
{_forbid("entries", "UPDATE")}
{_forbid("entries", "DELETE")}
{_PURGE_ONLY_PUNCHES}
{_forbid("punches", "DELETE")}
{_PURGE_ONLY_QUARANTINE}
{_forbid("quarantine", "DELETE")}
{_forbid("retained", "UPDATE")}
{_forbid("retained", "DELETE")}
{_forbid("checkpoints", "UPDATE")}
{_forbid("checkpoints", "DELETE")}
{_forbid("bodies", "UPDATE")}
{_forbid("devices", "DELETE")}
{_forbid("keys", "DELETE")}
"""  # noqa: S608 - a constant: no input reaches this DDL

# Version 2: the Merkle tree's complete subtrees (collector.ledger.tree), one statement each
# (the v1 → v2 upgrade runs them inside its own transaction).
TREE_DDL: tuple[str, ...] = (
    "CREATE TABLE IF NOT EXISTS tc_merkle (\n"
    "    level  INTEGER NOT NULL,\n"
    "    idx    INTEGER NOT NULL,\n"
    "    hash   BLOB NOT NULL CHECK (length(hash) = 32),\n"
    "    PRIMARY KEY (level, idx)\n"
    ") WITHOUT ROWID",
    "CREATE TRIGGER IF NOT EXISTS entries_need_leaf BEFORE INSERT ON entries\n"
    "WHEN NOT EXISTS (SELECT 1 FROM tc_merkle WHERE level = 0 AND idx = NEW.idx)\n"
    "BEGIN SELECT RAISE(ABORT, 'timeclock: entry refused: its Merkle leaf is not in "
    "tc_merkle (the tree must cover every entry)'); END",
    _forbid("tc_merkle", "UPDATE").rstrip(";"),
    _forbid("tc_merkle", "DELETE").rstrip(";"),
    # The people directory's projection (collector.ledger.people_tables): a v1 file upgraded
    # gets it with the tree.
    *people_tables.SQLITE_STATEMENTS,
)

# Indexes for the reads of the console and the compliance page (issue 16): entries by kind
# (alerts, reviews, policies and holds, corrections without a scan of the chain) and punches
# by idx (the rows appended since a view, the retention plan's ranges). Read aids only, no
# rule: a file opened without them gets them (SQLiteStore), a version stays a version.
READ_INDEXES = (
    "CREATE INDEX IF NOT EXISTS entries_kind ON entries (kind, idx)",
    "CREATE INDEX IF NOT EXISTS punches_idx ON punches (idx)",
)

_VERSION = "INSERT OR IGNORE INTO meta (key, value) VALUES ('schema', '{}');\n"
SCHEMA_V1 = _V1 + _VERSION.format(1)
SCHEMA = (_V1 + "".join(f"{stmt};\n" for stmt in TREE_DDL)
          # §8.6 data keys (collector.ledger.keyring; an older file gets them on first use)
          + "".join(f"{stmt};\n" for stmt in keyring.SQLITE_STATEMENTS)
          + "".join(f"{stmt};\n" for stmt in READ_INDEXES)
          + _VERSION.format(SCHEMA_VERSION))
