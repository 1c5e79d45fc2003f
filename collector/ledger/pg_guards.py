"""The PostgreSQL triggers that make a table append-only, generated for each table that has
them (schema_postgres for the ledger's tables, people_tables for the directory's projection).

Invariant: every such trigger runs ``tc_append_only()`` (schema_postgres creates it before any
of them) and is named ``<table>_append_only`` (the row operations refused) and
``<table>_no_truncate``; schema_check parses these statements to know what to expect.
"""

from __future__ import annotations


def forbid(table: str, ops: str, *, truncate: bool) -> str:
    """The trigger refusing ``ops`` ("DELETE", "UPDATE OR DELETE") on each row of ``table``,
    and with ``truncate`` the one refusing TRUNCATE; one statement a line."""
    out = (f"CREATE OR REPLACE TRIGGER {table}_append_only BEFORE {ops} ON {table} "
           f"FOR EACH ROW EXECUTE FUNCTION tc_append_only();\n")
    if truncate:
        out += (f"CREATE OR REPLACE TRIGGER {table}_no_truncate BEFORE TRUNCATE ON {table} "
                f"FOR EACH STATEMENT EXECUTE FUNCTION tc_append_only();\n")
    return out
