"""The clock says what happened (issue 15 item 5; agent.feedback, wire.badge_outcome,
collector.ingest.badge_outcomes): per-outcome feedback backends, the collector's signed badge
outcome message, the clock's refusal of forged or replayed ones, and the whole path with a real
Mosquitto, a real ``timeclock-collector serve`` and a real agent process — a held badge is
``recorded`` (on the receipt), a lost one also ``blocked-badge``, one nobody holds
``unknown-badge``, a tap while the broker is away ``queued-offline`` at once. Revoked clocks:
tests/agent/test_certstate.py (``revoked state`` then ``revoked <seq>`` per tap); expired here.
"""

from __future__ import annotations

import datetime as dt
import json
import logging
import os
import subprocess
import sys
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from agent.cli import main as agent_main
from agent.config import parse_config
from agent.errors import ConfigError
from agent.feedback import (
    MESSAGES,
    OUTCOMES,
    DisplayFeedback,
    OutcomeFeedback,
    PunchOutcomes,
)
from collector.ingest.alerts import Alerts
from collector.ingest.detectors import Detectors, IngestMonitor
from collector.ingest.pipeline import Inbound, Ingestor
from collector.ledger import open_store, registry
from collector.ledger.registry import RegistrySnapshot
from collector.ledger.sqlbase import SQLStore
from collector.people import directory
from lab.site import PtyFeed
from tests.collector.punch_kit import T0, enroll, envelope, new_clock, write_collector_config
from tests.collector.test_serve import ServeProcess
from tests.fixtures.mosquitto import MosquittoBroker, suback
from tests.fixtures.pki import TestPKI
from tests.polling import wait_for
from wire import badge_outcome
from wire.badge_outcome import BadgeOutcome, SignedBadgeOutcome
from wire.canonical import canonical
from wire.errors import DecodeError, KeyMismatchError, OversizeError, SignatureError, WireError
from wire.keys import SigningKey, load_signing_key

REPO = Path(__file__).resolve().parents[2]
S = 1_000_000
DAY = 86_400 * S
WAIT_S = 90.0       # process starts, a connect, a receipt round trip on a loaded machine
IDLE_S = 30.0       # a feedback command's process start and end
EMP = {"employee_id": "E1", "name": "Ada Lovelace", "department": "Ops", "site": "hq",
       "timezone": "Europe/London", "manager_id": None, "status": "active",
       "active_from": "2025-01-01", "left_on": None}
HASH = "ab" * 32


def _people(store: SQLStore, held: str, lost: str, *, now_us: int) -> None:
    """E1 holds ``held`` and ``lost`` from a day ago; ``lost`` was reported lost an hour ago."""
    directory.set_employee(store, EMP, now_us=now_us)
    for c in (held, lost):
        directory.badge_event(store, "assigned", c, start_us=now_us - DAY, employee_id="E1",
                              now_us=now_us)
    directory.badge_event(store, "lost", lost, start_us=now_us - 3600 * S, employee_id="E1",
                          now_us=now_us)


# --- the message -------------------------------------------------------------------------------

def test_badge_outcome_round_trips_and_parses_strictly() -> None:
    key = SigningKey.generate()
    o = BadgeOutcome("clock-1", 7, HASH, "blocked", T0, key.key_id)
    signed = o.sign(key)
    data = signed.to_bytes()
    assert SignedBadgeOutcome.from_bytes(data) == signed
    assert SignedBadgeOutcome.from_bytes(data).verify(key.verify_key, "clock-1") == o
    assert data.startswith(b'{"outcome":{"at":')
    assert badge_outcome.topic("clock-1") == "timeclock/v1/devices/clock-1/badge-outcome"
    body = o.to_dict()
    cases: list[tuple[Any, type[WireError], str]] = [
        ({**body, "badge": "assigned"}, DecodeError, "badge"),      # no "all good" value
        ({**body, "extra": 1}, DecodeError, "extra"),
        ({**body, "v": 2}, DecodeError, "unsupported version"),
        ({**body, "seq": 0}, DecodeError, "seq"),
        ({**body, "hash": "AB" * 32}, DecodeError, "hash"),
        ({k: v for k, v in body.items() if k != "log"}, DecodeError, "log"),
    ]
    for bad, error, match in cases:
        with pytest.raises(error, match=match):
            SignedBadgeOutcome.from_bytes(canonical({"outcome": bad, "sig": signed.sig}))
    with pytest.raises(OversizeError, match="more than 1024"):
        SignedBadgeOutcome.from_bytes(b" " * 1025)
    other = SigningKey.generate()
    with pytest.raises(KeyMismatchError, match="names log key"):
        signed.verify(other.verify_key, "clock-1")
    with pytest.raises(KeyMismatchError, match="for device clock-1, not clock-2"):
        signed.verify(key.verify_key, "clock-2")
    forged = SignedBadgeOutcome(o, other.sign(o.signed_message()))   # right key id, wrong key
    with pytest.raises(SignatureError):
        forged.verify(key.verify_key, "clock-1")


