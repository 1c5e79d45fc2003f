"""monitoring/: the shipped Prometheus rules pass ``promtool check rules`` and their unit
tests (``promtool test rules``), and those unit tests can fail: a rules file whose offline
rule lost its condition fails them."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pytest

from tests.fixtures.prometheus import PROMTOOL, fast_rules

MONITORING = Path(__file__).resolve().parents[2] / "monitoring"
RULES = MONITORING / "timeclock.rules.yml"
RULE_TESTS = MONITORING / "timeclock.rules.test.yml"

pytestmark = pytest.mark.subprocess


def promtool(*args: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run([PROMTOOL, *args], capture_output=True, text=True, cwd=cwd,  # noqa: S603 - the packaged promtool
                          timeout=120, check=False)


def test_d13_rules_pass_promtool_check() -> None:
    r = promtool("check", "rules", str(RULES), cwd=MONITORING)
    assert r.returncode == 0, r.stdout + r.stderr
    assert "SUCCESS" in r.stdout


def test_d13_rule_unit_tests_pass() -> None:
    r = promtool("test", "rules", str(RULE_TESTS), cwd=MONITORING)
    assert r.returncode == 0, r.stdout + r.stderr
    assert "SUCCESS" in r.stdout


def test_d13_rule_unit_tests_fail_on_a_broken_rule(tmp_path: Path) -> None:
    broken = RULES.read_text().replace(
        "expr: timeclock_device_online == 0 or", "expr: timeclock_device_online == 2 or", 1)
    assert broken != RULES.read_text()
    (tmp_path / RULES.name).write_text(broken)
    shutil.copy(RULE_TESTS, tmp_path / RULE_TESTS.name)
    r = promtool("test", "rules", RULE_TESTS.name, cwd=tmp_path)
    assert r.returncode != 0
    assert "TimeclockClockOffline" in r.stdout + r.stderr


def test_d13_the_fast_variant_only_shortens_for(tmp_path: Path) -> None:
    fast = fast_rules(RULES, tmp_path / "fast.yml")
    r = promtool("check", "rules", str(fast), cwd=tmp_path)
    assert r.returncode == 0, r.stdout + r.stderr
    text = fast.read_text()
    assert "for: 5m" in RULES.read_text()
    assert "for: 5m" not in text
    assert text.count("for: 0s") == RULES.read_text().count("for:")


def test_d13_alertmanager_example_routes_every_team() -> None:
    text = (MONITORING / "alertmanager.example.yml").read_text()
    teams = {line.split("team:")[1].split(",")[0].strip().strip("}")
             for line in RULES.read_text().splitlines() if line.strip().startswith("labels:")}
    assert teams == {"security", "compliance", "operations"}
    for team in teams - {"operations"}:        # operations is the default receiver
        assert f'team="{team}"' in text
    assert "receiver: operations" in text
