"""Shared fixtures, markers and selection.

- Real services are started by the plugins in tests/fixtures/.
- Markers (pyproject.toml): ``mqtt`` (a real Mosquitto), ``postgres`` (the real PostgreSQL
  cluster), ``subprocess`` (any other process). ``mqtt`` and ``postgres`` are added here from
  the fixtures a test uses (and from the ``store_kind`` parameter); ``subprocess`` is marked
  by hand, and a test without any of the three that starts a process fails (see
  ``_no_unmarked_processes``), so ``-m "not mqtt and not postgres and not subprocess"`` is a
  subset that really starts nothing.
- ``--control D1`` selects exactly the tests of one control: those whose function name holds
  the control as a word (``test_d1_...``, ``..._d1_...``, ``..._d1``), never ``d12``/``d15``.
"""

from __future__ import annotations

import os
import re
import subprocess
from collections.abc import Iterator
from typing import Any

import pytest

pytest_plugins: list[str] = [
    "tests.fixtures.pki",
    "tests.fixtures.mosquitto",
    "tests.fixtures.postgres",
    "tests.fixtures.oidc_kit",
]

SERVICE_MARKERS = ("mqtt", "postgres", "subprocess")
MQTT_FIXTURES = frozenset({"mosquitto_factory"})        # every broker fixture builds on it
POSTGRES_FIXTURES = frozenset({"pg_cluster"})           # pg_db, pg_ledger build on it


def pytest_addoption(parser: pytest.Parser) -> None:
    parser.addoption(
        "--control", action="append", default=[], metavar="DN",
        help="run only the tests of control DN (e.g. --control D1; repeatable; matches the "
             "control number exactly: D1 does not select D12)")


def _control_re(value: str) -> re.Pattern[str]:
    m = re.fullmatch(r"[dD]?(\d{1,3})", value.strip())
    if m is None:
        raise pytest.UsageError(f"--control {value!r}: expected a control such as D1 or D12")
    return re.compile(rf"(?:^|_)d{int(m.group(1))}(?:_|$)")


def _uses(item: pytest.Item, names: frozenset[str]) -> bool:
    return bool(names & set(getattr(item, "fixturenames", ())))


def _param(item: pytest.Item, name: str) -> Any:
    callspec = getattr(item, "callspec", None)
    return None if callspec is None else callspec.params.get(name)


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    for item in items:
        if _uses(item, MQTT_FIXTURES):
            item.add_marker(pytest.mark.mqtt)
        if _uses(item, POSTGRES_FIXTURES) or _param(item, "store_kind") == "postgresql":
            item.add_marker(pytest.mark.postgres)
    controls = [_control_re(v) for v in config.getoption("--control")]
    if not controls:
        return
    keep, drop = [], []
    for item in items:
        name = getattr(item, "originalname", item.name).lower()
        (keep if any(c.search(name) for c in controls) else drop).append(item)
    if drop:
        config.hook.pytest_deselected(items=drop)
        items[:] = keep


@pytest.fixture(autouse=True)
def _no_unmarked_processes(request: pytest.FixtureRequest,
                           monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    """A test that starts a process must say so with a service marker (see module doc)."""
    node = request.node
    if any(node.get_closest_marker(m) is not None for m in SERVICE_MARKERS):
        yield
        return
    started: list[str] = []
    real_init = subprocess.Popen.__init__

    def popen(self: subprocess.Popen[Any], args: Any, *a: Any, **kw: Any) -> None:
        started.append(repr(args)[:200])
        real_init(self, args, *a, **kw)

    def fork() -> int:
        started.append("os.fork()")
        return real_fork()

    real_fork = os.fork
    monkeypatch.setattr(subprocess.Popen, "__init__", popen)
    monkeypatch.setattr(os, "fork", fork)
    yield
    if started:
        pytest.fail(f"{node.nodeid} started a process ({started[0]}) but has none of the "
                    f"markers {', '.join(SERVICE_MARKERS)}: mark it @pytest.mark.subprocess "
                    f"(or use the mqtt/postgres fixtures)", pytrace=False)