@pytest.mark.subprocess
def test_d3_only_collectors_write_a_clocks_badge_outcomes_and_only_that_clock_reads_them(
        mosquitto: MosquittoBroker) -> None:
    mine, thief = "bo-clock-a", "bo-clock-b"
    sub = mosquitto.subscribe(mine, badge_outcome.topic(mine))      # its own: granted
    stolen = mosquitto.client(thief)
    assert suback(stolen, [badge_outcome.topic(mine), badge_outcome.ALL_TOPICS]) == [
        "Not authorized", "Not authorized"]
    for payload in (b"forged by a clock", b"forged again"):          # a clock cannot write one
        stolen.publish(badge_outcome.topic(mine), payload, qos=1).wait_for_publish(WAIT_S)
    sub.client.publish(badge_outcome.topic(mine), b"nor its own", qos=1).wait_for_publish(
        WAIT_S)
    collector = mosquitto.client("collector.main")
    collector.publish(badge_outcome.topic(mine), b"marker", qos=1).wait_for_publish(WAIT_S)
    # the broker handled the refused publishes before the marker: only the marker arrives
    got = sub.get_until(lambda m: m.payload == b"marker", WAIT_S)
    assert [m.payload for m in got] == [b"marker"]


# --- the collector's side ---------------------------------------------------------------------

@pytest.fixture
def store(tmp_path: Path) -> Iterator[SQLStore]:
    s = open_store(f"sqlite://{tmp_path / 'ledger.db'}")
    try:
        yield s
    finally:
        s.close()


def test_d13_collector_tells_the_clock_of_unknown_lost_and_blocked_badges_only(
        store: SQLStore) -> None:
    log_key = SigningKey.generate()
    clock = new_clock()
    enroll(store, clock)
    held, lost, stranger = "em4100:0000001001", "em4100:0000001002", "em4100:0000009999"
    dets = Detectors(Alerts())
    ing = Ingestor(store, lambda: RegistrySnapshot.load(store), log_key, Alerts(),
                   monitor=IngestMonitor(dets))
    first = [clock.punch(credential=held, ts=T0 + S)]
    res = ing.process([Inbound(clock.topic, envelope(clock.device, first), T0)], now_us=T0)
    assert res.badge_outcomes == []            # no directory yet: silent, like the detector
    _people(store, held, lost, now_us=T0)
    assert dets.badge_scans.refresh(store) is True
    directory.badge_event(store, "blocked", held, start_us=T0 + 50 * S, employee_id="E1",
                          now_us=T0)
    dets.badge_scans.refresh(store)
    batch = [clock.punch(credential=held, ts=T0 + 10 * S),       # held then: nothing
             clock.punch(credential=lost, ts=T0 + 20 * S),       # lost
             clock.punch(credential=stranger, ts=T0 + 30 * S),   # nobody's
             clock.punch(credential=held, ts=T0 + 60 * S)]       # blocked since T0 + 50 s
    res = ing.process([Inbound(clock.topic, envelope(clock.device, batch), T0, mid=2)],
                      now_us=T0 + 70 * S)
    got = []
    for topic, payload in res.badge_outcomes:
        assert topic == badge_outcome.topic(clock.device)
        o = SignedBadgeOutcome.from_bytes(payload).verify(log_key.verify_key, clock.device)
        got.append((o.seq, o.hash, o.badge, o.at))
        assert lost.encode() not in payload
        assert stranger.encode() not in payload
    assert got == [(p.punch.seq, p.hash(), badge, T0 + 70 * S) for p, badge in
                   ((batch[1], "lost"), (batch[2], "unknown"), (batch[3], "blocked"))]
    # the same punches again (a resend after a lost receipt): duplicates, nothing told again
    res = ing.process([Inbound(clock.topic, envelope(clock.device, batch), T0, mid=3)],
                      now_us=T0 + 80 * S)
    assert res.badge_outcomes == []


