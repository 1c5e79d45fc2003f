"""Broker config rendering, and control D3 (mTLS MQTT) against a real Mosquitto 2.0.11."""

from __future__ import annotations

import datetime as dt
import re
import ssl
import threading
import time
from pathlib import Path
from typing import Any

import paho.mqtt.client as mqtt
import pytest
from cryptography import x509

from collector import ConfigError
from collector.fleet.broker_config import (
    DEVICE_ID_ERE,
    BrokerSettings,
    build_acl_plugin,
    render_acl,
    render_mosquitto_conf,
)
from collector.fleet.broker_process import (
    CONTROL_CERT,
    CONTROL_IDENTITY,
    CONTROL_KEY,
    BrokerControl,
    dynsec_plugin,
    prepare_managed_broker,
)
from tests.fixtures.mosquitto import MosquittoBroker, free_port
from tests.fixtures.pki import TestPKI
from tests.polling import wait_for
from wire import inclusion, topics, witness
from wire.fields import DEVICE_ID_RE

MARKER = b"marker"


def settings(**kw: Any) -> BrokerSettings:
    base: dict[str, Any] = {
        "port": 8883, "cafile": Path("/b/ca.crt"), "certfile": Path("/b/server.crt"),
        "keyfile": Path("/b/server.key"), "crlfile": Path("/b/crl.pem"),
        "acl_file": Path("/b/acl"), "persistence_location": Path("/b/data"),
        "collectors": ("collector.main",), "acl_plugin": Path("/b/timeclock_acl.so")}
    base.update(kw)
    return BrokerSettings(**base)


# -- rendering (pure) --------------------------------------------------------------------

def test_conf_has_every_required_directive() -> None:
    lines = render_mosquitto_conf(settings(host="0.0.0.0")).splitlines()  # noqa: S104
    for line in ["allow_anonymous false", "acl_file /b/acl", "persistence true",
                 "persistence_location /b/data/", "max_queued_messages 1000000",
                 "max_inflight_messages 100", "message_size_limit 262144",
                 "set_tcp_nodelay true", "listener 8883 0.0.0.0", "tls_version tlsv1.2",
                 "cafile /b/ca.crt", "certfile /b/server.crt", "keyfile /b/server.key",
                 "crlfile /b/crl.pem", "require_certificate true",
                 "use_identity_as_username true", "use_username_as_clientid true",
                 "plugin /b/timeclock_acl.so", "plugin_opt_acl_file /b/acl"]:
        assert line in lines
    # Exactly one listener, and it is the TLS one (no plain port, no default 1883).
    assert [ln for ln in lines if ln.startswith(("listener", "port"))] == [
        "listener 8883 0.0.0.0"]
    assert not any(ln.startswith("user ") for ln in lines)


def test_conf_sizes_and_user_are_configurable() -> None:
    text = render_mosquitto_conf(settings(max_queued_messages=5, max_inflight_messages=7,
                                          user="root"))
    assert "max_queued_messages 5\n" in text
    assert "max_inflight_messages 7\n" in text
    assert "\nuser root\n" in text


