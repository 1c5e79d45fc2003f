"""``timeclock-collector broker-config``: write a self-contained Mosquitto directory.

The output directory gets mosquitto.conf, acl, ca.crt, crl.pem, server.crt, server.key (0600)
and data/ (persistence), all rendered by collector.fleet.broker_config.
"""

from __future__ import annotations

import argparse
import textwrap
from pathlib import Path

from collector import PKIError
from collector.fleet.broker_config import (
    DEFAULT_AUTOSAVE_INTERVAL_S,
    DEFAULT_MAX_INFLIGHT_MESSAGES,
    DEFAULT_MAX_QUEUED_MESSAGES,
    prepare_broker_dir,
)
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
    options: dict[str, object] = {
        "max_queued_messages": args.max_queued_messages,
        "max_inflight_messages": args.max_inflight_messages,
        "autosave_interval_s": args.autosave_interval,
    }
    if args.user is not None:
        options["user"] = args.user
    try:
        files = prepare_broker_dir(ca, args.out, port=args.port, host=args.host,
                                   collectors=args.collector, server_name=args.server_name,
                                   **options)
    except OSError as e:
        raise PKIError(f"cannot write the broker directory {args.out}: {e}") from e
    print(f"broker configuration written to {files.directory}")
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
    p.add_argument("--user", help="account Mosquitto runs as (default: its own `mosquitto`)")
    p.add_argument("--max-queued-messages", type=int, default=DEFAULT_MAX_QUEUED_MESSAGES,
                   metavar="N", help="per-client QoS 1 queue (%(default)s)")
    p.add_argument("--max-inflight-messages", type=int, default=DEFAULT_MAX_INFLIGHT_MESSAGES,
                   metavar="N", help="per-client messages in flight (%(default)s)")
    p.add_argument("--autosave-interval", type=int, default=DEFAULT_AUTOSAVE_INTERVAL_S,
                   metavar="S", help="seconds between persistence saves (%(default)s)")
    p.set_defaults(func=_cmd)
