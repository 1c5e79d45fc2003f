"""The collector survives its database: a real PostgreSQL cluster stopped under a running
``serve`` (``pg_ctl stop -m fast``, then ``start``), a real mTLS broker, real clocks' punches.

- a 30 s outage in the middle of ingest: the collector stays up, holds the messages
  unacknowledged, says so once (WARNING) and once more when the ledger is back (INFO with the
  duration), keeps feeding the watchdog (riding out an outage within its limit is healthy),
  resumes within 5 s of the database accepting connections, and records every punch exactly
  once (entries, progress, and the audit of the whole chain);
- an outage beyond ``[ledger] outage_max_s``: serve exits non-zero (the unit restarts it) and
  the held punch is recorded by the next collector;
- an append whose COMMIT was in flight when the connection dropped: after the reconnect the
  store reads whether it committed, and a retry of the same facts records nothing twice.

Every wait is bounded by a deadline; the 30 s outage is the scenario itself, not a guess.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import psycopg
import pytest

from collector import LedgerUnavailableError
from collector.ledger.base import Outcome, PunchFact, RejectionFact
from collector.ledger.postgres import PostgresStore
from tests.collector.outage_kit import NotifySocket, Publisher, assert_exactly_once
from tests.collector.punch_kit import T0, Device, enroll, new_clock, write_collector_config
from tests.collector.test_serve import ServeProcess
from tests.fixtures.mosquitto import MosquittoBroker
from tests.fixtures.postgres import PgCluster, PgDatabase
from tests.polling import wait_for

OUTAGE_S = 30
RESUME_WITHIN_S = 5


@pytest.fixture
def notify(monkeypatch: pytest.MonkeyPatch) -> Iterator[NotifySocket]:
    """$NOTIFY_SOCKET and a 2 s $WATCHDOG_USEC for the serve processes of a test."""
    sock = NotifySocket.create()
    monkeypatch.setenv("NOTIFY_SOCKET", str(sock.path))
    monkeypatch.setenv("WATCHDOG_USEC", "2000000")
    yield sock
    sock.close()


@contextmanager
def database_down(cluster: PgCluster) -> Iterator[None]:
    """PostgreSQL stopped inside the block; started again on the way out, whatever happens
    (the session's other tests use the same cluster)."""
    cluster.stop("fast")
    try:
        yield
    finally:
        cluster.start()


def _count(text: str, needle: str) -> int:
    return sum(needle in line for line in text.splitlines())


@pytest.mark.slow
@pytest.mark.subprocess
def test_ingest_survives_a_30s_postgres_outage_and_records_every_punch_once(
        mosquitto: MosquittoBroker, pg_cluster: PgCluster, pg_ledger: PgDatabase,
        tmp_path: Path, notify: NotifySocket) -> None:
    setup = PostgresStore(pg_ledger.app_dsn)
    clock = new_clock()
    enroll(setup, clock)
    setup.close()
    cfg_file, log_key = write_collector_config(tmp_path / "c", mosquitto,
                                               store_url=pg_ledger.app_dsn)
    dev = Device(mosquitto, clock)
    serve = ServeProcess(cfg_file)
    pub = Publisher(dev, clock, every_s=0.1)
    watch: PostgresStore | None = None
    try:
        serve.wait_for_line("MQTT subscribed", 60)
        wait_for(lambda: notify.lines("READY=1"), 30, "READY=1")
        pub.start()
        watch = PostgresStore(pg_ledger.app_dsn)
        wait_for(lambda: watch.progress(clock.device).contiguous >= 10, 60,
                 "ingest under way")
        watch.close()
        with database_down(pg_cluster):
            t_down = time.monotonic()
            wait_for(lambda: clock.seq > 0 and time.monotonic() > t_down + 1, 10, "a second")
            held = clock.seq + 1          # published after the stop: held, not yet recorded
            while time.monotonic() < t_down + OUTAGE_S:
                assert serve.proc.poll() is None, "serve exited during the outage"
                time.sleep(0.5)           # the outage lasts OUTAGE_S by design
            assert clock.seq > held, "the clock kept publishing during the outage"
            pings_during = notify.lines("WATCHDOG=1", since=t_down + 3)
        t_up = time.monotonic()           # pg_ctl start -w returned: accepting connections
        watch = PostgresStore(pg_ledger.app_dsn)
        probe = watch
        wait_for(lambda: probe.punch_hash(clock.device, held) is not None, 60,
                 f"seq {held} (held during the outage) recorded")
        resumed_s = time.monotonic() - t_up
        assert resumed_s < RESUME_WITHIN_S, f"ingest resumed {resumed_s:.1f} s after the start"
        n = pub.stop()
        assert dev.acked_until(log_key, set(range(1, n + 1)), timeout_s=60) >= set(
            range(1, n + 1))
        assert_exactly_once(watch, clock, n, log_key)
        assert len(pings_during) >= 5, f"watchdog pings during the outage: {pings_during}"
        assert notify.lines("STATUS=ledger unavailable")
        assert serve.terminate() == 0
    finally:
        pub.stop()
        err = serve.close()
        if watch is not None:
            watch.close()
    assert _count(err, "ledger unavailable (") == 1, err[-4000:]
    assert _count(err, "ledger available again after") == 1, err[-4000:]
    assert "Traceback" not in err, err[-4000:]
    start = err.index("ledger unavailable (")
    between = err[start:err.index("ledger available again after")].splitlines()
    assert len(between) <= 5, f"log flood during the outage: {between[:20]}"


@pytest.mark.subprocess
def test_serve_exits_nonzero_when_postgres_stays_away_beyond_the_limit(
        mosquitto: MosquittoBroker, pg_cluster: PgCluster, pg_ledger: PgDatabase,
        tmp_path: Path, notify: NotifySocket) -> None:
    setup = PostgresStore(pg_ledger.app_dsn)
    clock = new_clock()
    enroll(setup, clock)
    setup.close()
    cfg_file, log_key = write_collector_config(
        tmp_path / "c", mosquitto, store_url=pg_ledger.app_dsn,
        extra="[ledger]\nreconnect_initial_ms = 100\nreconnect_max_ms = 500\n"
              "outage_max_s = 3\n")
    dev = Device(mosquitto, clock)
    serve = ServeProcess(cfg_file)
    try:
        serve.wait_for_line("MQTT subscribed", 60)
        dev.send(clock.batch(1))
        assert dev.acked_until(log_key, {1}, timeout_s=30) == {1}
        with database_down(pg_cluster):
            t_down = time.monotonic()
            dev.send(clock.batch(1))              # seq 2: held while the ledger is away
            rc = serve.proc.wait(60)
            t_exit = time.monotonic()
        assert rc != 0
        assert t_exit - t_down >= 3
    finally:
        err = serve.close()
    assert "beyond [ledger] outage_max_s = 3" in err, err[-3000:]
    assert _count(err, "ledger unavailable (") == 1, err[-3000:]
    assert notify.lines("STATUS=failed")
    # Fed while riding out the outage (within its limit), not after it gave up.
    assert notify.lines("WATCHDOG=1", since=t_down + 1)
    failed_at = notify.lines("STATUS=failed")[0]
    assert notify.lines("WATCHDOG=1", since=failed_at) == []
    # Nothing was lost: the next collector gets seq 2 from the broker and records it once.
    serve = ServeProcess(cfg_file)
    try:
        assert dev.acked_until(log_key, {2}, timeout_s=60) >= {2}
        assert serve.terminate() == 0
    finally:
        serve.close()
    store = PostgresStore(pg_ledger.app_dsn)
    try:
        assert_exactly_once(store, clock, 2, log_key)
    finally:
        store.close()


class LosesCommit(PostgresStore):
    """A real PostgreSQL store whose next write transaction loses its connection at COMMIT:
    ``before-commit`` (the server ends the session before COMMIT: nothing committed) or
    ``after-commit`` (COMMIT went through, then the session ends before the client hears so).
    Either way the client sees the same lost connection: the outcome is unknown to it."""

    admin_dsn = ""
    mode: str | None = None

    def _kill_own_session(self) -> None:
        pid = self._conn.info.backend_pid
        with psycopg.connect(self.admin_dsn, autocommit=True) as admin:
            admin.execute("SELECT pg_terminate_backend(%s, 10000)", (pid,))

    @contextmanager
    def _write(self) -> Iterator[Any]:
        mode, self.mode = self.mode, None
        with super()._write() as cur:
            yield cur
            if mode == "before-commit":
                self._kill_own_session()
        if mode == "after-commit":
            self._kill_own_session()
            self._conn.execute("SELECT 1")   # raises: the connection is gone


@pytest.mark.parametrize(("mode", "committed"), [("after-commit", True),
                                                 ("before-commit", False)])
def test_an_append_lost_at_commit_is_settled_on_reconnect_and_recorded_once(
        pg_ledger: PgDatabase, mode: str, committed: bool) -> None:
    store = LosesCommit(pg_ledger.app_dsn)
    store.admin_dsn = pg_ledger.admin_dsn
    clock = new_clock()
    enroll(store, clock)
    size0 = store.head()[0]
    facts = [PunchFact(clock.punch(), clock.topic, T0 + 1),
             RejectionFact("malformed", "not JSON", clock.topic, b"\x00junk", T0 + 2,
                           clock.device)]
    store.mode = mode
    with pytest.raises(LedgerUnavailableError, match="unavailable"):
        store.append(facts, now_us=T0 + 10)
    assert store.unavailable is not None
    store.auto_reconnect = False
    with pytest.raises(LedgerUnavailableError):
        store.head()                          # no silent use of a lost connection
    store.reconnect()
    assert store.unavailable is None
    assert store.head()[0] == size0 + (2 if committed else 0)
    # The writer retries the same facts (same messages, judged again).
    results = store.append(facts, now_us=T0 + 20)
    assert [r.outcome for r in results] == [Outcome.APPENDED, Outcome.REJECTED]
    assert [r.idx for r in results] == [size0, size0 + 1]
    entries = list(store.entries(size0))
    assert [e.entry.kind for e in entries] == ["punch", "rejection"]
    # The entries are the first attempt's (at T0 + 10) if it committed, else the retry's.
    assert {e.entry.at for e in entries} == {T0 + 10 if committed else T0 + 20}
    assert len(store.quarantine()) == 1
    # A later resend of the punch is the ordinary duplicate.
    [again] = store.append(facts[:1], now_us=T0 + 30)
    assert (again.outcome, again.idx) == (Outcome.DUPLICATE, size0)
    store.close()
