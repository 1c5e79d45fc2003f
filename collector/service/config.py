"""Collector configuration: TOML → frozen, typed dataclasses.

Invariants: a :class:`CollectorConfig` that exists is complete and within limits; unknown keys
are errors; every problem is reported at once with its key path (``mqtt.port: ...``) in one
:class:`~collector.ConfigError`. Relative paths are resolved against the directory of
the config file, so a unit file can point at a config anywhere. Nothing here opens keys or
connects: ``serve --check-config`` runs exactly this plus the file checks of
:func:`check_files`.

Example::

    [collector]
    name = "a"                                  # MQTT identity collector.a (TLS cert CN)
    store = "sqlite:///var/lib/timeclock/ledger.db"   # or postgresql://… (password: use
                                                      # PGPASSFILE, not the URL)
    log_key = "/etc/timeclock/log.key"          # Ed25519 log key (0600): receipts, checkpoints

    [mqtt]
    host = "broker.example.org"
    port = 8883
    ca_cert = "/etc/timeclock/ca.pem"
    cert = "/etc/timeclock/collector.pem"
    key = "/etc/timeclock/collector.key"        # 0600
    # keepalive_s = 30, session_expiry_s = 604800, receive_maximum = 1000

    [ingest]                                    # all optional
    batch_max = 2000                            # punches per ledger transaction
    batch_wait_ms = 50                          # wait at most this long to fill a batch
    max_payload_bytes = 262144                  # (1) size limit, ≤ 256 KiB
    queue_max = 10000                           # MQTT messages buffered before back-pressure

    [checkpoints]                               # optional
    every_entries = 1000
    every_s = 60

    [gaps]                                      # optional
    report_after_s = 300

    [ledger]                                    # optional: when the database is away
    reconnect_initial_ms = 200                  # first reconnect after this, then doubling
    reconnect_max_ms = 2000                     # … up to this between attempts
    outage_max_s = 300                          # away longer: exit non-zero (systemd restarts)

    [broker]                                    # optional: run Mosquitto under `serve`
    managed = true                              # start/supervise it (fleet.broker_process)
    dir = "/var/lib/timeclock/broker"           # prepared by `broker-config`/`site`; it
                                                # listens on [mqtt] host:port
    # mosquitto = "/usr/sbin/mosquitto"
"""

from __future__ import annotations

import dataclasses
import re
import tomllib
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

from collector import ConfigError
from collector.api.config import ApiSection, parse_api_section
from wire.errors import KeyFileError
from wire.keys import check_private_file
from wire.punch import MAX_ENVELOPE_BYTES

NAME_RE = re.compile(r"^[a-z0-9](?:[a-z0-9-]{0,61}[a-z0-9])?$")
HOST_RE = re.compile(r"^[A-Za-z0-9.:\-\[\]]{1,253}$")
STORE_SCHEMES = ("sqlite:", "postgresql://", "postgres://")
_KV_DSN = re.compile(r"^(host|dbname|user|service)=")


@dataclass(frozen=True, slots=True)
class CollectorSection:
    name: str
    store: str
    log_key: Path

    @property
    def identity(self) -> str:
        """The MQTT client id and expected TLS CN: ``collector.<name>`` (DESIGN.md §1)."""
        return f"collector.{self.name}"


@dataclass(frozen=True, slots=True)
class MqttSection:
    host: str
    port: int
    ca_cert: Path
    cert: Path
    key: Path
    keepalive_s: int = 30
    session_expiry_s: int = 7 * 24 * 3600
    receive_maximum: int = 1000


@dataclass(frozen=True, slots=True)
class IngestSection:
    batch_max: int = 2000
    batch_wait_ms: int = 50
    max_payload_bytes: int = MAX_ENVELOPE_BYTES
    queue_max: int = 10_000


@dataclass(frozen=True, slots=True)
class CheckpointSection:
    every_entries: int = 1000
    every_s: int = 60


@dataclass(frozen=True, slots=True)
class GapSection:
    report_after_s: int = 300


