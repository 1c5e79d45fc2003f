"""Agent config: typed result, every problem at once with its key path, key references."""

from __future__ import annotations

from pathlib import Path

import pytest

from agent.config import DEFAULT_STATE_DIR, AgentConfig, MqttConfig, load_config
from agent.errors import ConfigError
from agent.keystore import KeyRef, load_queue_key, new_queue_key, save_queue_key
from wire.errors import KeyFileError
from wire.keys import SigningKey

LOG_KEY = SigningKey(bytes(range(32))).verify_key.b64

FULL = f"""
[device]
id = "clock-0017"
state_dir = "state"

[keys]
signing_key = "keys/signing.key"
queue_key = "credential:queue-key"
tls_key = "/etc/timeclock/tls.key"
tls_cert = "certs/clock-0017.crt"
ca_cert = "certs/ca.crt"
log_public_key = "{LOG_KEY}"

[mqtt]
host = "broker.example.org"
port = 8884
batch_max = 200
resend_after_s = 10

[status]
interval_s = 2

[readers.front]
kind = "simulated"
credentials = ["0012345678"]
action = "in"

[readers.back]
kind = "simulated"
credentials = ["1", "2"]
action = "out"
interval_s = 0.5
"""


def write(tmp_path: Path, text: str) -> Path:
    p = tmp_path / "agent.toml"
    p.write_text(text)
    return p


def test_full_config_is_typed_with_units_and_resolved_paths(tmp_path: Path) -> None:
    cfg = load_config(write(tmp_path, FULL))
    assert isinstance(cfg, AgentConfig)
    assert cfg.device.id == "clock-0017"
    assert cfg.device.state_dir == tmp_path / "state"
    assert cfg.queue_path == tmp_path / "state" / "queue.db"
    assert cfg.keys.signing_key == KeyRef(path=tmp_path / "keys" / "signing.key")
    assert cfg.keys.queue_key == KeyRef(credential="queue-key")
    assert cfg.keys.tls_key == KeyRef(path=Path("/etc/timeclock/tls.key"))
    assert cfg.keys.ca_cert == tmp_path / "certs" / "ca.crt"
    assert cfg.keys.log_public_key is not None
    assert cfg.keys.log_public_key.b64 == LOG_KEY
    assert cfg.mqtt == MqttConfig(host="broker.example.org", port=8884, keepalive_s=60,
                                  batch_max=200, resend_after_s=10.0, reconnect_min_s=1.0,
                                  reconnect_max_s=60.0)
    assert cfg.status.path == tmp_path / "state" / "status.json"
    assert cfg.status.interval_s == 2.0
    assert [(r.name, r.kind, r.section["action"]) for r in cfg.readers] == [
        ("front", "simulated", "in"), ("back", "simulated", "out")]
    with pytest.raises(TypeError):
        cfg.readers[0].section["action"] = "x"  # type: ignore[index]


def test_minimal_store_only_config_uses_defaults(tmp_path: Path) -> None:
    cfg = load_config(write(tmp_path, """
[device]
id = "c1"
[keys]
signing_key = "/k/s"
queue_key = "/k/q"
[readers.r]
kind = "simulated"
credentials = ["1"]
"""))
    assert cfg.mqtt is None
    assert cfg.device.state_dir == DEFAULT_STATE_DIR
    assert cfg.keys.tls_key is None