# --- the clock's side -------------------------------------------------------------------------

def test_d13_clock_accepts_only_signed_outcomes_of_its_own_recent_punches(
        caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO)
    log_key, other = SigningKey.generate(), SigningKey.generate()
    fb = OutcomeFeedback({})
    po = PunchOutcomes(fb, "clock-1", log_key.verify_key, connection=lambda: (True, None))
    hashes = {seq: f"{seq:064x}" for seq in range(1, 6)}
    for seq, h in hashes.items():
        po.recorded(seq, h, "front")
    assert fb.signalled == []                              # online: nothing said at once

    def msg(seq: int, badge: str = "unknown", *, key: SigningKey = log_key,
            device: str = "clock-1", h: str | None = None) -> bytes:
        o = BadgeOutcome(device, seq, h or hashes.get(seq, HASH), badge, T0, log_key.key_id)
        return SignedBadgeOutcome(o, key.sign(o.signed_message())).to_bytes()

    ignored = [
        (msg(1, key=other), "SignatureError"),             # forged: not the log key
        (msg(1, device="clock-2"), "KeyMismatchError"),    # another clock's
        (msg(1, h=HASH), "not-ours"),                      # not the punch we recorded
        (msg(99), "not-ours"),                             # a seq we never recorded
        (b'{"outcome":{"badge":"assigned"}}', "DecodeError"),   # malformed, "all good"
        (b"\xff", "DecodeError"),
    ]
    for payload, reason in ignored:
        po.badge_message(payload)
        assert f"ignored a badge outcome message ({reason})" in caplog.text, reason
    assert (po.ignored, po.accepted, fb.signalled) == (len(ignored), 0, [])
    po.badge_message(msg(2, "lost"))
    po.badge_message(msg(3, "unknown"))
    po.badge_message(msg(4, "blocked"))
    po.badge_message(msg(2, "lost"))                       # replayed: told once only
    assert fb.signalled == ["blocked-badge", "unknown-badge", "blocked-badge"]
    assert (po.accepted, po.ignored) == (3, len(ignored) + 1)
    po.receipted([5])
    assert fb.signalled[-1] == "recorded"
    assert po.stats()["signals"] == {"blocked-badge": 2, "unknown-badge": 1, "recorded": 1}
    # a clock without a log key believes nothing
    blind = PunchOutcomes(OutcomeFeedback({}), "clock-1", None)
    blind.recorded(1, hashes[1], "front")
    blind.badge_message(msg(1))
    assert (blind.ignored, blind.feedback.signalled) == (1, [])


def test_offline_taps_say_queued_or_the_certificate_state_and_their_receipt_stays_silent(
        ) -> None:
    fb = OutcomeFeedback({})
    state: list[tuple[bool, str | None]] = [(False, None)]
    po = PunchOutcomes(fb, "clock-1", None, connection=lambda: state[0])
    po.recorded(1, HASH, "front")
    state[0] = (False, "revoked")
    po.recorded(2, HASH, "front")
    state[0] = (True, None)
    po.recorded(3, HASH, "front")
    po.receipted([1, 2])            # the backlog drains: no "recorded" beep for old taps
    po.receipted([3])
    assert fb.signalled == ["queued-offline", "revoked", "recorded"]