@dataclass(frozen=True, slots=True)
class LedgerSection:
    """``[ledger]``: how ``serve`` rides out a database outage (collector.service.runner)."""

    reconnect_initial_ms: int = 200
    reconnect_max_ms: int = 2000
    outage_max_s: int = 300


@dataclass(frozen=True, slots=True)
class BrokerSection:
    """``[broker]``: with ``managed``, ``serve`` runs Mosquitto from ``dir`` itself."""

    managed: bool = False
    dir: Path | None = None
    mosquitto: str = "/usr/sbin/mosquitto"


@dataclass(frozen=True, slots=True)
class CollectorConfig:
    collector: CollectorSection
    mqtt: MqttSection
    ingest: IngestSection
    checkpoints: CheckpointSection
    gaps: GapSection
    source: Path | None = None
    broker: BrokerSection = BrokerSection()
    api: ApiSection | None = None               # [api]: serve also runs the HTTPS API
    ledger: LedgerSection = LedgerSection()


def redact_url(url: str) -> str:
    """A store URL fit for logs: any password (``user:pw@``) replaced by ``***``."""
    url = re.sub(r"(://[^:/@]*):[^@/]*@", r"\1:***@", url)
    return re.sub(r"(password=)[^\s&]+", r"\1***", url)


T = TypeVar("T")


class _Reader:
    """Collects problems while reading one table; never raises until :meth:`done`."""

    def __init__(self, problems: list[str], base: Path) -> None:
        self.problems = problems
        self.base = base

    def table(self, data: Mapping[str, Any], key: str, *, required: bool) -> dict[str, Any]:
        if key not in data:
            if required:
                self.problems.append(f"{key}: missing section [{key}]")
            return {}
        value = data[key]
        if not isinstance(value, dict):
            self.problems.append(f"{key}: expected a table [{key}]")
            return {}
        return value

    def unknown(self, section: str, table: Mapping[str, Any], allowed: set[str]) -> None:
        for k in sorted(set(table) - allowed):
            self.problems.append(f"{section}.{k}: unknown key (allowed: "
                                 f"{', '.join(sorted(allowed))})")

    def req(self, section: str, table: Mapping[str, Any], key: str,
            conv: Callable[[str, Any], T]) -> T | None:
        """A required key: None (and a problem recorded) when missing or invalid."""
        if key not in table:
            self.problems.append(f"{section}.{key}: missing")
            return None
        try:
            return conv(f"{section}.{key}", table[key])
        except ValueError as e:
            self.problems.append(f"{section}.{key}: {e}")
            return None

    def opt(self, section: str, table: Mapping[str, Any], key: str,
            conv: Callable[[str, Any], T], default: T) -> T:
        """An optional key: ``default`` when missing (or invalid, with a problem recorded)."""
        if key not in table:
            return default
        try:
            return conv(f"{section}.{key}", table[key])
        except ValueError as e:
            self.problems.append(f"{section}.{key}: {e}")
            return default

    # Converters raise ValueError with the message that follows the key path.
    @staticmethod
    def text(pattern: re.Pattern[str] | None = None) -> Callable[[str, Any], str]:
        def conv(_path: str, v: Any) -> str:
            if not isinstance(v, str) or not v:
                raise ValueError("expected a non-empty string")
            if pattern is not None and not pattern.fullmatch(v):
                raise ValueError(f"{v[:60]!r} does not match {pattern.pattern}")
            return v
        return conv

    @staticmethod
    def integer(lo: int, hi: int) -> Callable[[str, Any], int]:
        def conv(_path: str, v: Any) -> int:
            if not isinstance(v, int) or isinstance(v, bool):
                raise ValueError("expected an integer")
            if not lo <= v <= hi:
                raise ValueError(f"must be between {lo} and {hi}, got {v}")
            return v
        return conv

    def path(self) -> Callable[[str, Any], Path]:
        def conv(_path: str, v: Any) -> Path:
            if not isinstance(v, str) or not v:
                raise ValueError("expected a path string")
            p = Path(v).expanduser()
            return p if p.is_absolute() else (self.base / p)
        return conv


