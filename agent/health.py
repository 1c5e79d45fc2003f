"""The watchdog's decision: may the agent tell systemd it is alive (WATCHDOG=1)?

Only when everything the watchdog vouches for works (DESIGN.md §5): every agent thread is alive
(reader threads, the publisher's sender and its MQTT network loop), the queue answers, a punch
can be committed (storage is not ``full``), and the publisher's loop is healthy. systemd
restarts an agent that stops pinging (``WatchdogSec=``), so an agent that cannot record never
looks healthy. :func:`check_health` is pure: it takes what the service observed and returns a
:class:`HealthReport` that says what failed.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass


@dataclass(frozen=True, slots=True)
class HealthReport:
    ok: bool
    dead_threads: tuple[str, ...]     # names of supervised threads that are not alive
    problems: tuple[str, ...]         # one line each, for the log and sd_notify STATUS=

    def summary(self) -> str:
        return "healthy" if self.ok else "; ".join(self.problems)


def check_health(threads: Mapping[str, bool], *, storage_state: str, storage_detail: str = "",
                 queue_error: str | None = None,
                 publisher_ok: bool | None = None) -> HealthReport:
    """``threads`` maps each supervised thread's name to ``is_alive()``; ``publisher_ok`` is
    None when nothing is published. ``storage_state`` is ``ok``, ``low`` or ``full``."""
    dead = tuple(sorted(name for name, alive in threads.items() if not alive))
    problems: list[str] = []
    if dead:
        problems.append(f"thread(s) died: {', '.join(dead)}")
    if queue_error is not None:
        problems.append(f"queue does not answer: {queue_error}")
    if storage_state == "full":
        problems.append("storage full: punches cannot be committed"
                        + (f" ({storage_detail})" if storage_detail else ""))
    if publisher_ok is False:
        problems.append("publisher unhealthy")
    return HealthReport(not problems, dead, tuple(problems))
