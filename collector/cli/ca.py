"""``timeclock-collector ca ...``: run the site CA (collector.fleet.pki) from the command line.

Every command except ``init`` takes ``--ca DIR``. A passphrase, if the CA key has one, is read
from ``--passphrase-file`` (mode 0600), never from the command line or the environment.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import textwrap
from pathlib import Path
from typing import Any

from collector import PKIError
from collector.fleet import cert_status
from collector.fleet.broker_process import BrokerControl, BrokerError
from collector.fleet.pki import (
    CLIENT_KINDS,
    DEFAULT_CA_DAYS,
    DEFAULT_CRL_DAYS,
    DEFAULT_LEAF_DAYS,
    REASONS,
    CertificateAuthority,
)
from wire.errors import KeyFileError
from wire.keys import check_private_file

EPILOG = textwrap.dedent("""\
    example (a CA, the broker's certificate, one clock, one collector):
      timeclock-collector ca init /etc/timeclock/ca --passphrase-file /root/ca.pass
      timeclock-collector ca issue-server --ca /etc/timeclock/ca --passphrase-file /root/ca.pass \\
          --dns mqtt.example.org --dns localhost --ip 127.0.0.1
      timeclock-collector ca sign-csr --ca /etc/timeclock/ca --passphrase-file /root/ca.pass \\
          clock-17.csr --kind device --out clock-17.crt
      timeclock-collector ca sign-csr --ca /etc/timeclock/ca --passphrase-file /root/ca.pass \\
          collector-main.csr --kind collector --out collector-main.crt
      timeclock-collector ca list --ca /etc/timeclock/ca

    revoking a lost clock (then make the broker load the new CRL: see certs/README.md):
      timeclock-collector ca revoke --ca /etc/timeclock/ca --passphrase-file /root/ca.pass \\
          --cn clock-17 --reason key-compromise
      timeclock-collector ca crl --ca /etc/timeclock/ca --passphrase-file /root/ca.pass \\
          --out /etc/mosquitto/timeclock/crl.pem && systemctl reload mosquitto

    The CRL expires (default %d days): renew it with `ca crl` from a timer well before that,
    or the broker refuses every client.
    """) % DEFAULT_CRL_DAYS


def _now() -> dt.datetime:
    return dt.datetime.now(dt.UTC)


def _passphrase(args: argparse.Namespace) -> bytes | None:
    path: Path | None = args.passphrase_file
    if path is None:
        return None
    if not path.exists():
        raise PKIError(f"passphrase file {path} does not exist: give --passphrase-file the "
                       "file (0600) that holds the CA key's passphrase")
    try:
        check_private_file(path)
        data = path.read_bytes()
    except (KeyFileError, OSError) as e:
        raise PKIError(f"passphrase file: {e}") from e
    return data.rstrip(b"\r\n")


def _open(args: argparse.Namespace) -> CertificateAuthority:
    return CertificateAuthority.open(args.ca, passphrase=_passphrase(args))


def _cmd_init(args: argparse.Namespace) -> int:
    ca = CertificateAuthority.init(args.directory, now=_now(), passphrase=_passphrase(args),
                                   common_name=args.cn, days=args.days)
    print(f"CA created in {ca.directory}")
    print(f"  certificate (give to devices, collectors, broker): {ca.cert_file}")
    print(f"  key (0600, keep offline if you can):               {ca.key_file}")
    print(f"  CRL:                                               {ca.crl_file}")
    return 0


def _cmd_issue_server(args: argparse.Namespace) -> int:
    files = _open(args).issue_server(dns=args.dns or [], ips=args.ip or [], now=_now(),
                                     name=args.name, days=args.days)
    print(f"server certificate {files.entry.serial} for {files.entry.cn}, valid until "
          f"{files.entry.not_after:%Y-%m-%d}")
    print(f"  {files.cert_file}\n  {files.key_file} (0600)")
    return 0


def _cmd_sign_csr(args: argparse.Namespace) -> int:
    try:
        csr = Path(args.csr).read_bytes()
    except OSError as e:
        raise PKIError(f"cannot read CSR: {e}") from e
    out: Path = args.out
    if out.exists():
        raise PKIError(f"{out}: exists; refusing to overwrite a certificate")
    issued = _open(args).sign_csr(csr, kind=args.kind, now=_now(), days=args.days)
    try:
        with open(out, "xb") as f:
            f.write(issued.cert_pem)
    except OSError as e:
        raise PKIError(f"cannot write {out}: {e} (the certificate is in the CA's issued/ "
                       f"directory as {issued.entry.serial}.crt)") from e
    print(f"signed {issued.entry.kind} certificate {issued.entry.serial} for "
          f"{issued.entry.cn}, valid until {issued.entry.not_after:%Y-%m-%d}: {out}")
    return 0


def _cmd_revoke(args: argparse.Namespace) -> int:
    ca = _open(args)
    revoked = ca.revoke(serial=args.serial, cn=args.cn, reason=args.reason, now=_now(),
                        crl_days=args.crl_days)
    for e in revoked:
        print(f"revoked {e.serial} ({e.kind} {e.cn}): {e.reason}")
    print(f"CRL rewritten: {ca.crl_file}; the broker refuses these certificates only after it "
          f"loads the new CRL (copy it to the broker, then SIGHUP / systemctl reload)")
    return 0


def _cmd_crl(args: argparse.Namespace) -> int:
    ca = _open(args)
    path = ca.write_crl(now=_now(), out=args.out, days=args.days)
    print(f"CRL written to {path}, valid {args.days} days")
    if args.broker_dir is not None:
        control = BrokerControl(args.broker_dir)
        if not (control.directory / "mosquitto.conf").is_file():
            raise PKIError(f"--broker-dir {args.broker_dir}: no mosquitto.conf (prepare it with "
                           f"`timeclock-collector init` or `broker-config`)")
        control.install_crl(path)
        try:
            control.pid()
        except BrokerError:
            print(f"installed in {control.directory}; the broker is not running (it loads "
                  f"the new CRL when it starts)")
            return 0
        control.reload()
        print(f"installed in {control.directory}; the broker reloaded it (SIGHUP)")
    return 0


def _cmd_status(args: argparse.Namespace) -> int:
    ca = CertificateAuthority.open(args.ca)
    rows = cert_status.site_status(ca, now=_now(), warn_days=args.warn_days,
                                   crl_warn_days=args.crl_warn_days,
                                   broker_dirs=tuple(args.broker_dir))
    level = cert_status.worst(rows)
    if args.json:
        print(json.dumps({"level": level, "warn_days": args.warn_days,
                          "crl_warn_days": args.crl_warn_days,
                          "items": [r.to_dict() for r in rows]}, indent=2))
        return cert_status.EXIT[level]
    print(f"{'LEVEL':<9} {'KIND':<9} {'NOT AFTER':<11} {'NAME':<40} DETAIL")
    for r in rows:
        when = "-" if r.not_after is None else f"{r.not_after:%Y-%m-%d}"
        print(f"{r.level.upper():<9} {r.kind:<9} {when:<11} {r.name:<40} {r.detail}")
    bad = [r for r in rows if r.level != "ok"]
    print(f"{level.upper()}: {len(rows)} checked, {len(bad)} need attention "
          f"(warning window {args.warn_days} days, CRLs {args.crl_warn_days})")
    return cert_status.EXIT[level]


def _cmd_list(args: argparse.Namespace) -> int:
    ca = CertificateAuthority.open(args.ca)
    now = _now()
    entries = ca.entries()
    if args.json:
        rows: list[dict[str, Any]] = [dict(e.to_dict(), status=e.status(now)) for e in entries]
        print(json.dumps(rows, indent=2))
        return 0
    print(f"{'SERIAL':<42} {'KIND':<9} {'CN':<32} {'NOT AFTER':<10} STATUS")
    for e in entries:
        status = e.status(now)
        if e.revoked_at is not None:
            status = f"revoked {e.revoked_at:%Y-%m-%d} ({e.reason})"
        print(f"{e.serial:<42} {e.kind:<9} {e.cn:<32} {e.not_after:%Y-%m-%d} {status}")
    return 0


def register(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:  # noqa: PLR0915 - one parser per command
    fmt = argparse.RawDescriptionHelpFormatter
    ca = sub.add_parser(
        "ca", help="run the site CA: broker, device and collector TLS certificates, CRL",
        description="The site CA. Devices and collectors generate their own TLS keys and send "
                    "a CSR; the CA signs it with the CN as identity (device id, or "
                    "collector.<name>). Layout of the CA directory: certs/README.md.",
        epilog=EPILOG, formatter_class=fmt)
    cmds = ca.add_subparsers(dest="ca_command", metavar="CA_COMMAND", required=True)

    def common(p: argparse.ArgumentParser, *, needs_ca: bool = True) -> None:
        if needs_ca:
            p.add_argument("--ca", type=Path, required=True, metavar="DIR",
                           help="the CA directory (made by `ca init`)")
        p.add_argument("--passphrase-file", type=Path, metavar="F",
                       help="file (mode 0600) whose first line is the CA key passphrase")

    p = cmds.add_parser("init", help="create a CA directory (EC P-256 key, self-signed cert)",
                        epilog="example: timeclock-collector ca init /etc/timeclock/ca "
                               "--passphrase-file /root/ca.pass")
    p.add_argument("directory", type=Path, metavar="DIR", help="new or empty directory")
    common(p, needs_ca=False)
    p.add_argument("--cn", default="timeclock CA", help="CA common name (%(default)s)")
    p.add_argument("--days", type=int, default=DEFAULT_CA_DAYS,
                   help="CA validity in days (%(default)s)")
    p.set_defaults(func=_cmd_init)

    p = cmds.add_parser("issue-server", help="issue the broker's TLS server certificate",
                        epilog="example: timeclock-collector ca issue-server --ca DIR "
                               "--dns mqtt.example.org --dns localhost --ip 127.0.0.1")
    common(p)
    p.add_argument("--dns", action="append", metavar="NAME",
                   help="DNS name clients connect to (repeatable)")
    p.add_argument("--ip", action="append", metavar="ADDR",
                   help="IP address clients connect to (repeatable)")
    p.add_argument("--name", default="broker",
                   help="file name under DIR/server/ (%(default)s)")
    p.add_argument("--days", type=int, default=DEFAULT_LEAF_DAYS,
                   help="validity in days (%(default)s)")
    p.set_defaults(func=_cmd_issue_server)

    p = cmds.add_parser("sign-csr", help="sign a device's or collector's CSR",
                        epilog="example: timeclock-collector ca sign-csr --ca DIR clock-17.csr "
                               "--kind device --out clock-17.crt\n"
                               "The CN must be the device id (device), collector.<name> or "
                               "api.<name> (api-client).")
    common(p)
    p.add_argument("csr", type=Path, metavar="CSR", help="PEM CSR (timeclock-agent init makes one)")
    p.add_argument("--kind", choices=CLIENT_KINDS, required=True,
                   help="api-client: an API integration (CN api.<name>), refused by the broker")
    p.add_argument("--days", type=int, default=DEFAULT_LEAF_DAYS,
                   help="validity in days (%(default)s)")
    p.add_argument("--out", type=Path, required=True, metavar="CERT",
                   help="where to write the certificate (must not exist)")
    p.set_defaults(func=_cmd_sign_csr)

    p = cmds.add_parser("revoke", help="revoke a certificate and rewrite the CRL",
                        epilog="example: timeclock-collector ca revoke --ca DIR --cn clock-17 "
                               "--reason key-compromise")
    common(p)
    which = p.add_mutually_exclusive_group(required=True)
    which.add_argument("--serial", metavar="S", help="serial in hex, as `ca list` prints it")
    which.add_argument("--cn", metavar="CN", help="revoke every unrevoked certificate of CN")
    p.add_argument("--reason", choices=sorted(REASONS), required=True)
    p.add_argument("--crl-days", type=int, default=DEFAULT_CRL_DAYS,
                   help="validity of the rewritten CRL (%(default)s)")
    p.set_defaults(func=_cmd_revoke)

    p = cmds.add_parser("crl", help="write a fresh CRL (run from a timer; CRLs expire)",
                        epilog="example: timeclock-collector ca crl --ca DIR "
                               "--out /etc/mosquitto/timeclock/crl.pem")
    common(p)
    p.add_argument("--out", type=Path, metavar="FILE",
                   help="where to write it (default DIR/crl.pem)")
    p.add_argument("--days", type=int, default=DEFAULT_CRL_DAYS,
                   help="validity in days (%(default)s)")
    p.add_argument("--broker-dir", type=Path, metavar="DIR",
                   help="also install it in this broker directory and SIGHUP the broker "
                        "through its pid file (what systemd/timeclock-crl-refresh.timer runs)")
    p.set_defaults(func=_cmd_crl)

    p = cmds.add_parser(
        "status", help="expiry of every certificate and CRL (exit 0 ok, 1 warning, 2 critical)",
        formatter_class=fmt,
        epilog=textwrap.dedent("""\
            example (cron, Nagios: exit 0 ok, 1 inside the warning window, 2 expired or
            unreadable):
              timeclock-collector ca status --ca /etc/timeclock/ca \\
                  --broker-dir /var/lib/timeclock/broker --warn-days 30

            Lists the CA, the server certificates (CA/server/*.crt, and the copy in each
            --broker-dir), the newest unrevoked certificate of every collector and device
            in index.json, and the next update of the CA's CRL and of each broker's copy."""))
    p.add_argument("--ca", type=Path, required=True, metavar="DIR", help="the CA directory")
    p.add_argument("--broker-dir", type=Path, action="append", default=[], metavar="DIR",
                   help="a broker directory whose server.crt and crl.pem to check (repeatable)")
    p.add_argument("--warn-days", type=int, default=cert_status.DEFAULT_WARN_DAYS,
                   metavar="N", help="warn this many days before a certificate expires "
                                     "(%(default)s)")
    p.add_argument("--crl-warn-days", type=int, default=cert_status.DEFAULT_CRL_WARN_DAYS,
                   metavar="N", help="warn this many days before a CRL's next update "
                                     "(%(default)s; the timer renews it daily)")
    p.add_argument("--json", action="store_true", help="machine-readable output")
    p.set_defaults(func=_cmd_status)

    p = cmds.add_parser("list", help="list issued certificates and their status",
                        epilog="example: timeclock-collector ca list --ca DIR --json")
    p.add_argument("--ca", type=Path, required=True, metavar="DIR", help="the CA directory")
    p.add_argument("--json", action="store_true", help="machine-readable output")
    p.set_defaults(func=_cmd_list)
