"""The managed broker: Mosquitto run and supervised by the collector (single-box default).

``prepare_managed_broker`` renders the broker directory of fleet.broker_config plus what the
supervisor and revocation need: a pid file, a log file, and (when this build ships it) the
dynamic-security plugin, which the collectors may drive on ``$CONTROL/dynamic-security/v1``.
:class:`ManagedBroker` starts Mosquitto, restarts it with backoff when it dies, stops it on
shutdown and can SIGHUP it (CRL reload). :class:`BrokerControl` does the same from another
process (``timeclock-collector device revoke``) through the pid and log files.

Revocation (measured on Mosquitto 2.0.11, certs/README.md "Cutting off a connected clock"):
SIGHUP re-reads ``crlfile`` for NEW connections only; a clock already connected stays
connected. :func:`cut_off` therefore (1) installs the new CRL and SIGHUPs, waits until the
reload is logged and a fresh connection completes (so the reload is done), then (2) drops
the revoked identities' sessions: with the plugin, ``createClient`` + ``disableClient``
(the plugin kicks every connection whose user name, i.e. certificate CN, matches; the clock's
reconnection then fails the TLS handshake against the new CRL); without it, a broker
restart (persistence keeps queued messages; every client reconnects with backoff).

The control client has its own identity, ``collector.broker-control`` (``control.crt`` and
``control.key``, 0600, issued into the broker directory when it is prepared): the broker
forces every client id to its certificate CN (broker_config), so a control client using the
collector's certificate would replace the running collector's session.

Invariants: the dynamic-security plugin never decides access here: timeclock_acl answers
SUBSCRIBE, then the ACL file answers publish/read and its answer is final (checked in
tests/e2e), and the dynamic-security default access is "deny"; only collector identities and
the control identity may publish to the control topic; the supervisor never restarts a
broker it was asked to stop or pause.
"""

from __future__ import annotations

import contextlib
import ctypes
import datetime as dt
import json
import logging
import os
import secrets
import shutil
import signal
import socket
import ssl
import subprocess
import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any

from cryptography import x509

from collector import CollectorError, PKIError
from collector.fleet.broker_config import BrokerFiles, prepare_broker_dir
from collector.fleet.pki import CertificateAuthority
from wire.errors import WireError
from wire.tls import client_context
from wire.topics import ALL_CONFIG_RESULTS, ALL_STATUS, config

log = logging.getLogger("timeclock.broker")

MOSQUITTO = "/usr/sbin/mosquitto"
DYNSEC_PLUGINS = (Path("/usr/lib/x86_64-linux-gnu/mosquitto_dynamic_security.so"),
                  Path("/usr/lib/aarch64-linux-gnu/mosquitto_dynamic_security.so"),
                  Path("/usr/lib/arm-linux-gnueabihf/mosquitto_dynamic_security.so"),
                  Path("/usr/lib/mosquitto_dynamic_security.so"))
CONTROL_TOPIC = "$CONTROL/dynamic-security/v1"
PID_FILE = "mosquitto.pid"
LOG_FILE = "mosquitto.log"
DYNSEC_FILE = "dynamic-security.json"
CONTROL_IDENTITY = "collector.broker-control"
CONTROL_CERT = "control.crt"
CONTROL_KEY = "control.key"
FORCED_CLIENT_ID = "use_username_as_clientid true"
CONTROL_RENEW_BEFORE = dt.timedelta(days=30)   # re-preparing the directory renews it then
RELOADED = "Reloading config."
BACKOFF_MIN_S = 0.2
BACKOFF_MAX_S = 30.0
STABLE_S = 30.0   # a broker that ran this long restarts without backoff after a crash


class BrokerError(CollectorError):
    """The managed broker could not be prepared, started, reloaded or controlled."""


def dynsec_plugin() -> Path | None:
    """The dynamic-security plugin of this Mosquitto build, if installed."""
    return next((p for p in DYNSEC_PLUGINS if p.is_file()), None)


