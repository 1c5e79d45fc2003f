"""A package build that cannot reach PyPI fails with a line that says so (issue 15 item 1): the
vendoring step (packaging/vendor.py, with an empty wheel cache) and scripts/build-debs.sh (whose
own wheel needs setuptools from PyPI), each with pip pointed at a loopback port where nothing
listens and the machine's pip configuration switched off. No network is used."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from tests.fixtures.mosquitto import free_port

ROOT = Path(__file__).resolve().parents[2]

pytestmark = pytest.mark.subprocess


def offline_env(tmp_path: Path) -> dict[str, str]:
    links = tmp_path / "no-links"
    links.mkdir(exist_ok=True)
    return {**os.environ, "PIP_CONFIG_FILE": os.devnull,
            "PIP_INDEX_URL": f"http://127.0.0.1:{free_port()}/simple",
            "PIP_EXTRA_INDEX_URL": "", "PIP_FIND_LINKS": str(links), "PIP_RETRIES": "1",
            "PIP_TIMEOUT": "10", "PIP_DEFAULT_TIMEOUT": "10", "PIP_NO_INPUT": "1"}


def test_vendoring_without_pypi_says_pypi_is_unreachable(tmp_path: Path) -> None:
    wheel = tmp_path / "timeclock-0.1.0-py3-none-any.whl"
    wheel.write_bytes(b"")   # never read: resolving the dependencies fails first
    r = subprocess.run([sys.executable, str(ROOT / "packaging" / "vendor.py"), "--package",
                        "agent", "--arch", "armhf", "--source", str(ROOT), "--wheel", str(wheel),
                        "--cache", str(tmp_path / "cache"), "--target", str(tmp_path / "lib"),
                        "--manifest", str(tmp_path / "VENDORED.txt")],
                       capture_output=True, text=True, env=offline_env(tmp_path), timeout=300,
                       check=False)
    assert (r.returncode, r.stdout) == (1, ""), r.stdout + r.stderr
    assert r.stderr.splitlines()[0] == (
        "vendor: pip install failed (PyPI is unreachable from here: the wheels are downloaded "
        "once, then the cache serves every build):"), r.stderr[:2000]
    assert not (tmp_path / "lib").exists()
    assert not (tmp_path / "VENDORED.txt").exists()


@pytest.mark.timeout(900)   # waits for a concurrent build in this checkout (build/debs/.lock)
def test_build_debs_without_pypi_ends_with_a_line_that_says_so(tmp_path: Path) -> None:
    out = tmp_path / "debs"
    r = subprocess.run([str(ROOT / "scripts" / "build-debs.sh"), "--package", "agent", "--arch",
                        "armhf", "--worktree", "--out", str(out)],
                       capture_output=True, text=True, env=offline_env(tmp_path), timeout=800,
                       check=False)
    assert r.returncode == 1, r.stdout + r.stderr
    assert r.stderr.splitlines()[-1] == (
        "build-debs: cannot reach PyPI: building timeclock's wheel needs setuptools from it (and "
        "a first build every dependency's wheels; later ones come from "
        f"{ROOT}/build/debs/cache)"), r.stderr[-2000:]
    assert list(out.glob("*.deb")) == []
