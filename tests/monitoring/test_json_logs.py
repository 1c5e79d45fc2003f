"""JSON logs with journald's field names (wire.cli.setup_logging, TIMECLOCK_LOG_FORMAT=json):
one object per line, the alert's kind, severity and device as fields of their own."""

from __future__ import annotations

import json
import logging
import os
import subprocess
import sys

import pytest

from wire.cli import JsonFormatter

SCRIPT = """
import logging
from wire.cli import setup_logging
setup_logging(verbose=False)
from collector.ingest.alerts import Alerts
Alerts().alert("buddy-punch", severity=2, device="clock-0001", detail="one badge twice")
try:
    raise ValueError("boom")
except ValueError:
    logging.getLogger("timeclock.test").exception("it failed")
"""


def _run(env_value: str | None) -> list[str]:
    env = {k: v for k, v in os.environ.items() if k != "TIMECLOCK_LOG_FORMAT"}
    if env_value is not None:
        env["TIMECLOCK_LOG_FORMAT"] = env_value
    r = subprocess.run([sys.executable, "-c", SCRIPT], capture_output=True, text=True,  # noqa: S603 - our own code
                       env=env, timeout=60, check=True)
    return r.stderr.splitlines()


@pytest.mark.subprocess
def test_d13_json_logs_carry_journald_fields() -> None:
    lines = _run("json")
    records = [json.loads(line) for line in lines if line.startswith("{")]
    alert, failure = records[0], records[-1]
    assert alert["MESSAGE"] == ("ALERT sev=2 kind=buddy-punch device=clock-0001: "
                                "one badge twice")
    assert (alert["ALERT_KIND"], alert["ALERT_SEVERITY"], alert["DEVICE"]) == (
        "buddy-punch", 2, "clock-0001")
    assert alert["PRIORITY"] == 4                       # syslog warning
    assert alert["SYSLOG_IDENTIFIER"] == "timeclock.alerts"
    assert alert["CODE_FUNC"] == "alert"
    assert isinstance(alert["TIMESTAMP_US"], int)
    assert failure["PRIORITY"] == 3
    assert "ValueError: boom" in failure["EXCEPTION"]
    assert all(line.startswith("{") for line in lines), lines   # nothing else on stderr


@pytest.mark.subprocess
def test_d13_plain_logs_stay_the_default() -> None:
    lines = _run(None)
    assert any("WARNING timeclock.alerts: ALERT sev=2 kind=buddy-punch" in x for x in lines)
    assert not any(x.startswith("{") for x in lines)


def test_d13_json_formatter_stringifies_what_json_cannot_hold() -> None:
    rec = logging.makeLogRecord({"msg": "x %s", "args": ("y",), "levelno": logging.INFO,
                                 "name": "t", "path": object()})
    out = json.loads(JsonFormatter().format(rec))
    assert out["MESSAGE"] == "x y"
    assert out["PRIORITY"] == 6
    assert out["PATH"].startswith("<object")
