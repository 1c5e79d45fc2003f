"""``timeclock-collector serve``: run the ingest pipeline (MQTT → verify → ledger → receipts)."""

from __future__ import annotations

import argparse
import errno
import grp
import logging
import os
import pwd
import socket
import threading
import time
from pathlib import Path

from collector import CollectorError
from collector.fleet.broker_process import BrokerError, ManagedBroker
from collector.ingest.checkpoints import load_log_key
from collector.ledger import open_store
from collector.service.config import CollectorConfig, check_files, load_config, redact_url
from collector.service.runner import CollectorService, IdentityLock, preflight

# The managed broker restarted this often within CRASH_WINDOW_S: a crash loop, not a hiccup.
CRASH_RESTARTS = 4
CRASH_WINDOW_S = 300.0

log = logging.getLogger("timeclock.collector")

EPILOG = """\
examples:
  timeclock-collector serve --check-config /etc/timeclock/collector.toml
  timeclock-collector serve --config /etc/timeclock/collector.toml

The config is TOML (see docs/operations.md, or collector/service/config.py for every key):
  [collector] name = "a", store = "sqlite:///var/lib/timeclock/ledger.db",
              log_key = "/etc/timeclock/log.key"
  [mqtt]      host, port, ca_cert, cert, key     (the collector's mTLS identity collector.<name>)
  [ingest]    batch_max, batch_wait_ms, max_payload_bytes, queue_max        (optional)
  [checkpoints] every_entries, every_s     [gaps] report_after_s            (optional)
  [broker]    managed = true, dir = "/var/lib/timeclock/broker"   (optional: serve starts
              Mosquitto from that directory on [mqtt] host:port, restarts it if it dies and
              stops it on shutdown; see collector/fleet/broker_process.py)
  [api]       cert, key, listen = "127.0.0.1", port = 8443, client_ca, crl   (optional: also
              serve the HTTPS API for HR, payroll and auditors; see docs/api.md)

One serve per collector identity: a second one on the same host refuses to start (a lock in
the state directory); one on another host stops itself when the broker reports that it took
over the running collector's MQTT session.

serve runs until SIGTERM or Ctrl-C, then finishes the batch in flight (commit, receipts,
acknowledgements) and disconnects; messages not yet processed stay with the broker.
"""


