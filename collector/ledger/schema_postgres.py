"""PostgreSQL schema of the ledger (version 2), applied by ``postgres.migrate`` as the owner role.

Version 2 adds the Merkle tree's node table ``tc_merkle`` (collector.ledger.tree). The DDL is
idempotent; ``migrate`` runs it, builds the tree of the entries a version 1 ledger already
holds and only then records version 2 (``meta.schema``), all in one transaction.

Same tables as the SQLite schema. Invariants enforced by the database itself:
- triggers: an entry is inserted only at idx = size with prev = hash of entry size-1; a body
  only for an existing entry whose ``body`` column is its SHA-256; UPDATE, DELETE and
  TRUNCATE of entries, punches, quarantine, retained, checkpoints, tc_merkle raise; an entry
  is inserted only when its Merkle leaf already is (the tree covers every entry); UPDATE of
  bodies and DELETE of devices/keys raise; a body may be deleted only when a ``retention`` entry
  covers it (never a ``device`` or ``retention`` body);
- privileges: the app role (what collectors connect as) gets SELECT and INSERT only, plus
  UPDATE on the registry projection (devices, keys) and DELETE on bodies (retention, still
  guarded by the trigger). It owns nothing, so it cannot disable or drop a trigger.
"""

from __future__ import annotations

from collector.ledger import keyring, people_tables
from collector.ledger.pg_guards import forbid

SCHEMA_VERSION = 2

_ZERO = "0" * 64

_APPEND_ONLY = ("entries", "retained", "checkpoints", "tc_merkle")
# punches and quarantine: no DELETE or TRUNCATE; UPDATE only as the D15 retention purge
# (tc_punches_purge, tc_quarantine_purge; collector.ledger.retention_tables).
_PURGED = ("punches", "quarantine")
_REMOVED = """NOT EXISTS (SELECT 1 FROM bodies b WHERE b.idx = OLD.idx)
       AND EXISTS (SELECT 1 FROM retained r
                   JOIN entries e ON e.idx = r.retention_idx AND e.kind IN ('retention', 'shred')
                   WHERE OLD.idx BETWEEN r.first_idx AND r.last_idx)"""


