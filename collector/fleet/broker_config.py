"""Mosquitto 2 configuration (DESIGN.md §4): ``mosquitto.conf`` and the ACL file, as strings.

:func:`render_mosquitto_conf` and :func:`render_acl` are pure; :func:`write_broker_files`
writes them; :func:`prepare_broker_dir` builds a self-contained broker directory from a CA
directory (copies of the CA certificate, the CRL and the server key/certificate).

Invariants of the rendered configuration:
- one TLS listener and no plain one; TLS 1.2 minimum (OpenSSL prefers 1.3);
- ``require_certificate true`` + ``use_identity_as_username true``: the certificate CN *is*
  the MQTT user, so the ACL's ``%u`` is the device id the CA vouched for;
- ``crlfile`` is always set: a broker that cannot check revocation does not start;
- ``use_username_as_clientid true``: the client id *is* the certificate CN, so no
  certificate can take another identity's client id (kick the collector off, wipe its
  session); a second connection of the same certificate replaces the first;
- the ``timeclock_acl`` plugin (``timeclock_acl.c``, built by :func:`build_acl_plugin`) is
  loaded before any other: it refuses at SUBSCRIBE every filter the ACL file does not let
  the client read (``$share/...`` included; only listed collectors may share), and every
  access of an identity that is neither a device id nor a ``user`` of the ACL file (API
  client certificates, unlisted collectors). Mosquitto 2.0's ACL file alone checks only at
  delivery;
- a device may write only its own ``punches``/``status``/``cosignature``/``inclusion/request``
  /``resume/request`` and read only its own ``acks``, ``checkpoint`` (witness requests,
  wire.witness), ``inclusion`` (proofs of its punches, wire.inclusion) and ``resume`` (the
  signed record of its last seq, wire.resume_answer) and the log checkpoint; each listed
  collector (``collector.<name>``) reads all punches, status, cosignatures and inclusion
  requests, writes all acks, witness requests, inclusion answers and the retained checkpoint;
  nobody else gets anything.
"""

from __future__ import annotations

import contextlib
import hashlib
import ipaddress
import os
import shutil
import subprocess
import tempfile
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

from collector import ConfigError, PKIError
from collector.fleet.pki import CertificateAuthority
from wire import badge_outcome as badge_topics
from wire import inclusion as inclusion_topics
from wire import resume_answer as resume_topics
from wire import topics
from wire import witness as witness_topics
from wire.errors import KeyFileError
from wire.fields import COLLECTOR_ID_RE
from wire.keys import write_private_file, write_public_file

MESSAGE_SIZE_LIMIT = 256 * 1024  # DESIGN.md §4: an envelope is at most 256 KiB
# The default 1000 silently drops QoS 1 messages for a subscriber that falls behind
# (DESIGN.md §4); a fleet backlog after an outage must fit.
DEFAULT_MAX_QUEUED_MESSAGES = 1_000_000
# Per client, outgoing QoS 1 in flight; paho is fastest around 100 (DESIGN.md §4).
DEFAULT_MAX_INFLIGHT_MESSAGES = 100
DEFAULT_AUTOSAVE_INTERVAL_S = 60

ACL_PLUGIN_SOURCE = Path(__file__).with_name("timeclock_acl.c")
ACL_PLUGIN_FILE = "timeclock_acl.so"
# wire.fields.DEVICE_ID_RE as a POSIX extended regular expression (the plugin's regcomp);
# tests/collector/test_broker.py checks that both accept the same names.
DEVICE_ID_ERE = "^[a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?$"


def collector_id(name: str) -> str:
    """``main`` or ``collector.main`` → ``collector.main``; raise unless it is a valid id."""
    cid = name if name.startswith("collector.") else f"collector.{name}"
    if not COLLECTOR_ID_RE.fullmatch(cid):
        raise ConfigError([f"collector {name[:80]!r}: must match {COLLECTOR_ID_RE.pattern} "
                           f"(give the part after 'collector.')"])
    return cid


