"""``serve`` against a real mTLS Mosquitto and a real SQLite ledger: receipts, checkpoints,
persistent sessions, PUBACK-after-commit, status table, SIGTERM, ``--check-config``."""

from __future__ import annotations

import json
import os
import queue
import signal
import ssl
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from collector.cli.main import main
from collector.ledger.sqlite import SQLiteStore
from collector.service.config import load_config
from collector.service.runner import CollectorService
from tests.collector.punch_kit import (
    Device,
    enroll,
    new_clock,
    write_collector_config,
)
from tests.fixtures.mosquitto import MosquittoBroker, free_port
from tests.polling import wait_for
from wire.device_status import DeviceStatus
from wire.keys import SigningKey
from wire.note import Checkpoint as NoteCheckpoint
from wire.note import NoteVerifier
from wire.topics import CHECKPOINT

Starter = Callable[..., tuple[CollectorService, SigningKey]]


@pytest.fixture
def start_collector(tmp_path: Path) -> Iterator[Starter]:
    running: list[CollectorService] = []

    def start(broker: MosquittoBroker, *, db: Path | None = None, extra: str = "",
              name: str = "main", store: SQLiteStore | None = None,
              log_key: SigningKey | None = None) -> tuple[CollectorService, SigningKey]:
        db = db or tmp_path / "ledger.db"
        cfg_file, key = write_collector_config(tmp_path / name, broker,
                                               store_url=f"sqlite://{db}", name=name,
                                               log_key=log_key, extra=extra)
        svc = CollectorService(load_config(cfg_file), store=store)
        svc.start()
        running.append(svc)
        assert svc.wait_ready(60), "collector did not connect and subscribe"
        return svc, key

    yield start
    for svc in running:
        if svc.link is not None and svc.link.client.is_connected():
            svc.stop()


def test_d2_d5_punches_are_recorded_receipted_and_checkpointed(
        mosquitto: MosquittoBroker, start_collector: Starter, tmp_path: Path) -> None:
    db = tmp_path / "ledger.db"
    store = SQLiteStore(db)
    clock = new_clock()
    enroll(store, clock)
    checkpoints = mosquitto.subscribe("fixture-probe", CHECKPOINT)
    svc, log_key = start_collector(mosquitto, db=db,
                                   extra="[checkpoints]\nevery_entries = 3\n")
    dev = Device(mosquitto, clock)
    dev.send(clock.batch(3))
    assert dev.acked_until(log_key, {1, 2, 3}) == {1, 2, 3}
    kinds = [e.entry.kind for e in store.entries()]
    assert kinds == ["device", "punch", "punch", "punch"]
    # Checkpoints (the first one at start, then one once 3 entries were added): v1 signed
    # with the log key and stored; the v2 note of the same size (§8.2) published retained.
    origin = f"timeclock.invalid/{log_key.key_id}"     # no [collector] origin: the default
    verifier = NoteVerifier(origin, log_key.verify_key)
    msgs = checkpoints.get_until(lambda m: NoteCheckpoint.open(m.payload, verifier).size == 4,
                                 30)
    cp = store.checkpoints()[-1]
    cp.verify(log_key.verify_key)
    assert (cp.checkpoint.size, cp.checkpoint.head) == (4, store.head()[1])
    assert NoteCheckpoint.open(msgs[-1].payload, verifier).root == store.merkle_root(4)
    late = mosquitto.subscribe("late-reader", CHECKPOINT)
    retained = late.get(30)
    assert retained.retain
    assert retained.payload == msgs[-1].payload
    # Statuses go to the last-seen table, parsed (wire.device_status).
    status = DeviceStatus(device=clock.device, state="offline", version="0.1.0",
                          reason="stopped")
    dev.client.publish(f"timeclock/v1/devices/{clock.device}/status",
                       status.to_bytes(), qos=1, retain=True).wait_for_publish(30)
    wait_for(lambda: svc.statuses.get(clock.device) is not None, 30, "the status to be seen")
    row = svc.statuses.get(clock.device)
    assert row is not None
    assert (row.status, row.error) == (status, None)
    svc.stop()
    store.close()


def test_d4_punches_queued_while_the_collector_is_down_are_delivered(
        mosquitto: MosquittoBroker, start_collector: Starter, tmp_path: Path) -> None:
    db = tmp_path / "ledger.db"
    store = SQLiteStore(db)
    clock = new_clock()
    enroll(store, clock)
    svc, log_key = start_collector(mosquitto, db=db)
    svc.stop()                       # the broker keeps the session and its subscription
    dev = Device(mosquitto, clock)
    dev.send(clock.batch(2))
    dev.send(clock.batch(2))
    start_collector(mosquitto, db=db, log_key=log_key)
    assert dev.acked_until(log_key, {1, 2, 3, 4}) == {1, 2, 3, 4}
    assert store.progress(clock.device).contiguous == 4
    store.close()