@pytest.mark.subprocess
def test_a_hanging_backend_does_not_delay_the_next_punch(tmp_path: Path) -> None:
    fb = OutcomeFeedback({"queued-offline": ["/bin/sleep", "60"]}, timeout_s=2)
    po = PunchOutcomes(fb, "clock-1", None, connection=lambda: (False, None))
    backend = fb.commands["queued-offline"]
    returned = []
    for seq in range(1, 21):
        po.recorded(seq, HASH, "front")       # the reader thread's hook
        returned.append(seq)
        # the first run still hangs while every later punch's hook has returned
        assert backend.runs == 1
    assert returned == list(range(1, 21))
    assert (backend.runs, backend.skipped) == (1, 19)
    assert fb.counts["queued-offline"] == 20
    assert backend.wait_idle(IDLE_S)           # killed at its timeout, counted
    assert (backend.runs, backend.failures) == (1, 1)
    po.recorded(21, HASH, "front")             # and the next one runs again
    assert backend.runs == 2
    assert backend.wait_idle(IDLE_S)


@pytest.mark.subprocess
def test_display_hook_gets_one_json_line_per_outcome_in_order_without_the_credential(
        tmp_path: Path) -> None:
    out = tmp_path / "display.jsonl"
    hook = tmp_path / "display"
    hook.write_text(f'#!/bin/sh\ncat >> {out}\necho >> {out}\n')
    hook.chmod(0o755)
    fb = OutcomeFeedback({}, display=DisplayFeedback([str(hook)], timeout_s=IDLE_S),
                         display_outcomes=OUTCOMES, device="clock-1")
    for outcome, seq in (("recorded", 1), ("blocked-badge", 1), ("unknown-badge", 2)):
        assert fb.signal(outcome, reader="front", seq=seq) is True
    wait_for(lambda: fb.wait_idle(0.1) and len(_lines(out)) == 3, IDLE_S,
             "three display lines")
    lines = [json.loads(x) for x in _lines(out)]
    assert [(x["outcome"], x["seq"], x["message"]) for x in lines] == [
        ("recorded", 1, MESSAGES["recorded"]), ("blocked-badge", 1, MESSAGES["blocked-badge"]),
        ("unknown-badge", 2, MESSAGES["unknown-badge"])]
    assert set(lines[0]) == {"outcome", "message", "device", "reader", "seq", "at_us"}
    assert lines[0]["device"] == "clock-1"


@pytest.mark.subprocess
def test_feedback_figures_reach_the_status_line_and_the_metrics(
        caplog: pytest.LogCaptureFixture) -> None:
    from prometheus_client import CollectorRegistry, generate_latest  # noqa: PLC0415

    from agent.metrics import AgentCollector  # noqa: PLC0415 -- prometheus-client only here
    from agent.status import feedback_line  # noqa: PLC0415

    fb = OutcomeFeedback({"recorded": ["/nonexistent/beep"]})
    po = PunchOutcomes(fb, "clock-1", None, connection=lambda: (True, None))
    for seq in (1, 2):
        po.recorded(seq, HASH, "front")
        po.receipted([seq])
        assert fb.commands["recorded"].wait_idle(IDLE_S)
    po.badge_message(b"not json")
    failed = [r for r in caplog.records if "cannot run" in r.getMessage()]
    assert [r.levelno for r in failed] == [logging.WARNING]     # two failures, logged once
    stats = po.stats()
    assert feedback_line(stats) == ("feedback:      signalled recorded 2; FAILING command for "
                                    "recorded: 2 failed (see the log); 1 badge outcome "
                                    "message(s) ignored")
    registry = CollectorRegistry(auto_describe=False)
    registry.register(AgentCollector(lambda: {"state": "running", "feedback": stats}, {},
                                     lambda: T0))
    text = generate_latest(registry).decode()
    for line in ('timeclock_agent_feedback_signals_total{outcome="recorded"} 2.0',
                 'timeclock_agent_feedback_failures_total{backend="command",outcome="recorded"}'
                 ' 2.0',
                 'timeclock_agent_feedback_skipped_total{backend="command",outcome="recorded"}'
                 ' 0.0',
                 "timeclock_agent_badge_outcomes_ignored_total 1.0"):
        assert line in text.splitlines(), text
    assert feedback_line({"signals": {}, "backends": []}) is None     # nothing configured


def _lines(path: Path) -> list[str]:
    try:
        return [x for x in path.read_text().splitlines() if x.strip()]
    except FileNotFoundError:
        return []


