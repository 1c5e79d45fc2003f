"""The watchdog's decision: WATCHDOG=1 only while every thread lives and a punch can be committed.

The decision itself (:func:`agent.health.check_health`) is table-driven; the service is run with
a real AF_UNIX notify socket (the stand-in for systemd) and a reader or publisher thread that
dies; the real publisher's paho network thread is broken against the real broker.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable, Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

import pytest

from agent.config import AgentConfig, load_config
from agent.health import check_health
from agent.keystore import new_queue_key, save_queue_key
from agent.publisher import Publisher
from agent.queue import Outbox
from agent.readers.base import CommonOptions, Emit
from agent.readers.simulated import SimulatedReader
from agent.service import AgentService, StatusFn
from tests.agent.receipt_kit import DEVICE, ROUND_TRIP_S, settings
from tests.agent.test_cli import WAIT_S, NotifySocket
from tests.fixtures.mosquitto import MosquittoBroker
from tests.polling import wait_for
from wire.keys import SigningKey, save_signing_key
from wire.sdnotify import Notifier

# Deadlines are generous (a condition that holds returns at once); the hang guard is above them.
pytestmark = pytest.mark.timeout(300)
DIED = "no more watchdog pings"   # logged by the supervisor's tick that saw a thread dead


@pytest.mark.parametrize(("threads", "kw", "ok", "dead", "problem"), [
    ({"reader-front": True, "publisher-x": True}, {}, True, (), None),
    ({"reader-front": True}, {"storage_state": "low"}, True, (), None),
    ({"reader-front": False, "reader-back": True}, {}, False, ("reader-front",),
     "thread(s) died: reader-front"),
    ({"reader-front": True, "paho-mqtt-client-x": False}, {}, False, ("paho-mqtt-client-x",),
     "thread(s) died: paho-mqtt-client-x"),
    ({"reader-front": True}, {"storage_state": "full", "storage_detail": "0 bytes free"},
     False, (), "storage full: punches cannot be committed (0 bytes free)"),
    ({"reader-front": True}, {"queue_error": "database is locked"}, False, (),
     "queue does not answer: database is locked"),
    ({"reader-front": True}, {"publisher_ok": False}, False, (), "publisher unhealthy"),
])
def test_health_decision(threads: dict[str, bool], kw: dict[str, Any], ok: bool,
                         dead: tuple[str, ...], problem: str | None) -> None:
    kw = {"storage_state": "ok", **kw}
    report = check_health(threads, **kw)
    assert (report.ok, report.dead_threads) == (ok, dead)
    assert report.problems == (() if problem is None else (problem,))
    assert report.summary() == ("healthy" if problem is None else problem)


# ---- the service with a real notify socket ------------------------------------------------------

def _config(tmp_path: Path) -> AgentConfig:
    save_signing_key(tmp_path / "signing.key", SigningKey.generate())
    save_queue_key(tmp_path / "queue.key", new_queue_key())
    cfg = tmp_path / "agent.toml"
    cfg.write_text(f"""