def test_every_problem_is_reported_at_once_with_its_key_path(tmp_path: Path) -> None:
    bad = """
colour = "blue"
[device]
id = "Clock.17"
state = "x"
[keys]
signing_key = 7
queue_key = "credential:../etc/shadow"
log_public_key = "not base64!"
[mqtt]
port = 70000
keepalive_s = true
batch_max = 501
reconnect_min_s = 10
reconnect_max_s = 5
tls = "yes"
[status]
interval_s = "5"
[readers.front]
kind = "simulated"
interval_s = -1
colour = "red"
[readers.Bad_Name]
kind = "simulated"
credentials = ["1"]
[readers.side]
kind = "teleporter"
"""
    with pytest.raises(ConfigError) as ei:
        load_config(write(tmp_path, bad))
    problems = ei.value.problems
    expected_prefixes = [
        "colour: unknown key (allowed: device, feedback, keys, metrics, mqtt, readers, status, "
        "witness)",
        "device.id: 'Clock.17' must match",
        "device.state: unknown key",
        "keys.signing_key: expected a string, got int",
        "keys.queue_key: credential name '../etc/shadow'",
        "keys.log_public_key: not a base64 Ed25519 public key",
        "mqtt.host: required",
        "mqtt.port: must be between 1 and 65535",
        "mqtt.keepalive_s: expected an integer, got bool",
        "mqtt.batch_max: must be between 1 and 500",
        "mqtt.reconnect_max_s: must be ≥ reconnect_min_s",
        "mqtt.tls: unknown key",
        "keys.tls_key: required when [mqtt] is configured",
        "keys.tls_cert: required when [mqtt] is configured",
        "keys.ca_cert: required when [mqtt] is configured",
        "status.interval_s: expected a number",
        "readers.front.credentials: required",
        "readers.front.interval_s: must be between",
        "readers.front.colour: unknown key",
        "readers.Bad_Name: reader name must match",
        "readers.side.kind: 'teleporter' is not one of",
    ]
    for prefix in expected_prefixes:
        assert any(p.startswith(prefix) for p in problems), (prefix, problems)
    # log_public_key has its own problem; no duplicate "required when [mqtt]" for it.
    assert not any(p.startswith("keys.log_public_key: required") for p in problems)
    assert len(problems) == len(expected_prefixes)
    assert str(ei.value).startswith("invalid configuration:\n  colour: unknown key")


def test_missing_sections_are_named(tmp_path: Path) -> None:
    with pytest.raises(ConfigError) as ei:
        load_config(write(tmp_path, ""))
    assert ei.value.problems == [
        "device: required (a [device] table)", "keys: required (a [keys] table)",
        "readers: at least one [readers.<name>] section is required"]


@pytest.mark.parametrize(("text", "match"), [
    ("[device\nid = 1", "TOML syntax"),
    (b"\xff\xfe", "not UTF-8"),
])
def test_unparsable_files(tmp_path: Path, text: str | bytes, match: str) -> None:
    p = tmp_path / "agent.toml"
    p.write_bytes(text if isinstance(text, bytes) else text.encode())
    with pytest.raises(ConfigError, match=match):
        load_config(p)


def test_missing_file(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="cannot read"):
        load_config(tmp_path / "nope.toml")


def test_credential_refs_resolve_in_credentials_directory(tmp_path: Path) -> None:
    ref = KeyRef.parse("credential:queue-key", base_dir=tmp_path)
    assert ref.resolve({"CREDENTIALS_DIRECTORY": "/run/credentials/x"}) == Path(
        "/run/credentials/x/queue-key")
    assert ref.describe() == "credential:queue-key"
    with pytest.raises(ConfigError, match=r"\$CREDENTIALS_DIRECTORY is not set"):
        ref.resolve({})
    assert KeyRef.parse("k/q", base_dir=tmp_path).describe() == "file:q"


def test_queue_key_file_round_trip_and_mode_check(tmp_path: Path) -> None:
    key = new_queue_key()
    p = tmp_path / "queue.key"
    save_queue_key(p, key)
    assert load_queue_key(p) == key
    with pytest.raises(KeyFileError, match="refusing to overwrite"):
        save_queue_key(p, key)
    p.chmod(0o640)
    with pytest.raises(KeyFileError, match="chmod 600"):
        load_queue_key(p)
    bad = tmp_path / "bad.key"
    bad.write_bytes(b"timeclock-queue-key-v1\nAAAA\n")
    bad.chmod(0o600)
    with pytest.raises(KeyFileError, match="must be 32 bytes"):
        load_queue_key(bad)


def test_witness_section_inclusion_checks(tmp_path: Path) -> None:
    base = """
[device]
id = "c1"
[keys]
signing_key = "/k/s"
queue_key = "/k/q"
[readers.r]
kind = "simulated"
credentials = ["1"]
"""
    cfg = load_config(write(tmp_path, base))
    assert (cfg.witness.check_inclusion, cfg.witness.sample_rate) == ("all", 0.1)
    cfg = load_config(write(tmp_path, base + """
[witness]
check_inclusion = "sample"
sample_rate = 0.25
inclusion_deadline_s = 600
"""))
    assert (cfg.witness.check_inclusion, cfg.witness.sample_rate,
            cfg.witness.inclusion_deadline_s) == ("sample", 0.25, 600.0)
    with pytest.raises(ConfigError) as ei:
        load_config(write(tmp_path, base + """
[witness]
check_inclusion = "some"
sample_rate = 2
colour = 1
"""))
    problems = "\n".join(ei.value.problems)
    assert "witness.check_inclusion" in problems
    assert "witness.sample_rate" in problems
    assert "witness.colour" in problems
