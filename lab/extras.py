"""The demo's optional parts (``python -m lab --api --postgres --collectors 2 --witness``).

:class:`Extras` adds to a :class:`lab.site.Site` what the options ask for, each the way an
operator sets it up, and reports what it shows at the end of the run:

- ``--api``: an ``[api]`` section (a server certificate from the site CA) on the first
  collector, a bearer token made with ``timeclock-collector token create`` (role ``hr.read``),
  and one authenticated ``GET /v1/punches`` over HTTPS that must answer 200 with punches;
- ``--postgres``: the ledger on a PostgreSQL cluster started with initdb/pg_ctl (as the
  ``postgres`` OS user when run as root, like tests/fixtures/postgres.py), loopback only,
  migrated with ``timeclock-collector migrate`` by the owner role; the collectors connect as
  the app role, which may only INSERT/SELECT the chain;
- ``--collectors N``: N collector processes on the broker's shared subscription, each with its
  own name, certificate and ``[metrics]`` listener, from which the punches each appended are
  read at the end;
- ``--witness``: a ``timeclock-witness serve`` (HTTPS, site CA) in every collector's
  ``[[witnesses]]``; the report counts the checkpoints it cosigned.

Invariants: everything lives under the site directory, except the PostgreSQL cluster when run
as root (the ``postgres`` user cannot reach a root-owned 0700 site; it then lives in its own
temporary directory, removed by :meth:`Extras.close`); :meth:`Extras.close` stops every process
it started; every wait is a condition with a deadline.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import json
import os
import pwd
import re
import secrets
import shutil
import socket
import ssl
import subprocess
import sys
import tempfile
import urllib.error
import urllib.request
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any

from collector.fleet.broker_process import terminate
from collector.ingest.checkpoints import default_origin
from lab.site import REPO, Site, SiteError, _env, free_port, wait_for
from wire.keys import SigningKey, save_signing_key
from wire.note import COSIGNATURE_V1, NoteVerifier

WITNESS_NAME = "witness.demo.example/witness"
API_PRINCIPAL = "hr-demo"
PG_DB, PG_OWNER, PG_APP = "timeclock", "tc_owner", "tc_app"


@dataclass(frozen=True)
class Options:
    api: bool = False
    postgres: bool = False
    collectors: int = 1
    witness: bool = False

    @property
    def names(self) -> tuple[str, ...]:
        """Collector names: ``main``, then ``main-2`` … (each its own identity)."""
        return ("main", *(f"main-{i}" for i in range(2, self.collectors + 1)))

    def describe(self) -> str:
        parts = [f"{self.collectors} collector(s)", "PostgreSQL" if self.postgres else "SQLite"]
        parts += [p for p, on in (("HR API", self.api), ("witness", self.witness)) if on]
        return ", ".join(parts)


def _pg_bin() -> Path:
    found = sorted(Path("/usr/lib/postgresql").glob("*/bin/initdb"),
                   key=lambda p: int(p.parent.parent.name) if p.parent.parent.name.isdigit()
                   else 0)
    if not found:
        raise SiteError("--postgres needs the PostgreSQL server (Debian: apt-get install "
                        "postgresql): no /usr/lib/postgresql/*/bin/initdb")
    return found[-1].parent


class LabPostgres:
    """A throwaway cluster: initdb + pg_ctl on a free loopback port (see the module doc)."""

    def __init__(self, site_root: Path) -> None:
        self.bin = _pg_bin()
        self.as_root = os.geteuid() == 0
        self.base = (Path(tempfile.mkdtemp(prefix="timeclock-lab-pg-")) if self.as_root
                     else site_root / "postgres")
        self.base.mkdir(parents=True, exist_ok=True)
        self.data, self.sock = self.base / "data", self.base / "sock"
        self.port = 0
        self.passwords = {PG_OWNER: secrets.token_urlsafe(16), PG_APP: secrets.token_urlsafe(16)}
        self.started = False

    def dsn(self, role: str) -> str:
        return (f"postgresql://{role}:{self.passwords[role]}@127.0.0.1:{self.port}/{PG_DB}"
                f"?connect_timeout=10")

    def _run(self, *args: str, what: str) -> None:
        kw: dict[str, Any] = {}
        if self.as_root:
            pw = pwd.getpwnam("postgres")
            kw = {"user": pw.pw_uid, "group": pw.pw_gid, "extra_groups": []}
        env = {**os.environ, "LC_ALL": "C.UTF-8", "LANG": "C.UTF-8"}
        r = subprocess.run(args, capture_output=True, text=True, env=env,  # noqa: S603
                           cwd=self.base, timeout=120, check=False, **kw)
        if r.returncode != 0:
            raise SiteError(f"{what} failed ({r.returncode}): {r.stderr.strip()[-1500:]}")

    def _chown(self) -> None:
        if self.as_root:
            pw = pwd.getpwnam("postgres")
            for p in [self.base, *self.base.rglob("*")]:
                os.chown(p, pw.pw_uid, pw.pw_gid)

    def start(self) -> str:
        """Start the cluster, make the roles and the database, migrate; the app role's DSN."""
        import psycopg  # noqa: PLC0415 -- the collector extra's driver, only for --postgres

        self.sock.mkdir(exist_ok=True)
        self._chown()
        self._run(str(self.bin / "initdb"), "-D", str(self.data), "-U", "postgres", "-E",
                  "UTF8", "--auth-local=trust", "--auth-host=scram-sha-256", "--no-sync",
                  what="initdb")
        (self.data / "pg_hba.conf").write_text(
            "local all postgres trust\nhost all postgres 0.0.0.0/0 reject\n"
            "host all all 127.0.0.1/32 scram-sha-256\n")
        self._chown()
        self.port = free_port()
        self._run(str(self.bin / "pg_ctl"), "-D", str(self.data), "-l",
                  str(self.base / "server.log"), "-o",
                  f"-p {self.port} -k {self.sock} -c listen_addresses=127.0.0.1", "-w", "-t",
                  "60", "start", what="pg_ctl start")
        self.started = True
        admin = f"host={self.sock} port={self.port} user=postgres dbname=postgres"
        with psycopg.connect(admin, autocommit=True) as conn:
            for role, password in self.passwords.items():
                conn.execute(f"CREATE ROLE {role} LOGIN PASSWORD '{password}'")
            conn.execute(f"CREATE DATABASE {PG_DB} OWNER {PG_OWNER}")
            conn.execute(f"REVOKE ALL ON DATABASE {PG_DB} FROM PUBLIC")
            conn.execute(f"GRANT CONNECT ON DATABASE {PG_DB} TO {PG_APP}")
        _cli("migrate", "--store", self.dsn(PG_OWNER), "--app-role", PG_APP,
             what="timeclock-collector migrate")
        return self.dsn(PG_APP)

    def stop(self) -> None:
        if self.started:
            with contextlib.suppress(SiteError):
                self._run(str(self.bin / "pg_ctl"), "-D", str(self.data), "-m", "fast", "-w",
                          "-t", "60", "stop", what="pg_ctl stop")
            self.started = False
        if self.as_root:
            shutil.rmtree(self.base, ignore_errors=True)


