"""``timeclock-collector init [--check]``: prepare a collector host in one idempotent command.

What it makes, each only if missing (an existing file is checked, never overwritten)::

    ETC/ca/                 the site CA (or --ca DIR: adopt an existing one)
    ETC/log.key             the log key (Ed25519, 0600); its public key and the origin are
                            printed: every verifier needs them
    ETC/seal.key            the seal key (X25519, 0600, not derived from the log key): opens
                            the envelopes clocks seal to it (DESIGN.md §8.6); `device enroll`
                            puts its public key into every enrolment bundle
    ETC/pseudonym.key       the badge pseudonym key (32 random bytes, 0600): exports show a
                            keyed hash for badges of no employee (D20; [api] pseudonym_key,
                            `export --pseudonym-key`)
    ETC/ledger.kek          the key-encryption key of encryption at rest (32 random bytes,
                            0600; DESIGN.md §8.6): wraps the ledger's data keys; the config
                            names it as [ledger] kek = "file:…". ``--kek credential:NAME`` or
                            ``--kek pkcs11:…`` names another source instead (no file made),
                            ``--kek none`` leaves the ledger unencrypted
    ETC/ca.crt              a copy of the CA certificate (what [mqtt] ca_cert names)
    ETC/collector.{key,crt} the collector's MQTT client certificate, CN collector.<name>
    ETC/api.{key,crt}       the HTTPS API's server certificate (unless --no-api)
    ETC/collector.toml      a commented config that ``serve --check-config`` accepts
    STATE/broker/           the managed broker: mosquitto.conf with pid file, log file and
                            the dynamic-security plugin (what ``device revoke`` step 3 needs)
    STATE/ledger.db         the SQLite ledger (PostgreSQL: ``migrate`` makes the schema)

Invariants: a second run with the same arguments changes nothing and says so; ``--check``
changes nothing and exits 1 when anything is missing or wrong (0 otherwise); as root,
``--user`` is required and every file init manages ends up owned by that account (the one
``serve`` and the managed Mosquitto run as), so the broker never crash-loops on files it
cannot read.
"""

from __future__ import annotations

import argparse
import datetime as dt
import os
import pwd
import socket
import textwrap
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from cryptography import x509
from cryptography.hazmat.primitives import serialization

from collector import CollectorError, KekError, PKIError
from collector.cli.ca import _passphrase
from collector.fleet.broker_process import PID_FILE, prepare_managed_broker
from collector.fleet.pki import CertificateAuthority
from collector.ingest.checkpoints import default_origin, load_log_key, validate_origin
from collector.ledger import checkpoint_tables, kek, open_store, sqlite_path
from collector.records.export_fields import Pseudonyms, create_pseudonym_key
from collector.service.config import KEK_SPEC, check_files, load_config
from wire.errors import WireError
from wire.keys import SigningKey, save_signing_key, write_private_file, write_public_file
from wire.sealed import SealKey, load_seal_key, save_seal_key

EPILOG = textwrap.dedent("""\
    examples:
      timeclock-collector init --user timeclock --name main --origin acme.example/timeclock \\
          --dns mqtt.acme.example --ip 10.0.0.5 --listen 0.0.0.0
      timeclock-collector init --check --user timeclock --name main   # changes nothing

    Run it again at any time: what exists is checked and kept, what is missing is made.
    Exit status: 0 done (or, with --check, everything in place), 1 --check found problems,
    2 error. docs/operations.md, "Setting up the collector host", walks through it.
    """)

CREATED, OK, MISSING, WRONG, FIXED = "created", "ok", "missing", "wrong", "fixed"


@dataclass(frozen=True, slots=True)
class Step:
    what: str
    path: Path
    state: str
    detail: str = ""


