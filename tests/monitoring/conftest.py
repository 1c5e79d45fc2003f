"""The monitoring tests' fixtures: the collector tests' ledger fixtures (both stores) and the
Prometheus fixture (tests/fixtures/prometheus.py)."""

from __future__ import annotations

from tests.collector.conftest import (  # noqa: F401 - fixtures, used by name
    sqlite_path,
    sqlite_store,
    store,
    store_kind,
    store_url,
)
from tests.fixtures.prometheus import prometheus_factory  # noqa: F401 - a fixture
