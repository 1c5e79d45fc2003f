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
    # origin = "acme.example/timeclock"         # names the ledger in v2 checkpoints; the same
                                                # for every collector of one ledger (default:
                                                # timeclock.invalid/<log key id>)
    # state_dir = "/var/lib/timeclock"         # largest-checkpoint.note (default: systemd's
                                                # $STATE_DIRECTORY, else beside log_key);
                                                # serve refuses a ledger below it
    # seal_key = "/etc/timeclock/seal.key"     # X25519 (0600): opens sealed envelopes (§8.6);
                                                # its public key goes into enrolment bundles

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
    require_sealed = false                      # true: quarantine plain envelopes (unsealed)

    [checkpoints]                               # optional
    every_entries = 1000
    every_s = 60

    [gaps]                                      # optional
    report_after_s = 300

    [ledger]                                    # optional: when the database is away
    reconnect_initial_ms = 200                  # first reconnect after this, then doubling
    reconnect_max_ms = 2000                     # … up to this between attempts
    outage_max_s = 300                          # away longer: exit non-zero (systemd restarts)
    on_schema_drift = "refuse"                  # or "alert": start, severity-1 alert (D5)
    # kek = "file:/etc/timeclock/ledger.kek"    # encryption at rest (DESIGN.md §8.6): the
                                                # KEK (file: | credential:NAME | pkcs11:…);
                                                # an encrypted ledger needs it to open

    [broker]                                    # optional: run Mosquitto under `serve`
    managed = true                              # start/supervise it (fleet.broker_process)
    dir = "/var/lib/timeclock/broker"           # prepared by `broker-config`/`site`; it
                                                # listens on [mqtt] host:port
    # mosquitto = "/usr/sbin/mosquitto"

    [metrics]                                   # optional: Prometheus /metrics (plain HTTP)
    listen = "127.0.0.1"                        # loopback unless a proxy or firewall guards it
    port = 9464                                 # 0: off (also: no [metrics] table)

    [detectors]                                 # optional: thresholds, docs/operations.md
    offline_after_s = 300                       # "Monitoring" says why each default
    silent_after_s = 600
    skew_max_s = 60
    travel_same_site_s = 60
    travel_other_site_s = 1800

    [reviews]                                   # optional: scheduled reviews signed off in
    daily_grace_s = 86400                       # the system; an overdue one alerts (docs/
    access_grace_s = 259200                     # operations.md "Reviewing alerts and
    sample_size = 25                            # scheduled reviews")
    access_review_days = 90                     # access reviews: every 90 days (0: off)

    [breakglass]                                # optional: break-glass access (operations.md
    max_duration_s = 3600                       # "Break-glass access"; at most 14400)
    review_grace_s = 86400                      # post-use review due a day after it ended

    [policies]                                  # optional: policy acknowledgements
    max_ack_age_days = 365                      # punch-data roles need one this young
    required = ["access-control"]               # default: every published document

    [[webhooks]]                                # optional, any number: signed alert POSTs
    name = "soc"                                # (collector.ingest.detectors_webhooks)
    url = "https://soc.example.org/hooks/timeclock"
    secret_file = "/etc/timeclock/webhook-soc.secret"   # 0600, ≥ 16 bytes: the HMAC key
    # min_severity = 2, attempts = 8, backoff_initial_s = 1, backoff_max_s = 300

    [[witnesses]]                               # optional, any number: external C2SP
    url = "https://witness.auditor.example:8443"  # witnesses (collector.ingest.witness_client)
    name = "auditor.example/witness"
    key = "auditor.example/witness+1a2b3c4d+BAb…"  # its vkey
    ca_cert = "/etc/timeclock/auditor-ca.crt"   # optional: else the system trust store