@dataclass
class Plan:
    """The arguments, resolved into paths."""

    etc: Path
    state: Path
    name: str
    ca_dir: Path
    store: str
    origin: str | None
    dns: list[str]
    ips: list[str]
    listen: str
    mqtt_port: int
    api: bool
    api_listen: str
    api_port: int
    check: bool
    passphrase: bytes | None
    kek: str | None = None          # [ledger] kek: "file:ETC/ledger.kek" unless --kek chose
    uid: int | None = None
    gid: int | None = None
    steps: list[Step] = field(default_factory=list)

    @property
    def log_key(self) -> Path:
        return self.etc / "log.key"

    @property
    def seal_key(self) -> Path:
        return self.etc / "seal.key"

    @property
    def pseudonym_key(self) -> Path:
        return self.etc / "pseudonym.key"

    @property
    def kek_file(self) -> Path:
        return self.etc / "ledger.kek"

    @property
    def config(self) -> Path:
        return self.etc / "collector.toml"

    @property
    def broker_dir(self) -> Path:
        return self.state / "broker"

    @property
    def mqtt_host(self) -> str:
        """Where this collector connects: the listener, or loopback when it listens on all."""
        return "127.0.0.1" if self.listen in ("0.0.0.0", "::") else self.listen  # noqa: S104

    def add(self, what: str, path: Path, state: str, detail: str = "") -> None:
        self.steps.append(Step(what, path, state, detail))


def _now() -> dt.datetime:
    return dt.datetime.now(dt.UTC)


def _cert(path: Path) -> x509.Certificate:
    try:
        return x509.load_pem_x509_certificate(path.read_bytes())
    except (OSError, ValueError) as e:
        raise PKIError(f"{path}: not a readable PEM certificate") from e


def _check_pair(ca: CertificateAuthority, key: Path, crt: Path, *,  # noqa: PLR0911 - one
                cn: str | None, now: dt.datetime) -> str:                  # return per finding
    """'' when ``crt`` is ``ca``'s, unexpired, for ``key`` (and ``cn``); else what is wrong."""
    try:
        cert = _cert(crt)
        cert.verify_directly_issued_by(ca.cert)
    except (PKIError, ValueError, TypeError) as e:
        return f"{crt}: not issued by the CA in {ca.directory} ({e})"
    except Exception as e:  # noqa: BLE001 - cryptography raises InvalidSignature and others
        return f"{crt}: not issued by the CA in {ca.directory} ({type(e).__name__})"
    if cert.not_valid_after_utc <= now:
        return f"{crt}: expired {cert.not_valid_after_utc:%Y-%m-%d}"
    got = cert.subject.get_attributes_for_oid(x509.NameOID.COMMON_NAME)
    if cn is not None and [a.value for a in got] != [cn]:
        return f"{crt}: CN is {got[0].value if got else None!r}, expected {cn!r}"
    try:
        private = serialization.load_pem_private_key(key.read_bytes(), password=None)
    except (OSError, ValueError, TypeError) as e:
        return f"{key}: not a readable unencrypted private key ({e})"
    if private.public_key() != cert.public_key():
        return f"{key} does not belong to {crt}"
    return ""


# ---- the steps ------------------------------------------------------------------------------

def _step_ca(p: Plan, now: dt.datetime) -> CertificateAuthority | None:
    if (p.ca_dir / "ca.crt").is_file():
        ca = CertificateAuthority.open(p.ca_dir, passphrase=p.passphrase)
        p.add("CA", p.ca_dir, OK, f"adopted, valid until {ca.cert.not_valid_after_utc:%Y-%m-%d}")
        return ca
    if p.check:
        p.add("CA", p.ca_dir, MISSING)
        return None
    ca = CertificateAuthority.init(p.ca_dir, now=now, passphrase=p.passphrase)
    p.add("CA", p.ca_dir, CREATED)
    return ca


def _step_log_key(p: Plan) -> SigningKey | None:
    if p.log_key.exists():
        try:
            key = load_log_key(p.log_key)
        except CollectorError as e:
            p.add("log key", p.log_key, WRONG, str(e))
            return None
        p.add("log key", p.log_key, OK)
        return key
    if p.check:
        p.add("log key", p.log_key, MISSING)
        return None
    key = SigningKey.generate()
    save_signing_key(p.log_key, key)
    p.add("log key", p.log_key, CREATED)
    return key


