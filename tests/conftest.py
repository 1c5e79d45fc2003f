"""Shared fixtures: real services are started by the plugins in tests/fixtures/."""

from __future__ import annotations

pytest_plugins: list[str] = [
    "tests.fixtures.pki",
    "tests.fixtures.mosquitto",
    "tests.fixtures.postgres",
]
