"""Signed alert webhooks (collector.ingest.detectors_webhooks) against a real HTTP receiver on
loopback: HMAC-signed, retried with back-off until a 2xx, given up after ``attempts``, every
outcome recorded as a ``webhook-delivery`` access entry in a real store."""

from __future__ import annotations

import http.server
import json
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from collector import ConfigError
from collector.ingest.alerts import Alerts
from collector.ingest.detectors_webhooks import (
    WebhookEndpoint,
    WebhookError,
    WebhookSender,
    load_secret,
    parse_webhooks,
    verify,
)
from collector.ingest.metrics import sample_value
from collector.ledger.sqlbase import SQLStore
from collector.service.config import check_files, parse_config
from tests.collector.punch_kit import T0
from tests.fixtures.prometheus import free_port
from tests.polling import wait_for

SECRET = b"0123456789abcdef0123456789abcdef"


class Receiver:
    """An HTTP server that answers ``fail_first`` requests with 503, then 200, and keeps
    every request it got (headers, body)."""

    def __init__(self, fail_first: int) -> None:
        self.fail_first = fail_first
        self.got: list[tuple[dict[str, str], bytes]] = []
        outer = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_POST(self) -> None:  # noqa: N802 - http.server's name
                body = self.rfile.read(int(self.headers["Content-Length"]))
                outer.got.append((dict(self.headers.items()), body))
                self.send_response(503 if len(outer.got) <= outer.fail_first else 200)
                self.end_headers()

            def log_message(self, *_a: Any) -> None:
                return

        self.server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/hook"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture
def secret_file(tmp_path: Path) -> Path:
    p = tmp_path / "hook.secret"
    p.write_bytes(SECRET + b"\n")
    p.chmod(0o600)
    return p


@pytest.fixture
def receiver() -> Iterator[Receiver]:
    r = Receiver(fail_first=2)
    yield r
    r.close()


def _records(store: SQLStore) -> list[dict[str, Any]]:
    return [json.loads(e.body) for e in store.entries() if e.entry.kind == "access"
            and e.body is not None and b"webhook-delivery" in e.body]


def test_d13_an_alert_is_signed_retried_delivered_and_recorded(
        store: SQLStore, receiver: Receiver, secret_file: Path) -> None:
    ep = WebhookEndpoint("soc", receiver.url, secret_file, attempts=5,
                         backoff_initial_s=0.05, backoff_max_s=0.2)
    sender = WebhookSender([ep], "collector.main", clock=lambda: T0)
    alerts = Alerts(record=True, clock=lambda: T0)
    alerts.listeners.append(sender.submit)
    before = sample_value("timeclock_webhook_deliveries_total",
                          {"endpoint": "soc", "outcome": "delivered"}) or 0.0
    sender.start()
    try:
        alerts.alert("buddy-punch", severity=2, device="clock-0001", detail="one badge twice",
                     fields={"punch_idx": [3, 4]})
        alerts.alert("clock-skew", severity=3, device="clock-0002", detail="info only")
        wait_for(sender.unrecorded, 60, "the delivery to be done")
    finally:
        sender.stop()
    assert len(receiver.got) == 3                    # 503, 503, 200; the sev-3 one not sent
    for headers, body in receiver.got:
        assert verify(SECRET, headers["X-Timeclock-Timestamp"], body,
                      headers["X-Timeclock-Signature"])
        assert not verify(SECRET, headers["X-Timeclock-Timestamp"], body + b" ",
                          headers["X-Timeclock-Signature"])
        assert not verify(b"another secret of 32 bytes......", headers[
            "X-Timeclock-Timestamp"], body, headers["X-Timeclock-Signature"])
    payload = json.loads(receiver.got[-1][1])
    assert (payload["alert"], payload["severity"], payload["device"], payload["punch_idx"],
            payload["collector"]) == ("buddy-punch", 2, "clock-0001", [3, 4], "collector.main")
    assert sender.flush(lambda facts: store.append(facts, now_us=T0)) == 1
    (rec,) = _records(store)
    assert (rec["endpoint"], rec["outcome"], rec["attempts"], rec["host"]) == (
        "soc", "delivered", 3, receiver.url.split("/")[2])
    assert rec["delivery"] == payload["id"]
    assert "secret" not in json.dumps(rec)
    assert sample_value("timeclock_webhook_deliveries_total",
                        {"endpoint": "soc", "outcome": "delivered"}) == before + 1


