"""Runbook blocks of a Markdown doc, extracted and executed literally (docs/operations.md).

A runbook block is a fenced code block whose info string is ``sh runbook`` (GitHub renders it
as an ordinary ``sh`` block: it reads only the first word). :func:`extract` returns them in
document order with the line of their opening fence; :func:`run` executes them, unchanged, one
after the other in **one** bash process (``set -Eeuo pipefail``), as an operator pastes them
into one terminal: variables, functions, ``cd`` and background jobs carry over from block to
block. The placeholders the doc names (a site directory, ports) reach the blocks only as
environment variables, so nothing in a block's text is rewritten.

Invariants: a doc with no runbook block is an error, never a vacuous pass; the first block that
fails stops the run, and the :class:`RunbookError` names that block's text, its line in the doc
(and the failing line when bash reports one) and what it wrote to stderr; the bash process runs
in its own session and every process still in that session when :func:`run` returns is killed
(a failing doc leaves nothing running); the whole run is bounded by ``timeout_s``.
"""

from __future__ import annotations

import contextlib
import os
import re
import signal
import subprocess
import time
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

OPEN = re.compile(r"^(?P<indent>[ \t]*)```sh[ \t]+runbook[ \t]*$")
FENCE = re.compile(r"^[ \t]*```")
ERR_TAIL_CHARS = 4000


class RunbookError(AssertionError):
    """The doc's runbook is missing, malformed, or one of its blocks failed."""


@dataclass(frozen=True)
class Block:
    index: int              # 1-based, in document order
    line: int               # the line of the opening fence in the doc (1-based)
    text: str               # the block's lines, indentation of the fence removed, newline-ended

    def first_line(self) -> int:
        return self.line + 1


@dataclass(frozen=True)
class Result:
    blocks: list[Block]
    stdout: dict[int, str]  # block index -> what it printed
    stderr: dict[int, str]
    leftover: list[int]     # processes of the run's session still alive when bash exited


def extract(markdown: str, source: str = "doc") -> list[Block]:
    """Every ``sh runbook`` block of ``markdown``, in order; RunbookError if there is none or
    one is not closed."""
    blocks: list[Block] = []
    lines = markdown.splitlines()
    i = 0
    while i < len(lines):
        m = OPEN.match(lines[i])
        if m is None:
            i += 1
            continue
        start, indent = i, m.group("indent")
        body: list[str] = []
        i += 1
        while i < len(lines) and not FENCE.match(lines[i]):
            body.append(lines[i].removeprefix(indent))
            i += 1
        if i == len(lines):
            raise RunbookError(f"{source}:{start + 1}: runbook block is never closed")
        blocks.append(Block(len(blocks) + 1, start + 1, "".join(f"{b}\n" for b in body)))
        i += 1
    if not blocks:
        raise RunbookError(f"{source}: no ```sh runbook block: nothing would be tested")
    return blocks


def script(blocks: list[Block], rundir: Path) -> tuple[str, dict[int, tuple[Block, int]]]:
    """The bash script that runs ``blocks`` in order, and a map from its line numbers to
    (block, line in the doc). Each block's output goes to RUNDIR/<n>.out and <n>.err; RUNDIR/
    progress names the block running, then ``done``; RUNDIR/err-line the line bash failed at."""
    q = _quote(str(rundir))
    out = ["set -Eeuo pipefail",
           f"trap 'echo $LINENO > {q}/err-line' ERR"]
    where: dict[int, tuple[Block, int]] = {}
    for b in blocks:
        out.append(f"exec >{q}/{b.index}.out 2>{q}/{b.index}.err; echo {b.index} >{q}/progress")
        for k, _ in enumerate(b.text.splitlines()):
            where[len(out) + 1 + k] = (b, b.first_line() + k)
        out.extend(b.text.splitlines())
    out.append(f"echo done >{q}/progress")
    return "\n".join(out) + "\n", where