def test_acl_text() -> None:
    assert render_acl(["collector.main", "collector.standby"]).splitlines()[6:] == [
        "pattern write timeclock/v1/devices/%u/punches",
        "pattern write timeclock/v1/devices/%u/status",
        "pattern write timeclock/v1/devices/%u/cosignature",
        "pattern write timeclock/v1/devices/%u/inclusion/request",
        "pattern write timeclock/v1/devices/%u/resume/request",
        "pattern write timeclock/v1/devices/%u/config-result",
        "pattern read timeclock/v1/devices/%u/acks",
        "pattern read timeclock/v1/devices/%u/checkpoint",
        "pattern read timeclock/v1/devices/%u/inclusion",
        "pattern read timeclock/v1/devices/%u/resume",
        "pattern read timeclock/v1/devices/%u/config",
        "pattern read timeclock/v1/devices/%u/badge-outcome",
        "pattern read timeclock/v1/log/checkpoint",
        "",
        "user collector.main",
        "topic read timeclock/v1/devices/+/punches",
        "topic read timeclock/v1/devices/+/status",
        "topic read timeclock/v1/devices/+/cosignature",
        "topic read timeclock/v1/devices/+/inclusion/request",
        "topic write timeclock/v1/devices/+/inclusion",
        "topic read timeclock/v1/devices/+/resume/request",
        "topic write timeclock/v1/devices/+/resume",
        "topic write timeclock/v1/devices/+/config",
        "topic read timeclock/v1/devices/+/config-result",
        "topic write timeclock/v1/devices/+/acks",
        "topic write timeclock/v1/devices/+/badge-outcome",
        "topic write timeclock/v1/devices/+/checkpoint",
        "topic readwrite timeclock/v1/log/checkpoint",
        "",
        "user collector.standby",
        "topic read timeclock/v1/devices/+/punches",
        "topic read timeclock/v1/devices/+/status",
        "topic read timeclock/v1/devices/+/cosignature",
        "topic read timeclock/v1/devices/+/inclusion/request",
        "topic write timeclock/v1/devices/+/inclusion",
        "topic read timeclock/v1/devices/+/resume/request",
        "topic write timeclock/v1/devices/+/resume",
        "topic write timeclock/v1/devices/+/config",
        "topic read timeclock/v1/devices/+/config-result",
        "topic write timeclock/v1/devices/+/acks",
        "topic write timeclock/v1/devices/+/badge-outcome",
        "topic write timeclock/v1/devices/+/checkpoint",
        "topic readwrite timeclock/v1/log/checkpoint",
    ]


def test_settings_report_every_problem() -> None:
    with pytest.raises(ConfigError) as info:
        settings(port=0, host="example.org", collectors=("main",), max_queued_messages=0,
                 crlfile=Path("/b/crl.pem\nallow_anonymous true"))
    assert info.value.problems == [
        "port: 0 is outside 1..65535",
        "host: 'example.org' is not an IP address to listen on",
        "collectors: 'main' must match ^collector\\.[a-z0-9](?:[a-z0-9-]{0,61}[a-z0-9])?$",
        "max_queued_messages: must be ≥ 1",
        "crlfile: path '/b/crl.pem\\nallow_anonymous true' cannot be written to mosquitto.conf",
    ]


# -- D3 against the real broker ------------------------------------------------------------

def publish_ok(client: mqtt.Client, topic: str, payload: bytes, **kw: Any) -> None:
    info = client.publish(topic, payload, qos=1, **kw)
    info.wait_for_publish(30)
    assert info.is_published() is True


def test_d3_device_publishes_own_punches_collector_receives(mosquitto: MosquittoBroker) -> None:
    sub = mosquitto.subscribe("collector.main", topics.SHARED_PUNCHES)
    dev = mosquitto.client("dev-a")
    publish_ok(dev, topics.punches("dev-a"), b'{"v":1}')
    msg = sub.get()
    assert (msg.topic, msg.payload) == (topics.punches("dev-a"), b'{"v":1}')


def test_d3_tls_1_3_negotiated_and_1_2_accepted(mosquitto: MosquittoBroker) -> None:
    default = mosquitto.probe(mosquitto.context("dev-a"))
    assert (default.accepted, default.tls_version) == (True, "TLSv1.3")
    capped = mosquitto.context("dev-a")
    capped.maximum_version = ssl.TLSVersion.TLSv1_2
    assert mosquitto.probe(capped).tls_version == "TLSv1.2"
    assert mosquitto.probe(capped).accepted is True


def _anonymous_context(ca_file: Path) -> ssl.SSLContext:
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    ctx.load_verify_locations(cafile=str(ca_file))
    return ctx


@pytest.mark.parametrize("case", ["no-client-cert", "foreign-ca", "expired"])
def test_d3_refused_certificates(mosquitto: MosquittoBroker, pki: TestPKI, case: str) -> None:
    ctx = {"no-client-cert": lambda: _anonymous_context(mosquitto.ca_file),
           "foreign-ca": lambda: pki.foreign_device().context(),
           "expired": lambda: pki.expired_device().context()}[case]()
    result = mosquitto.probe(ctx)
    assert result.accepted is False, result
    expected = ("peer did not return a certificate" if case == "no-client-cert"
                else "certificate verify failed")
    # The refusal is logged by the broker, not necessarily before our socket saw it.
    wait_for(lambda: expected in mosquitto.log_text(), 30, f"the broker to log {expected!r}")
    # The broker still serves good clients.
    assert mosquitto.probe(mosquitto.context("dev-a")).accepted is True