def _cli(*args: str, what: str) -> str:
    r = subprocess.run([sys.executable, "-m", "collector.cli.main", *args],  # noqa: S603
                       capture_output=True, text=True, env=_env(), cwd=REPO, timeout=120,
                       check=False)
    if r.returncode != 0:
        raise SiteError(f"{what} failed ({r.returncode}): {r.stderr.strip()[-1500:]}")
    return r.stdout


class LabWitness:
    """``timeclock-witness serve`` for the site's log, HTTPS with a certificate of the site CA."""

    def __init__(self, site: Site) -> None:
        if site.ca is None or site.log_key is None:
            raise SiteError("prepare() first")
        self.root = site.root / "witness"
        self.root.mkdir()
        self.key = SigningKey.generate()
        save_signing_key(self.root / "witness.key", self.key)
        site.ca.issue_server(dns=["localhost"], ips=["127.0.0.1"], now=dt.datetime.now(dt.UTC),
                             name="witness")
        key_file, cert_file = site.ca.server_files("witness")
        self.ca_file = site.ca.cert_file
        self.port = free_port()
        origin = default_origin(site.log_key.key_id)
        log_vkey = NoteVerifier(origin, site.log_key.verify_key).vkey()
        self.config = self.root / "witness.toml"
        self.config.write_text(
            f'[witness]\nname = "{WITNESS_NAME}"\nkey = "witness.key"\nstate_dir = "state"\n'
            f'listen = "127.0.0.1"\nport = {self.port}\ntls_cert = "{cert_file}"\n'
            f'tls_key = "{key_file}"\n\n[[logs]]\norigin = "{origin}"\nkey = "{log_vkey}"\n')
        self.log: IO[bytes] | None = None
        self.process: subprocess.Popen[bytes] | None = None

    @property
    def vkey(self) -> str:
        return NoteVerifier(WITNESS_NAME, self.key.verify_key, COSIGNATURE_V1).vkey()

    def collector_section(self) -> str:
        return (f'\n[[witnesses]]\nurl = "https://127.0.0.1:{self.port}"\n'
                f'name = "{WITNESS_NAME}"\nkey = "{self.vkey}"\nca_cert = "{self.ca_file}"\n')

    def start(self) -> None:
        self.log = open(self.root / "serve.log", "ab")  # noqa: SIM115 -- closed in stop()
        self.process = subprocess.Popen(  # noqa: S603 -- our own CLI
            [sys.executable, "-m", "witness", "serve", "--config", str(self.config)],
            stdout=self.log, stderr=self.log, stdin=subprocess.DEVNULL, env=_env(), cwd=REPO,
            start_new_session=True)
        ctx = ssl.create_default_context(cafile=str(self.ca_file))

        def listening() -> bool:
            if self.process is not None and self.process.poll() is not None:
                raise SiteError(f"timeclock-witness exited ({self.process.returncode}): see "
                                f"{self.root / 'serve.log'}")
            try:
                with socket.create_connection(("127.0.0.1", self.port), timeout=2) as s, \
                        ctx.wrap_socket(s, server_hostname="127.0.0.1"):
                    return True
            except OSError:
                return False
        wait_for(listening, 60, "timeclock-witness to listen")

    def cosigned(self) -> list[int]:
        """The tree sizes it cosigned, from its log (``cosigned <origin> size N``)."""
        text = (self.root / "serve.log").read_text(errors="replace")
        return [int(n) for n in re.findall(r"cosigned \S+ size (\d+)", text)]

    def stop(self) -> None:
        if self.process is not None:
            terminate(self.process, 20)
        self.process = None
        if self.log is not None:
            self.log.close()
        self.log = None