def test_d13_an_unreachable_endpoint_is_given_up_and_recorded(
        store: SQLStore, secret_file: Path) -> None:
    ep = WebhookEndpoint("down", f"http://127.0.0.1:{free_port()}/hook", secret_file,
                         attempts=3, backoff_initial_s=0.02, backoff_max_s=0.05,
                         timeout_s=2.0)
    sender = WebhookSender([ep], "collector.main", clock=lambda: T0)
    sender.start()
    try:
        sender.submit({"alert": "replay-burst", "severity": 1, "device": "clock-0001",
                       "detail": "x", "at": T0})
        wait_for(sender.unrecorded, 60, "the delivery to be given up")
    finally:
        sender.stop()
    sender.flush(lambda facts: store.append(facts, now_us=T0))
    (rec,) = _records(store)
    assert (rec["outcome"], rec["attempts"]) == ("failed", 3)
    assert rec["error"]


def test_d13_webhook_config(tmp_path: Path, secret_file: Path) -> None:
    base = {"collector": {"name": "a", "store": "sqlite:///x.db", "log_key": "/k"},
            "mqtt": {"host": "h", "port": 1, "ca_cert": "a", "cert": "b", "key": "c"}}
    cfg = parse_config({**base, "webhooks": [{"name": "soc", "url": "https://soc.example/h",
                                              "secret_file": str(secret_file)}]},
                       base=tmp_path)
    assert [(w.name, w.min_severity, w.attempts) for w in cfg.webhooks] == [("soc", 2, 8)]
    with pytest.raises(ConfigError) as e:
        parse_config({**base, "webhooks": [
            {"name": "a", "url": "http://soc.example/h", "secret_file": "s"},
            {"name": "a", "url": "https://soc.example/h", "secret_file": "s",
             "min_severity": 4, "colour": "red"}]}, base=tmp_path)
    text = str(e.value)
    assert "webhooks[0].url: must be https://" in text
    assert "webhooks[1].min_severity" in text
    assert "webhooks[1].colour: unknown key" in text
    assert "each endpoint needs its own name" in text
    assert parse_webhooks(None, tmp_path, []) == ()


def test_d13_webhook_secrets_must_be_private_and_long(tmp_path: Path) -> None:
    loose = tmp_path / "loose.secret"
    loose.write_bytes(SECRET)
    loose.chmod(0o644)
    with pytest.raises(WebhookError, match="loose.secret"):
        load_secret(loose)
    short = tmp_path / "short.secret"
    short.write_bytes(b"tiny")
    short.chmod(0o600)
    with pytest.raises(WebhookError, match="at least 16 bytes"):
        load_secret(short)


def test_d13_check_files_reports_a_loose_webhook_secret(tmp_path: Path) -> None:
    loose = tmp_path / "loose.secret"
    loose.write_bytes(SECRET)
    loose.chmod(0o644)
    base = {"collector": {"name": "a", "store": "sqlite:///x.db", "log_key": "/k"},
            "mqtt": {"host": "h", "port": 1, "ca_cert": "a", "cert": "b", "key": "c"},
            "webhooks": [{"name": "soc", "url": "https://soc.example/h",
                          "secret_file": str(loose)}]}
    cfg = parse_config(base, base=tmp_path)
    with pytest.raises(ConfigError, match=r"webhooks\[0\]\.secret_file: webhook secret .*loose"):
        check_files(cfg)
