"""Ledger stores behind one interface (base.LedgerStore): SQLite (default) and PostgreSQL."""