def _store_url(base: Path) -> Callable[[str, Any], str]:
    """A store URL (see collector.ledger.open_store); a relative SQLite path is made
    absolute against the config file's directory."""
    def conv(_path: str, v: Any) -> str:
        if not isinstance(v, str) or not (v.startswith(STORE_SCHEMES) or _KV_DSN.match(v)):
            raise ValueError("expected a store URL: sqlite:///abs/ledger.db, "
                             "sqlite:relative/ledger.db or postgresql://user@host/db")
        if v.startswith("sqlite:") and not v.startswith("sqlite://"):
            rel = Path(v[len("sqlite:"):]).expanduser()
            return f"sqlite://{rel if rel.is_absolute() else base / rel}"
        return v
    return conv


def _ledger_section(r: _Reader, lg: Mapping[str, Any]) -> LedgerSection:
    r.unknown("ledger", lg, {"reconnect_initial_ms", "reconnect_max_ms", "outage_max_s"})
    ld = LedgerSection()
    ledger = LedgerSection(
        reconnect_initial_ms=r.opt("ledger", lg, "reconnect_initial_ms", r.integer(10, 60_000),
                                   ld.reconnect_initial_ms),
        reconnect_max_ms=r.opt("ledger", lg, "reconnect_max_ms", r.integer(10, 300_000),
                               ld.reconnect_max_ms),
        outage_max_s=r.opt("ledger", lg, "outage_max_s", r.integer(1, 7 * 86_400),
                           ld.outage_max_s))
    if ledger.reconnect_max_ms < ledger.reconnect_initial_ms:
        r.problems.append("ledger.reconnect_max_ms: must be at least reconnect_initial_ms")
    return ledger


def parse_config(data: Mapping[str, Any], *, base: Path) -> CollectorConfig:
    """Build the config from decoded TOML; raise ConfigError listing every problem."""
    problems: list[str] = []
    r = _Reader(problems, base)
    r.unknown("", data, {"collector", "mqtt", "ingest", "checkpoints", "gaps", "broker", "api",
                         "ledger"})
    # A top-level unknown key is reported as ".x"; drop the leading dot.
    problems[:] = [p[1:] if p.startswith(".") else p for p in problems]

    c = r.table(data, "collector", required=True)
    r.unknown("collector", c, {"name", "store", "log_key"})
    name = r.req("collector", c, "name", r.text(NAME_RE))
    store = r.req("collector", c, "store", _store_url(base))
    log_key = r.req("collector", c, "log_key", r.path())

    m = r.table(data, "mqtt", required=True)
    r.unknown("mqtt", m, {"host", "port", "ca_cert", "cert", "key", "keepalive_s",
                          "session_expiry_s", "receive_maximum"})
    host = r.req("mqtt", m, "host", r.text(HOST_RE))
    port = r.req("mqtt", m, "port", r.integer(1, 65535))
    ca_cert = r.req("mqtt", m, "ca_cert", r.path())
    cert = r.req("mqtt", m, "cert", r.path())
    key = r.req("mqtt", m, "key", r.path())
    keepalive = r.opt("mqtt", m, "keepalive_s", r.integer(5, 3600), 30)
    expiry = r.opt("mqtt", m, "session_expiry_s", r.integer(60, 2**32 - 1), 7 * 24 * 3600)
    recv_max = r.opt("mqtt", m, "receive_maximum", r.integer(1, 65535), 1000)

    i = r.table(data, "ingest", required=False)
    r.unknown("ingest", i, {"batch_max", "batch_wait_ms", "max_payload_bytes", "queue_max"})
    d = IngestSection()
    ingest = IngestSection(
        batch_max=r.opt("ingest", i, "batch_max", r.integer(1, 100_000), d.batch_max),
        batch_wait_ms=r.opt("ingest", i, "batch_wait_ms", r.integer(0, 10_000),
                            d.batch_wait_ms),
        max_payload_bytes=r.opt("ingest", i, "max_payload_bytes",
                                r.integer(64, MAX_ENVELOPE_BYTES), d.max_payload_bytes),
        queue_max=r.opt("ingest", i, "queue_max", r.integer(1, 10_000_000), d.queue_max))

    k = r.table(data, "checkpoints", required=False)
    r.unknown("checkpoints", k, {"every_entries", "every_s"})
    kd = CheckpointSection()
    checkpoints = CheckpointSection(
        every_entries=r.opt("checkpoints", k, "every_entries", r.integer(1, 10_000_000),
                            kd.every_entries),
        every_s=r.opt("checkpoints", k, "every_s", r.integer(1, 86_400), kd.every_s))

    g = r.table(data, "gaps", required=False)
    r.unknown("gaps", g, {"report_after_s"})
    gaps = GapSection(report_after_s=r.opt("gaps", g, "report_after_s",
                                           r.integer(1, 30 * 86_400),
                                           GapSection().report_after_s))

    b = r.table(data, "broker", required=False)
    r.unknown("broker", b, {"managed", "dir", "mosquitto"})
    managed = b.get("managed", False)
    if not isinstance(managed, bool):
        problems.append("broker.managed: expected true or false")
        managed = False
    broker = BrokerSection(managed=managed,
                           dir=r.opt("broker", b, "dir", r.path(), None),
                           mosquitto=r.opt("broker", b, "mosquitto", r.text(),
                                           BrokerSection().mosquitto))
    if broker.managed and broker.dir is None:
        problems.append("broker.dir: required when broker.managed = true")

    ledger = _ledger_section(r, r.table(data, "ledger", required=False))
    api = None
    a = r.table(data, "api", required=False)
    if "api" in data:
        try:
            api = parse_api_section(a, base)
        except ConfigError as e:
            problems.extend(e.problems)

    if (problems or name is None or store is None or log_key is None or host is None
            or port is None or ca_cert is None or cert is None or key is None):
        raise ConfigError(problems)
    return CollectorConfig(
        collector=CollectorSection(name=name, store=store, log_key=log_key),
        mqtt=MqttSection(host=host, port=port, ca_cert=ca_cert, cert=cert, key=key,
                         keepalive_s=keepalive, session_expiry_s=expiry,
                         receive_maximum=recv_max),
        ingest=ingest, checkpoints=checkpoints, gaps=gaps, broker=broker, api=api,
        ledger=ledger)