def _step_seal_key(p: Plan) -> None:
    if p.seal_key.exists():
        try:
            load_seal_key(p.seal_key)
        except WireError as e:
            p.add("seal key", p.seal_key, WRONG, str(e))
            return
        p.add("seal key", p.seal_key, OK)
    elif p.check:
        p.add("seal key", p.seal_key, MISSING)
    else:
        save_seal_key(p.seal_key, SealKey.generate())
        p.add("seal key", p.seal_key, CREATED)


def _step_pseudonym_key(p: Plan) -> None:
    if p.pseudonym_key.exists():
        try:
            Pseudonyms.load(p.pseudonym_key)
        except CollectorError as e:
            p.add("pseudonym key", p.pseudonym_key, WRONG, str(e))
            return
        p.add("pseudonym key", p.pseudonym_key, OK)
    elif p.check:
        p.add("pseudonym key", p.pseudonym_key, MISSING)
    else:
        create_pseudonym_key(p.pseudonym_key)
        p.add("pseudonym key", p.pseudonym_key, CREATED)


def _step_kek(p: Plan) -> None:
    """The KEK the config will name: the file KEK made here (0600, kept if present), or the
    source ``--kek`` chose, checked as far as this host can (DESIGN.md §8.6)."""
    what = "ledger KEK (encryption at rest)"
    if p.kek is None:
        p.add(what, Path("-"), OK, "--kek none: personal data stays in clear in the ledger")
        return
    scheme, _, rest = p.kek.partition(":")
    if scheme == "credential":
        try:
            kek.credential_name(rest)
        except KekError as e:
            p.add(what, Path("-"), WRONG, str(e))
            return
        p.add(what, Path("-"), OK, f"systemd credential {rest}: serve reads it from "
                                   f"$CREDENTIALS_DIRECTORY (LoadCredential[Encrypted]={rest})")
        return
    if scheme == "pkcs11":
        try:
            loaded = kek.load_kek(p.kek)
        except KekError as e:
            p.add(what, Path("-"), WRONG, str(e))
            return
        p.add(what, Path("-"), OK, f"{loaded.kek_id} answers")
        return
    path = Path(rest)
    if path.exists():
        try:
            kek.load_kek(p.kek)
        except KekError as e:
            p.add(what, path, WRONG, str(e))
            return
        p.add(what, path, OK)
    elif p.check:
        p.add(what, path, MISSING)
    else:
        try:
            kek.create_file_kek(path)
        except KekError as e:
            raise CollectorError(f"init: {e}") from e
        p.add(what, path, CREATED, "back it up apart from the ledger: without it no "
                                   "personal body opens")


def _kek_choice(spec: str | None, etc: Path) -> str | None:
    """``--kek``: absent → the file KEK in ETC; ``none`` → no KEK; else the spec as given."""
    if spec is None:
        return f"file:{etc / 'ledger.kek'}"
    if spec == "none":
        return None
    if not KEK_SPEC.match(spec):
        raise CollectorError(f"--kek {spec!r}: expected file:/path, credential:NAME, "
                             f"pkcs11:module=…;token=…;key=…;pin-file=… or none")
    return spec


def _step_ca_copy(p: Plan, ca: CertificateAuthority) -> None:
    dst, data = p.etc / "ca.crt", ca.cert_file.read_bytes()
    if dst.exists():
        same = dst.read_bytes() == data
        p.add("CA certificate copy", dst, OK if same else WRONG,
              "" if same else f"differs from {ca.cert_file} (another CA?)")
    elif p.check:
        p.add("CA certificate copy", dst, MISSING)
    else:
        write_public_file(dst, data)
        p.add("CA certificate copy", dst, CREATED)


