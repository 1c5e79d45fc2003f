"""The one CLI error path (wire.cli.run_command): domain errors, WireError, Ctrl-C, closed pipes."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from wire.cli import EXIT_BROKEN_PIPE, EXIT_ERROR, EXIT_INTERRUPTED, run_command
from wire.errors import DecodeError

REPO = Path(__file__).resolve().parents[2]
BIN = Path(sys.executable).parent


class _DomainError(Exception):
    pass


def _raise(e: BaseException) -> int:
    raise e


def test_domain_and_wire_errors_are_one_line_and_exit_2(
        capsys: pytest.CaptureFixture[str]) -> None:
    assert run_command("prog", lambda: _raise(_DomainError("no such CA")),
                       (_DomainError,)) == EXIT_ERROR
    assert run_command("prog", lambda: _raise(DecodeError("bad field 'x'"))) == EXIT_ERROR
    err = capsys.readouterr().err
    assert err == "prog: error: no such CA\nprog: error: bad field 'x'\n"


def test_ctrl_c_is_130_and_a_bug_keeps_its_traceback() -> None:
    assert run_command("prog", lambda: _raise(KeyboardInterrupt())) == EXIT_INTERRUPTED
    assert run_command("prog", lambda: 7) == 7
    with pytest.raises(ZeroDivisionError):
        run_command("prog", lambda: 1 // 0)


def _closed_pipe_run(argv: list[str]) -> tuple[int, str]:
    """Run argv with stdout a pipe whose reader is gone before the first write."""
    r, w = os.pipe()
    os.close(r)
    try:
        p = subprocess.run(argv, stdout=w, stderr=subprocess.PIPE, text=True, timeout=120,
                           cwd=REPO, check=False)
    finally:
        os.close(w)
    return p.returncode, p.stderr


@pytest.mark.subprocess
def test_a_closed_pipe_ends_quietly(tmp_path: Path) -> None:
    ca = tmp_path / "ca"
    subprocess.run([str(BIN / "timeclock-collector"), "ca", "init", str(ca)], check=True,
                   capture_output=True, timeout=120)
    rc, err = _closed_pipe_run([str(BIN / "timeclock-collector"), "ca", "list", "--ca", str(ca)])
    assert (rc, err) == (EXIT_BROKEN_PIPE, "")
    code = ("from wire.cli import run_command\n"
            "run_command('x', lambda: [print('line') for _ in range(10000)] and 0)\n")
    rc, err = _closed_pipe_run([sys.executable, "-c", code])
    assert "Traceback" not in err
    assert "BrokenPipeError" not in err
