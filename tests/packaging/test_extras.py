"""``pip install timeclock`` without extras: a command that needs an optional dependency prints
one line naming the extra to install and exits 2, never a traceback (wire.cli.missing_extra).

The entry points run in a child interpreter whose import system hides the optional libraries
(a meta path finder that raises ModuleNotFoundError for them, as a bare install does), so the
real import chains of agent/, collector/ and wire/ are exercised.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from wire.cli import EXIT_ERROR, OPTIONAL_MODULES, run_command

ROOT = Path(__file__).resolve().parents[2]
COLLECTOR_LINE = ("timeclock-collector: this command needs the 'collector' extra: "
                  "pip install 'timeclock[collector]' (no module named {!r})\n")

_CHILD = """\
import sys
hidden = set(sys.argv[1].split(","))

class Hide:
    def find_spec(self, name, path=None, target=None):
        if name.partition(".")[0] in hidden:
            raise ModuleNotFoundError(f"No module named {name!r}", name=name)
        return None

sys.meta_path.insert(0, Hide())
module = __import__(sys.argv[2], fromlist=["main"])
sys.exit(module.main(sys.argv[3:]))
"""


def _run(hidden: set[str], module: str, *argv: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-c", _CHILD, ",".join(sorted(hidden)), module, *argv],
                          cwd=ROOT, capture_output=True, text=True, timeout=120, check=False)


@pytest.mark.subprocess
@pytest.mark.parametrize("argv", [["--help"], ["ca", "list", "--ca", "/nonexistent"]])
def test_collector_without_its_extra_names_the_extra(argv: list[str]) -> None:
    r = _run(set(OPTIONAL_MODULES), "collector.cli.main", *argv)
    assert (r.returncode, r.stdout) == (EXIT_ERROR, "")
    assert len(r.stderr.splitlines()) == 1, r.stderr
    assert r.stderr.startswith("timeclock-collector: this command needs the 'collector' extra: "
                               "pip install 'timeclock[collector]' (no module named "), r.stderr


@pytest.mark.subprocess
@pytest.mark.parametrize("missing", ["paho", "psycopg"])
def test_collector_missing_one_library_names_it(missing: str) -> None:
    r = _run({missing}, "collector.cli.main", "--help")
    assert (r.returncode, r.stdout, r.stderr) == (EXIT_ERROR, "", COLLECTOR_LINE.format(missing))


@pytest.mark.subprocess
@pytest.mark.parametrize(("module", "prog"), [("agent.cli", "timeclock-agent"),
                                              ("wire.verify_cli", "timeclock-verify")])
def test_agent_and_verify_help_need_no_extra(module: str, prog: str) -> None:
    r = _run(set(OPTIONAL_MODULES), module, "--help")
    assert (r.returncode, r.stderr) == (0, "")
    assert r.stdout.startswith(f"usage: {prog} "), r.stdout[:200]


def _raise(e: BaseException) -> int:
    raise e


def test_run_command_names_the_extra_for_an_optional_module(
        capsys: pytest.CaptureFixture[str]) -> None:
    missing = ModuleNotFoundError("No module named 'aiohttp'", name="aiohttp")
    assert run_command("timeclock-collector", lambda: _raise(missing), extra="collector") == 2
    assert capsys.readouterr().err == COLLECTOR_LINE.format("aiohttp")
    paho = ModuleNotFoundError("No module named 'paho.mqtt'", name="paho.mqtt")
    assert run_command("timeclock-agent", lambda: _raise(paho), extra="agent") == 2
    assert capsys.readouterr().err == (
        "timeclock-agent: this command needs the 'agent' extra: pip install 'timeclock[agent]' "
        "(no module named 'paho')\n")


def test_run_command_keeps_the_traceback_of_a_missing_own_module() -> None:
    # A missing module of our own is a bug (a broken install), not a user's missing extra.
    bug = ModuleNotFoundError("No module named 'collector.nope'", name="collector.nope")
    with pytest.raises(ModuleNotFoundError, match="collector.nope"):
        run_command("timeclock-collector", lambda: _raise(bug), extra="collector")


def test_run_command_without_an_extra_keeps_the_traceback() -> None:
    optional = ModuleNotFoundError("No module named 'aiohttp'", name="aiohttp")
    with pytest.raises(ModuleNotFoundError, match="aiohttp"):
        run_command("timeclock-verify", lambda: _raise(optional))


@pytest.mark.subprocess
@pytest.mark.slow
@pytest.mark.timeout(900)
def test_a_real_bare_pip_install(tmp_path: Path) -> None:
    # The literal case: a venv with `pip install timeclock` (the wheel of this tree, no extras).
    def run(*argv: str | Path) -> subprocess.CompletedProcess[str]:
        return subprocess.run([str(a) for a in argv], cwd=tmp_path, capture_output=True,
                              text=True, timeout=600, check=False)

    r = run(sys.executable, "-m", "pip", "wheel", "--quiet", "--no-deps", "-w", tmp_path / "dist",
            ROOT)
    assert r.returncode == 0, r.stderr[-3000:]
    (wheel,) = (tmp_path / "dist").glob("timeclock-*.whl")
    venv = tmp_path / "venv"
    r = run(sys.executable, "-m", "venv", venv)
    assert r.returncode == 0, r.stderr[-3000:]
    r = run(venv / "bin" / "python", "-m", "pip", "install", "--quiet", wheel)
    assert r.returncode == 0, r.stderr[-3000:]
    r = run(venv / "bin" / "timeclock-collector", "--help")
    assert (r.returncode, r.stdout) == (EXIT_ERROR, ""), r.stdout[-2000:]
    assert r.stderr.startswith("timeclock-collector: this command needs the 'collector' extra: "
                               "pip install 'timeclock[collector]' (no module named "), r.stderr
    assert len(r.stderr.splitlines()) == 1, r.stderr
    for prog in ("timeclock-agent", "timeclock-verify"):
        r = run(venv / "bin" / prog, "--help")
        assert (r.returncode, r.stderr) == (0, ""), r.stderr[-2000:]
    r = run(venv / "bin" / "timeclock-agent", "init", "--device", "clock-0001", "--dir",
            tmp_path / "keys")
    assert r.returncode == 0, r.stderr[-2000:]
