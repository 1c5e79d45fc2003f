"""Agent configuration: TOML → frozen, typed dataclasses (units in names), validated at once.

Invariants: an :class:`AgentConfig` that exists is valid; unknown keys are errors; every problem
of a file is reported together, each prefixed with its key path (``mqtt.port: …``), in one
:class:`agent.errors.ConfigError`. ``[readers.<name>]`` sections are validated by their plugin
(:func:`agent.readers.build_reader`) and their problems join ours. Relative paths resolve
against the config file's directory. Secrets are referenced (path or ``credential:NAME``),
never inlined, except the log *public* key.

Example::

    [device]
    id = "clock-0017"
    state_dir = "/var/lib/timeclock-agent"

    [keys]
    signing_key = "credential:signing-key"     # or a path to a 0600 file
    queue_key = "credential:queue-key"
    tls_key = "credential:tls-key"
    tls_cert = "/etc/timeclock/clock-0017.crt"
    ca_cert = "/etc/timeclock/ca.crt"
    log_public_key = "base64 of the collector log key, from the provisioning bundle"
    seal_public_key = "base64 X25519 key, from the bundle (optional: punches sealed, §8.6)"

    [mqtt]                    # omit the section to run store-only (nothing is published)
    host = "broker.example.org"

    [readers.front]
    kind = "rdm6300"
    port = "/dev/ttyAMA0"
    action = "in"

    [metrics]                 # optional: Prometheus metrics on loopback only (agent.metrics)
    port = 9465               # 0 or absent: off

    [feedback]                # optional: signal a refused tap at the reader (agent.feedback)
    refused_command = ["/usr/local/bin/clock-beep", "--error"]

    [feedback.outcomes]       # optional: per-outcome commands (agent.feedback.OUTCOMES)
    revoked = ["/usr/local/bin/clock-beep", "3"]

    [feedback.display]        # optional: a display hook, one JSON line on stdin per outcome
    command = ["/usr/local/bin/clock-display"]

    [feedback.gpio]           # optional: libgpiod output line + pattern per outcome
    recorded = {chip = "/dev/gpiochip0", line = 17, pattern = "on:200"}
"""

from __future__ import annotations

import tomllib
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from types import MappingProxyType
from typing import Any

from agent.errors import ConfigError
from agent.keystore import KeyRef
from wire.config import Section
from wire.errors import DecodeError
from wire.fields import DEVICE_ID_RE
from wire.keys import VerifyKey
from wire.sealed import SealPublicKey

DEFAULT_STATE_DIR = Path("/var/lib/timeclock-agent")
QUEUE_FILE = "queue.db"
STATUS_FILE = "status.json"


@dataclass(frozen=True, slots=True)
class DeviceConfig:
    id: str
    state_dir: Path
    # Set by `timeclock-agent provision`, which seeds the state directory with a sequence mark
    # at seq 0: a state directory without queue and mark is then a lost state (refused), not a
    # first start (agent/seqmark.py, docs/protocol.md §13.11).
    seeded_state: bool = False

    @property
    def queue_path(self) -> Path:
        return self.state_dir / QUEUE_FILE


@dataclass(frozen=True, slots=True)
class KeysConfig:
    signing_key: KeyRef
    queue_key: KeyRef
    tls_key: KeyRef | None = None
    tls_cert: Path | None = None
    ca_cert: Path | None = None
    log_public_key: VerifyKey | None = None
    seal_public_key: SealPublicKey | None = None   # bundle's seal key: envelopes are sealed


@dataclass(frozen=True, slots=True)
class MqttConfig:
    host: str
    port: int = 8883
    keepalive_s: int = 60
    batch_max: int = 100              # punches per envelope (1-500, DESIGN.md §4)
    resend_after_s: float = 30.0      # republish unacked punches after this long
    reconnect_min_s: float = 1.0
    reconnect_max_s: float = 60.0
    cert_warn_days: int = 30          # warn this long before the clock's certificate expires


@dataclass(frozen=True, slots=True)
class StatusConfig:
    path: Path                        # JSON file the running agent rewrites atomically
    interval_s: float = 5.0


