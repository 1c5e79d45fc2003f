"""``timeclock-agent``: provision a clock's keys, run the agent, inspect it, check a config.

Exit codes: 0 success; 2 a user or configuration error (a clear message, no traceback);
3 ``status`` found no running agent; 4 ``status`` found the agent running but unable to record
(storage full) or unable to refresh its status file; 1 the service stopped because a part died.
"""

from __future__ import annotations

import argparse
import datetime as dt
import hashlib
import json
import logging
import os
import signal
import sys
import threading
from collections.abc import Sequence
from pathlib import Path
from types import FrameType
from typing import Any

from agent import provision, resume
from agent.certstate import check_certificate
from agent.config import AgentConfig, load_config
from agent.errors import AgentError, ConfigError
from agent.feedback import feedback_problems
from agent.keystore import KeyRef, new_queue_key, save_queue_key
from agent.queue import free_bytes, read_stats
from agent.status import read_status, render
from wire.cli import run_command, setup_logging
from wire.clock import now_us as clock_now_us
from wire.errors import WireError
from wire.fields import validate_device_id
from wire.keys import SigningKey, check_private_file, save_signing_key, write_private_file

PROG = "timeclock-agent"
SIGNING_KEY_FILE = "signing.key"
TLS_KEY_FILE = "tls.key"
QUEUE_KEY_FILE = "queue.key"

_EPILOG = """\
examples:
  # 1. on a new clock: make its keys (nothing leaves the device but the public key and CSR)
  timeclock-agent init --device clock-0017 --dir /etc/timeclock
  # 2. send clock-0017.csr to the CA and the public signing key to the collector admin;
  #    write /etc/timeclock/agent.toml (see: timeclock-agent check-config --help), then:
  timeclock-agent check-config /etc/timeclock/agent.toml
  # 3. run it (systemd does this: systemd/timeclock-agent.service)
  timeclock-agent run --config /etc/timeclock/agent.toml
  # 4. while it runs: queue depth, oldest unacked punch, last receipt, readers, clock
  timeclock-agent status --config /etc/timeclock/agent.toml
"""

_CONFIG_HELP = """\
The config is TOML; every problem is reported at once with its key path. Minimal example:

  [device]
  id = "clock-0017"
  state_dir = "/var/lib/timeclock-agent"      # holds queue.db (encrypted) and status.json

  [keys]                                      # a path to a 0600 file, or credential:NAME
  signing_key = "/etc/timeclock/signing.key"  # (systemd LoadCredentialEncrypted=NAME:...)
  queue_key = "credential:queue-key"
  tls_key = "credential:tls-key"
  tls_cert = "/etc/timeclock/clock-0017.crt"
  ca_cert = "/etc/timeclock/ca.crt"
  log_public_key = "<base64 from the provisioning bundle>"

  [mqtt]                                      # omit to record without publishing
  host = "broker.example.org"                 # port 8883, keepalive_s 60, batch_max 100,
                                              # resend_after_s 30, reconnect_min_s 1 / max_s 60

  [readers.front]                             # one section per reader
  kind = "rdm6300"                            # rdm6300 | serial-line | keyboard | simulated
  port = "/dev/ttyAMA0"
  action = "in"                               # in | out | break-start | break-end | punch

  [feedback]                                  # optional: run a program for a refused tap
  refused_command = ["/usr/local/bin/clock-beep", "--error"]   # (disk full); default: log only

  [feedback.outcomes]                         # optional: a program per outcome (recorded,
  unknown-badge = ["/usr/local/bin/clock-beep", "3"]   # unknown-badge, blocked-badge,
                                              # queued-offline, revoked, expired, ...); also
                                              # [feedback.display] and [feedback.gpio]
                                              # (docs/operations.md "Feedback at the clock")
"""


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog=PROG, formatter_class=argparse.RawDescriptionHelpFormatter, epilog=_EPILOG,
        description="The time clock agent: badge tap → signed punch → encrypted queue → MQTT. "
                    "A punch is reported as recorded only once it is committed to disk.")
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)

    p = sub.add_parser(
        "init", help="create this clock's signing key, TLS key + CSR, and queue key",
        formatter_class=argparse.RawDescriptionHelpFormatter,
        description="Create the device keys (all files 0600) and print what the operator "
                    "must register: device id, key id, public signing key, fingerprints.",
        epilog="example:\n  timeclock-agent init --device clock-0017 --dir /etc/timeclock\n"
               "writes signing.key, tls.key, clock-0017.csr, queue.key; refuses to overwrite "
               "existing keys unless --force\n(overwriting the signing key means re-enrolling "
               "the clock; overwriting the queue key makes queued punches unreadable).")
    p.add_argument("--device", required=True, help="device id, e.g. clock-0017 (no dots)")
    p.add_argument("--dir", required=True, type=Path, help="directory for the key files")
    p.add_argument("--force", action="store_true", help="overwrite existing key files")
    p.set_defaults(func=cmd_init)

    p = sub.add_parser("run", help="run the agent until SIGTERM/SIGINT",
                       description="Record taps from every configured reader into the "
                                   "encrypted queue and publish them (if [mqtt] is set). "
                                   "Speaks sd_notify (READY, WATCHDOG, STOPPING) under systemd.")
    p.add_argument("--config", "-c", required=True, type=Path, help="agent TOML file")
    p.set_defaults(func=cmd_run)

    p = sub.add_parser("status", help="show the running agent's health",
                       description="Queue depth, oldest unacked punch, last receipt, reader and "
                                   "clock state. Reads the status file the running agent keeps "
                                   "fresh and the queue's clear metadata (read-only, no key), "
                                   "and the free space of the state directory. Exit 0 if the "
                                   "agent runs, 3 if not, 4 if it runs but cannot record "
                                   "(storage full) or cannot refresh its status file.")
    p.add_argument("--config", "-c", required=True, type=Path, help="agent TOML file")
    p.add_argument("--json", action="store_true", help="print JSON instead of text")
    p.set_defaults(func=cmd_status)

    p = sub.add_parser("check-config", help="validate a config file and the key files it names",
                       formatter_class=argparse.RawDescriptionHelpFormatter,
                       description=_CONFIG_HELP)
    p.add_argument("config", type=Path, help="agent TOML file")
    p.set_defaults(func=cmd_check_config)
    provision.register(sub)   # provision BUNDLE, rotate-key
    resume.register(sub)      # resume (a clock refusing taps: sequence)
    return parser