class DownStore(SQLiteStore):
    """A real SQLite ledger whose appends fail while ``down`` (a database outage)."""

    down = True

    def append(self, facts, *, now_us):  # type: ignore[no-untyped-def]
        if self.down:
            raise OSError("database unavailable")
        return super().append(facts, now_us=now_us)


def test_d4_no_puback_before_commit_so_the_broker_redelivers(
        mosquitto: MosquittoBroker, start_collector: Starter, tmp_path: Path) -> None:
    db = tmp_path / "ledger.db"
    store = SQLiteStore(db)
    clock = new_clock()
    enroll(store, clock)
    down = DownStore(db)
    svc, log_key = start_collector(mosquitto, db=db, store=down)
    dev = Device(mosquitto, clock)
    dev.send(clock.batch(2))
    wait_for(lambda: svc.writer is not None and svc.writer.batches >= 1, 30,
             "a failed batch")
    assert store.progress(clock.device).highest == 0
    # The collector dies with the message un-PUBACKed; a healthy one gets it again.
    svc.stop(timeout_s=30)
    down.close()
    start_collector(mosquitto, db=db, log_key=log_key)
    assert dev.acked_until(log_key, {1, 2}) == {1, 2}
    assert store.progress(clock.device).contiguous == 2
    store.close()


class ServeProcess:
    """``timeclock-collector serve --config F`` as a real subprocess, its stderr collected."""

    def __init__(self, cfg_file: Path) -> None:
        root = Path(__file__).resolve().parents[2]
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "collector.cli.main", "serve", "--config", str(cfg_file)],
            cwd=root, stderr=subprocess.PIPE, text=True,
            env=dict(os.environ, PYTHONPATH=str(root)))
        self._lines: queue.Queue[str] = queue.Queue()
        self._seen: list[str] = []
        self._reader = threading.Thread(
            target=lambda: [self._lines.put(x) for x in self.proc.stderr or ()])
        self._reader.start()

    def wait_for_line(self, text: str, timeout_s: float = 60) -> None:
        """Wait for a stderr line containing ``text``; fail at once, with what serve wrote,
        if it exits first, and name what was awaited at the deadline."""
        deadline = time.monotonic() + timeout_s
        while not any(text in x for x in self._seen):
            try:
                self._seen.append(self._lines.get(timeout=0.1))
            except queue.Empty:
                if self.proc.poll() is not None and not self._reader.is_alive() \
                        and self._lines.empty():
                    raise AssertionError(f"serve exited ({self.proc.returncode}) before "
                                         f"{text!r}:\n{''.join(self._seen)[-3000:]}") from None
                if time.monotonic() > deadline:
                    raise AssertionError(f"no {text!r} from serve within {timeout_s} s:\n"
                                         f"{''.join(self._seen)[-3000:]}") from None

    def terminate(self) -> int:
        self.proc.send_signal(signal.SIGTERM)
        return self.proc.wait(60)

    def close(self) -> str:
        """Kill it if still running; return everything it wrote to stderr."""
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(30)
        self._reader.join(30)
        return "".join(self._seen) + "".join(self._lines.get()
                                             for _ in range(self._lines.qsize()))


@pytest.mark.subprocess
def test_serve_cli_runs_until_sigterm_and_stops_cleanly(
        mosquitto: MosquittoBroker, tmp_path: Path) -> None:
    db = tmp_path / "ledger.db"
    store = SQLiteStore(db)
    clock = new_clock()
    enroll(store, clock)
    cfg_file, log_key = write_collector_config(tmp_path / "c", mosquitto,
                                               store_url=f"sqlite://{db}")
    dev = Device(mosquitto, clock)
    serve = ServeProcess(cfg_file)
    try:
        serve.wait_for_line("MQTT subscribed")
        dev.send(clock.batch(1))
        assert dev.acked_until(log_key, {1}, timeout_s=60) == {1}
        assert serve.terminate() == 0
    finally:
        err = serve.close()
    assert "stopping after the batch in flight" in err
    assert "collector.main stopped" in err
    assert "Traceback" not in err
    store.close()