def test_feedback_config_backends_per_outcome_and_every_problem_named(tmp_path: Path) -> None:
    base = {"device": {"id": "clock-fb"}, "keys": {"signing_key": "/k", "queue_key": "/q"},
            "readers": {"a": {"kind": "simulated"}}}
    cfg = parse_config({**base, "feedback": {
        "command_timeout_s": 2,
        "outcomes": {"recorded": ["/bin/true"], "unknown-badge": ["/bin/true", "3"]},
        "display": {"command": ["/usr/local/bin/clock-display"],
                    "outcomes": ["recorded", "blocked-badge"]},
        "gpio": {"recorded": {"chip": "/dev/gpiochip0", "line": 17, "pattern": "on:200"}}}},
        base_dir=tmp_path, check_readers=False)
    fb = cfg.feedback
    assert dict(fb.outcomes) == {"recorded": ("/bin/true",),
                                 "unknown-badge": ("/bin/true", "3")}
    assert fb.display_command == ("/usr/local/bin/clock-display",)
    assert fb.display_outcomes == ("recorded", "blocked-badge")
    assert fb.gpio["recorded"].pattern == ((True, 200),)
    built = OutcomeFeedback.from_config(fb)
    assert [b.kind for b in built.backends("recorded")] == ["command", "display", "gpio"]
    assert [b.kind for b in built.backends("unknown-badge")] == ["command"]
    assert built.backends("queued-offline") == []
    with pytest.raises(ConfigError) as ei:
        parse_config({**base, "feedback": {
            "display": {"outcomes": ["recorded", "beeped"]},
            "gpio": {"recorded": {"chip": "/dev/gpiochip0", "line": 17,
                                  "pattern": "on:6000"},
                     "beeped": {"chip": "/dev/gpiochip0", "line": 1, "pattern": "on:1"}}}},
            base_dir=tmp_path, check_readers=False)
    assert ei.value.problems == [
        "feedback.display.outcomes[1]: 'beeped' is not one of " + ", ".join(OUTCOMES),
        "feedback.display.command: required (the display hook's argv)",
        "feedback.gpio.recorded: pattern: lasts 6000 ms, longer than [feedback] "
        "command_timeout_s (5000 ms)",
        "feedback.gpio.beeped: unknown key (allowed: " + ", ".join(sorted(OUTCOMES)) + ")"]


# --- expired: the outcome at start and for each tap, through the real service ----------------

@pytest.mark.subprocess
def test_d3_an_expired_clock_signals_expired_at_start_and_for_each_tap(
        tmp_path: Path, pki: TestPKI, mosquitto: MosquittoBroker) -> None:
    from agent.service import AgentService  # noqa: PLC0415 -- only here

    cert = pki.expired_device("fb-expired")
    signals = tmp_path / "signals"
    beep = _beep(tmp_path, signals)
    cfg_file = _agent_config(tmp_path, cert.name, cert=cert.cert_file, key=cert.key_file,
                             ca=cert.ca_file, broker=mosquitto, log_key=SigningKey.generate(),
                             outcomes={"expired": [str(beep)]},
                             reader={"kind": "simulated", "credentials": ["1001"],
                                     "format": "em4100", "interval_s": 0.05, "count": 3,
                                     "debounce_s": 0, "action": "in"})
    from agent.config import load_config  # noqa: PLC0415

    service = AgentService(load_config(cfg_file), env={})
    stop = threading.Event()
    t = threading.Thread(target=service.run, args=(stop,), daemon=True)
    t.start()
    try:
        wait_for(lambda: service.punch_maker.recorded == 3, WAIT_S, "three taps recorded")
        wait_for(lambda: service.outcomes.feedback.counts["expired"] == 4, WAIT_S,
                 "expired signalled at start and for each of the three taps")
        assert service.outcomes.feedback.wait_idle(IDLE_S)
        lines = signals.read_text().splitlines()
        assert lines[0] == "expired state", lines           # the state, at construction
        assert all(x.startswith("expired ") for x in lines), lines
        assert "queued-offline" not in service.outcomes.feedback.counts or \
            service.outcomes.feedback.counts["queued-offline"] == 0
        snap = service.snapshot()
        assert snap["feedback"]["signals"] == {"expired": 4}
    finally:
        stop.set()
        t.join(30)