def test_d3_revoked_certificate_refused_within_5s(mosquitto: MosquittoBroker,
                                                   pki: TestPKI) -> None:
    victim = pki.fresh_device("lost")
    assert mosquitto.probe(victim.context()).accepted is True
    connected = mosquitto.client(victim.name)

    started = time.monotonic()
    pki.revoke(victim)
    mosquitto.reload_crl()  # copy the CA's new CRL to the broker + SIGHUP
    refused = mosquitto.probe(victim.context())
    elapsed = time.monotonic() - started
    assert refused.accepted is False, refused
    assert elapsed < 5.0
    assert mosquitto.probe(mosquitto.context("dev-a")).accepted is True

    # Mosquitto 2.0.11 keeps sessions that were connected before the reload; a restart ends
    # them, and the reconnect is refused (certs/README.md, "Revocation and Mosquitto").
    assert connected.is_connected() is True
    mosquitto.restart()
    assert mosquitto.probe(victim.context()).accepted is False


def test_d3_crl_is_loaded_at_start(mosquitto_factory: Any, pki: TestPKI) -> None:
    victim = pki.fresh_device("gone")
    pki.revoke(victim, reason="cessation-of-operation")
    broker = mosquitto_factory()
    assert broker.probe(victim.context()).accepted is False


def test_d3_device_cannot_publish_into_another_devices_topics(mosquitto: MosquittoBroker
                                                              ) -> None:
    sub = mosquitto.subscribe("collector.main", topics.ALL_PUNCHES)
    # Every topic a collector may read; the acks/witness/inclusion answers it writes only.
    assert mosquitto.suback(sub.client, [topics.ALL_STATUS, witness.ALL_COSIGNATURES,
                                         inclusion.ALL_INCLUSION_REQUESTS, topics.CHECKPOINT]
                            ) == ["Granted QoS 1"] * 4
    a = mosquitto.client("dev-a")
    denied: list[tuple[str, Any]] = []
    done = threading.Event()

    def on_publish(_c: mqtt.Client, _u: Any, mid: int, rc: Any, _p: Any) -> None:
        denied.append((mid, rc))
        done.set()

    a.on_publish = on_publish
    for topic in (topics.punches("dev-b"), topics.status("dev-b"), topics.acks("dev-a"),
                  topics.acks("dev-b"), topics.CHECKPOINT, "timeclock/v1/other",
                  witness.cosignature_topic("dev-b"), witness.checkpoint_topic("dev-a"),
                  witness.checkpoint_topic("dev-b"), inclusion.request_topic("dev-b"),
                  inclusion.answer_topic("dev-a"), inclusion.answer_topic("dev-b")):
        done.clear()
        a.publish(topic, b"forged", qos=1)
        assert done.wait(30)
        assert denied[-1][1].getName() == "Not authorized", topic
    a.on_publish = None
    publish_ok(a, topics.punches("dev-a"), MARKER)
    # Everything before the marker would have arrived before it (one publisher, one broker).
    seen = sub.get_until(lambda m: m.payload == MARKER)
    assert [(m.topic, m.payload) for m in seen] == [(topics.punches("dev-a"), MARKER)]


def test_d3_device_cannot_read_another_devices_acks(mosquitto: MosquittoBroker) -> None:
    a = mosquitto.subscribe("dev-a", topics.acks("dev-a"))
    # Refused at SUBSCRIBE (timeclock_acl), not filtered at delivery.
    assert mosquitto.suback(a.client, ["timeclock/v1/devices/+/acks", "timeclock/v1/#",
                                       topics.acks("dev-b")]) == ["Not authorized"] * 3
    col = mosquitto.client("collector.main")
    publish_ok(col, topics.acks("dev-b"), b"for b")
    publish_ok(col, topics.acks("dev-a"), MARKER)
    assert [(m.topic, m.payload) for m in a.get_until(lambda m: m.payload == MARKER)] == [
        (topics.acks("dev-a"), MARKER)]