def load_config(path: Path) -> CollectorConfig:
    """Read and validate a TOML config file."""
    try:
        raw = path.read_bytes()
    except OSError as e:
        raise ConfigError([f"{path}: cannot read: {e.strerror}"]) from e
    try:
        data = tomllib.loads(raw.decode("utf-8"))
    except (UnicodeDecodeError, tomllib.TOMLDecodeError) as e:
        raise ConfigError([f"{path}: not valid TOML: {e}"]) from e
    cfg = parse_config(data, base=path.resolve().parent)
    return dataclasses.replace(cfg, source=path)


def check_files(cfg: CollectorConfig) -> None:
    """Check that every file the config names exists and that private keys are 0600.

    Raises ConfigError listing every problem; used by ``serve --check-config`` and at start.
    """
    problems: list[str] = []
    files = {"collector.log_key": cfg.collector.log_key, "mqtt.ca_cert": cfg.mqtt.ca_cert,
             "mqtt.cert": cfg.mqtt.cert, "mqtt.key": cfg.mqtt.key}
    for keypath, p in files.items():
        if not p.is_file():
            problems.append(f"{keypath}: {p}: no such file")
    for keypath in ("collector.log_key", "mqtt.key"):
        p = files[keypath]
        if p.is_file():
            try:
                check_private_file(p)
            except KeyFileError as e:
                problems.append(f"{keypath}: {e}")
    if cfg.broker.managed and cfg.broker.dir is not None \
            and not (cfg.broker.dir / "mosquitto.conf").is_file():
        problems.append(f"broker.dir: {cfg.broker.dir}/mosquitto.conf: no such file (prepare "
                        f"it with `timeclock-collector broker-config`)")
    if problems:
        raise ConfigError(problems)