@dataclass(frozen=True, slots=True)
class FeedbackConfig:
    """``[feedback]``: what to run when a tap is refused (empty: log and count only)."""

    refused_command: tuple[str, ...] = ()
    command_timeout_s: float = 5.0
    # ``[feedback.outcomes]``: outcome (agent.feedback.OUTCOMES) -> argv; empty: none runs
    outcomes: Mapping[str, tuple[str, ...]] = field(default_factory=lambda: MappingProxyType({}))
    # ``[feedback.display]``: the display hook's argv and the outcomes it is given
    display_command: tuple[str, ...] = ()
    display_outcomes: tuple[str, ...] = ()
    # ``[feedback.gpio]``: outcome -> agent.feedback_gpio.GpioSpec
    gpio: Mapping[str, Any] = field(default_factory=lambda: MappingProxyType({}))


@dataclass(frozen=True, slots=True)
class WitnessConfig:
    """``[witness]``: the clock's checks that its own punches are in the log (agent.inclusion,
    protocol.md §13.9): ``check_inclusion`` all | sample | off, ``sample_rate`` (for sample),
    how long a leaf may wait for a valid proof once asked, and how often it is asked again."""

    check_inclusion: str = "all"
    sample_rate: float = 0.1
    inclusion_deadline_s: float = 3600.0
    inclusion_retry_s: float = 60.0


@dataclass(frozen=True, slots=True)
class MetricsConfig:
    """``[metrics]``: Prometheus metrics on loopback (agent.metrics); ``port = 0``: off."""

    port: int = 0
    listen: str = "127.0.0.1"


@dataclass(frozen=True, slots=True)
class ReaderConfig:
    """A reader section as written; :func:`agent.readers.build_reader` turns it into a Reader."""

    name: str
    section: Mapping[str, Any]

    @property
    def kind(self) -> str:
        return str(self.section.get("kind", ""))


@dataclass(frozen=True, slots=True)
class AgentConfig:
    device: DeviceConfig
    keys: KeysConfig
    mqtt: MqttConfig | None
    status: StatusConfig
    readers: tuple[ReaderConfig, ...] = field(default=())
    source: Path | None = None
    feedback: FeedbackConfig = field(default=FeedbackConfig())
    witness: WitnessConfig = field(default=WitnessConfig())
    metrics: MetricsConfig = field(default=MetricsConfig())

    @property
    def queue_path(self) -> Path:
        return self.device.queue_path


class _Section(Section):
    """wire.config.Section plus the agent's key references (a file or a systemd credential)."""

    def keyref(self, key: str, base: Path, *, required: bool = False) -> KeyRef | None:
        s = self.string(key, required=required)
        if s is None:
            return None
        try:
            return KeyRef.parse(s, base_dir=base)
        except ValueError as e:
            self.problem(key, str(e))
            return None


SECTIONS = ("device", "keys", "mqtt", "readers", "status", "feedback", "witness", "metrics")


def parse_config(data: Mapping[str, Any], *, base_dir: Path, source: Path | None = None,
                 check_readers: bool = True) -> AgentConfig:
    """Validate a decoded TOML document; raise one :class:`ConfigError` with every problem."""
    problems: list[str] = []
    top = Section("", data, problems)
    for k in SECTIONS:
        top.raw(k)
    top.finish()
    for k in ("device", "keys"):
        if k not in data:
            top.problem(k, f"required (a [{k}] table)")
    device = _parse_device(data.get("device", {}), base_dir, problems,
                           required="device" in data)
    keys = _parse_keys(data.get("keys", {}), base_dir, problems, required="keys" in data)
    mqtt = _parse_mqtt(data["mqtt"], problems) if "mqtt" in data else None
    keys_table = data.get("keys", {})
    if mqtt is not None and isinstance(keys_table, Mapping):
        for key in ("tls_key", "tls_cert", "ca_cert", "log_public_key"):
            if key not in keys_table:
                problems.append(f"keys.{key}: required when [mqtt] is configured")
    ss = _Section("status", data.get("status", {}), problems)
    status = StatusConfig(ss.path("path", base_dir) or device.state_dir / STATUS_FILE,
                          ss.number("interval_s", 5.0, lo=0.2, hi=3600.0))
    ss.finish()
    readers = _parse_readers(data.get("readers", {}), problems, check=check_readers)
    feedback = _parse_feedback(data.get("feedback", {}), problems)
    witness = _parse_witness(data.get("witness", {}), problems)
    ms = _Section("metrics", data.get("metrics", {}), problems)
    metrics = MetricsConfig(ms.integer("port", 0, lo=0, hi=65535),
                            ms.choice("listen", "127.0.0.1", ("127.0.0.1", "::1")))
    ms.finish()
    if problems or keys is None:
        raise ConfigError(problems)
    return AgentConfig(device=device, keys=keys, mqtt=mqtt, status=status,
                       readers=readers, source=source, feedback=feedback, witness=witness,
                       metrics=metrics)