def _step_client(p: Plan, ca: CertificateAuthority, now: dt.datetime) -> None:
    key, crt, cn = p.etc / "collector.key", p.etc / "collector.crt", f"collector.{p.name}"
    what = f"MQTT client certificate {cn}"
    if key.exists() or crt.exists():
        problem = _check_pair(ca, key, crt, cn=cn, now=now)
        p.add(what, crt, WRONG if problem else OK, problem)
    elif p.check:
        p.add(what, crt, MISSING)
    else:
        ca.issue_client(cn, key, crt, kind="collector", now=now)
        p.add(what, crt, CREATED)


def _sans(p: Plan) -> tuple[list[str], list[str]]:
    dns = list(dict.fromkeys([*p.dns, "localhost"]))
    ips = list(dict.fromkeys([*p.ips, "127.0.0.1"]))
    return dns, ips


def _step_server(p: Plan, ca: CertificateAuthority, name: str, now: dt.datetime) -> None:
    key, crt = ca.server_files(name)
    what = f"{name} server certificate"
    if crt.exists() or key.exists():
        problem = _check_pair(ca, key, crt, cn=None, now=now)
        p.add(what, crt, WRONG if problem else OK, problem)
    elif p.check:
        p.add(what, crt, MISSING)
    else:
        dns, ips = _sans(p)
        ca.issue_server(dns=dns, ips=ips, now=now, name=name)
        p.add(what, crt, CREATED, f"for {', '.join(dns + ips)}")


def _step_api_copy(p: Plan, ca: CertificateAuthority) -> None:
    src_key, src_crt = ca.server_files("api")
    for src, dst, private in ((src_crt, p.etc / "api.crt", False),
                              (src_key, p.etc / "api.key", True)):
        if not src.is_file():
            continue            # reported by _step_server
        data = src.read_bytes()
        if dst.exists():
            same = dst.read_bytes() == data
            p.add("API " + ("key" if private else "certificate"), dst, OK if same else WRONG,
                  "" if same else f"differs from {src}")
        elif p.check:
            p.add("API " + ("key" if private else "certificate"), dst, MISSING)
        else:
            (write_private_file if private else write_public_file)(dst, data)
            p.add("API " + ("key" if private else "certificate"), dst, CREATED)


def _step_broker(p: Plan, ca: CertificateAuthority, user: str | None) -> None:
    conf = p.broker_dir / "mosquitto.conf"
    what = "managed broker directory"
    if conf.exists():
        lines = conf.read_text(encoding="utf-8").splitlines()
        if not any(line.startswith("pid_file ") for line in lines):
            p.add(what, p.broker_dir, WRONG,
                  "mosquitto.conf has no pid_file, so `device revoke` cannot reload the "
                  "broker: move the directory aside and run init again")
        else:
            p.add(what, p.broker_dir, OK)
    elif p.check:
        p.add(what, p.broker_dir, MISSING)
    else:
        options: dict[str, Any] = {} if user is None else {"user": user}
        try:
            prepare_managed_broker(ca, p.broker_dir, port=p.mqtt_port, host=p.listen,
                                   collectors=[p.name], **options)
        except OSError as e:
            raise PKIError(f"cannot write the broker directory {p.broker_dir}: {e}") from e
        p.add(what, p.broker_dir, CREATED, f"listener {p.listen}:{p.mqtt_port}, pid file "
                                           f"{p.broker_dir / PID_FILE}")


def _step_ledger(p: Plan) -> None:
    path = sqlite_path(p.store)
    if path is None:
        p.add("ledger", Path("-"), OK, "PostgreSQL: make the schema with `timeclock-collector "
                                       "migrate --store URL --app-role ROLE` as the owner")
        return
    if path.exists():
        p.add("ledger", path, OK)
    elif p.check:
        p.add("ledger", path, MISSING)
    else:
        store = open_store(p.store)
        try:
            checkpoint_tables.ensure_schema(store)
        finally:
            store.close()
        p.add("ledger", path, CREATED)