def register(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    p = sub.add_parser(
        "serve", help="run the collector: verify punches from MQTT into the ledger",
        description="Receive signed punches over mTLS MQTT, verify them (size, strict "
                    "decoding, device, registered key, signature), record them or quarantine "
                    "them in the ledger, and send signed receipts.",
        epilog=EPILOG, formatter_class=argparse.RawDescriptionHelpFormatter)
    g = p.add_mutually_exclusive_group(required=True)
    g.add_argument("--config", type=Path, metavar="FILE", help="run with this TOML config")
    g.add_argument("--check-config", type=Path, metavar="FILE",
                   help="validate FILE (keys, files, key permissions) and exit")
    p.set_defaults(func=run)


def _account_name(uid: int) -> str:
    try:
        return pwd.getpwuid(uid).pw_name
    except KeyError:
        return str(uid)


def check_broker_dir(directory: Path, *, euid: int | None = None) -> None:
    """Refuse, in one line that says what to do, a managed broker directory whose files the
    account Mosquitto will run as does not own (started as root, Mosquitto switches to the
    config's ``user``, else to ``mosquitto``; otherwise it stays the account of serve)."""
    euid = os.geteuid() if euid is None else euid
    conf = directory / "mosquitto.conf"
    try:
        lines = conf.read_text(encoding="utf-8").splitlines()
    except OSError as e:
        raise CollectorError(f"{conf}: {e.strerror}") from e
    if euid == 0:
        user = next((ln.split(None, 1)[1].strip() for ln in lines if ln.startswith("user ")),
                    "mosquitto")
        try:
            uid = pwd.getpwnam(user).pw_uid
        except KeyError as e:
            raise CollectorError(f"{conf}: user {user}: no such account; regenerate it with "
                                 f"`timeclock-collector init --user ACCOUNT`") from e
        why = f"serve runs as root, so Mosquitto switches to {user}"
    else:
        uid, user = euid, _account_name(euid)
        why = f"serve (and its Mosquitto) runs as {user}"
    if uid != euid:
        gids = {g.gr_gid for g in grp.getgrall() if user in g.gr_mem} | {
            pwd.getpwnam(user).pw_gid}
        for parent in directory.absolute().parents:
            st = parent.stat()
            if not (st.st_uid == uid or st.st_mode & 0o001
                    or (st.st_gid in gids and st.st_mode & 0o010)):
                raise CollectorError(
                    f"{parent} is not searchable by {user}, so Mosquitto ({why}) cannot reach "
                    f"{directory}: chmod o+x {parent}, or keep the broker directory under "
                    f"/var/lib/timeclock")
    for path in (directory, directory / "server.key", directory / "data"):
        if path.exists() and path.stat().st_uid != uid:
            owner = _account_name(path.stat().st_uid)
            raise CollectorError(
                f"{path} is owned by {owner}, but {why}: run `timeclock-collector init "
                f"--user {user}` (or chown -R {user}: {directory})")


def check_port_free(host: str, port: int, what: str) -> None:
    """A one-line error when something already listens on ``host:port``."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    with socket.socket(family, socket.SOCK_STREAM) as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)   # as Mosquitto and aiohttp
        try:
            s.bind((host, port))
        except OSError as e:
            if e.errno != errno.EADDRINUSE:
                return           # not ours to judge (address not local...): the start says
            raise CollectorError(
                f"{what} {host}:{port} is already in use by another program (an earlier "
                f"broker or serve? see: ss -ltnp 'sport = :{port}'): stop it, or change "
                f"{what}") from e


def _watch_broker(broker: ManagedBroker, stop: threading.Event,
                  failure: list[str]) -> threading.Thread:
    """Stop serve when the managed broker crash-loops (CRASH_RESTARTS restarts within
    CRASH_WINDOW_S) instead of logging "broker running" while no clock can connect."""
    def watch() -> None:
        seen, times = broker.restarts, list[float]()
        while not stop.wait(0.2):
            if broker.restarts == seen:
                continue
            now = time.monotonic()
            times = [t for t in times if now - t < CRASH_WINDOW_S]
            times += [now] * (broker.restarts - seen)
            seen = broker.restarts
            if len(times) >= CRASH_RESTARTS:
                failure.append(f"the managed broker keeps exiting ({len(times)} restarts "
                               f"within {CRASH_WINDOW_S:.0f} s): see {broker.log_file} and "
                               f"check `timeclock-collector init --check`")
                stop.set()
                return
    t = threading.Thread(target=watch, name="broker-watch", daemon=True)
    t.start()
    return t


def run(args: argparse.Namespace) -> int:
    if args.check_config is not None:
        cfg = load_config(args.check_config)
        check_files(cfg)
        load_log_key(cfg.collector.log_key)
        if cfg.broker.managed and cfg.broker.dir is not None:
            check_broker_dir(cfg.broker.dir)
        print(f"{args.check_config}: OK (collector.{cfg.collector.name}, store "
              f"{redact_url(cfg.collector.store)}, broker {cfg.mqtt.host}:{cfg.mqtt.port})")
        return 0
    cfg = load_config(args.config)
    check_files(cfg)
    with IdentityLock(cfg.collector.state_directory, cfg.collector.identity):
        return _serve(cfg)


def _serve(cfg: CollectorConfig) -> int:
    preflight(cfg)      # a truncated or rewritten ledger is refused before anything serves
    broker = None
    stop = threading.Event()
    failure: list[str] = []
    if cfg.broker.managed and cfg.broker.dir is not None:
        check_broker_dir(cfg.broker.dir)
        check_port_free(cfg.mqtt.host, cfg.mqtt.port, "[mqtt] host:port of the managed broker")
        broker = ManagedBroker(cfg.broker.dir, host=cfg.mqtt.host, port=cfg.mqtt.port,
                               mosquitto=cfg.broker.mosquitto)
    api = api_store = api_reader = None
    service = CollectorService(cfg)     # its device statuses feed the console's fleet page
    try:
        if broker is not None:
            try:
                broker.start()
            except BrokerError as e:
                raise CollectorError(f"{e}: see {broker.log_file}, and run "
                                     f"`timeclock-collector init --check`") from e
            _watch_broker(broker, stop, failure)
        if cfg.api is not None:
            # Only now the web stack (aiohttp): a collector without [api] never loads it.
            from collector.api.app import ApiThread  # noqa: PLC0415 - see the comment above

            # The API reads through its own connection; the ingest writer keeps its own.
            log_key = load_log_key(cfg.collector.log_key)
            api_store = open_store(cfg.collector.store, kek=cfg.ledger.kek)
            api_reader = open_store(cfg.collector.store,    # proofs: never behind a commit
                                    kek=cfg.ledger.kek)
            api = ApiThread(cfg.api, api_store,
                            log_keys={log_key.key_id: log_key.verify_key}, reader=api_reader,
                            statuses=service.statuses.snapshot)
            try:
                api.start()
            except OSError as e:
                api = None
                if e.errno == errno.EADDRINUSE:
                    raise CollectorError(
                        f"[api] port {cfg.api.port} on {cfg.api.listen} is already in use by "
                        f"another program (see: ss -ltnp 'sport = :{cfg.api.port}'): stop it, "
                        f"or change [api] port") from e
                raise CollectorError(f"[api] cannot listen on {cfg.api.listen}:"
                                     f"{cfg.api.port}: {e.strerror or e}") from e
            log.info("HTTPS API listening on %s:%d", cfg.api.listen, cfg.api.port)
        service.serve_forever(stop)
    finally:
        stop.set()
        if api is not None:
            api.stop()          # flushes the access log into the ledger
        if api_store is not None:
            api_store.close()
        if api_reader is not None:
            api_reader.close()
        if broker is not None:
            broker.stop()
    if failure:
        raise CollectorError(failure[0])
    return 0
