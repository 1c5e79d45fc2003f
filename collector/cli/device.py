"""``timeclock-collector device ...``: the fleet's life cycle (controls D1, D3, D17).

    enroll      sign the clock's CSR, register it and its signing key, write its bundle
    renew       a new certificate for an enrolled clock (bundle with the certificate only)
    rotate-key  register a new signing key from the clock's signed rotation request
    reenrol / approve-reenrol   a new key without that request (lost or broken clock): one
                principal requests, a second approves (DESIGN.md §8.5 "Dual control")
    revoke      reject its punches, revoke its certificate, cut its broker session
    list        registry, ledger progress, certificate expiry and live status
    register    low-level registry entry (no CA, no bundle)

Every registry change appends one ``device`` entry to the ledger (collector.ledger.registry): the
ledger is the registry, so every enrolment, rotation and revocation is tamper-evident.
``--config`` (the collector's TOML) supplies the store, the collector's MQTT identity (for
``list`` statuses and the revocation kick) and the managed broker directory; ``--store``
alone is enough for registry-only work.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import ssl
import textwrap
import time
import tomllib
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from collector import CollectorError, PKIError, RegistryError
from collector.cli.args import add_kek_sources
from collector.cli.ca import _passphrase
from collector.cli.shared import open_args_store
from collector.fleet import devices as fleet
from collector.fleet import remote_config as remote
from collector.fleet.broker_process import CONTROL_IDENTITY, BrokerControl, cut_off
from collector.fleet.pki import DEFAULT_LEAF_DAYS, REASONS, CertificateAuthority
from collector.fleet.provisioning import (
    enroll_device,
    parse_broker,
    renew_certificate,
)
from collector.ledger.registry import (
    approve_reenrolment,
    enroll,
    request_reenrolment,
    revoke,
    rotate,
)
from collector.ledger.sqlbase import SQLStore
from collector.service.config import CollectorConfig, load_config
from wire.clock import now_us as _now_us
from wire.errors import WireError
from wire.key_changes import PRINCIPAL_RE
from wire.keys import VerifyKey, load_signing_key
from wire.remote_config import ALLOWED, READER_SETTINGS, SignedConfigResult, parse_value
from wire.rotation import SignedRotationRequest
from wire.sealed import SealPublicKey, load_seal_key
from wire.tls import client_context

EPILOG = textwrap.dedent("""\
    provisioning a clock (keys made on the clock; docs/operations.md walks through it):
      # on the clock:   timeclock-agent init --device clock-17 --dir /etc/timeclock
      timeclock-collector device enroll --config /etc/timeclock/collector.toml \\
          --ca /etc/timeclock/ca --csr clock-17.csr --signing-key <base64 from init> \\
          --site hq --broker mqtt.example.org:8883 --out clock-17.bundle
      # on the clock:   timeclock-agent provision clock-17.bundle --dir /etc/timeclock

    rotation, renewal, revocation, fleet:
      timeclock-collector device rotate-key --config C --request rotate-clock-17-<id>.json
      timeclock-collector device reenrol clock-17 --config C --key NEW.pub \\
          --requested-by alice --reason lost     # no request from the old key: then
      timeclock-collector device approve-reenrol clock-17 --config C --by bob
      timeclock-collector device renew --config C --ca DIR --csr clock-17-new.csr --out r.bundle
      timeclock-collector device revoke --config C --ca DIR --device clock-17 --reason stolen
      timeclock-collector device list --config C --ca DIR

    A revoked device id is never enrolled again; a key id belongs to one device only.
    """)


# ---- shared options ---------------------------------------------------------------------------

def _source(q: argparse.ArgumentParser) -> None:
    g = q.add_mutually_exclusive_group(required=True)
    g.add_argument("--config", type=Path, metavar="FILE",
                   help="collector TOML: store, MQTT identity, managed broker")
    g.add_argument("--store", metavar="URL",
                   help="ledger: sqlite:///path, a path, or postgresql://…")
    add_kek_sources(q, config=False)      # with --config: its [ledger] kek, unless this or env


def _ca_opts(q: argparse.ArgumentParser, *, required: bool) -> None:
    q.add_argument("--ca", type=Path, required=required, metavar="DIR", help="CA directory")
    q.add_argument("--passphrase-file", type=Path, metavar="F",
                   help="file (0600) with the CA key passphrase")


def _config(args: argparse.Namespace) -> CollectorConfig | None:
    return load_config(args.config) if getattr(args, "config", None) else None


@contextmanager
def _store(args: argparse.Namespace) -> Iterator[SQLStore]:
    cfg = _config(args)
    store = open_args_store(args, cfg.collector.store if cfg is not None else None)
    try:
        yield store
    finally:
        store.close()


def _ca(args: argparse.Namespace) -> CertificateAuthority:
    return CertificateAuthority.open(args.ca, passphrase=_passphrase(args))


def _now() -> dt.datetime:
    return dt.datetime.now(dt.UTC)



def _log_public(args: argparse.Namespace, cfg: CollectorConfig | None) -> VerifyKey:
    if args.log_key_pub:
        try:
            return VerifyKey.from_b64(args.log_key_pub)
        except WireError as e:
            raise CollectorError(f"--log-key-pub: {e}") from e
    path = args.log_key or (cfg.collector.log_key if cfg is not None else None)
    if path is None:
        raise CollectorError("the bundle needs the log public key: --log-key-pub B64, "
                             "--log-key FILE or --config")
    try:
        return load_signing_key(path).verify_key
    except WireError as e:
        raise CollectorError(f"log key: {e}") from e


def _seal_public(args: argparse.Namespace, cfg: CollectorConfig | None) -> SealPublicKey | None:
    """The seal public key for the bundle (DESIGN.md §8.6), or None: the clock sends plain."""
    path = args.seal_key or (cfg.collector.seal_key if cfg is not None else None)
    if path is None:
        return None
    try:
        return load_seal_key(path).public_key
    except WireError as e:
        raise CollectorError(f"seal key: {e}") from e


def _readers(path: Path | None) -> dict[str, Any] | None:
    if path is None:
        return None
    try:
        data = tomllib.loads(path.read_text(encoding="utf-8"))
    except (OSError, tomllib.TOMLDecodeError) as e:
        raise CollectorError(f"--readers {path}: {e}") from e
    readers = data.get("readers")
    if not isinstance(readers, dict) or not readers:
        raise CollectorError(f"--readers {path}: expected [readers.<name>] sections")
    return readers


def _read(path: Path, what: str) -> bytes:
    try:
        return path.read_bytes()
    except OSError as e:
        raise CollectorError(f"cannot read {what} {path}: {e.strerror}") from e


# ---- parser -----------------------------------------------------------------------------------

def register(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    fmt = argparse.RawDescriptionHelpFormatter
    p = sub.add_parser("device", help="enrol, rotate, renew, revoke and list time clocks",
                       description="Manage the fleet: the device registry kept in the ledger, "
                                   "the clocks' certificates and their broker sessions.",
                       epilog=EPILOG, formatter_class=fmt)
    dsub = p.add_subparsers(dest="device_command", metavar="ACTION", required=True)
    _register_provisioning(dsub)
    _register_lifecycle(dsub)
    _register_configure(dsub)


def _register_provisioning(dsub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    fmt = argparse.RawDescriptionHelpFormatter
    e = dsub.add_parser("enroll", help="sign a clock's CSR, register it, write its bundle",
                        formatter_class=fmt, epilog=EPILOG)
    _source(e)
    _ca_opts(e, required=True)
    e.add_argument("--csr", type=Path, required=True, help="the clock's CSR (CN = device id)")
    e.add_argument("--signing-key", required=True, metavar="B64|FILE",
                   help="the clock's Ed25519 public key (`timeclock-agent init` prints it)")
    e.add_argument("--site", required=True, help="site the clock is installed at")
    e.add_argument("--broker", required=True, metavar="HOST:PORT",
                   help="broker address the clock connects to")
    e.add_argument("--log-key-pub", metavar="B64", help="collector log public key")
    e.add_argument("--log-key", type=Path, metavar="FILE", help="or the log key file")
    e.add_argument("--seal-key", type=Path, metavar="FILE",
                   help="the ledger's X25519 seal key file (default: the config's "
                        "[collector] seal_key): the clock seals its envelopes to it")
    e.add_argument("--readers", type=Path, metavar="TOML",
                   help="file with the clock's [readers.<name>] sections (default: one "
                        "rdm6300 on /dev/serial0)")
    e.add_argument("--days", type=int, default=DEFAULT_LEAF_DAYS, help="certificate days")
    e.add_argument("--approver", help="who approved this enrolment (recorded)")
    e.add_argument("--out", type=Path, required=True, metavar="BUNDLE",
                   help="bundle file to write (no private key inside)")
    e.set_defaults(func=cmd_enroll)

    n = dsub.add_parser("renew", help="new certificate for an enrolled clock (before expiry)")
    _source(n)
    _ca_opts(n, required=True)
    n.add_argument("--csr", type=Path, required=True,
                   help="a CSR from the clock (same or new TLS key)")
    n.add_argument("--days", type=int, default=DEFAULT_LEAF_DAYS, help="certificate days")
    n.add_argument("--out", type=Path, required=True, metavar="BUNDLE")
    n.set_defaults(func=cmd_renew)


def _register_lifecycle(dsub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    k = dsub.add_parser("rotate-key", help="register a clock's new signing key from its "
                                           "signed rotation request")
    _source(k)
    k.add_argument("--request", type=Path, required=True, metavar="FILE",
                   help="`timeclock-agent rotate-key` output")
    k.add_argument("--approver", help="who approved this rotation (recorded)")
    k.set_defaults(func=cmd_rotate_key)

    v = dsub.add_parser("revoke", help="revoke a clock for good: punches, certificate, session")
    _source(v)
    v.add_argument("--device", required=True, help="device id")
    v.add_argument("--reason", required=True, help="lost, stolen, decommissioned, …")
    v.add_argument("--key", metavar="KEY_ID",
                   help="revoke only this signing key (no certificate or broker action)")
    v.add_argument("--approver", help="who approved this revocation (recorded)")
    _ca_opts(v, required=False)
    v.add_argument("--cert-reason", choices=sorted(REASONS), default="cessation-of-operation",
                   help="CRL reason (%(default)s; key-compromise for a stolen clock)")
    v.add_argument("--broker-dir", type=Path, metavar="DIR",
                   help="managed broker directory (default: [broker] dir of --config)")
    v.set_defaults(func=cmd_revoke)

    li = dsub.add_parser("list", help="every clock: status, seq, gaps, certificate, link")
    _source(li)
    li.add_argument("--ca", type=Path, metavar="DIR", help="CA directory (certificate expiry)")
    li.add_argument("--no-status", action="store_true",
                    help="do not read the retained status messages from the broker")
    li.add_argument("--timeout-s", type=float, default=3.0,
                    help="how long to wait for statuses (%(default)s)")
    li.add_argument("--json", action="store_true", help="machine-readable output")
    li.set_defaults(func=cmd_list)

    r = dsub.add_parser("register", help="registry only: enrol a device with its first key")
    _source(r)
    r.add_argument("--device", required=True, help="device id (its certificate CN)")
    r.add_argument("--site", required=True, help="site the device is installed at")
    r.add_argument("--signing-key", required=True, metavar="B64",
                   help="the device's Ed25519 public key, base64")
    r.add_argument("--approver", help="who approved this change (recorded)")
    r.set_defaults(func=cmd_register)

    o = dsub.add_parser("reenrol", help="request a new signing key for a clock that cannot "
                                        "sign a rotation request (needs a second approver)")
    o.add_argument("device", metavar="ID", help="device id")
    _source(o)
    o.add_argument("--key", required=True, metavar="B64|FILE",
                   help="the new Ed25519 public key (`timeclock-agent init` prints it)")
    o.add_argument("--requested-by", required=True, metavar="PRINCIPAL",
                   help="who requests the re-enrolment (recorded)")
    o.add_argument("--reason", required=True, help="lost, broken, sd-card-failed, …")
    o.add_argument("--from-seq", type=int,
                   help="first seq the new key signs (default: above the highest recorded)")
    o.set_defaults(func=cmd_reenrol)

    a = dsub.add_parser("approve-reenrol", help="approve a clock's open re-enrolment request "
                                                "(a principal other than the requester)")
    a.add_argument("device", metavar="ID", help="device id")
    _source(a)
    a.add_argument("--by", required=True, metavar="PRINCIPAL",
                   help="the approving principal (not the requester; recorded)")
    a.set_defaults(func=cmd_approve_reenrol)


# ---- commands ---------------------------------------------------------------------------------

def cmd_enroll(args: argparse.Namespace) -> int:
    cfg = _config(args)
    log_pub = _log_public(args, cfg)
    broker = parse_broker(args.broker)
    if args.out.exists():
        raise PKIError(f"{args.out}: exists; refusing to overwrite a bundle")
    csr = _read(args.csr, "CSR")
    with _store(args) as store:
        bundle = enroll_device(store, _ca(args), csr, args.signing_key, site=args.site,
                               broker=broker, log_public_key=log_pub, now=_now(),
                               readers=_readers(args.readers), approver=args.approver,
                               days=args.days, seal_public_key=_seal_public(args, cfg))
    bundle.write(args.out)
    print(f"enrolled {bundle.device} at {bundle.site}: signing key {bundle.signing_key_id}, "
          f"certificate {bundle.cert_serial} valid until {bundle.cert_not_after}")
    print(f"bundle (no private key): {args.out}")
    print(f"on the clock: timeclock-agent provision {args.out.name} --dir /etc/timeclock")
    return 0


def cmd_renew(args: argparse.Namespace) -> int:
    if args.out.exists():
        raise PKIError(f"{args.out}: exists; refusing to overwrite a bundle")
    csr = _read(args.csr, "CSR")
    with _store(args) as store:
        bundle = renew_certificate(store, _ca(args), csr, now=_now(), days=args.days)
    bundle.write(args.out)
    print(f"renewed {bundle.device}: certificate {bundle.cert_serial} valid until "
          f"{bundle.cert_not_after}: {args.out}")
    print(f"on the clock: timeclock-agent provision {args.out.name} --dir /etc/timeclock && "
          f"systemctl restart timeclock-agent")
    return 0


def cmd_rotate_key(args: argparse.Namespace) -> int:
    try:
        signed = SignedRotationRequest.from_bytes(_read(args.request, "rotation request"))
    except WireError as e:
        raise RegistryError(f"{args.request}: not a timeclock key rotation request: {e}"
                            ) from e
    req = signed.request
    with _store(args) as store:
        r = rotate(store, signed, now_us=_now_us(), approver=args.approver)
    print(f"rotated {req.device}: key {req.key} from seq {req.from_seq} "
          f"(ledger entry {r.idx}); punches signed by {req.old_key} stay valid")
    return 0


def cmd_revoke(args: argparse.Namespace) -> int:
    cfg = _config(args)
    t0 = time.monotonic()
    with _store(args) as store:
        rec = store.device(args.device)
        if rec is not None and rec.status == "revoked" and not args.key:
            # A retry after a partial failure: finish the certificate and broker steps.
            print(f"{args.device} was already revoked in the ledger (idx {rec.changed_idx})")
        else:
            r = revoke(store, args.device, args.reason, key_id=args.key, now_us=_now_us(),
                       approver=args.approver)
            what = f"key {args.key} of {args.device}" if args.key else args.device
            print(f"revoked {what}: ledger entry {r.idx}; its punches are quarantined from "
                  f"now on")
    if args.key:
        return 0
    if args.ca is None:
        print("no --ca: the certificate is NOT revoked; the clock can still connect (its "
              "punches are rejected). Run `ca revoke --cn` and reload the broker.")
        return 0
    ca = _ca(args)
    try:
        for e in ca.revoke(cn=args.device, reason=args.cert_reason, now=_now()):
            print(f"certificate {e.serial} revoked ({e.reason}); CRL rewritten")
    except PKIError as e:
        print(f"certificate: {e}")
    broker_dir = args.broker_dir or (cfg.broker.dir if cfg is not None else None)
    if broker_dir is None:
        print(f"no managed broker: copy {ca.crl_file} to the broker and reload/restart it "
              f"(certs/README.md)")
        return 0
    ctx = identity = None
    host, port = "127.0.0.1", 0
    if cfg is not None:
        ctx = client_context(cfg.mqtt.ca_cert, cfg.mqtt.cert, cfg.mqtt.key)
        identity = cfg.collector.identity
        host, port = cfg.mqtt.host, cfg.mqtt.port
    done = cut_off(BrokerControl(broker_dir), ca.crl_file, [args.device], host=host,
                   port=port, context=ctx, identity=identity)
    print(f"broker: CRL reloaded and session cut ({done.method}) in {done.seconds:.2f} s; "
          f"total {time.monotonic() - t0:.2f} s")
    return 0


def cmd_list(args: argparse.Namespace) -> int:
    cfg = _config(args)
    now_us = _now_us()
    certs = CertificateAuthority.open(args.ca).entries() if args.ca else []
    statuses: dict[str, fleet.StatusReading] | None = None
    if cfg is not None and not args.no_status:
        try:
            # The managed broker's control identity when there is one: the broker forces the
            # client id to the CN, so the collector's own certificate would replace its session.
            own = BrokerControl(cfg.broker.dir).control_client() if cfg.broker.dir else None
            host, port, ctx, ident = (*own, CONTROL_IDENTITY) if own is not None else (
                cfg.mqtt.host, cfg.mqtt.port,
                client_context(cfg.mqtt.ca_cert, cfg.mqtt.cert, cfg.mqtt.key),
                cfg.collector.identity)
            statuses = fleet.read_retained_statuses(host, port, ctx, ident,
                                                    timeout_s=args.timeout_s)
        except (CollectorError, WireError) as e:
            print(f"(statuses unavailable: {e})")
    with _store(args) as store:
        rows = fleet.fleet_rows(store, now_us=now_us, certs=certs, statuses=statuses)
        configs = remote.config_states(store)
    if args.json:
        print(json.dumps([{**r.to_dict(), "config": configs[r.device].to_dict()
                           if r.device in configs else None} for r in rows],
                         indent=1, sort_keys=True))
    else:
        print(fleet.render_table(rows, now_us=now_us))
        for st in configs.values():
            print(f"remote configuration of {st.device}: serial {st.sent_serial} sent, "
                  f"{st.applied_serial} applied; last answer {st.last_status or 'none'}"
                  + (f" ({st.last_reason})" if st.last_reason else ""))
        if statuses is None:
            print("(link/queue/clock unknown: pass --config to read the clocks' statuses)")
    return 0


def cmd_register(args: argparse.Namespace) -> int:
    with _store(args) as store:
        r = enroll(store, args.device, args.site, args.signing_key, now_us=_now_us(),
                   approver=args.approver)
    print(f"enrolled {args.device} at {args.site}: ledger entry {r.idx}")
    return 0


def _public_key(value: str) -> str:
    path = Path(value)
    if path.is_file():
        return _read(path, "public key").decode("ascii", "replace").strip()
    return value


def cmd_reenrol(args: argparse.Namespace) -> int:
    with _store(args) as store:
        r = request_reenrolment(store, args.device, _public_key(args.key),
                                requested_by=args.requested_by, reason=args.reason,
                                from_seq=args.from_seq, now_us=_now_us())
    print(f"re-enrolment of {args.device} requested by {args.requested_by}: ledger entry "
          f"{r.idx}; nothing changes until another principal runs `timeclock-collector device "
          f"approve-reenrol {args.device} --by PRINCIPAL`")
    return 0


def cmd_approve_reenrol(args: argparse.Namespace) -> int:
    with _store(args) as store:
        r = approve_reenrolment(store, args.device, approved_by=args.by, now_us=_now_us())
        (entry,) = store.entries(r.idx, r.idx + 1)
    body = json.loads(entry.body or b"{}")
    print(f"re-enrolled {args.device}: key {body['key']} from seq {body['from_seq']}, "
          f"requested by {body['requested_by']} (idx {body['request_idx']}), approved by "
          f"{args.by} (ledger entry {r.idx}); every verifier reports it")
    return 0


# ---- remote configuration (docs/operations.md "Changing a clock's configuration remotely") -----

def _register_configure(dsub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    allowed = ", ".join([*ALLOWED, *(f"readers.<name>.{k}" for k in READER_SETTINGS)])
    c = dsub.add_parser(
        "configure", help="push a signed configuration change to a clock (a ledger entry)",
        description="Sign a change of the clock's remote settings with the log key, record it "
                    "in the ledger, publish it (retained) to the clock and record its signed "
                    "answer. The --set options are the WHOLE remote overlay: settings not "
                    "given return to the clock's base file. Allowed settings: " + allowed)
    c.add_argument("device", metavar="ID", help="device id")
    c.add_argument("--config", type=Path, required=True, metavar="FILE",
                   help="collector TOML: store, log key, MQTT identity, managed broker")
    c.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", dest="settings",
                   help="a setting of the overlay (repeat; none: back to the base file)")
    c.add_argument("--by", metavar="PRINCIPAL",
                   help="who makes this change (recorded in the ledger entry; required to send)")
    c.add_argument("--dry-run", action="store_true",
                   help="check and print the signed change; record and publish nothing")
    c.add_argument("--collect", action="store_true",
                   help="record the clock's retained answer only (no new change)")
    c.add_argument("--wait-s", type=float, default=30.0,
                   help="how long to wait for the clock's answer (%(default)s)")
    c.set_defaults(func=cmd_configure)


def _settings(pairs: list[str]) -> dict[str, int | str]:
    out: dict[str, int | str] = {}
    for pair in pairs:
        key, sep, value = pair.partition("=")
        if not sep:
            raise CollectorError(f"--set {pair[:80]!r}: expected KEY=VALUE")
        if key in out:
            raise CollectorError(f"--set {key}: given twice")
        try:
            out[key] = parse_value(key, value)
        except WireError as e:
            raise CollectorError(f"--{e}") from e
    return out


def _broker_link(cfg: CollectorConfig) -> tuple[str, int, ssl.SSLContext, str]:
    """The managed broker's control identity when there is one (a second connection as the
    collector's own CN would take over the running collector's session), else the collector's."""
    own = BrokerControl(cfg.broker.dir).control_client() if cfg.broker.dir else None
    if own is not None:
        return (*own, CONTROL_IDENTITY)
    return (cfg.mqtt.host, cfg.mqtt.port,
            client_context(cfg.mqtt.ca_cert, cfg.mqtt.cert, cfg.mqtt.key),
            cfg.collector.identity)


