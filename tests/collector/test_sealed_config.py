"""The seal key's configuration on both sides (DESIGN.md §8.6; control D3).

Collector: ``[collector] seal_key`` (a 0600 X25519 key file, checked by ``check_files``) and
``[ingest] require_sealed`` (default false, refused without a seal key). Agent: ``[keys]
seal_public_key`` (strict base64 X25519) reaches the publisher that ``make_publisher`` builds.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from agent.config import parse_config as parse_agent_config
from agent.errors import ConfigError as AgentConfigError
from agent.publisher import make_publisher
from collector import ConfigError
from collector.ingest.pipeline import load_seal
from collector.service.config import check_files, load_config
from tests.collector.test_config import MINIMAL, write
from tests.fixtures.pki import TestPKI
from wire.keys import SigningKey, save_signing_key
from wire.sealed import SealKey, save_seal_key


def test_d3_require_sealed_defaults_off_and_needs_a_seal_key(tmp_path: Path) -> None:
    cfg = load_config(write(tmp_path, MINIMAL))
    assert (cfg.collector.seal_key, cfg.ingest.require_sealed) == (None, False)
    with pytest.raises(ConfigError, match=r"ingest\.require_sealed: needs collector\.seal_key"):
        load_config(write(tmp_path, MINIMAL + "\n[ingest]\nrequire_sealed = true\n"))
    text = MINIMAL.replace('log_key = "keys/log.key"',
                           'log_key = "keys/log.key"\nseal_key = "keys/seal.key"')
    cfg = load_config(write(tmp_path, text + "\n[ingest]\nrequire_sealed = true\n"))
    assert (cfg.collector.seal_key, cfg.ingest.require_sealed) == (
        tmp_path / "keys/seal.key", True)
    with pytest.raises(ConfigError, match=r"ingest\.require_sealed: expected"):
        load_config(write(tmp_path, text + '\n[ingest]\nrequire_sealed = "yes"\n'))


def test_d3_check_files_wants_the_seal_key_present_and_0600(tmp_path: Path) -> None:
    text = MINIMAL.replace('log_key = "keys/log.key"',
                           'log_key = "keys/log.key"\nseal_key = "keys/seal.key"')
    cfg = load_config(write(tmp_path, text))
    with pytest.raises(ConfigError, match=r"collector\.seal_key: .*seal\.key: no such file"):
        check_files(cfg)
    key = SealKey.generate()
    save_seal_key(tmp_path / "keys" / "seal.key", key)
    os.chmod(tmp_path / "keys" / "seal.key", 0o644)
    with pytest.raises(ConfigError, match=r"collector\.seal_key: .*chmod 600"):
        check_files(cfg)
    os.chmod(tmp_path / "keys" / "seal.key", 0o600)
    loaded = load_seal(cfg.collector.seal_key)
    assert loaded is not None
    assert loaded.public_key == key.public_key
    assert load_seal(None) is None


def test_d3_agent_seal_public_key_reaches_the_publisher(tmp_path: Path, pki: TestPKI) -> None:
    seal = SealKey.generate()
    tls = pki.device("clock-1")
    save_signing_key(tmp_path / "signing.key", SigningKey.generate())
    base = {
        "device": {"id": "clock-1", "state_dir": str(tmp_path / "state")},
        "keys": {"signing_key": str(tmp_path / "signing.key"),
                 "queue_key": str(tmp_path / "queue.key"),
                 "tls_key": str(tls.key_file), "tls_cert": str(tls.cert_file),
                 "ca_cert": str(tls.ca_file),
                 "log_public_key": SigningKey.generate().verify_key.b64,
                 "seal_public_key": seal.public_key.b64},
        "mqtt": {"host": "127.0.0.1"},
        "readers": {"desk": {"kind": "simulated", "credentials": ["1"]}}}
    cfg = parse_agent_config(base, base_dir=tmp_path)
    assert cfg.keys.seal_public_key == seal.public_key
    bad = base | {"keys": base["keys"] | {"seal_public_key": "AAAA"}}
    with pytest.raises(AgentConfigError, match=r"keys\.seal_public_key: not a base64 X25519"):
        parse_agent_config(bad, base_dir=tmp_path)
    pub = make_publisher(cfg, outbox=None, status=dict)  # type: ignore[arg-type]
    assert pub._seal_key == seal.public_key  # noqa: SLF001 - what the sender seals with