def _parse_device(table: Any, base_dir: Path, problems: list[str], *,
                  required: bool) -> DeviceConfig:
    dev = _Section("device", table, problems)
    device_id = dev.string("id", required=required) or ""
    if device_id and not DEVICE_ID_RE.fullmatch(device_id):
        dev.problem("id", f"{device_id[:70]!r} must match {DEVICE_ID_RE.pattern} "
                          "(lowercase letters, digits, inner dashes; no dots)")
    state_dir = dev.path("state_dir", base_dir) or DEFAULT_STATE_DIR
    seeded = dev.boolean("seeded_state", False)
    dev.finish()
    return DeviceConfig(device_id, state_dir, seeded)


def _parse_keys(table: Any, base_dir: Path, problems: list[str], *,
                required: bool) -> KeysConfig | None:
    ks = _Section("keys", table, problems)
    signing = ks.keyref("signing_key", base_dir, required=required)
    queue_key = ks.keyref("queue_key", base_dir, required=required)
    tls_key = ks.keyref("tls_key", base_dir)
    tls_cert = ks.path("tls_cert", base_dir)
    ca_cert = ks.path("ca_cert", base_dir)
    log_pub = None
    log_b64 = ks.string("log_public_key")
    if log_b64 is not None:
        try:
            log_pub = VerifyKey.from_b64(log_b64)
        except DecodeError as e:
            ks.problem("log_public_key", f"not a base64 Ed25519 public key ({e})")
    seal_pub = None
    seal_b64 = ks.string("seal_public_key")
    if seal_b64 is not None:
        try:
            seal_pub = SealPublicKey.from_b64(seal_b64)
        except DecodeError as e:
            ks.problem("seal_public_key", f"not a base64 X25519 public key ({e})")
    ks.finish()
    if signing is None or queue_key is None:
        return None
    return KeysConfig(signing, queue_key, tls_key, tls_cert, ca_cert, log_pub, seal_pub)


def _parse_mqtt(table: Any, problems: list[str]) -> MqttConfig:
    """[mqtt] is optional: without it the agent records and keeps punches, publishing none."""
    ms = _Section("mqtt", table, problems)
    host = ms.string("host", required=True) or ""
    d = MqttConfig(host="-")
    port = ms.integer("port", d.port, lo=1, hi=65535)
    keepalive_s = ms.integer("keepalive_s", d.keepalive_s, lo=5, hi=3600)
    batch_max = ms.integer("batch_max", d.batch_max, lo=1, hi=500)
    resend_after_s = ms.number("resend_after_s", d.resend_after_s, lo=1.0, hi=86400.0)
    rmin = ms.number("reconnect_min_s", d.reconnect_min_s, lo=0.1, hi=3600.0)
    rmax = ms.number("reconnect_max_s", d.reconnect_max_s, lo=0.1, hi=86400.0)
    if rmax < rmin:
        ms.problem("reconnect_max_s", f"must be ≥ reconnect_min_s ({rmin:g})")
    warn_days = ms.integer("cert_warn_days", d.cert_warn_days, lo=0, hi=3650)
    ms.finish()
    return MqttConfig(host, port, keepalive_s, batch_max, resend_after_s, rmin, rmax,
                      warn_days)


def _parse_witness(table: Any, problems: list[str]) -> WitnessConfig:
    ws = _Section("witness", table, problems)
    d = WitnessConfig()
    mode = ws.choice("check_inclusion", d.check_inclusion, ("all", "sample", "off"))
    rate = ws.number("sample_rate", d.sample_rate, lo=0.0, hi=1.0)
    deadline = ws.number("inclusion_deadline_s", d.inclusion_deadline_s, lo=1.0,
                         hi=30 * 86400.0)
    retry = ws.number("inclusion_retry_s", d.inclusion_retry_s, lo=0.5, hi=86400.0)
    ws.finish()
    return WitnessConfig(mode, rate, deadline, retry)


