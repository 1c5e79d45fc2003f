"""Collector config: TOML → frozen dataclasses; every problem reported at once with its key path."""

from __future__ import annotations

import dataclasses
import os
from pathlib import Path

import pytest

from collector import ConfigError
from collector.service.config import (
    CollectorConfig,
    check_files,
    load_config,
    parse_config,
    redact_url,
)

MINIMAL = """
[collector]
name = "a"
store = "sqlite:///var/lib/timeclock/ledger.db"
log_key = "keys/log.key"

[mqtt]
host = "127.0.0.1"
port = 8883
ca_cert = "tls/ca.pem"
cert = "tls/collector.pem"
key = "tls/collector.key"
"""


def write(tmp_path: Path, text: str) -> Path:
    p = tmp_path / "collector.toml"
    p.write_text(text)
    return p


def test_minimal_config_gets_defaults_and_resolves_paths(tmp_path: Path) -> None:
    cfg = load_config(write(tmp_path, MINIMAL))
    assert cfg.collector.identity == "collector.a"
    assert cfg.collector.log_key == tmp_path / "keys/log.key"
    assert cfg.mqtt.ca_cert == tmp_path / "tls/ca.pem"
    assert cfg.mqtt.port == 8883
    assert (cfg.ingest.batch_max, cfg.ingest.batch_wait_ms, cfg.ingest.max_payload_bytes) == (
        2000, 50, 256 * 1024)
    assert (cfg.checkpoints.every_entries, cfg.checkpoints.every_s) == (1000, 60)
    assert cfg.gaps.report_after_s == 300
    with pytest.raises(dataclasses.FrozenInstanceError):
        cfg.mqtt.port = 1  # type: ignore[misc]


def test_full_config(tmp_path: Path) -> None:
    text = MINIMAL + """
[ingest]
batch_max = 10
batch_wait_ms = 0
max_payload_bytes = 1024
queue_max = 5

[checkpoints]
every_entries = 7
every_s = 2

[gaps]
report_after_s = 1
"""
    cfg = load_config(write(tmp_path, text))
    assert cfg.ingest.batch_max == 10
    assert cfg.ingest.batch_wait_ms == 0
    assert cfg.ingest.max_payload_bytes == 1024
    assert cfg.ingest.queue_max == 5
    assert cfg.checkpoints.every_entries == 7
    assert cfg.gaps.report_after_s == 1
    assert isinstance(cfg, CollectorConfig)


def test_every_problem_is_reported_with_its_key_path(tmp_path: Path) -> None:
    text = """
bogus = 1
[collector]
name = "A B"
store = "mysql://x"
colour = "blue"
[mqtt]
host = "h"
port = 70000
ca_cert = 3
cert = "c"
[ingest]
batch_max = 0
max_payload_bytes = 300000
batch_wait_ms = true
[gaps]
report_after_s = "soon"
"""
    with pytest.raises(ConfigError) as info:
        load_config(write(tmp_path, text))
    problems = info.value.problems
    expected_prefixes = [
        "bogus: unknown key", "collector.colour: unknown key", "collector.name:",
        "collector.store: expected a store URL", "collector.log_key: required",
        "mqtt.port: must be between 1 and 65535", "mqtt.ca_cert: expected a string, got int",
        "mqtt.key: required", "ingest.batch_max: must be between",
        "ingest.batch_wait_ms: expected an integer", "ingest.max_payload_bytes: must be",
        "gaps.report_after_s: expected an integer"]
    for prefix in expected_prefixes:
        assert any(p.startswith(prefix) for p in problems), (prefix, problems)
    assert len(problems) == len(expected_prefixes)


def test_missing_sections(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=r"collector: required \(a \[collector\] table\)") as info:
        parse_config({}, base=tmp_path)
    assert info.value.problems == ["collector: required (a [collector] table)",
                                   "mqtt: required (a [mqtt] table)"]


def test_not_toml_and_not_found(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="not valid TOML"):
        load_config(write(tmp_path, "[collector\n"))
    with pytest.raises(ConfigError, match="cannot read"):
        load_config(tmp_path / "nope.toml")


def test_check_files_names_missing_files_and_open_keys(tmp_path: Path) -> None:
    cfg = load_config(write(tmp_path, MINIMAL))
    with pytest.raises(ConfigError) as info:
        check_files(cfg)
    assert len(info.value.problems) == 4
    assert info.value.problems[0].startswith("collector.log_key:")
    for p in (cfg.collector.log_key, cfg.mqtt.ca_cert, cfg.mqtt.cert, cfg.mqtt.key):
        p.parent.mkdir(parents=True, exist_ok=True)
        p.write_text("x")
        os.chmod(p, 0o600)
    check_files(cfg)
    os.chmod(cfg.mqtt.key, 0o644)
    with pytest.raises(ConfigError, match=r"mqtt\.key: .*chmod 600"):
        check_files(cfg)


def test_redact_url_hides_passwords() -> None:
    assert redact_url("postgresql://app:s3cret@db:5432/ledger") == \
        "postgresql://app:***@db:5432/ledger"
    assert redact_url("sqlite:///var/lib/x.db") == "sqlite:///var/lib/x.db"


def test_store_url_forms(tmp_path: Path) -> None:
    base = MINIMAL.replace('"sqlite:///var/lib/timeclock/ledger.db"', '"sqlite:data/l.db"')
    assert load_config(write(tmp_path, base)).collector.store == f"sqlite://{tmp_path}/data/l.db"
    kv = MINIMAL.replace('"sqlite:///var/lib/timeclock/ledger.db"', '"host=db dbname=ledger"')
    assert load_config(write(tmp_path, kv)).collector.store == "host=db dbname=ledger"
    assert redact_url("host=db password=pw dbname=x") == "host=db password=*** dbname=x"
