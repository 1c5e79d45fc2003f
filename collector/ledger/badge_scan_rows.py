"""The one read the badge-scan detector (collector.ingest.badge_scans) makes to know when to
reload the people directory's badge periods: a version of ``tc_badges`` that changes with
every badge entry (rows are never deleted and an update always raises ``changed_idx``)."""

from __future__ import annotations

from collector.ledger import people_tables
from collector.ledger.sqlbase import SQLStore


def badges_version(store: SQLStore) -> tuple[int, int] | None:
    """(row count, newest ``changed_idx``) of ``tc_badges``; None without the directory's
    tables (a ledger from before it) or with no badge period at all."""
    if not people_tables.present(store):
        return None
    rows = store.query("SELECT COUNT(*), MAX(changed_idx) FROM tc_badges")
    count, newest = rows[0]
    if not count:
        return None
    return int(count), int(newest)
