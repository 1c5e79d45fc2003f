"""timeclock collector: verify punches, record them in the hash-chained ledger, serve HR/audit."""


from __future__ import annotations


class CollectorError(Exception):
    """Base of every collector error."""


class ConfigError(CollectorError):
    """Every problem of a config at once, each prefixed with its key path."""

    def __init__(self, problems: list[str]) -> None:
        self.problems = list(problems)
        super().__init__("invalid configuration:\n  " + "\n  ".join(self.problems))


class PKIError(CollectorError):
    """The CA could not issue, sign or revoke (bad CSR, key file, existing file...)."""


class LedgerError(CollectorError):
    """The ledger store failed (connection, schema, integrity)."""


class LedgerUnavailableError(LedgerError):
    """The database is away for now (connection lost or refused, SQLite locked or I/O error):
    nothing was recorded by the failed call (or its commit is settled on reconnect); retry
    after :meth:`SQLStore.reconnect <collector.ledger.sqlbase.SQLStore.reconnect>`."""


class AppendOnlyError(LedgerError):
    """The store refused an UPDATE or DELETE on the chain."""


class RegistryError(CollectorError):
    """A device-registry operation is not allowed (unknown device, duplicate key...)."""


class ForbiddenError(CollectorError):
    """A principal is not allowed to do this."""


class SoDError(ForbiddenError):
    """A role grant or an action would break segregation of duties (CONTROLS.md D6/D8)."""


class DirectoryError(CollectorError):
    """A people-directory change is refused (bad record or CSV row, unknown employee or
    manager, a management cycle); nothing of it was recorded."""


class DirectoryNotFoundError(DirectoryError):
    """No such employee (or no badge period) in the directory."""


class BadgeConflictError(DirectoryError):
    """A badge change contradicts the directory: the credential is held by someone else (or
    lost or blocked) over part of the interval; the message names the holder and interval."""


class KekError(CollectorError):
    """A key-encryption key cannot be loaded, made or used (bad spec, key file, credential,
    PKCS#11 module, token, PIN or key), or a wrapped data key does not unwrap under it (wrong
    KEK, wrong aad, damaged): no data key is returned."""


class BackupError(CollectorError):
    """A backup or restore could not run (key file, snapshot, target store, pg_dump/pg_restore);
    a restore that fails leaves the target store as it was."""


class BackupIntegrityError(BackupError):
    """A backup file is not one this key made whole: wrong key, bad magic or version, a chunk
    that does not authenticate, a truncation or trailing bytes; nothing was restored."""


class ReviewError(CollectorError):
    """An alert review or a scheduled sign-off is refused (not an alert entry, not yet
    acknowledged, already resolved or signed off, the reviewer is the principal the alert
    names, a period not over yet); nothing was recorded."""


class KeyringError(LedgerError):
    """A data key of the ledger cannot be used: wrapped by another KEK than the configured
    one (the message names both KEK ids), not unwrapping under it, or unknown."""


class KekMissingError(KeyringError):
    """A ledger encrypted at rest (it holds data keys) was opened with no KEK at all; the
    message names where a KEK can come from."""


class KeyDestroyedError(KeyringError):
    """The data key was destroyed (erasure or retention): what it encrypted is gone."""


class ErasureError(CollectorError):
    """An erasure is refused (one principal asking and approving, a legal hold keeping the
    person's data, nothing left to erase); nothing was recorded or destroyed."""