def _argv(sec: Section, key: str) -> tuple[str, ...]:
    """A command as an argv list with an absolute program path; () when absent or bad."""
    raw = sec.raw(key)
    if raw is None:
        return ()
    if not isinstance(raw, list) or not raw or not all(isinstance(a, str) and a for a in raw):
        sec.problem(key, "expected a non-empty list of non-empty strings "
                         '(argv, e.g. ["/usr/local/bin/clock-beep", "-e"])')
    elif not Path(raw[0]).is_absolute():
        sec.problem(key, f"the program must be an absolute path, got {raw[0][:80]!r}")
    else:
        return tuple(raw)
    return ()


def _parse_feedback(table: Any, problems: list[str]) -> FeedbackConfig:
    from agent.feedback import OUTCOMES  # noqa: PLC0415 -- the outcome names live there
    from agent.feedback_gpio import parse_spec  # noqa: PLC0415 -- as above (no gpiod import)

    fs = _Section("feedback", table, problems)
    argv = _argv(fs, "refused_command")
    timeout_s = fs.number("command_timeout_s", FeedbackConfig().command_timeout_s, lo=0.1,
                          hi=300.0)
    outcomes: dict[str, tuple[str, ...]] = {}
    per_outcome = fs.section("outcomes")
    display = fs.section("display")
    gpio_sec = fs.section("gpio")
    fs.finish()
    for name in OUTCOMES:
        cmd = _argv(per_outcome, name)
        if cmd:
            outcomes[name] = cmd
    per_outcome.finish()
    display_argv = _argv(display, "command")
    shown = display.string_list("outcomes") or list(OUTCOMES)
    for i, name in enumerate(shown):
        if name not in OUTCOMES:
            display.problem(f"outcomes[{i}]", f"{name[:40]!r} is not one of "
                                              f"{', '.join(OUTCOMES)}")
    if display.table and not display_argv and not display.has("command"):
        display.missing("command", "the display hook's argv")
    display.finish()
    gpio: dict[str, Any] = {}
    for name in OUTCOMES:
        raw = gpio_sec.raw(name)
        if raw is None:
            continue
        spec, bad = parse_spec(raw, max_total_ms=int(timeout_s * 1000))
        for b in bad:
            gpio_sec.problem(name, b)
        if spec is not None:
            gpio[name] = spec
    gpio_sec.finish()
    return FeedbackConfig(argv, timeout_s, MappingProxyType(outcomes), display_argv,
                          tuple(n for n in shown if n in OUTCOMES) if display_argv else (),
                          MappingProxyType(gpio))


def _parse_readers(raw: Any, problems: list[str], *, check: bool) -> tuple[ReaderConfig, ...]:
    if not isinstance(raw, Mapping):
        problems.append("readers: expected tables [readers.<name>]")
        return ()
    if not raw:
        problems.append("readers: at least one [readers.<name>] section is required")
    readers: list[ReaderConfig] = []
    for name, section in raw.items():
        if not isinstance(section, Mapping):
            problems.append(f"readers.{name}: expected a table")
            continue
        if check:
            problems.extend(reader_problems(name, section))
        readers.append(ReaderConfig(name, MappingProxyType(dict(section))))
    return tuple(readers)


def reader_problems(name: str, section: Mapping[str, Any]) -> list[str]:
    """Problems the reader plugin finds in its section (each already has its key path)."""
    from agent.readers import build_reader  # noqa: PLC0415 -- plugins load only when needed

    try:
        build_reader(name, section)
    except ConfigError as e:
        return [p if p.startswith(f"readers.{name}") else f"readers.{name}: {p}"
                for p in e.problems]
    return []


def load_config(path: Path, *, check_readers: bool = True) -> AgentConfig:
    """Read and validate ``path``; raise :class:`ConfigError` for unreadable files too.
    ``check_readers=False`` skips the plugins' checks (``status`` needs no reader)."""
    try:
        text = path.read_bytes()
    except OSError as e:
        raise ConfigError([f"{path}: cannot read: {e.strerror or e}"]) from e
    try:
        data = tomllib.loads(text.decode("utf-8"))
    except UnicodeDecodeError as e:
        raise ConfigError([f"{path}: not UTF-8 text"]) from e
    except tomllib.TOMLDecodeError as e:
        raise ConfigError([f"{path}: TOML syntax: {e}"]) from e
    from agent.remote_config import with_overlay  # noqa: PLC0415 -- it imports this module

    # the effective config: base file + the signed remote overlay (agent.remote_config)
    return with_overlay(data, lambda d: parse_config(d, base_dir=path.parent.resolve(),
                                                     source=path, check_readers=check_readers))