def _beep(tmp_path: Path, signals: Path) -> Path:
    beep = tmp_path / "beep"
    beep.write_text(f'#!/bin/sh\necho "$TIMECLOCK_OUTCOME ${{TIMECLOCK_SEQ:-state}}" '
                    f'>> {signals}\n')
    beep.chmod(0o755)
    return beep


def _agent_config(tmp_path: Path, device: str, *, cert: Path, key: Path, ca: Path,
                  broker: MosquittoBroker, log_key: SigningKey,
                  outcomes: dict[str, list[str]], reader: dict[str, Any],
                  display: list[str] | None = None) -> Path:
    keys = tmp_path / "keys"
    assert agent_main(["init", "--device", device, "--dir", str(keys)]) == 0
    outcome_lines = "\n".join(f"{k} = {json.dumps(v)}" for k, v in outcomes.items())
    reader_lines = "\n".join(f"{k} = {json.dumps(v)}" for k, v in reader.items())
    display_part = (f"[feedback.display]\ncommand = {json.dumps(display)}\n"
                    if display else "")
    cfg = tmp_path / "agent.toml"
    cfg.write_text(f"""
[device]
id = "{device}"
state_dir = "state"
[keys]
signing_key = "{keys / 'signing.key'}"
queue_key = "{keys / 'queue.key'}"
tls_key = "{key}"
tls_cert = "{cert}"
ca_cert = "{ca}"
log_public_key = "{log_key.verify_key.b64}"
[mqtt]
host = "{broker.host}"
port = {broker.port}
reconnect_min_s = 0.2
reconnect_max_s = 1.0
resend_after_s = 2.0
[status]
interval_s = 0.2
[feedback]
command_timeout_s = 10
[feedback.outcomes]
{outcome_lines}
{display_part}
[readers.front]
{reader_lines}
""")
    return cfg


# --- the whole path: broker, collector, agent ------------------------------------------------

def _status(path: Path) -> dict[str, Any]:
    try:
        return dict(json.loads(path.read_text()))
    except (OSError, ValueError):
        return {}