"""

from __future__ import annotations

import dataclasses
import os
import re
import tomllib
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from collector import CollectorError, ConfigError
from collector.access.breakglass import BreakGlassSettings, read_break_glass_section
from collector.access.gates import GateSettings
from collector.access.oidc import read_oidc_section
from collector.access.policy_docs import PolicySettings, read_policies_section
from collector.api.config import ApiSection, read_api_section
from collector.ingest.checkpoints import validate_origin
from collector.ingest.detectors import DetectorSettings, read_detector_section
from collector.ingest.detectors_webhooks import WebhookEndpoint, load_secret, parse_webhooks
from collector.ingest.metrics import MetricsSection, read_metrics_section
from collector.ingest.witness_client import WitnessEndpoint, parse_witnesses
from collector.records.reviews import ReviewSettings, read_review_section
from wire.config import Section
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
    origin: str | None = None       # None: collector.ingest.checkpoints.default_origin
    state_dir: Path | None = None   # None: the log key's directory
    seal_key: Path | None = None    # X25519 seal key file (wire.sealed); None: cannot open

    @property
    def state_directory(self) -> Path:
        """Where ``largest-checkpoint.note`` lives (collector.service.log_state): ``state_dir``,
        else systemd's ``$STATE_DIRECTORY`` (the unit's ``StateDirectory=``, writable under
        ``ProtectSystem=strict`` where /etc is not), else the log key's directory."""
        if self.state_dir is not None:
            return self.state_dir
        systemd = os.environ.get("STATE_DIRECTORY", "").split(":")[0]
        return Path(systemd) if systemd else self.log_key.parent

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
    require_sealed: bool = False    # plain §4 envelopes are quarantined as ``unsealed``


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
    # Triggers or grants differ from what migrate created (collector.ledger.schema_check):
    # "refuse" to start, or "alert" (start and raise a severity-1 alert).
    on_schema_drift: str = "refuse"
    # The key-encryption key spec (collector.ledger.kek.load_kek): personal bodies are
    # sealed at rest under data keys it wraps (DESIGN.md §8.6). None: none (an encrypted
    # ledger is then refused, naming this option), or $TIMECLOCK_LEDGER_KEK.
    kek: str | None = None


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
    witnesses: tuple[WitnessEndpoint, ...] = ()   # [[witnesses]]
    metrics: MetricsSection | None = None       # [metrics]: /metrics listener (None: off)
    detectors: DetectorSettings = DetectorSettings()   # [detectors]: thresholds
    webhooks: tuple[WebhookEndpoint, ...] = ()   # [[webhooks]]: signed alert webhooks
    reviews: ReviewSettings | None = None       # [reviews]: schedule (None: no overdue alerts)
    breakglass: BreakGlassSettings = BreakGlassSettings()   # [breakglass] (D11)
    policies: PolicySettings = PolicySettings()             # [policies]: acknowledgements


def redact_url(url: str) -> str:
    """A store URL fit for logs: any password (``user:pw@``) replaced by ``***``."""
    url = re.sub(r"(://[^:/@]*):[^@/]*@", r"\1:***@", url)
    return re.sub(r"(password=)[^\s&]+", r"\1***", url)


def _store_url(sec: Section, key: str, base: Path) -> str | None:
    """A store URL (see collector.ledger.open_store); a relative SQLite path is made
    absolute against the config file's directory."""
    v = sec.string(key, required=True, hint="a store URL")
    if v is None:
        return None
    if not (v.startswith(STORE_SCHEMES) or _KV_DSN.match(v)):
        sec.problem(key, "expected a store URL: sqlite:///abs/ledger.db, "
                         "sqlite:relative/ledger.db or postgresql://user@host/db")
        return None
    if v.startswith("sqlite:") and not v.startswith("sqlite://"):
        rel = Path(v[len("sqlite:"):]).expanduser()
        return f"sqlite://{rel if rel.is_absolute() else base / rel}"
    return v


SCHEMA_DRIFT = ("refuse", "alert")
KEK_SPEC = re.compile(r"^(file:|credential:|pkcs11:)\S+$")


