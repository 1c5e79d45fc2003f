"""docs/operations.md is a runbook (issue 15, item 8): its ``sh runbook`` blocks run literally, in
order, in one bash shell on a fresh directory with free ports (tests/docs/runbook_kit.py), so a
doc that drifts from the code fails here. The extractor and runner are tested on tiny synthetic
docs: a doc without runbook blocks fails, and a misspelt command fails with the block's text,
its line in the doc and the command's stderr."""

from __future__ import annotations

import os
import re
import sys
from pathlib import Path

import pytest

from tests.docs.runbook_kit import Block, RunbookError, extract, run
from tests.fixtures.mosquitto import free_port
from tests.polling import wait_for

REPO = Path(__file__).resolve().parents[2]
OPERATIONS = REPO / "docs" / "operations.md"

# What the runbook must keep covering (issue 15: the setup path an operator follows).
COVERED = ("timeclock-collector init ", "timeclock-collector init --check ",
           "timeclock-collector broker-config ", "timeclock-collector serve --check-config ",
           "timeclock-collector serve --config ", "timeclock-agent init ",
           "timeclock-collector device enroll ", "timeclock-agent provision ",
           "timeclock-agent check-config ", "timeclock-agent run ",
           "timeclock-collector device list ", "timeclock-collector verify ",
           "timeclock-collector export ", "timeclock-verify ", "timeclock-collector ca status ",
           "timeclock-collector token create ", "curl ", "openssl req ",
           "timeclock-collector device renew ", "timeclock-collector device revoke ")


def _env(tmp: Path, **extra: str) -> dict[str, str]:
    env = dict(os.environ)
    bindir = str(Path(sys.executable).parent)        # the venv's timeclock-* commands
    env["PATH"] = bindir + os.pathsep + env.get("PATH", "")
    env["PYTHONPATH"] = str(REPO) + (os.pathsep + env["PYTHONPATH"]
                                     if env.get("PYTHONPATH") else "")
    env["XDG_STATE_HOME"] = str(tmp / "xdg-state")   # verify's resume state stays in the test
    for k in ("NOTIFY_SOCKET", "STATE_DIRECTORY", "TIMECLOCK_LOG_FORMAT"):
        env.pop(k, None)
    env.update(extra)
    return env


def _alive(pid_file: Path) -> bool:
    """The process of ``pid_file`` exists and is no zombie (nobody may reap it here)."""
    try:
        stat = Path(f"/proc/{int(pid_file.read_text().strip())}/stat").read_text()
    except (FileNotFoundError, ValueError):
        return False
    return stat.rsplit(")", 1)[1].split()[0] != "Z"


@pytest.mark.subprocess
@pytest.mark.timeout(900)
def test_operations_md_runbook_runs_literally_on_a_fresh_site(tmp_path: Path) -> None:
    blocks = extract(OPERATIONS.read_text(encoding="utf-8"), "docs/operations.md")
    text = "".join(b.text for b in blocks)
    missing = [c.strip() for c in COVERED if c not in text]
    assert missing == [], f"the runbook no longer runs: {missing}"
    site = tmp_path / "site"
    result = run(blocks, cwd=tmp_path, rundir=tmp_path / "runbook", timeout_s=800,
                 source="docs/operations.md",
                 env=_env(tmp_path, TC_SITE=str(site), TC_MQTT_PORT=str(free_port()),
                          TC_API_PORT=str(free_port())))

    def output_of(command: str) -> str:
        b = next(b for b in blocks if command in b.text)
        return result.stdout[b.index]

    assert "everything is in place" in output_of("init --check")
    assert re.search(r"^OK: idx 0\.\.\d+ verified: .* [1-9]\d* punches", output_of("verify "),
                     re.M), output_of("verify ")
    assert "RESULT: OK" in output_of("timeclock-verify ")
    assert '"device": "clock-17"' in output_of("curl ")
    assert "provisioned clock-17 (renew)" in output_of("device renew ")
    assert "broker: CRL reloaded and session cut" in output_of("device revoke ")
    assert re.search(r"^certificate: +REVOKED", output_of("device revoke "), re.M)
    # The doc's own teardown stopped everything it started: nothing was left for the kit to
    # kill, and the broker serve supervised is gone too.
    assert result.leftover == []
    wait_for(lambda: not _alive(site / "state" / "broker" / "mosquitto.pid"), 60,
             "the managed broker to exit with serve")


