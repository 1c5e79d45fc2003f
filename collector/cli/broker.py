"""``timeclock-collector broker-config``: write a self-contained Mosquitto directory.

The output directory gets mosquitto.conf, acl, ca.crt, crl.pem, server.crt, server.key (0600)
and data/ (persistence), all rendered by collector.fleet.broker_config.
"""

from __future__ import annotations

import argparse
import os
import pwd
import textwrap
from pathlib import Path
from typing import Any

from collector import PKIError
from collector.fleet.broker_config import (
    DEFAULT_AUTOSAVE_INTERVAL_S,
    DEFAULT_MAX_INFLIGHT_MESSAGES,
    DEFAULT_MAX_QUEUED_MESSAGES,
    prepare_broker_dir,
)
from collector.fleet.broker_process import PID_FILE, prepare_managed_broker
from collector.fleet.pki import CertificateAuthority

EPILOG = textwrap.dedent("""\
    example (broker for two collectors, listening on all IPv4 addresses):
      timeclock-collector ca issue-server --ca /etc/timeclock/ca --dns mqtt.example.org
      timeclock-collector broker-config --ca /etc/timeclock/ca --out /etc/mosquitto/timeclock \\
          --host 0.0.0.0 --port 8883 --collector main --collector standby
      mosquitto -c /etc/mosquitto/timeclock/mosquitto.conf

    Started as root, Mosquitto switches to the `mosquitto` user: give it read access to the
    output directory (chown -R mosquitto: OUT), or pass --user for another account.
    After a revocation: `ca crl --out OUT/crl.pem`, then SIGHUP the broker
    (systemctl reload mosquitto). New connections are checked at once; connected sessions
    of a revoked certificate end only when the broker restarts (certs/README.md).
    """)


def _cmd(args: argparse.Namespace) -> int:
    ca = CertificateAuthority.open(args.ca)
    options: dict[str, Any] = {
        "max_queued_messages": args.max_queued_messages,
        "max_inflight_messages": args.max_inflight_messages,
        "autosave_interval_s": args.autosave_interval,
    }
    if args.user is not None:
        options["user"] = args.user
    # Started as root, Mosquitto switches to `user` (default `mosquitto`), which must own
    # the directory: else it cannot write its pid file and crash-loops (issue 15).
    owner = args.user or ("mosquitto" if os.geteuid() == 0 else None)
    account = None
    if os.geteuid() == 0 and owner is not None:
        try:
            account = pwd.getpwnam(owner)
        except KeyError as e:
            raise PKIError(f"--user {owner}: no such account (Mosquitto started as root "
                           f"switches to it; give --user ACCOUNT, e.g. the account serve "
                           f"runs as)") from e
    prepare = prepare_broker_dir if args.standalone else prepare_managed_broker
    try:
        files = prepare(ca, args.out, port=args.port, host=args.host,
                        collectors=args.collector, server_name=args.server_name, **options)
        if account is not None:
            for path in (files.directory, *files.directory.rglob("*")):
                os.chown(path, account.pw_uid, account.pw_gid, follow_symlinks=False)
    except OSError as e:
        raise PKIError(f"cannot write the broker directory {args.out}: {e}") from e
    print(f"broker configuration written to {files.directory}")
    if account is not None:
        print(f"  owned by {owner} (the account Mosquitto runs as when started as root)")
    if not args.standalone:
        print(f"  pid file {files.directory / PID_FILE}: `device revoke` reloads it")
    print(f"  listener {files.settings.host}:{files.settings.port} (mTLS only), collectors: "
          f"{', '.join(files.settings.collectors)}")
    print(f"  run: mosquitto -c {files.config_file}")
    return 0


def register(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    p = sub.add_parser(
        "broker-config", help="write mosquitto.conf, ACL, certificates and CRL for the broker",
        description="Render the Mosquitto 2 configuration of DESIGN.md §4: one mTLS listener, "
                    "CN as user name, per-device topic ACL, CRL, persistence, queues sized for "
                    "a fleet backlog.",
        epilog=EPILOG, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--ca", type=Path, required=True, metavar="DIR",
                   help="the CA directory (with a server certificate from `ca issue-server`)")
    p.add_argument("--out", type=Path, required=True, metavar="DIR",
                   help="broker directory to write")
    p.add_argument("--port", type=int, required=True, metavar="N", help="TLS listener port")
    p.add_argument("--host", default="127.0.0.1", help="address to listen on (%(default)s)")
    p.add_argument("--collector", action="append", required=True, metavar="NAME",
                   help="collector allowed to read punches and write acks, as NAME or "
                        "collector.NAME (repeatable)")
    p.add_argument("--server-name", default="broker",
                   help="server certificate under CA/server/ (%(default)s)")
    p.add_argument("--user", help="account Mosquitto runs as (default: its own `mosquitto`); "
                                  "as root, the directory is given to it")
    p.add_argument("--standalone", action="store_true",
                   help="for timeclock-broker.service: no pid or log file (the journal logs); "
                        "default: the managed layout `serve` and `device revoke` need (pid "
                        "file, log file, dynamic-security plugin)")
    p.add_argument("--max-queued-messages", type=int, default=DEFAULT_MAX_QUEUED_MESSAGES,
                   metavar="N", help="per-client QoS 1 queue (%(default)s)")
    p.add_argument("--max-inflight-messages", type=int, default=DEFAULT_MAX_INFLIGHT_MESSAGES,
                   metavar="N", help="per-client messages in flight (%(default)s)")
    p.add_argument("--autosave-interval", type=int, default=DEFAULT_AUTOSAVE_INTERVAL_S,
                   metavar="S", help="seconds between persistence saves (%(default)s)")
    p.set_defaults(func=_cmd)