def test_witness_topics_each_device_its_own(mosquitto: MosquittoBroker) -> None:
    """A clock reads only its own witness requests and publishes only its own cosignatures
    (DESIGN.md §8.3); the collector reads every clock's cosignatures."""
    col_sub = mosquitto.subscribe("collector.main", witness.ALL_COSIGNATURES)
    a = mosquitto.subscribe("dev-a", witness.checkpoint_topic("dev-a"))
    assert mosquitto.suback(a.client, ["timeclock/v1/devices/+/checkpoint",
                                       witness.checkpoint_topic("dev-b"),
                                       witness.ALL_COSIGNATURES]) == ["Not authorized"] * 3
    col = mosquitto.client("collector.standby")
    publish_ok(col, witness.checkpoint_topic("dev-b"), b"for b")
    publish_ok(col, witness.checkpoint_topic("dev-a"), MARKER)
    assert [(m.topic, m.payload) for m in a.get_until(lambda m: m.payload == MARKER)] == [
        (witness.checkpoint_topic("dev-a"), MARKER)]
    publish_ok(mosquitto.client("dev-b"), witness.cosignature_topic("dev-b"), b"b's")
    publish_ok(a.client, witness.cosignature_topic("dev-a"), MARKER)
    got = col_sub.get_until(lambda m: m.payload == MARKER)
    assert sorted((m.topic, m.payload) for m in got) == [
        (witness.cosignature_topic("dev-a"), MARKER), (witness.cosignature_topic("dev-b"),
                                                       b"b's")]


def test_inclusion_topics_each_device_its_own(mosquitto: MosquittoBroker) -> None:
    """A clock publishes only its own inclusion requests and reads only the answers to it
    (protocol.md §13.9); the collector reads every clock's requests and answers each."""
    col_sub = mosquitto.subscribe("collector.main", inclusion.ALL_INCLUSION_REQUESTS)
    a = mosquitto.subscribe("dev-a", inclusion.answer_topic("dev-a"))
    assert mosquitto.suback(a.client, ["timeclock/v1/devices/+/inclusion",
                                       inclusion.answer_topic("dev-b"),
                                       inclusion.ALL_INCLUSION_REQUESTS]) == [
        "Not authorized"] * 3
    col = mosquitto.client("collector.standby")
    publish_ok(col, inclusion.answer_topic("dev-b"), b"for b")
    publish_ok(col, inclusion.answer_topic("dev-a"), MARKER)
    assert [(m.topic, m.payload) for m in a.get_until(lambda m: m.payload == MARKER)] == [
        (inclusion.answer_topic("dev-a"), MARKER)]
    publish_ok(mosquitto.client("dev-b"), inclusion.request_topic("dev-b"), b"b's")
    publish_ok(a.client, inclusion.request_topic("dev-a"), MARKER)
    got = col_sub.get_until(lambda m: m.payload == MARKER)
    assert sorted((m.topic, m.payload) for m in got) == [
        (inclusion.request_topic("dev-a"), MARKER), (inclusion.request_topic("dev-b"),
                                                     b"b's")]


def test_d3_device_cannot_read_other_punches_or_status(mosquitto: MosquittoBroker) -> None:
    a = mosquitto.subscribe("dev-a", topics.acks("dev-a"))
    assert mosquitto.suback(a.client, ["timeclock/v1/devices/#", topics.ALL_PUNCHES,
                                       topics.ALL_STATUS, topics.punches("dev-b"),
                                       topics.SHARED_PUNCHES]) == ["Not authorized"] * 5
    b = mosquitto.client("dev-b")
    publish_ok(b, topics.punches("dev-b"), b"b's punches")
    publish_ok(b, topics.status("dev-b"), b"b's status")
    publish_ok(mosquitto.client("collector.main"), topics.acks("dev-a"), MARKER)
    assert [m.payload for m in a.get_until(lambda m: m.payload == MARKER)] == [MARKER]


def test_d3_unlisted_collector_gets_nothing(mosquitto: MosquittoBroker) -> None:
    rogue = mosquitto.client("collector.rogue")
    # Not a device id and no `user` of the ACL: every SUBSCRIBE refused, the checkpoint too.
    assert mosquitto.suback(rogue, ["timeclock/v1/#", topics.CHECKPOINT,
                                    topics.SHARED_PUNCHES]) == ["Not authorized"] * 3
    info = rogue.publish(topics.punches("collector.rogue"), b"p", qos=1)
    info.wait_for_publish(30)
    assert "timeclock_acl: denied PUBLISH timeclock/v1/devices/collector.rogue/punches for " \
        "collector.rogue" in mosquitto.log_text()