def prepare_managed_broker(ca: CertificateAuthority, directory: Path, *, port: int,
                           collectors: Sequence[str], host: str = "127.0.0.1",
                           use_plugin: bool = True, **options: Any) -> BrokerFiles:
    """Write the broker directory (see the module doc); returns broker_config's files."""
    directory = Path(directory).absolute()
    plugin = dynsec_plugin() if use_plugin else None
    extra = [f"pid_file {directory / PID_FILE}", f"log_dest file {directory / LOG_FILE}"]
    if plugin is not None:
        extra += [f"plugin {plugin}", f"plugin_opt_config_file {directory / DYNSEC_FILE}"]
    files = prepare_broker_dir(ca, directory, port=port, collectors=collectors, host=host,
                               extra=tuple(extra), **options)
    if plugin is not None:
        lines = ["", "# Revocation: collectors and the broker's control identity may drive the",
                 "# dynamic-security plugin (disableClient drops a revoked clock's live session)."]
        for cid in (*files.settings.collectors, CONTROL_IDENTITY):
            lines += [f"user {cid}", f"topic write {CONTROL_TOPIC}",
                      f"topic read {CONTROL_TOPIC}/response"]
        # `device list` reads the retained statuses as the control identity.
        lines.append(f"topic read {ALL_STATUS}")
        # `device configure` publishes a clock's signed change and reads its result as it.
        lines += [f"topic write {config('+')}", f"topic read {ALL_CONFIG_RESULTS}"]
        with open(files.settings.acl_file, "a", encoding="utf-8") as f:
            f.write("\n".join(lines) + "\n")
        dyn = directory / DYNSEC_FILE
        if not dyn.exists():
            # Default deny: access is the ACL file's decision, never the plugin's.
            doc = {"clients": [], "groups": [], "roles": [],
                   "defaultACLAccess": {"publishClientSend": False,
                                        "publishClientReceive": False,
                                        "subscribe": False, "unsubscribe": False}}
            fd = os.open(dyn, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
            with os.fdopen(fd, "w") as f:
                json.dump(doc, f)
        _ensure_control_identity(ca, directory)
    return files


def _ensure_control_identity(ca: CertificateAuthority, directory: Path) -> None:
    """Issue ``collector.broker-control`` into the broker directory unless it is there. A CA
    whose key cannot be used here (passphrase not given) leaves revocation on the restart
    path, with a warning."""
    key, cert = directory / CONTROL_KEY, directory / CONTROL_CERT
    now = dt.datetime.now(dt.UTC)
    if key.is_file() and cert.is_file():
        try:
            expires = x509.load_pem_x509_certificate(cert.read_bytes()).not_valid_after_utc
        except ValueError:
            expires = now
        if expires - now > CONTROL_RENEW_BEFORE:
            return
    # Missing, expiring or unreadable: a new one (issued beside, then renamed over the old
    # pair, so a CA key that cannot be used here leaves the old one in place).
    new_key, new_cert = key.with_name(f".{CONTROL_KEY}.new"), cert.with_name(f".{CONTROL_CERT}.new")
    for p in (new_key, new_cert):
        p.unlink(missing_ok=True)
    try:
        ca.issue_client(CONTROL_IDENTITY, new_key, new_cert, kind="collector", now=now)
        os.replace(new_key, key)
        os.replace(new_cert, cert)
    except PKIError as e:
        log.warning("no broker control identity (%s): `device revoke` will restart the "
                    "broker to cut a live session", e)


def uses_forced_client_ids(directory: Path) -> bool:
    try:
        text = (Path(directory) / "mosquitto.conf").read_text(encoding="utf-8")
    except OSError:
        return False
    return FORCED_CLIENT_ID in text.splitlines()


def uses_plugin(directory: Path) -> bool:
    try:
        text = (Path(directory) / "mosquitto.conf").read_text(encoding="utf-8")
    except OSError:
        return False
    return any(line.startswith("plugin ") for line in text.splitlines())


try:
    _PRCTL: Any = ctypes.CDLL(None, use_errno=True).prctl   # resolved before any fork
except (OSError, AttributeError):
    _PRCTL = None


def _die_with_parent() -> None:
    """In the child: get SIGTERM if the supervising thread dies (even by SIGKILL), so a
    crashed collector never leaves an orphan broker holding the port."""
    if _PRCTL is not None:
        _PRCTL(1, int(signal.SIGTERM))  # PR_SET_PDEATHSIG; one syscall, no locks taken


def _log_count(path: Path, needle: str) -> int:
    try:
        return path.read_text(encoding="utf-8", errors="replace").count(needle)
    except FileNotFoundError:
        return 0


def _listening(host: str, port: int) -> bool:
    try:
        with socket.create_connection((host, port), timeout=0.5):
            return True
    except OSError:
        return False


def _wait(predicate: Any, timeout_s: float, what: str) -> None:
    deadline = time.monotonic() + timeout_s
    while not predicate():
        if time.monotonic() > deadline:
            raise BrokerError(f"the broker did not {what} within {timeout_s:g} s")
        time.sleep(0.01)


def terminate(p: subprocess.Popen[Any], timeout_s: float) -> None:
    """SIGTERM and wait; SIGKILL if it has not exited within ``timeout_s``."""
    if p.poll() is None:
        p.terminate()
        try:
            p.wait(timeout_s)
        except subprocess.TimeoutExpired:
            p.kill()
            p.wait(timeout_s)


class ManagedBroker:
    """One supervised Mosquitto process for a prepared directory."""

    def __init__(self, directory: Path, *, host: str, port: int,
                 output: IO[bytes] | None = None, mosquitto: str = MOSQUITTO) -> None:
        self.directory = Path(directory).absolute()
        self.config_file = self.directory / "mosquitto.conf"
        self.log_file = self.directory / LOG_FILE
        self.host = host
        self.port = port
        self._output = output
        self._mosquitto = mosquitto
        self._proc: subprocess.Popen[bytes] | None = None
        self._lock = threading.Lock()
        self._want_running = False
        self._closing = threading.Event()
        self._thread: threading.Thread | None = None
        self.restarts = 0
        if not self.config_file.is_file():
            raise BrokerError(f"{self.config_file}: no broker configuration; prepare it with "
                              f"`timeclock-collector broker-config` or `site`")
        if shutil.which(self._mosquitto) is None:
            raise BrokerError(f"{self._mosquitto}: Mosquitto is not installed "
                              f"(apt-get install mosquitto, or scripts/bootstrap.sh)")

    @property
    def pid(self) -> int | None:
        p = self._proc
        return p.pid if p is not None and p.poll() is None else None

    @property
    def running(self) -> bool:
        return self.pid is not None

    def _spawn(self) -> None:
        out = self._output if self._output is not None else None
        self._proc = subprocess.Popen(  # noqa: S603 -- fixed binary, our own config file
            [self._mosquitto, "-c", str(self.config_file)], stdin=subprocess.DEVNULL,
            stdout=out, stderr=out, start_new_session=True,
            preexec_fn=_die_with_parent)  # noqa: PLW1509 -- one prctl, resolved pre-fork

    def start(self, timeout_s: float = 10.0) -> None:
        """Start Mosquitto and the supervisor; return once the listener accepts TCP."""
        with self._lock:
            self._want_running = True
            if not self.running:
                self._spawn()
        if self._thread is None:
            self._thread = threading.Thread(target=self._supervise, name="broker-supervisor",
                                            daemon=True)
            self._thread.start()
        self.wait_ready(timeout_s)
        log.info("broker running on %s:%d (pid %s)", self.host, self.port, self.pid)

    def wait_ready(self, timeout_s: float = 10.0) -> None:
        def ready() -> bool:
            p = self._proc
            if p is not None and p.poll() is not None and not self._want_running:
                raise BrokerError(f"mosquitto exited with {p.returncode}; see {self.log_file}")
            return self.running and _listening(self.host, self.port)
        _wait(ready, timeout_s, f"listen on {self.host}:{self.port}")

    def _terminate(self, timeout_s: float) -> None:
        p = self._proc
        if p is None:
            return
        terminate(p, timeout_s)   # SIGTERM: Mosquitto saves its persistence file
        self._proc = None

    def pause(self, timeout_s: float = 10.0) -> None:
        """Stop the broker (clean SIGTERM) and do not restart it until :meth:`start`."""
        with self._lock:
            self._want_running = False
            self._terminate(timeout_s)

    def kill(self) -> None:
        """SIGKILL (a crash): the supervisor restarts it."""
        p = self._proc
        if p is not None and p.poll() is None:
            p.kill()

    def restart(self, timeout_s: float = 10.0) -> None:
        """Stop and start at once: drops every session (clients reconnect)."""
        with self._lock:
            self._want_running = False
            self._terminate(timeout_s)
            self._want_running = True
            self._spawn()
        self.wait_ready(timeout_s)

    def reload(self, timeout_s: float = 5.0) -> None:
        """SIGHUP (re-read the CRL); return once the reload is logged and it listens."""
        before = _log_count(self.log_file, RELOADED)
        pid = self.pid
        if pid is None:
            raise BrokerError("the broker is not running")
        os.kill(pid, signal.SIGHUP)
        _wait(lambda: _log_count(self.log_file, RELOADED) > before, timeout_s,
              "log a reload after SIGHUP")
        self.wait_ready(timeout_s)

    def stop(self, timeout_s: float = 10.0) -> None:
        """Stop the broker and the supervisor."""
        self._closing.set()
        self.pause(timeout_s)
        if self._thread is not None:
            self._thread.join(timeout_s)
            self._thread = None

    def _supervise(self) -> None:
        backoff = BACKOFF_MIN_S
        started = time.monotonic()
        while not self._closing.wait(0.1):
            with self._lock:
                p = self._proc
                if not self._want_running or p is None or p.poll() is None:
                    continue
                code = p.returncode
            ran = time.monotonic() - started
            if ran >= STABLE_S:
                backoff = BACKOFF_MIN_S
            log.error("mosquitto exited with %s after %.1f s; restarting in %.1f s", code, ran,
                      backoff)
            if self._closing.wait(backoff):
                return
            backoff = min(backoff * 2, BACKOFF_MAX_S)
            with self._lock:
                if self._want_running and (self._proc is None or self._proc.poll() is not None):
                    self._spawn()
                    self.restarts += 1
                    started = time.monotonic()


@dataclass(frozen=True, slots=True)
class CutOff:
    """What :func:`cut_off` did: ``method`` is ``disable-client`` or ``restart``."""

    method: str
    seconds: float


class BrokerControl:
    """A managed broker seen from another process: its directory, pid file and log file."""

    def __init__(self, directory: Path) -> None:
        self.directory = Path(directory).absolute()
        self.log_file = self.directory / LOG_FILE

    def pid(self) -> int:
        try:
            pid = int((self.directory / PID_FILE).read_text().strip())
            os.kill(pid, 0)
        except (OSError, ValueError) as e:
            raise BrokerError(f"no running broker for {self.directory} (pid file "
                              f"{PID_FILE}: {e})") from e
        return pid

    def install_crl(self, crl_file: Path) -> None:
        tmp = self.directory / ".crl.pem.tmp"
        shutil.copyfile(crl_file, tmp)
        os.chmod(tmp, 0o644)
        os.replace(tmp, self.directory / "crl.pem")

    def reload(self, timeout_s: float = 5.0) -> None:
        before = _log_count(self.log_file, RELOADED)
        os.kill(self.pid(), signal.SIGHUP)
        _wait(lambda: _log_count(self.log_file, RELOADED) > before, timeout_s,
              "log a reload after SIGHUP")

    def control_client(self) -> tuple[str, int, ssl.SSLContext] | None:
        """(host, port, TLS context) of the directory's control identity, if it has one."""
        d = self.directory
        if not (d / CONTROL_CERT).is_file() or not (d / CONTROL_KEY).is_file():
            return None
        try:
            text = (d / "mosquitto.conf").read_text(encoding="utf-8")
            listener = next(ln.split() for ln in text.splitlines()
                            if ln.startswith("listener "))
            port = int(listener[1])
            host = listener[2] if len(listener) > 2 else "127.0.0.1"
            ctx = client_context(d / "ca.crt", d / CONTROL_CERT, d / CONTROL_KEY)
        except (OSError, StopIteration, ValueError, IndexError, WireError) as e:
            raise BrokerError(f"{d}: unusable broker control identity: {e}") from e
        if host in ("0.0.0.0", "::"):  # noqa: S104 -- a listen address, not a bind here
            host = "127.0.0.1"
        return host, port, ctx

    def restart(self, timeout_s: float = 15.0) -> None:
        """SIGTERM the broker; its supervisor (``serve``/``site``) starts it again."""
        old = self.pid()
        os.kill(old, signal.SIGTERM)

        def new_pid() -> bool:
            with contextlib.suppress(BrokerError):
                return self.pid() != old
            return False
        _wait(new_pid, timeout_s, "come back after a restart (is it supervised?)")


def disable_clients(host: str, port: int, context: ssl.SSLContext, identity: str,
                    usernames: Sequence[str], *, timeout_s: float = 5.0) -> None:
    """Ask the dynamic-security plugin to disable (and so disconnect) ``usernames``."""
    import paho.mqtt.client as mqtt  # noqa: PLC0415 -- only revocation needs it here
    from paho.mqtt.enums import CallbackAPIVersion  # noqa: PLC0415

    done = threading.Event()
    subscribed = threading.Event()
    answers: list[dict[str, Any]] = []
    # The broker forces the client id to the certificate CN anyway (use_username_as_clientid).
    c = mqtt.Client(CallbackAPIVersion.VERSION2, client_id=identity, protocol=mqtt.MQTTv5)
    c.tls_set_context(context)

    def on_message(_c: mqtt.Client, _u: Any, msg: mqtt.MQTTMessage) -> None:
        with contextlib.suppress(ValueError):
            answers.extend(json.loads(msg.payload).get("responses", []))
        if sum(1 for a in answers if a.get("command") == "disableClient") >= len(usernames):
            done.set()

    c.on_message = on_message
    c.on_subscribe = lambda *_a: subscribed.set()
    try:
        c.connect(host, port, keepalive=10)
    except (OSError, ssl.SSLError) as e:
        raise BrokerError(f"cannot connect to the broker as {identity}: {e}") from e
    c.loop_start()
    try:
        c.subscribe(f"{CONTROL_TOPIC}/response", qos=1)
        if not subscribed.wait(timeout_s):
            raise BrokerError("the broker did not confirm the control subscription")
        commands: list[dict[str, Any]] = []
        for u in usernames:
            # The password is never used (clients log in with certificates) but required.
            commands += [{"command": "createClient", "username": u,
                          "password": secrets.token_urlsafe(24)},
                         {"command": "disableClient", "username": u}]
        c.publish(CONTROL_TOPIC, json.dumps({"commands": commands}), qos=1)
        if not done.wait(timeout_s):
            raise BrokerError(f"the dynamic-security plugin did not answer within "
                              f"{timeout_s:g} s (is {identity} allowed on {CONTROL_TOPIC}?)")
        errors = [a for a in answers if a.get("command") == "disableClient" and a.get("error")]
        if errors:
            raise BrokerError(f"disableClient failed: {errors}")
    finally:
        c.disconnect()
        c.loop_stop()


def cut_off(control: BrokerControl, crl_file: Path, identities: Sequence[str], *,
            host: str, port: int, context: ssl.SSLContext | None, identity: str | None,
            timeout_s: float = 5.0) -> CutOff:
    """Make the broker refuse ``identities`` now, connected or not (see the module doc)."""
    t0 = time.monotonic()
    control.install_crl(crl_file)
    control.reload(timeout_s)
    own = control.control_client() if uses_plugin(control.directory) else None
    if own is not None:
        # The control client's CONNACK comes after the reload (Mosquitto is single-threaded),
        # so a clock kicked now reconnects against the new CRL.
        try:
            disable_clients(own[0], own[1], own[2], CONTROL_IDENTITY, identities,
                            timeout_s=timeout_s)
            return CutOff("disable-client", time.monotonic() - t0)
        except BrokerError as e:   # e.g. an expired control certificate: restart instead
            log.warning("cutting the session with %s failed (%s); restarting the broker",
                        CONTROL_IDENTITY, e)
    if context is not None and identity is not None and uses_plugin(control.directory) \
            and not uses_forced_client_ids(control.directory):
        # An older broker directory (client ids not forced): the collector's certificate
        # may connect a second time under another client id.
        disable_clients(host, port, context, f"{identity}.ctl-{secrets.token_hex(4)}",
                        identities, timeout_s=timeout_s)
        return CutOff("disable-client", time.monotonic() - t0)
    control.restart(timeout_s * 3)
    return CutOff("restart", time.monotonic() - t0)