def run(blocks: list[Block], *, cwd: Path, env: Mapping[str, str], rundir: Path,
        timeout_s: float, source: str = "doc") -> Result:
    """Execute ``blocks`` literally (see the module doc); RunbookError on the first failure."""
    rundir.mkdir(parents=True, exist_ok=True)
    text, where = script(blocks, rundir)
    path = rundir / "runbook.sh"
    path.write_text(text)
    proc = subprocess.Popen(["bash", str(path)], cwd=cwd, env=dict(env),  # noqa: S603,S607
                            stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                            stderr=subprocess.PIPE, start_new_session=True)
    try:
        try:
            _, early = proc.communicate(timeout=timeout_s)
        except subprocess.TimeoutExpired:
            _kill_session(proc.pid)
            _, early = proc.communicate(timeout=30)
            raise RunbookError(_failure(blocks, rundir, where, source=source,
                                        why=f"timed out after {timeout_s:g} s",
                                        early=early)) from None
        leftover = _session_pids(proc.pid)
    finally:
        _kill_session(proc.pid)
    progress = _read(rundir / "progress").strip()
    if proc.returncode != 0 or progress != "done":
        why = (f"exit status {proc.returncode}" if proc.returncode != 0 else
               f"the run stopped in block {progress or '?'} without an error")
        raise RunbookError(_failure(blocks, rundir, where, source=source, why=why, early=early))
    return Result(blocks, {b.index: _read(rundir / f"{b.index}.out") for b in blocks},
                  {b.index: _read(rundir / f"{b.index}.err") for b in blocks}, leftover)


def _failure(blocks: list[Block], rundir: Path, where: dict[int, tuple[Block, int]], *,
             source: str, why: str, early: bytes) -> str:
    progress = _read(rundir / "progress").strip()
    block = next((b for b in blocks if str(b.index) == progress), None)
    if block is None:             # bash refused the script before any block ran
        return (f"{source}: the runbook did not start ({why}):\n"
                f"{early.decode(errors='replace')[-ERR_TAIL_CHARS:]}")
    at = f"{source}:{block.line}"
    err_line = _read(rundir / "err-line").strip()
    if err_line.isdigit() and int(err_line) in where:
        _, doc_line = where[int(err_line)]
        at += f" (failing command at {source}:{doc_line})"
    err = _read(rundir / f"{block.index}.err")[-ERR_TAIL_CHARS:]
    out = _read(rundir / f"{block.index}.out")[-ERR_TAIL_CHARS:]
    return (f"runbook block {block.index} at {at} failed: {why}\n"
            f"--- block ---\n{block.text}--- stderr ---\n{err}--- stdout (tail) ---\n{out}")


def _read(path: Path) -> str:
    try:
        return path.read_text(encoding="utf-8", errors="replace")
    except FileNotFoundError:
        return ""


def _quote(s: str) -> str:
    return "'" + s.replace("'", "'\\''") + "'"


def _kill_session(sid: int, grace_s: float = 30.0) -> None:
    """SIGTERM every process still in the session (background jobs a block started), then
    SIGKILL what is left once ``grace_s`` passed."""
    for sig in (signal.SIGTERM, signal.SIGKILL):
        pids = _session_pids(sid)
        if not pids:
            return
        for pid in pids:
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.kill(pid, sig)
        deadline = time.monotonic() + grace_s
        while _session_pids(sid) and time.monotonic() < deadline:
            time.sleep(0.1)


def _session_pids(sid: int) -> list[int]:
    pids: list[int] = []
    for d in Path("/proc").iterdir():
        if not d.name.isdigit():
            continue
        try:
            fields = (d / "stat").read_text().rsplit(")", 1)[1].split()
        except (OSError, IndexError):
            continue
        # fields after "comm)": state ppid pgrp session ...; zombies are gone already
        if len(fields) > 3 and fields[3] == str(sid) and fields[0] != "Z":
            pids.append(int(d.name))
    return pids