def render_config(p: Plan) -> str:
    """The commented ``collector.toml`` for this plan (deterministic: same plan, same text)."""
    origin = (f'origin = "{p.origin}"     # the ledger in v2 checkpoints; same on every collector'
              if p.origin else
              '# origin = "acme.example/timeclock"  # default: timeclock.invalid/<log key id>')
    kek_line = (f'kek = "{p.kek}"   # wraps the data keys (DESIGN.md §8.6); keep a copy apart'
                if p.kek else
                '# kek = "file:/etc/timeclock/ledger.kek"   # init --kek none: no encryption')
    api = "" if not p.api else textwrap.dedent(f"""\

        [api]                                   # HTTPS for HR, payroll and auditors (docs/api.md)
        cert = "{p.etc / 'api.crt'}"
        key = "{p.etc / 'api.key'}"           # 0600
        pseudonym_key = "{p.pseudonym_key}"   # 0600: badge_pseudonym in exports (D20)
        listen = "{p.api_listen}"
        port = {p.api_port}
        # client_ca = "{p.etc / 'ca.crt'}"     # accept client certificates too (token cert)
        """)
    return textwrap.dedent(f"""\
        # timeclock collector, written by `timeclock-collector init` (docs/operations.md,
        # "Setting up the collector host"); every key: collector/service/config.py.
        # Check it with: timeclock-collector serve --check-config {p.config}

        [collector]
        name = "{p.name}"                  # MQTT identity collector.{p.name}: collector.crt's CN
        store = "{p.store}"
        log_key = "{p.log_key}"         # 0600: signs receipts and checkpoints
        seal_key = "{p.seal_key}"       # 0600: opens sealed envelopes (DESIGN.md §8.6)
        {origin}
        state_dir = "{p.state}"        # largest-checkpoint.note: serve refuses a ledger below it

        [ledger]                                # the database's lifecycle and encryption at rest
        {kek_line}

        [mqtt]                                  # the broker, with this collector's mTLS identity
        host = "{p.mqtt_host}"
        port = {p.mqtt_port}
        ca_cert = "{p.etc / 'ca.crt'}"
        cert = "{p.etc / 'collector.crt'}"
        key = "{p.etc / 'collector.key'}"     # 0600

        [broker]                                # serve runs and supervises Mosquitto
        managed = true
        dir = "{p.broker_dir}"   # made by init: pid file, log, dynamic-security plugin
        """) + api


def _step_config(p: Plan) -> None:
    if p.config.exists():
        try:
            cfg = load_config(p.config)
            check_files(cfg)
        except CollectorError as e:
            p.add("config", p.config, WRONG, str(e).replace("\n  ", "; "))
            return
        if cfg.ledger.kek != p.kek:
            # (init never rewrites a config: the operator edits [ledger] kek, or passes the
            # --kek the config names)
            p.add("config", p.config, WRONG,
                  f"[ledger] kek is {cfg.ledger.kek or 'not set'}, init was asked for "
                  f"{p.kek or 'none'} (--kek): edit the config or pass --kek to match")
            return
        p.add("config", p.config, OK, "serve --check-config accepts it")
    elif p.check:
        p.add("config", p.config, MISSING)
    else:
        write_public_file(p.config, render_config(p).encode("utf-8"))
        p.add("config", p.config, CREATED)


def _managed_paths(p: Plan) -> Iterator[Path]:
    """Everything init manages, for the owner step (the CA and state folders recursively:
    the CRL timer rewrites the CA's index and CRL, serve writes the broker and ledger)."""
    for name in ("log.key", "seal.key", "pseudonym.key", "ledger.kek", "ca.crt", "collector.key",
                 "collector.crt", "api.key", "api.crt", "collector.toml"):
        if (p.etc / name).exists():
            yield p.etc / name
    for top in (p.ca_dir, p.state):
        if top.exists():
            yield top
            yield from sorted(top.rglob("*"))


