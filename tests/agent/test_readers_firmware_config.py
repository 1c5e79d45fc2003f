"""firmware-config/: every example agent config loads through the agent's real parser and
builds its readers; the udev rules and time configs say what the README promises."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from agent.config import load_config
from agent.readers import build_reader

FIRMWARE = Path(__file__).parents[2] / "firmware-config"
CONFIGS = sorted((FIRMWARE / "agent").glob("*.toml"))


def test_there_is_an_example_per_hardware_reader_kind() -> None:
    kinds = set()
    for path in CONFIGS:
        kinds |= {r.kind for r in load_config(path).readers}
    assert kinds == {"rdm6300", "keyboard", "serial-line", "simulated"}


@pytest.mark.parametrize("path", CONFIGS, ids=[p.name for p in CONFIGS])
def test_example_config_loads_and_its_readers_build(path: Path) -> None:
    config = load_config(path)
    assert config.readers
    for r in config.readers:
        reader = build_reader(r.name, r.section)
        assert (reader.name, reader.kind) == (r.name, r.kind)


def test_udev_rules_name_every_timeclock_path_the_examples_use() -> None:
    rules = (FIRMWARE / "udev" / "99-timeclock-readers.rules").read_text()
    active = "\n".join(line for line in rules.replace("\\\n", " ").splitlines()
                       if not line.lstrip().startswith("#"))
    linked = set(re.findall(r'SYMLINK\+="timeclock/([a-z0-9-]+)"', active))
    used = set()
    for path in CONFIGS:
        used |= set(re.findall(r'"/dev/timeclock/([a-z0-9-]+)"', path.read_text()))
    assert used
    assert used <= linked
    for rule in (line for line in active.splitlines() if "SYMLINK+=" in line):
        assert 'MODE="0666"' not in rule
        assert 'GROUP="dialout"' in rule or 'GROUP="input"' in rule


def test_chrony_config_authenticates_and_lets_the_kernel_flag_say_synced() -> None:
    lines = [line.split("#")[0].split() for line in
             (FIRMWARE / "time" / "chrony.conf").read_text().splitlines()]
    directives = [words for words in lines if words]
    servers = [w for w in directives if w[0] == "server"]
    assert len(servers) >= 2
    assert all("nts" in w for w in servers)
    assert ["rtcsync"] in directives  # chronyd clears STA_UNSYNC only with rtcsync
    assert ["nocerttimecheck", "1"] in directives
    assert ["minsources", "2"] in directives


def test_pi_uart_settings() -> None:
    config_txt = (FIRMWARE / "raspberry-pi" / "config.txt").read_text().splitlines()
    assert "enable_uart=1" in config_txt
    assert "dtoverlay=disable-bt" in config_txt
    cmdline = (FIRMWARE / "raspberry-pi" / "cmdline.txt").read_text()
    assert len(cmdline.strip().splitlines()) == 1  # the firmware reads one line
    assert "console=serial0" not in cmdline
    assert "console=tty1" in cmdline