def test_shared_subscription_splits_between_collectors(mosquitto: MosquittoBroker) -> None:
    main = mosquitto.subscribe("collector.main", topics.SHARED_PUNCHES)
    standby = mosquitto.subscribe("collector.standby", topics.SHARED_PUNCHES)
    dev = mosquitto.client("dev-a")
    for i in range(20):
        publish_ok(dev, topics.punches("dev-a"), str(i).encode())
    got: list[bytes] = []

    def all_20() -> bool:
        for s in (main, standby):
            while not s.messages.empty():
                got.append(s.messages.get_nowait().payload)
        return len(got) >= 20
    wait_for(all_20, 30, "the 20 messages at either collector")
    assert sorted(got, key=int) == [str(i).encode() for i in range(20)]
    assert main.messages.empty()
    assert standby.messages.empty()


def test_checkpoint_retained_for_devices(mosquitto: MosquittoBroker) -> None:
    publish_ok(mosquitto.client("collector.main"), topics.CHECKPOINT, b"cp-1", retain=True)
    dev = mosquitto.subscribe("dev-a", topics.CHECKPOINT)
    msg = dev.get()
    assert (msg.payload, msg.retain) == (b"cp-1", True)


def test_oversized_message_refused_and_sender_disconnected(mosquitto: MosquittoBroker) -> None:
    sub = mosquitto.subscribe("collector.main", topics.ALL_PUNCHES)
    gone = threading.Event()
    big = mosquitto.client("dev-a", client_id="dev-a-big",
                           configure=lambda c: setattr(c, "on_disconnect",
                                                       lambda *_a: gone.set()))
    big.publish(topics.punches("dev-a"), b"x" * (256 * 1024 + 1), qos=1)
    assert gone.wait(30)  # Mosquitto 2.0.11 drops the connection ("Protocol error")
    big.disconnect()
    dev = mosquitto.client("dev-a")
    publish_ok(dev, topics.punches("dev-a"), MARKER)
    assert [m.payload for m in sub.get_until(lambda m: m.payload == MARKER)] == [MARKER]
    publish_ok(dev, topics.punches("dev-a"), b"y" * (256 * 1024))
    assert len(sub.get().payload) == 256 * 1024


def test_fixture_stop_start_same_port_and_kill(mosquitto: MosquittoBroker) -> None:
    port = mosquitto.port
    mosquitto.stop()
    assert mosquitto.probe(mosquitto.context("dev-a")).accepted is False
    mosquitto.start()
    assert (mosquitto.port, mosquitto.probe(mosquitto.context("dev-a")).accepted) == (port, True)
    mosquitto.kill()
    assert mosquitto.running is False
    mosquitto.start()
    assert mosquitto.running is True


# -- issue 11: one stolen certificate breaks nothing -------------------------------------------

@pytest.mark.parametrize("name", [
    "a", "dev-a", "clock-17", "a" * 63, "0-9", "a" * 64, "-a", "a-", "Dev", "dev.a",
    "collector.main", "api.payroll", "dev a", "dev/+", "", "dev_a"])
def test_device_id_ere_matches_wire_pattern(name: str) -> None:
    # The plugin's POSIX pattern and wire.fields.DEVICE_ID_RE accept the same names.
    assert bool(re.fullmatch(DEVICE_ID_ERE, name)) is bool(DEVICE_ID_RE.fullmatch(name))


@pytest.mark.subprocess
def test_acl_plugin_build_without_compiler_is_a_clear_error(tmp_path: Path,
                                                             monkeypatch: pytest.MonkeyPatch
                                                             ) -> None:
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    with pytest.raises(ConfigError, match="no C compiler '/nonexistent/cc'"):
        build_acl_plugin(tmp_path / "p.so", cc="/nonexistent/cc")
    assert not (tmp_path / "p.so").exists()
    assert list((tmp_path / "cache" / "timeclock").iterdir()) == []   # no temp left