def _step_owners(p: Plan, user: str) -> None:
    uid, gid = p.uid, p.gid
    if uid is None or gid is None:
        raise CollectorError(f"--user {user}: account not resolved")
    wrong = [path for path in _managed_paths(p)
             if not path.is_symlink() and path.lstat().st_uid != uid]
    if not wrong:
        p.add(f"owner {user}", p.etc, OK)
    elif p.check:
        p.add(f"owner {user}", wrong[0], WRONG,
              f"{len(wrong)} file(s) not owned by {user}, e.g. {wrong[0]}: run init again "
              f"with --user {user} (or chown -R {user}: {p.ca_dir} {p.state})")
    else:
        for path in wrong:
            os.chown(path, uid, gid, follow_symlinks=False)
        p.add(f"owner {user}", p.etc, FIXED, f"{len(wrong)} file(s) given to {user}")


def run_init(p: Plan, *, user: str | None, now: dt.datetime) -> SigningKey | None:
    """Every step in order; the results are in ``p.steps``. Returns the log key if there."""
    ca = _step_ca(p, now)
    log_key = _step_log_key(p)
    _step_seal_key(p)
    _step_pseudonym_key(p)
    _step_kek(p)
    if ca is not None:
        _step_ca_copy(p, ca)
        _step_client(p, ca, now)
        _step_server(p, ca, "broker", now)
        if p.api:
            _step_server(p, ca, "api", now)
            _step_api_copy(p, ca)
        _step_broker(p, ca, user)
    _step_ledger(p)
    _step_config(p)
    if user is not None:
        _step_owners(p, user)
    return log_key


# ---- command --------------------------------------------------------------------------------

def _account(user: str) -> tuple[int, int]:
    try:
        pw = pwd.getpwnam(user)
    except KeyError as e:
        raise CollectorError(f"--user {user}: no such account (the package creates "
                             f"`timeclock`; or: useradd --system timeclock)") from e
    return pw.pw_uid, pw.pw_gid


def _origin_of(p: Plan, key: SigningKey) -> str:
    if p.config.exists():
        try:
            configured = load_config(p.config).collector.origin
        except CollectorError:
            configured = None
        if configured:
            return configured
    return p.origin or default_origin(key.key_id)


def cmd_init(args: argparse.Namespace) -> int:
    if os.geteuid() == 0 and args.user is None:
        raise CollectorError("running as root: give --user ACCOUNT, the account serve (and "
                             "its Mosquitto) runs as (`timeclock` under the shipped unit; "
                             "`root` only if serve runs as root): it gets the files")
    if args.origin is not None:
        validate_origin(args.origin)
    etc, state = args.etc.absolute(), args.state.absolute()
    store = args.store or f"sqlite://{state / 'ledger.db'}"
    p = Plan(etc=etc, state=state, name=args.name, ca_dir=(args.ca or etc / "ca").absolute(),
             store=store, origin=args.origin, dns=args.dns or [socket.getfqdn()],
             ips=args.ip or [], listen=args.listen, mqtt_port=args.mqtt_port,
             api=not args.no_api, api_listen=args.api_listen, api_port=args.api_port,
             check=args.check, passphrase=_passphrase(args), kek=_kek_choice(args.kek, etc))
    if args.user is not None:
        p.uid, p.gid = _account(args.user)
    if not args.check:
        for d in (etc, state):
            d.mkdir(parents=True, exist_ok=True, mode=0o755 if d == etc else 0o700)
    try:
        key = run_init(p, user=args.user, now=_now())
    except (OSError, WireError) as e:
        raise CollectorError(f"init: {e}") from e
    print(f"{'init --check' if args.check else 'init'}: collector.{p.name}, config {p.config}, "
          f"state {p.state}")
    for s in p.steps:
        detail = f"  ({s.detail})" if s.detail else ""
        print(f"  {s.state:<8} {s.what:<40} {s.path}{detail}")
    if key is not None:
        print(f"log public key (give it to every verifier, out of band): {key.verify_key.b64}")
        print(f"  key id {key.key_id}, origin {_origin_of(p, key)}")
    if p.seal_key.exists():
        try:
            seal_pub = load_seal_key(p.seal_key).public_key
            print(f"seal public key (enrolment bundles carry it; clocks seal to it): "
                  f"{seal_pub.b64}")
        except WireError:
            pass          # reported as a wrong step above
    if not args.check and all(s.state not in (MISSING, WRONG) for s in p.steps):
        print(f"next: timeclock-collector serve --check-config {p.config}; under systemd: "
              f"systemctl enable --now timeclock-collector timeclock-crl-refresh.timer")
    return _summary(p.steps, check=args.check, print_=print)