SYNTHETIC = """\
# A doc

Prose. An ordinary block is not run:

```sh
exit 1
```

```sh runbook
GREETING=hello
echo "$GREETING from block one"
```

More prose.

  ```sh runbook
  echo "$GREETING again" >&2
  ```
"""


def test_extract_finds_runbook_blocks_in_order_with_their_lines() -> None:
    blocks = extract(SYNTHETIC)
    assert blocks == [
        Block(1, 9, 'GREETING=hello\necho "$GREETING from block one"\n'),
        Block(2, 16, 'echo "$GREETING again" >&2\n'),
    ]


def test_a_doc_without_runbook_blocks_fails() -> None:
    with pytest.raises(RunbookError, match=r"no ```sh runbook block"):
        extract("# Operations\n\n```sh\ntimeclock-collector serve\n```\n")


def test_an_unclosed_runbook_block_fails_with_its_line() -> None:
    with pytest.raises(RunbookError, match=r"^doc:3: runbook block is never closed"):
        extract("# x\n\n```sh runbook\necho hi\n")


@pytest.mark.subprocess
def test_blocks_share_one_shell_in_order(tmp_path: Path) -> None:
    result = run(extract(SYNTHETIC), cwd=tmp_path, env=_env(tmp_path),
                 rundir=tmp_path / "rb", timeout_s=60)
    assert result.stdout == {1: "hello from block one\n", 2: ""}
    assert result.stderr == {1: "", 2: "hello again\n"}
    assert result.leftover == []


@pytest.mark.subprocess
def test_a_misspelt_command_fails_with_the_block_its_line_and_stderr(tmp_path: Path) -> None:
    doc = ("# Ops\n\n```sh runbook\necho first\n```\n\nThen:\n\n```sh runbook\n"
           "echo second\ntimeclock-collector devcie list --no-status\necho never\n```\n\n"
           "```sh runbook\ntouch not-reached\n```\n")
    with pytest.raises(RunbookError) as e:
        run(extract(doc, "ops.md"), cwd=tmp_path, env=_env(tmp_path), rundir=tmp_path / "rb",
            timeout_s=120, source="ops.md")
    msg = str(e.value)
    assert msg.startswith("runbook block 2 at ops.md:9 (failing command at ops.md:11) failed: "
                          "exit status 2\n"), msg
    assert "timeclock-collector devcie list --no-status\necho never\n" in msg   # the block
    assert "invalid choice: 'devcie'" in msg                                    # its stderr
    assert not (tmp_path / "not-reached").exists()


@pytest.mark.subprocess
def test_a_failing_block_leaves_no_background_job_running(tmp_path: Path) -> None:
    doc = ("```sh runbook\nsleep 300 &\necho $! >sleeper.pid\n```\n\n"
           "```sh runbook\nfalse\n```\n")
    with pytest.raises(RunbookError, match=r"^runbook block 2 at doc:6 \(failing command at "
                                           r"doc:7\) failed: exit status 1"):
        run(extract(doc), cwd=tmp_path, env=_env(tmp_path), rundir=tmp_path / "rb",
            timeout_s=60)
    wait_for(lambda: not _alive(tmp_path / "sleeper.pid"), 60,
             "the block's background job to be killed")


@pytest.mark.subprocess
def test_a_block_that_hangs_fails_at_the_deadline(tmp_path: Path) -> None:
    doc = "```sh runbook\necho waiting\nsleep 300\n```\n"
    with pytest.raises(RunbookError, match=r"^runbook block 1 at doc:1 failed: timed out "
                                           r"after 10 s\n--- block ---\necho waiting\n"):
        run(extract(doc), cwd=tmp_path, env=_env(tmp_path), rundir=tmp_path / "rb",
            timeout_s=10)