[device]
id = "{DEVICE}"
state_dir = "state"
[keys]
signing_key = "signing.key"
queue_key = "queue.key"
[status]
interval_s = 0.2
[readers.front]
kind = "simulated"
credentials = ["1"]
""")
    return load_config(cfg)


class MortalReader(SimulatedReader):
    """A reader whose thread returns (dies) when ``die`` is set, long before stop."""

    def __init__(self) -> None:
        super().__init__("front", CommonOptions(), credentials=["1"], interval_s=3600)
        self.die = threading.Event()

    def run(self, emit: Emit, stop: threading.Event) -> None:
        while not self.die.wait(0.01):
            if stop.is_set():
                return


@pytest.fixture
def notify(tmp_path: Path) -> Iterator[NotifySocket]:
    s = NotifySocket(str(tmp_path / "notify.sock"))
    yield s
    s.close()


def _run(service: AgentService) -> tuple[threading.Thread, list[int]]:
    rc: list[int] = []
    stop = threading.Event()
    t = threading.Thread(target=lambda: rc.append(service.run(stop)), daemon=True)
    t.start()
    return t, rc


def _notifier(tmp_path: Path) -> Notifier:
    return Notifier({"NOTIFY_SOCKET": str(tmp_path / "notify.sock"), "WATCHDOG_USEC": "200000"})


def test_a_dead_reader_thread_stops_the_watchdog_and_the_agent_exits(
        tmp_path: Path, notify: NotifySocket, caplog: pytest.LogCaptureFixture) -> None:
    reader = MortalReader()
    service = AgentService(_config(tmp_path), notifier=_notifier(tmp_path), readers=[reader])
    with notify.mark_on_log(DIED) as mark:
        t, rc = _run(service)
        notify.wait_for("WATCHDOG=1")
        assert service.health().ok is True
        reader.die.set()
        service._threads[0].join(WAIT_S)  # noqa: SLF001 -- the reader thread, now dead
        assert service.health().dead_threads == ("reader-front",)
        t.join(WAIT_S)
        assert rc == [1]
        # A tick that decided before the death may still have pinged; the one that saw it and
        # everything after it must not (the mark is sent by that tick, in stream order).
        assert "WATCHDOG=1" not in notify.after(mark)
    assert "thread(s) died: reader-front; no more watchdog pings" in caplog.text


class ThreadOnlyPublisher:
    """A publisher double whose network loop is a real thread that can die."""

    def __init__(self) -> None:
        self.die = threading.Event()
        self.net = threading.Thread(target=self.die.wait, name="mqtt-network", daemon=True)

    def start(self) -> None:
        self.net.start()

    def stop(self) -> None:
        self.die.set()

    def wake(self) -> None:
        pass

    def healthy(self) -> bool:
        return True   # the double does not look at its own thread: the service must

    def threads(self) -> Sequence[threading.Thread]:
        return [self.net]

    def publish_status_soon(self) -> None:
        pass

    def state(self) -> Mapping[str, Any]:
        return {"status": "connected", "detail": "double", "last_receipt_us": None}


def test_a_dead_publisher_thread_stops_the_watchdog_and_the_agent_exits(
        tmp_path: Path, notify: NotifySocket, caplog: pytest.LogCaptureFixture) -> None:
    pub = ThreadOnlyPublisher()

    def factory(config: AgentConfig, outbox: Outbox, *, status: StatusFn) -> ThreadOnlyPublisher:
        return pub

    service = AgentService(_config(tmp_path), notifier=_notifier(tmp_path),
                           publisher_factory=factory)
    with notify.mark_on_log(DIED) as mark:
        t, rc = _run(service)
        notify.wait_for("WATCHDOG=1")
        pub.die.set()
        pub.net.join(WAIT_S)
        t.join(WAIT_S)
        assert rc == [1]
        assert "WATCHDOG=1" not in notify.after(mark)
    assert "thread(s) died: mqtt-network" in caplog.text


# ---- the real publisher: paho's network thread is supervised -------------------------------------

@pytest.mark.mqtt
@pytest.mark.filterwarnings("ignore::pytest.PytestUnhandledThreadExceptionWarning")
def test_publisher_reports_its_network_thread_dead(
        broker: MosquittoBroker, outbox: Outbox, log_key: SigningKey,
        caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.WARNING)
    pub = Publisher(outbox, DEVICE, log_key=log_key.verify_key, settings=settings(broker))
    pub.start()
    try:
        wait_for(lambda: pub.stats().connected, ROUND_TRIP_S, "connection")
        names = [t.name for t in pub.threads()]
        assert names == [f"publisher-{DEVICE}", f"paho-mqtt-client-{DEVICE}"]
        assert pub.healthy() is True

        def broken_loop(*_a: Any, **_k: Any) -> Any:
            raise RuntimeError("network loop bug (fault injection)")

        boom: Callable[..., Any] = broken_loop
        pub._client._loop = boom  # type: ignore[method-assign]  # noqa: SLF001
        wait_for(lambda: not pub.threads()[1].is_alive(), WAIT_S, "the network thread to die")
        assert pub.healthy() is False
        assert pub.threads()[0].is_alive(), "the sender still runs: it alone looked healthy"
        report = check_health({t.name: t.is_alive() for t in pub.threads()},
                              storage_state="ok", publisher_ok=pub.healthy())
        assert report.dead_threads == (f"paho-mqtt-client-{DEVICE}",)
    finally:
        pub.stop(timeout=1.0)
