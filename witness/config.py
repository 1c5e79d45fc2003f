"""The witness's configuration: TOML into a frozen dataclass, every problem reported at once.

Example::

    [witness]
    name = "auditor.example/witness"        # the witness's key name in its cosignatures
    key = "/etc/timeclock-witness/witness.key"   # Ed25519 key (0600; timeclock-witness keygen)
    state_dir = "/var/lib/timeclock-witness"     # the largest checkpoint cosigned, per log
    listen = "0.0.0.0"
    port = 8443
    tls_cert = "/etc/timeclock-witness/tls.crt"  # HTTPS (wire.tls.server_context)
    tls_key = "/etc/timeclock-witness/tls.key"
    # client_ca = "/etc/timeclock-witness/clients.crt"  # optional: require client certificates

    [[logs]]
    origin = "acme.example/timeclock"
    key = "acme.example/timeclock+1a2b3c4d+AaBb..."  # the log's vkey (C2SP, type 0x01)

Unknown keys are errors; relative paths resolve against the config file's directory.
"""

from __future__ import annotations

import ipaddress
import tomllib
from dataclasses import dataclass
from pathlib import Path

from wire.config import Section
from wire.errors import WireError
from wire.note import ED25519, NoteVerifier, check_key_name, check_origin
from witness import WitnessError


class ConfigError(WitnessError):
    """The configuration is invalid; the message lists every problem with its key path."""

    def __init__(self, problems: list[str]) -> None:
        self.problems = problems
        super().__init__("invalid witness configuration:\n  " + "\n  ".join(problems))


@dataclass(frozen=True, slots=True)
class LogConfig:
    origin: str
    verifier: NoteVerifier        # the log key, named for the origin


@dataclass(frozen=True, slots=True)
class WitnessConfig:
    name: str
    key: Path
    state_dir: Path
    tls_cert: Path
    tls_key: Path
    logs: tuple[LogConfig, ...]
    listen: str = "127.0.0.1"
    port: int = 8443
    client_ca: Path | None = None


def _log(i: int, table: object, problems: list[str], seen: set[str]) -> LogConfig | None:
    s = Section(f"logs[{i}]", table, problems)
    origin = s.string("origin", required=True)
    vkey = s.string("key", required=True, hint="the log's vkey: <origin>+<key id>+<base64>")
    s.finish()
    if origin is None or vkey is None:
        return None
    try:
        check_origin(origin)
        verifier = NoteVerifier.from_vkey(vkey)
    except WireError as e:
        s.problem("origin" if "origin" in str(e) else "key", str(e))
        return None
    if verifier.kind != ED25519 or verifier.name != origin:
        s.problem("key", f"must be an Ed25519 (type 0x01) note key named {origin!r}, got "
                  f"{verifier.name!r} of type 0x{verifier.kind:02x}")
        return None
    if origin in seen:
        s.problem("origin", f"{origin!r} is listed twice")
        return None
    seen.add(origin)
    return LogConfig(origin, verifier)


def parse_config(data: dict[str, object], *, base: Path) -> WitnessConfig:
    problems: list[str] = []
    top = Section("", data, problems)
    w = top.section("witness", required=True)
    name = w.string("name", required=True)
    if name is not None:
        try:
            check_key_name(name, "witness name")
        except WireError as e:
            w.problem("name", str(e))
    key = w.path("key", base, required=True)
    state_dir = w.path("state_dir", base, required=True)
    tls_cert = w.path("tls_cert", base, required=True)
    tls_key = w.path("tls_key", base, required=True)
    client_ca = w.path("client_ca", base)
    listen = w.string("listen", "127.0.0.1")
    try:
        ipaddress.ip_address(listen)
    except ValueError:
        w.problem("listen", f"{listen!r} is not an IP address")
    port = w.integer("port", 8443, lo=1, hi=65535)
    w.finish()
    raw_logs = top.raw("logs")
    logs: list[LogConfig] = []
    if not isinstance(raw_logs, list) or not raw_logs:
        problems.append("logs: at least one [[logs]] table (origin, key) is required")
    else:
        seen: set[str] = set()
        for i, t in enumerate(raw_logs):
            if (lc := _log(i, t, problems, seen)) is not None:
                logs.append(lc)
    top.finish()
    if (problems or name is None or key is None or state_dir is None or tls_cert is None
            or tls_key is None):
        raise ConfigError(problems or ["incomplete [witness] table"])
    return WitnessConfig(name, key, state_dir, tls_cert, tls_key, tuple(logs), listen, port,
                         client_ca)


def load_config(path: Path) -> WitnessConfig:
    try:
        data = tomllib.loads(path.read_text(encoding="utf-8"))
    except OSError as e:
        raise ConfigError([f"{path}: cannot read: {e.strerror or e}"]) from e
    except tomllib.TOMLDecodeError as e:
        raise ConfigError([f"{path}: not valid TOML: {e}"]) from e
    return parse_config(data, base=path.parent)
