"""Fixtures shared by the agent's delivery tests (publisher, outages): a real mTLS broker whose
ACL knows ``collector.test``, the receipting stand-in collector, keys and an outbox; and for the
full-disk tests a 2 MiB tmpfs (``tiny_fs``)."""

from __future__ import annotations

import os
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from agent.queue import Outbox
from tests.agent.disk_kit import tmpfs
from tests.agent.receipt_kit import DEVICE, ReceiptStandin
from tests.fixtures.mosquitto import MosquittoBroker
from wire.keys import SigningKey


@pytest.fixture
def broker(mosquitto_factory: Callable[..., MosquittoBroker]) -> MosquittoBroker:
    return mosquitto_factory(collectors=("test",))


@pytest.fixture
def log_key() -> SigningKey:
    return SigningKey.generate()


@pytest.fixture
def device_key() -> SigningKey:
    return SigningKey.generate()


@pytest.fixture
def outbox(tmp_path: Path) -> Iterator[Outbox]:
    with Outbox(tmp_path / "queue.db", os.urandom(32), DEVICE) as ob:
        yield ob


@pytest.fixture
def standin(broker: MosquittoBroker, log_key: SigningKey) -> Iterator[ReceiptStandin]:
    with ReceiptStandin(broker.host, broker.port, broker.context("collector.test"),
                        log_key) as s:
        yield s


@pytest.fixture
def tiny_fs(tmp_path: Path) -> Iterator[Path]:
    """A real 2 MiB filesystem (tmpfs), unmounted after the test."""
    with tmpfs(tmp_path / "tiny") as d:
        yield d
