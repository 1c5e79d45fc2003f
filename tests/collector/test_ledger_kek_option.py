"""``[ledger] kek`` (DESIGN.md §8.6): the collector's KEK spec, read strictly. Lands with the
config option (collector/service/config.py), the runner's and serve's open_store(kek=...)."""

from __future__ import annotations

from pathlib import Path

import pytest

from collector import ConfigError
from collector.service.config import CollectorConfig, load_config


def test_the_ledger_kek_option_is_read_strictly(tmp_path: Path) -> None:
    from tests.collector.test_config import MINIMAL  # noqa: PLC0415 - its minimal config

    def load(extra: str) -> CollectorConfig:
        p = tmp_path / "collector.toml"
        p.write_text(MINIMAL + extra)
        return load_config(p)

    assert load("").ledger.kek is None
    spec = "file:/etc/timeclock/ledger.kek"
    assert load(f'[ledger]\nkek = "{spec}"\n').ledger.kek == spec
    with pytest.raises(ConfigError, match=r"ledger\.kek"):
        load('[ledger]\nkek = "/etc/timeclock/ledger.kek"\n')