@dataclass(frozen=True, slots=True)
class BrokerSettings:
    """Everything the rendered configuration depends on. Paths should be absolute."""

    port: int
    cafile: Path
    certfile: Path
    keyfile: Path
    crlfile: Path
    acl_file: Path
    persistence_location: Path
    collectors: tuple[str, ...]
    acl_plugin: Path
    host: str = "127.0.0.1"
    max_queued_messages: int = DEFAULT_MAX_QUEUED_MESSAGES
    max_inflight_messages: int = DEFAULT_MAX_INFLIGHT_MESSAGES
    message_size_limit: int = MESSAGE_SIZE_LIMIT
    autosave_interval_s: int = DEFAULT_AUTOSAVE_INTERVAL_S
    # None: Mosquitto's default (started as root it switches to the `mosquitto` user, which
    # must then be able to read the files). "root" only for CI/test containers.
    user: str | None = None
    log_dest: str = "stderr"
    extra: tuple[str, ...] = field(default=())  # verbatim lines appended (e.g. pid_file)

    def __post_init__(self) -> None:
        problems: list[str] = []
        if not 1 <= self.port <= 65535:
            problems.append(f"port: {self.port} is outside 1..65535")
        try:
            ipaddress.ip_address(self.host)
        except ValueError:
            problems.append(f"host: {self.host!r} is not an IP address to listen on")
        if not self.collectors:
            problems.append("collectors: at least one collector is needed to read punches")
        for c in self.collectors:
            if not COLLECTOR_ID_RE.fullmatch(c):
                problems.append(f"collectors: {c!r} must match {COLLECTOR_ID_RE.pattern}")
        for name in ("max_queued_messages", "max_inflight_messages", "message_size_limit",
                     "autosave_interval_s"):
            if getattr(self, name) < 1:
                problems.append(f"{name}: must be ≥ 1")
        for name in ("cafile", "certfile", "keyfile", "crlfile", "acl_file",
                     "persistence_location", "acl_plugin"):
            value = str(getattr(self, name))
            if any(ch in value for ch in "\n\r") or value != value.strip():
                problems.append(f"{name}: path {value!r} cannot be written to mosquitto.conf")
        if problems:
            raise ConfigError(problems)


def render_acl(collectors: Sequence[str]) -> str:
    """The ACL file. ``collectors`` are collector ids (``collector.<name>``)."""
    lines = [
        "# timeclock broker ACL (DESIGN.md §4). Generated by `timeclock-collector broker-config`;",
        "# regenerate instead of editing. %u is the certificate CN (use_identity_as_username).",
        "",
        "# Every device: its own punches, status (also its will) and cosignatures, its own",
        "# receipts and witness requests, and the log checkpoint. Collector ids contain a",
        "# dot, so no %u below names a device.",
        f"pattern write {topics.PREFIX}%u/punches",
        f"pattern write {topics.PREFIX}%u/status",
        f"pattern write {witness_topics.cosignature_topic('%u')}",
        f"pattern write {inclusion_topics.request_topic('%u')}",
        f"pattern write {resume_topics.request_topic('%u')}",
        f"pattern write {topics.config_result('%u')}",
        f"pattern read {topics.PREFIX}%u/acks",
        f"pattern read {witness_topics.checkpoint_topic('%u')}",
        f"pattern read {inclusion_topics.answer_topic('%u')}",
        f"pattern read {resume_topics.answer_topic('%u')}",
        f"pattern read {topics.config('%u')}",
        f"pattern read {badge_topics.topic('%u')}",
        f"pattern read {topics.CHECKPOINT}",
    ]
    for cid in collectors:
        if not COLLECTOR_ID_RE.fullmatch(cid):
            raise ConfigError([f"collectors: {cid!r} must match {COLLECTOR_ID_RE.pattern}"])
        lines += [
            "",
            f"user {cid}",
            # Also grants $share/collectors/... subscriptions (checked on the plain filter).
            f"topic read {topics.ALL_PUNCHES}",
            f"topic read {topics.ALL_STATUS}",
            f"topic read {witness_topics.ALL_COSIGNATURES}",
            f"topic read {inclusion_topics.ALL_INCLUSION_REQUESTS}",
            f"topic write {inclusion_topics.answer_topic('+')}",
            f"topic read {resume_topics.ALL_RESUME_REQUESTS}",
            f"topic write {resume_topics.answer_topic('+')}",
            f"topic write {topics.config('+')}",
            f"topic read {topics.ALL_CONFIG_RESULTS}",
            f"topic write {topics.PREFIX}+/acks",
            f"topic write {badge_topics.ALL_TOPICS}",
            f"topic write {witness_topics.ALL_CHECKPOINT_REQUESTS}",
            f"topic readwrite {topics.CHECKPOINT}",
        ]
    return "\n".join(lines) + "\n"