def _record_answers(store: SQLStore, device: str, payloads: list[bytes]
                    ) -> list[tuple[SignedConfigResult, int | None]]:
    out = []
    for payload in payloads:
        try:
            signed = remote.verify_result(store, payload, device)
        except (CollectorError, WireError) as e:
            print(f"ignored an answer on {device}'s config-result topic: {e}")
            continue
        out.append((signed, remote.record_result(store, signed, now_us=_now_us())))
    return out


def cmd_configure(args: argparse.Namespace) -> int:
    cfg = load_config(args.config)
    if args.collect and args.settings:
        raise CollectorError("--collect records the clock's answer; it takes no --set")
    settings = _settings(args.settings)
    try:
        log_key = load_signing_key(cfg.collector.log_key)
    except WireError as e:
        raise CollectorError(f"log key: {e}") from e
    with _store(args) as store:
        if args.collect:
            payloads = remote.exchange(*_broker_link(cfg), args.device, payload=None,
                                       serial=None, timeout_s=args.wait_s)
            for answer_signed, idx in _record_answers(store, args.device, payloads):
                r = answer_signed.result
                print(f"{args.device}: change {r.serial} {r.status} ({r.reason}); "
                      + (f"recorded as ledger entry {idx}" if idx is not None
                         else "already recorded"))
            if not payloads:
                print(f"{args.device} has published no answer")
            return 0
        try:
            signed = remote.make_change(store, args.device, settings, log_key,
                                        now_us=_now_us())
        except WireError as e:
            raise CollectorError(str(e)) from e
        serial = signed.change.serial
        if args.dry_run:
            print(json.dumps(signed.to_dict(), indent=1, sort_keys=True))
            print(f"dry run: change {serial} for {args.device} checked; nothing recorded "
                  f"or published")
            return 0
        if not args.by or not PRINCIPAL_RE.fullmatch(args.by):
            raise CollectorError("--by PRINCIPAL is required to send a change: who makes it "
                                 f"(recorded; must match {PRINCIPAL_RE.pattern})")
        idx = remote.record_change(store, signed, by=args.by, now_us=_now_us())
        print(f"change {serial} for {args.device} recorded as ledger entry {idx}")
        payloads = remote.exchange(*_broker_link(cfg), args.device,
                                   payload=signed.to_bytes(), serial=serial,
                                   timeout_s=args.wait_s)
        answer = remote.answer_of(_record_answers(store, args.device, payloads), serial)
    if answer is None:
        print(f"no answer from {args.device} within {args.wait_s:g} s; the change stays "
              f"retained for it: record its answer later with `timeclock-collector device "
              f"configure {args.device} --config {args.config} --collect`")
        return 3
    print(f"{args.device}: change {serial} {answer.status} ({answer.reason})")
    return 0 if answer.status == "applied" else 1