@pytest.mark.subprocess
def test_d13_the_clock_says_recorded_blocked_unknown_and_queued_offline_end_to_end(
        tmp_path: Path, pki: TestPKI, mosquitto: MosquittoBroker) -> None:
    device = "fb-clock"
    cert = pki.device(device)
    db = tmp_path / "ledger.db"
    cfg_file, log_key = write_collector_config(tmp_path / "c", mosquitto,
                                               store_url=f"sqlite://{db}")
    signals = tmp_path / "signals"
    beep = _beep(tmp_path, signals)
    display_out = tmp_path / "display.jsonl"
    show = tmp_path / "show"
    show.write_text(f"#!/bin/sh\ncat >> {display_out}\necho >> {display_out}\n")
    show.chmod(0o755)
    feed = PtyFeed(tmp_path / "reader.tty")
    agent_cfg = _agent_config(
        tmp_path, device, cert=cert.cert_file, key=cert.key_file, ca=cert.ca_file,
        broker=mosquitto, log_key=log_key,
        outcomes={o: [str(beep)] for o in ("recorded", "unknown-badge", "blocked-badge",
                                           "queued-offline")},
        reader={"kind": "serial-line", "port": str(feed.link), "format": "wiegand26",
                "regex": "W26:([0-9]{1,10})", "action": "punch", "debounce_s": 0.0},
        display=[str(show)])
    held, lost, stranger = "wiegand26:1001", "wiegand26:1002", "wiegand26:9999"
    now = int(dt.datetime.now(dt.UTC).timestamp() * S)
    store = open_store(f"sqlite://{db}")
    try:
        signing = load_signing_key(tmp_path / "keys" / "signing.key")
        registry.enroll(store, device, "hq", signing.verify_key.b64, now_us=now)
        _people(store, held, lost, now_us=now)
    finally:
        store.close()
    status_file = tmp_path / "state" / "status.json"
    agent_log = tmp_path / "agent.log"
    serve = ServeProcess(cfg_file)
    agent: subprocess.Popen[bytes] | None = None
    try:
        serve.wait_for_line("MQTT subscribed", WAIT_S)
        with agent_log.open("ab") as log_f:
            agent = subprocess.Popen(
                [sys.executable, "-m", "agent.cli", "run", "--config", str(agent_cfg)],
                cwd=REPO, env={**os.environ, "PYTHONUNBUFFERED": "1"},
                stdout=log_f, stderr=log_f, stdin=subprocess.DEVNULL)
        wait_for(lambda: (_status(status_file).get("publisher") or {}).get("status")
                 == "connected", WAIT_S, "the clock connected")

        def said() -> list[str]:
            return _lines(signals)

        def idle() -> bool:
            # each backend runs once at a time: a tap waits until the last one's have ended
            backends = (_status(status_file).get("feedback") or {}).get("backends")
            return bool(backends) and not any(b["busy"] for b in backends)

        feed.write(b"W26:1001\n")                    # held: recorded, on its receipt
        wait_for(lambda: "recorded 1" in said() and idle(), WAIT_S, "recorded 1")
        feed.write(b"W26:1002\n")                    # reported lost: recorded, then blocked
        wait_for(lambda: "blocked-badge 2" in said() and "recorded 2" in said() and idle(),
                 WAIT_S, "blocked-badge 2 and recorded 2")
        feed.write(b"W26:9999\n")                    # nobody's: unknown
        wait_for(lambda: "unknown-badge 3" in said() and "recorded 3" in said() and idle(),
                 WAIT_S, "unknown-badge 3 and recorded 3")
        assert sorted(said()) == sorted(["recorded 1", "recorded 2", "blocked-badge 2",
                                         "recorded 3", "unknown-badge 3"]), said()
        wait_for(lambda: len(_lines(display_out)) == 5, WAIT_S, "five display lines")
        shown = [json.loads(x) for x in _lines(display_out)]
        assert sorted((x["outcome"], x["seq"]) for x in shown) == sorted(
            [("recorded", 1), ("recorded", 2), ("blocked-badge", 2), ("recorded", 3),
             ("unknown-badge", 3)])
        for text in (display_out.read_text(), signals.read_text()):
            assert lost not in text
            assert stranger not in text

        # Forged (another key naming the log key) and replayed (seq 2, already told)
        # messages, published by a collector identity the ACL lets write there.
        fake = SigningKey.generate()
        o = BadgeOutcome(device, 1, "0" * 64, "blocked", now, log_key.key_id)
        forged = SignedBadgeOutcome(o, fake.sign(o.signed_message())).to_bytes()
        st = _status(status_file)
        replayed = None
        store = open_store(f"sqlite://{db}")
        try:
            found = store.punch_hash(device, 2)
        finally:
            store.close()
        assert found is not None
        replayed = BadgeOutcome(device, 2, str(found[0]), "lost", now,
                                log_key.key_id).sign(log_key).to_bytes()
        forger = mosquitto.client("collector.standby")
        for payload in (forged, replayed):
            info = forger.publish(badge_outcome.topic(device), payload, qos=1)
            info.wait_for_publish(WAIT_S)
        wait_for(lambda: (_status(status_file).get("feedback") or {}).get(
            "badge_messages_ignored") == 2, WAIT_S, "both messages ignored")
        st = _status(status_file)
        assert st["feedback"]["signals"] == {"recorded": 3, "blocked-badge": 1,
                                             "unknown-badge": 1}
        assert st["feedback"]["badge_messages"] == 2

        # The broker goes away: the next tap says queued-offline at once.
        mosquitto.stop()
        wait_for(lambda: (_status(status_file).get("publisher") or {}).get("status")
                 != "connected", WAIT_S, "the clock disconnected")
        feed.write(b"W26:1001\n")
        wait_for(lambda: "queued-offline 4" in said(), WAIT_S, "queued-offline 4")
    finally:
        if agent is not None:
            agent.terminate()
            try:
                agent.wait(WAIT_S)
            except subprocess.TimeoutExpired:
                agent.kill()
                agent.wait()
        serve.close()
        feed.close()
    text = agent_log.read_text()
    assert "ignored a badge outcome message (SignatureError)" in text, text[-3000:]
    assert "ignored a badge outcome message (not-ours)" in text, text[-3000:]
    assert lost not in text
    assert stranger not in text