def test_d3_client_id_is_forced_to_the_certificate_cn(mosquitto: MosquittoBroker) -> None:
    col = mosquitto.subscribe("collector.main", topics.SHARED_PUNCHES)
    # A device asking for the collector's client id gets its own CN instead; the collector
    # is not kicked and still receives punches.
    thief = mosquitto.client("dev-a", client_id="collector.main")
    log = mosquitto.log_text()
    assert re.search(r"New client connected from \S+ as dev-a \(", log)
    assert "Client collector.main already connected" not in log
    publish_ok(thief, topics.punches("dev-a"), MARKER)
    assert col.get().payload == MARKER
    assert col.client.is_connected() is True


def test_d3_api_client_certificate_gets_nothing(mosquitto: MosquittoBroker, pki: TestPKI
                                                ) -> None:
    api = mosquitto.client("api.payroll", context=pki.api_client("payroll").context())
    assert mosquitto.suback(api, [topics.CHECKPOINT, topics.SHARED_PUNCHES,
                                  topics.acks("api.payroll")]) == ["Not authorized"] * 3
    done = threading.Event()
    codes: list[Any] = []

    def on_publish(_c: mqtt.Client, _u: Any, _mid: int, rc: Any, _p: Any) -> None:
        codes.append(rc)
        done.set()

    api.on_publish = on_publish
    api.publish(topics.punches("api.payroll"), b"p", qos=1)
    assert done.wait(30)
    assert codes[0].getName() == "Not authorized"


@pytest.mark.subprocess
def test_acl_plugin_built_once_per_source_and_without_a_writable_cache(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    first = build_acl_plugin(tmp_path / "a" / "p.so")
    cached = list((tmp_path / "cache" / "timeclock").iterdir())
    assert [p.name.startswith("timeclock_acl-") for p in cached] == [True]
    # A second build reuses the cached object: the compiler is not run again.
    build_acl_plugin(tmp_path / "b" / "p.so", cc="/nonexistent/cc")
    assert (tmp_path / "b" / "p.so").read_bytes() == first.read_bytes()
    # No writable cache (a service account without a home): built beside the output.
    (tmp_path / "ro").mkdir()
    (tmp_path / "ro" / "timeclock").write_text("not a directory")
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "ro"))
    (tmp_path / "c").mkdir()
    assert build_acl_plugin(tmp_path / "c" / "p.so").read_bytes() == first.read_bytes()


@pytest.mark.subprocess
def test_managed_broker_control_identity_issued_kept_and_renewed(pki: TestPKI,
                                                                  tmp_path: Path) -> None:
    d = tmp_path / "broker"
    prepare_managed_broker(pki.ca, d, port=free_port(), collectors=("main",))
    if dynsec_plugin() is None:
        pytest.skip("no dynamic-security plugin in this Mosquitto build")
    first = (d / CONTROL_CERT).read_bytes()
    cert = x509.load_pem_x509_certificate(first)
    assert cert.subject.rfc4514_string() == f"CN={CONTROL_IDENTITY}"
    acl = (d / "acl").read_text()
    assert f"user {CONTROL_IDENTITY}\ntopic write $CONTROL/dynamic-security/v1\n" in acl
    assert acl.rstrip().endswith(f"topic read {topics.ALL_STATUS}\n"
                                 f"topic write {topics.config('+')}\n"
                                 f"topic read {topics.ALL_CONFIG_RESULTS}")
    # Prepared again: kept while valid for more than 30 days...
    prepare_managed_broker(pki.ca, d, port=free_port(), collectors=("main",))
    assert (d / CONTROL_CERT).read_bytes() == first
    # ... renewed when it expires sooner.
    for name in (CONTROL_CERT, CONTROL_KEY):
        (d / name).unlink()
    pki.ca.issue_client(CONTROL_IDENTITY, d / CONTROL_KEY, d / CONTROL_CERT, kind="collector",
                        now=dt.datetime.now(dt.UTC), days=10)
    prepare_managed_broker(pki.ca, d, port=free_port(), collectors=("main",))
    renewed = x509.load_pem_x509_certificate((d / CONTROL_CERT).read_bytes())
    assert renewed.not_valid_after_utc - dt.datetime.now(dt.UTC) > dt.timedelta(days=300)
    assert sorted(p.name for p in d.iterdir() if p.name.startswith(".control")) == []
    assert BrokerControl(d).control_client() is not None
