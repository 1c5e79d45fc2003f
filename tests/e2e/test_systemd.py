"""Every unit in systemd/ rates an exposure of at most 2.0 in
``systemd-analyze security --offline=true`` (the hardening is checked, not assumed)."""

from __future__ import annotations

import re
import subprocess
from pathlib import Path

import pytest

pytestmark = [pytest.mark.subprocess]   # runs systemd-analyze

UNITS = sorted((Path(__file__).resolve().parents[2] / "systemd").glob("*.service"))
LIMIT = 2.0


def test_units_exist() -> None:
    names = {u.name for u in UNITS}
    assert {"timeclock-collector.service", "timeclock-agent.service"} <= names


@pytest.mark.parametrize("unit", UNITS, ids=lambda u: u.name)
def test_unit_exposure_at_most_2(unit: Path) -> None:
    r = subprocess.run(["systemd-analyze", "security", "--offline=true", str(unit)],
                       capture_output=True, text=True, timeout=60, check=False)
    m = re.search(r"Overall exposure level for \S+: (\d+\.\d+)", r.stdout + r.stderr)
    assert m is not None, r.stdout[-2000:] + r.stderr[-2000:]
    assert float(m.group(1)) <= LIMIT, r.stdout[-4000:]