def _ledger_section(lg: Section) -> LedgerSection:
    ld = LedgerSection()
    ledger = LedgerSection(
        reconnect_initial_ms=lg.integer("reconnect_initial_ms", ld.reconnect_initial_ms,
                                        lo=10, hi=60_000),
        reconnect_max_ms=lg.integer("reconnect_max_ms", ld.reconnect_max_ms, lo=10, hi=300_000),
        outage_max_s=lg.integer("outage_max_s", ld.outage_max_s, lo=1, hi=7 * 86_400),
        on_schema_drift=lg.choice("on_schema_drift", ld.on_schema_drift, SCHEMA_DRIFT),
        kek=lg.string("kek", pattern=KEK_SPEC, hint='"file:/path", "credential:NAME" or '
                                                    '"pkcs11:module=…;token=…;key=…;pin-file=…"'))
    if ledger.reconnect_max_ms < ledger.reconnect_initial_ms:
        lg.problem("reconnect_max_ms", "must be at least reconnect_initial_ms")
    lg.finish()
    return ledger


read_ledger_section = _ledger_section     # ``[ledger]`` alone (collector.cli.shared.ledger_kek)


def _ingest_section(i: Section, *, sealing: bool) -> IngestSection:
    d = IngestSection()
    ingest = IngestSection(
        batch_max=i.integer("batch_max", d.batch_max, lo=1, hi=100_000),
        batch_wait_ms=i.integer("batch_wait_ms", d.batch_wait_ms, lo=0, hi=10_000),
        max_payload_bytes=i.integer("max_payload_bytes", d.max_payload_bytes, lo=64,
                                    hi=MAX_ENVELOPE_BYTES),
        queue_max=i.integer("queue_max", d.queue_max, lo=1, hi=10_000_000),
        require_sealed=i.boolean("require_sealed", d.require_sealed))
    if ingest.require_sealed and not sealing:
        i.problem("require_sealed", "needs collector.seal_key (without it no sealed envelope "
                                    "can be opened)")
    i.finish()
    return ingest


def parse_config(data: Mapping[str, Any], *, base: Path) -> CollectorConfig:
    """Build the config from decoded TOML; raise ConfigError listing every problem."""
    problems: list[str] = []
    top = Section("", data, problems)

    c = top.section("collector", required=True)
    name = c.string("name", required=True, pattern=NAME_RE)
    store = _store_url(c, "store", base)
    log_key = c.path("log_key", base, required=True)
    origin = c.string("origin", hint="a schema-less URL, e.g. acme.example/timeclock")
    if origin is not None:
        try:
            validate_origin(origin)
        except CollectorError as e:
            c.problem("origin", str(e))
    state_dir = c.path("state_dir", base)
    seal_key = c.path("seal_key", base)
    c.finish()

    m = top.section("mqtt", required=True)
    host = m.string("host", required=True, pattern=HOST_RE)
    port = m.integer("port", lo=1, hi=65535, required=True)
    ca_cert = m.path("ca_cert", base, required=True)
    cert = m.path("cert", base, required=True)
    key = m.path("key", base, required=True)
    keepalive = m.integer("keepalive_s", 30, lo=5, hi=3600)
    expiry = m.integer("session_expiry_s", 7 * 24 * 3600, lo=60, hi=2**32 - 1)
    recv_max = m.integer("receive_maximum", 1000, lo=1, hi=65535)
    m.finish()

    ingest = _ingest_section(top.section("ingest"), sealing=seal_key is not None)

    k = top.section("checkpoints")
    kd = CheckpointSection()
    checkpoints = CheckpointSection(
        every_entries=k.integer("every_entries", kd.every_entries, lo=1, hi=10_000_000),
        every_s=k.integer("every_s", kd.every_s, lo=1, hi=86_400))
    k.finish()

    g = top.section("gaps")
    gaps = GapSection(report_after_s=g.integer("report_after_s", GapSection().report_after_s,
                                               lo=1, hi=30 * 86_400))
    g.finish()

    b = top.section("broker")
    broker = BrokerSection(managed=b.boolean("managed", False),
                           dir=b.path("dir", base),
                           mosquitto=b.string("mosquitto", BrokerSection().mosquitto))
    if broker.managed and broker.dir is None:
        b.problem("dir", "required when broker.managed = true")
    b.finish()

    ledger = _ledger_section(top.section("ledger"))
    api = read_api_section(top.raw("api"), base, problems) if top.has("api") else None
    witnesses = parse_witnesses(top.raw("witnesses"), base, problems)
    metrics = (read_metrics_section(top.section("metrics"), HOST_RE) if top.has("metrics")
               else None)
    detectors = read_detector_section(top.section("detectors"))
    webhooks = parse_webhooks(top.raw("webhooks"), base, problems)
    reviews = read_review_section(top.section("reviews")) if top.has("reviews") else None
    api, gates = _gates(top, _oidc(top, api, problems))
    top.finish()

    if (problems or name is None or store is None or log_key is None or host is None
            or port is None or ca_cert is None or cert is None or key is None):
        raise ConfigError(problems)
    return CollectorConfig(
        collector=CollectorSection(name=name, store=store, log_key=log_key, origin=origin,
                                   state_dir=state_dir, seal_key=seal_key),
        mqtt=MqttSection(host=host, port=port, ca_cert=ca_cert, cert=cert, key=key,
                         keepalive_s=keepalive, session_expiry_s=expiry,
                         receive_maximum=recv_max),
        ingest=ingest, checkpoints=checkpoints, gaps=gaps, broker=broker,
        # the API's /v1/reviews follows the [reviews] schedule too
        api=api if api is None or reviews is None else dataclasses.replace(api, reviews=reviews),
        ledger=ledger, witnesses=witnesses, metrics=metrics, detectors=detectors,
        webhooks=webhooks, reviews=reviews, breakglass=gates.breakglass,
        policies=gates.policies)