# ---- init -------------------------------------------------------------------------------------

def cmd_init(args: argparse.Namespace) -> int:
    from cryptography import x509  # noqa: PLC0415 -- only init needs X.509
    from cryptography.hazmat.primitives import serialization  # noqa: PLC0415

    from wire.tls import make_tls_key_and_csr  # noqa: PLC0415

    device = validate_device_id(args.device)
    d: Path = args.dir
    files = {"signing": d / SIGNING_KEY_FILE, "tls": d / TLS_KEY_FILE,
             "csr": d / f"{device}.csr", "queue": d / QUEUE_KEY_FILE}
    existing = [str(f) for k, f in files.items() if k != "csr" and f.exists()]
    if existing and not args.force:
        raise AgentError("refusing to overwrite existing key file(s): " + ", ".join(existing)
                         + " (use --force; a new signing key needs re-enrolment and a new "
                           "queue key orphans queued punches)")
    d.mkdir(parents=True, exist_ok=True, mode=0o700)
    signing = SigningKey.generate()
    key_pem, csr_pem = make_tls_key_and_csr(device)
    save_signing_key(files["signing"], signing, force=args.force)
    write_private_file(files["tls"], key_pem, force=args.force)
    save_queue_key(files["queue"], new_queue_key(), force=args.force)
    files["csr"].write_bytes(csr_pem)
    spki = x509.load_pem_x509_csr(csr_pem).public_key().public_bytes(
        serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo)
    print(f"device:              {device}")
    print(f"signing key id:      {signing.key_id}")
    print(f"signing public key:  {signing.verify_key.b64}")
    print(f"signing key sha256:  {hashlib.sha256(signing.verify_key.raw).hexdigest()}")
    print(f"tls key spki sha256: {hashlib.sha256(spki).hexdigest()}")
    print(f"csr:                 {files['csr']}  (send to the CA; CN={device})")
    print(f"private keys (0600): {files['signing']}, {files['tls']}, {files['queue']}")
    print("register the device with the collector: device id, key id and public key above")
    return 0


# ---- run --------------------------------------------------------------------------------------

def cmd_run(args: argparse.Namespace) -> int:
    from agent.service import AgentService  # noqa: PLC0415 -- pulls in readers and the queue

    config = load_config(args.config)
    stop = threading.Event()

    def on_signal(signum: int, _frame: FrameType | None) -> None:
        logging.getLogger(PROG).info("%s received; stopping", signal.Signals(signum).name)
        stop.set()

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)
    service = AgentService(config)
    return service.run(stop)


# ---- status -----------------------------------------------------------------------------------

def cmd_status(args: argparse.Namespace) -> int:
    config = load_config(args.config, check_readers=False)
    now_us = clock_now_us()
    sf = read_status(config.status.path, now_us=now_us,
                     stale_after_s=max(3 * config.status.interval_s, 15.0))
    snap: dict[str, Any] = dict(sf.snapshot) if sf else {"device": config.device.id}
    live = sf.live if sf else False
    try:
        snap["queue"] = read_stats(config.queue_path).to_dict()
    except AgentError as e:
        if "queue" not in snap:
            snap["queue"] = {"error": str(e)}
    writer_alive = sf.writer_alive if sf else False
    free_now = free_bytes(config.device.state_dir)
    storage = snap.get("storage")
    full = isinstance(storage, dict) and storage.get("state") == "full"
    sequence = snap.get("sequence")
    refusing = isinstance(sequence, dict) and sequence.get("state") == "refusing"
    pub = snap.get("publisher")
    cert = pub.get("certificate") if isinstance(pub, dict) else None
    cert_blocked = isinstance(cert, dict) and cert.get("state") not in (None, "ok", "expiring")
    snap["running"] = live
    snap["free_bytes_now"] = free_now
    if args.json:
        print(json.dumps(snap, sort_keys=True, indent=1))
    else:
        print(render(snap, now_us=now_us, live=live, writer_alive=writer_alive,
                     free_now=free_now))
        if sf is None:
            print(f"(no status file at {config.status.path}: the agent has not run yet)")
        if full or (writer_alive and not live):
            print(f"(the agent cannot record: free space in {config.device.state_dir}; it "
                  "resumes by itself, see docs/operations.md \"Storage full\")")
    if live and not full and not refusing and not cert_blocked:
        return 0
    return 4 if live or writer_alive else 3