def render_mosquitto_conf(s: BrokerSettings) -> str:
    """The complete ``mosquitto.conf`` for Mosquitto 2.0."""
    persistence = str(s.persistence_location).rstrip("/") + "/"  # Mosquitto wants the slash
    lines = [
        "# timeclock broker (DESIGN.md §4). Generated by `timeclock-collector broker-config`;",
        "# regenerate instead of editing.",
        "per_listener_settings false",
        "allow_anonymous false",
        f"acl_file {s.acl_file}",
        # First plugin: its SUBSCRIBE answer is final; it defers publish/read to the ACL file.
        f"plugin {s.acl_plugin}",
        f"plugin_opt_acl_file {s.acl_file}",
        f"plugin_opt_device_re {DEVICE_ID_ERE}",
        "",
        "persistence true",
        f"persistence_location {persistence}",
        f"autosave_interval {s.autosave_interval_s}",
        "",
        f"max_queued_messages {s.max_queued_messages}",
        "max_queued_bytes 0",
        f"max_inflight_messages {s.max_inflight_messages}",
        f"message_size_limit {s.message_size_limit}",
        # ~40 ms → ~2 ms per mTLS connect (DESIGN.md §4): a fleet reconnecting after a restart.
        "set_tcp_nodelay true",
        "",
        f"log_dest {s.log_dest}",
        "log_type error",
        "log_type warning",
        "log_type notice",
        "log_type information",
        "connection_messages true",
    ]
    if s.user is not None:
        lines.append(f"user {s.user}")
    lines += [
        "",
        # The only listener: no plain-TCP port exists.
        f"listener {s.port} {s.host}",
        "protocol mqtt",
        "tls_version tlsv1.2",
        f"cafile {s.cafile}",
        f"certfile {s.certfile}",
        f"keyfile {s.keyfile}",
        f"crlfile {s.crlfile}",
        "require_certificate true",
        "use_identity_as_username true",
        "use_username_as_clientid true",
    ]
    lines += list(s.extra)
    return "\n".join(lines) + "\n"


def _cache_dir() -> Path:
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base) / "timeclock"


def build_acl_plugin(out: Path, *, cc: str | None = None) -> Path:
    """Compile ``timeclock_acl.c`` and copy the shared object to ``out`` (0644).

    Built once per source version into ``$XDG_CACHE_HOME/timeclock`` (the compiler runs only
    when the source changed); needs a C compiler (``cc``, or ``$CC``) and nothing else: the
    source declares the Mosquitto 2.0 plugin ABI itself. Raises ConfigError when it cannot.
    """
    source = ACL_PLUGIN_SOURCE.read_bytes()
    digest = hashlib.sha256(source).hexdigest()[:16]
    cached = _cache_dir() / f"timeclock_acl-{digest}.so"
    compiler = cc or os.environ.get("CC") or "cc"
    try:
        cached.parent.mkdir(parents=True, exist_ok=True)
        if not os.access(cached.parent, os.W_OK):
            raise PermissionError(cached.parent)
    except OSError:
        # A service account without a writable home: build beside the output instead.
        cached = Path(out).parent / f".timeclock_acl-{digest}.so"
    try:
        if not cached.is_file():
            fd, tmp = tempfile.mkstemp(dir=cached.parent, suffix=".so.tmp")
            os.close(fd)
            try:
                try:
                    r = subprocess.run(  # noqa: S603 -- fixed arguments, no shell
                        [compiler, "-O2", "-shared", "-fPIC", "-o", tmp,
                         str(ACL_PLUGIN_SOURCE)],
                        capture_output=True, text=True, timeout=120, check=False)
                except FileNotFoundError as e:
                    raise ConfigError([f"broker ACL plugin: no C compiler {compiler!r} to "
                                       f"build {ACL_PLUGIN_SOURCE} (install gcc, or set $CC)"]
                                      ) from e
                if r.returncode != 0:
                    raise ConfigError([f"broker ACL plugin: {compiler} failed to build "
                                       f"{ACL_PLUGIN_SOURCE}: {r.stderr.strip()[:2000]}"])
                os.chmod(tmp, 0o644)
                os.replace(tmp, cached)  # concurrent builders: the last rename wins, same bytes
            finally:
                with contextlib.suppress(FileNotFoundError):
                    os.unlink(tmp)
        write_public_file(Path(out), cached.read_bytes())
    except (OSError, subprocess.SubprocessError) as e:
        raise ConfigError([f"broker ACL plugin: cannot build or install {out}: {e}"]) from e
    return Path(out)


