"""The agent's health snapshot: one dict, written atomically to a file and shown by ``status``.

The same snapshot feeds the retained MQTT status topic (DESIGN.md §4): online/offline, queue
depth, oldest unacked time, clock state, reader states, version. Invariants: the file is
replaced with rename(2) (a reader never sees half a file), is 0644 (it holds no secret: no
credential, no key path), and names the writer's pid so ``status`` can tell a stale file.
"""

from __future__ import annotations

import functools
import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from agent.errors import AgentError

STATUS_VERSION = 1


@functools.cache
def agent_version() -> str:
    from importlib.metadata import PackageNotFoundError, version  # noqa: PLC0415 -- rarely used

    try:
        return version("timeclock")
    except PackageNotFoundError:
        return "0+unknown"


def write_status(path: Path, snapshot: dict[str, Any]) -> None:
    """Atomically replace ``path`` with ``snapshot`` as JSON."""
    data = json.dumps(snapshot, sort_keys=True, indent=1).encode() + b"\n"
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
        try:
            os.write(fd, data)
        finally:
            os.close(fd)
        os.replace(tmp, path)
    except OSError as e:
        raise AgentError(f"{path}: cannot write status file: {e.strerror or e}") from e


@dataclass(frozen=True, slots=True)
class StatusFile:
    snapshot: dict[str, Any]
    live: bool          # the writer is running and the file is fresh
    age_s: float


def read_status(path: Path, *, now_us: int, stale_after_s: float) -> StatusFile | None:
    """The last snapshot, or None if there is none. ``live`` says whether its writer runs."""
    try:
        snap = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        return None
    except (OSError, ValueError) as e:
        raise AgentError(f"{path}: cannot read status file: {e}") from e
    if not isinstance(snap, dict):
        raise AgentError(f"{path}: status file is not a JSON object")
    at = snap.get("at_us")
    age_s = (now_us - at) / 1e6 if isinstance(at, int) else float("inf")
    pid = snap.get("pid")
    alive = isinstance(pid, int) and Path(f"/proc/{pid}").exists()
    live = alive and snap.get("state") == "running" and age_s <= stale_after_s
    return StatusFile(snap, live, age_s)


def _age(now_us: int, at_us: Any) -> str:
    if not isinstance(at_us, int):
        return "never"
    s = max(0, (now_us - at_us) // 1_000_000)
    if s < 120:
        return f"{s}s ago"
    if s < 7200:
        return f"{s // 60}min ago"
    return f"{s // 3600}h ago"


def render(snap: dict[str, Any], *, now_us: int, live: bool) -> str:
    """Human text of a snapshot for ``timeclock-agent status``."""
    q = snap.get("queue") or {}
    lines = [
        f"device:        {snap.get('device', '?')}",
        f"agent:         {'running' if live else 'NOT RUNNING'} (pid {snap.get('pid', '?')}, "
        f"state {snap.get('state', '?')}, snapshot {_age(now_us, snap.get('at_us'))})",
        f"clock:         {snap.get('clock', '?')}",
        f"queue depth:   {q.get('depth', '?')} unacked (last seq {q.get('last_seq', '?')}, "
        f"set aside {q.get('set_aside', '?')})",
        f"oldest unacked: {_age(now_us, q.get('oldest_created_us'))}",
    ]
    pub = snap.get("publisher") or {}
    lines.append(f"publisher:     {pub.get('status', 'disabled')}"
                 + (f" ({pub['detail']})" if pub.get("detail") else ""))
    lines.append(f"last receipt:  {_age(now_us, pub.get('last_receipt_us'))}")
    for name, r in sorted((snap.get("readers") or {}).items()):
        lines.append(f"reader {name}: {r.get('status', '?')} — {r.get('detail', '')} "
                     f"(taps {r.get('taps', 0)}, read errors {r.get('read_errors', 0)}, "
                     f"reopens {r.get('reopens', 0)})")
    return "\n".join(lines)