def _get(url: str, *, ctx: ssl.SSLContext | None = None,
         headers: dict[str, str] | None = None) -> tuple[int, bytes]:
    req = urllib.request.Request(url, headers=headers or {})  # noqa: S310 -- our own URL
    try:
        with urllib.request.urlopen(req, timeout=30, context=ctx) as r:  # noqa: S310
            return int(r.status), bytes(r.read())
    except urllib.error.HTTPError as e:
        return int(e.code), bytes(e.read())


@dataclass
class Extras:
    """What the options add to a site (see the module doc)."""

    options: Options
    pg: LabPostgres | None = None
    witness: LabWitness | None = None
    api_port: int = 0
    metrics_ports: dict[str, int] = field(default_factory=dict)
    token: str = ""

    def configure(self, site: Site, step: Callable[[str], None]) -> None:
        """After ``site.prepare(collectors=options.names)``: databases, sections, witness."""
        opts = self.options
        if site.ca is None:
            raise SiteError("prepare() first")
        if opts.postgres:
            self.pg = LabPostgres(site.root)
            old = site.store_url
            site.store_url = self.pg.start()
            for name in opts.names:
                cfg = site.collector_config(name)
                cfg.write_text(cfg.read_text().replace(f'store = "{old}"',
                                                       f'store = "{site.store_url}"'))
            step(f"ledger: PostgreSQL on 127.0.0.1:{self.pg.port} (initdb/pg_ctl in "
                 f"{self.pg.base}; migrated by {PG_OWNER}, collectors connect as {PG_APP})")
        if opts.witness:
            self.witness = LabWitness(site)
            self.witness.start()
            step(f"witness: timeclock-witness {WITNESS_NAME} on https://127.0.0.1:"
                 f"{self.witness.port}, in every collector's [[witnesses]]")
        for name in opts.names:
            extra = ""
            if opts.collectors > 1:
                self.metrics_ports[name] = free_port()
                extra += (f'\n[metrics]\nlisten = "127.0.0.1"\n'
                          f"port = {self.metrics_ports[name]}\n")
            if self.witness is not None:
                extra += self.witness.collector_section()
            if opts.api and name == "main":
                site.ca.issue_server(dns=["localhost"], ips=["127.0.0.1"],
                                     now=dt.datetime.now(dt.UTC), name="api")
                key_file, cert_file = site.ca.server_files("api")
                self.api_port = free_port()
                extra += (f'\n[api]\ncert = "{cert_file}"\nkey = "{key_file}"\n'
                          f'listen = "127.0.0.1"\nport = {self.api_port}\n')
            if extra:
                cfg = site.collector_config(name)
                cfg.write_text(cfg.read_text() + extra)
        if opts.api:
            if not opts.postgres:       # token create never creates a ledger; migrate does
                _cli("migrate", "--store", site.store_url, what="timeclock-collector migrate")
            self.token = _cli("token", "create", "--store", site.store_url, "--principal",
                              API_PRINCIPAL, "--role", "hr.read", "--expires", "1d",
                              what="timeclock-collector token create").strip()
            step(f"API: token for {API_PRINCIPAL} (hr.read) made with `timeclock-collector "
                 f"token create`")

    def start_collectors(self, site: Site, step: Callable[[str], None]) -> None:
        for name in self.options.names:
            site.start_collector(name)
        for name in self.options.names:
            log = site.root / "collectors" / name / "serve.log"
            p = site.collectors[name]

            def subscribed(f: Path = log, proc: subprocess.Popen[bytes] = p) -> bool:
                if proc.poll() is not None:
                    lines = f.read_text(errors="replace").splitlines() if f.exists() else []
                    last = "".join(f"\n  {line}" for line in lines[-5:])
                    raise SiteError(f"collector exited ({proc.returncode}): see {f}; it ends:"
                                    f"{last or ' (empty)'}")
                return f.exists() and "MQTT subscribed" in f.read_text(errors="replace")
            wait_for(subscribed, 120, f"collector {name} to subscribe")
        store = ("PostgreSQL" if self.options.postgres
                 else f"SQLite {site.root / 'ledger.db'}")
        if self.options.collectors > 1:
            step(f"collectors: {', '.join(self.options.names)} (`timeclock-collector serve` "
                 f"each) on the shared subscription $share/collectors/…, one ledger ({store})")
        else:
            step(f"collector: `timeclock-collector serve` ({store})")
        if self.options.api:
            wait_for(lambda: "HTTPS API listening" in (
                site.root / "collectors" / "main" / "serve.log").read_text(errors="replace"),
                60, "the API to listen")
            step(f"API: https://127.0.0.1:{self.api_port} (collector main)")

    def report(self, site: Site, say: Callable[[str], None]) -> bool:
        """What the options show; False if one of them did not work."""
        ok = True
        for name, port in self.metrics_ports.items():
            status, body = _get(f"http://127.0.0.1:{port}/metrics")
            m = re.search(rb'^timeclock_ingest_punches_total\{outcome="appended"\} (\S+)$',
                          body, re.M)
            n = int(float(m.group(1))) if status == 200 and m else 0
            say(f"  collector {name}: {n} punch(es) appended (its /metrics)")
        if self.options.api and site.ca is not None:
            ctx = ssl.create_default_context(cafile=str(site.ca.cert_file))
            status, body = _get(f"https://localhost:{self.api_port}/v1/punches?limit=5",
                                ctx=ctx, headers={"Authorization": f"Bearer {self.token}"})
            items = json.loads(body).get("items", []) if status == 200 else []
            say(f"  API: GET /v1/punches?limit=5 as {API_PRINCIPAL} (Bearer token, hr.read): "
                f"HTTP {status}, {len(items)} punch(es)")
            for it in items[:2]:
                say(f"    {it.get('device')} seq {it.get('seq')} {it.get('action')} at "
                    f"{it.get('device_time')} (ledger idx {it.get('ledger_idx')})")
            anon, _ = _get(f"https://localhost:{self.api_port}/v1/punches", ctx=ctx)
            say(f"  API: the same request without the token: HTTP {anon}")
            ok = ok and status == 200 and bool(items) and anon == 401
        if self.witness is not None:
            witness = self.witness
            with contextlib.suppress(SiteError):     # cosigning follows a checkpoint
                wait_for(lambda: bool(witness.cosigned()), 60, "a cosigned checkpoint")
            sizes = witness.cosigned()
            say(f"  witness {WITNESS_NAME}: cosigned {len(sizes)} checkpoint(s)"
                + (f", the largest of size {max(sizes)}" if sizes else ""))
            ok = ok and bool(sizes)
        return ok

    def close(self) -> None:
        if self.witness is not None:
            self.witness.stop()
        if self.pg is not None:
            self.pg.stop()