# ---- check-config -----------------------------------------------------------------------------

def key_file_problems(config: AgentConfig, env: dict[str, str] | None = None) -> list[str]:
    """Problems with the files the config names (missing, wrong mode); credentials are checked
    only where ``$CREDENTIALS_DIRECTORY`` is set (systemd provides them at run time)."""
    env = dict(os.environ) if env is None else env
    problems: list[str] = []
    refs: list[tuple[str, KeyRef | None]] = [
        ("signing_key", config.keys.signing_key), ("queue_key", config.keys.queue_key),
        ("tls_key", config.keys.tls_key)]
    for name, ref in refs:
        if ref is not None and ref.credential is not None and "CREDENTIALS_DIRECTORY" not in env:
            problems.extend(sealed_credential_problems(config, name, ref.credential))
            continue
        if ref is None:
            continue
        try:
            check_private_file(ref.resolve(env))
        except (WireError, AgentError) as e:
            problems.append(f"keys.{name}: {e}")
    for name, path in (("tls_cert", config.keys.tls_cert), ("ca_cert", config.keys.ca_cert)):
        if path is not None and not path.is_file():
            problems.append(f"keys.{name}: {path}: no such file")
    problems.extend(cert_problems(config, env, problems))
    return problems


def sealed_credential_problems(config: AgentConfig, key: str, credential: str) -> list[str]:
    """Outside systemd a ``credential:NAME`` key cannot be read, but the file the shipped unit
    loads it from can be looked for: ``NAME.cred`` beside ``agent.toml``
    (``LoadCredentialEncrypted=NAME:/etc/timeclock/NAME.cred``). Without it the unit would
    fail at start although the config looked fine (issue 15)."""
    if config.source is None:
        return []
    sealed = config.source.parent / f"{credential}.cred"
    if sealed.is_file():
        return []
    return [f"keys.{key}: credential:{credential} is loaded by the unit from {sealed} "
            f"(LoadCredentialEncrypted=), which does not exist: seal the key with "
            f"`systemd-creds encrypt --name={credential} <key file> {sealed}` "
            "(docs/operations.md, provisioning step 3)"]


def cert_problems(config: AgentConfig, env: dict[str, str], found: list[str]) -> list[str]:
    """The clock certificate's dates, issuer (the configured CA) and key, one line each with
    what to do (agent.certstate); an ``expiring`` warning is not a problem (printed by
    ``check-config``)."""
    k = config.keys
    if k.tls_cert is None or not k.tls_cert.is_file() or any(
            p.startswith(("keys.tls_cert", "keys.ca_cert")) for p in found):
        return []
    key = None
    if k.tls_key is not None and not any(p.startswith("keys.tls_key") for p in found) and (
            k.tls_key.credential is None or "CREDENTIALS_DIRECTORY" in env):
        key = k.tls_key.resolve(env)
    warn = config.mqtt.cert_warn_days if config.mqtt else 30
    now = dt.datetime.fromtimestamp(clock_now_us() / 1e6, dt.UTC)
    return [f"keys.tls_cert: {p.message}"
            for p in check_certificate(k.tls_cert, key, k.ca_cert, now=now, warn_days=warn)
            if p.blocking]


def cmd_check_config(args: argparse.Namespace) -> int:
    config = load_config(args.config)
    problems = key_file_problems(config) + feedback_problems(config.feedback)
    if problems:
        raise ConfigError(problems)
    k = config.keys
    if k.tls_cert is not None:
        warn = config.mqtt.cert_warn_days if config.mqtt else 30
        now = dt.datetime.fromtimestamp(clock_now_us() / 1e6, dt.UTC)
        for p in check_certificate(k.tls_cert, None, None, now=now, warn_days=warn):
            if p.state == "expiring":
                print(f"warning: keys.tls_cert: {p.message}")
    print(f"{args.config}: OK")
    print(f"device {config.device.id}; queue {config.queue_path}; status {config.status.path}")
    print("mqtt: " + (f"{config.mqtt.host}:{config.mqtt.port}" if config.mqtt
                      else "not configured (store-only: nothing is published)"))
    for r in config.readers:
        print(f"reader {r.name}: kind {r.kind}, action {r.section.get('action', 'punch')}")
    return 0


# ---- entry point ------------------------------------------------------------------------------

def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    setup_logging(verbose=args.verbose)
    return run_command(PROG, lambda: int(args.func(args)), (AgentError,), extra="agent")


if __name__ == "__main__":
    sys.exit(main())