def write_broker_files(s: BrokerSettings, config_file: Path) -> tuple[Path, Path]:
    """Write ``mosquitto.conf`` to ``config_file`` and the ACL to ``s.acl_file``; create the
    persistence directory (0700). Returns (config_file, acl_file)."""
    for path, text in ((s.acl_file, render_acl(s.collectors)),
                       (config_file, render_mosquitto_conf(s))):
        write_public_file(path, text.encode("utf-8"))
    s.persistence_location.mkdir(parents=True, exist_ok=True, mode=0o700)
    return config_file, s.acl_file


@dataclass(frozen=True, slots=True)
class BrokerFiles:
    """A prepared broker directory."""

    directory: Path
    config_file: Path
    settings: BrokerSettings


def _copy_key(src: Path, dst: Path) -> None:
    data = src.read_bytes()
    if dst.exists():
        if dst.read_bytes() == data:
            return
        raise PKIError(f"{dst}: exists with a different key; refusing to overwrite it")
    try:
        write_private_file(dst, data)
    except KeyFileError as e:
        raise PKIError(str(e)) from e


def prepare_broker_dir(ca: CertificateAuthority, out: Path, *, port: int,
                       collectors: Sequence[str], host: str = "127.0.0.1",
                       server_name: str = "broker", **options: object) -> BrokerFiles:
    """Build ``out`` = mosquitto.conf, acl, timeclock_acl.so, ca.crt, crl.pem, server.crt,
    server.key (0600), data/. ``options`` are further :class:`BrokerSettings` fields (user,
    max_queued_messages…).

    The CRL is a copy: after a revocation, refresh it (``ca crl --out OUT/crl.pem``) and make
    the broker load it (certs/README.md, "Revocation and Mosquitto").
    """
    out = Path(out).absolute()
    key_src, cert_src = ca.server_files(server_name)
    if not cert_src.is_file() or not key_src.is_file():
        raise PKIError(f"{cert_src}: no server certificate; issue one first with: "
                       f"timeclock-collector ca issue-server {ca.directory} --dns ... --ip ...")
    if not ca.crl_file.is_file():
        raise PKIError(f"{ca.crl_file}: no CRL; write one with: timeclock-collector ca crl")
    try:
        out.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(ca.cert_file, out / "ca.crt")
        shutil.copyfile(ca.crl_file, out / "crl.pem")
        shutil.copyfile(cert_src, out / "server.crt")
        _copy_key(key_src, out / "server.key")
        build_acl_plugin(out / ACL_PLUGIN_FILE)
    except OSError as e:
        raise PKIError(f"cannot prepare broker directory {out}: {e}") from e
    settings = BrokerSettings(
        port=port, host=host, cafile=out / "ca.crt", certfile=out / "server.crt",
        keyfile=out / "server.key", crlfile=out / "crl.pem", acl_file=out / "acl",
        persistence_location=out / "data", acl_plugin=out / ACL_PLUGIN_FILE,
        collectors=tuple(collector_id(c) for c in collectors),
        **options)  # type: ignore[arg-type]
    config_file, _ = write_broker_files(settings, out / "mosquitto.conf")
    return BrokerFiles(out, config_file, settings)
