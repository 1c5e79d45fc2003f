"""Badge-reader plugins: the registry of reader kinds and the one factory the service calls.

Role: ``build_reader(name, section)`` turns one ``[readers.<name>]`` table of the agent config
into a :class:`Reader`; ``section["kind"]`` picks the class. The service runs each reader's
``run(emit, stop)`` in its own thread, so one failing reader never affects another.

Invariants: importing this package imports no hardware library (pyserial, evdev); those load
when a reader opens its device. Config problems raise one :class:`agent.errors.ConfigError`
that lists every problem with its key path.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from agent.errors import ConfigError
from agent.readers.base import Debouncer, Emit, Reader, ReaderState, Tap
from agent.readers.keyboard import KeyboardReader
from agent.readers.rdm6300 import Rdm6300Reader
from agent.readers.serial_line import SerialLineReader
from agent.readers.simulated import SimulatedReader

__all__ = ["REGISTRY", "Debouncer", "Emit", "Reader", "ReaderState", "Tap", "build_reader"]

REGISTRY: dict[str, type[Reader]] = {
    cls.kind: cls
    for cls in (Rdm6300Reader, SerialLineReader, KeyboardReader, SimulatedReader)
}


def build_reader(name: str, section: Mapping[str, Any]) -> Reader:
    """Validate ``[readers.<name>]`` and build its reader.

    Common keys for every kind: ``kind`` (required), ``action`` ("punch"), ``debounce_s``
    (3.0), ``reopen_min_s`` (1.0), ``reopen_max_s`` (30.0). Raises :class:`ConfigError`.
    """
    prefix = f"readers.{name}"
    if not isinstance(section, Mapping):
        raise ConfigError([f"{prefix}: expected a table, got {type(section).__name__}"])
    kind = section.get("kind")
    if kind is None:
        raise ConfigError([f"{prefix}.kind: required, one of {', '.join(sorted(REGISTRY))}"])
    cls = REGISTRY.get(kind) if isinstance(kind, str) else None
    if cls is None:
        raise ConfigError([f"{prefix}.kind: {kind!r} is not one of "
                           f"{', '.join(sorted(REGISTRY))}"])
    return cls.from_config(name, section)