def _summary(steps: list[Step], *, check: bool, print_: Callable[[str], None]) -> int:
    bad = [s for s in steps if s.state in (MISSING, WRONG)]
    changed = [s for s in steps if s.state in (CREATED, FIXED)]
    if check:
        print_(f"{len(bad)} problem(s): run `timeclock-collector init` with the same options "
               f"to make what is missing; fix what is wrong by hand" if bad
               else "everything is in place")
        return 1 if bad else 0
    if bad:
        print_(f"{len(bad)} problem(s) left (wrong, above): init does not overwrite; fix "
               f"them by hand and run it again")
        return 1
    print_(f"{len(changed)} change(s) made" if changed
           else "nothing changed: everything was already in place")
    return 0


def register(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    p = sub.add_parser(
        "init", help="prepare this collector host (CA, log key, certificates, broker, config)",
        description="Make what a collector host needs, each only if missing, and check what "
                    "exists; --check only reports.",
        epilog=EPILOG, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--check", action="store_true",
                   help="report what is missing or wrong, change nothing (exit 1 if any)")
    p.add_argument("--etc", type=Path, default=Path("/etc/timeclock"), metavar="DIR",
                   help="keys, certificates and collector.toml (%(default)s)")
    p.add_argument("--state", type=Path, default=Path("/var/lib/timeclock"), metavar="DIR",
                   help="ledger, broker directory, largest-checkpoint.note (%(default)s)")
    p.add_argument("--name", default="main", help="collector name: identity collector.NAME "
                                                  "(%(default)s)")
    p.add_argument("--user", metavar="ACCOUNT",
                   help="account serve runs as; gets every file (required as root)")
    p.add_argument("--ca", type=Path, metavar="DIR",
                   help="adopt this existing CA instead of making ETC/ca")
    p.add_argument("--passphrase-file", type=Path, metavar="F",
                   help="file (0600) with the CA key passphrase (a new CA gets it)")
    p.add_argument("--origin", metavar="ORIGIN",
                   help="the ledger's name in v2 checkpoints, e.g. acme.example/timeclock")
    p.add_argument("--store", metavar="URL",
                   help="ledger URL (default sqlite:///STATE/ledger.db)")
    p.add_argument("--dns", action="append", metavar="NAME",
                   help="DNS name clocks and clients use for this host (repeatable; default "
                        "this host's FQDN; localhost is always added)")
    p.add_argument("--ip", action="append", metavar="ADDR",
                   help="IP address clocks use (repeatable; 127.0.0.1 is always added)")
    p.add_argument("--listen", default="127.0.0.1",
                   help="address the broker listens on (%(default)s; 0.0.0.0 for clocks)")
    p.add_argument("--mqtt-port", type=int, default=8883, metavar="N",
                   help="broker TLS port (%(default)s)")
    p.add_argument("--api-listen", default="127.0.0.1", help="API address (%(default)s)")
    p.add_argument("--api-port", type=int, default=8443, metavar="N",
                   help="API port (%(default)s)")
    p.add_argument("--no-api", action="store_true", help="no [api] section, no API certificate")
    p.add_argument("--kek", metavar="SPEC",
                   help="the ledger's key-encryption key for [ledger] kek: default a new file "
                        "KEK ETC/ledger.kek (0600, kept if present); credential:NAME or "
                        "pkcs11:module=…;token=…;key=…;pin-file=… to use that instead (no file "
                        "made); none for no encryption at rest")
    p.set_defaults(func=cmd_init)

