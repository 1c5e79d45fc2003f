"""``serve`` talks to systemd through a real AF_UNIX datagram socket ($NOTIFY_SOCKET):
READY=1 once subscribed, WATCHDOG=1 every half $WATCHDOG_USEC while the ingest loop turns, none
while it is blocked (here: another process holds the SQLite ledger's write lock, so the writer
waits in SQLite's busy handler), and again once it runs. The outage cases (fed while riding out
an outage within its limit, not after giving up) are in test_db_outage.py."""

from __future__ import annotations

import sqlite3
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from collector.ledger.sqlite import SQLiteStore
from tests.collector.outage_kit import NotifySocket
from tests.collector.punch_kit import Device, enroll, new_clock, write_collector_config
from tests.collector.test_serve import ServeProcess
from tests.fixtures.mosquitto import MosquittoBroker
from tests.polling import wait_for

WATCHDOG_USEC = 2_000_000       # pings every 1 s; a loop silent for 2 s is stalled
SILENCE_S = 3.0                 # three intervals without a ping: withheld, not late


@pytest.fixture
def notify(monkeypatch: pytest.MonkeyPatch) -> Iterator[NotifySocket]:
    sock = NotifySocket.create()
    monkeypatch.setenv("NOTIFY_SOCKET", str(sock.path))
    monkeypatch.setenv("WATCHDOG_USEC", str(WATCHDOG_USEC))
    yield sock
    sock.close()


def _silent_for(notify: NotifySocket, seconds: float) -> bool:
    pings = notify.lines("WATCHDOG=1")
    return bool(pings) and time.monotonic() - pings[-1] >= seconds


@pytest.mark.subprocess
def test_ready_after_subscribe_and_watchdog_only_while_the_ingest_loop_turns(
        mosquitto: MosquittoBroker, tmp_path: Path, notify: NotifySocket) -> None:
    db = tmp_path / "ledger.db"
    store = SQLiteStore(db)
    clock = new_clock()
    enroll(store, clock)
    store.close()
    cfg_file, log_key = write_collector_config(tmp_path / "c", mosquitto,
                                               store_url=f"sqlite://{db}")
    dev = Device(mosquitto, clock)
    serve = ServeProcess(cfg_file)
    locker: sqlite3.Connection | None = None
    try:
        serve.wait_for_line("MQTT subscribed", 60)
        [ready_at] = wait_for(lambda: notify.lines("READY=1"), 30, "READY=1")
        assert all(t >= ready_at for t in notify.lines("WATCHDOG=1")), "pinged before READY"
        wait_for(lambda: len(notify.lines("WATCHDOG=1", since=ready_at)) >= 3, 30,
                 "three watchdog pings while healthy")
        dev.send(clock.batch(1))
        assert dev.acked_until(log_key, {1}, timeout_s=30) == {1}
        # Block the loop: hold the ledger's write lock from another connection, then give
        # the writer something to append.
        locker = sqlite3.connect(db, isolation_level=None)
        locker.execute("BEGIN IMMEDIATE")
        dev.send(clock.batch(1))
        wait_for(lambda: _silent_for(notify, SILENCE_S), 30, "the watchdog pings to stop")
        assert serve.proc.poll() is None
        locker.execute("ROLLBACK")
        locker.close()
        locker = None
        released = time.monotonic()
        assert dev.acked_until(log_key, {2}, timeout_s=60) >= {2}
        wait_for(lambda: len(notify.lines("WATCHDOG=1", since=released)) >= 2, 30,
                 "the watchdog pings to resume")
        assert serve.terminate() == 0
    finally:
        if locker is not None:
            locker.close()
        err = serve.close()
    assert "withholding the watchdog ping" in err, err[-3000:]
    assert "the ingest loop is running again" in err, err[-3000:]
    assert notify.lines("STOPPING=1")
