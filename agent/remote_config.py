"""The clock's side of remote configuration (issue 15 item 6; docs/protocol.md §13.14).

The collector publishes a signed change (wire.remote_config), retained on the clock's own
``config`` topic. :meth:`RemoteConfig.handle` judges it, in order:

  (1) size and strict parse (the allow-list is part of the parse);
  (2) the change names this clock;
  (3) the signature verifies under the log public key of the clock's bundle;
  (4) its serial is above the applied one (the same bytes as the applied change: already
      applied, answered again but not applied twice; anything else at or below: a replay);
  (5) the base file plus its ``set`` passes the agent's config loader — else refused with
      the loader's own messages, and nothing is written;
  (6) the overlay file (``remote-config.json`` in the state directory: the signed change
      itself) is replaced atomically and durably (wire.keys.write_public_file: temporary file,
      fsync, rename, fsync of the directory). The state directory, not beside ``agent.toml``:
      the shipped unit runs with ``ProtectSystem=strict``, so /etc is read-only to the agent,
      and the state directory is the one place it may write (``[device] state_dir`` is not
      remotely settable, so the overlay never moves).

Every outcome is answered with a result signed by the clock's key, retained on
``config-result``. After an applied change the agent stops cleanly (SIGTERM to itself, once the
broker acknowledged the result) and systemd (``Restart=always``) starts it again: every part
reads the new effective configuration from the start, and no component needs a live reload
path of its own. The effective configuration is always the base file plus the overlay's
``set`` (:func:`with_overlay`, called by agent.config.load_config); an overlay that is not a
valid change signed by the log key for this clock stops the agent with a clear error (fail
closed: the clock never runs on settings nobody signed).
"""

from __future__ import annotations

import copy
import logging
import os
import signal
import tomllib
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from agent.errors import ConfigError
from wire.errors import DecodeError, WireError
from wire.keys import SigningKey, VerifyKey, write_public_file
from wire.remote_config import ConfigResult, SignedConfigChange, SignedConfigResult

if TYPE_CHECKING:
    from collections.abc import Callable

    from agent.config import AgentConfig

log = logging.getLogger(__name__)

OVERLAY_FILE = "remote-config.json"


def overlay_path(state_dir: Path) -> Path:
    """Where the applied change lives: ``<state_dir>/remote-config.json``."""
    return state_dir / OVERLAY_FILE


def merge(data: dict[str, Any], settings: dict[str, int | str]) -> dict[str, Any]:
    """A copy of the decoded base file with each dotted setting set."""
    out = copy.deepcopy(data)
    problems: list[str] = []
    for key, value in settings.items():
        *tables, leaf = key.split(".")
        node = out
        for i, name in enumerate(tables):
            nxt = node.setdefault(name, {})
            if not isinstance(nxt, dict):
                problems.append(f"{'.'.join(tables[:i + 1])}: not a table in the base file")
                break
            node = nxt
        else:
            if tables[0] == "readers" and "kind" not in node:
                problems.append(f"{key}: the base file has no reader "
                                f"[readers.{tables[1]}]")
            node[leaf] = value
    if problems:
        raise ConfigError(problems)
    return out


def read_overlay(state_dir: Path, log_key: VerifyKey | None,
                 device: str) -> SignedConfigChange | None:
    """The applied change in ``state_dir``, verified with the base file's log key and device
    id; None when there is none."""
    path = overlay_path(state_dir)
    try:
        raw = path.read_bytes()
    except FileNotFoundError:
        return None
    except OSError as e:
        raise ConfigError([f"{path}: cannot read: {e.strerror or e}"]) from e
    try:
        if log_key is None:
            raise DecodeError("the base file has no keys.log_public_key to verify it with")
        signed = SignedConfigChange.from_bytes(raw)
        signed.verify(log_key)
        if signed.change.device != device:
            raise DecodeError(f"it is for {signed.change.device}, not {device}")
    except WireError as e:
        raise ConfigError([f"{path}: not a remote change signed by the log key for this "
                           f"clock ({e}); remove the file to run on the base file alone"]) from e
    return signed


def with_overlay(data: dict[str, Any], parse: Callable[[dict[str, Any]], AgentConfig]
                 ) -> AgentConfig:
    """The effective configuration: the decoded base file (``parse`` validates it and says
    where the state directory is), plus the applied change's ``set`` when there is one."""
    base = parse(data)
    signed = read_overlay(base.device.state_dir, base.keys.log_public_key, base.device.id)
    if signed is None:
        return base
    try:
        return parse(merge(data, signed.change.settings))
    except ConfigError as e:
        where = f"{overlay_path(base.device.state_dir)} (serial {signed.change.serial})"
        raise ConfigError([f"{where}: {p}" for p in e.problems]) from e