def test_serve_check_config(tmp_path: Path, mosquitto: MosquittoBroker,
                            capsys: pytest.CaptureFixture[str]) -> None:
    cfg_file, _ = write_collector_config(tmp_path, mosquitto,
                                         store_url="postgresql://app:pw@db/ledger")
    assert main(["serve", "--check-config", str(cfg_file)]) == 0
    out = capsys.readouterr().out
    assert "OK (collector.main, store postgresql://app:***@db/ledger" in out
    bad = tmp_path / "bad.toml"
    bad.write_text('[collector]\nname = "main"\n[mqtt]\nport = 0\n')
    assert main(["serve", "--check-config", str(bad)]) == 2
    err = capsys.readouterr().err
    assert "collector.store: required" in err
    assert "mqtt.port: must be between 1 and 65535" in err
    os.chmod(tmp_path / "log.key", 0o644)
    assert main(["serve", "--check-config", str(cfg_file)]) == 2
    assert "collector.log_key:" in capsys.readouterr().err


def test_d5_two_collectors_share_the_load_on_one_ledger(
        mosquitto: MosquittoBroker, start_collector: Starter, tmp_path: Path) -> None:
    db = tmp_path / "ledger.db"
    store = SQLiteStore(db)
    clock = new_clock()
    enroll(store, clock)
    key = SigningKey.generate()
    main_svc, _ = start_collector(mosquitto, db=db, log_key=key)
    standby, _ = start_collector(mosquitto, db=db, name="standby", log_key=key)
    dev = Device(mosquitto, clock)
    for _ in range(20):
        dev.send(clock.batch(2))
    assert dev.acked_until(key, set(range(1, 41))) == set(range(1, 41))
    progress = store.progress(clock.device)
    assert (progress.contiguous, progress.gaps) == (40, ())
    handled = [s.alerts.counts().get("punch:appended", 0) for s in (main_svc, standby)]
    assert sum(handled) == 40
    assert min(handled) > 0, f"the shared subscription gave one collector nothing: {handled}"
    assert [a for s in (main_svc, standby) for a in s.alerts.recent()] == []
    store.close()


@pytest.mark.subprocess
def test_d12_serve_runs_the_https_api_and_flushes_its_access_log_on_sigterm(
        mosquitto: MosquittoBroker, tmp_path: Path,
        capsys: pytest.CaptureFixture[str]) -> None:
    db = tmp_path / "ledger.db"
    store = SQLiteStore(db)
    clock = new_clock()
    enroll(store, clock)
    assert main(["token", "create", "--store", f"sqlite://{db}", "--principal", "pat",
                 "--role", "hr.read", "--expires", "1d"]) == 0
    token = capsys.readouterr().out.split()[-1]
    port = free_port()
    pki = mosquitto.pki
    cfg_file, log_key = write_collector_config(
        tmp_path / "c", mosquitto, store_url=f"sqlite://{db}",
        extra=f'[api]\ncert = "{pki.server_cert_file}"\nkey = "{pki.server_key_file}"\n'
              f'port = {port}\n')
    dev = Device(mosquitto, clock)
    serve = ServeProcess(cfg_file)
    ctx = ssl.create_default_context(cafile=str(pki.ca_file))
    try:
        serve.wait_for_line("MQTT subscribed")
        dev.send(clock.batch(2))
        assert dev.acked_until(log_key, {1, 2}, timeout_s=60) == {1, 2}
        req = urllib.request.Request(f"https://127.0.0.1:{port}/v1/punches?format=ndjson",
                                     headers={"Authorization": f"Bearer {token}"})
        with urllib.request.urlopen(req, context=ctx, timeout=30) as resp:  # noqa: S310
            rows = [json.loads(x) for x in resp.read().splitlines()]
        assert [(r["device"], r["seq"]) for r in rows] == [(clock.device, 1),
                                                            (clock.device, 2)]
        with pytest.raises(urllib.error.HTTPError, match="401"):
            urllib.request.urlopen(f"https://127.0.0.1:{port}/v1/punches",  # noqa: S310
                                   context=ctx, timeout=30)
        assert serve.terminate() == 0
    finally:
        err = serve.close()
    assert "Traceback" not in err
    store.close()
    store = SQLiteStore(db)
    access = [json.loads(se.body or b"{}") for se in store.entries() if se.entry.kind == "access"]
    requests = [(a.get("principal"), a.get("status")) for a in access
                if a.get("type") == "request"]
    assert requests == [("pat", 200)]
    # without a principal: counted in its source's tally of the minute (docs/api.md)
    assert [(a["count"], a["statuses"]) for a in access
            if a.get("type") == "unauthenticated"] == [(1, {"401": 1})]
    store.close()
