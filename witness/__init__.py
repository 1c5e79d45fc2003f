"""timeclock-witness: a C2SP tlog-witness server an auditor or HR can run (DESIGN.md §8.3).

It cosigns a log's checkpoints only once it has proven each consistent with the largest one it
cosigned before (RFC 9162 consistency proof), and persists that one first. It imports only
``wire`` (the byte contract) and aiohttp: nothing of the agent, the collector or the lab.
"""

from __future__ import annotations


class WitnessError(Exception):
    """Base error of the witness server, with an operator-facing message."""