def restart_self() -> None:
    """Stop cleanly (the CLI's SIGTERM handler); systemd's ``Restart=always`` starts the agent
    again on the new effective configuration."""
    os.kill(os.getpid(), signal.SIGTERM)


@dataclass(frozen=True, slots=True)
class Outcome:
    result: SignedConfigResult
    applied: bool           # True: the overlay changed; the agent restarts to use it


class RemoteConfig:
    """Judges and applies signed changes for ``device`` (see the module doc)."""

    def __init__(self, config_path: Path, state_dir: Path, device: str, log_key: VerifyKey,
                 signing: SigningKey) -> None:
        self._path = config_path
        self._state_dir = state_dir
        self._device = device
        self._log_key = log_key
        self._signing = signing
        self._applied: SignedConfigChange | None = None
        try:
            self._applied = read_overlay(state_dir, log_key, device)
        except ConfigError as e:
            log.error("remote configuration: %s", "; ".join(e.problems))

    @property
    def applied_serial(self) -> int:
        return 0 if self._applied is None else self._applied.change.serial

    def _base(self) -> dict[str, Any]:
        try:
            return tomllib.loads(self._path.read_text(encoding="utf-8"))
        except (OSError, UnicodeDecodeError, tomllib.TOMLDecodeError) as e:
            raise ConfigError([f"{self._path}: cannot read the base file: {e}"]) from e

    def _answer(self, serial: int, status: str, reason: str) -> SignedConfigResult:
        reason = reason[:1000]
        if status == "refused":
            log.warning("remote configuration change %d refused: %s", serial, reason)
        else:
            log.info("remote configuration change %d: %s", serial, reason)
        return ConfigResult(self._device, serial, status, reason).sign(self._signing)

    def handle(self, payload: bytes) -> Outcome:
        """Judge and maybe apply one change; always an answer to publish."""
        try:
            signed, already = self._judge(payload)
        except _Refusal as r:
            return Outcome(self._answer(r.serial, "refused", r.reason), False)
        change = signed.change
        if already:
            return Outcome(self._answer(change.serial, "applied", "already applied"), False)
        # (6) atomic, durable
        try:
            # 0600 like every file of the state directory (D4)
            write_public_file(overlay_path(self._state_dir), signed.to_bytes(), mode=0o600)
        except OSError as e:
            return Outcome(self._answer(change.serial, "refused",
                                        f"cannot write the overlay: {e.strerror or e}"), False)
        self._applied = signed
        return Outcome(self._answer(change.serial, "applied",
                                    f"applied {len(change.settings)} setting(s); restarting"),
                       True)

    def _judge(self, payload: bytes) -> tuple[SignedConfigChange, bool]:
        """Steps (1)-(5): the change and whether it is the applied one; else :class:`_Refusal`."""
        from agent.config import parse_config  # noqa: PLC0415 -- agent.config imports us

        # (1) size, strict parse, allow-list
        try:
            signed = SignedConfigChange.from_bytes(payload)
        except WireError as e:
            raise _Refusal(0, f"unreadable change: {e}") from e
        change = signed.change
        # (2) for this clock
        if change.device != self._device:
            raise _Refusal(change.serial, f"the change is for {change.device}")
        # (3) signed by the log key
        try:
            signed.verify(self._log_key)
        except WireError as e:
            raise _Refusal(change.serial, f"signature: {e}") from e
        # (4) replay
        if self._applied is not None and signed.to_bytes() == self._applied.to_bytes():
            return signed, True
        if change.serial <= self.applied_serial:
            raise _Refusal(change.serial, f"replay: serial {change.serial} is not above the "
                                          f"applied serial {self.applied_serial}")
        # (5) the effective configuration must load
        try:
            data = merge(self._base(), change.settings)
            parse_config(data, base_dir=self._path.parent.resolve(), source=self._path)
        except ConfigError as e:
            raise _Refusal(change.serial,
                           "invalid configuration: " + "; ".join(e.problems)) from e
        return signed, False


class _Refusal(Exception):  # noqa: N818 -- internal control flow, never leaves this module
    def __init__(self, serial: int, reason: str) -> None:
        super().__init__(reason)
        self.serial = serial
        self.reason = reason
