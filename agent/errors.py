"""Agent errors: one base with an operator-facing message; wrap third-party errors at the edge."""

from __future__ import annotations


class AgentError(Exception):
    """Base of every agent error."""


class ConfigError(AgentError):
    """Every problem of a config at once, each prefixed with its key path."""

    def __init__(self, problems: list[str]) -> None:
        self.problems = list(problems)
        super().__init__("invalid configuration:\n  " + "\n  ".join(self.problems))


class ReaderError(AgentError):
    """A badge reader could not be opened or read."""


class QueueError(AgentError):
    """The encrypted queue could not be opened, read or written."""


class QueueFullError(QueueError):
    """The queue's filesystem is full: the write was rolled back (nothing half-written)."""


class TapRefusedError(AgentError):
    """A tap was read but refused: no punch was committed (already logged and counted)."""


class QueueIntegrityError(QueueError):
    """A queue row failed authentication (altered ciphertext, wrong key or wrong row)."""


class SeqMarkError(QueueError):
    """The sequence mark (agent/seqmark.py) could not be read or written, or is damaged."""


class SequenceRefusedError(QueueError):
    """The queue is behind its sequence mark (or the mark is lost): nothing may be recorded
    until an operator resumes the clock (``timeclock-agent resume``); no seq was used."""