SCHEMA = f"""
CREATE TABLE IF NOT EXISTS meta (
    key   TEXT PRIMARY KEY,
    value TEXT NOT NULL
);
CREATE TABLE IF NOT EXISTS entries (
    idx   BIGINT PRIMARY KEY,
    kind  TEXT NOT NULL,
    at    BIGINT NOT NULL,
    body  TEXT NOT NULL,
    prev  TEXT NOT NULL,
    hash  TEXT NOT NULL
);
-- read aid of the console (issue 16; schema_sqlite.READ_INDEXES): entries by kind
CREATE INDEX IF NOT EXISTS entries_kind ON entries (kind, idx);
CREATE TABLE IF NOT EXISTS bodies (
    idx   BIGINT PRIMARY KEY,
    body  BYTEA NOT NULL
);
CREATE TABLE IF NOT EXISTS punches (
    device      TEXT NOT NULL,
    seq         BIGINT NOT NULL,
    punch_hash  TEXT NOT NULL,
    idx         BIGINT NOT NULL,
    key_id      TEXT NOT NULL,
    ts          BIGINT NOT NULL,
    clock       TEXT NOT NULL,
    credential  TEXT NOT NULL,
    action      TEXT NOT NULL,
    reader      TEXT NOT NULL,
    site        TEXT NOT NULL,
    PRIMARY KEY (device, seq)
);
CREATE INDEX IF NOT EXISTS punches_ts ON punches (ts);
-- read aids of the console (issue 16; schema_sqlite.READ_INDEXES): punches by idx
CREATE INDEX IF NOT EXISTS punches_idx ON punches (idx);
CREATE TABLE IF NOT EXISTS devices (
    device        TEXT PRIMARY KEY,
    site          TEXT NOT NULL,
    status        TEXT NOT NULL,
    enrolled_idx  BIGINT NOT NULL,
    changed_idx   BIGINT NOT NULL
);
CREATE TABLE IF NOT EXISTS keys (
    key_id          TEXT PRIMARY KEY,
    device          TEXT NOT NULL,
    public_b64      TEXT NOT NULL,
    from_seq        BIGINT NOT NULL,
    until_seq       BIGINT,
    status          TEXT NOT NULL,
    registered_idx  BIGINT NOT NULL
);
CREATE INDEX IF NOT EXISTS keys_device ON keys (device);
CREATE TABLE IF NOT EXISTS quarantine (
    id           BIGINT GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    idx          BIGINT NOT NULL,
    received_at  BIGINT NOT NULL,
    topic        TEXT NOT NULL,
    reason       TEXT NOT NULL,
    detail       TEXT NOT NULL,
    device       TEXT,
    raw          BYTEA NOT NULL,
    raw_sha256   TEXT NOT NULL,
    size         BIGINT NOT NULL
);
CREATE TABLE IF NOT EXISTS retained (
    retention_idx  BIGINT NOT NULL,
    first_idx      BIGINT NOT NULL,
    last_idx       BIGINT NOT NULL,
    CHECK (first_idx <= last_idx AND last_idx < retention_idx)
);
CREATE INDEX IF NOT EXISTS retained_range ON retained (first_idx, last_idx);
CREATE TABLE IF NOT EXISTS checkpoints (
    id     BIGINT GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    log    TEXT NOT NULL,
    size   BIGINT NOT NULL,
    head   TEXT NOT NULL,
    at     BIGINT NOT NULL,
    sig    TEXT NOT NULL,
    UNIQUE (log, size, at, sig)
);
CREATE TABLE IF NOT EXISTS tc_merkle (
    level  INTEGER NOT NULL,
    idx    BIGINT NOT NULL,
    hash   BYTEA NOT NULL CHECK (octet_length(hash) = 32),
    PRIMARY KEY (level, idx)
);

CREATE OR REPLACE FUNCTION tc_append_only() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    RAISE EXCEPTION 'timeclock: % on % refused: the ledger is append-only', TG_OP, TG_TABLE_NAME
        USING ERRCODE = 'insufficient_privilege';
END $$;

CREATE OR REPLACE FUNCTION tc_entries_chain() RETURNS trigger LANGUAGE plpgsql AS $$
DECLARE
    last_idx  BIGINT;
    last_hash TEXT;
BEGIN
    SELECT e.idx, e.hash INTO last_idx, last_hash FROM entries e ORDER BY e.idx DESC LIMIT 1;
    IF NOT FOUND THEN
        last_idx := -1;
        last_hash := '{_ZERO}';
    END IF;
    IF NEW.idx <> last_idx + 1 OR NEW.prev <> last_hash THEN
        RAISE EXCEPTION 'timeclock: entry % refused: idx must be % and prev the hash of the '
                        'last entry', NEW.idx, last_idx + 1
            USING ERRCODE = 'integrity_constraint_violation';
    END IF;
    RETURN NEW;
END $$;

CREATE OR REPLACE FUNCTION tc_entries_need_leaf() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    IF NOT EXISTS (SELECT 1 FROM tc_merkle m WHERE m.level = 0 AND m.idx = NEW.idx) THEN
        RAISE EXCEPTION 'timeclock: entry % refused: its Merkle leaf is not in tc_merkle (the '
                        'tree must cover every entry)', NEW.idx
            USING ERRCODE = 'integrity_constraint_violation';
    END IF;
    RETURN NEW;
END $$;

CREATE OR REPLACE FUNCTION tc_bodies_insert() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    -- A sealed body (DESIGN.md §8.6, 'TCE' 0x01 …) is checked by its AEAD tag on read.
    IF NOT EXISTS (SELECT 1 FROM entries e WHERE e.idx = NEW.idx
                   AND (e.body = encode(sha256(NEW.body), 'hex')
                        OR substring(NEW.body FROM 1 FOR 4) = decode('54434501', 'hex'))) THEN
        RAISE EXCEPTION 'timeclock: body % refused: no entry with this idx and body hash', NEW.idx
            USING ERRCODE = 'integrity_constraint_violation';
    END IF;
    RETURN NEW;
END $$;

CREATE OR REPLACE FUNCTION tc_bodies_delete() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    IF NOT EXISTS (SELECT 1 FROM retained r
                   JOIN entries e ON e.idx = r.retention_idx AND e.kind IN ('retention', 'shred')
                   WHERE OLD.idx BETWEEN r.first_idx AND r.last_idx)
       OR EXISTS (SELECT 1 FROM entries e WHERE e.idx = OLD.idx
                  AND e.kind IN ('device', 'retention')) THEN
        RAISE EXCEPTION 'timeclock: DELETE on bodies refused: no retention entry covers idx % '
                        '(the ledger is append-only)', OLD.idx
            USING ERRCODE = 'insufficient_privilege';
    END IF;
    RETURN OLD;
END $$;

CREATE OR REPLACE FUNCTION tc_punches_purge() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    IF NOT (NEW.device = OLD.device AND NEW.seq = OLD.seq AND NEW.punch_hash = OLD.punch_hash
            AND NEW.idx = OLD.idx AND NEW.key_id = OLD.key_id AND NEW.site = OLD.site
            AND NEW.credential = '' AND NEW.action = '' AND NEW.reader = ''
            AND NEW.clock = '' AND NEW.ts = 0
            AND {_REMOVED}) THEN
        RAISE EXCEPTION 'timeclock: UPDATE on punches refused: only the retention purge of a '
                        'removed body may blank its personal columns (the ledger is append-only)'
            USING ERRCODE = 'insufficient_privilege';
    END IF;
    RETURN NEW;
END $$;

CREATE OR REPLACE FUNCTION tc_quarantine_purge() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    IF NOT (NEW.id = OLD.id AND NEW.idx = OLD.idx AND NEW.received_at = OLD.received_at
            AND NEW.topic = OLD.topic AND NEW.reason = OLD.reason
            AND NEW.device IS NOT DISTINCT FROM OLD.device AND NEW.raw_sha256 = OLD.raw_sha256
            AND NEW.size = OLD.size AND octet_length(NEW.raw) = 0 AND NEW.detail = ''
            AND {_REMOVED}) THEN
        RAISE EXCEPTION 'timeclock: UPDATE on quarantine refused: only the retention purge of '
                        'a removed body may blank its raw bytes (the ledger is append-only)'
            USING ERRCODE = 'insufficient_privilege';
    END IF;
    RETURN NEW;
END $$;

CREATE OR REPLACE TRIGGER punches_purge_only BEFORE UPDATE ON punches
    FOR EACH ROW EXECUTE FUNCTION tc_punches_purge();
CREATE OR REPLACE TRIGGER quarantine_purge_only BEFORE UPDATE ON quarantine
    FOR EACH ROW EXECUTE FUNCTION tc_quarantine_purge();
{"".join(forbid(t, "DELETE", truncate=True) for t in _PURGED)}
CREATE OR REPLACE TRIGGER entries_chain BEFORE INSERT ON entries
    FOR EACH ROW EXECUTE FUNCTION tc_entries_chain();
CREATE OR REPLACE TRIGGER entries_need_leaf BEFORE INSERT ON entries
    FOR EACH ROW EXECUTE FUNCTION tc_entries_need_leaf();
CREATE OR REPLACE TRIGGER bodies_insert BEFORE INSERT ON bodies
    FOR EACH ROW EXECUTE FUNCTION tc_bodies_insert();
CREATE OR REPLACE TRIGGER bodies_delete BEFORE DELETE ON bodies
    FOR EACH ROW EXECUTE FUNCTION tc_bodies_delete();
CREATE OR REPLACE TRIGGER bodies_no_update BEFORE UPDATE ON bodies
    FOR EACH ROW EXECUTE FUNCTION tc_append_only();
CREATE OR REPLACE TRIGGER bodies_no_truncate BEFORE TRUNCATE ON bodies
    FOR EACH STATEMENT EXECUTE FUNCTION tc_append_only();
{"".join(forbid(t, "UPDATE OR DELETE", truncate=True) for t in _APPEND_ONLY)}
{forbid("devices", "DELETE", truncate=True)}
{forbid("keys", "DELETE", truncate=True)}
{people_tables.POSTGRES_DDL}{keyring.POSTGRES_DDL}
-- A new database is version 2 at once (its empty tree is complete); a version 1 one keeps
-- '1' here until migrate() has built its tree (SET_VERSION).
INSERT INTO meta (key, value) VALUES ('schema', '{SCHEMA_VERSION}') ON CONFLICT DO NOTHING;
"""  # noqa: S608 - a constant: no input reaches this DDL

SET_VERSION = f"UPDATE meta SET value = '{SCHEMA_VERSION}' WHERE key = 'schema'"  # noqa: S608 - a constant

# {role} is substituted with a quoted identifier by migrate().
GRANTS = """
REVOKE ALL ON ALL TABLES IN SCHEMA public FROM {role};
GRANT USAGE ON SCHEMA public TO {role};
GRANT SELECT, INSERT ON ALL TABLES IN SCHEMA public TO {role};
GRANT UPDATE ON devices, keys TO {role};
GRANT DELETE ON bodies TO {role};
GRANT UPDATE ON punches, quarantine TO {role};
GRANT UPDATE ON tc_employees, tc_badges TO {role};
GRANT UPDATE ON tc_data_keys TO {role};
GRANT USAGE ON ALL SEQUENCES IN SCHEMA public TO {role};
"""