def _gates(top: Section, api: ApiSection | None) -> tuple[ApiSection | None, GateSettings]:
    """``[breakglass]`` and ``[policies]``, also handed to the API's request-time gates
    (collector.access.gates)."""
    gates = GateSettings(breakglass=read_break_glass_section(top.section("breakglass")),
                         policies=read_policies_section(top.section("policies")))
    return (None if api is None else dataclasses.replace(api, gates=gates)), gates


def _oidc(top: Section, api: ApiSection | None, problems: list[str]) -> ApiSection | None:
    """``[oidc]``: the identity provider whose JWT access tokens the API accepts
    (collector.access.oidc); handed to the API, so it needs ``[api]``."""
    if not top.has("oidc"):
        return api
    oidc = read_oidc_section(top.raw("oidc"), problems)
    if api is None:
        if not top.has("api"):
            problems.append("oidc: needs an [api] section (its tokens are for the API)")
        return None
    return api if oidc is None else dataclasses.replace(api, oidc=oidc)


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
    if cfg.collector.seal_key is not None:
        files["collector.seal_key"] = cfg.collector.seal_key
    for keypath, p in files.items():
        if not p.is_file():
            problems.append(f"{keypath}: {p}: no such file")
    for keypath in ("collector.log_key", "mqtt.key", "collector.seal_key"):
        p = files.get(keypath, Path())
        if keypath in files and p.is_file():
            try:
                check_private_file(p)
            except KeyFileError as e:
                problems.append(f"{keypath}: {e}")
    for n, hook in enumerate(cfg.webhooks):
        try:
            load_secret(hook.secret_file)
        except CollectorError as e:
            problems.append(f"webhooks[{n}].secret_file: {e}")
    if cfg.broker.managed and cfg.broker.dir is not None \
            and not (cfg.broker.dir / "mosquitto.conf").is_file():
        problems.append(f"broker.dir: {cfg.broker.dir}/mosquitto.conf: no such file (prepare "
                        f"it with `timeclock-collector broker-config`)")
    if problems:
        raise ConfigError(problems)
